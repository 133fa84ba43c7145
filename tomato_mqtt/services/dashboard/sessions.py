"""Who is using the page, and what they may do: one MQTT identity per signed-in user.

The dashboard subscribes with its own login (role ``dashboard`` = ``reader`` on a
secured stack). A person who signs in on the page gets a *session*: the server opens one
more MQTT connection with that person's login and password, asks the scheduler
``whoami``, and sends every command of that session on that connection. So the broker's
ACL and the scheduler's role checks see the real user (``scheduler/cmd/<op>/<user>``),
exactly as for ``ketchup`` on that person's PC; the dashboard adds no trust of its own.
Without signing in, a page reads through the dashboard's own login and shows no
controls on a secured stack, whatever that login's role: acting needs a person. On an
open stack (no users file, loopback only) every client may do everything anyway, so a
page served on loopback shows every control; served on a network address, an open
stack's dashboard shows none and refuses sign-in (the broker would accept any name).
``[dashboard] read_only`` hides every control everywhere.

A session has two halves: the cookie (``token``), which the browser sends by itself,
and a ``key``, which only the page holds (the sign-in's answer; the page keeps it in
its origin's ``localStorage``) and sends with every request. A browser sends a host's
cookies to every port of that host, so any web server on the dashboard's PC received a
signed-in user's cookie and could act as that user (a known gap of the cookie alone);
storage is per origin, port included, so no other server gets the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import math
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tomato_mqtt.config.url import BrokerURL
from tomato_mqtt.transport.client import AsyncClient, MqttError, MqttRefused
from tomato_mqtt.transport.rpc import NoResponder, Requester
from tomato_mqtt.wire.commands import command
from tomato_mqtt.wire.status import WhoamiData
from tomato_mqtt.wire.topics import Topics

__all__ = ["CONTROL_OPS", "KNOWN_OPS", "LoginFailed", "Session", "Sessions", "controls_for"]

#: scheduler operations the page offers as controls (when the role lists them)
CONTROL_OPS = (
    "pipeline_load",
    "pipeline_eject",
    "pipeline_ready",
    "job_submit",
    "job_cancel",
    "job_snapshot",
)

#: every op ``/api/cmd`` knows: the scheduler's controls, and passata get / set
KNOWN_OPS = (*CONTROL_OPS, "get_attr", "set_attr")


#: why a sign-in ended whose login the broker refused on reconnecting
LOGIN_GONE = "the broker no longer takes this login: its password was changed or the user removed"
#: why a sign-in ended whose connection alone the broker closed (the dashboard's own stayed)
LOGIN_CHANGED = (
    "the broker closed this login's connection: its password was set again, or the user "
    "removed (and maybe added again)"
)
#: s after a sign-in's connection was lost at which the dashboard's own is looked at
LOST_CHECK = 1.0
#: s more a sign-in not connected again by then may wait for its reconnect's refusal
REFUSAL_WAIT = 3.0
#: a control of a session whose connection is being restored
RECONNECTING = (
    "your connection to the broker is being restored (the broker restarted?): try again in a moment"
)


#: the longest login name and password a sign-in is tried with (``tomato user`` makes
#: names of 64 characters at most: config/users.py; MQTT carries at most 65,535 bytes)
LOGIN_MAX = 256
PASSWORD_MAX = 4096


class LoginFailed(Exception):
    """The broker or the scheduler did not accept a sign-in; the text says why."""


def controls_for(me: WhoamiData | None, read_only: bool) -> list[str]:
    """The controls a page shows: the role's control ops, plus passata get/set."""
    if me is None or read_only:
        return []
    ops = [op for op in CONTROL_OPS if op in me.ops]
    if me.role in ("admin", "operator"):
        ops.append("get_attr")
    if me.role == "admin":
        ops.append("set_attr")
    return ops


