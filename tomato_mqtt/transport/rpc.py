"""Request/reply over MQTT 3.1.1: correlation id + reply topic in the payload.

A requester publishes ``Request{id, reply_to, args}`` on a ``.../cmd/<op>[/<user>]`` topic
and waits for the ``Reply`` with the same id on its own ``reply/<user>/<client-id>``
topic. The ``<user>`` segment of a request is the requester's identity: the broker's ACL
pins it to the login, so a handler reads it (:func:`requester`) instead of trusting the
payload; a reply_to outside that user's reply topics is refused. A
responder dispatches through an explicit table of operations, answers every request
(also malformed ones, when it can find out where to), and de-duplicates by id, since
QoS 1 may deliver a request twice and a client sends it again while no answer comes: a
copy of a request that changes something gets the first one's reply again (kept in
memory, and in a :class:`ReplyJournal` where the service has one, so a copy reaching a
restarted scheduler is answered as the one its predecessor carried out); a copy of a
read (``Command.reads``) is answered anew. Args are validated against the operation's model in
``wire/commands.py`` before the handler runs; every failed reply carries an error
``code`` (``wire.messages.ErrorCode``) so that clients never match text.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, JsonValue, ValidationError

from tomato_mqtt.errors import cannot_write, locked
from tomato_mqtt.transport.client import AsyncClient, Message, MqttTimeout
from tomato_mqtt.transport.oneshot import RESEND_AFTER
from tomato_mqtt.waits import wait_for
from tomato_mqtt.wire.commands import Command, commands_of
from tomato_mqtt.wire.commands import Responder as ResponderKind
from tomato_mqtt.wire.messages import (
    MAX_ID,
    DecodeError,
    ErrorCode,
    Reply,
    Request,
    decode,
    encode,
)
from tomato_mqtt.wire.topics import Topics

__all__ = [
    "CommandError",
    "Handler",
    "NoResponder",
    "ReplyError",
    "ReplyJournal",
    "Requester",
    "Responder",
    "Result",
    "requester",
]

log = logging.getLogger(__name__)


class NoResponder(MqttTimeout):
    """Nobody answered a request in time (``topic``: where it was sent)."""

    def __init__(self, msg: str, topic: str = "") -> None:
        super().__init__(msg)
        self.topic = topic


class CommandError(Exception):
    """A command that cannot be carried out; its message goes to the user as is."""

    def __init__(self, msg: str, data: JsonValue = None, code: ErrorCode = "refused") -> None:
        super().__init__(msg)
        self.data = data
        self.code: ErrorCode = code


class ReplyError(Exception):
    """A request answered with ``success: false`` (raised by :meth:`Requester.call`)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.msg)
        self.reply = reply
        self.code = reply.code


@dataclass
class Result:
    msg: str
    data: JsonValue = None


Handler = Callable[[Mapping[str, JsonValue]], Awaitable[Result]]

# who sent the request being handled: the <user> topic segment, or None on topics that
# carry no identity (node and component commands, whose senders the ACL restricts)
_requester: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tomato_requester", default=None
)


def requester() -> str | None:
    """The identity (topic segment) of the request being handled, if its topic has one."""
    return _requester.get()


