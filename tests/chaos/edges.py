"""Stalls at timing edges and faults combined (a fault hunt's scenarios, on the chaos
harness): cancels and snapshots while a service is stopped, stalls across a task's end
and a node's grace period, two nodes with one stopped.

Run one: ``python -m tests.chaos.edges NAME`` (prints the run's line and what was seen);
``tests/chaos/test_edges.py`` runs those that found a defect."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.chaos.harness import (
    Params,
    Run,
    chaos_stack,
    check,
    fault_job,
    signal_service,
)
from tests.stack import Stack, end_process

STOP, CONT = signal.SIGSTOP, signal.SIGCONT


def _later(delay: float, fn: Any) -> threading.Timer:
    t = threading.Timer(delay, fn)
    t.start()
    return t


@contextlib.contextmanager
def _stopped(st: Stack, *services: str) -> Iterator[list[int]]:
    """The services SIGSTOPped for the block, continued after it (last stopped first)."""
    pids = [signal_service(st, s, STOP) for s in services]
    try:
        yield pids
    finally:
        for pid in reversed(pids):
            os.kill(pid, CONT)


def _timed(st: Stack, *argv: str, timeout: float = 70) -> tuple[float, int, str]:
    """(seconds, exit status, output) of one CLI call."""
    t0 = time.monotonic()
    r = st.run(*argv, timeout=timeout)
    return round(time.monotonic() - t0, 1), r.returncode, r.stdout + r.stderr


def _ended(
    root: Path,
    name: str,
    p: Params,
    fault: Callable[[Stack, int], None],
    want: set[str],
    *,
    exact: bool = True,
    seen: dict[str, Any] | None = None,
    after: float = 40.0,
    from_run: bool = False,
    settle: float = 0.0,
) -> Run:
    """One job through ``fault`` on a fresh stack, checked: it must end in ``want``
    within ``after`` s of the fault (of the task's nominal end, ``from_run``)."""

    def deadline(t_run: float, t_fault: float) -> float:
        return t_run + p.duration + after if from_run else t_fault + after

    with chaos_stack(root) as st:
        run = fault_job(st, name, p, fault, deadline=deadline)
        time.sleep(settle)  # (late data merged meanwhile)
        run.seen.update(seen or {})
        return check(run, want, exact=exact)


def cancel_stalled_recorder(root: Path, p: Params) -> Run:
    """recorder stopped, then `ketchup cancel`, recorder continued 6 s later."""
    seen: dict[str, Any] = {}

    def fault(st: Stack, jobid: int) -> None:
        pid = signal_service(st, "recorder", STOP)
        _later(p.down, lambda: os.kill(pid, CONT))
        seen["cancel"] = _timed(st, "ketchup", "cancel", str(jobid), timeout=60)
        time.sleep(min(8.0, p.down - 1))
        seen["status_during"] = st.run("tomato", "status").stdout[-1500:]
        j = st.json("ketchup", "status", str(jobid))["data"][0]
        seen["job_during"] = (j.get("status"), j.get("reason"))

    return _ended(root, "cancel-stalled-recorder", p, fault, {"cd"}, seen=seen)


def cancel_stalled_scheduler(root: Path, p: Params) -> Run:
    """scheduler stopped; `ketchup cancel` (times out); scheduler continued 3 s later."""
    seen: dict[str, Any] = {}

    def fault(st: Stack, jobid: int) -> None:
        with _stopped(st, "scheduler"):
            seen["cancel"] = _timed(st, "ketchup", "cancel", str(jobid), timeout=60)

    return _ended(root, "cancel-stalled-scheduler", p, fault, {"cd", "c"}, seen=seen)


def snapshot_stalled_recorder(root: Path, p: Params) -> Run:
    """recorder stopped 8 s; `ketchup snapshot` during; job must end c with every point."""
    seen: dict[str, Any] = {}

    def fault(st: Stack, jobid: int) -> None:
        with _stopped(st, "recorder"):
            time.sleep(0.5)
            seen["snapshot"] = _timed(st, "ketchup", "snapshot", str(jobid), "--timeout", "10")
            time.sleep(max(0.0, 8 - seen["snapshot"][0]))
        seen["snapshot_after"] = _timed(st, "ketchup", "snapshot", str(jobid), timeout=60)

    return _ended(root, "snapshot-stalled-recorder", p, fault, {"c"}, seen=seen, from_run=True)


def snapshot_killed_recorder(root: Path, p: Params) -> Run:
    """The recorder stopped with `ketchup snapshot`'s request in hand, then killed: the
    supervisor restarts it and the request goes to it again; the snapshot is written."""
    seen: dict[str, Any] = {}

    def fault(st: Stack, jobid: int) -> None:
        pid = signal_service(st, "recorder", STOP)
        killer = _later(0.7, lambda: os.kill(pid, signal.SIGKILL))
        seen["snapshot"] = _timed(st, "ketchup", "snapshot", str(jobid), "--timeout", "20")
        killer.join()

    return _ended(root, "snapshot-killed-recorder", p, fault, {"c"}, seen=seen, from_run=True)


def snapshot_stalled_node(root: Path, p: Params) -> Run:
    seen: dict[str, Any] = {}

    def fault(st: Stack, jobid: int) -> None:
        with _stopped(st, "node"):
            seen["snapshot"] = _timed(st, "ketchup", "snapshot", str(jobid), "--timeout", "10")
            time.sleep(max(0.0, p.down - seen["snapshot"][0]))

    return _ended(root, "snapshot-stalled-node", p, fault, {"c", "ce"}, seen=seen, from_run=True)


def recorder_long_across_end(root: Path, p: Params) -> Run:
    """recorder stopped 1 s before the task's end for 25 s (past grace 10 s)."""
    seen: dict[str, Any] = {}

    def fault(st: Stack, jobid: int) -> None:
        with _stopped(st, "recorder"):
            for k in range(5):
                time.sleep(5)
                j = st.json("ketchup", "status", str(jobid))
                d = (j.get("data") or [{}])[0]
                seen[f"t+{5 * (k + 1)}"] = (d.get("status"), d.get("reason"))
            seen["tomato_status"] = st.run("tomato", "status").stdout[-1200:]

    return _ended(root, "recorder-long-across-end", p, fault, {"c"}, seen=seen, after=60)


def node_killed_scheduler_stopped_long(root: Path, p: Params) -> Run:
    """scheduler stopped; node killed 1 s later; scheduler continued 15 s later (past grace)."""

    def fault(st: Stack, jobid: int) -> None:
        with _stopped(st, "scheduler"):
            time.sleep(1)
            signal_service(st, "node", signal.SIGKILL)
            time.sleep(15)

    return _ended(root, "node-killed-scheduler-stopped", p, fault, {"ce"}, exact=False, after=60)


def node_stopped_scheduler_stopped_long(root: Path, p: Params) -> Run:
    """node and scheduler stopped together for 15 s, both continued: no lost seen by anyone."""

    def fault(st: Stack, jobid: int) -> None:
        with _stopped(st, "scheduler", "node"):
            time.sleep(15)

    return _ended(root, "node+scheduler-stopped", p, fault, {"c", "ce"}, after=60)


def node_threshold(down: float) -> Callable[[Path, Params], Run]:
    def scenario(root: Path, p: Params) -> Run:
        def fault(st: Stack, jobid: int) -> None:
            with _stopped(st, "node"):
                time.sleep(down)

        return _ended(
            root, f"node-stall-{down}", p, fault, {"c", "ce"}, after=p.end_bound, from_run=True
        )

    return scenario


def node_past_grace_then_back(root: Path, p: Params) -> Run:
    """node stopped 14 s (past lost_after+grace 12 s), continued; job ce, file vs count."""
    seen: dict[str, Any] = {}

    def fault(st: Stack, jobid: int) -> None:
        with _stopped(st, "node"):
            time.sleep(14)
        time.sleep(8)
        seen["after"] = st.json("ketchup", "status", str(jobid))["data"][0]
        seen["tomato_status"] = st.run("tomato", "status").stdout[-1500:]

    return _ended(root, "node-past-grace", p, fault, {"ce"}, exact=False, seen=seen, after=60)


def scheduler_stalled_at_end(root: Path, p: Params) -> Run:
    """scheduler stopped 0.2 s before the task's end for 15 s."""

    def fault(st: Stack, jobid: int) -> None:
        with _stopped(st, "scheduler"):
            time.sleep(15)

    return _ended(root, "scheduler-stalled-at-end", p, fault, {"c"}, after=60)


def broker_stalled_during_cancel(root: Path, p: Params) -> Run:
    seen: dict[str, Any] = {}

    def fault(st: Stack, jobid: int) -> None:
        import subprocess

        from tests.stack import BIN, cli_env

        cmd = [str(BIN / "ketchup"), "cancel", str(jobid), "-p", str(st.port), "-A", str(st.appdir)]
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=cli_env(st.env, "ketchup"),
            cwd=st.workdir,
        )
        time.sleep(0.15)
        with _stopped(st, "broker"):
            time.sleep(6)
        out, _ = proc.communicate(timeout=60)
        seen["cancel"] = (proc.returncode, out)

    return _ended(root, "broker-stalled-during-cancel", p, fault, {"cd"}, seen=seen)


