"""ComponentRunner: timing and point counts, stop, driver failures, the buffer.

The devices here are small real drivers written for the test (no mocks): they count
their calls under a condition variable so tests wait for events, never for fixed times.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pint
import pytest

from tests.cpuwait import late_wakes, run_delay, sample, unexplained_misses
from tomato_mqtt.driver import (
    Attr,
    ComponentRunner,
    ModelDevice,
    ModelInterface,
    Point,
    TaskEnd,
    TaskSpec,
    TaskValidationError,
)


class Probe(ModelDevice):
    """A scriptable device: records what it is asked, fails when told to."""

    def __init__(self, driver: ModelInterface, key: tuple[str, str], **kwargs: Any) -> None:
        super().__init__(driver, key, **kwargs)
        self.level = 1.0
        self.mode = "a"
        self.k = 0
        self.cv = threading.Condition()
        self.offsets: list[float] = []  # t_now - t_start of every do_task call
        self.fail_at: int | None = None  # do_task raises at this point of a task
        self.fail_set: Exception | None = None  # do_set_attr raises this
        self.late_at: int | None = None  # do_task is slow at this point
        self.bad_value = False
        self.quantities = False
        self.measures = 0
        self.resets = 0
        self.closed = False

    def attrs(self) -> dict[str, Attr]:
        return {
            "level": Attr(type=float, rw=True, minimum=0, maximum=100),
            "mode": Attr(type=str, rw=True, options=["a", "b"]),
            "serial": Attr(type=str, status=True),
        }

    def capabilities(self) -> set[str]:
        return {"sample"}

    @property
    def serial(self) -> str:
        return "SN-1"

    def do_set_attr(self, attr: str, val: Any) -> None:
        if self.fail_set is not None:
            raise self.fail_set
        setattr(self, attr, val)

    def do_task(self, task: TaskSpec, t_start: float, t_now: float) -> Mapping[str, Any] | None:
        with self.cv:
            self.k += 1
            k = self.k
            self.offsets.append(t_now - t_start)
            self.cv.notify_all()
        if self.fail_at == k:
            raise OSError("instrument went away")
        if self.late_at == k:
            time.sleep(0.05)  # a driver that blocks: the runner must catch up after it
        if self.bad_value:
            return {"v": object()}
        if self.quantities:
            q = pint.Quantity(k, "mA") if k % 2 else pint.Quantity(k / 1000, "A")
            return {"v": k, "current": q}
        return {"v": k, "level": self.level, "mode": self.mode}

    def do_measure(self) -> Mapping[str, Any]:
        with self.cv:
            self.measures += 1
            self.cv.notify_all()
        return {"v": -1.0, "level": self.level}

    def reset(self) -> None:
        self.resets += 1

    def close(self) -> None:
        self.closed = True

    def wait_points(self, n: int, timeout: float = 5.0) -> None:
        with self.cv:
            assert self.cv.wait_for(lambda: self.k >= n, timeout), f"only {self.k} of {n} points"

    def wait_measures(self, n: int, timeout: float = 5.0) -> None:
        with self.cv:
            assert self.cv.wait_for(lambda: self.measures >= n, timeout)


class ProbeDriver(ModelInterface):
    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        self.refuse_connects = int(self.settings.get("refuse_connects", 0))

    def DeviceFactory(self, key: tuple[str, str], **kwargs: Any) -> Probe:
        if self.refuse_connects > 0:
            self.refuse_connects -= 1
            raise RuntimeError(f"no instrument at {key[0]}")
        return Probe(self, key, **kwargs)


class IdleDriver(ProbeDriver):
    idle_measurement_interval = 0.02


class Ends:
    """Collects what the runner reports; lets a test wait for the next task end."""

    def __init__(self) -> None:
        self.items: list[TaskEnd] = []
        self.errors: list[str] = []
        self.running_at_end: list[bool] = []
        self.runner: ComponentRunner | None = None
        self._event = threading.Event()

    def on_end(self, end: TaskEnd) -> None:
        assert self.runner is not None
        self.running_at_end.append(self.runner.running)
        self.items.append(end)
        self._event.set()

    def wait(self, timeout: float = 5.0) -> TaskEnd:
        assert self._event.wait(timeout), "the task did not end in time"
        self._event.clear()
        return self.items[-1]


class Rig:
    def __init__(self, driver: ModelInterface | None = None, **kwargs: Any) -> None:
        self.ends = Ends()
        self.dev = (driver or ProbeDriver()).DeviceFactory(("COM3", "1"))
        assert isinstance(self.dev, Probe)
        self.runner = ComponentRunner(
            self.dev, on_task_end=self.ends.on_end, on_error=self.ends.errors.append, **kwargs
        )
        self.ends.runner = self.runner

    def run(self, max_duration: float, interval: float, **params: Any) -> TaskEnd:
        self.runner.start_task(task(max_duration, interval, **params))
        return self.ends.wait(max_duration + 5)


def task(max_duration: float, interval: float, **params: Any) -> TaskSpec:
    return TaskSpec(
        technique_name="sample",
        max_duration=max_duration,
        sampling_interval=interval,
        task_params=params,
        job=1,
        index=0,
    )


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.runner.close()


@pytest.mark.parametrize(("duration", "interval"), [(1.0, 0.1), (0.5, 0.05)])
def test_point_count_and_deadlines(rig: Rig, duration: float, interval: float) -> None:
    end = rig.run(duration, interval, level="2.5")
    points, units = rig.runner.drain()
    assert end.reason == "done" and end.message is None
    assert end.npoints == len(points) == 10
    assert [p.values["v"] for p in points] == list(range(1, 11))
    assert all(p.values["level"] == 2.5 for p in points)  # task_params were applied
    assert all(p.task is end.task for p in points)
    assert units == {}
    # t_now is the deadline: t_start + k * interval, no drift
    assert rig.dev.offsets == pytest.approx([k * interval for k in range(1, 11)], abs=1e-6)
    for k, p in enumerate(points, start=1):
        assert p.uts >= end.t_start + k * interval - 0.005
    assert end.t_end - end.t_start == pytest.approx(duration, abs=0.1)
    assert rig.ends.running_at_end == [False]  # on_task_end sees an idle runner


@pytest.mark.parametrize("clocked", [False, True], ids=["own-thread", "shared-clock"])
@pytest.mark.parametrize(
    ("duration", "interval", "n"), [(1.0, 0.6, 1), (0.6, 0.25, 2), (0.3, 0.1, 3), (0.2, 0.5, 0)]
)
def test_a_task_takes_the_points_within_its_max_duration_and_lasts_it(
    duration: float, interval: float, n: int, clocked: bool
) -> None:
    """Found side by side with tomato 2.2: a task whose interval does not divide its
    duration took ``round(duration / interval)`` points and ran past its end (1 s at
    0.6 s: 2 points, 1.2 s; 3 s at 2 s: 2 points, 4 s), delaying every later task of
    its role. tomato's driver loop takes a point at each interval within the duration
    (0.3 / 0.1, 2.9999999999999996 in floats, is still 3) and the task lasts its duration."""
    from tests.test_driver_clock import ClockedDriver

    r = Rig(ClockedDriver() if clocked else None)
    try:
        end = r.run(duration, interval)
        points, _ = r.runner.drain()
    finally:
        r.runner.close()
    assert end.reason == "done" and end.npoints == len(points) == n, end
    assert task(duration, interval).npoints == n
    assert end.t_end - end.t_start == pytest.approx(duration, abs=0.08), end


class Waited(Probe):
    """Records each point's deadline and how long the calling thread had waited for a
    CPU then (tests/cpuwait.py)."""

    def __init__(self, driver: ModelInterface, key: tuple[str, str], **kwargs: Any) -> None:
        super().__init__(driver, key, **kwargs)
        self.calls: list[tuple[int, float | None]] = []

    def do_task(self, task: TaskSpec, t_start: float, t_now: float) -> Mapping[str, Any] | None:
        self.calls.append(sample(t_start, t_now, task.sampling_interval))
        return super().do_task(task, t_start, t_now)


class WaitedDriver(ProbeDriver):
    def DeviceFactory(self, key: tuple[str, str], **kwargs: Any) -> Waited:
        return Waited(self, key, **kwargs)


def test_one_kilohertz_delivers_every_point() -> None:
    """Counted are the misses its thread did not spend waiting for a CPU: a 2-core box
    loaded far past its cores (load 5) stalled it enough to miss 257 of 1,000."""
    rig = Rig(WaitedDriver())
    try:
        main0 = run_delay()
        t0 = time.perf_counter()
        end = rig.run(1.0, 0.001)
        elapsed = time.perf_counter() - t0
        main1 = run_delay()
        points, _ = rig.runner.drain()
    finally:
        rig.runner.close()
    assert end.reason == "done"
    assert len(points) == end.npoints
    assert isinstance(rig.dev, Waited)
    missed, waited = unexplained_misses(rig.dev.calls, 1000, 0.001)
    # a busy 2-core CI machine may stall the thread for a few ms: those points are
    # counted; and a host whose timer wakes late (a VM's stolen time, which no run queue
    # shows) misses some with a bare sleep loop too: measured twice right after, its share
    # is allowed (twice over: it comes in bursts)
    host = max(late_wakes(1000, 0.001), late_wakes(1000, 0.001))
    assert end.npoints + end.missed == 1000, end
    assert missed < 200 + 2 * host, (end.missed, missed, waited, host)
    # and the test's own wake-up at the end waits for a CPU as well
    waited += main1 - main0 if main0 is not None and main1 is not None else 0.0
    assert elapsed - waited < 1.5, (elapsed, waited)


def test_a_late_driver_is_not_burst_called_missed_deadlines_are_counted(rig: Rig) -> None:
    rig.dev.late_at = 3  # blocks for 5 sampling intervals
    end = rig.run(0.2, 0.01)
    points, _ = rig.runner.drain()
    assert end.npoints == len(points)
    # every deadline is either a point or counted as missed, never both
    assert end.npoints + end.missed == 20
    # the stall costs 4-5; a loaded 2-core PC wakes a point late now and then (6 seen)
    assert 3 <= end.missed <= 7
    # no burst: a catch-up would take the 4-5 points due during the stall back to back;
    # a point late by less than an interval leaves at most one short step (jitter)
    steps = [b.uts - a.uts for a, b in itertools.pairwise(points)]
    assert sum(s < 0.005 for s in steps) <= 2, steps
    # t_now handed to the driver is still the deadline of the point taken
    assert rig.dev.offsets[-1] == pytest.approx(0.2, abs=1e-6)


def test_lateness_within_one_interval_is_caught_up_without_skipping() -> None:
    """Counted are the skips its thread did not spend waiting for a CPU (CI once missed
    one deadline of ten here, at 100 ms, on a loaded 2-core box)."""
    rig = Rig(WaitedDriver())
    try:
        assert isinstance(rig.dev, Waited)
        rig.dev.late_at = 3  # 50 ms late, within a 100 ms interval
        end = rig.run(1.0, 0.1)
        points, _ = rig.runner.drain()
    finally:
        rig.runner.close()
    assert end.reason == "done" and end.npoints == len(points)
    assert end.npoints + end.missed == 10, end
    missed, waited = unexplained_misses(rig.dev.calls, 10, 0.1)
    assert missed == 0, (end, rig.dev.calls, waited)
    assert rig.dev.offsets[2] == pytest.approx(0.3, abs=1e-6)  # the late point was taken


def test_zero_points_task_ends_done(rig: Rig) -> None:
    end = rig.run(0.0, 1.0)
    assert (end.reason, end.npoints) == ("done", 0)
    assert rig.runner.drain() == ([], {})


def test_stop_is_prompt_and_keeps_points(rig: Rig) -> None:
    rig.runner.start_task(task(30.0, 0.1))
    assert rig.runner.running
    rig.dev.wait_points(3)
    t0 = time.perf_counter()
    rig.runner.stop_task("cancelled by user")
    rig.runner.stop_task("again")  # idempotent: the first reason stays
    end = rig.ends.wait(1.0)
    assert time.perf_counter() - t0 < 0.2
    assert (end.reason, end.message) == ("stopped", "cancelled by user")
    points, _ = rig.runner.drain()
    assert len(points) == end.npoints >= 3
    assert not rig.runner.running
    rig.runner.stop_task()  # no task: nothing happens
    assert len(rig.ends.items) == 1


def test_driver_error_in_do_task_ends_the_task_and_the_runner_survives(rig: Rig) -> None:
    rig.dev.fail_at = 3
    end = rig.run(1.0, 0.02)
    assert end.reason == "error"
    assert end.message is not None
    # the failing call is the driver's 3rd: at deadline 3, or later by the deadlines a
    # busy machine made the clock miss (counted in ``missed``)
    at = end.npoints + end.missed + 1
    assert "OSError: instrument went away" in end.message and f"point {at}" in end.message
    assert rig.ends.errors == [end.message]
    points, _ = rig.runner.drain()
    assert len(points) == end.npoints == 2  # the points before the failure are kept
    rig.dev.fail_at = None
    rig.dev.k = 0
    again = rig.run(0.25, 0.05)
    assert (again.reason, again.npoints) == ("done", 5)


def test_bad_point_values_are_a_task_error(rig: Rig) -> None:
    rig.dev.bad_value = True
    end = rig.run(0.1, 0.02)
    assert end.reason == "error"
    assert end.message is not None and "variable 'v'" in end.message


def test_driver_error_in_set_attr_refuses_the_task(rig: Rig) -> None:
    rig.dev.fail_set = OSError("serial port closed")
    with pytest.raises(RuntimeError, match="driver failed to set 'level'.*serial port closed"):
        rig.runner.start_task(task(0.1, 0.02, level=5))
    assert not rig.runner.running
    assert rig.ends.items == []
    rig.dev.fail_set = ValueError("5 is unlucky on this model")
    with pytest.raises(TaskValidationError, match="level: 5 is unlucky"):
        rig.runner.start_task(task(0.1, 0.02, level=5))
    assert not rig.runner.running
    rig.dev.fail_set = None
    end = rig.run(0.1, 0.02, level=5)
    assert end.reason == "done"
    assert rig.runner.drain()[0][-1].values["level"] == 5.0


def test_invalid_task_starts_nothing(rig: Rig) -> None:
    bad = [
        TaskSpec(technique_name="bogus", max_duration=1, sampling_interval=0.1),
        task(1, 0.1, level=1000),
        task(1, 0.1, mode="c"),
        task(1, 0.1, serial="x"),
        task(1, 0.1, colour="red"),
    ]
    for t in bad:
        with pytest.raises(TaskValidationError):
            rig.runner.start_task(t)
        assert not rig.runner.running
    assert rig.dev.k == 0 and rig.ends.items == []
    assert rig.dev.level == 1.0  # nothing was applied


def test_busy_runner_refuses_another_task(rig: Rig) -> None:
    rig.runner.start_task(task(30.0, 0.1))
    with pytest.raises(RuntimeError, match="busy with task 'sample' \\(job 1, task 0\\)"):
        rig.runner.start_task(task(1.0, 0.1))
    assert rig.runner.current_task is not None
    rig.runner.stop_task()
    rig.ends.wait()
    assert rig.runner.current_task is None


def test_measure_and_reset_are_refused_while_a_task_runs(rig: Rig) -> None:
    rig.runner.start_task(task(30.0, 0.1))
    with pytest.raises(RuntimeError, match="cannot measure: task 'sample' .* is running"):
        rig.runner.measure()
    with pytest.raises(RuntimeError, match="cannot reset: task 'sample' .* is running"):
        rig.runner.reset()
    assert rig.dev.measures == 0 and rig.dev.resets == 0
    rig.runner.stop_task()
    rig.ends.wait()
    rig.runner.drain()
    point = rig.runner.measure()
    assert isinstance(point, Point) and point.values == {"v": -1.0, "level": 1.0}
    assert point.task is None
    assert rig.runner.drain()[0] == [point]  # also buffered, to be published
    rig.runner.reset()
    assert rig.dev.resets == 1


def test_reset_right_after_stop_waits_for_the_task_to_end(rig: Rig) -> None:
    rig.runner.start_task(task(30.0, 0.1))
    rig.dev.wait_points(1)
    rig.runner.stop_task("reset")
    rig.runner.reset()  # the node's "reset --force": no race with the stopping task
    assert rig.dev.resets == 1
    assert rig.ends.wait().reason == "stopped"


def test_drain_is_thread_safe(rig: Rig) -> None:
    got: list[Point] = []
    done = threading.Event()

    def drainer() -> None:
        while not done.wait(0.001):
            got.extend(rig.runner.drain()[0])

    th = threading.Thread(target=drainer)
    th.start()
    try:
        end = rig.run(0.5, 0.001)
    finally:
        done.set()
        th.join()
    got.extend(rig.runner.drain()[0])
    assert end.npoints + end.missed == 500
    assert len(got) == end.npoints
    assert [p.values["v"] for p in got] == list(range(1, end.npoints + 1))  # none lost or twice


def test_quantities_become_magnitudes_in_the_first_units_seen(rig: Rig) -> None:
    rig.dev.quantities = True
    pint.Quantity(1, "mA").m_as("A")  # pint's first conversion is slow: not this test's point
    end = rig.run(0.5, 0.05)
    assert end.missed == 0
    points, units = rig.runner.drain()
    assert units == {"current": "milliampere"}
    assert [p.values["current"] for p in points] == pytest.approx(list(range(1, 11)))


def test_buffer_full_is_signalled_once_per_fill() -> None:
    fulls: list[int] = []
    r = Rig(max_buffer=5, on_buffer_full=lambda: fulls.append(1))
    try:
        r.run(0.5, 0.05)
        assert len(r.runner.drain()[0]) == 10  # nothing dropped
        assert fulls == [1]
    finally:
        r.runner.close()


def test_idle_measurements_only_between_tasks() -> None:
    r = Rig(IdleDriver())
    try:
        r.dev.wait_measures(3)
        end = r.run(0.5, 0.05)
        r.dev.wait_measures(r.dev.measures + 2)  # idle measurements resume afterwards
        points, _ = r.runner.drain()
        idle = [p for p in points if p.task is None]
        in_task = [p for p in points if p.task is not None]
        assert len(in_task) == end.npoints == 10
        assert len(idle) >= 5
        assert all(p.values["v"] == -1.0 for p in idle)
        assert not any(end.t_start <= p.uts <= end.t_end for p in idle)
    finally:
        r.runner.close()


def test_connect_failure_then_success() -> None:
    driver = ProbeDriver({"refuse_connects": 1})
    with pytest.raises(RuntimeError, match="no instrument at COM3"):
        Rig(driver)
    r = Rig(driver)  # the node retries later
    try:
        assert r.run(0.1, 0.05).npoints == 2
    finally:
        r.runner.close()


def test_close_stops_the_task_and_closes_the_device(rig: Rig) -> None:
    rig.runner.start_task(task(30.0, 0.1))
    rig.dev.wait_points(1)
    rig.runner.close()
    end = rig.ends.wait(1.0)
    assert (end.reason, end.message) == ("stopped", "component closed")
    assert rig.dev.closed and rig.runner.closed
    with pytest.raises(RuntimeError, match="closed"):
        rig.runner.start_task(task(1.0, 0.1))
    with pytest.raises(RuntimeError, match="closed"):
        rig.runner.measure()
    rig.runner.close()  # idempotent


def test_status_reads_the_status_attrs(rig: Rig) -> None:
    assert rig.dev.status() == {"serial": "SN-1"}
    with pytest.raises(AttributeError, match="read-only"):
        rig.dev.set_attr("serial", "x")
    with pytest.raises(AttributeError, match="unknown attr 'colour'"):
        rig.dev.set_attr("colour", "red")
    assert rig.dev.set_attr("level", "7") == 7.0 and rig.dev.get_attr("level") == 7.0


def test_the_idle_interval_of_a_native_driver_comes_from_its_settings_too() -> None:
    """`[drivers.x] idle_measurement_interval = 1` was ignored by native drivers (only
    tomato's honoured it, and drivers.md says it overrides the class attribute: a
    newcomer's tour). The node applies it after making the driver, so it overrides what
    the driver's own __init__ set too (a review); 0 turns it off; what is no number is
    said so, before the driver is made."""
    import asyncio

    from tomato_mqtt.driver.discovery import DriverNotFound
    from tomato_mqtt.services.node.drivers import NodeDrivers

    def idle(settings: dict[str, Any]) -> float | None:
        drivers = NodeDrivers({"faulty": settings}, None)
        drv = asyncio.run(drivers.get("faulty"))
        return drv.idle_measurement_interval

    assert idle({}) is None
    assert idle({"idle_measurement_interval": 1}) == 1.0
    assert idle({"idle_measurement_interval": 0}) is None
    for bad in ("soon", True, float("inf")):
        with pytest.raises(DriverNotFound, match=r"\[drivers.faulty\] idle_measurement_interval"):
            idle({"idle_measurement_interval": bad})


def test_a_device_call_behind_a_hung_one_says_so_within_its_wait(rig: Rig) -> None:
    """A driver author's tour: `passata get` while a do_task hung waited for the driver
    for ever, and the CLI said "no node hosting … answered … is it running?" of a node
    that was online. A call with a ``wait`` says the driver is busy once it is over."""
    import threading
    import time

    from tomato_mqtt.driver.tasking import DriverBusy

    held, release = threading.Event(), threading.Event()

    def hung() -> None:  # a do_task that does not return
        with rig.runner._dev_lock:
            held.set()
            release.wait(10)

    t = threading.Thread(target=hung)
    t.start()
    try:
        assert held.wait(5)
        t0 = time.monotonic()
        with pytest.raises(DriverBusy, match=r"the driver is in another call \(a reset, an attr"):
            rig.runner.device_call(rig.dev.get_attr, "level", wait=0.3)
        assert 0.25 < time.monotonic() - t0 < 2
    finally:
        release.set()
        t.join(5)
    assert rig.runner.device_call(lambda: "free", wait=0.3) == "free"  # it returned
    # behind another device call that hangs (a set_attr), that call is named, not a task
    held.clear()
    release.clear()

    def hung_set(attr: str, val: object) -> None:
        held.set()
        release.wait(10)

    t = threading.Thread(target=rig.runner.device_call, args=(hung_set, "level", 1))
    t.start()
    try:
        assert held.wait(5)
        with pytest.raises(DriverBusy, match="the driver is in a call of hung_set for over"):
            rig.runner.device_call(rig.dev.get_attr, "level", wait=0.3)
    finally:
        release.set()
        t.join(5)


def test_driver_wide_constants_set_on_the_class_reach_every_device() -> None:
    """A driver author's tour: ``constants = {"vendor": "X"}`` on the driver class (as
    drivers.md lists the member) was replaced by {} in ``ModelInterface.__init__``, and
    the devices had none."""

    class WithConstants(ProbeDriver):
        constants = {"vendor": "X"}

    drv = WithConstants()
    dev = drv.DeviceFactory(("COM3", "1"))
    assert dev.constants.get("vendor") == "X", dev.constants
    drv.constants["vendor"] = "Y"  # an instance's own copy: the class's stays
    assert WithConstants.constants == {"vendor": "X"}


def test_a_close_with_a_wait_leaves_a_device_a_hung_call_holds(rig: Rig, caplog: Any) -> None:
    """A driver author's tour: a node asked to restart waited for good to close a device
    a hung call held (offline, never started again). ``close(wait)`` gives up after the
    wait, saying so, the device left to the process's exit; ``close()`` still waits."""
    import logging
    import threading
    import time

    held, release = threading.Event(), threading.Event()
    closed: list[bool] = []
    rig.dev.close = lambda: closed.append(True)  # type: ignore[method-assign]

    def hung_get(attr: str) -> None:
        held.set()
        release.wait(10)

    t = threading.Thread(target=rig.runner.device_call, args=(hung_get, "level"))
    t.start()
    try:
        assert held.wait(5)
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="tomato_mqtt.driver.tasking"):
            rig.runner.close(0.3)
        assert 0.25 < time.monotonic() - t0 < 3 and closed == []
        assert "a driver call has not returned (a hung instrument?)" in caplog.text
    finally:
        release.set()
        t.join(5)
    other = Rig()
    other.dev.close = lambda: closed.append(True)  # type: ignore[method-assign]
    other.runner.close()  # nothing holds it: closed, as before
    assert closed == [True]