@dataclass
class Session:
    token: str
    user: str | None  # the login; None: the dashboard's own
    requester: Requester
    topics: Topics
    me: WhoamiData | None = None
    read_only: bool = False
    client: AsyncClient | None = None  # own connection (signed in), closed on sign-out
    exposed: bool = False  # served on a network address, not loopback only
    created: float = field(default_factory=time.time)
    used: float = field(default_factory=time.monotonic)  # its last request
    #: the half of the session only its page holds (see the module): "" for the shared one
    key: str = ""

    def holds(self, key: str | None) -> bool:
        """Whether a request that brought this session's cookie brought its key too."""
        if not (key and self.key):
            return False
        # as bytes: compare_digest refuses str with other than ASCII (a forged header)
        return hmac.compare_digest(key.encode("utf-8", "replace"), self.key.encode())

    @property
    def controls(self) -> list[str]:
        if self.client is None and self.me is not None and (not self.me.open or self.exposed):
            return []  # not signed in: controls only on an open stack served on loopback
        return controls_for(self.me, self.read_only)

    def describe(self) -> dict[str, Any]:
        me = self.me
        return {
            "user": me.user if me else self.user,
            "role": me.role if me else None,
            "open": me.open if me else False,
            "signed_in": self.client is not None,
            "read_only": self.read_only,
            "controls": self.controls,
        }


async def whoami(req: Requester, topics: Topics, timeout: float = 5.0) -> WhoamiData | None:
    """The scheduler's view of this identity; None if no scheduler answers now."""
    try:
        data = await req.call(
            topics.scheduler_cmd("whoami"), command("scheduler", "whoami"), {}, timeout=timeout
        )
    except (NoResponder, MqttError):
        return None
    return data if isinstance(data, WhoamiData) else None


