"""amqtt plugins that enforce tomato-mqtt's role model (issue 10, docs/security.md).

amqtt's stock ``TopicAccessControlListPlugin`` takes fixed per-user topic lists: it has
no roles, no ``%u``, cannot follow the devices file (which components a node may
publish), and cannot tell subscribing a filter from receiving a message. These two
plugins read the users file (amqtt's password-file format plus one role per user, see
:mod:`tomato_mqtt.config.users`) and the devices file, and re-read either when it
changes, so ``tomato user add`` and ``tomato reload`` take effect without a restart.

- :class:`UsersAuthPlugin`: a login must be a user of the file with the right password
  (argon2); anonymous logins only when there is no users file and that is allowed.
- :class:`RoleAclPlugin`: every publish, subscribe and delivery is checked against
  :func:`tomato_mqtt.wire.acl.rules` for the user's role. A denied publish is dropped
  (amqtt answers the PUBACK anyway: MQTT 3.1.1 has no way to say no), a denied
  subscription gets the failure return code 0x80.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

from tomato_mqtt.config.users import UsersFile, load_users, verify_argon2
from tomato_mqtt.wire.acl import Rule, allowed, node_of_role, rules
from tomato_mqtt.wire.topics import Topics

__all__ = ["RoleAclPlugin", "UsersAuthPlugin"]

log = logging.getLogger(__name__)

#: how often (s) the ACL looks whether the users or devices file changed
_RECHECK = 0.5
#: ... and, before it refuses, how long (s) ago it must have looked at them last
_RECHECK_REFUSED = 0.05


def _stamp(path: str | None) -> tuple[int, int] | None:
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


class _Users:
    """The users file, re-read when its mtime or size changes; a bad new version is
    logged and the last good one kept (a broker must not lock everyone out mid-run)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self.users = UsersFile(Path(path))
        self.refresh()

    def refresh(self) -> bool:
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return False
        try:
            self.users = load_users(Path(self.path))
        except Exception as e:
            if self._stamp is None:
                raise  # at start: refuse, with the reason
            log.error("keeping the previous users: %s", e)
        self._stamp = stamp
        return True


#: password checks run at once (each in a thread: argon2 releases the GIL)
ARGON2_AT_ONCE = 2
#: wrong logins of one user name from one address before each further one waits 1, 2, 4
#: … s (at most FAILURE_WAIT_MAX) after the check before, before its password is checked
#: (a security round: 200 guesses at one login in 40 s, the right password then still
#: taken); the count is forgotten FAILURES_KEPT s after its last wrong login, or at a
#: right one. This PC's own loopback address is not counted: the stack's services and the
#: dashboard (which throttles its sign-ins itself, per address) log in from there
FREE_FAILURES = 5
#: (below a client's own wait for one connection attempt, 10 s: a right login from an
#: address that guessed was otherwise given up by tomato's own client: a review)
FAILURE_WAIT_MAX = 8.0
FAILURES_KEPT = 600.0
#: (address, user name) pairs whose wrong logins are counted at once (the oldest
#: forgotten beyond it)
FAILURE_ADDRESSES = 10_000
#: tries of one (address, user name) under way at once (checked, or waiting their turn);
#: a further one is answered "server unavailable" at once, unchecked (tries held open
#: made a right login of the same address wait 8 s per try held: a review)
UNDER_WAY_MAX = 4
#: wrong logins of any user names from one address (in FAILURES_KEPT s) before all of its
#: tries take their turns together, and tries of one address under way at once (a further
#: one "server unavailable", unchecked): counted per user name alone, one address trying
#: 40 made-up names (5 free tries each) filled the password checks that every address
#: waits for, and a right first login from elsewhere took 4 s (a review)
ADDRESS_FREE_FAILURES = 20
ADDRESS_UNDER_WAY_MAX = 16
#: the key all user names of an address share once it is past ADDRESS_FREE_FAILURES
ANY_NAME = "\x00any"
#: how often (s) a try waiting for its turn looks whether its client left (then it is
#: dropped, unchecked and not counted: tries its client gave up held the turns of those
#: after them, a right one of the same PC waited 72 s: a review)
GONE_LOOK = 0.5
_NOT_COUNTED = frozenset({"127.0.0.1", "::1"})


