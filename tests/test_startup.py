"""`tomato start`'s start sequence (issue 15): socket activation and a lean supervisor.

The MQTT port listens before anything starts (bound by `tomato start`, or by the
supervisor), and the embedded broker serves that socket: a client that connects while
the broker still imports is served when it is, without a refused connect and a back-off
retry; a restarted broker serves the same socket. A port that is taken is one clear
error and nothing is left running.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tomato_mqtt_broker import BrokerConfig, EmbeddedBroker

from tests.stack import BIN, Stack, free_port, make_stack, start_stack, stop_stack
from tests.upstream.test_upstream_stack import processes_of
from tomato_mqtt.config.devices import load_devices
from tomato_mqtt.config.url import BrokerURL
from tomato_mqtt.services.scheduler.warmup import settled, warm_up_when
from tomato_mqtt.services.supervisor import Supervisor, bind_listener
from tomato_mqtt.transport.client import AsyncClient, MqttError
from tomato_mqtt.wire.messages import ComponentMeta

pytestmark = pytest.mark.timeout(60)


async def _until(pred: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_a_client_early_is_served_when_the_broker_serves_the_bound_socket() -> None:
    port = free_port()
    sock = bind_listener("127.0.0.1", port)
    url = BrokerURL.parse(f"mqtt://127.0.0.1:{port}")
    c = AsyncClient(url, client_id="early")
    try:
        # no retry: a refused connect would fail this at once
        connecting = asyncio.ensure_future(c.connect(timeout=20))
        await _until(lambda: c._sock is not None or connecting.done())  # TCP is accepted
        assert not connecting.done()  # ... by the kernel: no CONNACK before the broker
        cfg = BrokerConfig(port=port, listen_fd=sock.fileno())
        broker = EmbeddedBroker(cfg)
        await broker.start()
        try:
            await asyncio.wait_for(connecting, 20)
            assert c.is_connected
        finally:
            await broker.stop()
        # a restarted broker (the supervisor restarts one killed) serves the same socket
        await _until(lambda: not c.is_connected)
        broker = EmbeddedBroker(cfg)
        await broker.start()
        try:
            await c.wait_connected(20)
        finally:
            await c.disconnect()
            await broker.stop()
    finally:
        sock.close()


async def test_a_connection_closed_before_connack_fails_the_connect_at_once() -> None:
    async def slam(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)  # the CONNECT arrived; the "broker" dies before answering
        writer.close()

    server = await asyncio.start_server(slam, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    c = AsyncClient(BrokerURL.parse(f"mqtt://127.0.0.1:{port}"), client_id="slammed")
    try:
        t0 = time.monotonic()
        with pytest.raises(MqttError, match="closed before CONNACK"):
            await c.connect(timeout=20)
        assert time.monotonic() - t0 < 10  # not the connect timeout
    finally:
        await c.disconnect()
        server.close()
        await server.wait_closed()


async def test_supervisor_whose_port_is_taken_gives_up_and_starts_nothing(
    tmp_path: Path,
) -> None:
    port = free_port()
    taken = bind_listener("127.0.0.1", port)
    try:
        sup = Supervisor(
            [],
            logdir=tmp_path,
            pidfile=tmp_path / "pid",
            embedded_broker=True,
            broker_host="127.0.0.1",
            port=port,
            node_name="local",
        )
        assert await asyncio.wait_for(sup.run(), 20) == 1
    finally:
        taken.close()
    assert sup.failed and f"cannot listen on 127.0.0.1:{port}" in sup.failed
    assert all(c.proc is None for c in sup.children)
    assert not (tmp_path / "pid").exists()


def test_the_supervisor_imports_no_cli_and_no_pydantic() -> None:
    """It runs as long as the stack: small, and started in a few tens of milliseconds."""
    code = (
        "import sys, tomato_mqtt.services.supervisor\n"
        "bad = [m for m in ('typer', 'click', 'pydantic', 'paho', 'tomato_mqtt.cli',"
        " 'tomato_mqtt.config.settings') if m in sys.modules]\n"
        "sys.exit(f'imported {bad}' if bad else 0)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_start_spawns_the_supervisor_before_it_imports_asyncio(tmp_path: Path) -> None:
    """Everything `tomato start` does before the supervisor runs delays every service:
    its checks need the settings, the devices file and the broker's configuration, not
    asyncio (~25 ms), which it loads afterwards for its wait."""
    st = make_stack(tmp_path)  # a stack's files, checked as `tomato start` checks them
    code = (
        "import subprocess, sys\n"
        "class Spawned(Exception): pass\n"
        "def popen(*a, **k):\n"
        "    if 'tomato_mqtt.services.supervisor' in a[0]:\n"
        "        print(sorted(m for m in ('asyncio', 'paho', 'amqtt') if m in sys.modules))\n"
        "        raise Spawned\n"
        "subprocess.Popen = popen\n"
        "from tomato_mqtt.cli import fast, preload\n"
        "preload.fork_stack = lambda spec, argv, *a: popen(argv)\n"
        "sys.argv = ['tomato', 'start', *sys.argv[1:]]\n"
        "try:\n"
        "    fast.tomato()\n"
        "except Spawned:\n"
        "    pass\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, *st.dirs(), "-p", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.stdout.strip() == "[]", res.stdout + res.stderr


def test_a_supervisor_killed_during_start_is_said_so_at_once(tmp_path: Path) -> None:
    """An outside review: `tomato start` whose supervisor was killed while it waited
    ended at once, saying "did not come up within 20 s"."""
    st = make_stack(tmp_path)
    code = (
        "import os, signal, sys\n"
        "from tomato_mqtt.cli import fast, start_core\n"
        "real = start_core.wait_ready\n"
        "def wait_ready(ctx, proc, *a, **k):\n"
        "    os.kill(proc.pid, signal.SIGKILL)\n"
        "    proc.wait()\n"
        "    return real(ctx, proc, *a, **k)\n"
        "start_core.wait_ready = wait_ready\n"
        "sys.argv = ['tomato', 'start', *sys.argv[1:]]\n"
        "fast.tomato()\n"
    )
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-c", code, *st.dirs(), "-p", str(st.port), "-t", "20s"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1, res
    assert "its supervisor (pid" in res.stderr and "was killed (signal 9)" in res.stderr, res
    assert time.monotonic() - t0 < 15  # not the 20 s of -t
    assert not processes_of(st.port), "a service of the failed start is left"


def test_a_start_that_a_stop_ends_before_it_is_ready_is_not_said_started(
    tmp_path: Path,
) -> None:
    """Fault injection: `tomato stop` while `tomato start` waited for its components
    (here one that cannot connect) made the start say "started … 0/1 component(s) ready"
    and "not ready after 30 s" after 0.5 s, exit 0, as the stack went away."""
    settings = '[drivers.example_counter]\nconnect_requires_file = "/nonexistent/plug"\n'
    st = make_stack(tmp_path, settings=settings)
    start = subprocess.Popen(
        [str(BIN / "tomato"), "start", *st.dirs(), "-p", str(st.port), "-t", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not st.json("tomato", "status", "-t", "2")["success"]:
            assert time.monotonic() < deadline and start.poll() is None, start.poll()
            time.sleep(0.3)
        stop = st.run("tomato", "stop", "-D", str(st.datadir))
        assert stop.returncode == 0, (stop.stdout, stop.stderr)
        out, err = start.communicate(timeout=30)
    finally:
        if start.poll() is None:
            start.kill()
            start.communicate()
    assert start.returncode == 1, (out, err)
    assert "started" not in out and "not ready after" not in err, (out, err)
    assert "was ready; nothing is left running" in err, err
    assert "its supervisor (pid" in err and "stopped (a `tomato stop` meanwhile?)" in err, err
    assert not processes_of(st.port)


def _start_with(st: Any, patch: str, wait: str, timeout: float) -> Any:
    """`tomato start` of ``st`` in a process of its own, ``patch`` (code that changes
    ``start_core``) run first; the finished process."""
    code = (
        "import os, signal, sys, time\n"
        "from tomato_mqtt.cli import fast, start_core\n"
        f"{patch}"
        "sys.argv = ['tomato', 'start', *sys.argv[1:]]\n"
        "fast.tomato()\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *st.dirs(), "-p", str(st.port), "-t", wait],
        capture_output=True,
        text=True,
        timeout=timeout,
        # SIGINT as from a terminal: a test worker may ignore it, and a child inherits that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def test_a_start_while_another_is_under_way_is_refused_saying_so(tmp_path: Path) -> None:
    """A newcomer's tour: two `tomato start`s at once got "already running (pid N)" of
    a pid gone a moment later, or "port … in use by another program". A start under way
    holds a lock in the data folder (here this test holds it, as that start would); a
    second start says so, starts nothing, and starts once it is free."""
    import fcntl

    st = make_stack(tmp_path)
    st.datadir.mkdir(parents=True, exist_ok=True)
    with open(st.datadir / "tomato-mqtt.starting", "a+") as held:
        fcntl.lockf(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242")
        held.flush()
        res = start_stack(st, timeout=20)
        assert res.returncode == 1, (res.stdout, res.stderr)
        assert res.stderr == (
            f"error: another `tomato start` (pid 4242) is starting tomato-mqtt on the data "
            f"folder {st.datadir}: wait for it (`tomato status` shows it once it is up)\n"
        ), res.stderr
        assert not processes_of(st.port)
    res = start_stack(st, timeout=30)  # the lock given up (that start ended)
    try:
        assert res.returncode == 0, (res.stdout, res.stderr, st.logs())
    finally:
        stop_stack(st)


def test_a_start_interrupted_while_it_waits_stops_what_it_started(tmp_path: Path) -> None:
    """A newcomer's tour: Ctrl-C while `tomato start` waited printed a traceback and
    left the whole stack starting in the background, unsaid (a retry: "already
    running"). An interrupted start is called off as a failed one is."""
    st = make_stack(tmp_path)
    ctrl_c = (
        "real = start_core.wait_ready\n"
        "def wait_ready(ctx, proc, *a, **k):\n"
        "    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, as it starts to wait\n"
        "    return real(ctx, proc, *a, **k)\n"
        "start_core.wait_ready = wait_ready\n"
    )
    res = _start_with(st, ctrl_c, "20s", 60)
    left = processes_of(st.port)
    for pid in left:  # (ours: a stack this test started, left by a start that failed)
        os.kill(pid, signal.SIGKILL)
    assert res.returncode == 130, res
    assert res.stderr == "tomato start interrupted: stopping what it had started\n", res
    assert not left, "a service of the interrupted start is left"


#: where the supervisor is stopped: once `tomato start` waits for it, or (the Linux fork
#: path) at once after its fork, before its setsid: still in the start's process group
_STOPS = {
    "while waited for": (
        "real = start_core.wait_ready\n"
        "def wait_ready(ctx, proc, *a, **k):\n"
        "    os.kill(proc.pid, signal.SIGSTOP)\n"
        "    return real(ctx, proc, *a, **k)\n"
        "start_core.wait_ready = wait_ready\n"
    ),
    "before its setsid": (
        "from tomato_mqtt.cli import preload\n"
        "real = preload._supervisor\n"
        "def supervisor(*a, **k):\n"
        "    os.kill(os.getpid(), signal.SIGSTOP)\n"
        "    real(*a, **k)\n"
        "preload._supervisor = supervisor\n"
    ),
}


@pytest.mark.parametrize("where", list(_STOPS))
def test_a_start_whose_supervisor_is_stopped_ends_at_its_timeout(
    tmp_path: Path, where: str
) -> None:
    """An outside review: the supervisor stopped (SIGSTOP) while `tomato start` waited;
    at the timeout its SIGTERM was not acted on until the SIGKILL 5 s later. And a
    loaded CI run: one stopped before its setsid got no signal at all (sent to its
    process group only), and held the start's output pipes: its caller hung."""
    st = make_stack(tmp_path)
    timed = (
        f"{_STOPS[where]}"
        "take_down = start_core._take_down\n"
        "def timed(proc):\n"
        "    t0 = time.monotonic()\n"
        "    take_down(proc)\n"
        "    print(f'took down in {time.monotonic() - t0:.2f} s', file=sys.stderr)\n"
        "start_core._take_down = timed\n"
    )
    res = _start_with(st, timed, "2s", 30)
    assert res.returncode == 1 and "did not come up within 2 s" in res.stderr, res
    took = float(res.stderr.split("took down in ")[1].split()[0])
    assert took < 2.5, res.stderr  # before: the 5 s its SIGTERM waited, then SIGKILL
    deadline = time.monotonic() + 10
    while processes_of(st.port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not processes_of(st.port), "a service of the failed start is left"


@pytest.mark.parametrize("closed", ["0<&-", "1>&-", "2>&-", "0<&- 1>&- 2>&-"])
def test_a_start_with_a_standard_stream_closed_starts(tmp_path: Path, closed: str) -> None:
    """An outside review: `tomato start 1>&-` (a cron job, a service manager that closes
    its children's streams) failed on Python's ``sys.stdout`` being None with half the
    stack started, and a listener bound as fd 0 was replaced by the broker's stdin."""
    st = make_stack(tmp_path)
    env = {**os.environ, **st.env}
    start = [str(BIN / "tomato"), "start", *st.dirs(), "-p", str(st.port)]
    try:
        res = subprocess.run(
            ["bash", "-c", f'"$@" {closed}', "-", *start],
            capture_output=True,
            text=True,
            timeout=90,
            env=env,
        )
        assert res.returncode == 0, res.stdout + res.stderr + st.logs()
        assert st.json("tomato", "status")["success"]
    finally:
        st.run("tomato", "stop")


def test_start_on_a_taken_port_is_one_error_and_nothing_runs(tmp_path: Path) -> None:
    port = free_port()
    dirs = ["-A", str(tmp_path), "-D", str(tmp_path), "-L", str(tmp_path), "-p", str(port)]
    exe = [sys.executable, "-m", "tomato_mqtt.cli.tomato"]
    subprocess.run([*exe, "init", *dirs], check=True, capture_output=True, timeout=60)
    with bind_listener("127.0.0.1", port) as taken:  # listening: another program's server
        taken.settimeout(None)
        res = subprocess.run([*exe, "start", *dirs], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1, res
    assert f"port {port} on 127.0.0.1 is already in use by another program" in res.stderr
    # ... says that nothing runs and how to take another port
    assert "nothing was started" in res.stderr and "tomato start -p N" in res.stderr
    assert processes_of(port) == []
    assert not (tmp_path / f"tomato-mqtt.{port}.pid").exists()


@pytest.mark.parametrize(
    ("name", "damage", "words"),
    [
        ("state.sqlite", "garbage", "the scheduler's state file"),
        ("state.sqlite", "truncated", "the scheduler's state file"),
        ("recorder.sqlite", "garbage", "the recorder's store"),
        # a page inside it overwritten: the cheap probe passed it (a fault run)
        ("recorder.sqlite", "page", "the recorder's store"),
        ("spool/local.sqlite", "garbage", "the node's spool"),
    ],
)
def test_start_refuses_a_state_file_it_cannot_read_at_once(
    tmp_path: Path, name: str, damage: str, words: str
) -> None:
    """Found by fault injection: with a corrupt state file its service crashed at every
    restart; `tomato start` waited its whole timeout and said "did not come up" (the
    reason in a stderr log), or exited 0 with "0/6 component(s) ready" for a node."""
    import sqlite3

    port = free_port()
    dirs = ["-A", str(tmp_path), "-D", str(tmp_path), "-L", str(tmp_path), "-p", str(port)]
    exe = [sys.executable, "-m", "tomato_mqtt.cli.tomato"]
    subprocess.run([*exe, "init", *dirs], check=True, capture_output=True, timeout=60)
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if damage == "garbage":
        path.write_bytes(bytes(range(256)) * 64)
    else:  # a real database with rows, cut in half or a page of it overwritten
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE t (x TEXT)")
        db.executemany("INSERT INTO t VALUES (?)", [("x" * 500,)] * 300)
        db.commit()
        db.close()
        data = path.read_bytes()
        if damage == "page":
            at = 4096 * 20 + 64
            path.write_bytes(data[:at] + b"\xa5" * 512 + data[at + 512 :])
        else:
            path.write_bytes(data[: len(data) // 2])
    before = path.read_bytes()
    t0 = time.monotonic()
    try:
        res = subprocess.run([*exe, "start", *dirs, "-t", "60"], capture_output=True, text=True)
        assert res.returncode == 1, res
        assert time.monotonic() - t0 < 15  # not the start's whole timeout
        assert f"{words} {path} cannot be read (" in res.stderr, res.stderr
        assert "nothing was started" in res.stderr and "move it away" in res.stderr, res.stderr
        assert processes_of(port) == []
        assert path.read_bytes() == before  # left as it was, for whoever can rescue it
    finally:  # a start that was not refused (the code before the fix) leaves no stack
        if processes_of(port):
            subprocess.run([*exe, "stop", *dirs], capture_output=True, timeout=60)


def _meta(name: str, **kw: object) -> ComponentMeta:
    return ComponentMeta(
        name=name, device="d", driver="example_counter", address="a", channel="1", node="n", **kw
    )


def test_the_scheduler_warms_up_once_every_component_has_registered(tmp_path: Path) -> None:
    devices = tmp_path / "devices.yml"
    devices.write_text(
        "devices:\n  - {name: d, driver: example_counter, address: a, channels: ['1', '2']}\n"
        "pipelines:\n  - name: p-*\n    devices: [{role: r, device: d, channel: each}]\n"
    )
    layout = load_devices(devices)
    a, b = sorted(layout.components)
    assert not settled(layout, {})
    assert not settled(layout, {a: _meta(a, registered=True), b: _meta(b)})
    assert settled(layout, {a: _meta(a, registered=True), b: _meta(b, error="no driver")})


async def test_the_warm_up_waits_for_the_components_and_no_longer() -> None:
    ready = asyncio.Event()
    loaded: list[bool] = []
    warm = asyncio.ensure_future(warm_up_when(ready, lambda: loaded.append(True), latest=60))
    await asyncio.sleep(0)
    assert not warm.done() and not loaded
    ready.set()
    await asyncio.wait_for(warm, 60)  # it loads (once ready), not after the 60 s
    assert loaded == [True]


def test_start_does_not_wait_out_its_timeout_for_a_remote_node_not_running(
    tmp_path: Path,
) -> None:
    """A device on an instrument PC whose node is not started yet: `tomato start` says so
    shortly after the stack is up (not after its 60 s timeout), and the components
    register when that node is started later."""
    from tests.stack import BIN, make_stack, stop_stack

    st = make_stack(tmp_path)
    devices = (st.appdir / "devices.yml").read_text()
    remote = (Path(__file__).resolve().parents[1] / "config" / "netns_devices.yml").read_text()
    (st.appdir / "devices.yml").write_text(_merge_devices(devices, remote))
    node: subprocess.Popen[bytes] | None = None
    try:
        t0 = time.monotonic()
        res = subprocess.run(
            [BIN / "tomato", "start", *st.dirs(), "-p", str(st.port), "-t", "60", "--json"],
            capture_output=True,
            text=True,
            timeout=90,
        )
        took = time.monotonic() - t0
        assert res.returncode == 0, f"{res.stdout}\n{res.stderr}\n{st.logs()}"
        assert took < 30, f"tomato start waited {took:.1f} s for a node that is not running"
        import json

        data = json.loads(res.stdout)["data"]
        assert data["nodes_not_online"] == [{"node": "pc2", "components": [REMOTE]}]
        assert data["components_ready"] == data["components"] - 1
        assert "node 'pc2' is not online" in res.stderr and "tomato node --name pc2" in res.stderr
        # `passata` of its component says what the scheduler knows of the node, not only
        # "is it running?" of the component's node (an admin's tour, a node cut off)
        row = st.json("tomato", "status", "components")["data"][REMOTE]
        assert row["state"] == "no node", row
        assert row["error"] == (
            "no status of node pc2 has come (since the scheduler started, or a reload added "
            "it): is it started?"
        ), row
        for name in (REMOTE, "dev-remote/1", "dev-remote"):  # each form of its name
            res = st.run("passata", "status", name, "-t", "1")
            assert res.returncode == 1, res
            assert "no node hosting" in res.stderr, res.stderr
            assert (
                "within 1 s — the scheduler has never heard of its node 'pc2' (is it started?)"
            ) in res.stderr, res.stderr
        # ... and says it after a short wait, not all of a long -t (it waited its 20 s),
        # over TCP and over WebSockets (the asyncio path)
        ws = re.search(r"(?m)^ws_port = (\d+)$", (st.appdir / "settings.toml").read_text())
        assert ws is not None
        ws_cmd = ["--broker", f"ws://127.0.0.1:{ws[1]}", "-A", str(st.appdir)]
        for name, over_ws in ((REMOTE, False), ("dev-remote/1", False), (REMOTE, True)):
            _away_said(
                st,
                ["status", name, "-t", "20"],
                ws_cmd if over_ws else None,
                "within 2 s — the scheduler has never heard of its node 'pc2' (is it started?)",
            )
        # what needs no node reads what is retained: nothing yet, and says so
        res = st.run("passata", "capabilities", REMOTE, "-t", "20")
        assert res.returncode == 1 and "no node has announced component" in res.stderr, res
        # ... and no point of it: not "`passata measure` takes one now" (it cannot)
        res = st.run("passata", "last", REMOTE, "-t", "20")
        assert res.returncode == 1, res
        assert (
            "— the scheduler has never heard of its node 'pc2' (is it started?)" in (res.stderr)
            and "passata measure" not in res.stderr
        ), res.stderr
        # started later, the node registers its component
        node_log = (tmp_path / "pc2.log").open("w")
        node = subprocess.Popen(
            [BIN / "tomato", "node", "--name", "pc2", "-p", str(st.port), "-A", str(st.appdir)],
            stdout=node_log,
            stderr=subprocess.STDOUT,
        )
        node_log.close()
        deadline = time.monotonic() + 30
        while True:
            comps = st.json("tomato", "status", "components")["data"]
            if comps[REMOTE]["registered"]:
                break
            assert time.monotonic() < deadline, (tmp_path / "pc2.log").read_text()
            time.sleep(0.2)
        node.terminate()  # stopped: the scheduler counts it away
        node.wait(timeout=30)
        while st.json("tomato", "status", "components")["data"][REMOTE]["state"] != "lost":
            assert time.monotonic() < deadline + 30, (tmp_path / "pc2.log").read_text()
            time.sleep(0.2)
        # ... and `tomato status components` says why (its error was null)
        row = st.json("tomato", "status", "components")["data"][REMOTE]
        assert row["error"] == "node pc2 is offline (it was stopped)", row
        for name in (REMOTE, "dev-remote/1"):
            res = st.run("passata", "get", name, "max", "-t", "1")
            assert res.returncode == 1, res
            assert (
                "within 1 s — the scheduler says node pc2 is offline (it was stopped) (broker"
            ) in res.stderr, res.stderr
        for name, over_ws in ((REMOTE, False), ("dev-remote", False), ("dev-remote/1", True)):
            _away_said(
                st,
                ["get", name, "max", "-t", "20"],
                ws_cmd if over_ws else None,
                "within 2 s — the scheduler says node pc2 is offline (it was stopped)",
            )
        # its retained meta is still read while the node is away, and `attrs` shows the
        # attributes from it, each value saying why it was not read (a review: it failed
        # whole after 2 s)
        res = st.run("passata", "capabilities", REMOTE, "-t", "20")
        assert res.returncode == 0, res
        t0 = time.monotonic()
        res = st.run("passata", "attrs", "dev-remote/1", "-t", "20")
        assert res.returncode == 0, res
        assert "value not read:" in res.stdout and "offline (it was stopped)" in res.stdout, res
        assert time.monotonic() - t0 < 10
        # a node restarting (`tomato restart-node` of one its supervisor starts again: here
        # the test stands in for it) is waited for all of -t: a `passata get` sent as the
        # restart returned said "offline (it was stopped)" after 2 s of a node back a
        # second later (a test of a hung close, twice in CI)
        cmd = [BIN / "tomato", "node", "--name", "pc2", "-p", str(st.port), "-A", str(st.appdir)]
        env = {**os.environ, "TOMATO_MQTT_SUPERVISOR_PID": str(os.getpid())}
        node = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        while st.json("tomato", "status", "components")["data"][REMOTE]["state"] == "lost":
            assert time.monotonic() < t0 + 60, st.logs()
            time.sleep(0.2)
        st.run("tomato", "restart-node", "pc2", check=True)
        assert node.wait(timeout=30) == 5  # (EXIT_RESTART_REQUESTED: its supervisor's cue)
        row = st.json("tomato", "status", "components")["data"][REMOTE]
        assert row["error"] == "node pc2 is offline (it is restarting)", row
        gets = [
            subprocess.Popen(
                [BIN / "passata", "get", name, "max", "-t", "20", *extra],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name, extra in (
                (REMOTE, ["-p", str(st.port), "-A", str(st.appdir)]),
                ("dev-remote/1", ws_cmd),
            )
        ]
        time.sleep(4)  # past AWAY_WAIT (2 s), then the node is back
        node = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        for get in gets:
            out, err = get.communicate(timeout=60)
            assert get.returncode == 0, (out, err)
    finally:
        if node is not None and node.poll() is None:
            node.terminate()
            node.wait(timeout=30)
        stop_stack(st)


REMOTE = "example_counter:(remote-addr,1)"


def _away_said(st: Any, args: list[str], ws_cmd: list[str] | None, said: str) -> None:
    """``passata ARGS`` (over WebSockets with ``ws_cmd``) fails within 10 s of its -t 20,
    saying ``said``: a node the scheduler has away is not waited for all of -t."""
    from tests.stack import BIN

    t0 = time.monotonic()
    if ws_cmd is not None:
        res = subprocess.run(
            [str(BIN / "passata"), *args, *ws_cmd], capture_output=True, text=True, timeout=60
        )
    else:
        res = st.run("passata", *args)
    took = time.monotonic() - t0
    assert res.returncode == 1, res
    assert said in res.stderr, res.stderr
    assert took < 10, f"passata waited {took:.1f} s for a node the scheduler has away"


def _merge_devices(local: str, remote: str) -> str:
    """Both devices files' devices and pipelines in one."""
    import yaml

    a, b = yaml.safe_load(local), yaml.safe_load(remote)
    return yaml.safe_dump(
        {"devices": a["devices"] + b["devices"], "pipelines": a["pipelines"] + b["pipelines"]}
    )


def test_a_node_whose_spool_cannot_be_read_says_so_in_one_line(tmp_path: Path) -> None:
    """An instrument PC's `tomato node` (no `tomato start` to check for it) with a
    corrupt spool printed a traceback ending in 'file is not a database'."""
    spool = tmp_path / "data" / "spool" / "pcx.sqlite"
    spool.parent.mkdir(parents=True)
    spool.write_bytes(bytes(range(256)) * 32)
    res = subprocess.run(
        [
            *(sys.executable, "-m", "tomato_mqtt.cli.tomato", "node", "--name", "pcx"),
            *("--broker", f"mqtt://127.0.0.1:{free_port()}", "--instance", "x"),
            *("-D", str(tmp_path / "data"), "-L", str(tmp_path / "log")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1, res
    assert res.stderr.startswith(f"error: the node's spool {spool} cannot be read (file is not")
    assert "node pcx cannot start" in res.stderr and "Traceback" not in res.stderr, res.stderr
    # without -L (an instrument PC's usual command) it logs to the console: still once
    res = subprocess.run(
        [
            *(sys.executable, "-m", "tomato_mqtt.cli.tomato", "node", "--name", "pcx"),
            *("--broker", f"mqtt://127.0.0.1:{free_port()}", "--instance", "x"),
            *("-D", str(tmp_path / "data")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1, res
    assert res.stderr.count("cannot be read (file is not") == 1, res.stderr


@pytest.mark.parametrize(
    "why",
    [
        "database or disk is full",
        "attempt to write a readonly database",
        "unable to open database file",
        "disk I/O error",
    ],
)
def test_a_state_file_that_cannot_be_written_is_not_called_unreadable(
    tmp_path: Path, why: str
) -> None:
    """A fault-injection review: a full disk, a read-only file or an unwritable folder
    was reported as "cannot be read … move it away to start afresh (the queue and the
    pipelines' samples are lost …)", about a file that was intact: once space came back
    the job ended c with every point. Following the advice threw the queue away."""
    import sqlite3

    from tomato_mqtt.config.statefiles import opened
    from tomato_mqtt.errors import StartupError

    path = tmp_path / "state.sqlite"

    def fails() -> None:
        raise sqlite3.OperationalError(why)

    with pytest.raises(StartupError) as e:
        opened("state", path, "the scheduler", fails)
    said = str(e.value)
    assert said.startswith(f"the scheduler's state file {path} cannot be written ({why})"), said
    assert "free space on its disk" in said and "do not move it away" in said, said

    def garbage() -> None:
        raise sqlite3.DatabaseError("file is not a database")

    with pytest.raises(StartupError) as e:
        opened("state", path, "the scheduler", garbage)
    assert "cannot be read (file is not a database)" in str(e.value)
    assert "move it away to start afresh" in str(e.value)


def test_the_hint_to_start_a_missing_node_works_on_the_stack_it_is_for(tmp_path: Path) -> None:
    """An admin's tour: `tomato start` said to start a missing node with `tomato node
    --name pc2 --broker mqtt://<this PC's address>:PORT`: no instance, no login, no TLS,
    which a secured stack refuses."""
    from tomato_mqtt.config.nodehint import node_command
    from tomato_mqtt.config.settings import load_settings

    def hint(toml: str) -> str:
        app = tmp_path / str(len(list(tmp_path.iterdir())))
        app.mkdir()
        (app / "settings.toml").write_text(toml)
        return node_command(load_settings(appdir=app, datadir=app, logdir=app), "pc2", 21883)

    assert hint("") == "`tomato node --name pc2 --broker mqtt://<this PC's address>:21883`"
    assert hint('[mqtt]\ninstance = "lab1"\n[broker]\npassword_file = "users"\n') == (
        "`TOMATO_BROKER='mqtt://pc2:PASSWORD@<this PC's address>:21883' tomato node --name "
        "pc2 --instance lab1`, with a login of the role node:pc2"
    )
    tls = '[broker]\npassword_file = "users"\ncertfile = "s.crt"\nkeyfile = "s.key"\n'
    assert "mqtts://pc2:PASSWORD@<this PC's address>:8883?ca_certs=<the lab CA>" in hint(tls)
    # the address the broker listens on, when [broker] host names one (an admin's tour)
    assert "mqtts://pc2:PASSWORD@10.66.0.1:8883?" in hint(
        tls + 'host = "10.66.0.1"\nallow_anonymous = false\n'
    )
    assert "<this PC's address>" in hint(tls + 'host = "0.0.0.0"\nallow_anonymous = false\n')


def test_a_damaged_page_inside_the_spool_is_said_in_one_line_before_the_start(
    tmp_path: Path,
) -> None:
    """A randomized fault round: a page of the node's spool damaged (a crash mid-write,
    a bad disk) passed `tomato start`'s cheap probe: the start waited its whole timeout
    and said "no status of node local has come … is it started?" while the node
    crash-looped, a raw traceback in its log at each try. The spool is checked whole
    before a start, as the state file is, and a node by hand says it in one line."""
    import sqlite3

    from tomato_mqtt.services.node.spool import Spool

    st = make_stack(tmp_path)
    spool = st.datadir / "spool" / "local.sqlite"
    spool.parent.mkdir(parents=True)
    sp = Spool(spool)
    sp.new_epoch()
    for i in range(200):
        sp.put("c", "s1", i, 1, b'{"x": "' + b"y" * 2000 + b'"}')
    sp.close()
    with sqlite3.connect(spool) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with spool.open("r+b") as f:  # the page of its meta table (its first)
        f.seek(4096)
        f.write(bytes(range(256)) * 4)
    t0 = time.monotonic()
    res = subprocess.run(
        [BIN / "tomato", "start", *st.dirs(), "-p", str(st.port), "-t", "60"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert res.returncode == 1 and time.monotonic() - t0 < 15, res
    assert res.stderr.startswith(f"error: the node's spool {spool} cannot be read "), res.stderr
    assert "nothing was started" in res.stderr, res.stderr
    res = subprocess.run(  # an instrument PC's node, by hand: one line, no traceback
        [
            *(sys.executable, "-m", "tomato_mqtt.cli.tomato", "node"),
            *("--broker", f"mqtt://127.0.0.1:{free_port()}", "--instance", "x"),
            *("-D", str(st.datadir), "-L", str(st.logdir)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1, res
    assert res.stderr.startswith(f"error: the node's spool {spool} cannot be read"), res.stderr
    assert "Traceback" not in res.stderr, res.stderr


def test_a_damaged_page_inside_the_state_file_is_found_before_the_start(tmp_path: Path) -> None:
    """A fault-injection review: bytes overwritten inside the state file passed the cheap
    probe (header, schema, length); the scheduler then crash-looped, or failed its
    passes every 0.5 s for good while submits went into the damaged file. The state
    file (small) is checked whole before a start."""
    from tomato_mqtt.config.statefiles import unreadable
    from tomato_mqtt.services.scheduler.store import StateStore

    path = tmp_path / "state.sqlite"
    with StateStore(path) as store:
        for i in range(300):
            store.add_job({"version": "2.2", "method": [], "pad": "x" * 500}, f"j{i}", "/tmp")
        store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert unreadable(path, thorough=True) is None
    with path.open("r+b") as f:  # an interior page of the jobs table, overwritten
        f.seek(4096 * 20 + 64)
        f.write(b"\xa5" * 512)
    assert unreadable(path) is None  # the cheap probe does not see it
    why = unreadable(path, thorough=True)
    assert why is not None, why


def test_a_datadir_on_a_read_only_disk_is_said_before_anything_starts(tmp_path: Path) -> None:
    """A fault review: a datadir that cannot be written (this user's permissions, a
    read-only disk) gave "its supervisor … exited with code 1 before the stack was
    ready", the cause a traceback in supervisor.log. A read-only tmpfs here (needs root
    and mount(8); skipped, saying why, without)."""
    from tests.chaos.harness import Unavailable
    from tests.chaos.host_faults import tiny_tmpfs

    st = make_stack(tmp_path)
    ro = tmp_path / "ro"
    try:
        with tiny_tmpfs(ro, "1m"):
            subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True, timeout=10)
            res = st.run("tomato", "start", "-D", str(ro), "-L", str(st.logdir), timeout=60)
    except Unavailable as e:
        pytest.skip(str(e))
    assert res.returncode == 1, (res.stdout, res.stderr)
    said = res.stderr.strip()
    assert said.endswith(
        "(or its disk is read-only); nothing was started. Fix its "
        "permissions, or choose another with -D"
    ), said
    assert f"may not write the datadir {ro}" in said and "Traceback" not in said, said


def test_a_datadir_on_a_full_disk_is_said_before_anything_starts(tmp_path: Path) -> None:
    """A fault review: `tomato start` on a full datadir started without a word, the fault
    said only at the first write refused. A filled 1 MB tmpfs (root and mount(8);
    skipped, saying why, without)."""
    from tests.chaos.harness import Unavailable
    from tests.chaos.host_faults import _fill, tiny_tmpfs

    st = make_stack(tmp_path)
    full = tmp_path / "full"
    try:
        with tiny_tmpfs(full, "1m"):
            _fill(full)
            res = st.run("tomato", "start", "-D", str(full), "-L", str(st.logdir), timeout=60)
            started = list(full.glob("*.pid"))
    except Unavailable as e:
        pytest.skip(str(e))
    assert res.returncode == 1, (res.stdout, res.stderr)
    said = res.stderr.strip()
    assert f"the disk of the datadir {full} is full (" in said, said
    assert said.endswith("nothing was started. Free space on it, or choose another with -D")
    assert not started and "Traceback" not in said, (started, said)


def test_an_emptied_state_file_is_refused_and_an_empty_settings_file_said(
    tmp_path: Path,
) -> None:
    """A fault-injection run: a state file emptied (0 bytes) was taken for a new one,
    the queue and the samples gone, said in the scheduler's log only; an emptied
    settings.toml started another stack (port 1883, the default data folder) without a
    word. The first is refused where jobs ran before, the second said."""
    st = make_stack(tmp_path)
    (st.appdir / "settings.toml").write_text("")
    data = tmp_path / "data"
    (data / "Jobs" / "16").mkdir(parents=True)  # a job ran here
    (data / "state.sqlite").write_bytes(b"")
    res = st.run("tomato", "start", "-D", str(data), "-L", str(st.logdir), timeout=60)
    assert res.returncode == 1, (res.stdout, res.stderr)
    said = res.stderr.strip().splitlines()
    assert said[0] == (
        f"warning: {st.appdir / 'settings.toml'} is empty: every setting is its default "
        f"(port {st.port}, data folder {data}): a file cut short? `tomato init` writes one"
    ), said
    assert said[-1].startswith(
        f"error: the scheduler's state file {data / 'state.sqlite'} cannot be read (it is "
        f"empty, while the job folder {data / 'Jobs' / '16'} has job 16): nothing was started"
    ), said
    assert not list(data.glob("*.pid")), "a service of the refused start runs"


def test_a_devices_file_cut_short_keeps_the_pipelines_samples(tmp_path: Path) -> None:
    """A fault-injection run: a devices file cut in half (its `pipelines:` gone) started
    a stack with no pipeline, without a word, and every pipeline's sample was gone when
    the file was put back. Said, and the samples kept."""
    from tests.stack import started

    st = make_stack(tmp_path)
    devices = st.appdir / "devices.yml"
    whole = devices.read_text()
    with started(st):
        st.run("tomato", "pipeline", "load", "pip-counter-1", "s1", check=True)
    devices.write_text(whole.split("pipelines:")[0])
    res = start_stack(st)
    try:
        assert res.returncode == 0, (res.stdout, res.stderr)
        said = res.stderr
        assert f"warning: {devices}: it has no 'pipelines': no pipeline is configured" in said
        assert (
            f"warning: pipeline pip-counter-1 is not in the devices file {devices} any more: "
            "kept with its sample 's1' until the file has it again, or the sample is "
            "ejected (tomato pipeline eject pip-counter-1)"
        ) in said, said
        res = st.run("tomato", "pipeline", "load", "pip-counter-1", "s2")
        assert res.returncode == 1 and "already holds sample 's1'" in res.stderr, res
        # nor is it made ready (its jobs launched unasked once the file had it again)
        res = st.run("tomato", "pipeline", "ready", "pip-counter-1")
        assert res.returncode == 1, res
        assert "pipeline pip-counter-1 is not in the devices file any more" in res.stderr, res
    finally:
        stop_stack(st)
    devices.write_text(whole)
    with started(st):  # the file whole again: the sample where it was
        pips = st.json("tomato", "status", "pipelines")["data"]
        assert pips["pip-counter-1"]["sampleid"] == "s1", pips
    # cut again: the kept pipeline's eject removes it
    devices.write_text(whole.split("pipelines:")[0])
    with started(st):
        res = st.run("tomato", "pipeline", "eject", "pip-counter-1", check=True)
        assert res.stdout.strip() == (
            "sample 's1' ejected from pip-counter-1; the pipeline, gone from the devices "
            "file, is removed"
        ), res.stdout
        assert st.json("tomato", "status", "pipelines")["data"] == {}


@pytest.mark.parametrize("kind", ["state", "recorder"])
def test_a_state_file_another_program_holds_locked_is_said_before_anything_starts(
    tmp_path: Path, kind: str
) -> None:
    """A fault run: with an sqlite3 shell inside a transaction on the scheduler's state
    file, `tomato start` waited 30 s and said "did not come up … see the logs" (the
    scheduler gave up at each restart). Refused at once now, naming the program."""
    from tests.test_reliability_inproc import _locked_by_another_program
    from tomato_mqtt.services.recorder.store import BatchStore
    from tomato_mqtt.services.scheduler.store import StateStore

    st = make_stack(tmp_path)
    if kind == "state":
        path = st.datadir / "state.sqlite"
        StateStore(path).close()
        what = "the scheduler's state file"
    else:
        path = st.datadir / "recorder.sqlite"
        BatchStore(path).close()
        what = "the recorder's store"
    with _locked_by_another_program(path) as holder:
        t0 = time.monotonic()
        res = st.run("tomato", "start", "-D", str(st.datadir), "-L", str(st.logdir), timeout=60)
        took = time.monotonic() - t0
    assert res.returncode == 1, (res.stdout, res.stderr)
    said = res.stderr.strip()
    assert said.startswith(
        f"error: {what} {path} is locked by another program (pid {holder.pid} ("
    ), said
    assert "nothing was started" in said and "end that program's transaction" in said, said
    # (nothing retries a start: not "writes go through once it lets go")
    assert "then run tomato start again" in said and "go through" not in said, said
    assert took < 10, took
    assert not (st.datadir / f"tomato-mqtt.{st.port}.pid").exists()


def test_a_running_stack_writing_its_store_is_said_running_not_another_programs_lock(
    tmp_path: Path,
) -> None:
    """A review of the lock check: `tomato start` on a running stack probed its files'
    write locks before it looked for the stack, and a recorder in the middle of a write
    (here: the process that holds the lock is the stack's, in its pid file) was said to
    be "another program" to end, not "already running"."""
    import json
    import subprocess
    import sys

    from tomato_mqtt.services.recorder.store import BatchStore

    st = make_stack(tmp_path)
    path = st.datadir / "recorder.sqlite"
    BatchStore(path).close()
    pidfile = st.datadir / f"tomato-mqtt.{st.port}.pid"
    # the stack's process (its command line names tomato_mqtt) inside a write
    writer = (
        "import sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('BEGIN IMMEDIATE')\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", writer, str(path), "tomato_mqtt"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
        pidfile.write_text(json.dumps({"pid": holder.pid}))
        res = st.run("tomato", "start", "-D", str(st.datadir), "-L", str(st.logdir), timeout=60)
    finally:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        holder.wait(10)
        holder.stdout.close()
    assert res.returncode == 1, (res.stdout, res.stderr)
    said = res.stderr.strip()
    assert f"tomato-mqtt is already running on port {st.port} (pid {holder.pid})" in said, said
    assert "locked by another program" not in said, said


def _failed_start(tmp_path: Path, old: str, new: str) -> tuple[Stack, Any]:
    """`tomato start -t 3` of a stack whose settings have ``old`` replaced by ``new``,
    which fails (exit 1)."""
    st = make_stack(tmp_path)
    settings = st.appdir / "settings.toml"
    settings.write_text(settings.read_text().replace(old, new))
    res = subprocess.run(
        [str(BIN / "tomato"), "start", *st.dirs(), "-p", str(st.port), "-t", "3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1, res
    return st, res


def test_a_start_on_an_external_broker_that_is_not_there_says_which(tmp_path: Path) -> None:
    """An admin's tour: `tomato start` with `[broker] embedded = false` and the broker
    not running said only "did not come up within 10 s; see the logs"; it names the
    broker it could not reach and why, and leaves nothing running."""
    t0 = time.monotonic()
    st, res = _failed_start(tmp_path, "[broker]\n", "[broker]\nembedded = false\n")
    assert "did not come up within 3 s: cannot connect to the MQTT broker at" in res.stderr, res
    assert f"127.0.0.1:{st.port}" in res.stderr and "embedded = false" in res.stderr, res
    assert time.monotonic() - t0 < 20
    assert not processes_of(st.port), "a service of the failed start is left"


def test_a_start_whose_services_cannot_reach_the_embedded_broker_says_where(
    tmp_path: Path,
) -> None:
    """An admin's tour: the embedded broker listened where the services did not connect
    (`[broker] host` the lab's address, before it listened on loopback too), and `tomato
    start` said only "did not come up within 30 s; see the logs". It says where the
    services connect and where the broker listens. (`[mqtt] host` another loopback
    address than the broker's stands for it here.)"""
    st, res = _failed_start(tmp_path, "[mqtt]\n", '[mqtt]\nhost = "127.0.0.3"\n')
    said = res.stderr
    assert f"its services connect to mqtt://127.0.0.3:{st.port}, and cannot connect" in said, said
    assert "the embedded broker listens on [broker] host = '127.0.0.1'" in said, said
    assert not processes_of(st.port), "a service of the failed start is left"


def test_a_misspelt_driver_is_to_be_fixed_in_the_devices_file(tmp_path: Path) -> None:
    """A newcomer's tour: `driver: example_countr` got "did you mean 'example_counter'?"
    and then "Install it, then run `tomato reload`": the devices file is what to fix."""
    from tests.stack import start_stack, stop_stack

    st = make_stack(tmp_path)
    devices = st.appdir / "devices.yml"
    devices.write_text(devices.read_text().replace("example_counter", "example_countr"))
    res = start_stack(st)
    try:
        assert res.returncode == 0, res
        said = res.stderr
        assert "did you mean 'example_counter'?" in said, said
        assert "Fix the name in the devices file, then run `tomato reload`." in said, said
        assert "Install it" not in said, said
    finally:
        stop_stack(st)
