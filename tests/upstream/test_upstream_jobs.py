"""Upstream tomato 2.2's ``test_99_example_counter`` and ``test_99_psutil`` scenarios that
``tests/test_jobs.py`` does not already cover, ported to our CLI (scenarios, not code):
in-process stacks, the real CLIs, points counted in the NetCDF file.

Upstream also checks ``Jobs/<id>/*.pkl`` and ``job-<id>.log``: tomato's internal job
folder, which tomato-mqtt does not have (points live in the recorder's store until the
file is written), so only the file is checked.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningBroker
from tests.counts import taken
from tests.inproc import inproc_stack
from tests.ncread import load_tree
from tests.upstream.cli import Cli, payload

pytestmark = pytest.mark.timeout(120)


def check_npoints(job: dict[str, Any], want: dict[str, int]) -> None:
    """Upstream's check_npoints_file: tomato's metadata, and the points of each role
    named. A deadline missed under load is skipped and counted, not measured late (see
    tests/counts.py): the file holds what the runner took, and taken + missed is the
    payload's number."""
    dt = load_tree(job["respath"])  # the recorder runs in this process: see ncread.py
    assert "tomato_version" in dt.attrs and "tomato_Job" in dt.attrs
    for role, n in want.items():
        assert "tomato_Component" in dt[role].attrs
        got, missed = taken(job, role)
        assert int(dt[role]["uts"].size) == got and got + missed == n, (role, got, missed)


async def test_99_example_counter_multidev(
    broker: RunningBroker, tmp_path: Path, instance: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "data" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    async with inproc_stack(
        broker.port, tmp_path, instance, devices="devices_multidev.yml", components=3
    ) as st:
        cli = Cli(st.settings.appdir, broker.port)
        c1 = "example_counter:(example-addr-1,1)"

        # upstream: test_counter_measure_task_measure
        assert (await cli.json("passata", "measure", c1))["success"]
        path_job = await cli.run_case(payload("counter_output_path"), "pip-counter")
        await cli.wait_job(path_job, {"r"})
        r = await cli.json("passata", "measure", c1)
        assert not r["success"] and "running" in r["msg"], r

        # upstream: test_counter_multidev[counter_multidev], [counter_multistep_multidev]
        for case, want in (
            ("counter_multidev", {"counter-1": 10, "counter-2": 5}),
            ("counter_multistep_multidev", {"counter-1": 10, "counter-2": 20}),
        ):
            jobid = await cli.run_case(payload(case), "pip-multidev")
            job = await cli.wait_job(jobid, {"c", "ce", "cd"})
            assert job["status"] == "c", job
            check_npoints(job, want)
            assert (await cli.json("tomato", "pipeline", "eject", "pip-multidev"))["success"]

        # upstream: test_counter_npoints_metadata[counter_output_path]: 20 points in
        # newfolder/results.<id>.nc, relative to where submit ran (as tomato)
        job = await cli.wait_job(path_job, {"c", "ce", "cd"})
        assert job["status"] == "c", job
        assert Path(job["respath"]) == work / "newfolder" / f"results.{path_job}.nc"
        check_npoints(job, {"counter": 20})
        # ... and measure works again once the task is over
        r = await cli.json("passata", "measure", c1)
        while not r["success"] and "running" in r["msg"]:  # the runner notices the end
            await asyncio.sleep(0.1)
            r = await cli.json("passata", "measure", c1)
        assert r["success"], r


async def test_99_psutil(
    broker: RunningBroker, tmp_path: Path, instance: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "data" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    async with inproc_stack(
        broker.port, tmp_path, instance, devices="devices_psutil.yml", components=2
    ) as st:
        cli = Cli(st.settings.appdir, broker.port)
        ps = "psutil:(psutil-addr,10)"
        # upstream: test_psutil_passata -- status, attrs, constants answer (tomato's
        # "driver version 2.1" is upstream's own package version: not applicable)
        r = await cli.json("passata", "status", ps)
        assert r["success"] and r["data"]["state"] != "running"
        for cmd in ("attrs", "constants"):
            assert (await cli.json("passata", cmd, ps))["success"]

        # upstream: test_psutil_multidev[psutil_1_0.1], [psutil_counter]
        for case, want in (
            ("psutil_1_0.1", {"psutil": 10}),
            ("psutil_counter", {"psutil": 12, "counter": 10}),
        ):
            jobid = await cli.run_case(payload(case), "pip-multidev")
            job = await cli.wait_job(jobid, {"c", "ce", "cd"})
            assert job["status"] == "c", job
            check_npoints(job, want)
            assert (await cli.json("tomato", "pipeline", "eject", "pip-multidev"))["success"]
