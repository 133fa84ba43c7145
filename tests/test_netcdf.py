"""The job file: tomato's layout, read back with xarray.open_datatree."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import netCDF4
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


def test_points_are_in_the_order_taken_also_across_a_clock_step(tmp_path: Path) -> None:
    """Found by fault injection: a node's clock stepped back an hour mid-task, and the
    file sorted its batches by their first uts, so a batch taken across the step landed
    among later ones. Within a stream the order is its seq (as taken, uts as measured);
    streams (a node restarted) go by the time of their first point."""

    def b(stream: str, seq: int, uts: list[float]) -> bytes:
        raw = json.loads(_batch(seq, uts, 0, val=[int(u) for u in uts]))
        return json.dumps(raw | {"stream": stream}).encode()

    batches = [
        b("later", 0, [9000.0, 9001.0]),  # a restarted node's stream: after the other
        b("s", 1, [5002.0, 1403.0]),  # the step back happened in this batch
        b("s", 2, [1404.0]),
        b("s", 0, [5000.0, 5001.0]),
    ]
    out = write_job_file(tmp_path / "r.nc", [RoleInput("counter", "{}", batches)], {"x": "y"})
    with xr.open_datatree(out) as tree:
        uts = tree["counter"].to_dataset()["uts"].values
    np.testing.assert_array_equal(uts, [5000, 5001, 5002, 1403, 1404, 9000, 9001])


def test_unwritable_place_raises_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        write_job_file(tmp_path / "missing-dir" / "x.nc", [], {"tomato_version": "x"})


def test_a_write_removes_what_an_interrupted_one_left_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by fault injection: a recorder killed mid-write left its partial temporary
    file next to the results for good. The first write into a folder removes those of a
    dead writer (the pid in the name), not a live writer's, nor files of other shapes.
    Once per folder and process (a soak: a scan of the folder at every write cost 4 ms
    at 4,000 results files, growing with each)."""
    from tomato_mqtt.services.recorder import netcdf

    scans: list[object] = []
    real_scandir = os.scandir

    def counting(path: object) -> object:
        scans.append(path)
        return real_scandir(path)  # type: ignore[call-overload]

    monkeypatch.setattr(netcdf.os, "scandir", counting)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is free: the writer is gone
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        target = tmp_path / "results.1.nc"
        stale = tmp_path / f".results.1.nc.{dead.pid}.k1ll3d.tmp"
        other = tmp_path / f".results.2.nc.{dead.pid}.k1ll3d.tmp"  # another job's file
        writing = tmp_path / f".results.1.nc.{live.pid}.busy.tmp"  # a live recorder's
        mine = tmp_path / f".notes.{dead.pid}.tmp"  # not a results file's shape
        for f in (stale, other, writing, mine):
            f.write_bytes(b"partial")
        write_job_file(target, [RoleInput("r", "{}", [])], {"x": "y"})
        assert scans == [str(tmp_path)]
        assert target.exists() and not stale.exists() and not other.exists()
        assert writing.exists() and mine.exists()
        assert not list(tmp_path.glob(f".results.1.nc.{os.getpid()}.*"))  # nor its own
        scans.clear()
        write_job_file(tmp_path / "results.3.nc", [RoleInput("r", "{}", [])], {"x": "y"})
        assert scans == []  # the folder was looked through once
    finally:
        live.kill()
        live.wait()


