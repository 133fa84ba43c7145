"""One request, one reply, then exit: the CLI's fast path.

A ``tomato status``, ``ketchup status`` or ``passata get`` process makes one request (or
two on one connection) and exits; for it asyncio (~35 ms to import), pydantic (~60 ms,
plus building the message models) and paho (~20 ms) are most of its wall time (issue 15
asks for at most 3 times a bare interpreter start). So this path speaks MQTT 3.1.1 itself on a
plain socket (:mod:`tomato_mqtt.transport.session`, TCP and TLS); over WebSockets it
uses paho's blocking API. The envelope is the same
:class:`~tomato_mqtt.wire.messages.Request` / :class:`~tomato_mqtt.wire.messages.Reply`
JSON (tests check both directions against the models); everything long-lived uses the
asyncio client.
"""

from __future__ import annotations

import os
import time

from tomato_mqtt import jsonlite
from tomato_mqtt.record import Record

TYPE_CHECKING = False  # typing is ~2 ms of a one-request call: for the type checker only
if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping
    from types import TracebackType
    from typing import Any, TypeVar

    import paho.mqtt.client as paho

    from tomato_mqtt.config.url import BrokerURL

    T = TypeVar("T")

__all__ = [
    "RESEND_AFTER",
    "Closed",
    "Exchange",
    "NoAnswer",
    "OneShotError",
    "Refused",
    "Reply",
    "Unreachable",
    "payload_refused",
    "refused_token",
    "reply_name",
    "request",
]

SCHEMA = 2  # tomato_mqtt.wire.messages.SCHEMA


def reply_name() -> str:
    """The last part of a CLI's reply topic: not its client id, which a node reading an
    operator's request would learn, and on Mosquitto could take over mid-call (the
    services' Requester does the same: docs/security.md)."""
    return f"cli-{os.urandom(8).hex()}"


#: s without an answer before a request is sent again (then after 2, 4, ... s more),
#: with the same id: a responder that restarted meanwhile (the supervisor restarts a
#: crashed scheduler within about a second) never got the first, which the broker drops
#: while nobody subscribes; one that did answers the copy as the first, without carrying
#: it out again (rpc.Responder, by id; the state file keeps the answers of pipeline and
#: cancel requests for the next scheduler), and a job_submit carries a token, so a
#: scheduler that queued it before it died answers with that job (found by an outside
#: user: a submit during a restart was lost)
RESEND_AFTER = 1.0

#: s before a login's unanswered request times out that :class:`Exchange` asks
#: ``whoami`` meanwhile (at most half the timeout), so that a request the broker's rules
#: dropped is said within the timeout (as the client library's ``WHOAMI_BEFORE``)
WHOAMI_BEFORE = 2.0


def refused_token(code: str | None, msg: str | None) -> bool:
    """A scheduler older than job_submit's ``token`` refused it (the client then submits
    without it, as before)."""
    return code == "bad_request" and "token: Extra inputs are not permitted" in (msg or "")


def payload_refused(file: str, msg: str) -> str:
    """A scheduler's refusal of a payload sent from ``file``, which it cannot know, in one
    order whoever refused it: "payload refused: <file>: <where>: <why>". A refusal of
    anything else (the state not stored, say) is not the file's: left as it is."""
    head, sep, why = msg.partition("payload refused: ")
    return f"payload refused: {file}: {why}" if sep and not head else msg


_REFUSED_HINT = (
    "check the username and password (--broker mqtt://user:pass@host:port or settings.toml),"
    " and that the login may use this instance (--instance; a node's login: the role"
    " node:<its --name>)"
)


class OneShotError(Exception):
    """The broker could not be reached or refused the connection."""


class Unreachable(OneShotError):
    """Nothing listens on the broker's port (the connection was refused): a broker that
    is down, or restarting (the CLI waits for one its stack's supervisor restarts)."""


class Stuck(OneShotError):
    """The broker's port took the connection, and nothing answered it within ``timeout``."""

    def __init__(self, msg: str, timeout: float) -> None:
        super().__init__(msg)
        self.timeout = timeout


