"""What the scheduler loads after start, off the path that `tomato start` waits on.

dgbowl-schemas and pint take ~0.4 CPU-s to load. The first ``ketchup submit`` needs
them, `tomato start` does not: loaded at once, they compete for the (two) cores with
the services' own start-up and the nodes' registration. So the scheduler loads them
once every component has registered (or said why it cannot), and at the latest
:data:`WARM_UP_LATEST` seconds after start.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

from tomato_mqtt.config.devices import Layout
from tomato_mqtt.wire.messages import ComponentMeta

__all__ = ["WARM_UP_LATEST", "settled", "warm_up_payloads", "warm_up_when"]

#: s, the warm-up runs at the latest this long after start (components that never register)
WARM_UP_LATEST = 10.0


def settled(layout: Layout, metas: Mapping[str, ComponentMeta]) -> bool:
    """Every component of the layout has registered, or said why it cannot."""
    return all(
        (m := metas.get(name)) is not None and (m.registered or bool(m.error))
        for name in layout.components
    )


async def warm_up_when(ready: asyncio.Event, latest: float = WARM_UP_LATEST) -> None:
    """Load the payload schemas and pint once ``ready`` is set (or after ``latest`` s)."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(ready.wait(), latest)
    await asyncio.to_thread(warm_up_payloads)


def warm_up_payloads() -> None:
    """Load dgbowl-schemas and pint now, not while the first ``ketchup submit`` waits."""
    from tomato_mqtt.config.payloads import PayloadError, parse_payload

    with contextlib.suppress(PayloadError):
        parse_payload({"version": "2.2", "sample": {"name": "warm-up"}, "method": []})
    with contextlib.suppress(Exception):
        from tomato_mqtt.driver.validate import coerce_value  # noqa: F401 - pint, once