SC = {
    "cancel-stalled-recorder": (cancel_stalled_recorder, Params(duration=10, down=6)),
    "cancel-stalled-recorder-30": (cancel_stalled_recorder, Params(duration=10, down=30)),
    "cancel-stalled-scheduler": (cancel_stalled_scheduler, Params(duration=10)),
    "snapshot-stalled-recorder": (snapshot_stalled_recorder, Params(duration=20)),
    "snapshot-stalled-node": (snapshot_stalled_node, Params(duration=10, down=4)),
    "recorder-long-across-end": (recorder_long_across_end, Params(duration=5, fault_at=4)),
    "node-killed-scheduler-stopped": (node_killed_scheduler_stopped_long, Params(duration=10)),
    "node+scheduler-stopped": (node_stopped_scheduler_stopped_long, Params(duration=10)),
    "node-stall-1.9": (node_threshold(1.9), Params(duration=8)),
    "node-stall-2.2": (node_threshold(2.2), Params(duration=8)),
    "node-stall-2.6": (node_threshold(2.6), Params(duration=8)),
    "node-past-grace": (node_past_grace_then_back, Params(duration=30)),
    "scheduler-stalled-at-end": (scheduler_stalled_at_end, Params(duration=5, fault_at=4.8)),
    "broker-stalled-during-cancel": (broker_stalled_during_cancel, Params(duration=10)),
}


