"""Upstream tomato driver packages from PyPI, unchanged, on a tomato-mqtt node.

``tomato drivers install tomato-example-counter tomato-psutil`` puts them (and tomato 2.2)
into the node's upstream-driver venv; upstream tomato's own example payloads then run
on them through the CLIs to ``c`` with every point in the file, and passata drives them.
The venv is cached between runs (keyed by the requirements), so after the first run the
install is a pip no-op of a few seconds: set ``TOMATO_TEST_CACHE`` to move the cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import xarray as xr

from tests.counts import taken
from tests.stack import Stack, make_stack, start_stack, stop_stack
from tomato_mqtt.driver.upstream.env import TOMATO_CONSTRAINT, UpstreamEnv

REQS = ["tomato-example-counter", "tomato-psutil"]
SPECTRUM = Path(__file__).parent / "drivers" / "upstream_spectrum"
COUNTER = "example_counter:(counter-addr,1)"
PSUTIL = "psutil:(psutil-addr,10)"

pytestmark = pytest.mark.timeout(900)

START_TIMEOUT = 120.0


def _env_dir() -> Path:
    key = "\n".join([*REQS, TOMATO_CONSTRAINT, sys.version.split()[0]])
    root = Path(os.environ.get("TOMATO_TEST_CACHE", Path.home() / ".cache" / "tomato-mqtt-tests"))
    return root / f"upstream-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


@contextlib.contextmanager
def _env_lock(env: Path) -> Iterator[None]:
    """Hold the cached venv for this module alone: another test run on the same machine
    (a second checkout, a CI job next to a local run) shares the cache, and its
    ``test_installed_after_start_found_by_reload`` installing the spectrum driver between
    our uninstall and our start made our start find 3 of 3 drivers."""
    env.parent.mkdir(parents=True, exist_ok=True)
    with open(env.parent / f"{env.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _uninstall_spectrum(env: Path) -> None:
    if UpstreamEnv(env).drivers().get("spectrum"):
        subprocess.run(
            [str(UpstreamEnv(env).python), "-m", "pip", "uninstall", "-q", "-y", "tomato-spectrum"],
            check=True,
        )


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = _env_dir()
    with _env_lock(env):
        yield from _up(tmp_path_factory, env)


def _up(tmp_path_factory: pytest.TempPathFactory, env: Path) -> Iterator[Stack]:
    settings = (
        f'[node]\nupstream_env = "{env}"\n'
        # both names clash with tomato-mqtt's own ports: pick the upstream packages
        '[drivers.example_counter]\nsource = "upstream"\n'
        '[drivers.psutil]\nsource = "upstream"\n'
        "idle_measurement_interval = 0.5\n"  # tomato's own setting: read from settings
    )
    st = make_stack(tmp_path_factory.mktemp("up"), "devices_upstream.yml", settings)
    t0 = time.monotonic()
    res = st.run("tomato", "drivers", "install", *REQS, "--json", timeout=900)
    assert res.returncode == 0, res.stderr
    print(f"tomato drivers install {' '.join(REQS)}: {time.monotonic() - t0:.1f} s")
    # the spectrum driver is installed only after start (test_installed_after_start)
    _uninstall_spectrum(env)
    t0 = time.monotonic()
    # a long timeout: start must return long before it, not wait for the missing driver
    res = start_stack(st, timeout=START_TIMEOUT)
    st.start_seconds = time.monotonic() - t0  # type: ignore[attr-defined]
    st.start_result = res  # type: ignore[attr-defined]
    print(f"tomato start (3 components, 1 driver missing): {st.start_seconds:.1f} s")  # type: ignore[attr-defined]
    hosts: list[int] = []
    try:
        assert res.returncode == 0, f"{res.stdout}\n{res.stderr}\n{st.logs()}"
        yield st
        hosts = _host_pids(st)
    finally:
        stop_stack(st)
        _uninstall_spectrum(env)  # leave the shared cache as the next run expects it
    # `tomato stop` ends the driver-host processes too: nothing is left running
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in hosts):
        time.sleep(0.1)
    assert hosts and not [p for p in hosts if Path(f"/proc/{p}").exists()], hosts


def _points(path: str, role: str) -> int:
    with xr.open_datatree(path) as tree:
        return int(tree[role].to_dataset().sizes["uts"])


def test_list_shows_native_and_upstream(up: Stack) -> None:
    out = up.json("tomato", "drivers", "list")
    rows = {(r["name"], r["source"]): r for r in out["data"]}
    assert rows[("psutil", "upstream")]["package"] == "tomato-psutil"
    assert rows[("psutil", "upstream")]["used"] is True
    assert rows[("psutil", "native")]["used"] is False  # `source = "upstream"` picked
    assert rows[("example_counter", "upstream")]["used"] is True


def test_list_as_docs_drivers_md_shows_it(up: Stack, tmp_path: Path) -> None:
    """The table in docs/drivers.md: only psutil set to ``source = "upstream"``."""
    import re

    app = tmp_path / "app"
    app.mkdir()
    (app / "settings.toml").write_text(
        f'[node]\nupstream_env = "{_env_dir()}"\n[drivers.psutil]\nsource = "upstream"\n'
    )
    res = subprocess.run(
        [str(Path(sys.executable).parent / "tomato"), "drivers", "list", "-A", str(app)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    row = re.compile(r"^(\w+)\s+(native|upstream)\s+(\S+)\s+\S+\s+(yes|no)$", re.M)
    doc = (Path(__file__).parents[1] / "docs" / "drivers.md").read_text()
    want = set(row.findall(doc))
    assert len(want) == 4, want
    got = {r for r in row.findall(res.stdout) if r[0] in {w[0] for w in want}}
    assert got == want, res.stdout


def test_start_names_the_missing_driver_at_once(up: Stack) -> None:
    # dev-spectrum's driver is not installed yet: start says so instead of waiting 30 s
    res = up.start_result  # type: ignore[attr-defined]
    took = up.start_seconds  # type: ignore[attr-defined]
    assert took < START_TIMEOUT - 30, (took, res.stdout)
    assert "2/3 component(s) ready" in res.stdout, res.stdout
    assert "warning: driver 'spectrum' is missing on node local" in res.stderr, res.stderr
    assert "spectrum:(spectrum-addr,1)" in res.stderr
    assert "tomato drivers install tomato-spectrum" in res.stderr  # what to do about it


@pytest.mark.parametrize(
    ("payload", "npoints"),
    [
        ("psutil_1_0.1.yml", {"psutil": 10}),
        ("psutil_counter.yml", {"psutil": 12, "counter": 10}),
        ("psutil_counter_with_task_stop.yml", {"psutil": 10, "counter": 3}),
    ],
)
def test_upstream_payloads_run_to_c(up: Stack, payload: str, npoints: dict[str, int]) -> None:
    import yaml

    from tests.stack import CONFIG

    sample = yaml.safe_load((CONFIG / payload).read_text())["sample"]["name"]
    up.load_ready("pip-multidev", sample)
    try:
        jobid = up.submit(payload)
        job = up.wait_job(jobid, {"c", "ce", "cd"}, timeout=120)
        assert job["status"] == "c", job
        for role, want in npoints.items():
            n, _missed = taken(job, role)
            got = _points(job["respath"], role)
            assert got == n, (role, got, n)  # every point the driver took is in the file
            if payload.endswith("task_stop.yml") and role == "counter":
                assert want - 1 <= got <= want, (role, got)  # stopped by a trigger: a race
            else:
                assert got == want, (role, got, want)  # tomato 2.2's own expectation
        with xr.open_datatree(job["respath"]) as tree:
            assert tree["psutil"]["mem_total"].attrs["units"] == "bytes"  # the driver's own
    finally:
        up.run("tomato", "pipeline", "eject", "pip-multidev")


def test_passata_on_upstream_components(up: Stack) -> None:
    def ok(*args: str) -> Any:
        out = up.json("passata", *args)
        assert out["success"], (args, out)
        return out["data"]

    attrs = ok("attrs", COUNTER)
    assert attrs["param"]["type"] == "quantity" and attrs["param"]["minimum"] == 0.1
    assert sorted(attrs["choice"]["options"]) == ["blue", "green", "red"]
    assert ok("constants", COUNTER)["example_meta"] == "example string"
    assert sorted(ok("capabilities", COUNTER)) == ["count", "random"]
    ok("set", COUNTER, "min", "3")
    ok("set", COUNTER, "max", "10")  # tomato's counter keeps a job's values after reset
    assert ok("get", COUNTER, "min")["min"] == 3.0
    ok("set", COUNTER, "param", "2 s")
    bad = up.json("passata", "set", COUNTER, "choice", "orange")
    assert not bad["success"] and "orange" in bad["msg"]
    low = up.json("passata", "set", COUNTER, "param", "0.01 s")
    assert not low["success"] and "minimum" in low["msg"]
    point = ok("measure", COUNTER)
    assert 3.0 <= point["vars"]["val"] <= 10.0
    ok("reset", COUNTER)
    ok("measure", PSUTIL)
    st = ok("status", PSUTIL)
    assert st["state"] == "idle" and "cpu_usage" in st["attrs"]
    ro = up.json("passata", "set", PSUTIL, "cpu_usage", "1")
    assert not ro["success"] and "read-only" in ro["msg"]


def _wait_spectrum_registered(up: Stack) -> None:
    """Until the spectrum driver's component is registered (30 s at most)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        comps = up.json("tomato", "status", "components")["data"]  # name -> component
        spec = next(c for c in comps.values() if c["driver"] == "spectrum")
        if spec["registered"]:
            break
        time.sleep(0.2)
    assert spec["registered"], spec