class Requester:
    """Sends requests and matches replies by id, for one connected client."""

    def __init__(self, client: AsyncClient, topics: Topics, max_request: int | None = None) -> None:
        self.client = client
        self.topics = topics
        #: the largest request sent (the broker's max_packet_bytes less a margin)
        self.max_request = MAX_REPLY if max_request is None else max_request
        # not its client id: every request carries its reply topic, so a node read the
        # scheduler's and the recorder's client ids off their task_start and ack, and on
        # a broker that lets any login take over a client id (Mosquitto) kept kicking
        # them off (a security tour). Its kind (``scheduler``, ``ketchup``) stays in it
        kind = client.client_id.partition("-")[0]
        self.reply_topic = topics.reply(f"{kind}-{uuid.uuid4().hex[:16]}")
        self._waiting: dict[str, asyncio.Future[Reply]] = {}
        self._started = False

    async def start(self) -> None:
        if not self._started:
            await self.client.subscribe(self.reply_topic, handler=self._on_reply)
            self._started = True

    def fail_all(self, error: BaseException) -> None:
        """Every request still waiting for its reply raises ``error`` (its client is being
        closed: they waited out their timeouts, a review)."""
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(error)

    def _on_reply(self, msg: Message) -> None:
        try:
            reply = decode(Reply, msg.payload, msg.topic)
        except DecodeError as e:
            log.warning("%s", e)
            return
        fut = self._waiting.get(reply.id)
        if fut is not None and not fut.done():
            fut.set_result(reply)

    async def request(
        self,
        topic: str,
        args: Mapping[str, JsonValue] | BaseModel | None = None,
        *,
        timeout: float = 5.0,
        who: str = "responder",
        resend: bool = False,
    ) -> Reply:
        """Send a request and wait for its reply; with ``resend``, send it again (same
        id) while no answer comes (``oneshot.RESEND_AFTER``, doubling: a client's request
        to the scheduler, which may be restarting; the scheduler's to the recorder).

        Raises :class:`NoResponder` naming the topic and the wait when nobody answers.
        """
        await self.start()
        if isinstance(args, BaseModel):
            # only what the caller gave: a responder of an older version refuses fields it
            # does not know, also a new optional one left at its default (job_submit token)
            payload_args = args.model_dump(mode="json", by_alias=True, exclude_unset=True)
        else:
            payload_args = dict(args or {})
        req = Request(id=uuid.uuid4().hex, reply_to=self.reply_topic, args=payload_args)
        data = encode(req)
        if len(data) > self.max_request:  # the broker would close the connection
            raise CommandError(
                f"the request to {topic} is {len(data):,} bytes, more than a message may "
                f"carry ({self.max_request:,}): send less at a time",
                code="bad_request",
            )
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[req.id] = fut
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        gap = RESEND_AFTER if resend else timeout
        try:
            await self.client.publish(topic, data, qos=1, timeout=timeout)
            while True:
                try:
                    wait = max(0.0, min(gap, deadline - loop.time()))
                    return await wait_for(asyncio.shield(fut), wait)
                except asyncio.TimeoutError:
                    if loop.time() >= deadline:
                        raise
                # a copy, not waited for: a reply that comes meanwhile is taken at once
                await self.client.publish(topic, data, qos=1, wait=False)
                gap *= 2
        except asyncio.TimeoutError:
            # the request is over: its copies the broker has not acknowledged are
            # forgotten. A broker that closes the connection of a publish its rules forbid
            # (Aedes) closed each new one too while paho sent them again at every
            # reconnect, and nothing this client sent afterwards got through
            self.client.drop_unacknowledged(topic, data)
            raise NoResponder(
                f"no {who} answered on {topic} within {timeout:g} s — is it running?", topic
            ) from None
        finally:
            self._waiting.pop(req.id, None)

    async def call(
        self,
        topic: str,
        command: Command,
        args: Mapping[str, JsonValue] | BaseModel | None = None,
        *,
        timeout: float = 5.0,
        who: str = "responder",
        resend: bool = False,
    ) -> Any:
        """Send a typed command: args checked before sending, reply data parsed.

        Returns the reply data as typed objects; raises :class:`ReplyError` (with the
        reply's ``code``) when the responder refused, :class:`NoResponder` on timeout.
        """
        if not isinstance(args, BaseModel):
            args = command.parse_args(dict(args or {}))
        reply = await self.request(topic, args, timeout=timeout, who=who, resend=resend)
        if not reply.success:
            raise ReplyError(reply)
        if reply.data is None and (reply.msg or "").endswith(f"{WITHOUT_DATA})"):
            return None  # carried out; its answer was too large to send (Responder)
        return command.parse_data(reply.data)


