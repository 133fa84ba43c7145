"""The typed command contract: every operation has models, replies validate, codes are set.

Runs the real scheduler, recorder and node in-process (tests/inproc.py) against the
embedded broker: each scheduler command's reply data is parsed with its declared type,
and each kind of failure carries its error code.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import RunningBroker
from tests.inproc import inproc_stack
from tomato_mqtt.model.jobs import Job, PipelineState
from tomato_mqtt.transport.rpc import ReplyError
from tomato_mqtt.wire.commands import COMMANDS, ERROR_CODES, FileData, commands_of

CONFIG = Path(__file__).resolve().parents[1] / "config"


def test_every_operation_has_a_command_model() -> None:
    from tomato_mqtt.services.node.ops import ComponentOps
    from tomato_mqtt.services.scheduler.ops import SchedulerOps

    # the dispatch tables are built from bound methods: read them off bare instances
    sched_ops = set(SchedulerOps.__new__(SchedulerOps).table())
    assert sched_ops == set(commands_of("scheduler"))
    assert set(ComponentOps.__new__(ComponentOps).table()) == set(commands_of("component"))
    assert {c.op for c in COMMANDS if c.responder == "recorder"} == {"finalize", "fetch", "status"}
    assert len({(c.responder, c.op) for c in COMMANDS}) == len(COMMANDS)


async def test_scheduler_replies_match_their_types(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    async with inproc_stack(broker.port, tmp_path, instance, components=4) as st:
        for what in ("scheduler", "pipelines", "devices", "components", "nodes", "drivers"):
            data = await st.call("status", {"what": what})
            assert data, what
        pip = await st.call(
            "pipeline_load", {"pipeline": "pip-counter-1", "sampleid": "counter_1_0.1"}
        )
        assert isinstance(pip, PipelineState) and pip.sampleid == "counter_1_0.1"
        pip = await st.call("pipeline_ready", {"pipeline": "pip-counter-1"})
        assert pip.ready
        payload = yaml.safe_load((CONFIG / "counter_1_0.1.yml").read_text())
        job = await st.call(
            "job_submit", {"payload": payload, "submit_dir": str(tmp_path), "jobname": "typed"}
        )
        assert isinstance(job, Job)
        done = await st.wait_job(job.id, {"c", "ce", "cd"})
        assert done.status == "c", done.reason
        jobs = await st.call("job_status", {"jobids": [job.id]})
        assert [j.id for j in jobs] == [job.id]
        snap = await st.call("job_snapshot", {"jobid": job.id})
        assert isinstance(snap, FileData) and snap.size > 0
        assert (await st.call("job_search", {"name": "typ", "complete": True}))[0].id == job.id
        ejected = await st.call("pipeline_eject", {"pipeline": "pip-counter-1"})
        assert ejected.sampleid is None
        # no submit folder (a dashboard, a script): a relative output path is taken in
        # the job's own folder, where the recorder may write
        rel = yaml.safe_load((CONFIG / "counter_v2.2.yml").read_text())
        rel["settings"]["output"] = {"path": "runs"}
        queued = await st.call("job_submit", {"payload": rel})
        folder = st.settings.jobs_dir / str(queued.id)
        assert queued.respath == str(folder / "runs" / f"results.{queued.id}.nc"), queued
        await st.call("job_cancel", {"jobids": [queued.id]})
        # again: no error, and the reply says there was nothing to eject
        again = await st.raw(
            st.topics.scheduler_cmd("pipeline_eject"), {"pipeline": "pip-counter-1"}
        )
        assert again.success and again.msg == "pipeline pip-counter-1 was already empty", again
        # and it changes nothing: a ready empty pipeline stays ready, as in tomato 2.2 (a
        # tomato 2.2 user's review: ours cleared `ready`)
        await st.call("pipeline_ready", {"pipeline": "pip-counter-1"})
        again = await st.call("pipeline_eject", {"pipeline": "pip-counter-1"})
        assert again.ready and again.sampleid is None, again
        # ready twice, and a load into a full pipeline: said and answered as tomato 2.2
        # does (the second said "is ready"; the refusal had no pipeline: a side-by-side
        # tour)
        twice = await st.raw(
            st.topics.scheduler_cmd("pipeline_ready"), {"pipeline": "pip-counter-1"}
        )
        assert twice.success and twice.msg == "pipeline pip-counter-1 was already ready", twice
        load = {"pipeline": "pip-counter-1", "sampleid": "s1"}
        await st.call("pipeline_load", load)
        full = await st.raw(st.topics.scheduler_cmd("pipeline_load"), load)
        assert not full.success and full.code == "conflict", full
        assert isinstance(full.data, dict) and full.data["sampleid"] == "s1", full
        assert full.data["name"] == "pip-counter-1" and full.data["ready"] is True, full


@pytest.mark.parametrize(
    ("op", "args", "code"),
    [
        ("pipeline_load", {"pipeline": "nope", "sample": "s"}, "not_found"),
        ("pipeline_load", {"pipeline": "pip-counter-1"}, "bad_request"),
        # a name of 5,000 characters was taken (a dashboard's tables 50,000 px wide)
        ("pipeline_load", {"pipeline": "pip-counter-1", "sampleid": "s" * 257}, "bad_request"),
        ("job_status", {"jobids": [999]}, "not_found"),
        # beyond what the store holds: a bad request, not an internal OverflowError
        ("job_status", {"jobids": [2**70]}, "bad_request"),
        ("job_snapshot", {"jobid": 2**63}, "bad_request"),
        ("job_cancel", {"jobids": [-1]}, "bad_request"),
        ("job_cancel", {}, "bad_request"),
        ("job_submit", {"payload": {"version": "2.2", "method": "x"}}, "refused"),
        ("stop", {"now": True}, "bad_request"),  # a fuzzed stop never stops the stack
        ("reload", {"force": 1}, "bad_request"),
        ("status", {"what": "everything"}, "bad_request"),
    ],
)
async def test_refusals_carry_a_code(
    broker: RunningBroker, tmp_path: Path, instance: str, op: str, args: dict, code: str
) -> None:
    assert code in ERROR_CODES
    async with inproc_stack(broker.port, tmp_path, instance) as st:
        reply = await st.raw(st.topics.scheduler_cmd(op), args)
        assert not reply.success and reply.code == code, reply
        # the stack is still there and answers
        assert (await st.call("status", {"what": "scheduler"})).state == "online"


async def test_a_typed_call_raises_with_the_code(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    async with inproc_stack(broker.port, tmp_path, instance) as st:
        with pytest.raises(ReplyError) as e:
            await st.call("pipeline_eject", {"pipeline": "no-such-pipeline"})
        assert e.value.code == "not_found"
        assert "no-such-pipeline" in str(e.value)


async def test_unknown_operation(broker: RunningBroker, tmp_path: Path, instance: str) -> None:
    async with inproc_stack(broker.port, tmp_path, instance) as st:
        reply = await st.raw(st.topics.scheduler_cmd("launch_rockets"))
        assert not reply.success and reply.code == "unknown_op"
        assert "launch_rockets" in reply.msg


async def test_a_user_s_component_topic_takes_a_user_s_ops_only(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """``component/<c>/cmd/task_start/<user>`` started a task (an integrator's run on an
    open stack: the node answered any op on a user's form, listing only the users' ops
    for an unknown one); the services' form is where tasks start."""
    from tomato_mqtt.driver.spec import TaskSpec
    from tomato_mqtt.wire.messages import TaskStartArgs

    async with inproc_stack(broker.port, tmp_path, instance) as st:
        name = next(iter(st.node.components))
        task = TaskSpec(technique_name="count", max_duration=0.3, sampling_interval=0.1)
        args = TaskStartArgs(task=task).model_dump(mode="json")
        for op in ("task_start", "task_stop", "replay", "ack"):
            reply = await st.raw(st.topics.component_user_cmd(name, op), args)
            assert not reply.success and reply.code == "unknown_op", (op, reply)
            assert "known: get_attr, measure, register, reset, set_attr, status" in reply.msg
        assert st.node.components[name].state == "idle"
        # a user's ops still work there
        ok = await st.raw(st.topics.component_user_cmd(name, "status"))
        assert ok.success, ok


