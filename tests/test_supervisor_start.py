"""A stack whose broker cannot listen gives up at once instead of restarting for ever.

`tomato start` checks the broker's ports before it starts anything; this is the case it
cannot see (the port taken between the check and the bind): the supervisor itself must
give up when the broker exits at its first start, and take every service down.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stack import free_port, make_stack, started
from tests.upstream.test_upstream_stack import processes_of
from tomato_mqtt.services.supervisor import STABLE_RUN, restart_delay

pytestmark = pytest.mark.timeout(240)


def test_supervisor_gives_up_when_the_broker_cannot_listen(tmp_path: Path) -> None:
    port = free_port()
    dirs = ["-A", str(tmp_path), "-D", str(tmp_path), "-L", str(tmp_path), "-p", str(port)]
    exe = [sys.executable, "-m", "tomato_mqtt.cli.tomato"]
    subprocess.run([*exe, "init", *dirs], check=True, capture_output=True, timeout=60)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port + 1))  # the WebSocket listener's port
        taken.listen()
        # it ends by itself (a restart loop would run into the timeout)
        res = subprocess.run([*exe, "supervise", *dirs], capture_output=True, timeout=180)
    assert res.returncode == 1, res
    log = (tmp_path / "supervisor.log").read_text()
    assert "the broker could not start" in log and "address already in use" in log, log
    assert log.count("started broker") == 1  # given up after its first exit, not restarted
    assert processes_of(port) == []


def test_a_broker_that_cannot_listen_exits_also_when_clients_connected_first(
    tmp_path: Path,
) -> None:
    """Under `tomato start` the supervisor binds the MQTT port and hands its socket down,
    so services connect before the broker runs. The broker's MQTT listener started, took
    their connections, then its WebSocket listener found its port taken: the broker said
    so but never exited (the handlers of those connections outlived the loop's cancel),
    and the supervisor waited, restarting nothing (a test run on a loaded machine: 3
    minutes). Deterministic here: three clients send CONNECT to the bound socket first."""
    from tomato_mqtt.services.supervisor import EXIT_CANNOT_LISTEN, LISTEN_FD_ENV

    port = free_port()
    dirs = ["-A", str(tmp_path), "-D", str(tmp_path), "-L", str(tmp_path), "-p", str(port)]
    exe = [sys.executable, "-m", "tomato_mqtt.cli.tomato"]
    subprocess.run([*exe, "init", *dirs], check=True, capture_output=True, timeout=60)
    with contextlib.ExitStack() as stack:
        taken = stack.enter_context(socket.socket())
        taken.bind(("127.0.0.1", port + 1))  # the WebSocket listener's port
        taken.listen()
        bound = stack.enter_context(socket.socket())
        bound.bind(("127.0.0.1", port))  # as the supervisor does
        bound.listen(16)
        clients = []
        for i in range(3):
            c = stack.enter_context(socket.create_connection(("127.0.0.1", port)))
            body = b"\x00\x04MQTT\x04\x02\x00\x3c" + b"\x00\x02" + f"c{i}".encode()
            c.sendall(b"\x10" + bytes([len(body)]) + body)  # CONNECT, clean session
            clients.append(c)
        proc = subprocess.Popen(
            [*exe, "broker", *dirs],
            env={**os.environ, LISTEN_FD_ENV: str(bound.fileno())},
            pass_fds=(bound.fileno(),),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _out, err = proc.communicate(timeout=60)  # it never exited
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == EXIT_CANNOT_LISTEN, err
        assert "address already in use" in err, err
        for c in clients:  # their connections were closed, not left hanging
            c.settimeout(10)
            while c.recv(4096):
                pass


def test_a_service_that_served_is_restarted_at_once_a_crash_loop_backs_off() -> None:
    """A service killed after it served (a fault, not a crash loop) comes back after 0.2
    s however often it was killed in the last minute (a scheduler killed a few times in
    a minute came back after seconds, beyond a CLI's -t); one that exits soon after each
    start backs off, doubling up to 10 s."""
    fails: list[float] = []
    delays = []
    for k in range(4):  # killed every 6 s, each run serving more than STABLE_RUN
        now = 100.0 + 6 * k
        fails, delay = restart_delay(fails, now - STABLE_RUN - 1, now)
        delays.append(delay)
    assert delays == [0.2] * 4 and len(fails) == 1
    fails, delays = [], []
    for k in range(8):  # exits 0.5 s after each start
        now = 100.0 + k
        fails, delay = restart_delay(fails, now - 0.5, now)
        delays.append(delay)
    assert delays == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]
    # a minute later the old exits no longer count
    assert restart_delay(fails, 200.0 - 0.5, 200.0)[1] == 0.2


def test_a_broker_on_one_address_listens_on_loopback_too(tmp_path: Path) -> None:
    """An admin's tour: `[broker] host` set to the lab network's address without TLS made
    the plain listener bind that address only; the stack's own services connect to
    127.0.0.1, were refused, and `tomato start` gave up after 30 s naming no cause. The
    broker listens on both now (as the generated Mosquitto rules did). 127.0.0.2 stands
    for the lab address: on loopback, so no password file is needed, and not 127.0.0.1."""
    from tomato_mqtt_broker import BrokerConfig

    listeners = BrokerConfig(host="10.0.0.5", port=1, password_file=__file__).amqtt_config()
    assert listeners["listeners"]["local"]["bind"] == "127.0.0.1:1"
    for host in ("0.0.0.0", "127.0.0.1", "localhost"):  # these take 127.0.0.1 already
        config = BrokerConfig(host=host, port=1, password_file=__file__).amqtt_config()
        assert "local" not in config["listeners"], host
    st = make_stack(tmp_path)
    settings = st.appdir / "settings.toml"
    settings.write_text(
        settings.read_text().replace("[broker]\n", '[broker]\nhost = "127.0.0.2"\n')
    )
    with started(st):
        assert st.json("tomato", "status")["success"]
        for host in ("127.0.0.2", "127.0.0.1"):  # the lab's address, and the services'
            with socket.create_connection((host, st.port), timeout=5):
                pass