def test_a_full_disk_is_named_as_such_not_as_the_error_hdf5_gave(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by fault injection: HDF5 reported a full output folder as "[Errno 13]
    Permission denied". The folder's free space (faked here: filling a disk needs a
    mount) decides which one the recorder tells."""
    import errno
    import shutil
    from collections import namedtuple

    from tomato_mqtt.services.recorder import netcdf

    denied = PermissionError(errno.EACCES, "Permission denied")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(10**9, 10**9 - 4096, 4096))
    e = netcdf._why_not_written(denied, tmp_path)
    assert e.errno == errno.ENOSPC and "no space left" in str(e) and "4096 bytes free" in str(e)
    assert "Permission denied" not in str(e), e  # (it sent users to the permissions)
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(10**9, 0, 10**9))
    assert netcdf._why_not_written(denied, tmp_path) is denied  # room enough: as it was


def _run_threads(code: str) -> None:
    """Run ``code`` (it makes ``threads`` and an ``errors`` list) in a child process,
    starting and joining the threads there: a crash of netCDF must not take the test
    runner with it. The child must exit 0 with no errors."""
    code += "for t in threads: t.start()\nfor t in threads: t.join()\n"
    code += "print('errors', len(errors), errors[:2])\n"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (res.returncode, res.stdout, res.stderr[-2000:])
    assert "errors 0 " in res.stdout, res.stdout


def test_job_files_written_from_threads_at_once(tmp_path: Path) -> None:
    """netCDF-C and HDF5 are not thread-safe and netCDF4-python lets go of the GIL: the
    recorder writes in worker threads (two jobs ending together, its warm-up), so its
    writes take one lock (tomato_mqtt/nclock.py). Without it, 3 threads x 40 files crashed
    the process (Bus error) or left unreadable files. In a child process: a crash must
    not take the test runner with it."""
    code = textwrap.dedent(
        f"""
        import threading
        from pathlib import Path
        import orjson
        from tomato_mqtt.services.recorder.netcdf import RoleInput, write_job_file

        batch = orjson.dumps({{"schema": 1, "component": "c", "job": 1, "task": 0, "epoch": 1,
            "stream": "s", "seq": 0, "n": 50, "uts": [float(i) for i in range(50)],
            "vars": {{"v": [i * 0.5 for i in range(50)], "t": ["x"] * 50}}}})
        errors = []
        def work(t):
            for i in range(40):
                try:
                    roles = [RoleInput(f"r{{j}}", "{{}}", [batch] * 5) for j in range(5)]
                    out = Path({str(tmp_path)!r}) / f"t{{t}}-{{i}}.nc"
                    write_job_file(out, roles, {{"x": "y"}})
                except Exception as e:
                    errors.append(repr(e))
        threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
        """
    )
    _run_threads(code)
    files = sorted(tmp_path.glob("*.nc"))
    assert len(files) == 120
    for f in files:
        with netCDF4.Dataset(f) as nc:
            assert len(nc.groups) == 5 and nc.groups["r0"].variables["v"].shape == (250,)


def test_the_client_reads_results_while_a_recorder_in_its_process_writes(
    tmp_path: Path,
) -> None:
    """The client library opens results files with xarray (netCDF4); a script may run a
    recorder in the same process (the tests do). Without the lock a reader thread and a
    writer thread crashed the process (3 of 3 runs, review of the lock). In a child."""
    code = textwrap.dedent(
        f"""
        import threading, time
        from pathlib import Path
        from tomato_mqtt.client.aio import _open_tree
        from tomato_mqtt.services.recorder.netcdf import RoleInput, write_job_file

        d = Path({str(tmp_path)!r})
        write_job_file(d / "read.nc", [RoleInput("r", "{{}}", [])], {{"x": "y"}})
        stop, errors = time.monotonic() + 2.0, []
        def write():
            i = 0
            while time.monotonic() < stop:
                try:
                    write_job_file(d / f"w{{i % 3}}.nc", [RoleInput("r", "{{}}", [])], {{"x": "y"}})
                except Exception as e:
                    errors.append(repr(e))
                i += 1
        def read():
            while time.monotonic() < stop:
                try:
                    assert _open_tree(d / "read.nc").attrs["x"] == "y"
                except Exception as e:
                    errors.append(repr(e))
        threads = [threading.Thread(target=f) for f in (write, read)]
        """
    )
    _run_threads(code)


def _spectra(seq: int, uts: list[float], task: int, freq: list[float]) -> bytes:
    return json.dumps(
        {
            "schema": 1,
            "component": "c",
            "job": 1,
            "task": task,
            "epoch": 5,
            "seq": seq,
            "uts": uts,
            "vars": {
                "spectrum": [[float(t) + f / 1000 for f in freq] for t in uts],
                "level": [float(t) for t in uts],
            },
            "units": {"spectrum": "dB", "freq": "Hz"},
            "dims": {"spectrum": ["freq"]},
            "coords": {"freq": freq},
        }
    ).encode()


def test_spectra_on_other_frequencies_keep_their_values_and_their_frequencies(
    tmp_path: Path,
) -> None:
    """A review: a job of two spectrum tasks (32 bins, then 64) ended ``c`` with the
    second task's spectra all NaN; with as many bins at other frequencies, they were
    labelled with the first task's frequencies. Each set of coordinate values of a
    dimension is a dimension of its own now: ``freq``, then ``freq_1`` …"""
    f32 = [100.0 * i for i in range(32)]
    f64 = [50.0 * i for i in range(64)]
    g32 = [100.0 * i + 1 for i in range(32)]  # as many bins, other frequencies
    batches = [
        _spectra(0, [1.0, 2.0], 0, f32),
        _spectra(1, [3.0], 1, f64),
        _spectra(2, [4.0], 2, g32),
        _spectra(3, [5.0], 3, f32),  # the first frequencies again: the first dimension
    ]
    out = write_job_file(tmp_path / "r.nc", [RoleInput("a", "{}", batches)], {"x": "y"})
    ds = xr.open_datatree(out)["a"].to_dataset()
    assert dict(ds.sizes) == {"uts": 5, "freq": 32, "freq_1": 64, "freq_2": 32}
    np.testing.assert_array_equal(ds["freq"].values, f32)
    np.testing.assert_array_equal(ds["freq_1"].values, f64)
    np.testing.assert_array_equal(ds["freq_2"].values, g32)
    assert ds["freq_1"].attrs["units"] == "Hz" and ds["spectrum_2"].attrs["units"] == "dB"
    np.testing.assert_array_equal(ds["level"].values, [1, 2, 3, 4, 5])
    for name, freq, rows in (
        ("spectrum", f32, [0, 1, 4]),
        ("spectrum_1", f64, [2]),
        ("spectrum_2", g32, [3]),
    ):
        values = ds[name].values
        for i, t in enumerate([1.0, 2.0, 3.0, 4.0, 5.0]):
            if i in rows:
                np.testing.assert_allclose(values[i], [t + f / 1000 for f in freq])
            else:
                assert np.isnan(values[i]).all(), (name, i)
    ds.close()


def test_integers_past_int64_are_not_written_as_negative_numbers(tmp_path: Path) -> None:
    """A review: a 64-bit counter at 2**63 + 5 was written as -9223372036854775803."""
    big = 2**63 + 5
    batches = [
        _batch(0, [1.0], 0, count=[7], mixed=[-1]),
        _batch(1, [2.0], 0, count=[big], mixed=[big]),
    ]
    out = write_job_file(tmp_path / "r.nc", [RoleInput("a", "{}", batches)], {"x": "y"})
    ds = xr.open_datatree(out)["a"].to_dataset()
    assert ds["count"].dtype == np.uint64 and ds["count"].values.tolist() == [7, big]
    assert ds["mixed"].values.tolist() == [-1.0, float(big)]  # both: only as floats
    ds.close()


def test_a_file_is_synced_before_it_takes_its_name_and_its_name_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review: the file was renamed into place unsynced (a power cut right after a
    job's end could leave an empty file under its name, the job saying it is written)."""
    import stat

    from tomato_mqtt.services.recorder import netcdf

    seen: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        kind = "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        seen.append(f"fsync {kind} {os.fstat(fd).st_size if kind == 'file' else ''}".strip())
        real_fsync(fd)

    def replace(a: str, b: object) -> None:
        seen.append("rename")
        real_replace(a, b)  # type: ignore[arg-type]

    monkeypatch.setattr(netcdf.os, "fsync", fsync)
    monkeypatch.setattr(netcdf.os, "replace", replace)
    batches = [_batch(0, [1.0, 2.0], 0, val=[1, 2])]
    write_job_file(tmp_path / "r.nc", [RoleInput("counter", "{}", batches)], {"x": "y"})
    assert [s.split()[:2] for s in seen] == [["fsync", "file"], ["rename"], ["fsync", "folder"]]
    assert int(seen[0].split()[2]) == (tmp_path / "r.nc").stat().st_size  # the whole file


