"""``tomato pipeline|status|reload`` and ``ketchup`` as a user drives them, on a real stack.

One stack for the module: every test uses its own pipeline or sample names, and cancels
the jobs it submits, so the tests do not depend on one another's order.
"""

from __future__ import annotations

import getpass
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.stack import BIN, CONFIG, Stack, free_port, running_stack

pytestmark = pytest.mark.timeout(180)

VERSIONS = ("0.1", "0.2", "1.0", "2.0", "2.1", "2.2")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("cli")) as st:
        yield st


def write_payload(st: Stack, name: str, doc: dict[str, object]) -> Path:
    p = st.workdir / f"{name}.yml"
    p.write_text(yaml.safe_dump(doc))
    return p


def counter_payload(sample: str, duration: float = 1.0) -> dict[str, object]:
    return {
        "version": "2.2",
        "sample": {"identifier": sample},
        "user": {"identifier": "tester"},
        "method": [
            {
                "component_role": "counter",
                "technique_name": "count",
                "max_duration": duration,
                "sampling_interval": 0.1,
            }
        ],
    }


def cancel(st: Stack, *ids: int) -> None:
    st.run("ketchup", "cancel", *map(str, ids), check=True)


# -- pipelines -----------------------------------------------------------------------------
def test_pipeline_load_ready_eject(stack: Stack) -> None:
    pip = "pip-counter-4"
    res = stack.run("tomato", "pipeline", "load", pip, "sample-pip")
    assert res.returncode == 0, res.stderr
    assert "sample-pip" in res.stdout and pip in res.stdout
    pips = {p["name"]: p for p in stack.json("tomato", "status", "pipelines")["data"]}
    assert pips[pip]["sample"] == "sample-pip" and not pips[pip]["ready"]
    assert pips[pip]["roles"] == {"counter": "example_counter:(example-addr,4)"}

    # only into an empty pipeline
    res = stack.run("tomato", "pipeline", "load", pip, "other")
    assert res.returncode == 1
    assert "already holds sample 'sample-pip'" in res.stderr

    out = stack.json("tomato", "pipeline", "ready", pip)
    assert out["success"] and out["data"]["ready"] is True
    human = stack.run("tomato", "status", "pipelines")
    assert human.returncode == 0
    line = next(x for x in human.stdout.splitlines() if x.startswith(pip))
    assert "sample-pip" in line and "yes" in line

    res = stack.run("tomato", "pipeline", "eject", pip, "--yaml")
    assert res.returncode == 0
    doc = yaml.safe_load(res.stdout)
    assert doc["success"] and doc["data"]["sample"] is None and doc["data"]["ready"] is False


@pytest.mark.parametrize(
    "args",
    [("load", "pip-nope", "s"), ("eject", "pip-nope"), ("ready", "pip-nope")],
)
def test_pipeline_unknown_name(stack: Stack, args: tuple[str, ...]) -> None:
    res = stack.run("tomato", "pipeline", *args)
    assert res.returncode == 1
    assert "no pipeline named 'pip-nope'" in res.stderr
    assert "pip-counter-1" in res.stderr  # says which ones exist
    out = stack.json("tomato", "pipeline", *args)
    assert out["success"] is False and "pip-nope" in out["msg"]


# -- status and reload ---------------------------------------------------------------------
def test_status_sections_human_and_json(stack: Stack) -> None:
    res = stack.run("tomato", "status")
    assert res.returncode == 0, res.stderr
    assert "running" in res.stdout and stack.instance in res.stdout
    expect = {
        "pipelines": "pip-counter-1",
        "devices": "dev-counter",
        "components": "dev-counter/1",
        "nodes": "online",
        "drivers": "example_counter",
    }
    for section, word in expect.items():
        res = stack.run("tomato", "status", section)
        assert res.returncode == 0, res.stderr
        assert word in res.stdout, (section, res.stdout)
        out = stack.json("tomato", "status", section)
        assert out["success"] and isinstance(out["data"], list) and out["data"], section
    comps = stack.json("tomato", "status", "components")["data"]
    assert {c["name"] for c in comps} == {
        f"example_counter:(example-addr,{i})" for i in range(1, 5)
    }
    assert all(c["registered"] and "count" in c["capabilities"] for c in comps)
    res = stack.run("tomato", "status", "bogus")
    assert res.returncode != 0


def test_reload_without_changes(stack: Stack) -> None:
    res = stack.run("tomato", "reload")
    assert res.returncode == 0, res.stderr
    assert "reload done" in res.stdout
    out = stack.json("tomato", "reload")
    assert out["success"]


