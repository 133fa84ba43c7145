"""How far a job is: what ``ketchup status --follow`` and ``Tomato.follow`` show.

Pure and light (no pydantic, no asyncio): built from plain dicts of the wire messages
(the job from ``job_status``, its retained ``JobStatus`` summary, its ``JobEvent``s and
the recorder's per-job point counts), so the CLI can render it without heavy imports.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FINAL", "Progress", "expected_duration"]

#: tomato's final job statuses
FINAL = frozenset({"c", "ce", "cd"})


def _seconds(v: Any) -> float:
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):  # "10 s", "2 min", ... as payloads allow: read as the scheduler
        # reads them (without pint: one it needs pint for counts 0 here)
        from tomato_mqtt.config.payloads import plain_seconds

        return plain_seconds(v) or 0.0
    return 0.0


def expected_duration(payload: Mapping[str, Any]) -> float | None:
    """The longest role's sum of ``max_duration`` (roles run in parallel), in s."""
    per_role: dict[str, float] = {}
    for task in payload.get("method") or []:
        if not isinstance(task, Mapping):
            continue
        role = str(task.get("component_role") or task.get("component_tag") or "")
        per_role[role] = per_role.get(role, 0.0) + _seconds(task.get("max_duration"))
    return max(per_role.values()) if per_role else None


def _ts(iso: Any) -> float | None:
    if not isinstance(iso, str) or not iso:
        return None
    try:
        return datetime.datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


@dataclass
class Progress:
    """One moment of a job, as the follower saw it."""

    jobid: int
    status: str = "q"
    tasks: dict[str, str] = field(default_factory=dict)  # role -> current task
    #: role -> points stored (a component the job's roles do not name: by its own name)
    points: dict[str, int] = field(default_factory=dict)
    #: role -> component, from the job once it runs (the recorder counts per component:
    #: ``points`` went from components' names to roles' at the end, in one follow: an
    #: integrator's tour)
    roles: dict[str, str] = field(default_factory=dict)
    launched: float | None = None
    ended: float | None = None
    expected: float | None = None
    reason: str | None = None
    respath: str | None = None
    #: (role, task) -> the points its ``task_ended`` event counted: the recorder's
    #: count lags the end of a task, and "task 0 ended | 0 point(s)" read as nothing
    #: measured (an integrator's tour)
    measured: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.status in FINAL

    @property
    def elapsed(self) -> float | None:
        if self.launched is None:
            return None
        return max(0.0, (self.ended or time.time()) - self.launched)

    @property
    def total_points(self) -> int:
        """Points stored, or counted by the tasks that ended if the store is behind."""
        return max(sum(self.points.values()), sum(self.measured.values()))

    def fraction(self) -> float | None:
        e = self.elapsed
        if self.final:
            return 1.0
        if e is None or not self.expected:
            return None
        return min(1.0, e / self.expected)

    # -- updates from the wire (plain dicts) -------------------------------------------
    def job(self, job: Mapping[str, Any]) -> None:
        """From ``job_status`` (the whole job) or a ``JobStatus`` summary."""
        self.status = str(job.get("status") or self.status)
        self.launched = _ts(job.get("launched_at")) or self.launched
        self.ended = _ts(job.get("completed_at")) or self.ended
        self.reason = job.get("reason") or None
        self.respath = job.get("respath") or self.respath
        payload = job.get("payload")
        if isinstance(payload, Mapping) and self.expected is None:
            self.expected = expected_duration(payload)
        progress = job.get("progress")  # (the whole job's; a summary has `roles` itself)
        roles = job.get("roles") or (
            progress.get("roles") if isinstance(progress, Mapping) else None
        )
        if isinstance(roles, Mapping):
            self.roles = {str(r): str(c) for r, c in roles.items()}
        pts = job.get("points") or (progress or {}).get("points")
        if isinstance(pts, Mapping) and pts:
            self.points = {str(k): int(v) for k, v in pts.items()}
        self._running_tasks(job)

    def _running_tasks(self, job: Mapping[str, Any]) -> None:
        """The tasks running now, from the job's ``progress.tasks`` (a follower that
        starts mid-task shows it at once; later task events take over)."""
        payload, progress = job.get("payload"), job.get("progress")
        if not isinstance(payload, Mapping) or not isinstance(progress, Mapping):
            return
        tasks, method = progress.get("tasks"), payload.get("method")
        if not isinstance(tasks, Mapping) or not isinstance(method, list):
            return
        for index, t in tasks.items():
            if not (isinstance(t, Mapping) and t.get("state") in ("starting", "running")):
                continue
            i = int(index) if str(index).isdigit() else -1
            spec = method[i] if 0 <= i < len(method) else None
            if isinstance(spec, Mapping):
                role = str(spec.get("component_role") or spec.get("component_tag") or "")
                self.tasks.setdefault(role, f"task {i}")

    def event(self, ev: Mapping[str, Any]) -> None:
        kind = ev.get("event")
        role = str(ev.get("role") or "")
        if kind == "task_started":
            self.tasks[role] = f"task {ev.get('task')}"
        elif kind == "task_ended":
            self.tasks[role] = f"task {ev.get('task')} ended"
            detail = ev.get("detail")
            n = detail.get("npoints") if isinstance(detail, Mapping) else None
            if isinstance(n, int) and not isinstance(n, bool):
                self.measured[(role, str(ev.get("task")))] = n
        if ev.get("status"):
            self.status = str(ev["status"])

    def recorder(self, points: Mapping[str, Any]) -> None:
        """The recorder's count of stored points of this job (component -> n), kept by
        role where the job's roles name the component."""
        if points:
            role_of = {c: r for r, c in self.roles.items()}
            self.points = {
                role_of.get(str(k), str(k)): int(v) for k, v in points.items() if isinstance(v, int)
            }

    # -- text ----------------------------------------------------------------------------
    def line(self) -> str:
        """One plain line (logs, pipes): status, tasks, points, elapsed / expected."""
        parts = [f"job {self.jobid}: {self.status}"]
        if self.tasks:
            parts.append(", ".join(f"{r}: {t}" for r, t in sorted(self.tasks.items())))
        parts.append(f"{self.total_points} point(s)")
        e = self.elapsed
        if e is not None:
            parts.append(f"{e:.0f} s" + (f" / {self.expected:.0f} s" if self.expected else ""))
        if self.reason:  # also while it waits (for its sample, a node) or runs (a fault)
            parts.append(self.reason)
        return " | ".join(parts)

    def bar(self, width: int = 30) -> str:
        """A progress bar line for a terminal."""
        f = self.fraction()
        filled = round((f or 0.0) * width)
        pct = f"{100 * f:3.0f}%" if f is not None else "  ?%"
        return f"[{'#' * filled}{'.' * (width - filled)}] {pct} {self.line()}"
