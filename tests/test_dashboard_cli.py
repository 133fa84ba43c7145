"""``tomato dashboard`` as a command: settings, the page and plotly from its wheel, and
``tomato start``'s supervisor running it when ``[dashboard] enabled``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.conftest import RunningBroker
from tests.security_env import start_amqtt, stop
from tests.stack import BIN, free_port
from tomato_mqtt.services.supervisor import Supervisor

ROOT = Path(__file__).resolve().parents[1]


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return int(r.status), bytes(r.read())


async def test_tomato_dashboard_serves_page_and_plotly(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    web = free_port()
    app = tmp_path / "app"
    app.mkdir()
    (app / "settings.toml").write_text(
        f'[mqtt]\ninstance = "{instance}"\nport = {broker.port}\n'
        f"[broker]\nembedded = false\n[dashboard]\nport = {web}\n"
    )
    out = tmp_path / "out.txt"
    with out.open("wb") as f:
        proc = subprocess.Popen(
            [
                str(BIN / "tomato"),
                "dashboard",
                "-A",
                str(app),
                "-L",
                str(tmp_path / "log"),
                "--open",
            ],
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            env=NO_BROWSER,
        )
    try:
        status, body = 0, b""
        for _ in range(200):  # up to 20 s: the process imports aiohttp, then connects
            try:
                status, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{web}/")
                break
            except OSError:
                if proc.poll() is not None:
                    raise AssertionError(f"tomato dashboard exited: {out.read_text()}") from None
                await asyncio.sleep(0.1)
        assert status == 200 and b"tomato-mqtt" in body
        status, js = await asyncio.to_thread(_get, f"http://127.0.0.1:{web}/vendor/plotly.min.js")
        assert status == 200 and len(js) > 1_000_000  # plotly.min.js of the plotly wheel
        # a second `tomato dashboard --open` of the same settings (the stack's own runs:
        # [dashboard] enabled) says where the one that serves is, and opens that: "the
        # port is in use" sent a newcomer looking for a program to stop
        again = await asyncio.to_thread(
            subprocess.run,
            [str(BIN / "tomato"), "dashboard", "-A", str(app), "--open"],
            capture_output=True,
            text=True,
            timeout=60,
            env=NO_BROWSER,
        )
        said = again.stdout + again.stderr
        assert again.returncode == 0, said
        here = f"a tomato-mqtt dashboard of this stack serves http://127.0.0.1:{web}/ already"
        assert here in said, said
        assert f"--open found no web browser on this PC: open http://127.0.0.1:{web}/" in said
        # ... and another stack's (another instance: another lab's page) is not taken for
        # it, also through a proxy set in the environment (a review: it opened the other
        # lab's page, exit 0; and asked the proxy)
        other = tmp_path / "other"
        other.mkdir()
        (other / "settings.toml").write_text(
            (app / "settings.toml").read_text().replace(instance, f"{instance}-other")
        )
        theirs = await asyncio.to_thread(
            subprocess.run,
            [str(BIN / "tomato"), "dashboard", "-A", str(other)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**NO_BROWSER, "http_proxy": "http://127.0.0.1:9", "no_proxy": ""},
        )
        said = theirs.stdout + theirs.stderr
        assert theirs.returncode == 1, said
        assert f"cannot serve on 127.0.0.1:{web}: the dashboard of another stack" in said, said
        # the page is served before the broker is reached: stop it once it says it is up
        # (its address line), not in the middle of its subscriptions
        # (--open with no browser on this PC says so after it: it said nothing)
        line = f"--open found no web browser on this PC: open http://127.0.0.1:{web}/ in"
        for _ in range(200):
            if line in out.read_text() or proc.poll() is not None:
                break
            await asyncio.sleep(0.1)
    finally:
        proc.terminate()
        # not a blocking wait: the broker runs on this test's event loop
        await asyncio.to_thread(proc.wait, 15)
    assert proc.returncode == 0, out.read_text()
    # the address, once, when it serves
    assert out.read_text().count(f"dashboard: http://127.0.0.1:{web}/ (Ctrl-C stops it)") == 1
    assert line in out.read_text(), out.read_text()


#: an environment with no web browser: no display, no $BROWSER, no text browser on PATH
NO_BROWSER = {
    k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER")
} | {"PATH": str(BIN)}


def _settings(app: Path, instance: str, port: int, web: int) -> None:
    app.mkdir(parents=True, exist_ok=True)
    (app / "settings.toml").write_text(
        f'[mqtt]\ninstance = "{instance}"\nport = {port}\n'
        f"[broker]\nembedded = false\n[dashboard]\nport = {web}\n"
    )


#: ``tomato dashboard`` with the broker's wait shortened (it is 30 s)
SHORT_WAIT = (
    "import sys\n"
    "import tomato_mqtt.services.dashboard.service as s\n"
    "s.CONNECT_TIMEOUT = float(sys.argv.pop(1))\n"
    "from tomato_mqtt.cli.fast import tomato\n"
    "sys.argv[0] = 'tomato'\n"
    "tomato()\n"
)


async def _dashboard_on(app: Path, web: int) -> subprocess.CompletedProcess[str]:
    """``tomato dashboard -A app --web-port web`` run to its end (a port taken: at once)."""
    argv = [str(BIN / "tomato"), "dashboard", "-A", str(app), "--web-port", str(web)]
    return await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=60)


async def test_web_port_in_use_says_how_to_choose_another(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """No address is announced, and the error names --web-port and [dashboard] port."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        web = int(taken.getsockname()[1])
        _settings(tmp_path / "app", instance, broker.port, free_port())
        res = await _dashboard_on(tmp_path / "app", web)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "dashboard: http" not in res.stdout + res.stderr
    assert f"cannot serve on 127.0.0.1:{web}: the port is in use" in res.stderr, res.stderr
    assert "--web-port N" in res.stderr and "[dashboard]" in res.stderr, res.stderr
    assert "settings.toml" in res.stderr, res.stderr
    assert "WebSocket listener" not in res.stderr  # (an external broker's stack: not ours)


