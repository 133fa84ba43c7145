"""The example_counter driver: the same surface as tomato's example counter.

Only the driver API and the runner (no MQTT). tomato's example payloads in ``config/``
are parsed and validated against the counter unchanged.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pint
import pytest
from tomato_mqtt_example_counter import Device, DriverInterface

from tomato_mqtt.config.payloads import parse_payload, read_payload_file
from tomato_mqtt.driver import (
    AttrSpec,
    ComponentRunner,
    TaskEnd,
    TaskSpec,
    TaskValidationError,
    available_drivers,
    load_driver,
    validate_task,
)

CONFIG = Path(__file__).resolve().parents[3] / "config"


@pytest.fixture
def dev() -> Device:
    device = load_driver("example_counter")().DeviceFactory(("example-addr", "1"))
    assert isinstance(device, Device)
    return device


class Rig:
    def __init__(self, device: Device) -> None:
        self.device = device
        self.ends: queue.Queue[TaskEnd] = queue.Queue()
        self.errors: list[str] = []
        self.runner = ComponentRunner(
            device, on_task_end=self.ends.put, on_error=self.errors.append
        )

    def run(self, technique: str, max_duration: float, interval: float, **params: Any) -> TaskEnd:
        self.runner.start_task(
            TaskSpec(
                technique_name=technique,
                max_duration=max_duration,
                sampling_interval=interval,
                task_params=params,
            )
        )
        return self.ends.get(timeout=max_duration + 5)


@pytest.fixture
def rig(dev: Device) -> Iterator[Rig]:
    r = Rig(dev)
    yield r
    r.runner.close()


def specs(device: Device) -> dict[str, AttrSpec]:
    return {k: a.spec() for k, a in device.attrs().items()}


# -- discovery, description ---------------------------------------------------------------
def test_found_by_its_entry_point() -> None:
    assert load_driver("example_counter") is DriverInterface
    assert "example_counter" in available_drivers()


def test_attrs_capabilities_constants(dev: Device) -> None:
    assert dev.capabilities() == {"count", "random"}
    assert specs(dev) == {
        "min": AttrSpec(type="float", rw=True),
        "max": AttrSpec(type="float", rw=True),
        "param": AttrSpec(type="quantity", units="second", rw=True, minimum=0.1),
        "choice": AttrSpec(type="str", rw=True, options=["red", "green", "blue"]),
    }
    assert dev.constants == {"example_meta": "example string"}
    assert dev.status() == {}  # no status attrs, as in tomato


def test_defaults(dev: Device) -> None:
    assert dev.get_attr("min") == 0
    assert dev.get_attr("max") == 10
    assert dev.get_attr("param") == pint.Quantity(1.0, "s")
    assert dev.get_attr("choice") == "green"


# -- set / get ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("attr", "val", "expected"),
    [
        ("min", 1.0, 1.0),
        ("min", 2, 2.0),
        ("min", "3", 3.0),
        ("max", "1e3", 1000.0),
        ("param", "1.0", pint.Quantity(1.0, "s")),  # a bare number is in the attr's units
        ("param", 0.5, pint.Quantity(0.5, "s")),
        ("param", "1.0 minute", pint.Quantity(1.0, "min")),
        ("param", "250 ms", pint.Quantity(0.25, "s")),
        ("choice", "blue", "blue"),
    ],
)
def test_set_attr_coerces_like_tomato(dev: Device, attr: str, val: object, expected: Any) -> None:
    got = dev.set_attr(attr, val)
    assert got == expected
    assert dev.get_attr(attr) == expected
    if attr == "param":
        assert str(got.units) == "second"  # stored in the canonical units


@pytest.mark.parametrize(
    ("attr", "val", "exc", "message"),
    [
        ("param", "0.05 s", TaskValidationError, "param: 0.05 s is below the minimum 0.1 s"),
        ("param", 0.01, TaskValidationError, "param: 0.01 s is below the minimum 0.1 s"),
        ("param", "1.0 meter", TaskValidationError, "param: 1.0 m has the wrong dimensionality"),
        ("param", "wrong type", TaskValidationError, "param: cannot read 'wrong type'"),
        (
            "choice",
            "orange",
            TaskValidationError,
            "choice: 'orange' is not one of the options: red, green, blue",
        ),
        ("min", None, TaskValidationError, "min: a value is required, got None"),
        ("min", "wrong", TaskValidationError, "min: expected a number, got 'wrong'"),
        ("wrong", "1.0", AttributeError, "unknown attr 'wrong' (known: choice, max, min, param)"),
    ],
)
def test_set_attr_refuses(dev: Device, attr: str, val: object, exc: type, message: str) -> None:
    with pytest.raises(exc) as info:
        dev.set_attr(attr, val)
    assert message in str(info.value)
    assert dev.get_attr("param") == pint.Quantity(1.0, "s")  # nothing changed
    assert dev.get_attr("choice") == "green"


def test_get_unknown_attr(dev: Device) -> None:
    with pytest.raises(AttributeError, match="unknown attr 'wrong'"):
        dev.get_attr("wrong")


def test_read_only_and_unknown_parameters_in_a_task(dev: Device) -> None:
    ro = {**specs(dev), "serial": AttrSpec(type="str")}  # the counter itself has none
    with pytest.raises(TaskValidationError, match="parameter 'serial' is read-only"):
        validate_task(dev.capabilities(), ro, "count", {"serial": "x"})
    with pytest.raises(TaskValidationError, match="unknown parameter 'unknown'"):
        validate_task(dev.capabilities(), specs(dev), "count", {"unknown": "bla"})
    with pytest.raises(TaskValidationError, match=r"supported: count, random"):
        validate_task(dev.capabilities(), specs(dev), "unknown", {})


# -- tomato's payloads ------------------------------------------------------------------------
VALID = sorted(p.name for p in CONFIG.glob("counter_*.yml") if "invalid" not in p.name)


@pytest.mark.parametrize("name", [*VALID, "psutil_counter_with_task_start.yml"])
def test_tomato_example_payloads_validate_unchanged(dev: Device, name: str) -> None:
    payload = parse_payload(read_payload_file(CONFIG / name))
    tasks = [t for t in payload.method if t.component_role == "counter" or "psutil" not in name]
    assert tasks
    for t in tasks:
        validate_task(dev.capabilities(), specs(dev), t.technique_name, t.task_params or {})


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("counter_invalid_1.yml", "technique 'unknown' is not supported"),
        ("counter_invalid_2.yml", "param: cannot read 'wrong type' as a quantity in second"),
        ("counter_invalid_3.yml", "param: 1 ms is below the minimum 0.1 s"),
        ("counter_invalid_4.yml", "unknown parameter 'unknown' for technique 'count'"),
    ],
)
def test_tomato_invalid_payloads_are_refused_with_a_clear_message(
    dev: Device, name: str, message: str
) -> None:
    payload = parse_payload(read_payload_file(CONFIG / name))
    (t,) = payload.method
    with pytest.raises(TaskValidationError) as info:
        validate_task(dev.capabilities(), specs(dev), t.technique_name, t.task_params or {})
    assert message in str(info.value)


# -- tasks ------------------------------------------------------------------------------------
def test_count_at_0_1_s_for_1_s(rig: Rig) -> None:
    end = rig.run("count", 1.0, 0.1)
    points, units = rig.runner.drain()
    assert (end.reason, end.message) == ("done", None)
    # a deadline a loaded machine could not meet is skipped and counted, never measured
    # late (a CI run: 9 points and 1 missed)
    assert end.npoints == len(points) and end.npoints + end.missed == round(1.0 / 0.1) == 10
    assert end.missed <= 2, end
    # seconds since the start, as tomato's counter: 0 until the 10th point at 1.0 s
    vals = [p.values["val"] for p in points]
    if end.missed == 0:
        assert vals == [0] * 9 + [1]
    else:
        assert vals == sorted(vals) and set(vals) <= {0, 1}, vals
    assert points[0].values == {"val": 0, "min": 0.0, "max": 10.0, "param": 1.0, "choice": "green"}
    assert units == {"param": "second"}
    assert all(p.task is not None and p.task.technique_name == "count" for p in points)
    assert rig.errors == []


def test_random_applies_task_params_and_stays_in_range(rig: Rig) -> None:
    end = rig.run("random", 1.0, 0.1, min=50.0, max="100", param="3.0 seconds", choice="red")
    points, _ = rig.runner.drain()
    # a deadline a loaded machine could not meet is skipped and counted, never measured late
    assert end.reason == "done" and len(points) == end.npoints and end.npoints + end.missed == 10
    assert all(50.0 <= p.values["val"] <= 100.0 for p in points)  # type: ignore[operator]
    assert {(p.values["param"], p.values["choice"]) for p in points} == {(3.0, "red")}
    assert rig.device.get_attr("min") == 50.0


def test_invalid_task_params_start_nothing(rig: Rig) -> None:
    with pytest.raises(TaskValidationError, match=r"param: 1 ms is below the minimum 0\.1 s"):
        rig.run("count", 1.0, 0.1, param="1 ms")
    assert not rig.runner.running and rig.ends.empty()
    assert rig.runner.drain() == ([], {})


def test_stop_ends_the_task_early_and_keeps_the_points(rig: Rig) -> None:
    rig.runner.start_task(TaskSpec(technique_name="count", max_duration=60, sampling_interval=0.1))
    rig.runner.stop_task("cancelled")
    end = rig.ends.get(timeout=5)
    assert (end.reason, end.message) == ("stopped", "cancelled")
    assert len(rig.runner.drain()[0]) == end.npoints < 600


# -- measure, reset, idle ---------------------------------------------------------------------
def test_measure_reports_val_and_the_attrs(rig: Rig) -> None:
    rig.device.set_attr("min", 5)
    rig.device.set_attr("max", 6)
    point = rig.runner.measure()
    assert point is not None and point.task is None
    assert 5.0 <= point.values["val"] <= 6.0  # type: ignore[operator]
    assert point.values["param"] == 1.0


def test_reset_restores_the_defaults(rig: Rig) -> None:
    rig.run("random", 0.2, 0.1, min=1, max=2, param="2 s", choice="blue")
    rig.runner.reset()
    assert [rig.device.get_attr(a) for a in ("min", "max", "param", "choice")] == [
        0.0,
        10.0,
        pint.Quantity(1.0, "s"),
        "green",
    ]


def test_no_idle_measurements_by_default(rig: Rig) -> None:
    assert DriverInterface.idle_measurement_interval is None
    assert rig.runner.drain() == ([], {})


def test_idle_measurements_when_the_driver_asks_for_them() -> None:
    class IdleCounter(DriverInterface):
        idle_measurement_interval = 0.05

    seen: queue.Queue[None] = queue.Queue()
    device = IdleCounter().DeviceFactory(("example-addr", "2"))
    runner = ComponentRunner(
        device,
        on_task_end=lambda end: None,
        on_error=lambda msg: None,
        max_buffer=3,
        on_buffer_full=lambda: seen.put(None),
    )
    try:
        seen.get(timeout=5)  # three idle points buffered
        points, units = runner.drain()
        assert len(points) >= 3 and all(p.task is None for p in points)
        assert units == {"param": "second"}
    finally:
        runner.close()


# -- the testing aids -------------------------------------------------------------------------
def test_fail_on_connect_then_success() -> None:
    driver = DriverInterface({"fail_on_connect": 1})
    with pytest.raises(RuntimeError, match="cannot connect to example counter 'a'"):
        driver.DeviceFactory(("a", "1"))
    driver.DeviceFactory(("a", "1"))


def test_fail_task_after() -> None:
    driver = DriverInterface({"fail_task_after": 2})
    r = Rig(driver.DeviceFactory(("a", "1")))
    try:
        end = r.run("count", 1.0, 0.1)
        assert (end.reason, end.npoints) == ("error", 2)
        assert end.message is not None and "simulated failure after 2 points" in end.message
    finally:
        r.runner.close()
