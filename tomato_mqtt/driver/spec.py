"""The wire-level description of a component's attributes and of one task.

Pure pydantic, no pint: these models travel inside component meta and ``task_start``
commands, and the CLI and dashboards read them without importing any driver code.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

__all__ = ["AttrSpec", "AttrType", "TaskSpec"]

AttrType = Literal["float", "int", "str", "bool", "quantity"]


class AttrSpec(BaseModel):
    """What a client may know about one attribute of a component."""

    model_config = ConfigDict(extra="forbid")

    type: AttrType
    units: str | None = None
    """For ``quantity``: the canonical units; for ``float``/``int``: informative."""
    rw: bool = False
    status: bool = False
    """Include the attribute's value in the component status."""
    minimum: float | None = None
    """For ``quantity``: the magnitude in :attr:`units`."""
    maximum: float | None = None
    options: list[str | int | float] | None = None

    @model_validator(mode="after")
    def _limits_in_order(self) -> AttrSpec:
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"minimum {self.minimum} is above maximum {self.maximum}")
        return self


class TaskSpec(BaseModel):
    """One task of a payload's method, as sent to the component that runs it.

    Tolerant of extra fields like every wire message, so a newer scheduler can add some.
    """

    model_config = ConfigDict(extra="ignore")

    technique_name: str
    max_duration: float = Field(ge=0, allow_inf_nan=False)
    """Seconds the task lasts; it takes a point every ``sampling_interval``, the last one
    at or before ``max_duration`` (:attr:`npoints`)."""
    sampling_interval: float = Field(gt=0, allow_inf_nan=False)
    """Seconds between points."""
    task_params: dict[str, JsonValue] = Field(default_factory=dict)
    task_name: str | None = None
    job: int | None = None
    """The job this task belongs to (None for ad-hoc tasks)."""
    index: int | None = None
    """Position of this task in the payload's method."""

    @property
    def npoints(self) -> int:
        """How many points the task takes when it runs to the end: one at each
        ``k * sampling_interval`` within ``max_duration``, as tomato's driver loop takes
        them (1 s at 0.1 s: 10; 1 s at 0.6 s: 1, not ``round``'s 2, which ran 20 % past
        the task's end). A quotient a hair below a whole number (0.3 / 0.1 =
        2.9999999999999996) counts as that number."""
        return math.floor(self.max_duration / self.sampling_interval + 1e-6)
