"""Runs the tasks of one upstream component: the driver's own task thread takes the
points (as in tomato), this runner starts it, watches it and collects its data.

Same interface to the node as :class:`~tomato_mqtt.driver.runner.ComponentRunner`
(``start_task``, ``stop_task``, ``measure``, ``reset``, ``close``, ``drain`` and the
callbacks: :class:`~tomato_mqtt.driver.tasking.TaskRunner`), so the node's data path,
spool and commands are unchanged. Like tomato's
job process, it fetches the driver's data (``get_data``) while the task runs, every
sampling interval (between 0.1 and 0.5 s), and once more when the task has ended.
Every point keeps the ``uts`` the driver stamped it with; a task's point count is the
number of points the driver produced.

Idle measurements: when the driver (or its settings) sets ``idle_measurement_interval``
and no task runs, the runner asks for a ``measure`` that often, as tomato's driver
process does, and buffers the point with ``task=None``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from tomato_mqtt.driver.block import Block, BlockError
from tomato_mqtt.driver.points import Point, TaskEnd
from tomato_mqtt.driver.spec import TaskSpec
from tomato_mqtt.driver.tasking import TaskRunner, _Run
from tomato_mqtt.driver.upstream.adapter import UpstreamDevice
from tomato_mqtt.driver.upstream.client import HostCallError
from tomato_mqtt.driver.validate import TaskValidationError, validate_task

__all__ = ["UpstreamRunner"]

log = logging.getLogger(__name__)

#: seconds between reads of the status attrs while a task runs or the component idles
_STATUS_EVERY = 2.0


class UpstreamRunner(TaskRunner[UpstreamDevice]):
    stop_wait = 15.0
    thread_prefix = "upstream"

    def _setup(self) -> None:
        self._warned: set[str] = set()
        #: per task (by id), the points of blocks refused by Block.check, and why
        self._dropped: dict[int, tuple[int, str]] = {}
        self._measured_units: dict[str, str] = {}  # of the last ad-hoc measurement

    # -- tasks ----------------------------------------------------------------------------
    def _prepare(self, task: TaskSpec) -> None:
        """Validate ``task`` (our rules and messages), then hand it to the driver."""
        specs = {k: a.spec() for k, a in self.device.attrs().items()}
        validate_task(self.device.capabilities(), specs, task.technique_name, task.task_params)
        try:
            self.device.call("task_start", task=task.model_dump(mode="json"))
        except HostCallError as e:
            if e.kind == "value":
                raise TaskValidationError(str(e)) from None
            raise RuntimeError(f"driver failed to start the task on {self._who}: {e}") from e

    # -- ad-hoc calls ---------------------------------------------------------------------
    def measure(self) -> Point | None:
        self._refuse_if_busy("measure")
        try:
            cols = self.device.call("measure")
        except HostCallError as e:
            raise RuntimeError(f"measurement on {self._who} failed: {e}") from e
        block = self._block(cols, None)
        if block is None:
            return None
        self._append(block)
        self._measured_units = dict(block.units)
        last = {k: v[-1] for k, v in block.data.items()}  # the newest point, as a reply
        return Point(float(block.uts[-1]), last, None)

    def units_of(self, names: Iterable[str]) -> dict[str, str]:
        known = self._measured_units
        return {k: known[k] for k in names if k in known}

    def reset(self) -> None:
        self._wait_stopping()
        self._refuse_if_busy("reset")
        try:
            self.device.reset()
        except HostCallError as e:
            raise RuntimeError(f"reset of {self._who} failed: {e}") from e

    def _close_device(self) -> None:
        try:
            self.device.close()
        except Exception:  # (its host gone meanwhile: a node's stop closes them all)
            log.exception("closing device %s failed", self.device.key)

    # -- the buffer -----------------------------------------------------------------------
    def _deliver(self, cols: Mapping[str, Any] | None, task: TaskSpec | None) -> int:
        """Columns from the host into the node's buffer as ONE block (the bulk path):
        no per-point objects, and array-valued variables (``cols["arrays"]``: their
        extra dimensions, coordinates and coordinate units) travel to the file whole.
        Returns the number of points buffered."""
        block = self._block(cols, task)
        if block is None:
            return 0
        self._append(block)
        return len(block)

    def _block(self, cols: Mapping[str, Any] | None, task: TaskSpec | None) -> Block | None:
        """:func:`.host.dataset_to_columns`'s columns as a :class:`Block` (None: empty)."""
        if not cols or not cols.get("uts"):
            return None
        arrays = dict(cols.get("arrays") or {})
        units = {k: str(u) for k, u in dict(cols.get("units") or {}).items()}
        coords: dict[str, Any] = {}
        for a in arrays.values():
            units.update({d: str(u) for d, u in dict(a.get("coord_units") or {}).items()})
            coords.update(dict(a.get("coords") or {}))
        block = Block(
            uts=list(cols["uts"]),
            data=dict(cols.get("vars") or {}),
            units=units,
            dims={n: list(a.get("dims") or []) for n, a in arrays.items()},
            coords=coords,
            task=task,
        )
        try:
            block.check()
        except BlockError as e:  # the driver's Dataset does not fit together: say so once
            if str(e) not in self._warned:
                self._warned.add(str(e))
                msg = f"data of {self._who} dropped: {e}"
                log.warning("%s", msg)
                self._call(self._on_error, msg)
            if task is not None:  # the task's end says so: never done with points lost
                # (they were only in the node's log, and the job could end c)
                n, why = self._dropped.get(id(task), (0, str(e)))
                self._dropped[id(task)] = (n + len(block), why)
            return None
        return block

    # -- the worker -----------------------------------------------------------------------
    def _worker(self) -> None:
        next_idle = time.monotonic() + self._idle if self._idle else None
        next_status = time.monotonic() + _STATUS_EVERY
        while True:
            with self._cv:
                while self._pending is None and not self._closed:
                    wake = next_status if next_idle is None else min(next_idle, next_status)
                    timeout = wake - time.monotonic()
                    if timeout <= 0:
                        break
                    self._cv.wait(timeout)
                if self._closed and self._pending is None:
                    return
                run, self._pending = self._pending, None
            if run is not None:
                self._watch(run)
                if self._idle:
                    next_idle = time.monotonic() + self._idle
                continue
            if next_idle is not None and time.monotonic() >= next_idle:
                next_idle = max(next_idle + (self._idle or 0.0), time.monotonic())
                self._idle_measure()
            if time.monotonic() >= next_status:
                next_status = time.monotonic() + _STATUS_EVERY
                if self._run is None:
                    self.device.refresh_status()

    def _idle_measure(self) -> None:
        if self._run is not None:
            return
        try:
            self._deliver(self.device.call("measure"), None)
        except Exception as e:
            log.warning("idle measurement on %s failed: %s", self.device.key, e)
            self._call(self._on_error, f"idle measurement on {self._who} failed: {e}")

    def _watch(self, run: _Run) -> None:
        task = run.task
        # tomato's job process polls every pollrate (1 s); a little more often here, so
        # short tasks end promptly, but never faster than 10 Hz (each poll is a request)
        poll = min(max(task.sampling_interval, 0.1), 0.5)
        reason: Literal["done", "stopped", "error"] = "done"
        message: str | None = None
        npoints = 0
        t_start = time.time()
        dev = self.device
        next_status = time.monotonic() + _STATUS_EVERY
        try:
            while True:
                if run.stop.wait(poll):
                    npoints += self._deliver(dev.call("task_stop"), task)
                    deadline = time.monotonic() + self.stop_wait
                    while dev.call("task_status")["running"] and time.monotonic() < deadline:
                        time.sleep(0.02)
                    npoints += self._deliver(dev.call("task_data"), task)
                    reason, message = "stopped", run.stop_reason
                    break
                npoints += self._deliver(dev.call("task_data"), task)
                if time.monotonic() >= next_status:
                    dev.refresh_status()
                    next_status = time.monotonic() + _STATUS_EVERY
                st = dev.call("task_status")
                if st.get("error"):
                    raise RuntimeError(st["error"])
                if not st["running"]:
                    npoints += self._deliver(dev.call("task_data"), task)
                    break
        except Exception as e:
            reason = "error"
            message = f"{task.technique_name}: driver error on {self._who}: {e}"
            log.warning("%s", message)
            self._call(self._on_error, message)
        dev.refresh_status()  # the status published with the task's end
        dropped = self._dropped.pop(id(task), None)
        if dropped is not None:
            reason = "error"
            message = "; ".join(
                [
                    *([message] if message else []),
                    f"{dropped[0]} point(s) of {self._who} were dropped, not sent: {dropped[1]}",
                ]
            )
        end = TaskEnd(task, reason, message, t_start, time.time(), npoints)
        log.info(
            "%s: upstream task %r ended: %s (%d points)",
            dev.key,
            task.technique_name,
            reason,
            npoints,
        )
        self.finish(end)
