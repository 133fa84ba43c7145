"""Which pipelines can run a payload, and which queued jobs launch now. Pure: no I/O.

A pipeline can run a payload when it has every role the payload uses, the component in
each role is registered and online, supports the task's technique, and the driver's
validator accepts the task's parameters. A job launches, in order of job id, on the first
of its candidate pipelines that is ready, runs no job and holds the job's sample.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tomato_mqtt.errors import nearest

if TYPE_CHECKING:
    from tomato_mqtt.config.devices import PipelineLayout
    from tomato_mqtt.model.jobs import PipelineState

__all__ = [
    "ComponentView",
    "MatchResult",
    "QueuedLike",
    "TaskLike",
    "Validator",
    "match",
    "next_launches",
    "usable",
    "waiting_reason",
]


@dataclass(frozen=True)
class ComponentView:
    """What matching needs to know of a component."""

    name: str
    capabilities: frozenset[str] | None  # None: not registered (yet)
    attrs: Mapping[str, Any] = field(default_factory=dict)  # attr name -> spec, for validators
    online: bool = True
    #: why it does not register, as its node said (its driver is not installed, broken)
    error: str | None = None
    #: the node that hosts it, as the devices file says
    node: str | None = None
    #: how to start that node on its PC, as the stack takes it (broker, instance, login);
    #: None: the bare ``tomato node --name``
    start_hint: str | None = None


Validator = Callable[[ComponentView, str, Mapping[str, Any]], str | None]
"""(component, technique name, task params) -> why the task is invalid, or None."""


class QueuedLike(Protocol):
    """What launching reads of a queued job: a Job, or a light stand-in for one (a pass
    over 10,000 queued jobs builds no model per job)."""

    @property
    def id(self) -> int: ...

    @property
    def status(self) -> str: ...

    @property
    def owner(self) -> str | None: ...


class TaskLike(Protocol):
    component_role: str
    technique_name: str
    task_params: dict[str, Any]


@dataclass
class MatchResult:
    candidates: list[str] = field(default_factory=list)
    """Pipelines that can run the payload, in the order of the devices file."""
    reason: str | None = None
    """Why no pipeline can (None when there are candidates)."""
    problems: dict[str, str] = field(default_factory=dict)
    """Per pipeline with the payload's roles, why it cannot (``reason_for`` picks one)."""

    def reason_for(self, holding: str | None) -> str | None:
        """The reason, told about ``holding`` (the pipeline that holds the job's sample)
        when it is one of those that cannot: the first pipeline's problem named another
        pipeline than the user's (found by a fault-injection run)."""
        if holding is None or holding not in self.problems or self.reason is None:
            return self.reason
        first = next(iter(self.problems.values()))  # the reason is it, and what follows
        return self.problems[holding] + self.reason[len(first) :]


@dataclass(frozen=True)
class _Task:
    index: int
    role: str
    technique: str
    params: Mapping[str, Any]


def _task(index: int, t: Mapping[str, Any] | TaskLike) -> _Task:
    if isinstance(t, Mapping):
        return _Task(
            index,
            str(t.get("component_role")),
            str(t.get("technique_name")),
            t.get("task_params") or {},
        )
    return _Task(index, t.component_role, t.technique_name, t.task_params or {})


def _roles(roles: Iterable[str]) -> str:
    return ", ".join(repr(r) for r in roles)


