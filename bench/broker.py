"""Issue 2: the project's MQTT client against raw paho, on the embedded broker and Mosquitto.

``python -m bench.broker [--quick]`` prints, for each broker (amqtt as the project embeds
it, through ``tomato_mqtt_broker``; Mosquitto if installed), in the same run:

- messages/s, publisher process → broker → subscriber process, 100 B, QoS 1 and 0:
  raw paho (network loop in a thread, TCP_NODELAY) against the project's
  :class:`tomato_mqtt.transport.client.AsyncClient` (asyncio-driven paho);
- request/reply round trip p50/p99, one request at a time: raw paho (echo on a topic)
  against the project's :class:`~tomato_mqtt.transport.rpc.Requester` /
  :class:`~tomato_mqtt.transport.rpc.Responder` (correlation id, reply topic, de-duplication).

Every pair runs alternating (raw, project, raw, project, ...), each client pair in two
fresh processes on one fresh broker per broker kind; the table shows medians over the
repetitions and the ratio project : raw. Brokers bind to 127.0.0.1 on a free port and
are stopped by their PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import harness, rawmqtt

ROOT = Path(__file__).resolve().parents[1]
INSTANCE = "benchbroker"


# ------------------------------------------------------------------------ workers


def _raw_client(cid: str) -> Any:
    return rawmqtt._client(cid)


def raw_pub(port: int, n: int, qos: int, size: int) -> None:
    rawmqtt._pub(port, n, qos, _payload_file(size))


def raw_sub(port: int, n: int, qos: int, timeout: float) -> None:
    rawmqtt._sub(port, n, qos, timeout)


def _payload_file(size: int) -> str:
    f = Path(tempfile.gettempdir()) / f"bench-payload-{size}"
    if not f.exists():
        f.write_bytes(b"x" * size)
    return str(f)


async def proj_pub(port: int, n: int, qos: int, size: int) -> None:
    from tomato_mqtt.transport.client import AsyncClient

    payload = b"x" * size
    async with AsyncClient(f"mqtt://127.0.0.1:{port}", client_id=f"bench-ppub-{port}") as c:
        print(time.time(), flush=True)
        for i in range(n - 1):
            await c.publish("bench/raw", payload, qos=qos, wait=False)
            if i % 50 == 0:
                await asyncio.sleep(0)  # let the loop write, as a service's loop would
        await c.publish("bench/raw", payload, qos=qos, wait=True, timeout=60)
        await asyncio.sleep(0.2)


async def proj_sub(port: int, n: int, qos: int, timeout: float) -> None:
    from tomato_mqtt.transport.client import AsyncClient, Message

    state = {"received": 0, "t_last": 0.0}
    done = asyncio.Event()

    def on_msg(m: Message) -> None:
        state["received"] += 1
        state["t_last"] = time.time()
        if state["received"] >= n:
            done.set()

    async with AsyncClient(f"mqtt://127.0.0.1:{port}", client_id=f"bench-psub-{port}") as c:
        await c.subscribe("bench/raw", qos=qos, handler=on_msg)
        print("ready", flush=True)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(done.wait(), timeout)
        print(json.dumps(state), flush=True)


def raw_rep(port: int) -> None:
    c = _raw_client(f"bench-rrep-{port}")
    subscribed = threading.Event()

    def on_message(client: Any, ud: Any, msg: Any) -> None:
        client.publish("bench/rep", msg.payload, qos=1)

    c.on_message = on_message
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.subscribe("bench/req", 1)
    subscribed.wait(10)
    print("ready", flush=True)
    sys.stdin.read()  # until the bench closes our stdin
    c.disconnect()
    c.loop_stop()


def raw_req(port: int, n: int) -> None:
    c = _raw_client(f"bench-rreq-{port}")
    got = threading.Event()
    subscribed = threading.Event()
    c.on_message = lambda *a: got.set()
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.subscribe("bench/rep", 1)
    subscribed.wait(10)
    rtts = []
    for i in range(n):
        got.clear()
        t0 = time.perf_counter()
        c.publish("bench/req", json.dumps({"id": i}), qos=1)
        if not got.wait(5):
            break
        rtts.append(time.perf_counter() - t0)
    print(json.dumps(rtts), flush=True)
    c.disconnect()
    c.loop_stop()


async def proj_rep(port: int) -> None:
    from tomato_mqtt.transport.client import AsyncClient, Message
    from tomato_mqtt.transport.rpc import Responder, Result
    from tomato_mqtt.wire.topics import Topics

    topics = Topics(INSTANCE)

    async def echo(args: Any) -> Result:
        return Result("ok", dict(args))

    async with AsyncClient(f"mqtt://127.0.0.1:{port}", client_id=f"bench-prep-{port}") as c:
        resp = Responder(c, topics, {"echo": echo}, name="bench")
        tasks: set[asyncio.Task[None]] = set()

        def on_req(m: Message) -> None:
            t = asyncio.ensure_future(resp.handle(m, "echo"))
            tasks.add(t)
            t.add_done_callback(tasks.discard)

        await c.subscribe(topics.scheduler_cmd("echo"), handler=on_req)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def proj_req(port: int, n: int) -> None:
    from tomato_mqtt.transport.client import AsyncClient
    from tomato_mqtt.transport.rpc import Requester
    from tomato_mqtt.wire.topics import Topics

    topics = Topics(INSTANCE)
    async with AsyncClient(f"mqtt://127.0.0.1:{port}", client_id=f"bench-preq-{port}") as c:
        req = Requester(c, topics)
        await req.start()
        rtts = []
        for i in range(n):
            t0 = time.perf_counter()
            rep = await req.request(topics.scheduler_cmd("echo"), {"i": i})
            if not rep.success:
                break
            rtts.append(time.perf_counter() - t0)
        print(json.dumps(rtts), flush=True)


# ---------------------------------------------------------------------- measuring


def _me(*args: object) -> list[str]:
    return [sys.executable, "-m", "bench.broker", "worker", *map(str, args)]


def throughput(client: str, port: int, n: int, qos: int, size: int = 100) -> float:
    """msgs/s, subscriber's last receipt - publisher's first publish, on one clock."""
    sub = harness.spawn(_me(f"{client}_sub", port, n, qos, 30), stdout=subprocess.PIPE, cwd=ROOT)
    assert sub.stdout is not None
    if sub.stdout.readline().strip() != b"ready":
        harness.collect(sub, 0)
        raise RuntimeError(f"{client} subscriber did not start")
    pub = harness.spawn(_me(f"{client}_pub", port, n, qos, size), stdout=subprocess.PIPE, cwd=ROOT)
    assert pub.stdout is not None
    t0 = float(pub.stdout.readline())
    res = json.loads(sub.stdout.readline() or b"{}")
    harness.collect(pub, 60)
    harness.collect(sub, 5)
    got = int(res.get("received", 0))
    if got < n:
        print(f"  {client} QoS {qos}: only {got}/{n} messages arrived", file=sys.stderr)
    return got / (float(res["t_last"]) - t0) if got else 0.0


def round_trips(client: str, port: int, n: int) -> list[float]:
    rep = harness.spawn(
        _me(f"{client}_rep", port), stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT
    )
    assert rep.stdout is not None and rep.stdin is not None
    try:
        if rep.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"{client} responder did not start")
        call = harness.run(_me(f"{client}_req", port, n), timeout=120).check()
        return [float(x) for x in json.loads(call.out.strip().splitlines()[-1])]
    finally:
        rep.stdin.close()
        harness.collect(rep, 10)


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def measure(reps: int, n_msgs: int, n_rtt: int, kinds: list[str]) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for kind in kinds:
        with tempfile.TemporaryDirectory(prefix="bench-broker-") as d:
            port = harness.free_port()
            broker = rawmqtt.start_broker(kind, port, Path(d))
            try:
                for rep in range(reps):
                    for client in ("raw", "proj"):
                        print(f"  {kind} rep {rep + 1}/{reps}: {client}", file=sys.stderr)
                        for qos in (1, 0):
                            rate = throughput(client, port, n_msgs, qos)
                            res.setdefault((kind, f"qos{qos}", client), []).append(rate)
                        rtt = round_trips(client, port, n_rtt)
                        res.setdefault((kind, "p50", client), []).append(pct(rtt, 50) * 1e3)
                        res.setdefault((kind, "p99", client), []).append(pct(rtt, 99) * 1e3)
            finally:
                rawmqtt.stop_broker(broker)
    return res


ROWS = [
    ("qos1", "msgs/s, 100 B, QoS 1", "msg/s", "{:.0f}", "≥ 0.83x (≤ 20 % added cost)"),
    ("qos0", "msgs/s, 100 B, QoS 0", "msg/s", "{:.0f}", "≥ 0.83x"),
    ("p50", "request/reply p50", "ms", "{:.2f}", "≤ 2 ms (amqtt)"),
    ("p99", "request/reply p99", "ms", "{:.2f}", ""),
]


def table(res: dict[str, Any], kinds: list[str]) -> str:
    lines = [
        "| broker | figure | unit | raw paho | tomato-mqtt client | ratio client : raw | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in kinds:
        for key, label, unit, fmt, target in ROWS:
            raw, proj = res.get((kind, key, "raw"), []), res.get((kind, key, "proj"), [])
            if not raw or not proj:
                continue
            mr, mp = statistics.median(raw), statistics.median(proj)
            ratio = f"{mp / mr:.3g}x" if mr else "—"
            lines.append(
                f"| {kind} | {label} | {unit} | {_cell(raw, fmt)} | {_cell(proj, fmt)} | "
                f"{ratio} | {target if kind == 'amqtt' or 'ms' not in target else ''} |"
            )
    return "\n".join(lines)


def _cell(v: list[float], fmt: str) -> str:
    s = fmt.format(statistics.median(v))
    if len(v) > 1:
        s += f" ({fmt.format(min(v))}..{fmt.format(max(v))})"
    return s


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "worker":
        return _worker(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m bench.broker", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="1 repetition, fewer messages")
    ap.add_argument("--reps", type=int, default=None)
    args = ap.parse_args(argv)
    reps = args.reps or (1 if args.quick else 3)
    n_msgs, n_rtt = (3000, 200) if args.quick else (10000, 500)
    kinds = ["amqtt"]
    if Path(rawmqtt.MOSQUITTO).exists():
        kinds.append("mosquitto")
    else:
        print("mosquitto not installed: amqtt only", file=sys.stderr)
    t0 = time.monotonic()
    try:
        res = measure(reps, n_msgs, n_rtt, kinds)
    finally:
        harness.stop_descendants(5)
    print(
        f"issue 2 — MQTT client cost, {reps} repetition(s), median (min..max); "
        f"{n_msgs} messages per rate, {n_rtt} round trips per latency; "
        f"{time.monotonic() - t0:.0f} s\n"
    )
    print(table(res, kinds))
    return 0


def _worker(a: list[str]) -> int:
    role, rest = a[0], [float(x) if "." in x else int(x) for x in a[1:]]
    fn = {
        "raw_pub": raw_pub,
        "raw_sub": raw_sub,
        "raw_rep": raw_rep,
        "raw_req": raw_req,
        "proj_pub": proj_pub,
        "proj_sub": proj_sub,
        "proj_rep": proj_rep,
        "proj_req": proj_req,
    }[role]
    out = fn(*rest)  # type: ignore[operator]
    if asyncio.iscoroutine(out):
        asyncio.run(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