def test_a_batch_s_columns_are_arrays_as_soon_as_it_is_parsed() -> None:
    """A review: a job's batches were held as Python lists until the file was written
    (~300 bytes a point: 4 million points took 1.2 GB and 5.6 s; as arrays 0.67 GB and
    3.2 s, bench in docs/performance.md). Text and gaps stay what they were."""
    from tomato_mqtt.services.recorder.netcdf import _load

    raw = _batch(0, [1.0, 2.0], 0, val=[1, 2], choice=["red", None], level=[0.5, None])
    (b,) = _load([raw], [])
    assert isinstance(b["uts"], np.ndarray) and b["uts"].dtype == float
    assert {k: (type(v).__name__, v.dtype.kind) for k, v in b["vars"].items()} == {
        "val": ("ndarray", "i"),
        "choice": ("ndarray", "O"),
        "level": ("ndarray", "f"),
    }
    assert b["vars"]["choice"].tolist() == ["red", ""] and np.isnan(b["vars"]["level"][1])


def test_renamed_spectra_never_take_a_name_the_driver_uses(tmp_path: Path) -> None:
    """A review of the renaming: the driver's own `spectrum_1` took the renamed spectrum
    (and moved), and a variable `freq_1` made the file unwritable. A renamed variable or
    dimension takes the first `NAME_k` that no variable, dimension or coordinate uses."""
    f1, f2 = [1.0, 2.0], [10.0, 20.0]

    def batch(seq: int, t: float, freq: list[float]) -> bytes:
        return json.dumps(
            {
                "schema": 1, "component": "c", "job": 1, "task": 0, "epoch": 5,
                "seq": seq, "uts": [t],
                "vars": {"spectrum": [[t, t]], "spectrum_1": [t * 10], "freq_1": [t * 100]},
                "dims": {"spectrum": ["freq"]}, "coords": {"freq": freq},
            }
        ).encode()  # fmt: skip

    out = write_job_file(
        tmp_path / "r.nc", [RoleInput("a", "{}", [batch(0, 1.0, f1), batch(1, 2.0, f2)])], {}
    )
    ds = xr.open_datatree(out)["a"].to_dataset()
    assert ds["spectrum_1"].values.tolist() == [10.0, 20.0]  # the driver's, untouched
    assert ds["freq_1"].values.tolist() == [100.0, 200.0]
    assert ds["spectrum_2"].dims == ("uts", "freq_2")
    assert ds["freq_2"].values.tolist() == f2
    assert ds["spectrum"].values[0].tolist() == [1.0, 1.0]
    assert ds["spectrum_2"].values[1].tolist() == [2.0, 2.0]
    ds.close()


