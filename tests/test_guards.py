"""The services' own checks, without a broker: recorder paths and fetch, scheduler access.

These are the second line behind the broker's ACL (docs/security.md); they must hold on a
broker configured by hand too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tomato_mqtt.config.payloads import parse_payload
from tomato_mqtt.config.settings import load_settings
from tomato_mqtt.config.users import UsersFile, load_users
from tomato_mqtt.model.jobs import Job
from tomato_mqtt.services.recorder.guard import WriteGuard
from tomato_mqtt.services.recorder.netcdf import RoleInput, write_job_file
from tomato_mqtt.services.scheduler.access import Access
from tomato_mqtt.transport import rpc
from tomato_mqtt.transport.rpc import CommandError

JOB = {"id": 7, "submitted_at": "2026-11-30T10:00:00+00:00", "owner": "olga"}


@contextlib.contextmanager
def as_requester(user: str | None) -> Iterator[None]:
    token = rpc._requester.set(user)
    try:
        yield
    finally:
        rpc._requester.reset(token)


def users(tmp: Path) -> Path:
    u = UsersFile(tmp / "users")
    for name, role in (("ada", "admin"), ("olga", "operator"), ("otto", "operator"),
                       ("rita", "reader"), ("tomato-scheduler", "scheduler")):  # fmt: skip
        u.add(name, "pw", role)
    u.save()
    return tmp / "users"


def netcdf(path: Path, job: dict[str, object]) -> None:
    import json

    roles = [RoleInput(role="r", component_json="{}", batches=[])]
    write_job_file(path, roles, {"tomato_version": "x", "tomato_Job": json.dumps(job)})


# -- recorder: where it may write ------------------------------------------------------------
def test_paths_outside_the_roots_and_traversal_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "lab"
    root.mkdir()
    g = WriteGuard([root])
    assert g.check_path(root / "a" / "results.7.nc", JOB) == (root / "a" / "results.7.nc")
    for bad in (
        tmp_path / "elsewhere.nc",
        root / ".." / "escape.nc",
        "/etc/passwd",
        "relative/results.nc",
    ):
        with pytest.raises(CommandError, match="refused"):
            g.check_path(bad, JOB)
    # a symlink inside the root that points outside is resolved first
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(CommandError, match="outside"):
        g.check_path(root / "link" / "x.nc", JOB)


def test_another_job_s_folder_is_refused_as_the_file_is_written(tmp_path: Path) -> None:
    """A hostile tour: a folder of the payload's output path, checked at the submit, was
    swapped for a symlink to another job's folder while the job ran; the recorder wrote
    there under the other job's name (that job then ended `ce`, its file refused) and made
    folders of ids to come (Jobs/999999999999: the next ids jumped after a restart). The
    check is made on the path as it resolves when the file is written."""
    data = tmp_path / "data"
    jobs = data / "Jobs"
    own = jobs / "7"
    (jobs / "8").mkdir(parents=True)
    g = WriteGuard([data, tmp_path / "lab"], jobs_dir=jobs)
    (tmp_path / "lab").mkdir()
    assert g.check_path(own / "results.7.nc", JOB, own) == own / "results.7.nc"
    assert g.check_path(own / "sub" / "r.nc", JOB, own) == own / "sub" / "r.nc"  # its own
    assert g.check_path(tmp_path / "lab" / "r.nc", JOB, own) == tmp_path / "lab" / "r.nc"
    for swapped_to in (jobs / "8", jobs / "999999999999", jobs):
        tw = tmp_path / "lab" / "tw"
        tw.unlink(missing_ok=True)
        tw.symlink_to(swapped_to)
        with pytest.raises(CommandError, match="in another job's folder in the datadir"):
            g.check_path(tw / "results.8.nc", JOB, own)
    with pytest.raises(CommandError, match="another job's folder"):
        g.check_path(jobs / "8" / "x.nc", JOB, own)
    # without its own folder named (the recorder's private snapshots): as before
    assert g.check_path(jobs / "8" / "x.nc", JOB) == jobs / "8" / "x.nc"


def test_the_folder_written_in_is_the_one_checked(tmp_path: Path) -> None:
    """A review: the folder was checked by its path, then the job's batches were read
    (seconds) and the file written by the path again: a folder swapped for a symlink
    into another job's folder meanwhile was followed. The folder is opened once its path
    is checked, its real path checked again, and the file written through it."""
    import os

    data = tmp_path / "data"
    jobs = data / "Jobs"
    own = jobs / "7"
    (jobs / "8").mkdir(parents=True)
    lab = tmp_path / "lab"
    tw = lab / "tw"
    tw.mkdir(parents=True)
    g = WriteGuard([data, lab], jobs_dir=jobs)
    target = g.check_path(tw / "new" / "results.7.nc", JOB, own)  # (its folder: made)
    # swapped after the check, before the folder is opened: refused on its real path
    tw.rename(lab / "was")
    tw.symlink_to(jobs / "8")
    with pytest.raises(CommandError, match="another job's folder"):
        g.open_folder(target.parent, own)
    assert not (jobs / "8" / "new").exists()  # no folder made there either
    # ... nor in the job folders' own folder (an id to come: the next ids jumped)
    coming = g.check_path(lab / "was" / "999999999999" / "results.7.nc", JOB, own)
    (lab / "was").rename(lab / "was2")
    (lab / "was").symlink_to(jobs)
    with pytest.raises(CommandError, match="another job's folder"):
        g.open_folder(coming.parent, own)
    assert not (jobs / "999999999999").exists()
    (lab / "was").unlink()
    (lab / "was2").rename(lab / "was")
    # swapped after it was opened: the file goes into the folder opened, not the link's
    tw.unlink()
    (lab / "was").rename(tw)
    fd = g.open_folder(target.parent, own)
    assert fd is not None
    try:
        tw.rename(lab / "was")
        tw.symlink_to(jobs / "8")
        (Path(f"/proc/self/fd/{fd}") / "results.7.nc").write_bytes(b"x")
    finally:
        os.close(fd)
    assert (lab / "was" / "new" / "results.7.nc").read_bytes() == b"x"
    assert list((jobs / "8").iterdir()) == []


def test_only_an_earlier_version_of_the_same_job_is_overwritten(tmp_path: Path) -> None:
    g = WriteGuard([tmp_path])
    mine = tmp_path / "results.7.nc"
    netcdf(mine, JOB)
    assert g.check_path(mine, JOB) == mine
    # another job's file with the same name, another instance's job 7, not NetCDF at all
    other = tmp_path / "other.nc"
    netcdf(other, {**JOB, "id": 8})
    older = tmp_path / "older.nc"
    netcdf(older, {**JOB, "submitted_at": "2025-01-01T00:00:00+00:00"})
    text = tmp_path / "thesis.nc"
    text.write_text("years of work")
    for p in (other, older, text):
        with pytest.raises(CommandError, match="refused to overwrite"):
            g.check_path(p, JOB)
    assert text.read_text() == "years of work"
    (tmp_path / "dir.nc").mkdir()
    with pytest.raises(CommandError, match="not a file"):
        g.check_path(tmp_path / "dir.nc", JOB)


def test_fetch_only_for_the_owner_an_admin_or_the_scheduler(tmp_path: Path) -> None:
    g = WriteGuard([tmp_path], users(tmp_path))
    for user in ("olga", "ada", "tomato-scheduler", None):
        with as_requester(user):
            g.require_fetch("olga")
    for user in ("otto", "rita", "mallory"):
        with as_requester(user), pytest.raises(CommandError, match="not allowed"):
            g.require_fetch("olga")
    with as_requester("olga"), pytest.raises(CommandError, match="not allowed"):
        g.require_scheduler("finalize")
    with as_requester("tomato-scheduler"):
        g.require_scheduler("finalize")
    # an open stack (no users file): every local client is trusted
    with as_requester("anonymous"):
        WriteGuard([tmp_path]).require_fetch("olga")
    # the owner lowered to reader, or removed: no longer (a review: the owner passed
    # whatever their role; the embedded broker refused the publish first, a hand-made
    # broker's rules may not)
    for role in ("reader", None):
        u = load_users(tmp_path / "users")
        u.remove("olga") if role is None else u.set_role("olga", role)
        u.save()
        g = WriteGuard([tmp_path], tmp_path / "users")
        with as_requester("olga"), pytest.raises(CommandError, match="not allowed"):
            g.require_fetch("olga")


# -- scheduler: roles, ownership, bounds -----------------------------------------------------
def access(tmp: Path, extra: str = "") -> Access:
    users(tmp)
    (tmp / "settings.toml").write_text(f'[broker]\npassword_file = "users"\n{extra}')
    return Access(load_settings(appdir=tmp, datadir=tmp / "d", logdir=tmp / "l"))


def job(owner: str | None) -> Job:
    return Job(id=3, payload={}, submitted_at="now", owner=owner)


def test_roles_and_ownership(tmp_path: Path) -> None:
    a = access(tmp_path)
    with as_requester("rita"):
        a.require("status")
        with pytest.raises(CommandError, match=r"not allowed: user 'rita' \(role reader\)"):
            a.require("job_cancel")
    with as_requester("olga"):
        a.require("job_submit")
        with pytest.raises(CommandError, match="needs the admin role"):
            a.require("stop")
        a.require_job(job("olga"), "cancel")
        for other in ("otto", None):
            with pytest.raises(CommandError, match="only their own jobs"):
                a.require_job(job(other), "cancel")
    with as_requester("ada"):
        a.require("stop")
        a.require_job(job("olga"), "cancel")
    with as_requester("mallory"), pytest.raises(CommandError, match="role none"):
        a.require("status")


def test_open_stack_makes_everyone_admin(tmp_path: Path) -> None:
    s = load_settings(appdir=tmp_path, datadir=tmp_path / "d", logdir=tmp_path / "l")
    with as_requester("anonymous"):
        Access(s).require("stop")


@pytest.mark.parametrize(
    ("dt", "dur", "match"),
    [
        (1e-9, 1e9, r"^payload refused: method\[0\]\.sampling_interval: 1e-09 s is below the"),
        (0.01, 1e6, r"^payload refused: method\[0\]\.max_duration: task #0 would take 1e\+08"),
        (0.0, 1.0, r"^payload refused: method\[0\]\.sampling_interval: must be a finite"),
        (float("nan"), 1.0, r"sampling_interval: must be a finite number of seconds > 0 \(got nan"),
        (0.1, float("inf"), r"max_duration: must be a finite number of seconds >= 0 \(got inf"),
        ("0.1", 1.0, r"sampling_interval: must be a finite number of seconds > 0 \(got '0.1'"),
    ],
)
def test_payload_bounds(tmp_path: Path, dt: object, dur: object, match: str) -> None:
    a = access(tmp_path)
    with pytest.raises(CommandError, match=match):
        a.check_bounds([{"sampling_interval": dt, "max_duration": dur}])


def test_payload_bounds_are_settings(tmp_path: Path) -> None:
    a = access(tmp_path, "[jobs]\nmax_points_per_task = 100\nmin_sampling_interval = 0.5\n")
    a.check_bounds([{"sampling_interval": 0.5, "max_duration": 50}])
    with pytest.raises(CommandError, match="limit of 100"):
        a.check_bounds([{"sampling_interval": 0.5, "max_duration": 51}])


def test_a_payload_of_too_many_tasks_is_refused(tmp_path: Path) -> None:
    """Found by a user: a 200,000-task payload (21 MB) was queued, and every status and
    the cancel carried it (36 s). [jobs] max_tasks bounds it (default 10,000)."""
    task = {"sampling_interval": 1.0, "max_duration": 1.0}
    access(tmp_path).check_bounds([task] * 10_000)
    with pytest.raises(CommandError, match=r"10,001 tasks, more than the 10,000 .*max_tasks"):
        access(tmp_path).check_bounds([task] * 10_001)
    few = access(tmp_path, "[jobs]\nmax_tasks = 3\n")
    few.check_bounds([task] * 3)
    with pytest.raises(CommandError, match="split it into several jobs"):
        few.check_bounds([task] * 4)


@pytest.mark.parametrize(
    ("task", "said"),
    [
        (
            {"time": 1e7, "delay": 0.01},
            r"^payload refused: method\[0\]\.time: task count would take 1e\+09 points "
            r"\(time 1e\+07 s / delay 0\.01 s\)",
        ),
        ({"time": 1.0, "delay": 1e-9}, r"^payload refused: method\[0\]\.delay: 1e-09 s is below"),
        (
            {"time": 1.0, "record_every_dt": 1e-9},
            r"^payload refused: method\[0\]\.record_every_dt: 1e-09 s is below",
        ),
    ],
)
def test_a_bound_names_the_field_as_the_payload_s_version_spells_it(
    tmp_path: Path, task: dict[str, Any], said: str
) -> None:
    """Session 43's open list: the submit limits named a 0.2 payload's ``time`` and
    ``delay`` as ``max_duration`` and ``sampling_interval``, names the user never wrote
    (the limits get the payload upgraded to 2.2; parse_payload's own checks did not)."""
    doc = {
        "version": "0.2",
        "sample": {"name": "s"},
        "method": [{"device": "counter", "technique": "count", **task}],
    }
    method = parse_payload(doc).model_dump(mode="json")["method"]
    with pytest.raises(CommandError, match=said):
        access(tmp_path).check_bounds(method, written=doc)