class Refused(OneShotError):
    """The broker refused us: credentials or authorisation, not a service that is down."""


class NoAnswer(OneShotError):
    """Nobody answered the request sent on ``topic`` in time. ``asked``: ``whoami`` was
    asked meanwhile (:class:`Exchange`'s ``whoami``), and ``me`` is its answer (None:
    unanswered too)."""

    me: Reply | None = None
    asked = False

    def __init__(self, msg: str, topic: str = "") -> None:
        super().__init__(msg)
        self.topic = topic


class Closed(OneShotError):
    """The broker closed the connection a request on ``topic`` was sent on: a broker
    that went away, or one that closes the connection of a publish its rules forbid
    (Aedes; MQTT 3.1.1 allows that or a silent drop, which Mosquitto and amqtt do)."""

    def __init__(self, msg: str, topic: str = "") -> None:
        super().__init__(msg)
        self.topic = topic


class Reply(Record):
    """A reply as this path reads it (the JSON of wire.messages.Reply)."""

    __slots__ = ("code", "data", "id", "msg", "success")
    _frozen = False
    id: str
    success: bool
    msg: str
    data: Any
    code: str | None  # wire.messages.ErrorCode of a failed reply

    def __init__(
        self, id: str, success: bool, msg: str, data: Any = None, code: str | None = None
    ) -> None:
        self._init(locals())


def _reply_to_one_of(raw: bytes, ids: Collection[str]) -> tuple[str, Reply] | None:
    """(id, Reply) of a reply's payload when it answers one of ``ids``; None for anything
    else (not JSON, another request's)."""
    try:
        doc = jsonlite.loads(raw)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("id"), str) or doc["id"] not in ids:
        return None
    reply = Reply(
        id=str(doc["id"]),
        success=bool(doc.get("success")),
        msg=str(doc.get("msg", "")),
        data=doc.get("data"),
        code=doc.get("code"),
    )
    return reply.id, reply


def _client(url: BrokerURL, client_id: str) -> paho.Client:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    c = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv311,
        clean_session=True,
        transport="websockets" if url.transport == "websockets" else "tcp",
    )
    if url.username:
        c.username_pw_set(url.username, url.password)
    if url.tls:
        import ssl  # (paho has imported it)

        if url.tls_insecure:  # no verification at all, as the other clients' (_tls.py)
            from tomato_mqtt.config.url import warn_insecure

            warn_insecure()
        c.tls_set(
            ca_certs=url.ca_certs,
            certfile=url.certfile,
            keyfile=url.keyfile,
            cert_reqs=ssl.CERT_NONE if url.tls_insecure else ssl.CERT_REQUIRED,
        )
        c.tls_insecure_set(url.tls_insecure)
    return c


