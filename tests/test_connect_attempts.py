"""Connecting to a broker that takes the TCP connection and never answers (frozen).

Found by an outside check: a node started against a frozen broker (SIGSTOPped Mosquitto,
a server that accepts and says nothing) waited for the CONNACK without end and without
a word: the per-attempt wait was the whole connect timeout (a year for a node). Each
attempt is now bounded (``ATTEMPT_MAX``), so the failure is told (``on_retry``: the
services log it) and the attempt made again.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from tests.stack import BIN, free_port
from tomato_mqtt.transport import client as client_mod
from tomato_mqtt.transport.client import AsyncClient, MqttError


async def test_a_broker_that_never_answers_is_told_and_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client_mod, "ATTEMPT_MAX", 0.5, raising=False)
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.append(w)  # takes the connection and the CONNECT, answers nothing

    port = free_port()
    server = await asyncio.start_server(silent, "127.0.0.1", port)
    failures: list[Exception] = []
    c = AsyncClient(f"mqtt://127.0.0.1:{port}", client_id="frozen-probe", reconnect=False)
    try:
        with pytest.raises(MqttError):
            await c.connect(timeout=3.0, retry=True, on_retry=failures.append)
        # told at each attempt and tried again (before: one attempt, silent, 3 s long)
        assert len(failures) >= 3, failures
        assert len(accepted) >= 3, len(accepted)
    finally:
        with contextlib.suppress(Exception):
            await c.disconnect()
        for w in accepted:
            w.close()
        server.close()
        await server.wait_closed()


def test_a_web_server_on_the_broker_s_port_is_named_as_such(tmp_path: Path) -> None:
    """A CLI pointed at a port where a web server answers (the dashboard's web_port taken
    for the broker's): it said "answered CONNECT with packet 3 — is tomato-mqtt
    running?"; now what answered, and what to check."""
    page = b"HTTP/1.0 400 Bad request\r\n\r\n<!DOCTYPE HTML><html>no MQTT here</html>"

    def serve(listener: socket.socket) -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(page)

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        t = threading.Thread(target=serve, args=(listener,), daemon=True)
        t.start()
        res = subprocess.run(
            [str(BIN / "tomato"), "status", "--broker", f"mqtt://127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        t.join(10)
    assert res.returncode == 1, res
    assert f"something at 127.0.0.1:{port} answered, but not as an MQTT broker" in res.stderr
    assert "b'HTTP/1.0 400 Bad request" in res.stderr, res.stderr
    assert "is tomato-mqtt running" not in res.stderr, res.stderr
