"""The queue: match queued jobs to pipelines, say why they wait, launch what can.

A pass reads only (id, status, reason, payload) of the queued jobs, parses each payload
once for as long as the job is queued, matches each distinct method once, and stores
every change in one transaction: 10,000 queued jobs make a pass of tens of ms (it was
seconds, and every submit ran one: filling a queue was quadratic). A submit matches
its own job only, unless it may launch now (issue 15).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from tomato_mqtt.config.nodehint import node_command
from tomato_mqtt.driver.validate import TaskValidationError, validate_task
from tomato_mqtt.model.jobs import Job
from tomato_mqtt.model.matching import (
    ComponentView,
    MatchResult,
    match,
    next_launches,
    usable,
    waiting_reason,
)

if TYPE_CHECKING:
    from tomato_mqtt.model.jobs import PipelineState
    from tomato_mqtt.services.scheduler.ops import SchedulerOps

__all__ = ["QueuePass"]


class _Queued(NamedTuple):
    """A queued job as launching sees it (model/matching.QueuedLike)."""

    id: int
    status: str
    owner: str | None = None


def _method_key(payload: str) -> tuple[str, str]:
    """A queued job's method (as canonical JSON) and sample, from its stored payload."""
    p = json.loads(payload)
    method = json.dumps(p.get("method", []), sort_keys=True)
    return method, str((p.get("sample") or {}).get("identifier"))


def _holding(pips: Mapping[str, PipelineState], sample: str) -> str | None:
    """The pipeline that holds ``sample`` (the first, should several)."""
    return next((n for n, p in pips.items() if p.sampleid == sample), None)


