"""What a driver author writes against: :class:`Attr`, :class:`ModelDevice`,
:class:`ModelInterface`.

Close to tomato's ``driverinterface_2_1`` so a tomato driver ports with little change,
but simpler: a device returns one point per :meth:`ModelDevice.do_task` call as a plain
mapping (no xarray), and threads, timing, buffering and task bookkeeping live in
:class:`~tomato_mqtt.driver.runner.ComponentRunner`, not in the device.

All methods here are blocking and are called from one thread at a time per device.
"""

from __future__ import annotations

import logging
import numbers
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any

import pint

from tomato_mqtt.driver.block import Block
from tomato_mqtt.driver.spec import AttrSpec, AttrType, TaskSpec
from tomato_mqtt.driver.validate import coerce_value

__all__ = ["Attr", "ModelDevice", "ModelInterface"]

log = logging.getLogger(__name__)

_TYPES: dict[object, AttrType] = {
    float: "float",
    int: "int",
    str: "str",
    bool: "bool",
    pint.Quantity: "quantity",
    "float": "float",
    "int": "int",
    "str": "str",
    "bool": "bool",
    "quantity": "quantity",
}


class Attr:
    """An attribute of a component, as a driver declares it.

    ``type`` is ``float``, ``int``, ``str``, ``bool`` or ``pint.Quantity`` (the names
    ``"float"`` … ``"quantity"`` work too). For a quantity, ``units`` are the canonical
    units and ``minimum`` / ``maximum`` may be numbers (in ``units``) or quantities.
    A bad declaration raises ``TypeError`` / ``ValueError`` when the driver builds it.
    """

    __slots__ = ("_spec", "maximum", "minimum", "options", "rw", "status", "type", "units")

    def __init__(
        self,
        type: Any,
        rw: bool = False,
        status: bool = False,
        units: str | None = None,
        minimum: float | pint.Quantity[Any] | None = None,
        maximum: float | pint.Quantity[Any] | None = None,
        options: Iterable[str | int | float] | None = None,
    ) -> None:
        kind = _TYPES.get(type)
        if kind is None:
            raise TypeError(
                f"Attr type must be float, int, str, bool or pint.Quantity, not {type!r}"
            )
        self.type = type
        self.rw = rw
        self.status = status
        self.units = units
        self.minimum = minimum
        self.maximum = maximum
        self.options = options
        if kind == "quantity" and units is None:
            # tomato drivers may give only a limit as a quantity: take its units
            for lim in (minimum, maximum):
                if isinstance(lim, pint.Quantity):
                    units = str(lim.units)
                    break
        if kind == "quantity" and units is None:
            # values would reach the driver in whatever units a user wrote, a bare number
            # dimensionless (a driver author's tour: nothing said so)
            warnings.warn(
                "Attr of type quantity without units: values reach the driver in whatever "
                "units a user writes (a bare number dimensionless); give units=... (e.g. "
                "units='mL/min')",
                UserWarning,
                stacklevel=2,
            )
        if units is not None:
            try:
                pint.Unit(units)  # unknown units fail here, at declaration
            except Exception as e:
                raise ValueError(f"Attr units {units!r} are not known to pint: {e}") from None
        opts: list[str | int | float] | None = None
        if options is not None:
            if isinstance(options, set | frozenset):
                opts = sorted(options, key=str)  # deterministic on the wire
            else:
                opts = list(options)
        self._spec = AttrSpec(
            type=kind,
            units=units,
            rw=rw,
            status=status,
            minimum=_magnitude(minimum, units),
            maximum=_magnitude(maximum, units),
            options=opts,
        )

    def spec(self) -> AttrSpec:
        """The JSON-able description published in component meta."""
        return self._spec.model_copy()

    def __repr__(self) -> str:
        return f"Attr({self._spec!r})"


def _magnitude(lim: float | pint.Quantity[Any] | None, units: str | None) -> float | None:
    if lim is None:
        return None
    if isinstance(lim, pint.Quantity):
        return float(lim.m_as(units) if units else lim.magnitude)
    if isinstance(lim, numbers.Real) and not isinstance(lim, bool):
        return float(lim)
    raise TypeError(f"Attr limits must be numbers or quantities, not {lim!r}")


