"""A running job's life after launch: its runner, periodic snapshots, the final file.

:meth:`JobLifecycle.job_done` asks the recorder for the file and decides the final
status from its reply (:func:`judge_file`): ``c`` only when, for every task, the file
holds exactly the points the runner took and no batch conflicted; otherwise ``ce`` with
each problem (task, counts) in the reason; a file that had to go to the fallback folder
is named there. Warnings (deadlines missed) keep ``c`` and are in the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import JsonValue

from tomato_mqtt.errors import locked
from tomato_mqtt.model.jobs import Job
from tomato_mqtt.services.scheduler.runner import CANCELLED_BY, JobRunner
from tomato_mqtt.services.scheduler.tasks import TaskState, expectations, tasks_of

if TYPE_CHECKING:
    from tomato_mqtt.services.scheduler.service import SchedulerService

__all__ = ["JobLifecycle", "judge_file"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: s between attempts to store a job's end in a state file that refused it (disk full)
STORE_RETRY = 1.0


#: s a finalize may take before it is asked again (three times, then the job ends ce)
FINALIZE_TIMEOUT = 60.0
#: s between tries to write the file of a job that ended without one (doubling to
#: WRITE_AGAIN_MAX): a full output disk, a recorder that refuses
WRITE_AGAIN = 5.0
WRITE_AGAIN_MAX = 300.0


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def output_dir(path: str | None, submit_dir: str | None, own: Path) -> Path:
    """The folder of a job's file (``settings.output.path``, ``settings.snapshot.path``)
    as tomato resolves it: relative to where submit ran; a job without one (submitted
    from a dashboard or a script) has its own folder ``own`` in the datadir instead."""
    base = Path(path or submit_dir or own)
    if not base.is_absolute():
        base = (Path(submit_dir) if submit_dir else own) / base
    return base


class JobLifecycle:
    def __init__(self, svc: SchedulerService) -> None:
        self.svc = svc

    @property
    def store(self) -> Any:
        return self.svc.store

    def start_runner(self, job: Job, readopt: bool = False) -> None:
        roles = dict(job.progress.get("roles") or {})
        if not roles and job.pipeline in self.svc.layout.pipelines:
            roles = dict(self.svc.layout.pipelines[job.pipeline].roles)
        runner = JobRunner(job=job, roles=roles, host=self.svc, on_done=self.job_done)
        self.svc.runners[job.id] = runner
        if job.status == "rd":  # re-adopted while being cancelled: finish the cancel
            if (job.reason or "").startswith(CANCELLED_BY):  # by whom, stored at the cancel
                runner.cancelled_by = (job.reason or "").split(";")[0]
                runner.by = runner.cancelled_by.removeprefix(CANCELLED_BY)
            runner.cancelled = True
            runner.cancel_at = time.monotonic()
            self.svc.spawn(runner.cancel())
        self.svc.spawn(runner.run())
        snap = (job.payload.get("settings") or {}).get("snapshot")
        if snap:
            self.svc.spawn(self._periodic_snapshots(runner, snap))

    async def _periodic_snapshots(self, runner: JobRunner, snap: Mapping[str, Any]) -> None:
        interval = float(snap.get("interval") or 3600.0)
        job = runner.job
        own = self.svc.settings.jobs_dir / str(job.id)
        if snap.get("path"):  # relative: as output.path (it went to the job folder)
            base = output_dir(snap["path"], job.submit_dir, own)
        elif job.respath:  # next to the results, as tomato writes them
            base = Path(job.respath).parent
        else:
            base = output_dir(None, job.submit_dir, own)
        jobs = self.svc.settings.jobs_dir.resolve()
        there, mine = base.resolve(), own.resolve()
        if (there == jobs or jobs in there.parents) and not (
            there == mine or mine in there.parents  # (its own folder's subfolders: fine)
        ):
            # another job's folder in the datadir (its snapshot named Jobs/3 and results.3
            # and got there before job 3's own file: a hostile tour), as at a submit
            log.warning(
                "job %d: its snapshots go to %s, not to %s (another job's)", job.id, own, base
            )
            base = own
        prefix = snap.get("prefix") or f"snapshot.{job.id}"
        while job.id in self.svc.runners:
            await asyncio.sleep(interval)
            if job.id not in self.svc.runners:
                return
            target = base / f"{prefix}.nc"
            ok, msg, data = await self.svc.recorder_request(
                "finalize",
                self.recorder_args(self.store.job(job.id), target, snapshot=True),
            )
            if ok:
                # the file itself (it may have fallen back to the job folder), not the dir
                written = str(data["path"]) if isinstance(data, dict) and data.get("path") else ""
                written = written or str(target)
                if job.id in self.svc.runners:
                    await self.svc.publish_job(self.store.update_job(job.id, snappath=written))
                self.svc.job_event(job.id, "snapshot_written", detail={"path": written})
            else:
                log.warning("job %d: periodic snapshot failed: %s", job.id, msg)

    def recorder_args(self, job: Job, path: Path, snapshot: bool) -> dict[str, JsonValue]:
        if snapshot:  # a snapshot's tomato_Job names the snapshot, as tomato 2.2's does
            job = job.model_copy(update={"snappath": str(path)})
        roles = dict(job.progress.get("roles") or {})
        metas: dict[str, JsonValue] = {}
        for role, comp in roles.items():
            meta = self.svc.metas.get(comp)
            metas[role] = meta.model_dump(mode="json", by_alias=True) if meta else {"name": comp}
        runner = self.svc.runners.get(job.id)
        expect: list[JsonValue] = list(runner.expectations() if runner else _expect(job))
        offsets: dict[str, JsonValue] = {}
        stepped = runner.clock_steps if runner else set()
        for role, comp in roles.items():
            node = self.svc.node_of(comp)
            if node is None or node.node in stepped:  # no one offset fits all its points
                continue
            off = self.svc.presence_view.skew_of(node.node)
            if off is not None:
                offsets[role] = round(off, 3)
        return {
            "job": job.model_dump(mode="json"),
            "roles": metas,
            "expect": expect,
            "path": str(path),
            "fallback_dir": str(self.svc.settings.jobs_dir / str(job.id)),
            "snapshot": snapshot,
            "clock_offsets": offsets,
        }

    async def _until_stored(self, jobid: int, what: str, write: Callable[[], T]) -> T:
        """``write()`` to the state file, again every STORE_RETRY s while it refuses (a
        full disk): a job's end waits for the file, it is never dropped or left hanging."""
        told = False
        while True:
            try:
                out = write()
            except sqlite3.Error as e:
                if not told:
                    log.error(
                        "job %d: cannot store %s (%s); trying again every %g s",
                        jobid,
                        what,
                        e,
                        STORE_RETRY,
                    )
                    told = True
                    await self._say_unstored(jobid, what, e)
                await asyncio.sleep(STORE_RETRY)
                continue
            if told:
                log.info("job %d: %s stored", jobid, what)
            return out

    async def _say_unstored(self, jobid: int, what: str, e: Exception) -> None:
        """The job's status says why it does not move on (it showed `r` without a reason
        for as long as the state file took no writes: a fault-injection review)."""
        try:
            job = self.store.job(jobid)
        except (KeyError, sqlite3.Error):
            return
        fix = (
            "end the transaction of the program that holds it locked: `tomato status` names it"
            if locked(str(e))
            else "free space, fix its permissions, or mount its disk read-write"
        )
        note = (
            f"{what} is not stored yet: the scheduler's state file cannot be written ({e});"
            f" tried again every {STORE_RETRY:g} s ({fix})"
        )
        reason = f"{job.reason}; {note}" if job.reason else note
        with contextlib.suppress(Exception):  # said where it can be: never in the way
            # kept in memory, so that `ketchup status` says it too (only the retained
            # status did: a fault-injection review)
            await self.svc.publish_job(self.store.set_reason(jobid, reason))

    async def _last_snapshot(self, final: Job, path: Path) -> None:
        """A job's periodic snapshot, once more at its end: it held the points of its
        last interval's start, and its ``snappath`` named that stale file after the job
        ended ``c`` (15 s at 5 s intervals: 96 of 150 points; tomato 2.2's last one
        held them all: a side-by-side tour). Its points are all stored by now (the final
        file was written): no wait."""
        args = self.recorder_args(final, path, snapshot=True) | {"wait": 0.0}
        ok, msg, _data = await self.svc.recorder_request("finalize", args, timeout=60)
        if ok:
            self.svc.job_event(final.id, "snapshot_written", detail={"path": str(path)})
        else:
            log.warning("job %d: its last snapshot was not written: %s", final.id, msg)

    async def _rewrite_verdict(
        self, final: Job, judged: tuple[str, str | None], written: Path
    ) -> None:
        """The file's ``tomato_Job`` carries the job's verdict: when the file itself
        changed it (points missing, a fallback folder), write it again with the final
        status and reason (the same data: no wait for points this time)."""
        status, reason = judged
        job = final.model_copy(update={"status": status, "reason": reason})
        args = self.recorder_args(job, written, snapshot=False) | {"wait": 0.0}
        ok, msg, _data = await self.svc.recorder_request("finalize", args, timeout=60)
        if not ok:
            log.warning("job %d: the file keeps the status %s: %s", job.id, final.status, msg)

    async def _write_when_back(self, final: Job, path: Path, seen: int) -> None:
        """The recorder did not answer the job's finalize (hung, not dead: the
        supervisor restarts a dead one): at its next "online" status (a recorder stopped
        whole sends none until it goes on; one whose loop runs but whose finalize is stuck
        sends them meanwhile), have it write the file with the job's verdict. It carries
        out the requests it got before too, which carried the verdict of the moment (a
        job ``ce`` "could not write the output file" got a file saying ``c``: found by
        fault injection); one job's finalizes run in the order they came (the recorder's
        ``final_lock``), so this one, sent after them, is the last word."""
        presence = self.svc.presence_view
        async with presence.recorder_said:
            await presence.recorder_said.wait_for(lambda: presence.recorder_online != seen)
        args = self.recorder_args(final, path, snapshot=False) | {"wait": 0.0}
        # and again, less and less often, while it cannot (a full disk: the file was
        # tried once more and never again, a review; its points stay in the recorder);
        # not a write that cannot succeed (a file the recorder refuses, a bug): said once
        gap = WRITE_AGAIN
        while True:
            if self.svc.superseded or self.svc.stopping:
                return
            ok, msg, data = await self.svc.recorder_request("finalize", args, timeout=60)
            if ok:
                break
            code = data.get("code") if isinstance(data, dict) else None
            if code not in (None, "unavailable"):  # None: no answer (a recorder away)
                log.error(
                    "job %d: its file cannot be written (%s: %s); not tried again: its "
                    "points stay in the recorder (`ketchup snapshot` writes them)",
                    final.id,
                    code,
                    msg,
                )
                return
            log.warning(
                "job %d: its file is still not written (%s); trying again in %g s",
                final.id,
                msg,
                gap,
            )
            await asyncio.sleep(gap)
            gap = min(gap * 2, WRITE_AGAIN_MAX)
        written = str(data["path"]) if isinstance(data, dict) and data.get("path") else None
        log.info("job %d: its file was written later: %s", final.id, written)
        if written is None:
            return
        self.svc.job_event(final.id, "file_written", detail={"path": written})
        at = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S")
        job = self.store.job(final.id)
        while job.status not in ("c", "ce", "cd"):  # its end is still being stored
            if self.svc.superseded or self.svc.stopping:
                return
            await asyncio.sleep(STORE_RETRY)
            job = self.store.job(final.id)
        reason = f"{job.reason or ''}; the file was written later ({at}): {written}".lstrip("; ")

        progress = dict(job.progress)
        if isinstance(data, dict) and isinstance(data.get("points"), dict):
            progress["points"] = data["points"]  # (none were counted: an admin's tour)

        def note() -> Job:
            with self.store.transaction():
                out: Job = self.store.update_job(
                    final.id, respath=written, reason=reason, progress=progress
                )
            return out

        await self.svc.publish_job(await self._until_stored(final.id, "its file", note))

    async def job_done(self, runner: JobRunner, status: str, reason: str | None) -> None:
        svc = self.svc
        # the runner's progress, not the store's: the store may lag behind it (writes
        # refused by a full disk are retried, see JobRunner.save_now)
        job = self.store.job(runner.job.id)
        job = job.model_copy(update={"progress": job.progress | runner.job.progress})
        path = Path(job.respath or svc.settings.jobs_dir / str(job.id) / f"results.{job.id}.nc")
        ok, msg, data = False, "", None
        ended = _now()
        log.info("job %d: tasks over (%s); asking the recorder for the file", job.id, status)
        # the file carries the job as it ends (status, times, reason), not as it ran
        final = job.model_copy(update={"status": status, "completed_at": ended, "reason": reason})
        if svc.superseded or not self.store.held():  # (held() marks it superseded)
            # another scheduler holds the state file (this one was frozen while the stack
            # was started again): it ends this job; a finalize from here rewrote the
            # ended job's file with this one's stale verdict ("internal error: ...")
            return
        for _attempt in range(3):  # the supervisor restarts a crashed recorder
            ok, msg, data = await svc.recorder_request(
                "finalize",
                self.recorder_args(final, path, snapshot=False),
                timeout=FINALIZE_TIMEOUT,
            )
            if ok:
                break
        progress = dict(job.progress)
        if ok and isinstance(data, dict) and data.get("path"):
            respath = str(data["path"])
            # before the status that ends the job, which a subscriber keyed on it saw
            # first (an integrator's tour)
            await svc.job_event_now(job.id, "file_written", detail={"path": respath})
            judged = judge_file(status, reason, data)
            if judged != (status, reason):
                await self._rewrite_verdict(final, judged, Path(respath))
            status, reason = judged
            if isinstance(data.get("points"), dict):
                progress["points"] = data["points"]
            if job.snappath and (job.payload.get("settings") or {}).get("snapshot"):
                judged_job = final.model_copy(update={"status": status, "reason": reason})
                svc.spawn(self._last_snapshot(judged_job, Path(job.snappath)))
        else:
            respath = job.respath
            if status == "c":
                status = "ce"
            # also after a reason of the tasks' own (missed deadlines): said, not hidden
            why = f"the recorder could not write the output file: {msg}"
            reason = f"{reason}; {why}" if reason else why
            done = final.model_copy(update={"status": status, "reason": reason})
            svc.spawn(self._write_when_back(done, path, svc.presence_view.recorder_online))
        await runner.reset_done()  # the pipeline is free once its components are reset
        # its end is being stored and told: `stop --force` waits for that too (it stopped
        # the stack between the two, and the job's cd was stored, never told: a CI run)
        svc.ending.add(job.id)
        svc.runners.pop(job.id, None)
        try:
            await self._store_and_tell_end(runner, job, status, reason, respath, progress, ended)
        finally:
            svc.ending.discard(job.id)

    async def _store_and_tell_end(
        self,
        runner: JobRunner,
        job: Job,
        status: str,
        reason: str | None,
        respath: str | None,
        progress: dict[str, Any],
        ended: str,
    ) -> None:
        svc = self.svc
        runner.done_saving()  # a retried progress write must not overwrite the end below
        jobid = job.id
        pip = job.pipeline
        unlock = bool((job.payload.get("settings") or {}).get("unlock_when_done"))

        def end_and_free() -> Any:
            # one commit: a scheduler killed between the job's end and its pipeline's
            # release left the pipeline held by an ended job for good (`tomato pipeline
            # ready/eject` refused "job N is running", the next job stayed qw)
            with self.store.transaction():
                out = self.store.update_job(
                    jobid,
                    status=status,
                    completed_at=ended,
                    reason=reason,
                    respath=respath,
                    progress=progress,
                )
                if pip:  # ready again only with unlock_when_done, as tomato
                    self.store.update_pipeline(pip, jobid=None, ready=status == "c" and unlock)
            return out

        job = await self._until_stored(jobid, "its end", end_and_free)
        if pip:
            await svc.publish_pipeline(pip)
        await svc.lost.job_ended((job.progress.get("roles") or {}).values())
        await svc.publish_job(job)
        log.info(
            "job %d ended %s%s; file %s", job.id, status, f" ({reason})" if reason else "", respath
        )
        detail: dict[str, Any] = {"reason": reason}
        if status == "cd" and runner.cancelled:
            detail["by"] = runner.by
        svc.job_event(job.id, "completed", status=status, detail=detail)
        svc.kick()


