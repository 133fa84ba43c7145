"""What the page gets of each wire message: every field named here, by attribute.

A field renamed in ``wire/messages.py`` is then a type error in this file (mypy), not a
silently empty cell in the browser; the page's own protocol stays as documented in
docs/dashboard.md whatever the wire calls things.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

from tomato_mqtt.wire.messages import ComponentMeta, ComponentStatus, JobEvent

if TYPE_CHECKING:
    from tomato_mqtt.model.jobs import Job

__all__ = ["event_view", "meta_view", "recorded_events", "status_view"]

#: what a page's event list says of an event made from the job's record
RECORDED = "(from the job's record)"


def _at(iso: str | None) -> float | None:
    try:
        return datetime.datetime.fromisoformat(str(iso)).timestamp() if iso else None
    except ValueError:
        return None


def _view(event: str, t: float, **kw: Any) -> dict[str, Any]:
    return {"event": event, "time": t, "role": None, "task": None, "status": None} | kw


def recorded_events(job: Job) -> list[dict[str, Any]]:
    """The main events of ``job`` as its record (the whole job) tells them: events are
    not retained, so a dashboard started during a job showed only those after its start
    (queued, launched and the first task_started missing: a dashboard tour)."""
    out: list[dict[str, Any]] = []
    if (t := _at(job.submitted_at)) is not None:
        out.append(_view("queued", t, detail={"message": RECORDED}))
    if (t := _at(job.launched_at)) is not None:
        out.append(_view("launched", t, detail={"message": RECORDED}))
    method = job.payload.get("method") if isinstance(job.payload, dict) else None
    tasks = job.progress.get("tasks") if isinstance(job.progress, dict) else None
    for key, info in (tasks or {}).items() if isinstance(tasks, dict) else ():
        if not (str(key).isdigit() and isinstance(info, dict)):
            continue
        i = int(key)
        step = method[i] if isinstance(method, list) and i < len(method) else None
        role = step.get("component_role") if isinstance(step, dict) else None
        started = info.get("started_at")
        if isinstance(started, (int, float)):
            out.append(
                _view(
                    "task_started", float(started), role=role, task=i, detail={"message": RECORDED}
                )
            )
        end = info.get("end")
        if isinstance(end, dict) and isinstance(end.get("t_end"), (int, float)):
            said = f"{end.get('reason')}, {end.get('npoints')} point(s) {RECORDED}"
            out.append(
                _view(
                    "task_ended", float(end["t_end"]), role=role, task=i, detail={"message": said}
                )
            )
    if job.status in ("c", "ce", "cd") and (t := _at(job.completed_at)) is not None:
        msg = f"{job.reason} {RECORDED}" if job.reason else RECORDED
        out.append(_view("completed", t, status=job.status, detail={"message": msg}))
    return out


def with_recorded(live: list[dict[str, Any]], job: Job | None) -> list[dict[str, Any]]:
    """``live`` events and those of the job's record that none of them tells, in time
    order."""
    if job is None:
        return live
    told = {(e.get("event"), e.get("task")) for e in live}
    more = [e for e in recorded_events(job) if (e["event"], e["task"]) not in told]
    return sorted(live + more, key=lambda e: e.get("time") or 0.0) if more else live


def event_view(ev: JobEvent) -> dict[str, Any]:
    return {
        "event": ev.event,
        "time": ev.time,
        "role": ev.role,
        "task": ev.task,
        "status": ev.status,
        "detail": ev.detail,
    }


def status_view(st: ComponentStatus, rx: float | None = None) -> dict[str, Any]:
    """``rx``: when the dashboard received it (its own clock). A running task's age is
    the page's now less ``started_at`` taken to the dashboard's clock by its node's
    offset (the node view's ``offset``, from its heartbeats: a status is retained, and one
    received long after it was sent, by a dashboard started mid-task, read "0 s": a
    review); without one, ``elapsed`` at ``rx`` plus the page's time since."""
    running = st.state == "running" and st.started_at is not None
    return {
        "name": st.name,
        "node": st.node,
        "state": st.state,
        "job": st.job,
        "task": st.task,
        "task_name": st.task_name,
        "technique": st.technique,
        "attrs": st.attrs,
        "error": st.error,
        "max_duration": st.max_duration,
        "started_at": st.started_at if running else None,
        "elapsed": max(0.0, st.time - st.started_at) if running and st.started_at else None,
        "rx": rx,
    }


def meta_view(m: ComponentMeta) -> dict[str, Any]:
    return {
        "name": m.name,
        "device": m.device,
        "driver": m.driver,
        "address": m.address,
        "channel": m.channel,
        "node": m.node,
        "registered": m.registered,
        "error": m.error,
        "attrs": {k: a.model_dump(mode="json") for k, a in m.attrs.items()},
        "capabilities": m.capabilities,
        "constants": m.constants,
    }
