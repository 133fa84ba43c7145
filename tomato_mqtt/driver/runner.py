"""Runs the tasks of one component in a worker thread, on time, and buffers the points.

Drivers are blocking code, so each :class:`ComponentRunner` owns one thread that makes
every periodic call into its device; the asyncio node only starts and stops tasks and
drains the buffer. Calls into the device from any thread are serialised by one lock.
A device that declares its calls never wait (``shared_clock``) has its fast tasks called
by the node's shared clock instead, one thread for all of them (:mod:`.clock`); its
worker thread then only waits for the task to end.

Timing follows tomato's driver loop: point ``k`` is due at ``t_start + k *
sampling_interval`` for every ``k >= 1`` within ``max_duration`` (``TaskSpec.npoints``),
and the task lasts its ``max_duration`` (after the last point, the rest of it, unless
stopped). Deadlines are absolute (no drift). Every point's ``uts`` is when it
was taken: a runner that falls behind (a slow driver, a stalled node, a suspended
process) is never burst-called to "catch up" with points that were not measured on time.
A point is taken within half a sampling interval of its deadline, or not at all: a
runner that wakes up later than that (a slow driver, a stalled or suspended process, a
busy machine) counts that deadline and every other one already past as missed
(:attr:`TaskEnd.missed`) and takes the next point at the next deadline still ahead. So
consecutive points are never closer than half an interval, and at 1 kHz on a loaded
machine a scheduling hiccup of a few ms costs a few points, counted, rather than a
burst of points whose timing says nothing.

Idle measurements: when the driver sets ``idle_measurement_interval`` and no task runs,
the worker calls ``do_measure`` that often and buffers the points with ``task=None``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from tomato_mqtt.driver.base import ModelDevice
from tomato_mqtt.driver.block import Block
from tomato_mqtt.driver.bulk import execute_blocks
from tomato_mqtt.driver.clock import CLOCK_MAX_INTERVAL, Steps, nap, shared_clock
from tomato_mqtt.driver.points import Point, PointRun, TaskEnd, Value, _describe, to_values
from tomato_mqtt.driver.spec import AttrSpec, TaskSpec
from tomato_mqtt.driver.tasking import TaskRunner, _Run
from tomato_mqtt.driver.validate import TaskValidationError, validate_task

__all__ = ["ComponentRunner", "Point", "TaskEnd"]  # Point, TaskEnd: from points.py

log = logging.getLogger(__name__)


# Waits shorter than this are sleeps (the stop flag is read after them): at 1 kHz an
# Event.wait per point was most of the runner's CPU. A stop waits at most this long.
SHORT_WAIT = 0.005
#: s between two warnings of idle measurements that keep failing
IDLE_FAIL_SAID = 60.0


class ComponentRunner(TaskRunner[ModelDevice]):
    """Drives one :class:`ModelDevice`: tasks, idle and ad-hoc measurements, the buffer
    (the task state, hand-off and buffer are :class:`~.tasking.TaskRunner`'s)."""

    def _setup(self) -> None:
        #: the task on the node's shared clock, and what ends its wait (see _execute)
        self._clocked: tuple[Steps, Callable[[], None]] | None = None
        self._buf_units: dict[str, str] = {}
        # first units seen per variable: later quantities are converted to them
        self._units: dict[str, tuple[Any, str, Any]] = {}
        #: failed idle measurements not said yet, and when the last was said
        self._idle_fails = 0
        self._idle_said = 0.0

    # -- tasks ----------------------------------------------------------------------------
    def _prepare(self, task: TaskSpec) -> None:
        """Validate ``task`` and apply its ``task_params``: raises
        :class:`TaskValidationError` for a task the component cannot take,
        ``RuntimeError`` when the driver fails to apply a parameter."""
        params = validate_task(
            self.device.capabilities(), self._specs(), task.technique_name, task.task_params
        )
        with self._dev_lock:
            for name, val in params.items():
                try:
                    self.device.set_attr(name, val)
                except (ValueError, TypeError, AttributeError) as e:
                    raise TaskValidationError(f"{name}: {e}") from e
                except Exception as e:
                    raise RuntimeError(
                        f"driver failed to set {name!r} to {val} on {self._who}:"
                        f" {type(e).__name__}: {e}"
                    ) from e

    def _specs(self) -> dict[str, AttrSpec]:
        return {k: a.spec() for k, a in self.device.attrs().items()}

    # -- ad-hoc calls ---------------------------------------------------------------------
    def measure(self) -> Point | None:
        """One ``do_measure`` now; the point is also buffered. Refused while a task runs.

        Raises ``RuntimeError`` when refused or when the driver fails (its exception is
        named in the message and chained).
        """
        self._refuse_if_busy("measure")
        with self._dev_lock:
            uts = time.time()
            try:
                raw = self.device.do_measure()
                return None if raw is None else Point(uts, self._point(uts, raw, None))
            except Exception as e:
                raise RuntimeError(
                    f"measurement on {self._who} failed: {type(e).__name__}: {e}"
                ) from e

    def units_of(self, names: Iterable[str]) -> dict[str, str]:
        """The units (as written to the file) of those ``names`` that were quantities."""
        known = self._units
        return {k: known[k][1] for k in names if k in known}

    def reset(self) -> None:
        """``device.reset()``; refused while a task runs, waits for one that is stopping."""
        self._wait_stopping()
        self._refuse_if_busy("reset")
        with self._dev_lock:
            try:
                self.device.reset()
            except Exception as e:
                raise RuntimeError(f"reset of {self._who} failed: {type(e).__name__}: {e}") from e

    def _close_device(self) -> None:
        try:
            with self._dev_lock:
                self.device.close()
        except Exception:
            log.exception("closing device %s failed", self.device.key)

    # -- the buffer -----------------------------------------------------------------------
    def _take_units(self) -> dict[str, str]:
        units, self._buf_units = self._buf_units, {}
        return units

    def append_block(self, block: Block) -> None:
        """Buffer a block the device returned (the bulk loop calls this)."""
        self._append(block)

    def _point(self, uts: float, raw: Mapping[str, Any], task: TaskSpec | None) -> dict[str, Value]:
        """Convert a driver's mapping (fast path: plain values) and buffer it: onto the
        buffer's last run when that is of the same task (:meth:`_append`'s work,
        inlined: at 50 x 1 kHz this runs 50,000 times a second). Returns the values."""
        values, units = to_values(raw, self._units, self.device)
        with self._buf_lock:
            buf = self._buf
            run = buf[-1] if buf else None
            if not isinstance(run, PointRun) or run.task is not task:
                run = PointRun(task)
                buf.append(run)
            run.add(uts, values)
            if units:
                self._buf_units.update(units)
            n = self._buf_n = self._buf_n + 1
        if n == self._max_buffer and self._on_buffer_full is not None:
            self._call(self._on_buffer_full)
        return values

    # -- the worker -----------------------------------------------------------------------
    def _worker(self) -> None:
        next_idle = time.monotonic() + self._idle if self._idle else None
        while True:
            with self._cv:
                while self._pending is None and not self._closed:
                    timeout = None if next_idle is None else next_idle - time.monotonic()
                    if timeout is not None and timeout <= 0:
                        break
                    self._cv.wait(timeout)
                if self._closed and self._pending is None:
                    return
                run, self._pending = self._pending, None
            if run is not None:
                if self.device.block_interval:
                    execute_blocks(self, run)
                else:
                    self._execute(run)
                if self._idle:
                    next_idle = time.monotonic() + self._idle
            elif self._idle and next_idle is not None:
                next_idle += self._idle
                if next_idle < time.monotonic():  # a slow driver: no burst to catch up
                    next_idle = time.monotonic() + self._idle
                self._idle_measure()

    def _idle_measure(self) -> None:
        try:
            with self._dev_lock:
                if self._run is not None:  # a task got in first
                    return
                uts = time.time()
                self.measuring = True  # (a stopping node waits for it as for a task)
                try:
                    raw = self.device.do_measure()
                finally:
                    self.measuring = False
                if raw is not None:
                    self._point(uts, raw, None)
        except BaseException as e:  # incl. SystemExit: a worker thread would die silently
            # the first of a spell with its traceback, then a count once a minute (a
            # WARNING and a traceback every 2 s while it failed: a driver author's tour)
            now = time.monotonic()
            self._idle_fails += 1
            if now - self._idle_said < IDLE_FAIL_SAID:
                return
            again = f" ({self._idle_fails} times since)" if self._idle_said > 0 else ""
            first = self._idle_said == 0.0
            self._idle_said, self._idle_fails = now, 0
            log.warning("idle measurement on %s failed%s", self.device.key, again, exc_info=first)
            self._call(
                self._on_error,
                f"idle measurement on {self._who} failed{again}: {type(e).__name__}: {e}",
            )
        else:
            if self._idle_said:
                log.warning("idle measurement on %s works again", self.device.key)
                self._idle_said, self._idle_fails = 0.0, 0

    def _execute(self, run: _Run) -> None:
        steps = Steps(self, run)
        n, task = steps.n, run.task
        log.info("%s: task %s started (%d points)", self.device.key, _describe(task), n)
        if self.device.shared_clock and n and task.sampling_interval <= CLOCK_MAX_INTERVAL:
            ended = threading.Event()  # the node's clock calls it on time (driver/clock.py)
            self._clocked = (steps, ended.set)
            clock = shared_clock()
            try:
                clock.add(steps, ended.set)
                if run.stop.is_set():  # a stop that came before the clock had it
                    clock.cancel(steps, ended.set)
            except BaseException as e:  # the clock could not take it: the task ends here
                clock.cancel(steps, lambda: None)
                steps.failed(e)
                ended.set()
            ended.wait()
            self._clocked = None
            self._rest_of(steps, run.stop)
            self.finish(steps.end())
            return
        stop = run.stop
        perf = time.perf_counter
        try:
            while (deadline := steps.next_deadline()) is not None:
                remaining = deadline - perf()
                if remaining > SHORT_WAIT:
                    stopped = stop.wait(remaining)
                else:  # a sleep costs a few µs of CPU, an Event.wait ~25 (a lock each)
                    if remaining > 0:
                        nap(remaining, stop)
                    stopped = stop.is_set()
                if stopped:
                    steps.stopped()
                    break
                steps.take()
        except BaseException as e:
            # incl. SystemExit (tomato drivers' decorators call sys.exit): a worker thread
            # dies silently on it, and the task would never end
            steps.failed(e)
        self._rest_of(steps, stop)
        self.finish(steps.end())

    @staticmethod
    def _rest_of(steps: Steps, stop: threading.Event) -> None:
        """A task lasts its max_duration, as in tomato: after its last point (2 s at
        0.75 s: points at 0.75 and 1.5 s), the rest of it, unless it is stopped."""
        if steps.reason != "done":
            return
        left = steps.p_start + steps.task.max_duration - time.perf_counter()
        if left > 0 and stop.wait(left):
            steps.stopped()

    def stop_task(self, reason: str = "stopped") -> None:
        """As :meth:`TaskRunner.stop_task`; a task on the shared clock ends at once, unless
        the clock is calling its driver (then right after that call)."""
        super().stop_task(reason)
        clocked = self._clocked
        if clocked is not None and clocked[0].run.stop.is_set():
            shared_clock().cancel(*clocked)

    def finish(self, end: TaskEnd) -> None:
        log.info(
            "%s: task %s ended: %s (%d points, %d deadlines missed)",
            self.device.key,
            _describe(end.task),
            end.reason,
            end.npoints,
            end.missed,
        )
        super().finish(end)
