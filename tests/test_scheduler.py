"""The scheduler on the wire: bad requests, durable state, and reload.

These talk to ``scheduler/cmd/<op>`` directly (as a dashboard or a script would); the
CLI on top of the same ops is tested in test_cli.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import RunningBroker
from tests.inproc import client, inproc_stack
from tests.stack import CONFIG, Stack, running_stack, started
from tomato_mqtt.services.scheduler.store import StateStore
from tomato_mqtt.transport.client import AsyncClient, BrokerURL, Message
from tomato_mqtt.transport.rpc import NoResponder, ReplyError, Requester
from tomato_mqtt.wire.messages import Reply, decode
from tomato_mqtt.wire.topics import Topics

pytestmark = pytest.mark.timeout(180)


def url(st: Stack) -> BrokerURL:
    return BrokerURL.parse(f"mqtt://127.0.0.1:{st.port}")


def ask(st: Stack, op: str, timeout: float = 10, **args: Any) -> Reply:
    async def go() -> Reply:
        async with AsyncClient(url(st)) as c:
            req = Requester(c, Topics(st.instance))
            return await req.request(
                Topics(st.instance).scheduler_cmd(op), args, timeout=timeout, who="scheduler"
            )

    return asyncio.run(go())


def ok(st: Stack, op: str, **args: Any) -> Any:
    rep = ask(st, op, **args)
    assert rep.success, rep
    return rep.data


def wait_until(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except (NoResponder, AssertionError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def submit(st: Stack, doc: Mapping[str, Any]) -> int:
    return int(ok(st, "job_submit", payload=dict(doc), submit_dir=str(st.workdir))["id"])


def job(st: Stack, jobid: int) -> dict[str, Any]:
    return ok(st, "job_status", jobids=[jobid])[0]  # type: ignore[no-any-return]


def polled_job(st: Stack, jobid: int) -> dict[str, Any]:
    """:func:`job` inside a :func:`wait_until` loop: a request that reached a scheduler
    still starting (after its kill) is lost, so ask again after 2 s, not 10."""
    rep = ask(st, "job_status", timeout=2, jobids=[jobid])
    assert rep.success, rep
    return rep.data[0]  # type: ignore[no-any-return, index]


def counter_doc(seconds: float = 1.0) -> dict[str, Any]:
    doc = yaml.safe_load((CONFIG / "counter_1_0.1.yml").read_text())
    doc["method"][0]["time"] = seconds
    return doc  # type: ignore[no-any-return]


async def test_malformed_requests_get_an_error_reply_and_scheduler_keeps_serving(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    # in-process (tests/inproc.py): the scheduler's handling of what arrives, not processes
    async with inproc_stack(broker.port, tmp_path, instance) as st:
        t = st.topics
        got: asyncio.Queue[Reply] = asyncio.Queue()
        async with client(broker.url) as c:
            reply_to = t.reply(c.client_id)

            def on_reply(msg: Message) -> None:
                got.put_nowait(decode(Reply, msg.payload))

            await c.subscribe(reply_to, handler=on_reply)
            bad = [
                (t.scheduler_cmd("status"), b'{"id": "m1", "reply_to": "%s", "args": {'),
                (t.scheduler_cmd("no_such_op"), b'{"id": "m2", "reply_to": "%s", "args": {}}'),
                (
                    t.scheduler_cmd("pipeline_load"),
                    b'{"id": "m3", "reply_to": "%s", "args": {"pipeline": 5}}',
                ),
                (
                    t.scheduler_cmd("job_status"),
                    b'{"id": "m4", "reply_to": "%s", "args": {"jobids": "x"}}',
                ),
                # a number for an id (a JavaScript client's): answered with it as text,
                # not "" (an integrator's tour: the reply could not be matched)
                (t.scheduler_cmd("status"), b'{"id": 12345, "reply_to": "%s", "args": {}}'),
            ]
            for topic, raw in bad:
                await c.publish(topic, raw % reply_to.encode())
            replies = {r.id: r for r in [await asyncio.wait_for(got.get(), 10) for _ in bad]}
        assert set(replies) == {"m1", "m2", "m3", "m4", "12345"}
        assert "id: Input should be a valid string" in replies["12345"].msg, replies["12345"]
        assert not any(r.success for r in replies.values())
        assert "not JSON" in replies["m1"].msg or "JSON" in replies["m1"].msg, replies["m1"]
        assert "unknown operation 'no_such_op'" in replies["m2"].msg
        assert "pipeline" in replies["m3"].msg and "sample" in replies["m3"].msg
        assert "jobids" in replies["m4"].msg
        # still serving
        assert await st.call("status", {"what": "scheduler"}) is not None


def test_queued_jobs_and_pipelines_survive_kill_9_and_stop_start(tmp_path: Path) -> None:
    with running_stack(tmp_path) as st:
        ok(st, "pipeline_load", pipeline="pip-counter-2", sample="kept-sample")
        jobid = submit(st, counter_doc())  # no pipeline holds its sample: stays qw
        wait_until(lambda: polled_job(st, jobid)["status"] == "qw", 10, "qw")
        old = st.child_pid("scheduler")
        os.kill(old, signal.SIGKILL)
        # the supervisor restarts it; the state comes back from sqlite
        wait_until(lambda: st.child_pid("scheduler") != old, 20, "a new scheduler")
        wait_until(lambda: polled_job(st, jobid)["status"] == "qw", 20, "job still qw")
        pips = ok(st, "status", what="pipelines")  # name -> pipeline, as tomato's
        assert pips["pip-counter-2"]["sampleid"] == "kept-sample"
        second = submit(st, counter_doc())
        assert second == jobid + 1  # ids are never reused
        # a clean stop (refused while jobs run, but these only wait) and a new start
        # on the same directories keep the queue too
    with started(st):
        statuses = {j["id"]: j["status"] for j in ok(st, "job_status")}
        assert statuses == {jobid: "qw", jobid + 1: "qw"}
        ok(st, "job_cancel", jobids=[jobid, jobid + 1])


def test_a_new_state_file_never_gives_a_used_job_id_again(tmp_path: Path) -> None:
    """Found by fault injection (2 of 2 runs): with state.sqlite removed between a stop
    and a start, job ids started again at 1; the recorder took the new job 1's points for
    late data of the old job 1, rewrote its finished file (10 -> 27 points, still `c`),
    and the new job ended ce with both jobs' points in a fallback file."""
    import xarray as xr

    def points(path: Path) -> int:
        with xr.open_datatree(path) as tree:
            return int(tree["counter"].to_dataset()["uts"].size)

    with running_stack(tmp_path) as st:
        st.load_ready("pip-counter-1", "counter_1_0.1")
        first = st.submit("counter_1_0.1.yml")
        job = st.wait_job(first, {"c", "ce", "cd"}, timeout=60)
        assert job["status"] == "c", job
        old_file = Path(job["respath"])
        old_points = points(old_file)
        assert old_points == job["progress"]["tasks"]["0"]["end"]["npoints"]  # all taken
    for f in st.datadir.glob("state.sqlite*"):
        f.unlink()
    with started(st):
        st.load_ready("pip-counter-1", "counter_1_0.1")
        second = st.submit("counter_1_0.1.yml")
        assert second == first + 1, second  # not the old id again
        job = st.wait_job(second, {"c", "ce", "cd"}, timeout=60)
        assert job["status"] == "c", job
        assert points(Path(job["respath"])) == job["progress"]["tasks"]["0"]["end"]["npoints"]
        assert points(old_file) == old_points  # the finished file is as it was
        log = (st.logdir / "scheduler.log").read_text()
        assert f"job ids continue after {first}" in log, log[-2000:]
        # (dgbowl-schemas' "Updating from Payload-1.0 to Payload-2.0" and on: two lines of
        # every submit of an older payload version, at INFO)
        assert "Updating from Payload" not in log, log[-2000:]


