"""A driver that raises, at the driver-API level (no MQTT): the ``faulty`` test driver.

Whatever the driver raises (in ``__init__``, ``do_task``, ``set_attr``, ``do_measure``,
``reset``, even ``sys.exit``) becomes a :class:`TaskEnd` with ``reason="error"`` or a
``RuntimeError`` the node turns into an error reply, with a message naming the component
and the driver's exception; it never escapes from the runner's worker thread, which stays
usable. The node-level end-to-end fault tests live with the node's tests.

Needs ``tests/drivers/faulty`` installed (``scripts/dev.py install`` does it); without it
every test fails with the DriverNotFound message, on purpose: a skip would hide it in CI.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from tomato_mqtt.driver import (
    ComponentRunner,
    ModelInterface,
    TaskEnd,
    TaskSpec,
    available_drivers,
    load_driver,
)


class Rig:
    """A faulty component in a runner; task ends and errors arrive on queues."""

    def __init__(self, address: str, settings: Mapping[str, Any] | None = None) -> None:
        self.driver = load_driver("faulty")(settings)
        self.device = self.driver.DeviceFactory((address, "1"))
        self.ends: queue.Queue[TaskEnd] = queue.Queue()
        self.errors: queue.Queue[str] = queue.Queue()
        self.runner = ComponentRunner(
            self.device, on_task_end=self.ends.put, on_error=self.errors.put
        )

    # 20 ms: a runner late by half of it misses the point, so exact counts need room
    def run(self, max_duration: float, interval: float = 0.02, **params: Any) -> TaskEnd:
        self.runner.start_task(task(max_duration, interval, **params))
        return self.ends.get(timeout=max_duration + 5)


def task(max_duration: float, interval: float, **params: Any) -> TaskSpec:
    return TaskSpec(
        technique_name="sample",
        max_duration=max_duration,
        sampling_interval=interval,
        task_params=params,
        job=7,
        index=0,
    )


@pytest.fixture
def rigs() -> Iterator[list[Rig]]:
    made: list[Rig] = []
    yield made
    for r in made:
        r.runner.close()


def make(rigs: list[Rig], address: str, settings: Mapping[str, Any] | None = None) -> Rig:
    r = Rig(address, settings)
    rigs.append(r)
    return r


def test_the_faulty_driver_is_found_by_its_entry_point() -> None:
    assert "faulty" in available_drivers()
    cls = load_driver("faulty")
    assert issubclass(cls, ModelInterface) and cls.__name__ == "DriverInterface"


def test_connect_failure_by_address_is_a_runtime_error_naming_the_instrument() -> None:
    driver = load_driver("faulty")()
    with pytest.raises(RuntimeError, match="cannot connect to 'fail-connect'"):
        driver.DeviceFactory(("fail-connect", "1"))
    driver.DeviceFactory(("works", "1"))  # other components of the driver are fine


def test_connect_failure_by_settings_then_success_on_retry() -> None:
    driver = load_driver("faulty")({"fail": ["connect"], "connect_failures": 2})
    for attempt in (1, 2):
        with pytest.raises(RuntimeError, match=f"attempt {attempt}"):
            driver.DeviceFactory(("any", "1"))
    dev = driver.DeviceFactory(("any", "1"))  # the node's third try connects
    assert dev.constants["faults"] == "connect"


def test_unknown_fault_names_are_refused() -> None:
    driver = load_driver("faulty")({"fail": "task,explode"})
    with pytest.raises(ValueError, match=r"unknown fault.*explode"):
        driver.DeviceFactory(("a", "1"))


def test_do_task_error_ends_the_task_with_an_error_naming_component_and_exception(
    rigs: list[Rig],
) -> None:
    r = make(rigs, "fail-task")
    end = r.run(1.0)
    assert end.reason == "error"
    assert end.message is not None
    assert "component (fail-task,1)" in end.message
    assert "RuntimeError: faulty: do_task failed at point 3" in end.message
    # the points before the failure are kept (a deadline a loaded machine missed is
    # counted as missed, not taken: a CI run took 1 and missed 1) ...
    assert end.npoints + end.missed == 2 and end.npoints >= 1, end
    points, _ = r.runner.drain()
    ks = [p.values["k"] for p in points]
    assert len(ks) == end.npoints and set(ks) <= {1, 2}, ks  # ... and buffered for the node
    assert r.errors.get(timeout=1) == end.message
    assert not r.runner.running
    # the runner survives: a task that ends before the faulty point is done
    again = r.run(0.1, 0.05)
    assert again.reason == "done" and again.npoints + again.missed == 2, again


def test_sys_exit_in_do_task_is_an_error_not_a_dead_worker(rigs: list[Rig]) -> None:
    r = make(rigs, "fail-exit", {"fail_at_point": 1})
    end = r.run(1.0)
    assert end.reason == "error" and end.npoints == 0
    assert end.message is not None and "SystemExit: faulty: do_task exits" in end.message
    assert not r.runner.running
    assert r.runner.measure() is not None  # the device is still reachable


def test_set_attr_error_refuses_the_task_and_starts_nothing(rigs: list[Rig]) -> None:
    r = make(rigs, "a", {"fail": "set"})
    with pytest.raises(RuntimeError, match="cannot set 'level'"):
        r.device.set_attr("level", 5)  # the driver's own exception, at the driver API
    with pytest.raises(
        RuntimeError,
        match=r"driver failed to set 'level' to 5.0 on component \(a,1\): RuntimeError: faulty",
    ):
        r.runner.start_task(task(1.0, 0.02, level=5))
    assert not r.runner.running and r.ends.empty()
    assert r.run(0.04).reason == "done"  # without parameters the task runs


def test_measure_error_is_a_runtime_error_naming_component_and_exception(
    rigs: list[Rig],
) -> None:
    r = make(rigs, "fail-measure")
    with pytest.raises(
        RuntimeError,
        match=r"measurement on component \(fail-measure,1\) failed: RuntimeError: faulty",
    ):
        r.runner.measure()
    assert r.runner.drain() == ([], {})
    assert r.run(0.04).reason == "done"  # tasks use do_task, which works


def test_idle_measurement_errors_go_to_on_error_and_idle_goes_on(
    rigs: list[Rig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first failure of a spell is said at once, the next ones counted once per
    IDLE_FAIL_SAID (a WARNING with its traceback every 2 s while it failed: a driver
    author's tour)."""
    import queue

    from tomato_mqtt.driver import runner as runner_mod

    monkeypatch.setattr(runner_mod, "IDLE_FAIL_SAID", 0.5)
    r = make(rigs, "fail-measure", {"idle_measurement_interval": 0.02})
    first = r.errors.get(timeout=5)
    assert first.startswith("idle measurement on component (fail-measure,1) failed:")
    assert "RuntimeError: faulty: do_measure failed" in first
    with pytest.raises(queue.Empty):  # not each of the ~20 failures of the next 0.4 s
        r.errors.get(timeout=0.4)
    again = r.errors.get(timeout=5)  # the worker is alive and tries again: counted
    assert again.startswith("idle measurement on component (fail-measure,1) failed (")
    assert " times since): RuntimeError: faulty" in again, again
    assert r.run(0.04).reason == "done"


def test_reset_error_is_a_runtime_error_naming_component_and_exception(
    rigs: list[Rig],
) -> None:
    r = make(rigs, "fail-reset")
    with pytest.raises(
        RuntimeError, match=r"reset of component \(fail-reset,1\) failed: RuntimeError: faulty"
    ):
        r.runner.reset()
    assert r.run(0.04).reason == "done"


def test_status_error_comes_from_the_driver_and_does_not_touch_tasks(rigs: list[Rig]) -> None:
    r = make(rigs, "fail-status")
    with pytest.raises(RuntimeError, match="cannot read 'serial'"):
        r.device.status()  # the node catches this and shows it in the component status
    assert r.run(0.04).reason == "done"


def test_several_faults_from_address_and_settings_combine(rigs: list[Rig]) -> None:
    r = make(rigs, "fail-set", {"fail": ["task"], "fail_at_point": 2})
    with pytest.raises(RuntimeError, match=r"driver failed to set .mode."):
        r.runner.start_task(task(1.0, 0.02, mode="b"))
    end = r.run(1.0)
    assert (end.reason, end.npoints) == ("error", 1)
