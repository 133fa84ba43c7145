"""`ketchup snapshot` on a full datadir: a real stack, a real tmpfs datadir really
filled while a job runs (root and mount(8), as the chaos suite's `store-full`; skipped,
saying why, without). A fault run: the snapshot failed "no space left in …/Jobs/1",
though the user's own folder, where it goes, had room."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest
import yaml

from tests.stack import CONFIG, make_stack, started


def test_a_snapshot_on_a_full_datadir_is_made_for_its_transfer_only(tmp_path: Path) -> None:
    from tests.chaos.harness import Unavailable
    from tests.chaos.host_faults import _fill, tiny_tmpfs
    from tests.ncread import load_tree

    st = make_stack(tmp_path)
    scratch = tmp_path / "tmp"  # the services' temporary folder (TMPDIR): this test's own
    scratch.mkdir()
    st.env["TMPDIR"] = str(scratch)
    payload = yaml.safe_load((CONFIG / "counter_v2.2.yml").read_text())
    payload["method"][0].update(max_duration=60, sampling_interval=0.1)
    job_file = st.workdir / "long.yml"
    job_file.write_text(yaml.safe_dump(payload))
    with contextlib.ExitStack() as es:
        try:
            es.enter_context(tiny_tmpfs(st.datadir, "24m"))
        except Unavailable as e:
            pytest.skip(str(e))
        es.enter_context(started(st))
        st.load_ready("pip-counter-1", "counter_1_0.1")
        jobid = st.submit(job_file)
        st.wait_job(jobid, {"r"}, timeout=20)
        time.sleep(1.5)
        filler = _fill(st.datadir)
        try:
            res = st.run("ketchup", "snapshot", str(jobid), timeout=60)
            assert res.returncode == 0, (res.stdout, res.stderr)
            said = res.stdout + res.stderr
            assert "for this transfer only" in said and "could not be written" in said, said
            snap = st.workdir / f"snapshot.{jobid}.nc"
            assert load_tree(snap)["counter"].sizes["uts"] > 0
            # made for the transfer only: gone once fetched, and not the job's snappath
            private = scratch / f"tomato-mqtt-{__import__('os').getuid()}"
            assert not list(private.glob("snapshot.*")), list(private.iterdir())
            job = st.job(jobid)
            assert not str(job.get("snappath") or "").startswith(str(scratch)), job
        finally:
            filler.unlink()
        st.run("ketchup", "cancel", str(jobid), check=True)
        assert st.wait_job(jobid, {"c", "ce", "cd"}, timeout=60)["status"] == "cd"


def test_snapshots_left_for_a_transfer_that_never_ended_go_at_the_recorder_s_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot made for its transfer only is removed once fetched; one whose client
    went away (or whose recorder was restarted) would stay in the temporary folder for
    good: the recorder's start removes those older than 10 minutes (a younger one may be
    another stack's of this user, being fetched)."""
    import os
    import tempfile

    from tomato_mqtt.services.recorder.files import Files
    from tomato_mqtt.services.scratch import private_dir

    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    folder = private_dir()
    assert folder is not None
    old, young, other = (folder / n for n in ("snapshot.1.ab.nc", "snapshot.2.cd.nc", "x.nc"))
    for p in (old, young, other):
        p.write_bytes(b"CDF")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    os.utime(other, (time.time() - 3600, time.time() - 3600))
    Files.sweep_temporary()
    assert not old.exists() and young.exists() and other.exists()
