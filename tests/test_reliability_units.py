"""Issue 9's mechanisms, one by one, without a broker (pure functions, fake hosts).

The end-to-end proofs (a real stack, real faults) are in tests/test_reliability.py.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from tomato_mqtt.driver.runner import Point
from tomato_mqtt.driver.spec import TaskSpec
from tomato_mqtt.model.jobs import Job
from tomato_mqtt.services.node.datapath import new_stream, split_by_task
from tomato_mqtt.services.recorder.files import Expect, count_problems
from tomato_mqtt.services.scheduler import runner as runner_mod
from tomato_mqtt.services.scheduler.lifecycle import judge_file
from tomato_mqtt.services.scheduler.runner import JobRunner
from tomato_mqtt.services.supervisor import pid_alive
from tomato_mqtt.wire.messages import ComponentStatus, NodeStatus, TaskEndInfo

pytestmark = pytest.mark.timeout(60)


def _task(job: int | None, index: int) -> TaskSpec:
    return TaskSpec(
        technique_name="count", max_duration=1, sampling_interval=0.1, job=job, index=index
    )


# -- 2. points belong to their task at measurement time ---------------------------------------
def test_a_flush_splits_points_by_the_task_they_were_taken_in() -> None:
    t0, t1 = _task(7, 0), _task(7, 1)
    pts = [Point(1.0, {}, None), Point(2.0, {}, t0), Point(3.0, {}, t0), Point(4.0, {}, t1)]
    pts += [Point(5.0, {}, None)]
    groups = split_by_task(pts)
    assert [(k, [p.uts for p in g]) for k, g in groups] == [
        ((None, None), [1.0]),  # idle: never a job
        ((7, 0), [2.0, 3.0]),
        ((7, 1), [4.0]),  # the next task's points keep their own task
        ((None, None), [5.0]),  # idle after the task: the job is not inferred
    ]


# -- 1. stream identity never repeats ---------------------------------------------------------
def test_stream_ids_never_repeat_within_an_epoch() -> None:
    ids = {new_stream(5) for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(i.startswith("5-") for i in ids)


# -- 3. per-task counts ---------------------------------------------------------------------
def test_count_problems_names_task_and_both_counts() -> None:
    expect = [
        Expect(component="c", task=0, npoints=10),
        Expect(component="c", task=1, npoints=5),
        Expect(component="c", task=2, npoints=3),
        Expect(component="c", task=3),  # unknown count (node crashed): not checked
    ]
    stored: dict[tuple[str, int | None], int] = {("c", 0): 10, ("c", 1): 4, ("c", 2): 4}
    missing, extra = count_problems(expect, stored)
    assert missing == ["task 1 on c: 4 of 5 points stored"]
    assert extra == ["task 2 on c: 4 points stored, but its runner took 3"]


def test_judge_file_c_only_when_counts_match() -> None:
    assert judge_file("c", None, {"missing": [], "extra": [], "conflicts": []}) == ("c", None)
    st, why = judge_file("c", None, {"missing": ["task 0 on c: 9 of 10 points stored"]})
    assert st == "ce" and "task 0 on c: 9 of 10" in str(why)
    st, why = judge_file("c", None, {"conflicts": ["c stream s seq 3"]})
    assert st == "ce" and "conflicting" in str(why)
    st, why = judge_file("cd", None, {"missing": ["x"]})
    assert st == "cd"  # a cancelled job stays cancelled, with the shortfall named
    st, why = judge_file("c", None, {"fallback": "/x could not be written; fallback file /y"})
    assert st == "c" and "fallback file /y" in str(why)


# -- 4/5. the job runner: node restarts and cancels never hang a job ------------------------------
class FakeHost:
    """Plays the scheduler for one JobRunner: statuses are set by the test."""

    def __init__(self) -> None:
        self.cond = asyncio.Condition()
        self.node_grace_period = 30.0
        self.stuck_after = 300.0
        self.cstatus: dict[str, ComponentStatus] = {}
        self.node = NodeStatus(state="online", node="pc1", epoch=1, heartbeat=time.time())
        self.quiet = False  # the broker passes nothing (broker_quiet)
        self.silent = False  # no status of the node came for a while (node_silent)
        self.back: float | None = None  # s since the node spoke again (node_back_since)
        self.offset: float | None = None  # the node's clock less the scheduler's
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.requests: list[tuple[str, str]] = []
        self.args: list[tuple[str, str, Mapping[str, Any]]] = []  # each request's, as sent
        self.answer_stop: tuple[bool, str, Any] | None = (True, "stopped", {"running": True})
        self.silent_reset = False
        self.lose_start_reply = False  # the node starts the task; its answer is lost
        self.reasons: list[str] = []

    def component_status(self, name: str) -> ComponentStatus | None:
        return self.cstatus.get(name)

    def node_of(self, component: str) -> NodeStatus | None:
        return self.node

    def broker_quiet(self) -> bool:
        return self.quiet

    def node_silent(self, node: str) -> bool:
        return self.silent

    def node_back_since(self, node: str) -> float | None:
        return self.back

    def clock_offset(self, node: str) -> float | None:
        return self.offset

    def save_progress(self, job: int, progress: dict[str, Any]) -> None:
        self.saved = json.loads(json.dumps(progress))  # as the store keeps it

    def show_reason(self, job: int, reason: str | None, replacing: str | None = None) -> None:
        if reason is not None:
            self.reasons.append(reason)
        elif self.reasons and self.reasons[-1] == replacing:
            self.reasons.append("")  # cleared

    def job_event(self, job: int, event: str, **kw: Any) -> None:
        self.events.append((event, kw))

    async def component_request(
        self,
        component: str,
        op: str,
        args: Mapping[str, Any],
        timeout: float = 5.0,
        resend: bool = False,
    ) -> tuple[bool, str, Any]:
        self.requests.append((component, op))
        self.args.append((component, op, args))
        if op == "task_start":
            started = time.time()
            task = int(args["task"]["index"])
            self.cstatus[component] = ComponentStatus(
                name=component, node="pc1", state="running", time=started, job=1, task=task, epoch=1
            )
            if self.lose_start_reply:
                return False, "no node hosting cmp answered on .../task_start within 10 s", None
            return True, "started", {"epoch": 1, "started_at": started}
        if op == "reset" and self.silent_reset:  # a node killed as the task ended
            await asyncio.sleep(timeout)
            return False, "no node answered", None
        if op == "task_stop":
            if self.answer_stop is None:  # the node does not answer
                await asyncio.sleep(timeout)
                return False, "no node answered", None
            return self.answer_stop
        return True, "ok", None

    async def set(self, **kw: Any) -> None:
        async with self.cond:
            for k, v in kw.items():
                setattr(self, k, v)
            self.cond.notify_all()


_KEEP: set[asyncio.Future[Any]] = set()


async def _task_ended(
    host: FakeHost, npoints: int = 60, reason: str = "done", missed: int = 0
) -> None:
    """The node says: task 0 of job 1 ended, idle again (as its retained status does)."""
    end = TaskEndInfo(
        job=1, task=0, reason=reason, t_start=0, t_end=1, npoints=npoints, missed=missed, stream="s"
    )
    ended = ComponentStatus(
        name="cmp", node="pc1", state="idle", time=time.time(), epoch=1, last_task=end
    )
    await host.set(cstatus={"cmp": ended})


def _job() -> Job:
    payload = {
        "method": [
            {
                "component_role": "counter",
                "technique_name": "count",
                "max_duration": 60,
                "sampling_interval": 1,
            }
        ]
    }
    return Job(id=1, payload=payload, submitted_at="now")


async def _run(
    host: FakeHost, job: Job | None = None
) -> tuple[JobRunner, asyncio.Future[tuple[str, str | None]]]:
    done: asyncio.Future[tuple[str, str | None]] = asyncio.get_running_loop().create_future()

    async def on_done(r: JobRunner, status: str, reason: str | None) -> None:
        await r.reset_done()  # as JobLifecycle.job_done: the job ends once reset
        done.set_result((status, reason))

    runner = JobRunner(job=job or _job(), roles={"counter": "cmp"}, host=host, on_done=on_done)
    _KEEP.add(asyncio.ensure_future(runner.run()))
    for _ in range(100):
        if runner.tasks[0].state == "running":
            break
        await asyncio.sleep(0.01)
    return runner, done


async def test_node_back_with_a_new_epoch_ends_the_job_ce_at_once() -> None:
    host = FakeHost()
    _runner, done = await _run(host)
    t0 = time.monotonic()
    await host.set(node=host.node.model_copy(update={"epoch": 2}))
    status, reason = await asyncio.wait_for(done, 5)
    assert status == "ce"
    assert "cmp" in str(reason) and "restarted mid-task" in str(reason)
    assert time.monotonic() - t0 < 1.0
    # the task's end is an event too (a dashboard following them showed it running on):
    # its count is unknown
    ended = [kw for event, kw in host.events if event == "task_ended"]
    assert ended == [{"role": "counter", "task": 0, "detail": {"reason": "error", "npoints": None}}]


class _StartUnanswered(FakeHost):
    """A node that does not answer the first ``times`` task_starts (nobody answered)."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.unanswered = times

    async def component_request(
        self,
        component: str,
        op: str,
        args: Mapping[str, Any],
        timeout: float = 5.0,
        resend: bool = False,
    ) -> tuple[bool, str, Any]:
        from tomato_mqtt.services.scheduler.tasks import UNANSWERED

        if op == "task_start" and self.unanswered > 0:
            self.unanswered -= 1
            self.requests.append((component, op))
            await asyncio.sleep(0.01)
            return False, "no node hosting cmp answered on …/task_start within 10 s", UNANSWERED
        return await super().component_request(component, op, args, timeout, resend)


async def test_a_start_a_silent_node_does_not_answer_is_asked_again_until_it_does() -> None:
    """A randomized fault run: a job launched as its node stood still ended ce after
    10 s, and the node, back, ran the task into it. Its node silent (no status for a
    while) and not counted lost, the start is asked again, the job's reason saying so;
    once the node answers, the job runs and ends c."""
    host = _StartUnanswered(2)
    host.silent = True
    runner, done = await _run(host)
    assert runner.tasks[0].state == "running", runner.tasks[0]
    assert host.requests.count(("cmp", "task_start")) == 3, host.requests
    assert any(
        r.startswith("task 0 (count) not started yet: no node hosting cmp answered on ")
        and r.endswith("within 10 s; asked again while node pc1 is not counted lost")
        for r in host.reasons
    ), host.reasons
    assert host.reasons[-1] == "", host.reasons  # the reason cleared once it started
    await _task_ended(host, 60)
    status, _reason = await asyncio.wait_for(done, 5)
    assert status == "c", status


async def test_a_start_a_node_that_speaks_does_not_answer_ends_the_job_as_before() -> None:
    """A node whose statuses come (not silent) and that does not answer the start (an
    external broker's rules lacking the component): not asked for ever, the job ends ce
    with the unanswered start, as before."""
    host = _StartUnanswered(100)
    _runner, done = await _run(host)
    status, reason = await asyncio.wait_for(done, 5)
    assert status == "ce" and "no node hosting cmp answered" in str(reason), reason
    assert host.requests.count(("cmp", "task_start")) == 1, host.requests


