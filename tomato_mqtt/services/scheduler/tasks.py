"""The tasks of a job as the runner tracks them, and what the recorder is told of them.

Pure: no I/O. :class:`RunnerHost` is all a job runner needs from the scheduler (narrow,
so a runner can be tested alone); ``tasks_of`` turns a payload's method into driver task specs;
:class:`TaskState` is one task's progress (persisted in the job's ``progress``);
:func:`expectations` lists, per ended task whose runner's count is known, the points
the file must hold for it (the recorder's per-task completeness check).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tomato_mqtt.driver.spec import TaskSpec
from tomato_mqtt.wire.messages import ComponentStatus, NodeStatus

__all__ = ["RunnerHost", "TaskState", "expectations", "tasks_of"]


class Unanswered:
    """``component_request``'s data when nobody answered (not a refusal): the node may be
    silent (stopped, cut off) and answer once it is back."""


UNANSWERED = Unanswered()


class RunnerHost(Protocol):
    """What a runner needs from the scheduler (kept narrow so it can be tested alone)."""

    cond: asyncio.Condition
    node_grace_period: float
    stuck_after: float

    def broker_quiet(self) -> bool: ...
    def component_status(self, name: str) -> ComponentStatus | None: ...
    def node_of(self, component: str) -> NodeStatus | None: ...
    def node_silent(self, node: str) -> bool: ...
    def node_back_since(self, node: str) -> float | None: ...
    def clock_offset(self, node: str) -> float | None: ...
    def save_progress(self, job: int, progress: dict[str, Any]) -> None: ...
    def job_event(self, job: int, event: str, **kw: Any) -> None: ...
    def show_reason(self, job: int, reason: str | None, replacing: str | None = None) -> None: ...
    async def component_request(
        self,
        component: str,
        op: str,
        args: Mapping[str, Any],
        timeout: float = 5.0,
        resend: bool = False,
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
class TaskState:
    role: str
    spec: TaskSpec
    start_with: str | None
    stop_with: str | None
    state: str = "pending"  # pending / starting / running / ended / skipped
    end: dict[str, Any] | None = None
    epoch: int | None = None  # the node's epoch when the task started
    started_at: float | None = None  # on the node's clock (compared with its statuses)
    #: the time of a status that said the task was accepted, not yet begun (its node sets
    #: it up; ``started_at`` is then null): a later one that says neither running nor
    #: ended means it is gone (node's clock; in memory only)
    accepted_seen: float | None = None
    no_task: bool = False  # the node answered a stop with "no running task"
    running_since: float | None = None  # monotonic, on the scheduler's clock
    #: monotonic: when it was found to run far past its max_duration (None: it does not)
    overrun_at: float | None = None
    overrun_reason: str | None = None  # the job's reason while it did
    overrun_warning: str | None = None  # what the job's final reason says about it
    #: the job's reason while its start waits for a silent node (runner._waited_said)
    start_wait: str | None = None
    #: why its start was given up on after that wait (its node not back in time)
    start_gave_up: str | None = None


def expectations(tasks: Sequence[TaskState], roles: Mapping[str, str]) -> list[dict[str, Any]]:
    out = []
    for t in tasks:
        end = t.end or {}
        job = end.get("jobid", end.get("job"))  # TaskEndInfo: "jobid" since schema 2
        if isinstance(end.get("npoints"), int) and job is not None:
            out.append(
                {
                    "component": roles[t.role],
                    "task": t.spec.index,
                    "npoints": end["npoints"],
                    "epoch": end.get("epoch", 0),
                    "stream": end.get("stream", ""),
                    "last_seq": end.get("last_seq", -1),
                }
            )
    return out
