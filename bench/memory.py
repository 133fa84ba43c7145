"""Issue 15, memory: RSS of every service of a stack, idle and during 20 concurrent jobs.

``python -m bench.memory [--reps N] [--tomato22] [--imports]`` starts a tomato-mqtt stack with 20
components (as ``bench.suite``'s ``many`` rows), reads each service's RSS from ``/proc``
once it is idle, then samples every service every 0.1 s while 20 jobs at 10 Hz run
(submitted in a row, as tomato's own stress test does) and once more after they ended.

Rows: the peak of the sum over the services (the issue's figure, target ≤ 200 MB), the
idle sum, the sum left after the jobs (nothing a job held should stay), and each
service's idle and peak. The baseline, measured in the same run, is the floor: the
peak RSS of a bare ``python -c`` (its ``VmHWM``) times the number of services.
With ``--tomato22`` the same workload runs once on tomato 2.2 (its daemon, drivers and
job processes) for comparison; it is off by default (~1 min more).

``--imports`` prints instead what each library adds to each service's RSS (one fresh
interpreter per service, importing in the order the service does): where the memory is.

Only the services count (the supervisor and its children, by their command line): the
``ketchup submit`` calls of the workload and the bench's own helpers do not.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from bench import harness
from bench.limits import Row, print_table
from bench.mqtt_side import TomatoMqtt

__all__ = ["RoleRss", "bare_python_rss", "main", "measure", "rows"]

N_JOBS = 20
DURATION = 10.0  # s, each job (10 Hz): as bench.suite's `many` rows
TARGET_MB = 200.0
HELD_MB = 10.0  # what the services may keep after the jobs ended (caches, a grown heap)
SERVICES = ("supervise", "broker", "scheduler", "node", "recorder")
SERVICES22 = ("tomato-daemon", "tomato-driver", "tomato-job")
MB = 1e6


def _rss(p: psutil.Process) -> int:
    return int(p.memory_info().rss)


def _pss(pid: int) -> int:
    """Proportional set size: shared pages (libpython, libcrypto, ...) split among the
    processes that map them, so a sum over processes counts each page once."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class RoleRss:
    """RSS per role (``harness.role_of``) of the bench's descendants, sampled in a thread.

    ``peak_sum`` is the largest sum over ``roles`` of one sample (processes sampled
    together), ``peak[role]`` the largest sum of that role alone.
    """

    def __init__(self, roles: Sequence[str], interval: float = 0.1) -> None:
        self.roles = tuple(roles)
        self.interval = interval
        self.peak: dict[str, int] = dict.fromkeys(self.roles, 0)
        self.peak_sum = 0
        self.peak_pss_sum = 0  # the same, as PSS
        self._known: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> dict[str, int]:
        """One reading: RSS per role now."""
        return self._sample()[0]

    def _sample(self) -> tuple[dict[str, int], int]:
        """RSS per role now, and the PSS summed over all of them."""
        now: dict[str, int] = dict.fromkeys(self.roles, 0)
        pss = 0
        for p in psutil.Process().children(recursive=True):
            role = self._known.get(p.pid)
            if role is None:
                role = self._known[p.pid] = harness.role_of(p)
            if role in now:
                with contextlib.suppress(psutil.Error):
                    now[role] += _rss(p)
                    pss += _pss(p.pid)
        return now, pss

    def __enter__(self) -> RoleRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            now, pss = self._sample()
            for r, v in now.items():
                self.peak[r] = max(self.peak[r], v)
            self.peak_sum = max(self.peak_sum, sum(now.values()))
            self.peak_pss_sum = max(self.peak_pss_sum, pss)
            self._stop.wait(self.interval)


