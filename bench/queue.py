"""Issue 15, deep queues: ``ketchup status`` must not grow with the queue.

``python -m bench.queue [--reps N] [--depth N]`` starts a real stack (``tomato start``,
embedded broker on a free port, 2 counter components), and times whole-process CLI
calls (median of ``reps``):

1. the deep stack: ``reps`` jobs submitted through the client library
   (``tomato_mqtt.client``, timed: the shallow submit), stopped; its scheduler's own
   store (``state.sqlite``, schema by :class:`StateStore`) gets ``depth - reps - LIVE``
   more queued jobs in one transaction (a lab whose scheduler restarts with a deep
   queue); started again; the last ``LIVE`` jobs are submitted through the client
   library while it runs;
2. the 1-job stack: one job submitted through the client library;
3. alternating, ``reps`` times: ``python -c pass`` (the floor), ``ketchup status`` at 1
   job, ``ketchup status`` at ``depth`` (the summary; its size is a row too), and
   ``ketchup status -y`` at ``depth`` (a page of the listing: the newest 500 jobs), and
   ``RTT`` summary requests through the client library on each stack (the request
   alone, no process start); then ``SUBMITS`` submits on each stack, alternating (a
   submit must not grow with the queue either).

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
RTT = 10  # summary round trips per stack and repetition
SUBMITS = 20  # timed submits per stack, alternating
PAYLOAD: dict[str, Any] = {
    "version": "0.2",
    "sample": {"name": "bench-queue-never-loaded"},
    "method": [{"device": "counter", "technique": "count", "time": 1.0, "delay": 0.1}],
}


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


def _timed_submit(client: Any) -> float:
    """One submit through the client library, in s."""
    t0 = time.perf_counter()
    client.submit(PAYLOAD, jobname="deep")
    return time.perf_counter() - t0


def _rtt(client: Any) -> float:
    """One summary request through the client library, in ms."""
    t0 = time.perf_counter()
    client.call("job_status", {"summary": True})
    return (time.perf_counter() - t0) * 1000


def _stop_only(stack: TomatoMqtt) -> None:
    """``tomato stop`` of one stack (TomatoMqtt.stop also ends every other descendant)."""
    harness.run(
        [str(BIN / "tomato"), "stop", *stack.dirs, "-p", str(stack.port), "--timeout", "15"],
        timeout=30,
    )


def rows(reps: int, depth: int = DEPTH) -> list[Row]:
    """Two stacks run side by side, one with 1 job and one with ``depth`` queued, and the
    calls alternate between them (bare, 1 job, deep, deep -y; ``reps`` times): a busy
    shared machine slows both alike, so the ratio holds even when the seconds do not."""
    harness.become_subreaper()
    root = Path(tempfile.mkdtemp(prefix="bench-queue-"))
    one_stack = TomatoMqtt(root / "one", 2)
    deep_stack = TomatoMqtt(root / "deep", 2)
    for st in (one_stack, deep_stack):
        st.prepare()

    def status(st: TomatoMqtt, *extra: str) -> list[str]:
        return [str(BIN / "ketchup"), "status", "-p", str(st.port), "-A", str(st.root), *extra]

    bare: list[float] = []
    at1: list[float] = []
    deep: list[float] = []
    page: list[float] = []
    rtt1: list[float] = []
    rtt_deep: list[float] = []
    try:
        deep_stack.start()
        _submit(deep_stack, reps)
        deep_stack.stop()
        _fill(deep_stack.root / "state.sqlite", depth - reps - LIVE, root)
        t0 = time.monotonic()
        deep_stack.start(timeout=120)
        _settled(deep_stack, depth - LIVE)
        settle = time.monotonic() - t0
        _submit(deep_stack, LIVE)
        counts = _settled(deep_stack, depth)
        one_stack.start()
        _submit(one_stack, 1)
        _settled(one_stack, 1)
        from tomato_mqtt.client import Tomato

        with (
            Tomato.from_settings(one_stack.root, timeout=30) as c1,
            Tomato.from_settings(deep_stack.root, timeout=30) as c2,
        ):
            for _ in range(reps):
                bare.append(harness.run([sys.executable, "-c", "pass"], cwd=root).check().wall)
                one = harness.run(status(one_stack), cwd=root).check()
                summary = harness.run(status(deep_stack), cwd=root).check()
                listing = harness.run(status(deep_stack, "-y"), cwd=root).check()
                at1.append(one.wall)
                deep.append(summary.wall)
                page.append(listing.wall)
                # the request alone (no process start): what the queue could make grow
                for _ in range(RTT):
                    rtt1.append(_rtt(c1))
                    rtt_deep.append(_rtt(c2))
            # submits, alternating too (after the status calls: the 1-job stack then
            # holds a few more jobs)
            shallow_submit: list[float] = []
            deep_submit: list[float] = []
            for _ in range(SUBMITS):
                shallow_submit.append(_timed_submit(c1))
                deep_submit.append(_timed_submit(c2))
    finally:
        _stop_only(deep_stack)
        one_stack.stop()
    print(
        f"queue: {counts}; {depth - LIVE} matched and announced {settle:.1f} s after "
        f"tomato start; 1-job output {len(one.out)} B; summary at {depth}:\n{summary.out}",
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
            f"summary request alone (client library), {depth:,} queued",
            "ms",
            rtt_deep,
            "does not grow (≤ 1.5x at 1 job)",
            statistics.median(rtt_deep) <= 1.5 * statistics.median(rtt1),
            "at 1 job",
            rtt1,
            fmt="{:.1f}",
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
            f"submit through the client, at {depth:,}+ queued",
            "ms",
            [s * 1000 for s in deep_submit],
            "does not grow (≤ 2x shallow)",
            statistics.median(deep_submit) <= 2 * statistics.median(shallow_submit),
            "at ≤ 20 queued",
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
