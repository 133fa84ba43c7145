"""The driver API: what a driver package implements and what a node runs it with.

Pure: no MQTT here. :mod:`~tomato_mqtt.driver.spec` (the wire descriptions) is light;
everything else needs pint and is imported on first use, so code that only reads specs
(messages, CLI) does not pay for it. See docs/drivers.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tomato_mqtt.driver.spec import AttrSpec, TaskSpec

if TYPE_CHECKING:
    from tomato_mqtt.driver.base import Attr, ModelDevice, ModelInterface
    from tomato_mqtt.driver.block import Block, BlockError
    from tomato_mqtt.driver.discovery import (
        DriverLoadError,
        DriverNotFound,
        available_drivers,
        load_driver,
    )
    from tomato_mqtt.driver.runner import ComponentRunner, Point, TaskEnd
    from tomato_mqtt.driver.validate import (
        TaskValidationError,
        coerce_value,
        to_jsonable,
        validate_task,
    )

__all__ = [
    "Attr",
    "AttrSpec",
    "Block",
    "BlockError",
    "ComponentRunner",
    "DriverLoadError",
    "DriverNotFound",
    "ModelDevice",
    "ModelInterface",
    "Point",
    "TaskEnd",
    "TaskSpec",
    "TaskValidationError",
    "available_drivers",
    "coerce_value",
    "load_driver",
    "to_jsonable",
    "validate_task",
]

_WHERE = {
    "Attr": "base",
    "ModelDevice": "base",
    "ModelInterface": "base",
    "Block": "block",
    "BlockError": "block",
    "ComponentRunner": "runner",
    "Point": "points",
    "TaskEnd": "points",
    "DriverLoadError": "discovery",
    "DriverNotFound": "discovery",
    "available_drivers": "discovery",
    "load_driver": "discovery",
    "TaskValidationError": "validate",
    "coerce_value": "validate",
    "to_jsonable": "validate",
    "validate_task": "validate",
}


def __getattr__(name: str) -> Any:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
