"""Every role x every row of the role table, allowed and refused, on amqtt, Mosquitto and
Aedes (the last with the rules of ``tomato broker-config --rules``, tests/aedes/rules.mjs).

The expectations are written out here (not derived from ``wire.acl``), so a change of the
role model that opens a hole fails this test; a second check compares each broker's
verdict with the model for every channel, so the brokers and the model agree.
A refused publish is dropped silently by amqtt and Mosquitto (MQTT 3.1.1 has no negative
PUBACK); Aedes closes the connection instead. Either way a watcher with admin rights
sees whether it arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.security_env import CMP_A, CMP_B, USERS, SecureBroker, secured
from tomato_mqtt.transport.client import AsyncClient, Message, MqttError
from tomato_mqtt.wire.acl import allowed, rules
from tomato_mqtt.wire.topics import Topics

REPORT = (
    Path(os.environ.get("TOMATO_ACL_REPORT", "")) if os.environ.get("TOMATO_ACL_REPORT") else None
)


def checks(t: Topics) -> list[tuple[str, str, str, bool]]:
    """(login, pub|sub, topic, expected)."""
    rows: list[tuple[str, str, str, bool]] = []

    def add(user: str, action: str, topic: str, ok: bool) -> None:
        rows.append((user, action, topic, ok))

    for user in ("ada", "olga", "rita", "dash", "pc1", "sched", "rec"):
        role = USERS[user][1]
        admin = role == "admin"
        op = role in ("admin", "operator")
        reader_like = role in ("admin", "operator", "reader", "dashboard")
        svc = role in ("scheduler", "recorder")
        # -- requests with one's own login, and with someone else's
        for cmd in ("status", "job_status", "job_search"):
            add(user, "pub", t.scheduler_cmd(cmd, user), reader_like)
        for cmd in (
            "job_submit",
            "job_cancel",
            "job_snapshot",
            "pipeline_load",
            "pipeline_ready",
            "pipeline_eject",
        ):
            add(user, "pub", t.scheduler_cmd(cmd, user), op)
        for cmd in ("stop", "reload"):
            add(user, "pub", t.scheduler_cmd(cmd, user), admin)
        add(user, "pub", t.scheduler_cmd("job_cancel", "otto"), False)  # forged identity
        add(user, "pub", t.scheduler_cmd("stop", "ada"), admin and user == "ada")
        add(user, "pub", t.recorder_cmd("fetch", user), op)
        add(user, "pub", t.recorder_cmd("finalize", user), role == "scheduler")
        # -- direct commands to nodes and components
        add(user, "pub", t.node_cmd("pc1", "shutdown"), admin)
        add(user, "pub", t.node_cmd("pc1", "configure"), role == "scheduler")
        add(user, "pub", t.component_cmd(CMP_A, "task_start"), role == "scheduler")
        add(user, "pub", t.component_user_cmd(CMP_A, "set_attr", user), admin)
        add(user, "pub", t.component_user_cmd(CMP_A, "get_attr", user), op)
        # a user's command without their login, or with another's: the node could not
        # tell whose replies it may answer on (an operator made it answer into another
        # user's reply topic)
        add(user, "pub", t.component_cmd(CMP_A, "set_attr"), False)
        add(user, "pub", t.component_cmd(CMP_A, "get_attr"), role == "scheduler")
        add(user, "pub", t.component_user_cmd(CMP_A, "get_attr", "otto"), False)
        add(user, "pub", t.component_cmd(CMP_A, "ack"), role == "recorder")
        add(user, "pub", t.component_cmd(CMP_A, "replay"), role == "recorder")
        # -- what only a node (its own) or a service publishes
        add(user, "pub", t.node_status("pc1"), user == "pc1")
        add(user, "pub", t.node_status("pc2"), False)
        for build in (t.component_data, t.component_meta, t.component_last):
            add(user, "pub", build(CMP_A), user == "pc1")
            add(user, "pub", build(CMP_B), False)
        # ... and the scheduler shows a lost node's components lost (scheduler/lost.py)
        add(user, "pub", t.component_status(CMP_A), user in ("pc1", "sched"))
        add(user, "pub", t.component_status(CMP_B), user == "sched")
        add(user, "pub", t.job_status(1), role == "scheduler")
        add(user, "pub", t.pipeline_status("pip-a"), role == "scheduler")
        add(user, "pub", t.scheduler_status(), role == "scheduler")
        add(user, "pub", t.recorder_status(), role == "recorder")
        add(user, "pub", t.job_event(1), svc)
        add(user, "pub", t.reply("someone", "olga"), svc or role.startswith("node:"))
        # -- subscriptions: (filter, a topic it matches, who publishes there)
        for flt, topic, pub, ok in (
            (t.all(), t.scheduler_cmd("status", "ada"), "ada", admin or svc),
            (t.all_job_status(), t.job_status(1), "sched", reader_like or svc),
            (t.all_component_data(), t.component_data(CMP_A), "pc1", reader_like or svc),
            (t.all_node_status(), t.node_status("pc1"), "pc1", reader_like or svc),
            # a node reads its own status (is its name free?), no other node's
            (
                t.node_status("pc1"),
                t.node_status("pc1"),
                "pc1",
                reader_like or svc or user == "pc1",
            ),
            (t.replies(user), t.reply("c1", user), "sched", True),
            (t.replies("olga"), t.reply("c1", "olga"), "sched", user == "olga" or admin or svc),
            (t.scheduler_cmds(), t.scheduler_cmd("status", "ada"), "ada", admin or svc),
            (
                t.component_cmds(CMP_A),
                t.component_cmd(CMP_A, "task_start"),
                "sched",
                user == "pc1" or admin or svc,
            ),
            (t.component_cmds(CMP_B), t.component_cmd(CMP_B, "task_start"), "sched", admin or svc),
            (
                t.component_user_cmds(CMP_A),
                t.component_user_cmd(CMP_A, "status", "ada"),
                "ada",
                user == "pc1" or admin or svc,
            ),
            (
                t.node_cmds("pc1"),
                t.node_cmd("pc1", "configure"),
                "sched",
                user == "pc1" or admin or svc,
            ),
        ):
            if flt == t.all_node_status() and role.startswith("node:"):
                # the brokers differ here, as docs/security.md says: the embedded one
                # refuses the filter, Mosquitto delivers what the login may read (its own)
                continue
            rows.append((user, "sub", f"{flt} <- {pub}: {topic}", ok))
    return rows


class Prober:
    """One connection per login and an admin watcher that sees what was really published."""

    def __init__(self, b: SecureBroker) -> None:
        self.b = b
        self.clients: dict[str, AsyncClient] = {}
        self.seen: asyncio.Queue[Message] = asyncio.Queue()
        #: (login, topic) of each publish the broker closed the connection for (Aedes)
        self.closed: list[tuple[str, str]] = []

    async def __aenter__(self) -> Prober:
        self.watch = AsyncClient(self.b.url("ada"), client_id="watcher")
        await self.watch.connect()
        await self.watch.subscribe(self.b.topics.all(), handler=self.seen.put_nowait)
        for user in USERS:
            if user == "nobody":
                continue
            await self._connect(user)
        return self

    async def _connect(self, user: str) -> None:
        # on Aedes a refused publish closes the connection: no reconnect, which would send
        # the unacknowledged publish again (and be closed again, for ever)
        c = AsyncClient(
            self.b.url(user), client_id=f"probe-{user}", reconnect=self.b.kind != "aedes"
        )
        await c.connect()
        self.clients[user] = c

    async def _publish(self, user: str, topic: str, payload: bytes) -> None:
        """Publish as ``user``; on Aedes, a connection the broker closed instead of
        acknowledging is made again (the probe's verdict is still the watcher's)."""
        c = self.clients[user]
        if self.b.kind != "aedes":
            await c.publish(topic, payload)
            return
        pub = asyncio.ensure_future(c.publish(topic, payload))
        while not pub.done() and c.is_connected:
            await asyncio.sleep(0.005)
        if pub.done():
            pub.result()
            return
        pub.cancel()
        with contextlib.suppress(asyncio.CancelledError, MqttError):
            await pub
        self.closed.append((user, topic))
        await c.disconnect()
        await self._connect(user)

    async def __aexit__(self, *exc: object) -> None:
        for c in (*self.clients.values(), self.watch):
            await c.disconnect()

    async def publishes(self, user: str, topic: str) -> bool:
        mark = os.urandom(6).hex().encode()
        await self._publish(user, topic, b'{"probe":"' + mark + b'"}')
        sentinel = self.b.topics.scheduler_cmd("status", "ada")
        await self.watch.publish(sentinel, b'{"sentinel":"' + mark + b'"}')
        got = False
        while True:
            m = await asyncio.wait_for(self.seen.get(), 5)
            if mark in m.payload:
                if b"sentinel" in m.payload:
                    return got
                got = True

    async def receives(self, user: str, filter_: str, topic: str, publisher: str) -> bool:
        """Whether ``user``, subscribed to ``filter_``, gets a message on ``topic``.

        amqtt refuses a forbidden subscription (SUBACK 0x80); Mosquitto 2.0 grants it and
        filters every delivery. Both must keep the message away: the probe is followed by
        a sentinel the user may always read, so no wait is guessed.
        """
        c = self.clients[user]
        got: asyncio.Queue[Message] = asyncio.Queue()
        t = self.b.topics
        if user == "pc1":
            sentinel_topic, sentinel_flt = t.node_cmd("pc1", "rebirth"), t.node_cmds("pc1")
        else:
            sentinel_topic, sentinel_flt = t.reply("sentinel", user), t.replies(user)
        try:
            await c.subscribe(filter_, handler=got.put_nowait)
        except MqttError:
            subscribed = False
        else:
            subscribed = True
        await c.subscribe(sentinel_flt, handler=got.put_nowait)
        mark = os.urandom(6).hex().encode()
        await self.clients[publisher].publish(topic, b'{"probe":"' + mark + b'"}')
        await self.clients["sched"].publish(sentinel_topic, b'{"sentinel":"' + mark + b'"}')
        received = False
        while True:
            m = await asyncio.wait_for(got.get(), 5)
            if mark in m.payload:
                if b"sentinel" in m.payload and m.topic == sentinel_topic:
                    break
                received = received or m.topic == topic
        if subscribed:
            await c.unsubscribe(filter_)
        await c.unsubscribe(sentinel_flt)
        return received


async def run_checks(b: SecureBroker) -> list[tuple[str, str, str, bool, bool]]:
    out = []
    async with Prober(b) as p:
        closed = p.closed
        for user, action, topic, expected in checks(b.topics):
            if action == "pub":
                observed = await p.publishes(user, topic)
            else:
                flt, rest = topic.split(" <- ")
                pub, probe = rest.split(": ")
                observed = await p.receives(user, flt, probe, pub)
            out.append((user, action, topic, expected, observed))
    if b.kind == "aedes":  # every refused publish, and only those, closed its connection
        refused = {(u, t) for u, a, t, _e, o in out if a == "pub" and not o}
        assert set(closed) == refused and len(closed) == len(refused), (closed, refused)
    return out


def _report(kind: str, results: list[tuple[str, str, str, bool, bool]], root: str) -> None:
    if REPORT is None:
        return
    REPORT.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "broker": kind,
            "user": u,
            "role": USERS[u][1],
            "action": a,
            "topic": t.removeprefix(root + "/"),
            "expected": e,
            "observed": o,
        }
        for u, a, t, e, o in results
    ]
    (REPORT / f"acl-{kind}.json").write_text(json.dumps(rows, indent=0))


async def _check_broker(b: SecureBroker) -> None:
    results = await run_checks(b)
    _report(b.kind, results, b.topics.root)
    wrong = [r for r in results if r[3] != r[4]]
    assert not wrong, "\n".join(
        f"{u} ({USERS[u][1]}) {a} {t}: expected {'allowed' if e else 'refused'}, "
        f"observed {'allowed' if o else 'refused'}"
        for u, a, t, e, o in wrong
    )
    # and the model agrees with the written expectations
    for u, a, t, e, _o in results:
        role_rules = rules(b.topics, USERS[u][1], u, [CMP_A] if u == "pc1" else [])
        if a == "pub":
            assert allowed(role_rules, "publish", t) == e, (u, a, t)
        else:
            flt, probe = t.split(" <- ")[0], t.split(": ")[1]
            model = allowed(role_rules, "subscribe", flt) and allowed(role_rules, "receive", probe)
            assert model == e, (u, a, t)
    assert len(results) >= 300


async def test_role_table_on_amqtt(tmp_path: Path, instance: str) -> None:
    async with secured("amqtt", tmp_path, instance) as b:
        await _check_broker(b)


async def test_role_table_on_mosquitto(mosquitto_path: str, tmp_path: Path, instance: str) -> None:
    async with secured("mosquitto", tmp_path, instance, mosquitto_path) as b:
        await _check_broker(b)


async def test_role_table_on_aedes(tmp_path: Path, instance: str) -> None:
    async with secured("aedes", tmp_path, instance) as b:
        await _check_broker(b)


@pytest.mark.parametrize("kind", ["amqtt", "mosquitto", "aedes"])
async def test_logins_refused(
    kind: str, tmp_path: Path, instance: str, request: pytest.FixtureRequest
) -> None:
    binary = request.getfixturevalue("mosquitto_path") if kind == "mosquitto" else ""
    async with secured(kind, tmp_path, instance, binary) as b:
        # anonymous, a wrong password, an unknown user, a user without a role
        for url in (b.url(), b.url("olga", "wrong"), b.url("mallory", "x"), b.url("nobody")):
            with pytest.raises(MqttError, match="refused"):
                async with AsyncClient(url, reconnect=False):
                    pass
        async with AsyncClient(b.url("olga"), reconnect=False) as c:
            assert c.is_connected


async def test_users_file_changes_apply_while_the_broker_runs(
    tmp_path: Path, instance: str
) -> None:
    async with secured("amqtt", tmp_path, instance) as b:
        with pytest.raises(MqttError, match="refused"):
            async with AsyncClient(b.url("newbie", "pw-new"), reconnect=False):
                pass
        b.users.add("newbie", "pw-new", "reader")
        b.users.save()
        async with AsyncClient(b.url("newbie", "pw-new"), reconnect=False) as c:
            await c.subscribe(b.topics.all_job_status())
        b.users.remove("newbie")
        b.users.save()
        with pytest.raises(MqttError, match="refused"):
            async with AsyncClient(b.url("newbie", "pw-new"), reconnect=False):
                pass


async def test_a_component_added_to_the_devices_file_is_granted_at_once(
    tmp_path: Path, instance: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An admin's tour: a device added to devices.yml and `tomato reload` at once. The
    embedded broker, which looks at its files every 0.5 s, refused the node's subscription
    to the new component's commands by the rules of the file before, and the component
    never registered. A refusal now looks at the files first."""
    cmp_c = "example_counter:(addr-c,1)"
    added = (
        "  - name: dev-c\n    driver: example_counter\n    address: addr-c\n"
        '    channels: ["1"]\n    pollrate: 1\n    node: pc1\npipelines:\n'
        '  - name: pip-c\n    devices:\n      - {role: counter, device: dev-c, channel: "1"}'
    )
    # a refusal looks at the files again if it did not in the last 50 ms: here at once,
    # as a `tomato reload` takes longer than that after the edit
    from tomato_mqtt_broker import security

    monkeypatch.setattr(security, "_RECHECK_REFUSED", 0.0, raising=False)
    async with (
        secured("amqtt", tmp_path, instance) as b,
        AsyncClient(b.url("pc1"), reconnect=False) as c,
    ):
        await c.subscribe(b.topics.component_cmds(CMP_A))  # pc1's rules, as they were
        with pytest.raises(MqttError, match="refused"):
            await c.subscribe(b.topics.component_cmds(cmp_c))  # not pc1's yet
        devices = tmp_path / "devices.yml"
        devices.write_text(devices.read_text().replace("pipelines:", added))
        await c.subscribe(b.topics.component_cmds(cmp_c))  # granted at once
        with pytest.raises(MqttError, match="refused"):
            await c.subscribe(b.topics.component_cmds(CMP_B))  # pc2's: still not


