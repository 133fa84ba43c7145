"""Jobs and pipelines as data: the models, tomato's status codes and their transitions.

Pure: no I/O. The scheduler stores these in sqlite (``services/scheduler/store.py``);
the wire carries them in ``job/<id>/status`` and replies.
"""

from __future__ import annotations

import datetime
from typing import Any, Literal, get_args

from pydantic import BaseModel, Field

__all__ = [
    "ACTIVE_STATUSES",
    "BATCH_ID_LEAD",
    "DONE_STATUSES",
    "PLAUSIBLE_ID",
    "STATUS_CODES",
    "Job",
    "JobStatusCode",
    "PipelineState",
    "UnknownName",
    "batch_id_bound",
    "check_transition",
    "highest_ran",
    "kept_pipeline_note",
    "merge_noted",
    "merged_note",
    "utcnow",
]

JobStatusCode = Literal["q", "qw", "r", "rd", "c", "ce", "cd"]
STATUS_CODES: tuple[str, ...] = get_args(JobStatusCode)
DONE_STATUSES: frozenset[str] = frozenset({"c", "ce", "cd"})
ACTIVE_STATUSES: frozenset[str] = frozenset({"r", "rd"})

#: the highest job id taken as evidence of ids in use (found by a review: a folder named
#: 99999999999999999999 stopped the scheduler with an OverflowError, and one at 2**63-1
#: made every later submit fail): a trillion jobs are beyond any lab
PLAUSIBLE_ID = 10**12

#: how far past the highest job a recorder wrote a file of (the scheduler asked for it)
#: a job id named in its stored batches still counts: see :func:`batch_id_bound`
BATCH_ID_LEAD = 1000


def batch_id_bound(files: int | None) -> int:
    """The highest job id a stored batch may name and count as a job this stack ran,
    given the highest job the recorder wrote a file of (``files``; the scheduler asked
    for it): :data:`BATCH_ID_LEAD` past it (the jobs running when a state file was lost
    have no file yet). A node's login may name any job in its own components' batches:
    one batch naming job 999,999,999,998 moved a lab's job ids there for good (a hostile
    tour); a batch past the bound is not counted at all (clamped to it, every later job's
    id would have jumped by the lead)."""
    return min(PLAUSIBLE_ID, (files or 0) + BATCH_ID_LEAD)


def highest_ran(files: int | None, batches: int | None) -> int | None:
    """The highest of ``files`` and ``batches`` (a batch's job within
    :func:`batch_id_bound`), None if neither."""
    known = [j for j in (files, batches) if j is not None and 0 < j <= PLAUSIBLE_ID]
    return max(known) if known else None


def kept_pipeline_note(name: str, sampleid: str, devices_file: object, job: object) -> str:
    """What is said of a pipeline gone from the devices file that holds a sample: kept,
    not removed with its sample (a file cut short lost them all at a start)."""
    after = f" once job {job} has ended" if job is not None else ""  # (refused before)
    return (
        f"pipeline {name} is not in the devices file {devices_file} any more: kept with "
        f"its sample {sampleid!r} until the file has it again, or the sample is ejected "
        f"(tomato pipeline eject {name}{after})"
    )


def merged_note(points: int) -> str:
    """What a job's reason says once late data was merged into its file."""
    return f"late data merged into the file (now {points} points)"


def merge_noted(reason: str | None, note: str) -> str:
    """A job's reason with its latest late-merge note in place of any earlier one (a
    reason that was only such a note grew one per merge: fault injection)."""
    base = (reason or "").split(" | late data merged")[0]
    if base.startswith("late data merged"):
        base = ""
    return f"{base} | {note}" if base else note


# tomato's job life cycle (qw -> q: after a reload, no pipeline matches any more)
_TRANSITIONS: dict[str, frozenset[str]] = {
    "q": frozenset({"qw", "r", "cd"}),
    "qw": frozenset({"q", "r", "cd"}),
    "r": frozenset({"rd", "c", "ce", "cd"}),
    "rd": frozenset({"c", "ce", "cd"}),
    "c": frozenset(),
    "ce": frozenset(),
    "cd": frozenset(),
}


#: what only a restored state file may do: a job it holds as queued that ran already is
#: ended ``ce`` without running again (services/scheduler/service.py)
_RESTORED: frozenset[tuple[str, str]] = frozenset({("q", "ce"), ("qw", "ce")})


def check_transition(old: str, new: str, restored: bool = False) -> None:
    """Raise ValueError unless a job may go from status ``old`` to ``new`` (``restored``:
    also a queued job's end at the start of a restored state file)."""
    for s in (old, new):
        if s not in _TRANSITIONS:
            raise ValueError(f"unknown job status {s!r} (known: {', '.join(_TRANSITIONS)})")
    if restored and (old, new) in _RESTORED:
        return
    if new not in _TRANSITIONS[old]:
        allowed = ", ".join(sorted(_TRANSITIONS[old])) or "none: the job has ended"
        raise ValueError(f"a job cannot go from {old!r} to {new!r} (allowed: {allowed})")


def utcnow() -> str:
    """The current time, ISO 8601 in UTC."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


class Job(BaseModel):
    # travels in job/<id>/status too: unknown fields are ignored, so that an older client
    # still reads the message of a newer scheduler
    id: int
    jobname: str | None = None
    payload: dict[str, Any]
    status: JobStatusCode = "q"
    submitted_at: str
    launched_at: str | None = None
    completed_at: str | None = None
    pipeline: str | None = None
    submit_dir: str | None = None
    respath: str | None = None
    snappath: str | None = None
    reason: str | None = None
    progress: dict[str, Any] = Field(default_factory=dict)
    #: the login that submitted the job (the {user} topic segment, pinned by the ACL)
    owner: str | None = None
    # tomato 2.2's Job has these too (its -y replies and tomato_Job carry them): the
    # process that ran the job (none here: tasks run on nodes), when it connected to its
    # components (= launched_at) and its job folder
    pid: int | None = None
    connected_at: str | None = None
    jobpath: str | None = None


class PipelineState(BaseModel):
    """A pipeline's state, named as tomato 2.2's ``Pipeline`` (``sampleid``, ``jobid``)."""

    name: str
    sampleid: str | None = None
    ready: bool = False
    jobid: int | None = None
    #: whose sample it holds: the operator who loaded it on a secured stack (only their
    #: jobs run on it, only they or an admin eject it or mark it ready); None: the lab's
    #: (loaded by an admin, or on an open stack), for every job
    owner: str | None = None


class UnknownName(KeyError):
    """A pipeline or job that the store does not hold; str() is the plain message."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"