class Sessions:
    """The sessions of one dashboard, by cookie token."""

    #: how many signed-in sessions may hold a broker connection at once
    MAX_SIGNED_IN = 50
    #: a login's sessions at once: its oldest is signed out for a new one (one user
    #: signing in again and again must not lock everyone else out)
    MAX_PER_USER = 5
    #: s without a request after which a session is signed out
    IDLE = 12 * 3600.0
    #: failed sign-ins of one login from one client address before each further try
    #: from there waits (2, 4, ... 60 s)
    FREE_FAILURES = 3
    #: the same of one login from every address together: counted per address first,
    #: so that anyone who reaches the page cannot keep a user out with three wrong
    #: passwords a minute (a hostile tour); guesses spread over many addresses still
    #: slow down here, and the broker checks two passwords at a time at most
    FREE_FAILURES_PER_LOGIN = 50
    #: client addresses kept per login that signed in from them (_good)
    GOOD_KEPT = 32
    #: sign-ins from one client address under way at once (a page makes one at a time;
    #: many at once are a run of guesses spread over logins)
    MAX_IN_FLIGHT_PER_PEER = 4
    #: ended sessions whose reason is kept, to tell their page
    ENDED_KEPT = 1000

    def __init__(
        self, url: BrokerURL, instance: str, read_only: bool, exposed: bool = False
    ) -> None:
        self.url = url
        self.instance = instance
        self.read_only = read_only
        self.exposed = exposed
        self._by_token: dict[str, Session] = {}
        self.shared: Session | None = None
        #: login, or login@address when the address is known -> (failed sign-ins in a
        #: row, monotonic time of the last)
        self._failures: dict[str, tuple[int, float]] = {}
        #: login -> the same from every address together
        self._login_failures: dict[str, tuple[int, float]] = {}
        #: login -> the client addresses it signed in from (since the dashboard started):
        #: the login's own wait does not hold them (tries of the right password from a
        #: user's own address were refused 40 of 40 times while 17 other addresses kept
        #: the wait going with wrong ones: a hostile tour)
        self._good: dict[str, set[str]] = {}
        self._in_flight: dict[str, int] = {}  # client address -> sign-ins under way
        self._closing: set[asyncio.Future[None]] = set()  # connections of dropped sessions
        #: why a token no longer signs anyone in (the newest ENDED_KEPT)
        self._ended: dict[str, str] = {}
        #: this run's mark, the start of every token it makes: a token with another mark
        #: was made by a dashboard that ran on this port before
        self._run = secrets.token_hex(4)
        self._own: AsyncClient | None = None  # the dashboard's own connection
        #: told of every session that ends (the dashboard closes the live sockets of its
        #: pages: they kept it, and its closed connection, after it was signed out)
        self.on_end: Callable[[Session], object] | None = None

    async def start_shared(self, client: AsyncClient) -> None:
        self._own = client
        topics = Topics(self.instance, self.url.username)
        req = Requester(client, topics)
        await req.start()
        self.shared = Session("", None, req, topics, read_only=self.read_only, exposed=self.exposed)

    async def refresh_shared(self) -> None:
        """Ask ``whoami`` for the dashboard's own identity (again: the scheduler may have
        started after the dashboard)."""
        if self.shared is not None and self.shared.me is None:
            self.shared.me = await whoami(self.shared.requester, self.shared.topics)

    def get(self, token: str | None, key: str | None) -> Session | None:
        """The session of a request's cookie ``token`` and ``key`` (the page's): the
        cookie alone, as any server on this PC may have received it, is no one's."""
        s = self._by_token.get(token) if token else None
        if s is None or not s.holds(key):
            return self.shared
        now = time.monotonic()
        if now - s.used > self.IDLE:  # signed out: the page signs in again
            self._drop(s, f"{self.IDLE / 3600:g} h without use")
            return self.shared
        s.used = now
        return s

    def live(self, s: Session) -> bool:
        """Whether ``s`` still signs someone in (the shared one always does)."""
        return s is self.shared or self._by_token.get(s.token) is s

    def unkeyed(self, token: str | None, key: str | None) -> bool:
        """Whether a request brought the cookie of a live sign-in without its key."""
        s = self._by_token.get(token) if token else None
        return s is not None and not s.holds(key)

    def ended(self, token: str | None) -> str | None:
        """What to tell a page whose cookie no longer signs anyone in (None: nothing, it
        had none or it still does): found by a user's audit, a restarted dashboard showed
        the shared read-only view to everyone signed in, without a word."""
        if not token or token in self._by_token:
            return None
        why = self._ended.get(token)
        run, dot, _ = token.partition(".")
        if why is None and dot and run != self._run and len(run) == 8:
            why = "the dashboard was restarted since"
        if why is None:  # not known why: it claimed a restart, also after a sign-out or
            # for another dashboard's cookie (a security audit)
            return "your sign-in has ended; sign in again"
        return f"your sign-in has ended ({why}): sign in again"

    def new_token(self) -> str:
        """A session's cookie value: this run's mark and 32 random characters."""
        return f"{self._run}.{secrets.token_urlsafe(24)}"

    def _ending(self, token: str, why: str) -> None:
        self._ended[token] = why
        while len(self._ended) > self.ENDED_KEPT:
            del self._ended[next(iter(self._ended))]

    def _forget(self, s: Session, why: str) -> None:
        """``s`` signs no one in from now on (``why`` is told its page)."""
        self._ending(s.token, why)
        self._by_token.pop(s.token, None)
        if self.on_end is not None:
            self.on_end(s)

    def end(self, s: Session, why: str) -> None:
        """End the sign-in ``s`` (``why`` is told its page)."""
        if s is not self.shared and self._by_token.get(s.token) is s:
            self._drop(s, why)

    def _drop(self, s: Session, why: str) -> None:
        """Forget ``s`` now; its broker connection closes in the background."""
        self._forget(s, why)
        if s.client is not None:
            task = asyncio.ensure_future(_disconnect(s.client))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _known(self, username: str, peer: str | None) -> bool:
        return peer is not None and peer in self._good.get(username, ())

    def _check_failures(self, username: str, peer: str | None) -> None:
        checks = [(self._failures, _key(username, peer), self.FREE_FAILURES)]
        if not self._known(username, peer):
            checks.append((self._login_failures, username, self.FREE_FAILURES_PER_LOGIN))
        for table, key, free in checks:
            count, last = table.get(key, (0, 0.0))
            if count < free:
                continue
            wait = min(60.0, 2.0 ** (count - free + 1))
            left = last + wait - time.monotonic()
            if left > 0:
                raise LoginFailed(
                    # rounded up: 0.4 s read "try again in 0 s" (a dashboard tour)
                    f"{count} failed sign-ins for {username!r} in a row: try again in "
                    f"{math.ceil(left)} s"
                )

    def _failed(self, username: str, peer: str | None) -> None:
        here = self._failures.get(_key(username, peer), (0, 0.0))[0]
        tables = [(self._failures, _key(username, peer))]
        if here < self.FREE_FAILURES and not self._known(username, peer):
            # (an address slowed down already counts no more
            # for the login: from one address alone, 50 kept the user out for good)
            tables.append((self._login_failures, username))
        for table, key in tables:
            count, _last = table.get(key, (0, 0.0))
            table[key] = (count + 1, time.monotonic())
            while len(table) > 10_000:  # bounded, whatever names are tried
                table.pop(next(iter(table)))

    def _refused_now(self, username: str, peer: str | None) -> None:
        """The wait runs from the refusal."""
        for table, key in (
            (self._failures, _key(username, peer)),
            (self._login_failures, username),
        ):
            if key in table:
                table[key] = (table[key][0], time.monotonic())

    async def sign_in(self, username: str, password: str, peer: str | None = None) -> Session:
        """Sign ``username`` in (``peer``: the client's address, if known)."""
        if len(username) > LOGIN_MAX or len(password) > PASSWORD_MAX:
            # no login has such a name or password: answered at once, nothing kept of it
            # (a name of 65,536 characters was a 500 from the broker client, and names of
            # 60,000 filled the tables of failed tries: a security round)
            raise LoginFailed(f"wrong user name or password for {username[:LOGIN_MAX]!r}…")
        self._check_failures(username, peer)
        if peer is not None and self._in_flight.get(peer, 0) >= self.MAX_IN_FLIGHT_PER_PEER:
            raise LoginFailed("other sign-ins from your address are under way: try again")
        # a try counts as failed from its start, until it succeeds: the check above came
        # before the broker's answer, so once a wait had passed, 20 tries sent at once all
        # reached the broker's password check (found by a security audit); now the first
        # of them makes the others wait
        self._failed(username, peer)
        if peer is not None:
            self._in_flight[peer] = self._in_flight.get(peer, 0) + 1
        try:
            s = await self._sign_in(username, password)
        except LoginFailed:
            self._refused_now(username, peer)
            raise
        finally:
            if peer is not None:
                left = self._in_flight.pop(peer, 1) - 1
                if left:
                    self._in_flight[peer] = left
        self._failures.pop(_key(username, peer), None)
        self._login_failures.pop(username, None)
        if peer is not None:
            good = self._good.setdefault(username, set())
            if len(good) < self.GOOD_KEPT:  # (bounded, whatever addresses sign in)
                good.add(peer)
            while len(self._good) > 10_000:
                self._good.pop(next(iter(self._good)))
        return s

    async def _sign_in(self, username: str, password: str) -> Session:
        now = time.monotonic()
        for old in [s for s in self._by_token.values() if now - s.used > self.IDLE]:
            self._drop(old, f"{self.IDLE / 3600:g} h without use")
        mine = sorted(
            (s for s in self._by_token.values() if s.user == username), key=lambda s: s.used
        )
        for old in mine[: max(0, len(mine) - self.MAX_PER_USER + 1)]:
            # the login's oldest: it signs in again elsewhere
            self._drop(old, f"{username!r} signed in more than {self.MAX_PER_USER} times since")
        if len([s for s in self._by_token.values() if s.client]) >= self.MAX_SIGNED_IN:
            raise LoginFailed("too many people are signed in to this dashboard")
        try:
            topics = Topics(self.instance, username)
        except ValueError as e:
            raise LoginFailed(str(e)) from None
        url = self.url.replace(username=username, password=password)
        # it reconnects, as the dashboard's own: a broker restarted (0.2 s under its
        # supervisor) left every signed-in page with a dead connection, its controls shown,
        # a download waiting 60 s for "no scheduler answered" (a dashboard tour); a login
        # the broker no longer takes ends the sign-in (below)
        client = AsyncClient(url, client_id=f"tomato-dash-{uuid.uuid4().hex[:10]}")
        try:
            await client.connect(timeout=5)
        except MqttRefused as e:  # said for people at a sign-in form, not as a URL
            if e.final:
                raise LoginFailed(f"wrong user name or password for {username!r}") from None
            raise LoginFailed(
                f"the broker did not accept {username!r} now ({e}): try again in a moment"
            ) from None
        except (MqttError, OSError):
            raise LoginFailed(
                f"the broker did not accept {username!r}: it cannot be reached now (is"
                " tomato-mqtt running?)"
            ) from None
        req = Requester(client, topics)
        try:
            await req.start()
            me = await whoami(req, topics)
        except MqttError as e:
            await client.disconnect()
            raise LoginFailed(f"{username!r} may not use this instance: {e}") from None
        if me is None:
            await client.disconnect()
            shared = self.shared
            if shared is not None and await whoami(shared.requester, shared.topics, 2.0):
                # the scheduler answers the dashboard's own login: the broker dropped this
                # login's question (a node's login signed in was told "is it running?")
                raise LoginFailed(
                    f"{username!r} cannot use the dashboard: its role may not ask the"
                    " scheduler who it is (a node's login, role node:<name>, is for its node"
                    " only); sign in with a person's login"
                )
            raise LoginFailed("no scheduler answered whoami: is it running?")
        if me.open and self.exposed:
            await client.disconnect()
            raise LoginFailed(
                "this stack is open (no users file): anyone could sign in as anyone from the "
                "network; secure it (docs/security.md) to use controls on a served dashboard"
            )
        key = secrets.token_urlsafe(24)
        s = Session(self.new_token(), username, req, topics, me, self.read_only, client, key=key)
        self._by_token[s.token] = s
        client.on_refused = lambda _e: self.end(s, LOGIN_GONE)
        client.on_lost = lambda: self._lost(s)
        return s

    def _lost(self, s: Session) -> None:
        """``s``'s connection was lost. If the dashboard's own stays up, untouched, the
        broker closed this login's alone: its password was set again or the user removed
        (a remove and an add with the same password, or `passwd` to the same one, kept the
        sign-in: it reconnected with the password it had, a security tour). A broker that
        restarts closes both: the sign-in reconnects."""
        own = self._own
        if own is None or not own.is_connected:
            return
        before = own.connects
        loop = asyncio.get_running_loop()
        given_up = loop.time() + LOST_CHECK + REFUSAL_WAIT

        def check() -> None:
            if not (own.is_connected and own.connects == before):
                return
            client = s.client
            if client is not None and not client.is_connected and loop.time() < given_up:
                # not back yet: its reconnect may still be refused, which says why better
                # (LOGIN_GONE; a loaded host's reconnect came after LOST_CHECK, and a
                # changed password read "set again": a test run). Not connected, it can do
                # nothing meanwhile
                loop.call_later(0.1, check)
                return
            self.end(s, LOGIN_CHANGED)

        loop.call_later(LOST_CHECK, check)

    async def sign_out(self, token: str | None, key: str | None) -> None:
        """End the session of ``token`` if ``key`` is its key (a cookie alone signs no one
        out); the dashboard's own ``close`` ends them all."""
        s = self._by_token.get(token or "")
        if s is None or not s.holds(key):
            return
        self._forget(s, "signed out")
        if s.client is not None:
            with contextlib.suppress(Exception):
                await s.client.disconnect()

    async def close(self) -> None:
        for s in list(self._by_token.values()):
            await self.sign_out(s.token, s.key)


async def _disconnect(client: AsyncClient) -> None:
    with contextlib.suppress(Exception):
        await client.disconnect()


def _key(username: str, peer: str | None) -> str:
    """Where a login's failed sign-ins are counted: per client address when known."""
    return username if peer is None else f"{username}@{peer}"
