"""The node's shared clock (driver/clock.py): fast tasks of drivers whose calls never
wait share one thread that calls them on time, with the same point counts, timing,
stop and error handling as a task on its own worker thread.

Real small drivers (tests/test_driver_runner.py's Probe), no mocks: they record the
thread that called them.
"""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from tests.cpuwait import sample, unexplained_misses
from tests.test_driver_runner import Ends, Probe, ProbeDriver, task
from tomato_mqtt.driver import ComponentRunner, ModelInterface, TaskSpec
from tomato_mqtt.driver.clock import CLOCK_MAX_INTERVAL, shared_clock


class Clocked(Probe):
    shared_clock = True

    def __init__(self, driver: ModelInterface, key: tuple[str, str], **kwargs: Any) -> None:
        super().__init__(driver, key, **kwargs)
        self.threads: set[str] = set()
        # each point's deadline index and how long the calling thread had waited for a
        # CPU then (tests/cpuwait.py)
        self.waits: list[tuple[int, float | None]] = []

    def do_task(self, task: TaskSpec, t_start: float, t_now: float) -> Mapping[str, Any] | None:
        self.threads.add(threading.current_thread().name)
        self.waits.append(sample(t_start, t_now, task.sampling_interval))
        return super().do_task(task, t_start, t_now)


class ClockedDriver(ProbeDriver):
    def DeviceFactory(self, key: tuple[str, str], **kwargs: Any) -> Clocked:
        return Clocked(self, key, **kwargs)


class Comp:
    """One component: its device, runner and task ends."""

    def __init__(self, driver: ModelInterface, channel: str = "1") -> None:
        self.ends = Ends()
        self.dev = driver.DeviceFactory(("COM3", channel))
        assert isinstance(self.dev, Probe)
        self.runner = ComponentRunner(
            self.dev, on_task_end=self.ends.on_end, on_error=self.ends.errors.append
        )
        self.ends.runner = self.runner

    def threads(self) -> set[str]:
        return getattr(self.dev, "threads", set())


@pytest.fixture
def comps() -> Iterator[list[Comp]]:
    made: list[Comp] = []
    yield made
    for c in made:
        c.runner.close()


def _new(comps: list[Comp], driver: ModelInterface, channel: str = "1") -> Comp:
    c = Comp(driver, channel)
    comps.append(c)
    return c


def test_a_fast_task_of_a_never_waiting_driver_runs_on_the_clock(comps: list[Comp]) -> None:
    c = _new(comps, ClockedDriver())
    c.runner.start_task(task(1.0, 0.01))
    end = c.ends.wait(8)
    points, _ = c.runner.drain()
    assert c.threads() == {"clock"}
    assert end.reason == "done" and end.npoints == len(points)
    # a loaded PC skips a few (the suite on Python 3.13 beside other tests: 8 of 20 in a
    # task of 0.2 s; on 3.10 beside other runs, 11 of 20: a stall of ~0.1 s, which a 1 s
    # task takes); a clock that does not keep time misses most
    assert end.npoints + end.missed == 100 and end.missed <= 50, end
    # t_now handed to the driver is each point's deadline, as on a worker thread
    assert all(abs(o - 0.01 * round(o / 0.01)) < 1e-6 for o in c.dev.offsets), c.dev.offsets
    # the last deadline is the task's end, unless a loaded PC skipped it too: counted in
    # `missed` (a CI run with other tests beside it: 0.19, the 0.2 one skipped)
    last = round(c.dev.offsets[-1] / 0.01)
    assert last == 100 or 100 - end.missed <= last < 100, (c.dev.offsets, end.missed)
    assert len(shared_clock()) == 0  # nothing left on the clock


def test_slower_tasks_and_other_drivers_keep_their_own_thread(comps: list[Comp]) -> None:
    slow = _new(comps, ClockedDriver())
    slow.runner.start_task(task(0.3, CLOCK_MAX_INTERVAL * 2))  # slower than the clock takes
    other = _new(comps, ProbeDriver())
    other.runner.start_task(task(0.1, 0.01))  # fast, but its driver may wait
    assert slow.ends.wait(5).reason == "done" and other.ends.wait(5).reason == "done"
    assert slow.threads() and "clock" not in slow.threads()


