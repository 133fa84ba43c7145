"""What the dashboard knows: the lab as seen on the topic contract, and what changed.

Every received message is decoded through its model in ``wire/messages.py`` (a field
renamed there is a type error here, not a silently empty cell) and stored by the name in
its *topic* (DESIGN §4: trust topics, never payloads). :meth:`LabState.apply` returns
nothing; it records which views changed, and :meth:`LabState.take_changes` hands them to
the server, coalesced, so 100 components publishing at once cost one message per flush.

Pure: no I/O, no MQTT (the service feeds it).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from typing import Any

from tomato_mqtt.model.jobs import Job
from tomato_mqtt.services.dashboard.series import Series
from tomato_mqtt.services.dashboard.views import (
    event_view,
    meta_view,
    status_view,
    with_recorded,
)
from tomato_mqtt.wire.messages import (
    ComponentMeta,
    ComponentStatus,
    DataBatch,
    JobEvent,
    JobStatus,
    LastPoint,
    NodeStatus,
    PipelineStatus,
    RecorderStatus,
    SchedulerStatus,
    decode,
)
from tomato_mqtt.wire.topics import ParsedTopic, slug

__all__ = ["STATUS_MEANING", "LabState"]

#: tomato's job status codes, in words (the page shows both)
STATUS_MEANING = {
    "q": "queued",
    "qw": "queued, waiting (its reason says for what)",
    "r": "running",
    "rd": "cancel requested",
    "c": "completed",
    "ce": "completed with error",
    "cd": "cancelled",
}

#: finished jobs the overview keeps after their retained status went (the newest; the
#: page lists the newest 100 finished jobs)
KEEP_FINISHED = 100

#: jobs whose series, events and task marks are kept (the newest ones)
KEEP_JOB_DATA = 20
#: jobs whose events, task marks and roles are kept (a soak run: ~2 KB per job for good,
#: for the jobs that never had plotted data: cancelled while queued, say)
KEEP_JOB_STATE = 200
#: events kept per job
KEEP_EVENTS = 200
#: batch numbers remembered per stream (the newest): a batch sent again is at most this
#: far behind the newest (a node's spool of unacknowledged batches, a QoS 1 redelivery)
SEEN_WINDOW = 4096


class _Seen:
    """The batch numbers of one stream already plotted (the newest SEEN_WINDOW): a batch
    a node sends again (its spool, after a restart or at the recorder's request) or QoS 1
    delivers twice is plotted and counted once, as the recorder stores it once (its
    points were counted again: "points on screen" 479 for 437 stored, an outside run)."""

    __slots__ = ("seqs", "top")

    def __init__(self) -> None:
        self.top = -1
        self.seqs: set[int] = set()

    def first_time(self, seq: int) -> bool:
        # older than the window: taken for a repeat (a batch never seen here comes from
        # the file when the job ends: held < stored makes the plots anew)
        if seq in self.seqs or seq <= self.top - SEEN_WINDOW:
            return False
        self.seqs.add(seq)
        if seq > self.top:
            self.top = seq
            if len(self.seqs) > 2 * SEEN_WINDOW:
                self.seqs = {q for q in self.seqs if q > seq - SEEN_WINDOW}
        return True


def _changes_only(marks: list[dict[str, Any]], component: str) -> list[dict[str, Any]]:
    """``marks`` (in time order) without those of ``component`` that repeat its task
    before: the first live batch after a restart marked its task anew where the stored
    points go on with it (a "task 0" marker at the dashboard's restart: a tour)."""
    out: list[dict[str, Any]] = []
    prev: object = object()
    for m in marks:
        if m.get("component") == component and m.get("kind") in ("data", "file"):
            if m.get("task") == prev:
                continue
            prev = m.get("task")
        out.append(m)
    return out


class LabState:
    """The latest retained state of one instance, plus live series of recent jobs."""

    def __init__(self) -> None:
        self.scheduler: SchedulerStatus | None = None
        self.recorder: RecorderStatus | None = None
        self.rx: dict[str, float] = {}  # presence key -> when its last status arrived
        self.nodes: dict[str, NodeStatus] = {}
        self.metas: dict[str, ComponentMeta] = {}
        self.statuses: dict[str, ComponentStatus] = {}
        self.lasts: dict[str, LastPoint] = {}
        self.pipelines: dict[str, PipelineStatus] = {}
        self.jobs: dict[int, JobStatus] = {}  # the retained summaries (schema 2)
        #: finished jobs still listed after the scheduler cleared their retained status
        self._kept: set[int] = set()
        self.details: dict[int, Job] = {}  # whole jobs (payload), asked for by job pages
        self.events: dict[int, deque[dict[str, Any]]] = {}
        self.series: OrderedDict[int, dict[str, Series]] = OrderedDict()
        self.marks: dict[int, list[dict[str, Any]]] = {}  # job -> task boundaries
        self._last_task: dict[tuple[int, str], int | None] = {}
        self._seen: dict[int, dict[tuple[str, str], _Seen]] = {}  # job -> (cmp, stream)
        self.repeats = 0  # batches received again, not plotted again
        self.roles: dict[int, dict[str, str]] = {}  # job -> component -> role
        #: the jobs with events, marks or roles, the newest last (_touch)
        self._touched: OrderedDict[int, None] = OrderedDict()
        self._changed: dict[tuple[str, str], None] = {}
        self._series_changed: set[int] = set()

    # -- input ----------------------------------------------------------------------------
    def apply(self, parsed: ParsedTopic, topic: str, payload: bytes) -> None:
        """Take one message (raises ``DecodeError`` for a bad one; the caller logs it)."""
        now = time.time()
        name = parsed.name or ""
        match parsed.kind:
            case "scheduler_status":
                self.scheduler = decode(SchedulerStatus, payload, topic)
                self.rx["scheduler"] = now
                self._mark("scheduler", "")
            case "recorder_status":
                self.recorder = decode(RecorderStatus, payload, topic)
                self.rx["recorder"] = now
                self._mark("recorder", "")
                for jid in self.recorder.jobs:
                    if jid.isdigit() and int(jid) in self.jobs:
                        self._mark("job", jid)
            case "node_status":
                self.nodes[name] = decode(NodeStatus, payload, topic)
                self.rx[f"node:{name}"] = now
                self._mark("node", name)
            case "component_meta":
                self.metas[name] = decode(ComponentMeta, payload, topic)
                self._mark("component", name)
            case "component_status":
                self.statuses[name] = decode(ComponentStatus, payload, topic)
                self.rx[f"component:{name}"] = now
                self._mark("component", name)
            case "component_last":
                self.lasts[name] = decode(LastPoint, payload, topic)
                self._mark("last", name)
            case "pipeline_status":
                self.pipelines[name] = decode(PipelineStatus, payload, topic)
                self._mark("pipeline", name)
            case "job_status":
                self._job(decode(JobStatus, payload, topic), name)
            case "job_event":
                self._event(decode(JobEvent, payload, topic), int(name))
            case "component_data":
                self._data(decode(DataBatch, payload, topic), name)

    def forget(self, parsed: ParsedTopic) -> None:
        """An empty retained message: the topic was cleared (e.g. a job archived)."""
        name = parsed.name or ""
        stores: dict[str, dict[str, Any]] = {
            "node_status": self.nodes,
            "component_meta": self.metas,
            "component_status": self.statuses,
            "component_last": self.lasts,
            "pipeline_status": self.pipelines,
        }
        store = stores.get(parsed.kind)
        if store is not None:
            store.pop(name, None)
            if parsed.kind in ("node_status", "component_status"):
                self.rx.pop(f"{parsed.kind.split('_')[0]}:{name}", None)
        elif parsed.kind == "job_status" and name.isdigit():
            old = self.jobs.get(int(name))
            if old is not None and old.status in ("c", "ce", "cd"):
                # the scheduler's retention ([jobs] retain_finished, …_age), not the
                # job's end: the overview keeps it among the newest finished (they went
                # from the page after an hour: an integrator's review)
                self._kept.add(old.jobid)
                self._keep_newest_finished()
                return
            self.jobs.pop(int(name), None)
        kind = {"node_status": "node", "pipeline_status": "pipeline", "job_status": "job"}.get(
            parsed.kind, "component"
        )
        self._mark(kind, name)

    def _keep_newest_finished(self) -> None:
        """At most KEEP_FINISHED finished jobs whose retained status is gone (the oldest
        go first)."""
        while len(self._kept) > KEEP_FINISHED:
            oldest = min(self._kept)
            self._kept.discard(oldest)
            self.jobs.pop(oldest, None)
            self._mark("job", str(oldest))

    def _job(self, job: JobStatus, topic_id: str) -> None:
        if str(job.jobid) != topic_id:
            return  # a payload that disagrees with its topic is dropped
        self.jobs[job.jobid] = job
        self._kept.discard(job.jobid)  # retained again
        if job.pipeline and job.status in ("r", "rd") and job.jobid not in self.roles:
            pip = self.pipelines.get(job.pipeline) or next(
                (p for p in self.pipelines.values() if p.name == job.pipeline), None
            )
            if pip is not None:
                self.roles[job.jobid] = {slug(cmp): role for role, cmp in pip.roles.items()}
                self._touch(job.jobid)
        self._mark("job", str(job.jobid))

    def job_fetched(self, job: Job) -> None:
        """The whole job (with its payload), as ``job_status`` replied: for its page."""
        self.details[job.id] = job
        while len(self.details) > KEEP_JOB_DATA:
            self.details.pop(next(iter(self.details)))

    def _touch(self, job: int) -> None:
        """A job's events, marks or roles changed: keep them, and forget those of the
        oldest jobs beyond KEEP_JOB_STATE (its plotted data have their own bound)."""
        self._touched[job] = None
        self._touched.move_to_end(job)
        while len(self._touched) > KEEP_JOB_STATE:
            old, _ = self._touched.popitem(last=False)
            if old in self.series:
                continue  # plotted: goes with its data (_data)
            self.events.pop(old, None)
            self.marks.pop(old, None)
            self.roles.pop(old, None)

    def _event(self, ev: JobEvent, topic_id: int) -> None:
        if ev.job != topic_id:
            return
        self._touch(ev.job)
        self.events.setdefault(ev.job, deque(maxlen=KEEP_EVENTS)).append(event_view(ev))
        if ev.event == "task_started" and ev.role is not None:
            self.marks.setdefault(ev.job, []).append(
                {"t": ev.time, "role": ev.role, "task": ev.task, "kind": "start"}
            )
        self._mark("event", str(ev.job))

    def _data(self, batch: DataBatch, cmp: str) -> None:
        if batch.job is None or not batch.uts:
            return  # idle measurements: only their latest value shows (component/last)
        seen = self._seen.setdefault(batch.job, {})
        if not seen.setdefault((cmp, batch.stream_id()), _Seen()).first_time(batch.seq):
            self.repeats += 1
            return
        per_job = self.series.get(batch.job)
        if per_job is None:
            per_job = self.series[batch.job] = {}
            while len(self.series) > KEEP_JOB_DATA:
                old, gone = self.series.popitem(last=False)
                self.marks.pop(old, None)
                self.events.pop(old, None)
                self.roles.pop(old, None)
                self._touched.pop(old, None)
                self._seen.pop(old, None)
                for c in gone:
                    self._last_task.pop((old, c), None)
        else:
            self.series.move_to_end(batch.job)
        s = per_job.get(cmp)
        if s is None:
            s = per_job[cmp] = Series()
        key = (batch.job, cmp)
        if key not in self._last_task or self._last_task[key] != batch.task:
            self._last_task[key] = batch.task
            self.marks.setdefault(batch.job, []).append(
                {"t": batch.uts[0], "component": cmp, "task": batch.task, "kind": "data"}
            )
        # array-valued variables (a spectrum per point) are in the file, not in the plots
        scalars = {k: v for k, v in batch.vars.items() if k not in batch.dims}
        s.add(batch.uts, scalars, batch.units)
        self._series_changed.add(batch.job)

    def backfill(
        self,
        job: int,
        component: str,
        role: str,
        uts: list[float],
        columns: dict[str, list[Any]],
        units: dict[str, str],
        task: list[int],
        fresh: bool = False,
    ) -> int:
        """Stored points of a job from before this dashboard saw it (its file): those
        older than the first point received live are added. Returns how many.

        ``fresh``: the component's series made anew from them all (an ended job whose
        live view missed deliveries: a broker restart, messages dropped under load)."""
        per_job = self.series.setdefault(job, {})
        s = per_job.get(component)
        if s is None or fresh:
            s = per_job[component] = Series()
            marks = self.marks.get(job, [])
            self.marks[job] = [m for m in marks if m.get("component") != component]
        before = s.first_t if s.first_t is not None else float("inf")
        keep = [i for i, t in enumerate(uts) if t < before]
        if keep:
            s.add(
                [uts[i] for i in keep], {k: [c[i] for i in keep] for k, c in columns.items()}, units
            )
            prev: int | None = None
            marks = self.marks.setdefault(job, [])
            for i in keep:
                tk = task[i] if i < len(task) else None
                if tk != prev:
                    marks.append({"t": uts[i], "component": component, "task": tk, "kind": "file"})
                    prev = tk
            marks.sort(key=lambda m: m["t"])
            self.marks[job] = _changes_only(marks, component)
        self.roles.setdefault(job, {}).setdefault(component, role)
        self._series_changed.add(job)
        return len(keep)

    def held(self, job: int) -> int:
        """The points of ``job`` this dashboard holds (what its pages plot)."""
        return sum(s.points for s in self.series.get(job, {}).values())

    def _mark(self, kind: str, key: str) -> None:
        self._changed[(kind, key)] = None

    # -- output ---------------------------------------------------------------------------
    def take_changes(self) -> list[dict[str, Any]]:
        """The views changed since the last call, each once."""
        out = [self.view(kind, key) for kind, key in self._changed]
        self._changed.clear()
        return out

    def take_series_changed(self) -> set[int]:
        out, self._series_changed = self._series_changed, set()
        return out

    def view(self, kind: str, key: str) -> dict[str, Any]:
        """One item of the page: ``{k: kind, id: key, v: value or null (gone)}``."""
        v: Any = None
        if kind == "scheduler" and self.scheduler is not None:
            sch = self.scheduler
            v = {
                "state": sch.state,
                "version": sch.version,
                "jobs_running": sch.jobs_running,
                "jobs_queued": sch.jobs_queued,
                "storage_error": sch.storage_error,
                # what the broker does not do (brokercheck.py): on RabbitMQ this page
                # sees little but this status, which comes on its own topic
                "broker_warnings": sch.broker_warnings or [],
                "rx": self.rx.get("scheduler"),
            }
        elif kind == "recorder" and self.recorder is not None:
            r = self.recorder
            v = {"state": r.state, "version": r.version, "storage_error": r.storage_error}
            v["rx"] = self.rx.get("recorder")
        elif kind == "node" and key in self.nodes:
            n = self.nodes[key]
            v = {
                "node": n.node,
                "state": n.state,
                "version": n.version,
                "host": n.host,
                "components": n.components,
                "drivers": {
                    d: {"loaded": i.loaded, "error": i.error} for d, i in n.drivers.items()
                },
                "spool_pending": n.spool_pending,
                "rx": self.rx.get(f"node:{key}"),
                # this dashboard's clock less the node's, by its last heartbeat (a task's
                # age: status_view)
                "offset": (
                    self.rx[f"node:{key}"] - n.heartbeat
                    if n.heartbeat and f"node:{key}" in self.rx
                    else None
                ),
            }
        elif kind == "component":
            v = self.component_view(key)
        elif kind == "last" and key in self.lasts:
            last = self.lasts[key]
            v = {"uts": last.uts, "values": last.values, "units": last.units}
        elif kind == "pipeline" and key in self.pipelines:
            pip = self.pipelines[key]
            v = {
                "name": pip.name,
                "sample": pip.sample,
                "ready": pip.ready,
                "job": pip.job,
                "roles": pip.roles,
                "slugs": {role: slug(c) for role, c in pip.roles.items()},
                "owner": pip.owner,  # whose sample (None: the lab's)
            }
        elif kind == "job" and key.isdigit() and int(key) in self.jobs:
            v = self.job_summary(self.jobs[int(key)])
        elif kind == "event" and key.isdigit():
            evs = self.events.get(int(key))
            v = evs[-1] if evs else None
        return {"k": kind, "id": key, "v": v}

    def component_view(self, key: str) -> dict[str, Any] | None:
        meta, status = self.metas.get(key), self.statuses.get(key)
        if meta is None and status is None:
            return None
        return {
            "meta": meta_view(meta) if meta else None,
            "status": status_view(status, self.rx.get(f"component:{key}")) if status else None,
        }

    def points(self, jobid: int) -> int | None:
        if self.recorder is None:
            return None
        prog = self.recorder.jobs.get(str(jobid))
        return sum(prog.points.values()) if prog is not None else None

    def job_summary(self, job: JobStatus) -> dict[str, Any]:
        stored = sum(job.points.values()) if job.points else self.points(job.jobid)
        return {
            "id": job.jobid,
            "jobname": job.jobname,
            "status": job.status,
            "meaning": STATUS_MEANING.get(job.status, job.status),
            "pipeline": job.pipeline,
            "sampleid": job.sampleid,
            "owner": job.owner,
            "submitted_at": job.submitted_at,
            "launched_at": job.launched_at,
            "completed_at": job.completed_at,
            "reason": job.reason,
            "points": stored,
            "respath": job.respath,
            "tasks": job.tasks,
        }

    def whole_summary(self, whole: Job) -> dict[str, Any]:
        """A job's summary from the whole job (``job_status``): a finished job no longer
        retained has no summary of its own, and its page said "no such job (yet)"
        (found by a soak run)."""
        return self.job_summary(JobStatus.of(whole))

    def full(self) -> dict[str, Any]:
        """Everything the overview shows, for a page that just connected."""
        keys: list[tuple[str, str]] = [("scheduler", ""), ("recorder", "")]
        keys += [("node", k) for k in self.nodes]
        keys += [("component", k) for k in set(self.metas) | set(self.statuses)]
        keys += [("last", k) for k in self.lasts]
        keys += [("pipeline", k) for k in self.pipelines]
        keys += [("job", str(k)) for k in self.jobs]
        return {"items": [self.view(k, i) for k, i in keys]}

    def job_detail(self, jobid: int) -> dict[str, Any]:
        """A job page: the job with its payload, events, task marks and every series."""
        job = self.jobs.get(jobid)
        whole = self.details.get(jobid)
        roles = self.roles.get(jobid, {})
        series = self.series.get(jobid, {})
        return {
            "job": whole.model_dump(mode="json") if whole else None,
            "summary": self.job_summary(job)
            if job
            else (self.whole_summary(whole) if whole else None),
            "events": self.job_events(jobid),
            "marks": self.marks.get(jobid, []),
            "roles": roles,
            "series": {cmp: s.snapshot() for cmp, s in series.items()},
        }

    def job_events(self, jobid: int) -> list[dict[str, Any]]:
        """The events seen live, with those of the job's record they lack."""
        return with_recorded(list(self.events.get(jobid, ())), self.details.get(jobid))

    def series_updates(self, jobid: int) -> dict[str, Any]:
        out = {}
        for cmp, s in self.series.get(jobid, {}).items():
            upd = s.take_update()
            if upd is not None:
                out[cmp] = upd
        marks, roles = self.marks.get(jobid, []), self.roles.get(jobid, {})
        return {"series": out, "marks": marks, "roles": roles}
