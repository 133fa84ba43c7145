"""The faults of issue 9, each injected mid-job into a real stack: one function per scenario.

Every scenario takes a fresh directory and :class:`~tests.chaos.harness.Params`, runs one
counter job through the fault and returns the checked :class:`~tests.chaos.harness.Run`
(``run.problems`` empty: it ended as issue 9 specifies). ``SCENARIOS`` is what the tests
parametrize over and what ``bench/chaos.py`` repeats.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.chaos.external import on_external
from tests.chaos.harness import (
    CANCEL_BOUND,
    Params,
    Run,
    StartRefused,
    chaos_stack,
    check,
    fault_job,
    payload,
    record,
    signal_service,
    wait_end,
)
from tests.chaos.host_faults import (
    full_kill_kept,
    full_kill_node,
    netns_cut,
    netns_cut_mosquitto,
    skew,
    skew_shown,
    store_full,
    store_full_shown,
)
from tests.stack import Stack, kill_stack, start_stack

__all__ = ["SCENARIOS", "Scenario", "run_scenario"]


@dataclass(frozen=True)
class Scenario:
    name: str
    fn: Callable[[Path, Params], Run]
    # "c|ce": issue 9 leaves "c with a warning" or "ce" to the fix (stalls, late data)
    want: str  # the final statuses issue 9 allows, "|"-separated
    exact: bool = True  # per-task counts known (False: the node died with them)
    bound: float | None = None  # s from the fault to the end (None: the run's own deadline)
    honest: bool = False  # no burst of points after a stall (see harness.check)
    reason_has: str | None = None  # what the job's reason must name
    # what the user must have been shown meanwhile: what was not (None: all of it)
    shows: Callable[[Run], str | None] | None = None


def run_scenario(name: str, root: Path, p: Params | None = None, run: int = 1) -> Run:
    sc = SCENARIOS[name]
    r = sc.fn(root, p or Params())
    r.scenario, r.run = name, run
    want = set(sc.want.split("|"))
    check(r, want, sc.exact, sc.bound, honest=sc.honest, reason_has=sc.reason_has)
    missing = sc.shows(r) if sc.shows else None
    if missing:
        r.unseen.append(missing)
    return record(r)


# -- kill -9 of services -------------------------------------------------------------------
def _kill(*services: str) -> Callable[[Path, Params], Run]:
    def scenario(root: Path, p: Params) -> Run:
        def fault(st: Stack, _job: int) -> None:
            pids = [st.child_pid(s) for s in services]  # all found before any dies
            for pid in pids:
                os.kill(pid, signal.SIGKILL)

        with chaos_stack(root) as st:
            return fault_job(st, "kill-" + "+".join(services), p, fault)

    return scenario


def kill_tree(root: Path, p: Params) -> Run:
    """kill -9 of the supervisor's process group, then `tomato start` again at once."""

    def fault(st: Stack, _job: int) -> None:
        kill_stack(st)
        res = start_stack(st)
        if res.returncode != 0:
            raise StartRefused((res.stdout + res.stderr).strip()[-300:])

    with chaos_stack(root) as st:
        return fault_job(st, "kill-tree", p, fault)


# -- a stalled service ----------------------------------------------------------------------
def _stall(service: str) -> Callable[[Path, Params], Run]:
    """SIGSTOP of ``service`` for ``p.down`` s mid-task, then SIGCONT."""

    def scenario(root: Path, p: Params) -> Run:
        def fault(st: Stack, _job: int) -> None:
            pid = signal_service(st, service, signal.SIGSTOP)
            try:
                time.sleep(p.down)  # the stall itself
            finally:
                os.kill(pid, signal.SIGCONT)

        with chaos_stack(root) as st:
            return fault_job(st, f"stall-{service}", p, fault)

    return scenario


# -- `ketchup cancel` while the node is dead or stopped -------------------------------------
def _cancel(sig: signal.Signals) -> Callable[[Path, Params], Run]:
    def scenario(root: Path, p: Params) -> Run:
        stopped: list[int] = []

        def fault(st: Stack, jobid: int) -> None:
            pid = signal_service(st, "node", sig)
            if sig == signal.SIGSTOP:
                stopped.append(pid)
            st.run("ketchup", "cancel", str(jobid), timeout=30)

        def deadline(_t_run: float, t_fault: float) -> float:
            return t_fault + CANCEL_BOUND + 3.0  # long enough to see it end late, if it does

        with chaos_stack(root) as st:
            try:
                return fault_job(st, f"cancel-{sig.name}", p, fault, deadline=deadline)
            finally:
                for pid in stopped:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGCONT)

    return scenario