def _request_paho(
    url: BrokerURL,
    topic: str,
    reply_topic: Callable[[str], str],
    args: Mapping[str, Any] | None = None,
    *,
    timeout: float = 5.0,
    who: str = "responder",
    resend: bool = False,
) -> Reply:
    """:func:`request` over WebSockets (paho's transport)."""
    import socket

    import paho.mqtt.client as paho

    client_id = f"cli-{os.getpid()}-{os.urandom(3).hex()}"
    reply_to = reply_topic(reply_name())
    req_id = os.urandom(16).hex()
    payload = jsonlite.dumps(
        {"schema": SCHEMA, "id": req_id, "reply_to": reply_to, "args": dict(args or {})}
    )
    c = _client(url, client_id)
    state: dict[str, Any] = {}

    def on_connect(cl: paho.Client, ud: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            state["error"] = (
                f"the MQTT broker at {url} refused the connection ({rc}): {_REFUSED_HINT}"
            )
            return
        cl.subscribe(reply_to, qos=1)

    def on_subscribe(cl: paho.Client, ud: Any, mid: int, granted: Any, props: Any) -> None:
        cl.publish(topic, payload, qos=1)
        # copies only after this first send: one sent before the reply topic is
        # subscribed would be answered into nothing, and the real one then dropped as a
        # duplicate (found by a review, with a broker 0.6 s away)
        state["resend_at"] = time.monotonic() + RESEND_AFTER

    def on_message(cl: paho.Client, ud: Any, msg: paho.MQTTMessage) -> None:
        try:
            doc = jsonlite.loads(msg.payload)
        except ValueError:
            return
        if isinstance(doc, dict) and doc.get("id") == req_id:
            state["reply"] = Reply(
                id=req_id,
                success=bool(doc.get("success")),
                msg=str(doc.get("msg", "")),
                data=doc.get("data"),
                code=doc.get("code"),
            )

    c.on_connect = on_connect
    c.on_subscribe = on_subscribe
    c.on_message = on_message
    deadline = time.monotonic() + timeout
    gap = RESEND_AFTER
    try:
        c.connect(url.host, url.port, keepalive=max(5, int(timeout) + 5))
    except ConnectionRefusedError as e:
        raise Unreachable(f"cannot connect to the MQTT broker at {url}: {e}") from None
    except (OSError, ValueError) as e:
        raise OneShotError(f"cannot connect to the MQTT broker at {url}: {e}") from None
    sock = c.socket()
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        # without it each hop of the round trip can wait ~40 ms for a delayed ACK
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while "reply" not in state and "error" not in state:
            left = deadline - time.monotonic()
            if left <= 0:
                raise NoAnswer(
                    f"no {who} answered on {topic} within {timeout:g} s — is it running?", topic
                )
            rc = c.loop(timeout=min(left, 0.5))
            if "error" in state:
                break
            due = state.get("resend_at")
            if resend and "reply" not in state and due is not None and time.monotonic() >= due:
                c.publish(topic, payload, qos=1)  # see RESEND_AFTER
                gap *= 2
                state["resend_at"] = time.monotonic() + gap
            if rc == paho.MQTT_ERR_CONN_REFUSED:
                raise Refused(f"the MQTT broker at {url} refused the connection: {_REFUSED_HINT}")
            if rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_AGAIN):
                raise Closed(
                    f"lost the connection to the MQTT broker at {url}: {paho.error_string(rc)}",
                    topic,
                )
        if "error" in state:
            raise Refused(state["error"])
        return state["reply"]  # type: ignore[no-any-return]
    finally:
        c.disconnect()
        c.loop(timeout=0.01)  # let DISCONNECT leave, so no last will, no broker-side error


#: the CLI's -v/-vv (cli.core.loudness) set it: each step of an exchange, said on stderr
#: (a logger's info; no logging module imported otherwise: the CLI's start time)
trace: Callable[..., None] | None = None


def _trace(msg: str, *args: Any) -> None:
    if trace is not None:
        trace(msg, *args)


def request(
    url: BrokerURL,
    topic: str,
    reply_topic: Callable[[str], str],
    args: Mapping[str, Any] | None = None,
    *,
    timeout: float = 5.0,
    who: str = "responder",
    resend: bool = False,
    whoami: str | None = None,
) -> Reply:
    """Publish a request on ``topic`` and wait for the reply on ``reply_topic(client_id)``.

    Raises :class:`OneShotError` when the broker is unreachable, :class:`Refused` when it
    refuses us, and :class:`NoAnswer` (naming the topic and the wait) when nobody
    replies within ``timeout``. ``resend``: send it again while no answer comes
    (:data:`RESEND_AFTER`; the CLI's requests to the scheduler, which may be restarting).
    ``whoami``: see :class:`Exchange` (not over WebSockets: asked after the timeout).
    """
    if url.transport == "websockets":
        return _request_paho(url, topic, reply_topic, args, timeout=timeout, who=who, resend=resend)
    with Exchange(url, reply_topic, timeout=timeout, whoami=whoami) as ex:
        return ex.request(topic, args, timeout=timeout, who=who, resend=resend)


