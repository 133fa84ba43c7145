"""``tomato start``'s wait: until the stack it started answers and its components are ready.

Push, not poll (see docs/architecture.md, "tomato start, from the command to ready"):
the MQTT port listens already (socket activation), so one connect is served the moment
the broker is; the retained scheduler, node and component topics say when to ask the
scheduler again; the supervisor's exit (it gave up) ends the wait at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from typing import TYPE_CHECKING, Any

from tomato_mqtt.cli import core
from tomato_mqtt.transport.session import Session, SessionError, SessionRefused, SessionTimeout

if TYPE_CHECKING:
    from tomato_mqtt.cli.preload import Forked

__all__ = ["REMOTE_GRACE", "Absent", "Missing", "Pending", "wait_ready"]


def _doc(payload: bytes) -> dict[str, Any]:
    """A retained presence (scheduler, node) as a plain dict, cheaply: no pydantic here."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _state(doc: dict[str, Any]) -> str | None:
    state = doc.get("state")
    return state if isinstance(state, str) else None


def _missing_drivers(doc: dict[str, Any]) -> dict[str, str]:
    """driver -> error, from a node status."""
    drivers = doc.get("drivers")
    if not isinstance(drivers, dict):
        return {}
    return {
        str(name): str(info["error"])
        for name, info in drivers.items()
        if isinstance(info, dict) and info.get("error")
    }


def _ready(component: dict[str, Any]) -> bool:
    """Registered by its node, and that node online: after `tomato stop; tomato start` on
    a broker that ran on, the scheduler has the retained metas of the node's last run
    (`registered`) while the node is still starting (`lost`): start said ready ~2 s
    before the components were (an admin's tour)."""
    return bool(component.get("registered")) and component.get("state") not in (
        "lost",
        "no node",
    )


#: component -> why it is not ready (none of the cases above: an error of its own, its
#: driver still connecting, its local node not running)
Pending = dict[str, str]
Missing = dict[tuple[str, str], tuple[str, list[str]]]
#: node -> its components, for remote nodes that were not online (not waited for)
Absent = dict[str, list[str]]

#: s after the scheduler is online that ``tomato start`` waits for a *remote* node (on
#: another PC) to come online; a node that was running reconnects within ~2 s (its
#: back-off), one that is not running is not waited for (its components register when
#: it is started)
REMOTE_GRACE = 5.0


def _watch_exit(proc: subprocess.Popen[bytes] | Forked, link: _Link) -> None:
    """When ``proc`` exits, interrupt whatever ``link`` waits for (a daemon thread)."""

    def wait() -> None:
        proc.wait()
        link.abort()

    threading.Thread(target=wait, daemon=True, name="supervisor-exit").start()


class _Link:
    """The wait's MQTT connection: a blocking session on a plain socket
    (transport/session.py, as the CLI's one-shot calls), made again if it is lost;
    :meth:`abort` (the supervisor gave up) ends any wait at once. Not paho and asyncio:
    their imports and event loop were ~0.08 CPU-s of `tomato start` inside the second
    in which the services it waits for start on the same two cores."""

    def __init__(self, ctx: core.CallContext, timeout: float) -> None:
        self.url = ctx.url
        self.client_id = f"cli-start-{os.getpid()}-{os.urandom(3).hex()}"
        self.topics: list[str] = []  # subscribed to on each connection
        self.keepalive = min(65535, int(timeout) + 60)  # it sends no PINGREQ: outlast the wait
        self.session: Session | None = None
        self.aborted = threading.Event()

    def abort(self) -> None:
        """(From the watching thread.) The session :meth:`open` made or is making is
        shut down: it publishes each one before it connects, then looks at the flag."""
        self.aborted.set()
        s = self.session
        if s is not None:
            s.shutdown()

    def open(self, deadline: float) -> Session | None:
        """Connect and subscribe; retried until ``deadline`` while the broker does not
        answer (the port listens already: one connect is served when the broker is).
        None when aborted, refused or out of time. (A TCP connect in progress ends at its
        timeout, not at an abort: to the stack's own port it is made at once.)"""
        while not self.aborted.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            s = self.session = Session(self.url, self.client_id, keepalive=self.keepalive)
            if self.aborted.is_set():  # (set before abort() could see this session)
                return None
            try:
                s.connect(left)
                for topic in self.topics:
                    s.subscribe(topic, 0, max(0.1, deadline - time.monotonic()))
                return s
            except SessionRefused:
                s.close()
                return None
            except SessionError:  # not listening yet (an external broker), or lost
                s.close()
                self.aborted.wait(min(0.2, max(0.0, deadline - time.monotonic())))
        return None

    def close(self) -> None:
        if self.session is not None:
            self.session.close()


