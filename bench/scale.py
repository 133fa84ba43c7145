"""Issue 15: throughput at scale — components x rate, one-point and bulk drivers.

``python -m bench.scale [--quick] [--duration S] [--reps N] [--only KIND]``

For each driver kind — *one-point* (``example_counter``: the runner calls ``do_task``
once per point) and *bulk* (``daq_sim``: the driver hands over blocks of numpy columns
every 0.1 s) — and each component count (1, 10, 100), one stack is started with
``tomato start`` (embedded amqtt broker, scheduler, recorder, node: separate processes)
and one pipeline whose N roles are the N channels of one device. For each rate, one job
with one task per role (``max_duration`` = the duration, ``sampling_interval`` = 1/rate)
is submitted with ``ketchup submit``; the bench waits for the file (``stat`` only) and
reads it. Per row it prints:

- offered and sustained points/s (points in the file / (task duration + file lag)),
  and points in the file in % of N · rate · duration;
- the file's lag: file written - end of the tasks (s): large means the recorder or the
  node did not keep up and caught up afterwards;
- CPU-µs per point of each service (node, broker, recorder, scheduler) and their sum,
  from /proc of the stack's processes between submit and file (the bench's own CLI
  calls are not counted);
- the knee: per kind and N, the highest rate with 100 % of the points in the file and
  a lag at most 2 s over the lag at the lowest rate (a job's fixed cost at N).

The limit, in the same run: raw paho publisher → amqtt (the project's embedded broker,
its own process) → raw paho subscriber, QoS 1, with batches of the same shape as the
node's at that rate (points per message, variables, JSON), points/s and CPU-µs per
point of all three processes.

One-point drivers are refused below the 1 ms floor (``[jobs] min_sampling_interval``),
so the one-point rows stop at 1 kHz.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from bench import harness, rawmqtt
from bench.mqtt_side import BIN

KINDS = {"one-point": "example_counter", "bulk": "daq_sim"}
TECHNIQUE = {"one-point": "count", "bulk": "acquire"}
BATCH_INTERVAL = 0.5  # s: the node's default flush interval ([node] batch_interval)


@dataclass
class Row:
    kind: str
    n: int
    rate: float
    duration: float
    expected: int = 0
    points: list[int] = field(default_factory=list)
    lag: list[float] = field(default_factory=list)
    cpu: list[dict[str, float]] = field(default_factory=list)
    status: list[str] = field(default_factory=list)
    raw_pps: float | None = None
    raw_us: float | None = None
    note: str = ""

    def med(self, xs: list[float]) -> float:
        return statistics.median(xs) if xs else math.nan

    @property
    def in_file(self) -> float:
        return 100.0 * self.med([float(p) for p in self.points]) / max(1, self.expected)

    @property
    def pps(self) -> float:
        """Points per second into the file: points / (task duration + file lag)."""
        return self.med(
            [p / (self.duration + lag) for p, lag in zip(self.points, self.lag, strict=True)]
        )

    def us(self, role: str) -> float:
        vals = [
            c.get(role, 0.0) * 1e6 / max(1, p) for c, p in zip(self.cpu, self.points, strict=True)
        ]
        return self.med(vals)

    def us_total(self) -> float:
        vals = [
            sum(c.get(r, 0.0) for r in ROLES) * 1e6 / max(1, p)
            for c, p in zip(self.cpu, self.points, strict=True)
        ]
        return self.med(vals)

    def keeps_up(self, base_lag: float) -> bool:
        """Every point in the file, and the file no later than the lag of the lowest
        rate with as many components (a job's fixed cost: tasks of N components
        starting and ending, N groups written) plus 2 s."""
        return bool(self.points) and self.in_file >= 99.999 and self.med(self.lag) < base_lag + 2


ROLES = ("node", "broker", "recorder", "scheduler")


class Stack:
    def __init__(self, root: Path, kind: str, n: int) -> None:
        self.root = root
        self.kind = kind
        self.n = n
        self.port = harness.free_port()
        self.instance = f"scale{self.port}"
        self.dirs = ["-A", str(root), "-D", str(root), "-L", str(root)]

    def cli(self, tool: str, *args: str, timeout: float = 60) -> harness.Call:
        return harness.run(
            [str(BIN / tool), *args, "-p", str(self.port), "-A", str(self.root)],
            cwd=self.root,
            timeout=timeout,
        )

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        harness.run([str(BIN / "tomato"), "init", *self.dirs, "-p", str(self.port)]).check()
        (self.root / "settings.toml").write_text(
            f'datadir = "{self.root}"\nlogdir = "{self.root}"\n'
            f'[mqtt]\nport = {self.port}\ninstance = "{self.instance}"\n'
            "[broker]\nws_port = 0\n"
        )
        devices = {
            "devices": [
                {
                    "name": "dev",
                    "driver": KINDS[self.kind],
                    "address": "bench-addr",
                    "channels": [str(i) for i in range(1, self.n + 1)],
                    "pollrate": 1,
                }
            ],
            "pipelines": [
                {
                    "name": "pip-scale",
                    "devices": [
                        {"role": f"c{i}", "device": "dev", "channel": str(i)}
                        for i in range(1, self.n + 1)
                    ],
                }
            ],
        }
        (self.root / "devices.yml").write_text(yaml.safe_dump(devices))
        harness.run(
            [str(BIN / "tomato"), "start", *self.dirs, "-p", str(self.port)], timeout=120
        ).check()

    def stop(self) -> list[str]:
        harness.run(
            [str(BIN / "tomato"), "stop", *self.dirs, "-p", str(self.port), "--timeout", "30"],
            timeout=60,
        )
        return harness.stop_descendants(5)

    def run_job(
        self, rate: float, duration: float, idx: int
    ) -> tuple[int, float, dict[str, float], str]:
        """One job: (points in the file, lag s, CPU-s per role, final status)."""
        sample = f"s{idx}"
        self.cli("tomato", "pipeline", "load", "pip-scale", sample).check()
        self.cli("tomato", "pipeline", "ready", "pip-scale").check()
        payload = {
            "version": "2.2",
            "sample": {"identifier": sample},
            "user": {"identifier": "bench"},
            "method": [
                {
                    "component_role": f"c{i}",
                    "technique_name": TECHNIQUE[self.kind],
                    "max_duration": duration,
                    "sampling_interval": 1.0 / rate,
                }
                for i in range(1, self.n + 1)
            ],
            "settings": {"output": {"path": str(self.root), "prefix": f"scale.{idx}"}},
        }
        pfile = self.root / f"payload.{idx}.yml"
        pfile.write_text(yaml.safe_dump(payload))
        out = self.root / f"scale.{idx}.nc"
        window = harness.CpuWindow().start()
        sub = self.cli("ketchup", "submit", str(pfile), "--json").check()
        jobid = int(json.loads(sub.out)["data"]["id"])
        t_sub = time.time()
        harness.wait_for(out.exists, timeout=duration + 120, interval=0.05)
        t_file = time.time()
        window.stop()
        status = "?"
        deadline = time.monotonic() + 30
        while status not in ("c", "ce", "cd") and time.monotonic() < deadline:
            st = self.cli("ketchup", "status", str(jobid), "--json")
            try:
                data = json.loads(st.out)["data"]
                status = str((data[0] if isinstance(data, list) else data).get("status"))
            except (ValueError, KeyError, IndexError, AttributeError):
                pass
        self.cli("tomato", "pipeline", "eject", "pip-scale")
        pts = count_points(out)
        # the tasks start about when the job is launched (~0.1 s after submit)
        lag = max(0.0, t_file - t_sub - duration)
        return pts, lag, dict(window.by_role), status


def count_points(path: Path) -> int:
    import xarray as xr

    if not path.exists():
        return 0
    dt = xr.open_datatree(path, engine="netcdf4")
    try:
        return sum(int(g.to_dataset().sizes.get("uts", 0)) for g in dt.children.values())
    finally:
        dt.close()


def batch_shape(kind: str, rate: float) -> bytes:
    """A node's batch at this rate: points per flush of one component, same variables."""
    pts = max(1, min(int(rate * BATCH_INTERVAL), 10_000))
    t0 = time.time()
    uts = [t0 + i / rate for i in range(pts)]
    head: dict[str, Any] = {
        "schema": 1,
        "component": "dev-bench-addr-1",
        "job": 1,
        "task": 0,
        "epoch": 1,
        "stream": "1-abcdef0123456789",
        "seq": 1,
        "n": pts,
        "uts": uts,
    }
    if kind == "bulk":
        head["vars"] = {"voltage": [math.sin(i / 7) for i in range(pts)]}
        head["units"] = {"voltage": "V"}
    else:
        head["vars"] = {
            "val": [i // 1000 for i in range(pts)],
            "max": [10.0] * pts,
            "min": [0.0] * pts,
            "param": [1.0] * pts,
            "choice": ["green"] * pts,
        }
        head["units"] = {"param": "second"}
    return orjson.dumps(head)


def raw_limit(
    kind: str, rate: float, cache: dict[tuple[str, int], tuple[float, float]]
) -> tuple[float, float]:
    """(points/s, CPU-µs per point) of raw paho → amqtt → paho with this batch shape."""
    payload = batch_shape(kind, rate)
    pts = json.loads(payload)["n"]
    key = (kind, pts)
    if key not in cache:
        n = max(200, min(5000, 2_000_000 // max(1, pts)))

        def children_cpu() -> float:
            ru = resource.getrusage(resource.RUSAGE_CHILDREN)
            return ru.ru_utime + ru.ru_stime

        # the processes' start-up (imports, the broker's start) is not per point:
        # measured with one message and taken off
        c0 = children_cpu()
        rawmqtt.measure("amqtt", 1, payload, qos=1, timeout=60)
        c1 = children_cpu()
        msgs, got = rawmqtt.measure("amqtt", n, payload, qos=1, timeout=60)
        c2 = children_cpu()
        per_point = max(0.0, (c2 - c1) - (c1 - c0)) * 1e6 / max(1, got * pts)
        cache[key] = (msgs * pts, per_point)
    return cache[key]


def fmt(x: float, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def table(rows: list[Row], title: str) -> str:
    head = (
        "| driver | components | rate/component | offered points/s | sustained points/s "
        "| points in file | file lag (s after the tasks) "
        "| CPU-µs/point: node | broker | recorder | scheduler "
        "| end to end | raw paho → amqtt → paho, same batches: points/s | raw CPU-µs/point "
        "| CPU ratio ours : raw |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [title, "", head]
    for r in rows:
        if r.note:
            lines.append(
                f"| {r.kind} | {r.n} | {fmt(r.rate)} Hz | {fmt(r.n * r.rate)} | — | — | — "
                f"| — | — | — | — | — | — | — | {r.note} |"
            )
            continue
        ratio = r.us_total() / r.raw_us if r.raw_us else math.nan
        lines.append(
            f"| {r.kind} | {r.n} | {fmt(r.rate)} Hz | {fmt(r.n * r.rate)} | {fmt(r.pps)} "
            f"| {r.in_file:.2f} % | {fmt(r.med(r.lag), 2)} s "
            f"| {fmt(r.us('node'))} | {fmt(r.us('broker'))} | {fmt(r.us('recorder'))} "
            f"| {fmt(r.us('scheduler'))} | **{fmt(r.us_total())}** "
            f"| {fmt(r.raw_pps or math.nan)} | {fmt(r.raw_us or math.nan)} | {fmt(ratio)}x |"
        )
    lines.append("")
    knees: dict[tuple[str, int], float] = {}
    broke: dict[tuple[str, int], float] = {}
    base: dict[tuple[str, int], float] = {}
    for r in rows:
        if not r.note and (r.kind, r.n) not in base:
            base[(r.kind, r.n)] = r.med(r.lag)  # rows come lowest rate first
    for r in rows:
        if r.note:
            continue
        k = (r.kind, r.n)
        if r.keeps_up(base[k]):
            knees[k] = max(knees.get(k, 0.0), r.rate)
        else:
            broke[k] = min(broke.get(k, math.inf), r.rate)
    for k in sorted(set(knees) | set(broke)):
        ok = knees.get(k)
        bad = broke.get(k)
        lines.append(
            f"- knee, {k[0]} x {k[1]} component(s): keeps up to "
            f"{fmt(ok) + ' Hz' if ok else 'none'} per component"
            f" ({fmt((ok or 0) * k[1])} points/s)"
            + (f"; falls behind at {fmt(bad)} Hz" if bad and bad != math.inf else "")
        )
    best = max(
        (r for r in rows if not r.note and r.keeps_up(base[(r.kind, r.n)])),
        key=lambda r: r.pps,
        default=None,
    )
    if best is not None:
        lines.append(
            f"- best sustained with 100 % in the file: {fmt(best.pps)} points/s "
            f"({best.kind}, {best.n} x {fmt(best.rate)} Hz) at {fmt(best.us_total())} "
            "CPU-µs per point end to end"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 s jobs, 1 repetition, fewer rows")
    ap.add_argument("--duration", type=float, default=None, help="s per job (default 10)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per row (default 3)")
    ap.add_argument("--only", choices=sorted(KINDS), default=None)
    ap.add_argument("--components", type=int, nargs="*", default=None)
    ap.add_argument("--rates", type=float, nargs="*", default=None)
    a = ap.parse_args(argv)
    duration = a.duration or (3.0 if a.quick else 10.0)
    reps = a.reps or (1 if a.quick else 3)
    comps = a.components or [1, 10, 100]
    rates = a.rates or [10.0, 100.0, 1000.0, 10000.0]
    harness.become_subreaper()
    t0 = time.time()
    rows: list[Row] = []
    raw_cache: dict[tuple[str, int], tuple[float, float]] = {}
    kinds = [a.only] if a.only else list(KINDS)
    for kind in kinds:
        for n in comps:
            todo = []
            for rate in rates:
                row = Row(kind, n, rate, duration, expected=n * round(duration * rate))
                if kind == "one-point" and rate > 1000:
                    row.note = "refused: below the 1 ms floor for one-point drivers"
                elif n * rate * duration > 3e7:
                    row.note = "not run: more than 30 M points per job"
                rows.append(row)
                if not row.note:
                    todo.append(row)
            if not todo:
                continue
            with tempfile.TemporaryDirectory(prefix=f"bench-scale-{kind}-{n}-") as d:
                stack = Stack(Path(d), kind, n)
                try:
                    stack.start()
                    idx = 0
                    for row in todo:
                        for _ in range(reps):
                            idx += 1
                            pts, lag, cpu, status = stack.run_job(row.rate, duration, idx)
                            row.points.append(pts)
                            row.lag.append(lag)
                            row.cpu.append(cpu)
                            row.status.append(status)
                            print(
                                f"{kind:9} n={n:3} {row.rate:7g} Hz: {pts}/{row.expected} "
                                f"points, lag {lag:.2f} s, {status}, cpu "
                                + " ".join(f"{k}={v:.2f}" for k, v in sorted(cpu.items())),
                                file=sys.stderr,
                                flush=True,
                            )
                finally:
                    left = stack.stop()
                    if left:
                        print(f"killed after tomato stop: {left}", file=sys.stderr)
    for row in rows:
        if not row.note:
            row.raw_pps, row.raw_us = raw_limit(row.kind, row.rate, raw_cache)
    title = (
        f"issue 15 — throughput, components x rate; {reps} repetition(s) of {duration:g} s "
        f"jobs, median; Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} cores; "
        f"run took {time.time() - t0:.0f} s"
    )
    out = table(rows, title)
    print(out)
    res = Path(__file__).parent / "results"
    res.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (res / f"scale-{stamp}.md").write_text(out + "\n")
    (res / f"scale-{stamp}.json").write_text(
        json.dumps([r.__dict__ for r in rows], indent=1, default=str)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