@pytest.mark.parametrize(
    ("column", "written"),
    [
        ({"x": [1.0, None], "dims": {"x": []}}, [1.0, "nan"]),  # dims [] is a scalar
        ({"x": ["a", None], "dims": {"x": []}}, ["a", ""]),
    ],
)
def test_a_scalar_declared_with_no_extra_dimension_is_written(
    tmp_path: Path, column: dict[str, Any], written: list[object]
) -> None:
    """A review of the early conversion: a variable declared with `dims: []` and a gap
    became an object array with None in it, and the file could not be written."""
    b = json.loads(_batch(0, [1.0, 2.0], 0, x=column["x"]))
    b["dims"] = column["dims"]
    out = write_job_file(tmp_path / "r.nc", [RoleInput("a", "{}", [json.dumps(b).encode()])], {})
    ds = xr.open_datatree(out)["a"].to_dataset()
    assert [
        str(v) if isinstance(v, float) and v != v else v for v in ds["x"].values.tolist()
    ] == written
    ds.close()


def test_a_column_numpy_cannot_make_does_not_take_its_batch_out(tmp_path: Path) -> None:
    """A review of the early conversion: a point holding a list in a scalar variable
    made the whole batch "left out" of the file (its good variables too), and the job
    could still end c. The batch stays; the write fails as before, loudly."""
    from tomato_mqtt.services.recorder.netcdf import _load

    raw = _batch(0, [1.0, 2.0, 3.0], 0, good=[1, 2, 3], odd=[1, [2, 3], 4])
    (b,) = _load([raw], [])
    assert b["vars"]["good"].tolist() == [1, 2, 3] and b["vars"]["odd"] == [1, [2, 3], 4]
    with pytest.raises(ValueError):
        write_job_file(tmp_path / "r.nc", [RoleInput("a", "{}", [raw])], {})