async def test_a_recorder_on_another_pc_tells_the_scheduler_which_ids_are_used(
    broker: RunningBroker, tmp_path: Path, instance: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The ids continue after those the recorder has stored even when the scheduler
    cannot read its store (a recorder on another PC): its status says the highest. A
    fresh state file here, a recorder that has stored job 41: the next submit is job 42,
    not job 1 (whose points the recorder would take for job 1's). (The status is sent
    once the stack is up: retained before, the stack's own recorder could replace it
    before the scheduler read it, a loaded run's job 1.)"""
    import logging

    from tomato_mqtt.wire.messages import RecorderStatus, encode

    topics = Topics(instance)
    async with inproc_stack(broker.port, tmp_path, instance) as st:
        await st.call("pipeline_load", {"pipeline": "pip-counter-1", "sampleid": "s1"})
        with caplog.at_level(logging.WARNING, logger="tomato_mqtt.services.scheduler"):
            async with client(f"mqtt://127.0.0.1:{broker.port}") as c:
                seen = RecorderStatus(state="online", heartbeat=time.time(), highest_job=41)
                await c.publish(topics.recorder_status(), encode(seen))
            said = "job ids continue after 41 (seen in the recorder's status"
            for _ in range(200):
                if any(said in r.getMessage() for r in caplog.records):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError([r.getMessage() for r in caplog.records])
        doc = yaml.safe_load((CONFIG / "counter_v2.2.yml").read_text())
        job = await st.call("job_submit", {"payload": doc, "submit_dir": str(tmp_path)})
        assert job.id == 42, job
        await st.call("job_cancel", {"jobids": [job.id]})
        # the recorder that runs here tells its own highest (none: a fresh store) and
        # the ids do not go back
        again = await st.call("job_submit", {"payload": doc, "submit_dir": str(tmp_path)})
        assert again.id == 43, again
        await st.call("job_cancel", {"jobids": [again.id]})


async def test_a_recorder_status_with_an_implausible_job_id_moves_no_ids(
    broker: RunningBroker, tmp_path: Path, instance: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A hostile tour: a forged recorder status with ``highest_job`` 2**63-1 was stored
    as the next id: every later submit failed ("no such savepoint"), for good. An id
    beyond any lab's (model.jobs.PLAUSIBLE_ID) is said and not taken."""
    import logging

    from tomato_mqtt.wire.messages import RecorderStatus, encode

    topics = Topics(instance)
    doc = yaml.safe_load((CONFIG / "counter_v2.2.yml").read_text())
    async with inproc_stack(broker.port, tmp_path, instance) as st:
        await st.call("pipeline_load", {"pipeline": "pip-counter-1", "sampleid": "s1"})
        with caplog.at_level(logging.WARNING, logger="tomato_mqtt.services.scheduler"):
            async with client(f"mqtt://127.0.0.1:{broker.port}") as c:
                seen = RecorderStatus(state="online", heartbeat=time.time(), highest_job=2**63 - 1)
                await c.publish(topics.recorder_status(), encode(seen))
            said = f"job ids not moved past {2**63 - 1} (seen in the recorder's status)"
            for _ in range(100):
                if any(said in r.getMessage() for r in caplog.records):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError([r.getMessage() for r in caplog.records])
        for want in (1, 2):
            job = await st.call("job_submit", {"payload": doc, "submit_dir": str(tmp_path)})
            assert job.id == want, job
            await st.call("job_cancel", {"jobids": [job.id]})


async def test_reload_names_the_keys_of_the_devices_file_it_ignores(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """A tomato 2.2 devices file with keys nothing reads (``comment:``) reloads, and the
    reply names each (file, entry, key), so that a misspelt one (``pollrat``) is seen."""
    async with inproc_stack(broker.port, tmp_path, instance) as st:
        devices = st.settings.devices_file
        text = devices.read_text()
        devices.write_text(
            text.replace("    pollrate: 1\n", "    pollrate: 1\n    comment: bench 2\n")
        )
        rep = await st.raw(st.topics.scheduler_cmd("reload"))
        assert rep.success, rep
        assert rep.msg == (
            f"reload done: no changes; warning: {devices}: devices[0] 'dev-counter': unknown "
            "key 'comment' ignored, as tomato 2.2 ignores it (a device has: name, driver, "
            "address, channels, pollrate, node)"
        ), rep.msg
        devices.write_text(text)
        rep = await st.raw(st.topics.scheduler_cmd("reload"))
        assert rep.msg == "reload done: no changes", rep.msg


async def test_a_reload_applies_the_submit_limits_and_names_a_changed_port(
    broker: RunningBroker, tmp_path: Path, instance: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An outside fault run: `tomato reload` after tightening `[jobs] max_tasks` answered
    "reload done: [jobs]" and a 2-task payload was still accepted (the submit limits were
    the start's until a restart; loosened, they refused what they now allow); a changed
    `[mqtt] port` was "no changes"; and nothing of a reload was in the scheduler's log."""
    caplog.set_level("INFO", logger="tomato_mqtt.services.scheduler.reload")
    doc = yaml.safe_load((CONFIG / "counter_v2.2.yml").read_text())
    doc["method"] = doc["method"][:1] * 2
    async with inproc_stack(broker.port, tmp_path, instance) as st:
        toml = st.settings.appdir / "settings.toml"
        text = toml.read_text()
        toml.write_text(text + "\n[jobs]\nmax_tasks = 1\n")
        reply = await st.raw(st.topics.scheduler_cmd("reload"))
        assert reply.success and reply.msg == "reload done: [jobs]", reply
        with pytest.raises(ReplyError) as e:
            await st.call("job_submit", {"payload": doc, "submit_dir": str(tmp_path)})
        assert "2 tasks, more than the 1 a job may hold ([jobs] max_tasks)" in str(e.value)
        toml.write_text(text)  # loosened again: taken at once
        reply = await st.raw(st.topics.scheduler_cmd("reload"))
        assert reply.success and reply.msg == "reload done: [jobs]", reply
        job = await st.call("job_submit", {"payload": doc, "submit_dir": str(tmp_path)})
        await st.call("job_cancel", {"jobids": [job.id]})
        port = st.settings.mqtt.port
        toml.write_text(text.replace("[mqtt]\n", f"[mqtt]\nport = {port + 1}\n"))
        assert f"port = {port + 1}" in toml.read_text()
        reply = await st.raw(st.topics.scheduler_cmd("reload"))
        assert reply.success and "[mqtt] changed, which reload does not apply" in reply.msg, reply
        toml.write_text(text)
    said = [r.getMessage() for r in caplog.records if "reload done" in r.getMessage()]
    assert said[:2] == ["reload done: [jobs]", "reload done: [jobs]"], said


async def test_a_cancel_naming_an_unknown_job_says_none_was_cancelled(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """An outside run: `ketchup cancel 99 9999` answered "no job with id 9999" and left
    job 99 queued (all or nothing), which the answer did not say."""
    doc = yaml.safe_load((CONFIG / "counter_v2.2.yml").read_text())
    async with inproc_stack(broker.port, tmp_path, instance) as st:
        job = await st.call("job_submit", {"payload": doc, "submit_dir": str(tmp_path)})
        with pytest.raises(ReplyError) as e:
            await st.call("job_cancel", {"jobids": [job.id, 9999]})
        assert str(e.value) == "no job with id 9999: none of the jobs was cancelled"
        assert e.value.code == "not_found"
        (still,) = await st.call("job_status", {"jobids": [job.id]})
        assert still.status in ("q", "qw"), still
        await st.call("job_cancel", {"jobids": [job.id]})


def test_a_misspelt_top_level_key_of_the_devices_file_is_refused() -> None:
    """An outside fault run: `pipeline:` for `pipelines:` reloaded "done", removing every
    pipeline of the lab, with a warning at the end of the message; a file with neither
    key (only `foo: 1`) was an empty lab. Both are refused (tomato 2.2 fails on them too)."""
    from tomato_mqtt.config.devices import parse_devices
    from tomato_mqtt.errors import ConfigError

    doc = yaml.safe_load((CONFIG / "devices_counter.yml").read_text())
    doc["pipeline"] = doc.pop("pipelines")
    with pytest.raises(ConfigError) as e:
        parse_devices(doc, "devices.yml")
    assert str(e.value) == (
        "devices.yml: unknown key 'pipeline': did you mean 'pipelines'? (the file has no "
        "'pipelines': were it ignored, there would be no pipelines)"
    )
    with pytest.raises(ConfigError) as e:
        parse_devices({"foo": 1}, "devices.yml")
    assert str(e.value) == "devices.yml: it needs 'devices' and 'pipelines' (it has 'foo')"
    doc["pipelines"] = doc.pop("pipeline")  # both, and a near one beside them: a warning
    doc["pipeline"] = "a note"
    layout = parse_devices(doc, "devices.yml")
    assert layout.pipelines and "unknown key 'pipeline' ignored" in layout.ignored[0]


def test_a_job_waiting_for_a_component_that_cannot_register_says_why() -> None:
    """An outside fault run: a pipeline added by a reload with a driver not installed made
    its job wait with "component … is not registered yet", as if it would; the node had
    said why (`tomato status components`). The reason carries it."""
    from tomato_mqtt.config.devices import PipelineLayout
    from tomato_mqtt.model.matching import ComponentView, match

    pips = {"pip-ghost": PipelineLayout(name="pip-ghost", roles={"counter": "ghost"})}
    why = "driver 'nosuchdrv' is not installed on this node (…)"
    views = {"ghost": ComponentView(name="ghost", capabilities=None, error=why)}
    method = [{"component_role": "counter", "technique_name": "count", "task_params": {}}]
    got = match(method, pips, views, lambda *a: None)
    assert got.reason == (
        f"role 'counter': component ghost on pip-ghost is not registered: {why}"
    ), got.reason


async def test_a_payload_of_too_many_tasks_is_refused_before_its_tasks_are_read(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """[jobs] max_tasks (10,000): a 10,001-task payload is refused by the scheduler with
    the bound named, and nothing is queued."""
    from tomato_mqtt.transport.rpc import ReplyError

    doc = yaml.safe_load((CONFIG / "counter_v2.2.yml").read_text())
    doc["method"] = doc["method"][:1] * 10_001
    async with inproc_stack(broker.port, tmp_path, instance) as st:
        with pytest.raises(ReplyError, match="10,001 tasks.*max_tasks"):
            await st.call("job_submit", {"payload": doc, "submit_dir": str(tmp_path)})
        summary = await st.call("job_status", {"summary": True})
        assert summary.total == 0


async def test_a_submit_sent_again_with_its_token_is_one_job(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """A client sends a submit again when no answer comes (the scheduler restarting):
    one that was queued already (by a scheduler that died before it answered) is
    answered with its job, not queued twice; the token is remembered in the state file,
    so also by the next scheduler."""
    doc = yaml.safe_load((CONFIG / "counter_v2.2.yml").read_text())
    args = {"payload": doc, "submit_dir": str(tmp_path), "token": "a1b2c3d4e5f6a7b8"}
    async with inproc_stack(broker.port, tmp_path, instance) as st:
        first = await st.call("job_submit", args)
        again = await st.call("job_submit", args)
        other = await st.call("job_submit", {**args, "token": "ffffeeeeddddcccc"})
        plain = await st.call("job_submit", {k: v for k, v in args.items() if k != "token"})
        assert again.id == first.id and len({first.id, other.id, plain.id}) == 3
        assert (await st.call("job_status", {"summary": True})).total == 3
        # the same token with another payload or name is not that submission: refused
        # (it was answered with the first job, the new payload dropped: an outside audit)
        for change in ({"jobname": "another"}, {"payload": {**doc, "sample": {"identifier": "x"}}}):
            with pytest.raises(ReplyError) as e:
                await st.call("job_submit", {**args, **change})
            assert e.value.code == "conflict" and f"job {first.id}" in str(e.value), e.value
        db = st.settings.state_db
    with StateStore(db) as store:  # what the next scheduler reads
        known = store.submitted(first.owner, "a1b2c3d4e5f6a7b8")
        assert known is not None and known[0].id == first.id and known[1]
        assert store.submitted(first.owner, "0000111122223333") is None
    # a copy reaching a scheduler restarted with other limits is still its job, not
    # checked again and refused (a review: "payload refused", the job queued all along)
    tight = "[jobs]\nmax_points_per_task = 1\n"
    async with inproc_stack(broker.port, tmp_path, instance, settings=tight) as st:
        again = await st.call("job_submit", args)
        assert again.id == first.id


async def test_a_request_sent_again_gets_the_first_answer_also_from_the_next_scheduler(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """A client sends a request again (same id) while no answer comes. A copy of a load
    that a scheduler carried out before it died (the answer lost with it) reached the
    next scheduler, which loaded again and answered "already holds sample": the user
    was told their load failed. Now the state file keeps such answers, and a running
    scheduler answers a copy too (it dropped copies: a lost first answer was never
    given again). A copy of a read is answered anew."""
    replies: asyncio.Queue[Reply] = asyncio.Queue()

    async def send(c: AsyncClient, t: Topics, op: str, rid: str, args: dict[str, Any]) -> None:
        req = {"id": rid, "reply_to": t.reply(c.client_id), "args": args}
        await c.publish(t.scheduler_cmd(op), json.dumps(req).encode())

    async def answer(rid: str) -> Reply:
        while True:
            r = await asyncio.wait_for(replies.get(), 10)
            if r.id == rid:
                return r

    def on_reply(m: Message) -> None:
        replies.put_nowait(decode(Reply, m.payload))

    load = {"pipeline": "pip-counter-1", "sampleid": "s-1"}
    async with inproc_stack(broker.port, tmp_path, instance) as st, client(broker.url) as c:
        await c.subscribe(
            st.topics.reply(c.client_id),
            handler=lambda m: replies.put_nowait(decode(Reply, m.payload)),
        )
        await send(c, st.topics, "pipeline_load", "load-1", load)
        first = await answer("load-1")
        assert first.success, first
        await send(c, st.topics, "pipeline_load", "load-1", load)  # the same scheduler
        again = await answer("load-1")
        assert (again.success, again.msg, again.data) == (True, first.msg, first.data)
        for _ in range(2):  # a read: carried out each time (two answers)
            await send(c, st.topics, "status", "read-1", {"what": "scheduler"})
            assert (await answer("read-1")).success
    async with inproc_stack(broker.port, tmp_path, instance) as st, client(broker.url) as c:
        await c.subscribe(
            st.topics.reply(c.client_id),
            handler=lambda m: replies.put_nowait(decode(Reply, m.payload)),
        )
        await send(c, st.topics, "pipeline_load", "load-1", load)  # the next scheduler
        late = await answer("load-1")
        assert (late.success, late.msg) == (True, first.msg), late
        # a new request is carried out, not masked by the kept answer
        await send(c, st.topics, "pipeline_load", "load-2", load)
        fresh = await answer("load-2")
        assert not fresh.success and "already holds sample 's-1'" in fresh.msg, fresh
        # the same id for another op (a client numbering its requests, restarted) is
        # that op, carried out: an eject was answered "loaded" from the kept load (a review)
        eject = {"pipeline": "pip-counter-1"}
        await send(c, st.topics, "pipeline_eject", "load-1", eject)
        ejected = await answer("load-1")
        assert ejected.success and "ejected" in ejected.msg, ejected
        assert (await st.call("status", {"what": "pipelines"}))["pip-counter-1"].sampleid is None
    with contextlib.closing(sqlite3.connect(st.settings.state_db)) as db, db:
        kept = db.execute("SELECT op, id, user FROM kept_replies").fetchall()
    # refusals are kept too (the answer is what a copy gets), reads are not; by login
    assert sorted(k[:2] for k in kept) == [
        ("pipeline_eject", "load-1"),
        ("pipeline_load", "load-1"),
        ("pipeline_load", "load-2"),
    ]
    assert {k[2] for k in kept} == {st.topics.user}


def _write_devices(st: Stack, doc: dict[str, Any]) -> None:
    (st.appdir / "devices.yml").write_text(yaml.safe_dump(doc))


def test_reload_applies_changes_and_refuses_those_touching_a_running_job(
    tmp_path: Path,
) -> None:
    with running_stack(tmp_path) as st:
        rep = ok(st, "reload")
        base = yaml.safe_load((CONFIG / "devices_counter.yml").read_text())
        assert ask(st, "reload").msg.endswith("no changes")
        # a section only a restart applies: said so, not "no changes"
        toml = st.appdir / "settings.toml"
        before = toml.read_text()
        toml.write_text(before + "\n[node]\nbatch_interval = 0.2\n")
        msg = ask(st, "reload").msg
        assert "[node] changed, which reload does not apply" in msg, msg
        toml.write_text(before)
        assert ask(st, "reload").msg.endswith("no changes")

        # a driver's settings added, then removed again: both reach the node (found by
        # fault injection: the removal was reported applied, and the node kept them)
        def counters(registered: bool) -> bool:
            comps = ok(st, "status", what="components")
            return all(
                c["registered"] is registered
                for n, c in comps.items()
                if n.startswith("example_counter:")
            )

        toml.write_text(before + "\n[drivers.example_counter]\nfail_on_connect = true\n")
        assert "settings of driver(s): example_counter" in ask(st, "reload").msg
        wait_until(lambda: counters(False), 20, "counters failing to connect")
        toml.write_text(before)
        assert "settings of driver(s): example_counter" in ask(st, "reload").msg
        wait_until(lambda: counters(True), 20, "counters registered again")

        # add a driver and a wildcard pipeline: they appear, and the node loads the driver
        grown = json.loads(json.dumps(base))
        grown["devices"].append(
            {"name": "dev-ps", "driver": "psutil", "address": "a", "channels": ["1", "2"]}
        )
        grown["pipelines"].append(
            {
                "name": "pip-ps-*",
                "devices": [{"role": "psutil", "device": "dev-ps", "channel": "each"}],
            }
        )
        _write_devices(st, grown)
        ok(st, "reload")
        names = set(ok(st, "status", what="pipelines"))
        assert {"pip-ps-1", "pip-ps-2", "pip-counter-1"} <= names

        def ps_registered() -> bool:
            comps = ok(st, "status", what="components")
            return all(comps[f"psutil:(a,{ch})"]["registered"] for ch in ("1", "2"))

        wait_until(ps_registered, 20, "psutil components registered")

        # a job runs on pip-counter-1: changing its device is refused, nothing changes
        ok(st, "pipeline_load", pipeline="pip-counter-1", sample="counter_1_0.1")
        ok(st, "pipeline_ready", pipeline="pip-counter-1")
        jobid = submit(st, counter_doc(20.0))
        wait_until(lambda: polled_job(st, jobid)["status"] == "r", 10, "job running")
        changed = json.loads(json.dumps(grown))
        changed["devices"][0]["address"] = "elsewhere"
        _write_devices(st, changed)
        rep = ask(st, "reload")
        assert not rep.success
        assert "running job" in rep.msg and "example_counter:(example-addr,1)" in rep.msg, rep
        names = set(ok(st, "status", what="pipelines"))
        assert "pip-counter-1" in names
        # removing the pipeline of the running job is refused as well
        shrunk = json.loads(json.dumps(grown))
        shrunk["pipelines"] = [p for p in shrunk["pipelines"] if p["name"] != "pip-counter-*"]
        _write_devices(st, shrunk)
        rep = ask(st, "reload")
        assert not rep.success and "pipeline pip-counter-1" in rep.msg, rep

        # removing a pipeline that holds a sample is refused, naming it (the sample
        # went with it without a word: a fault-injection review); once ejected it goes
        ok(st, "pipeline_load", pipeline="pip-ps-2", sample="s-ps")
        _write_devices(st, base)
        rep = ask(st, "reload")
        assert not rep.success and rep.code == "conflict", rep
        assert "remove pipeline(s) pip-ps-2 (sample 's-ps'), which hold a sample" in rep.msg
        assert "pip-ps-1" in set(ok(st, "status", what="pipelines"))  # nothing changed
        ok(st, "pipeline_eject", pipeline="pip-ps-2")
        # removing what no job uses is applied while the job runs
        ok(st, "reload")
        names = set(ok(st, "status", what="pipelines"))
        assert "pip-ps-1" not in names and "pip-counter-1" in names
        assert job(st, jobid)["status"] == "r"

        # a broken devices file is refused with the file and the reason; nothing changes
        (st.appdir / "devices.yml").write_text("devices: [\n")
        rep = ask(st, "reload")
        assert not rep.success and "devices.yml" in rep.msg, rep
        _write_devices(st, base)
        ok(st, "job_cancel", jobids=[jobid])
        wait_until(lambda: polled_job(st, jobid)["status"] == "cd", 20, "job cancelled")


async def test_names_with_control_characters_are_refused_and_never_printed_raw(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """A job named "x\\nstatus:    c" made another user's `ketchup status N` print a fake
    status line (a script grepping it took a queued job for done), and escape sequences
    retitled and cleared their terminal (an outside audit). The scheduler refuses such
    names; what reaches a terminal anyway (older jobs, a driver's message) is escaped."""
    from tomato_mqtt.cli.jobview import job_detail, job_table
    from tomato_mqtt.transport.rpc import ReplyError

    doc = yaml.safe_load((CONFIG / "counter_v2.2.yml").read_text())
    async with inproc_stack(broker.port, tmp_path, instance) as st:
        for args in (
            {"payload": doc, "jobname": "x\nstatus:    c"},
            {"payload": doc, "jobname": "evil\x1b]0;PWNED\x07"},
            {"payload": {**doc, "sample": {**doc["sample"], "identifier": "s\x1b[2J"}}},
            # marks that show nothing, spaces other than " " (a security round: these
            # looked exactly like `olga-job` and `s3`)
            {"payload": doc, "jobname": "olga-job\u034f"},
            {"payload": doc, "jobname": "olga-job\ufe0f"},
            {"payload": doc, "jobname": "olga-job\u3000"},
            {"payload": {**doc, "sample": {**doc["sample"], "identifier": "s3\u00a0"}}},
        ):
            with pytest.raises(ReplyError) as e:
                await st.call("job_submit", {**args, "submit_dir": str(tmp_path)})
            assert e.value.code == "bad_request" and "control characters" in str(e.value)
        for sample in ("a\rb", "s3\u034f"):
            with pytest.raises(ReplyError, match="control characters"):
                await st.call("pipeline_load", {"pipeline": "pip-counter-1", "sampleid": sample})
        # a visible mark and a plain space stay names of their own
        await st.call(
            "job_submit", {"payload": doc, "jobname": "café job", "submit_dir": str(tmp_path)}
        )
        await st.call("job_cancel", {"jobids": [1]})
        assert (await st.call("job_status", {"summary": True})).total == 1
    job = {"id": 1, "jobname": "x\nstatus:    c", "status": "q", "reason": "r\x1b[2J"}
    for text in (job_detail([job]), job_table([job])):
        assert "\x1b" not in text and "\nstatus:    c" not in text, text
        assert "x\\x0astatus:    c" in text and "r\\x1b[2J" in text, text


async def test_a_job_cancelled_while_it_waits_drops_its_waiting_reason(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """A queued job cancelled kept "no pipeline holds sample …" as its reason, shown on
    its final `cd` line by `follow()` and `ketchup status` (a newcomer's tour)."""
    doc = yaml.safe_load((CONFIG / "counter_v2.2.yml").read_text())
    doc["sample"]["identifier"] = "never-loaded"
    async with inproc_stack(broker.port, tmp_path, instance) as st:
        job = await st.call("job_submit", {"payload": doc, "submit_dir": str(tmp_path)})
        waiting = await st.wait_job(job.id, {"qw"})
        assert waiting.reason and "never-loaded" in waiting.reason, waiting
        await st.call("job_cancel", {"jobids": [job.id]})
        done = (await st.call("job_status", {"jobids": [job.id]}))[0]
        assert (done.status, done.reason) == ("cd", None), done
    # ... and `ketchup status N` does not show the file it would have written as its
    # output (it never ran: a newcomer's tour)
    from tomato_mqtt.cli.jobview import job_detail

    text = job_detail([done.model_dump(mode="json")])
    assert "output:    - (it never ran: no file)" in text, text
    assert str(done.respath) not in text


async def test_a_component_moved_to_a_node_not_started_says_so(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """A newcomer's tour: a device moved to ``node: pc2`` (not started) showed "no node"
    beside "registered: yes" (the meta its old node had announced), and a job for it
    waited "component … has not said its state yet" for ever."""
    doc = yaml.safe_load((CONFIG / "counter_1_0.1.yml").read_text())
    async with inproc_stack(broker.port, tmp_path, instance) as st:
        devices = st.settings.devices_file
        text = devices.read_text()
        assert "    pollrate: 1\n" in text
        devices.write_text(text.replace("    pollrate: 1\n", "    pollrate: 1\n    node: pc2\n", 1))
        reply = await st.raw(st.topics.scheduler_cmd("reload"))
        assert reply.success and "warning: node 'pc2' is not online, so 4 component(s)" in (
            reply.msg or ""
        ), reply
        # how to start it, as `tomato start` says it: the instance too (it said
        # "tomato node --name pc2": an admin's tour)
        assert (
            f"start it on its PC (`tomato node --name pc2 --broker mqtt://<this PC's "
            f"address>:{broker.port} --instance {instance}`)"
        ) in (reply.msg or ""), reply
        comps = await st.call("status", {"what": "components"})
        moved = {k: v for k, v in comps.items() if v.node == "pc2"}
        assert moved and all(
            v.state == "no node" and v.registered is False for v in moved.values()
        ), comps
        await st.call("pipeline_load", {"pipeline": "pip-counter-1", "sampleid": "counter_1_0.1"})
        await st.call("pipeline_ready", {"pipeline": "pip-counter-1"})
        job = await st.call("job_submit", {"payload": doc, "submit_dir": str(tmp_path)})
        for _ in range(100):  # (`q`: no pipeline can run it while the node is away)
            waiting = await st.call("job_status", {"jobids": [job.id]})
            waiting = waiting[0] if isinstance(waiting, list) else waiting
            if waiting.reason:
                break
            await asyncio.sleep(0.1)
        assert waiting.reason and "its node 'pc2' is not online" in waiting.reason, waiting
        # the whole command, as the reload said it (it said `tomato node --name pc2`, which
        # connects to its own PC's broker and the default instance: an admin's tour)
        assert (
            f"(start it on its PC: `tomato node --name pc2 --broker mqtt://<this PC's "
            f"address>:{broker.port} --instance {instance}`)"
        ) in waiting.reason, waiting
        await st.call("job_cancel", {"jobids": [job.id]})


async def test_a_reload_while_the_stack_s_own_node_is_away_does_not_say_start_it(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """A randomized fault round: `tomato reload` while the stack's own node stood still
    (SIGSTOP) said "start it on its PC (`tomato node --name local --broker …`)" of the
    node tomato start's supervisor runs. It says that node is the stack's own, and
    what the scheduler has it as."""
    async with inproc_stack(broker.port, tmp_path, instance) as st:
        assert st.node.name == st.settings.node.name
        st.node.request_stop()
        for _ in range(200):
            n = st.scheduler.nodes.get(st.node.name)
            if n is not None and n.state != "online":
                break
            await asyncio.sleep(0.05)
        reply = await st.raw(st.topics.scheduler_cmd("reload"))
        assert reply.success, reply
        assert (
            f"warning: node '{st.node.name}' (this stack's own, run by tomato start) is "
            "offline, so 4 component(s) cannot register"
        ) in (reply.msg or ""), reply.msg
        assert "start it on its PC" not in (reply.msg or ""), reply.msg


async def test_a_page_of_the_listing_says_first_that_its_counts_are_the_page_s(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """A newcomer's tour: `ketchup status --all --limit 3` said "found 1 job with status
    'c'" of five, the page note below it: read as the whole listing's counts."""
    doc = yaml.safe_load((CONFIG / "counter_v2.2.yml").read_text())
    doc["sample"]["identifier"] = "never-loaded"
    async with inproc_stack(broker.port, tmp_path, instance) as st:
        for _ in range(3):
            await st.call("job_submit", {"payload": doc, "submit_dir": str(tmp_path)})
        reply = await st.raw(st.topics.scheduler_cmd("job_status"), {"limit": 2})
        assert reply.success and len(reply.data) == 2, reply
        first, rest = (reply.msg or "").split("\n", 1)
        assert first == (
            "(listing page: jobs 2-3 of 3, oldest first; others with --offset N --limit M;"
            " the counts are this page's)"
        ), reply.msg
        assert rest.startswith("found 2 jobs with status"), reply.msg
        whole = await st.raw(st.topics.scheduler_cmd("job_status"), {})
        assert (whole.msg or "").startswith("found 3 jobs"), whole.msg  # no note: all of it


def test_a_job_table_cuts_the_reason_before_the_times(monkeypatch: pytest.MonkeyPatch) -> None:
    """`ketchup status --all` (120 columns off a terminal) cut the submitted and started
    times to "2026-12-06 16:11:…" to make room for a long reason, the time of day lost
    (a newcomer's tour): the reason, free text, is cut first."""
    from tomato_mqtt.cli import output
    from tomato_mqtt.cli.jobview import job_table

    monkeypatch.setattr(output, "_term_width", lambda: 120)  # as off a terminal (-s: its own)
    at = "2026-12-06T16:11:42.123456+00:00"
    job = {
        "id": 12,
        "jobname": "a-long-job-name",
        "status": "qw",
        "pipeline": "pip-counter-12",
        "submitted_at": at,
        "launched_at": at,
        "completed_at": at,
        "reason": "no pipeline holds sample 'x': load it into pip-counter-1 " * 3,
    }
    text = job_table([job])
    assert all(len(line) <= 120 for line in text.splitlines()), text
    row = text.splitlines()[2]
    assert row.count(":11:42") == 3, text  # every time whole
    assert row.endswith("no pipeline…"), text