def match(
    payload_method: Sequence[Mapping[str, Any] | TaskLike],
    pipelines: Mapping[str, PipelineLayout],
    components: Mapping[str, ComponentView],
    validator: Validator,
) -> MatchResult:
    """The pipelines that can run ``payload_method``, or the reason why none can."""
    tasks = [_task(i, t) for i, t in enumerate(payload_method)]
    if not tasks:
        return MatchResult([], "the payload has no tasks")
    needed = list(dict.fromkeys(t.role for t in tasks))
    if not pipelines:
        return MatchResult([], "no pipelines are configured")
    with_roles = [p for p in pipelines.values() if set(needed) <= p.roles.keys()]
    if not with_roles:
        offered = sorted({_roles(p.roles) for p in pipelines.values()})
        shown = "; ".join(offered[:5]) + ("; ..." if len(offered) > 5 else "")
        have = {r for p in pipelines.values() for r in p.roles}
        # a misspelt role is said as such (`mfcc`: a driver author's tour)
        near = [(r, n) for r in needed if r not in have and (n := nearest(r, sorted(have)))]
        hint = "".join(f"; did you mean {n!r} for {r!r}?" for r, n in near)
        return MatchResult(
            [],
            f"no pipeline has roles {_roles(sorted(needed))} (pipelines have: {shown}){hint}",
        )
    candidates: list[str] = []
    problems: dict[str, str] = {}
    for pip in with_roles:
        problem = _problem(pip, tasks, components, validator)
        if problem is None:
            candidates.append(pip.name)
        else:
            problems[pip.name] = problem
    if candidates:  # (what keeps the others: waiting_reason names the sample's one)
        return MatchResult(candidates, None, problems)
    first = next(iter(problems.values()))
    if len(problems) > 1:
        first += f" (and {len(problems) - 1} more pipeline(s) with roles {_roles(needed)})"
    return MatchResult([], first, problems)


def _problem(
    pip: PipelineLayout,
    tasks: Sequence[_Task],
    components: Mapping[str, ComponentView],
    validator: Validator,
) -> str | None:
    """Why ``pip`` cannot run ``tasks``, or None."""
    for t in tasks:
        comp = pip.roles[t.role]
        view = components.get(comp)
        head = f"role {t.role!r}"
        if view is None or not view.online:
            if view is not None and view.node:  # (said as the queue says it of the node)
                how = view.start_hint or f"tomato node --name {view.node}"
                return (
                    f"{head}: component {comp} on {pip.name} is not online: its node "
                    f"{view.node!r} is not online (start it on its PC: {how})"
                )
            return f"{head}: component {comp} on {pip.name} is not online"
        if view.capabilities is None:
            if view.error:  # said: "not registered yet" told the user to wait for good
                return f"{head}: component {comp} on {pip.name} is not registered: {view.error}"
            return f"{head}: component {comp} on {pip.name} is not registered yet"
        if t.technique not in view.capabilities:
            caps = ", ".join(sorted(view.capabilities)) or "nothing"
            return (
                f"{head}: technique {t.technique!r} not supported by {comp} on {pip.name} "
                f"(supports: {caps})"
            )
        try:
            msg = validator(view, t.technique, t.params)
        except Exception as e:  # an injected validator's bug must not stop the scheduler
            msg = f"validation failed: {type(e).__name__}: {e}"
        if msg:
            return f"{head}, task {t.index} on {pip.name}: {msg}"
    return None


def next_launches(
    queue: Sequence[QueuedLike],
    pipelines: Mapping[str, PipelineState],
    matches: Mapping[int, MatchResult],
    sample_of: Callable[[Any], str],
    layouts: Mapping[str, PipelineLayout] | None = None,
    occupied: Iterable[str] = (),
) -> list[tuple[int, str]]:
    """``(job id, pipeline)`` for every job that launches now, in order of job id.

    A job launches on the first of its candidates that is ready, runs no job and holds
    the job's sample; each pipeline takes one job. With ``layouts``, a pipeline is also
    skipped while a component of it is busy in another pipeline (pipelines may share
    components) or ``occupied``: its node says it runs a task (of a job that ended while
    the node was lost, until the scheduler has it stopped: launched on it, a job's first
    task was refused as "busy" and the job ended ``ce`` with no points).
    """
    busy: set[str] = set(occupied)
    if layouts is not None:
        for p in pipelines.values():
            if p.jobid is not None and p.name in layouts:
                busy.update(layouts[p.name].roles.values())
    taken: set[str] = set()
    out: list[tuple[int, str]] = []
    for job in sorted(queue, key=_job_id):
        if job.status not in ("q", "qw"):
            continue
        m = matches.get(job.id)
        if m is None or not m.candidates:
            continue
        sample = sample_of(job)
        for name in m.candidates:
            pip = pipelines.get(name)
            if pip is None or name in taken or not pip.ready or pip.jobid is not None:
                continue
            if pip.sampleid is None or pip.sampleid != sample:
                continue
            if not usable(pip, job.owner):  # another operator's sample
                continue
            comps = set(layouts[name].roles.values()) if layouts and name in layouts else set()
            if comps & busy:
                continue
            out.append((job.id, name))
            taken.add(name)
            busy |= comps
            break
    return out