class QueuePass:
    def __init__(self, ops: SchedulerOps) -> None:
        self.ops = ops
        self.svc = ops.svc
        # queued job -> (its method as JSON, its sample): payloads never change
        self._queued: dict[int, tuple[str, str]] = {}
        self._last: tuple[Any, ...] | None = None

    def _views(self) -> dict[str, ComponentView]:
        out = {}
        for name, c in self.svc.layout.components.items():
            meta = self.svc.metas.get(name)
            if meta is not None and meta.node != c.node:
                meta = None  # a node's it was moved from: not registered where it is now
            # its host as the devices file says, whose name the reasons give (they named
            # a node online while the meta's, of a node stopped, was not: a review)
            node = self.svc.nodes.get(c.node)
            online = node is not None and node.state == "online"
            caps = frozenset(meta.capabilities) if meta and meta.registered else None
            st = self.svc.component_status(name) if caps is None else None
            out[name] = ComponentView(
                name=name,
                capabilities=caps,
                attrs=meta.attrs if meta else {},
                online=online,
                error=(meta.error if meta else None) or (st.error if st else None),
                node=c.node,
                start_hint=None if online else self._start_hint(c.node),
            )
        return out

    def _start_hint(self, node: str) -> str:
        """How to start ``node`` on its PC: with this stack's instance, broker and login
        (a waiting job said `tomato node --name pc2`, which connects to the PC's own
        localhost and the default instance: an admin's tour)."""
        s = self.svc.settings
        return node_command(s, node, s.mqtt.port)

    def _occupied(self, pips: Mapping[str, PipelineState]) -> tuple[frozenset[str], dict[str, str]]:
        """Components no job may be launched onto now, and per pipeline that runs no job,
        why it cannot take one (when it is not a running job of the queue's that holds it).

        Occupied: a component whose node says it runs a task (a job's, or a task of a job
        that ended while its node was lost and runs on once the node is back, until the
        scheduler has the component reset: stale.py), one being so reset, and one whose
        state the scheduler does not know yet (a scheduler started while the node was
        lost sees only its own ``lost`` status, and the node's ``online`` comes before
        its components' statuses: found by a review, the stale task was launched onto).
        """
        svc = self.svc
        running_jobs = {p.jobid for p in pips.values() if p.jobid is not None}
        why: dict[str, str] = {}
        occupied: set[str] = set()
        unknown: set[str] = set()  # online nodes with registered components of no state
        for name in svc.layout.components:
            st = svc.cstatus.get(name)
            if st is None:
                occupied.add(name)
                host = svc.layout.components[name].node
                there = svc.nodes.get(host)
                if there is None or there.state != "online":
                    # (a job waited with "has not said its state yet" on a component moved
                    # to a node not started yet: a newcomer's tour)
                    why[name] = (
                        f"component {name}: its node {host!r} is not online (start it on "
                        f"its PC: {self._start_hint(host)})"
                    )
                else:
                    why[name] = svc.unheard_of(name) or (
                        f"component {name} has not said its state yet"
                    )
                node, meta = svc.node_of(name), svc.metas.get(name)
                if (
                    node is not None
                    and node.state == "online"
                    and meta
                    and meta.registered
                    and meta.node == host  # (not the meta of a node it was moved from)
                ):
                    unknown.add(node.node)
                elif there is not None and there.state == "online" and svc.unheard_of(name):
                    # hosted, and nothing of it came: asked again (its rules written again
                    # meanwhile, what the node says of it then gets through)
                    unknown.add(host)
            elif st.state == "running":
                occupied.add(name)
                if st.job not in running_jobs and st.job not in svc.runners:
                    why[name] = f"component {name} still runs task {st.task} of job {st.job}"
            elif name in svc.stale.resetting:
                occupied.add(name)
                why[name] = f"component {name} is being reset after job {svc.stale.resetting[name]}"
            host = svc.layout.components[name].node
            if host in svc.lost.returning and name not in occupied:
                occupied.add(name)
                why[name] = (
                    f"node {host} is online but has not answered the scheduler yet "
                    "(back after it was lost: its connection may still be recovering from "
                    "a network cut)"
                )
        svc.stale.unknown(unknown)  # asked for it, if that lasts
        # a component another pipeline's running job holds (pipelines may share one): for
        # as long as that job runs, also between its tasks (found by a fault-injection run:
        # the job waiting for it showed `qw` and no word why)
        in_use: dict[str, str] = {}
        for name, pip in pips.items():
            layout = svc.layout.pipelines.get(name)
            if pip.jobid is not None and layout is not None:
                for c in layout.roles.values():
                    in_use.setdefault(c, f"component {c} is in use by job {pip.jobid} on {name}")
        blocked: dict[str, str] = {}
        for name, pip in pips.items():
            layout = svc.layout.pipelines.get(name)
            if pip.jobid is not None or layout is None:
                continue
            comps = dict.fromkeys(layout.roles.values())
            held = [why.get(c) or in_use[c] for c in comps if c in why or c in in_use]
            if held:
                blocked[name] = "; ".join(held)
        return frozenset(occupied), blocked

    @staticmethod
    def _validator(view: ComponentView, technique: str, params: Mapping[str, Any]) -> str | None:
        try:
            validate_task(view.capabilities or (), view.attrs, technique, params)
        except TaskValidationError as e:
            return str(e)
        return None

    def _pipelines(self) -> dict[str, PipelineState]:
        """The pipelines as matching sees them: on an open stack no sample is anyone's
        (an owner kept from when the stack was secured held back every other job: a
        review)."""
        pips = self.ops.store.pipelines()
        if self.ops.access.roles.open:
            pips = [p.model_copy(update={"owner": None}) if p.owner else p for p in pips]
        return {p.name: p for p in pips}

    async def place(self, job: Job) -> None:
        """Match a new job. A whole pass only when it might launch now (the pass keeps
        the queue's order) or one is due anyway; otherwise this job's status and reason
        alone, so a submit costs the same at any queue depth."""
        if self.svc.kick_pending():
            await self.schedule()
            return
        method = job.payload.get("method", [])
        res = match(method, self.svc.layout.pipelines, self._views(), self._validator)
        pips = self._pipelines()
        sample = str((job.payload.get("sample") or {}).get("identifier"))
        free = [
            n
            for n in res.candidates
            if n in pips
            and pips[n].ready
            and pips[n].jobid is None
            and pips[n].sampleid == sample
            and usable(pips[n], job.owner)
        ]
        if free:
            await self.schedule()
            return
        status = "qw" if res.candidates else job.status
        reason = (
            waiting_reason(res.candidates, pips, sample, problems=res.problems, owner=job.owner)
            if res.candidates
            else res.reason_for(_holding(pips, sample))
        )
        if (status, reason) != (job.status, job.reason):
            self.ops.store.set_queue_states([(job.id, status, reason)])
            new = self.ops.store.job(job.id)
            await self.svc.publish_job(new)
            if new.status == "qw" and job.status != "qw":
                self.svc.job_event(job.id, "matched", status="qw")

    async def schedule(self) -> None:
        """Match queued jobs, explain the ones that cannot match, launch what can.

        One pass reads only (id, status, reason, payload) of the queued jobs, matches
        each distinct method once, and stores every change in one transaction: 10,000
        queued jobs cost a pass of tens of ms, not seconds (issue 15)."""
        svc = self.svc
        store = self.ops.store
        views = self._views()
        pips = self._pipelines()
        # a node's heartbeat kicks a pass too: with nothing changed since the last one
        # (no write to the store, the same components, pipelines and layout) there is
        # nothing to decide, and 10,000 queued jobs are not read again
        occupied, blocked = self._occupied(pips)
        # (the components whose status came to name the broker's rules: their jobs' reason
        # says it, which was kept as before while nothing else changed: a review)
        unheard = frozenset(n for n in svc.unheard if svc.unheard_of(n))
        seen = (store.writes, svc.layout, views, pips, occupied, unheard)
        if seen == self._last:
            return
        rows = store.queue_rows()
        if not rows:
            self._queued.clear()
            self._last = seen
            return
        results: dict[str, MatchResult] = {}
        reasons: dict[tuple[str, str, str | None], str | None] = {}
        matches: dict[int, MatchResult] = {}
        queue: list[_Queued] = []
        changes: list[tuple[int, str, str | None]] = []
        known, self._queued = self._queued, {}
        for jobid, status, reason, payload, owner in rows:
            key, sample = self._queued[jobid] = known.get(jobid) or _method_key(payload)
            res = results.get(key)
            if res is None:
                method = json.loads(key)
                res = results[key] = match(method, svc.layout.pipelines, views, self._validator)
            matches[jobid] = res
            new_status = "qw" if res.candidates else status
            if (key, sample, owner) not in reasons:
                reasons[key, sample, owner] = (
                    # it can run: say when it waits for the user (a sample) or a component
                    waiting_reason(res.candidates, pips, sample, blocked, res.problems, owner)
                    if res.candidates
                    else res.reason_for(_holding(pips, sample))  # the user's pipeline's
                )
            new_reason = reasons[key, sample, owner]
            if new_status != status or new_reason != reason:
                changes.append((jobid, new_status, new_reason))
            if res.candidates:
                queue.append(_Queued(jobid, new_status, owner))
        launches = next_launches(
            queue,
            pips,
            matches,
            lambda j: self._queued[j.id][1],
            layouts=svc.layout.pipelines,
            occupied=occupied,
        )
        if svc.exit_requested:
            # the stack is stopping: a job launched now was stopped with it and ended ce
            # "… not started again" at the next start (a fault-injection review); it
            # stays queued and runs after the start
            launches = []
        # the queue's changes and the launches they allow: one transaction (one fsync
        # between a submit and its first task, not one per step); told once stored
        queued: list[Job] = []
        launched: list[tuple[Job, str]] = []
        with store.transaction():
            if changes:
                queued = store.jobs(ids=store.set_queue_states(changes))
            for jobid, pipeline in launches:
                launched.append((self.ops.store_launch(store.job(jobid), pipeline), pipeline))
        was = {row[0]: row[1] for row in rows}
        ids = {job.id for job, _pipeline in launched}
        svc.launching.update(ids)  # until its runner is started (`stop --force` waits)

        def told(job: Job) -> None:
            if job.status == "qw" and was.get(job.id) != "qw":
                svc.job_event(job.id, "matched", status="qw")

        # the launched jobs first, their runners started before anything can wait: a
        # cancel handled while the others are published (every 200th waits for the
        # broker) must find its runner (found by a review: it was lost, the job ran on)
        try:
            for job in queued:
                if job.id in ids:
                    await svc.publish_job(job)  # its qw, told before its r
                    told(job)
            for job, pipeline in launched:
                await self.ops.announce_launch(job, pipeline)
                svc.launching.discard(job.id)
        finally:
            svc.launching.difference_update(ids)
        for i, job in enumerate(j for j in queued if j.id not in ids):
            # thousands at once (a restart, a reload): wait for the broker now and
            # then, as Retention.announce does
            await svc.publish_job(job, wait=i % 200 == 199)
            told(job)
        # what this pass has decided on, unless the store changed under it while it
        # published (then the next pass looks again); a launch writes, so the pass
        # after a launch runs
        ours = seen[0] + (1 if changes else 0)
        self._last = (ours, *seen[1:]) if store.writes == ours else None