def test_a_write_that_netcdf_fails_mid_way_is_a_write_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review: a disk that filled up during the write made netCDF4 raise RuntimeError
    ("NetCDF: HDF error"), answered as an internal error and never tried again (nor in
    the fallback folder). It is an OSError, as a full disk at the file's creation is;
    and a file whose fsync fails is not renamed into place as written."""
    from tomato_mqtt.services.recorder import netcdf

    def fails(*a: object) -> None:
        raise RuntimeError("NetCDF: HDF error")

    batches = [_batch(0, [1.0], 0, val=[1])]
    monkeypatch.setattr(netcdf, "_write", fails)
    with pytest.raises(OSError, match="NetCDF: HDF error"):
        write_job_file(tmp_path / "r.nc", [RoleInput("a", "{}", batches)], {})
    monkeypatch.undo()

    def no_sync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(netcdf.os, "fsync", no_sync)
    with pytest.raises(OSError, match="Input/output error"):
        write_job_file(tmp_path / "r.nc", [RoleInput("a", "{}", batches)], {})
    assert list(tmp_path.iterdir()) == []  # nothing renamed into place, no temp left


def _mixed_job() -> list[bytes]:
    """Batches of every kind the writer plans for: units that change, spectra on other
    frequencies, a variable with gaps, text, bools, integers past int64, infinities, two
    streams, a task of None, an array point of the wrong shape."""

    def b(seq: int, t0: float, vars: dict[str, Any], epoch: int = 1, **kw: Any) -> bytes:
        n = len(next(iter(vars.values())))
        doc = {"schema": 1, "component": "c", "job": 1, "task": kw.pop("task", 0)}
        doc.update(epoch=epoch, seq=seq, uts=[t0 + i for i in range(n)], vars=vars, **kw)
        return json.dumps(doc).encode()

    spec = {"dims": {"s": ["f"]}, "units": {"f": "Hz", "E": "V"}}
    return [
        b(
            0,
            0.0,
            {"E": [1.0, None], "ok": [True, False], "txt": ["a", "b"], "s": [[1, 2]] * 2},
            coords={"f": [1, 2]},
            **spec,
        ),
        b(
            1,
            2.0,
            {"E": [2.0, 3.0], "big": [2**63 + 5, 1], "s": [[3, 4], [5, 6]]},
            coords={"f": [1, 2]},
            **spec,
        ),
        b(2, 4.0, {"E": [4.0, 5.0]}, units={"E": "mV"}, nonfinite={"E": {"inf": [1]}}),
        b(3, 6.0, {"s": [[7, 8, 9]]}, coords={"f": [1, 2, 3]}, dims={"s": ["f"]}, task=None),
        b(4, 7.0, {"s": [[1, 2, 3]]}, coords={"f": [1, 2]}, dims={"s": ["f"]}),
        b(0, 0.5, {"txt": ["x"], "ok": [True]}, epoch=2, task=1),
        b(5, 8.0, {"E": [6.0], "txt": [None]}, units={"E": "V"}),
    ]


def _contents(path: Path) -> dict[str, Any]:
    """Every group's dimensions, variables (type, dims, attrs, values) and attrs."""
    out: dict[str, Any] = {}
    with netCDF4.Dataset(path) as nc:
        for name, g in nc.groups.items():
            out[name] = {"dims": {d: len(v) for d, v in g.dimensions.items()}, "attrs": g.__dict__}
            for vname, v in g.variables.items():
                vals = v[:]
                vals = vals.tolist() if isinstance(vals, np.ndarray) else vals
                out[name][vname] = (str(v.dtype), v.dimensions, repr(v.__dict__), repr(vals))
    return out