class _ContractBroken(Exception):
    """A handler's reply data does not match its command's declared type (a bug)."""


def _check_data(cmd: Command, data: JsonValue) -> None:
    """Both sides validate: the reply data must match the command's declared type."""
    try:
        cmd.parse_data(data)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        where = ".".join(str(x) for x in first["loc"]) or "data"
        raise _ContractBroken(
            f"reply data of {cmd.responder}/{cmd.op} breaks its contract at {where}: {first['msg']}"
        ) from None


_REPLY_TO = re.compile(rb'"reply_to"\s*:\s*"([^"\\]+)"')
#: a request's id as it came, text or a number: a JavaScript client's numeric id was
#: answered with "" and could not match its reply (an integrator's tour)
_ID = re.compile(rb'"id"\s*:\s*(?:"([^"\\]+)"|(-?[0-9][0-9.eE+-]*))')


class ReplyJournal(Protocol):
    """Where a responder keeps the replies of requests that changed something, across a
    restart (the scheduler's state file): ``user`` is the request topic's identity
    segment ("" on topics without one), ``op`` the operation, ``rid`` the request's id."""

    def reply_for(self, user: str, op: str, rid: str) -> bytes | None: ...

    def keep_reply(self, user: str, op: str, rid: str, reply: bytes) -> None: ...


#: a request being answered (its copies wait for that answer: dropped), or answered with
#: a reply too large to keep (as before replies were kept: a copy is dropped)
_ANSWERING = b""
#: the largest reply kept for copies (bytes): a job's reply holds its payload
_KEEP_AT_MOST = 16 * 1024
#: the replies kept for copies, at most (bytes, besides the ``remember`` count): 2,000
#: replies of up to 16 kB held up to ~32 MB for good (a soak's scheduler grew by 3.4 MB
#: of them over 2,000 submits; a copy comes within seconds of its request)
KEEP_BYTES = 2 * 1024 * 1024
#: the largest reply sent (bytes), unless the service says otherwise: under the embedded
#: broker's default max_packet_bytes (8 MiB), which disconnects a client sending more
MAX_REPLY = 8 * 1024 * 1024 - 64 * 1024
#: how a reply that was carried out but too large to send in full ends its message
WITHOUT_DATA = "without its data"

#: requests a second one login may send a responder, and in a burst (see Responder._admit)
REQUESTS_PER_S = 200.0
REQUESTS_BURST = 1000


