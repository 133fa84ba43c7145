"""The job file: tomato's layout, read back with xarray.open_datatree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from tomato_mqtt.services.recorder.netcdf import RoleInput, write_job_file


def _batch(seq: int, uts: list[float], task: int | None, **vars: list[object]) -> bytes:
    return json.dumps(
        {
            "schema": 1,
            "component": "c",
            "job": 1,
            "task": task,
            "epoch": 5,
            "seq": seq,
            "uts": uts,
            "vars": vars,
            "units": {"val": "s"} if "val" in vars else {},
        }
    ).encode()


def test_layout_matches_tomato(tmp_path: Path) -> None:
    comp = json.dumps({"name": "example_counter:(a,1)", "driver": "example_counter"})
    batches = [
        _batch(1, [3.0, 4.0], 1, val=[3, 4], choice=["red", "blue"]),
        _batch(0, [1.0, 2.0], 0, val=[1, 2], choice=["red", "red"]),
        _batch(2, [5.0], None, val=[5], flag=[True]),
    ]
    roles = [RoleInput("counter", comp, batches), RoleInput("empty", "{}", [])]
    out = write_job_file(
        tmp_path / "results.1.nc", roles, {"tomato_version": "x", "tomato_Job": "{}"}
    )
    assert out == tmp_path / "results.1.nc"
    assert [p.name for p in tmp_path.iterdir()] == ["results.1.nc"]  # no temp file left
    tree = xr.open_datatree(out)
    assert tree.attrs["tomato_version"] == "x"
    assert json.loads(tree.attrs["tomato_Job"]) == {}
    ds = tree["counter"].to_dataset()
    assert tree["counter"].attrs["role"] == "counter"
    assert json.loads(tree["counter"].attrs["tomato_Component"])["driver"] == "example_counter"
    np.testing.assert_array_equal(ds["uts"].values, [1.0, 2.0, 3.0, 4.0, 5.0])
    np.testing.assert_array_equal(ds["val"].values, [1, 2, 3, 4, 5])
    assert ds["val"].attrs["units"] == "s"
    np.testing.assert_array_equal(ds["task"].values, [0, 0, 1, 1, -1])
    assert list(ds["choice"].values) == ["red", "red", "red", "blue", ""]
    assert np.isnan(ds["flag"].values[:4]).all() and ds["flag"].values[4] == 1
    assert tree["empty"].to_dataset().sizes.get("uts", 0) == 0
    tree.close()


def test_unwritable_place_raises_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        write_job_file(tmp_path / "missing-dir" / "x.nc", [], {"tomato_version": "x"})