def test_a_long_job_is_written_from_a_second_reading_as_from_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job whose batches are too many to keep parsed is planned in one pass and
    written in runs of batches, each parsed again (a long high-rate job took the
    recorder out of memory at its end): its file is the same, value for value, type for
    type, as one planned and written at once, and so is what it says was altered."""
    from tomato_mqtt.services.recorder import netcdf

    raws = _mixed_job()
    kept: list[str] = []
    one = write_job_file(tmp_path / "kept.nc", [RoleInput("a", "{}", raws)], {}, kept)
    monkeypatch.setattr(netcdf, "_KEEP_PARSED", 0)
    monkeypatch.setattr(netcdf, "_WRITE_BYTES", 1)  # one batch a run
    again: list[str] = []
    two = write_job_file(tmp_path / "again.nc", [RoleInput("a", "{}", raws)], {}, again)
    assert kept == again and len(kept) == 1 and "expected (2,)" in kept[0], kept
    assert _contents(one) == _contents(two)
    got = _contents(one)["a"]
    assert got["dims"]["uts"] == 10 and "E_1" in got and "s_1" in got, got


def test_a_long_job_s_file_is_written_in_bounded_memory(tmp_path: Path) -> None:
    """The recorder's write read a job's every stored batch into memory and built the
    whole file there (2 million points of five variables: 570 MB at its peak): a long
    high-rate job could take the recorder out of memory at its end. Now it reads the
    store a few hundred batches at a time, keeps parsed batches up to a limit and
    writes in runs: six times the points take about the same memory (here with both
    limits made small, so that the run stays short)."""
    fill = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from bench.write1m import batches
        from tomato_mqtt.services.recorder.store import BatchStore

        n, d = int(sys.argv[1]), Path(sys.argv[2])
        store = BatchStore(d / "store.sqlite")
        for at in range(0, n, 50_000):
            for seq, raw in enumerate(batches(50_000), start=at // 1000):
                store.add("c", "e1", seq, epoch=1, job=1, task=0, npoints=1000, raw=raw)
        store.close()
        """
    )
    write = textwrap.dedent(
        """
        import resource, sys
        from pathlib import Path
        import netCDF4
        from tomato_mqtt.services.recorder import netcdf
        from tomato_mqtt.services.recorder.store import BatchStore, Raws

        n, d = int(sys.argv[1]), Path(sys.argv[2])
        store = BatchStore(d / "store.sqlite")
        rows = [r for _, r in store.job_rows(1)]
        store.close()
        netcdf._KEEP_PARSED, netcdf._WRITE_BYTES = 2**20, 4 * 2**20
        netcdf.write_job_file(d / "warm.nc", [netcdf.RoleInput("r", "{}", [])], {"x": "y"})
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        role = netcdf.RoleInput("counter", "{}", Raws(d / "store.sqlite", rows, 1))
        netcdf.write_job_file(d / "r.nc", [role], {"x": "y"})
        grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024
        with netCDF4.Dataset(d / "r.nc") as nc:
            assert nc["counter"].dimensions["uts"].size == n
        print(grew)
        """
    )
    grew = {}
    for n in (100_000, 600_000):
        d = tmp_path / str(n)
        d.mkdir()
        for script in (fill, write):
            out = subprocess.run(
                [sys.executable, "-c", script, str(n), str(d)],
                capture_output=True,
                text=True,
                cwd=Path(__file__).parent.parent,
                timeout=300,
            )
            assert out.returncode == 0, out.stderr[-3000:]
        grew[n] = int(out.stdout.split()[-1])
    # the whole job in memory: ~230 bytes a point, 115 MB more for the 500,000 more
    assert grew[600_000] - grew[100_000] < 30, grew


def _deleted_in(folder: Path) -> list[str]:
    """This process's open files under ``folder`` whose names are gone."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(folder)) and target.endswith("(deleted)"):
                out.append(target)
    return out


def test_a_write_that_fills_the_disk_gives_its_space_back(tmp_path: Path) -> None:
    """Fault injection: a result file's write that filled its disk failed, and HDF5 kept
    the file open (its close failed too) after its name was removed: the space it had
    taken stayed taken until the recorder restarted, each failed write more. Its
    descriptors lead to /dev/null now: the space is free at once."""
    from tests.chaos.harness import Unavailable
    from tests.chaos.host_faults import tiny_tmpfs

    try:
        disk = ExitStack()
        out = disk.enter_context(tiny_tmpfs(tmp_path / "out", "1m"))
    except Unavailable as e:
        pytest.skip(str(e))
    with disk:
        # ~1 MB of points with text (HDF5 writes the strings' heap at the close: the
        # close failed, and the file stayed open)
        big = [
            _batch(b, [float(i) for i in range(b * 100, b * 100 + 100)], 0, choice=["red"] * 100)
            for b in range(300)
        ]
        for _ in range(3):
            with pytest.raises(OSError, match="no space left|No space left") as failed:
                write_job_file(out / "big.nc", [RoleInput("r", "{}", big)], {"x": "y"})
            # the space said free is without the file that did not fit ("0 bytes free"
            # was said of a disk with 448 kB free: a check of the fix)
            said = str(failed.value)
            assert "the file did not fit" in said, said
            assert int(said.split("(")[1].split()[0]) > 900_000, said
            assert not list(out.iterdir()), list(out.iterdir())
            # its space is free again, and nothing holds the file
            assert shutil.disk_usage(out).used < 100_000, shutil.disk_usage(out)
            assert _deleted_in(out) == [], _deleted_in(out)
        small = [_batch(0, [1.0, 2.0], 0, val=[1, 2])]
        done = write_job_file(out / "small.nc", [RoleInput("r", "{}", small)], {"x": "y"})
        with xr.open_datatree(done) as tree:
            assert tree["r"].sizes["uts"] == 2
        assert _deleted_in(out) == []