async def test_a_start_a_node_back_from_a_cut_does_not_answer_yet_is_asked_again() -> None:
    """A randomized fault run: a remote node's link cut for 16 s around a task's end. Its
    statuses came at once when the link was back, what went to it waited on TCP's
    back-off 13 s more: task 1's start went unanswered for 10 s, and the job ended ce "no
    node … answered … is it running?" as the node got it. A node that speaks again after
    a silence is asked again within node_grace_period; one back longer ago is not."""
    host = _StartUnanswered(1)
    host.back = 2.0
    runner, done = await _run(host)
    assert runner.tasks[0].state == "running", runner.tasks[0]
    assert host.requests.count(("cmp", "task_start")) == 2, host.requests
    assert any(
        r.startswith("task 0 (count) not started yet: no node hosting cmp answered on ")
        and r.endswith(
            "asked again: node pc1 speaks again after a silence 2 s ago, and what is"
            " sent to it may still be on its way"
        )
        for r in host.reasons
    ), host.reasons
    await _task_ended(host, 60)
    status, _reason = await asyncio.wait_for(done, 5)
    assert status == "c", status
    # back long ago (past node_grace_period): as a node that speaks and does not answer
    host = _StartUnanswered(100)
    host.back = host.node_grace_period + 1
    _runner, done = await _run(host)
    status, reason = await asyncio.wait_for(done, 5)
    assert status == "ce" and "no node hosting cmp answered" in str(reason), reason
    assert host.requests.count(("cmp", "task_start")) == 1, host.requests


async def test_a_start_whose_node_is_lost_and_not_back_ends_the_job_saying_so() -> None:
    """Its start unanswered, its node lost and not back within the grace period: the job
    ends ce saying so, not only "no node … answered … is it running?"."""
    host = _StartUnanswered(100)
    host.node_grace_period = 0.3
    host.silent = True  # then lost, 50 ms in

    async def lost_soon() -> None:
        await asyncio.sleep(0.05)
        await host.set(node=host.node.model_copy(update={"state": "lost"}))

    _KEEP.add(asyncio.ensure_future(lost_soon()))
    _runner, done = await _run(host)
    status, reason = await asyncio.wait_for(done, 5)
    assert status == "ce", reason
    assert (
        "node pc1 hosting cmp did not answer task 0 (count)'s start and was not back within "
        "0.3 s after it was lost"
    ) in str(reason), reason


async def test_component_idle_without_its_task_end_ends_the_job_ce() -> None:
    host = FakeHost()
    _runner, done = await _run(host)
    idle = ComponentStatus(name="cmp", node="pc1", state="idle", time=time.time() + 0.01, epoch=1)
    await host.set(cstatus={"cmp": idle})
    status, reason = await asyncio.wait_for(done, 5)
    assert status == "ce" and "cmp" in str(reason) and "no task" in str(reason)


async def test_component_no_longer_hosted_ends_the_job_ce() -> None:
    host = FakeHost()
    _runner, done = await _run(host)
    await host.set(node=host.node)  # the runner sees the component running its task
    await asyncio.sleep(0.05)
    await host.set(cstatus={})  # its node cleared the component's retained status
    status, reason = await asyncio.wait_for(done, 5)
    assert status == "ce" and "no longer hosted" in str(reason)


async def test_the_missed_deadlines_of_a_task_stopped_early_count_only_its_own() -> None:
    """A task stopped early (a cancel after 20 points, 2 deadlines missed) had 22
    deadlines, not its nominal 60: the warning said "missed 2 of 60" (session 49)."""
    host = FakeHost()
    runner, done = await _run(host)
    await _task_ended(host, 20, "stopped", missed=2)
    await asyncio.wait_for(done, 5)
    said = " ".join(runner.warnings)
    assert "missed 2 of 22 sampling deadlines" in said, said


async def test_a_cancel_s_reason_says_cancelled_before_a_warning() -> None:
    """A job its own user cancelled ended `cd` with the reason "task 0 … missed 1 of
    275 sampling deadlines", which read as why it ended (a side-by-side tour)."""
    host = FakeHost()
    runner, done = await _run(host)
    _KEEP.add(asyncio.ensure_future(runner.cancel()))
    await asyncio.sleep(0.05)
    await _task_ended(host, 20, "stopped", missed=2)
    status, reason = await asyncio.wait_for(done, 5)
    assert status == "cd", (status, reason)
    assert str(reason).startswith("cancelled; task 0"), reason
    assert "missed 2 of 22 sampling deadlines" in str(reason), reason


def test_many_tasks_missed_deadlines_are_one_line_of_the_reason() -> None:
    """Fault injection: 200 tasks of 0.02 s at 1 kHz made a reason of 15.5 KB, 103
    sentences alike; beyond 3 tasks they are one line with the totals (each task's is
    in its warning event still); other warnings keep their place."""

    def missed(i: int, k: int, n: int) -> str:
        return (
            f"task {i} (count) on cmp missed {k} of {n} sampling deadlines (the driver or "
            "node was behind; nothing was measured for them)"
        )

    few = ["node pc1's clock stepped", missed(0, 1, 20), missed(3, 2, 20), missed(7, 1, 20)]
    assert runner_mod.summarized(few) == few
    many = [*few, missed(9, 4, 20), "a later warning"]
    assert runner_mod.summarized(many) == [
        "node pc1's clock stepped",
        "4 tasks missed sampling deadlines, 8 of 80 in all (the driver or node was behind;"
        " nothing was measured for them; each task's in its warning event), the first: "
        + missed(0, 1, 20),
        "a later warning",
    ]


async def test_a_normal_end_is_c_and_carries_counts_and_missed_deadlines() -> None:
    host = FakeHost()
    runner, done = await _run(host)
    await _task_ended(host, 50, missed=10)
    status, reason = await asyncio.wait_for(done, 5)
    assert status == "c"  # a stall is a warning: every point in the file was measured
    assert "missed 10 of 60 sampling deadlines" in str(reason)
    assert runner.expectations() == [
        {"component": "cmp", "task": 0, "npoints": 50, "epoch": 0, "stream": "s", "last_seq": -1}
    ]
    assert any(e == "warning" for e, _ in host.events)


@pytest.mark.parametrize("fault", ["node-restart", "missed-deadlines"])
async def test_a_scheduler_restarted_as_the_job_ends_reaches_the_same_verdict(
    fault: str,
) -> None:
    """Found by fault injection: the runner's error and warnings lived in memory only, so
    a scheduler killed between 'tasks over' and the job's end re-adopted the job and
    ended it c, with no reason (a node restart mid-task lost points: that is ce)."""
    host = FakeHost()
    _runner, done = await _run(host)
    if fault == "node-restart":
        await host.set(node=host.node.model_copy(update={"epoch": 2}))
    else:
        end = TaskEndInfo(
            job=1, task=0, reason="done", t_start=0, t_end=1, npoints=50, missed=10, stream="s"
        )
        ended = ComponentStatus(
            name="cmp", node="pc1", state="idle", time=time.time(), epoch=1, last_task=end
        )
        await host.set(cstatus={"cmp": ended})
    first = await asyncio.wait_for(done, 5)
    assert first[0] == ("ce" if fault == "node-restart" else "c") and first[1], first
    # the scheduler dies now; its successor re-adopts the job from the store
    job = _job().model_copy(update={"progress": host.saved})
    again: asyncio.Future[tuple[str, str | None]] = asyncio.get_running_loop().create_future()

    async def on_done(r: JobRunner, status: str, reason: str | None) -> None:
        again.set_result((status, reason))

    readopted = JobRunner(job=job, roles={"counter": "cmp"}, host=FakeHost(), on_done=on_done)
    _KEEP.add(asyncio.ensure_future(readopted.run()))
    assert await asyncio.wait_for(again, 15) == first


async def test_a_node_restarted_as_its_task_ends_is_not_waited_for_to_reset() -> None:
    """Found by fault injection: a node killed just after its task ended never answered
    the job's reset, and the job waited the whole RESET_WAIT (10 s) for it although the
    node was back (idle, with a new epoch) in half a second."""
    host = FakeHost()
    host.silent_reset = True
    _runner, done = await _run(host)
    await _task_ended(host)
    await asyncio.sleep(0.3)  # the job asks for the reset; the node is gone
    t0 = time.monotonic()
    await host.set(node=host.node.model_copy(update={"epoch": 2}))  # ... and back
    status, _reason = await asyncio.wait_for(done, 5)
    assert status == "c" and time.monotonic() - t0 < 1.0
    assert ("cmp", "reset") in host.requests


async def test_a_node_merely_gone_is_still_waited_for_to_reset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A node that is gone (here: lost, and a status that differs in its epoch) has not
    restarted: the reset is waited for as before. The first version of the skip ended
    the wait for a node merely cut off in a full run's chaos netns-cut (which status
    triggered it was not pinned down), and the job ended during the cut, before the
    node's data could come back. Only a node back online with a new epoch ends it."""
    monkeypatch.setattr(runner_mod, "RESET_WAIT", 1.0)
    host = FakeHost()
    host.silent_reset = True
    _runner, done = await _run(host)
    await _task_ended(host)
    await asyncio.sleep(0.2)
    t0 = time.monotonic()
    await host.set(node=host.node.model_copy(update={"state": "lost", "epoch": 0}))
    status, _reason = await asyncio.wait_for(done, 5)
    assert status == "c" and time.monotonic() - t0 > 0.5  # the reset's whole wait


@pytest.mark.parametrize("answer", ["no-task", "silent"])
async def test_cancel_ends_cd_within_a_bound_whatever_the_node_answers(
    answer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_mod, "CANCEL_WAIT", 0.5)
    host = FakeHost()
    host.answer_stop = (
        (True, "component cmp has no running task", {"running": False})
        if answer == "no-task"
        else None
    )
    runner, done = await _run(host)
    t0 = time.monotonic()
    _KEEP.add(asyncio.ensure_future(runner.cancel()))
    status, reason = await asyncio.wait_for(done, 5)
    assert status == "cd"
    assert time.monotonic() - t0 < 2.0
    if answer == "silent":  # a node that does not answer is not asked to reset either
        assert ("cmp", "reset") not in host.requests
        # and the job says that its stop may not have reached the instrument (it ended
        # cd without a word while the cut-off node measured on: fault injection)
        assert str(reason).startswith(
            "cancelled; task 0 on cmp: its node did not confirm the stop within 0.5 s"
        ), reason
        assert "may go on until its node is back or the call returns" in str(reason), reason
    else:
        assert reason is None, reason