class ModelDevice(ABC):
    """One component (an ``(address, channel)`` of a device), as the driver sees it.

    Subclasses implement :meth:`attrs`, :meth:`capabilities` and :meth:`do_measure`,
    usually :meth:`do_task`, and for real hardware :meth:`do_set_attr`,
    :meth:`get_attr`, :meth:`reset` and :meth:`close`. Raise ``RuntimeError`` from
    ``__init__`` when the instrument cannot be reached: the node retries later.
    """

    driver: ModelInterface
    key: tuple[str, str]
    constants: dict[str, Any]
    """Constant metadata of this component (the driver's constants are copied in)."""

    def __init__(self, driver: ModelInterface, key: tuple[str, str], **kwargs: Any) -> None:
        self.driver = driver
        self.key = key
        self.constants = dict(driver.constants)

    @abstractmethod
    def attrs(self) -> dict[str, Attr]:
        """All attributes of this component."""

    @abstractmethod
    def capabilities(self) -> set[str]:
        """The techniques (``technique_name`` of a task) this component can run."""

    def set_attr(self, attr: str, val: Any) -> Any:
        """Validate ``val`` for ``attr`` and set it; returns the coerced value.

        Raises ``AttributeError`` for an unknown or read-only attr and
        :class:`~tomato_mqtt.driver.validate.TaskValidationError` (a ``ValueError``) for a
        value it cannot take. Override :meth:`do_set_attr` to talk to the instrument.
        """
        attrs = self.attrs()
        if attr not in attrs:
            known = ", ".join(sorted(attrs)) or "none"
            raise AttributeError(f"unknown attr {attr!r} (known: {known})")
        spec = attrs[attr].spec()
        if not spec.rw:
            raise AttributeError(f"attr {attr!r} is read-only")
        coerced = coerce_value(attr, spec, val)
        self.do_set_attr(attr, coerced)
        return coerced

    def do_set_attr(self, attr: str, val: Any) -> None:
        """Apply an already validated value. Default: store it as ``self.<attr>``."""
        setattr(self, attr, val)

    def get_attr(self, attr: str) -> Any:
        """The current value of ``attr``. Default: ``self.<attr>``."""
        if attr not in self.attrs():
            raise AttributeError(f"unknown attr {attr!r}")
        return getattr(self, attr)

    data_units: dict[str, str] = {}
    """Variable -> units as the file should spell them (``"MHz"``, ``"bytes"``): a
    quantity of that variable is converted to them and labelled with this exact string.
    Without an entry, a quantity keeps its own units, labelled as pint names them."""

    shared_clock: bool = False
    """True when :meth:`do_task` never waits (a simulator, a read of memory or of a buffer
    the instrument fills): tasks sampling every 50 ms or faster are then called from one
    thread the node shares among such components, not from a thread of their own that
    wakes up for every point (driver/clock.py). A call that waits would delay every
    other component on that clock: leave it False for anything that talks to an
    instrument."""

    block_interval: float | None = None
    """Seconds between :meth:`do_task_block` calls; set it to make this a *bulk* device.

    A bulk device is not called once per ``sampling_interval``: it measures on its own
    (hardware buffer, acquisition thread) and hands over every point it took since the
    previous call as a :class:`~tomato_mqtt.driver.block.Block`. See docs/drivers.md."""

    def do_task_block(self, task: TaskSpec, t_start: float, t_now: float) -> Block | None:
        """Bulk devices: the points of ``task`` taken since the previous call, or None.

        Called every :attr:`block_interval` seconds while the task runs (the first call
        one interval after ``t_start``), and once more when it ends or is stopped, to
        collect the rest. ``t_now`` is the wall time of the call. Each point's ``uts``
        is when it was taken; the task's point count is the sum of the blocks' lengths.
        """
        raise NotImplementedError(
            f"{type(self).__name__} sets block_interval but does not implement do_task_block"
        )

    def do_task(self, task: TaskSpec, t_start: float, t_now: float) -> Mapping[str, Any] | None:
        """Take ONE point of ``task``: a mapping of variable name to value, or None.

        Values are float, int, str, bool, None or ``pint.Quantity`` (sent as magnitude
        plus units). ``t_start`` is the wall time the task started and ``t_now`` the
        scheduled time of this point (both ``time.time()`` seconds). Default: one
        :meth:`do_measure`.
        """
        return self.do_measure()

    @abstractmethod
    def do_measure(self) -> Mapping[str, Any] | None:
        """One measurement with the current settings, outside any task."""

    def reset(self) -> None:  # noqa: B027 (an optional hook: most devices need none)
        """Put the component into its documented safe state (called after each job)."""

    def close(self) -> None:  # noqa: B027 (an optional hook)
        """Release the instrument (port, handle); called when the component goes away."""

    def status(self) -> dict[str, Any]:
        """The values of the attrs declared with ``status=True``."""
        return {k: self.get_attr(k) for k, a in self.attrs().items() if a.status}


class ModelInterface(ABC):
    """The driver: one instance per node, creates a :class:`ModelDevice` per component.

    A driver package exposes a subclass (conventionally ``DriverInterface``) under the
    entry-point group ``tomato_mqtt.drivers``.
    """

    idle_measurement_interval: float | None = None
    """Seconds between :meth:`ModelDevice.do_measure` calls while no task runs (None: off)."""

    settings: dict[str, Any]
    """The ``[drivers.<name>]`` table of the node's settings.toml."""

    constants: dict[str, Any]
    """Driver-wide constants, copied into every device's constants."""

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        self.settings = dict(settings) if settings is not None else {}
        # a class's own ``constants = {...}`` is kept, copied (it was replaced by {} here,
        # and its devices had none: a driver author's tour)
        self.constants = dict(getattr(type(self), "constants", None) or {})

    @abstractmethod
    def DeviceFactory(self, key: tuple[str, str], **kwargs: Any) -> ModelDevice:
        """Create the device for ``key = (address, channel)``; RuntimeError: retry later."""