def test_many_components_share_the_clock_and_each_gets_every_deadline(
    comps: list[Comp],
) -> None:
    drv = ClockedDriver()
    cs = [_new(comps, drv, str(i)) for i in range(10)]
    for c in cs:
        c.runner.start_task(task(0.3, 0.005))
    ends = [c.ends.wait(5) for c in cs]
    for c, end in zip(cs, ends, strict=True):
        points, _ = c.runner.drain()
        assert c.threads() == {"clock"}
        assert end.npoints == len(points) and end.npoints + end.missed == 60
        steps = [b.uts - a.uts for a, b in itertools.pairwise(points)]
        assert min(steps) > 0.0025, min(steps)  # never closer than half an interval
    # none is starved (a loaded 2-core PC misses deadlines: 68 % were met under the full
    # suite on 4 workers; how many a quiet PC meets is bench/'s to say, not a test's)
    assert min(e.npoints for e in ends) >= 6, [e.npoints for e in ends]


def test_stop_on_the_clock_is_prompt_and_keeps_the_points(comps: list[Comp]) -> None:
    c = _new(comps, ClockedDriver())
    c.runner.start_task(task(30.0, 0.01))
    c.dev.wait_points(3)
    t0 = time.perf_counter()
    c.runner.stop_task("cancelled by user")
    end = c.ends.wait(2)
    assert time.perf_counter() - t0 < 0.5
    assert (end.reason, end.message) == ("stopped", "cancelled by user")
    points, _ = c.runner.drain()
    assert len(points) == end.npoints >= 3
    assert len(shared_clock()) == 0


def test_a_failing_driver_ends_its_task_only(comps: list[Comp]) -> None:
    drv = ClockedDriver()
    bad, good = _new(comps, drv, "1"), _new(comps, drv, "2")
    bad.dev.fail_at = 3
    bad.runner.start_task(task(0.3, 0.01))
    good.runner.start_task(task(0.3, 0.01))
    end = bad.ends.wait(5)
    assert end.reason == "error" and end.message is not None
    # "point" counts deadlines: the third call is at point 3, or later if a loaded PC
    # skipped a deadline before it (counted as missed)
    assert end.npoints == 2
    at = end.npoints + end.missed + 1
    assert "instrument went away" in end.message and f"at point {at}" in end.message
    assert bad.ends.errors and "instrument went away" in bad.ends.errors[0]
    ok = good.ends.wait(5)
    assert ok.reason == "done" and ok.npoints + ok.missed == 30


def test_a_late_call_on_the_clock_is_not_burst_called_and_is_counted(comps: list[Comp]) -> None:
    c = _new(comps, ClockedDriver())
    c.dev.late_at = 3  # blocks 50 ms: 5 intervals
    c.runner.start_task(task(0.2, 0.01))
    end = c.ends.wait(5)
    points, _ = c.runner.drain()
    assert end.npoints + end.missed == 20 and end.missed >= 3, end
    # the 50 ms block skips 4-5 deadlines; more only while the clock's thread waited for
    # a CPU (a loaded 2-core CI box: 12 missed once), which is the machine's, not the
    # clock's (tests/cpuwait.py)
    assert isinstance(c.dev, Clocked)
    assert len(c.dev.waits) == end.npoints == len(points), (len(c.dev.waits), end)
    unexplained, waited = unexplained_misses(c.dev.waits, 20, 0.01)
    assert unexplained <= 8, (end, unexplained, waited)
    steps = [b.uts - a.uts for a, b in itertools.pairwise(points)]
    assert sum(s < 0.005 for s in steps) <= 2, steps


def test_a_task_of_no_points_ends_at_once(comps: list[Comp]) -> None:
    c = _new(comps, ClockedDriver())
    c.runner.start_task(task(0.0, 0.01))
    end = c.ends.wait(2)
    assert (end.reason, end.npoints, end.missed) == ("done", 0, 0)


def test_the_clock_survives_a_refused_sleep(
    comps: list[Comp], monkeypatch: pytest.MonkeyPatch
) -> None:
    """libfaketime (the chaos suite's skew scenarios) can answer Python's sleep with
    EINVAL: the clock then waits another way and every task still ends (before this, the
    clock thread died and its tasks hung)."""
    real_sleep = time.sleep
    refused = itertools.count()

    def refusing(seconds: float) -> None:
        if threading.current_thread().name == "clock":
            next(refused)
            raise OSError(22, "Invalid argument")
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", refusing)
    c = _new(comps, ClockedDriver())
    c.runner.start_task(task(0.3, 0.01))
    end = c.ends.wait(5)
    assert next(refused) > 0, "the clock never slept: the test proves nothing"
    assert c.threads() == {"clock"}
    assert end.reason == "done" and end.npoints + end.missed == 30
    # it still takes points on time (a CI run's loaded workers: 10 of 30, 20 skipped as
    # late; a dead clock takes none and its task never ends)
    assert end.npoints >= 5


