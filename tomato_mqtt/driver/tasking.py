"""What every runner of a component shares: one task at a time, the worker's hand-off,
the buffer of what was taken, and the callbacks to the node.

:class:`~tomato_mqtt.driver.runner.ComponentRunner` (native drivers: it calls the
device on time) and :class:`~tomato_mqtt.driver.upstream.runner.UpstreamRunner`
(upstream tomato drivers: the driver runs its own task thread, the runner watches it)
differ in how a task runs; how a task is accepted, stopped, handed to the worker
thread and ended, and how points wait for the node, is this class.

A task's life: :meth:`TaskRunner.start_task` accepts it (one at a time, refused when
closed), lets the subclass prepare it (validation, parameters; a failure releases it),
then hands it to the worker thread (``_pending``); :meth:`stop_task` asks it to end;
the worker calls :meth:`finish`, which frees the runner and tells the node.
"""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from tomato_mqtt.driver.block import Block
from tomato_mqtt.driver.points import Point, PointRun, TaskEnd, _describe
from tomato_mqtt.driver.spec import TaskSpec

if TYPE_CHECKING:
    from tomato_mqtt.driver.base import ModelDevice

__all__ = ["TaskRunner"]

D = TypeVar("D", bound="ModelDevice")
T = TypeVar("T")


class DriverBusy(RuntimeError):
    """A call into a device that waited too long for another call of it to end."""


log = logging.getLogger(__name__)


class _Run:
    """The bookkeeping of one task, shared by the caller and the worker thread."""

    __slots__ = ("stop", "stop_reason", "task")

    def __init__(self, task: TaskSpec) -> None:
        self.task = task
        self.stop = threading.Event()
        self.stop_reason: str | None = None


