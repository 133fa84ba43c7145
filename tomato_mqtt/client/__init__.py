"""The Python client of tomato-mqtt: what the CLI does, from a script.

- :class:`Tomato` (synchronous) and :class:`AsyncTomato` (asyncio), each connected from
  settings (``Tomato.from_settings()``) or a URL (``Tomato("mqtt://lab-pc:1883", "lab1")``);
- ``submit(file | dict) -> Job``; ``Job.status()``, ``wait(timeout)``, ``cancel()``,
  ``snapshot()`` (an ``xarray.DataTree``, or a file with a path), ``results()``,
  ``stream(timeout)`` (live data batches) and ``follow(timeout)`` (progress);
- ``pipelines()``, ``pipeline(name)``, ``pipeline_load/eject/ready``;
  ``component_get/set`` with a component named as ``passata`` names it (``names.py``).

A layer of its own between the transport and the CLI (import-linter keeps it there):
the CLI makes its requests through :class:`Tomato`. Importing this package is light;
:class:`AsyncTomato` (pydantic, asyncio) is imported when first named. See
``docs/client.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tomato_mqtt.client.progress import FINAL, Progress
from tomato_mqtt.client.sync import Job, Tomato

if TYPE_CHECKING:
    from tomato_mqtt.client.aio import AsyncTomato, ClientError
    from tomato_mqtt.config.payloads import PayloadError

__all__ = ["FINAL", "AsyncTomato", "ClientError", "Job", "PayloadError", "Progress", "Tomato"]


def __getattr__(name: str) -> Any:
    if name in ("AsyncTomato", "ClientError"):
        from tomato_mqtt.client import aio

        return getattr(aio, name)
    if name == "PayloadError":  # what submit() raises for a payload file it cannot read
        from tomato_mqtt.config.payloads import PayloadError

        return PayloadError
    raise AttributeError(name)
