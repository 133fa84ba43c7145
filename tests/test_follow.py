"""``ketchup status ID --follow``, ``ketchup snapshot`` and ``--version`` against a live
in-process stack (the CLI as a subprocess, as a user runs it)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import RunningBroker
from tests.inproc import CONFIG, InProc, inproc_stack
from tests.ncread import load_tree
from tomato_mqtt.transport.rpc import NoResponder
from tomato_mqtt.wire.base import encode
from tomato_mqtt.wire.messages import JobEvent

BIN = Path(sys.executable).parent  # the venv the tests run in (TOMATO_VENV: another)


async def cli(st: InProc, port: int, *args: str, cwd: Path | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / args[0]),
        *args[1:],
        "-A",
        str(st.settings.appdir),
        "-p",
        str(port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=cwd,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 90)
    return proc.returncode or 0, out.decode()


@pytest.mark.parametrize("prog", ["tomato", "ketchup", "passata"])
def test_version(prog: str) -> None:
    import subprocess

    from tomato_mqtt import __version__

    out = subprocess.run([str(BIN / prog), "--version"], capture_output=True, text=True)
    # as tomato 2.2 says it ("tomato version 2.2"), then which tomato: a script reading
    # the word after "version" found none in "tomato (tomato-mqtt) 0.1.0"
    assert out.returncode == 0, out
    assert out.stdout.strip() == f"{prog} version {__version__} (tomato-mqtt)", out.stdout
    assert out.stdout.split()[:2] == [prog, "version"]


async def test_follow_snapshot_and_exit_codes(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    payload = yaml.safe_load((CONFIG / "counter_1_0.1.yml").read_text())
    payload["method"][0]["time"] = 8.0  # the follower starts while it runs, even under load
    async with inproc_stack(broker.port, tmp_path, instance) as st:
        work = st.settings.datadir / "work"
        work.mkdir(parents=True)
        await st.call("pipeline_load", {"pipeline": "pip-counter-1", "sampleid": "counter_1_0.1"})
        await st.call("pipeline_ready", {"pipeline": "pip-counter-1"})
        job = await st.call("job_submit", {"payload": payload, "submit_dir": str(work)})
        rc, out = await cli(st, broker.port, "ketchup", "status", str(job.id), "--follow")
        assert rc == 0, out
        lines = [ln for ln in out.splitlines() if ln.startswith(f"job {job.id}: ")]
        assert lines[-1].startswith(f"job {job.id}: c |"), out  # plain lines: not a tty
        assert any(re.search(r": r \|.* / 8 s", ln) for ln in lines), out  # elapsed/expected
        assert re.search(r"^status:\s+c$", out, flags=re.M), out  # then the usual detail

        # snapshot: the file here, 0644 per umask, an event with its path, snappath set
        events: list[bytes] = []
        await st.client.subscribe(
            st.topics.job_event(job.id), handler=lambda m: events.append(m.payload)
        )
        rc, out = await cli(st, broker.port, "ketchup", "snapshot", str(job.id), cwd=work)
        assert rc == 0, out
        snap = work / f"snapshot.{job.id}.nc"
        mask = os.umask(0o022)
        os.umask(mask)
        assert (snap.stat().st_mode & 0o777) == 0o666 & ~mask, oct(snap.stat().st_mode)
        info = (await st.call("job_status", {"jobids": [job.id]}))[0]
        assert info.snappath and info.snappath.endswith(f"snapshot.{job.id}.nc"), info

        async def event() -> bytes:
            while not any(b"snapshot_written" in e for e in events):
                await asyncio.sleep(0.05)
            return next(e for e in events if b"snapshot_written" in e)

        ev = await asyncio.wait_for(event(), 10)
        assert info.snappath.encode() in ev, ev
        # the file's own job names it (it was null; tomato 2.2's snapshots name theirs)
        inside = json.loads(load_tree(Path(info.snappath)).attrs["tomato_Job"])
        assert inside["snappath"] == info.snappath, inside

        # a cancelled job: --follow exits non-zero
        payload["method"][0]["time"] = 60.0
        await st.call("pipeline_ready", {"pipeline": "pip-counter-1"})
        job2 = await st.call("job_submit", {"payload": payload, "submit_dir": str(work)})
        await st.wait_job(job2.id, {"r"})
        follower = asyncio.ensure_future(
            cli(st, broker.port, "ketchup", "status", str(job2.id), "--follow")
        )
        await st.call("job_cancel", {"jobids": [job2.id]})
        rc, out = await follower
        assert rc == 1 and f"job {job2.id}: cd" in out, out

        # Ctrl-C of a follower says the job goes on (only "interrupted": a newcomer could
        # not tell whether it was cancelled), and it does
        await st.call("pipeline_ready", {"pipeline": "pip-counter-1"})
        job3 = await st.call("job_submit", {"payload": payload, "submit_dir": str(work)})
        await st.wait_job(job3.id, {"r"})
        import signal

        proc = await asyncio.create_subprocess_exec(
            str(BIN / "ketchup"), "status", str(job3.id), "--follow",
            "-A", str(st.settings.appdir), "-p", str(broker.port),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
        assert proc.stdout is not None
        first = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert first.startswith(f"job {job3.id}: r".encode()), first
        proc.send_signal(signal.SIGINT)
        _out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 130, (proc.returncode, err)
        assert err.decode() == (
            f"interrupted: stopped following job {job3.id}, which goes on "
            f"(`ketchup cancel {job3.id}` stops it)\n"
        ), err
        assert (await st.call("job_status", {"jobids": [job3.id]}))[0].status == "r"
        await st.call("job_cancel", {"jobids": [job3.id]})


def test_a_follower_that_starts_mid_task_shows_the_task_at_once() -> None:
    """The job's own progress says which task runs: no wait for the next task event."""
    from tomato_mqtt.client.progress import Progress

    job = {
        "status": "r",
        "launched_at": "2026-01-01T00:00:00+00:00",
        "payload": {
            "method": [
                {"component_role": "counter", "max_duration": 5},
                {"component_role": "counter", "max_duration": 5},
                {"component_role": "other", "max_duration": 5},
            ]
        },
        "progress": {
            "tasks": {
                "0": {"state": "ended"},
                "1": {"state": "running"},
                "2": {"state": "pending"},
            }
        },
    }
    p = Progress(7)
    p.job(job)
    assert p.tasks == {"counter": "task 1"}
    assert p.line().startswith("job 7: r | counter: task 1 | 0 point(s)"), p.line()
    # the reason of a job that waits (or runs with a fault) is on the line, not only at
    # the end: a follower of a job waiting for its sample saw "qw | 0 point(s)" for ever
    q = Progress(8)
    q.job({"status": "qw", "reason": "no pipeline holds sample 's-none'", "payload": {}})
    assert q.line() == "job 8: qw | 0 point(s) | no pipeline holds sample 's-none'", q.line()
    p.event({"event": "task_ended", "role": "counter", "task": 1})  # events take over
    p.job(job)  # a later summary does not undo what the events said
    assert p.tasks == {"counter": "task 1 ended"}
    # a task that ended says the points it took, the recorder's count being behind (an
    # integrator's tour: "task 0 ended | 0 point(s)" read as nothing measured)
    # (the event as the scheduler publishes it: its count in `detail`, which the first
    # fix missed, reading a top-level `npoints` no event has: a later integrator's tour)
    e = Progress(9)
    e.recorder({"dev-counter/1": 3})
    ended = JobEvent.model_validate(
        {"jobid": 9, "event": "task_ended", "time": 0.0, "role": "counter", "task": 0}
        | {"detail": {"reason": "done", "npoints": 10}}
    )
    e.event(json.loads(encode(ended)))
    assert "counter: task 0 ended | 10 point(s)" in e.line(), e.line()
    e.recorder({"dev-counter/1": 12})  # stored more (a later task's): the stored count
    assert "| 12 point(s)" in e.line(), e.line()
    # the recorder's counts per component are kept by role once the job names its roles
    # (they went from components' names to roles' at the end of one follow)
    e.job({"status": "r", "progress": {"roles": {"counter": "dev-counter/1"}}})
    e.recorder({"dev-counter/1": 14, "dev-other/1": 2})
    assert e.points == {"counter": 14, "dev-other/1": 2}, e.points


