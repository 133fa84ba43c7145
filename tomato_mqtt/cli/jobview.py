"""How ``ketchup`` shows jobs: tables, one job's details, and the grouped summary.

Plain dicts in, text out: nothing here imports pydantic (the status path stays light).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tomato_mqtt.cli.output import safe, table

TYPE_CHECKING = False  # typing is ~2 ms of a one-request call: for the type checker only
if TYPE_CHECKING:
    from typing import Any

__all__ = ["job_detail", "job_table", "summary"]

JOB_COLUMNS = (
    ("id", "id"),
    ("jobname", "name"),
    ("status", "status"),
    ("pipeline", "pipeline"),
    ("submitted", "submitted"),
    ("started", "started"),
    ("ended", "ended"),
)


def summary(msg: str, s: Any) -> str:
    """The grouped summary: tomato's lines by status, then a few tables, each bounded."""
    if not isinstance(s, Mapping) or not s.get("total"):
        return msg
    out = [msg]
    head, tail = list(s.get("queued_head") or []), list(s.get("queued_tail") or [])
    # both tables with the same columns
    reason = any(isinstance(j, Mapping) and j.get("reason") for j in [*head, *tail])
    if s.get("running"):
        out += ["", "running:", job_table(s["running"], reason)]
    if head:
        n = int(s.get("queued") or 0)
        shown = len(head) + len(tail)
        which = "" if shown == n else f" (the first {len(head)} and the last {len(tail)})"
        cut = [{"id": "…"}] if shown < n else []
        out += ["", f"queued: {n}{which}", job_table(head + cut + tail, reason)]
    waiting = [w for w in s.get("waiting") or [] if w and w[0]]
    if waiting:
        out += ["", "waiting because:"]
        out += [f"{int(n):>7}  {why}" for why, n in waiting[:5]]
        if len(waiting) > 5:
            out.append(f"{'':>7}  … and {len(waiting) - 5} other reason(s)")
    pips = s.get("pipelines") or {}
    if pips:
        codes = [c for c in ("r", "rd", "c", "ce", "cd") if any(c in v for v in pips.values())]
        rows = [{"pipeline": p, **{c: v.get(c, 0) for c in codes}} for p, v in pips.items()]
        cols = [("pipeline", "pipeline"), *((c, c) for c in codes)]
        out += ["", "jobs per pipeline:", table(rows, cols)]
    out += ["", "details: ketchup status --all (every job, paged), ketchup status <id> …"]
    return "\n".join(out)


def _when(iso: Any) -> str | None:
    if not iso:
        return None
    import datetime  # only where a job has times to show (~1 ms of a call)

    try:
        t = datetime.datetime.fromisoformat(str(iso))
    except ValueError:
        return str(iso)
    return t.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _row(job: Mapping[str, Any]) -> dict[str, Any]:
    return {
        **job,
        "submitted": _when(job.get("submitted_at")),
        "started": _when(job.get("launched_at")),
        "ended": _when(job.get("completed_at")),
    }


def job_table(jobs: Any, reason: bool | None = None) -> str:
    """A row per job; a reason column when a job has one (or when ``reason`` says so)."""
    if not isinstance(jobs, Sequence) or not jobs:
        return "no jobs"
    rows = [_row(j) for j in jobs if isinstance(j, Mapping)]
    cols: list[tuple[str, str]] = list(JOB_COLUMNS)
    if reason or (reason is None and any(r.get("reason") for r in rows)):
        cols.append(("reason", "reason"))
    return table(rows, cols, cut_first="reason")


def job_detail(jobs: Any) -> str:
    if not isinstance(jobs, Sequence) or len(jobs) != 1 or not isinstance(jobs[0], Mapping):
        return job_table(jobs)
    j = _row(jobs[0])
    sample = (j.get("payload") or {}).get("sample") or {}
    fields = [
        ("id", j.get("id")),
        ("name", j.get("jobname")),
        ("status", j.get("status")),
        ("sample", sample.get("identifier") or sample.get("name")),
        ("pipeline", j.get("pipeline")),
        ("submitted", j["submitted"]),
        ("started", j["started"]),
        ("ended", j["ended"]),
        # a job that ended before it ran has no file (the path it would have had read
        # as written: a newcomer's tour)
        (
            "output",
            "- (it never ran: no file)"
            if j.get("launched_at") is None and j.get("status") in ("c", "cd", "ce")
            else j.get("respath"),
        ),
        ("reason", j.get("reason")),
    ]
    return "\n".join(f"{k + ':':<10} {'-' if v is None else safe(str(v))}" for k, v in fields)