def _login_from(address: str, port: int, user: str, password: str) -> tuple[int, float]:
    """A login from ``address`` (a loopback address of this PC's own): the CONNACK's
    code and how long it took to come."""
    import threading
    import time

    import paho.mqtt.client as paho

    got: list[int] = []
    done = threading.Event()

    def on_connect(_c: object, _u: object, _f: object, rc: object, _p: object = None) -> None:
        got.append(int(getattr(rc, "value", rc)))  # type: ignore[call-overload]
        done.set()

    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"guess-{os.urandom(3).hex()}")
    c.username_pw_set(user, password)
    c.on_connect = on_connect
    t0 = time.monotonic()
    c.connect("127.0.0.1", port, bind_address=address)
    c.loop_start()
    try:
        assert done.wait(60), "no CONNACK within 60 s"
        return got[0], time.monotonic() - t0
    finally:
        c.disconnect()
        c.loop_stop()


async def test_wrong_logins_from_one_address_make_its_next_tries_wait(
    tmp_path: Path, instance: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A security round: 200 password guesses at one login in 40 s, the right password
    still taken after them (the dashboard's sign-in slowed such guesses; the broker's own
    port did not). After 5 wrong logins of a user name from an address, each further try
    of it from there waits 1, 2, 4 … s (up to 8) after the check before; other addresses,
    another user name from the same address, and this PC's own 127.0.0.1 (the stack's
    services and the dashboard log in from there), do not wait; a right login ends the
    count."""
    import time

    from tomato_mqtt_broker.security import FREE_FAILURES

    async with secured("amqtt", tmp_path, instance) as b:

        def guess(address: str, user: str = "olga", pw: str = "wrong") -> tuple[int, float]:
            return _login_from(address, b.port, user, pw)

        for _ in range(FREE_FAILURES):  # free: answered as the password check takes
            sent = time.monotonic()
            rc, took = await asyncio.to_thread(guess, "127.0.0.2")
            assert rc != 0 and took < 0.9, (rc, took)
        checked = sent + took  # (the last wrong one's check ended just before)
        for wait in (1.0, 2.0):  # after the check before (its answer came just after it)
            sent = time.monotonic()
            rc, took = await asyncio.to_thread(guess, "127.0.0.2")
            # (less a margin for the client threads' own delays on a loaded machine)
            assert rc != 0 and sent + took - checked >= 0.8 * wait, (rc, took, wait)
            checked = sent + took
        # another address, another user name of the same address, and this PC's own,
        # are not held up (a first login each)
        for address, user in (("127.0.0.3", "rita"), ("127.0.0.2", "ada"), ("127.0.0.1", "otto")):
            rc, took = await asyncio.to_thread(guess, address, user, USERS[user][0])
            assert rc == 0 and took < 0.9, (address, user, rc, took)
        # the right password from the address that guessed: taken, 4 s after the last check
        rc, took = await asyncio.to_thread(guess, "127.0.0.2", "olga", USERS["olga"][0])
        assert rc == 0 and time.monotonic() - checked >= 4.0, (rc, took)
        rc, took = await asyncio.to_thread(guess, "127.0.0.2")  # the count began again
        assert rc != 0 and took < 0.9, (rc, took)
        assert "wrong logins as 'olga' from 127.0.0.2: each further try" in caplog.text


async def test_tries_held_open_or_given_up_do_not_keep_a_right_login_out(
    tmp_path: Path, instance: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review: tries held open by someone on the same address made a right login wait
    8 s per try held (20 s and more: tomato's client gives up after 10 s), tries their
    clients had given up still took their turns (a PC with a stale password kept its
    node's right login out for 72 s), and 20 logins of 20 users sent at once from one
    address, all right, waited each other's turns (up to 63 s). Now at most 4 tries of
    a login from one address are under way at once (a further one is told "server unavailable"
    at once), a try whose client left is dropped unchecked, and other user names do not
    wait."""
    import socket
    from concurrent.futures import ThreadPoolExecutor

    from tomato_mqtt_broker import security

    monkeypatch.setattr(security, "FREE_FAILURES", 1)
    async with secured("amqtt", tmp_path, instance) as b:

        def guess(address: str, user: str = "olga", pw: str = "wrong") -> tuple[int, float]:
            return _login_from(address, b.port, user, pw)

        for _ in range(3):  # olga's count from 127.0.0.2: 3 (waits 1, then 2 s)
            rc, _took = await asyncio.to_thread(guess, "127.0.0.2")
            assert rc != 0
        held = []
        for _ in range(6):  # 6 tries held open: 4 under way, 2 told at once
            sk = socket.create_connection(("127.0.0.1", b.port), source_address=("127.0.0.2", 0))
            sk.sendall(_connect_packet("olga", "wrong"))
            held.append(sk)
        try:
            await asyncio.sleep(0.5)
            told = []
            for sk in held:
                sk.settimeout(0.05)
                with contextlib.suppress(TimeoutError):
                    told.append(sk.recv(4))
            # CONNACK "server unavailable" (3) for the two beyond the 4 under way
            assert told.count(b"\x20\x02\x00\x03") == 2, told
            # another user name from the same address goes in at once
            rc, took = await asyncio.to_thread(guess, "127.0.0.2", "otto", USERS["otto"][0])
            assert rc == 0 and took < 0.9, (rc, took)
        finally:
            for sk in held:  # given up: each is dropped unchecked (looked at twice a second)
                sk.close()
        await asyncio.sleep(1.0)
        # olga's right login waits for the check before (~4 s), not for the 4 given up
        rc, took = await asyncio.to_thread(guess, "127.0.0.2", "olga", USERS["olga"][0])
        assert rc == 0 and took < 7.0, (rc, took)
        # and 8 logins of 8 users sent at once from one address, all right: none waits
        names = ["ada", "otto", "rita", "dash", "pc1", "pc2", "sched", "rec"]
        with ThreadPoolExecutor(len(names)) as pool:
            loop = asyncio.get_running_loop()
            got = await asyncio.gather(
                *(loop.run_in_executor(pool, guess, "127.0.0.4", n, USERS[n][0]) for n in names)
            )
        assert all(rc == 0 for rc, _ in got), got
        assert max(t for _, t in got) < 3.0, got


