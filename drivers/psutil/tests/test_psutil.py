"""The psutil driver: this PC's CPU and memory as a component, with units.

Only the driver API and the runner (no MQTT).
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pint
import psutil
import pytest
from tomato_mqtt_psutil import CpuUsage, Device, DriverInterface

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
MEM = {"mem_total", "mem_avail", "mem_used", "mem_usage"}
CPU = {"cpu_count", "cpu_freq", "cpu_usage"}


@pytest.fixture
def dev() -> Device:
    device = load_driver("psutil")().DeviceFactory(("psutil-addr", "10"))
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


def test_found_by_its_entry_point() -> None:
    assert load_driver("psutil") is DriverInterface
    assert "psutil" in available_drivers()


def test_attrs_capabilities_constants(dev: Device) -> None:
    assert dev.capabilities() == {"all_info", "cpu_info", "mem_info"}
    s = specs(dev)
    assert set(s) == MEM | CPU
    assert all(not a.rw and a.status for a in s.values())
    assert {k: a.units for k, a in s.items()} == {
        "mem_total": "bytes",
        "mem_avail": "bytes",
        "mem_used": "bytes",
        "mem_usage": "percent",
        "cpu_count": None,
        "cpu_freq": "MHz",
        "cpu_usage": "percent",
    }
    assert dev.constants == {"cpu_count": psutil.cpu_count()}


def test_status_and_get_attr_carry_units(dev: Device) -> None:
    st = dev.status()
    assert set(st) == MEM | CPU
    assert st["mem_total"].units == pint.Unit("byte")
    assert 0 < st["mem_avail"].m <= st["mem_total"].m
    assert 0 <= st["mem_usage"].m_as("percent") <= 100
    assert 0 <= st["cpu_usage"].m_as("percent") <= 100
    assert st["cpu_count"] == psutil.cpu_count()
    assert st["cpu_freq"] is None or st["cpu_freq"].units == pint.Unit("MHz")
    assert dev.get_attr("mem_total") == st["mem_total"]


def test_every_attr_is_read_only(dev: Device) -> None:
    for name in MEM | CPU:
        with pytest.raises(AttributeError, match=f"attr '{name}' is read-only"):
            dev.set_attr(name, 1)
    with pytest.raises(AttributeError, match="unknown attr 'wrong'"):
        dev.set_attr("wrong", 1)
    with pytest.raises(AttributeError, match="unknown attr 'wrong'"):
        dev.get_attr("wrong")
    with pytest.raises(TaskValidationError, match="parameter 'cpu_usage' is read-only"):
        validate_task(dev.capabilities(), specs(dev), "all_info", {"cpu_usage": 5})


def test_a_status_read_does_not_spoil_the_next_cpu_reading() -> None:
    cpu = CpuUsage()
    cpu.MIN_WINDOW = 3600.0  # every read below is "too soon", however slow this machine
    first = cpu.read()  # the average since boot
    assert 0 < first <= 100
    assert cpu.read() == first  # again at once: no 0 % from an empty window
    other = Device(DriverInterface(), ("psutil-addr", "11"))
    other.status()  # another component's reading does not move this one's window
    assert cpu.read() == first


@pytest.mark.parametrize(
    ("technique", "names"), [("all_info", MEM | CPU), ("mem_info", MEM), ("cpu_info", CPU)]
)
def test_task_at_0_1_s_for_1_s(rig: Rig, technique: str, names: set[str]) -> None:
    end = rig.run(technique, 1.0, 0.1)
    points, units = rig.runner.drain()
    assert (end.reason, end.message) == ("done", None)
    assert end.npoints == len(points) == round(1.0 / 0.1)
    assert all(set(p.values) == names for p in points)
    expected = {"mem_total": "bytes", "mem_usage": "percent", "cpu_usage": "percent"}
    assert {k: v for k, v in expected.items() if k in names}.items() <= units.items()
    assert rig.errors == []


def test_unknown_technique_is_refused(rig: Rig) -> None:
    with pytest.raises(TaskValidationError, match="technique 'count' is not supported"):
        rig.run("count", 1.0, 0.1)
    assert not rig.runner.running


def test_tomato_example_payloads_validate_unchanged(dev: Device) -> None:
    for name in ("psutil_counter_with_task_start.yml", "psutil_counter_with_task_stop.yml"):
        payload = parse_payload(read_payload_file(CONFIG / name))
        tasks = [t for t in payload.method if t.component_role == "psutil"]
        assert tasks
        for t in tasks:
            validate_task(dev.capabilities(), specs(dev), t.technique_name, t.task_params or {})


def test_measure_and_reset(rig: Rig) -> None:
    point = rig.runner.measure()
    assert point is not None and set(point.values) == MEM | CPU and point.task is None
    rig.runner.reset()  # nothing to reset: a no-op that must not fail


def test_idle_measurements_from_settings() -> None:
    driver = DriverInterface({"idle_measurement_interval": 0.05})
    assert driver.idle_measurement_interval == 0.05
    full: queue.Queue[None] = queue.Queue()
    runner = ComponentRunner(
        driver.DeviceFactory(("psutil-addr", "10")),
        on_task_end=lambda end: None,
        on_error=lambda msg: None,
        max_buffer=3,
        on_buffer_full=lambda: full.put(None),
    )
    try:
        full.get(timeout=5)
        points, units = runner.drain()
        assert len(points) >= 3 and all(p.task is None for p in points)
        assert units["mem_total"] == "bytes"  # the driver's own spelling, as tomato-psutil
    finally:
        runner.close()
    assert DriverInterface().idle_measurement_interval is None
    assert DriverInterface({"idle_measurement_interval": 0}).idle_measurement_interval is None


def test_a_bad_idle_interval_setting_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\[drivers.psutil\] idle_measurement_interval"):
        DriverInterface({"idle_measurement_interval": "often"})