TWO_NODES = {
    "devices": [
        {
            "name": "dev-a",
            "driver": "example_counter",
            "address": "a-addr",
            "channels": ["1"],
            "pollrate": 1,
        },
        {
            "name": "dev-b",
            "driver": "example_counter",
            "address": "b-addr",
            "channels": ["1"],
            "pollrate": 1,
            "node": "spare",
        },
    ],
    "pipelines": [
        {"name": f"pip-{x}", "devices": [{"role": "counter", "device": f"dev-{x}", "channel": "1"}]}
        for x in ("a", "b")
    ],
}


def two_nodes_one_stopped(stop_s: float) -> Callable[[Path, Params], Run]:
    def scenario(root: Path, p: Params) -> Run:
        import subprocess

        import yaml

        from tests.chaos.harness import measure, payload, wait_end, wait_running
        from tests.stack import BIN

        dev = root / "devices-two-nodes.yml"
        root.mkdir(parents=True, exist_ok=True)
        dev.write_text(yaml.safe_dump(TWO_NODES))
        seen: dict[str, Any] = {}
        with chaos_stack(root, dev) as st:
            argv = [
                str(BIN / "tomato"),
                "node",
                "--name",
                "spare",
                "-p",
                str(st.port),
                "-A",
                str(st.appdir),
                "-D",
                str(root / "spare-data"),
            ]
            spare = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True
            )
            try:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    nodes = st.json("tomato", "status", "nodes").get("data") or {}
                    if (nodes.get("spare") or {}).get("state") == "online":
                        break
                    time.sleep(0.5)
                seen["nodes"] = {k: v.get("state") for k, v in nodes.items()}
                st.load_ready("pip-a", "sa")
                st.load_ready("pip-b", "sb")
                ja = st.submit(payload(st, "sa", p))
                jb = st.submit(payload(st, "sb", p))
                t_run = max(wait_running(st, ja), wait_running(st, jb))
                time.sleep(p.fault_at)
                t_fault = time.monotonic()
                os.kill(spare.pid, STOP)
                try:
                    time.sleep(stop_s / 2)
                    seen["status_mid"] = st.run("tomato", "status").stdout[-800:]
                    jm = st.json("ketchup", "status", str(jb))["data"][0]
                    seen["b_mid"] = (jm.get("status"), jm.get("reason"))
                    time.sleep(stop_s / 2)
                finally:
                    os.kill(spare.pid, CONT)
                end = t_run + p.duration + p.end_bound + stop_s
                job_a, ended_a = wait_end(st, ja, end)
                job_b, ended_b = wait_end(st, jb, end)
                ra = check(measure("two-nodes:a", p, job_a, ended_a, t_fault), {"c"})
                rb = check(measure("two-nodes:b", p, job_b, ended_b, t_fault), {"c", "ce"})
                time.sleep(3)
                # the pipeline B again: a next job must run on the spare node
                st.run("tomato", "pipeline", "eject", "pip-b")
                st.load_ready("pip-b", "sb2")
                q = Params(hz=p.hz, duration=2.0)
                jc = st.submit(payload(st, "sb2", q))
                job_c, ended_c = wait_end(st, jc, time.monotonic() + 40)
                rc = check(measure("two-nodes:b-next", q, job_c, ended_c, t_fault), {"c"})
                seen["a"] = (ra.line(), ra.reason)
                seen["b"] = (rb.line(), rb.reason)
                seen["b_next"] = (rc.line(), rc.reason)
                rb.problems += [f"job A: {x}" for x in ra.problems]
                rb.problems += [f"next job on B: {x}" for x in rc.problems]
                rb.seen.update(seen)
                return rb
            finally:
                end_process(spare)

    return scenario