def _connect_packet(user: str, pw: str) -> bytes:
    """An MQTT 3.1.1 CONNECT with a user name and password (a client of no library)."""

    def text(x: str) -> bytes:
        return len(x.encode()).to_bytes(2, "big") + x.encode()

    body = text("MQTT") + bytes([4, 0xC2]) + (60).to_bytes(2, "big")
    body += text(f"raw-{os.urandom(3).hex()}") + text(user) + text(pw)
    return bytes([0x10, len(body)]) + body


def _raw_login(port: int, address: str, user: str, pw: str) -> tuple[bytes, float]:
    """One CONNECT from ``address``: the CONNACK's bytes and how long it took."""
    import socket
    import time

    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), source_address=(address, 0)) as sk:
        sk.settimeout(30)
        sk.sendall(_connect_packet(user, pw))
        return sk.recv(4), time.monotonic() - t0


async def test_one_address_trying_many_user_names_holds_up_no_one_else(
    tmp_path: Path, instance: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review: counted per user name alone, one address trying 40 made-up names (5 free
    tries each) filled the password checks every address waits for, and a right first
    login from elsewhere took 4 s. An address has a bounded number of tries under way (a
    further one "server unavailable", unchecked), and past a number of wrong ones from it
    all its user names take their turns together."""
    import socket
    import time

    from tomato_mqtt_broker import security

    monkeypatch.setattr(security, "ADDRESS_UNDER_WAY_MAX", 4)
    monkeypatch.setattr(security, "ADDRESS_FREE_FAILURES", 6)
    monkeypatch.setattr(security, "FAILURE_WAIT_MAX", 1.5)
    checks: list[float] = []
    verify = security.UsersAuthPlugin._verify

    async def counted(self: Any, password: str, hash_: str) -> bool:
        checks.append(time.monotonic())
        return bool(await verify(self, password, hash_))

    monkeypatch.setattr(security.UsersAuthPlugin, "_verify", counted)
    async with secured("amqtt", tmp_path, instance) as b:

        def spray() -> list[bytes]:  # 12 made-up names at once from one address
            held = []
            try:
                for i in range(12):
                    sk = socket.create_connection(
                        ("127.0.0.1", b.port), source_address=("127.0.0.2", 0)
                    )
                    sk.sendall(_connect_packet(f"x{i}", "wrong"))
                    held.append(sk)
                told = []
                for sk in held:
                    sk.settimeout(10)
                    told.append(sk.recv(4))
                return told
            finally:
                for sk in held:
                    sk.close()

        told = await asyncio.to_thread(spray)  # (the broker runs on this loop)
        unavailable = b"\x20\x02\x00\x03"
        assert told.count(unavailable) == 8 and len(checks) == 4, (told, len(checks))
        # a right first login from elsewhere is not held up
        rc, took = await asyncio.to_thread(_login_from, "127.0.0.4", b.port, "otto", "pw-otto")
        assert rc == 0 and took < 2.0, (rc, took)
        # 2 more wrong ones bring the address to 6: then all its names take turns
        for name in ("y0", "y1"):
            got, took = await asyncio.to_thread(_raw_login, b.port, "127.0.0.2", name, "wrong")
            assert got != unavailable and took < 1.0, (got, took)
        got, took = await asyncio.to_thread(_raw_login, b.port, "127.0.0.2", "y2", "wrong")
        assert got != unavailable and took >= 1.0, (got, took)  # (1.5 s after the last)


def test_what_an_address_counts_as() -> None:
    """A review: on a broker listening on "::", IPv4 clients come as ::ffff:a.b.c.d, and
    all of them, the stack's own services included, counted as one /64."""
    from tomato_mqtt_broker.security import _Guesses

    assert _Guesses.where("::ffff:127.0.0.1") is None  # this PC's own
    assert _Guesses.where("127.0.0.1") is None and _Guesses.where("::1") is None
    assert _Guesses.where("::ffff:192.168.1.7") == "192.168.1.7"
    assert _Guesses.where("192.168.1.7") == "192.168.1.7"
    assert _Guesses.where("2001:db8::1") == _Guesses.where("2001:db8::2") == "2001:db8::/64"
    assert _Guesses.where("fe80::1%eth0") == "fe80::1"  # link-local: each its own
    assert _Guesses.where("fe80::2") != _Guesses.where("fe80::1")


async def test_wrong_logins_sent_at_once_take_their_turns(
    tmp_path: Path, instance: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review: tries sent at once, past the free ones, each read the count before any
    of them had failed: 30 of them waited the same 1 s and were all checked within 5 s.
    Tries under way count as wrong, and each takes its turn after the one before."""
    from concurrent.futures import ThreadPoolExecutor

    from tomato_mqtt_broker import security

    monkeypatch.setattr(security, "FREE_FAILURES", 2)
    monkeypatch.setattr(security, "FAILURE_WAIT_MAX", 1.0)
    async with secured("amqtt", tmp_path, instance) as b:

        def guess(_: int) -> tuple[int, float]:
            return _login_from("127.0.0.2", b.port, "olga", "wrong")

        for _ in range(2):  # free
            rc, took = await asyncio.to_thread(guess, 0)
            assert rc != 0 and took < 0.9, (rc, took)
        with ThreadPoolExecutor(4) as pool:  # 4 at once: checked 1 s after each other
            got = await asyncio.get_running_loop().run_in_executor(
                None, lambda: list(pool.map(guess, range(4)))
            )
        assert all(rc != 0 for rc, _ in got), got
        took = sorted(t for _, t in got)
        assert all(b - a >= 0.9 for a, b in itertools.pairwise(took)), took