async def test_replies_that_cannot_be_sent_are_said_once_a_second(
    broker: RunningBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """A hostile tour: a flood on an open stack filled the client's queue and every reply
    that could not go made a line (16,490 in 10 s). Said once a second, with the count
    (here a topic the client refuses to publish to)."""
    import logging

    from tomato_mqtt.transport.client import AsyncClient
    from tomato_mqtt.transport.rpc import Responder
    from tomato_mqtt.wire.topics import Topics

    async with AsyncClient(f"mqtt://127.0.0.1:{broker.port}") as c:
        responder = Responder(c, Topics("lab"), {}, name="test")
        with caplog.at_level(logging.WARNING, logger="tomato_mqtt.transport.rpc"):
            for _ in range(50):
                await responder._send_encoded("bad/+/topic", b"{}")
            responder._unsent_said -= 1.0  # a second later
            await responder._send_encoded("bad/+/topic", b"{}")
            for _ in range(3):  # the tail of a run of failures: said when a send works
                await responder._send_encoded("bad/+/topic", b"{}")
            await responder._send_encoded("fine/topic", b"{}")  # (not within a second)
            responder._unsent_said -= 1.0  # a second later
            await responder._send_encoded("fine/topic", b"{}")
    said = [r.getMessage() for r in caplog.records if "could not send reply" in r.getMessage()]
    assert len(said) == 2, said
    assert said[1].endswith("(and 49 more since said)"), said
    tail = [r.getMessage() for r in caplog.records if "could not be sent" in r.getMessage()]
    assert tail == ["test: 3 more replies could not be sent (a flood's end?)"], tail


async def test_the_replies_kept_for_copies_are_bounded_in_bytes(broker: RunningBroker) -> None:
    """A soak: the scheduler kept the reply of each of its last 2,000 requests for their
    copies, bounded by count only (3.4 MB of them over 2,000 submits, up to ~32 MB with
    large payloads). Bounded in bytes too: the oldest are forgotten, and a copy of a
    recent request is still answered from memory, not run again."""
    from tomato_mqtt.transport.client import AsyncClient, Message
    from tomato_mqtt.transport.rpc import Responder, Result
    from tomato_mqtt.wire.messages import Request, encode
    from tomato_mqtt.wire.topics import Topics

    runs: list[str] = []

    async def submit(args: object) -> Result:
        runs.append(str(args))
        return Result("done", {"pad": "x" * 1000})  # a reply of ~1 kB

    topics = Topics("lab")
    async with AsyncClient(f"mqtt://127.0.0.1:{broker.port}") as c:
        responder = Responder(c, topics, {"submit": submit}, name="test", remember_bytes=5000)

        async def ask(rid: str) -> None:
            req = Request(id=rid, reply_to=topics.reply("cli-test"), args={"n": rid})
            await responder.handle(Message(topics.scheduler_cmd("submit"), encode(req)), "submit")

        for i in range(20):
            await ask(f"r{i}")
        assert len(runs) == 20
        assert 0 < responder._seen_bytes <= 5000, responder._seen_bytes
        assert responder._seen_bytes == sum(len(v) for v in responder._seen.values())
        assert 3 <= len(responder._seen) <= 5, list(responder._seen)
        await ask("r19")  # a copy of the last: answered from memory
        assert len(runs) == 20, runs
        await ask("r0")  # the first, forgotten: run again
        assert len(runs) == 21, runs
        # a request still being answered (the oldest entry) is not forgotten for bytes:
        # its copy would run it a second time
        responder._keep(("", "submit", "slow"), b"")
        responder._seen.move_to_end(("", "submit", "slow"), last=False)
        for i in range(10):
            await ask(f"s{i}")
        assert next(iter(responder._seen)) == ("", "submit", "slow"), list(responder._seen)
        assert responder._seen_bytes <= 5000
