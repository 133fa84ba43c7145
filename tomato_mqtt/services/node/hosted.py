"""One component hosted on a driver node: its driver device, runner, meta and status.

Pure bookkeeping plus calls into driver code; no MQTT here. Blocking driver calls are
made by the node through :func:`~tomato_mqtt.services.node.drivers.off_loop`.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tomato_mqtt.driver import ComponentRunner, ModelDevice, ModelInterface, TaskEnd, TaskSpec
from tomato_mqtt.driver.upstream.adapter import UpstreamDevice
from tomato_mqtt.driver.upstream.runner import UpstreamRunner
from tomato_mqtt.driver.validate import to_jsonable
from tomato_mqtt.services.node.drivers import close_quietly
from tomato_mqtt.wire.messages import ComponentMeta, ComponentState, ComponentStatus, NodeComponent

__all__ = ["BrokenDriver", "HostedComponent", "declarations"]


class BrokenDriver(Exception):
    """The driver's code is wrong for this component (its declarations, a class that
    cannot be made): retrying cannot help until the driver is fixed and registered again
    (``tomato reload``, ``passata register``)."""


#: what Python says of a class that cannot be made as called (3.10-3.13)
_CANNOT_MAKE = re.compile(
    r"Can't instantiate abstract class|required positional argument|positional arguments? but"
    r"|unexpected keyword argument|takes no arguments"
)


def declarations(device: Any) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """(attr specs, capabilities, constants) of a device, as its meta publishes them;
    raises :class:`BrokenDriver` saying what is wrong with them."""
    where = type(device).__name__
    try:
        raw = device.attrs()
    except Exception as e:
        raise BrokenDriver(f"{where}.attrs() raised {type(e).__name__}: {e}") from None
    if not isinstance(raw, Mapping):
        raise BrokenDriver(
            f"{where}.attrs() must return a dict of name -> Attr, not {type(raw).__name__}"
        )
    attrs: dict[str, Any] = {}
    for k, a in raw.items():
        if not isinstance(k, str) or not callable(getattr(a, "spec", None)):
            raise BrokenDriver(
                f"{where}.attrs(): {k!r} must be a text name with an Attr(...),"
                f" not {type(a).__name__}"
            )
        try:
            attrs[k] = a.spec()
        except Exception as e:
            raise BrokenDriver(f"{where}.attrs()[{k!r}]: {type(e).__name__}: {e}") from None
    try:
        got = device.capabilities()
        caps = sorted(got)
    except Exception as e:
        raise BrokenDriver(f"{where}.capabilities(): {type(e).__name__}: {e}") from None
    if isinstance(got, str) or not all(isinstance(c, str) for c in caps):
        raise BrokenDriver(f"{where}.capabilities() must return a set of technique names")
    try:
        consts = {str(k): to_jsonable(v) for k, v in device.constants.items()}
    except Exception as e:
        raise BrokenDriver(f"{where}.constants: {type(e).__name__}: {e}") from None
    _check_units(where, getattr(device, "data_units", None) or {})
    return attrs, caps, consts


def _check_units(where: str, units: Any) -> None:
    """A device's ``data_units``: variable name -> a unit pint knows. A misspelt one was
    ignored with a line in the node's log only, its quantity's own units written (a
    driver author's tour)."""
    import pint

    if not isinstance(units, Mapping):
        raise BrokenDriver(
            f"{where}.data_units must be a dict of variable name -> unit,"
            f" not {type(units).__name__}"
        )
    for k, u in units.items():
        if not isinstance(k, str) or not isinstance(u, str):
            raise BrokenDriver(
                f"{where}.data_units: {k!r}: {u!r} must be a text name -> a unit text"
            )
        try:
            pint.Unit(u)
        except Exception:
            raise BrokenDriver(
                f"{where}.data_units[{k!r}] = {u!r} is not a unit pint knows (spell it as pint"
                " does, e.g. 'mA', 'degC', 'MHz'; or leave the variable out: its quantity's own"
                " units are written)"
            ) from None


@dataclass
class HostedComponent:
    config: NodeComponent
    node: str
    device: ModelDevice | None = None
    #: a registration (the driver's constructor) is under way
    connecting: bool = False
    runner: ComponentRunner | UpstreamRunner | None = None
    error: str | None = None
    driver_missing: bool = False
    """Registration failed because the driver is not installed (retried at reload)."""
    retries: int = 0
    #: the broker took this node's subscriptions to the component's commands (made by
    #: its registration, retried with it when refused)
    subscribed: bool = False
    job: int | None = None
    task: int | None = None
    task_name: str | None = None
    technique: str | None = None
    started_at: float | None = None
    planned: float | None = None  # the running task's max_duration
    last_task: dict[str, Any] | None = None
    #: (job, task) of the task that ended on the runner but whose end is not told yet
    #: (:meth:`told_end`): its status says "running" until then. An "idle" between the
    #: two, without the end, made the scheduler end the job ce ("reports no task since
    #: task 0 started"): a rebirth asked by a scheduler that had just restarted (CI)
    ending: tuple[int | None, int | None] | None = None
    stream: str = ""  # the current data stream (new at each registration; see datapath)
    seq: int = -1
    #: the status attrs last read (shown while a driver call is under way)
    status_attrs: dict[str, Any] = field(default_factory=dict)
    closed: bool = False
    #: its meta (not registered yet) was published once in this run (node/service.py)
    told: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    #: the retained ``last`` message as published (re-published by a rebirth: a broker
    #: restarted without its retained messages would otherwise show none until new data)
    last_point: bytes | None = None
    #: (job, task) -> (why some of its points could not be sent, how many: datapath.flush):
    #: its end is then an error, never "done" with points missing from the file, and
    #: counts only the points sent (the recorder waits for every point an end counts)
    unsent: dict[tuple[int | None, int | None], tuple[str, int]] = field(default_factory=dict)
    #: set once its first registration ended (registered, or failed: see ``error``); a
    #: task_start that comes meanwhile waits for it (ops.op_task_start)
    settled: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def key(self) -> tuple[str, str]:
        return (self.config.address, self.config.channel)

    def register(
        self,
        driver: ModelInterface,
        on_task_end: Callable[[TaskEnd], None],
        on_error: Callable[[str], None],
        on_buffer_full: Callable[[], None],
        max_buffer: int,
    ) -> None:
        """Create the device (blocking driver code) and check its declarations:
        :class:`BrokenDriver` when they (or the device's class) are wrong, any other
        exception (e.g. RuntimeError: the instrument is not reachable) means 'retry later'.
        The component is registered only once the device is whole: a driver whose
        ``attrs()`` returned a list was logged "registered", then failed its meta, and its
        registration was never tried again."""
        try:
            device = driver.DeviceFactory(self.key)
        except TypeError as e:
            # an abstract method left out, a wrong signature: the class cannot be made.
            # Any other TypeError may be the instrument's (int(None) of a port that did
            # not answer): retried, as before (a review)
            if _CANNOT_MAKE.search(str(e)):
                raise BrokenDriver(f"{type(driver).__name__}.DeviceFactory: {e}") from None
            raise
        if not isinstance(device, ModelDevice):
            raise BrokenDriver(
                f"{type(driver).__name__}.DeviceFactory must return a ModelDevice, not"
                f" {type(device).__name__}"
            )
        if not isinstance(device, UpstreamDevice):
            try:
                declarations(device)
            except BrokenDriver:
                close_quietly(device)  # its port or handle, opened in __init__
                raise
        self.device = device
        hooks: dict[str, Any] = {
            "on_task_end": on_task_end,
            "on_error": on_error,
            "on_buffer_full": on_buffer_full,
            "max_buffer": max_buffer,
        }
        if isinstance(device, UpstreamDevice):
            # an upstream tomato driver runs its tasks in its own thread (in its host process)
            self.runner = UpstreamRunner(device, **hooks)
        else:
            self.runner = ComponentRunner(device, **hooks)
        self.error = None
        self.retries = 0
        self.ending = None  # a new runner: no end of the old one's is awaited

    @property
    def host_died(self) -> bool:
        """An upstream driver whose host process has exited (register again to recover)."""
        dev = self.device
        return isinstance(dev, UpstreamDevice) and not dev.driver.alive

    @property
    def busy(self) -> bool:
        """A task runs (or is stopping) on it, or its end is not told yet."""
        return self.runner is not None and self.state == "running"

    @property
    def state(self) -> ComponentState:
        if self.runner is None:
            return "error" if self.error else "unregistered"
        if self.runner.running or (self.ending is not None and not self.runner.closed):
            return "running"
        return "error" if self.error else "idle"

    def meta(self) -> ComponentMeta:
        c = self.config
        attrs: dict[str, Any] = {}
        caps: list[str] = []
        consts: dict[str, Any] = {}
        if self.device is not None:
            attrs, caps, consts = declarations(self.device)
        return ComponentMeta(
            name=c.name,
            device=c.device,
            driver=c.driver,
            address=c.address,
            channel=c.channel,
            node=self.node,
            registered=self.device is not None,
            error=self.error,
            attrs=attrs,
            capabilities=caps,
            constants=consts,
            block_interval=self.device.block_interval if self.device is not None else None,
        )

    def status(self, epoch: int) -> ComponentStatus:
        attrs: dict[str, Any] = {}
        if self.device is not None:
            try:
                # on the event loop: never wait for the driver; while it is busy (a task's
                # call, an attr read), the values read last
                got = (
                    self.device.status()
                    if self.runner is None
                    else self.runner.device_call_now(self.device.status)
                )
                if got is not None:
                    self.status_attrs = {k: to_jsonable(v) for k, v in got.items()}
                attrs = dict(self.status_attrs)
            except Exception as e:  # a driver bug must not stop status reporting
                attrs = {}
                self.error = self.error or f"status() failed: {e}"
        running = self.state == "running"
        job, task, task_name, technique, started_at, planned = (
            (self.job, self.task, self.task_name, self.technique, self.started_at, self.planned)
            if running
            else (None, None, None, None, None, None)
        )
        accepted = self.runner.current_task if self.runner is not None else None
        if accepted is not None and (accepted.job, accepted.index) != (job, task):
            # accepted, not begun yet (its start is under way): said as that task, not
            # as the previous one, which a restarted scheduler had stopped as stale (and
            # with it the new task: a review)
            job, task = accepted.job, accepted.index
            task_name, technique = accepted.task_name, accepted.technique_name
            started_at, planned = None, accepted.max_duration
        return ComponentStatus(
            name=self.name,
            node=self.node,
            state=self.state,
            time=time.time(),
            job=job,
            task=task,
            task_name=task_name,
            technique=technique,
            started_at=started_at,
            max_duration=planned,
            attrs=attrs,
            error=self.error,
            epoch=epoch,
            stream=self.stream,
            seq=self.seq,
            last_task=self.last_task,
        )

    def begin(self, task: TaskSpec) -> None:
        self.job = task.job
        self.task = task.index
        self.task_name = task.task_name
        self.technique = task.technique_name
        self.started_at = time.time()
        self.planned = task.max_duration
        self.error = None
        told = self.last_task or {}
        if (told.get("job"), told.get("task")) != (task.job, task.index):
            self.ending = (task.job, task.index)  # (a short task's end may be told already)

    def told_end(self, last_task: dict[str, Any]) -> None:
        """The end of a task, as its status tells it from now on."""
        self.last_task = last_task
        if self.ending == (last_task["job"], last_task["task"]):
            self.ending = None