def judge_file(status: str, reason: str | None, data: dict[str, Any]) -> tuple[str, str | None]:
    """The job's final status and reason, given the recorder's finalize reply.

    ``c`` only when every task's count is exactly in the file and no batch conflicted;
    otherwise ``ce`` (a cancelled job stays ``cd``) with each problem in the reason.
    A file written to the fallback folder is named in the reason.
    """
    problems: list[str] = []
    for key, what in (
        ("missing", "lacks points"),
        ("extra", "has points no runner reported"),
        ("conflicts", "has conflicting duplicate batches"),
        ("altered", "could not hold stored points as they came"),
    ):
        items = data.get(key)
        if isinstance(items, list) and items:
            problems.append(f"the file {what}: " + "; ".join(map(str, items)))
    notes = problems[:]
    if data.get("fallback"):
        notes.append(str(data["fallback"]))
    if problems and status == "c":
        status = "ce"
    if notes:
        reason = "; ".join(([reason] if reason else []) + notes)
    return status, reason


def _expect(job: Job) -> list[dict[str, Any]]:
    """The per-task expectations of a job whose runner is gone (from its progress)."""
    saved = job.progress.get("tasks") or {}
    states = []
    for role, spec in tasks_of(job.payload, job.id):
        ts = TaskState(role, spec, None, None)
        ts.end = (saved.get(str(spec.index)) or {}).get("end")
        states.append(ts)
    return expectations(states, dict(job.progress.get("roles") or {}))
