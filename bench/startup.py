"""Issue 15, start and finalisation: ``tomato start`` → all ready, and a 1 s job's file.

``python -m bench.startup [--reps N] [--tomato22]`` prints this section's part of the
limits table (``python -m bench.limits --only start`` runs it with the others).

Each repetition makes a fresh one-component stack (as ``bench/suite.py`` does, through
the same :class:`bench.mqtt_side.TomatoMqtt`) and measures:

- ``tomato start`` → all components ready: the wall time of ``tomato start``, which
  returns once every component is registered; the baseline is ``python -c pass`` run
  in the same repetition (one interpreter start: the floor of any process start);
- 1 s job: ``ketchup submit`` → final file written: the file's mtime minus the time just
  before ``ketchup submit`` was spawned (the job has one 1 s task, 10 points); the
  baseline is the task's own duration, 1.0 s;
- the same job submitted through the client library (``Tomato.submit``) by a script that
  is connected already: the stack's own latency, without a CLI process's ~0.06 s.

With ``--tomato22`` (or when ``bench/.tomato22`` exists already) tomato 2.2's
``tomato start`` is measured in the same run as a reference row; creating that
environment (pip install tomato==2.2) is left to ``--tomato22``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench import harness
from bench.limits import Row, print_table
from bench.mqtt_side import BIN, TomatoMqtt
from bench.suite import payload, wait_done

__all__ = ["main", "rows"]

START_TARGET = 0.7  # s, tomato start -> all ready
FILE_TARGET = 1.05  # s, 1 s job: submit -> file
TASK = 1.0  # s, the job's one task


def _bare_start() -> float:
    return harness.run([sys.executable, "-c", "pass"]).check().wall


def _start(s: TomatoMqtt) -> tuple[float, float]:
    """``tomato start`` (as ``TomatoMqtt.start``): its wall time, and the CPU-s of every
    process of the start (the command, the supervisor and the services) until it returns."""
    cpu = harness.CpuWindow().start()
    call = harness.run(
        [str(BIN / "tomato"), "start", *s.dirs, "-p", str(s.port)], env=s.env, timeout=60
    ).check()
    return call.wall, cpu.stop() + call.cpu


def _client_job(s: TomatoMqtt, root: Path, pl: Path) -> float | None:
    """The same 1 s job submitted through the client library by a connected script (as a
    dashboard or an automation script submits): submit call → final file, in seconds.
    This is the stack's own latency, without a CLI process's start."""
    from tomato_mqtt.client.sync import Tomato

    with Tomato(f"mqtt://127.0.0.1:{s.port}", s.instance) as t:
        deadline = time.monotonic() + 10  # the last job's unlock_when_done: ready again
        while not t.call("status", {"what": "pipelines"})["pip-counter-1"].ready:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.01)
        cwd = os.getcwd()
        os.chdir(root)  # the output goes where the submit ran, as with ketchup
        try:
            t0 = time.time()
            job = t.submit(pl)
        finally:
            os.chdir(cwd)
        info = job.wait(timeout=60)
    path = s.result_path(job.id, root)
    if info.status != "c" or not path.exists():
        print(f"  the client's 1 s job ended {info.status!r}", file=sys.stderr)
        return None
    return path.stat().st_mtime - t0


def _one(root: Path) -> tuple[float, float, float | None, float | None]:
    """One stack: (start → ready, its CPU-s, submit → file, client submit → file) in s."""
    s = TomatoMqtt(root, 1)
    s.prepare()
    start, cpu = _start(s)
    try:
        s.load_ready("pip-counter-1", "bench")
        pl = payload(root / "job_1s.yml", TASK, 0.1)
        t0 = time.time()
        _, jobid = s.submit(pl, root)
        job = wait_done(s, [jobid], root, 60)[jobid]
        path = s.respath(job, root)
        if job.get("status") != "c" or not path.exists():
            print(f"  the 1 s job ended {job.get('status')!r}", file=sys.stderr)
            return start, cpu, None, None
        return start, cpu, path.stat().st_mtime - t0, _client_job(s, root, pl)
    finally:
        left = s.stop()
        if left:
            print(f"  left running after tomato stop (killed): {left}", file=sys.stderr)


def _tomato22_start(root: Path) -> float | None:
    from bench.tomato22 import Tomato22

    t = Tomato22(root, 1)
    t.prepare()
    try:
        return t.start()
    finally:
        t.stop()


def rows(reps: int, tomato22: bool | None = None) -> list[Row]:
    """The rows of this section, medians of ``reps`` fresh stacks."""
    from bench.tomato22 import VENV, ensure_venv

    harness.become_subreaper()  # the daemonised services stay ours to account and reap
    if tomato22 is None:
        tomato22 = (VENV / ".installed").exists()
    elif tomato22:
        ensure_venv(lambda m: print(f"  {m}", file=sys.stderr))
    starts: list[float] = []
    cpus: list[float] = []
    files: list[float] = []
    libs: list[float] = []
    bare: list[float] = []
    t22: list[float] = []
    base = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    try:
        for rep in range(reps):
            bare.append(_bare_start())
            start, cpu, file, lib = _one(base / f"mqtt-{rep}")
            starts.append(start)
            cpus.append(cpu)
            if file is not None:
                files.append(file)
            if lib is not None:
                libs.append(lib)
            if tomato22:
                v = _tomato22_start(base / f"t22-{rep}")
                if v is not None:
                    t22.append(v)
            print(
                f"  rep {rep + 1}/{reps}: start {start:.3f} s ({cpu:.2f} CPU-s), file "
                f"{'failed' if file is None else f'{file:.3f} s'}, client "
                f"{'failed' if lib is None else f'{lib:.3f} s'}, python -c pass "
                f"{bare[-1]:.3f} s" + (f", tomato 2.2 start {t22[-1]:.3f} s" if t22 else ""),
                file=sys.stderr,
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    med = statistics.median
    out = [
        Row(
            "`tomato start` → all components ready (1 component)",
            "s",
            starts,
            f"<= {START_TARGET} s",
            bool(starts) and med(starts) <= START_TARGET,
            baseline="`python -c pass`",
            baseline_values=bare,
        ),
        Row(
            "`tomato start`: CPU-s of all its processes until ready (2 cores: wall >= half)",
            "CPU-s",
            cpus,
            f"<= {2 * START_TARGET:g} CPU-s (what 0.7 s allows)",
            bool(cpus) and med(cpus) <= 2 * START_TARGET,
            fmt="{:.2f}",
        ),
        Row(
            "1 s job: `ketchup submit` → final file written",
            "s",
            files,
            f"<= {FILE_TARGET} s",
            len(files) == reps and med(files) <= FILE_TARGET,
            baseline="the task's duration",
            baseline_values=[TASK],
        ),
        Row(
            "1 s job: client library `submit()` → final file (no CLI process)",
            "s",
            libs,
            f"<= {FILE_TARGET} s",
            len(libs) == reps and med(libs) <= FILE_TARGET,
            baseline="the task's duration",
            baseline_values=[TASK],
        ),
    ]
    if tomato22:
        out.append(
            Row(
                "tomato 2.2: `tomato start` → all ready (1 component, reference)",
                "s",
                t22,
                "(reference)",
                True,
                baseline="tomato-mqtt, same run",
                baseline_values=starts,
            )
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__)
    ap.add_argument("--reps", type=int, default=3, help="fresh stacks (median)")
    ap.add_argument(
        "--tomato22", action="store_true", help="also measure tomato 2.2 (installs it once)"
    )
    a = ap.parse_args(argv)
    t0 = time.monotonic()
    rs = rows(a.reps, True if a.tomato22 else None)
    print_table(rs, f"start and finalisation, {a.reps} repetitions, {time.monotonic() - t0:.0f} s")
    return 0 if all(r.ok for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
