"""Request/reply over the embedded broker: round trip, no responder, duplicated ids.

The scenarios take a broker, so tests/test_mosquitto.py runs them against Mosquitto too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import JsonValue, ValidationError

from tests.conftest import RunningBroker
from tomato_mqtt.transport.client import AsyncClient, Message
from tomato_mqtt.transport.rpc import CommandError, NoResponder, Requester, Responder, Result
from tomato_mqtt.wire.messages import Reply, Request, decode, encode
from tomato_mqtt.wire.topics import Topics

T = 10.0


class Echo:
    """A tiny service: an explicit table of operations, counting calls per request."""

    def __init__(self) -> None:
        self.calls: list[Mapping[str, JsonValue]] = []

    async def echo(self, args: Mapping[str, JsonValue]) -> Result:
        self.calls.append(args)
        return Result("echoed", dict(args))

    async def fail(self, args: Mapping[str, JsonValue]) -> Result:
        raise CommandError("pipeline 'pip-1' is not ready", {"pipeline": "pip-1"})

    def table(self) -> dict[str, object]:
        return {"echo": self.echo, "fail": self.fail}


@contextlib.asynccontextmanager
async def serving(
    b: RunningBroker,
    topics: Topics,
    svc: Echo | None = None,
    table: dict[str, Any] | None = None,
    name: str = "echo",
    per_login: bool = False,
    bytes_per_request: int = 0,
) -> AsyncIterator[AsyncClient]:
    """Run a responder for ``scheduler/cmd/+`` (``svc``'s operations, or ``table``);
    requests are handled one at a time."""
    async with AsyncClient(b.url, client_id=f"{topics.instance}-server") as client:
        ops = table if svc is None else {"echo": svc.echo, "fail": svc.fail}
        responder = Responder(
            client,
            topics,
            ops or {},
            name=name,
            per_login=per_login,
            bytes_per_request=bytes_per_request,
        )
        client.responder = responder  # type: ignore[attr-defined]  # (for a test's look)
        await client.subscribe(topics.scheduler_cmds())

        async def loop() -> None:
            async for msg in client.messages():
                parsed = topics.parse(msg.topic)
                if parsed is not None and parsed.op is not None:
                    await responder.handle(msg, parsed.op)

        task = asyncio.create_task(loop())
        try:
            yield client
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# -- scenarios (also run against Mosquitto) ---------------------------------------------
async def check_request_reply(b: RunningBroker, topics: Topics) -> None:
    svc = Echo()
    async with (
        serving(b, topics, svc),
        AsyncClient(b.url, client_id=f"{topics.instance}-cli") as cli,
    ):
        req = Requester(cli, topics)
        reply = await req.request(topics.scheduler_cmd("echo"), {"x": [1, 2]}, timeout=T)
        assert reply.success
        assert (reply.msg, reply.data) == ("echoed", {"x": [1, 2]})

        reply = await req.request(topics.scheduler_cmd("fail"), timeout=T)
        assert not reply.success
        assert reply.msg == "pipeline 'pip-1' is not ready"
        assert reply.data == {"pipeline": "pip-1"}

        reply = await req.request(topics.scheduler_cmd("nope"), timeout=T)
        assert not reply.success
        assert "unknown operation 'nope'" in reply.msg
        assert "echo, fail" in reply.msg

        # a malformed request still gets an answer when its reply topic can be found
        async with AsyncClient(b.url, client_id=f"{topics.instance}-raw") as raw:
            got: asyncio.Queue[Message] = asyncio.Queue()
            reply_topic = topics.reply(raw.client_id)
            await raw.subscribe(reply_topic, handler=got.put_nowait)
            bad = b'{"id": "bad-1", "reply_to": "' + reply_topic.encode() + b'", "args": 3}'
            await raw.publish(topics.scheduler_cmd("echo"), bad)
            answer = decode(Reply, (await asyncio.wait_for(got.get(), T)).payload)
            assert (answer.id, answer.success) == ("bad-1", False)
            assert "args" in answer.msg

        # concurrent requests are matched to their replies by id
        replies = await asyncio.gather(
            *(req.request(topics.scheduler_cmd("echo"), {"i": i}, timeout=T) for i in range(20))
        )
        assert [r.data for r in replies] == [{"i": i} for i in range(20)]


async def check_no_responder(b: RunningBroker, topics: Topics) -> None:
    async with AsyncClient(b.url, client_id=f"{topics.instance}-cli") as cli:
        req = Requester(cli, topics)
        topic = topics.scheduler_cmd("status")
        with pytest.raises(NoResponder) as err:
            await req.request(topic, timeout=0.3, who="scheduler")
        text = str(err.value)
        assert topic in text
        assert "0.3 s" in text
        assert text == f"no scheduler answered on {topic} within 0.3 s — is it running?"


async def check_duplicate_answered_once(b: RunningBroker, topics: Topics) -> None:
    """A copy of a request (QoS 1 delivers twice; a client sends it again while no
    answer comes) is not carried out twice, and gets the first one's answer again: that
    answer may be what got lost."""
    svc = Echo()
    async with (
        serving(b, topics, svc),
        AsyncClient(b.url, client_id=f"{topics.instance}-cli") as cli,
    ):
        reply_topic = topics.reply(cli.client_id)
        got: asyncio.Queue[Reply] = asyncio.Queue()
        await cli.subscribe(reply_topic, handler=lambda m: got.put_nowait(decode(Reply, m.payload)))
        dup = encode(Request(id="dup-1", reply_to=reply_topic, args={"n": 1}))
        await cli.publish(topics.scheduler_cmd("echo"), dup)
        await cli.publish(topics.scheduler_cmd("echo"), dup)
        # a barrier: requests are handled in order, so once this one is answered, a third
        # answer to dup-1 would already have arrived
        barrier = encode(Request(id="barrier", reply_to=reply_topic, args={"n": 2}))
        await cli.publish(topics.scheduler_cmd("echo"), barrier)
        replies: list[Reply] = []
        while not replies or replies[-1].id != "barrier":
            replies.append(await asyncio.wait_for(got.get(), T))
        assert [r.id for r in replies] == ["dup-1", "dup-1", "barrier"]
        assert replies[0] == replies[1]
        assert svc.calls == [{"n": 1}, {"n": 2}]


# -- tests on the embedded broker -----------------------------------------------------------
async def test_request_reply_round_trip(broker: RunningBroker, instance: str) -> None:
    await check_request_reply(broker, Topics(instance))


async def test_no_responder_names_topic_and_wait(broker: RunningBroker, instance: str) -> None:
    await check_no_responder(broker, Topics(instance))


async def test_duplicated_request_id_is_answered_once(broker: RunningBroker, instance: str) -> None:
    await check_duplicate_answered_once(broker, Topics(instance))


async def test_reply_to_outside_the_instance_is_ignored(
    broker: RunningBroker, instance: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A responder never publishes replies outside its own root (no reflection attacks);
    a malformed one is dropped with a line in the log too (it was dropped silently: an
    integrator's tour)."""
    topics = Topics(instance)
    svc = Echo()
    async with (
        serving(b=broker, topics=topics, svc=svc),
        AsyncClient(broker.url, client_id=f"{instance}-cli") as cli,
    ):
        outside = "elsewhere/reply/x"
        got: asyncio.Queue[Message] = asyncio.Queue()
        await cli.subscribe(outside, handler=got.put_nowait)
        rogue = encode(Request(id="r-1", reply_to=outside, args={"n": 1}))
        await cli.publish(topics.scheduler_cmd("echo"), rogue)
        # nor on a reply topic without a client id (it was answered there: an integrator)
        empty = topics.reply("x").rpartition("/")[0] + "/"
        await cli.subscribe(empty, handler=got.put_nowait)
        rogue = encode(Request(id="r-2", reply_to=empty, args={"n": 2}))
        await cli.publish(topics.scheduler_cmd("echo"), rogue)
        malformed = (
            b'{"schema": 2, "id": "r-3", "reply_to": "' + outside.encode() + b'", "args": []}'
        )
        await cli.publish(topics.scheduler_cmd("echo"), malformed)
        reply = await Requester(cli, topics).request(topics.scheduler_cmd("echo"), timeout=T)
        assert reply.success
        # replies leave the responder in order: a reply to the rogue request would be here
        assert got.empty()
        assert svc.calls == [{}]
        said = [
            r.getMessage()
            for r in caplog.records
            if "dropped a malformed request" in r.getMessage()
        ]
        assert said and "reply_to elsewhere/reply/x outside the requester's" in said[0], said


async def test_one_login_s_flood_is_dropped_and_the_others_are_answered(
    broker: RunningBroker,
    instance: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A security tour: a reader's 582,000 requests in 40 s held the scheduler up for 84
    s; nobody else was answered, and a job's end was not told. A responder with
    ``per_login`` takes REQUESTS_PER_S of one login (bursts of REQUESTS_BURST) and drops
    the rest unread, saying so; another login is answered meanwhile."""
    import time

    from tomato_mqtt.transport import rpc

    monkeypatch.setattr(rpc, "REQUESTS_PER_S", 10.0)
    monkeypatch.setattr(rpc, "REQUESTS_BURST", 20)
    topics = Topics(instance)
    svc = Echo()
    async with (
        serving(broker, topics, svc, per_login=True) as server,
        AsyncClient(broker.url, client_id=f"{instance}-rita") as rita,
        AsyncClient(broker.url, client_id=f"{instance}-olga") as olga,
    ):
        heard: list[Reply] = []
        await rita.subscribe(
            topics.reply("rita", "rita"), handler=lambda m: heard.append(decode(Reply, m.payload))
        )
        t0 = time.monotonic()
        flood = encode(Request(id="x", reply_to=topics.reply("rita", "rita"), args={"who": "r"}))
        for _ in range(500):  # (ids repeat: each is still a request to admit or drop)
            await rita.publish(topics.scheduler_cmd("echo", "rita"), flood, qos=0)
        req = Requester(olga, Topics(instance, user="olga"))
        reply = await req.request(topics.scheduler_cmd("echo", "olga"), {"who": "o"}, timeout=T)
        assert reply.success, reply
        took = time.monotonic() - t0
        dropped = server.responder.dropped  # type: ignore[attr-defined]
        # the flooder is told why, once a second (it heard nothing and waited its timeouts);
        # and the rest of its flood is dropped (on Python 3.13 amqtt passes a burst on
        # later: olga was answered while most of it was still on its way, a test run)
        for _ in range(int(T / 0.05)):
            if any(r.code == "conflict" for r in heard) and dropped.get("rita", 0) >= 400:
                break
            await asyncio.sleep(0.05)
        took = max(took, time.monotonic() - t0)
    told = [r for r in heard if not r.success]
    assert 1 <= len(told) <= took + 2, (len(told), took)
    assert told[0].code == "conflict" and "at most 10 requests a second" in told[0].msg, told[0]
    # (the ids repeat: one call for the admitted ones, the rest answered from memory)
    assert [c["who"] for c in svc.calls] == ["r", "o"], svc.calls
    # (a QoS 0 flood: the broker may drop some of it on its way, as amqtt says it did)
    assert 400 <= dropped.get("rita", 0) <= 500 - 20, (dropped, took)
    assert "olga" not in dropped, dropped
    said = [r.getMessage() for r in caplog.records if "dropped unread" in r.getMessage()]
    assert said and "rita: " in said[0] and "over 10 a second of one login" in said[0], said


async def test_a_login_s_large_answers_count_against_its_requests(
    broker: RunningBroker, instance: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hostile tour: a reader's 150 requests a second, under the limit of 200, each
    answered with 1.5 MB, held the scheduler up for 100 s. With ``bytes_per_request`` an
    answer counts as one request per that many bytes: the login's next requests wait, and
    it is told why; another login is answered meanwhile."""
    from tomato_mqtt.transport import rpc

    monkeypatch.setattr(rpc, "REQUESTS_PER_S", 1.0)
    monkeypatch.setattr(rpc, "REQUESTS_BURST", 20)
    topics = Topics(instance)
    svc = Echo()
    async with (
        serving(broker, topics, svc, per_login=True, bytes_per_request=10 * 1024),
        AsyncClient(broker.url, client_id=f"{instance}-rita") as rita,
        AsyncClient(broker.url, client_id=f"{instance}-olga") as olga,
    ):
        req = Requester(rita, Topics(instance, user="rita"))
        big = {"who": "r", "pad": "x" * 100_000}  # answered with ~100 kB: 9 requests
        said = [
            await req.request(topics.scheduler_cmd("echo", "rita"), big, timeout=T)
            for _ in range(3)
        ]
        assert [r.success for r in said] == [True, True, False], [r.msg for r in said]
        assert said[2].code == "conflict", said[2]
        assert "an answer counts as one request per 10 kB of it" in said[2].msg, said[2].msg
        with pytest.raises(rpc.NoResponder):  # below zero: it waits, small or not (told
            # once a second: this one dropped unread)
            await req.request(topics.scheduler_cmd("echo", "rita"), {"who": "r"}, timeout=0.5)
        other = Requester(olga, Topics(instance, user="olga"))
        reply = await other.request(topics.scheduler_cmd("echo", "olga"), big, timeout=T)
        assert reply.success, reply


async def test_a_model_s_defaults_are_not_sent(broker: RunningBroker, instance: str) -> None:
    """Args given as a model carry only the fields the caller set: a responder of an
    older version refuses fields it does not know, also a new optional one left at its
    default (job_submit's ``token``: a parity run against an older scheduler)."""
    from tomato_mqtt.wire.commands import SubmitArgs

    topics = Topics(instance)
    async with (
        serving(broker, topics, Echo()),
        AsyncClient(broker.url, client_id=f"{instance}-cli") as cli,
    ):
        args = SubmitArgs.model_validate({"payload": {"x": 1}, "jobname": "j"})
        reply = await Requester(cli, topics).request(topics.scheduler_cmd("echo"), args, timeout=T)
        assert reply.data == {"payload": {"x": 1}, "jobname": "j"}, reply.data


async def test_a_retained_request_is_not_carried_out_again(
    broker: RunningBroker, instance: str
) -> None:
    """A request published with retain was kept by the broker and carried out at every
    (re)start of its responder: an admin's retained node `shutdown` stopped that node at
    each start (an outside audit). A retained request is ignored, said in the log."""
    topics = Topics(instance)
    svc = Echo()
    async with AsyncClient(broker.url, client_id=f"{instance}-cli") as cli:
        got: asyncio.Queue[Reply] = asyncio.Queue()
        reply_topic = topics.reply(cli.client_id)
        await cli.subscribe(reply_topic, handler=lambda m: got.put_nowait(decode(Reply, m.payload)))
        kept = encode(Request(id="kept-1", reply_to=reply_topic, args={"n": 1}))
        await cli.publish(topics.scheduler_cmd("echo"), kept, retain=True)
        try:
            async with serving(broker, topics, svc):  # a responder (re)started after it
                fresh = encode(Request(id="fresh-1", reply_to=reply_topic, args={"n": 2}))
                await cli.publish(topics.scheduler_cmd("echo"), fresh)
                assert (await asyncio.wait_for(got.get(), T)).id == "fresh-1"
            assert svc.calls == [{"n": 2}] and got.empty()
        finally:
            await cli.publish(topics.scheduler_cmd("echo"), b"", retain=True)


async def test_ids_and_args_are_bounded_and_of_their_json_type(
    broker: RunningBroker, instance: str
) -> None:
    """A reader's 10 MB request ids were all remembered (a scheduler at 850 MB), and
    ``"2"``/``true`` were read as job ids, ``"on"`` as ``force`` (an outside audit)."""
    from tomato_mqtt.wire.commands import JOB_IDS_MAX, command

    topics = Topics(instance)
    async with (
        serving(broker, topics, Echo()),
        AsyncClient(broker.url, client_id=f"{instance}-cli") as cli,
    ):
        got: asyncio.Queue[Reply] = asyncio.Queue()
        reply_topic = topics.reply(cli.client_id)
        await cli.subscribe(reply_topic, handler=lambda m: got.put_nowait(decode(Reply, m.payload)))
        huge = b'{"id": "%s", "reply_to": "%s", "args": {}}' % (
            b"x" * 100_000,
            reply_topic.encode(),
        )
        await cli.publish(topics.scheduler_cmd("echo"), huge)
        reply = await asyncio.wait_for(got.get(), T)
        assert not reply.success and reply.code == "bad_request" and reply.id == "x" * 128
    for op, args in (
        ("job_cancel", {"jobids": [True]}),
        ("job_status", {"jobids": ["2"]}),
        ("job_status", {"summary": "yes"}),
        ("job_snapshot", {"jobid": "1"}),
        ("job_status", {"jobids": [1] * (JOB_IDS_MAX + 1)}),
        ("job_search", {"name": "a" * 50_000}),
        # a parsed payload as large as its text may be (a script's 7 MB payload was
        # queued: only payload_text was bounded; a security audit)
        ("job_submit", {"payload": {"version": "2.2", "x": "a" * 1_000_000}}),
    ):
        with pytest.raises(ValidationError):
            command("scheduler", op).parse_args(args)
    assert command("scheduler", "job_submit").parse_args({"payload": {"x": "a" * 999_000}})
    for op, args in (("reset", {"force": "on"}), ("set_attr", {"attr": "a", "val": 1, "force": 1})):
        with pytest.raises(ValidationError):
            command("component", op).parse_args(args)
    assert command("scheduler", "job_status").parse_args({"jobids": [1, 2]})
    # strict as JSON carries them, not as Python holds them: a script's tuple or numpy
    # integers are what they become on the wire (a review: `jobs(*df["id"])` was refused)
    import numpy as np

    got = command("scheduler", "job_status").parse_args({"jobids": (np.int64(3), 4)})
    assert got.jobids == [3, 4]  # type: ignore[attr-defined]
    assert command("component", "reset").parse_args({"force": np.True_}).force is True  # type: ignore[attr-defined]


def test_the_contract_says_pipeline_load_takes_sample_or_sampleid() -> None:
    """The AsyncAPI schema of pipeline_load required ``sampleid``, so an integrator who
    validated requests against it refused the documented ``sample`` (an outside audit)."""
    from tomato_mqtt.wire.commands import LoadArgs

    schema = LoadArgs.model_json_schema()
    assert schema["required"] == ["pipeline"] and {"sample", "sampleid"} <= set(
        schema["properties"]
    )
    assert schema["oneOf"] == [{"required": ["sampleid"]}, {"required": ["sample"]}]
    for key in ("sample", "sampleid"):
        assert LoadArgs.model_validate({"pipeline": "p", key: "s"}).sampleid == "s"


@contextlib.asynccontextmanager
async def _recorder_stand_in(
    b: RunningBroker, topics: Topics, lost: Callable[[str], bool]
) -> AsyncIterator[AsyncClient]:
    """A recorder that answers each ``finalize`` with a written file, but for the copies
    ``lost(request id)`` says are lost; yields the scheduler's client."""
    async with (
        AsyncClient(b.url, client_id=f"{topics.instance}-rec") as rec,
        AsyncClient(b.url, client_id=f"{topics.instance}-sched") as sched,
    ):

        async def recorder() -> None:
            async for msg in rec.messages():
                req = decode(Request, msg.payload, msg.topic)
                if lost(req.id):
                    continue
                reply = Reply(id=req.id, success=True, msg="written", data={"path": "x.nc"})
                await rec.publish(req.reply_to, encode(reply), qos=1)

        await rec.subscribe(topics.recorder_cmd("finalize"))
        task = asyncio.create_task(recorder())
        try:
            yield sched
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_the_scheduler_asks_the_recorder_again_when_a_finalize_or_its_answer_is_lost(
    broker: RunningBroker, instance: str
) -> None:
    """Found by an outside check on a broker with tiny queues (Mosquitto
    ``max_queued_messages 2``): a finalize whose answer the broker dropped kept a finished
    job ``r`` for the request's 60 s. The scheduler now sends it again, the same id, while
    no answer comes; here the first copy is lost on its way to the recorder."""
    from tomato_mqtt.services.scheduler.recorder_link import RecorderLink

    topics = Topics(instance)
    copies: list[str] = []

    def first_lost(rid: str) -> bool:
        copies.append(rid)
        return len(copies) == 1

    async with _recorder_stand_in(broker, topics, first_lost) as sched:
        link = RecorderLink(topics)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        ok, msg, data = await link.request(Requester(sched, topics), "finalize", {"job": 1}, 60)
        took = loop.time() - t0
    assert (ok, msg, data) == (True, "written", {"path": "x.nc"})
    assert len(copies) == 2 and copies[0] == copies[1], copies  # the same request again
    assert took < 5, f"answered after {took:.1f} s: the lost copy was waited out"


async def test_a_request_lost_while_the_recorder_was_gone_is_sent_again_when_it_is_back(
    broker: RunningBroker, instance: str
) -> None:
    """A fault-injection review: a finalize sent while the recorder was frozen (SIGSTOP)
    was lost with its connection; once it went on, the scheduler waited out its resends'
    back-off (1, 2, 4 … s): the job ended 17 s after the recorder was back. The recorder
    taken for gone and answering again (``back``) sends it again at once."""
    from tomato_mqtt.services.scheduler.recorder_link import RecorderLink

    topics = Topics(instance)
    frozen = [True]  # lost with the frozen recorder's connection while True
    async with _recorder_stand_in(broker, topics, lambda _rid: frozen[0]) as sched:
        link = RecorderLink(topics)
        loop = asyncio.get_running_loop()
        asked = asyncio.ensure_future(
            link.request(Requester(sched, topics), "finalize", {"job": 1}, 60)
        )
        await asyncio.sleep(3.3)  # resent at 1 and 3 s; the next would come at 7 s
        frozen[0] = False
        t0 = loop.time()
        await link.back()  # its status says online again
        ok, msg, _data = await asyncio.wait_for(asked, 10)
        took = loop.time() - t0
    assert (ok, msg) == (True, "written")
    assert took < 1.5, f"answered {took:.1f} s after the recorder was back"


async def _ask_scheduler(broker: RunningBroker, instance: str, op: str, handler: Any) -> Reply:
    """``op`` of a responder named scheduler whose one handler is ``handler``: its reply."""
    topics = Topics(instance)
    async with (
        serving(broker, topics, table={op: handler}, name="scheduler"),
        AsyncClient(broker.url, client_id=f"{instance}-cli") as cli,
    ):
        return await Requester(cli, topics).request(topics.scheduler_cmd(op), {}, timeout=T)


async def test_a_store_that_cannot_be_written_is_unavailable_not_internal(
    broker: RunningBroker, instance: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A fault-injection review: with the scheduler's state file on a full disk, a
    submit was answered "internal error in scheduler: OperationalError('database or disk
    is full')". SQLite's refusal to write is ``unavailable``, said as such."""
    import sqlite3

    path = tmp_path / "s.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as rw, rw:
        rw.execute("CREATE TABLE t (x)")
    ro = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    request.addfinalizer(ro.close)

    async def store(args: Mapping[str, JsonValue]) -> Result:
        ro.execute("INSERT INTO t VALUES (1)")  # a real refusal: read-only
        return Result("stored")

    reply = await _ask_scheduler(broker, instance, "store", store)
    assert (reply.success, reply.code) == (False, "unavailable"), reply
    assert reply.msg.startswith(
        "scheduler cannot store this now (attempt to write a readonly database): it was not"
    ), reply
    assert "internal" not in reply.msg

    async def bug(args: Mapping[str, JsonValue]) -> Result:
        ro.execute("SELECT * FROM no_such_table")  # an SQL bug: not a full disk
        return Result("read")

    reply = await _ask_scheduler(broker, instance, "bug", bug)
    assert (reply.success, reply.code) == (False, "internal"), reply


async def test_a_table_locked_for_a_moment_is_unavailable_not_internal(
    broker: RunningBroker, instance: str, request: pytest.FixtureRequest
) -> None:
    """A review of the lock messages: "database table is locked" (SQLITE_LOCKED: a
    statement of the same connection still reading it) was ``unavailable``, try again;
    narrowing "locked" to another program's "database is locked" made it "internal
    error", a bug to report."""
    import sqlite3

    db = sqlite3.connect(":memory:", isolation_level=None)
    request.addfinalizer(db.close)
    db.execute("CREATE TABLE t (x)")
    db.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)])

    async def store(args: Mapping[str, JsonValue]) -> Result:
        reading = db.execute("SELECT x FROM t")
        reading.fetchone()  # a read still under way on the same connection
        db.execute("DROP TABLE t")  # a real refusal: "database table is locked"
        return Result("stored")

    reply = await _ask_scheduler(broker, instance, "store", store)
    assert (reply.success, reply.code) == (False, "unavailable"), reply
    assert "table is locked" in reply.msg and "internal" not in reply.msg, reply
    assert "another program" not in reply.msg, reply  # (its own statement, not a shell's)


