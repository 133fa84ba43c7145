"""Calls into a device from the node's threads (attribute reads and writes, status) are
made one at a time with the runner's own calls, as docs/drivers.md promises driver
authors ("a driver needs no locking of its own"). Before, ``passata get`` during a task
called the driver from a second thread while ``do_task`` ran.

A real small driver (tests/test_driver_runner.py's Probe) that notes any call made
while another is under way; no mocks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from tests.test_driver_runner import Ends, Probe, ProbeDriver, task
from tomato_mqtt.driver import ComponentRunner, ModelInterface, TaskSpec


class Busy(Probe):
    """Each do_task takes 10 ms; a get_attr or status() during one is an overlap."""

    def __init__(self, driver: ModelInterface, key: tuple[str, str], **kwargs: Any) -> None:
        super().__init__(driver, key, **kwargs)
        self.inside = False
        self.overlaps = 0
        self.reads = 0

    def do_task(self, task: TaskSpec, t_start: float, t_now: float) -> Mapping[str, Any] | None:
        self.inside = True
        try:
            time.sleep(0.01)
            return super().do_task(task, t_start, t_now)
        finally:
            self.inside = False

    def get_attr(self, attr: str) -> Any:
        self.reads += 1
        if self.inside:
            self.overlaps += 1
        return super().get_attr(attr)


class BusyDriver(ProbeDriver):
    def DeviceFactory(self, key: tuple[str, str], **kwargs: Any) -> Busy:
        return Busy(self, key, **kwargs)


@pytest.fixture
def rig() -> Iterator[tuple[Busy, ComponentRunner, Ends]]:
    ends = Ends()
    dev = BusyDriver().DeviceFactory(("COM3", "1"))
    runner = ComponentRunner(dev, on_task_end=ends.on_end, on_error=ends.errors.append)
    ends.runner = runner
    yield dev, runner, ends
    runner.close()


def test_attr_reads_during_a_task_wait_for_the_drivers_call(
    rig: tuple[Busy, ComponentRunner, Ends],
) -> None:
    dev, runner, ends = rig
    runner.start_task(task(0.5, 0.012))  # the driver is inside do_task most of the time
    stop = threading.Event()
    seen: list[object] = []

    def reader() -> None:  # as the node's ops do, from a worker thread (a busy client)
        while not stop.is_set():
            seen.append(runner.device_call(dev.get_attr, "level"))
            time.sleep(0.001)

    t = threading.Thread(target=reader)
    t.start()
    end = ends.wait(5)
    stop.set()
    t.join(5)
    # a loaded PC misses deadlines (counted); what matters is that both sides ran a lot
    assert (
        end.reason == "done" and end.npoints + end.missed == 41 and end.npoints >= 5
    )  # 0.5 / 0.012 = 41.7
    assert len(seen) > 20, "the reader hardly ran: the test proves nothing"
    assert dev.overlaps == 0, f"{dev.overlaps} of {dev.reads} reads came during do_task"


def test_status_on_the_event_loop_never_waits_for_the_driver(
    rig: tuple[Busy, ComponentRunner, Ends],
) -> None:
    dev, runner, ends = rig
    assert runner.device_call_now(dev.status) == {"serial": "SN-1"}  # idle: read now
    runner.start_task(task(0.5, 0.012))
    busy = 0
    t_end = time.monotonic() + 0.4
    while time.monotonic() < t_end:
        got = runner.device_call_now(dev.status)  # None while the driver is busy
        busy += got is None
        time.sleep(0.003)
    ends.wait(5)
    assert busy > 0, "never found the driver busy: the test proves nothing"
    assert dev.overlaps == 0
