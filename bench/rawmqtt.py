"""The physical limit: raw paho publisher → broker → raw paho subscriber, messages/s.

Publisher and subscriber are separate processes (``python -m bench.rawmqtt pub|sub``),
each a paho client with its network loop in a thread (``loop_start``) and TCP_NODELAY
set in ``on_socket_open``, as the project's own client does; QoS 1 uses the project's
in-flight window (1000). The brokers are the one the project embeds (amqtt, through
``tomato_mqtt_broker``) and Mosquitto, both on 127.0.0.1 and a free port, started and
stopped by PID here.

The rate is messages received / (last receipt - first publish), on one clock.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import harness

__all__ = ["MOSQUITTO", "batch_payload", "measure"]

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def batch_payload(points: int) -> bytes:
    """A data batch shaped like a node's (uts + the example counter's five variables)."""
    t0 = time.time()
    doc = {
        "schema": 1,
        "job": 1,
        "task": 0,
        "epoch": 1,
        "seq": 1,
        "uts": [t0 + i * 1e-3 for i in range(points)],
        "vars": {
            "val": list(range(points)),
            "max": [points] * points,
            "min": [0] * points,
            "param": [1.0] * points,
            "choice": ["green"] * points,
        },
        "units": {"val": "", "param": ""},
    }
    return json.dumps(doc).encode()


# ------------------------------------------------------------------------- brokers


def _wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"no broker on 127.0.0.1:{port} after {timeout} s")


def start_broker(kind: str, port: int, tmp: Path) -> subprocess.Popen[bytes]:
    if kind == "amqtt":
        code = (
            "from tomato_mqtt_broker import BrokerConfig, run_broker;"
            f"run_broker(BrokerConfig(host='127.0.0.1', port={port}))"
        )
        cmd = [sys.executable, "-c", code]
    elif kind == "mosquitto":
        conf = tmp / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "set_tcp_nodelay true\n"
        )
        cmd = [MOSQUITTO, "-c", str(conf)]
    else:
        raise ValueError(kind)
    log = (tmp / f"{kind}.log").open("wb")
    proc = harness.spawn(cmd, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        _wait_port(port)
    except RuntimeError:
        harness.collect(proc, 0)
        raise
    return proc


def stop_broker(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    harness.collect(proc, 10)


# ---------------------------------------------------------------------- measurement


def measure(
    kind: str, n: int, payload: bytes, qos: int = 1, timeout: float = 20.0
) -> tuple[float, int]:
    """Messages/s through a fresh broker of ``kind``; returns (rate, received)."""
    with tempfile.TemporaryDirectory(prefix="bench-raw-") as d:
        tmp = Path(d)
        port = harness.free_port()
        broker = start_broker(kind, port, tmp)
        try:
            (tmp / "payload").write_bytes(payload)
            me = [sys.executable, "-m", "bench.rawmqtt"]
            args = [str(port), str(n), str(qos)]
            sub = harness.spawn(
                [*me, "sub", *args, str(timeout)], stdout=subprocess.PIPE, cwd=_root()
            )
            assert sub.stdout is not None
            if sub.stdout.readline().strip() != b"ready":
                raise RuntimeError("raw subscriber did not start")
            pub = harness.spawn(
                [*me, "pub", *args, str(tmp / "payload")], stdout=subprocess.PIPE, cwd=_root()
            )
            assert pub.stdout is not None
            t0 = float(pub.stdout.readline())
            res = json.loads(sub.stdout.readline() or b"{}")
            harness.collect(pub, timeout)
            harness.collect(sub, 5)
        finally:
            stop_broker(broker)
    got = int(res.get("received", 0))
    if got == 0:
        return 0.0, 0
    return got / (float(res["t_last"]) - t0), got


def _root() -> Path:
    return Path(__file__).resolve().parents[1]


def _client(client_id: str) -> object:
    import paho.mqtt.client as paho

    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)

    def nodelay(client: object, ud: object, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    c.on_socket_open = nodelay
    return c


def _sub(port: int, n: int, qos: int, timeout: float) -> None:
    c = _client(f"bench-sub-{port}")
    done = threading.Event()
    subscribed = threading.Event()
    state = {"received": 0, "t_last": 0.0}

    def on_message(client: object, ud: object, msg: object) -> None:
        state["received"] += 1
        state["t_last"] = time.time()
        if state["received"] >= n:
            done.set()

    c.on_message = on_message  # type: ignore[attr-defined]
    c.on_subscribe = lambda *a: subscribed.set()  # type: ignore[attr-defined]
    c.connect("127.0.0.1", port)  # type: ignore[attr-defined]
    c.loop_start()  # type: ignore[attr-defined]
    c.subscribe("bench/raw", qos)  # type: ignore[attr-defined]
    subscribed.wait(10)
    print("ready", flush=True)
    done.wait(timeout)
    print(json.dumps(state), flush=True)
    c.disconnect()  # type: ignore[attr-defined]
    c.loop_stop()  # type: ignore[attr-defined]


def _pub(port: int, n: int, qos: int, payload_file: str) -> None:
    payload = Path(payload_file).read_bytes()
    c = _client(f"bench-pub-{port}")
    connected = threading.Event()
    c.on_connect = lambda *a: connected.set()  # type: ignore[attr-defined]
    c.connect("127.0.0.1", port)  # type: ignore[attr-defined]
    c.loop_start()  # type: ignore[attr-defined]
    connected.wait(10)
    print(time.time(), flush=True)
    info = None
    for _ in range(n):
        info = c.publish("bench/raw", payload, qos=qos)  # type: ignore[attr-defined]
    if info is not None:
        info.wait_for_publish(60)
    time.sleep(0.2)  # let QoS 0 leave the socket buffer before closing it
    c.disconnect()  # type: ignore[attr-defined]
    c.loop_stop()  # type: ignore[attr-defined]


if __name__ == "__main__":
    role, port_s, n_s, qos_s, last = sys.argv[1:6]
    if role == "sub":
        _sub(int(port_s), int(n_s), int(qos_s), float(last))
    else:
        _pub(int(port_s), int(n_s), int(qos_s), last)