class _Guesses:
    """Wrong logins per user name and address, and each one's turn: the tries of one
    (address, user name) are checked one at a time, in the order they came; past
    FREE_FAILURES wrong ones, each waits 1, 2, 4 … s after the check before (30 tries
    sent at once, past the free ones, were all checked within 5 s: a review). Another
    user name, or another address, does not wait for them (20 logins of 20 users from
    one address after a broker restart, all right, took up to 63 s in turns counted per
    address: a review). An IPv6 address counts as its /64 (not a link-local one), an
    IPv4 address mapped into IPv6 as itself."""

    def __init__(self) -> None:
        self.failures: dict[tuple[str, str], tuple[int, float]] = {}  # -> (count, last)
        self.checked: dict[tuple[str, str], float] = {}  # -> monotonic of the last check
        self.turns: dict[tuple[str, str], asyncio.Lock] = {}
        self.under_way: dict[tuple[str, str], int] = {}
        self.address_under_way: dict[str, int] = {}
        self.said = 0.0  # when the log last said them (once a minute)

    @staticmethod
    def where(address: str | None) -> str | None:
        """What an address counts as; None: not counted (this PC's own loopback)."""
        if address is None:
            return None
        try:
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(
                address.split("%", 1)[0]
            )
        except ValueError:
            return address
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # (a broker on "::" sees its IPv4 clients so)
        if str(ip) in _NOT_COUNTED:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and not ip.is_link_local:
            return str(ipaddress.ip_network(f"{ip}/64", strict=False))
        return str(ip)

    def key(self, where: str, name: str) -> tuple[str, str]:
        """Whose turns a try of ``name`` from ``where`` takes: its own, or the address's
        (all its user names together) once the address is past ADDRESS_FREE_FAILURES."""
        if self._count((where, ANY_NAME), time.monotonic()) >= ADDRESS_FREE_FAILURES:
            return (where, ANY_NAME)
        return (where, name)

    def _count(self, key: tuple[str, str], now: float) -> int:
        count, last = self.failures.get(key, (0, 0.0))
        return 0 if now - last > FAILURES_KEPT else count

    def due_in(self, key: tuple[str, str]) -> float:
        """Seconds until a try of ``key`` may be checked."""
        now = time.monotonic()
        count = self._count(key, now)
        if count < FREE_FAILURES:
            return 0.0
        gap = min(FAILURE_WAIT_MAX, 2.0 ** (count - FREE_FAILURES))
        return max(0.0, self.checked.get(key, now) + gap - now)

    async def turn(self, key: tuple[str, str], gone: Any) -> str | None:
        """Wait for this try's turn. None: check its password now (:meth:`done` must
        follow); else why it is not checked (its client left, or too many are under way)."""
        where = key[0]
        if self.under_way.get(key, 0) >= UNDER_WAY_MAX:
            return f"{UNDER_WAY_MAX} tries of this login from its address are under way"
        if self.address_under_way.get(where, 0) >= ADDRESS_UNDER_WAY_MAX:
            return f"{ADDRESS_UNDER_WAY_MAX} tries from its address are under way"
        self.under_way[key] = self.under_way.get(key, 0) + 1
        self.address_under_way[where] = self.address_under_way.get(where, 0) + 1
        lock = self.turns.setdefault(key, asyncio.Lock())
        try:
            while True:  # (a try given up while it waits is dropped from the queue too)
                if gone is not None and gone():
                    self._left(key)
                    return "its client left while it waited its turn"
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(lock.acquire(), GONE_LOOK)
                    break
        except BaseException:
            self._left(key)
            raise
        try:
            while True:
                if gone is not None and gone():
                    self._free(key)
                    return "its client left while it waited its turn"
                wait = self.due_in(key)
                if wait <= 0:
                    return None
                await asyncio.sleep(min(wait, GONE_LOOK))
        except BaseException:
            self._free(key)
            raise

    def _free(self, key: tuple[str, str]) -> None:
        """The try that holds ``key``'s turn is over."""
        lock = self.turns.get(key)
        if lock is not None and lock.locked():
            lock.release()
        self._left(key)

    def _left(self, key: tuple[str, str]) -> None:
        left = self.under_way.pop(key, 1) - 1
        if left > 0:
            self.under_way[key] = left
        else:
            self.turns.pop(key, None)
        left = self.address_under_way.pop(key[0], 1) - 1
        if left > 0:
            self.address_under_way[key[0]] = left

    def done(self, key: tuple[str, str], ok: bool) -> int:
        """A try of ``key`` checked; the count of wrong ones since (0 after a right)."""
        now = time.monotonic()
        self._free(key)
        if ok:
            if key[1] != ANY_NAME:  # (a login of one's own ends no count of the address)
                self.failures.pop(key, None)
                self.checked.pop(key, None)
            return 0
        count = self._count(key, now) + 1
        self.failures.pop(key, None)
        self.failures[key] = (count, now)  # (last: the most recent)
        self.checked[key] = now
        anyname = (key[0], ANY_NAME)
        if key != anyname:  # (the address's count: all its user names)
            total = self._count(anyname, now) + 1
            self.failures.pop(anyname, None)
            self.failures[anyname] = (total, now)
            self.checked[anyname] = now
        while len(self.failures) > FAILURE_ADDRESSES:
            gone = next(iter(self.failures))
            self.failures.pop(gone)
            self.checked.pop(gone, None)
        return count


