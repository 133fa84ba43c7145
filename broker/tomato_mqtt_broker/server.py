"""The embedded broker itself: amqtt, with the changes of :func:`_broker_class`, run by
:class:`EmbeddedBroker` and :func:`run_broker` (see :mod:`tomato_mqtt_broker`)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import Iterable
from typing import Any

from tomato_mqtt.waits import wait_for
from tomato_mqtt.wire.slugs import shown_client_id
from tomato_mqtt_broker.config import LOCAL_ORIGIN, BrokerConfig

__all__ = ["EmbeddedBroker", "run_broker"]

log = logging.getLogger("tomato_mqtt_broker")


#: the QoS a message was published with, while it is broadcast (see _Broker)
_PUB_QOS: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "tomato_pub_qos", default=None
)


class _QosQueue(asyncio.Queue):  # type: ignore[type-arg]
    """amqtt's broadcast queue; taking a message sets its published QoS for the rest of
    the broadcast task that took it (each message is broadcast by a task of its own)."""

    async def get(self) -> Any:
        item = await super().get()
        _PUB_QOS.set(item.get("pub_qos") if isinstance(item, dict) else None)
        return item


class _Backlog:
    """What the broker holds for one client: bytes of messages on their way to it (in the
    connection's buffer, or waiting for its acknowledgement), and what it gave up."""

    __slots__ = ("buffered", "bytes", "dropped", "since", "unacked")

    def __init__(self) -> None:
        self.bytes = 0
        #: bytes in the connections' write buffers, summed at the broker's last tick
        #: (a login's, the people's): a delivery given up after DELIVERY_WAIT leaves its
        #: message there, no longer in ``bytes``
        self.buffered = 0
        #: messages not sent to it since ``since``: over max_queued_bytes
        self.dropped = 0
        self.since = 0.0
        #: QoS 1/2 messages it did not acknowledge in time (amqtt does not send them again)
        self.unacked = 0

    @property
    def held(self) -> int:
        """What it holds: the messages on their way, or what waits in the write buffers,
        whichever is more (much of the one is in the other)."""
        return max(self.bytes, self.buffered)

    def drop(self) -> bool:
        """One more message not sent to it; True for the first of a spell (to be told)."""
        first = not self.dropped
        if first:
            self.since = time.time()
        self.dropped += 1
        return first


def _backlog(session: Any) -> _Backlog:
    b = getattr(session, "tomato_backlog", None)
    if b is None:
        b = session.tomato_backlog = _Backlog()
    return b


def _transport(writer: Any) -> Any:
    """The asyncio transport under amqtt's writer adapter (TCP, TLS or WebSocket), or None."""
    inner = getattr(writer, "_writer", None) or getattr(writer, "_protocol", None)
    return getattr(inner, "transport", None)


def _peer_closed(writer: Any) -> bool:
    """Whether the client of this connection has closed it already (a peek: b"" once its
    end is closed and every byte it sent was read). A CONNECT that waited in the listen
    queue while the broker restarted (the supervisor holds the port) may come from a
    client that gave up on it long ago, and is connected again by now."""
    transport = _transport(writer)
    sock = transport.get_extra_info("socket") if transport is not None else None
    dontwait = getattr(socket, "MSG_DONTWAIT", None)  # (not on Windows: not looked at)
    if sock is None or dontwait is None:
        return False
    try:
        with socket.socket(fileno=os.dup(sock.fileno())) as peek:
            return peek.recv(1, socket.MSG_PEEK | dontwait) == b""
    except (BlockingIOError, InterruptedError):
        return False  # open, nothing more sent
    except OSError:
        return True  # reset


def _buffered(handler: Any) -> int:
    """Bytes written to a client's connection that it has not taken yet."""
    try:
        return int(_transport(handler.writer).get_write_buffer_size())
    except Exception:  # no transport (closed, or an adapter without one)
        return 0


#: seconds a message may take to reach a client (taken and, at QoS 1/2, acknowledged):
#: amqtt waits 5 s for an acknowledgement; a write stuck behind a client that does not
#: read is given up too (amqtt would keep it, and every delivery after it, for ever)
DELIVERY_WAIT = 10.0


class _Delivery:
    """A client's protocol handler as a broadcast uses it: publishes at most at ``most``
    (None: at the QoS asked) and counts the bytes on their way in ``backlog``."""

    def __init__(
        self,
        handler: Any,
        most: int | None,
        backlog: _Backlog,
        login: _Backlog | None = None,
        people: _Backlog | None = None,
    ) -> None:
        self._handler = handler
        self._most = most
        self._backlog = backlog
        self._login = login  # what all connections of its login hold (secured brokers)
        self._people = people  # what people's logins hold together (one of theirs)

    def mqtt_publish(
        self, topic: str, data: Any, qos: int | None, retain: bool, *a: Any, **k: Any
    ) -> Any:
        if self._most is not None:
            qos = self._most if qos is None else min(qos, self._most)
        sending = self._handler.mqtt_publish(topic, data, qos, retain, *a, **k)
        # counted now, not when the delivery's task first runs: a broadcast decides for
        # every subscriber before any of its tasks runs, so all of them passed a bound
        # they then went over together (1.76 times the people's bound: a review); given
        # back when the task ends, however it ends (cancelled before it ran too)
        size = len(data) if data else 0
        held = [b for b in (self._backlog, self._login, self._people) if b is not None]
        for b in held:
            b.bytes += size
        task = asyncio.ensure_future(self._carry(sending, topic, data))
        task.add_done_callback(lambda _t: _release(held, size))
        return task

    async def _carry(self, sending: Any, topic: str, data: Any) -> None:
        # None, not amqtt's message: amqtt keeps each finished delivery task, with its
        # result, until every task started before it has finished too
        backlog = self._backlog
        try:
            await wait_for(sending, DELIVERY_WAIT)
        except Exception as e:
            from amqtt.errors import ProtocolHandlerError

            if isinstance(e, (ConnectionError, asyncio.IncompleteReadError)):
                return  # the connection went: its end is told where it is handled
            if not isinstance(e, (TimeoutError, asyncio.TimeoutError, ProtocolHandlerError)):
                raise
            # not taken or not acknowledged in time: amqtt waits 5 s for the
            # acknowledgement and does not send the message again. Given up while it was
            # being written, the message stayed in amqtt's in-flight list for good (a
            # review: 7 left per stall of a client): it goes
            session = self._handler.session
            inflight = getattr(session, "inflight_out", None)
            if isinstance(inflight, dict):
                for pid, m in list(inflight.items()):
                    if getattr(m, "data", None) is data and getattr(m, "topic", None) == topic:
                        inflight.pop(pid, None)
            if not backlog.unacked:
                log.warning(
                    "client %r (login %r) did not take or acknowledge a message within "
                    "%g s: it is not sent again, if it did not arrive (the count follows "
                    "when the client takes its messages again)",
                    shown_client_id(getattr(session, "client_id", None) or ""),
                    getattr(session, "username", None),
                    DELIVERY_WAIT,
                )
            backlog.unacked += 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handler, name)


def _release(held: list[_Backlog], size: int) -> None:
    for b in held:
        b.bytes -= size


#: s a new connection has to send its CONNECT; amqtt waited for ever (300 connections
#: that sent nothing held 300 descriptors of the broker)
CONNECT_WAIT = 10.0


#: topics whose matching filters a broker remembers (_Broker._filters_of); past it, it
#: starts again (topics with job ids and client ids in them never end)
MATCHED_TOPICS = 4096


