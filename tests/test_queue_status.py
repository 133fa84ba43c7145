"""Deep queues (issue 15): ``job_status`` answers with a summary or a page, bounded at any
depth, and ``ketchup status`` prints the grouped summary by default.

In-process stacks on the test's broker; the deep queue is written into the scheduler's
store before it starts (a scheduler restarted with 2,000 queued jobs), so the test takes
seconds, not the minutes of 2,000 submits.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import RunningBroker
from tests.inproc import CONFIG, InProc, inproc_stack
from tests.upstream.cli import Cli
from tomato_mqtt.cli import ketchup
from tomato_mqtt.client import AsyncTomato
from tomato_mqtt.config.payloads import parse_payload, read_payload_file
from tomato_mqtt.config.settings import settings_url
from tomato_mqtt.model.jobs import utcnow
from tomato_mqtt.services.scheduler.store import StateStore
from tomato_mqtt.wire.commands import JOB_PAGE_MAX
from tomato_mqtt.wire.status import JobSummary

DEEP = 600  # > JOB_PAGE_MAX: the listing has two pages
REASON = (
    "no pipeline holds sample 'deep-sample': load it into pip-counter-1 "
    "(tomato pipeline load pip-counter-1 deep-sample)"
)


def _payload(sample: str, time: float = 1.0) -> dict[str, Any]:
    return {
        "version": "0.2",
        "sample": {"name": sample},
        "method": [{"device": "counter", "technique": "count", "time": time, "delay": 0.1}],
    }


async def _submit(st: InProc, payload: dict[str, Any], name: str | None = None) -> int:
    job = await st.call("job_submit", {"payload": payload, "jobname": name})
    return int(job.id)


async def test_summary_counts_running_queued_and_why(
    broker: RunningBroker, tmp_path: Path, instance: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "data" / "work"  # the recorder may write into the datadir only
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    async with inproc_stack(broker.port, tmp_path, instance, components=2) as st:
        empty: JobSummary = await st.call("job_status", {"summary": True})
        assert empty.total == 0 and empty.statuses == {} and empty.running == []
        waiting = [await _submit(st, _payload("nobody-loads-it"), f"w{i}") for i in range(3)]
        bad = read_payload_file(CONFIG / "counter_invalid_1.yml")
        unmatchable = await _submit(st, bad, "bad")
        cancelled = await _submit(st, _payload("nobody-loads-it"), "gone")
        await st.call("job_cancel", {"jobids": [cancelled]})
        await st.call("pipeline_load", {"pipeline": "pip-counter-1", "sampleid": "run-me"})
        await st.call("pipeline_ready", {"pipeline": "pip-counter-1"})
        running = await _submit(st, _payload("run-me", time=60), "long")
        await st.wait_job(running, {"r"})

        s: JobSummary = await st.call("job_status", {"summary": True})
        counts = {k: v.count for k, v in s.statuses.items()}
        assert counts == {"qw": 3, "q": 1, "r": 1, "cd": 1} and s.total == 6
        assert s.statuses["qw"].head == waiting and s.statuses["qw"].tail == []
        assert [j.id for j in s.running] == [running] and s.running[0].pipeline == "pip-counter-1"
        assert s.queued == 4
        assert [j.id for j in s.queued_head] == sorted([*waiting, unmatchable])
        assert s.queued_tail == []
        # the summary's jobs carry their payload cut to sample and task count (a user's
        # queue of 5,000-task payloads made it 13 MB); the whole one is asked by id
        light = s.running[0].payload
        assert light["tasks"] == 1 and light["sample"]["identifier"] == "run-me", light
        assert all(set(j.payload) == {"sample", "tasks"} for j in s.queued_head)
        (whole,) = await st.call("job_status", {"jobids": [running]})
        assert whole.payload["method"] and whole.payload["version"]
        assert s.pipelines == {"pip-counter-1": {"r": 1}}
        reasons = dict(s.waiting)
        assert sum(reasons.values()) == 4
        assert reasons[next(r for r in reasons if r and "nobody-loads-it" in r)] == 3

        # ketchup status: the grouped summary (tomato's lines, then the tables)
        cli = Cli(st.settings.appdir, broker.port)
        human = await cli("ketchup", "status")
        assert human.code == 0, human.stderr
        lines = human.stdout.splitlines()
        assert lines[0] == f"found 1 job with status 'q' : [{unmatchable}]"
        assert lines[1] == f"found 3 jobs with status 'qw': {waiting}"
        for part in ("running:", "queued: 4", "waiting because:", "jobs per pipeline:", "long"):
            assert part in human.stdout, (part, human.stdout)
        # -y/--json: the job list as before (tomato's shape), or the summary when asked
        for fmt in ("--json", "-y"):
            out = await cli("ketchup", "status", fmt)
            doc = json.loads(out.stdout) if fmt == "--json" else yaml.safe_load(out.stdout)
            assert set(doc) == {"success", "msg", "data"}
            assert [j["id"] for j in doc["data"]] == list(range(1, 7))
            assert "found 3 jobs with status 'qw'" in doc["msg"]
        doc = (await cli("ketchup", "status", "--summary", "--json")).reply
        assert doc["data"]["statuses"]["qw"]["count"] == 3
        # details: --all is the table of every job, ids their rows
        every = await cli("ketchup", "status", "--all")
        assert all(f"w{i}" in every.stdout for i in range(3)) and "gone" in every.stdout
        # by id, each once, as tomato lists them (they came in the order given, repeated)
        args = (str(running), str(cancelled), str(running))
        two = (await cli("ketchup", "status", *args, "--json")).reply
        assert cancelled < running
        assert [(j["id"], j["status"]) for j in two["data"]] == [(cancelled, "cd"), (running, "r")]
        one = await cli("ketchup", "status", str(running), str(running))
        details = {ln.split(":", 1)[0].strip() for ln in one.stdout.splitlines() if ":" in ln}
        assert one.code == 0 and {"id", "name", "status", "sample"} <= details, one.stdout
        mixed = await cli("ketchup", "status", "1", "--all")
        assert mixed.code == 1 and "not with job ids" in mixed.stderr

        await st.call("job_cancel", {"jobids": [running]})
        await st.wait_job(running, {"cd"})
        s = await st.call("job_status", {"summary": True})
        assert s.running == [] and s.pipelines == {"pip-counter-1": {"cd": 1}}


def _fill(db: Path, n: int, status: str, reason: str | None) -> None:
    """``n`` queued jobs, stored as a submit stores them, before the scheduler starts."""
    payload = json.dumps(parse_payload(_payload("deep-sample")).model_dump(mode="json"))
    StateStore(db).close()
    con = sqlite3.connect(db)
    with con:
        con.executemany(
            "INSERT INTO jobs (jobname, payload, status, reason, submitted_at) "
            "VALUES (?, ?, ?, ?, ?)",
            ((f"deep-{i}", payload, status, reason, utcnow()) for i in range(1, n + 1)),
        )
    con.close()


async def test_a_deep_queue_is_answered_in_one_bounded_reply(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    # as the scheduler stored them before its restart (qw, waiting for their sample): one
    # job is left in q, so the restarted scheduler's pass has one to match
    _fill(tmp_path / "data" / "state.sqlite", DEEP - 1, "qw", REASON)
    _fill(tmp_path / "data" / "state.sqlite", 1, "q", None)
    async with inproc_stack(broker.port, tmp_path, instance) as st:
        await st.wait_job(DEEP, {"qw"})  # the restarted scheduler matched the whole queue
        reply = await st.raw(st.topics.scheduler_cmd("job_status"), {"summary": True})
        assert reply.success and len(json.dumps(reply.data)) < 20_000
        s = JobSummary.model_validate(reply.data)
        assert s.total == DEEP and s.statuses["qw"].count == DEEP and s.queued == DEEP
        assert s.statuses["qw"].head == [1, 2, 3, 4, 5]
        assert s.statuses["qw"].tail == [DEEP - 4, DEEP - 3, DEEP - 2, DEEP - 1, DEEP]
        assert [j.id for j in s.queued_tail] == s.statuses["qw"].tail
        assert s.waiting[0][1] == DEEP and "deep-sample" in str(s.waiting[0][0])
        assert (
            reply.msg
            == f"found {DEEP} jobs with status 'qw': [1, 2, 3, 4, 5, …, "
            + ", ".join(str(i) for i in range(DEEP - 4, DEEP + 1))
            + "]"
        )

        # the listing: the newest page by default, any page by offset/limit
        assert ketchup.PAGE_MAX == JOB_PAGE_MAX
        page = await st.raw(st.topics.scheduler_cmd("job_status"), {})
        assert [j["id"] for j in page.data] == list(range(DEEP - JOB_PAGE_MAX + 1, DEEP + 1))
        assert f"jobs {DEEP - JOB_PAGE_MAX + 1}-{DEEP} of {DEEP}" in page.msg
        first = await st.call("job_status", {"offset": 0, "limit": 10})
        assert [j.id for j in first] == list(range(1, 11))
        last = await st.call("job_status", {"offset": DEEP - 3, "limit": 10})
        assert [j.id for j in last] == [DEEP - 2, DEEP - 1, DEEP]
        beyond = await st.raw(st.topics.scheduler_cmd("job_status"), {"offset": DEEP})
        assert beyond.success and beyond.data == []
        assert beyond.msg == f"no jobs from offset {DEEP}: the listing has {DEEP}"
        for bad in (
            {"limit": JOB_PAGE_MAX + 1},
            {"offset": -1},
            {"jobids": [1], "summary": True},
            {"summary": True, "limit": 5},
        ):
            refused = await st.raw(st.topics.scheduler_cmd("job_status"), bad)
            assert not refused.success and refused.code == "bad_request", (bad, refused)

        # the client library pages through the whole listing
        async with AsyncTomato(settings_url(st.settings), instance) as t:
            assert [j.id for j in await t.jobs()] == list(range(1, DEEP + 1))
            assert (await t.summary()).statuses["qw"].count == DEEP

        # the CLI: the summary by default, a page on request
        cli = Cli(st.settings.appdir, broker.port)
        human = await cli("ketchup", "status")
        assert human.code == 0 and len(human.stdout) < 5000, human.stdout
        assert f"queued: {DEEP} (the first 5 and the last 5)" in human.stdout
        out = (await cli("ketchup", "status", "--offset", "10", "--limit", "3", "--json")).reply
        assert [j["id"] for j in out["data"]] == [11, 12, 13]
        assert f"jobs 11-13 of {DEEP}" in out["msg"]


async def test_a_waiting_job_says_why_about_its_own_pipeline(
    broker: RunningBroker, tmp_path: Path, instance: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two pipelines share a component (found by a fault-injection run): a job whose
    pipeline is free and ready but whose component a job on the other pipeline holds
    showed `qw` and no word why; and a job no pipeline can run was told about the first
    pipeline with its roles, not the one that holds its sample."""
    devices = tmp_path / "shared.yml"
    devices.write_text(
        "devices:\n  - {name: dev, driver: example_counter, address: example-addr,"
        " channels: ['1'], pollrate: 1}\n"
        "pipelines:\n"
        "  - {name: pip-a, devices: [{role: counter, device: dev, channel: '1'}]}\n"
        "  - {name: pip-b, devices: [{role: counter, device: dev, channel: '1'}]}\n"
    )
    work = tmp_path / "data" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    async with inproc_stack(broker.port, tmp_path, instance, devices=str(devices)) as st:
        for pip, sample in (("pip-a", "s-a"), ("pip-b", "s-b")):
            await st.call("pipeline_load", {"pipeline": pip, "sampleid": sample})
            await st.call("pipeline_ready", {"pipeline": pip})
        a = await _submit(st, _payload("s-a", time=30), "holds-it")
        await st.wait_job(a, {"r"})
        b = await _submit(st, _payload("s-b"), "waits")
        job = (await st.call("job_status", {"jobids": [b]}))[0]
        assert job.status == "qw", job
        assert job.reason == (
            f"pip-b waits: component example_counter:(example-addr,1) is in use by job {a} on pip-a"
        ), job.reason
        bad = _payload("s-b")
        bad["method"][0]["technique"] = "nothing-like-it"
        c = await _submit(st, bad, "cannot")
        job = (await st.call("job_status", {"jobids": [c]}))[0]
        assert job.status == "q" and "on pip-b" in str(job.reason), job.reason
        assert "(and 1 more pipeline(s)" in str(job.reason), job.reason
        await st.call("job_cancel", {"jobids": [a, b, c]})


