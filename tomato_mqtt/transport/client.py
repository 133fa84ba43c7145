"""The only module that imports paho-mqtt: an asyncio MQTT 3.1.1 client.

paho's network I/O is driven by the asyncio loop (``add_reader``/``add_writer``, as
aiomqtt does), so there is no second thread and paho's callbacks only hand results to
asyncio. ``publish`` and ``subscribe`` return after the broker's ack, with a timeout;
failures are exceptions. The client reconnects by itself and re-subscribes. Every
socket gets TCP_NODELAY: without it each request/reply hop waits ~40 ms for a delayed
ACK.

Inbound messages are only *queued* in paho's callback (handler subscriptions, used for
request/reply, only resolve a future); the service consumes :meth:`AsyncClient.messages`
in its own task. The queue and its overflow policy (droppable data batches are bounded
and dropped beyond ``max_queued_droppable``, counted in :attr:`AsyncClient.dropped`;
nothing else is ever dropped) are in :mod:`tomato_mqtt.transport.inbox`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MessageState, MQTTErrorCode

from tomato_mqtt.config.url import BrokerURL
from tomato_mqtt.transport._loop import _LoopDriven
from tomato_mqtt.transport._tls import TrackingContext, client_tls_context
from tomato_mqtt.transport.inbox import Inbox
from tomato_mqtt.transport.inbox import Subscription as _Subscription
from tomato_mqtt.transport.types import (
    CONNACK_WHY,
    LOGIN_REFUSED,
    UNTRUSTED_HINT,
    Message,
    MqttError,
    MqttRefused,
    MqttTimeout,
    MqttUnreachable,
    MqttUntrusted,
    SubscriptionRefused,
    Will,
    client_cert_hint,
    topic_matches,
)
from tomato_mqtt.waits import wait_for
from tomato_mqtt.wire.slugs import shown_client_id

__all__ = [
    "AsyncClient",
    "BrokerURL",
    "Message",
    "MqttError",
    "MqttRefused",
    "MqttTimeout",
    "MqttUnreachable",
    "MqttUntrusted",
    "SubscriptionRefused",
    "Will",
    "topic_matches",
]

log = logging.getLogger(__name__)

#: s one connection attempt may take (TCP, TLS, the CONNACK) before it is made again
ATTEMPT_MAX = 10.0

#: s a clean disconnect waits for the broker to acknowledge what was published before it
#: (:meth:`AsyncClient._in_flight_acked`)
DISCONNECT_ACK_WAIT = 1.0

#: a publish's states that paho counts as in flight (drop_unacknowledged)
_IN_FLIGHT = frozenset(
    {
        MessageState.MQTT_MS_WAIT_FOR_PUBACK,
        MessageState.MQTT_MS_WAIT_FOR_PUBREC,
        MessageState.MQTT_MS_WAIT_FOR_PUBCOMP,
    }
)


class AsyncClient(_LoopDriven):
    """An asyncio MQTT client with reconnect, acked publish/subscribe and a message stream.

    Use as ``async with AsyncClient(url, client_id=...) as c:``. Messages that match a
    filter subscribed without a handler go to :meth:`messages`; a handler given to
    :meth:`subscribe` gets its matches directly (used for replies, so request/reply
    never waits behind a busy stream).
    """

    def __init__(
        self,
        url: BrokerURL | str = BrokerURL(),
        *,
        client_id: str | None = None,
        will: Will | None = None,
        keepalive: int = 30,
        reconnect: bool = True,
        on_connect: Callable[[], Awaitable[None]] | None = None,
        clean_session: bool = True,
        max_queued_droppable: int = 2000,
    ) -> None:
        self.url = BrokerURL.parse(url) if isinstance(url, str) else url
        self._websockets = self.url.transport == "websockets"
        self.client_id = client_id or f"tomato-{uuid.uuid4().hex[:12]}"
        self.shown_id = shown_client_id(self.client_id)  # as the logs name it
        self._will = will
        self._keepalive = keepalive
        self._reconnect_enabled = reconnect
        self._on_connect_hook = on_connect
        #: called (in the loop) when the broker refuses to take this client back for good
        #: (MqttRefused.final: its password changed, its user removed); it goes on trying
        self.on_refused: Callable[[MqttRefused], None] | None = None
        #: called (on the loop) when an established connection is lost, before any retry
        self.on_lost: Callable[[], None] | None = None
        self._clean_session = clean_session
        self._loop: asyncio.AbstractEventLoop | None = None
        self._paho: paho.Client | None = None
        self._connected = asyncio.Event()
        #: set by drop_unacknowledged: the reconnect loop tries again at once
        self._retry_now = asyncio.Event()
        self._connack: asyncio.Future[int] | None = None
        self._acks: dict[int, asyncio.Future[Any]] = {}
        #: filter -> its subscriptions: several on one filter (two calls of the client
        #: library following jobs on one connection) each get every message; the first
        #: replaced the other, and one's unsubscribe ended the other's (an outside run:
        #: the older `wait()` timed out on a job that had ended long before)
        self._subs: dict[str, list[_Subscription]] = {}
        self._sub_list: list[_Subscription] = []  # all of them, for delivery
        self._inbox = Inbox(self.shown_id, max_queued_droppable)
        self._closing = False
        self._misc_task: asyncio.Task[None] | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._hook_task: asyncio.Task[None] | None = None
        self._sock: Any = None
        self._loop_thread: int | None = None
        self.connects = 0  # how many times a CONNACK was received (1 + reconnects)

    # -- lifecycle -------------------------------------------------------------------
    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()

    @property
    def is_connected(self) -> bool:
        return self._connected.is_set()

    @property
    def started(self) -> bool:
        """Whether :meth:`connect` ran (and :meth:`disconnect` has not since)."""
        return self._paho is not None and not self._closing

    def _make_paho(self) -> paho.Client:
        c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=self._clean_session,
            protocol=paho.MQTTv311,
            transport="websockets" if self.url.transport == "websockets" else "tcp",
        )
        if self.url.username is not None:
            c.username_pw_set(self.url.username, self.url.password)
        if self.url.tls:
            ctx = client_tls_context(self.url)
            c.tls_set_context(ctx)
        if self._will is not None:
            c.will_set(self._will.topic, self._will.payload, self._will.qos, self._will.retain)
        c.max_inflight_messages_set(1000)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_unsubscribe = self._on_unsubscribe
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._on_socket_register_write
        c.on_socket_unregister_write = self._on_socket_unregister_write
        return c

    async def connect(
        self,
        timeout: float = 5.0,
        *,
        retry: bool = False,
        on_retry: Callable[[Exception], None] | None = None,
    ) -> None:
        """Connect; with ``retry`` keep trying (with back-off) until ``timeout``, telling
        ``on_retry`` each failed attempt. A login the broker refuses, or a certificate
        that is not trusted, ends it at once: trying again will not help."""
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self._loop_thread = threading.get_ident()
        self._paho = self._make_paho()
        self._paho.connect_async(self.url.host, self.url.port, self._keepalive)
        deadline = self._loop.time() + timeout
        delay = 0.05
        while True:
            try:
                # each attempt bounded: a broker that takes the TCP connection and never
                # answers (frozen) kept a node waiting without a word (an outside check)
                left = deadline - self._loop.time()
                await wait_for(self._connect_once(), max(0.1, min(left, ATTEMPT_MAX)))
                break
            except (OSError, MqttError, asyncio.TimeoutError) as e:
                if isinstance(e, MqttRefused) and (e.final or not retry):
                    # a login refused stays refused: no retry, no "cannot connect"
                    self._drop_socket()
                    raise MqttRefused(f"the MQTT broker at {self.url} {e}", e.code) from None
                if isinstance(e, MqttUntrusted):
                    self._drop_socket()
                    raise
                if not retry or self._loop.time() + delay >= deadline:
                    self._drop_socket()
                    if isinstance(e, asyncio.TimeoutError):
                        raise MqttTimeout(
                            f"no answer from the MQTT broker at {self.url} within {timeout:g} s"
                        ) from None
                    kind = MqttUnreachable if isinstance(e, MqttUnreachable) else MqttError
                    raise kind(f"cannot connect to the MQTT broker at {self.url}: {e}") from e
                if on_retry is not None:
                    on_retry(e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        self._misc_task = asyncio.create_task(self._misc_loop(), name=f"mqtt-misc-{self.client_id}")

    async def _connect_once(self) -> None:
        loop = self._running_loop()
        c = self._require_client()
        self._connack = loop.create_future()
        # failed by _on_disconnect after a cancelled attempt: nobody awaits it then
        self._connack.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            # blocking socket connect (DNS, TCP, TLS): off the loop
            await loop.run_in_executor(None, c.reconnect)
        except (OSError, ssl.SSLError) as e:
            # paho does not close a TLS socket whose handshake failed: one fd per retry
            ctx = getattr(c, "_ssl_context", None)
            if isinstance(ctx, TrackingContext):
                ctx.close_last()
            if isinstance(e, ssl.SSLCertVerificationError):
                raise MqttUntrusted(
                    f"TLS with the MQTT broker at {self.url} failed: {e}: {UNTRUSTED_HINT}"
                ) from e
            kind = MqttUnreachable if isinstance(e, ConnectionRefusedError) else MqttError
            raise kind(str(e) or type(e).__name__) from e
        rc = await self._connack
        if rc != 0:
            why = CONNACK_WHY.get(rc, f"code {rc}")
            hint = (
                ": check the username and password (mqtt://user:pass@host:port), and that the"
                " login may use this instance (a node's login: the role node:<its name>; its"
                " last will names it)"
                if rc in LOGIN_REFUSED
                else ""
            )
            raise MqttRefused(f"refused the connection ({why}){hint}", rc)

    async def disconnect(self) -> None:
        """Disconnect cleanly (no last will is sent)."""
        self._closing = True
        for t in (self._reconnect_task, self._misc_task, self._hook_task):
            if t is not None and not t.done():
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        connected = self._paho is not None and self._connected.is_set()
        if connected:
            await self._in_flight_acked(DISCONNECT_ACK_WAIT)
        if connected and not await self._disconnect_cleanly() and self._paho is not None:
            self._paho.disconnect()
            # let the DISCONNECT packet leave before the socket closes
            with contextlib.suppress(Exception):
                self._paho.loop_write()
        self._drop_socket()
        self._connected.clear()
        self._fail_pending(MqttError("client disconnected"))
        hook = self._hook_task  # one started before _closing was seen: not left running
        if hook is not None and not hook.done():
            hook.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await hook

    async def _in_flight_acked(self, timeout: float) -> None:
        """Wait (at most ``timeout``) until the broker has acknowledged every QoS 1
        publish sent, before the DISCONNECT: amqtt on Python 3.13 dropped publishes that
        were not acknowledged yet when the DISCONNECT came (a node that stopped said 1 of
        its 4 components lost: a run of the tests on 3.13)."""
        c = self._paho
        deadline = time.monotonic() + timeout
        while c is not None and c._out_messages and self._connected.is_set():
            if time.monotonic() >= deadline:
                log.info(
                    "%s: %d publish(es) not acknowledged before the disconnect",
                    self.url,
                    len(c._out_messages),
                )
                return
            await asyncio.sleep(0.005)

    def _drop_socket(self) -> None:
        if self._sock is not None and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._sock)
                self._loop.remove_writer(self._sock)
        if self._paho is not None:
            with contextlib.suppress(Exception):
                self._paho._sock_close()
        self._sock = None

    # -- operations ------------------------------------------------------------------
    async def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
        wait: bool = True,
        timeout: float = 5.0,
    ) -> None:
        """Publish; with ``wait`` (and QoS > 0) return after the broker's PUBACK.

        While disconnected, QoS > 0 messages are queued by paho and sent on reconnect.
        """
        c = self._require_client()
        data = payload.encode() if isinstance(payload, str) else payload
        info = c.publish(topic, data, qos=qos, retain=retain)
        began = time.monotonic()
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            # every message id in flight (65,535 unacknowledged: replies to a request flood
            # the broker took slowly): wait for acks, as for a full queue, up to the
            # timeout. It raised at once, and the job whose end it told stayed `r` (a
            # security tour)
            deadline = time.monotonic() + timeout
            while info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                info = c.publish(topic, data, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise MqttError(f"publish to {topic} failed: {paho.error_string(info.rc)}")
        if not wait or qos == 0:
            return
        # is_published() raises for MQTT_ERR_NO_CONN, though the message is queued
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS and info.is_published():
            return
        fut = self._ack_future(info.mid)
        try:  # (the wait for room, if any, counts against the same timeout)
            await wait_for(fut, max(0.0, timeout - (time.monotonic() - began)))
        except asyncio.TimeoutError:
            raise MqttTimeout(
                f"the broker at {self.url} did not acknowledge a publish to {topic} "
                f"within {timeout:g} s"
            ) from None
        finally:
            self._acks.pop(info.mid, None)

    async def subscribe(
        self,
        filter_: str,
        *,
        qos: int = 1,
        handler: Callable[[Message], None] | None = None,
        droppable: bool = False,
        timeout: float = 5.0,
    ) -> None:
        """Subscribe and wait for the SUBACK. Re-subscribed after every reconnect.

        ``handler`` is called in paho's callback and must only hand over (resolve a
        future); without one, matches go to :meth:`messages`. ``droppable`` messages may
        be dropped when the consumer falls behind (see the module docstring).
        """
        subs = self._subs.setdefault(filter_, [])
        sub = _Subscription(filter_, qos, handler, droppable)
        subs.append(sub)
        self._sub_list = [x for subs in self._subs.values() for x in subs]
        # (again for a second one: the broker sends the retained messages anew, which the
        # new one needs; the others see them once more, as after a reconnect). At the
        # highest QoS asked: a SUBSCRIBE sets the filter's QoS (a second one at QoS 0 made
        # the first one's messages QoS 0 on Mosquitto: a review)
        try:
            await self._send_subscribe(filter_, max(x.qos for x in subs), timeout)
        except BaseException:
            # a subscription that failed (refused, not acknowledged) is not kept: it was
            # asked again at every reconnect, and counted as one more on the filter, so
            # that the unsubscribe of the last real one left the broker's in place
            if sub in subs:
                subs.remove(sub)
                if not subs:
                    self._subs.pop(filter_, None)
                self._sub_list = [x for subs in self._subs.values() for x in subs]
            raise

    async def _send_subscribe(self, filter_: str, qos: int, timeout: float) -> None:
        c = self._require_client()
        rc, mid = c.subscribe(filter_, qos)
        if rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            return  # done on reconnect
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise MqttError(f"subscribe to {filter_} failed: {paho.error_string(rc)}")
        fut = self._ack_future(mid)
        try:
            granted = await wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise MqttTimeout(
                f"the broker at {self.url} did not acknowledge a subscription to {filter_} "
                f"within {timeout:g} s"
            ) from None
        finally:
            self._acks.pop(mid, None)
        if any(int(g) >= 0x80 for g in granted):
            raise SubscriptionRefused(
                f"the broker refused the subscription to {filter_} (not authorised?)"
            )

    async def unsubscribe(
        self,
        filter_: str,
        timeout: float = 5.0,
        *,
        handler: Callable[[Message], None] | None = None,
    ) -> None:
        """End the subscription to ``filter_`` made with ``handler`` (the last made, if
        none is given); the broker's ends with the last one on that filter."""
        subs = self._subs.get(filter_, [])
        mine = [i for i, x in enumerate(subs) if handler is None or x.handler is handler]
        if mine:
            del subs[mine[-1]]
        if subs:
            self._sub_list = [x for subs in self._subs.values() for x in subs]
            return  # another still listens on it
        self._subs.pop(filter_, None)
        self._sub_list = [x for subs in self._subs.values() for x in subs]
        c = self._require_client()
        rc, mid = c.unsubscribe(filter_)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            return
        fut = self._ack_future(mid)
        try:
            await wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise MqttTimeout(f"no UNSUBACK for {filter_} within {timeout:g} s") from None
        finally:
            self._acks.pop(mid, None)

    async def messages(self) -> AsyncIterator[Message]:
        """Every message matching a handler-less subscription, in arrival order."""
        while True:
            yield await self._inbox.get()

    async def next_message(self, timeout: float) -> Message:
        return await self._inbox.get_within(timeout)

    def take_message(self) -> Message | None:
        """The next message of the stream if one is waiting, else None (never waits)."""
        return self._inbox.get_nowait()

    @property
    def dropped(self) -> int:
        """Droppable messages (data batches) dropped because the consumer fell behind."""
        return self._inbox.dropped

    async def wait_connected(self, timeout: float | None = None) -> None:
        await wait_for(self._connected.wait(), timeout)

    def drop_unacknowledged(self, topic: str | None = None, payload: bytes | None = None) -> int:
        """Forget the publishes to ``topic`` (with ``payload``, when given: a request
        and its copies) the broker has not acknowledged, or every one without ``topic``
        (paho would send them again at each reconnect), failing whoever waits for their
        PUBACK; how many.

        For a broker that closes the connection of a publish its rules forbid (Aedes:
        MQTT 3.1.1 allows that instead of a silent drop): sent again at every reconnect,
        such a publish closed each new connection, for as long as the client lived. The
        others stay, and go out again: a request of another thread sharing this client,
        unacknowledged when the connection closed, was failed with it."""
        c = self._paho
        if c is None:
            return 0
        with c._out_message_mutex:
            out = c._out_messages
            dropped = [
                m
                for m in out.values()
                if topic is None or (m.topic == topic and payload in (None, m.payload))
            ]
            for m in dropped:
                del out[m.mid]
                # paho (2.x) counts what is in flight and takes it off at the PUBACK that
                # will not come: at its limit, later publishes would wait for ever (until a
                # reconnect counted again)
                if m.state in _IN_FLIGHT:
                    c._inflight_messages = max(0, c._inflight_messages - 1)
        for m in dropped:
            fut = self._acks.pop(m.mid, None)
            if fut is not None and not fut.done():
                fut.set_exception(MqttError(f"publish to {m.topic} dropped unacknowledged"))
        if dropped:
            self._retry_now.set()  # what closed each connection is gone: no back-off now
        return len(dropped)

    # -- internals: paho callbacks (called on the loop thread) --------------------------
    def _require_client(self) -> paho.Client:
        if self._paho is None:
            raise MqttError("not connected: call connect() first")
        return self._paho

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise MqttError("not connected: call connect() first")
        return self._loop

    def _on_connect(self, c: paho.Client, ud: Any, flags: Any, rc: Any, props: Any) -> None:
        code = rc.value if hasattr(rc, "value") else int(rc)
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(code)
        if code != 0:
            return
        first = self.connects == 0
        self.connects += 1
        self._connected.set()
        # Re-subscribe (clean session) and tell the owner, so it can re-announce state.
        for filter_, subs in self._subs.items():
            if subs:
                c.subscribe(filter_, max(x.qos for x in subs))
        if not first and self._on_connect_hook is not None and not self._closing:
            # (not while it closes: a reconnect's CONNACK that came in during disconnect()
            # started the owner's hook after its tasks were cancelled, and it outlived the
            # client: a CI run's leaked-task check)
            self._hook_task = asyncio.ensure_future(self._run_hook())
        log.debug("%s connected to %s", self.shown_id, self.url)

    async def _run_hook(self) -> None:
        if self._on_connect_hook is None:
            return
        try:
            await self._on_connect_hook()
        except Exception:  # the hook must not kill the client
            log.exception("on_connect hook of %s failed", self.shown_id)

    def _on_disconnect(self, c: paho.Client, ud: Any, flags: Any, rc: Any, props: Any) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if self._connack is not None and not self._connack.done():
            # closed before the CONNACK (a broker that died while serving the listening
            # socket's backlog): fail this attempt now, so that a retry follows at once
            why = f"connection closed before CONNACK ({rc})"
            if self.url.tls:  # after the TLS handshake: mutual TLS may have refused us
                why += f"; {client_cert_hint(self.url.certfile)}"
            self._connack.set_exception(MqttError(why))
        if self._closing:
            return
        if was_connected:
            # (paho's "Unspecified error" is a broker that closed it or went away: said so)
            why = str(rc)
            why = "the broker closed it or went away" if why == "Unspecified error" else why
            log.warning("%s lost the connection to %s (%s)", self.shown_id, self.url, why)
            if self.on_lost is not None:
                try:
                    self.on_lost()
                except Exception:  # the hook must not stop the reconnect
                    log.exception("on_lost hook of %s failed", self.shown_id)
        idle = self._reconnect_task is None or self._reconnect_task.done()
        if self._reconnect_enabled and was_connected and self._loop is not None and idle:
            self._reconnect_task = self._loop.create_task(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        delay = 0.05
        told: set[str] = set()
        while not self._closing and not self._connected.is_set():
            self._drop_socket()
            try:
                await wait_for(self._connect_once(), 5.0)
                if self._connected.is_set():
                    # said as its loss was (a node's log said "lost the connection" three
                    # times and never that it was back: an admin's tour)
                    log.warning("%s: connected to %s again", self.shown_id, self.url)
                    return
                # closed again before this task went on (a broker that closes at once:
                # Aedes, at a publish sent again that its rules forbid): _on_disconnect
                # saw this task running and left the reconnect to it, so it goes on
                # (it returned, and the client stayed disconnected for good)
                log.debug("%s: the connection to %s closed at once", self.shown_id, self.url)
            except (MqttRefused, MqttUntrusted) as e:
                # the broker is there and says no (a password changed, a user removed, a
                # certificate replaced): said once per reason, not at debug level only
                # (an admin's tour: a node lost for ever, its log silent)
                if str(e) not in told:
                    told.add(str(e))
                    log.warning(
                        "%s: the broker at %s refuses to take this client back: %s "
                        "(trying again every 2 s)",
                        self.shown_id,
                        self.url,
                        e,
                    )
                    if isinstance(e, MqttRefused) and e.final and self.on_refused is not None:
                        try:
                            self.on_refused(e)
                        except Exception:  # the owner's hook must not end the retries
                            log.exception("on_refused hook of %s failed", self.shown_id)
            except (OSError, MqttError, asyncio.TimeoutError) as e:
                log.debug("%s: reconnect to %s failed: %s", self.shown_id, self.url, e)
            self._retry_now.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await wait_for(self._retry_now.wait(), delay)
            delay = 0.05 if self._retry_now.is_set() else min(delay * 2, 2.0)

    def _on_message(self, c: paho.Client, ud: Any, msg: paho.MQTTMessage) -> None:
        m = Message(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), msg.timestamp)
        self._inbox.deliver(m, self._sub_list)