async def test_a_publish_with_no_room_left_waits_for_it(
    broker: RunningBroker, instance: str
) -> None:
    """A security tour: under a request flood every message id was in flight, and a
    publish raised "Message queue full" at once: the job whose end it told stayed `r`
    until the scheduler was killed. A publish waits for room (acknowledgements), up to
    its timeout. Here paho's own queue holds one message at a time."""
    import paho.mqtt.client as paho

    class Tight(AsyncClient):
        def _make_paho(self) -> paho.Client:
            made = super()._make_paho()
            made.max_queued_messages_set(1)  # (paho's setting, made before it connects)
            return made

    got: asyncio.Queue[Message] = asyncio.Queue()
    async with (
        Tight(broker.url, client_id=f"{instance}-tight") as c,
        AsyncClient(broker.url, client_id=f"{instance}-reader") as reader,
    ):
        await reader.subscribe(f"{instance}/room/#", handler=got.put_nowait)
        sends = [c.publish(f"{instance}/room/{i}", str(i), qos=1, wait=False) for i in range(5)]
        await asyncio.wait_for(asyncio.gather(*sends), 10)
        seen = sorted([(await asyncio.wait_for(got.get(), 5)).topic for _ in range(5)])
    assert seen == [f"{instance}/room/{i}" for i in range(5)], seen
