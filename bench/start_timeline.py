"""Where `tomato start`'s second goes: one start, each process and milestone in time.

``python -m bench.start_timeline [--reps N]`` starts fresh one-component stacks (as
``bench.startup``) and prints, per repetition, when each process of the stack was
spawned (from ``/proc/<pid>/stat``, relative to the spawn of ``tomato start``; the
scheduler, recorder and node: forked by the preloader), its CPU-s when `tomato start`
returned (the preloader's in the supervisor's reaped children), and the milestones the
services log (the broker serving, the node connected, configured and registered), then
the medians.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.mqtt_side import BIN, TomatoMqtt

__all__ = ["main", "timeline"]

_TICK = os.sysconf("SC_CLK_TCK")
_ROLE = re.compile(r"(supervisor|broker|scheduler|recorder|node)")
_MILESTONES = {
    "broker serves": "broker listening on",
    "node connected": "connected to mqtt://",
    "node configured": "configured with",
    "component registered": "node local: registered",
}


def _uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def _processes(port: int) -> dict[str, tuple[float, float, float]]:
    """role -> (spawned at, s of uptime; CPU-s so far; CPU-s of the children it reaped)
    of the stack on ``port``."""
    out: dict[str, tuple[float, float, float]] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            stat = (p / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        m = _ROLE.search(cmd)
        ours = f"-p {port}" in cmd or f"--port {port}" in cmd
        if m and "tomato_mqtt" in cmd and ours:
            cpu, reaped = int(stat[11]) + int(stat[12]), int(stat[13]) + int(stat[14])
            out[m.group(1)] = (int(stat[19]) / _TICK, cpu / _TICK, reaped / _TICK)
    return out


def timeline(root: Path) -> dict[str, float]:
    """One start: figure -> seconds (or CPU-s) since `tomato start` was spawned."""
    s = TomatoMqtt(root, 1)
    s.prepare()
    t0_up, t0 = _uptime(), datetime.datetime.now().timestamp()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    call = subprocess.run(
        [str(BIN / "tomato"), "start", *s.dirs, "-p", str(s.port)],
        env=s.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    wall = datetime.datetime.now().timestamp() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cli_cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
    try:
        if call.returncode != 0:
            raise RuntimeError(f"tomato start failed: {call.stderr}")
        got = {"`tomato start` returned": wall, "`tomato start` itself: CPU-s": cli_cpu}
        for role, (spawned, cpu, reaped) in _processes(s.port).items():
            got[f"{role} spawned"] = spawned - t0_up
            got[f"{role}: CPU-s at ready"] = cpu
            if role == "supervisor":  # it reaped the preloader (services/supervisor.py)
                got["preloader (reaped by the supervisor): CPU-s"] = reaped
        for log in root.glob("*.log"):
            for line in log.read_text(errors="replace").splitlines()[:60]:
                for name, text in _MILESTONES.items():
                    if text in line and name not in got:
                        stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                        got[name] = stamp.timestamp() - t0
        return got
    finally:
        s.stop()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.start_timeline", description=__doc__)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-timeline-") as tmp:
        for rep in range(a.reps):
            runs.append(timeline(Path(tmp) / f"r{rep}"))
    keys = sorted(
        {k for r in runs for k in r},
        key=lambda k: statistics.median(r[k] for r in runs if k in r) + (100 if "CPU" in k else 0),
    )
    print(f"## `tomato start`, one component: {a.reps} starts, medians (min..max)\n")
    print("| since `tomato start` was spawned | median | min..max |\n|---|---|---|")
    for k in keys:
        v = [r[k] for r in runs if k in r]
        unit = "CPU-s" if "CPU" in k else "s"
        print(f"| {k} | {statistics.median(v):.2f} {unit} | {min(v):.2f}..{max(v):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