def test_installed_after_start_found_by_reload(up: Stack) -> None:
    res = up.run("tomato", "drivers", "install", str(SPECTRUM), timeout=600)
    assert res.returncode == 0, res.stderr
    up.run("tomato", "reload", check=True)
    _wait_spectrum_registered(up)
    payload = up.workdir / "sweep.yml"
    payload.write_text(
        "version: '2.2'\nsample: {identifier: s1}\nuser: {identifier: me}\nmethod:\n"
        "  - {component_role: spectrum, technique_name: sweep, max_duration: 1.0,"
        " sampling_interval: 0.2, task_params: {gain: 2}}\n"
    )
    up.load_ready("pip-spectrum", "s1")
    jobid = up.submit(payload)
    job = up.wait_job(jobid, {"c", "ce", "cd"}, timeout=60)
    assert job["status"] == "c", job
    # the driver's Dataset travels as one block: the scalar and the array-valued
    # "spectrum" (its extra dimension, coordinates and units) land in the file whole
    n, _ = taken(job, "spectrum")
    assert _points(job["respath"], "spectrum") == n == 5
    with xr.open_datatree(job["respath"]) as tree:
        ds = tree["spectrum"].to_dataset()
        assert ds["spectrum"].dims == ("uts", "freq"), ds
        assert ds["spectrum"].shape == (5, ds.sizes["freq"]) and ds.sizes["freq"] > 1, ds
        assert ds["spectrum"].attrs.get("units") == "dB", ds["spectrum"].attrs
        assert ds["freq"].attrs.get("units") == "Hz", ds["freq"].attrs
        assert ds["spectrum"].notnull().all(), ds["spectrum"]

    # a driver exception kills tomato's task thread: the job ends ce saying why, and the
    # reset after the job (tomato's cmp_reset restarts the thread) makes it usable again
    boom = up.workdir / "boom.yml"
    boom.write_text(payload.read_text().replace("sweep", "explode"))
    up.run("tomato", "pipeline", "ready", "pip-spectrum", check=True)
    job = up.wait_job(up.submit(boom), {"c", "ce", "cd"}, timeout=60)
    assert job["status"] == "ce", job
    assert "simulated instrument fault" in str(job), job
    up.run("tomato", "pipeline", "ready", "pip-spectrum", check=True)
    job = up.wait_job(up.submit(payload), {"c", "ce", "cd"}, timeout=60)
    assert job["status"] == "c", job

    # a Dataset the file cannot hold (a variable named I/V): its points are dropped, and
    # the job says so; it ended c with them missing, said only in the node's log (a review)
    bad = up.workdir / "bad.yml"
    bad.write_text(payload.read_text().replace("sweep", "badname"))
    up.run("tomato", "pipeline", "ready", "pip-spectrum", check=True)
    job = up.wait_job(up.submit(bad), {"c", "ce", "cd"}, timeout=60)
    assert job["status"] == "ce", job
    assert "were dropped, not sent: variable 'I/V': the name holds '/'" in str(job), job