async def _a_long_job(st: InProc, seconds: float) -> Any:
    """tomato's counter payload for ``seconds``, submitted on pip-counter-1."""
    payload = yaml.safe_load((CONFIG / "counter_1_0.1.yml").read_text())
    payload["method"][0]["time"] = seconds
    work = st.settings.datadir / "work"
    work.mkdir(parents=True)
    await st.call("pipeline_load", {"pipeline": "pip-counter-1", "sampleid": "counter_1_0.1"})
    await st.call("pipeline_ready", {"pipeline": "pip-counter-1"})
    return await st.call("job_submit", {"payload": payload, "submit_dir": str(work)})


async def test_a_follower_that_starts_mid_job_shows_its_points_at_once(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """A newcomer's tour: `ketchup status N --follow` started 4 s into a job printed
    "0 point(s)" first, then 26: the recorder's retained count came with the
    subscription, and was read only after the first line."""
    from tomato_mqtt.client import AsyncTomato

    async with inproc_stack(broker.port, tmp_path, instance) as st:
        job = await _a_long_job(st, 30.0)
        counted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def recorder(msg: object) -> None:
            doc = json.loads(getattr(msg, "payload", b"") or b"{}")
            pts = ((doc.get("jobs") or {}).get(str(job.id)) or {}).get("points") or {}
            if sum(pts.values()) > 0 and not counted.done():
                counted.set_result(sum(pts.values()))

        await st.client.subscribe(st.topics.recorder_status(), handler=recorder)
        await asyncio.wait_for(counted, 20)  # the recorder's retained count has points
        async with AsyncTomato(f"mqtt://127.0.0.1:{broker.port}", instance) as t:
            async for p in t.follow(job.id):
                assert p.status == "r" and p.total_points > 0, p.line()
                # by the payload's role, as at the end (JobStatus.points), not by component
                assert list(p.points) == ["counter"], p.points
                break
        await st.call("job_cancel", {"jobids": [job.id]})


async def test_a_follower_from_the_queue_counts_points_by_role_while_the_job_runs(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """A review: a follow started while the job was queued (as `ketchup submit --follow`
    and `wait()` do) never learnt the job's roles, so its points were keyed by the
    component's name while the job ran and by the role at its end."""
    from tomato_mqtt.client import AsyncTomato

    async with inproc_stack(broker.port, tmp_path, instance) as st:
        payload = yaml.safe_load((CONFIG / "counter_1_0.1.yml").read_text())
        payload["method"][0]["time"] = 30.0
        work = st.settings.datadir / "work"
        work.mkdir(parents=True)
        await st.call("pipeline_load", {"pipeline": "pip-counter-1", "sampleid": "counter_1_0.1"})
        job = await st.call("job_submit", {"payload": payload, "submit_dir": str(work)})
        seen: list[dict[str, int]] = []
        async with AsyncTomato(f"mqtt://127.0.0.1:{broker.port}", instance) as t:
            follow = t.follow(job.id, timeout=60)
            first = await follow.__anext__()
            assert first.status in ("q", "qw") and not first.roles, first
            await st.call("pipeline_ready", {"pipeline": "pip-counter-1"})
            async for p in follow:
                if p.status == "r" and sum(p.points.values()) > 0:
                    seen.append(dict(p.points))
                    if len(seen) == 2:
                        break
            await follow.aclose()
        await st.call("job_cancel", {"jobids": [job.id]})
    assert len(seen) == 2 and all(list(pts) == ["counter"] for pts in seen), seen


async def test_a_follower_says_when_the_broker_is_lost_and_back(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """A newcomer's tour: a follower whose broker restarted printed "client-2572-8c30f9
    lost the connection to … (Unspecified error)", then waited without a word."""
    async with inproc_stack(broker.port, tmp_path, instance) as st:
        job = await _a_long_job(st, 60.0)
        await st.wait_job(job.id, {"r"})
        proc = await asyncio.create_subprocess_exec(
            str(BIN / "ketchup"), "status", str(job.id), "--follow",
            "-A", str(st.settings.appdir), "-p", str(broker.port),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert proc.stdout is not None and proc.stderr is not None
            first = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert first.startswith(f"job {job.id}: r".encode()), first
            await broker.stop()
            said = await asyncio.wait_for(proc.stderr.readline(), 10)
            await broker.start()
            again = await asyncio.wait_for(proc.stderr.readline(), 30)
            await st.wait_registered(1)
            for attempt in range(6):  # the scheduler subscribes again once it is back: a
                try:  # request that came before was for nobody
                    await st.call("job_cancel", {"jobids": [job.id]}, timeout=3)
                    break
                except NoResponder:
                    assert attempt < 5, "the scheduler did not come back"
            rest, err = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        url = f"mqtt://127.0.0.1:{broker.port}"
        assert said.decode().strip() == (
            f"lost the connection to the broker at {url}: following again once it is back"
            " (Ctrl-C stops)"
        ), said
        assert again.decode().strip() == "connected again: following", again
        assert b"client-" not in said + again + err, err
        assert proc.returncode == 1 and f"job {job.id}: cd".encode() in rest, rest


async def test_restart_node_asks_an_older_node_without_its_deadline(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """A review: `tomato restart-node` sends a `deadline` that a node of an older version
    (an instrument PC not upgraded yet) refuses as an unknown argument (`bad_request`,
    its args strict). It asks such a node again without it."""
    from tomato_mqtt.transport.client import AsyncClient, Message
    from tomato_mqtt.wire.messages import Reply, Request, decode, encode
    from tomato_mqtt.wire.topics import Topics

    t = Topics(instance)
    asked: list[dict[str, object]] = []
    async with AsyncClient(broker.url, client_id=f"old-node-{instance}") as old:

        async def answer(msg: Message) -> None:
            req = decode(Request, msg.payload)
            asked.append(dict(req.args))
            if "deadline" in req.args:  # as a node before it answers
                said = "bad args for 'shutdown': deadline: Extra inputs are not permitted"
                rep = Reply(id=req.id, success=False, code="bad_request", msg=said)
            else:
                rep = Reply(id=req.id, success=True, msg="node pc9 shutting down")
            await old.publish(req.reply_to, encode(rep), qos=1)

        await old.subscribe(
            t.node_cmd("pc9", "shutdown"),
            handler=lambda m: asyncio.get_running_loop().create_task(answer(m)),
        )
        (tmp_path / "app").mkdir()
        (tmp_path / "app" / "settings.toml").write_text(f'[mqtt]\ninstance = "{instance}"\n')
        proc = await asyncio.create_subprocess_exec(
            str(BIN / "tomato"), "restart-node", "pc9", "-A", str(tmp_path / "app"),
            "-p", str(broker.port), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode()
    assert "node pc9 shutting down" in out.decode(), out.decode()
    assert "a node of `tomato start` is started again" in out.decode()  # (it did not say)
    assert [sorted(a) for a in asked] == [["deadline", "force"], ["force"]], asked


async def test_a_shutdown_read_well_past_its_deadline_is_not_carried_out(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """A hostile tour: two operators' floods of requests held a node up 13 s; it then
    read an admin's `restart-node`, which had said "no node answered", and restarted.
    A shutdown read more than 2 s past its deadline is refused (not only after a
    freeze); one within its deadline is carried out."""
    import time

    async with inproc_stack(broker.port, tmp_path, instance) as st:
        topic = st.topics.node_cmd("local", "shutdown")
        rep = await st.raw(topic, {"deadline": time.time() - 10})
        assert not rep.success and rep.code == "conflict", rep
        assert "read this shutdown 10 s after its sender stopped waiting" in (rep.msg or ""), rep
        assert st.node is not None and not st.node.stopping
        rep = await st.raw(topic, {"deadline": time.time() + 5})
        assert rep.success and "shutting down" in (rep.msg or ""), rep
        # a node run on its own says that it stays stopped (the CLI said both cases: a
        # newcomer's tour; one of `tomato start`: tests/test_stack.py)
        assert "it runs on its own (tomato node), so it stays stopped" in rep.msg, rep