async def test_a_running_pipeline_is_not_ready_as_in_tomato(
    broker: RunningBroker, tmp_path: Path, instance: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As tomato 2.2: a launch takes the pipeline's `ready`, a running pipeline cannot
    be marked ready (it answered "is ready" and dropped the flag at the job's end), and
    only unlock_when_done makes it ready again by itself (found comparing the two)."""
    from tomato_mqtt.transport.rpc import ReplyError

    work = tmp_path / "data" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    async with inproc_stack(broker.port, tmp_path, instance) as st:

        async def ready() -> bool:
            info = await st.call("status", {"what": "pipelines"})
            return bool(info["pip-counter-1"].ready)

        await st.call("pipeline_load", {"pipeline": "pip-counter-1", "sampleid": "s1"})
        await st.call("pipeline_ready", {"pipeline": "pip-counter-1"})
        a = await _submit(st, _payload("s1", time=1.0))
        await st.wait_job(a, {"r"})
        assert not await ready()
        with pytest.raises(ReplyError, match="cannot mark a running pipeline as ready") as e:
            await st.call("pipeline_ready", {"pipeline": "pip-counter-1"})
        assert e.value.code == "conflict"
        await st.wait_job(a, {"c"})
        assert not await ready()  # until the user says so again
        await st.call("pipeline_ready", {"pipeline": "pip-counter-1"})
        unlocked = {
            "version": "2.2",
            "user": {"identifier": "u"},
            "sample": {"identifier": "s1"},
            "method": [
                {
                    "component_role": "counter",
                    "technique_name": "count",
                    "max_duration": 0.5,
                    "sampling_interval": 0.1,
                }
            ],
            "settings": {"unlock_when_done": True},
        }
        b = await _submit(st, unlocked)
        await st.wait_job(b, {"c"})
        assert await ready()


def test_a_reply_of_big_jobs_is_sized_before_it_is_built(tmp_path: Path) -> None:
    """A hostile tour: a reader's `job_status` of one id 1,000 times built 1,000 copies of
    the job (1.5 MB a reply; of a job with a 990 kB payload, 991 MB and 2 GB of the
    scheduler's memory before it was refused), and nine jobs of 1 MB payloads made every
    `ketchup status --all` fail "too large". Each job is answered once, a reply is sized
    from the store before a job is built, a page holds what one reply carries, and a
    search lists the newest that fit."""
    from tomato_mqtt.services.scheduler import jobstatus
    from tomato_mqtt.transport.rpc import CommandError
    from tomato_mqtt.wire.commands import JobStatusArgs

    store = StateStore(tmp_path / "state.sqlite")
    small = store.add_job(_payload("s"), "small", None).id
    big = [
        store.add_job({**_payload("s"), "note": "x" * 990_000}, f"big{i}", None).id
        for i in range(9)
    ]
    once = jobstatus.job_status(store, JobStatusArgs(jobids=[small] * 1000))
    assert isinstance(once.data, list) and len(once.data) == 1, once.msg
    with pytest.raises(CommandError) as e:
        jobstatus.job_status(store, JobStatusArgs(jobids=[small, *big]))
    assert e.value.code == "bad_request" and "ask for fewer at a time" in str(e.value)
    assert "the 10 jobs asked for would make an answer of about 8,9" in str(e.value)
    newest = jobstatus.job_status(store, JobStatusArgs())  # the newest page: its newest
    ids = [j["id"] for j in newest.data]  # type: ignore[index, union-attr]
    assert ids == big[-6:], ids
    assert "(listing page: jobs 5-10 of 10" in newest.msg, newest.msg
    first = jobstatus.job_status(store, JobStatusArgs(offset=0, limit=500))  # its first
    assert [j["id"] for j in first.data] == [small, *big[:6]]  # type: ignore[index, union-attr]
    kept = jobstatus.within_budget(store, store.search_ids("big", complete=True))
    assert kept == big[-6:], kept
    store.close()