class Unsaid(Exception):
    """A driver's exception that cannot say what it is."""

    def __str__(self) -> str:
        raise RuntimeError("no text")


class Troubled(Clocked):
    """A clocked driver that, at point ``at``, stalls ``stall`` s and/or raises Unsaid,
    or busy-waits ``busy`` s in every call."""

    at: int | None = None
    stall = 0.0
    unsaid = False
    busy = 0.0

    def do_task(self, task: TaskSpec, t_start: float, t_now: float) -> Mapping[str, Any] | None:
        got = super().do_task(task, t_start, t_now)
        if self.k == self.at:
            time.sleep(self.stall)
            if self.unsaid:
                raise Unsaid()
        until = time.perf_counter() + self.busy
        while time.perf_counter() < until:
            pass
        return got


class TroubledDriver(ProbeDriver):
    def DeviceFactory(self, key: tuple[str, str], **kwargs: Any) -> Troubled:
        return Troubled(self, key, **kwargs)


def _troubled(comps: list[Comp], drv: ModelInterface, channel: str) -> tuple[Comp, Troubled]:
    c = _new(comps, drv, channel)
    assert isinstance(c.dev, Troubled)
    return c, c.dev


def test_a_driver_error_without_words_ends_only_its_own_task(comps: list[Comp]) -> None:
    """Found in review: an exception whose str() fails broke the clock's turn and the
    tasks due in that turn (the healthy one too) never ended."""
    drv = TroubledDriver()
    stall, sd = _troubled(comps, drv, "stall")
    bad, bd = _troubled(comps, drv, "bad")
    good, _ = _troubled(comps, drv, "good")
    sd.at, sd.stall = 3, 0.01  # makes the next two due in the same turn
    bd.at, bd.unsaid = 3, True
    for c in (stall, bad, good):
        c.runner.start_task(task(0.5, 0.05))
        time.sleep(0.001)
    ends = {name: c.ends.wait(5) for name, c in (("stall", stall), ("bad", bad), ("good", good))}
    assert ends["bad"].reason == "error"
    assert "Unsaid: <its message could not be read>" in str(ends["bad"].message)
    assert bad.ends.errors == [ends["bad"].message]
    for name in ("stall", "good"):
        assert ends[name].reason == "done", ends[name]
        assert ends[name].npoints + ends[name].missed == 10
    assert len(shared_clock()) == 0


@pytest.mark.parametrize("one_pass", [False, True], ids=["own-phase", "same-pass"])
def test_a_stop_is_taken_at_once_while_another_driver_holds_the_clock(
    comps: list[Comp], one_pass: bool
) -> None:
    """A driver that blocks breaks shared_clock's contract and delays every other task;
    a stop or close of another component is still taken at once (found in review: it
    waited for the blocking call, and a node's shutdown for each component in turn).
    ``one_pass``: the three due together (one phase: 1.25 kHz), so the others are in
    the blocked driver's pass, which the clock calls without a lock of its own per
    task: their stop is still taken at once, not when the blocked call returns."""
    drv = TroubledDriver()
    blocker, bd = _troubled(comps, drv, "blocker")
    healthy, _ = _troubled(comps, drv, "healthy")
    other, _ = _troubled(comps, drv, "other")
    # one pass: blocked at its 50th point (40 ms in), when the three are surely running
    # in one phase (at its 3rd, 2.4 ms in, a loaded CI box had not started the others
    # yet: "not in the blocked pass")
    bd.at, bd.stall = (50 if one_pass else 3), 2.0
    for c in (blocker, healthy, other):
        c.runner.start_task(task(10.0, 0.0008 if one_pass else 0.02))
    bd.wait_points(bd.at)
    time.sleep(0.05)  # the clock is inside the blocking call now
    clock = shared_clock()
    if one_pass:
        in_pass = {id(e[2]) for e in clock._due}
        for c in (healthy, other):
            clocked = c.runner._clocked
            assert clocked is not None and id(clocked[0]) in in_pass, "not in the blocked pass"
    t0 = time.perf_counter()
    healthy.runner.stop_task("cancelled by user")
    end = healthy.ends.wait(1)
    assert time.perf_counter() - t0 < 0.5
    assert (end.reason, end.message) == ("stopped", "cancelled by user")
    t0 = time.perf_counter()
    other.runner.close()
    assert time.perf_counter() - t0 < 0.5 and not other.runner.running
    blocker.runner.stop_task("cancelled by user")  # ends once its call returns
    end = blocker.ends.wait(5)
    assert end.reason == "stopped" and end.npoints >= 3
    assert len(clock) == 0


