"""Stalls at timing edges and faults combined (a fault hunt's scenarios, on the chaos
harness): cancels and snapshots while a service is stopped, stalls across a task's end
and a node's grace period, two nodes with one stopped.

Run one: ``python -m tests.chaos.edges NAME`` (prints the run's line and what was seen);
``tests/chaos/test_edges.py`` runs those that found a defect."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
import time
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
from tests.stack import Stack

STOP, CONT = signal.SIGSTOP, signal.SIGCONT


def _later(delay: float, fn: Any) -> threading.Timer:
    t = threading.Timer(delay, fn)
    t.start()
    return t


def cancel_stalled_recorder(root: Path, p: Params) -> Run:
    """recorder stopped, then `ketchup cancel`, recorder continued 6 s later."""
    seen: dict[str, Any] = {}

    def fault(st: Stack, jobid: int) -> None:
        pid = signal_service(st, "recorder", STOP)
        _later(p.down, lambda: os.kill(pid, CONT))
        seen["t_fault"] = time.monotonic()
        t0 = time.monotonic()
        r = st.run("ketchup", "cancel", str(jobid), timeout=60)
        seen["cancel"] = (round(time.monotonic() - t0, 1), r.returncode, r.stdout + r.stderr)
        time.sleep(min(8.0, p.down - 1))
        seen["status_during"] = st.run("tomato", "status").stdout[-1500:]
        j = st.json("ketchup", "status", str(jobid))["data"][0]
        seen["job_during"] = (j.get("status"), j.get("reason"))

    with chaos_stack(root) as st:
        run = fault_job(st, "cancel-stalled-recorder", p, fault, deadline=lambda _r, tf: tf + 40)
        run.seen.update(seen)
        return check(run, {"cd"}, exact=True)


def cancel_stalled_scheduler(root: Path, p: Params) -> Run:
    """scheduler stopped; `ketchup cancel` (times out); scheduler continued 3 s later."""
    seen: dict[str, Any] = {}

    def fault(st: Stack, jobid: int) -> None:
        pid = signal_service(st, "scheduler", STOP)
        try:
            t0 = time.monotonic()
            r = st.run("ketchup", "cancel", str(jobid), timeout=60)
            seen["cancel"] = (round(time.monotonic() - t0, 1), r.returncode, r.stdout + r.stderr)
        finally:
            os.kill(pid, CONT)

    with chaos_stack(root) as st:
        run = fault_job(st, "cancel-stalled-scheduler", p, fault, deadline=lambda _r, tf: tf + 40)
        run.seen.update(seen)
        return check(run, {"cd", "c"}, exact=True)


def snapshot_stalled_recorder(root: Path, p: Params) -> Run:
    """recorder stopped 8 s; `ketchup snapshot` during; job must end c with every point."""
    seen: dict[str, Any] = {}

    def fault(st: Stack, jobid: int) -> None:
        pid = signal_service(st, "recorder", STOP)
        try:
            time.sleep(0.5)
            t0 = time.monotonic()
            r = st.run("ketchup", "snapshot", str(jobid), "--timeout", "10", timeout=70)
            seen["snapshot"] = (round(time.monotonic() - t0, 1), r.returncode, r.stdout + r.stderr)
            time.sleep(max(0, 8 - (time.monotonic() - t0)))
        finally:
            os.kill(pid, CONT)
        t0 = time.monotonic()
        r = st.run("ketchup", "snapshot", str(jobid), timeout=60)
        seen["snapshot_after"] = (
            round(time.monotonic() - t0, 1),
            r.returncode,
            r.stdout + r.stderr,
        )

    with chaos_stack(root) as st:
        run = fault_job(
            st, "snapshot-stalled-recorder", p, fault, deadline=lambda tr, _f: tr + p.duration + 40
        )
        run.seen.update(seen)
        return check(run, {"c"}, exact=True)


def snapshot_killed_recorder(root: Path, p: Params) -> Run:
    """The recorder stopped with `ketchup snapshot`'s request in hand, then killed: the
    supervisor restarts it and the request goes to it again; the snapshot is written."""
    seen: dict[str, Any] = {}

    def fault(st: Stack, jobid: int) -> None:
        pid = signal_service(st, "recorder", STOP)
        killer = _later(0.7, lambda: os.kill(pid, signal.SIGKILL))
        t0 = time.monotonic()
        r = st.run("ketchup", "snapshot", str(jobid), "--timeout", "20", timeout=70)
        killer.join()
        seen["snapshot"] = (round(time.monotonic() - t0, 1), r.returncode, r.stdout + r.stderr)

    with chaos_stack(root) as st:
        run = fault_job(
            st, "snapshot-killed-recorder", p, fault, deadline=lambda tr, _f: tr + p.duration + 40
        )
        run.seen.update(seen)
        return check(run, {"c"}, exact=True)


def snapshot_stalled_node(root: Path, p: Params) -> Run:
    seen: dict[str, Any] = {}

    def fault(st: Stack, jobid: int) -> None:
        pid = signal_service(st, "node", STOP)
        try:
            t0 = time.monotonic()
            r = st.run("ketchup", "snapshot", str(jobid), "--timeout", "10", timeout=70)
            seen["snapshot"] = (round(time.monotonic() - t0, 1), r.returncode, r.stdout + r.stderr)
            time.sleep(max(0, p.down - (time.monotonic() - t0)))
        finally:
            os.kill(pid, CONT)

    with chaos_stack(root) as st:
        run = fault_job(
            st, "snapshot-stalled-node", p, fault, deadline=lambda tr, _f: tr + p.duration + 40
        )
        run.seen.update(seen)
        return check(run, {"c", "ce"}, exact=True)


def recorder_long_across_end(root: Path, p: Params) -> Run:
    """recorder stopped 1 s before the task's end for 25 s (past grace 10 s)."""
    seen: dict[str, Any] = {}

    def fault(st: Stack, jobid: int) -> None:
        pid = signal_service(st, "recorder", STOP)
        try:
            for k in range(5):
                time.sleep(5)
                j = st.json("ketchup", "status", str(jobid))
                d = (j.get("data") or [{}])[0]
                seen[f"t+{5 * (k + 1)}"] = (d.get("status"), d.get("reason"))
            seen["tomato_status"] = st.run("tomato", "status").stdout[-1200:]
        finally:
            os.kill(pid, CONT)

    with chaos_stack(root) as st:
        run = fault_job(st, "recorder-long-across-end", p, fault, deadline=lambda _r, tf: tf + 60)
        run.seen.update(seen)
        return check(run, {"c"}, exact=True)


