"""Issue 11: the dashboard at lab scale, timed in the browser.

``python -m bench.dashboard [--components 100] [--jobs 1000] [--rate 1000] [--seconds 20]``

A simulated lab publishes on the topic contract of an in-process amqtt broker exactly
what a stack would: the scheduler's, the recorder's and 10 nodes' presence, 100
components (meta, status, a latest value every 0.5 s each), one pipeline per component,
1,000 jobs in the queue's history, and one job running on component 0 at 1 kHz (batches
of 100 points every 0.1 s, as a node sends them), with a minute of its data sent before
the page opens. ``tomato dashboard`` runs in its own process, as in a lab; Debian's
Chromium (headless, Playwright) opens it. All times are taken by the page itself
(``window.__dash``):

- first paint: from navigation start to the first frame on screen with the full state
  (``performance.now()`` one animation frame after the state was rendered), per reload;
- job page: from the click to the first frame with the job's plots drawn;
- point-to-screen: from the publish of a batch (wall clock of this process) to the first
  frame on which the plot reached that batch's last point (``Date.now()`` in the page,
  same machine, so the same clock); likewise a latest value in the overview;
- DOM size: elements on the overview and the job page.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tomato_mqtt.config.url import BrokerURL
from tomato_mqtt.driver.spec import AttrSpec
from tomato_mqtt.model.jobs import Job
from tomato_mqtt.transport.client import AsyncClient
from tomato_mqtt.wire.messages import (
    ComponentMeta,
    ComponentStatus,
    DataBatch,
    JobProgress,
    JobStatus,
    LastPoint,
    NodeStatus,
    PipelineStatus,
    RecorderStatus,
    SchedulerStatus,
    encode,
)
from tomato_mqtt.wire.topics import Topics

INSTANCE = "benchdash"
RUNNING_JOB_STATUS = "r"


def _cmp(i: int) -> str:
    return f"dev-{i // 10}:ch{i % 10}"


class Lab:
    """Publishes what a stack of ``n`` components and ``jobs`` jobs would."""

    def __init__(self, client: AsyncClient, n: int, jobs: int, rate: float) -> None:
        self.c, self.n, self.njobs, self.rate = client, n, jobs, rate
        self.t = Topics(INSTANCE)
        self.job = jobs  # the running one: the newest
        self.seq = 0
        self.uts = time.time() - 60.0  # a minute of history before the page opens
        self.published: list[tuple[float, float]] = []  # (wall time, last uts of batch)
        self.values: list[tuple[float, str]] = []

    async def pub(self, topic: str, msg: Any, retain: bool = True) -> None:
        await self.c.publish(topic, encode(msg), retain=retain, qos=0, wait=False)

    async def retained_state(self) -> None:
        now = time.time()
        t = self.t
        await self.pub(
            t.scheduler_status(),
            SchedulerStatus(state="online", instance=INSTANCE, heartbeat=now, version="bench"),
        )
        progress = {str(j): JobProgress(points={"c": 1000}) for j in range(1, self.njobs + 1)}
        await self.pub(
            t.recorder_status(),
            RecorderStatus(state="online", heartbeat=now, version="bench", jobs=progress),
        )
        for node in range(10):
            cmps = [_cmp(i) for i in range(self.n) if i % 10 == node]
            await self.pub(
                t.node_status(f"pc{node}"),
                NodeStatus(state="online", node=f"pc{node}", heartbeat=now, components=cmps),
            )
        attrs = {
            "setpoint": AttrSpec(type="quantity", units="K", rw=True, minimum=0, maximum=500),
            "mode": AttrSpec(type="str", rw=True, options=["a", "b", "c"]),
        }
        for i in range(self.n):
            name = _cmp(i)
            await self.pub(
                t.component_meta(name),
                ComponentMeta(
                    name=name,
                    device=f"dev-{i // 10}",
                    driver="bench",
                    address="sim",
                    channel=f"ch{i % 10}",
                    node=f"pc{i % 10}",
                    registered=True,
                    attrs=attrs,
                    capabilities=["count", "random"],
                ),
            )
            running = i == 0
            await self.pub(
                t.component_status(name),
                ComponentStatus(
                    name=name,
                    node=f"pc{i % 10}",
                    state="running" if running else "idle",
                    time=now,
                    job=self.job if running else None,
                    task=0 if running else None,
                ),
            )
            await self.pub(
                t.pipeline_status(f"pip-{i}"),
                PipelineStatus(
                    name=f"pip-{i}",
                    sample="s" if running else None,
                    ready=True,
                    job=self.job if running else None,
                    roles={"main": name},
                ),
            )
        method = [
            {
                "component_tag": "main",
                "technique_name": "count",
                "max_duration": 3600.0,
                "sampling_interval": 1 / self.rate,
            }
        ]
        for j in range(1, self.njobs + 1):
            running = j == self.job
            job = Job(
                id=j,
                jobname=f"job-{j}",
                payload={"version": "2.2", "sample": {"name": "s"}, "method": method},
                status=RUNNING_JOB_STATUS if running else "c",
                submitted_at="2026-11-30T10:00:00+00:00",
                launched_at="2026-11-30T10:00:01+00:00",
                completed_at=None if running else "2026-11-30T10:05:00+00:00",
                pipeline="pip-0" if running else f"pip-{j % self.n}",
                owner="ada",
            )
            await self.pub(t.job_status(j), JobStatus(job=job))

    async def batch(self, npoints: int) -> None:
        dt = 1.0 / self.rate
        uts = [self.uts + k * dt for k in range(npoints)]
        self.uts += npoints * dt
        b = DataBatch(
            component=_cmp(0),
            job=self.job,
            task=0,
            epoch=1,
            stream="bench",
            seq=self.seq,
            uts=uts,
            vars={"T": [300 + 5 * ((u * 0.5) % 1.0) for u in uts], "n": list(range(npoints))},
            units={"T": "K"},
        )
        self.seq += 1
        await self.c.publish(self.t.component_data(_cmp(0)), encode(b), qos=0, timeout=5)
        self.published.append((time.time(), uts[-1]))

    async def history(self, seconds: float) -> None:
        for _ in range(int(seconds * self.rate / 1000)):
            await self.batch(1000)

    async def stream(self, stop: asyncio.Event) -> None:
        """1 kHz as a node sends it (a batch every 0.1 s), latest values every 0.5 s."""
        per = max(1, int(self.rate * 0.1))
        tick = 0
        while not stop.is_set():
            self.uts = max(self.uts, time.time() - per / self.rate)
            await self.batch(per)
            if tick % 5 == 0:
                now = time.time()
                for i in range(self.n):
                    last = LastPoint(component=_cmp(i), uts=now, values={"T": 300.0 + i})
                    await self.pub(self.t.component_last(_cmp(i)), last)
                self.values.append((now, "all"))
            tick += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)


def _stats(xs: list[float]) -> str:
    if not xs:
        return "—"
    xs = sorted(xs)
    p95 = xs[min(len(xs) - 1, round(0.95 * (len(xs) - 1)))]
    return f"{statistics.median(xs):.0f} / {p95:.0f} / {xs[-1]:.0f}"


def latencies(log: list[dict[str, Any]], kind: str, sent: list[tuple[float, float]]) -> list[float]:
    """For each (publish time, value), ms until the first frame that showed it."""
    shown = sorted((e["at"], e["last"]) for e in log if e["kind"] == kind and e["last"] is not None)
    out = []
    for wall, last in sent:
        first = next((at for at, v in shown if v >= last - 1e-9 and at >= wall * 1000 - 5), None)
        if first is not None:
            out.append(first - wall * 1000)
    return out


def breakdown(
    log: list[dict[str, Any]], sent: list[tuple[float, float]]
) -> tuple[list[float], list[float], list[float]]:
    """Where a plotted point's time goes: publish → flush (server), flush → the page's
    receipt (WebSocket), receipt → on screen (drawing). Each ms, per published batch."""
    recv = sorted((e["at"], e["last"], e["srv"]) for e in log if e["kind"] == "recv" and e["last"])
    shown = sorted((e["at"], e["last"]) for e in log if e["kind"] == "plot" and e["last"])
    a, b, c = [], [], []
    for wall, last in sent:
        r = next((x for x in recv if x[1] >= last - 1e-9), None)
        s = next((at for at, v in shown if v >= last - 1e-9), None)
        if r is None or s is None:
            continue
        a.append(r[2] * 1000 - wall * 1000)
        b.append(r[0] - r[2] * 1000)
        c.append(s - r[0])
    return a, b, c


def value_latencies(log: list[dict[str, Any]], rounds: list[float]) -> list[float]:
    """For each round of latest values (all components at once, ``uts`` = publish time),
    ms until the *last* of its cells was on screen."""
    first: dict[tuple[float, str], float] = {}
    for e in log:
        if e["kind"] == "value":
            key = (e["last"], e["id"])
            first[key] = min(first.get(key, e["at"]), e["at"])
    out = []
    for w in rounds:
        ats = [at for (uts, _), at in first.items() if abs(uts - w) < 1e-6]
        if ats:
            out.append(max(ats) - w * 1000)
    return out


@contextlib.asynccontextmanager
async def dashboard_process(port: int, root: Path) -> AsyncIterator[str]:
    """``tomato dashboard`` in its own process, as it runs in a lab; yields its address."""
    from bench.harness import free_port

    web = free_port()
    app = root / "app"
    app.mkdir(parents=True)
    (app / "settings.toml").write_text(
        f'[mqtt]\ninstance = "{INSTANCE}"\nport = {port}\n'
        f"[broker]\nembedded = false\n[dashboard]\nport = {web}\n"
    )
    exe = Path(sys.executable).parent / "tomato"
    with (root / "dashboard.out").open("wb") as out:
        proc = subprocess.Popen(
            [str(exe), "dashboard", "-A", str(app), "-L", str(root / "log")],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    address = f"http://127.0.0.1:{web}/"
    try:
        for _ in range(300):
            try:
                await asyncio.to_thread(urllib.request.urlopen, address, None, 2)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError((root / "dashboard.out").read_text()) from None
                await asyncio.sleep(0.1)
        yield address
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def run(args: argparse.Namespace) -> int:
    from tomato_mqtt_broker import BrokerConfig, EmbeddedBroker

    from bench.harness import free_port
    from tests.browser import chromium_page

    port = free_port()
    broker = EmbeddedBroker(BrokerConfig(host="127.0.0.1", port=port))
    await broker.start()
    url = f"mqtt://127.0.0.1:{port}"
    stop = asyncio.Event()
    cmp = Topics(INSTANCE).component_data(_cmp(0)).split("/")[-2]
    try:
        with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp:
            async with (
                AsyncClient(BrokerURL.parse(url)) as c,
                dashboard_process(port, Path(tmp)) as address,
                chromium_page() as (_, page),
            ):
                lab = Lab(c, args.components, args.jobs, args.rate)
                await page.goto(address)
                t0 = time.perf_counter()
                await lab.retained_state()
                await lab.history(60.0)
                await page.wait_for_function(
                    f"() => Object.keys(window.S.jobs).length >= {args.jobs}", timeout=60_000
                )
                setup = time.perf_counter() - t0
                streamer = asyncio.ensure_future(lab.stream(stop))
                paints = []
                for _ in range(args.reloads):
                    await page.goto(address, wait_until="commit")
                    await page.wait_for_function("() => window.__dash.firstPaint !== null")
                    paints.append(await page.evaluate("window.__dash.firstPaint"))
                dom_overview = await page.evaluate("document.getElementsByTagName('*').length")
                lab.values.clear()
                await asyncio.sleep(args.seconds / 2)
                log = await page.evaluate("window.__dash.log")
                value_lat = value_latencies(log, [w for w, _ in lab.values[:-2]])

                t_click = await page.evaluate("Date.now()")
                await page.evaluate(f"location.hash = '#/job/{lab.job}'")
                await page.wait_for_function(
                    f"() => window.__dash.drawn[{cmp!r}] !== undefined", timeout=30_000
                )
                job_paint = await page.evaluate(f"window.__dash.drawn[{cmp!r}].at") - t_click
                lab.published.clear()
                await asyncio.sleep(args.seconds / 2)
                log = await page.evaluate("window.__dash.log")
                plot_lat = latencies(log, "plot", lab.published[:-3])
                hops = breakdown(log, lab.published[:-3])
                dom_job = await page.evaluate("document.getElementsByTagName('*').length")
                buckets = await page.evaluate(f"J.series[{cmp!r}].t.length")
                points = await page.evaluate(f"J.series[{cmp!r}].points")
                stop.set()
                await streamer
    finally:
        await broker.stop()

    rows = [
        (
            "lab",
            f"{args.components} components, {args.jobs} jobs, 1 job at "
            f"{args.rate:g} Hz ({points} points, {buckets} buckets on screen)",
            "",
        ),
        ("state published and absorbed by the dashboard", f"{setup:.1f} s", ""),
        ("first paint of the full state (ms, per reload)", _stats(paints), "≤ 1000"),
        ("job page: click → plots drawn (ms)", f"{job_paint:.0f}", ""),
        ("point-to-screen, plot at 1 kHz (ms)", _stats(plot_lat), "≤ 500"),
        ("point-to-screen, latest value in the overview (ms)", _stats(value_lat), "≤ 500"),
        ("… of the plot: publish → dashboard flushed it (ms)", _stats(hops[0]), ""),
        ("… flushed → page received it (ms)", _stats(hops[1]), ""),
        ("… received → on screen (ms)", _stats(hops[2]), ""),
        ("DOM elements: overview / job page", f"{dom_overview} / {dom_job}", "bounded"),
        (
            "machine: load average (1 min) / CPUs",
            f"{os.getloadavg()[0]:.1f} / {os.cpu_count()}",
            "",
        ),
    ]
    print("| figure | median / p95 / max | target |")
    print("|---|---|---|")
    for name, val, target in rows:
        print(f"| {name} | {val} | {target} |")
    print(f"\n{len(plot_lat)} plot batches, {len(value_lat)} value rounds measured")
    ok = paints and max(paints) <= 1000 and plot_lat and max(plot_lat) <= 500
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.dashboard", description=__doc__)
    p.add_argument("--components", type=int, default=100)
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--rate", type=float, default=1000.0, help="Hz of the running job")
    p.add_argument("--seconds", type=float, default=20.0, help="measuring time")
    p.add_argument("--reloads", type=int, default=5)
    return asyncio.run(run(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