class _Subscriptions(dict):  # type: ignore[type-arg]
    """amqtt's table of topic filters -> subscribers, iterated over a copy of its keys.

    amqtt iterates it while awaiting (sending a reconnected session the retained messages
    of its filters): a filter added or removed meanwhile by another client ended that
    loop with "dictionary changed size during iteration". With a copy, the table can
    drop filters nobody holds any more (see ``_Broker._del_subscription``).

    ``changes`` counts the filters added and removed: what a topic matches stays known
    until it moves (``_Broker._filters_of``).
    """

    changes = 0

    def __iter__(self) -> Any:
        return iter(list(super().keys()))

    def items(self) -> Any:
        return list(super().items())

    def __setitem__(self, key: Any, value: Any) -> None:
        if key not in self:
            self.changes += 1
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        self.changes += 1

    def pop(self, *args: Any) -> Any:
        self.changes += 1
        return super().pop(*args)

    def popitem(self) -> Any:
        self.changes += 1
        return super().popitem()

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self.changes += 1
        return super().setdefault(key, default)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.changes += 1
        super().update(*args, **kwargs)

    def clear(self) -> None:
        self.changes += 1
        super().clear()


#: the key of a filter tree's node under which the filters ending there are kept: not a
#: string, so no level of a filter or topic is this (amqtt takes U+0000 in both: a
#: filter ``x/\0`` beside ``x`` had broken every later broadcast, found by a review)
_ENDS = None

#: topics longer than this are matched each time, not remembered (a topic may be 64 KB:
#: MATCHED_TOPICS of those would have held ~270 MB)
MATCHED_TOPIC_CHARS = 512


def _filter_tree(filters: Iterable[str]) -> dict[str | None, Any]:
    """Topic filters as a tree of their levels: ``a/+/c`` is ``{"a": {"+": {"c": {_ENDS:
    ["a/+/c"]}}}}``."""
    root: dict[str | None, Any] = {}
    for f in filters:
        node = root
        for level in f.split("/"):
            node = node.setdefault(level, {})
        node.setdefault(_ENDS, []).append(f)
    return root


def _offered(tree: dict[str | None, Any], levels: list[str]) -> dict[str, None]:
    """The filters of ``tree`` that may match a topic of these levels (in order, once
    each): those with its level, ``+`` or ``#`` at each level. amqtt's own match has the
    last word (``$`` topics, malformed filters). Each node of the tree is visited at
    most once per level (a last will's topic ``+/+/...`` once doubled the nodes at every
    level: 22 levels stopped the broker for 2.7 s, found by a review)."""
    out: dict[str, None] = {}
    nodes = [tree]
    for level in levels:
        nxt: dict[int, dict[str | None, Any]] = {}
        for node in nodes:
            out.update(dict.fromkeys(node.get("#", {}).get(_ENDS, ())))
            for key in (level, "+"):
                child = node.get(key)
                if child is not None:
                    nxt[id(child)] = child
        if not nxt:
            return out
        nodes = list(nxt.values())
    for node in nodes:
        out.update(dict.fromkeys(node.get("#", {}).get(_ENDS, ())))
        out.update(dict.fromkeys(node.get(_ENDS, ())))
    return out


class _Framed:
    """amqtt's reader of one connection, held to MQTT's framing and to a packet size.

    amqtt reads a packet's fixed header byte by byte, then its body as the packet's
    fields say, and takes a remaining length of up to 256 MB: one PUBLISH of 200 MB from a
    reader (a retained one, on her own request topic) held the broker's memory for good
    and was sent to the scheduler and the recorder at each of their restarts (a security
    review: the scheduler exited five times in a row). This reader follows the framing
    itself: a packet longer than ``limit`` closes the connection before its body is read,
    as Mosquitto's ``max_packet_size`` does (MQTT 3.1.1 has no other answer), and so does
    any read that does not fit the framing (a body read past its packet's end, a header
    read of more than a byte), so that no packet amqtt frames otherwise escapes the bound.
    """

    __slots__ = (
        "_inner",
        "_kind",
        "_left",
        "_length",
        "_limit",
        "_refuse",
        "_shift",
        "body_since",
        "pace",
        "refused",
    )

    def __init__(self, inner: Any, limit: int, refuse: Any) -> None:
        self._inner = inner
        self._limit = limit
        self._refuse = refuse  # called once, with the reason, when the connection goes
        self._left = 0  # body bytes of the current packet still to read
        self._shift = -1  # -1: at a packet's first byte; else the remaining length's
        self._length = 0
        self._kind = 0
        self.refused: str | None = None
        #: loop time since a packet's body is awaited (None: at a packet's header): a
        #: body not sent within BODY_WAIT closes the connection (see _Broker._tick)
        self.body_since: float | None = None
        #: awaited before each packet is read (a person's login: _Broker._paced)
        self.pace: Any = None

    async def read(self, n: int = -1) -> bytes:
        if self.refused is not None:
            raise ConnectionResetError(self.refused)
        if n == 0:  # an empty field (a will without payload): nothing to read
            return b""
        if self._left:
            if not 0 < n <= self._left:
                return self._broken(f"a read of {n} bytes, {self._left} left in the packet")
            data: bytes = await self._inner.read(n)
            self._left -= len(data)
            if not self._left:
                self.body_since = None
            return data
        if n != 1:
            return self._broken(f"a read of {n} bytes at a packet's header")
        data = await self._inner.read(1)
        if not data:
            return data
        if self._shift < 0:  # the packet's type and flags
            self._kind, self._shift, self._length = data[0] >> 4, 0, 0
            return data
        self._length |= (data[0] & 0x7F) << self._shift
        self._shift += 7
        if data[0] & 0x80:
            if self._shift >= 28:
                return self._broken("a remaining length of more than 4 bytes")
            return data
        self._shift, self._left = -1, self._length
        if self._length:
            self.body_since = asyncio.get_running_loop().time()
        if self._length > self._limit:
            what = "PUBLISH" if self._kind == 3 else f"packet of type {self._kind}"
            why = (
                f"a {what} of {self._length:,} bytes, over the broker's max_packet_bytes "
                f"({self._limit:,})"
            )
            self.refused = why
            self._refuse(why)
            raise ConnectionResetError(why)
        return data

    def _broken(self, what: str) -> bytes:
        why = f"packet framing broken ({what})"
        self.refused = why
        self._refuse(why)
        raise ConnectionResetError(why)

    def header_begins(self) -> None:
        """amqtt begins to read a packet's fixed header: this reader must be at one too.
        amqtt does not read every byte a packet's length announces (a PINGREQ's body, a
        CONNECT's trailing bytes): what it left would be read as the next packet, and a
        SUBSCRIBE of any size was read past the bound that way (a review)."""
        if self.refused is None and (self._left or self._shift >= 0):
            left = self._left if self._left else "part of its length"
            self._broken(f"{left} byte(s) of the packet before were not read")

    def stalled(self, why: str) -> None:
        """Its packet's body did not come in time: the connection goes (its read then
        ends, as the transport is aborted by the caller)."""
        if self.refused is None:
            self.refused = why
            self._refuse(why)

    def feed_eof(self) -> None:
        self._inner.feed_eof()


def _check_headers() -> None:
    """amqtt reads every packet's fixed header through ``MQTTFixedHeader.from_stream``:
    on a :class:`_Framed` reader, it first checks that the packet before was read whole
    (once per process; other readers are not touched)."""
    from amqtt.mqtt.packet import MQTTFixedHeader

    if getattr(MQTTFixedHeader.from_stream, "_tomato_checked", False):
        return
    read_header = MQTTFixedHeader.from_stream.__func__

    async def from_stream(cls: Any, reader: Any) -> Any:
        if isinstance(reader, _Framed):
            if reader.pace is not None:
                await reader.pace()
            reader.header_begins()
        return await read_header(cls, reader)

    from_stream._tomato_checked = True  # type: ignore[attr-defined]
    MQTTFixedHeader.from_stream = classmethod(from_stream)