def test_an_upgraded_driver_runs_its_new_code_after_a_reload(up: Stack, tmp_path: Path) -> None:
    """A tomato 2.2 user's review: a driver's fix installed with `tomato drivers install`
    and taken with `tomato reload` was reported as the new version by `tomato status
    drivers`, while its host process (started before) ran the old code for every job
    until a `tomato stop`. Now the status names the version that runs, and a reload
    makes the idle components' host process anew."""
    import shutil

    new = tmp_path / "spectrum-0.2"
    shutil.copytree(SPECTRUM, new, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    toml = new / "pyproject.toml"
    toml.write_text(toml.read_text().replace('version = "0.1.0"', 'version = "0.2.0"'))
    code = new / "tomato_spectrum" / "__init__.py"
    code.write_text(code.read_text().replace('{"units": "dB"}', '{"units": "dBm"}'))
    # (the test before ran jobs on it: its host process is up, s1 is loaded)
    res = up.run("tomato", "drivers", "install", str(new), timeout=600)
    assert res.returncode == 0, res.stderr

    def spectrum_version() -> str:
        drivers = up.json("tomato", "status", "drivers")["data"]
        return str(drivers["spectrum"]["nodes"]["local"]["version"])

    def wait_version(start: str) -> str:
        deadline = time.monotonic() + 30  # (the node's status: at its next heartbeat)
        while not (version := spectrum_version()).startswith(start):
            assert time.monotonic() < deadline, version
            time.sleep(0.2)
        return version

    assert "installed: used once its components are idle" in wait_version("0.1.0 running, 0.2.0")
    up.run("tomato", "reload", check=True)
    wait_version("0.2.0 (tomato")
    payload = up.workdir / "sweep2.yml"
    payload.write_text(
        "version: '2.2'\nsample: {identifier: s1}\nuser: {identifier: me}\nmethod:\n"
        "  - {component_role: spectrum, technique_name: sweep, max_duration: 0.6,"
        " sampling_interval: 0.2, task_params: {gain: 2}}\n"
    )
    _wait_spectrum_registered(up)
    up.run("tomato", "pipeline", "ready", "pip-spectrum", check=True)
    job = up.wait_job(up.submit(payload), {"c", "ce", "cd"}, timeout=60)
    assert job["status"] == "c", job
    with xr.open_datatree(job["respath"]) as tree:
        assert tree["spectrum"]["spectrum"].attrs.get("units") == "dBm"


def test_dataset_to_columns_keeps_extra_dimensions() -> None:
    """The one conversion of an upstream Dataset (in the host script), arrays included."""
    import importlib.util

    from tomato_mqtt.driver.upstream.client import HOST_SCRIPT

    spec = importlib.util.spec_from_file_location("upstream_host", HOST_SCRIPT)
    assert spec is not None and spec.loader is not None
    host = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(host)
    ds = xr.Dataset(
        {
            "val": (["uts"], [1.0, float("nan")], {"units": "s"}),
            "spec": (["uts", "freq"], [[1, 2, 3], [4, 5, 6]], {"units": "dB"}),
            "const": ([], 7),
        },
        coords={"uts": [10.0, 11.0], "freq": ("freq", [1e6, 2e6, 3e6], {"units": "Hz"})},
    )
    cols = host.dataset_to_columns(ds)
    assert cols["uts"] == [10.0, 11.0]
    assert cols["vars"] == {"val": [1.0, None], "spec": [[1, 2, 3], [4, 5, 6]]}
    assert cols["units"] == {"val": "s", "spec": "dB"}
    assert cols["arrays"] == {
        "spec": {
            "dims": ["freq"],
            "coords": {"freq": [1e6, 2e6, 3e6]},
            "coord_units": {"freq": "Hz"},
        }
    }
    from tomato_mqtt.driver.block import Block

    # the node turns them into one block as they are (no per-point rows)
    block = Block(
        uts=cols["uts"],
        data=cols["vars"],
        units=cols["units"],
        dims={"spec": ["freq"]},
        coords={"freq": [1e6, 2e6, 3e6]},
    )
    block.check()
    assert len(block) == 2


def test_dataset_to_columns_keeps_a_coordinate_along_uts() -> None:
    """A tomato 2.2 user's review: a driver's non-dimension coordinate along ``uts`` (a
    cycle number per point) was left out without a word; tomato 2.2's file has it."""
    import numpy as np

    from tomato_mqtt.driver.upstream.host import dataset_to_columns

    ds = xr.Dataset(
        {"E": ("uts", [0.1, 0.2], {"units": "V", "long_name": "potential"})},
        coords={"uts": [1.0, 2.0], "cycle": ("uts", np.array([1, 2]))},
    )
    cols = dataset_to_columns(ds)
    assert cols["vars"] == {"E": [0.1, 0.2], "cycle": [1, 2]}, cols
    assert cols["units"] == {"E": "V"}


def test_missing_driver_says_how_to_install(tmp_path: Path) -> None:
    from tomato_mqtt.driver.discovery import DriverNotFound, resolve_driver

    with pytest.raises(DriverNotFound, match="tomato drivers install tomato-no-such"):
        resolve_driver("no_such", {}, tmp_path / "venv")
    with pytest.raises(DriverNotFound, match=r"upstream tomato driver 'psutil' is not installed"):
        resolve_driver("psutil", {"source": "upstream"}, tmp_path / "venv")
    with pytest.raises(DriverNotFound, match="source must be"):
        resolve_driver("psutil", {"source": "pypi"}, tmp_path / "venv")
    assert resolve_driver("psutil", {}, tmp_path / "venv").__name__ == "DriverInterface"


def test_idle_measurements_between_jobs(up: Stack) -> None:
    first = up.json("passata", "last", PSUTIL)["data"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        now = up.json("passata", "last", PSUTIL)["data"]
        if now and first and now["uts"] > first["uts"] and "cpu_usage" in now["vars"]:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"no idle measurement in 20 s: {first} {now}")


def _host_pids(st: Stack, driver: str | None = None) -> list[int]:
    """The driver-host processes of the stack's node (of ``driver``, or all)."""
    node = st.child_pid("node")
    out = []
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text()
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        mine = ppid == node and any(a.endswith(b"host.py") for a in argv)
        if mine and (driver is None or driver.encode() in argv):
            out.append(int(proc.name))
    return out


def _host_pid(st: Stack, driver: str) -> int:
    pids = _host_pids(st, driver)
    assert len(pids) == 1, (driver, pids)
    return pids[0]


def test_a_dead_driver_host_is_restarted_by_reload(up: Stack) -> None:
    os.kill(_host_pid(up, "psutil"), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        out = up.json("passata", "measure", PSUTIL)
        if not out["success"]:
            break
        time.sleep(0.1)
    assert not out["success"] and "driver host of psutil" in out["msg"], out
    up.run("tomato", "reload", check=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        out = up.json("passata", "measure", PSUTIL)
        if out["success"]:
            break
        time.sleep(0.2)
    assert out["success"], out
    assert "cpu_usage" in out["data"]["vars"]
