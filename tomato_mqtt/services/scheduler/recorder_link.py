"""The scheduler's requests to the recorder, which survive a recorder restart.

A recorder killed with a request in hand (a ``finalize`` at the end of a job) takes it
with it; its successor announces a new ``started_at`` in its retained status, and every
pending request is sent again at once instead of waiting out its timeout. While no
answer comes, a request is also sent again (the same id: the recorder carries it out
once and answers every copy), 1, 2, 4 … s apart: a broker with full queues may drop
the request or its answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from pydantic import JsonValue

from tomato_mqtt.transport.rpc import NoResponder, Requester
from tomato_mqtt.wire.messages import RecorderStatus
from tomato_mqtt.wire.topics import Topics

__all__ = ["RecorderLink"]

log = logging.getLogger(__name__)


class RecorderLink:
    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self._started: float | None = None
        self._gen = 0
        self._cond = asyncio.Condition()

    async def seen(self, rst: RecorderStatus) -> bool:
        """Count recorder (re)starts: a request the old recorder took is lost with it.
        True when this status counted one (pending requests go again)."""
        if rst.state != "online" or rst.started_at is None:
            return False
        if rst.started_at != self._started:
            self._started = rst.started_at
            await self.back()
            return True
        return False

    async def back(self) -> None:
        """The recorder answers again after it was taken for gone (frozen, cut off): a
        request sent meanwhile may have been lost with its connection, and waited out
        its resends' back-off (17 s after a 60 s freeze: a fault-injection review). Sent
        again at once, as after a restart (the same work: the recorder's finalizes of one
        job are carried out one after the other)."""
        async with self._cond:
            self._gen += 1
            self._cond.notify_all()

    async def _restarted(self, gen: int) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self._gen != gen)

    async def request(
        self, requester: Requester, op: str, args: Mapping[str, JsonValue], timeout: float
    ) -> tuple[bool, str, Any]:
        """A request to the recorder, sent again at once if the recorder restarts (a
        killed recorder takes the request with it; its successor must not be waited for
        until the timeout)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            gen = self._gen
            left = max(0.1, deadline - loop.time())
            req = asyncio.ensure_future(
                # sent again while no answer comes: a finalize or its answer lost by a
                # broker (full queues) kept a finished job `r` for the whole timeout
                requester.request(
                    self.topics.recorder_cmd(op), args, timeout=left, who="recorder", resend=True
                )
            )
            restarted = asyncio.ensure_future(self._restarted(gen))
            try:
                done, _ = await asyncio.wait({req, restarted}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (req, restarted):
                    if not t.done():
                        t.cancel()
                await asyncio.gather(req, restarted, return_exceptions=True)
            if req in done and not req.cancelled():
                try:
                    reply = req.result()
                except NoResponder as e:
                    return False, str(e), None
                if not reply.success:  # the code says whether trying again may help
                    return False, reply.msg, {"code": reply.code}
                return True, reply.msg, reply.data
            if loop.time() >= deadline:
                return False, f"no recorder answered {op} within {timeout:g} s", None
            log.info("the recorder restarted while %s was pending: sending it again", op)