#: a hash of a random password, checked for a user name that does not exist
_NOBODY = (
    "$argon2id$v=19$m=65536,t=3,p=4$4MsynibJwm5/9HShsPgmAQ$"
    "gSRiFaF1AySUb9ECl/6+WcdOWUp4rO89iPtYRz3HKz8"
)


class UsersAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]
    @dataclass
    class Config:
        users_file: str | None = None
        allow_anonymous: bool = False

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self._users = _Users(self.config.users_file) if self.config.users_file else None
        # argon2 costs ~50 ms per check: remember logins that verified against this hash
        # (their passwords under a key of this process, not a plain digest: a review)
        self._ok: set[tuple[str, str, str]] = set()
        self._ok_key = os.urandom(32)
        self._guesses = _Guesses()
        #: checks at once, each in a thread (~100 ms and 64 MiB of argon2 each)
        self._checks = asyncio.Semaphore(ARGON2_AT_ONCE)

    async def authenticate(self, *, session: Any) -> bool | None:
        if self._users is None:
            # an open stack (loopback only; settings refuse anything else)
            return bool(self.config.allow_anonymous)
        name = session.username
        if not name:
            return False
        self._users.refresh()
        user = self._users.users.users.get(name)
        pw = session.password or ""
        digest = hmac.new(self._ok_key, pw.encode(), hashlib.sha256).hexdigest()
        known = user is not None and (name, user.hash, digest) in self._ok
        address = getattr(session, "remote_address", None)
        where = None if known else _Guesses.where(address)  # (known: goes in at once)
        counted = None if where is None else self._guesses.key(where, name)
        if counted is not None:
            why = await self._guesses.turn(counted, getattr(session, "tomato_gone", None))
            if why is not None:
                session.tomato_busy = why  # (answered "server unavailable", unchecked)
                return False
        ok = False
        try:
            if user is None or user.role is None:
                # a login without a role could do nothing: refused, but only after as
                # long a check as a known user's (else the time tells which names exist)
                await self._verify(pw, _NOBODY)
                return False
            ok = known or await self._verify(pw, user.hash)
        finally:
            if counted is not None:
                self._said(self._guesses.done(counted, ok), counted, name)
        if ok:
            self._ok.add((name, user.hash, digest))
            # the hash this password was checked against: a connection outlives no change
            # of it (the broker's _check_logins; read after the check's wait, a changed
            # password was recorded as the one used: a review)
            session.tomato_login = user.hash
        return ok

    def _said(self, count: int, key: tuple[str, str], name: str) -> None:
        now = time.monotonic()
        if count > FREE_FAILURES and now - self._guesses.said >= 60.0:
            self._guesses.said = now
            if key[1] == ANY_NAME:
                log.warning(
                    "%d wrong logins from %s (the last as %r): each further try from there "
                    "waits its turn, up to %g s after the check before, whatever its user name",
                    count,
                    key[0],
                    name[:64],
                    FAILURE_WAIT_MAX,
                )
                return
            log.warning(
                "%d wrong logins as %r from %s: each further try of it from there waits "
                "its turn, up to %g s after the check before, before its password is checked",
                count,
                name[:64],
                key[0],
                FAILURE_WAIT_MAX,
            )

    async def _verify(self, password: str, hash_: str) -> bool:
        """argon2, off the event loop and a few at a time: in the loop, each wrong
        password stopped every client's messages for ~100 ms, and anyone who can connect
        stalled the broker for seconds (found by a security audit); a flood of them now
        queues here while the broker routes on."""
        async with self._checks:
            return await asyncio.to_thread(verify_argon2, password, hash_)