def _ws_reader(websocket: Any) -> Any:
    """amqtt's WebSocket reader, without its made-up bytes: when the connection closed
    while it waited for more of a packet, it appended the last message it had read once
    more, again and again until the packet was full, and the broker published it (a
    review: 1,000 bytes sent, 10,000 published). It returns what came instead (amqtt
    then sees the connection end)."""
    import io

    from amqtt.adapters import WebSocketsReader
    from websockets.exceptions import ConnectionClosed

    class _Reader(WebSocketsReader):  # type: ignore[misc]
        async def _feed_buffer(self, n: int = 1) -> None:
            stream: Any = getattr(self, "_stream")  # noqa: B009 (amqtt types it loosely)
            buffer = bytearray(stream.read())
            while len(buffer) < n:
                try:
                    message = await self._protocol.recv()
                except ConnectionClosed:
                    break
                buffer.extend(message.encode("utf-8") if isinstance(message, str) else message)
            self._stream = io.BytesIO(buffer)

    return _Reader(websocket)


#: topic filters one session, or one login's sessions together, may hold (a script
#: waiting on 5,000 jobs holds 10,000)
MAX_FILTERS = 20_000

#: s a packet's body may take to arrive once its header came (8 MiB at ~140 kB/s): a
#: client that sent all but the last byte held its packet's memory for good, with no
#: keep-alive check while amqtt waited for the body (a review)
BODY_WAIT = 60.0


async def _unavailable(handler: Any, _authorize: bool) -> None:
    """CONNACK "server unavailable" (3) for a login that holds the most connections it
    may: its password was right, and "not authorised" sent people to check it."""
    from amqtt.mqtt.connack import SERVER_UNAVAILABLE, ConnackPacket

    await handler._send_packet(ConnackPacket.build(0, SERVER_UNAVAILABLE))


