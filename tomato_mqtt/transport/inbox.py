"""The client's inbound queue and its overflow policy (the only place messages wait).

paho's callback hands each message here and returns: handler subscriptions (replies)
are resolved at once, everything else waits for the service's own task. At most
``max_droppable`` messages of *droppable* subscriptions (data batches, which every
node keeps in its spool and the recorder asks to replay when it sees a gap) wait;
beyond that they are dropped and counted in :attr:`Inbox.dropped`. Commands, replies
and statuses are never dropped: they are small and come at human or heartbeat rates.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tomato_mqtt.transport.types import Message, MqttTimeout, topic_matches
from tomato_mqtt.waits import wait_for

__all__ = ["Inbox", "Subscription"]

log = logging.getLogger(__name__)


@dataclass
class Subscription:
    filter: str
    qos: int
    handler: Callable[[Message], None] | None = None
    droppable: bool = False


class Inbox:
    """Routes a message to its handlers or queues it (bounded for droppable ones)."""

    def __init__(self, owner: str, max_droppable: int) -> None:
        self.owner = owner
        self._queue: asyncio.Queue[tuple[Message, bool]] = asyncio.Queue()
        self._max_droppable = max_droppable
        self._droppable_queued = 0
        self.dropped = 0  # droppable messages dropped because the consumer fell behind

    def deliver(self, m: Message, subs: Iterable[Subscription]) -> None:
        """Hand ``m`` to the handlers whose filter matches it, else queue it."""
        routed = False
        droppable = True
        for sub in subs:
            if not topic_matches(sub.filter, m.topic):
                continue
            if sub.handler is not None:
                routed = True
                try:
                    sub.handler(m)
                except Exception:  # a handler must not kill the client
                    log.exception("message handler for %s failed", sub.filter)
            else:
                droppable = droppable and sub.droppable
        if routed:
            return
        if droppable:
            if self._droppable_queued >= self._max_droppable:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.warning(
                        "%s: consumer behind, %d droppable message(s) dropped so far "
                        "(data is replayed from the nodes' spools)",
                        self.owner,
                        self.dropped,
                    )
                return
            self._droppable_queued += 1
        self._queue.put_nowait((m, droppable))

    async def get(self) -> Message:
        return self._taken(await self._queue.get())

    async def get_within(self, timeout: float) -> Message:
        try:
            return self._taken(await wait_for(self._queue.get(), timeout))
        except asyncio.TimeoutError:
            raise MqttTimeout(f"no message within {timeout:g} s") from None

    def get_nowait(self) -> Message | None:
        try:
            return self._taken(self._queue.get_nowait())
        except asyncio.QueueEmpty:
            return None

    def _taken(self, item: tuple[Message, bool]) -> Message:
        msg, droppable = item
        if droppable:
            self._droppable_queued -= 1
        return msg
