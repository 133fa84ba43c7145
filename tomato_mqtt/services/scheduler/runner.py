"""Runs one job: the tasks of each role in order, roles in parallel.

Event-driven throughout: a task's end is seen in the component's retained status
(``last_task``), triggers (``start_with_task_name`` / ``stop_with_task_name``) fire the
moment the named task has started, and a cancel stops every running task at once.
Progress is persisted before each step, so a restarted scheduler re-adopts the job:
tasks that kept running on their nodes are waited for, not started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from tomato_mqtt.driver.spec import TaskSpec
from tomato_mqtt.model.jobs import Job
from tomato_mqtt.wire.messages import ComponentStatus, NodeStatus

__all__ = ["JobRunner", "RunnerHost", "tasks_of"]

log = logging.getLogger(__name__)


class RunnerHost(Protocol):
    """What a runner needs from the scheduler (kept narrow so it can be tested alone)."""

    cond: asyncio.Condition
    node_grace_period: float

    def component_status(self, name: str) -> ComponentStatus | None: ...
    def node_of(self, component: str) -> NodeStatus | None: ...
    def save_progress(self, job: int, progress: dict[str, Any]) -> None: ...
    def job_event(self, job: int, event: str, **kw: Any) -> None: ...
    async def component_request(
        self, component: str, op: str, args: Mapping[str, Any], timeout: float = 5.0
    ) -> tuple[bool, str, Any]: ...


def tasks_of(payload: Mapping[str, Any], job: int) -> list[tuple[str, TaskSpec]]:
    """(role, task) for every task of the payload, in payload order."""
    out = []
    for i, t in enumerate(payload.get("method", [])):
        out.append(
            (
                str(t["component_role"]),
                TaskSpec(
                    technique_name=t["technique_name"],
                    max_duration=float(t["max_duration"]),
                    sampling_interval=float(t["sampling_interval"]),
                    task_params=dict(t.get("task_params") or {}),
                    task_name=t.get("task_name"),
                    job=job,
                    index=i,
                ),
            )
        )
    return out


@dataclass
class _TaskState:
    role: str
    spec: TaskSpec
    start_with: str | None
    stop_with: str | None
    state: str = "pending"  # pending / starting / running / ended / skipped
    end: dict[str, Any] | None = None


@dataclass
class JobRunner:
    job: Job
    roles: dict[str, str]  # role -> component name
    host: RunnerHost
    on_done: Callable[[JobRunner, str, str | None], Awaitable[None]]
    tasks: list[_TaskState] = field(default_factory=list)
    cancelled: bool = False
    error: str | None = None
    started_names: set[str] = field(default_factory=set)
    _bg: set[asyncio.Future[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        method = self.job.payload.get("method", [])
        saved = self.job.progress.get("tasks", {})
        for (role, spec), raw in zip(tasks_of(self.job.payload, self.job.id), method, strict=True):
            ts = _TaskState(
                role, spec, raw.get("start_with_task_name"), raw.get("stop_with_task_name")
            )
            prev = saved.get(str(spec.index))
            if prev:
                ts.state = prev.get("state", "pending")
                ts.end = prev.get("end")
            if ts.state in ("running", "ended") and spec.task_name:
                self.started_names.add(spec.task_name)
            self.tasks.append(ts)

    # -- persistence -----------------------------------------------------------------------
    def _save(self) -> None:
        progress = dict(self.job.progress)
        progress["roles"] = self.roles
        progress["tasks"] = {
            str(t.spec.index): {"state": t.state, "end": t.end} for t in self.tasks
        }
        self.job.progress = progress
        self.host.save_progress(self.job.id, progress)

    def expectations(self) -> list[dict[str, Any]]:
        """Where each ended task's data ends, for the recorder's completeness check."""
        out = []
        for t in self.tasks:
            if t.end and t.end.get("last_seq", -1) >= 0:
                out.append(
                    {
                        "component": self.roles[t.role],
                        "epoch": t.end["epoch"],
                        "last_seq": t.end["last_seq"],
                    }
                )
        return out

    # -- running ---------------------------------------------------------------------------
    async def run(self) -> None:
        by_role: dict[str, list[_TaskState]] = {}
        for t in self.tasks:
            by_role.setdefault(t.role, []).append(t)
        try:
            await asyncio.gather(*(self._run_role(role, ts) for role, ts in by_role.items()))
        except Exception as e:  # a bug in one role must still end the job
            log.exception("job %d: runner failed", self.job.id)
            self.error = self.error or f"internal error: {e}"
        await self._reset_components()
        if self.cancelled:
            status = "cd"
        elif self.error:
            status = "ce"
        else:
            status = "c"
        await self.on_done(self, status, self.error)

    async def cancel(self) -> None:
        """Stop every running task of this job at once."""
        self.cancelled = True
        running = [t for t in self.tasks if t.state in ("starting", "running")]
        await asyncio.gather(
            *(self._stop_task(t, "job cancelled") for t in running), return_exceptions=True
        )
        async with self.host.cond:
            self.host.cond.notify_all()

    async def _stop_task(self, t: _TaskState, reason: str) -> None:
        ok, msg, _ = await self.host.component_request(
            self.roles[t.role], "task_stop", {"job": self.job.id, "reason": reason}
        )
        if not ok:
            log.warning("job %d: stopping task %d: %s", self.job.id, t.spec.index, msg)

    def _failed(self) -> bool:
        return self.cancelled or self.error is not None

    async def _run_role(self, role: str, tasks: Sequence[_TaskState]) -> None:
        for t in tasks:
            if self._failed():
                return
            if t.state in ("ended", "skipped"):
                continue
            if t.state == "pending":
                if t.start_with and t.start_with not in self.started_names:
                    await self._wait(functools.partial(self._has_started, t.start_with))
                    if self._failed():
                        return
                if t.stop_with and t.stop_with in self.started_names:
                    t.state = "skipped"
                    self._save()
                    continue
                if not await self._start(t):
                    return
            await self._wait_end(t)

    async def _start(self, t: _TaskState) -> bool:
        component = self.roles[t.role]
        t.state = "starting"
        self._save()
        # a re-adopted "starting" task may have started before the old scheduler died
        st = self.host.component_status(component)
        if (st is not None and self._is_running(st, t)) or (st is not None and self._ended(st, t)):
            t.state = "running"
            self._save()
            return True
        ok, msg, _ = await self.host.component_request(
            component, "task_start", {"task": t.spec.model_dump(mode="json")}, timeout=10.0
        )
        if not ok:
            self.error = f"task {t.spec.index} ({t.spec.technique_name}) on role {t.role!r}: {msg}"
            t.state = "ended"
            t.end = {"reason": "error", "message": msg}
            self._save()
            async with self.host.cond:
                self.host.cond.notify_all()
            return False
        t.state = "running"
        self._save()
        self.host.job_event(self.job.id, "task_started", role=t.role, task=t.spec.index)
        if t.spec.task_name:
            self.started_names.add(t.spec.task_name)
            # stop_with triggers fire now, on every role
            for other in self.tasks:
                if other.stop_with == t.spec.task_name and other.state in ("starting", "running"):
                    self._bg.add(
                        asyncio.ensure_future(
                            self._stop_task(other, f"stopped by {t.spec.task_name}")
                        )
                    )
            async with self.host.cond:
                self.host.cond.notify_all()
        return True

    def _is_running(self, st: ComponentStatus, t: _TaskState) -> bool:
        return st.state == "running" and st.job == self.job.id and st.task == t.spec.index

    def _ended(self, st: ComponentStatus, t: _TaskState) -> bool:
        lt = st.last_task
        return lt is not None and lt.job == self.job.id and lt.task == t.spec.index

    def _has_started(self, task_name: str) -> bool:
        return task_name in self.started_names

    async def _wait(self, pred: Callable[[], bool]) -> None:
        async with self.host.cond:
            await self.host.cond.wait_for(lambda: pred() or self._failed())

    async def _wait_end(self, t: _TaskState) -> None:
        component = self.roles[t.role]
        lost_since: float | None = None
        async with self.host.cond:
            while True:
                st = self.host.component_status(component)
                if st is not None and self._ended(st, t) and st.last_task is not None:
                    end = st.last_task.model_dump(mode="json")
                    break
                if self.error is not None:
                    return
                node = self.host.node_of(component)
                if node is None or node.state != "online":
                    lost_since = lost_since or time.monotonic()
                    left = self.host.node_grace_period - (time.monotonic() - lost_since)
                    if left <= 0:
                        name = node.node if node else "?"
                        self.error = (
                            f"node {name} hosting {component} was lost for more than "
                            f"{self.host.node_grace_period:g} s during task {t.spec.index}"
                        )
                        t.state = "ended"
                        t.end = {"reason": "error", "message": self.error}
                        self._save()
                        self.host.cond.notify_all()
                        return
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self.host.cond.wait(), left)
                    continue
                lost_since = None
                await self.host.cond.wait()
        t.state = "ended"
        t.end = end
        self._save()
        self.host.job_event(
            self.job.id,
            "task_ended",
            role=t.role,
            task=t.spec.index,
            detail={"reason": end.get("reason"), "npoints": end.get("npoints")},
        )
        if end.get("reason") == "error" and not self.cancelled:
            self.error = (
                f"task {t.spec.index} ({t.spec.technique_name}) on {component} failed: "
                f"{end.get('message')}"
            )
            async with self.host.cond:
                self.host.cond.notify_all()

    async def _reset_components(self) -> None:
        async def reset(component: str) -> None:
            ok, msg, _ = await self.host.component_request(
                component, "reset", {"force": True}, timeout=10.0
            )
            if not ok:
                log.warning("job %d: reset of %s: %s", self.job.id, component, msg)

        await asyncio.gather(*(reset(c) for c in set(self.roles.values())), return_exceptions=True)