def usable(pip: PipelineState, owner: str | None) -> bool:
    """Whether a job of ``owner`` may run on ``pip``: its sample is the lab's (no owner)
    or the job owner's. An operator's job ran on another's sample and used up their
    `ready` (a hostile tour)."""
    return pip.owner is None or pip.owner == owner


def _skeleton(name: str) -> str:
    """A name without its digits: names equal so differ in their numbers only."""
    return "".join(c for c in name if not c.isdigit())


@functools.lru_cache(maxsize=16384)
def _near_miss(sample: str, held: tuple[str, ...]) -> str | None:
    """The sample of ``held`` one edit away from ``sample`` (a character missing, added,
    changed or two swapped), if any; not a sibling that differs in its numbers only
    (`sample-2` for `sample-1`: another sample, waited for rightly). A queue pass asks
    it for every distinct sample waiting: difflib for 10,000 of them against 40
    pipelines took 1.6 s of the scheduler's loop at each pass (a review); an index of
    the held names' deletions answers each with ~15 lookups."""
    index = _deletions(held)
    skeleton = _skeleton(sample)
    for v in _one_deleted(sample):
        for h in index.get(v, ()):
            if h != sample and _skeleton(h) != skeleton:
                return h
    return None


def _one_deleted(word: str) -> list[str]:
    """``word`` and every string with one of its characters left out, in order."""
    return [word, *(word[:i] + word[i + 1 :] for i in range(len(word)))]


@functools.lru_cache(maxsize=64)
def _deletions(held: tuple[str, ...]) -> dict[str, list[str]]:
    """Each of :func:`_one_deleted` of the ``held`` names -> those names (two names one
    edit apart share one)."""
    out: dict[str, list[str]] = {}
    for h in held:
        for v in _one_deleted(h):
            out.setdefault(v, []).append(h)
    return out