def node_killed_scheduler_stopped_long(root: Path, p: Params) -> Run:
    """scheduler stopped; node killed 1 s later; scheduler continued 15 s later (past grace)."""

    def fault(st: Stack, jobid: int) -> None:
        spid = signal_service(st, "scheduler", STOP)
        try:
            time.sleep(1)
            signal_service(st, "node", signal.SIGKILL)
            time.sleep(15)
        finally:
            os.kill(spid, CONT)

    with chaos_stack(root) as st:
        run = fault_job(
            st, "node-killed-scheduler-stopped", p, fault, deadline=lambda _r, tf: tf + 60
        )
        return check(run, {"ce"}, exact=False)


def node_stopped_scheduler_stopped_long(root: Path, p: Params) -> Run:
    """node and scheduler stopped together for 15 s, both continued: no lost seen by anyone."""

    def fault(st: Stack, jobid: int) -> None:
        spid = signal_service(st, "scheduler", STOP)
        npid = signal_service(st, "node", STOP)
        try:
            time.sleep(15)
        finally:
            os.kill(npid, CONT)
            os.kill(spid, CONT)

    with chaos_stack(root) as st:
        run = fault_job(st, "node+scheduler-stopped", p, fault, deadline=lambda _r, tf: tf + 60)
        return check(run, {"c", "ce"}, exact=True)


def node_threshold(down: float):
    def scenario(root: Path, p: Params) -> Run:
        def fault(st: Stack, jobid: int) -> None:
            pid = signal_service(st, "node", STOP)
            try:
                time.sleep(down)
            finally:
                os.kill(pid, CONT)

        with chaos_stack(root) as st:
            run = fault_job(st, f"node-stall-{down}", p, fault)
            return check(run, {"c", "ce"}, exact=True)

    return scenario