class Responder:
    """Answers requests through an explicit operation table, de-duplicating by id."""

    def __init__(
        self,
        client: AsyncClient,
        topics: Topics,
        handlers: Mapping[str, Handler],
        *,
        name: str,
        kind: ResponderKind | None = None,
        remember: int = 2000,
        remember_bytes: int = KEEP_BYTES,
        journal: ReplyJournal | None = None,
        journaled: frozenset[str] = frozenset(),
        max_reply: int = MAX_REPLY,
        on_fault: Callable[[BaseException], str | None] | None = None,
        per_login: bool = False,
        bytes_per_request: int = 0,
        users_ops: Collection[str] | None = None,
    ) -> None:
        self.client = client
        #: the ops a request on a ``{user}`` topic may name, as an unknown op's reply
        #: lists them (None: every op of the table); a user's unknown op on a component
        #: was offered the services' own (task_start, ack, replay: an integrator's tour)
        self.users_ops = users_ops
        #: requests of one login over REQUESTS_PER_S (bursts of REQUESTS_BURST) dropped
        self.per_login = per_login
        #: with ``per_login``: a reply counts as one request per this many bytes of it, so
        #: a login's answers cost it what they cost the service (0: one request each). A
        #: reader's 150 requests a second for jobs of 1.5 MB replies, under the request
        #: limit, held the scheduler up for 100 s (a hostile tour)
        self.bytes_per_request = bytes_per_request
        #: what the service says of an error of its own storage (a damaged state file),
        #: answered ``unavailable``; None: the error is a bug (``internal``)
        self.on_fault = on_fault
        self.max_reply = max_reply
        self.topics = topics
        self.handlers = dict(handlers)
        self.name = name
        # the typed contract of each op (args checked before the handler runs)
        self.commands: dict[str, Command] = commands_of(kind) if kind else {}
        # (user, op, id) -> the encoded reply, or _ANSWERING while the handler runs
        self._seen: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()
        self._remember = remember
        self._remember_bytes = remember_bytes
        self._seen_bytes = 0  # the sum of the lengths of the replies in _seen
        #: the ops whose replies also go to the journal (those a repeat would not answer
        #: as the first time, e.g. pipeline_load: "already holds the sample")
        self.journal = journal
        self.journaled = journaled
        #: per login: (tokens, when last filled), and the requests dropped since said
        self._buckets: dict[str, list[float]] = {}
        self._dropped: dict[str, int] = {}
        self._dropped_said = 0.0
        #: per login: when a dropped request of it was last answered (once a second)
        self._told: dict[str, float] = {}
        #: per login: the requests dropped so far
        self.dropped: dict[str, int] = {}
        #: replies the client would not send since last said, and when that was
        self._unsent = 0
        self._unsent_said = -2.0

    def _admit(self, user: str, at: float = 0.0) -> bool:
        """Whether a request of ``user`` is taken: a token bucket per login
        (REQUESTS_PER_S, bursts of REQUESTS_BURST). A reader's flood of 582,000 requests
        (40 s) held the scheduler up for 84 s: nobody else was answered, and a job's end
        failed to be told (a security tour). What is over is dropped unread, said once a
        second with its count. ``at``: when the request arrived (a service that is
        behind takes a flood later than it came, at its own pace, which the limit would
        then never see: a test run on a loaded machine)."""
        now = at or time.monotonic()
        b = self._buckets.get(user)
        if b is None:
            if len(self._buckets) > 10_000:  # (logins are few: a bound all the same)
                self._buckets.clear()
            b = self._buckets[user] = [float(REQUESTS_BURST), now]
        b[0] = min(float(REQUESTS_BURST), b[0] + max(0.0, now - b[1]) * REQUESTS_PER_S)
        b[1] = max(b[1], now)
        if b[0] >= 1.0:
            b[0] -= 1.0
            return True
        self._dropped[user] = self._dropped.get(user, 0) + 1
        self.dropped[user] = self.dropped.get(user, 0) + 1
        if now - self._dropped_said >= 1.0:
            self._dropped_said = now
            said = ", ".join(f"{u or '(none)'}: {n}" for u, n in sorted(self._dropped.items()))
            log.warning(
                "%s: requests over %g a second of one login dropped unread (%s)",
                self.name,
                REQUESTS_PER_S,
                said,
            )
            self._dropped.clear()
        return False

    def _charge(self, user: str, requests: int) -> None:
        """A reply as large as ``requests`` more requests: taken from the login's bucket,
        below zero if need be (its next requests wait until it is filled again)."""
        b = self._buckets.get(user)
        if b is not None and requests > 0:
            b[0] = max(b[0] - requests, -float(REQUESTS_BURST))

    async def handle(
        self,
        msg: Message,
        op: str,
        handlers: Mapping[str, Handler] | None = None,
        where: str | None = None,
    ) -> None:
        """Handle one request message published on ``.../cmd/<op>``.

        ``handlers`` replaces the table for this call (e.g. bound to one component),
        sharing the de-duplication memory of this responder; ``where`` names what they
        are bound to in an unknown op's reply (the responder's name otherwise).
        """
        table = self.handlers if handlers is None else handlers
        parsed = self.topics.parse(msg.topic)
        user = parsed.user if parsed is not None else None
        if self.per_login and not self._admit(user or "", msg.at):
            await self._tell_throttled(msg, op, user or "")
            return
        if msg.retain:
            # a request kept by the broker (published with retain): sent again at every
            # restart or subscription (an admin's retained `shutdown` stopped its node at
            # each start: found by an outside audit). A request is one-shot
            log.warning(
                "%s: ignoring a retained request on %s (requests are one-shot: an admin"
                " clears it by publishing an empty retained message there)",
                self.name,
                msg.topic,
            )
            return
        try:
            req = decode(Request, msg.payload, msg.topic)
        except DecodeError as e:
            await self._reply_to_malformed(msg, str(e))
            return
        if not self._reply_allowed(req.reply_to, user):
            log.warning(
                "%s: ignoring request %s on %s with reply_to %s outside the requester's "
                "reply topics",
                self.name,
                req.id,
                msg.topic,
                req.reply_to[:200],
            )
            return
        key = (user or "", op, req.id)
        kept = self._seen.get(key)
        if kept is None:
            kept = self._from_journal(key)
        if kept is not None:
            if kept == _ANSWERING:
                log.debug("duplicate request %s on %s dropped: being answered", req.id, msg.topic)
            else:  # the first reply may be what got lost: the same answer again
                log.info("request %s on %s came again: its reply sent again", req.id, msg.topic)
                await self._send_encoded(req.reply_to, kept)
            return
        self._keep(key, _ANSWERING)

        # a user's form takes a user's ops only: task_start on a user's topic started a
        # task on an open stack (an integrator's run; a secured broker's rules refuse it)
        users = user is None or self.users_ops is None or op in self.users_ops
        handler = table.get(op) if users else None
        if handler is None:
            ops = table if user is None or self.users_ops is None else self.users_ops
            known = ", ".join(sorted(o for o in ops if o in table))
            reply = Reply(
                id=req.id,
                success=False,
                msg=f"unknown operation {op!r} on {where or self.name} (known: {known})",
                code="unknown_op",
            )
        else:
            token = _requester.set(user)
            try:
                reply = await self._run(handler, req, op)
            finally:
                _requester.reset(token)
        data = encode(reply)
        cmd = self.commands.get(op)
        if len(data) > self.max_reply:
            # sent, it would cost the service its connection (the broker's packet size)
            log.warning(
                "%s: a reply to %s of %d bytes not sent: too large", self.name, op, len(data)
            )
            too_large = (
                f"the answer to {op} would be {len(data):,} bytes, more than a message may "
                f"carry ({self.max_reply:,})"
            )
            if reply.success and cmd is not None and not cmd.reads:
                # it was carried out: said so, without its data (a review: "bad_request"
                # after a cancel that was made, and a retry found the jobs ended)
                reply = Reply(
                    id=req.id,
                    success=True,
                    msg=f"{reply.msg} ({too_large}: {WITHOUT_DATA})",
                )
            else:
                reply = Reply(
                    id=req.id,
                    success=False,
                    msg=f"{too_large}: ask for less at a time (fewer job ids)",
                    code="bad_request",
                )
            data = encode(reply)
        if self.per_login and self.bytes_per_request:
            self._charge(user or "", len(data) // self.bytes_per_request)
        if cmd is not None and cmd.reads:
            self._forget(key)  # a copy is answered anew: a read changes nothing
        elif len(data) > _KEEP_AT_MOST:
            self._keep(key, _ANSWERING)
        else:
            self._keep(key, data)
            self._to_journal(key, data)
        await self._send_encoded(req.reply_to, data)

    def _keep(self, key: tuple[str, str, str], value: bytes) -> None:
        """Remember ``value`` for ``key`` (the newest entry), the oldest forgotten while
        more than ``remember`` entries are kept, and the oldest replies while more than
        ``remember_bytes`` of them are (not a request still being answered: its copy
        would be carried out a second time; a review)."""
        self._forget(key)
        self._seen[key] = value
        self._seen_bytes += len(value)
        while len(self._seen) > self._remember:
            _, gone = self._seen.popitem(last=False)
            self._seen_bytes -= len(gone)
        answering = []
        while self._seen_bytes > self._remember_bytes and self._seen:
            old, gone = self._seen.popitem(last=False)
            if gone:
                self._seen_bytes -= len(gone)
            else:
                answering.append(old)
        for old in reversed(answering):  # back where they were: the oldest
            self._seen[old] = _ANSWERING
            self._seen.move_to_end(old, last=False)

    def _forget(self, key: tuple[str, str, str]) -> None:
        gone = self._seen.pop(key, None)
        if gone is not None:
            self._seen_bytes -= len(gone)

    def _journal_of(self, op: str) -> ReplyJournal | None:
        """Where the replies of ``op`` are kept across a restart, if they are."""
        return self.journal if op in self.journaled else None

    def _from_journal(self, key: tuple[str, str, str]) -> bytes | None:
        journal = self._journal_of(key[1])
        if journal is None:
            return None
        try:
            return journal.reply_for(*key)
        except Exception as e:  # a state file that cannot be read: answered anew
            log.warning("%s: cannot read the kept replies: %s", self.name, e)
            return None

    def _to_journal(self, key: tuple[str, str, str], data: bytes) -> None:
        journal = self._journal_of(key[1])
        if journal is None:
            return
        try:
            journal.keep_reply(*key, data)
        except Exception as e:  # a full disk: the reply still goes; only a copy reaching
            # a restarted responder would be carried out again
            log.warning("%s: cannot keep the reply to %s: %s", self.name, key[2], e)

    def _reply_allowed(self, reply_to: str, user: str | None) -> bool:
        parsed = self.topics.parse(reply_to)
        if parsed is None or parsed.kind != "reply" or not parsed.name:
            return False  # (also ".../reply/<user>/": a client id is never empty)
        # a request that names its sender is answered only on that sender's replies, so
        # nobody can make a service send data to another user
        return user is None or parsed.user == user

    async def _run(self, handler: Handler, req: Request, op: str) -> Reply:
        def fail(msg: str, code: ErrorCode, data: JsonValue = None) -> Reply:
            return Reply(id=req.id, success=False, msg=msg, data=data, code=code)

        try:
            cmd = self.commands.get(op)
            if cmd is not None:
                cmd.parse_args(req.args)
            res = await handler(req.args)
            if cmd is not None:
                _check_data(cmd, res.data)
            return Reply(id=req.id, success=True, msg=res.msg, data=res.data)
        except _ContractBroken as e:
            log.error("%s: %s", self.name, e)
            return fail(f"internal error in {self.name}: {e}", "internal")
        except CommandError as e:
            return fail(str(e), e.code, e.data)
        except ValidationError as e:
            errs = "; ".join(
                f"{'.'.join(str(x) for x in err['loc']) or 'args'}: {err['msg']}"
                for err in e.errors(include_url=False)[:3]
            )
            return fail(f"invalid arguments for {op}: {errs}", "bad_request")
        except (KeyError, LookupError) as e:
            text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            return fail(str(text), "not_found")
        except (ValueError, TypeError) as e:
            return fail(str(e), "bad_request")
        except OSError as e:
            return fail(str(e), "unavailable")
        except Exception as e:  # a bug must not take the service down
            said = self.on_fault(e) if self.on_fault is not None else None
            if said is not None:
                return fail(said, "unavailable")
            if (
                type(e).__module__ == "sqlite3"
                and type(e).__name__ == "OperationalError"
                # ("database table is locked": a statement of its own for a moment; the
                # narrowing to another program's lock made it "internal": a review)
                and (cannot_write(str(e)) or "locked" in str(e))
            ):
                # its store cannot be written now (a full disk, a read-only file): said as
                # such, not "internal error" (a fault-injection review)
                log.error("%s: operation %s: its store cannot be written: %s", self.name, op, e)
                fix = (
                    "another program holds its store's write lock (an sqlite3 shell "
                    "inside a transaction?): end that, then try again"
                    if locked(str(e))
                    else "try again"
                    if "locked" in str(e)
                    else "free space or fix the permissions of its data folder, then try again"
                )
                return fail(
                    f"{self.name} cannot store this now ({e}): it was not done; {fix}",
                    "unavailable",
                )
            log.exception("%s: operation %s failed", self.name, op)
            return fail(f"internal error in {self.name}: {e!r}", "internal")

    async def _tell_throttled(self, msg: Message, op: str, user: str) -> None:
        """Answer one dropped request of ``user`` a second, ``conflict``, saying why: a
        throttled login heard nothing and waited out each timeout (a security tour).
        The others stay unread, so a flood costs no more than the limit allows."""
        now = time.monotonic()
        if now - self._told.get(user, -2.0) < 1.0:
            return
        if len(self._told) > 10_000:
            self._told.clear()
        self._told[user] = now
        try:
            req = decode(Request, msg.payload, msg.topic)
        except DecodeError:
            return
        if not self._reply_allowed(req.reply_to, user or None):
            return
        large = (
            f"; an answer counts as one request per {self.bytes_per_request // 1024} kB of it"
            if self.bytes_per_request
            else ""
        )
        said = (
            f"{op} not answered: {self.name} takes at most {REQUESTS_PER_S:g} requests a "
            f"second of one login (bursts of {REQUESTS_BURST}{large}), and "
            f"{user or 'this login'} sent more; the others are dropped unread: send fewer, "
            "or wait for each answer"
        )
        await self._send(req.reply_to, Reply(id=req.id, success=False, msg=said, code="conflict"))

    async def _reply_to_malformed(self, msg: Message, reason: str) -> None:
        m = _REPLY_TO.search(msg.payload)
        if m is None:
            log.warning("%s: dropped a request nobody can be told about: %s", self.name, reason)
            return
        reply_to = m.group(1).decode(errors="replace")
        parsed = self.topics.parse(msg.topic)
        if not self._reply_allowed(reply_to, parsed.user if parsed is not None else None):
            log.warning(
                "%s: dropped a malformed request on %s with reply_to %s outside the "
                "requester's reply topics: %s",
                self.name,
                msg.topic,
                reply_to[:200],
                reason,
            )
            return
        idm = _ID.search(msg.payload)
        rid = (idm.group(1) or idm.group(2)).decode(errors="replace")[:MAX_ID] if idm else ""
        await self._send(reply_to, Reply(id=rid, success=False, msg=reason, code="bad_request"))

    async def _send(self, topic: str, reply: Reply) -> None:
        await self._send_encoded(topic, encode(reply))

    async def _send_encoded(self, topic: str, data: bytes) -> None:
        try:
            await self.client.publish(topic, data, qos=1, wait=False)
            # the tail of a run of failures, said once a send works (once a second too:
            # failures and sends alternating at a flood's edge said a line each: a review)
            if self._unsent and time.monotonic() - self._unsent_said >= 1.0:
                self._unsent_said = time.monotonic()
                log.warning(
                    "%s: %d more replies could not be sent (a flood's end?)",
                    self.name,
                    self._unsent,
                )
                self._unsent = 0
        except Exception as e:
            # said once a second, with the count (a flood of requests on an open stack
            # filled the client's queue: a line per reply, 16,490 in 10 s: a hostile tour)
            self._unsent += 1
            now = time.monotonic()
            if now - self._unsent_said >= 1.0:
                self._unsent_said = now
                more = f" (and {self._unsent - 1} more since said)" if self._unsent > 1 else ""
                log.warning("%s: could not send reply to %s: %s%s", self.name, topic, e, more)
                self._unsent = 0