# -- ketchup -------------------------------------------------------------------------------
def test_submit_status_search_cancel(stack: Stack) -> None:
    sub = stack.workdir / "sub"
    sub.mkdir(exist_ok=True)
    p = write_payload(stack, "two-jobs", counter_payload("sample-never-loaded"))
    first = stack.json("ketchup", "submit", str(p), "-j", "alpha-run", cwd=sub)
    assert first["success"], first
    a = first["data"]
    assert a["jobname"] == "alpha-run" and a["status"] in ("q", "qw")
    # the output goes where submit ran
    assert a["submit_dir"] == str(sub.resolve())
    assert a["respath"] == str(sub.resolve() / f"results.{a['id']}.nc")

    res = stack.run("ketchup", "submit", str(p), "--jobname", "beta-run")
    assert res.returncode == 0, res.stderr
    assert "jobid" in res.stdout
    b = stack.json("ketchup", "search", "beta-run")["data"][0]
    assert b["id"] > a["id"]

    # the whole queue, one job, two jobs
    everything = stack.json("ketchup", "status")
    assert everything["success"]
    ids = {j["id"] for j in everything["data"]}
    assert {a["id"], b["id"]} <= ids
    one = stack.json("ketchup", "status", str(a["id"]))["data"]
    assert [j["id"] for j in one] == [a["id"]]
    two = stack.json("ketchup", "status", str(a["id"]), str(b["id"]))["data"]
    assert [j["id"] for j in two] == [a["id"], b["id"]]

    human = stack.run("ketchup", "status")
    assert human.returncode == 0
    head = human.stdout.splitlines()[0].split()
    assert head[:4] == ["id", "name", "status", "pipeline"]
    assert any(line.split()[:2] == [str(b["id"]), "beta-run"] for line in human.stdout.splitlines())
    detail = stack.run("ketchup", "status", str(a["id"]))
    assert "alpha-run" in detail.stdout and "sample-never-loaded" in detail.stdout

    # search: by part of the name; completed jobs only with -c
    found = stack.json("ketchup", "search", "a-run")["data"]
    assert {a["id"], b["id"]} <= {j["id"] for j in found}

    # cancel: every id given, not only the last
    res = stack.run("ketchup", "cancel", str(a["id"]), str(b["id"]))
    assert res.returncode == 0, res.stderr
    assert f"job {a['id']} cancelled" in res.stdout and f"job {b['id']} cancelled" in res.stdout
    statuses = [
        j["status"] for j in stack.json("ketchup", "status", str(a["id"]), str(b["id"]))["data"]
    ]
    assert statuses == ["cd", "cd"]
    assert stack.json("ketchup", "search", "alpha-run")["data"] == []
    assert [j["id"] for j in stack.json("ketchup", "search", "alpha-run", "-c")["data"]] == [
        a["id"]
    ]
    # a second cancel says so, and succeeds
    res = stack.run("ketchup", "cancel", str(a["id"]))
    assert res.returncode == 0 and "already ended (cd)" in res.stdout


def test_unknown_job_ids(stack: Stack) -> None:
    for cmd in (("status", "99999"), ("cancel", "99999")):
        res = stack.run("ketchup", *cmd)
        assert res.returncode == 1
        assert "no job with id 99999" in res.stderr
    res = stack.run("ketchup", "cancel")
    assert res.returncode != 0  # an id is required


def test_every_payload_version_submits(stack: Stack) -> None:
    ids = []
    for version in VERSIONS:
        out = stack.json("ketchup", "submit", str(CONFIG / f"counter_v{version}.yml"))
        assert out["success"], (version, out)
        payload = out["data"]["payload"]
        assert payload["version"] == "2.2", version
        assert payload["sample"]["identifier"] == "counter_1_0.1", version
        assert payload["method"][0]["technique_name"] == "count", version
        if version != "2.2":  # older payloads have no user: the one who submitted
            assert payload["user"]["identifier"] == getpass.getuser(), version
        ids.append(out["data"]["id"])
    cancel(stack, *ids)


def test_payload_problems_name_the_file(stack: Stack) -> None:
    not_yaml = stack.workdir / "not-yaml.yml"
    not_yaml.write_text("version: '2.2'\nsample: [unclosed\n")
    not_json = stack.workdir / "broken.json"
    not_json.write_text('{"version": "2.2", ')
    bad_field = write_payload(
        stack, "bad-field", {**counter_payload("x"), "method": [{"component_role": "counter"}]}
    )
    bad_duration = stack.workdir / "bad-duration.yml"
    bad_duration.write_text(
        (CONFIG / "counter_v2.0.yml").read_text().replace("max_duration: 1.0", "max_duration: abc")
    )
    bad_version = write_payload(stack, "bad-version", {**counter_payload("x"), "version": "9.9"})
    missing = stack.workdir / "no-such-payload.yml"
    cases = {
        not_yaml: "invalid YAML",
        not_json: "invalid JSON",
        bad_field: "method[0]",
        bad_duration: "method[0].max_duration",
        bad_version: "version",
        missing: "not found",
    }
    for path, word in cases.items():
        t0 = time.monotonic()
        res = stack.run("ketchup", "submit", str(path))
        assert res.returncode == 1, (path, res.stdout)
        assert str(path) in res.stderr, res.stderr
        assert word in res.stderr, (word, res.stderr)
        assert res.stdout == ""
        assert time.monotonic() - t0 < 10
    # nothing was queued
    names = [j["payload"]["sample"]["identifier"] for j in stack.json("ketchup", "status")["data"]]
    assert "x" not in names


