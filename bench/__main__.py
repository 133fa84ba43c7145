"""``python -m bench``: tomato-mqtt against tomato 2.2 and raw MQTT, in one run.

Every workload runs on both systems, alternating A B A B (tomato-mqtt first), at least
three times each; the table shows the median (min..max) and the ratio of the medians.
Nothing is typed in: every figure of tomato 2.2 is measured in this run.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import platform
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench import harness, rawmqtt
from bench.harness import CpuWindow, RssPeak, Table
from bench.mqtt_side import TomatoMqtt
from bench.tomato22 import Tomato22, ensure_venv

RESULTS = Path(__file__).resolve().parent / "results"
SYSTEMS = (TomatoMqtt, Tomato22)
DONE = {"c", "ce", "cd"}


@dataclass
class Config:
    reps: int = 3
    duration: float = 10.0  # s, the sampling and concurrent-job tasks
    intervals: tuple[float, ...] = (0.1, 0.01, 0.001)
    n_many: int = 20
    cli_calls: int = 3  # per CLI figure and repetition
    raw_n: int = 20000

    @classmethod
    def quick(cls) -> Config:
        return cls(reps=1, duration=3.0, cli_calls=2, raw_n=5000)


def define(t: Table, cfg: Config) -> None:
    """Every row, in table order (so a row is there even when a system fails it)."""
    n = cfg.n_many
    t.figure("cli.tomato_status", "one CLI call: `tomato status`", "s", target="<= 0.2x")
    t.figure("cli.ketchup_status", "one CLI call: `ketchup status 1`", "s", target="<= 0.2x")
    t.figure("start.1", "`tomato start` → all ready, 1 component", "s", target="<= 0.25x")
    t.figure(f"start.{n}", f"`tomato start` → all ready, {n} components", "s", target="<= 0.25x")
    t.figure("job.submit_r", "`ketchup submit` → `r`", "s", target="<= 0.1x")
    t.figure("job.submit_file", "1 s job: `ketchup submit` → file written", "s")
    for iv in cfg.intervals:
        tgt = "100 %" if iv == min(cfg.intervals) else ""
        t.figure(
            f"sample.{iv}.points",
            f"1 component @ {iv} s, {cfg.duration:g} s: points",
            "%",
            fmt="{:.1f}",
            target=tgt,
            higher_is_better=True,
        )
        t.figure(f"sample.{iv}.cpu", f"1 component @ {iv} s, {cfg.duration:g} s: CPU", "CPU-s")
    t.figure(
        "rate.points",
        "points/s, node → broker → recorder (1 component @ 1 kHz)",
        "points/s",
        fmt="{:.0f}",
        higher_is_better=True,
    )
    t.figure(
        "many.complete",
        f"{n} jobs @ 10 Hz, {cfg.duration:g} s: completed",
        "jobs",
        fmt="{:.0f}",
        higher_is_better=True,
    )
    t.figure("many.points", f"{n} jobs: points", "%", fmt="{:.1f}", higher_is_better=True)
    t.figure(
        "many.cpu",
        f"{n} jobs: CPU, all processes incl. {n} `ketchup submit`",
        "CPU-s",
        target="<= 0.1x",
    )
    t.figure("many.cpu_services", f"{n} jobs: CPU, without the `ketchup submit` calls", "CPU-s")
    t.figure("many.rss", f"{n} jobs: peak RSS, sum over processes", "MB", fmt="{:.0f}")
    t.figure("many.wall", f"{n} jobs: first submit → last file", "s")
    for kind in ("amqtt", "mosquitto"):
        for qos in (1, 0):
            t.figure(
                f"raw.{kind}.qos{qos}",
                f"raw paho → {kind} → paho, 100 B, QoS {qos}",
                "msg/s",
                fmt="{:.0f}",
            )
    t.figure(
        "raw.amqtt.batch",
        "raw paho → amqtt → paho, 500-point batches, QoS 1",
        "points/s",
        fmt="{:.0f}",
    )


def payload(path: Path, duration: float, interval: float) -> Path:
    path.write_text(
        'version: "1.0"\nsample:\n    name: bench\nmethod:\n'
        '  - component_tag: "counter"\n    technique_name: "count"\n'
        f"    max_duration: {duration}\n    sampling_interval: {interval}\n"
        "settings:\n    unlock_when_done: true\n"
    )
    return path


def points_in(path: Path) -> int:
    import xarray as xr

    with xr.open_datatree(path) as dt:
        return sum(int(dt[g]["uts"].size) for g in dt.children if "uts" in dt[g].variables)


def wait_done(sys_: Any, ids: list[int], cwd: Path, timeout: float) -> dict[int, dict[str, Any]]:
    """Wait (stat only, no load on the system) for each result file, then for the status."""
    paths = [sys_.result_path(i, cwd) for i in ids]
    harness.wait_for(lambda: all(p.exists() for p in paths), timeout)
    deadline = time.monotonic() + 60
    while True:
        jobs = sys_.jobs()
        if all(jobs.get(i, {}).get("status") in DONE for i in ids) or time.monotonic() > deadline:
            return jobs
        time.sleep(0.5)


class Suite:
    def __init__(self, t: Table, cfg: Config, only: list[str], root: Path) -> None:
        self.t, self.cfg, self.only, self.root = t, cfg, only, root

    def want(self, *prefixes: str) -> bool:
        return any(k.startswith(p) for k in self.t.figures for p in prefixes if self.sel(k))

    def sel(self, key: str) -> bool:
        return not self.only or any(key.startswith(o) for o in self.only)

    def add(self, key: str, system: str, value: float | None) -> None:
        if value is not None and self.sel(key):
            self.t.figures[key].add(system, value)

    # ------------------------------------------------------------- one component

    def one(self, cls: Any, rep: int) -> None:
        if not self.want("cli.", "start.1", "job.", "sample.", "rate."):
            return
        s = cls(self.root / f"{cls.id}-one-{rep}", 1)
        s.prepare()
        self.add("start.1", s.id, s.start())
        try:
            s.load_ready("pip-counter-1", "bench")
            jobid = None
            if self.want("job.", "cli.ketchup"):
                jobid = self.one_second_job(s)
            for _ in range(self.cfg.cli_calls if self.want("cli.") else 0):
                self.add("cli.tomato_status", s.id, s.status_call().wall)
                if jobid is not None:
                    self.add("cli.ketchup_status", s.id, s.job_status_call(jobid).wall)
            for iv in self.cfg.intervals:
                if self.want(f"sample.{iv}.") or (iv == 0.001 and self.want("rate.")):
                    self.sampling_job(s, iv)
        finally:
            self.stopped(s)

    def one_second_job(self, s: Any) -> int:
        pl = payload(s.root / "job_1s.yml", 1.0, 0.1)
        t0 = time.time()
        _, jobid = s.submit(pl, s.root)
        job = wait_done(s, [jobid], s.root, 60)[jobid]
        if job.get("status") != "c":
            self.t.notes.append(f"{s.title}: the 1 s job ended {job.get('status')!r}")
        r = s.running_since(job)
        self.add("job.submit_r", s.id, None if r is None else r - t0)
        path = s.respath(job, s.root)
        self.add("job.submit_file", s.id, path.stat().st_mtime - t0 if path.exists() else None)
        return jobid

    def sampling_job(self, s: Any, iv: float) -> None:
        pl = payload(s.root / f"job_{iv}.yml", self.cfg.duration, iv)
        win = CpuWindow().start()
        call, jobid = s.submit(pl, s.root)
        job = wait_done(s, [jobid], s.root, self.cfg.duration + 120)[jobid]
        cpu = win.stop() + call.cpu
        path = s.respath(job, s.root)
        n = points_in(path) if path.exists() else 0
        expected = round(self.cfg.duration / iv)
        self.add(f"sample.{iv}.points", s.id, 100.0 * n / expected)
        self.add(f"sample.{iv}.cpu", s.id, cpu)
        if iv == 0.001:
            self.add("rate.points", s.id, n / self.cfg.duration)

    # ----------------------------------------------------------- many components

    def many(self, cls: Any, rep: int) -> None:
        n = self.cfg.n_many
        if not self.want(f"start.{n}", "many."):
            return
        s = cls(self.root / f"{cls.id}-many-{rep}", n)
        s.prepare()
        self.add(f"start.{n}", s.id, s.start())
        try:
            if self.want("many."):
                self.concurrent_jobs(s)
        finally:
            self.stopped(s)

    def concurrent_jobs(self, s: Any) -> None:
        n = self.cfg.n_many
        with cf.ThreadPoolExecutor(4) as ex:
            list(ex.map(lambda p: s.load_ready(p, "bench"), s.pipelines))
        pl = payload(s.root / "job_many.yml", self.cfg.duration, 0.1)
        with RssPeak() as rss:
            win = CpuWindow().start()
            t0 = time.time()
            with cf.ThreadPoolExecutor(n) as ex:
                subs = list(ex.map(lambda _: s.submit(pl, s.root), range(n)))
            ids = [i for _, i in subs]
            jobs = wait_done(s, ids, s.root, self.cfg.duration + 180)
            cpu = win.stop()
        last = max(
            (p.stat().st_mtime for p in map(lambda i: s.result_path(i, s.root), ids) if p.exists()),
            default=None,
        )
        done = sum(1 for i in ids if jobs.get(i, {}).get("status") == "c")
        pts = sum(
            points_in(s.result_path(i, s.root)) for i in ids if s.result_path(i, s.root).exists()
        )
        self.add("many.complete", s.id, done)
        self.add("many.points", s.id, 100.0 * pts / (n * round(self.cfg.duration / 0.1)))
        self.add("many.cpu", s.id, cpu + sum(c.cpu for c, _ in subs))
        self.add("many.cpu_services", s.id, cpu)
        self.add("many.rss", s.id, rss.peak / 1e6)
        self.add("many.wall", s.id, None if last is None else last - t0)

    def stopped(self, s: Any) -> None:
        left = s.stop()
        if left:
            self.t.notes.append(f"{s.title}: still running after `tomato stop`, killed: {left}")

    # ------------------------------------------------------------------ raw MQTT

    def raw(self) -> None:
        for kind in ("amqtt", "mosquitto"):
            if kind == "mosquitto" and not Path(rawmqtt.MOSQUITTO).exists():
                self.t.notes.append("mosquitto not installed (bash scripts/ensure-mosquitto)")
                continue
            for qos in (1, 0):
                key = f"raw.{kind}.qos{qos}"
                if self.sel(key):
                    rate, got = rawmqtt.measure(kind, self.cfg.raw_n, b"x" * 100, qos)
                    self.t.figures[key].limit = rate
                    if got < self.cfg.raw_n:
                        self.t.notes.append(f"{key}: {got}/{self.cfg.raw_n} messages arrived")
        if self.sel("raw.amqtt.batch") or self.sel("rate."):
            n = max(200, self.cfg.raw_n // 10)
            rate, _ = rawmqtt.measure("amqtt", n, rawmqtt.batch_payload(500), 1)
            self.t.figures["raw.amqtt.batch"].limit = rate * 500
            self.t.figures["rate.points"].limit = rate * 500
            self.t.figures["rate.points"].limit_note = "(amqtt, 500-point batches)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="1 repetition, 3 s workloads")
    ap.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="ROW-PREFIX",
        help="run only rows whose key starts with this (repeatable); see --list",
    )
    ap.add_argument("--list", action="store_true", help="list the row keys and exit")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument(
        "--system",
        action="append",
        choices=[c.id for c in SYSTEMS],
        help="drive only this system (development; ratios need both)",
    )
    args = ap.parse_args(argv)
    cfg = Config.quick() if args.quick else Config()
    t = Table([(c.id, c.title) for c in SYSTEMS])
    define(t, cfg)
    if args.list:
        print("\n".join(f"{k:24s} {f.label}" for k, f in t.figures.items()))
        return 0
    if args.only:
        t.figures = {k: f for k, f in t.figures.items() if any(k.startswith(o) for o in args.only)}
        if not t.figures:
            ap.error(f"no row matches {args.only}; see --list")
    harness.become_subreaper()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ensure_venv(lambda m: print(m, file=sys.stderr, flush=True))
    work = Path(tempfile.mkdtemp(prefix="tomato-bench-"))
    suite = Suite(t, cfg, args.only, work)
    t0 = time.monotonic()
    try:
        for rep in range(cfg.reps):
            for cls in [
                c for c in SYSTEMS if not args.system or c.id in args.system
            ]:  # A B A B: the same order every repetition
                progress(f"repetition {rep + 1}/{cfg.reps}: {cls.title}", t0)
                suite.one(cls, rep)
                suite.many(cls, rep)
        progress("raw MQTT", t0)
        suite.raw()
    finally:
        left = harness.stop_descendants(5)
        if left:
            t.notes.append(f"left running at the end, killed by PID: {left}")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - t0
    report(t, cfg, elapsed, args)
    return 0


def progress(msg: str, t0: float) -> None:
    print(f"[{time.monotonic() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)


def report(t: Table, cfg: Config, elapsed: float, args: argparse.Namespace) -> None:
    cpu = platform.processor() or platform.machine()
    head = (
        f"tomato-mqtt vs tomato 2.2 (PyPI) vs raw MQTT — {cfg.reps} repetition(s), "
        f"median (min..max); {platform.python_version()}, {cpu}, "
        f"{psutil.cpu_count()} cores; {elapsed:.0f} s"
    )
    text = f"{head}\n\n{t.markdown()}\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    name = "quick" if args.quick else "latest"
    (RESULTS / f"{name}.md").write_text(text)
    (RESULTS / f"{name}.json").write_text(json.dumps(t.as_json(), indent=1))


if __name__ == "__main__":
    sys.exit(main())