class Exchange:
    """One connection for a few requests in a row (``passata``: resolve, then ask)::

        with Exchange(url, topics.reply, timeout=5) as ex:
            r = ex.request(topic, {"what": "components"}, timeout=5, who="scheduler")

    TCP and TLS only (WebSockets: :func:`request`, one call per connection).

    ``whoami``: the scheduler's whoami topic, for a login (MQTT 3.1.1 has no negative
    PUBACK: a request the broker's rules drop is only ever unanswered, and whoami says
    why). A request still unanswered :data:`WHOAMI_BEFORE` s (at most half its timeout)
    before its end asks it meanwhile, once per exchange, and a :class:`NoAnswer` carries
    the answer; it was asked after the timeout, which a login that may not ask it either
    (a node's) waited out twice.
    """

    def __init__(
        self,
        url: BrokerURL,
        reply_topic: Callable[[str], str],
        timeout: float,
        whoami: str | None = None,
    ) -> None:
        from tomato_mqtt.transport.session import Session

        self.whoami = whoami
        self._me: tuple[str, Reply | None] | None = None  # (whoami's id, its answer)
        self._connects = 0  # connections made again (_reconnect)
        self._sent: dict[str, tuple[str, bytes]] = {}  # id -> (topic, payload): send_again
        self.url = url
        self.client_id = f"cli-{os.getpid()}-{os.urandom(3).hex()}"
        self.reply_to = reply_topic(reply_name())
        self._timeout = timeout
        self._keepalive = max(5, int(timeout) + 5)
        self._session = Session(url, self.client_id, keepalive=self._keepalive)

    def __enter__(self) -> Exchange:
        from tomato_mqtt.transport.session import (
            SessionError,
            SessionExplained,
            SessionRefused,
            SessionStuck,
            SessionUnreachable,
            SessionUntrusted,
        )

        t0 = time.monotonic()
        _trace("connecting to %s as %s", self.url, self.client_id)
        try:
            self._session.connect(self._timeout)
            _trace("connected (%.1f ms)", 1e3 * (time.monotonic() - t0))
            self._session.subscribe(self.reply_to, 1, self._timeout)
            _trace("subscribed to %s (%.1f ms)", self.reply_to, 1e3 * (time.monotonic() - t0))
        except SessionRefused as e:
            self._session.close()
            raise Refused(f"{e}: {_REFUSED_HINT}") from None
        except SessionUntrusted as e:  # it runs, and its certificate is not trusted here
            from tomato_mqtt.transport.types import UNTRUSTED_HINT

            self._session.close()
            raise Refused(f"{e}: {UNTRUSTED_HINT}") from None
        except SessionExplained as e:  # it says what to check
            self._session.close()
            raise Refused(str(e)) from None
        except SessionStuck as e:
            self._session.close()
            raise Stuck(str(e), self._timeout) from None
        except SessionUnreachable as e:
            self._session.close()
            raise Unreachable(str(e)) from None
        except SessionError as e:
            self._session.close()
            raise OneShotError(str(e)) from None
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._session.close()

    def request(
        self,
        topic: str,
        args: Mapping[str, Any] | None = None,
        *,
        timeout: float = 5.0,
        who: str = "responder",
        resend: bool = False,
    ) -> Reply:
        """One request and its reply; with ``resend``, sent again (same id) while no
        answer comes (:data:`RESEND_AFTER`), also over a new connection when the broker
        closed this one (a broker restarted: ``ketchup submit`` failed "closed the
        connection — is tomato-mqtt running?" while its job was queued, found by a
        fault fuzzer; the responder answers a copy of a request it answered already
        with the same answer)."""
        req_id, payload = self._envelope(args)
        deadline = time.monotonic() + timeout
        gap = RESEND_AFTER if resend else timeout
        pause = 0.05  # before a new connection (below)
        sent = time.monotonic()
        ask_at = self.ask_whoami_at(topic, deadline, timeout)
        connects = self._connects
        while True:
            try:
                self._publish(topic, payload)
                _trace("sent %s (%d bytes, request %s)", topic, len(payload), req_id)
                step = min(deadline, time.monotonic() + gap)
                # (not on a connection made again: a broker that closes the connection
                # of a publish its rules forbid, Aedes, closes it at each copy, and a
                # whoami sent meanwhile with it: asked after the timeout, as before)
                meanwhile = ask_at if self._connects == connects else None
                reply = self.first_reply({req_id: (topic, who)}, step, timeout, meanwhile)[1]
                _trace("%s answered in %.1f ms", who, 1e3 * (time.monotonic() - sent))
                return reply
            except NoAnswer:
                if time.monotonic() >= deadline:
                    raise
                _trace("no answer from %s yet: sending the request again", who)
            except OneShotError as e:  # the connection closed after the request went
                if not resend or time.monotonic() >= deadline:
                    raise Closed(str(e), topic) from None
                # a pause first, doubling: a broker that closes the connection of a
                # publish its rules forbid (Aedes) was asked ~100 times a second
                time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
                pause = min(pause * 2, 1.0)
                try:
                    self._reconnect(deadline)
                except Refused:
                    raise
                except OneShotError:  # no new connection by the deadline: said as the
                    # closed one (a loaded CI box: "did not answer the connection within
                    # 0.1 s — is tomato-mqtt running?" about a broker that closes the
                    # connection of a request its rules forbid)
                    raise Closed(str(e), topic) from None
            gap *= 2

    def _reconnect(self, deadline: float) -> None:
        """A new connection (the same client id and reply topic), tried until
        ``deadline``: the broker closed the last one."""
        from tomato_mqtt.transport.session import (
            Session,
            SessionError,
            SessionRefused,
            SessionUntrusted,
        )

        self._connects += 1
        if self._me is not None and self._me[1] is None:
            self._me = None  # its answer, if any, went to the connection now closed
        while True:
            self._session.close()
            self._session = Session(self.url, self.client_id, keepalive=self._keepalive)
            wait = max(0.1, min(deadline - time.monotonic(), 2.0))
            try:
                self._session.connect(wait)
                self._session.subscribe(self.reply_to, 1, wait)
                return
            except (SessionRefused, SessionUntrusted) as e:
                raise Refused(f"{e}: {_REFUSED_HINT}") from None
            except SessionError as e:
                if time.monotonic() + 0.2 >= deadline:
                    raise OneShotError(str(e)) from None
            time.sleep(0.2)

    def send(self, topic: str, args: Mapping[str, Any] | None = None) -> str:
        """Publish a request (QoS 1); its id, for :meth:`first_reply`."""
        req_id, payload = self._envelope(args)
        self._publish(topic, payload)
        self._sent[req_id] = (topic, payload)
        return req_id

    def send_again(self, req_id: str) -> None:
        """Publish a request :meth:`send` sent once more, with its id (see RESEND_AFTER)."""
        self._publish(*self._sent[req_id])

    def _envelope(self, args: Mapping[str, Any] | None) -> tuple[str, bytes]:
        req_id = os.urandom(16).hex()
        payload = jsonlite.dumps(
            {"schema": SCHEMA, "id": req_id, "reply_to": self.reply_to, "args": dict(args or {})}
        )
        return req_id, payload.encode()

    def _publish(self, topic: str, payload: bytes) -> None:
        from tomato_mqtt.transport.session import SessionError

        try:
            self._session.publish(topic, payload, qos=1)
        except SessionError as e:
            raise Closed(str(e), topic) from None

    def ask_whoami_at(self, topic: str, deadline: float, timeout: float) -> float | None:
        """When a request on ``topic`` that ends at ``deadline`` asks ``whoami``
        meanwhile (see the class), for :meth:`first_reply`'s ``ask_at``; None: never."""
        if self.whoami is None or topic == self.whoami:
            return None
        return deadline - min(WHOAMI_BEFORE, timeout / 2)

    def first_reply(
        self,
        waiting: Mapping[str, tuple[str, str]],
        deadline: float,
        timeout: float,
        ask_at: float | None = None,
        again: str | None = None,
    ) -> tuple[str, Reply]:
        """(id, reply) of the first reply to one of the requests ``waiting`` (id ->
        (topic, who answers)), by ``deadline``; :class:`NoAnswer` naming the first of
        them (``timeout``: the wait it was given, for the message) when none came.
        ``ask_at``: none by then, ``whoami`` is asked (once per exchange), and the
        NoAnswer carries its answer (:meth:`ask_whoami_at`). ``again``: a request
        :meth:`send` sent, sent again while no answer comes (RESEND_AFTER, then 2, 4,
        … s more)."""
        from tomato_mqtt.transport.session import SessionError, SessionTimeout

        first_topic, first_who = next(iter(waiting.values()))
        waiting = dict(waiting)
        if self._me is not None and self._me[1] is None:
            waiting[self._me[0]] = ("", "")  # whoami asked, not answered yet
        gap = RESEND_AFTER
        again_at = time.monotonic() + gap if again is not None else deadline
        try:
            while True:
                until = min(deadline, again_at)
                if ask_at is not None and self._me is None and ask_at < until:
                    until = ask_at
                try:
                    got, reply = self._receive(waiting, until)
                except SessionTimeout:
                    if until == deadline:
                        raise
                    if until == again_at and again is not None:
                        self.send_again(again)
                        gap *= 2
                        again_at = time.monotonic() + gap
                        _trace("no answer yet: %s sent again", again)
                        continue
                    if self.whoami is None:
                        raise
                    try:
                        me = self.send(self.whoami)
                    except Closed as closed:  # said of the request, as a timeout is
                        raise Closed(str(closed), first_topic) from None
                    self._me = (me, None)
                    waiting[me] = ("", "")
                    _trace("no answer yet: asked %s meanwhile", self.whoami)
                    continue
                if self._me is not None and got == self._me[0]:
                    self._me = (got, reply)
                    del waiting[got]
                    continue
                return got, reply
        except SessionTimeout:
            told = NoAnswer(
                f"no {first_who} answered on {first_topic} within {timeout:g} s — is it running?",
                first_topic,
            )
            if self._me is not None:
                told.asked, told.me = True, self._me[1]
            raise told from None
        except SessionError as e:  # closed: said about the request a timeout would name
            raise Closed(str(e), first_topic) from None

    def _kept_whoami(self, raw: bytes) -> None:
        """A reply read while watching other topics: whoami's, asked meanwhile by an
        earlier request, is kept (it was dropped, and the next request's NoAnswer said
        whoami unanswered: a review)."""
        if self._me is not None and self._me[1] is None:
            got = _reply_to_one_of(raw, (self._me[0],))
            if got is not None:
                self._me = got

    def _receive(self, waiting: Mapping[str, tuple[str, str]], until: float) -> tuple[str, Reply]:
        """The first reply to one of ``waiting`` by ``until`` (else SessionTimeout)."""
        while True:
            got_topic, raw, _retained = self._session.receive(until)
            got = _reply_to_one_of(raw, waiting) if got_topic == self.reply_to else None
            if got is not None:
                return got

    def retained(self, topic: str, wait: float) -> bytes | None:
        """The retained message on ``topic`` (None if none comes within ``wait``)."""
        return self.watch(topic, wait, lambda t, raw: raw if t == topic and raw else None)

    def watch(
        self, topic_filter: str, wait: float, on: Callable[[str, bytes], T | None]
    ) -> T | None:
        """Subscribe to ``topic_filter``; the first non-None ``on(topic, payload)`` of the
        messages that come within ``wait`` (retained ones first), else None."""
        from tomato_mqtt.transport.session import SessionError, SessionRefused, SessionTimeout

        deadline = time.monotonic() + wait
        try:
            try:
                self._session.subscribe(topic_filter, 1, wait)
            except SessionRefused as e:  # the broker's rules: not a stack that is down
                # (said "is tomato-mqtt running? `tomato start` starts it" to a node's
                # login, which may not read other components' metas: a security round)
                raise Refused(
                    f"{e}: this login may not read it"
                    + (f" (login {self.url.username!r})" if self.url.username else "")
                ) from None
            while True:
                got_topic, raw, _retained = self._session.receive(deadline)
                if got_topic == self.reply_to:
                    self._kept_whoami(raw)
                    continue
                found = on(got_topic, raw)
                if found is not None:
                    return found
        except SessionTimeout:
            return None
        except SessionError as e:
            raise OneShotError(str(e)) from None