def test_unmatchable_payload_is_queued_with_its_reason(stack: Stack) -> None:
    # valid by the schema, but the driver refuses the technique: queued, never launched,
    # and both submit and status say why
    res = stack.run("ketchup", "submit", str(CONFIG / "counter_invalid_1.yml"))
    assert res.returncode == 0, res.stderr
    assert "no pipeline can run it yet" in res.stdout and "unknown" in res.stdout
    jobid = int(res.stdout.split("jobid")[1].split()[0])
    job = stack.job(jobid)
    assert job["status"] == "q" and "unknown" in job["reason"]
    human = stack.run("ketchup", "status")
    assert "reason" in human.stdout.splitlines()[0]
    cancel(stack, jobid)


def test_yaml_and_json_outputs_parse(stack: Stack) -> None:
    for tool, args in (
        ("ketchup", ("status",)),
        ("tomato", ("status",)),
        ("tomato", ("status", "components")),
        ("ketchup", ("search", "nothing-like-this")),
    ):
        y = stack.run(tool, *args, "-y")
        assert y.returncode == 0, y.stderr
        doc = yaml.safe_load(y.stdout)
        assert set(doc) == {"success", "msg", "data"} and doc["success"] is True
        j = stack.run(tool, *args, "--json")
        assert set(json.loads(j.stdout)) == {"success", "msg", "data"}
    # failures print the Reply too, with exit code 1
    res = stack.run("ketchup", "status", "424242", "--json")
    assert res.returncode == 1
    assert json.loads(res.stdout)["success"] is False


def test_no_scheduler_says_where_it_looked(stack: Stack) -> None:
    # the broker answers, but no scheduler serves this instance
    t0 = time.monotonic()
    res = stack.run("ketchup", "status", "--instance", "nobody-here", "--timeout", "1")
    assert res.returncode == 1
    assert time.monotonic() - t0 < 8
    assert "no scheduler answered" in res.stderr
    assert "instance nobody-here" in res.stderr and f":{stack.port}" in res.stderr
    res = stack.run("tomato", "pipeline", "load", "p", "s", "--instance", "nobody-here", "-t", "1")
    assert res.returncode == 1 and "no scheduler answered" in res.stderr
    # no broker at all on that port (not through stack.run, which adds the stack's port)
    port = free_port()
    for tool, args in (("ketchup", ("status",)), ("tomato", ("status",))):
        t0 = time.monotonic()
        cmd = [str(BIN / tool), *args, "-A", str(stack.appdir), "-p", str(port), "-t", "1"]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        assert res.returncode == 1
        assert time.monotonic() - t0 < 8
        assert f"mqtt://127.0.0.1:{port}" in res.stderr and "is tomato-mqtt running" in res.stderr
        assert f"instance {stack.instance}" in res.stderr


def test_snapshot_while_running(stack: Stack, tmp_path: Path) -> None:
    pip = "pip-counter-3"
    stack.load_ready(pip, "sample-snap")
    p = write_payload(stack, "snap", counter_payload("sample-snap", duration=30.0))
    jobid = stack.submit(p)
    try:
        stack.wait_job(jobid, {"r"}, timeout=20)
        time.sleep(1.0)  # a few points stored
        elsewhere = tmp_path / "other-pc"
        elsewhere.mkdir()
        res = stack.run("ketchup", "snapshot", str(jobid), cwd=elsewhere)
        assert res.returncode == 0, res.stderr
        target = elsewhere / f"snapshot.{jobid}.nc"
        assert target.is_file() and target.stat().st_size > 0
        assert str(target) in res.stdout
        assert target.read_bytes()[:4] in (b"\x89HDF", b"CDF\x01", b"CDF\x02")
        out = stack.json("ketchup", "snapshot", str(jobid), cwd=elsewhere)
        assert out["success"] and out["data"]["path"] == str(target)
        assert out["data"]["size"] == target.stat().st_size
        assert not list(elsewhere.glob("*.part"))
    finally:
        cancel(stack, jobid)
        stack.wait_job(jobid, {"cd", "ce", "c"}, timeout=30)
        stack.run("tomato", "pipeline", "eject", pip, check=True)


def test_snapshot_of_a_queued_job_is_refused(stack: Stack) -> None:
    p = write_payload(stack, "snap-queued", counter_payload("sample-never-loaded-2"))
    jobid = stack.submit(p)
    res = stack.run("ketchup", "snapshot", str(jobid))
    assert res.returncode == 1
    assert "not started" in res.stderr
    assert not (stack.workdir / f"snapshot.{jobid}.nc").exists()
    cancel(stack, jobid)