def wait_ready(
    ctx: core.CallContext,
    proc: subprocess.Popen[bytes] | Forked,
    timeout: float,
    local_node: str,
    remote_grace: float = REMOTE_GRACE,
) -> tuple[int, int, Missing, Absent, Pending] | None:
    """Wait until the scheduler answers and every component is registered, or cannot be
    because its node says its driver is not installed (waiting would not help), or it
    is hosted by a remote node (not ``local_node``) that is not online ``remote_grace``
    seconds after the scheduler is (a node on an instrument PC that is not started yet:
    ``tomato start`` says so instead of waiting out its timeout).

    Push, not poll: the retained scheduler, node and component topics say when to ask the
    scheduler again; a timer asks again only if a request got no reply within a second.
    The request is plain JSON (the Request/Reply envelope of wire.messages, as
    transport/oneshot.py writes it): no pydantic models are built while the services
    start on the same cores.
    """
    import uuid

    from tomato_mqtt.errors import BROKEN_DRIVER
    from tomato_mqtt.transport.oneshot import SCHEMA, reply_name

    deadline = time.monotonic() + timeout
    t = ctx.topics
    link = _Link(ctx, timeout)
    reply_to = t.reply(reply_name())
    link.topics = [reply_to, t.scheduler_status(), t.all_component_meta(), t.all_node_status()]
    _watch_exit(proc, link)
    opened = link.open(deadline)
    if opened is None:
        link.close()
        return None
    session: Session = opened  # (the one `ask` publishes on: made again if lost)
    try:
        last: tuple[int, int, Missing, Absent, Pending] | None = None
        online = False
        online_at = 0.0  # when the scheduler said online (the remote nodes' grace)
        states: dict[str, str | None] = {}  # node topic -> its state
        asked: str | None = None  # the id of the request in flight
        asked_at = 0.0
        dirty = False  # something changed since it was sent: ask again on its reply
        gone: dict[str, dict[str, str]] = {}  # node topic -> driver -> error
        node_prefix = t.node_status("x")[: -len("x/status")]

        def ask() -> None:
            nonlocal asked, asked_at, dirty
            asked, asked_at, dirty = uuid.uuid4().hex, time.monotonic(), False
            env = {"schema": SCHEMA, "id": asked, "reply_to": reply_to}
            doc = {**env, "args": {"what": "components"}}
            session.publish(t.scheduler_cmd("status"), json.dumps(doc).encode(), qos=1)

        def up(node: str) -> bool:
            return states.get(t.node_status(node)) == "online"

        def answer(payload: bytes) -> tuple[int, int, Missing, Absent, Pending] | None:
            try:
                doc = json.loads(payload)
            except ValueError:
                return None
            if not isinstance(doc, dict) or doc.get("id") != asked or not doc.get("success"):
                return None
            data = doc.get("data")
            comps = [x for x in (data.values() if isinstance(data, dict) else [])]
            comps = [x for x in comps if isinstance(x, dict)]
            ok = sum(1 for x in comps if _ready(x))
            missing: Missing = {}
            absent: Absent = {}
            pending: Pending = {}
            late = online and time.monotonic() - online_at >= remote_grace
            for x in comps:
                if _ready(x):
                    continue
                node, drv, name = str(x.get("node")), str(x.get("driver")), str(x.get("name"))
                why = gone.get(t.node_status(node), {}).get(drv)
                error = str(x.get("error") or "")
                if error.startswith(BROKEN_DRIVER):  # not retried: nothing to wait for
                    why = error.removeprefix(BROKEN_DRIVER)
                if why:
                    missing.setdefault((node, drv), (why, []))[1].append(name)
                elif late and node != local_node and not up(node):
                    absent.setdefault(node, []).append(name)
                elif x.get("error"):
                    pending[name] = str(x["error"])
                elif not up(node):
                    pending[name] = f"its node {node} is not online"
                else:
                    pending[name] = "not registered yet: its driver has not connected"
            return ok, len(comps), missing, absent, pending

        while time.monotonic() < deadline and proc.poll() is None and not link.aborted.is_set():
            try:
                topic, payload, _retained = session.receive(min(time.monotonic() + 1.0, deadline))
            except SessionTimeout:  # a request (or its reply) was lost: ask again
                if online:
                    ask()
                continue
            except SessionError:  # the connection was lost (or aborted): again, fresh
                asked = None
                again = link.open(deadline)
                if again is None:
                    return None  # (the broker gone for good: not a start that worked)
                session = again
                continue
            if topic == reply_to:
                got = answer(payload)
                if got is None:
                    continue
                last, asked = got, None
                ok, n, missing, absent, _pending = got
                settled = sum(len(v[1]) for v in missing.values())
                if ok + settled + sum(len(v) for v in absent.values()) == n:
                    return last
            elif topic == t.scheduler_status():
                was, online = online, _state(_doc(payload)) == "online"
                if online and not was:
                    online_at = time.monotonic()
                dirty = True
            else:
                if topic.startswith(node_prefix):
                    doc = _doc(payload)  # read once: its drivers and its state
                    gone[topic] = _missing_drivers(doc)
                    states[topic] = _state(doc)
                dirty = True
            # one request at a time; a change meanwhile asks again on its reply (or at
            # once, if that reply is a second late: lost)
            if online and dirty and (asked is None or time.monotonic() - asked_at > 1.0):
                ask()
        if proc.poll() is not None or link.aborted.is_set():
            # the stack went away before it was ready (a `tomato stop` meanwhile): not
            # "started … 0/1 ready, not ready after 30 s" after 0.5 s, exit 0 (a fault run)
            return None
        return last  # the timeout: what is ready and what is not, said by the caller
    finally:
        link.close()
