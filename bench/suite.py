"""The workloads, run on tomato-mqtt and on tomato 2.2 alternating, and the table.

Every workload runs on both systems, alternating A B A B (tomato-mqtt first), ``reps``
times each; the table shows the median (min..max) and the ratio of the medians.
Nothing is typed in: every figure of tomato 2.2 is measured in the same run.

``python -m bench`` runs the rows of issue 6; ``bench/cli.py``, ``bench/node.py`` and
``bench/jobs.py`` run the rows of issues 3, 4 and 5 through :func:`main` with their own
selection (``bench/broker.py`` is separate: it needs no stack).
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
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
# the part of each system that talks to the instrument, and the one that writes the file
NODE = ("node", "tomato-driver")
RECORDER = ("recorder", "tomato-job")


@dataclass
class Config:
    reps: int = 3
    duration: float = 10.0  # s, the sampling and concurrent-job tasks
    intervals: tuple[float, ...] = (0.1, 0.01, 0.001)
    n_many: int = 20
    cli_calls: int = 3  # per CLI figure and repetition
    raw_n: int = 20000
    long_duration: float = 60.0  # issue 5 (a)
    n_huge: int = 100  # issue 5 (c)
    huge_both: bool = False  # also run (c) on tomato 2.2
    write_points: int = 1_000_000  # issue 5 (d)

    def quick(self) -> Config:
        return replace(
            self,
            reps=1,
            duration=3.0,
            cli_calls=2,
            raw_n=5000,
            n_many=10,
            long_duration=15.0,
            n_huge=40,
        )


def define(t: Table, cfg: Config) -> None:
    """Every row, in table order (so a row is there even when a system fails it)."""
    n, d = cfg.n_many, cfg.duration
    t.figure("cli.tomato_status", "one CLI call: `tomato status`", "s", target="<= 0.2x")
    t.figure("cli.ketchup_status", "one CLI call: `ketchup status 1`", "s", target="<= 0.2x")
    t.figure("start.1", "`tomato start` → all ready, 1 component", "s", target="<= 0.25x")
    t.figure(f"start.{n}", f"`tomato start` → all ready, {n} components", "s", target="<= 0.25x")
    t.figure("job.submit_r", "`ketchup submit` → `r`", "s", target="<= 0.1x")
    t.figure("job.submit_file", "1 s job: `ketchup submit` → file written", "s")
    for iv in cfg.intervals:
        last = iv == min(cfg.intervals)
        t.figure(
            f"sample.{iv}.points",
            f"1 component @ {iv} s, {d:g} s: points in file",
            "%",
            fmt="{:.1f}",
            target="100 %" if last else "",
            higher_is_better=True,
        )
        t.figure(f"sample.{iv}.cpu", f"1 component @ {iv} s: CPU, all processes", "CPU-s")
        t.figure(
            f"sample.{iv}.node_cpu",
            f"1 component @ {iv} s: node (2.2: driver) CPU per s of task",
            "CPU-s/s",
            target="<= 0.3" if last else "",
        )
        t.figure(
            f"sample.{iv}.msgs",
            f"1 component @ {iv} s: MQTT msg/s on the broker, submit → done",
            "msg/s",
            fmt="{:.1f}",
            target="<= 20" if last else "",
        )
    t.figure(
        "rate.points",
        "points/s, node → broker → recorder (1 component @ 1 kHz)",
        "points/s",
        fmt="{:.0f}",
        higher_is_better=True,
    )
    t.figure(
        "many.complete",
        f"{n} jobs @ 10 Hz, {d:g} s, submitted in a row: ended `c`",
        "jobs",
        fmt="{:.0f}",
        higher_is_better=True,
    )
    t.figure("many.points", f"{n} jobs: points in files", "%", fmt="{:.1f}", higher_is_better=True)
    t.figure(
        "many.cpu",
        f"{n} jobs: CPU, all processes incl. {n} `ketchup submit`",
        "CPU-s",
        target="<= 0.1x",
    )
    t.figure("many.cpu_services", f"{n} jobs: CPU, services only", "CPU-s", target="<= 3")
    t.figure("many.rss", f"{n} jobs: peak RSS, sum over processes", "MB", fmt="{:.0f}")
    t.figure("many.wall", f"{n} jobs: first submit → last file", "s")
    # issue 5
    ld = cfg.long_duration
    t.figure(
        "long.points",
        f"1 job @ 1 kHz, {ld:g} s: points in file",
        "%",
        fmt="{:.1f}",
        target="100 %",
        higher_is_better=True,
    )
    t.figure("long.recorder_cpu", "1 job @ 1 kHz: recorder (2.2: job process) CPU", "CPU-s")
    t.figure("long.end_file", "1 job @ 1 kHz: last point → file written", "s")
    h = cfg.n_huge
    t.figure(
        "huge.points",
        f"{h} components, {h} jobs @ 10 Hz, {d:g} s: points",
        "%",
        fmt="{:.1f}",
        target="100 %",
        higher_is_better=True,
    )
    t.figure(
        "huge.complete",
        f"{h} jobs @ 10 Hz: ended `c`",
        "jobs",
        fmt="{:.0f}",
        higher_is_better=True,
    )
    t.figure("huge.cpu_services", f"{h} jobs @ 10 Hz: CPU, services only", "CPU-s")
    t.figure(
        "write.1m",
        f"write the file of a job with {cfg.write_points:,} points",
        "s",
        target="<= 5 s",
    )
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


def payload(path: Path, duration: float, interval: float, sample: str = "bench") -> Path:
    path.write_text(
        f'version: "1.0"\nsample:\n    name: {sample}\nmethod:\n'
        '  - component_tag: "counter"\n    technique_name: "count"\n'
        f"    max_duration: {duration}\n    sampling_interval: {interval}\n"
        "settings:\n    unlock_when_done: true\n"
    )
    return path


def read_points(path: Path) -> tuple[int, float | None]:
    """Points in a job file (all groups) and the last ``uts``."""
    import xarray as xr

    n, last = 0, None
    with xr.open_datatree(path) as dt:
        for g in dt.children:
            if "uts" in dt[g].variables and dt[g]["uts"].size:
                uts = dt[g]["uts"].values
                n += int(uts.size)
                last = max(float(uts.max()), last or 0.0)
    return n, last


def points_in(path: Path) -> int:
    return read_points(path)[0] if path.exists() else 0


def wait_done(sys_: Any, ids: list[int], cwd: Path, timeout: float) -> dict[int, dict[str, Any]]:
    """Wait (stat only, no load on the system) for each result file, then for the status."""
    paths = [sys_.result_path(i, cwd) for i in ids]
    harness.wait_for(lambda: all(p.exists() for p in paths), timeout, interval=0.01)
    deadline = time.monotonic() + 60
    while True:
        jobs = sys_.jobs()
        if all(jobs.get(i, {}).get("status") in DONE for i in ids) or time.monotonic() > deadline:
            return jobs
        time.sleep(0.5)


class Suite:
    def __init__(self, t: Table, cfg: Config, root: Path) -> None:
        self.t, self.cfg, self.root = t, cfg, root

    def want(self, *prefixes: str) -> bool:
        return any(k.startswith(p) for k in self.t.figures for p in prefixes)

    def add(self, key: str, system: str, value: float | None) -> None:
        if value is not None and key in self.t.figures:
            self.t.figures[key].add(system, value)

    def note(self, s: Any, msg: str) -> None:
        self.t.notes.append(f"{s.title}: {msg}")

    def guarded(self, s: Any, what: str, fn: Callable[[], None]) -> None:
        """Run one workload; a failure becomes a note (and missing cells), not a crash."""
        try:
            fn()
        except Exception as e:
            self.note(s, f"{what} failed: {type(e).__name__}: {str(e)[:300]}")
            print(f"  {s.title}: {what} failed: {e}", file=sys.stderr)

    # ------------------------------------------------------------- one component

    def one(self, cls: Any, rep: int) -> None:
        if not self.want("cli.", "start.1", "job.", "sample.", "rate.", "long."):
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
                    self.guarded(s, f"sampling @ {iv} s", lambda iv=iv: self.sampling_job(s, iv))
            if self.want("long."):
                self.guarded(s, "1 kHz long job", lambda: self.long_job(s))
        finally:
            self.stopped(s)

    def one_second_job(self, s: Any) -> int:
        pl = payload(s.root / "job_1s.yml", 1.0, 0.1)
        t0 = time.time()
        _, jobid = s.submit(pl, s.root)
        job = wait_done(s, [jobid], s.root, 60)[jobid]
        if job.get("status") != "c":
            self.note(s, f"the 1 s job ended {job.get('status')!r}")
        r = s.running_since(job)
        self.add("job.submit_r", s.id, None if r is None else r - t0)
        path = s.respath(job, s.root)
        self.add("job.submit_file", s.id, path.stat().st_mtime - t0 if path.exists() else None)
        return jobid

    def sampling_job(self, s: Any, iv: float) -> None:
        d = self.cfg.duration
        pl = payload(s.root / f"job_{iv}.yml", d, iv)
        with s.message_counter() as msgs:
            win = CpuWindow().start()
            call, jobid = s.submit(pl, s.root)
            job = wait_done(s, [jobid], s.root, d + 120)[jobid]
            cpu = win.stop() + call.cpu
        path = s.respath(job, s.root)
        n = points_in(path)
        self.add(f"sample.{iv}.points", s.id, 100.0 * n / round(d / iv))
        self.add(f"sample.{iv}.cpu", s.id, cpu)
        self.add(f"sample.{iv}.node_cpu", s.id, win.role(*NODE) / d)
        if msgs is not None:
            self.add(f"sample.{iv}.msgs", s.id, msgs.rate())
        if iv == 0.001:
            self.add("rate.points", s.id, n / d)

    def long_job(self, s: Any) -> None:
        d = self.cfg.long_duration
        pl = payload(s.root / "job_long.yml", d, 0.001)
        win = CpuWindow().start()
        _, jobid = s.submit(pl, s.root)
        job = wait_done(s, [jobid], s.root, d + 180)[jobid]
        win.stop()
        path = s.respath(job, s.root)
        if not path.exists():
            self.note(s, f"1 kHz job: no file, status {job.get('status')!r}")
            return
        n, last = read_points(path)
        self.add("long.points", s.id, 100.0 * n / round(d / 0.001))
        self.add("long.recorder_cpu", s.id, win.role(*RECORDER))
        if last is not None:
            self.add("long.end_file", s.id, path.stat().st_mtime - last)

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
                self.guarded(s, f"{n} concurrent jobs", lambda: self.concurrent_jobs(s, "many"))
        finally:
            self.stopped(s)

    def huge(self, cls: Any, rep: int) -> None:
        if not self.want("huge.") or (cls is Tomato22 and not self.cfg.huge_both):
            return
        s = cls(self.root / f"{cls.id}-huge-{rep}", self.cfg.n_huge)
        s.prepare()
        s.start(timeout=180)
        try:
            self.guarded(
                s, f"{self.cfg.n_huge} concurrent jobs", lambda: self.concurrent_jobs(s, "huge")
            )
        finally:
            self.stopped(s)

    def concurrent_jobs(self, s: Any, key: str) -> None:
        # one after the other, as tomato's own tests do (tests/test_99_stresstest.py)
        # Each pipeline holds its own sample and each job asks for one: with one sample in
        # every pipeline, tomato 2.2's job manager tries to launch the first job on a
        # second pipeline before it is `r`, fails on its existing job directory and stops.
        n = s.n
        self.setup_pipelines(s, [(p, f"bench-{i}") for i, p in enumerate(s.pipelines)])
        pls = [
            payload(s.root / f"job_many_{i}.yml", self.cfg.duration, 0.1, f"bench-{i}")
            for i in range(n)
        ]
        with RssPeak() as rss:
            win = CpuWindow().start()
            t0 = time.time()
            subs = [s.submit(pl, s.root) for pl in pls]
            ids = [i for _, i in subs]
            jobs = wait_done(s, ids, s.root, 3 * self.cfg.duration + 90)
            cpu = win.stop()
        paths = [s.result_path(i, s.root) for i in ids]
        last = max((p.stat().st_mtime for p in paths if p.exists()), default=None)
        ended = [jobs.get(i, {}).get("status") for i in ids]
        if any(e != "c" for e in ended):
            counts = {e: ended.count(e) for e in set(ended)}
            self.note(s, f"{n} concurrent jobs ended {counts}")
        pts = sum(points_in(p) for p in paths)
        self.add(f"{key}.complete", s.id, sum(1 for e in ended if e == "c"))
        self.add(f"{key}.points", s.id, 100.0 * pts / (n * round(self.cfg.duration / 0.1)))
        self.add(f"{key}.cpu", s.id, cpu + sum(c.cpu for c, _ in subs))
        self.add(f"{key}.cpu_services", s.id, cpu)
        self.add(f"{key}.rss", s.id, rss.peak / 1e6)
        self.add(f"{key}.wall", s.id, None if last is None else last - t0)

    def setup_pipelines(self, s: Any, todo: list[tuple[str, str]]) -> None:
        """Load and ready the pipelines, 4 CLI calls at a time (setup, not measured).

        A failed call is retried once, one at a time, and noted: tomato-mqtt's CLI has lost
        its broker connection under such parallel calls.
        """

        def one(ps: tuple[str, str]) -> str | None:
            try:
                s.load_ready(*ps)
            except RuntimeError as e:
                lines = [x for x in str(e).splitlines() if x.strip()]
                return " / ".join(lines[1:] or lines)[:300]
            return None

        with cf.ThreadPoolExecutor(4) as ex:
            errors = list(ex.map(one, todo))
        failed = [(ps, e) for ps, e in zip(todo, errors, strict=True) if e]
        if failed:
            self.note(
                s,
                f"{len(failed)} of {len(todo)} parallel pipeline load/ready calls "
                f"failed and were retried; first: {failed[0][1]}",
            )
            for ps, _ in failed:
                s.load_ready(*ps, again=True)

    def stopped(self, s: Any) -> None:
        left = s.stop()
        if left:
            self.note(s, f"still running after `tomato stop`, killed by PID: {left}")

    # -------------------------------------------------------------- file writing

    def write(self) -> None:
        if not self.want("write."):
            return
        call = harness.run(
            [sys.executable, "-m", "bench.write1m", str(self.cfg.write_points)],
            cwd=Path(__file__).resolve().parents[1],
            timeout=300,
        )
        if call.rc != 0:
            self.t.notes.append(f"write.1m failed: {call.err[-500:]}")
            return
        self.add("write.1m", TomatoMqtt.id, float(call.out.split()[-1]))

    # ------------------------------------------------------------------ raw MQTT

    def raw(self) -> None:
        for kind in ("amqtt", "mosquitto"):
            if not self.want(f"raw.{kind}"):
                continue
            if kind == "mosquitto" and not Path(rawmqtt.MOSQUITTO).exists():
                self.t.notes.append("mosquitto not installed (bash scripts/ensure-mosquitto)")
                continue
            for qos in (1, 0):
                key = f"raw.{kind}.qos{qos}"
                if key in self.t.figures:
                    rate, got = rawmqtt.measure(kind, self.cfg.raw_n, b"x" * 100, qos)
                    self.t.figures[key].limit = rate
                    if got < self.cfg.raw_n:
                        self.t.notes.append(f"{key}: {got}/{self.cfg.raw_n} messages arrived")
        if self.want("raw.amqtt.batch", "rate."):
            n = max(200, self.cfg.raw_n // 10)
            rate, _ = rawmqtt.measure("amqtt", n, rawmqtt.batch_payload(500), 1)
            for key in ("raw.amqtt.batch", "rate.points"):
                if key in self.t.figures:
                    self.t.figures[key].limit = rate * 500
            if "rate.points" in self.t.figures:
                self.t.figures["rate.points"].limit_note = "(raw paho → amqtt, 500-point batches)"


def main(
    argv: list[str] | None = None,
    *,
    prog: str = "python -m bench",
    title: str = "tomato-mqtt vs tomato 2.2 (PyPI) vs raw MQTT",
    rows: Iterable[str] = (
        "cli.",
        "start.",
        "job.",
        "sample.",
        "rate.",
        "many.",
        "raw.",
    ),
    doc: str | None = None,
    base: Config | None = None,
    results: str = "latest",
) -> int:
    ap = argparse.ArgumentParser(prog=prog, description=doc or __doc__)
    ap.add_argument("--quick", action="store_true", help="1 repetition, 3 s workloads")
    ap.add_argument("--reps", type=int, help="repetitions per system (default 3)")
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
    cfg = base or Config()
    if args.quick:
        cfg = cfg.quick()
    if args.reps:
        cfg = replace(cfg, reps=args.reps)
    t = Table([(c.id, c.title) for c in SYSTEMS])
    define(t, cfg)
    selected = args.only or list(rows)
    t.figures = {k: f for k, f in t.figures.items() if any(k.startswith(o) for o in selected)}
    if args.list:
        print("\n".join(f"{k:24s} {f.label}" for k, f in t.figures.items()))
        return 0
    if not t.figures:
        ap.error(f"no row matches {selected}; see --list")
    harness.become_subreaper()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ensure_venv(lambda m: print(m, file=sys.stderr, flush=True))
    work = Path(tempfile.mkdtemp(prefix="tomato-bench-"))
    suite = Suite(t, cfg, work)
    systems = [c for c in SYSTEMS if not args.system or c.id in args.system]
    t0 = time.monotonic()
    try:
        for rep in range(cfg.reps):
            for cls in systems:  # A B A B: the same order every repetition
                progress(f"repetition {rep + 1}/{cfg.reps}: {cls.title}", t0)
                for part in (suite.one, suite.many, suite.huge):
                    try:
                        part(cls, rep)
                    except Exception as e:
                        t.notes.append(f"{cls.title}, rep {rep + 1}: {type(e).__name__}: {e}")
                        print(f"  failed: {e}", file=sys.stderr)
                        harness.stop_descendants(5)
        if suite.want("write."):
            progress("file writing", t0)
            suite.write()
        if suite.want("raw.", "rate."):
            progress("raw MQTT", t0)
            suite.raw()
    finally:
        left = harness.stop_descendants(5)
        if left:
            t.notes.append(f"left running at the end, killed by PID: {left}")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - t0
    report(t, cfg, elapsed, title, f"{results}-quick" if args.quick else results)
    return 0


def progress(msg: str, t0: float) -> None:
    print(f"[{time.monotonic() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)


def report(t: Table, cfg: Config, elapsed: float, title: str, name: str) -> None:
    cpu = platform.processor() or platform.machine()
    head = (
        f"{title} — {cfg.reps} repetition(s), median (min..max); "
        f"Python {platform.python_version()}, {cpu}, {psutil.cpu_count()} cores; "
        f"run took {elapsed:.0f} s"
    )
    text = f"{head}\n\n{t.markdown()}\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text)
    (RESULTS / f"{name}.json").write_text(json.dumps(t.as_json(), indent=1))