def bare_python_rss(python: str = sys.executable) -> int:
    """Peak RSS (bytes) of a bare interpreter (``python -c``, no imports of its own): what
    any Python service costs at least. Read by the interpreter itself (``VmHWM``): the
    ``ru_maxrss`` of a child counts the parent's pages it had before ``exec``."""
    out = subprocess.run(
        [python, "-c", "print(open('/proc/self/status').read())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    kib = next(int(x.split()[1]) for x in out.splitlines() if x.startswith("VmHWM:"))
    return kib * 1024


def _settle(meter: RoleRss, timeout: float = 10.0, tol: int = 1_000_000) -> dict[str, int]:
    """RSS per role once two readings 0.5 s apart differ by < ``tol`` (start-up is over)."""
    deadline = time.monotonic() + timeout
    last = meter.sample()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = meter.sample()
        if abs(sum(now.values()) - sum(last.values())) < tol:
            return now
        last = now
    return last


def measure(cls: Any, root: Path, roles: Sequence[str]) -> dict[str, Any]:
    """One stack of ``cls`` (TomatoMqtt or Tomato22): idle, peak and after, per role."""
    from bench.suite import DONE, payload, wait_done

    here = Path.cwd()
    for attempt in range(3):
        s = cls(root / f"try{attempt}", N_JOBS)
        s.prepare()
        # started from the stack's own folder: `python -m` services put the current
        # folder first on sys.path, and a source tree there (the repository's root) would
        # be what they import, whichever installation the bench is measuring
        os.chdir(s.root)
        try:
            s.start(timeout=180)
            break
        except RuntimeError as e:  # a free port taken meanwhile on a shared machine
            if attempt == 2 or "already in use" not in str(e):
                raise
            print(f"  {cls.title}: port taken, again on another", file=sys.stderr)
            s.stop()
        finally:
            os.chdir(here)
    try:
        for i, p in enumerate(s.pipelines):
            s.load_ready(p, f"mem-{i}")
        meter = RoleRss(roles)
        idle = _settle(meter)
        pls = [
            payload(s.root / f"job_mem_{i}.yml", DURATION, 0.1, f"mem-{i}") for i in range(N_JOBS)
        ]
        with meter:
            ids = [s.submit(pl, s.root)[1] for pl in pls]
            jobs = wait_done(s, ids, s.root, 3 * DURATION + 90)
        after = _settle(meter)
        done = sum(1 for i in ids if jobs.get(i, {}).get("status") in DONE)
    finally:
        left = s.stop()
    if left:
        print(f"  {cls.title}: killed by PID after stop: {left}", file=sys.stderr)
    return {
        "idle": idle,
        "peak": meter.peak,
        "peak_sum": meter.peak_sum,
        "peak_pss_sum": meter.peak_pss_sum,
        "after": after,
        "done": done,
    }


def rows(reps: int, tomato22: bool = False) -> list[Row]:
    harness.become_subreaper()
    bare: list[float] = []
    runs: list[dict[str, Any]] = []
    runs22: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        for rep in range(reps):
            bare.append(bare_python_rss() / MB)
            runs.append(measure(TomatoMqtt, Path(tmp) / f"mqtt-{rep}", SERVICES))
            print(
                f"  rep {rep + 1}: peak sum {runs[-1]['peak_sum'] / MB:.0f} MB, "
                f"{runs[-1]['done']}/{N_JOBS} jobs done",
                file=sys.stderr,
            )
        if tomato22:
            from bench.tomato22 import Tomato22, ensure_venv

            ensure_venv(lambda m: print(f"  {m}", file=sys.stderr))
            runs22.append(measure(Tomato22, Path(tmp) / "tomato22", SERVICES22))
    n = len(SERVICES)
    floor = [b * n for b in bare]

    def mb(key: str, role: str | None = None) -> list[float]:
        if role is None:
            return [
                (r[key] if key.startswith("peak_") else sum(r[key].values())) / MB for r in runs
            ]
        return [r[key][role] / MB for r in runs]

    peak = mb("peak_sum")
    out = [
        Row(
            f"peak RSS, sum of {n} services, {N_JOBS} jobs @ 10 Hz",
            "MB",
            peak,
            f"<= {TARGET_MB:.0f} MB",
            bool(peak) and sorted(peak)[len(peak) // 2] <= TARGET_MB,
            baseline=f"{n} x bare `python -c`",
            baseline_values=floor,
            fmt="{:.0f}",
        ),
        Row(
            "  the same as PSS (shared pages counted once)",
            "MB",
            mb("peak_pss_sum"),
            "info",
            True,
            baseline="RSS",
            baseline_values=peak,
            fmt="{:.0f}",
        ),
        Row(
            f"idle RSS, sum of {n} services",
            "MB",
            mb("idle"),
            "info",
            True,
            baseline=f"{n} x bare `python -c`",
            baseline_values=floor,
            fmt="{:.0f}",
        ),
        Row(
            "RSS after the jobs ended, sum",
            "MB",
            mb("after"),
            f"<= idle + {HELD_MB:.0f} MB",
            all(a <= i + HELD_MB for a, i in zip(mb("after"), mb("idle"), strict=True)),
            baseline="idle",
            baseline_values=mb("idle"),
            fmt="{:.0f}",
        ),
        Row(
            f"{N_JOBS} jobs ended `c`",
            "jobs",
            [float(r["done"]) for r in runs],
            f"{N_JOBS}",
            all(r["done"] == N_JOBS for r in runs),
            fmt="{:.0f}",
        ),
    ]
    for role in SERVICES:
        out.append(
            Row(
                f"  {role}: peak RSS (idle as baseline)",
                "MB",
                mb("peak", role),
                "info",
                True,
                baseline="idle",
                baseline_values=mb("idle", role),
                fmt="{:.0f}",
            )
        )
    if runs22:
        r22 = runs22[0]
        out.append(
            Row(
                f"tomato 2.2: peak RSS, daemon + drivers + jobs, {N_JOBS} jobs",
                "MB",
                [r22["peak_sum"] / MB],
                "info",
                True,
                baseline="tomato-mqtt (median)",
                baseline_values=[sorted(peak)[len(peak) // 2]],
                fmt="{:.0f}",
            )
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    ap.add_argument("--reps", type=int, default=3, help="repetitions (median)")
    ap.add_argument("--tomato22", action="store_true", help="also measure tomato 2.2 once")
    ap.add_argument(
        "--imports", action="store_true", help="only the RSS each import adds, per service"
    )
    a = ap.parse_args(argv)
    if a.imports:
        from bench.memory_imports import import_costs, print_import_costs

        print_import_costs(import_costs())
        return 0
    t0 = time.monotonic()
    rs = rows(a.reps, tomato22=a.tomato22)
    print_table(rs, f"issue 15 — memory, {a.reps} repetitions, {time.monotonic() - t0:.0f} s")
    return 0 if all(r.ok for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