# -- reload: a component removed, then added back, then a job on it --------------------------
TWO_DEVICES: dict[str, list[dict[str, Any]]] = {
    "devices": [
        {"name": n, "driver": "example_counter", "address": f"{n}-addr", "channels": ["1"]}
        for n in ("dev-a", "dev-b")
    ],
    "pipelines": [
        {"name": f"pip-{x}", "devices": [{"role": "counter", "device": f"dev-{x}", "channel": "1"}]}
        for x in ("a", "b")
    ],
}


def reload_readd(root: Path, p: Params) -> Run:
    both = root / "devices-two.yml"
    both.write_text(yaml.safe_dump(TWO_DEVICES))
    only_a = {
        "devices": TWO_DEVICES["devices"][:1],
        "pipelines": TWO_DEVICES["pipelines"][:1],
    }
    with chaos_stack(root, both) as st:
        # a first job on dev-b: its stream's identities are now in the recorder's store
        first = Params(hz=p.hz, duration=1.0)
        st.load_ready("pip-b", "before-reload")
        j1 = st.submit(payload(st, "before-reload", first))
        job1, _ = wait_end(st, j1, time.monotonic() + 30)
        assert job1.get("status") == "c", job1
        st.run("tomato", "pipeline", "eject", "pip-b", check=True)
        (st.appdir / "devices.yml").write_text(yaml.safe_dump(only_a))
        st.run("tomato", "reload", check=True)
        shutil.copy(both, st.appdir / "devices.yml")
        st.run("tomato", "reload", check=True)

        def nothing(_st: Stack, _job: int) -> None:
            pass

        return fault_job(st, "reload-readd", p, nothing, "pip-b", guard=False)


KILLED, STOPPED = signal.SIGKILL, signal.SIGSTOP
COUNTER = "example_counter:(example-addr,1)"  # the component of pip-counter-1
SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("kill-broker", _kill("broker"), "c"),
        Scenario("kill-scheduler", _kill("scheduler"), "c"),
        Scenario("kill-recorder", _kill("recorder"), "c"),
        Scenario("kill-broker+recorder", _kill("broker", "recorder"), "c"),
        # the node dies with its count of points: ce, and nothing missing in the middle
        Scenario("kill-node", _kill("node"), "ce", exact=False, reason_has=COUNTER),
        Scenario("kill-tree", kill_tree, "ce", exact=False, reason_has=COUNTER),
        Scenario("stall-node", _stall("node"), "c|ce", honest=True),
        # the others stall nothing the node takes: every point, as if nothing happened
        Scenario("stall-broker", _stall("broker"), "c", honest=True),
        Scenario("stall-scheduler", _stall("scheduler"), "c", honest=True),
        Scenario("stall-recorder", _stall("recorder"), "c", honest=True),
        Scenario("cancel-killed-node", _cancel(KILLED), "cd", exact=False, bound=CANCEL_BOUND),
        Scenario("cancel-stopped-node", _cancel(STOPPED), "cd", exact=False, bound=CANCEL_BOUND),
        Scenario("reload-readd", reload_readd, "c"),
        Scenario("netns-cut", netns_cut, "c|ce"),
        Scenario("netns-cut-mosquitto", netns_cut_mosquitto, "c|ce"),
        Scenario("store-full", store_full, "c", shows=store_full_shown),
        # the node killed while its spool's disk is full: its batches were in memory only
        Scenario(
            "full-kill-node",
            full_kill_node,
            "ce",
            exact=False,
            reason_has=COUNTER,
            shows=full_kill_kept,
        ),
        Scenario("skew+60", skew("+60s"), "c", shows=skew_shown),
        Scenario("skew-60", skew("-60s"), "c", shows=skew_shown),
        # the same faults on an external broker (Mosquitto), which nothing of ours restarts
        Scenario("mosquitto-kill-broker", on_external("mosquitto", "kill-broker"), "c"),
        Scenario(
            "mosquitto-down-past-grace",
            on_external("mosquitto", "kill-broker", past_grace=True),
            "c",
        ),
        Scenario(
            "mosquitto-restart-persistent",
            on_external("mosquitto", "restart-broker", persistence=True),
            "c",
        ),
        Scenario(
            "mosquitto-stall-broker", on_external("mosquitto", "stall-broker"), "c", honest=True
        ),
        Scenario("mosquitto-kill-recorder", on_external("mosquitto", "kill-recorder"), "c"),
        Scenario("mosquitto-kill-scheduler", on_external("mosquitto", "kill-scheduler"), "c"),
        Scenario(
            "mosquitto-kill-node",
            on_external("mosquitto", "kill-node"),
            "ce",
            exact=False,
            reason_has=COUNTER,
        ),
        # and on a second implementation, Aedes (Node.js)
        Scenario("aedes-kill-broker", on_external("aedes", "kill-broker"), "c"),
        Scenario("aedes-stall-broker", on_external("aedes", "stall-broker"), "c", honest=True),
        Scenario("aedes-kill-recorder", on_external("aedes", "kill-recorder"), "c"),
    )
}
