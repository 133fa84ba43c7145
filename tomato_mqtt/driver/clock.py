"""A task's points, on time: :class:`Steps` (one task's deadlines and points) and the
node's :class:`SharedClock` (one thread calling many fast tasks on time).

Every native task runs as :class:`Steps`: point ``k`` (1..N) is due at ``start + k *
sampling_interval``; a point taken more than half an interval late is not taken, that
deadline and every other one already past are counted as missed, and the next point is
the next deadline still ahead (see :mod:`.runner`). Who waits for the deadlines differs:

- by default the component's own worker thread sleeps until each deadline
  (:meth:`ComponentRunner._execute`): a slow or blocking driver delays nobody else;
- a driver whose calls never wait (``ModelDevice.shared_clock``: a simulator, a read of
  memory) may share one thread per node with every other such task that samples at
  least every :data:`CLOCK_MAX_INTERVAL`: the clock wakes at the earliest deadline and
  calls every task that is due. Tasks of one rate are put on a few phases of their
  interval (:meth:`SharedClock._align`): at 50 components x 1 kHz that is 2,000
  wake-ups a second instead of 50,000 (one thread each) or ~16,000 (unaligned), and
  the wake-ups (a sleep, the GIL taken back, threads contending for it) were most of
  the node's CPU per point.

The component's worker thread still owns the task: it hands the steps to the clock and
waits for them to end, then ends the task as before.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from tomato_mqtt.driver.points import TaskEnd, _describe

if TYPE_CHECKING:
    from tomato_mqtt.driver.runner import ComponentRunner
    from tomato_mqtt.driver.tasking import _Run

__all__ = ["CLOCK_MAX_INTERVAL", "SharedClock", "Steps", "nap", "shared_clock"]

log = logging.getLogger(__name__)

#: tasks sampling at most this often (s) may share the clock (slower ones: a thread
#: waking a few times a second costs nothing worth sharing)
CLOCK_MAX_INTERVAL = 0.05

#: an interval has one phase per this many seconds (at most MAX_PHASES): SharedClock._align
PHASE_SPACING = 0.0005
MAX_PHASES = 8


def nap(seconds: float, stop: threading.Event) -> None:
    """``time.sleep``, or the stop event's wait where the clock refuses the sleep: Python
    sleeps until an absolute deadline (``clock_nanosleep``), which a faked or stepped
    clock (libfaketime in the chaos suite's skew scenarios) can answer with EINVAL; a
    point must not fail its task for that."""
    try:
        time.sleep(seconds)
    except OSError:
        stop.wait(seconds)


#: s: the most a wall-clock reading may be off its ``perf_counter`` twin (_clock_pair)
PAIR_GAP = 1e-5
#: s the wall clock may move against ``perf_counter`` between two points before it is
#: a step (NTP slews far less; a step is what an admin or a first sync makes)
CLOCK_STEP = 1.0


def _clock_pair() -> tuple[float, float]:
    """``time.time()`` and ``time.perf_counter()`` of one moment: a task's deadlines
    are kept on the second and its points' times told in the first. Read one after the
    other, a preemption between the two (a loaded machine: 38 µs seen) put the wall
    time of every point of the task that far off its deadline; the pair is read again
    (a few times at most) until it is less than :data:`PAIR_GAP` apart. The wall time
    is read first, so a deadline told in wall time is never ahead of its call."""
    for _ in range(5):
        before = time.perf_counter()
        wall = time.time()
        perf = time.perf_counter()
        if perf - before < PAIR_GAP:
            break
    return wall, perf


def _text(e: BaseException) -> str:
    """``str(e)``, or what stands for it when the driver's exception cannot say it."""
    try:
        return str(e)
    except Exception:
        return "<its message could not be read>"


class Steps:
    """One task's deadlines, points and end; :meth:`take` is called at each deadline."""

    def __init__(self, runner: ComponentRunner, run: _Run) -> None:
        self.runner = runner
        self.run = run
        self.task = run.task
        self.si = run.task.sampling_interval
        self.n = run.task.npoints
        self.k = 0
        self.npoints = 0
        self.missed = 0
        self.reason: Literal["done", "stopped", "error"] = "done"
        self.message: str | None = None
        self.t_start, self.p_start = _clock_pair()
        #: the wall clock's first step seen at the points (one NTP or an admin makes): its
        #: size and the uts after it; the scheduler tells it in the job's reason
        self.drift = 0.0
        self.clock_step = 0.0
        self.clock_step_at: float | None = None
        #: ended on the shared clock (``done()`` called); guarded by the clock's lock
        self.over = False
        #: the phase of its interval the clock put it on (SharedClock._align)
        self.phase = 0

    def next_deadline(self) -> float | None:
        """The ``perf_counter`` time of the next point, None when every one is past."""
        return None if self.k >= self.n else self.p_start + (self.k + 1) * self.si

    def take(self) -> None:
        """The next deadline has come: take its point, or count it (and every other one
        already past) as missed when this is more than half an interval late."""
        k = self.k = self.k + 1
        si = self.si
        uts, perf = _clock_pair()  # (read together: a pause between two reads is no step)
        late = perf - self.p_start - k * si
        drift = uts - self.t_start - (perf - self.p_start)
        if abs(drift - self.drift) > CLOCK_STEP:
            # the wall clock stepped (its twin did not): its points' uts jump here (a step
            # in a task's last seconds was told by nobody: fault injection). The first one
            # is told (a step and its undoing summed to "+0.0 s": a review)
            if self.clock_step_at is None:
                self.clock_step = drift - self.drift
                self.clock_step_at = uts
            self.drift = drift
        if late > si / 2:
            ahead = min(int((late + k * si) / si) + 1, self.n + 1)
            self.missed += ahead - k
            self.k = ahead - 1
            return
        runner = self.runner
        with runner._dev_lock:
            if self.over:  # claimed by SharedClock.cancel in the clock's pass: not called
                return
            raw = runner.device.do_task(self.task, self.t_start, self.t_start + k * si)
        if raw is not None:
            runner._point(uts, raw, self.task)
            self.npoints += 1

    def stopped(self) -> None:
        self.reason = "stopped"
        self.message = self.run.stop_reason

    def failed(self, e: BaseException) -> None:
        """The driver raised (incl. SystemExit: tomato drivers' decorators call sys.exit)."""
        self.reason = "error"
        self.message = (
            f"{self.task.technique_name}: driver error on {self.runner._who} at point"
            f" {self.k}: {type(e).__name__}: {_text(e)}"
        )
        log.warning("%s: task %s failed", self.runner.device.key, _describe(self.task), exc_info=e)
        self.runner._call(self.runner._on_error, self.message)

    def end(self) -> TaskEnd:
        return TaskEnd(
            self.task,
            self.reason,
            self.message,
            self.t_start,
            time.time(),
            self.npoints,
            self.missed,
            self.clock_step,
            self.clock_step_at,
        )


class SharedClock:
    """One thread that calls the steps of many tasks on time (see the module docstring).

    Every task handed to :meth:`add` ends exactly once, with ``done()`` called: when its
    last deadline is past, when its driver raises, or when it is stopped. A stop is
    taken at once (:meth:`cancel`, from the thread that asks for it) unless the clock is
    inside that task's driver call, which it then finishes first. When more tasks are
    due at once than the clock can serve on time, those that have missed the most
    deadlines go first, so an overload is shared out instead of always falling on the
    same components.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # ``with self._lock``: C-level, unlike the Condition's
        self._cv = threading.Condition(self._lock)
        self._heap: list[tuple[float, int, Steps, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._never = threading.Event()  # nap's fallback wait: never set
        #: the entries of the pass being called (_tick): cancel() leaves them to it
        self._due: list[tuple[float, int, Steps, Callable[[], None]]] | tuple[()] = ()
        self._phased: dict[float, list[Steps]] = {}  # per interval: its tasks (_align)

    def add(self, steps: Steps, done: Callable[[], None]) -> None:
        """Call ``steps`` at its deadlines from now on; ``done()`` when the task ends.

        The task's start moves forward (by less than one interval) onto one of the
        clock's phases of that interval (:meth:`_align`), so that tasks of one rate fall
        due in a few groups: one wake-up of the clock serves a group (unaligned, 50 tasks
        at 1 kHz woke it ~16,000 times a second, a few tasks each)."""
        with self._lock:
            self._align(steps)
        first = steps.next_deadline()
        if first is None:
            steps.over = True
            done()
            return
        with self._cv:
            if steps.over:  # stopped before it got here (cancel)
                return
            heapq.heappush(self._heap, (first, next(self._seq), steps, done))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="clock", daemon=True)
                self._thread.start()
            self._cv.notify()

    def _align(self, steps: Steps) -> None:
        """Move the start of ``steps`` forward onto the least-used of its interval's
        phases (under the lock).

        An interval has ``si / PHASE_SPACING`` phases (at most :data:`MAX_PHASES`):
        the tasks of one phase are called one after the other, and a group that takes
        longer than half an interval costs the last of them their point, so groups stay
        small: a new task joins a phase with the fewest running tasks. (All tasks of
        a rate on one phase halved what the clock could call on time: 15 tasks of 40 µs
        calls at 1 kHz kept 68 % of their points, 99 % on 2 phases.) Of those phases it
        takes the one that comes first: when all tie (no other task of its rate runs),
        its start moves by at most ``si / n``. Given phase 0 whenever they tied, a task
        started after another of its rate had ended waited almost a whole interval for
        its first point (49.6 ms at 20 Hz, 9.6 ms at 100 Hz).
        """
        si = steps.si
        n = max(1, min(MAX_PHASES, int(si / PHASE_SPACING)))
        # the running tasks per interval (ended ones go, and intervals no task uses)
        self._phased = {
            k: running
            for k, ts in self._phased.items()
            if (running := [t for t in ts if not t.over])
        }
        live = self._phased.get(si, [])
        self._phased[si] = [*live, steps]
        counts = [0] * n
        for t in live:
            counts[t.phase % n] += 1
        fewest = min(counts)
        best: tuple[float, int] | None = None  # (shift, phase)
        for phase in range(n):
            if counts[phase] != fewest:
                continue
            offset = phase * si / n
            try:
                shift = math.ceil((steps.p_start - offset) / si) * si + offset - steps.p_start
            except (OverflowError, ValueError):  # an interval too small for the grid: as it is
                return
            if 0.0 <= shift < si and (best is None or shift < best[0]):
                best = (shift, phase)
        if best is not None:
            shift, steps.phase = best
            steps.p_start += shift
            steps.t_start += shift

    def cancel(self, steps: Steps, done: Callable[[], None]) -> None:
        """The task of ``steps`` was asked to stop (its ``run.stop`` is set): end it now,
        unless the clock is calling its driver (the clock then ends it right after).

        A task in the clock's current pass (:attr:`_due`) is claimed under its driver's
        lock, under which the clock looks at ``over`` before each call: so the clock
        either has not called it and will not, or is calling it and ends it after."""
        with self._cv:
            if steps.over:
                return
            if any(e[2] is steps for e in self._due):
                dev_lock = steps.runner._dev_lock
                if not dev_lock.acquire(blocking=False):  # in its call: the clock ends it
                    return
                steps.over = True
                dev_lock.release()
            else:
                steps.over = True
                kept = [e for e in self._heap if e[2] is not steps]
                if len(kept) != len(self._heap):
                    self._heap = kept
                    heapq.heapify(self._heap)
        steps.stopped()
        done()

    def __len__(self) -> int:
        with self._cv:
            return len(self._heap)

    def _loop(self) -> None:
        while True:
            try:
                self._tick()
            except BaseException:  # the thread must outlive anything: every task waits on it
                log.exception("the shared clock failed a turn; it goes on")
                self._never.wait(0.001)

    def _tick(self) -> None:
        """Wait for the earliest deadline, then call every task that is due.

        The tasks due are called in one pass, with no lock of the clock's held and no
        call per task but its point's (at 50 tasks x 1 kHz, the clock's lock taken and
        released twice and three calls around each point were a tenth of the node's CPU
        a point); :meth:`cancel` of a task in the pass (:attr:`_due`) is settled under
        its driver's lock, and those that go on are put back on the heap together, each
        unless it was asked to stop in the meantime."""
        perf = time.perf_counter
        with self._cv:
            while not self._heap:
                self._cv.wait()
            first = self._heap[0][0]
            remaining = first - perf()
            if remaining > 0.002:  # a new task may be due sooner: wait on the cv
                self._cv.wait(remaining - 0.001)
                return
        if remaining > 0:
            nap(remaining, self._never)
        with self._lock:
            now = perf()
            heap = self._heap
            due: list[tuple[float, int, Steps, Callable[[], None]]] = []
            while heap and heap[0][0] <= now:
                due.append(heapq.heappop(heap))
            self._due = due
        if len(due) > 1:  # those that missed the most go first (stable: then by deadline)
            due.sort(key=lambda e: -e[2].missed)
        again: list[tuple[float, Steps, Callable[[], None]]] = []
        ended: list[tuple[Steps, Callable[[], None]]] = []
        i = 0
        try:
            for i, (_, _, steps, done) in enumerate(due):  # noqa: B007 (i: see except)
                if steps.run.stop.is_set():
                    steps.stopped()
                    ended.append((steps, done))
                    continue
                try:
                    steps.take()
                except BaseException as e:
                    steps.failed(e)
                    ended.append((steps, done))
                    continue
                if steps.over:  # cancel() ended it
                    continue
                nxt = steps.next_deadline()
                if nxt is None:
                    ended.append((steps, done))
                else:
                    again.append((nxt, steps, done))
        except BaseException:
            # nothing of a turn may be lost: the tasks not called yet go back, and this
            # one ends (its worker waits for it)
            steps, done = due[i][2], due[i][3]
            if steps.reason == "done":
                steps.reason, steps.message = "error", "the node's shared clock failed"
            if not any(s is steps for s, _ in ended):
                ended.append((steps, done))
            again.extend((e[0], e[2], e[3]) for e in due[i + 1 :])
            raise
        finally:
            self._put_back(again, ended)

    def _put_back(
        self,
        again: list[tuple[float, Steps, Callable[[], None]]],
        ended: list[tuple[Steps, Callable[[], None]]],
    ) -> None:
        """The end of a pass: ``again`` back on the heap (those asked to stop meanwhile
        end, as stopped), ``ended`` ended; ``done()`` is called outside the lock."""
        with self._lock:
            self._due = ()
            heap, seq = self._heap, self._seq
            for nxt, steps, done in again:
                if steps.over:  # cancel() ended it after its call
                    continue
                if steps.run.stop.is_set():
                    steps.stopped()
                    ended.append((steps, done))
                else:
                    heapq.heappush(heap, (nxt, next(seq), steps, done))
            ending = [(steps, done) for steps, done in ended if not steps.over]
            for steps, _ in ending:
                steps.over = True
        for _, done in ending:
            done()


_clock: SharedClock | None = None
_clock_lock = threading.Lock()


def shared_clock() -> SharedClock:
    """This process's clock (a node has one)."""
    global _clock
    with _clock_lock:
        if _clock is None:
            _clock = SharedClock()
        return _clock
