"""Services in the test's own event loop, against the ``broker`` fixture: fast and real.

A test starts the scheduler, the recorder or a node as an asyncio task (no subprocess,
no imports to wait for), plays the other parts with a plain client, and stops what it
started. Used by the issue-9 tests (tests/test_reliability_inproc.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from tomato_mqtt.services.base import Service
from tomato_mqtt.transport.client import AsyncClient, BrokerURL, Message

__all__ = ["Collector", "client", "running"]


@contextlib.asynccontextmanager
async def running(svc: Service, ready: Callable[[], bool] | None = None) -> AsyncIterator[Any]:
    """Run ``svc`` as a task until the block ends; waits until it is connected."""
    task = asyncio.ensure_future(svc.run())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while not (svc.client is not None and svc.client.is_connected and (ready is None or ready())):
        if task.done():
            task.result()  # raises what stopped it
        if loop.time() > deadline:
            raise TimeoutError(f"{svc.client_id} did not come up")
        await asyncio.sleep(0.01)
    try:
        yield svc
    finally:
        svc.request_stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 20)


@contextlib.asynccontextmanager
async def client(url: str) -> AsyncIterator[AsyncClient]:
    c = AsyncClient(BrokerURL.parse(url))
    await c.connect(10, retry=True)
    try:
        yield c
    finally:
        await c.disconnect()


class Collector:
    """Messages of one subscription, waited for by predicate."""

    def __init__(self) -> None:
        self.items: list[Message] = []
        self._cond = asyncio.Condition()
        self._loop = asyncio.get_running_loop()

    def __call__(self, msg: Message) -> None:  # paho's thread: hand over only
        self._loop.call_soon_threadsafe(self._add, msg)

    def _add(self, msg: Message) -> None:
        self.items.append(msg)
        self._loop.create_task(self._notify())

    async def _notify(self) -> None:
        async with self._cond:
            self._cond.notify_all()

    async def wait(self, pred: Callable[[Message], bool], timeout: float = 10) -> Message:
        async def find() -> Message:
            async with self._cond:
                while True:
                    for m in self.items:
                        if pred(m):
                            return m
                    await self._cond.wait()

        return await asyncio.wait_for(find(), timeout)


def write_settings(appdir: Path, instance: str, port: int, extra: str = "") -> None:
    """A settings.toml for an in-process scheduler on the test's broker."""
    appdir.mkdir(parents=True, exist_ok=True)
    (appdir / "settings.toml").write_text(
        f'[mqtt]\ninstance = "{instance}"\nport = {port}\n'
        "[broker]\nembedded = false\n"
        "[scheduler]\nheartbeat = 0.2\nlost_after = 1.0\nnode_grace_period = 5.0\n"
        f"{extra}"
    )