def node_past_grace_then_back(root: Path, p: Params) -> Run:
    """node stopped 14 s (past lost_after+grace 12 s), continued; job ce, file vs count."""
    seen: dict[str, Any] = {}

    def fault(st: Stack, jobid: int) -> None:
        pid = signal_service(st, "node", STOP)
        try:
            time.sleep(14)
        finally:
            os.kill(pid, CONT)
        time.sleep(8)
        seen["after"] = st.json("ketchup", "status", str(jobid))["data"][0]
        seen["tomato_status"] = st.run("tomato", "status").stdout[-1500:]

    with chaos_stack(root) as st:
        run = fault_job(st, "node-past-grace", p, fault, deadline=lambda _r, tf: tf + 60)
        run.seen.update(seen)
        return check(run, {"ce"}, exact=False)


def scheduler_stalled_at_end(root: Path, p: Params) -> Run:
    """scheduler stopped 0.2 s before the task's end for 15 s."""

    def fault(st: Stack, jobid: int) -> None:
        pid = signal_service(st, "scheduler", STOP)
        try:
            time.sleep(15)
        finally:
            os.kill(pid, CONT)

    with chaos_stack(root) as st:
        run = fault_job(st, "scheduler-stalled-at-end", p, fault, deadline=lambda _r, tf: tf + 60)
        return check(run, {"c"}, exact=True)


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
        pid = signal_service(st, "broker", STOP)
        try:
            time.sleep(6)
        finally:
            os.kill(pid, CONT)
        out, _ = proc.communicate(timeout=60)
        seen["cancel"] = (proc.returncode, out)

    with chaos_stack(root) as st:
        run = fault_job(
            st, "broker-stalled-during-cancel", p, fault, deadline=lambda _r, tf: tf + 40
        )
        run.seen.update(seen)
        return check(run, {"cd"}, exact=True)


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


def two_nodes_one_stopped(stop_s: float):
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
                spare.terminate()
                try:
                    spare.wait(10)
                except subprocess.TimeoutExpired:
                    spare.kill()

    return scenario


SC["snapshot-killed-recorder"] = (snapshot_killed_recorder, Params(duration=20))
SC["two-nodes-stop-15"] = (two_nodes_one_stopped(15.0), Params(duration=10))
SC["two-nodes-stop-5"] = (two_nodes_one_stopped(5.0), Params(duration=10))


def scheduler_stopped_at_grace_end(root: Path, p: Params) -> Run:
    """node stopped; the scheduler stopped 9 s later (1 s before lost_after + grace ends)
    for 6 s; the node continued 8 s after the scheduler."""
    seen: dict[str, Any] = {}

    def fault(st: Stack, jobid: int) -> None:
        npid = signal_service(st, "node", STOP)
        try:
            time.sleep(9)
            spid = signal_service(st, "scheduler", STOP)
            try:
                time.sleep(6)
            finally:
                os.kill(spid, CONT)
            t0 = time.monotonic()
            while time.monotonic() - t0 < 8:
                j = st.json("ketchup", "status", str(jobid))["data"][0]
                if j.get("status") in ("c", "ce", "cd") and "ended_after" not in seen:
                    seen["ended_after"] = round(time.monotonic() - t0, 1)
                    seen["reason_then"] = j.get("reason")
                time.sleep(0.5)
        finally:
            os.kill(npid, CONT)

    with chaos_stack(root) as st:
        run = fault_job(
            st, "scheduler-stopped-at-grace-end", p, fault, deadline=lambda _r, tf: tf + 60
        )
        time.sleep(3)
        run.seen.update(seen)
        return check(run, {"ce"}, exact=False)


def recorder_stopped_cancel_node_killed(root: Path, p: Params) -> Run:
    """recorder stopped; `ketchup cancel`; node killed 0.5 s later; recorder continued 5 s
    after that."""
    seen: dict[str, Any] = {}

    def fault(st: Stack, jobid: int) -> None:
        rpid = signal_service(st, "recorder", STOP)
        try:
            r = st.run("ketchup", "cancel", str(jobid), timeout=60)
            seen["cancel"] = (r.returncode, r.stdout + r.stderr)
            time.sleep(0.5)
            signal_service(st, "node", signal.SIGKILL)
            time.sleep(5)
        finally:
            os.kill(rpid, CONT)

    with chaos_stack(root) as st:
        run = fault_job(
            st, "recorder-stopped+cancel+node-killed", p, fault, deadline=lambda _r, tf: tf + 40
        )
        time.sleep(3)
        run.seen.update(seen)
        return check(run, {"cd"}, exact=True)


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
