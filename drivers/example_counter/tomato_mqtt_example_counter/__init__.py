"""The example counter: tomato's ``example_counter`` on the tomato-mqtt driver API.

Techniques ``count`` (whole seconds since the task started) and ``random`` (uniform
between ``min`` and ``max``); attrs ``min``, ``max`` (floats, default 0 and 10), ``param``
(a time, at least 0.1 s, default 1 s) and ``choice`` (red, green or blue, default green),
all read-write, none in the status. Every point carries ``val`` and the four attrs.
Tomato's example payloads run on it unchanged. :meth:`Device.reset` (after each job)
restores the defaults.

Testing aids, read from ``[drivers.example_counter]`` in settings.toml (or from the
device's keyword arguments, which win):

``fail_on_connect``
    ``true``: every connection attempt raises ``RuntimeError`` (the node keeps
    retrying); an integer ``n``: the first ``n`` attempts per component fail.
``connect_requires_file``
    a path; connecting fails until that file exists, so a test decides when the
    "instrument" is plugged in.
``fail_task_after``
    an integer ``n``: ``do_task`` raises after ``n`` points of every task.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pint

from tomato_mqtt.driver import Attr, ModelDevice, ModelInterface, TaskSpec

__all__ = ["Device", "DriverInterface"]

CHOICES = ["red", "green", "blue"]


class Device(ModelDevice):
    param: pint.Quantity[Any]
    choice: str
    #: a simulated instrument: do_task never waits, so fast tasks share the node's clock
    shared_clock = True

    def __init__(self, driver: DriverInterface, key: tuple[str, str], **kwargs: Any) -> None:
        super().__init__(driver, key, **kwargs)
        opts = {**driver.settings, **kwargs}
        driver.connect(key, opts)  # raises RuntimeError when the "instrument" is absent
        self.fail_task_after: int | None = (
            int(opts["fail_task_after"]) if opts.get("fail_task_after") is not None else None
        )
        self.constants["example_meta"] = "example string"
        # ints until a task sets them (then floats): tomato's counter writes its defaults
        # as int64 in the file, and a reader comparing dtypes notices
        self.min: float = 0
        self.max: float = 10
        self.param = pint.Quantity(1.0, "second")
        self.choice = "green"
        self._task_points = 0
        self._task_start: float | None = None

    def attrs(self) -> dict[str, Attr]:
        return {
            "min": Attr(type=float, rw=True),
            "max": Attr(type=float, rw=True),
            "param": Attr(type=pint.Quantity, rw=True, units="second", minimum=0.1),
            "choice": Attr(type=str, rw=True, options=CHOICES),
        }

    def capabilities(self) -> set[str]:
        return {"count", "random"}

    def do_task(self, task: TaskSpec, t_start: float, t_now: float) -> Mapping[str, Any]:
        if self.fail_task_after is not None:
            if self._task_start != t_start:  # a new task
                self._task_start, self._task_points = t_start, 0
            if self._task_points >= self.fail_task_after:
                raise RuntimeError(f"simulated failure after {self._task_points} points")
            self._task_points += 1
        if task.technique_name == "count":
            # t_now - t_start of point k is k * sampling_interval up to float rounding
            # (~1e-7 s at today's epoch): do not let 0.9999999 count as 0
            val: float = math.floor(t_now - t_start + 1e-6)
        else:  # "random"; the runner only runs techniques in capabilities()
            val = random.uniform(self.min, self.max)
        return {"val": val, **self._attr_values()}

    def do_measure(self) -> Mapping[str, Any]:
        return {"val": random.uniform(self.min, self.max), **self._attr_values()}

    def _attr_values(self) -> dict[str, Any]:
        return {"min": self.min, "max": self.max, "param": self.param, "choice": self.choice}

    def reset(self) -> None:
        self.min, self.max = 0, 10
        self.param = pint.Quantity(1.0, "second")
        self.choice = "green"


class DriverInterface(ModelInterface):
    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        self.attempts: defaultdict[tuple[str, str], int] = defaultdict(int)

    def connect(self, key: tuple[str, str], opts: Mapping[str, Any]) -> None:
        """The simulated connection: honours the testing aids of the module docstring."""
        self.attempts[key] += 1
        fail = opts.get("fail_on_connect", False)
        if fail is True or (type(fail) is int and self.attempts[key] <= fail):
            raise RuntimeError(
                f"cannot connect to example counter {key[0]!r} (attempt {self.attempts[key]},"
                " fail_on_connect is set)"
            )
        path = opts.get("connect_requires_file")
        if path and not Path(str(path)).exists():
            raise RuntimeError(
                f"cannot connect to example counter {key[0]!r}: {path} does not exist"
                " (connect_requires_file is set)"
            )

    def DeviceFactory(self, key: tuple[str, str], **kwargs: Any) -> Device:
        return Device(self, key, **kwargs)
