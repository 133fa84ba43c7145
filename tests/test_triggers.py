"""start_with_task_name / stop_with_task_name at their edges, side by side with tomato 2.2.

Found by running payloads on both: two tasks that start with each other ran in tomato
2.2 (a task that waits counts as started there) and waited for each other for ever
here, the job `r` with no reason; a task that starts with one its stop_with trigger
skipped, or with a later task of its own role, waited for ever in both.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from tests.test_reliability_units import _KEEP, FakeHost
from tomato_mqtt.services.scheduler.access import Access
from tomato_mqtt.services.scheduler.runner import JobRunner
from tomato_mqtt.transport.rpc import CommandError
from tomato_mqtt.wire.messages import ComponentStatus, Job, TaskEndInfo

pytestmark = pytest.mark.timeout(30)


def _task(role: str, name: str | None = None, **kw: Any) -> dict[str, Any]:
    return {
        "component_role": role,
        "technique_name": "count",
        "max_duration": 60,
        "sampling_interval": 1,
        "task_name": name,
        **kw,
    }


async def _start(
    method: list[dict[str, Any]], roles: dict[str, str]
) -> tuple[JobRunner, FakeHost, asyncio.Future[tuple[str, str | None]]]:
    host = FakeHost()
    done: asyncio.Future[tuple[str, str | None]] = asyncio.get_running_loop().create_future()

    async def on_done(r: JobRunner, status: str, reason: str | None) -> None:
        await r.reset_done()
        done.set_result((status, reason))

    job = Job(id=1, payload={"method": method}, submitted_at="now")
    runner = JobRunner(job=job, roles=roles, host=host, on_done=on_done)
    _KEEP.add(asyncio.ensure_future(runner.run()))
    return runner, host, done


async def _states(runner: JobRunner, want: list[str], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while [t.state for t in runner.tasks] != want:
        assert time.monotonic() < deadline, [t.state for t in runner.tasks]
        await asyncio.sleep(0.01)


async def _end(host: FakeHost, component: str, task: int) -> None:
    """The node says: this task of job 1 ended, the component is idle again."""
    end = TaskEndInfo(job=1, task=task, reason="done", t_start=0, t_end=1, npoints=1, stream="s")
    st = ComponentStatus(
        name=component, node="pc1", state="idle", time=time.time(), epoch=1, last_task=end
    )
    await host.set(cstatus={**host.cstatus, component: st})


async def test_two_tasks_that_start_with_each_other_start_together() -> None:
    method = [
        _task("r1", "a", start_with_task_name="b"),
        _task("r2", "b", start_with_task_name="a"),
    ]
    runner, host, done = await _start(method, {"r1": "c1", "r2": "c2"})
    await _states(runner, ["running", "running"])  # before: both waited for ever
    await _end(host, "c1", 0)
    await _end(host, "c2", 1)
    assert await asyncio.wait_for(done, 10) == ("c", None)


async def test_a_ring_of_three_starts_together_and_a_chain_waits_its_turn() -> None:
    method = [
        _task("r1", "a", start_with_task_name="c"),
        _task("r2", "b", start_with_task_name="a"),
        _task("r3", "c", start_with_task_name="b"),
        _task("r4", "d", start_with_task_name="e"),  # e waits for nothing: d waits for e
        _task("r5", "x"),
        _task("r5", "e"),
    ]
    roles = {f"r{i}": f"c{i}" for i in range(1, 6)}
    runner, host, done = await _start(method, roles)
    await _states(runner, ["running", "running", "running", "pending", "running", "pending"])
    await asyncio.sleep(0.2)
    assert runner.tasks[3].state == "pending"  # d: e has not started
    await _end(host, "c5", 4)
    await _states(runner, ["running", "running", "running", "running", "ended", "running"])
    for comp, i in (("c1", 0), ("c2", 1), ("c3", 2), ("c4", 3), ("c5", 5)):
        await _end(host, comp, i)
    assert await asyncio.wait_for(done, 10) == ("c", None)


async def test_a_task_that_starts_with_a_skipped_one_is_skipped_and_said() -> None:
    method = [
        _task("r1", "x"),
        _task("r2", None, max_duration=1),
        _task("r2", "y", stop_with_task_name="x"),  # skipped: x started before it
        _task("r3", "z", start_with_task_name="y"),  # before: waited for y for ever
    ]
    runner, host, done = await _start(method, {"r1": "c1", "r2": "c2", "r3": "c3"})
    await _states(runner, ["running", "running", "pending", "pending"])
    await _end(host, "c2", 1)
    await _states(runner, ["running", "ended", "skipped", "skipped"])
    await _end(host, "c1", 0)
    status, reason = await asyncio.wait_for(done, 10)
    assert status == "c", (status, reason)
    assert "task 3 (count) on role 'r3' was skipped: it starts with 'y', which was skipped" in str(
        reason
    )
    # its warning event names the task's role as well as the task (a role null beside a
    # task: an integrator's tour)
    warned = [kw for e, kw in host.events if e == "warning" and kw.get("task") == 3]
    assert warned and all(kw.get("role") == "r3" for kw in warned), host.events


def test_a_task_whose_wait_leads_back_through_a_role_s_order_is_refused(tmp_path: Path) -> None:
    from tomato_mqtt.config.settings import Settings

    method = [
        _task("r1", "a", start_with_task_name="b"),
        _task("r1", "b"),
    ]
    with pytest.raises(CommandError) as e:
        Access(Settings(appdir=tmp_path, datadir=tmp_path, logdir=tmp_path)).check_bounds(method)
    assert "task a (method[0]) starts with 'b', which can only start after" in str(e.value)
    # the same through another role (a review): a waits for b, b for c, c is behind a
    chain = [
        _task("r1", "a", start_with_task_name="b"),
        _task("r1", "c"),
        _task("r2", "b", start_with_task_name="c"),
    ]
    with pytest.raises(CommandError) as e:
        Access(Settings(appdir=tmp_path, datadir=tmp_path, logdir=tmp_path)).check_bounds(chain)
    assert "tasks [0, 1, 2] wait for each other through their roles' order" in str(e.value)
    # a ring of waits alone is fine (they start together), also behind other tasks
    ring = [
        _task("r1", "a", start_with_task_name="b"),
        _task("r2", "x"),
        _task("r2", "b", start_with_task_name="a"),
    ]
    Access(Settings(appdir=tmp_path, datadir=tmp_path, logdir=tmp_path)).check_bounds(ring)
    ok = [_task("r1", "a"), _task("r1", "b", start_with_task_name="a")]
    Access(Settings(appdir=tmp_path, datadir=tmp_path, logdir=tmp_path)).check_bounds(ok)


async def test_a_task_that_starts_with_a_skipped_one_is_skipped_after_a_restart_too() -> None:
    """A review: a scheduler restarted after the skip re-adopted the job with the skip in
    its stored progress but not in what it waits on: the job hung `r` with no reason."""
    method = [
        _task("r1", "x"),
        _task("r2", "y", stop_with_task_name="x"),
        _task("r3", "z", start_with_task_name="y"),
    ]
    end = {"reason": "done", "t_start": 0, "t_end": 1, "npoints": 1}
    progress = {"tasks": {"0": {"state": "ended", "end": end}, "1": {"state": "skipped"}}}
    host = FakeHost()
    done: asyncio.Future[tuple[str, str | None]] = asyncio.get_running_loop().create_future()

    async def on_done(r: JobRunner, status: str, reason: str | None) -> None:
        await r.reset_done()
        done.set_result((status, reason))

    job = Job(id=1, payload={"method": method}, submitted_at="now", progress=progress)
    runner = JobRunner(
        job=job, roles={"r1": "c1", "r2": "c2", "r3": "c3"}, host=host, on_done=on_done
    )
    _KEEP.add(asyncio.ensure_future(runner.run()))
    status, reason = await asyncio.wait_for(done, 10)
    assert status == "c", (status, reason)
    assert "it starts with 'y', which was skipped" in str(reason), reason