async def test_a_port_held_by_a_program_that_speaks_no_http_is_said_in_use(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """A review: the probe of a taken port for a tomato-mqtt dashboard got an SSH
    banner (or a TLS alert) and `tomato dashboard` ended in a traceback."""
    import threading

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        web = int(taken.getsockname()[1])

        def banner() -> None:
            with contextlib.suppress(OSError):
                while True:
                    conn, _ = taken.accept()
                    with conn:
                        conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

        threading.Thread(target=banner, daemon=True).start()
        _settings(tmp_path / "app", instance, broker.port, free_port())
        res = await _dashboard_on(tmp_path / "app", web)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    assert f"cannot serve on 127.0.0.1:{web}: the port is in use" in res.stderr, res.stderr


async def test_web_port_of_the_stack_s_own_websocket_listener_is_named(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """`--web-port` on the embedded broker's WebSocket listener (the MQTT port + 1 by
    default, a natural next choice): the error said "another dashboard, or another
    program" of the stack's own broker (a newcomer's tour)."""
    with socket.socket() as taken:  # (as the stack's broker holds it)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        web = int(taken.getsockname()[1])
        app = tmp_path / "app"
        app.mkdir(parents=True)
        (app / "settings.toml").write_text(
            f'[mqtt]\ninstance = "{instance}"\nport = {broker.port}\n[broker]\nws_port = {web}\n'
        )
        res = await _dashboard_on(app, web)
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"the embedded broker's WebSocket listener takes {web}" in res.stderr, res.stderr


async def test_unreachable_broker_is_retried_then_given_up(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """The broker is tried for CONNECT_TIMEOUT s: one that comes up meanwhile is used;
    then the dashboard stops (exit 1), saying that it tried for that long and gave up."""
    app, web = tmp_path / "app", free_port()
    _settings(app, instance, broker.port, web)
    await broker.stop()
    cmd = [sys.executable, "-c", SHORT_WAIT, "20", "dashboard", "-A", str(app)]
    out = tmp_path / "out.txt"
    with out.open("wb") as f:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)
    try:
        await asyncio.sleep(1.5)  # refused meanwhile: still trying, nothing announced
        assert proc.poll() is None, out.read_text()
        assert "dashboard: http" not in out.read_text()
        await broker.start()
        for _ in range(200):  # the retry's back-off is at most 1 s
            if f"dashboard: http://127.0.0.1:{web}/" in out.read_text():
                break
            assert proc.poll() is None, out.read_text()
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"never served: {out.read_text()}")
        status, _ = await asyncio.to_thread(_get, f"http://127.0.0.1:{web}/")
        assert status == 200
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 15)  # the broker runs on this event loop

    # a broker that stays away: given up after the wait, and said so
    await broker.stop()
    t0 = time.monotonic()
    res = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", SHORT_WAIT, "1", "dashboard", "-A", str(app)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1, res.stdout + res.stderr
    assert time.monotonic() - t0 < 30, res.stderr
    assert "dashboard: http" not in res.stdout + res.stderr
    assert (
        f"cannot reach the broker (cannot connect to the MQTT broker at mqtt://127.0.0.1:{broker.port}"
        in res.stderr
    ), res.stderr
    assert "It kept trying for 1 s and has stopped" in res.stderr, res.stderr

    # Ctrl-C while it tries: taken at once, said as every command says it (it was not
    # looked at until the 30 s were over, and then exit 1 without a word: a tour); and
    # what it does is said at once (nothing was printed while it tried)
    proc = subprocess.Popen(
        [sys.executable, "-c", SHORT_WAIT, "30", "dashboard", "-A", str(app)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a terminal's
    )
    try:
        assert proc.stderr is not None
        first = await asyncio.to_thread(proc.stderr.readline)
        assert first == (
            f"dashboard: connecting to the broker at mqtt://127.0.0.1:{broker.port}"
            " (Ctrl-C stops it)\n"
        ), first
        await asyncio.sleep(1.0)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.to_thread(proc.communicate, None, 20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (proc.returncode, err) == (130, "interrupted\n"), (proc.returncode, err)
    assert time.monotonic() - t0 < 5
    await broker.start()  # as the fixture left it


def test_supervisor_runs_the_dashboard_only_when_enabled(tmp_path: Path) -> None:
    def names(dashboard: bool) -> list[str]:
        sup = Supervisor(
            [],
            logdir=tmp_path,
            pidfile=tmp_path / "pid",
            embedded_broker=True,
            broker_host="127.0.0.1",
            port=1883,
            node_name="local",
            dashboard=dashboard,
        )
        return [c.name for c in sup.children]

    assert "dashboard" not in names(False)
    assert names(True)[-1] == "dashboard"


def test_instrument_pc_install_does_not_pull_the_dashboard() -> None:
    """The dashboard's packages are an extra, and nothing but the dashboard imports them."""
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    assert "aiohttp" not in core and "plotly" not in core
    extra = " ".join(project["optional-dependencies"]["dashboard"])
    assert "aiohttp" in extra and "plotly" in extra
    code = (
        "import sys\n"
        "import tomato_mqtt.services.node.service, tomato_mqtt.cli.tomato\n"
        "bad = [m for m in ('aiohttp', 'plotly') if m in sys.modules]\n"
        "sys.exit(f'imported {bad}' if bad else 0)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_settings_in_the_docs_are_the_defaults(tmp_path: Path) -> None:
    """docs/dashboard.md's [dashboard] block loads, and says what the defaults are."""
    from tomato_mqtt.config.settings import DashboardSettings, load_settings

    doc = (ROOT / "docs" / "dashboard.md").read_text()
    block = doc.split("```toml\n[dashboard]\n", 1)[1].split("```", 1)[0]
    (tmp_path / "settings.toml").write_text("[dashboard]\n" + block)
    s = load_settings(appdir=tmp_path, datadir=tmp_path, logdir=tmp_path)
    assert s.dashboard == DashboardSettings()
    assert "--open" in doc and "tomato dashboard --open" in (ROOT / "README.md").read_text()


async def test_a_refused_login_is_said_at_once_not_as_a_broker_away(
    tmp_path: Path, instance: str
) -> None:
    """A broker that refuses the dashboard's login: said as such, at once. It said "It
    kept trying for 30 s … start the stack" after half a second (an admin on Mosquitto,
    whose files did not have the dashboard's login yet)."""
    b = await start_amqtt(tmp_path, instance)
    try:
        app = tmp_path / "app"
        app.mkdir()
        t0 = time.monotonic()
        res = await asyncio.to_thread(
            subprocess.run,
            [str(BIN / "tomato"), "dashboard", "-A", str(app), "--instance", instance,
             "--broker", b.url("ada", "wrong"), "--web-port", str(free_port())],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert res.returncode == 1, res.stdout + res.stderr
        assert time.monotonic() - t0 < 20, res.stderr
        assert "the broker refused the dashboard's login 'ada'" in res.stderr, res.stderr
        assert "Check the user and password of --broker" in res.stderr, res.stderr
        assert "kept trying" not in res.stderr and "tomato start" not in res.stderr
    finally:
        await stop(b)