def waiting_reason(
    candidates: Sequence[str],
    pipelines: Mapping[str, PipelineState],
    sample: str,
    blocked: Mapping[str, str] | None = None,
    problems: Mapping[str, str] | None = None,
    owner: str | None = None,
) -> str | None:
    """Why a job that some pipeline can run still waits, when the user must act or
    something other than a job of the queue holds it up.

    A matching job (``qw``) launches only on a candidate pipeline that holds its sample
    and is ready; without this it would sit at ``qw`` with no word. ``blocked``: per
    pipeline that runs no job, what keeps it from taking one (a component still running
    a task of an ended job); ``problems``: per pipeline that is no candidate, why (its
    component not online). ``None`` when it just waits for a running job to end.
    """
    holding = [
        n
        for n in candidates
        if n in pipelines and pipelines[n].sampleid == sample and usable(pipelines[n], owner)
    ]
    theirs = (
        []
        if holding
        else [n for n in candidates if n in pipelines and pipelines[n].sampleid == sample]
    )
    if theirs:  # the sample is there, but another operator's
        p = pipelines[theirs[0]]
        return (
            f"sample {sample!r} is in {p.name}, loaded by {p.owner}: a job runs only on a "
            "sample its owner or an admin loaded (load yours into a free pipeline)"
        )
    if not holding:
        # the sample is where the job cannot run now (its node lost, say): that, not "load
        # it into …" (a fault run: told so for the whole of a network cut)
        stuck = [n for n in problems or {} if n in pipelines and pipelines[n].sampleid == sample]
        if stuck and problems is not None:
            why = problems[stuck[0]]
            return f"sample {sample!r} is in {stuck[0]}, which cannot run it now: {why}"
        # of the samples its candidates hold for it: did the payload mean one?
        usable_held: dict[str, str] = {}
        for n in sorted(candidates, reverse=True):  # (the first pipeline's name wins)
            q = pipelines.get(n)
            if q is not None and q.sampleid and usable(q, owner):
                usable_held[q.sampleid] = n
        near = _near_miss(sample, tuple(sorted(usable_held)))
        if near is not None:  # a near miss: the advice to load it where the other one
            # is failed ("already holds sample …: eject it first": a newcomer's tour)
            at = usable_held[near]
            return (
                f"no pipeline holds sample {sample!r}; {at} holds {near!r}: did "
                "you mean it? (the payload's sample name; to load this one there, eject "
                f"that first: tomato pipeline eject {at})"
            )
        if len(candidates) == 1:  # the exact command
            held_by = pipelines[candidates[0]].sampleid if candidates[0] in pipelines else None
            first = f"tomato pipeline eject {candidates[0]}, then " if held_by else ""
            return (
                f"no pipeline holds sample {sample!r}: load it into {candidates[0]} "
                f"({first}tomato pipeline load {candidates[0]} {sample})"
            )
        where = ", ".join(candidates)
        empty = [n for n in candidates if n in pipelines and not pipelines[n].sampleid]
        if not empty:  # each holds a sample: the load is refused until one is ejected
            # (it said "load it into one of …", refused "already holds sample …: eject it
            # first": a newcomer's tour)
            return (
                f"no pipeline holds sample {sample!r}, and {where} each hold another: "
                f"eject one that runs no job, then load it there (tomato pipeline eject "
                f"<pipeline>, then tomato pipeline load <pipeline> {sample})"
            )
        if len(empty) == 1:
            return (
                f"no pipeline holds sample {sample!r}: load it into {empty[0]} "
                f"(tomato pipeline load {empty[0]} {sample})"
            )
        return (
            f"no pipeline holds sample {sample!r}: load it into one of {', '.join(empty)} "
            f"(tomato pipeline load <pipeline> {sample})"
        )
    # a pipeline running a job comes free by itself (a launch takes `ready`, as in tomato:
    # telling the user to mark it ready would be refused, and the text would flip at
    # every launch and end for every job behind it)
    if not any(pipelines[n].ready or pipelines[n].jobid is not None for n in holding):
        if len(holding) == 1:
            return (
                f"sample {sample!r} is in {holding[0]}, which is not ready "
                f"(tomato pipeline ready {holding[0]})"
            )
        return (
            f"sample {sample!r} is in {', '.join(holding)}, none of them ready "
            "(tomato pipeline ready <pipeline>)"
        )
    free = [n for n in holding if pipelines[n].ready and pipelines[n].jobid is None]
    if blocked and free and all(n in blocked for n in free):
        return "; ".join(f"{n} waits: {blocked[n]}" for n in free)
    if not free:  # each holder runs a job: said, in words that stay while it runs (a job
        # behind a running one had no reason at all: a dashboard tour)
        busy = [n for n in holding if pipelines[n].jobid is not None]
        if busy:  # (one named: several would change the words at each of their launches)
            where = busy[0] if len(busy) == 1 else "pipelines that each run"
            return (
                f"sample {sample!r} is in {where}, which runs another job now: this one "
                "can start once it has ended and the pipeline is made ready"
                if len(busy) == 1
                else f"sample {sample!r} is in {where} another job now: this one can start "
                "once one of them has ended and is made ready"
            )
    return None


def _job_id(job: QueuedLike) -> int:
    return job.id