def test_an_overload_is_shared_out(comps: list[Comp]) -> None:
    """More work than the clock can do on time (30 x 1 kHz x 40 µs: ~1.2 times what
    one thread does): no component is left with next to nothing (found in review: some
    kept 1-5 % of their points while others kept all; now the shares are even within a
    few points on a quiet PC, and a loaded one still gives each a fair part)."""
    drv = TroubledDriver()
    cs = [_troubled(comps, drv, str(i)) for i in range(30)]
    for _, d in cs:
        d.busy = 40e-6
    for c, _ in cs:
        c.runner.start_task(task(1.0, 0.001))
    ends = [c.ends.wait(10) for c, _ in cs]
    got = [e.npoints for e in ends]
    assert all(e.npoints + e.missed == 1000 for e in ends)
    assert sum(e.missed for e in ends) > 0, "no overload: the test proves nothing"
    # the clock before the fix left some with 1 and 24 of 1,000 while others kept all;
    # shared out, a quiet PC gives each ~680, 3 CPU hogs on 2 cores over 100, and a full
    # test run beside it 38-72: judged is the share, not the machine's speed
    assert min(got) >= 1 and 3 * min(got) >= statistics.median(got), got


class Timed(Clocked):
    """Records when (perf_counter) and with which t_start each point was taken."""

    def __init__(self, driver: ModelInterface, key: tuple[str, str], **kwargs: Any) -> None:
        super().__init__(driver, key, **kwargs)
        self.calls: list[tuple[float, float, float]] = []  # (perf, wall, t_now - t_start)

    def do_task(self, task: TaskSpec, t_start: float, t_now: float) -> Mapping[str, Any] | None:
        self.calls.append((time.perf_counter(), time.time(), t_now - t_start))
        return super().do_task(task, t_start, t_now)


class TimedDriver(ProbeDriver):
    def DeviceFactory(self, key: tuple[str, str], **kwargs: Any) -> Timed:
        return Timed(self, key, **kwargs)


def test_tasks_of_one_rate_go_onto_its_phases_and_no_point_is_taken_early(
    comps: list[Comp],
) -> None:
    """The clock moves a task's start onto one of its interval's phases (by less than
    one interval): tasks of one rate fall due in a few groups, a new task in the group
    with the fewest; no point is taken before its deadline."""
    drv = TimedDriver()
    a, b = _new(comps, drv, "1"), _new(comps, drv, "2")
    a.runner.start_task(task(0.3, 0.004))  # 0.004 / PHASE_SPACING: 8 phases of 0.5 ms
    a.dev.wait_points(1)
    b.runner.start_task(task(0.3, 0.004))
    ea, eb = a.ends.wait(5), b.ends.wait(5)
    assert ea.reason == eb.reason == "done"
    assert ea.npoints + ea.missed == eb.npoints + eb.missed == 75
    da, db = a.dev, b.dev
    assert isinstance(da, Timed) and isinstance(db, Timed)
    # both starts are on the grid of eighths of the interval (within float rounding of
    # the wall clock), and b is not on a's phase (that one had a task already)
    eighths = (eb.t_start - ea.t_start) / (0.004 / 8)
    assert abs(eighths - round(eighths)) < 0.05, eighths
    assert round(eighths) % 8 != 0, eighths
    # never early: every call comes at or after its deadline t_start + k * interval
    for end, dev in ((ea, da), (eb, db)):
        early = [end.t_start + off - wall for _, wall, off in dev.calls]
        assert max(early) < 5e-6, max(early)  # wall vs perf clock: < 1 µs apart