#: messages a second a person's login (admin, operator, reader) may publish, in bursts
#: of PUBLISH_BURST: above every service's own per-login limit (200 requests a second),
#: so only a flood meets it (RoleAclPlugin._within_rate)
PUBLISH_RATE = 500
PUBLISH_BURST = 1000
#: packets a second the broker reads of a person's login's connections together, in
#: bursts of READ_BURST: room for a QoS 2 publish's two packets at PUBLISH_RATE and for
#: the acknowledgements of what it receives; past it they are read later (server.py's
#: _Broker._paced), so a flood costs the broker no more than that
READ_RATE = 2 * PUBLISH_RATE
READ_BURST = 2 * PUBLISH_BURST
#: the roles of people
PEOPLE = frozenset({"admin", "operator", "reader", "dashboard"})


class RoleAclPlugin(BaseTopicPlugin):  # type: ignore[misc]
    @dataclass
    class Config:
        users_file: str | None = None
        instance: str = "default"
        devices_file: str | None = None
        default_node: str = "local"

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.topics = Topics(self.config.instance)
        self._users = _Users(self.config.users_file) if self.config.users_file else None
        self._devices_stamp: tuple[int, int] | None = None
        self._node_components: dict[str, list[str]] = {}
        self._rules: dict[str, list[Rule]] = {}
        self._checked = time.monotonic()
        #: per login: when its last refusal was logged, and how many came since
        self._refusals: dict[str, tuple[float, int]] = {}
        #: per login: when its refusal was last logged as a warning (once a minute)
        self._warned: dict[str, float] = {}
        #: per person's login: (tokens left, when counted) of its publish rate
        self._rates: dict[str, tuple[float, float]] = {}
        #: per login: when its publish rate was last said
        self._rate_said: dict[str, float] = {}
        if self._users is not None:  # an open broker has no ACL: no node map to keep
            self._refresh_devices()

    def _refresh_devices(self) -> bool:
        path = self.config.devices_file
        stamp = _stamp(path)
        if not path or stamp == self._devices_stamp:
            return False
        from tomato_mqtt.config.devices import load_devices

        try:
            layout = load_devices(Path(path), self.config.default_node)
        except Exception as e:  # a bad devices file is the scheduler's to report
            log.warning("ACL: keeping the previous node -> component map: %s", e)
            self._devices_stamp = stamp
            return False
        nodes: dict[str, list[str]] = {}
        for c in layout.components.values():
            nodes.setdefault(c.node, []).append(c.name)
        self._node_components = nodes
        self._devices_stamp = stamp
        return True

    def _refresh_now(self) -> bool:
        """Look at the users and devices files now (unless that was done in the last
        :data:`_RECHECK_REFUSED` s: refused publishes may come fast); whether either
        changed."""
        now = time.monotonic()
        if self._users is None or now - self._checked < _RECHECK_REFUSED:
            return False
        self._checked = now
        changed = self._users.refresh() | self._refresh_devices()
        if changed:
            self._rules.clear()
        return changed

    def rules_of(self, username: str | None) -> list[Rule] | None:
        """The rules of a login, or None when there is no users file (no ACL)."""
        if self._users is None:
            return None
        now = time.monotonic()
        if now - self._checked >= _RECHECK:  # two stat() calls, not on every message
            self._checked = now
            if self._users.refresh() | self._refresh_devices():
                self._rules.clear()
        name = username or ""
        cached = self._rules.get(name)
        if cached is not None:
            return cached
        if self._users.refresh() | self._refresh_devices():  # a new login: be current
            self._rules.clear()
        role = self._users.users.role_of(name)
        out: list[Rule] = []
        if role is not None:
            node = node_of_role(role)
            comps = self._node_components.get(node, []) if node else []
            out = rules(self.topics, role, name, comps)
        self._rules[name] = out
        return out

    def role_of(self, username: str | None) -> str | None:
        """The role of a login as the users file was last read (no read of it here: the
        rules' checks read it again when it changed)."""
        if self._users is None:
            return None
        return self._users.users.role_of(username or "")

    def login_of(self, username: str | None) -> str | None:
        """What a connection of ``username`` was admitted with (its password's hash), or
        None when the login is gone or has no role; the users file as it is now."""
        if self._users is None:
            return None
        if self._users.refresh():  # (changed: the rules of every login are made anew)
            self._rules.clear()
        user = self._users.users.users.get(username or "")
        return user.hash if user is not None and user.role is not None else None

    def users_stamp(self) -> tuple[int, int] | None:
        """Which version of the users file is read (its mtime and size), read again
        first if it changed."""
        self.login_of(None)
        return None if self._users is None else self._users._stamp

    async def topic_filtering(
        self, *, session: Any = None, topic: str | None = None, action: Any = None
    ) -> bool:
        return self.check(session, topic, action)

    def check(self, session: Any, topic: str | None, action: Any) -> bool:
        """The verdict, synchronously: the broker calls this inside loops over its
        subscriptions, which must not yield (see ``_broker_class``)."""
        if topic is None:
            return False
        username = session.username if session is not None else None
        role_rules = self.rules_of(username)
        if role_rules is None:
            return True
        access = {Action.PUBLISH: "publish", Action.SUBSCRIBE: "subscribe"}.get(action, "receive")
        if access == "publish" and not self._within_rate(username or ""):
            return False
        ok = allowed(role_rules, access, topic)  # type: ignore[arg-type]
        if not ok and access != "receive" and self._refresh_now():
            # a file changed since the last look (at most _RECHECK ago): a devices file
            # edited and `tomato reload` at once had the node's subscription to its new
            # component refused by the rules of the file before (an admin's tour)
            role_rules = self.rules_of(username) or []
            ok = allowed(role_rules, access, topic)  # type: ignore[arg-type]
        if not ok and access != "receive":
            self._refused(username or "(anonymous)", access, topic)
        return ok

    def _within_rate(self, username: str) -> bool:
        """Whether a person's login (admin, operator, reader) may publish one more message
        now: PUBLISH_RATE a second, bursts of PUBLISH_BURST; the services' logins are not
        limited. Two operators' 2,000 requests a second each, under every service's
        per-login limit (which drops them only once read), held a node up 13-30 s and it
        was judged lost (a hostile tour): past the rate the broker drops them unread."""
        users = self._users
        if users is None or users.users.role_of(username) not in PEOPLE:
            return True
        now = time.monotonic()
        tokens, at = self._rates.get(username, (float(PUBLISH_BURST), now))
        tokens = min(float(PUBLISH_BURST), tokens + (now - at) * PUBLISH_RATE)
        if tokens >= 1.0:
            self._rates[username] = (tokens - 1.0, now)
            return True
        self._rates[username] = (tokens, now)
        last = self._rate_said.get(username, -61.0)
        if now - last > 60.0:
            if len(self._rate_said) > 10_000:
                self._rate_said.clear()
            self._rate_said[username] = now
            log.warning(
                "login %r publishes more than %d messages a second: the rest are dropped "
                "unread (said once a minute)",
                username,
                PUBLISH_RATE,
            )
        return False

    def _refused(self, who: str, access: str, topic: str) -> None:
        """A refusal, logged: each login's first in a second as it is, the others of that
        second counted and said with the next. One line each let a reader's flood of
        refused publishes (50,000 in 3.6 s) rotate the broker's log away within a minute
        (a security tour)."""
        now = time.monotonic()
        first, more = self._refusals.get(who, (0.0, 0))
        if now - first < 1.0:
            self._refusals[who] = (first, more + 1)
            return
        if len(self._refusals) > 10_000:
            self._refusals.clear()
        self._refusals[who] = (now, 0)
        also = f" (and {more} more refusals of {who} in the second before)" if more else ""
        # a login's first refusal in a minute is a warning: a node whose role was changed
        # under it was refused every 2 s at INFO only, and nothing said why its jobs
        # failed (an admin's tour); the rest stay INFO
        if now - self._warned.get(who, -61.0) > 60.0:
            if len(self._warned) > 10_000:
                self._warned.clear()
            self._warned[who] = now
            log.warning("ACL: %s may not %s %s%s", who, access, topic, also)
        else:
            log.info("ACL: %s may not %s %s%s", who, access, topic, also)