def _broker_class(
    listen_fd: int | None,
    open_stack: bool,
    max_queued: int,
    max_offline: int,
    max_packet: int = 8 * 1024 * 1024,
    instance: str = "default",
    require_certificate: bool = False,
    max_per_login: int = 0,
    max_people: int = 0,
) -> Any:
    """amqtt's Broker, without its retained-message leak.

    On every new connection amqtt 0.12 sends the client the retained messages of *every*
    topic filter that *any* client subscribed to (``_handle_client_session`` loops over
    the broker-wide subscriptions). A client thus receives retained status it never
    asked for, whatever the ACL says, and the loop awaits while iterating a dict that
    other sessions change ("dictionary changed size during iteration" drops the client).
    Here retained messages go only to a session that really holds the subscription; the
    guard returns without awaiting, so that loop no longer yields either.
    """
    # heavy imports, only where a broker really runs
    import websockets
    from amqtt.broker import Broker
    from amqtt.contexts import Action, ListenerType
    from amqtt.errors import MQTTError
    from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
    from amqtt.utils import gen_client_id

    from tomato_mqtt_broker import security
    from tomato_mqtt_broker.security import PEOPLE, RoleAclPlugin

    retainable = _retainable(instance)
    _check_headers()

    class _Broker(Broker):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            plugins = getattr(self.plugins_manager, "_topic_plugins", [])
            self._acl = next((p for p in plugins if isinstance(p, RoleAclPlugin)), None)
            #: every accepted TCP connection: amqtt leaves some open at shutdown (one
            #: refused at CONNECT, garbage that never became a session), and an unclosed
            #: transport outlives the event loop
            self.connections: set[asyncio.StreamWriter] = set()
            #: the throwaway client ids of logins refused at CONNECT (_initialize_client_session)
            self._refused: set[str] = set()
            #: login -> its connections admitted and not ended; id(handler) -> login
            self._conns: dict[str, int] = {}
            self._counted: dict[int, str] = {}
            #: id() of the sessions admitted there, for the check amqtt makes afterwards
            self._admitted: set[int] = set()
            #: client id -> the filters its session holds (add_subscription)
            self._held: dict[str, set[str]] = {}
            self._told_full: set[str] | None = None
            #: login -> the filters its sessions hold together
            self._by_login: dict[str, int] = {}
            #: the reader of every open connection -> its writer (_check_bodies)
            self._framed: dict[_Framed, Any] = {}
            self._broadcast_queue = _QosQueue()
            self._subscriptions = _Subscriptions()
            #: when this broker's event loop last stood still (_tick)
            self._stood_still_at = -1e9
            self._ticked_at = 0.0
            self._ticker: asyncio.TimerHandle | None = None
            #: login -> what its connections hold together (secured: _get_handler)
            self._logins_held: dict[str, _Backlog] = {}
            #: person's login -> (packets it may send now, when counted): _paced
            self._paces: dict[str, tuple[float, float]] = {}
            #: what the connections of people's logins hold together (secured)
            self._people_held = _Backlog()
            #: the version of the users file the connections were last checked against
            self._users_seen: tuple[int, int] | None = None
            #: connections being closed for their silence
            self._closing: set[asyncio.Future[None]] = set()
            #: topic -> the filters it matches, while the filters stay (_filters_of)
            self._matched: dict[str, tuple[str, ...]] = {}
            self._matched_at = -1
            self._tree: dict[str | None, Any] = {}

        # -- mutual TLS --------------------------------------------------------------------
        @staticmethod
        def _create_ssl_context(listener: Any) -> ssl.SSLContext:
            # amqtt verifies a client certificate only when one is presented
            # (CERT_OPTIONAL); mutual TLS requires it
            ctx: ssl.SSLContext = Broker._create_ssl_context(listener)
            if require_certificate:
                ctx.verify_mode = ssl.CERT_REQUIRED
            return ctx

        # -- delivery QoS: min(published, granted), as MQTT 3.1.1 says [MQTT-3.8.4-6] ---
        # amqtt 0.12 delivers at the subscription's QoS: a QoS 0 publish reached a QoS 2
        # subscriber as QoS 2 (an outside audit). The published QoS travels with the
        # message to the broadcast task, whose handlers deliver at most that.
        async def _handle_message_delivery(
            self, client_session: Any, handler: Any, wait_deliver: Any
        ) -> bool:
            msg = wait_deliver.result() if wait_deliver.done() else None
            token = _PUB_QOS.set(getattr(msg, "qos", None))
            try:
                return bool(
                    await super()._handle_message_delivery(client_session, handler, wait_deliver)
                )
            finally:
                _PUB_QOS.reset(token)

        async def _broadcast_message(
            self, session: Any, topic: Any, data: Any, force_qos: int | None = None
        ) -> None:
            broadcast: dict[str, Any] = {"session": session, "topic": topic, "data": data}
            if force_qos is not None:
                broadcast["qos"] = force_qos
            pub = _PUB_QOS.get()
            if pub is not None:
                broadcast["pub_qos"] = pub
            await self._broadcast_queue.put(broadcast)

        # -- a message goes to the filters its topic matches, found once --------------
        # amqtt 0.12 matched each message against every filter held in the broker (two a
        # component on a node's side alone), wrote a debug line for each that did not
        # match and one with the payload's repr, whatever the log level: at 50
        # components x 1 kHz that was about a third of the broker's CPU. Here a topic is
        # looked up in a tree of the filters' levels, amqtt's own match confirms each
        # filter the tree offers, and the result is kept until a filter is added or
        # removed.
        def _filters_of(self, topic: str) -> tuple[str, ...]:
            subs = self._subscriptions
            matched = self._matched
            if self._matched_at != subs.changes:
                matched.clear()
                self._tree = _filter_tree(subs.keys())
                self._matched_at = subs.changes
            elif len(matched) >= MATCHED_TOPICS:
                matched.clear()
            found = matched.get(topic)
            if found is None:
                offered = _offered(self._tree, topic.split("/"))
                found = tuple(f for f in offered if self._matches(topic, f))
                if len(topic) <= MATCHED_TOPIC_CHARS:
                    matched[topic] = found
            return found

        async def _run_broadcast(self, running_tasks: Any) -> None:
            """amqtt's, for the filters :meth:`_filters_of` finds; each subscriber is
            treated as amqtt does (the ACL asked; a session away kept the message at
            QoS 1/2 if it asked to be kept; a connected one sent it)."""
            broadcast = await self._broadcast_queue.get()
            topic = broadcast["topic"]
            for a_filter in self._filters_of(topic):
                for target, sub_qos in list(self._subscriptions.get(a_filter, ())):
                    qos = broadcast.get("qos", sub_qos)
                    if not await self._topic_filtering(target, topic=topic, action=Action.RECEIVE):
                        # per message, so not above debug (amqtt's line was on its own
                        # logger, which this broker keeps at WARNING)
                        log.debug(
                            "%s may not receive messages on %s",
                            shown_client_id(target.client_id or ""),
                            topic,
                        )
                        continue
                    if target.transitions.state != "connected":
                        # kept for a persistent session away, only at QoS 1/2 and only
                        # for a login [MQTT 3.1.2.4]
                        if not target.clean_session and qos in (1, 2) and not target.is_anonymous:
                            await self._retain_broadcast_message(broadcast, qos, target)
                        continue
                    handler = self._get_handler(target)
                    if handler:
                        running_tasks.append(
                            asyncio.ensure_future(
                                handler.mqtt_publish(topic, broadcast["data"], qos, retain=False)
                            )
                        )

        async def _retain_broadcast_message(
            self, broadcast: dict[str, Any], qos: int, target_session: Any
        ) -> None:
            kept = target_session.retained_messages.qsize()
            backlog = _backlog(target_session)
            if kept >= max_offline:
                if backlog.drop():
                    log.warning(
                        "client %r (login %r) is away with %d messages kept for it "
                        "(max_queued_messages %d): newer ones are dropped until it is back",
                        shown_client_id(target_session.client_id),
                        target_session.username,
                        kept,
                        max_offline,
                    )
                return
            await super()._retain_broadcast_message(broadcast, qos, target_session)

        def _get_handler(self, session: Any) -> Any:
            handler = super()._get_handler(session)
            if handler is None:
                return None
            backlog = _backlog(session)
            # (secured: what each login holds; not only with a connection limit, which
            # 0 switched off, and the bounds below with it: a review)
            login = None if open_stack else self._login_backlog(session.username)
            if (
                login is not None
                and login.held >= max_queued
                and max(backlog.bytes, _buffered(handler)) > 0
            ):
                # all its login's connections together: 32 that never read, each under
                # the limit, took the broker from 49 to 2,246 MB (a hostile tour); one that
                # takes what it is sent (nothing waits for it) is served on (a review: a
                # laptop asleep silenced its owner's CLI on the lab PC)
                if login.drop():
                    log.warning(
                        "login %r does not take its messages: %d bytes wait for its "
                        "connections together (max_queued_bytes %d); messages for them "
                        "are dropped until they do",
                        session.username,
                        login.held,
                        max_queued,
                    )
                return None
            people = (
                self._people_held
                if login is not None and max_people > 0 and self._person(session)
                else None
            )
            if (
                people is not None
                and login is not None
                and people.held >= max_people
                and login.held >= self._fair_share(max_people)
            ):
                # people's logins together: each login's own bound let three readers'
                # connections that never read take the broker from 118 to 474 MB (a
                # hostile tour). Past the bound, a login holding its share or more gets
                # nothing more; one that takes its messages holds little, and is served
                if people.drop():
                    log.warning(
                        "people's logins do not take their messages: %d bytes wait for "
                        "their connections together (max_queued_bytes_people %d); messages "
                        "for the logins holding their share or more (login %r first) are "
                        "dropped until they take them",
                        people.held,
                        max_people,
                        session.username,
                    )
                return None
            if people is not None and people.dropped and people.held < max_people:
                log.warning(
                    "people's logins take their messages again: %d were dropped for them in %.0f s",
                    people.dropped,
                    time.time() - people.since,
                )
                people.dropped = 0
            if login is not None and login.dropped:
                log.warning(
                    "login %r takes its messages again: %d were dropped for it in %.0f s",
                    session.username,
                    login.dropped,
                    time.time() - login.since,
                )
                login.dropped = 0
            if max(backlog.bytes, _buffered(handler)) >= max_queued:
                if backlog.drop():
                    log.warning(
                        "client %r (login %r) does not take its messages: %d bytes wait for "
                        "it (max_queued_bytes %d); messages for it are dropped until it does",
                        shown_client_id(session.client_id),
                        session.username,
                        backlog.bytes,
                        max_queued,
                    )
                return None
            if backlog.dropped:
                log.warning(
                    "client %r (login %r) takes its messages again: %d were dropped for it "
                    "in %.0f s",
                    shown_client_id(session.client_id),
                    session.username,
                    backlog.dropped,
                    time.time() - backlog.since,
                )
                backlog.dropped = 0
            if backlog.unacked and not session.inflight_out and session.transitions.is_connected():
                log.warning(
                    "client %r (login %r) takes its messages again: %d before were not "
                    "taken or acknowledged within %g s and were not sent again (those "
                    "already on their way may have arrived)",
                    shown_client_id(session.client_id),
                    session.username,
                    backlog.unacked,
                    DELIVERY_WAIT,
                )
                backlog.unacked = 0
            # _PUB_QOS: _QosQueue
            return _Delivery(handler, _PUB_QOS.get(), backlog, login, people)

        def _fair_share(self, max_people: int) -> float:
            """What one login may hold of the people's bound before its connections that
            do not take their messages are cut off: its share among the logins that hold
            something now (a login that took the bound first cut off an admin's stream,
            half a megabyte under way: a review). Only when the bound is reached."""
            holders = sum(1 for b in self._logins_held.values() if b.held > 0)
            return max_people / max(1, holders)

        async def _paced(self, user: str) -> None:
            """Before each packet a person's login sends: its connections together are
            read at most READ_RATE packets a second (bursts of READ_BURST); past that,
            later, and TCP holds the rest at the sender. Dropping a flood's messages only
            once read was not enough: each one read, handshaken at QoS 2 and dropped, two
            logins' floods kept the broker busy for minutes (nobody's requests answered
            for 6 minutes, a job's file not finalised: a security round)."""
            rate, burst = security.READ_RATE, security.READ_BURST
            now = time.monotonic()
            tokens, at = self._paces.get(user, (float(burst), now))
            tokens = min(float(burst), tokens + (now - at) * rate) - 1.0
            if len(self._paces) > 10_000:  # (logins are few: a bound all the same)
                self._paces.clear()
            self._paces[user] = (tokens, now)
            if tokens < 0:
                await asyncio.sleep(-tokens / rate)

        def _paced_login(self, session: Any) -> bool:
            """Whether the connections of ``session``'s login are read at a pace
            (_paced): a person's, not the dashboard service's own, which takes every
            status and data topic and acknowledges each (its people sign in with their
            own logins, which are paced)."""
            acl = self._acl
            return acl is not None and acl.role_of(session.username) in PEOPLE - {"dashboard"}

        def _person(self, session: Any) -> bool:
            """Whether the login of ``session`` is a person's (admin, operator, reader)."""
            acl = self._acl
            return acl is not None and acl.role_of(session.username) in PEOPLE

        def _login_backlog(self, user: str | None) -> _Backlog:
            b = self._logins_held.get(user or "")
            if b is None:
                if len(self._logins_held) > 10_000:  # (logins are few: a bound all the same)
                    self._logins_held = {k: v for k, v in self._logins_held.items() if v.bytes}
                b = self._logins_held[user or ""] = _Backlog()
            return b

        async def _initialize_client_session(
            self, reader: Any, writer: Any, remote_address: str, remote_port: int
        ) -> tuple[Any, Any]:
            # amqtt 0.12 reads the CONNECT and then, before the login is checked at all,
            # deletes the session that holds the same client id (clean session: its
            # subscriptions go, while its connection stays open and deaf) or writes the
            # newcomer's user name, password and last will into it. So anyone who knows
            # a node's client id could cut it off from its commands with a wrong
            # password. Here the login is checked first; a refused one gets a throwaway
            # id and touches no other session. The rest is amqtt's session handling.
            try:
                handler, session = await wait_for(
                    BrokerProtocolHandler.init_from_connect(reader, writer, self.plugins_manager),
                    CONNECT_WAIT,
                )
            except MQTTError:
                await writer.close()  # as amqtt: a malformed CONNECT closes the connection
                raise
            except (TimeoutError, asyncio.TimeoutError):
                transport = _transport(writer)
                if transport is not None:
                    transport.abort()
                else:
                    await writer.close()
                raise MQTTError(
                    f"no CONNECT from {remote_address}:{remote_port} within {CONNECT_WAIT:g} s: "
                    "the connection is closed"
                ) from None
            if _peer_closed(writer):
                # a stale CONNECT from the listen queue took its client id over from the
                # live connection its client had made since (a scheduler's, after a 30 s
                # outage with people signed in to the dashboard: it went deaf for good, a
                # security tour); and its password was checked for nothing, slowly
                transport = _transport(writer)
                if transport is not None:
                    transport.abort()
                raise MQTTError(
                    f"a CONNECT of {shown_client_id(session.client_id or '')!r} from "
                    f"{remote_address}:{remote_port} "
                    "whose connection its client had closed already: dropped"
                )
            # a try that waits its turn (broker/security.py) is dropped if its client left
            session.tomato_gone = functools.partial(_peer_closed, writer)
            why = await self._refusal(session)
            # refused for its login's connections, or its tries waiting, not its password
            busy = why is not None and getattr(session, "tomato_busy", None) is not None
            if why is None and max_per_login > 0:
                why = self._count(session, handler)
                busy = why is not None
            if why is not None:
                log.warning(
                    "refused the login %r (client id %r) from %s:%s: %s",
                    session.username,
                    shown_client_id(session.client_id),
                    remote_address,
                    remote_port,
                    why,
                )
                session.client_id = f"refused-{gen_client_id()}"
                session.will_flag = False
                self._refused.add(session.client_id)
                if busy:  # told "server unavailable": its password was right, or unchecked
                    handler.mqtt_connack_authorize = functools.partial(_unavailable, handler)
                return handler, session
            if isinstance(reader, _Framed) and self._paced_login(session):
                reader.pace = functools.partial(self._paced, session.username or "")
            try:
                handler2, kept = await self._admit(handler, session, remote_address, remote_port)
                # a resumed persistent session is the one kept, not this CONNECT's: what
                # its login was checked against goes with it (else a stale hash closed it
                # at every later change of the users file: a review)
                kept.tomato_login = getattr(session, "tomato_login", None)
                return handler2, kept
            except BaseException:
                self._uncount(handler)  # (amqtt serves no session it did not get)
                raise

        async def _admit(
            self, handler: Any, session: Any, remote_address: str, remote_port: int
        ) -> tuple[Any, Any]:
            """amqtt's session handling of a CONNECT that was not refused."""
            held = self._sessions.get(session.client_id) if session.client_id else None
            if held is not None and held[0].transitions.is_connected():
                await self._take_over(held[0], held[1], remote_address, remote_port)
            if session.clean_session:
                if session.client_id:
                    await self._delete_session(session.client_id)
                else:
                    session.client_id = gen_client_id()
                session.parent = 0
            elif self._held_by_another(session):
                # a clean session another login just ended (_refusal let it by): none of
                # its subscriptions is this login's to inherit
                await self._delete_session(session.client_id)
                session.parent = 0
            elif session.client_id in self._sessions:  # a persistent session resumed
                held, _ = self._sessions[session.client_id]
                for attr in (
                    "will_flag",
                    "will_message",
                    "will_topic",
                    "will_qos",
                    "will_retain",
                    "keep_alive",
                    "username",
                    "password",
                ):
                    setattr(held, attr, getattr(session, attr))
                session = held
                session.parent = 1
            else:
                session.parent = 0
            delay = self.config.get("timeout-disconnect-delay", 0)
            keep_alive = session.keep_alive
            if keep_alive > 0 and isinstance(delay, int):
                # amqtt waits this long for the next packet and then does nothing; here
                # the connection is closed as a failed one (its last will goes out) when
                # nothing came for 1.5 times the keep-alive [MQTT-3.1.2-24]: a client
                # asleep or cut off (a half-open connection) does not stay connected,
                # holding its messages, until TCP gives up (~15 minutes)
                session.keep_alive = keep_alive + (keep_alive + 1) // 2 + delay
                handler.handle_read_timeout = functools.partial(
                    self._silent_too_long, handler, keep_alive
                )
            self._admitted.add(id(session))
            return handler, session

        def _silent_too_long(self, handler: Any, keep_alive: int) -> None:
            session = handler.session
            now = asyncio.get_running_loop().time()
            if session is None or now - self._stood_still_at < session.keep_alive:
                # this broker itself stood still (stopped, a swap storm) within the
                # wait: what the client sent meanwhile is not read yet. Wait once more.
                return
            log.warning(
                "client %r (login %r) sent nothing for %d s, 1.5 times its keep-alive of "
                "%d s: its connection is closed as a failed one",
                shown_client_id(session.client_id),
                session.username,
                session.keep_alive,
                keep_alive,
            )
            task = asyncio.ensure_future(self._close_silent(handler))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

        async def _close_silent(self, handler: Any) -> None:
            transport = _transport(handler.writer)
            if transport is not None:
                transport.abort()  # not a graceful close: that waits for the client to read
            with contextlib.suppress(Exception):
                await handler.handle_connection_closed()  # as a lost connection: the will
                await handler.stop()

        def _tick(self) -> None:
            """Note when this broker's event loop stood still (see _silent_too_long); a
            timer, not a task: it holds nothing a broker's user must wait for."""
            loop = asyncio.get_running_loop()
            now = loop.time()
            if now - self._ticked_at > 1.5:
                self._stood_still_at = now
            self._ticked_at = now
            try:
                self._check_bodies(now)
                self._check_logins()
                self._count_buffers()
            except Exception:  # (a users file read badly must not stop the timer: a review)
                log.exception("the broker's periodic checks failed; tried again in 0.5 s")
            finally:
                self._ticker = loop.call_later(0.5, self._tick)

        def _count_buffers(self) -> None:
            """Sum what waits in the connections' write buffers per login and for people's
            logins together (secured): a delivery given up after DELIVERY_WAIT released
            its bytes while its message stayed in the buffer, so three readers'
            non-reading connections took the broker from 102 to 560 MB in 150 s, past
            both bounds (a hostile tour)."""
            if open_stack:
                return
            logins: dict[str, int] = {}
            people = 0
            for session, handler in list(self._sessions.values()):
                if handler is None or not session.transitions.is_connected():
                    continue
                n = _buffered(handler)
                if n:
                    user = session.username or ""
                    logins[user] = logins.get(user, 0) + n
                    if self._person(session):
                        people += n
            for user, b in self._logins_held.items():
                b.buffered = logins.get(user, 0)
            self._people_held.buffered = people

        def _check_logins(self) -> None:
            """Close the connections whose login changed since they logged in: its
            password changed (`tomato user passwd`), the user removed (and maybe added
            again). A connection kept working after its password was reset, so a reset
            did not lock out who had it (a hostile tour). A role changed applies at once
            through the ACL, the connection kept."""
            acl = self._acl
            if acl is None:
                return
            stamp = acl.users_stamp()
            if stamp == self._users_seen:
                return
            self._users_seen = stamp
            for session, handler in list(self._sessions.values()):
                if not session.transitions.is_connected() or not self._login_changed(session):
                    continue
                log.warning(
                    "closing the connection of client %r: its login %r was changed since it "
                    "logged in (a new password, or the user removed)",
                    shown_client_id(session.client_id),
                    session.username,
                )
                session.will_flag = False  # (its will would speak for a login now gone)
                task = asyncio.ensure_future(self._close_silent(handler))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

        def _login_changed(self, session: Any) -> bool:
            """Whether the login of ``session`` is not the one its password was checked
            against any more (a new password, the user removed or added again)."""
            had, acl = getattr(session, "tomato_login", None), self._acl
            return had is not None and acl is not None and acl.login_of(session.username) != had

        async def start(self) -> None:
            await super().start()
            loop = asyncio.get_running_loop()
            self._ticked_at = loop.time()
            self._ticker = loop.call_later(0.5, self._tick)

        async def shutdown(self) -> None:
            if self._ticker is not None:
                self._ticker.cancel()
                self._ticker = None
            await super().shutdown()

        async def _take_over(
            self, old: Any, old_handler: Any, remote_address: str, remote_port: int
        ) -> None:
            """The server disconnects the client that holds the id [MQTT-3.1.4-2]. amqtt
            0.12 deleted a clean session's subscriptions and left its connection open:
            that client believed itself connected and heard nothing, ever (an outside
            audit). Its last will is not sent: the same login is connecting again, it is
            not gone. Waits until amqtt's loop of the old connection has ended, so that
            nothing of it acts on the session afterwards (a persistent session is the
            newcomer's object from here on)."""
            log.info(
                "client id %r connected again (login %r, from %s:%s): its earlier connection "
                "is closed",
                shown_client_id(old.client_id),
                old.username,
                remote_address,
                remote_port,
            )
            old.will_flag = False
            with contextlib.suppress(Exception):
                await old_handler.handle_connection_closed()
                await old_handler.stop()
            deadline = asyncio.get_running_loop().time() + 5.0
            while old.transitions.is_connected() and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.005)

        async def _refusal(self, session: Any) -> str | None:
            """Why this CONNECT is refused, or None: the login, its last will (amqtt
            publishes a will without the publish check: anyone could make the broker
            send a `stop` or a data batch in another's name), and on a secured broker a
            client id held by another login (no one takes over another's session)."""
            if not await super()._authenticate(session, None):
                busy = getattr(session, "tomato_busy", None)
                if busy is not None:  # (not checked: broker/security.py)
                    return f"not checked: {busy}"
                return "wrong user name or password (or a user without a role)"
            if session.will_flag and any(c in (session.will_topic or "") for c in "+#"):
                # a will is published as any message, whose topic has no wildcards
                # [MQTT-3.3.2-2]; amqtt refused them in a PUBLISH, not in a will
                return f"its last will's topic {session.will_topic!r} has a wildcard"
            acl = self._acl
            if acl is None or acl.rules_of(session.username) is None:
                return None  # an open, loopback-only broker: no roles to enforce
            # the login changed between its check and now (a new password, the user
            # removed): refused as it would be a moment later (a review)
            if self._login_changed(session):
                return "its login changed while it connected (a new password?)"
            if session.will_flag and not acl.check(session, session.will_topic, Action.PUBLISH):
                return (
                    f"its last will is on {session.will_topic!r}, "
                    f"a topic {session.username!r} may not publish"
                )
            held = self._sessions.get(session.client_id) if session.client_id else None
            if held is not None and held[0].username != session.username:
                other = held[0]
                if other.transitions.is_connected() or not other.clean_session:
                    return f"the client id is in use by another login ({other.username!r})"
            return None

        def _count(self, session: Any, handler: Any) -> str | None:
            """Count the connection against its login's ``max_per_login``, or say why it
            is refused. One login's connections are bounded: 40 that never read, each
            sent the retained state (3,000 job statuses), took the broker from 47 to 845
            MB and held up others' requests for seconds (a hostile tour). Checked and
            counted with no wait between: CONNECTs sent at once all passed a count of
            the sessions, made after the password check's wait (a review)."""
            user = session.username or ""
            n = self._conns.get(user, 0)
            if n >= max_per_login:
                return (
                    f"the login has {n} connections already, the most one login may "
                    f"hold ([broker] max_connections_per_login = {max_per_login})"
                )
            self._conns[user] = n + 1
            self._counted[id(handler)] = user
            return None

        def _uncount(self, handler: Any) -> None:
            user = self._counted.pop(id(handler), None)
            if user is not None:
                left = self._conns.get(user, 1) - 1
                if left > 0:
                    self._conns[user] = left
                else:
                    self._conns.pop(user, None)

        def _held_by_another(self, session: Any) -> bool:
            held = self._sessions.get(session.client_id) if session.client_id else None
            return held is not None and held[0].username != session.username

        async def _authenticate(self, session: Any, listener: Any) -> bool:
            if session.client_id in self._refused:
                return False
            if id(session) in self._admitted:  # checked in _initialize_client_session
                self._admitted.discard(id(session))
                # ...and its login unchanged since (a take-over may wait seconds, and a
                # users file changed meanwhile was looked at before it was connected)
                return not self._login_changed(session)
            return bool(await super()._authenticate(session, listener))

        async def _handle_client_session(self, *args: Any, **kwargs: Any) -> None:
            session = args[2] if len(args) > 2 else kwargs["client_session"]
            handler = args[3] if len(args) > 3 else kwargs.get("handler")
            try:
                await super()._handle_client_session(*args, **kwargs)
            finally:
                self._uncount(handler)
                if session.client_id in self._refused:  # amqtt keeps refused sessions
                    self._refused.discard(session.client_id)
                    self._sessions.pop(session.client_id, None)

        async def _handle_disconnect(
            self, client_session: Any, handler: Any, disconnect_waiter: Any
        ) -> None:
            # checked at CONNECT already; checked again in case the rules changed since
            # (a component moved to another node, a user's role changed)
            if (
                client_session.will_flag
                and self._acl is not None
                and not self._acl.check(client_session, client_session.will_topic, Action.PUBLISH)
            ):
                log.warning(
                    "dropped the last will of %r on %r: a topic it may no longer publish",
                    client_session.username,
                    client_session.will_topic,
                )
                client_session.will_flag = False
            await super()._handle_disconnect(client_session, handler, disconnect_waiter)

        async def _create_server_instance(
            self, listener_name: str, listener_type: Any, address: Any, port: int, ssl: Any
        ) -> Any:
            if listener_type == ListenerType.WS:
                # no WebSocket pings (websockets pings every 20 s by default): paho answers
                # a ping with an unmasked pong, which the server refuses (1002, "incorrect
                # masking") and closes the connection on (a review), so every paho
                # client over WebSockets was cut off every 20 s and reconnected, losing
                # what it had asked (a `passata get` over ws:// while a node restarted).
                # MQTT's own keep-alive says whether a client is there (_silent_too_long)
                return await websockets.serve(
                    functools.partial(self.ws_connected, listener_name=listener_name),
                    address,
                    port,
                    ssl=ssl,
                    subprotocols=[websockets.Subprotocol("mqtt")],
                    ping_interval=None,
                    # an open stack has no logins: any web page the lab PC's browser opens
                    # could otherwise connect to it (found by a security review: a page of
                    # another site stopped the stack). Browsers send their page's Origin;
                    # MQTT clients send none. Pages of this PC (localhost) stay welcome.
                    origins=[None, LOCAL_ORIGIN] if open_stack else None,
                )
            if listener_name != "default" or listen_fd is None:
                return await super()._create_server_instance(
                    listener_name, listener_type, address, port, ssl
                )
            # socket activation: serve the socket the supervisor bound (a duplicate, so
            # that closing this server leaves the supervisor's one listening for a restart)
            sock = socket.socket(fileno=os.dup(listen_fd))
            sock.setblocking(False)
            return await asyncio.start_server(
                functools.partial(self.stream_connected, listener_name=listener_name),
                sock=sock,
                ssl=ssl,
            )

        async def stream_connected(
            self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
        ) -> None:
            self.connections.add(writer)
            try:
                await super().stream_connected(reader, writer, listener_name)
            except (ssl.SSLError, ConnectionError) as e:
                # a TLS client that goes as it is refused (or goes at all) leaves amqtt's
                # close of the stream raising: one line, not 25 of traceback per refused
                # login in the broker's log (an admin's tour)
                log.info("%s: the connection ended: %s", listener_name, _reason(e))
            finally:
                self.connections.discard(writer)
                if not writer.is_closing():
                    writer.close()

        async def ws_connected(self, websocket: Any, listener_name: str) -> None:
            from amqtt.adapters import WebSocketsWriter

            await self._client_connected(
                listener_name, _ws_reader(websocket), WebSocketsWriter(websocket)
            )

        async def _client_connected(self, listener_name: str, reader: Any, writer: Any) -> None:
            # every listener's connections (TCP, TLS, WebSocket) are read through _Framed
            framed = _Framed(reader, max_packet, functools.partial(_refused_packet, writer))
            self._framed[framed] = writer
            try:
                await super()._client_connected(listener_name, framed, writer)
            finally:
                self._framed.pop(framed, None)

        def _check_bodies(self, now: float) -> None:
            for framed, writer in list(self._framed.items()):
                since = framed.body_since
                if (
                    since is None
                    or now - since <= BODY_WAIT
                    or now - self._stood_still_at < BODY_WAIT
                ):
                    continue
                framed.stalled(f"a packet's body not sent within {BODY_WAIT:g} s of its header")
                transport = _transport(writer)
                if transport is not None:
                    transport.abort()

        # -- requests and replies are not kept (a security review) ------------------------
        # a retained request was sent again to the scheduler (or a node) at each of its
        # restarts and subscriptions, and any login that may ask something could fill
        # the broker's memory with them (50,000 retained 1 kB requests on made-up
        # component names: +56 MB, for good). Under the root, only the channels the
        # contract retains (statuses, meta, last points) are kept; elsewhere a retained
        # message is delivered as any other and not stored. An empty one still clears.
        async def retain_message(
            self, source_session: Any, topic_name: str | None, data: Any, qos: int | None = None
        ) -> None:
            if data and topic_name is not None and not retainable(topic_name):
                who = getattr(source_session, "username", None) or "(anonymous)"
                log.info("not kept: a retained message of %s on %s", who, topic_name)
                return
            await super().retain_message(source_session, topic_name, data, qos)

        # -- filters nobody holds go (a soak: +1 MB per 1,000 jobs, for good) -------------
        # amqtt keeps an empty entry for every filter once unsubscribed (and its string
        # key): a script that waits on each job (client Job.wait: two filters a job)
        # grew the broker by ~0.26 MB per 1,000 filters, never given back
        def _del_subscription(self, a_filter: str, session: Any) -> int:
            deleted = int(super()._del_subscription(a_filter, session))
            if deleted and not self._subscriptions.get(a_filter, True):
                del self._subscriptions[a_filter]
            if deleted:
                held = self._held.get(session.client_id)
                if held is not None and a_filter in held:
                    held.discard(a_filter)
                    if not held:
                        del self._held[session.client_id]
                    login = session.username
                    if login is not None and self._by_login.get(login, 0) > 0:
                        self._by_login[login] -= 1
                        if not self._by_login[login]:
                            del self._by_login[login]
            return deleted

        async def _del_all_subscriptions(self, session: Any) -> None:
            for a_filter in list(self._subscriptions):
                self._del_subscription(a_filter, session)

        # -- a session holds at most MAX_FILTERS filters (a security review) -------------
        # one login's SUBSCRIBEs of 743,000 filters grew the broker by 260 MB (kept after
        # it left), and every connect then took 2 s (amqtt loops over all filters there)
        async def add_subscription(self, subscription: tuple[str, int], session: Any) -> int:
            held = self._held.get(session.client_id)
            login = session.username  # (an open stack's clients have none: per session)
            full = held is not None and len(held) >= MAX_FILTERS
            if login is not None and self._by_login.get(login, 0) >= MAX_FILTERS:
                full = True  # its sessions together (a review: 38 client ids, 743k)
            if full and subscription[0] not in (held or ()):
                if held is not self._told_full:
                    self._told_full = held
                    log.warning(
                        "client %r (login %r) holds %d topic filters, the most a session "
                        "(or a login's sessions together) may: its subscription to %s "
                        "(and any further one) is refused",
                        shown_client_id(session.client_id),
                        session.username,
                        MAX_FILTERS,
                        subscription[0],
                    )
                return 0x80
            code = int(await super().add_subscription(subscription, session))
            if code != 0x80:
                mine = self._held.setdefault(session.client_id, set())
                if subscription[0] not in mine:
                    mine.add(subscription[0])
                    if login is not None:
                        self._by_login[login] = self._by_login.get(login, 0) + 1
            return code

        async def _topic_filtering(self, session: Any, topic: str, action: Any) -> bool:
            # amqtt awaits this inside `for ... in self._subscriptions.items()` when it
            # broadcasts; its plugin manager gathers tasks, so the loop yields and a
            # (un)subscribe meanwhile kills the broadcast ("dictionary changed size during
            # iteration": the message is lost for the remaining subscribers). Our ACL
            # answers synchronously, so the loop never yields here.
            if self._acl is not None:
                return self._acl.check(session, topic, action)
            return bool(await super()._topic_filtering(session, topic, action))

        # -- what a session gets when it (re)connects is checked as it is sent ---------
        # amqtt sends a resumed persistent session its kept messages and the retained
        # messages of its kept subscriptions as they were queued or subscribed: a login
        # whose role was lowered while it was away got what its old role allowed (a
        # security review). Each goes only if the login may receive it now.
        def _receives(self, session: Any, topic: str) -> bool:
            return self._acl is None or self._acl.check(session, topic, Action.RECEIVE)

        async def _publish_retained_messages_for_subscription(
            self, subscription: tuple[str, int], session: Any
        ) -> None:
            topic_filter, qos = subscription
            holders = self._subscriptions.get(topic_filter, ())
            if not any(s.client_id == session.client_id for s, _qos in holders):
                return
            handler = self._get_handler(session)
            if handler is None:
                return
            sends = [
                asyncio.ensure_future(
                    handler.mqtt_publish(topic, kept.data, min(qos, kept.qos or qos), retain=True)
                )
                for topic, kept in list(self._retained_messages.items())
                if self._matches(topic, topic_filter) and self._receives(session, topic)
            ]
            if sends:
                await asyncio.wait(sends)

        async def _publish_session_retained_messages(self, session: Any) -> None:
            handler = self._get_handler(session)
            if handler is None:
                return
            sends = []
            while not session.retained_messages.empty():
                kept = session.retained_messages.get_nowait()
                if not self._receives(session, kept.topic):
                    continue
                # RETAIN 0: sent for a subscription that existed when it was published
                # [MQTT-3.3.1-9] (amqtt set 1: a persistent session's queued data batches
                # read as stale retained state, an integrator's tour; and a request queued
                # so reads as a retained one, which tomato-mqtt's responders ignore)
                sends.append(
                    asyncio.ensure_future(
                        handler.mqtt_publish(kept.topic, kept.data, kept.qos, retain=False)
                    )
                )
            if sends:
                await asyncio.wait(sends)

    return _Broker