class TaskRunner(abc.ABC, Generic[D]):
    """One component's task state, worker thread and buffer (see the module docstring).

    ``on_task_end``, ``on_error`` and ``on_buffer_full`` are called from the worker
    thread (or the caller's thread); they must only hand over, e.g. with
    ``loop.call_soon_threadsafe``. ``on_buffer_full`` fires when the buffer reaches
    ``max_buffer`` points; points are never dropped here. A subclass sets up its own
    state in :meth:`_setup`; the worker thread starts after it.
    """

    #: how long reset() waits for a task that was asked to stop, and close() for the worker
    stop_wait: float = 10.0
    #: its worker is in an idle measurement (a close waits for it as for a task's point)
    measuring: bool = False
    #: the worker thread's name: ``<prefix>-<address>,<channel>``
    thread_prefix: str = "runner"

    def __init__(
        self,
        device: D,
        *,
        on_task_end: Callable[[TaskEnd], None],
        on_error: Callable[[str], None],
        max_buffer: int = 10_000,
        on_buffer_full: Callable[[], None] | None = None,
    ) -> None:
        self.device = device
        self.key = device.key
        interval = device.driver.idle_measurement_interval
        self._idle = float(interval) if interval else None
        self._on_task_end = on_task_end
        self._on_error = on_error
        self._on_buffer_full = on_buffer_full
        self._max_buffer = max_buffer
        self._cv = threading.Condition()  # guards _run, _pending, _closed
        self._run: _Run | None = None  # accepted task (starting, pending or running)
        self._pending: _Run | None = None  # handed to the worker, not yet picked up
        self._closed = False
        self._buf_lock = threading.Lock()
        self._buf: list[PointRun | Block] = []
        self._buf_n = 0  # points in _buf (a block counts its points)
        #: one call into the driver at a time: the runner's own (tasks, measurements,
        #: reset, close) and the node's (attribute reads and writes, status)
        self._dev_lock = threading.RLock()
        #: what a device_call holding the lock calls (None: the runner's own calls)
        self._holder: str | None = None
        self._setup()
        name = f"{self.thread_prefix}-{self.key[0]},{self.key[1]}"
        self._thread = threading.Thread(target=self._worker, name=name, daemon=True)
        self._thread.start()

    def _setup(self) -> None:
        """A subclass's own state, before the worker thread starts."""

    # -- calls into the device from other threads ----------------------------------------
    def device_call(self, fn: Callable[..., T], *args: Any, wait: float | None = None) -> T:
        """``fn(*args)``, a call into the device (``get_attr``, ``set_attr``), made as the
        runner makes its own: one at a time, so a driver needs no lock of its own
        (docs/drivers.md). Blocking: call it from a worker thread, not the event loop.
        ``wait``: at most so many seconds for another call to end, then
        :class:`DriverBusy` (None: for as long as it takes)."""
        if not self._dev_lock.acquire(timeout=-1 if wait is None else wait):
            run, holder = self._run, self._holder
            if holder is not None:  # another call of this kind (a set_attr that hangs)
                what = f"a call of {holder}"
            elif run is not None:
                what = f"the do_task of task {_describe(run.task)}"
            else:
                what = "another call (a reset, an attribute read or write)"
            raise DriverBusy(
                f"the driver is in {what} for over {wait:g} s (a call that has not "
                "returned: a hung instrument?), and takes no other call until it returns"
            )
        self._holder = getattr(fn, "__name__", None)  # (said by a call that waits)
        try:
            return fn(*args)
        finally:
            self._holder = None
            self._dev_lock.release()

    def device_call_now(self, fn: Callable[[], T]) -> T | None:
        """``fn()`` if no other call into the device is under way, else None: for the
        event loop, which must never wait for a driver."""
        if not self._dev_lock.acquire(blocking=False):
            return None
        try:
            return fn()
        finally:
            self._dev_lock.release()

    @abc.abstractmethod
    def _worker(self) -> None:
        """The worker thread: runs handed-over tasks (``_pending``) until closed."""

    @abc.abstractmethod
    def _prepare(self, task: TaskSpec) -> None:
        """Validate and set up ``task`` before the worker gets it (caller's thread)."""

    @abc.abstractmethod
    def _close_device(self) -> None:
        """Close the device, after the worker has ended."""

    def units_of(self, names: Iterable[str]) -> dict[str, str]:
        """The units (as written to the file) of those ``names`` the device measured as
        quantities: for the reply of an ad-hoc measurement."""
        return {}

    # -- state ----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """A task is accepted and has not ended (it may be stopping)."""
        return self._run is not None

    @property
    def current_task(self) -> TaskSpec | None:
        run = self._run
        return run.task if run is not None else None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def _who(self) -> str:
        """The component in messages, as in tomato's ``driver:(address,channel)`` names."""
        return f"component ({self.key[0]},{self.key[1]})"

    # -- tasks ----------------------------------------------------------------------------
    def start_task(self, task: TaskSpec) -> None:
        """Accept ``task``, prepare it (:meth:`_prepare`) and hand it to the worker.

        Raises what :meth:`_prepare` raises (nothing started), or ``RuntimeError`` when
        busy or closed. Blocking (may call the driver): run it off the event loop.
        """
        run = _Run(task)
        with self._cv:
            if self._closed:
                raise RuntimeError("component runner is closed")
            if self._run is not None:
                raise RuntimeError(f"busy with task {_describe(self._run.task)}")
            self._run = run
        try:
            self._prepare(task)
        except BaseException:
            self._release()
            raise
        with self._cv:
            if self._closed:  # closed while the task was prepared
                self._run = None
                self._cv.notify_all()
                raise RuntimeError("component runner was closed before the task started")
            self._pending = run
            self._cv.notify_all()

    def stop_task(self, reason: str = "stopped") -> None:
        """Ask the running task to end; returns at once. Idempotent. Points taken so far
        are kept."""
        run = self._run
        if run is None:
            return
        if run.stop_reason is None:
            run.stop_reason = reason
        run.stop.set()

    def finish(self, end: TaskEnd) -> None:
        """The task is over: free the runner, then tell (from the worker thread)."""
        self._release()
        self._call(self._on_task_end, end)

    def _release(self) -> None:
        with self._cv:
            self._run = None
            self._cv.notify_all()

    def _wait_stopping(self) -> None:
        """A task asked to stop: wait (bounded) until it has ended."""
        run = self._run
        if run is not None and run.stop.is_set():
            with self._cv:
                self._cv.wait_for(lambda: self._run is not run, timeout=self.stop_wait)

    def _refuse_if_busy(self, what: str) -> None:
        if self._closed:
            raise RuntimeError(f"cannot {what}: component runner is closed")
        run = self._run
        if run is not None:
            raise RuntimeError(f"cannot {what}: task {_describe(run.task)} is running")

    def close(self, wait: float | None = None) -> None:
        """Stop any task, end the worker thread and close the device. Idempotent.
        ``wait``: at most so many seconds for a call into the driver under way (then the
        device is left open: a call that never returns; None: as long as it takes)."""
        with self._cv:
            if self._closed:
                return
            self._closed = True
            self._cv.notify_all()
        self.stop_task("component closed")
        thread = self._thread
        if threading.current_thread() is not thread:
            thread.join(self.stop_wait)
            if thread.is_alive():  # in a call into the driver that does not return
                log.warning("runner of %s: worker did not end in time", self.key)
                wait = 0.0 if wait is not None else None
        # a call into the driver that never returns holds the lock for good: a stopping
        # node leaves the device to the process's exit (asked to restart, it waited for
        # it, offline, for good: a driver author's tour)
        if not self._dev_lock.acquire(timeout=-1 if wait is None else wait):
            log.warning(
                "runner of %s: a driver call has not returned (a hung instrument?): "
                "its device is not closed",
                self.key,
            )
            return
        try:
            self._close_device()
        finally:
            self._dev_lock.release()

    # -- the buffer -----------------------------------------------------------------------
    def drain(self) -> tuple[list[Point | Block], dict[str, str]]:
        """What was taken since the last drain, in order, and the units of the points'
        quantity variables (a block carries its own)."""
        items, units = self.drain_runs()
        out: list[Point | Block] = []
        for it in items:
            if isinstance(it, PointRun):
                out.extend(it.points())
            else:
                out.append(it)
        return out, units

    def drain_runs(self) -> tuple[list[PointRun | Block], dict[str, str]]:
        """As :meth:`drain`, the points as the runner buffers them (the node's data
        path): a task's consecutive points as one :class:`PointRun` of columns."""
        with self._buf_lock:
            items, self._buf = self._buf, []
            self._buf_n = 0
            units = self._take_units()
        return items, units

    def _take_units(self) -> dict[str, str]:
        """The units gathered since the last drain (under the buffer's lock)."""
        return {}

    def _append(self, block: Block) -> None:
        """Buffer a block of points; tell the node once the buffer fills up. (A
        one-point runner buffers its points itself: ``ComponentRunner._point``.)"""
        with self._buf_lock:
            self._buf.append(block)
            before = self._buf_n
            self._buf_n += len(block)
            full = before < self._max_buffer <= self._buf_n
        if full and self._on_buffer_full is not None:
            self._call(self._on_buffer_full)

    def error(self, message: str) -> None:
        self._call(self._on_error, message)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("callback %r of runner %s failed", fn, self.key)
