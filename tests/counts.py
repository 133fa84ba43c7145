"""What the runner reported taking, from a job as ``ketchup status --json`` shows it.

Since issue 9 a deadline the runner could not meet on time (a loaded CI machine, a
stalled node) is skipped and counted (``missed``) instead of measured late, so a test
compares the file with the runner's count, and the count plus the misses with the
payload's nominal number of points.
"""

from __future__ import annotations

from typing import Any

__all__ = ["taken"]


def taken(job: dict[str, Any], role: str | None = None) -> tuple[int, int]:
    """(points taken, deadlines missed), summed over the job's tasks (of ``role``)."""
    method = (job.get("payload") or {}).get("method") or []
    tasks = (job.get("progress") or {}).get("tasks") or {}
    n = missed = 0
    for i, m in enumerate(method):
        if role is not None and m.get("component_role") != role:
            continue
        end = (tasks.get(str(i)) or {}).get("end") or {}
        n += int(end.get("npoints") or 0)
        missed += int(end.get("missed") or 0)
    return n, missed
