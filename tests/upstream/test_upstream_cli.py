"""Upstream tomato 2.2's ``test_01_tomato``, ``test_02_ketchup`` and ``test_05_passata``,
ported to tomato-mqtt's CLI (scenarios, not code): one in-process stack per upstream
module, the real CLIs invoked in-process (see ``tests/upstream/cli.py``).

Each ``# upstream: <test name>`` comment marks the scenario it ports; the table of all
upstream scenarios (pass / not applicable, and why) is in ``docs/cli.md``. Where tomato
2.2 and tomato-mqtt deliberately differ, the assertion says so.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningBroker
from tests.inproc import inproc_stack
from tests.stack import free_port
from tests.upstream.cli import Cli, payload

pytestmark = pytest.mark.timeout(120)

C1 = "example_counter:(example-addr,1)"


def sample_id(pip: dict[str, Any]) -> Any:
    """tomato's ``sampleid`` (the reply shape is being aligned elsewhere: either key)."""
    return pip.get("sampleid", pip.get("sample"))


async def test_01_tomato(
    broker: RunningBroker, tmp_path: Path, instance: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # upstream: test_tomato_status_down -- a Reply with success false, also under -y
    app = tmp_path / "down"
    app.mkdir()
    (app / "settings.toml").write_text(f'[mqtt]\ninstance = "{instance}"\n')
    down = await Cli(app, free_port())("tomato", "status", "-y")
    assert down.code == 1
    assert "success: false" in down.stdout and "is tomato-mqtt running" in down.stdout

    async with inproc_stack(broker.port, tmp_path, instance, devices="devices_default.yml") as st:
        cli = Cli(st.settings.appdir, broker.port)
        # upstream: test_tomato_status_up (and tomato's name of the default section)
        r = await cli.json("tomato", "status", "pipelines")
        assert r["success"] and len(r["data"]) == 1
        r = await cli.json("tomato", "status", "tomato")
        assert r["success"] and r["data"]["state"] == "online"

        # upstream: test_tomato_pipeline
        r = await cli.json("tomato", "pipeline", "load", "pip-counter", "test")
        assert r["success"] and sample_id(r["data"]) == "test" and r["data"]["ready"] is False
        r = await cli.json("tomato", "pipeline", "load", "pip-counter", "abcdefg")
        assert not r["success"] and "already holds sample 'test'" in r["msg"]
        for _ in range(2):  # ready twice: both succeed
            r = await cli.json("tomato", "pipeline", "ready", "pip-counter")
            assert r["success"] and sample_id(r["data"]) == "test" and r["data"]["ready"]
        for _ in range(2):  # eject twice: both succeed
            r = await cli.json("tomato", "pipeline", "eject", "pip-counter")
            assert r["success"] and sample_id(r["data"]) is None and not r["data"]["ready"]

        # upstream: test_tomato_pipeline_invalid
        for args in (("load", "bogus", "test"), ("eject", "bogus"), ("ready", "bogus")):
            r = await cli.json("tomato", "pipeline", *args)
            assert not r["success"] and "no pipeline named 'bogus'" in r["msg"]

        # upstream: test_tomato_nocmd -- a request the scheduler does not know
        reply = await st.raw(st.topics.scheduler_cmd("typo"))
        assert not reply.success and reply.code == "unknown_op"

        # upstream: test_tomato_component -- the channel in a pipeline answers, the
        # other does not exist (components only for channels pipelines use)
        r = await cli.json("passata", "status", C1)
        assert r["success"], r
        bad = await cli("passata", "status", "example_counter:(example-addr,2)")
        assert bad.code == 1 and "unknown component" in bad.stderr


async def test_02_ketchup(
    broker: RunningBroker, tmp_path: Path, instance: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # in the datadir: the recorder of an in-process stack may write there only
    work = tmp_path / "data" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    async with inproc_stack(broker.port, tmp_path, instance, components=4) as st:
        cli = Cli(st.settings.appdir, broker.port)
        # upstream: test_ketchup_status_empty -- tomato: a failure; here an empty queue
        # is a state, not an error (documented in docs/cli.md)
        r = await cli.json("ketchup", "status")
        assert r["success"] and r["msg"] == "job queue is empty" and r["data"] == []

        # the long job first: cancel and snapshot scenarios run while the others do
        long_id = await cli.run_case(payload("counter_60_0.1"), "pip-counter-4")

        # upstream: test_ketchup_submit_one[None], [counter]: qw (a pipeline can run it),
        # and here also the reason it waits: nobody loaded its sample
        ids = []
        for jn in (None, "counter"):
            extra = ("--jobname", jn) if jn else ()
            r = await cli.json("ketchup", "submit", str(payload("counter_1_0.1")), *extra)
            assert r["success"] and r["data"]["jobname"] == jn
            ids.append(r["data"]["id"])
            job = await cli.wait_job(r["data"]["id"], {"qw"})
            assert job["reason"].startswith("no pipeline holds sample 'counter_1_0.1'")
        human = await cli("ketchup", "status", str(ids[0]))
        assert "no pipeline holds sample 'counter_1_0.1'" in human.stdout
        r = await cli.json("ketchup", "cancel", *map(str, ids))
        assert r["success"] and [j["status"] for j in r["data"]] == ["cd", "cd"]

        # upstream: test_ketchup_submit_two, status_all/one/two_queued, cancel_queued
        a = await cli.json("ketchup", "submit", str(payload("counter_1_0.1")), "-j", "job-1")
        b = await cli.json("ketchup", "submit", str(payload("counter_5_0.2")), "-j", "job-2")
        a_id, b_id = a["data"]["id"], b["data"]["id"]
        assert b_id == a_id + 1 and b["data"]["jobname"] == "job-2"
        await cli.wait_job(b_id, {"qw"})
        r = await cli.json("ketchup", "status", str(a_id), str(b_id))
        assert r["msg"] == f"found 2 jobs with status 'qw': [{a_id}, {b_id}]"
        assert [j["id"] for j in r["data"]] == [a_id, b_id]
        r = await cli.json("ketchup", "status", str(b_id))
        assert r["msg"] == "found 1 job with status ['qw']" and r["data"][0]["id"] == b_id
        r = await cli.json("ketchup", "status")
        assert "found 2 jobs with status 'qw'" in r["msg"]

        # upstream: test_ketchup_search (tomato 2.2 searches ended jobs too)
        r = await cli.json("ketchup", "search", "2")
        assert r["success"] and [j["id"] for j in r["data"]] == [b_id]
        r = await cli.json("ketchup", "search", "job")
        assert r["success"] and len(r["data"]) == 2
        r = await cli.json("ketchup", "search", "wrong")
        assert r == {"success": False, "msg": "no job matching 'wrong' found", "data": None}

        r = await cli.json("ketchup", "cancel", str(a_id), str(b_id))
        assert [j["status"] for j in r["data"]] == ["cd", "cd"]
        r = await cli.json("ketchup", "search", "job-1")  # an ended job is still found
        assert [j["status"] for j in r["data"]] == ["cd"]

        # upstream: test_ketchup_status_running, test_ketchup_status_complete
        one = await cli.run_case(payload("counter_1_0.1"), "pip-counter-1")
        await cli.wait_job(one, {"r", "c"})
        job = await cli.wait_job(one, {"c"})
        assert Path(job["respath"]) == work / f"results.{one}.nc" and Path(job["respath"]).exists()

        # upstream: test_ketchup_validation[counter_invalid_1..4]: accepted, never qw
        for n in (1, 2, 3, 4):
            r = await cli.json("ketchup", "submit", str(payload(f"counter_invalid_{n}")))
            assert r["success"], r
            assert r["data"]["status"] == "q" and r["data"]["reason"], r["data"]

        # upstream: test_ketchup_snapshot -- several ids at once, as tomato
        await cli.wait_job(long_id, {"r"})
        r = await cli.json("ketchup", "snapshot", str(long_id), str(one))
        assert r["success"], r
        for i in (long_id, one):
            assert (work / f"snapshot.{i}.nc").stat().st_size > 0

        # upstream: test_ketchup_cancel_running: rd at once, cd after, with the file
        r = await cli.json("ketchup", "cancel", str(long_id))
        assert r["success"] and r["data"][0]["status"] == "rd"
        job = await cli.wait_job(long_id, {"cd"})
        assert Path(job["respath"]).exists()


async def test_05_passata(
    broker: RunningBroker, tmp_path: Path, instance: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with inproc_stack(broker.port, tmp_path, instance, devices="devices_default.yml") as st:
        cli = Cli(st.settings.appdir, broker.port)
        # upstream: test_passata_api_status, _attrs, _capabs, _get_attrs, _constants
        r = await cli.json("passata", "status", C1)
        assert r["success"] and r["data"]["state"] == "idle"
        r = await cli.json("passata", "attrs", C1)
        assert r["success"] and "max" in r["data"]
        r = await cli.json("passata", "capabilities", C1)
        assert r["success"] and "count" in r["data"]
        r = await cli.json("passata", "get", C1, "max", "min")
        assert r["success"] and {"max", "min"} <= set(r["data"])
        r = await cli.json("passata", "constants", C1)
        assert r["success"] and r["data"]["example_meta"] == "example string"

        # upstream: test_passata_api_set_attr
        val = random.random() * 100
        r = await cli.json("passata", "set", C1, "max", repr(val))
        assert r["success"] and r["data"]["max"] == pytest.approx(val)
        r = await cli.json("passata", "get", C1, "max")
        assert r["data"]["max"] == pytest.approx(val)

        # upstream: test_passata_api_reset
        assert (await cli.json("passata", "reset", C1))["success"]

        # upstream: test_passata_api_measure_last_data
        r = await cli.json("passata", "measure", C1)
        assert r["success"] and isinstance(r["data"]["uts"], float)
        r = await cli.json("passata", "last", C1)
        assert r["success"] and "uts" in r["data"]

        # upstream: test_passata_cli -- every command answers (our texts are our own);
        # `passata constants NAME ATTR` is accepted as in tomato
        for args in (("status",), ("attrs",), ("capabilities",), ("get", "max")):
            out = await cli("passata", args[0], C1, *args[1:])
            assert out.code == 0 and out.stdout.strip(), (args, out)
        out = await cli("passata", "constants", C1, "max")
        assert out.code == 0 and "not constants of it: max" in out.stdout

        # upstream: test_passata_api_force -- set refused while a task runs, unless -f
        jobid = await cli.run_case(payload("counter_60_0.1"), "pip-counter")
        await cli.wait_job(jobid, {"r"})
        r = await cli.json("passata", "status", C1)
        while r["data"]["state"] != "running":
            r = await cli.json("passata", "status", C1)
        r = await cli.json("passata", "set", C1, "max", "15")
        assert not r["success"] and "running" in r["msg"]
        r = await cli.json("passata", "set", C1, "max", "15", "-f")
        assert r["success"] and r["data"]["max"] == 15.0

        # upstream: test_passata_api_reset_force -- the task stops; the job does not end
        # `c` silently: ce, with the reason
        r = await cli.json("passata", "reset", C1, "-f")
        assert r["success"], r
        job = await cli.wait_job(jobid, {"c", "ce", "cd"})
        assert job["status"] == "ce" and "reset" in job["reason"], job
        r = await cli.json("passata", "status", C1)
        assert r["data"]["state"] != "running"
