"""Runs one job: the tasks of each role in order, roles in parallel.

Event-driven throughout: a task's end is seen in the component's retained status
(``last_task``), triggers (``start_with_task_name`` / ``stop_with_task_name``) fire the
moment the named task has started, and a cancel stops every running task at once.
Progress is persisted before each step, so a restarted scheduler re-adopts the job:
tasks that kept running on their nodes are waited for, not started again.

A task never hangs its job (issue 9):

- the node epoch the task started in is kept; a node that comes back with another
  epoch (it crashed or was restarted) has lost the task, and so has a component that
  reports a status taken after the task started that neither runs it nor ended it (it
  was reloaded or reset): the job ends ``ce`` at once, naming the component;
- a cancel waits at most :data:`CANCEL_WAIT` for a node to confirm each stop; a node
  that answers "no running task", does not answer or is gone does not hold the job;
- a node lost for longer than the grace period ends the job ``ce``.

Each ended task carries the points its runner took (``npoints``) and the deadlines it
missed; :meth:`JobRunner.expectations` hands the counts to the recorder, which checks
them per task (DESIGN.md §5).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import logging
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tomato_mqtt.model.jobs import Job
from tomato_mqtt.services.scheduler.tasks import (
    RunnerHost,
    TaskState,
    Unanswered,
    expectations,
    tasks_of,
)
from tomato_mqtt.waits import wait_for
from tomato_mqtt.wire.messages import ComponentStatus

__all__ = ["CANCEL_WAIT", "JobRunner", "RunnerHost", "expectations", "tasks_of"]

log = logging.getLogger(__name__)

CANCEL_WAIT = 2.0  # s a cancel waits for a node to confirm that its task stopped
RESET_WAIT = 10.0  # s the reset of a component after a job may take (3 s after a cancel)
SAVE_DELAY = 0.2  # s: progress changes are stored together (see JobRunner._save)
SAVE_RETRY = 1.0  # s between attempts to store progress the state file refused
#: s past its max_duration (at least; or this share of it) after which a task whose end
#: has not come is said to overrun: a driver call that does not return
OVERRUN_GRACE = 10.0
#: s the scheduler's loop must have run (not stood still: SIGSTOP, a paused VM) since a
#: task was found overrunning before it is given up: the task's end may be in the
#: backlog a paused scheduler has not read yet (a review: a 306 s pause gave up a task
#: that had ended on time, and the job ended ce saying its component was stuck)
GIVE_UP_CONFIRM = 5.0
OVERRUN_SHARE = 0.1


def _overrun_limit(t: TaskState) -> float:
    """How long (s) a task may run before it counts as overrunning."""
    return t.spec.max_duration + max(OVERRUN_GRACE, OVERRUN_SHARE * t.spec.max_duration)


def _ran_in_time(t: TaskState, end: Mapping[str, Any]) -> bool:
    """Whether a task's end says (by its node's clock, start and end alike) that it ran
    within its limit: then only the news of its end was late."""
    try:
        return float(end["t_end"]) - float(end["t_start"]) < _overrun_limit(t)
    except (KeyError, TypeError, ValueError):
        return False


CANCELLED_BY = "cancelled by "


_MISSED = re.compile(r"task \d+ \(.*?\) on .+ missed (\d+) of (\d+) sampling deadlines")


def summarized(warnings: list[str], keep: int = 3) -> list[str]:
    """The job's warnings for its reason: more than ``keep`` tasks' missed deadlines as
    one line (200 short tasks made a reason of 15 KB: fault injection); each task's is
    in its ``warning`` event still."""
    missed = [(w, m) for w in warnings if (m := _MISSED.match(w))]
    if len(missed) <= keep:
        return warnings
    k = sum(int(m.group(1)) for _w, m in missed)
    n = sum(int(m.group(2)) for _w, m in missed)
    line = (
        f"{len(missed)} tasks missed sampling deadlines, {k} of {n} in all (the driver or "
        f"node was behind; nothing was measured for them; each task's in its warning "
        f"event), the first: {missed[0][0]}"
    )
    out = [w for w in warnings if not _MISSED.match(w)]
    out.insert(warnings.index(missed[0][0]), line)  # where the first one was
    return out


def cancelled_by(job: Job, by: str | None) -> str | None:
    """A job's reason when ``by`` cancels it: who, when it is not the job's own user (an
    admin's cancel of another's job read only `cd`, nobody saying who: a dashboard tour)."""
    if by is None or by == job.owner:
        return None
    return f"{CANCELLED_BY}{by}"


@dataclass
class JobRunner:
    job: Job
    roles: dict[str, str]  # role -> component name
    host: RunnerHost
    on_done: Callable[[JobRunner, str, str | None], Awaitable[None]]
    tasks: list[TaskState] = field(default_factory=list)
    cancelled: bool = False
    #: the reason a cancel gives the job ("cancelled by ada": another user's cancel)
    cancelled_by: str | None = None
    #: the login that cancelled it (the completed event's ``by``)
    by: str | None = None
    error: str | None = None
    started_names: set[str] = field(default_factory=set)
    #: the names of tasks a stop_with trigger skipped (a task that starts with one never could)
    skipped_names: set[str] = field(default_factory=set)
    #: task name -> the name it waits for (start_with_task_name), while it waits
    waiting: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: the cancelled tasks whose stop no node confirmed (the job's reason says so)
    stop_unsure: list[str] = field(default_factory=list)
    #: nodes whose clock stepped while this job ran (its file gives them no offset)
    clock_steps: set[str] = field(default_factory=set)
    cancel_at: float | None = None  # monotonic
    #: when this runner's loop was last woken much later than asked (it stood still)
    stood_still_at: float = -1e9
    unconfirmed: set[str] = field(default_factory=set)  # components that never confirmed
    seen_running: set[str] = field(default_factory=set)  # seen running this job's task
    _bg: set[asyncio.Future[None]] = field(default_factory=set)
    _save_at: asyncio.TimerHandle | None = None
    _saved_at: float = -1e9  # loop time of the last store write
    _unsaved: bool = False  # the last store write failed (it is retried)
    _finished: bool = False  # the job's end is being stored: no more progress writes
    #: how the job ends, once its tasks are over (its file is being written): a cancel
    #: then changes nothing
    verdict: str | None = None
    _resetting: asyncio.Future[None] | None = None  # the components' reset after the tasks
    #: tasks whose component ran on past them while the state file did not see them end
    #: (restored from an older copy, or a progress write lost): their counts are unknown
    passed: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        method = self.job.payload.get("method", [])
        saved = self.job.progress.get("tasks", {})
        for (role, spec), raw in zip(tasks_of(self.job.payload, self.job.id), method, strict=True):
            ts = TaskState(
                role, spec, raw.get("start_with_task_name"), raw.get("stop_with_task_name")
            )
            prev = saved.get(str(spec.index))
            if prev:
                ts.state = prev.get("state", "pending")
                if ts.state == "starting":  # its start may never have gone out: asked
                    # again (_start takes over a task the node holds; the node starts a
                    # task once): left "starting", no one started it, and the job stayed
                    # r until the overrun give-up (a review)
                    ts.state = "pending"
                ts.end = prev.get("end")
                ts.epoch = prev.get("epoch")
                ts.started_at = prev.get("started_at")
            if ts.state in ("running", "ended") and spec.task_name:
                self.started_names.add(spec.task_name)
            if ts.state == "skipped" and spec.task_name:
                # a task that starts with it is skipped too, also after a scheduler
                # restart (it waited for ever, the job `r`: a review)
                self.skipped_names.add(spec.task_name)
            self.tasks.append(ts)
        # what the job's verdict rests on, beside the task ends: a scheduler restarted
        # between "tasks over" and the job's end re-adopts the job, and must reach the
        # same verdict (a node restart mid-task is ce, not c; a stall keeps its warning)
        error = self.job.progress.get("error")
        self.error = error if isinstance(error, str) else self.error
        warnings = self.job.progress.get("warnings")
        if isinstance(warnings, list):
            self.warnings = [str(w) for w in warnings]
        # and the clock steps it saw (its file gives those nodes no offset: a job
        # re-adopted by a restarted scheduler forgot them, a review)
        steps = self.job.progress.get("clock_steps")
        if isinstance(steps, list):
            self.clock_steps = {str(n) for n in steps}
        passed = self.job.progress.get("passed")
        if isinstance(passed, list):
            self.passed = [str(p) for p in passed]

    @property
    def launched_wall(self) -> float | None:
        """When the job was launched (s since the epoch, our clock): a clock step seen
        before is not this job's; None if it cannot be read."""
        try:
            return datetime.datetime.fromisoformat(self.job.launched_at or "").timestamp()
        except ValueError:
            return None

    # -- persistence -----------------------------------------------------------------------
    def _save(self) -> None:
        """Progress in memory now; in the store (an fsync) at once after a quiet spell,
        else with the other changes of the next SAVE_DELAY s: 100 roles starting and
        ending are 200 changes, and one fsync each kept the scheduler busy for seconds.
        The last change is stored before the job ends (and at the scheduler's stop)."""
        self._progress()
        if self._save_at is not None:
            return  # a save is due: it stores this change too
        loop = asyncio.get_running_loop()
        wait = self._saved_at + SAVE_DELAY - loop.time()
        if wait <= 0:
            self.save_now()  # the first change after a quiet spell is stored at once
        else:
            self._save_at = loop.call_later(wait, self.save_now)

    def save_now(self, retry: bool = True) -> None:
        """Store the progress now; if the state file refuses it, again every SAVE_RETRY s
        (not with ``retry=False``: the scheduler's stop) until :meth:`done_saving`."""
        if self._finished:
            return  # the job's end is stored by its lifecycle: nothing may overwrite it
        self._progress()  # also what changed since the last _save (the verdict's error)
        if self._save_at is not None:
            self._save_at.cancel()
            self._save_at = None
        loop = None
        with contextlib.suppress(RuntimeError):  # no loop: at teardown
            loop = asyncio.get_running_loop()
            self._saved_at = loop.time()
        try:
            self.host.save_progress(self.job.id, self.job.progress)
        except sqlite3.Error as e:
            # the state file takes no writes (a full disk): the job goes on from memory
            # and its progress is stored as soon as the file takes it again
            if not self._unsaved:
                log.warning("job %d: cannot store its progress (%s); retrying", self.job.id, e)
            self._unsaved = True
            if loop is not None and retry:
                self._save_at = loop.call_later(SAVE_RETRY, self.save_now)
            return
        if self._unsaved:
            log.info("job %d: progress stored again", self.job.id)
            self._unsaved = False

    def done_saving(self) -> None:
        """The job's lifecycle stores its end from here on: a pending or retried progress
        write must not overwrite it (with the runner's progress, which lacks the file's
        point counts)."""
        self._finished = True
        if self._save_at is not None:
            self._save_at.cancel()
            self._save_at = None

    def _progress(self) -> None:
        progress = dict(self.job.progress)
        progress["roles"] = self.roles
        progress["tasks"] = {
            str(t.spec.index): {
                "state": t.state,
                "end": t.end,
                "epoch": t.epoch,
                "started_at": t.started_at,
            }
            for t in self.tasks
        }
        progress["error"] = self.error
        progress["warnings"] = list(self.warnings)
        if self.clock_steps:
            progress["clock_steps"] = sorted(self.clock_steps)
        if self.passed:
            progress["passed"] = list(self.passed)
        self.job.progress = progress

    def expectations(self) -> list[dict[str, Any]]:
        """Per ended task with a known count: the points its runner took, for the
        recorder's per-task check (and where its batches end, to ask for replays)."""
        return expectations(self.tasks, self.roles)

    # -- running ---------------------------------------------------------------------------
    async def run(self) -> None:
        by_role: dict[str, list[TaskState]] = {}
        for t in self.tasks:
            by_role.setdefault(t.role, []).append(t)
        try:
            await asyncio.gather(*(self._run_role(role, ts) for role, ts in by_role.items()))
        except Exception as e:  # a bug in one role must still end the job
            if getattr(self.host, "superseded", False):
                return  # another scheduler holds the state file: it ends this job
            log.exception("job %d: runner failed", self.job.id)
            self.error = self.error or f"internal error: {e}"
        if self.cancelled:
            status = "cd"
        elif self.error:
            status = "ce"
        else:
            status = "c"
        reason = self.error
        if status == "cd" and self.cancelled_by:
            reason = "; ".join([x for x in (self.cancelled_by, reason) if x])
        if status == "cd" and self.stop_unsure:  # a cancel is not always a stop (fault
            # injection: cd without a word while the cut-off node measured on)
            reason = "; ".join([reason or "cancelled", *self.stop_unsure])
        if self.warnings and status != "ce":
            # a cd's warning alone read as why it ended ("cd: … missed 1 of 275 sampling
            # deadlines", after its user's own cancel: a side-by-side tour)
            first = reason or ("cancelled" if status == "cd" else None)
            reason = "; ".join(([first] if first else []) + summarized(self.warnings))
        if status == "c" and self.passed:
            status = "ce"
            note = (
                f"{'; '.join(self.passed)}: ended while this scheduler's state file did not "
                "see it (restored from an older copy, or its last progress not written): "
                "point count unknown, the file holds what the recorder stored"
            )
            reason = "; ".join([note, reason] if reason else [note])
        self.verdict = status
        self.save_now()  # the tasks' ends and what the verdict rests on, in one write
        # the components are reset while the recorder writes the file (the file does not
        # depend on it); the job's end and its pipeline's release wait for the reset
        self._resetting = asyncio.ensure_future(self._reset_components())
        await self.on_done(self, status, reason)

    async def reset_done(self) -> None:
        """Once the components of this job were reset (or found restarted or gone)."""
        if self._resetting is not None:
            with contextlib.suppress(Exception):
                await self._resetting

    def _clock_step_in_task(self, t: TaskState, component: str, step: float, at: object) -> None:
        """The node said its wall clock stepped while the task ran: told in the job's
        reason, unless its heartbeats told the step already (a step in a task's last
        seconds was told by nobody: their check takes seconds, and the job had ended)."""
        st = self.host.node_of(component)
        node = st.node if st is not None else "?"
        if node in self.clock_steps:
            return
        when = ""
        if isinstance(at, int | float):
            stamp = datetime.datetime.fromtimestamp(float(at), datetime.timezone.utc)
            when = f" at uts {float(at):.3f} ({stamp.isoformat(timespec='seconds')})"
        self.clock_stepped(
            node,
            f"the clock of node {node} stepped by {step:+.1f} s during task "
            f"{t.spec.index} ({t.spec.technique_name}) on {component}{when}: the points "
            "keep the node's timestamps, so uts jump there",
        )

    def clock_stepped(self, node: str, what: str) -> None:
        """The clock of ``node``, which hosts one of this job's components, stepped."""
        self.clock_steps.add(node)
        if what not in self.warnings:
            self.warnings.append(what)
            self._save()
            self.host.job_event(self.job.id, "warning", detail={"message": what, "node": node})

    async def cancel(self) -> None:
        """Stop every running task of this job at once (bounded: see CANCEL_WAIT)."""
        self.cancelled = True
        self.cancel_at = time.monotonic()
        await self._notify()
        running = [t for t in self.tasks if t.state in ("starting", "running")]
        await asyncio.gather(
            *(self._stop_task(t, "job cancelled") for t in running), return_exceptions=True
        )
        await self._notify()

    async def _stop_task(self, t: TaskState, reason: str) -> None:
        ok, msg, data = await self.host.component_request(
            self.roles[t.role],
            "task_stop",
            {"job": self.job.id, "reason": reason},
            timeout=CANCEL_WAIT,
        )
        if not ok:
            log.warning("job %d: stopping task %d: %s", self.job.id, t.spec.index, msg)
        elif isinstance(data, dict) and data.get("running") is False:
            t.no_task = True  # nothing to wait for: the node holds no task
            await self._notify()

    def _failed(self) -> bool:
        return self.cancelled or self.error is not None

    async def _run_role(self, role: str, tasks: Sequence[TaskState]) -> None:
        for t in tasks:
            if self._failed():
                if t.state == "running":
                    # a job re-adopted while being cancelled: its running task's end (and
                    # count) is waited for as a cancel's, bounded. It was left "running"
                    # in the ended job, without its count, and the cancel's note on an
                    # unconfirmed stop was lost (a fault run: a scheduler killed 50 ms
                    # after a cancel)
                    await self._wait_end(t)
                return
            if t.state in ("ended", "skipped"):
                continue
            if self._passed(t):
                # its component runs (or ran) a later task of this job: this one ended
                # unseen. Waited for, it ended the job ce at once "reports no task
                # (running)" and stopped the task running; started, it ran twice (a fault
                # round: a state file restored from a copy taken two tasks before)
                what = f"task {t.spec.index} ({t.spec.technique_name}) on role {t.role!r}"
                log.warning("job %d: %s ended unseen by this scheduler", self.job.id, what)
                self.passed.append(what)
                if t.spec.task_name:
                    self.started_names.add(t.spec.task_name)
                async with self.host.cond:
                    self._end_now(t, {"reason": "unseen", "message": "its end was not seen"})
                continue
            if t.state == "pending":
                # its node holds it already (a successor of a scheduler that died while
                # it started it): taken over, whatever its triggers say now (skipped by
                # its stop_with, it ran on untracked: a review)
                held = self._node_holds(t)
                if not held and t.start_with and t.start_with not in self.started_names:
                    await self._wait_for_start_with(t)
                    if self._failed():
                        return
                    if t.start_with in self.skipped_names:
                        await self._skip(
                            t,
                            f"task {t.spec.index} ({t.spec.technique_name}) on role "
                            f"{t.role!r} was skipped: it starts with {t.start_with!r}, "
                            "which was skipped",
                        )
                        continue
                if not held and t.stop_with and t.stop_with in self.started_names:
                    await self._skip(t, None)
                    continue
                if not await self._start(t):
                    return
            await self._wait_end(t)

    async def _not_started(self, t: TaskState, why: str) -> bool:
        """End ``t``, not started, and its job with ``why``; False (as :meth:`_start`)."""
        self.error = why
        t.state = "ended"
        t.end = {"reason": "error", "message": why}
        self._save()
        await self._notify()
        return False

    async def _node_online(self, component: str) -> None:
        """Until the node of ``component`` is online, at most ``node_grace_period`` s."""
        deadline = time.monotonic() + self.host.node_grace_period

        def online() -> bool:
            node = self.host.node_of(component)
            return (node is not None and node.state == "online") or time.monotonic() > deadline

        async with self.host.cond:
            while not online() and not self._failed():
                with contextlib.suppress(asyncio.TimeoutError):
                    await wait_for(self.host.cond.wait(), max(0.0, deadline - time.monotonic()))

    async def _may_answer(self, t: TaskState, msg: str) -> bool:
        """Nobody answered ``t``'s start (``msg``): whether to ask again. Yes while its
        node, on the run the start was sent to, is online in the scheduler's eyes (silent:
        stopped or cut off, not lost yet) or back within ``node_grace_period`` after it
        was lost, as for a running task: the job ended ``ce`` after 10 s "no node …
        answered", and the node, back, ran the task into the ended job (a randomized
        fault run: a node stopped 13 s as the job was submitted). Its copies of the start
        are the same task: a node starts it once (ops: started already)."""
        if self._failed():  # cancelled, or another role failed, meanwhile
            return False
        component = self.roles[t.role]
        st = self.host.component_status(component)
        if st is not None and (self._is_running(st, t) or self._ended(st, t)):
            return False  # it did start: taken as such below
        node = self.host.node_of(component)
        said = msg.removesuffix(" — is it running?")  # (it is asked again: said why)
        if node is not None and node.state == "online" and node.epoch == t.epoch:
            if not self.host.node_silent(node.node):
                since = self.host.node_back_since(node.node)
                if since is None or since > self.host.node_grace_period:
                    # it speaks, and does not answer this: not a silence that ends (an
                    # external broker's rules that lack the component, a node gone
                    # wrong): as before
                    return False
                # it speaks again after a silence (a cut link): what goes to it may still
                # wait in TCP's back-off (12-14 s after a 16 s cut), while what it sends
                # passes at once. The job ended ce "no node … answered … is it running?"
                # as its task 0's end came in, and the node got task 1's start 3 s later
                # (a randomized fault run): asked again within node_grace_period
                self._waited_said(
                    t,
                    f"{said}; asked again: node {node.node} speaks again after a silence "
                    f"{since:.0f} s ago, and what is sent to it may still be on its way",
                )
                return True
            self._waited_said(t, f"{said}; asked again while node {node.node} is not counted lost")
            return True
        if node is None or node.epoch != t.epoch:
            return False
        self._waited_said(
            t,
            f"{said}; node {node.node} is not online: waiting for it, "
            f"{self.host.node_grace_period:g} s at most",
        )
        await self._node_online(component)
        back = self.host.node_of(component)
        if self._failed() or back is None:
            return False
        if back.state != "online":  # (said as such: "is it running?" alone told less)
            t.start_gave_up = (
                f"node {back.node} hosting {component} did not answer task {t.spec.index} "
                f"({t.spec.technique_name})'s start and was not back within "
                f"{self.host.node_grace_period:g} s after it was lost"
            )
            return False
        return back.epoch == t.epoch

    def _waited_said(self, t: TaskState, why: str | None) -> None:
        """The running job's reason while its task's start waits for a silent node (None:
        that wait is over; a reason of another kind stays)."""
        if why is None and t.start_wait is None:
            return
        what = f"task {t.spec.index} ({t.spec.technique_name})"
        reason = f"{what} not started yet: {why}" if why else None
        self.host.show_reason(self.job.id, reason, replacing=t.start_wait)
        t.start_wait = reason

    def _passed(self, t: TaskState) -> bool:
        """The component of ``t`` runs, or has ended, a later task of this job."""
        st = self.host.component_status(self.roles[t.role])
        if st is None or self._is_running(st, t) or self._ended(st, t):
            return False

        def later(job: int | None, task: int | None) -> bool:
            index = t.spec.index
            return job == self.job.id and task is not None and index is not None and task > index

        lt = st.last_task
        return (st.state == "running" and later(st.job, st.task)) or (
            lt is not None and later(lt.job, lt.task)
        )

    def _node_holds(self, t: TaskState) -> bool:
        """The component's status says it runs ``t`` or has ended it."""
        st = self.host.component_status(self.roles[t.role])
        return st is not None and (self._is_running(st, t) or self._ended(st, t))

    async def _start(self, t: TaskState) -> bool:
        component = self.roles[t.role]
        if t.epoch is not None and not self._node_holds(t):
            # saved as being started: which run of its node has it? A successor up before
            # the node sent the start again, and a node back meanwhile ran it a second
            # time (a review): it waits for the node (as a lost node is waited for)
            await self._node_online(component)
            if self._failed():  # cancelled, or another role failed, meanwhile: its reason
                return False
            node = self.host.node_of(component)
            if node is None or node.state != "online":
                name = f"node {node.node}" if node is not None else "the node"
                return await self._not_started(
                    t,
                    f"{name} hosting {component} was not back within "
                    f"{self.host.node_grace_period:g} s after task {t.spec.index} "
                    f"({t.spec.technique_name}) was being started on it",
                )
            if node.epoch != t.epoch and not self._node_holds(t):
                # its node restarted meanwhile: it may have run in part there, and is not
                # run a second time (its points would count twice: a review)
                return await self._not_started(
                    t,
                    f"node {node.node} restarted (epoch {t.epoch} -> {node.epoch}) while "
                    f"task {t.spec.index} ({t.spec.technique_name}) was being started on "
                    f"{component}: it may have run in part, so it is not started again",
                )
        node = self.host.node_of(component)
        t.state = "starting"
        # the node's run it is started on: stored with it if a save comes meanwhile
        t.epoch = node.epoch if node is not None and node.state == "online" else None
        # in memory only: stored with the node's answer (running, or the refusal), so
        # no fsync stands between a launch and its first task (~3 ms of every job). A
        # scheduler that dies in between finds the task pending: the check below (the
        # node's retained status) then takes a task it started for running
        self._progress()
        # a re-adopted task may have started before the old scheduler died
        st = self.host.component_status(component)
        if (st is not None and self._is_running(st, t)) or (st is not None and self._ended(st, t)):
            t.state = "running"
            # with the run it is (the node's epoch): a node that restarts now must be
            # seen to have cut it off (taken for the restarted node's own, the job hung
            # `r`: found by random-timing fault injection, a scheduler and then its node
            # killed just as a task started)
            t.epoch, t.started_at = st.epoch, st.started_at
            t.running_since = time.monotonic()
            self._save()
            # as started by this scheduler: the tasks that start with it waited for it
            # for ever, and a stop_with that had started left it running (a review)
            await self._started(t, running=self._is_running(st, t))
            return True
        # sent again while no answer comes (the same id: a node starts it once): a
        # restarted node takes a moment to subscribe to its components' commands, and a
        # task_start sent meanwhile was lost (the job ended ce after 10 s "no node ...
        # answered ... is it running?": found by random-timing fault injection)
        while True:
            ok, msg, data = await self.host.component_request(
                component,
                "task_start",
                # on the node's run it is decided on: a node restarted meanwhile refuses it
                # (the first copy may have started it there before: a second run, a review)
                {"task": t.spec.model_dump(mode="json")}
                | ({"epoch": t.epoch} if t.epoch is not None else {}),
                timeout=10.0,
                resend=True,
            )
            if ok or not isinstance(data, Unanswered) or not await self._may_answer(t, msg):
                break
        self._waited_said(t, None)
        msg = t.start_gave_up or msg
        st = self.host.component_status(component)
        failed = st.last_task if st is not None and self._failed_start(st, t) else None
        if not ok and failed is not None:  # the node's own end of it: never a late end
            msg = failed.message or msg
            t.end = failed.model_dump(mode="json")
        elif not ok and st is not None and (self._is_running(st, t) or self._ended(st, t)):
            # its answer was lost, not the task: the component's own status says it runs
            # it (a broker with tiny queues ended such jobs ce "is it running?" while the
            # node measured on: found by fault injection)
            log.warning(
                "job %d: task %d: %s, but %s reports running it: taken as started",
                self.job.id,
                t.spec.index,
                msg,
                component,
            )
            ok, data = True, {"epoch": st.epoch, "started_at": st.started_at}
        if not ok:
            self.error = f"task {t.spec.index} ({t.spec.technique_name}) on role {t.role!r}: {msg}"
            t.state = "ended"
            t.end = t.end or {"reason": "error", "message": msg}
            self._save()
            await self._notify()
            return False
        t.state = "running"
        t.running_since = time.monotonic()
        if isinstance(data, dict):
            epoch, started = data.get("epoch"), data.get("started_at")
            t.epoch = epoch if isinstance(epoch, int) else None
            t.started_at = float(started) if isinstance(started, int | float) else None
            accepted = data.get("accepted_at")  # being set up on the node: not begun
            if t.started_at is None and isinstance(accepted, int | float):
                t.accepted_seen = float(accepted)
        # at once, not with the next SAVE_DELAY batch: a stack that died in those 0.2 s
        # (kill -9 of the tree, a power cut) left the task 'pending', and the successor
        # started it again on the restarted node: a second run, and the job ended c
        self.save_now()
        # when it began on its node, not when this scheduler got to say so (seconds later
        # on a busy PC: the events list disagreed with the plot, a dashboard tour), on
        # this scheduler's clock as every event (a node's own put its start after the
        # job's end in a sorted list: a review); unknown offset: now
        node = self.host.node_of(component)
        off = self.host.clock_offset(node.node) if node is not None else None
        at = t.started_at - off if t.started_at is not None and off is not None else None
        self.host.job_event(self.job.id, "task_started", role=t.role, task=t.spec.index, at=at)
        await self._started(t)
        return True

    async def _started(self, t: TaskState, running: bool = True) -> None:
        """``t`` started: the tasks that start with it may start, those that stop with it
        are stopped (on every role), and so is ``t`` if it still runs and its own
        stop_with started before (a task taken over; one that ended is not: the stop names
        the job only, and would stop the role's next task: a review)."""
        if running and t.stop_with and t.stop_with in self.started_names:
            self._bg.add(asyncio.ensure_future(self._stop_task(t, f"stopped by {t.stop_with}")))
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
            await self._notify()

    def _is_running(self, st: ComponentStatus, t: TaskState) -> bool:
        return st.state == "running" and st.job == self.job.id and st.task == t.spec.index

    def _ended(self, st: ComponentStatus, t: TaskState) -> bool:
        lt = st.last_task
        return lt is not None and lt.job == self.job.id and lt.task == t.spec.index

    def _failed_start(self, st: ComponentStatus, t: TaskState) -> bool:
        """The node told the task's end as an error with no point: its start failed
        (the refusal itself, when its answer was lost)."""
        lt = st.last_task
        return self._ended(st, t) and lt is not None and lt.failed_start

    async def _skip(self, t: TaskState, why: str | None) -> None:
        """A task that will not run (``why``: a warning of the job's; None: its stop_with
        trigger started before it, as planned)."""
        t.state = "skipped"
        if t.spec.task_name:
            self.skipped_names.add(t.spec.task_name)
        if why is not None:
            log.warning("job %d: %s", self.job.id, why)
            self.warnings.append(why)
            self.host.job_event(
                self.job.id, "warning", role=t.role, task=t.spec.index, detail={"message": why}
            )
        self._save()
        await self._notify()  # tasks that start with it

    async def _notify(self) -> None:
        async with self.host.cond:
            self.host.cond.notify_all()

    async def _wait_for_start_with(self, t: TaskState) -> None:
        """Until the task ``t`` starts with has started (or was skipped). Tasks that
        start with each other (a with b, b with a; or round a longer ring) start
        together, as in tomato, where a task that waits already counts as started (they
        waited for each other for ever, the job `r` with no reason: found side by side
        with tomato 2.2)."""
        name = t.spec.task_name
        if name:
            self.waiting[name] = str(t.start_with)
            await self._notify()  # a task waiting for this one may now see the ring
        try:
            await self._wait(functools.partial(self._may_start, t))
        finally:
            if name:
                self.waiting.pop(name, None)

    def _may_start(self, t: TaskState) -> bool:
        x: str | None = t.start_with
        if x in self.started_names or x in self.skipped_names:
            return True
        seen: set[str] = set()
        while x is not None and x not in seen:  # a ring of waits back to t
            if x == t.spec.task_name:
                return True
            seen.add(x)
            x = self.waiting.get(x)
        return False

    async def _wait(self, pred: Callable[[], bool]) -> None:
        async with self.host.cond:
            await self.host.cond.wait_for(lambda: pred() or self._failed())

    def _gone_for_good(self, t: TaskState, component: str, node: Any) -> str:
        """Why a task ends whose node stayed away for the grace period: a node stopped
        (or restarting) that never told the task's end is said so, not "lost" (a
        `tomato restart-node --force` of a node whose driver call never returned read
        "… was lost for more than 10 s": a randomized fault round)."""
        grace = f"{self.host.node_grace_period:g} s"
        if node is not None and node.state == "offline":
            how = "restarted (tomato restart-node)" if node.restarting else "stopped"
            return (
                f"node {node.node} hosting {component} was {how} during task "
                f"{t.spec.index}, and the task's end was not told within {grace} (a driver "
                "call that did not return?): its points so far are kept, its count unknown"
            )
        who = f"node {node.node}" if node else "the node"
        return (
            f"{who} hosting {component} was lost for more than {grace} during task {t.spec.index}"
        )

    def _node_away(self, t: TaskState, component: str, node: Any) -> str:
        """The node of a running task is lost (or stopped): said at once in the job's
        reason and as a ``warning`` event, not only at the end of the grace period (an
        integrator's review: the job's topics said `r`, no reason, for those 30 s; only
        the component's status said `lost`). The reason goes when the node is back."""
        name = node.node if node is not None else None
        # (a node not heard from since the scheduler started: "node ? … is unknown", a
        # fault-injection tour after a whole stack's restart)
        who = (
            f"node {name} hosting {component} is {node.state}"
            if node is not None
            else f"the node hosting {component} is not heard from since the scheduler started"
        )
        why = (
            # a node stopping ends its tasks itself: the job ends with their ends (it
            # said "unless it is back within 30 s", and ended ce 8 ms later: an admin's
            # tour)
            f"{who} during task {t.spec.index}: its task ends with it, and the job ends ce"
            if node is not None and node.state == "stopping"
            else f"{who} during task {t.spec.index}: the "
            f"job ends ce unless it is back within {self.host.node_grace_period:g} s"
        )
        log.warning("job %d: %s", self.job.id, why)
        self.host.show_reason(self.job.id, why)
        self.host.job_event(
            self.job.id,
            "warning",
            role=t.role,
            task=t.spec.index,
            detail={"message": why, "node": name},
        )
        return why

    def _gone(self, t: TaskState, component: str) -> str | None:
        """Why the node no longer holds the task (None: it may still run it)."""
        node = self.host.node_of(component)
        if node is None or node.state != "online":
            return None
        if t.epoch is None:  # re-adopted from an older scheduler: this is its epoch
            t.epoch = node.epoch
            self._save()
            return None
        if node.epoch != t.epoch:
            return (
                f"node {node.node} restarted mid-task (epoch {t.epoch} -> {node.epoch}): "
                f"task {t.spec.index} ({t.spec.technique_name}) on {component} is gone"
            )
        st = self.host.component_status(component)
        since = t.started_at if t.started_at is not None else t.accepted_seen
        if st is None and since is not None and component in self.seen_running:
            return (
                f"component {component} is no longer hosted by node {node.node} "
                f"(task {t.spec.index} ({t.spec.technique_name}) is gone)"
            )
        if st is not None and self._is_running(st, t):
            self.seen_running.add(component)
            if t.started_at is None and st.started_at is not None:
                t.started_at = st.started_at  # taken over while its node set it up
                self._save()
            elif t.started_at is None:  # accepted, not begun: seen so at this status
                t.accepted_seen = max(t.accepted_seen or 0.0, st.time)
            since = t.started_at if t.started_at is not None else t.accepted_seen
        if (
            st is not None
            and since is not None
            and st.epoch == t.epoch
            and st.time >= since
            and not self._is_running(st, t)
            and not self._ended(st, t)
        ):
            return (
                f"component {component} reports no task ({st.state}) since "
                f"task {t.spec.index} ({t.spec.technique_name}) started: it was reloaded "
                "or reset, or its node restarted mid-task"
            )
        return None

    def _end_now(self, t: TaskState, end: dict[str, Any]) -> None:
        """End a task its node did not tell the end of (gone with a restart, lost, a stop
        not confirmed): its count is unknown (``npoints`` null in its event, which a
        dashboard following the events waited for in vain: a third-party check)."""
        t.state = "ended"
        t.end = end
        self._save()
        self.host.cond.notify_all()
        self.host.job_event(
            self.job.id,
            "task_ended",
            role=t.role,
            task=t.spec.index,
            detail={"reason": end.get("reason"), "npoints": None},
        )

    async def _wait_end(self, t: TaskState) -> None:
        component = self.roles[t.role]
        lost_since: float | None = None
        waiting: str | None = None  # the job's reason while its node is away
        was_quiet = False  # the broker passed nothing at the last look
        async with self.host.cond:
            while True:
                st = self.host.component_status(component)
                if st is not None and self._ended(st, t) and st.last_task is not None:
                    end = st.last_task.model_dump(mode="json")
                    break
                if self.error is not None and not self.cancelled:
                    gone = self._gone(t, component)  # the same fault: named too
                    if gone is not None:
                        if gone not in self.error:
                            self.error = f"{self.error}; {gone}"
                        self._end_now(t, {"reason": "error", "message": gone})
                    else:  # stopped with the job: its end (and count) may come late
                        # (it was left "running", without a task_ended event: a review)
                        why = f"the job failed: {self.error}"
                        self._end_now(t, {"reason": "stopped", "message": why})
                    return
                timeout: float | None = None
                if self.cancelled:
                    waited = time.monotonic() - (self.cancel_at or time.monotonic())
                    if t.no_task or waited >= CANCEL_WAIT:
                        why = (
                            "the node reports no running task"
                            if t.no_task
                            else (f"the node did not confirm the stop within {CANCEL_WAIT:g} s")
                        )
                        if not t.no_task:
                            self.unconfirmed.add(component)
                            self.stop_unsure.append(
                                f"task {t.spec.index} on {component}: its node did not confirm "
                                f"the stop within {CANCEL_WAIT:g} s (cut off or stalled, or "
                                "a driver call that does not return: a hung instrument?), so "
                                "the task may go on until its node is back or the call "
                                "returns; the points it takes are merged into the file"
                            )
                        self._end_now(t, {"reason": "stopped", "message": f"cancelled; {why}"})
                        return
                    timeout = CANCEL_WAIT - waited
                gone = self._gone(t, component)
                if gone is not None:
                    # a fresh component needs no reset (and may not be registered yet);
                    # one of the same node run that says it is idle is reset at the job's
                    # end all the same: a node login's forged "idle" hid a task that ran on,
                    # and the next job launched there failed "busy" (a security round)
                    now = self.host.component_status(component)
                    if now is None or now.epoch != t.epoch:
                        self.unconfirmed.add(component)
                    if not self.cancelled:
                        self.error = gone
                    self._end_now(t, {"reason": "error", "message": gone})
                    return
                node = self.host.node_of(component)
                quiet = self.host.broker_quiet()
                if node is None or node.state != "online":
                    if lost_since is None:
                        waiting = self._node_away(t, component, node)
                    if lost_since is None or quiet or was_quiet:
                        # while the broker passes nothing the node's return cannot reach
                        # us: its grace starts again once the broker is back (a Mosquitto
                        # stopped cleanly sends every client's will, then goes; 45 s of
                        # it ended jobs ce "node … lost for more than 30 s", each point
                        # in the file: an admin's tour)
                        lost_since = time.monotonic()
                    left = self.host.node_grace_period - (time.monotonic() - lost_since)
                    if left <= 0:
                        self.error = self.error or self._gone_for_good(t, component, node)
                        self.unconfirmed.add(component)
                        self._end_now(t, {"reason": "error", "message": self.error})
                        return
                    timeout = left if timeout is None else min(timeout, left)
                else:
                    if waiting is not None:  # back in time: the reason goes
                        self.host.show_reason(self.job.id, None, replacing=waiting)
                        waiting = None
                    lost_since = None
                # not while the broker passes nothing (down, stalled): the task's end
                # cannot come then; the loop counts it as standing still, so that a
                # give-up waits for what comes once it is back (a fault run: a broker
                # down 5 min past a task's end gave the task up, ce "a driver call did
                # not return", every point in the file)
                if quiet or was_quiet:  # (until the moment it is back)
                    self.stood_still_at = time.monotonic()
                if quiet:
                    timeout = 1.0 if timeout is None else min(timeout, 1.0)
                was_quiet = quiet
                # not while its node is lost: that is the reason, and said so (it was
                # said a driver call did not return: an outside run, a node killed)
                overrun_in = (
                    None if lost_since is not None or quiet else self._until_overrun(t, component)
                )
                if overrun_in is not None:
                    timeout = overrun_in if timeout is None else min(timeout, overrun_in)
                stuck_in = None if quiet else self._until_given_up(t)
                if stuck_in is not None and stuck_in <= 0:
                    ran = time.monotonic() - (t.running_since or time.monotonic())
                    self.error = self.error or (
                        f"task {t.spec.index} ({t.spec.technique_name}) on {component} was "
                        f"given up {ran - t.spec.max_duration:.0f} s past its max_duration "
                        f"({t.spec.max_duration:g} s): a driver call did not return; "
                        f"{component} stays busy until its node restarts"
                    )
                    if t.overrun_reason is not None:
                        self.host.show_reason(self.job.id, None, replacing=t.overrun_reason)
                    self.unconfirmed.add(component)
                    self._end_now(t, {"reason": "error", "message": self.error})
                    return
                if stuck_in is not None:
                    timeout = stuck_in if timeout is None else min(timeout, stuck_in)
                waited_from = time.monotonic()
                with contextlib.suppress(asyncio.TimeoutError):
                    await wait_for(self.host.cond.wait(), timeout)
                if timeout is not None and time.monotonic() - waited_from > timeout + 1.0:
                    self.stood_still_at = time.monotonic()  # woken late: the loop stood
        t.state = "ended"
        t.end = end
        if waiting is not None:  # its end came with its node's return: the reason goes
            # (it stayed on the job until it ended, its next task running: a dashboard tour)
            self.host.show_reason(self.job.id, None, replacing=waiting)
        if t.overrun_reason is not None:  # it ended after all: the advice is stale
            self.host.show_reason(self.job.id, None, replacing=t.overrun_reason)
        if t.overrun_warning is not None and _ran_in_time(t, end):
            # its end came late, not the task: a slow link or a scheduler paused past the
            # limit (fault injection: jobs ended c with "a driver call did not return")
            with contextlib.suppress(ValueError):
                self.warnings.remove(t.overrun_warning)
            ran = float(end["t_end"]) - float(end["t_start"])
            log.info(
                "job %d: task %d ran %.1f s by its node's clock: its end came late, "
                "not the task (the overrun warning is withdrawn)",
                self.job.id,
                t.spec.index,
                ran,
            )
            # said on the wire too: events are not retained, and a page or a script kept
            # showing the warning (an outside run: a broker down 29 s)
            self.host.job_event(
                self.job.id,
                "warning",
                role=t.role,
                task=t.spec.index,
                detail={
                    "message": f"task {t.spec.index} ran {ran:.1f} s by its node's clock: "
                    "its end came late, not the task (the warning before is withdrawn)",
                    "withdrawn": t.overrun_warning,
                },
            )
        detail = {"reason": end.get("reason"), "npoints": end.get("npoints")}
        missed = int(end.get("missed") or 0)
        if missed:
            detail["missed"] = missed
            n = t.spec.npoints
            taken = end.get("npoints")
            if end.get("reason") != "done" and isinstance(taken, int):
                # a task stopped early (cancel, a stop trigger) had only the deadlines up
                # to its stop: "missed 2 of 200" of a task cancelled after 23 (session 49)
                n = taken + missed
            warning = (
                f"task {t.spec.index} ({t.spec.technique_name}) on {component} missed "
                f"{missed} of {n} sampling deadlines (the driver or node was behind; "
                "nothing was measured for them)"
            )
            self.warnings.append(warning)
            self.host.job_event(
                self.job.id, "warning", role=t.role, task=t.spec.index, detail={"message": warning}
            )
        step = end.get("clock_step")
        if isinstance(step, int | float) and step:
            detail["clock_step"] = step
            self._clock_step_in_task(t, component, float(step), end.get("clock_step_at"))
        self.host.job_event(
            self.job.id, "task_ended", role=t.role, task=t.spec.index, detail=detail
        )
        message = str(end.get("message") or "")
        if end.get("reason") == "error" and not self.cancelled:
            self.error = (
                f"task {t.spec.index} ({t.spec.technique_name}) on {component} failed: {message}"
            )
        elif (
            end.get("reason") == "stopped"
            and not self.cancelled
            and not message.startswith("stopped by ")  # a stop_with trigger: as planned
        ):
            # stopped by no one in this job (node shut down, component removed or reset)
            self.error = (
                f"task {t.spec.index} ({t.spec.technique_name}) on {component} was stopped "
                f"before its end: {message or 'no reason given'}"
            )
        if all(x.state == "ended" for x in self.tasks):
            self._progress()  # the job's last task: run() stores it with the verdict
        else:
            self._save()  # the task's end with its warning or error (a restart must see them)
        if self.error is not None:
            await self._notify()

    def _until_overrun(self, t: TaskState, component: str) -> float | None:
        """Seconds until the task counts as overrunning (None: said already, or not
        running); once it does, the job's reason and a warning say so (found by fault
        injection: a driver call that never returned left the job `r`, no reason, for
        good)."""
        if t.overrun_at is not None or self.cancelled:
            return None
        if t.running_since is None:
            t.running_since = time.monotonic()  # re-adopted: from now on
        limit = _overrun_limit(t)
        ran = time.monotonic() - t.running_since
        # and a grace after the loop stood still or the broker was quiet: the task's end
        # may be in the backlog that comes then
        since = time.monotonic() - self.stood_still_at
        if ran < limit or since < OVERRUN_GRACE:
            return max(limit - ran, OVERRUN_GRACE - since)
        t.overrun_at = time.monotonic()
        what = (
            f"task {t.spec.index} ({t.spec.technique_name}) on {component} ran at least "
            f"{ran - t.spec.max_duration:.0f} s past its max_duration "
            f"({t.spec.max_duration:g} s): a driver call did not return in time"
        )
        # while it lasts: what to do about it (cleared if the task ends after all)
        t.overrun_reason = (
            f"{what}; `ketchup cancel {self.job.id}` ends the job, and a component whose "
            "call never returns is freed by restarting its node"
        )
        log.warning("job %d: %s", self.job.id, what)
        t.overrun_warning = what
        self.warnings.append(what)  # the job's final reason: what happened, no advice
        self._save()
        self.host.job_event(
            self.job.id, "warning", role=t.role, task=t.spec.index, detail={"message": what}
        )
        self.host.show_reason(self.job.id, t.overrun_reason)
        return None

    def _until_given_up(self, t: TaskState) -> float | None:
        """Seconds until a task that overran is given up (``[scheduler] stuck_after`` past
        its max_duration, or 10 % of it if longer): a driver call that never returns
        kept its job `r` for good (the pipeline's next job waits, saying why, until the
        node restarts). None: not overrunning, or cancelled (a cancel has its own bound)."""
        if t.overrun_at is None or self.cancelled or t.running_since is None:
            return None
        now = time.monotonic()
        limit = t.spec.max_duration + max(
            self.host.stuck_after, OVERRUN_SHARE * t.spec.max_duration
        )
        left = limit - (now - t.running_since)
        # and only once the loop has run a while since the overrun was found and since it
        # last stood still: what came meanwhile (the task's end) is read first
        confirmed = max(t.overrun_at, self.stood_still_at) + GIVE_UP_CONFIRM - now
        return max(left, confirmed)

    async def _reset_components(self) -> None:
        wait = 3.0 if self.cancelled else RESET_WAIT

        async def reset(component: str) -> None:
            node = self.host.node_of(component)
            if component in self.unconfirmed or node is None or node.state != "online":
                return  # it would not answer; the next task_start finds it idle anyway
            ran = [t.epoch for t in self.tasks if self.roles.get(t.role) == component]
            ran = [e for e in ran if e is not None]
            st = self.host.component_status(component)
            fresh = st is None or st.epoch != node.epoch  # not announced by this node yet
            if (ran and node.epoch != ran[-1]) or (fresh and not ran):
                # back already, with a new epoch, before this reset was sent: its components
                # start idle (the reset went to a component the new node had not registered
                # yet and waited out RESET_WAIT: 10 s more per job, found by fault injection)
                log.info("job %d: %s's node restarted: no reset needed", self.job.id, component)
                return
            epoch = node.epoch

            def restarted() -> bool:  # a node that comes back starts its components idle
                n = self.host.node_of(component)
                # back online with a new epoch: not merely gone (a lost node's status
                # says nothing of its components; the node may come back as it was)
                return n is not None and n.state == "online" and n.epoch != epoch

            async def node_restarted() -> None:
                async with self.host.cond:
                    await self.host.cond.wait_for(restarted)

            # a node killed as its task ended never answers the reset: the job would
            # wait the whole RESET_WAIT for it while the node is back in half a second
            ask = asyncio.ensure_future(
                self.host.component_request(component, "reset", {"force": True}, timeout=wait)
            )
            watch = asyncio.ensure_future(node_restarted())
            await asyncio.wait({ask, watch}, return_when=asyncio.FIRST_COMPLETED)
            watch.cancel()
            if not ask.done():
                ask.cancel()
                log.info("job %d: %s's node restarted: no reset needed", self.job.id, component)
                return
            ok, msg, _ = ask.result()
            if not ok:
                log.warning("job %d: reset of %s after it: %s", self.job.id, component, msg)
                # a warning of the job too (it was in the log only, the job `c` with no
                # warning: a driver author's tour); the component shows it until a reset
                # works
                self.host.job_event(
                    self.job.id,
                    "warning",
                    detail={"message": f"{component} after the job: {msg}"},
                )

        await asyncio.gather(*(reset(c) for c in set(self.roles.values())), return_exceptions=True)
