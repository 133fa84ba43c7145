"""Texts of the scheduler's replies that follow tomato 2.2 word for word (scripts and
people moving from tomato read them), and the sample a job waits for."""

from __future__ import annotations

from tomato_mqtt.model.jobs import Job

__all__ = ["found_text", "sample_of"]


def sample_of(job: Job) -> str:
    return str(job.payload.get("sample", {}).get("identifier"))


def found_text(jobs: list[Job]) -> str:
    """tomato's summary of ``ketchup status``: ``found 1 job with status ['r']``, or one
    line per status (``found 2 jobs with status 'qw': [1, 2]``); an empty queue is not
    an error here (tomato: "job queue is empty" as a failure)."""
    if not jobs:
        return "job queue is empty"
    if len(jobs) == 1:
        return f"found 1 job with status {[jobs[0].status]}"
    lines = []
    for st in ("q", "qw", "r", "rd", "c", "cd", "ce"):
        ids = [j.id for j in jobs if j.status == st]
        if ids:
            what = "job" if len(ids) == 1 else "jobs"
            lines.append(f"found {len(ids)} {what} with status {st!r:4s}: {ids}")
    return "\n".join(lines)
