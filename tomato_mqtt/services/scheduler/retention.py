"""Bounded retained job statuses: a finished job's ``job/<id>/status`` is cleared.

The broker keeps a retained message per topic for ever, so one per job ever run would
grow with history (1,207 topics and 1.08 MB after 1,200 jobs before issue 14). Here a
finished job's retained summary stays only while it is among the newest
``[jobs] retain_finished`` finished jobs and younger than ``retain_finished_age``;
then it is cleared (an empty retained message). Jobs that are queued or running always
keep theirs. The job itself stays in the scheduler's store (``job_status``,
``job_search``).

The scheduler also subscribes to ``job/+/status``: a retained status it does not mean to
keep (left by an older scheduler, or from before a restart) is cleared when the broker
hands it over, so the broker's retained set heals itself without a scan of the history.
"""

from __future__ import annotations

import datetime
import time
from typing import TYPE_CHECKING

from tomato_mqtt.model.jobs import DONE_STATUSES, Job
from tomato_mqtt.wire.messages import JobStatus

if TYPE_CHECKING:
    from tomato_mqtt.services.scheduler.service import SchedulerService

__all__ = ["Retention"]

_CHUNK = 200  # retained statuses published between two waits for the broker's ack


def _ended(job: Job) -> float:
    try:
        return datetime.datetime.fromisoformat(str(job.completed_at)).timestamp()
    except ValueError:
        return time.time()


class Retention:
    def __init__(self, svc: SchedulerService) -> None:
        self.svc = svc
        self.finished: dict[int, float] = {}  # retained finished job -> when it ended
        self.active: set[int] = set()  # retained queued/running jobs

    @property
    def count(self) -> int:
        """``[jobs] retain_finished``, as now (a `tomato reload` applies it: it said "no
        changes" and kept the old one until a restart, an integrator's review)."""
        return self.svc.settings.jobs.retain_finished

    @property
    def age(self) -> float:
        return self.svc.settings.jobs.retain_finished_age

    def _wanted(self, jobid: int) -> bool:
        return jobid in self.active or jobid in self.finished

    async def publish(self, job: Job, wait: bool = False) -> None:
        """Publish the job's summary, or clear it if its retention is over; ``wait``:
        until the broker has it (backpressure when publishing many)."""
        if job.status in DONE_STATUSES:
            self.active.discard(job.id)
            self.finished[job.id] = _ended(job)
            await self.svc.publish(self.svc.topics.job_status(job.id), JobStatus.of(job), wait=wait)
            await self.sweep()
        else:
            self.active.add(job.id)
            await self.svc.publish(self.svc.topics.job_status(job.id), JobStatus.of(job), wait=wait)

    async def sweep(self) -> None:
        """Clear the finished jobs beyond the count or past the age."""
        now = time.time()
        newest = sorted(self.finished, key=lambda j: (self.finished[j], j), reverse=True)
        drop = newest[self.count :]
        drop += [j for j in newest[: self.count] if now - self.finished[j] > self.age]
        for j in drop:
            del self.finished[j]
            await self.svc.publish(self.svc.topics.job_status(j), b"")

    async def announce(self) -> None:
        """After (re)connecting: the statuses to keep, and nothing else.

        What to keep is settled at once; the statuses go out in the background, a chunk
        at a time, each chunk read afresh just before it is sent (so none is older than
        a change published meanwhile), with a wait for the broker's ack between chunks:
        a deep queue is thousands of statuses, and the nodes' configuration and the
        replies to requests must not queue behind all of them (issue 15)."""
        store = self.svc.store
        if store is None:
            return
        ids = store.job_ids(["q", "qw", "r", "rd"])
        self.active.update(ids)
        recent = store.recent_finished(self.count)
        for job in recent:
            self.finished[job.id] = _ended(job)
        self.svc.spawn(self._publish_all([*ids, *(j.id for j in recent)]))

    async def _publish_all(self, ids: list[int]) -> None:
        for at in range(0, len(ids), _CHUNK):
            store = self.svc.store
            if store is None:
                return
            jobs = [j for j in store.jobs(ids=ids[at : at + _CHUNK]) if self._wanted(j.id)]
            for k, job in enumerate(jobs):
                topic = self.svc.topics.job_status(job.id)
                await self.svc.publish(topic, JobStatus.of(job), wait=k == len(jobs) - 1)
        await self.sweep()

    async def seen(self, jobid: int, retained: bool) -> None:
        """A status on ``job/<id>/status``: one this scheduler does not keep is cleared
        (only the scheduler may publish there, so it is stale: from before a restart,
        or the echo of a summary already swept; clearing twice is harmless)."""
        if not self._wanted(jobid):
            await self.svc.publish(self.svc.topics.job_status(jobid), b"")
