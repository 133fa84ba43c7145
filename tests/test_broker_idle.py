"""Idle connections (a socket that never sends its CONNECT) do not lock logins out.

Each connection holds one of the broker's descriptors until its CONNECT comes or
CONNECT_WAIT (10 s) is over. Under the usual soft limit of open files (1,024), a
thousand idle connections from anyone who reaches the port left none for a login:
asyncio's accept() failed with EMFILE, and a login waited until idle ones were closed
(measured, 3,000 held open: up to 11 s). The broker now raises its soft limit to the
hard one. Here its process starts with a soft limit of 256 and 300 idle connections.

(The "more than 30 s" once measured with 1,000 was the measuring script's own: it held
the idle sockets in the process that ran paho's ``loop_start``, whose select() cannot
wait on a descriptor numbered over 1,023.)
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import _wait_listening
from tests.stack import free_port
from tests.test_broker_keepalive import RUN_BROKER

pytestmark = pytest.mark.timeout(60)


#: the broker process's soft limit of open files, and the idle connections opened: more
#: than it can accept (with its own ~20 descriptors), fewer than it can accept plus its
#: listen backlog (100), so that every connect() of the test itself returns at once
SOFT = 256
IDLE = 300


def _connect_packet(client_id: bytes) -> bytes:
    body = b"\x00\x04MQTT\x04\x02" + struct.pack("!H", 60)
    body += struct.pack("!H", len(client_id)) + client_id
    return bytes([0x10, len(body)]) + body


def _connack(s: socket.socket, within: float) -> bool:
    s.settimeout(within)
    try:
        return s.recv(4)[:1] == b"\x20"
    except OSError:
        return False


def test_idle_connections_beyond_the_soft_fd_limit_do_not_hold_up_a_login(
    tmp_path: Path,
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4 * IDLE:
        pytest.skip(f"a hard limit of {hard} open files leaves the broker nothing to raise")
    if soft != resource.RLIM_INFINITY and soft < IDLE + 100:
        pytest.skip(f"this process may open only {soft} files")
    port = int(os.environ.get("IDLE_TEST_PORT", "0")) or free_port()
    log = tmp_path / "broker.log"
    cfg = json.dumps({"host": "127.0.0.1", "port": port})
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", RUN_BROKER, cfg],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, hard)),
        )
    idle: list[socket.socket] = []
    try:
        asyncio.run(_wait_listening(port, 20.0, "the broker"))
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(IDLE)]

        # a login now: answered at once, not when idle connections have been closed
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
            s.sendall(_connect_packet(b"ada"))
            assert _connack(s, 15.0)
        took = time.monotonic() - t0
        assert took < 2.0, f"a login took {took:.1f} s with {IDLE} idle connections"

        # a slow but legitimate client: its CONNECT 2.5 s after its connect still counts
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            time.sleep(2.5)
            s.sendall(_connect_packet(b"slow"))
            assert _connack(s, 5.0), "a CONNECT sent 2.5 s after the connect was refused"

        # (that an idle connection is closed after CONNECT_WAIT: test_broker_keepalive.py)
        assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
    finally:
        for s in idle:
            s.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