def test_a_task_goes_onto_the_first_coming_of_its_least_used_phases() -> None:
    """Of the phases with the fewest tasks the one that comes first: given phase 0
    whenever all tied, a task started after another of its rate had ended waited up to
    a whole interval (49.6 ms at 20 Hz) for its first point."""
    from types import SimpleNamespace

    from tomato_mqtt.driver.clock import SharedClock

    def steps(p_start: float) -> Any:
        return SimpleNamespace(si=0.04, p_start=p_start, t_start=p_start + 1e9, phase=0, over=False)

    clock = SharedClock()  # 0.04 s: 8 phases, 5 ms apart
    first = steps(1000.001)
    clock._align(first)  # type: ignore[arg-type]
    assert first.phase == 1 and first.p_start == pytest.approx(1000.005)  # not 1000.04
    assert first.t_start - first.p_start == pytest.approx(1e9)  # moved alike
    second = steps(1000.001)  # phase 1 has a task: the next one that comes, phase 2
    clock._align(second)  # type: ignore[arg-type]
    assert second.phase == 2 and second.p_start == pytest.approx(1000.010)
    first.over = second.over = True  # both ended: all phases tie again
    third = steps(1000.0335)
    clock._align(third)  # type: ignore[arg-type]
    assert third.phase == 7 and third.p_start == pytest.approx(1000.035)


def test_a_task_after_one_of_its_rate_starts_without_waiting_an_interval(
    comps: list[Comp],
) -> None:
    """Ten 20 Hz tasks one after the other on one component: each starts within an
    eighth of its interval (6.25 ms) of its request, plus the hand-over to the clock;
    on phase 0 every time, they waited 0-50 ms (a median of 25)."""
    c = _new(comps, ClockedDriver())
    waits = []
    for _ in range(10):
        asked = time.time()
        c.runner.start_task(task(0.1, CLOCK_MAX_INTERVAL))
        end = c.ends.wait(5)
        assert end.reason == "done"
        waits.append(end.t_start - asked)
    assert c.threads() == {"clock"}
    assert min(waits) >= 0 and statistics.median(waits) < 0.010, waits


def test_a_task_s_wall_and_perf_start_are_read_together(monkeypatch: pytest.MonkeyPatch) -> None:
    """A preemption between the two readings of a task's start (a CI run: 38 µs) put
    every point's wall time that far off its deadline; the pair is read again."""
    import types

    from tomato_mqtt.driver import clock

    perf = iter([10.0, 10.000038, 20.0, 20.000002])  # preempted, then a clean pair
    wall = iter([1000.0, 2000.0])
    fake = types.SimpleNamespace(perf_counter=lambda: next(perf), time=lambda: next(wall))
    monkeypatch.setattr(clock, "time", fake)
    assert clock._clock_pair() == (2000.0, 20.000002)


class Busy(Clocked):
    """Each call keeps the clock busy for 3.5 ms; records each point's deadline and how
    long the clock's thread had waited for a CPU then (tests/cpuwait.py)."""

    def do_task(self, task: TaskSpec, t_start: float, t_now: float) -> Mapping[str, Any] | None:
        self.waits.append(sample(t_start, t_now, task.sampling_interval))
        end = time.perf_counter() + 0.0035
        while time.perf_counter() < end:
            pass
        return {"v": 1.0}


class BusyDriver(ProbeDriver):
    def DeviceFactory(self, key: tuple[str, str], **kwargs: Any) -> Busy:
        return Busy(self, key, **kwargs)


def test_tasks_of_one_rate_are_spread_so_the_clock_keeps_up(comps: list[Comp]) -> None:
    """4 tasks at 20 ms whose calls take 3.5 ms each (70 % of the clock): on one phase
    the last of each group is 10.5 ms late, past half the interval, and misses every
    point (12-16 of 50 missed per task, review of the first grid); spread over the
    phases each is at most ~3 ms late.

    Counted are the misses the clock's thread did not spend waiting for a CPU
    (tests/cpuwait.py): a machine loaded far past its 2 cores (load 5: 21 and 21 missed,
    and 257 of 1,000 in the kilohertz test) makes the thread wait for one 10-20 ms at a
    time; on one phase the thread is late while busy, not waiting, and those misses
    still count (clock.MAX_PHASES = 1 on a quiet PC: 34 missed, 34 counted; pinned
    beside one busy loop, 48 and 10: failed tries, then a skip, never a pass)."""
    drv = BusyDriver()
    cs = [_new(comps, drv, str(i)) for i in range(4)]
    devs = [d for c in cs if isinstance(d := c.dev, Busy)]
    assert len(devs) == len(cs)
    seen: list[list[tuple[int, int, float]]] = []  # per try: (missed, counted, waited)
    judged: list[tuple[int, int, float]] | None = None
    # more tries only for a machine busy in bursts; the structural misses come every time
    for _attempt in range(3):
        for c, d in zip(cs, devs, strict=True):
            d.waits.clear()
            c.runner.start_task(task(0.6, 0.02))
        ends = [c.ends.wait(10) for c in cs]
        assert all(e.reason == "done" and e.npoints + e.missed == 30 for e in ends), ends
        counted = [unexplained_misses(d.waits, 30, 0.02) for d in devs]
        seen.append([(e.missed, n, round(w, 4)) for e, (n, w) in zip(ends, counted, strict=True)])
        if sum(n for _, n, _ in seen[-1]) <= 6:
            break
        # a try that failed while the clock's thread waited for a CPU for over a quarter
        # of the 0.6 s (pinned beside 3 busy loops: 0.35-0.43 s) is not judged: then
        # everything is late, spread or not
        if max(w for _, w in counted) < 0.15:
            judged = seen[-1]
    else:
        if judged is None:
            pytest.skip(f"the machine gave the clock's thread too little CPU to judge: {seen}")
        raise AssertionError(f"more than 6 misses the machine does not explain: {seen}")


