"""The node's shared clock alone: ``python -m bench.clock [--components N] [--duration S]
[--reps R]``.

N ``example_counter`` components (default 50) each run one ``count`` task at 1 kHz on
the shared clock (``driver/clock.py``), in this process, with no MQTT, broker or
recorder: what the one-point path costs before a point leaves the node. The points are
drained as the node's data path drains them (``drain_runs``: columns, no object per
point) every 0.2 s. Prints, per repetition and as medians: the process's CPU per point
taken (the clock's thread is nearly all of it) and the deadlines missed (more than half
an interval late: the clock waited for the CPU or the GIL).

The baseline is the driver call alone, measured in the same run: ``do_task`` and the
conversion of its values (``to_values``), in a tight loop, per point.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from typing import Any

__all__ = ["main", "run_clock", "tight_loop"]

RATE = 1_000.0  # Hz per component: the one-point shape


def run_clock(n: int, duration: float) -> tuple[float, float, int]:
    """(CPU-µs per point taken, % of deadlines missed, points taken) of one run."""
    from tomato_mqtt_example_counter import DriverInterface

    from tomato_mqtt.driver import ComponentRunner, TaskEnd, TaskSpec

    driver = DriverInterface()
    ends: list[TaskEnd] = []
    lock = threading.Lock()

    def on_end(e: TaskEnd) -> None:
        with lock:
            ends.append(e)

    runners = [
        ComponentRunner(
            driver.DeviceFactory(("bench-clock", str(i + 1))),
            on_task_end=on_end,
            on_error=lambda msg: print(f"  error: {msg}", file=sys.stderr),
        )
        for i in range(n)
    ]
    task = TaskSpec(
        technique_name="count",
        max_duration=duration,
        sampling_interval=1.0 / RATE,
        task_params={},
        job=1,
        index=0,
    )
    try:
        cpu0 = time.process_time()
        for r in runners:
            r.start_task(task)
        deadline = time.monotonic() + duration + 30
        while time.monotonic() < deadline:
            time.sleep(0.2)
            for r in runners:
                r.drain_runs()
            with lock:
                if len(ends) == n:
                    break
        cpu = time.process_time() - cpu0
    finally:
        for r in runners:
            r.close()
    if len(ends) != n:
        raise RuntimeError(f"only {len(ends)} of {n} tasks ended")
    taken = sum(e.npoints for e in ends)
    missed = sum(e.missed for e in ends)
    return cpu * 1e6 / max(1, taken), 100.0 * missed / max(1, taken + missed), taken


def tight_loop(points: int = 50_000) -> float:
    """CPU-µs of one point's driver call and value conversion, nothing else."""
    from tomato_mqtt_example_counter import DriverInterface

    from tomato_mqtt.driver import TaskSpec
    from tomato_mqtt.driver.points import to_values

    dev: Any = DriverInterface().DeviceFactory(("bench-clock", "1"))
    task = TaskSpec(technique_name="count", max_duration=1.0, sampling_interval=0.001)
    known: dict[str, Any] = {}
    t0 = time.time()
    cpu0 = time.process_time()
    for k in range(points):
        to_values(dev.do_task(task, t0, t0 + k * 0.001), known, dev)
    return (time.process_time() - cpu0) * 1e6 / points


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.clock", description=__doc__)
    ap.add_argument("--components", type=int, default=50)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args(argv)
    base = tight_loop()
    runs = []
    for i in range(a.reps):
        us, missed, taken = run_clock(a.components, a.duration)
        runs.append((us, missed))
        print(f"  rep {i + 1}: {taken} points, {us:.2f} CPU-µs each, {missed:.1f} % missed")
    us = statistics.median(r[0] for r in runs)
    missed = statistics.median(r[1] for r in runs)
    print(
        f"\n| {a.components} components x {RATE / 1000:g} kHz, clock alone | median |\n"
        "|---|---|\n"
        f"| CPU-µs per point taken (the process) | {us:.2f} |\n"
        f"| deadlines missed | {missed:.1f} % |\n"
        f"| baseline: `do_task` + `to_values` alone, CPU-µs per point | {base:.2f} |\n"
        f"| ratio clock : driver call | {us / base:.2f}x |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
