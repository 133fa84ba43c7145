"""The bulk task loop: a device that hands over blocks of points, not one per call.

A device with :attr:`~tomato_mqtt.driver.base.ModelDevice.block_interval` set is
called every ``block_interval`` seconds with ``do_task_block(task, t_start, t_now)``
and returns a :class:`~tomato_mqtt.driver.block.Block` of the points it took since the
previous call (or None). The task lasts ``max_duration`` of wall time; one last call
after the end (or after a stop) collects the points taken up to then, so nothing the
instrument measured is left behind. The points are the driver's own: their count is
what the task took (the completeness check of the file counts exactly that), and their
``uts`` are the driver's timestamps. A late call is not repeated to catch up: the next
call simply gets more points.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Literal

from tomato_mqtt.driver.block import Block, BlockError
from tomato_mqtt.driver.points import TaskEnd, _describe

if TYPE_CHECKING:
    from tomato_mqtt.driver.runner import ComponentRunner
    from tomato_mqtt.driver.tasking import _Run

__all__ = ["MIN_BLOCK_INTERVAL", "execute_blocks"]

log = logging.getLogger(__name__)

MIN_BLOCK_INTERVAL = 0.001
"""s: a shorter ``block_interval`` is raised to this (one call per ms is already bulk)."""


def execute_blocks(runner: ComponentRunner, run: _Run) -> None:
    """Run ``run``'s task on a bulk device; ends with ``runner.finish``."""
    task = run.task
    device = runner.device
    interval = max(float(device.block_interval or 0.0), MIN_BLOCK_INTERVAL)
    stop = run.stop
    perf = time.perf_counter
    wall = time.time
    reason: Literal["done", "stopped", "error"] = "done"
    message: str | None = None
    npoints = 0
    calls = 0
    t_start = wall()
    p_start = perf()
    p_end = p_start + task.max_duration
    log.info("%s: bulk task %s started (every %g s)", device.key, _describe(task), interval)
    k = 0
    try:
        while True:
            k += 1
            deadline = min(p_start + k * interval, p_end)
            remaining = deadline - perf()
            stopped = stop.wait(remaining) if remaining > 0 else stop.is_set()
            now = perf()
            if now - (p_start + k * interval) > interval:  # behind: no burst of calls
                k = int((now - p_start) / interval)
            calls += 1  # (before the call: a bad block of call 4 was said "at call 5")
            with runner._dev_lock:
                block = device.do_task_block(task, t_start, t_start + (now - p_start))
            if block is not None and not isinstance(block, Block):
                # (it read "AttributeError: 'dict' object has no attribute 'check'": a
                # driver author's tour)
                raise BlockError(
                    f"do_task_block must return a Block or None, not {type(block).__name__}"
                    " (docs/drivers.md: the bulk path)"
                )
            if block is not None and len(block):
                block.check()
                block.task = task
                runner.append_block(block)
                npoints += len(block)
            if stopped:
                reason = "stopped"
                message = run.stop_reason
                break
            if now >= p_end:
                break
    except BaseException as e:  # incl. SystemExit, as in the one-point loop
        reason = "error"
        what = "bad block" if isinstance(e, BlockError) else "driver error"
        message = (
            f"{task.technique_name}: {what} on {runner._who} at call {calls}:"
            f" {type(e).__name__}: {e}"
        )
        log.warning("%s: bulk task %s failed", device.key, _describe(task), exc_info=True)
        runner.error(message)
    runner.finish(TaskEnd(task, reason, message, t_start, wall(), npoints, 0))
