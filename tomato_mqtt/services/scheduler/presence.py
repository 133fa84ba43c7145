"""What the scheduler learns from the others' retained statuses, judged on its own clock.

- **Staleness by the receiver's clock.** A node counts as lost when no status arrived
  from it for ``lost_after`` seconds of the scheduler's monotonic clock; the
  ``heartbeat`` field (the node's wall clock) is never compared with ours for that.
- **Clock skew.** It is compared only to estimate the node's clock offset (the largest
  of the last few ``heartbeat - now``: transport delay only makes it smaller); beyond
  ``clock_tolerance`` the node is flagged in ``tomato status nodes`` and the jobs
  running on it get a ``warning`` event. The offset goes into the job's file.
- **The recorder's storage faults** become the ``reason`` of the running jobs while they
  last (``ketchup status`` shows them) and are cleared when storage resumes.
- **Late data and late task ends** of jobs that already ended update the job: the point
  counts of its file after a late merge, and the task end (with the runner's count) that
  a node cut off during the task reports when it comes back. Statuses stay as they
  ended (see docs/reliability.md); the reason says what changed.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import logging
import math
import sqlite3
import time
from typing import TYPE_CHECKING, Any

from pydantic import JsonValue

from tomato_mqtt.model.jobs import DONE_STATUSES, Job, merge_noted, merged_note
from tomato_mqtt.wire.messages import ComponentStatus, NodeStatus, RecorderStatus

if TYPE_CHECKING:
    from tomato_mqtt.services.scheduler.service import SchedulerService

__all__ = ["Presence"]

log = logging.getLogger(__name__)

STORAGE_PREFIX = "the recorder cannot store data"
#: how the scheduler's own unwritable state file starts a job's reason (what_to_do)
STATE_PREFIX = "the scheduler's state file"
#: the reason of the running jobs while the recorder does not answer (stopped, crashed)
RECORDER_DOWN = "the recorder is not answering"
#: how the recorder's refusal to merge late data into a job's file starts (files.py)
NOT_MERGED = "late data not merged: "


#: s a new clock offset must hold before it counts as a step of the node's clock
STEP_HOLDS = 2.0
#: heartbeats the scheduler's own may be late before it counts as held up, and a node's
#: before it counts as silent (Presence.silent)
STALLED_BEATS = 2.5


class Presence:
    def __init__(self, svc: SchedulerService) -> None:
        self.svc = svc
        self.seen: dict[str, float] = {}  # node -> monotonic time its last status arrived
        self.spoke_again: dict[str, float] = {}  # node -> when a silence of it last ended
        self.offsets: dict[str, collections.deque[float]] = {}
        self.skewed: set[str] = set()
        #: when each node's statuses were last found delayed, a backlog (see received)
        self.node_back: dict[str, float] = {}
        #: each node's last live status: (our monotonic time, its heartbeat)
        self.last_beat: dict[str, tuple[float, float]] = {}
        #: the offset each node's clock was taken to have (a change beyond the tolerance
        #: is a step: _clock_stepped)
        self.taken: dict[str, float] = {}
        self.last_ok: dict[str, float] = {}  # node -> its offset before a step began
        self.step_seen: dict[str, tuple[float, float]] = {}  # node -> (offset, monotonic)
        #: node -> when (our clock) its statuses began to arrive off the offset taken,
        #: also those not taken as a measure (a step back reads as a cut link's backlog
        #: for a few heartbeats: it was first seen ~9 s late, and a job submitted
        #: meanwhile blamed: a check of the fix)
        self.off_since: dict[str, float] = {}
        self.epochs: dict[str, int] = {}  # each node's epoch its offsets are of
        self.storage_error: str | None = None
        self.state_error: str | None = None  # the scheduler's own (state_unwritable)
        self._last_check: float | None = None
        #: the broker passed nothing for a while (check_stale): no loss verdicts
        self.broker_quiet = False
        self.broker_back = -1e9  # monotonic time the broker passed messages again
        #: monotonic time of the scheduler's last heartbeat (tick); None: never ticked
        self.loop_tick: float | None = None
        self.recorder_seen: float | None = None  # monotonic time of its last status
        self.recorder_online = 0  # "online" statuses of the recorder received so far
        self.recorder_said = asyncio.Condition()  # notified at each of them
        self.recorder_down: str | None = None  # the running jobs' reason while it is
        self._cleared = False  # a live "online" seen since this scheduler started

    # -- nodes ------------------------------------------------------------------------------
    def silent(self, node: str) -> bool:
        """No status of ``node`` has arrived for STALLED_BEATS heartbeats (it stands still
        or is cut off), whether or not it is counted lost yet."""
        seen = self.seen.get(node)
        return seen is not None and time.monotonic() - seen > STALLED_BEATS * self.svc.heartbeat

    def back_since(self, node: str) -> float | None:
        """Seconds since ``node``'s statuses came again after a silence (or arrived as a
        cut link's backlog), None if they never did."""
        back = max(self.spoke_again.get(node, -math.inf), self.node_back.get(node, -math.inf))
        return None if back == -math.inf else time.monotonic() - back

    def received(self, st: NodeStatus, retained: bool) -> None:
        now = time.monotonic()
        prev = self.seen.get(st.node)
        if prev is not None and now - prev > STALLED_BEATS * self.svc.heartbeat:
            self.spoke_again[st.node] = now  # (a silence ended: back_since)
        self.seen[st.node] = now
        if st.state != "online" or retained or st.heartbeat <= 0:
            return  # a retained status may be old: it says nothing about the node's clock
        was = self.taken.get(st.node)
        if was is not None and self.epochs.get(st.node, st.epoch) == st.epoch:
            tol = self.svc.settings.scheduler.clock_tolerance
            if abs(st.heartbeat - time.time() - was) > tol:
                self.off_since.setdefault(st.node, time.time())
            else:
                self.off_since.pop(st.node, None)
        last = self.last_beat.get(st.node)
        self.last_beat[st.node] = (now, st.heartbeat)
        if (
            last is not None
            and (now - last[0]) - (st.heartbeat - last[1]) > 2.5 * self.svc.heartbeat
        ):
            # it came much later after the last than it was sent after it, by the node's
            # own clock (whatever its heartbeat): its link was cut, and the statuses it
            # could not send meanwhile come now, at once, with their old heartbeats: no
            # measure of its clock (an admin's tour: "node pc2: clock differs … by
            # -37.3 s" after a 45 s cut)
            self.node_back[st.node] = now
        if now - self.node_back.get(st.node, -math.inf) < 3 * self.svc.heartbeat:
            return
        if self.loop_tick is not None and now - self.loop_tick > STALLED_BEATS * self.svc.heartbeat:
            # the scheduler itself was held up (its loop blocked, SIGSTOP, a machine under
            # load): statuses that waited meanwhile are no measure of a clock either (a
            # fault run: a state file locked for 30 s warned "clock differs by -21.9 s")
            return
        if self.broker_quiet or now - self.broker_back < 3 * self.svc.heartbeat:
            # the backlog a stalled broker delivers at once: old heartbeats, not a clock
            # off by the stall (a fault run: a 40 s stall wrote tomato_clock_offset -37 s
            # into a file, and warned of every node's clock)
            return
        if self.epochs.get(st.node, st.epoch) != st.epoch:
            # another run of the node (a restart): its clock is taken afresh, not as a
            # step (an outside check: a node restarted with a right clock after running
            # an hour ahead put "stepped by -3600 s" into the next job's reason)
            for kept in (self.offsets, self.taken, self.last_ok, self.step_seen, self.off_since):
                kept.pop(st.node, None)
        self.epochs[st.node] = st.epoch
        q = self.offsets.setdefault(st.node, collections.deque(maxlen=5))
        q.append(st.heartbeat - time.time())
        off = self.clock_offset(st.node)
        tol = self.svc.settings.scheduler.clock_tolerance
        if off is None:
            return
        if abs(off) > tol and st.node not in self.skewed:
            self.skewed.add(st.node)
            msg = self.skew_message(st.node, off)
            log.warning("%s", msg)
            for job in self._running_jobs_on(st.node):
                self.svc.job_event(job, "warning", detail={"message": msg, "node": st.node})
        elif abs(off) <= tol and st.node in self.skewed:
            self.skewed.discard(st.node)
            log.info("node %s: clock back within %g s of the scheduler's", st.node, tol)
        # steps by the last two offsets (the largest: one late status is no step), so a
        # step back shows within two heartbeats, not five (an hour back for 12 s went
        # unreported: an outside check); a backlog passes within the hold below
        self._step_check(st.node, max(q[-1], q[-2] if len(q) > 1 else q[-1]), tol)

    def own_echo(self, sent: float) -> None:
        """This scheduler's own heartbeat back from the broker (``sent``: its time, our
        clock): how late it comes is the broker's delivery lag, on no node's clock. Over
        the clock tolerance, the nodes' statuses come as late, and are held from clock
        judgments as after a stall (a broker under two logins' floods passed them on
        4-57 s late, and every node's clock, `local`'s too, was said to have stepped,
        into three jobs' reasons: a security round)."""
        lag = time.time() - sent
        if lag > self.svc.settings.scheduler.clock_tolerance:
            if time.monotonic() - self.broker_back > 3 * self.svc.heartbeat:
                log.info(
                    "the broker passes messages %.1f s late (this scheduler's own "
                    "heartbeat): the nodes' statuses are not taken for their clocks",
                    lag,
                )
            self.broker_back = time.monotonic()

    def tick(self) -> None:
        """At each of the scheduler's heartbeats: one that comes late (the scheduler was
        held up) holds off clock judgments for a while, as a broker back from a stall
        does (the statuses that waited come now)."""
        now = time.monotonic()
        if self.loop_tick is not None and now - self.loop_tick > STALLED_BEATS * self.svc.heartbeat:
            log.info(
                "the scheduler was held up for %.1f s: the nodes' statuses that waited "
                "meanwhile are not taken for their clocks",
                now - self.loop_tick,
            )
            self.broker_back = now
        self.loop_tick = now

    def _step_check(self, node: str, off: float, tol: float) -> None:
        """A new offset beyond the tolerance of the one taken (the first is the node's own)
        that holds for a while is a step of the node's clock; one that passes is a backlog
        of statuses (a scheduler that was paused gets the oldest first)."""
        was = self.taken.setdefault(node, off)
        if abs(off - was) <= tol:
            self.step_seen.pop(node, None)
            self.last_ok[node] = off
            return
        now = time.monotonic()
        seen = self.step_seen.get(node)
        if seen is None or abs(off - seen[0]) > tol:
            self.step_seen[node] = (off, now)
        elif now - seen[1] >= STEP_HOLDS:
            self.taken[node] = off
            self.step_seen.pop(node, None)
            since = time.time() - (now - seen[1])
            since = min(since, self.off_since.pop(node, since))
            # the step from the offset just before it, not from the first one taken: a
            # step of -1 s (within the tolerance) and then one of -5 s was said "-6.0 s"
            # while the node's own task end said -5 (a fault round)
            before = self.last_ok.pop(node, was)
            self.last_ok[node] = off
            self._clock_stepped(node, off - before, off, since)

    def _clock_stepped(self, node: str, step: float, off: float, since: float) -> None:
        """A node's clock stepped while it ran (found by fault injection: a step back made
        a job's uts jump back with no word, and a step forward had the file claim one
        offset for all its points). Each job on it that ran when the step was first
        seen (``since``, our clock) says so in its reason, and its file records no single
        offset for that node's roles; one launched since ran after the step (it was
        blamed: fault injection), and one whose node told the step at its task's end
        has said it."""
        at = datetime.datetime.fromtimestamp(since, datetime.timezone.utc)
        msg = (
            f"the clock of node {node} stepped by {step:+.1f} s at about "
            f"{at.isoformat(timespec='seconds')} (the scheduler's time; now {off:+.1f} s "
            "from it): the points keep the node's timestamps, so uts jump there"
        )
        log.warning("%s", msg)
        for job in self._running_jobs_on(node):
            runner = self.svc.runners.get(job)
            if runner is None or node in getattr(runner, "clock_steps", ()):
                continue
            # (launched after it was seen: the step came before; one launched in the few
            # heartbeats between the step and its sighting is told all the same, as bulk
            # and upstream drivers' nodes do not tell steps at a task's end)
            launched = getattr(runner, "launched_wall", None)
            if launched is not None and launched > since:
                continue
            runner.clock_stepped(node, msg)

    def clock_offset(self, node: str) -> float | None:
        q = self.offsets.get(node)
        return max(q) if q else None

    def skew_of(self, node: str) -> float | None:
        """The node's clock offset when it is beyond ``clock_tolerance`` (what a results
        file records as ``tomato_clock_offset``), else None: a measured offset within
        the tolerance is mostly the heartbeat's own transit (~1 ms on one PC)."""
        off = self.clock_offset(node)
        tol = self.svc.settings.scheduler.clock_tolerance
        return off if off is not None and abs(off) > tol else None

    def skew_message(self, node: str, off: float) -> str:
        tol = self.svc.settings.scheduler.clock_tolerance
        return (
            f"node {node}: clock differs from the scheduler's by {off:+.1f} s (tolerance "
            f"{tol:g} s); its data keep the node's timestamps"
        )

    def check_stale(self) -> bool:
        """Count nodes silent for ``lost_after`` (our clock) as lost; True if any changed.

        Not in a round that comes late: then our own loop was blocked, and the statuses
        that arrived meanwhile are still queued (they are read before the next round).
        """
        now = time.monotonic()
        last, self._last_check = self._last_check, now
        if last is not None and now - last > 2 * self.svc.heartbeat:
            return False
        lost_after = self.svc.settings.scheduler.lost_after
        quiet = now - self.svc.broker_heard
        if quiet > 2.5 * self.svc.heartbeat:
            # nothing from the broker, not even this scheduler's own heartbeat: the broker
            # stalls (a frozen broker ended a job ce, "node lost", while every node ran on:
            # found by fault injection). Nobody is counted lost until it passes messages
            # again; then each gets a full lost_after from that moment
            if not self.broker_quiet:
                log.warning(
                    "no message from the broker for %.0f s (not even this scheduler's own"
                    " heartbeat): it stalls; nodes and the recorder are not counted lost"
                    " meanwhile",
                    quiet,
                )
            self.broker_quiet = True
            return False
        if self.broker_quiet:
            self.broker_quiet = False
            self.broker_back = now
            log.warning("the broker passes messages again")
            for name in self.seen:
                self.seen[name] = now
            if self.recorder_seen is not None:
                self.recorder_seen = now
        changed = False
        if self.recorder_seen is not None and self.recorder_down is None:
            age = now - self.recorder_seen
            if age > lost_after:  # stopped or hung: its last will comes much later
                self.svc.spawn(self._recorder_gone(f"no status for {age:.0f} s", lost_after))
        elif self.recorder_down is not None and self.svc.runners:
            self.svc.spawn(self._recorder_reason(self.recorder_down))  # jobs launched since
        for name, st in list(self.svc.nodes.items()):
            age = now - self.seen.get(name, now)
            if st.state == "online" and age > lost_after:
                self.svc.nodes[name] = st.model_copy(update={"state": "lost"})
                log.warning("node %s: no heartbeat for %.0f s, counted as lost", name, age)
                changed = True
        return changed

    def node_view(self, name: str) -> dict[str, JsonValue]:
        st = self.svc.nodes[name]
        out: dict[str, JsonValue] = st.model_dump(mode="json", by_alias=True)
        seen = self.seen.get(name)
        out["heartbeat_age"] = None if seen is None else round(time.monotonic() - seen, 3)
        out["silent"] = self.silent(name)  # (by the heartbeat setting: STALLED_BEATS)
        off = self.clock_offset(name)
        out["clock_offset"] = None if off is None else round(off, 3)
        out["clock_skewed"] = name in self.skewed
        if name in self.skewed and off is not None:
            out["clock_warning"] = self.skew_message(name, off)
        return out

    def _running_jobs_on(self, node: str) -> list[int]:
        out = []
        for jobid, runner in self.svc.runners.items():
            for comp in runner.roles.values():
                st = self.svc.node_of(comp)
                if st is not None and st.node == node:
                    out.append(jobid)
                    break
        return out

    # -- the recorder -----------------------------------------------------------------------
    async def recorder(self, rst: RecorderStatus) -> None:
        store = self.svc.store
        if store is None:
            return
        if rst.state in ("lost", "offline"):
            self.recorder_seen = None
            await self._recorder_gone(rst.state)
            return
        self.recorder_seen = time.monotonic()
        if rst.state == "online":
            self.recorder_online += 1
            async with self.recorder_said:
                self.recorder_said.notify_all()
        if rst.state == "online" and (self.recorder_down is not None or not self._cleared):
            # also once after this scheduler's start: a reason stored by its predecessor
            # (found by a review: it stayed on the job for the rest of its run)
            if self.recorder_down is not None:
                log.info("the recorder answers again")
            self._cleared = True
            await self._recorder_reason(None)
        if rst.storage_error != self.storage_error:
            await self._storage(rst.storage_error)
        for key, prog in rst.jobs.items():
            if prog.merged:
                await self._merged(int(key), prog.merged, prog.points)
            if prog.not_merged:
                await self._not_merged(int(key), prog.not_merged)

    def recorder_view(self) -> tuple[str, str | None]:
        """(the recorder's state, its store's fault) for ``tomato status``: a fault its
        last status said is marked as such while it does not answer (it was shown as if
        current, and the recorder's being down was not shown at all)."""
        if self.recorder_down is not None:
            state = "not answering"
        elif self.recorder_seen is None:
            state = "not seen"
        else:
            state = "online"
        error = self.storage_error
        if error is not None and state != "online":
            error = f"{error} (its last status said so; it has not answered since)"
        return state, error

    async def _recorder_gone(self, how: str, silent_for: float | None = None) -> None:
        if self.recorder_down is not None:
            return
        seen = self.recorder_seen
        if silent_for is not None and seen is not None and time.monotonic() - seen < silent_for:
            return  # a status came between the check and now: it answers
        jobs = await self._recorder_reason(
            f"{RECORDER_DOWN} ({how}): the points wait in the nodes' spools and are "
            "stored, and the file written, once it is back (the supervisor restarts a "
            "recorder that exits; why it stopped is in recorder.log in the logdir)"
        )
        if jobs:
            log.warning("the recorder is not answering (%s); running jobs: %s", how, jobs)

    async def _recorder_reason(self, why: str | None) -> list[int]:
        """The running jobs' reason while the recorder is down; cleared when it is back.
        Returns the running jobs."""
        self.recorder_down = why
        return await self._fault_reason(why, RECORDER_DOWN)

    async def state_unwritable(self, error: str | None) -> None:
        """The scheduler's own state file refuses writes (or takes them again)."""
        old, self.state_error = self.state_error, error
        await self._fault_reason(error, STATE_PREFIX, replaces=old)

    async def _storage(self, error: str | None) -> None:
        old, self.storage_error = self.storage_error, error
        if error is not None and not error.startswith(STORAGE_PREFIX):
            error = f"{STORAGE_PREFIX}: {error}"
        await self._fault_reason(error, STORAGE_PREFIX, replaces=old)

    async def _fault_reason(
        self, why: str | None, prefix: str, replaces: str | None = None
    ) -> list[int]:
        """A fault of the stack as the running jobs' reason while it lasts: ``why`` on
        each with no reason (or ``replaces``, the same fault's previous text); None clears
        each whose reason starts with ``prefix`` (a reason of another kind stays). A state
        file that takes no writes keeps the reason in memory (set_reason). Returns the
        running jobs."""
        svc = self.svc
        if svc.store is None:
            return []
        try:
            running = svc.store.jobs(statuses=["r", "rd"])
        except sqlite3.Error as e:  # (closed at a stop, damaged: said elsewhere)
            log.debug("running jobs not read for their reason: %s", e)
            return []
        for job in running:
            try:
                # read again: a job that ended while an earlier one was published keeps
                # its final reason (a review: a recorder back ended jobs meanwhile)
                job = svc.store.job(job.id)
                if job.status not in ("r", "rd"):
                    continue
                if why is not None and job.reason in (None, replaces):
                    job = svc.store.set_reason(job.id, why)
                elif why is None and job.reason and job.reason.startswith(prefix):
                    # another fault that lasts takes its place (it was not applied while
                    # this one was said: a review found the job without a reason again)
                    job = svc.store.set_reason(job.id, self._lasting(prefix))
                else:
                    continue
            except KeyError:  # (gone meanwhile)
                continue
            except sqlite3.Error as e:
                log.warning("job %d: its reason not stored (%s)", job.id, e)
                continue
            await svc.publish_job(job)
        return [job.id for job in running]

    def lasting_fault(self) -> str | None:
        """The stack's fault said as the running jobs' reason while it lasts (the
        recorder down, its store or the state file refusing writes), if one does: a job
        launched meanwhile gets it too (those launched after the fault was first said ran
        without a word of it: a randomized fault round)."""
        return self._lasting("")

    def _lasting(self, cleared: str) -> str | None:
        """The reason of a fault other than ``cleared`` that lasts, if any."""
        storage = self.storage_error
        if storage is not None and not storage.startswith(STORAGE_PREFIX):
            storage = f"{STORAGE_PREFIX}: {storage}"
        for prefix, why in (
            (RECORDER_DOWN, self.recorder_down),
            (STORAGE_PREFIX, storage),
            (STATE_PREFIX, self.state_error),
        ):
            if why is not None and prefix != cleared:
                return why
        return None

    def _ended(self, jobid: int) -> Job | None:
        """The job, if it exists and has ended (what the recorder says of late data)."""
        assert self.svc.store is not None
        try:
            job = self.svc.store.job(jobid)
        except KeyError:
            return None
        return job if job.status in DONE_STATUSES else None

    async def _merged(self, jobid: int, merged: int, points: dict[str, int]) -> None:
        svc = self.svc
        assert svc.store is not None
        job = self._ended(jobid)
        if job is None or merged <= int(job.progress.get("merged", 0)):
            return
        roles = dict(job.progress.get("roles") or {})
        per_role = {role: points.get(comp, 0) for role, comp in roles.items()}
        progress = dict(job.progress) | {"merged": merged, "points": per_role}
        total = sum(per_role.values())
        note = merged_note(total)
        job = svc.store.update_job(jobid, progress=progress, reason=merge_noted(job.reason, note))
        await svc.publish_job(job)
        log.info("job %d: %s", jobid, note)

    async def _not_merged(self, jobid: int, why: str) -> None:
        """Late data the recorder did not merge into the ended job's file (a fault run:
        its reason still said the points are merged, the refusal only in a log)."""
        svc = self.svc
        assert svc.store is not None
        job = self._ended(jobid)
        if job is None or why in (job.reason or ""):
            return
        base = job.reason or ""
        if (i := base.find(NOT_MERGED)) >= 0:  # (an earlier refusal's: replaced)
            base = base[:i].rstrip("; ")
        reason = f"{base}; {why}" if base else why
        try:
            job = svc.store.update_job(jobid, reason=reason)
        except sqlite3.Error as e:
            log.warning("job %d: its reason not stored (%s)", jobid, e)
            return
        await svc.publish_job(job)

    # -- late task ends -----------------------------------------------------------------------
    def late_task_end(self, st: ComponentStatus) -> None:
        """A node cut off during a task reports its end after the job ended: keep it."""
        lt = st.last_task
        store = self.svc.store
        if lt is None or lt.job is None or lt.task is None or store is None:
            return
        if lt.job in self.svc.runners:
            return  # the runner takes it
        try:
            job = store.job(lt.job)
        except KeyError:
            return
        if job.status not in DONE_STATUSES:
            return
        tasks: dict[str, Any] = dict(job.progress.get("tasks") or {})
        t = dict(tasks.get(str(lt.task)) or {})
        end = dict(t.get("end") or {})
        if isinstance(end.get("npoints"), int):
            return
        new_end = lt.model_dump(mode="json")
        if lt.failed_start:  # it never ran: the node's reason, not a late end (a review)
            if end.get("reason") != "error":
                return
        else:
            new_end |= {"late": True, "ended_job_as": end.get("message")}
        tasks[str(lt.task)] = t | {"state": "ended", "end": new_end}
        store.update_job(lt.job, progress=dict(job.progress) | {"tasks": tasks})
        log.info("job %d: task %d end reported late (%d points)", lt.job, lt.task, lt.npoints)
        self.svc.spawn(self.svc.publish_job(store.job(lt.job)))