# -- 10. a crashed supervisor's pid file ------------------------------------------------------
def test_zombie_and_reused_pids_count_as_dead(tmp_path: Path) -> None:
    live = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", "tomato_mqtt.cli.tomato"]
    )
    try:
        # a busy machine may show the child's new command line a moment after Popen
        deadline = time.monotonic() + 10
        while not pid_alive(live.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pid_alive(live.pid)
    finally:
        live.kill()
        live.wait()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # wait until it is a zombie (we do not reap it)
        stat = Path(f"/proc/{child.pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.01)
    assert not pid_alive(child.pid)
    child.wait()
    sleeper = subprocess.Popen(["sleep", "30"])  # alive, but not tomato-mqtt (a reused pid)
    try:
        assert not pid_alive(sleeper.pid)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not pid_alive(2**22 + 12345)


# -- 8. `tomato status nodes` shows the scheduler's view of a skewed clock -------------------
def test_status_nodes_table_shows_clock_offset_and_age_by_the_schedulers_clock() -> None:
    from tomato_mqtt.cli.status_text import _nodes

    row = {
        "node": "pc2",
        "state": "online",
        "heartbeat": time.time() + 60,  # the node's clock: 60 s ahead
        "heartbeat_age": 0.3,
        "clock_offset": 60.04,
        "clock_skewed": True,
    }
    out = _nodes("", [row])
    assert "0.3 s ago" in out and "+60.0 s (clock skew!)" in out
    # an offline node's spool count is its last word (an admin read "spooled 8" of a
    # node stopped cleanly, its batches stored since)
    gone = _nodes("", [{**row, "state": "offline", "spool_pending": 8}])
    assert "8 (as last heard)" in gone, gone
    assert "8 (as last heard)" not in _nodes("", [{**row, "spool_pending": 8}])
    # a spool that takes no writes, in full under the table (it was in the node's log
    # only: a randomized fault round)
    full = "cannot write the spool /d/spool/pc2.sqlite: database or disk is full"
    out = _nodes("", [{**row, "spool_pending": 12, "spool_error": full}])
    assert f"errors:\n  pc2: spool: {full}" in out, out


def test_status_components_and_drivers_print_errors_in_full_below_the_table() -> None:
    """A component's or driver's error is a sentence saying what to fix: a column cut it
    at the terminal's width (120 in a pipe), so it is printed whole under the table."""
    from tomato_mqtt.cli.status_text import _components, _drivers

    why = "driver 'example_countr' is not installed on node pc2: " + "x" * 150 + " END"
    comp = {"device": "dev", "channel": "1", "name": "dev:1", "node": "pc2", "error": why}
    out = _components("", [comp, {"device": "ok", "channel": "2", "name": "ok:2"}])
    assert f"errors:\n  dev/1: {why}" in out, out
    assert "ok/2:" not in out.split("errors:")[1], out
    drv = {"name": "example_countr", "nodes": {"pc2": {"loaded": False, "error": why}}}
    out = _drivers("", [drv])
    assert f"errors:\n  example_countr: pc2: {why}" in out, out
    assert "errors:" not in _components("", [{"device": "ok", "channel": "2"}])


# -- 8. staleness by the receiver's clock -----------------------------------------------------
def test_staleness_uses_receipt_time_and_skips_a_round_of_a_blocked_scheduler() -> None:
    from types import SimpleNamespace

    from tomato_mqtt.services.scheduler.presence import Presence

    nodes = {"pc": NodeStatus(state="online", node="pc", epoch=1, heartbeat=1.0)}  # 1970!
    svc: Any = SimpleNamespace(
        settings=SimpleNamespace(scheduler=SimpleNamespace(lost_after=0.3, clock_tolerance=2)),
        heartbeat=0.1,
        nodes=nodes,
        runners={},
        broker_heard=float("inf"),  # the broker passes messages (a stall: test_jobs.py)
    )
    p = Presence(svc)
    p.received(nodes["pc"], retained=False)
    assert not p.check_stale()  # received just now: its old timestamp does not matter
    assert p.clock_offset("pc") is not None and "pc" in p.skewed
    # the file records the offset of a skewed node only (a results file's
    # tomato_clock_offset), not the ~1 ms a heartbeat takes to arrive
    assert p.skew_of("pc") == p.clock_offset("pc")
    near = NodeStatus(state="online", node="near", epoch=1, heartbeat=time.time() - 0.002)
    p.received(near, retained=False)
    assert p.clock_offset("near") is not None and p.skew_of("near") is None
    for _ in range(6):  # 0.6 s of regular rounds without a status: lost
        time.sleep(0.1)
        if p.check_stale():
            break
    assert nodes["pc"].state == "lost"
    nodes["pc"] = nodes["pc"].model_copy(update={"state": "online"})
    p.received(nodes["pc"], retained=False)
    p.check_stale()
    time.sleep(0.5)  # our own loop was blocked for longer than lost_after
    assert not p.check_stale() and nodes["pc"].state == "online"  # not judged this round


@pytest.mark.parametrize("ends", ["cancel", "late", "news-late"])
async def test_a_task_far_past_its_max_duration_is_said_to_overrun(
    monkeypatch: pytest.MonkeyPatch, ends: str
) -> None:
    """Found by fault injection: a driver call that never returned left the job `r` with
    no reason for good. Once the task runs past its max_duration (plus a grace) the job's
    reason and a warning say so; the job still waits for its end (or a cancel)."""
    monkeypatch.setattr(runner_mod, "OVERRUN_GRACE", 0.3)
    host = FakeHost()
    job = _job()
    job.payload["method"][0]["max_duration"] = 0.2
    runner, done = await _run(host, job)
    await asyncio.sleep(1.0)  # the node says nothing: its driver call hangs
    assert not done.done()
    assert len(host.reasons) == 1, host.reasons
    assert host.reasons[0].startswith("task 0 (count) on cmp ran at least 0 s past its")
    assert "a driver call did not return in time; `ketchup cancel 1`" in host.reasons[0]
    assert any(e == "warning" for e, _ in host.events)
    if ends == "cancel":
        await runner.cancel()  # ends it as ever
    else:  # a late call that returned after all: the advice goes, what happened stays
        # news-late: the task ran its 0.2 s by the node's clock, and only the news of its
        # end was late (a slow link, a paused scheduler): nothing overran (fault injection:
        # such jobs ended c with "a driver call did not return in time")
        t_end = 0.2 if ends == "news-late" else 1
        end = TaskEndInfo(
            job=1, task=0, reason="done", t_start=0, t_end=t_end, npoints=1, stream="s"
        )
        ended = ComponentStatus(
            name="cmp", node="pc1", state="idle", time=time.time(), epoch=1, last_task=end
        )
        await host.set(cstatus={"cmp": ended})
    status, reason = await asyncio.wait_for(done, 10)
    assert status == ("cd" if ends == "cancel" else "c"), (status, reason)
    if ends == "news-late":
        assert reason is None, reason
        # and said on the wire: events are not retained, a page kept the warning (an
        # outside run: a broker down 29 s)
        (first,) = [kw["detail"] for e, kw in host.events if e == "warning"][:1]
        withdrawn = [kw["detail"] for e, kw in host.events if "withdrawn" in kw.get("detail", {})]
        assert len(withdrawn) == 1 and withdrawn[0]["withdrawn"] == first["message"], withdrawn
        assert "its end came late, not the task" in withdrawn[0]["message"]
        return
    assert "a driver call did not return in time" in str(reason), reason
    assert "ketchup cancel" not in str(reason), reason  # found by a review: it stayed
    if ends == "late":
        assert host.reasons[-1] == "", host.reasons  # the live reason cleared at the end


async def test_a_task_whose_node_is_lost_is_not_said_to_overrun(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An outside run: a node killed (its restart held) mid-task; past the task's
    max_duration the job said "a driver call did not return in time" while the reason
    was the lost node (ended ce for it after the grace). While its node is lost a task
    does not count as overrunning; back, it does."""
    monkeypatch.setattr(runner_mod, "OVERRUN_GRACE", 0.3)
    host = FakeHost()
    job = _job()
    job.payload["method"][0]["max_duration"] = 0.2
    runner, done = await _run(host, job)
    await host.set(node=host.node.model_copy(update={"state": "lost"}))
    await asyncio.sleep(1.0)  # past max_duration + grace, the node lost
    assert not done.done()
    # the lost node is said (at once: an integrator's review), the overrun not
    lost = "node pc1 hosting cmp is lost during task 0: the job ends ce unless it is back"
    assert len(host.reasons) == 1 and host.reasons[0].startswith(lost), host.reasons
    warned = [kw["detail"]["message"] for e, kw in host.events if e == "warning"]
    assert len(warned) == 1 and warned[0].startswith(lost), host.events
    await host.set(node=host.node.model_copy(update={"state": "online"}))
    await asyncio.sleep(0.5)  # back, and still no end: now it is said
    assert host.reasons[1] == "", host.reasons  # the lost node's reason went
    warned = [kw["detail"]["message"] for e, kw in host.events if e == "warning"]
    assert len(warned) == 2 and not warned[1].startswith(lost), host.events
    await runner.cancel()
    status, _reason = await asyncio.wait_for(done, 10)
    assert status == "cd"


async def test_a_node_not_heard_from_since_the_start_is_said_without_a_question_mark() -> None:
    """A fault-injection tour, a whole stack killed and started again: the job's reason
    read "node ? hosting … is unknown during task 0" for a node not heard from yet."""
    host = FakeHost()
    runner, done = await _run(host, _job())
    online = host.node
    await host.set(node=None)
    await asyncio.sleep(0.3)
    said = "the node hosting cmp is not heard from since the scheduler started during task 0"
    assert host.reasons and host.reasons[0].startswith(said), host.reasons
    assert "?" not in host.reasons[0], host.reasons
    await host.set(node=online)
    await runner.cancel()
    status, _reason = await asyncio.wait_for(done, 10)
    assert status == "cd"


async def test_the_lost_node_s_reason_goes_when_the_task_s_end_comes_with_its_return() -> None:
    """A dashboard tour: a node stopped (SIGSTOP) 16 s mid-task, then let go; its task's
    end came with its return, and the reason "node local hosting … is lost during task 0:
    the job ends ce unless it is back within 30 s" stayed on the job until it ended, its
    next task running normally. The reason goes with the end too."""
    host = FakeHost()
    _runner, done = await _run(host)
    await host.set(node=host.node.model_copy(update={"state": "lost"}))
    await asyncio.sleep(0.2)
    lost = "node pc1 hosting cmp is lost during task 0"
    assert len(host.reasons) == 1 and host.reasons[0].startswith(lost), host.reasons
    end = TaskEndInfo(job=1, task=0, reason="done", t_start=0, t_end=1, npoints=60, stream="s")
    ended = ComponentStatus(
        name="cmp", node="pc1", state="idle", time=time.time(), epoch=1, last_task=end
    )
    # back, and its end with it: one wake-up of the runner sees both
    await host.set(node=host.node.model_copy(update={"state": "online"}), cstatus={"cmp": ended})
    status, _reason = await asyncio.wait_for(done, 5)
    assert status == "c", (status, _reason)
    assert host.reasons[-1] == "", host.reasons  # the lost node's reason went


async def test_a_task_s_start_is_dated_when_it_began_on_its_node() -> None:
    """A dashboard tour: task_started was dated when the scheduler said it, seconds after
    the task began on a busy PC, and the job page's events disagreed with its plot."""
    host = FakeHost()
    host.offset = 60.0  # the node's clock 60 s ahead: dated on the scheduler's clock
    _runner, done = await _run(host)  # (returns once the task runs: its start said)
    started = next(kw for ev, kw in host.events if ev == "task_started")
    assert started["at"] == host.cstatus["cmp"].time - 60.0, started  # (its started_at)
    end = TaskEndInfo(job=1, task=0, reason="done", t_start=0, t_end=1, npoints=60, stream="s")
    ended = ComponentStatus(
        name="cmp", node="pc1", state="idle", time=time.time(), epoch=1, last_task=end
    )
    await host.set(cstatus={"cmp": ended})
    assert (await asyncio.wait_for(done, 5))[0] == "c"


async def test_a_node_stopping_mid_task_is_said_as_ending_the_task() -> None:
    """An admin's tour: a node stopped cleanly mid-task was said "is stopping during task
    0: the job ends ce unless it is back within 30 s", and the job ended ce 8 ms later
    with the task's end the node told as it went: a stopping node ends its task."""
    host = FakeHost()
    _runner, done = await _run(host)
    await host.set(node=host.node.model_copy(update={"state": "stopping"}))
    await asyncio.sleep(0.2)
    assert host.reasons == [
        "node pc1 hosting cmp is stopping during task 0: its task ends with it, and the job ends ce"
    ], host.reasons
    end = TaskEndInfo(
        job=1, task=0, reason="stopped", message="node shutting down", t_start=0, t_end=1,
        npoints=6, stream="s",
    )  # fmt: skip
    ended = ComponentStatus(
        name="cmp", node="pc1", state="idle", time=time.time(), epoch=1, last_task=end
    )
    await host.set(cstatus={"cmp": ended})
    status, reason = await asyncio.wait_for(done, 5)
    assert status == "ce" and "node shutting down" in str(reason), (status, reason)


async def _soon_given_up(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[FakeHost, asyncio.Future[tuple[str, str | None]]]:
    """A 0.2 s task that counts as overrunning after 0.5 s and is given up after 1.0 s."""
    monkeypatch.setattr(runner_mod, "OVERRUN_GRACE", 0.3)
    monkeypatch.setattr(runner_mod, "GIVE_UP_CONFIRM", 0.3)
    host = FakeHost()
    host.stuck_after = 0.8
    job = _job()
    job.payload["method"][0]["max_duration"] = 0.2
    _runner, done = await _run(host, job)
    return host, done


async def test_a_task_whose_driver_call_never_returns_is_given_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A driver call that never returns kept its job `r` for good (the reason said so,
    only a cancel ended it). ``[scheduler] stuck_after`` past its max_duration the task
    is given up: the job ends ce, saying so and that the component stays busy."""
    host, done = await _soon_given_up(monkeypatch)
    t0 = time.monotonic()
    status, reason = await asyncio.wait_for(done, 10)  # the node says nothing: it hangs
    took = time.monotonic() - t0
    assert status == "ce", (status, reason)
    assert "task 0 (count) on cmp was given up" in str(reason), reason
    assert "cmp stays busy until its node restarts" in str(reason), reason
    assert 0.9 <= took < 3, took  # 0.2 s + stuck_after 0.8 s
    assert host.reasons[-1] == "", host.reasons  # the live "cancel it" advice is gone
    assert ("cmp", "reset") not in host.requests  # it could not answer one


async def test_a_task_that_ended_while_the_scheduler_stood_still_is_not_given_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A review: a scheduler paused past a task's ``stuck_after`` gave the task up in
    its first pass after the pause, before it read the task's end that had come
    meanwhile: the job ended ce, "a driver call did not return; … stays busy", for a
    task that had ended on time. The give-up waits until the loop has run a while."""
    monkeypatch.setattr(runner_mod, "OVERRUN_GRACE", 0.3)
    monkeypatch.setattr(runner_mod, "GIVE_UP_CONFIRM", 0.5)
    host = FakeHost()
    host.stuck_after = 0.3
    job = _job()
    job.payload["method"][0]["max_duration"] = 0.2
    _runner, done = await _run(host, job)
    time.sleep(1.5)  # the scheduler's loop stands still (SIGSTOP, a paused VM)
    await asyncio.sleep(0.05)  # its first pass after the pause
    await _task_ended(host)  # ... then the end that had come meanwhile is read
    status, reason = await asyncio.wait_for(done, 10)
    assert status == "c", (status, reason)
    assert "given up" not in str(reason), reason


async def test_a_node_restart_names_every_task_it_cut_off() -> None:
    """Found by fault injection (2 of 2 runs): a node killed with tasks of two roles
    running ended the job ce naming only the first task; the second was cut off too."""
    host = FakeHost()
    job = _job()
    job.payload["method"].append(dict(job.payload["method"][0], component_role="other"))
    done: asyncio.Future[tuple[str, str | None]] = asyncio.get_running_loop().create_future()

    async def on_done(r: JobRunner, status: str, reason: str | None) -> None:
        done.set_result((status, reason))

    runner = JobRunner(job=job, roles={"counter": "c1", "other": "c2"}, host=host, on_done=on_done)
    _KEEP.add(asyncio.ensure_future(runner.run()))
    for _ in range(100):
        if all(t.state == "running" for t in runner.tasks):
            break
        await asyncio.sleep(0.01)
    await host.set(node=host.node.model_copy(update={"epoch": 2}))
    status, reason = await asyncio.wait_for(done, 5)
    assert status == "ce"
    assert "task 0 (count) on c1 is gone" in str(reason), reason
    assert "task 1 (count) on c2 is gone" in str(reason), reason


@pytest.mark.parametrize("then", ["task-ends", "node-restarts"])
async def test_a_scheduler_dead_before_the_task_start_answer_does_not_start_it_twice(
    then: str,
) -> None:
    """The runner stores a task's start only with the node's answer (no fsync between a
    launch and its task). A scheduler killed after asking the node, before the answer,
    leaves the task pending in the store: its successor must take the task the node
    runs (its retained status) for running, not start it a second time, and the job
    must end as it would have."""

    class DiesMidStart(FakeHost):
        async def component_request(
            self,
            component: str,
            op: str,
            args: Mapping[str, Any],
            timeout: float = 5.0,
            resend: bool = False,
        ) -> tuple[bool, str, Any]:
            if op != "task_start":
                return await super().component_request(component, op, args, timeout)
            await super().component_request(component, op, args, timeout)  # the node runs it
            await asyncio.sleep(3600)  # ... and the scheduler dies before the answer
            raise AssertionError("unreachable")

    first = DiesMidStart()
    dead = JobRunner(job=_job(), roles={"counter": "cmp"}, host=first, on_done=_never_done)
    task = asyncio.ensure_future(dead.run())
    for _ in range(100):
        if ("cmp", "task_start") in first.requests:
            break
        await asyncio.sleep(0.01)
    assert ("cmp", "task_start") in first.requests
    stored = getattr(first, "saved", None)
    task.cancel()

    host = FakeHost()
    host.cstatus = dict(first.cstatus)  # the node's retained status: running job 1, task 0
    if then == "node-restarts":
        # the node was killed too, just after the scheduler (random-timing fault
        # injection): its successor is online before the scheduler's, and its
        # components' retained statuses still say what the dead node last published.
        # The task was taken for the new node's own, and the job hung `r`
        host.node = host.node.model_copy(update={"epoch": 2})
    job = _job().model_copy(update={"progress": stored or {}})
    done: asyncio.Future[tuple[str, str | None]] = asyncio.get_running_loop().create_future()

    async def on_done(r: JobRunner, status: str, reason: str | None) -> None:
        done.set_result((status, reason))

    readopted = JobRunner(job=job, roles={"counter": "cmp"}, host=host, on_done=on_done)
    _KEEP.add(asyncio.ensure_future(readopted.run()))
    for _ in range(100):
        if readopted.tasks[0].state in ("running", "ended"):
            break
        await asyncio.sleep(0.01)
    assert readopted.tasks[0].state == ("running" if then == "task-ends" else "ended")
    assert ("cmp", "task_start") not in host.requests  # not started a second time
    if then == "task-ends":
        await _task_ended(host)
        assert await asyncio.wait_for(done, 5) == ("c", None)
        return
    status, reason = await asyncio.wait_for(done, 5)
    assert status == "ce" and "restarted mid-task" in str(reason), (status, reason)


async def _never_done(r: JobRunner, status: str, reason: str | None) -> None:
    raise AssertionError(f"the dead scheduler's runner ended the job {status}: {reason}")


def test_a_late_merge_note_replaces_the_one_before() -> None:
    """Found by fault injection: a job whose reason was only a merge note read "late
    data merged into the file (now 320 points) | late data merged … (now 370 points)"."""
    from tomato_mqtt.model.jobs import merge_noted

    first = merge_noted(None, "late data merged into the file (now 320 points)")
    assert first == "late data merged into the file (now 320 points)"
    again = merge_noted(first, "late data merged into the file (now 370 points)")
    assert again == "late data merged into the file (now 370 points)"
    kept = merge_noted("node lost | late data merged into the file (now 5 points)", "late x")
    assert kept == "node lost | late x"


def _presence(runners: dict[int, Any]) -> tuple[Any, Callable[[float], None]]:
    """A scheduler's Presence of node ``pc`` with these job runners (clock_tolerance 2 s,
    heartbeats every 0.05 s), and a function that sends the node's status with its
    clock off by the given offset."""
    from types import SimpleNamespace

    from tomato_mqtt.services.scheduler.presence import Presence

    svc: Any = SimpleNamespace(
        settings=SimpleNamespace(scheduler=SimpleNamespace(lost_after=5, clock_tolerance=2)),
        heartbeat=0.05,
        nodes={},
        runners=runners,
        node_of=lambda comp: SimpleNamespace(node="pc"),
        job_event=lambda *a, **k: None,
        broker_heard=float("inf"),
    )
    p = Presence(svc)

    def beat(offset: float) -> None:
        st = NodeStatus(state="online", node="pc", epoch=1, heartbeat=time.time() + offset)
        p.received(st, retained=False)

    return p, beat


def _stepping(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Any, Callable[[float], None], list[tuple[str, str]]]:
    """:func:`_presence` with job 7 running on the node, the steps told to it kept in the
    list returned, and a step taken as such once it held 0.3 s (STEP_HOLDS)."""
    from types import SimpleNamespace

    from tomato_mqtt.services.scheduler import presence as presence_mod

    monkeypatch.setattr(presence_mod, "STEP_HOLDS", 0.3)
    told: list[tuple[str, str]] = []
    runner = SimpleNamespace(
        roles={"counter": "cmp"}, clock_stepped=lambda node, msg: told.append((node, msg))
    )
    p, beat = _presence({7: runner})
    return p, beat, told


def test_a_step_of_a_node_clock_is_told_to_its_running_jobs_and_a_backlog_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by fault injection: a node's clock stepped back an hour mid-task, the job
    ended c without a word (its uts jump back), and a step forward had the file record
    one offset for all its points. A new offset that holds (STEP_HOLDS) is a step, told
    to each running job on that node; one that passes (a paused scheduler's backlog of
    statuses, oldest first) is not."""
    p, beat, told = _stepping(monkeypatch)

    for _ in range(5):
        beat(0.0)
    for late in [*range(-50, 1, 2), 0, 0, 0, 0, 0]:  # a backlog, oldest first
        beat(late)
    assert "pc" not in p.step_seen  # it passed
    time.sleep(0.4)
    beat(0.0)
    assert told == []
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.6:  # the clock stepped back an hour, and stays so
        beat(-3600.0)
        time.sleep(0.05)
    assert len(told) == 1, told
    node, msg = told[0]
    assert node == "pc" and msg.startswith("the clock of node pc stepped by -3600.0 s at about")
    assert "the points keep the node's timestamps, so uts jump there" in msg
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.6:  # and forward again: a second step, told too
        beat(0.0)
        time.sleep(0.05)
    assert len(told) == 2 and "stepped by +3600.0 s" in told[1][1], told
    # a restarted node (a new epoch) with another clock: its own offset, no step (an
    # outside check found "stepped by -3600 s" in a job after such a restart)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.6:
        st = NodeStatus(state="online", node="pc", epoch=2, heartbeat=time.time() + 7200)
        p.received(st, retained=False)
        time.sleep(0.05)
    assert len(told) == 2, told


def test_a_step_is_said_from_the_offset_just_before_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fault round: a node's clock stepped -1 s (within the tolerance), then -5 s more:
    the job's reason said "stepped by -6.0 s" (from the first offset taken), while the
    node's own task end said -5."""
    _p, beat, told = _stepping(monkeypatch)
    for _ in range(5):
        beat(0.0)
    for _ in range(5):
        beat(-1.0)  # within the 2 s tolerance: no step
        time.sleep(0.05)
    assert told == []
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.6:
        beat(-6.0)
        time.sleep(0.05)
    assert len(told) == 1 and "stepped by -5.0 s" in told[0][1], told
    assert "now -6.0 s from it" in told[0][1], told


def test_statuses_a_late_broker_passes_on_are_no_clock_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A security round: a broker flooded by two logins passed every status on 4-57 s
    late for minutes, and every node's clock (`local`'s too) was said to have stepped,
    into three jobs' reasons. The scheduler's own heartbeat, as late, says it is the
    broker: the nodes' statuses meanwhile are not taken for their clocks."""
    p, beat, told = _stepping(monkeypatch)
    for _ in range(5):
        beat(0.0)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.8:  # everything 6 s late, its own heartbeat too
        p.own_echo(time.time() - 6.0)
        beat(-6.0)
        time.sleep(0.05)
    assert told == [], told
    # without its own heartbeat as late, the same is a step (what the test above checks)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.8:
        p.own_echo(time.time() - 0.01)
        beat(-6.0)
        time.sleep(0.05)
    assert len(told) == 1 and "stepped by -6.0 s" in told[0][1], told


async def test_a_task_start_whose_answer_was_lost_runs_on() -> None:
    """Found by fault injection (a broker with tiny queues): the node started the task,
    its answer was lost, and the job ended ce "no node hosting … answered … is it
    running?" while the node measured on. The component's own status says it runs the
    task: it is taken as started."""
    host = FakeHost()
    host.lose_start_reply = True
    runner, done = await _run(host)
    await asyncio.sleep(0.2)
    assert not done.done() and runner.error is None, runner.error
    await _task_ended(host)
    status, reason = await asyncio.wait_for(done, 10)
    assert (status, reason) == ("c", None), (status, reason)


def test_a_node_is_heard_alive_by_what_arrives_never_by_its_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The name check's liveness (services/node/service.py _Liveness): heartbeats of one
    node that come twice in a row as far apart as they were sent prove it alive, whatever
    its clock says (an hour off); a retained status alone does not, nor do heartbeats
    queued in a stall and delivered at once, nor one older than the last, nor one sent
    late by a node back from a freeze."""
    from tomato_mqtt.services.node import service as node_service

    now = [1000.0]
    monkeypatch.setattr(node_service.time, "monotonic", lambda: now[0])
    heard = node_service._Liveness()
    key = (1, 42, "pc2")
    h = 5_000_000.0  # its clock, far from this one's
    assert not heard.alive(key, h)  # its retained status
    now[0] += 0.01
    assert not heard.alive(key, h + 2) and not heard.alive(key, h + 4)  # a stall's queue
    now[0] += 2.0
    assert not heard.alive(key, h + 6)  # 2 s after the last one: once is not enough
    now[0] += 2.0
    assert heard.alive(key, h + 8)  # and again: alive
    now[0] += 2.0
    assert not heard.alive(key, h + 5)  # older than the last one heard
    assert not heard.alive((2, 43, "pc3"), h + 8)  # another node: first word
    # a gone node's retained status, and 20 s later one heartbeat of it, delivered late
    # (sent 2 s after it): a review saw a running node yield its name to it
    gone = (3, 44, "pc4")
    assert not heard.alive(gone, h)
    now[0] += 20.0
    assert not heard.alive(gone, h + 2)
    # a node frozen as it sent a heartbeat: its retained status, then 2 s later the one
    # it sends when it resumes (it then finds its name taken and stops: a CI run saw the
    # node that had taken the name yield to it, and neither was left)
    frozen = (4, 45, "pc5")
    assert not heard.alive(frozen, h)
    now[0] += 2.0
    assert not heard.alive(frozen, h + 2)
    now[0] += 30.0  # nothing more of it: a heartbeat now is not in a row with the last
    assert not heard.alive(frozen, h + 4)


async def test_a_late_heartbeat_of_a_node_back_from_a_freeze_does_not_make_the_holder_yield(
    tmp_path: Path,
) -> None:
    """A review of the name check: a node frozen as it built a heartbeat sends it when it
    resumes (then finds its name taken and yields). The node that took the name had
    heard only its retained status of before the freeze; the late heartbeat, newer and
    within GONE_AFTER heartbeats by its clock, counted as proof of life, and the holder,
    started later, yielded too: neither was left. Two heartbeats in a row, each fresh as
    it came, prove a node alive (two nodes started together, clocks that agree)."""
    from tomato_mqtt.services.node.service import NodeConfig, NodeService
    from tomato_mqtt.transport.client import BrokerURL
    from tomato_mqtt.wire.messages import NodeStatus

    def holder() -> NodeService:
        url = BrokerURL.parse("mqtt://127.0.0.1:1")  # never connects
        node = NodeService(NodeConfig("spare", url, "t", tmp_path / "spool"))
        node.epoch = 2_000  # started after the other (epoch 1_000)
        node._claimed = True
        node._beat_at = time.monotonic()  # it speaks: not back from a freeze
        return node

    def beat(ago: float) -> NodeStatus:
        return NodeStatus(
            state="online", node="spare", epoch=1_000, heartbeat=time.time() - ago,
            host="pc-a", pid=4242,
        )  # fmt: skip

    node = holder()
    node._heard_own_status(beat(7.0))  # its retained status, from before its freeze
    node._heard_own_status(beat(4.9))  # built 2 s later, just before the freeze, sent now
    assert node.refused is None, node.refused
    # two nodes that started together: heartbeats fresh as they come, the later yields
    node = holder()
    node._heard_own_status(beat(0.1))
    node._heard_own_status(beat(-1.9))  # 2 s later by its clock (a clock 2 s ahead)
    assert node.refused is not None and "pid 4242 on pc-a" in node.refused


async def test_a_task_saved_while_its_start_was_under_way_is_started_by_the_successor() -> None:
    """From a review: a task's ``starting`` is kept in memory only, but a save of another
    change (the save timer, another role) stored it; the successor of a scheduler that
    died while the start was under way skipped it (only ``pending`` tasks are started)
    and had no start to check it against: if the node never got the start, the job
    stayed r until the overrun give-up. It is asked for again now (the node starts a
    task once: ``_start`` takes over one it holds)."""
    host = FakeHost()
    job = _job().model_copy(update={"progress": {"tasks": {"0": {"state": "starting"}}}})
    runner, done = await _run(host, job)
    assert runner.tasks[0].state == "running", runner.tasks[0].state
    assert ("cmp", "task_start") in host.requests, host.requests
    await _task_ended(host)
    assert await asyncio.wait_for(done, 10) == ("c", None)


async def test_a_task_its_node_holds_is_taken_over_whatever_its_trigger_says_now() -> None:
    """From a review: task 0 (stop_with Y) was saved ``starting`` and its node runs it;
    task Y started meanwhile. The successor skipped task 0 by its trigger without
    looking at the node, and the job ended c while the node still ran it. A task its
    node holds is taken over (and stopped by its trigger as any running task)."""
    payload = {
        "method": [
            {"component_role": "a", "technique_name": "count", "max_duration": 60,
             "sampling_interval": 1, "stop_with_task_name": "Y"},
            {"component_role": "b", "technique_name": "count", "max_duration": 60,
             "sampling_interval": 1, "task_name": "Y"},
        ]
    }  # fmt: skip
    now = time.time()
    saved = {"0": {"state": "starting"}, "1": {"state": "running", "epoch": 1, "started_at": now}}
    job = Job(id=1, payload=payload, submitted_at="now", progress={"tasks": saved})
    host = FakeHost()
    host.cstatus = {
        c: ComponentStatus(
            name=c, node="pc1", state="running", time=now, job=1, task=i, started_at=now, epoch=1
        )
        for i, c in enumerate(("ca", "cb"))
    }
    done: asyncio.Future[tuple[str, str | None]] = asyncio.get_running_loop().create_future()

    async def on_done(r: JobRunner, status: str, reason: str | None) -> None:
        done.set_result((status, reason))

    runner = JobRunner(job=job, roles={"a": "ca", "b": "cb"}, host=host, on_done=on_done)
    _KEEP.add(asyncio.ensure_future(runner.run()))
    for _ in range(100):
        if runner.tasks[0].state != "pending":
            break
        await asyncio.sleep(0.01)
    assert runner.tasks[0].state == "running", runner.tasks[0].state
    assert ("ca", "task_start") not in host.requests, host.requests  # taken over, not asked
    ends = {
        c: ComponentStatus(
            name=c, node="pc1", state="idle", time=time.time(), epoch=1,
            last_task=TaskEndInfo(
                job=1, task=i, reason="done", t_start=now, t_end=now + 1, npoints=5, stream="s"
            ),
        )
        for i, c in enumerate(("ca", "cb"))
    }  # fmt: skip
    await host.set(cstatus=ends)
    assert await asyncio.wait_for(done, 10) == ("c", None)
    assert [t.state for t in runner.tasks] == ["ended", "ended"]


async def test_a_task_being_started_as_its_node_restarted_is_not_run_a_second_time() -> None:
    """From a review: a task saved ``starting`` on the node's run of epoch 1; scheduler and
    node died, the node is back with epoch 2 and knows nothing of it. Asked again, it
    would run a second time (the first run's points may be in the old spool): the job
    ends ce instead, saying why."""
    host = FakeHost()
    host.node = NodeStatus(state="online", node="pc1", epoch=2, heartbeat=time.time())
    idle = ComponentStatus(name="cmp", node="pc1", state="idle", time=time.time(), epoch=2)
    host.cstatus = {"cmp": idle}
    job = _job().model_copy(
        update={"progress": {"tasks": {"0": {"state": "starting", "epoch": 1}}}}
    )
    done: asyncio.Future[tuple[str, str | None]] = asyncio.get_running_loop().create_future()

    async def on_done(r: JobRunner, status: str, reason: str | None) -> None:
        done.set_result((status, reason))

    runner = JobRunner(job=job, roles={"counter": "cmp"}, host=host, on_done=on_done)
    _KEEP.add(asyncio.ensure_future(runner.run()))
    status, reason = await asyncio.wait_for(done, 10)
    assert status == "ce" and "restarted (epoch 1 -> 2) while task 0" in (reason or ""), reason
    assert ("cmp", "task_start") not in host.requests, host.requests


def _two_roles(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    task = {"technique_name": "count", "max_duration": 60, "sampling_interval": 1}
    return {"method": [task | {"component_role": "a"} | a, task | {"component_role": "b"} | b]}


def _running_status(c: str, task: int, now: float) -> ComponentStatus:
    return ComponentStatus(
        name=c, node="pc1", state="running", time=now, job=1, task=task, started_at=now, epoch=1
    )


async def _both_end(host: FakeHost, now: float, reason: str = "done") -> None:
    ends = {
        c: ComponentStatus(
            name=c, node="pc1", state="idle", time=time.time(), epoch=1,
            last_task=TaskEndInfo(
                job=1, task=i, reason=reason, t_start=now, t_end=now + 1, npoints=5, stream="s"
            ),
        )
        for i, c in enumerate(("ca", "cb"))
    }  # fmt: skip
    await host.set(cstatus=ends)


@pytest.mark.parametrize(
    ("payload", "held"),
    [
        (_two_roles({"task_name": "A"}, {"start_with_task_name": "A"}), 0),
        (_two_roles({"task_name": "A", "start_with_task_name": "B"},
                    {"task_name": "B", "start_with_task_name": "A"}), 1),
    ],
    ids=["start-with", "ring"],
)  # fmt: skip
async def test_a_task_taken_over_from_its_node_counts_as_started(
    payload: dict[str, Any], held: int
) -> None:
    """From a review: a task a successor took over from its node's status (its start was
    under way when the old scheduler died) never counted as started: a task that starts
    with it (or with it in a ring) waited for ever, the job r for good."""
    now = time.time()
    saved = {str(held): {"state": "starting", "epoch": 1}}
    job = Job(id=1, payload=payload, submitted_at="now", progress={"tasks": saved})
    host = FakeHost()
    comps = ("ca", "cb")
    host.cstatus = {comps[held]: _running_status(comps[held], held, now)}
    done: asyncio.Future[tuple[str, str | None]] = asyncio.get_running_loop().create_future()

    async def on_done(r: JobRunner, status: str, reason: str | None) -> None:
        done.set_result((status, reason))

    runner = JobRunner(job=job, roles={"a": "ca", "b": "cb"}, host=host, on_done=on_done)
    _KEEP.add(asyncio.ensure_future(runner.run()))
    other = comps[1 - held]
    for _ in range(200):
        if (other, "task_start") in host.requests:
            break
        await asyncio.sleep(0.01)
    assert (other, "task_start") in host.requests, [t.state for t in runner.tasks]
    assert (comps[held], "task_start") not in host.requests  # taken over, not asked
    await _both_end(host, now)
    assert await asyncio.wait_for(done, 10) == ("c", None)


async def test_a_task_taken_over_after_its_stop_with_started_is_stopped() -> None:
    """From a review: taken over after its stop_with task had started, a task ran its
    whole max_duration: triggers fire when the trigger task starts, which was before."""
    now = time.time()
    payload = _two_roles({"stop_with_task_name": "Y"}, {"task_name": "Y"})
    saved = {"0": {"state": "starting", "epoch": 1}, "1": {"state": "running", "epoch": 1}}
    job = Job(id=1, payload=payload, submitted_at="now", progress={"tasks": saved})
    host = FakeHost()
    host.cstatus = {c: _running_status(c, i, now) for i, c in enumerate(("ca", "cb"))}
    done: asyncio.Future[tuple[str, str | None]] = asyncio.get_running_loop().create_future()

    async def on_done(r: JobRunner, status: str, reason: str | None) -> None:
        done.set_result((status, reason))

    runner = JobRunner(job=job, roles={"a": "ca", "b": "cb"}, host=host, on_done=on_done)
    _KEEP.add(asyncio.ensure_future(runner.run()))
    for _ in range(200):
        if ("ca", "task_stop") in host.requests:
            break
        await asyncio.sleep(0.01)
    assert ("ca", "task_stop") in host.requests, host.requests
    await _both_end(host, now)
    assert await asyncio.wait_for(done, 10) == ("c", None)


async def test_a_successor_up_before_the_node_does_not_start_the_task_a_second_time() -> None:
    """From a review: scheduler and node killed while a task was being started (saved
    on the node's epoch 1); the successor came up first, saw the node's will (offline)
    and sent the start, which the node, back with epoch 2, ran a second time. It waits
    for the node, and then ends the job ce, as when the node was back first."""
    host = FakeHost()
    host.node = NodeStatus(state="offline", node="pc1", epoch=1, heartbeat=time.time() - 5)
    host.cstatus = {
        "cmp": ComponentStatus(name="cmp", node="pc1", state="idle", time=time.time(), epoch=1)
    }
    job = _job().model_copy(
        update={"progress": {"tasks": {"0": {"state": "starting", "epoch": 1}}}}
    )
    done: asyncio.Future[tuple[str, str | None]] = asyncio.get_running_loop().create_future()

    async def on_done(r: JobRunner, status: str, reason: str | None) -> None:
        done.set_result((status, reason))

    _KEEP.add(
        asyncio.ensure_future(
            JobRunner(job=job, roles={"counter": "cmp"}, host=host, on_done=on_done).run()
        )
    )
    await asyncio.sleep(0.5)
    assert not host.requests and not done.done(), host.requests
    back = NodeStatus(state="online", node="pc1", epoch=2, heartbeat=time.time())
    idle = ComponentStatus(name="cmp", node="pc1", state="idle", time=time.time(), epoch=2)
    await host.set(node=back, cstatus={"cmp": idle})
    status, reason = await asyncio.wait_for(done, 10)
    assert status == "ce" and "restarted (epoch 1 -> 2)" in (reason or ""), reason
    assert ("cmp", "task_start") not in host.requests, host.requests


def _ended_status(
    c: str, task: int, reason: str = "done", msg: str | None = None
) -> ComponentStatus:
    now = time.time()
    end = TaskEndInfo(
        job=1, task=task, reason=reason, message=msg, t_start=now - 5, t_end=now - 1,
        npoints=5, stream="s",
    )  # fmt: skip
    return ComponentStatus(name=c, node="pc1", state="idle", time=now, epoch=1, last_task=end)


class _StopsAsANode(FakeHost):
    """task_stop as a node does it: it stops whatever task of the job the component runs."""

    def __init__(self) -> None:
        super().__init__()
        self.stopped: list[tuple[str, int | None]] = []

    async def component_request(
        self,
        component: str,
        op: str,
        args: Mapping[str, Any],
        timeout: float = 5.0,
        resend: bool = False,
    ) -> tuple[bool, str, Any]:
        if op != "task_stop":
            return await super().component_request(component, op, args, timeout, resend)
        self.requests.append((component, op))
        await asyncio.sleep(0.01)  # in flight
        st = self.cstatus.get(component)
        if st is None or st.state != "running":
            return True, "no running task", {"running": False}
        self.stopped.append((component, st.task))
        await self.set(cstatus=self.cstatus | {component: _ended_status(component, st.task or 0)})
        return True, "stopped", {"running": True}


async def test_a_task_taken_over_as_ended_sends_no_stop_that_would_stop_the_next() -> None:
    """From a review: a task taken over whose status said it had ended, its stop_with
    started, was stopped "by its trigger" too: the stop names the job only, and the
    node stopped the role's next task with it."""
    base = {"technique_name": "count", "max_duration": 60, "sampling_interval": 1}
    payload = {
        "method": [
            base | {"component_role": "a", "stop_with_task_name": "Y"},
            base | {"component_role": "a"},
            base | {"component_role": "b", "task_name": "Y"},
        ]
    }
    saved = {
        "0": {"state": "starting", "epoch": 1},
        "2": {"state": "ended", "epoch": 1, "end": {"reason": "done"}},
    }
    job = Job(id=1, payload=payload, submitted_at="now", progress={"tasks": saved})
    host = _StopsAsANode()
    host.cstatus = {"ca": _ended_status("ca", 0, "stopped", "stopped by Y")}
    done: asyncio.Future[tuple[str, str | None]] = asyncio.get_running_loop().create_future()

    async def on_done(r: JobRunner, status: str, reason: str | None) -> None:
        done.set_result((status, reason))

    runner = JobRunner(job=job, roles={"a": "ca", "b": "cb"}, host=host, on_done=on_done)
    _KEEP.add(asyncio.ensure_future(runner.run()))
    for _ in range(200):
        if runner.tasks[1].state == "running":
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # a stop in flight would have reached the node
    assert ("ca", "task_stop") not in host.requests and not host.stopped, host.stopped
    await host.set(cstatus={"ca": _ended_status("ca", 1)})
    assert await asyncio.wait_for(done, 10) == ("c", None)


class _TwoNodes(FakeHost):
    """ca's node is away (its will: offline), cb's is online."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes = {
            "ca": NodeStatus(state="offline", node="pc1", epoch=1, heartbeat=time.time() - 5),
            "cb": NodeStatus(state="online", node="pc2", epoch=1, heartbeat=time.time()),
        }

    def node_of(self, component: str) -> NodeStatus | None:
        return self.nodes.get(component)


@pytest.mark.parametrize("what", ["error", "cancel"])
async def test_a_job_failing_while_a_task_waits_for_its_node_keeps_its_reason(what: str) -> None:
    """From a review: role a's task, saved as being started, waits for its node; role b's
    task fails (or the job is cancelled) meanwhile: the job ended with "node ... was lost
    ... while task 0 was being started" instead of its reason."""
    base = {"technique_name": "count", "max_duration": 60, "sampling_interval": 1}
    payload = {"method": [base | {"component_role": "a"}, base | {"component_role": "b"}]}
    saved = {"0": {"state": "starting", "epoch": 1}, "1": {"state": "running", "epoch": 1}}
    job = Job(id=1, payload=payload, submitted_at="now", progress={"tasks": saved})
    host = _TwoNodes()
    host.cstatus = {"cb": _running_status("cb", 1, time.time())}
    done: asyncio.Future[tuple[str, str | None]] = asyncio.get_running_loop().create_future()

    async def on_done(r: JobRunner, status: str, reason: str | None) -> None:
        done.set_result((status, reason))

    runner = JobRunner(job=job, roles={"a": "ca", "b": "cb"}, host=host, on_done=on_done)
    _KEEP.add(asyncio.ensure_future(runner.run()))
    await asyncio.sleep(0.3)
    if what == "error":
        await host.set(cstatus={"cb": _ended_status("cb", 1, "error", "driver exploded")})
    else:
        await runner.cancel()
    status, reason = await asyncio.wait_for(done, 10)
    assert "being started" not in (reason or ""), reason
    assert status == ("ce" if what == "error" else "cd"), (status, reason)
    if what == "error":
        assert "driver exploded" in (reason or ""), reason


async def test_the_start_of_a_task_names_the_node_s_epoch_it_was_decided_on() -> None:
    """The node refuses a start asked of its run before (a restart in between: the
    first copy may have run it there): the scheduler's task_start names that epoch."""
    host = FakeHost()  # its node's status: epoch 1 (and the task's status says so too)
    _runner, done = await _run(host)
    sent = [args for _, op, args in host.args if op == "task_start"]
    assert [a.get("epoch") for a in sent] == [host.node.epoch], sent
    await _task_ended(host)
    assert await asyncio.wait_for(done, 10) == ("c", None)


async def test_a_task_stopped_by_another_role_s_failure_gets_its_end() -> None:
    """A review: two roles run at once; one's task fails, and the other's was left
    "running" in the ended job, without a task_ended event (a dashboard showed it
    running). It ends "stopped", its count unknown until its node tells it late."""
    host = FakeHost()

    def task(role: str) -> dict[str, Any]:
        return {"component_role": role, "technique_name": "count",
                "max_duration": 60, "sampling_interval": 1}  # fmt: skip

    job = Job(id=1, payload={"method": [task("a"), task("b")]}, submitted_at="now")
    done: asyncio.Future[tuple[str, str | None]] = asyncio.get_running_loop().create_future()

    async def on_done(r: JobRunner, status: str, reason: str | None) -> None:
        await r.reset_done()
        done.set_result((status, reason))

    runner = JobRunner(job=job, roles={"a": "cmpA", "b": "cmpB"}, host=host, on_done=on_done)
    _KEEP.add(asyncio.ensure_future(runner.run()))
    for _ in range(200):
        if all(t.state == "running" for t in runner.tasks):
            break
        await asyncio.sleep(0.01)
    assert [t.state for t in runner.tasks] == ["running", "running"]
    end = TaskEndInfo(
        job=1, task=0, reason="error", message="driver broke", t_start=0, t_end=1, npoints=3,
        stream="s",
    )  # fmt: skip
    st = dict(host.cstatus)
    st["cmpA"] = ComponentStatus(
        name="cmpA", node="pc1", state="idle", time=time.time(), epoch=1, last_task=end
    )
    await host.set(cstatus=st)
    status, _reason = await asyncio.wait_for(done, 10)
    assert status == "ce"
    ended = [(kw["task"], kw["detail"]["reason"]) for ev, kw in host.events if ev == "task_ended"]
    assert sorted(ended) == [(0, "error"), (1, "stopped")], ended
    assert {k: v["state"] for k, v in host.saved["tasks"].items()} == {"0": "ended", "1": "ended"}


async def test_a_task_is_not_given_up_while_the_broker_passes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fault run: Mosquitto down for 5 minutes past a task's end; the scheduler counted
    the task overrunning and gave it up at stuck_after: ce "a driver call did not
    return … stays busy until its node restarts", while every point was in the file and
    the component idle. While the broker passes nothing, no overrun is counted and
    nothing is given up; once it is back, the task's end (in the backlog) is read."""
    host, done = await _soon_given_up(monkeypatch)
    await host.set(quiet=True)
    await asyncio.sleep(2.0)  # past max_duration + stuck_after, the broker silent
    assert not done.done()
    assert not [e for e, _ in host.events if e == "warning"], host.events
    await host.set(quiet=False)
    await asyncio.sleep(0.1)  # back: its end comes with the backlog
    await _task_ended(host, npoints=2)
    status, reason = await asyncio.wait_for(done, 5)
    assert status == "c", (status, reason)
    assert not [e for e, _ in host.events if e == "warning"], host.events


async def test_a_node_lost_just_before_the_broker_went_has_its_grace_from_its_return() -> None:
    """An admin's tour: Mosquitto stopped cleanly (SIGTERM, as systemctl stop) sends
    every client's will, then goes; 45 s later the job ended ce "node pc2 … was lost for
    more than 30 s", its file holding every point (a kill -9 of it sends no will: c).
    While the broker passes nothing the node's grace does not run; it starts again once
    the broker is back, and the node that comes back within it finds its job running."""
    host = FakeHost()
    host.node_grace_period = 0.5
    _runner, done = await _run(host)
    await host.set(node=host.node.model_copy(update={"state": "lost"}))  # its will
    await asyncio.sleep(0.2)
    await host.set(quiet=True)  # then the broker is gone
    await asyncio.sleep(1.5)  # thrice the grace
    assert not done.done()
    await host.set(quiet=False)  # back: the grace runs from here
    await asyncio.sleep(0.3)
    assert not done.done()
    await host.set(node=host.node.model_copy(update={"state": "online"}))  # reconnected
    await asyncio.sleep(0.5)  # past the grace counted from the will
    assert not done.done()
    await _task_ended(host, npoints=2)
    status, reason = await asyncio.wait_for(done, 5)
    assert status == "c", (status, reason)
    # and a node that does not come back is still given up, a grace after the broker's return
    host = FakeHost()
    host.node_grace_period = 0.5
    _runner, done = await _run(host)
    await host.set(node=host.node.model_copy(update={"state": "lost"}), quiet=True)
    await asyncio.sleep(1.0)
    await host.set(quiet=False)
    status, reason = await asyncio.wait_for(done, 5)
    assert status == "ce" and "was lost for more than 0.5 s" in str(reason), (status, reason)


@pytest.mark.parametrize("restarting", [False, True])
async def test_a_node_stopped_without_telling_its_task_s_end_is_said_stopped(
    restarting: bool,
) -> None:
    """A randomized fault round: `tomato restart-node --force` of a node whose driver
    call never returned (its task's end never told) ended the job ce "node local … was
    lost for more than 10 s", though the node had said it stopped, on request."""
    host = FakeHost()
    host.node_grace_period = 0.5
    _runner, done = await _run(host)
    await host.set(node=host.node.model_copy(update={"state": "stopping"}))
    await host.set(node=host.node.model_copy(update={"state": "offline", "restarting": restarting}))
    status, reason = await asyncio.wait_for(done, 5)
    how = "restarted (tomato restart-node)" if restarting else "stopped"
    assert status == "ce", (status, reason)
    assert f"was {how} during task 0, and the task's end was not told within 0.5 s" in str(
        reason
    ), reason


def _presence_of_one_node() -> tuple[Any, Callable[[float], None]]:
    """A scheduler's Presence (heartbeat 0.05 s) and ``beat(offset)``: a live status of
    node ``pc`` whose clock is ``offset`` s off, as received."""
    return _presence({})


def test_the_backlog_of_a_stalled_broker_is_no_clock_offset() -> None:
    """A fault run: a broker stalled 40 s delivered the nodes' queued heartbeats at once;
    taken for the nodes' clocks, they wrote tomato_clock_offset -37 s into a job's file
    (the node on the scheduler's own PC) and warned of every node's clock. Heartbeats that
    come while the broker is quiet, or just after it is back, are no measure of a clock."""
    p, beat = _presence_of_one_node()
    p.broker_quiet = True
    for late in range(-40, 0, 2):  # the backlog, oldest first
        beat(late)
    p.broker_quiet, p.broker_back = False, time.monotonic()
    beat(-1.0)
    assert p.clock_offset("pc") is None and p.skew_of("pc") is None and not p.skewed
    time.sleep(0.2)  # past the hold: heartbeats measure the clock again
    beat(0.0)
    off = p.clock_offset("pc")
    assert off is not None and abs(off) < 1 and p.skew_of("pc") is None


def test_the_backlog_of_a_node_whose_link_was_cut_is_no_clock_offset() -> None:
    """An admin's tour: a node's link cut for 45 s; back, the statuses it could not send
    meanwhile came at once, and the scheduler warned "node pc2: clock differs from the
    scheduler's by -37.3 s" (both on one clock). A status that comes much later after the
    last than the node sent it after it starts a hold, as a broker's backlog does; a
    clock that is off is still found after it."""
    p, _beat = _presence_of_one_node()
    p.svc.settings.scheduler.clock_tolerance = 0.1

    def beat_at(heartbeat: float) -> None:
        p.received(NodeStatus(state="online", node="pc", epoch=1, heartbeat=heartbeat), False)

    t0 = time.time()
    beat_at(t0)
    time.sleep(0.05)
    beat_at(time.time())
    time.sleep(0.4)  # the cut: eight heartbeats wait in the node
    for k in range(2, 10):  # then come at once, oldest first
        beat_at(t0 + 0.05 * k)
    assert not p.skewed and p.skew_of("pc") is None, p.offsets
    time.sleep(0.2)  # past the hold
    for _ in range(5):
        beat_at(time.time())
        time.sleep(0.01)
    assert not p.skewed and p.skew_of("pc") is None, p.offsets
    for _ in range(20):  # a clock 1 s behind: found, once the hold its step starts ends
        beat_at(time.time() - 1.0)
        time.sleep(0.02)
    assert p.skewed == {"pc"}, p.offsets


def test_the_backlog_of_a_held_up_scheduler_is_no_clock_offset() -> None:
    """A fault run: a scheduler whose loop was held up 30 s (its state file locked by
    another program) then read the nodes' heartbeats that had waited, and warned "node
    local: clock differs from the scheduler's by -21.9 s". Statuses read while its own
    heartbeat is late, or just after it came, are no measure of a clock."""
    p, beat = _presence_of_one_node()
    p.tick()
    beat(0.0)
    time.sleep(0.3)  # held up: six heartbeats late
    for late in range(-30, -20, 2):  # the statuses that waited, read before its heartbeat
        beat(late)
    p.tick()  # its heartbeat, late
    for late in range(-20, 0, 2):  # and those read after it
        beat(late)
    assert p.skew_of("pc") is None and not p.skewed, p.offsets
    for _ in range(5):  # past the hold, its heartbeats on time again
        time.sleep(0.04)
        p.tick()
    for _ in range(10):  # a clock that is off is still found (its step holds judgments
        time.sleep(0.04)  # for three heartbeats: test_the_backlog_of_a_node_whose_link…)
        p.tick()
        beat(-5.0)
    assert p.skew_of("pc") is not None and p.skewed == {"pc"}


@pytest.mark.parametrize("fault", ["begins", "ends"])
def test_a_job_that_ends_while_a_fault_is_said_keeps_its_final_reason(
    tmp_path: Path, fault: str
) -> None:
    """A review: a fault's reason is given to the running jobs one by one, each published
    before the next; a job that ended meanwhile (a recorder back ends jobs just as its
    fault is cleared) got the fault's reason, or none, over its final one. The service
    here is the store and a publish during which job b's end is stored."""
    from tomato_mqtt.services.scheduler.presence import Presence
    from tomato_mqtt.services.scheduler.store import StateStore

    verdict = "the file lacks points: task 0 on c1: 90 of 100 points stored"
    full = "the recorder cannot store data: database or disk is full"
    store = StateStore(tmp_path / "state.sqlite")
    a = store.add_job({"method": []}, "a", str(tmp_path)).id
    b = store.add_job({"method": []}, "b", str(tmp_path)).id
    for j in (a, b):
        store.update_job(j, status="r", reason=None if fault == "begins" else full)

    class Service:
        def __init__(self) -> None:
            self.store = store

        async def publish_job(self, job: Job, wait: bool = False) -> None:
            if job.id == a and store.job(b).status == "r":  # meanwhile, b's end is stored
                store.update_job(b, status="ce", reason=verdict)
            await asyncio.sleep(0)

    view = Presence(Service())  # type: ignore[arg-type]
    if fault == "ends":
        view.storage_error = "database or disk is full"
    asyncio.run(view._storage("database or disk is full" if fault == "begins" else None))
    assert store.job(b).status == "ce" and store.job(b).reason == verdict, store.job(b)
    assert store.job(a).reason == (full if fault == "begins" else None), store.job(a)
    store.close()


def test_the_points_a_file_would_lose_are_counted_as_a_multiset() -> None:
    """A review: the point-by-point check compared sets of timestamps and totals, so of
    points sharing a `uts` some could go without a refusal."""
    import numpy as np

    from tomato_mqtt.services.recorder.guard import lacking

    def f(*v: float) -> Any:
        return np.array(v, dtype="f8")

    assert lacking(f(10, 10, 10, 11, 11), f(10, 11, 11, 11, 11)) == 2
    assert lacking(f(1, 2, 3), f(1, 3)) == 1
    assert lacking(f(1, 2, 3), f(3, 2, 1, 4)) == 0  # more is fine
    assert lacking(f(1, np.nan), f(1, np.nan)) == 0 and lacking(f(np.nan), f()) == 1


def test_late_data_not_merged_is_said_in_the_job_s_reason(tmp_path: Path) -> None:
    """A fault run: late data the recorder refused to merge (the file holds points its
    store lost) was said only in its log and a job event; the job's reason still said
    "the points it takes are merged into the file". The recorder's status carries it
    (`not_merged`), and the scheduler adds it to the ended job's reason, once."""
    from tomato_mqtt.services.scheduler.presence import Presence
    from tomato_mqtt.services.scheduler.store import StateStore

    store = StateStore(tmp_path / "state.sqlite")
    job = store.add_job({"method": []}, "a", str(tmp_path)).id
    store.update_job(job, status="r")
    was = "cancelled; the points it takes are merged into the file"
    store.update_job(job, status="cd", reason=was)

    class Service:
        def __init__(self) -> None:
            self.store = store

        async def publish_job(self, job: Job, wait: bool = False) -> None:
            return None

    view = Presence(Service())  # type: ignore[arg-type]
    first = "late data not merged: refused to overwrite f.nc: it holds 5 points; kept"
    second = "late data not merged: refused to overwrite f.nc: it holds 6 points; kept"
    for why in (first, first, second):
        asyncio.run(view._not_merged(job, why))
    assert store.job(job).reason == f"{was}; {second}", store.job(job).reason
    store.close()


def test_one_login_s_file_tokens_do_not_push_out_another_s(tmp_path: Path) -> None:
    """A hostile tour: the recorder kept 100 file tokens for everyone; one operator's 101
    snapshots ended another's download half-way ("unknown or expired file token"). Each
    login's oldest go beyond its own TOKENS_PER_LOGIN."""
    from types import SimpleNamespace

    from tomato_mqtt.services.recorder import files

    f = files.Files(SimpleNamespace())  # type: ignore[arg-type]
    path = tmp_path / "results.1.nc"
    path.write_bytes(b"x" * 10)
    olga, _ = f.token(path, owner="olga")
    otto = [f.token(path, owner="otto")[0] for _ in range(101)]
    assert olga in f.tokens
    kept = [t for t, w in f.tokens.items() if w.owner == "otto"]
    assert kept == otto[-files.TOKENS_PER_LOGIN :], len(kept)


async def test_one_login_makes_at_most_a_few_snapshots_at_once(tmp_path: Path) -> None:
    """A hostile tour: 200 snapshots of one operator sent at once held another's own for
    5.5 s (the recorder writes one file at a time). On a secured stack one login has at
    most SNAPSHOTS_PER_LOGIN being made; one more is refused at once, another login's
    goes on, and once one is done the login may ask again."""
    from types import SimpleNamespace

    from tests.security_env import scheduler_settings, write_users
    from tomato_mqtt.services.scheduler import ops as ops_mod
    from tomato_mqtt.services.scheduler.service import SchedulerService
    from tomato_mqtt.transport import rpc
    from tomato_mqtt.transport.rpc import CommandError, Result

    write_users(tmp_path / "users")
    b = SimpleNamespace(instance="snap", port=1, workdir=tmp_path)
    ops = ops_mod.SchedulerOps(SchedulerService(scheduler_settings(b, tmp_path)))  # type: ignore[arg-type]
    gate = asyncio.Event()

    async def slow(args: Any) -> Result:  # the recorder writing the file
        await gate.wait()
        return Result("snapshot written", None)

    ops._job_snapshot = slow  # type: ignore[method-assign]

    async def ask(user: str) -> Result:
        rpc._requester.set(user)
        return await ops.job_snapshot({"jobid": 1})

    otto = [asyncio.ensure_future(ask("otto")) for _ in range(ops_mod.SNAPSHOTS_PER_LOGIN)]
    await asyncio.sleep(0.01)
    with pytest.raises(CommandError) as e:
        await ask("otto")
    assert e.value.code == "conflict" and "2 snapshots of otto are being made" in str(e.value)
    olga = asyncio.ensure_future(ask("olga"))
    await asyncio.sleep(0.01)
    assert not olga.done()  # taken, and waiting for the recorder as otto's
    gate.set()
    for t in (*otto, olga):
        assert (await t).msg == "snapshot written"
    assert (await ask("otto")).msg == "snapshot written"  # done: asked again
    assert ops._snapping == {}


async def test_a_step_the_node_saw_in_a_task_is_in_the_job_s_reason() -> None:
    """Fault injection: a node's clock stepped an hour 0.5 s before its task ended; the
    job ended c without a word, its file's uts spanning 3,606 s. The node tells the step
    in the task's end: the job's reason and the task_ended event say it."""
    host = FakeHost()
    _runner, done = await _run(host)
    end = TaskEndInfo(
        job=1,
        task=0,
        reason="done",
        t_start=0,
        t_end=1,
        npoints=60,
        stream="s",
        clock_step=3600.0,
        clock_step_at=1_750_003_655.5,
    )
    ended = ComponentStatus(
        name="cmp", node="pc1", state="idle", time=time.time(), epoch=1, last_task=end
    )
    await host.set(cstatus={"cmp": ended})
    status, reason = await asyncio.wait_for(done, 5)
    assert status == "c", reason
    said = "the clock of node pc1 stepped by +3600.0 s during task 0 (count) on cmp at uts"
    assert said in str(reason), reason
    told = [kw["detail"] for event, kw in host.events if event == "task_ended"]
    assert told[0]["clock_step"] == 3600.0, told


def test_a_step_seen_before_a_job_began_is_not_its(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: a node's clock set back 8-10 s before jobs were submitted, and
    those jobs' reasons said "stepped by -3600.0 s", their files without a jump (the
    heartbeats' check takes seconds, and blamed every job running once it was sure)."""
    from types import SimpleNamespace

    from tomato_mqtt.services.scheduler import presence as presence_mod

    monkeypatch.setattr(presence_mod, "STEP_HOLDS", 0.3)
    told: list[tuple[int, str]] = []

    def runner(job: int, launched: float) -> Any:
        return SimpleNamespace(
            roles={"counter": "cmp"},
            clock_steps=set(),
            launched_wall=launched,
            clock_stepped=lambda node, msg: told.append((job, msg)),
        )

    runners: dict[int, Any] = {}
    p, beat = _presence(runners)

    for _ in range(5):
        beat(0.0)
    runners[1] = runner(1, time.time() - 60)  # ran before the step
    t0 = time.monotonic()
    while "pc" not in p.step_seen:  # the step: seen (not sure yet) a few beats on
        assert time.monotonic() - t0 < 2, p.step_seen
        beat(-3600.0)
        time.sleep(0.02)
    runners[2] = runner(2, time.time())  # launched once the step was seen
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.6:
        beat(-3600.0)
        time.sleep(0.05)
    assert [job for job, _ in told] == [1], told


def test_a_re_adopted_job_keeps_its_clock_steps_and_launch_time() -> None:
    """A review: a job re-adopted by a restarted scheduler forgot the nodes whose clock
    stepped in it (its file then gave them one offset) and took the restart for its
    launch (a step seen just after was not told to it)."""
    job = _job().model_copy(
        update={
            "launched_at": "2026-12-07T04:00:00+00:00",
            "progress": {"warnings": ["the clock of node pc1 stepped"], "clock_steps": ["pc1"]},
        }
    )

    async def on_done(r: JobRunner, status: str, reason: str | None) -> None:
        pass

    runner = JobRunner(job=job, roles={"counter": "cmp"}, host=FakeHost(), on_done=on_done)
    assert runner.clock_steps == {"pc1"}
    assert runner.launched_wall == 1796616000.0  # 2026-12-07T04:00:00Z
    runner._progress()
    assert runner.job.progress["clock_steps"] == ["pc1"]


def test_a_step_back_is_dated_from_its_first_status_not_from_when_it_was_sure() -> None:
    """A check of the fix: a node's clock set back an hour 9 s before a submit was still
    blamed on that job. A step back reads as a cut link's backlog at first (the statuses'
    heartbeats go back), so it was seen seconds late, and "at about" said that later
    time; a job launched meanwhile was blamed. The step is dated from the first status
    that came off the offset taken."""
    told: list[int] = []

    def runner(job: int, launched: float) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(
            roles={"counter": "cmp"},
            clock_steps=set(),
            launched_wall=launched,
            clock_stepped=lambda node, msg: told.append(job),
        )

    runners: dict[int, Any] = {}
    p, beat = _presence(runners)
    for _ in range(5):
        beat(0.0)
        time.sleep(0.02)
    runners[1] = runner(1, time.time() - 60)  # ran through the step
    beat(-3600.0)  # the step back: its first status
    time.sleep(0.01)
    runners[2] = runner(2, time.time())  # submitted after it, before it was sure
    t0 = time.monotonic()
    while len(told) < 1:
        assert time.monotonic() - t0 < 5, p.step_seen
        beat(-3600.0)
        time.sleep(0.05)
    assert told == [1], told


def test_a_node_is_said_to_stand_still_by_the_scheduler_s_judgement_not_a_fixed_5_s() -> None:
    """A review: `tomato restart-node` said "stands still or is cut off" of any node whose
    last status came more than 5 s ago, also of one on time with a longer `heartbeat`
    setting. The scheduler's own judgement (`silent`: 2.5 heartbeats) decides; a row of
    an older scheduler, without it, keeps the 5 s."""
    from tomato_mqtt.cli.status import _node_away

    on_time = {"state": "online", "heartbeat_age": 8.0, "silent": False}
    assert _node_away(on_time, "pc2") == ""
    still = {"state": "online", "heartbeat_age": 8.0, "silent": True}
    assert _node_away(still, "pc2") == (
        "; the scheduler's last status of node pc2 came 8 s ago: it stands still or is cut off"
    )
    assert _node_away({"state": "online", "heartbeat_age": 8.0}, "pc2") == _node_away(still, "pc2")
    assert _node_away({"state": "online", "heartbeat_age": 3.0}, "pc2") == ""
    assert _node_away({"state": "lost", "silent": True}, "pc2") == (
        "; the scheduler has node pc2 as lost (`tomato status nodes`)"
    )