def test_a_task_s_points_are_buffered_as_one_run_of_columns(comps: list[Comp]) -> None:
    """The runner keeps a task's points as columns (one PointRun), not one object and one
    dict per point (which the garbage collector walked through while the clock waited)."""
    from tomato_mqtt.driver.points import PointRun

    c = _new(comps, ClockedDriver())
    c.runner.start_task(task(0.1, 0.005))
    end = c.ends.wait(5)
    items, _ = c.runner.drain_runs()
    assert len(items) == 1 and isinstance(items[0], PointRun)
    run = items[0]
    assert len(run) == len(run.uts) == end.npoints
    assert run.task is not None and run.task.job == 1
    assert all(len(col) == end.npoints for col in run.cols.values())


def test_an_interval_too_small_for_the_clock_s_grid_still_ends(comps: list[Comp]) -> None:
    """An interval of 1e-310 s (TaskSpec only asks > 0; the scheduler's floor is a
    setting) overflows the grid's arithmetic: the task is taken as it is and ends; it
    left the component busy for good (its worker thread died)."""
    c = _new(comps, ClockedDriver())
    c.runner.start_task(task(1e-310, 1e-310))
    end = c.ends.wait(5)
    assert end.reason == "done" and end.npoints + end.missed == 1
    c.runner.start_task(task(0.05, 0.01))  # not busy any more
    assert c.ends.wait(5).reason == "done"


def test_the_clock_keeps_no_ended_task(comps: list[Comp]) -> None:
    """The clock's record of the tasks on each interval's phases forgets ended tasks
    and intervals no task uses any more (a node runs for months, with many intervals)."""
    c = _new(comps, ClockedDriver())
    for i in range(5):
        c.runner.start_task(task(0.02, 0.005 + i * 0.001))  # a new interval each time
        assert c.ends.wait(5).reason == "done"
    c.runner.start_task(task(0.02, 0.004))
    assert c.ends.wait(5).reason == "done"
    phased = shared_clock()._phased
    assert sum(len(ts) for ts in phased.values()) <= 1, phased  # the last one only


@pytest.mark.parametrize("clocked", [False, True])
def test_a_step_of_the_wall_clock_during_a_task_is_told_at_its_end(
    comps: list[Comp], monkeypatch: pytest.MonkeyPatch, clocked: bool
) -> None:
    """Fault injection: a node's clock stepped an hour in a task's last seconds, and the
    job ended c without a word (the scheduler's check of the heartbeats takes seconds,
    and the job had ended). The runner sees the wall clock move against its monotonic
    twin at the points, and the task's end says by how much and from which point on;
    a task without a step says none."""
    import types

    from tomato_mqtt.driver import clock

    shift = {"s": 0.0}
    real = time
    fake = types.SimpleNamespace(
        time=lambda: real.time() + shift["s"],
        perf_counter=real.perf_counter,
        monotonic=real.monotonic,
        sleep=real.sleep,
    )
    monkeypatch.setattr(clock, "time", fake)
    c = _new(comps, ClockedDriver() if clocked else ProbeDriver())
    c.runner.start_task(task(1.0, 0.05))
    end = c.ends.wait(10)
    assert end.clock_step == 0.0 and end.clock_step_at is None, end

    c.runner.start_task(task(1.0, 0.05))
    real.sleep(0.5)
    shift["s"] = 3600.0  # an admin's `date -s`, an NTP first sync
    end = c.ends.wait(10)
    assert abs(end.clock_step - 3600.0) < 0.5, end
    assert end.clock_step_at is not None and end.clock_step_at > end.t_start + 3600, end
