"""What the scheduler builds and loads after start, off the path `tomato start` waits on.

The AsyncAPI document (``meta/schema``) takes ~0.07-0.2 CPU-s to build: it is built once
per settings, in a thread (:class:`SchemaDoc`), once the components have registered (at
the latest :data:`WARM_UP_LATEST` s after start): built at once, it took its share of
the two cores from the node's imports and the broker's start, what `tomato start` waits
for. Not in a thread of low priority: one that holds the GIL while the OS leaves it
waiting for a core stalls every other thread of its process (in a test's in-process
stack, the node's clock: a loaded CI run missed 3 of 5 deadlines).

dgbowl-schemas and pint take ~0.4 CPU-s to load. The first ``ketchup submit`` needs
them, `tomato start` does not: loaded at once, they compete for the (two) cores with
the services' own start-up and the nodes' registration. So the scheduler loads them
once every component has registered (or said why it cannot), and at the latest
:data:`WARM_UP_LATEST` seconds after start.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping

from tomato_mqtt.config.devices import Layout
from tomato_mqtt.config.settings import Settings
from tomato_mqtt.services.idle import run_when_idle
from tomato_mqtt.waits import wait_for
from tomato_mqtt.wire.messages import ComponentMeta

__all__ = ["WARM_UP_LATEST", "SchemaDoc", "settled", "warm_up_payloads", "warm_up_when"]

#: s, the warm-up runs at the latest this long after start (components that never register)
WARM_UP_LATEST = 10.0


def settled(layout: Layout, metas: Mapping[str, ComponentMeta]) -> bool:
    """Every component of the layout has registered, or said why it cannot."""
    return all(
        (m := metas.get(name)) is not None and (m.registered or bool(m.error))
        for name in layout.components
    )


async def warm_up_when(
    ready: asyncio.Event, load: Callable[[], None], latest: float = WARM_UP_LATEST
) -> None:
    """Run ``load`` in a thread of low priority (services/idle.py) once ``ready`` is set
    (or after ``latest`` s)."""
    with contextlib.suppress(asyncio.TimeoutError):
        await wait_for(ready.wait(), latest)
    await run_when_idle(load, "scheduler warm-up")


class SchemaDoc:
    """The compact AsyncAPI document, built once per settings (a reload may change the
    servers in it), in a thread so that the event loop keeps serving meanwhile."""

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self._built: tuple[Settings, bytes] | None = None

    async def get(self, settings: Settings) -> bytes:
        from tomato_mqtt.wire.asyncapi import schema_json

        if self._built is None or self._built[0] is not settings:
            doc = await asyncio.to_thread(schema_json, self.instance, settings, compact=True)
            self._built = (settings, doc.encode())
        return self._built[1]


def warm_up_payloads() -> None:
    """Load dgbowl-schemas and PyYAML now, not while the first ``ketchup submit`` waits.

    Not pint: it (and numpy) is ~22 MB of RSS for as long as the scheduler runs, and only
    a duration given as text or a quantity-valued task parameter needs it; the first
    such payload loads it (~0.3 s once).
    """
    from tomato_mqtt.config.payloads import (
        SUPPORTED_VERSIONS,
        PayloadError,
        parse_payload,
        read_payload_text,
    )

    # every version's schema and its way up to the latest (the first payload of version
    # 1.0 after a start took 8.6 ms instead of 1.6), and the YAML reader: ``ketchup
    # submit`` sends its payload as text
    for version in SUPPORTED_VERSIONS:
        with contextlib.suppress(PayloadError):
            text = f"version: '{version}'\nsample: {{name: warm-up}}\nmethod: []\n"
            parse_payload(read_payload_text(text, ""))
