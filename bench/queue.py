"""Issue 15, deep queues: ``ketchup status`` must not grow with the queue.

``python -m bench.queue [--reps N] [--depth N]`` starts a real stack (``tomato start``,
embedded broker on a free port, 2 counter components), and times whole-process CLI
calls (median of ``reps``):

1. at 1 queued job (submitted through the client library ``tomato_mqtt.client``), with
   ``python -c pass`` of the same interpreter as the floor;
2. then the stack is stopped, the scheduler's own store (``state.sqlite``, through
   :class:`StateStore` for the schema) gets ``depth - LIVE`` more queued jobs in one
   transaction — a lab whose scheduler restarts with a deep queue — and the stack is
   started again; the last ``LIVE`` jobs are submitted through the client library while
   it runs (their latency is a row: a submit must not grow with the queue either);
3. at ``depth`` queued jobs: ``ketchup status`` (the summary), its output size, and
   ``ketchup status -y`` (a page of the listing: the newest 500 jobs).

Every job asks for a sample no pipeline holds, so the whole queue stays queued (``qw``,
with its reason). Filling through ``ketchup submit`` would take minutes of process
starts and is not what is measured here.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import harness
from bench.limits import Row, print_table
from bench.mqtt_side import BIN, TomatoMqtt

__all__ = ["main", "rows"]

DEPTH = 10_000
LIVE = 50  # of the deep queue, submitted through the client library while it runs
TARGET = 0.2  # s, issue 15
PAGE = 500  # wire.commands.JOB_PAGE_MAX
PAYLOAD: dict[str, Any] = {
    "version": "0.2",
    "sample": {"name": "bench-queue-never-loaded"},
    "method": [{"device": "counter", "technique": "count", "time": 1.0, "delay": 0.1}],
}


def _timed(cmd: list[str], reps: int, cwd: Path) -> tuple[list[float], harness.Call]:
    calls = [harness.run(cmd, cwd=cwd).check() for _ in range(reps)]
    return [c.wall for c in calls], calls[-1]


def _submit(stack: TomatoMqtt, n: int) -> list[float]:
    """``n`` submits through the client library, one after the other: s each."""
    from tomato_mqtt.client import Tomato

    out = []
    with Tomato.from_settings(stack.root, timeout=30) as t:
        for _ in range(n):
            t0 = time.perf_counter()
            t.submit(PAYLOAD, jobname="deep")
            out.append(time.perf_counter() - t0)
    return out


def _fill(db: Path, n: int, submit_dir: Path) -> None:
    """``n`` more queued jobs, stored as the submits before them were (the same
    normalised payload), in one transaction (one fsync)."""
    from tomato_mqtt.model.jobs import utcnow
    from tomato_mqtt.services.scheduler.store import StateStore

    StateStore(db).close()  # the schema, as the scheduler makes it (and migrates it)
    con = sqlite3.connect(db)
    with con:
        # status and reason as the scheduler left the last submit (qw: waits for its
        # sample), so the restarted scheduler finds the queue as it had stored it
        payload, status, reason, base = con.execute(
            "SELECT payload, status, reason, MAX(id) FROM jobs"
        ).fetchone()
        con.executemany(
            "INSERT INTO jobs (id, jobname, payload, status, reason, submitted_at, submit_dir, "
            "respath) VALUES (?, 'deep', ?, ?, ?, ?, ?, ?)",
            (
                (
                    i,
                    payload,
                    status,
                    reason,
                    utcnow(),
                    str(submit_dir),
                    str(submit_dir / f"results.{i}.nc"),
                )
                for i in range(base + 1, base + n + 1)
            ),
        )
    con.close()


def _settled(stack: TomatoMqtt, depth: int, timeout: float = 180) -> dict[str, int]:
    """Until the scheduler has matched the whole queue (no job left in ``q``), then
    until it has published what its pass changed (it answers in a few ms again): the
    calls measured must not wait on that."""
    from tomato_mqtt.client import Tomato

    deadline = time.monotonic() + timeout
    counts: dict[str, int] = {}
    quick = 0
    with Tomato.from_settings(stack.root, timeout=30) as t:
        while quick < 3:
            if time.monotonic() > deadline:
                raise RuntimeError(f"queue not settled after {timeout} s: {counts}")
            t0 = time.perf_counter()
            s = t.call("job_status", {"summary": True})
            took = time.perf_counter() - t0
            counts = {k: v.count for k, v in s.statuses.items()}
            if s.total >= depth and counts.get("q", 0) == 0:
                quick = quick + 1 if took < 0.05 else 0
            else:
                time.sleep(0.5)
    return counts


def rows(reps: int, depth: int = DEPTH) -> list[Row]:
    harness.become_subreaper()
    root = Path(tempfile.mkdtemp(prefix="bench-queue-"))
    stack = TomatoMqtt(root / "stack", 2)
    stack.prepare()
    port_args = ["-p", str(stack.port), "-A", str(stack.root)]
    status = [str(BIN / "ketchup"), "status", *port_args]
    bare, _ = _timed([sys.executable, "-c", "pass"], reps, root)
    try:
        stack.start()
        shallow_submit = _submit(stack, 1)
        _settled(stack, 1)
        at1, one = _timed(status, reps, root)
        shallow_submit += _submit(stack, max(0, reps - 1))
        stack.stop()
        _fill(stack.root / "state.sqlite", depth - reps - LIVE, root)
        t0 = time.monotonic()
        stack.start(timeout=120)
        _settled(stack, depth - LIVE)
        settle = time.monotonic() - t0
        deep_submit = _submit(stack, LIVE)
        counts = _settled(stack, depth)
        deep, summary = _timed(status, reps, root)
        page, listing = _timed([*status, "-y"], reps, root)
    finally:
        stack.stop()
    print(
        f"queue: {counts}; {depth - LIVE} matched and announced {settle:.1f} s after "
        f"tomato start; 1-job output "
        f"{len(one.out)} B; summary at {depth}:\n{summary.out}",
        file=sys.stderr,
    )
    kb = len(summary.out.encode()) / 1000
    return [
        Row(
            f"ketchup status, {depth:,} queued (whole process)",
            "s",
            deep,
            f"≤ {TARGET} s",
            statistics.median(deep) <= TARGET,
            "same call at 1 job",
            at1,
        ),
        Row(
            "ketchup status, 1 job (whole process)",
            "s",
            at1,
            "reference",
            True,
            "python -c pass",
            bare,
        ),
        Row(
            f"ketchup status output, {depth:,} queued",
            "kB",
            [kb],
            "bounded (≤ 10 kB)",
            kb <= 10,
            "1 job",
            [len(one.out.encode()) / 1000],
            fmt="{:.1f}",
        ),
        Row(
            f"ketchup status -y, {depth:,} queued (the newest {PAGE} of them)",
            "s",
            page,
            f"paged (≤ {PAGE} jobs a reply)",
            0 < listing.out.count("\n- ") <= PAGE,
            "summary at the same depth",
            deep,
        ),
        Row(
            f"submit through the client, at {depth - LIVE:,}+ queued",
            "ms",
            [s * 1000 for s in deep_submit],
            "does not grow (≤ 2x shallow)",
            statistics.median(deep_submit) <= 2 * statistics.median(shallow_submit),
            "at ≤ 3 queued",
            [s * 1000 for s in shallow_submit],
            fmt="{:.1f}",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.queue", description=__doc__)
    ap.add_argument("--reps", type=int, default=3, help="repetitions per figure (median)")
    ap.add_argument("--depth", type=int, default=DEPTH, help="queued jobs")
    a = ap.parse_args(argv)
    out = rows(a.reps, a.depth)
    print_table(out, f"issue 15 — deep queues, {a.reps} repetitions")
    return 0 if all(r.ok for r in out) else 1


if __name__ == "__main__":
    sys.exit(main())
