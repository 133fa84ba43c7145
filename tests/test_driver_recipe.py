"""docs/drivers.md's "Your first driver, end to end", as a driver author follows it,
with the install for a Python one may not install into: the bundled counter copied and
renamed (driver ``wave``), ``pip install --no-deps --target DIR``, ``PYTHONPATH=DIR``
in the environment of ``tomato start``, a device added and ``tomato reload`` (no
restart), a pipeline loaded and made ready, a job of the driver's task: `c`, its points
in the file. (The recipe was not run by any test: a driver author's tour.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import xarray as xr

from tests.stack import make_stack, started

ROOT = Path(__file__).resolve().parents[1]
COUNTER = ROOT / "drivers" / "example_counter"

DEVICE = "  - {name: dev-wave, driver: wave, address: w-addr, channels: ['1'], pollrate: 1}\n"
PIPELINE = "  - {name: pip-wave, devices: [{role: wave, device: dev-wave, channel: '1'}]}\n"


def _wave_package(folder: Path) -> Path:
    """Step 1: the counter copied to a folder of one's own, its package, module and
    entry point renamed (``wave = "tomato_mqtt_wave:DriverInterface"``)."""
    src = folder / "wave"
    shutil.copytree(
        COUNTER, src, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__", "tests")
    )
    (src / "tomato_mqtt_example_counter").rename(src / "tomato_mqtt_wave")
    pyproject = (src / "pyproject.toml").read_text()
    pyproject = pyproject.replace('name = "tomato-mqtt-example-counter"', 'name = "wave"')
    pyproject = pyproject.replace(
        'example_counter = "tomato_mqtt_example_counter:DriverInterface"',
        'wave = "tomato_mqtt_wave:DriverInterface"',
    )
    pyproject = pyproject.replace('"tomato_mqtt_example_counter*"', '"tomato_mqtt_wave*"')
    assert "tomato_mqtt_example_counter" not in pyproject, pyproject
    (src / "pyproject.toml").write_text(pyproject)
    return src


@pytest.mark.timeout(240)
def test_a_driver_of_one_s_own_installed_with_target_runs_a_job(tmp_path: Path) -> None:
    src = _wave_package(tmp_path)
    target = tmp_path / "drivers-dir"
    # step 3, for a Python one may not install into (no build isolation: nothing is
    # fetched, the venv's setuptools builds it)
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stderr
    assert (target / "tomato_mqtt_wave").is_dir(), list(target.iterdir())

    st = make_stack(tmp_path / "stack")
    st.env["PYTHONPATH"] = str(target)  # the services inherit it from `tomato start`
    with started(st):
        # step 4: a device of the driver and a pipeline of its channel, then reload
        devices = st.appdir / "devices.yml"
        text = devices.read_text()
        assert "\npipelines:\n" in text, text
        text = text.replace("\npipelines:\n", "\n" + DEVICE + "pipelines:\n" + PIPELINE, 1)
        devices.write_text(text)
        st.run("tomato", "reload", check=True)
        comps = st.json("tomato", "status", "components")["data"]
        wave = comps["wave:(w-addr,1)"]
        assert wave["registered"] is True, wave
        # step 5: load, ready, submit a payload whose task names the role and a capability
        st.load_ready("pip-wave", "wave-sample")
        payload = tmp_path / "wave.yml"
        payload.write_text(
            'version: "2.2"\n'
            "sample: {identifier: wave-sample}\n"
            "user: {identifier: author}\n"
            "method:\n"
            "  - {component_role: wave, technique_name: count, max_duration: 1.0,"
            " sampling_interval: 0.1}\n"
        )
        jobid = st.submit(payload)
        job = st.wait_job(jobid, {"c", "ce", "cd"}, timeout=60)
        assert job["status"] == "c", job
        end = job["progress"]["tasks"]["0"]["end"]
        with xr.open_datatree(job["respath"]) as tree:
            assert tree["wave"].sizes["uts"] == end["npoints"] >= 1, (tree, end)
            assert end["npoints"] + end.get("missed", 0) == 10, end