def _refused_packet(writer: Any, why: str) -> None:
    try:
        peer = writer.get_peer_info()
    except Exception:
        peer = None
    where = f"{peer[0]}:{peer[1]}" if peer else "a client"
    log.warning("closed the connection of %s: %s", where, why)


def _retainable(instance: str) -> Any:
    """``topic -> bool``: whether the broker keeps a retained message on ``topic``: on
    the channels the contract retains (``x-retained``), or on topics outside the root."""
    from tomato_mqtt.wire.channels import CHANNELS
    from tomato_mqtt.wire.topics import Topics

    topics = Topics(instance)
    kept = {ch.kind for ch in CHANNELS if ch.retained}
    prefix = topics.root + "/"

    def retainable(topic: str) -> bool:
        if not topic.startswith(prefix):
            return True
        parsed = topics.parse(topic)
        return parsed is not None and parsed.kind in kept

    return retainable


def _reason(e: BaseException) -> str:
    """What failed, in words: the exception's text and, down its chain of causes, the
    first cause whose text is not already part of it. amqtt wraps what failed in
    "Broker instance can't be started: {e}"; an exception without text (a bare
    ``TimeoutError()``) left that sentence ending in a colon, so its type is named."""
    text = str(e).strip() or type(e).__name__
    cause, seen = e.__cause__ or e.__context__, {id(e)}
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        said = str(cause).strip()
        if not said or said not in text:
            named = f"{type(cause).__name__}: {said}" if said else type(cause).__name__
            return f"{text.rstrip(': ')}: {named}"
        cause = cause.__cause__ or cause.__context__
    return text