SC["snapshot-killed-recorder"] = (snapshot_killed_recorder, Params(duration=20))
SC["two-nodes-stop-15"] = (two_nodes_one_stopped(15.0), Params(duration=10))
SC["two-nodes-stop-5"] = (two_nodes_one_stopped(5.0), Params(duration=10))


def scheduler_stopped_at_grace_end(root: Path, p: Params) -> Run:
    """node stopped; the scheduler stopped 9 s later (1 s before lost_after + grace ends)
    for 6 s; the node continued 8 s after the scheduler."""
    seen: dict[str, Any] = {}

    def fault(st: Stack, jobid: int) -> None:
        with _stopped(st, "node"):
            time.sleep(9)
            with _stopped(st, "scheduler"):
                time.sleep(6)
            t0 = time.monotonic()
            while time.monotonic() - t0 < 8:
                j = st.json("ketchup", "status", str(jobid))["data"][0]
                if j.get("status") in ("c", "ce", "cd") and "ended_after" not in seen:
                    seen["ended_after"] = round(time.monotonic() - t0, 1)
                    seen["reason_then"] = j.get("reason")
                time.sleep(0.5)

    name = "scheduler-stopped-at-grace-end"
    return _ended(root, name, p, fault, {"ce"}, exact=False, seen=seen, after=60, settle=3)


def recorder_stopped_cancel_node_killed(root: Path, p: Params) -> Run:
    """recorder stopped; `ketchup cancel`; node killed 0.5 s later; recorder continued 5 s
    after that."""
    seen: dict[str, Any] = {}

    def fault(st: Stack, jobid: int) -> None:
        with _stopped(st, "recorder"):
            seen["cancel"] = _timed(st, "ketchup", "cancel", str(jobid), timeout=60)
            time.sleep(0.5)
            signal_service(st, "node", signal.SIGKILL)
            time.sleep(5)

    name = "recorder-stopped+cancel+node-killed"
    return _ended(root, name, p, fault, {"cd"}, seen=seen, settle=3)


SC["scheduler-stopped-at-grace-end"] = (scheduler_stopped_at_grace_end, Params(duration=40))
SC["recorder-stopped+cancel+node-killed"] = (
    recorder_stopped_cancel_node_killed,
    Params(duration=10),
)


if __name__ == "__main__":
    for name in sys.argv[1:]:
        fn, p = SC[name]
        root = Path(tempfile.mkdtemp(prefix=f"tomato-edges-{name}."))
        r = fn(root, p)
        r.scenario = name
        print(r.line(), flush=True)
        print("  reason:", r.reason)
        print("  per_task:", r.per_task, "max_gap", round(r.max_gap, 3), "bursts", r.bursts)
        for k, v in r.seen.items():
            print(f"  {k}: {v}")