class _OneLinePerClient(logging.Filter):
    """amqtt warns once per message a client did not acknowledge; _Delivery says it once
    per client and gives the count."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        # and the acknowledgements that come after it gave up
        return not msg.startswith(("Timeout waiting for PUBACK", "Received PUBACK for unknown"))


class _OneLineHandshake(logging.Filter):
    """A connection to the WebSocket listener that is no WebSocket handshake (an MQTT
    client or a port probe on the wrong port: a `tomato start` on the port next to a
    running stack's) is one line, not a three-part traceback in the broker's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("opening handshake failed") and record.exc_info:
            why = record.exc_info[1]
            record.msg = "a connection to the WebSocket listener was refused: %s"
            record.args = (why or "not a WebSocket handshake",)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class EmbeddedBroker:
    """amqtt in this process: ``await start()``, ``await stop()``."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self._broker: Any = None

    async def start(self) -> None:
        # amqtt logs every connection at INFO; keep our logs about our services
        for noisy in ("amqtt", "transitions", "websockets"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        handler_log = logging.getLogger("amqtt.mqtt.protocol.handler")
        if not any(isinstance(f, _OneLinePerClient) for f in handler_log.filters):
            handler_log.addFilter(_OneLinePerClient())
        ws_log = logging.getLogger("websockets.server")
        if not any(isinstance(f, _OneLineHandshake) for f in ws_log.filters):
            ws_log.addFilter(_OneLineHandshake())
        config = self.config.amqtt_config()  # BrokerConfigError: refused, with the reason
        open_stack = not self.config.password_file
        cls = _broker_class(
            self.config.listen_fd,
            open_stack,
            self.config.max_queued_bytes,
            self.config.max_queued_messages,
            self.config.max_packet_bytes,
            self.config.instance,
            self.config.require_certificate,
            self.config.max_connections_per_login if not open_stack else 0,
            self.config.max_queued_bytes_people if not open_stack else 0,
        )
        self._broker = cls(config)
        try:
            await self._broker.start()
        except Exception as e:
            # a listener that failed (a port taken) comes after those that did not: the
            # clients these accepted meanwhile (under `tomato start`, services that
            # connected to the socket the supervisor bound) are served by handlers that
            # a cancel at the loop's end did not stop, and the process never exited (a
            # test run on a loaded machine: the supervisor waited 3 minutes, restarting
            # nothing). Stop the half-started broker as a running one is stopped.
            with contextlib.suppress(Exception):
                await wait_for(self.stop(), 10.0)
            self._broker = None
            raise OSError(
                f"cannot start the embedded MQTT broker on {self.config.host}:{self.config.port}"
                f": {_reason(e)}"
            ) from e

    async def stop(self) -> None:
        if self._broker is not None:
            broker, self._broker = self._broker, None
            # amqtt 0.12 closes its sessions first and its listeners last: a client that
            # reconnects in between is served by a broker that is going away and never
            # learns it (it then misses the restarted broker). Stop accepting first.
            for server in getattr(broker, "_servers", {}).values():
                instance = getattr(server, "instance", None)
                if instance is not None:
                    with contextlib.suppress(Exception):
                        instance.close()
            # amqtt cancels each session's reader loop; on Python < 3.12 asyncio.wait_for
            # loses a cancel that coincides with incoming data (e.g. a PUBACK), and the loop
            # then waits for the next packet for ever. An EOF ends it: give shutdown a
            # moment, then end the readers that are still waiting.
            handlers = [h for _s, h in list(getattr(broker, "_sessions", {}).values())]
            shutdown = asyncio.ensure_future(broker.shutdown())
            done, _ = await asyncio.wait({shutdown}, timeout=1.0)
            if not done:
                for h in handlers:
                    with contextlib.suppress(Exception):
                        h.reader.feed_eof()
            with contextlib.suppress(Exception):
                await shutdown
            for writer in list(getattr(broker, "connections", ())):
                writer.close()  # what amqtt's shutdown left open (see _Broker.connections)

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def _serve(config: BrokerConfig, ready: asyncio.Event | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with EmbeddedBroker(config):
        # each listener as a client names it: the WebSocket one is WSS under TLS, and the
        # TLS one and the plain one's address (loopback under TLS) were not said (it read
        # "ws://…" for a WSS listener: a security tour)
        where = []
        for listener in config.amqtt_config()["listeners"].values():
            tls = bool(listener.get("ssl"))
            scheme = ("wss" if tls else "ws") if listener["type"] == "ws" else "mqtt"
            where.append(f"{'mqtts' if scheme == 'mqtt' and tls else scheme}://{listener['bind']}")
        log.info("broker listening on %s", ", ".join(where))
        if ready is not None:
            ready.set()
        await stop.wait()


def _raise_fd_limit() -> None:
    """This process may hold as many connections as its hard limit allows.

    Every connection is a descriptor, and an idle one (no CONNECT) holds it up to
    CONNECT_WAIT: under the usual soft limit of 1,024, a thousand idle connections from
    anyone who reaches the port left none for a login (asyncio's accept() failed with
    EMFILE and paused; measured: logins waited up to 11 s while 3,000 were held open).
    The broker waits on epoll, so a high soft limit costs nothing."""
    try:
        import resource
    except ImportError:  # Windows: no such limit
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    for limit in (want, 10240):  # macOS refuses more than OPEN_MAX (10,240)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, want), hard))
            return
        except (ValueError, OSError):
            continue
    log.warning("could not raise the limit of open files (%d): the broker holds that many", soft)


def run_broker(config: BrokerConfig) -> None:
    """Run the broker in the foreground until SIGINT/SIGTERM."""
    _raise_fd_limit()
    asyncio.run(_serve(config))
