"""The scheduler's sqlite state: round trips, durability, ids, the job life cycle."""

from __future__ import annotations

import datetime
import itertools
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.conftest import RunningBroker
from tomato_mqtt.model.jobs import (
    BATCH_ID_LEAD,
    STATUS_CODES,
    Job,
    PipelineState,
    check_transition,
)
from tomato_mqtt.services.scheduler.store import StateStore, StoreTaken

PAYLOAD = {
    "version": "2.2",
    "sample": {"identifier": "s1"},
    "user": {"identifier": "u"},
    "method": [
        {
            "component_role": "counter",
            "technique_name": "count",
            "max_duration": 1.0,
            "sampling_interval": 0.1,
            "task_params": {"param": "2 s", "nested": [1, {"a": None}]},
        }
    ],
}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    s = StateStore(tmp_path / "state.sqlite")
    yield s
    s.close()


def test_job_round_trip(store: StateStore, tmp_path: Path) -> None:
    job = store.add_job(PAYLOAD, "my job", str(tmp_path))
    assert job == store.job(job.id)
    assert (job.id, job.status, job.jobname, job.payload) == (1, "q", "my job", PAYLOAD)
    assert job.submit_dir == str(tmp_path)
    assert job.progress == {} and job.pipeline is None and job.reason is None
    submitted = datetime.datetime.fromisoformat(job.submitted_at)
    assert submitted.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(datetime.timezone.utc) - submitted).total_seconds()) < 60

    updated = store.update_job(
        job.id,
        status="r",
        pipeline="pip-1",
        launched_at="2024-01-01T00:00:00+00:00",
        progress={"roles": {"counter": "c:(a,1)"}, "tasks": {"0": {"state": "running"}}},
        respath="/x/results.1.nc",
    )
    assert updated == store.job(job.id)
    assert updated.status == "r" and updated.pipeline == "pip-1"
    assert updated.progress["tasks"]["0"]["state"] == "running"
    assert updated.payload == PAYLOAD  # untouched fields stay


def test_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    with StateStore(path) as s:
        s.sync_pipelines(["a", "b"])
        s.update_pipeline("a", sampleid="s1", ready=True)
        job = s.add_job(PAYLOAD, "j", None)
        s.update_job(job.id, status="qw", reason=None)
    with StateStore(path) as s:
        assert s.pipeline("a") == PipelineState(name="a", sampleid="s1", ready=True, jobid=None)
        assert s.job(1).status == "qw"
        assert s.job(1).payload == PAYLOAD


def test_a_scheduler_that_held_the_file_before_writes_nothing_more(tmp_path: Path) -> None:
    """A randomized fault run: a scheduler frozen (SIGSTOP) while its supervisor was
    killed and the stack started again went on when it resumed, and wrote the progress it
    held over a job its successor had ended (a task "running" again, its end and points
    gone). The scheduler that started last holds the file: the earlier one's writes are
    refused, it is told once, and what the holder wrote stays."""
    path = tmp_path / "state.sqlite"
    told: list[str] = []
    with StateStore(path) as old, StateStore(path) as new:
        old.hold()
        old.on_taken = lambda: told.append("taken")
        job = old.add_job(PAYLOAD, "j", None)
        old.update_job(job.id, status="r", progress={"tasks": {"0": {"state": "running"}}})
        new.hold()  # the stack started again
        ended = {"tasks": {"0": {"state": "ended", "end": {"npoints": 10}}}}
        new.update_job(job.id, status="ce", reason="node restarted", progress=ended)
        for _ in range(2):
            with pytest.raises(StoreTaken, match="held by another scheduler now"):
                old.update_job(job.id, progress={"tasks": {"0": {"state": "running"}}})
        with pytest.raises(StoreTaken, match="held by another scheduler now"):
            old.update_progress(job.id, {"tasks": {"0": {"state": "running"}}})  # the runner's
        assert told == ["taken"]  # once
        assert new.job(job.id).progress == ended and new.job(job.id).status == "ce"
        assert old.job(job.id).progress == ended  # it still reads
    with StateStore(path) as reopened:  # a store that does not hold: as before
        reopened.update_job(job.id, reason="kept")
        assert reopened.job(job.id).reason == "kept"


async def test_a_scheduler_whose_state_file_another_holds_stops(
    broker: RunningBroker, tmp_path: Path, instance: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The same with a running scheduler: once another holds its state file, its next
    write (a job's progress: as its teardown stores them) is not made, it says why and
    stops."""
    from tests.inproc import inproc_stack

    async with inproc_stack(broker.port, tmp_path, instance) as st:
        with StateStore(st.settings.state_db) as successor:
            successor.hold()
            job = successor.add_job(PAYLOAD, "j", None)
            st.scheduler.save_progress(job.id, {"tasks": {"0": {"state": "running"}}})
            assert successor.job(job.id).progress == {}
        assert await st.scheduler.wait_stopped(5)
    assert "another scheduler holds the state file" in caplog.text


def test_concurrent_open_after_a_crash_sees_every_commit(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    first = StateStore(path)
    first.sync_pipelines(["a"])
    first.add_job(PAYLOAD, "j1", None)
    first.update_pipeline("a", sampleid="x")
    # the first connection is never closed: as after a crash of its process
    second = StateStore(path)
    assert [j.jobname for j in second.jobs()] == ["j1"]
    assert second.pipeline("a").sampleid == "x"
    second.add_job(PAYLOAD, "j2", None)
    assert [j.id for j in first.jobs()] == [1, 2]  # and each sees the other's commits
    second.close()
    first.close()


def test_kill_9_keeps_every_committed_change(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    code = (
        "import os, signal\n"
        "from pathlib import Path\n"
        "from tomato_mqtt.services.scheduler.store import StateStore\n"
        f"s = StateStore(Path({str(path)!r}))\n"
        "s.sync_pipelines(['p'])\n"
        "for i in range(5):\n"
        "    j = s.add_job({'n': i}, f'job{i}', None)\n"
        "s.update_job(1, status='r', pipeline='p')\n"
        "s.update_pipeline('p', jobid=1, ready=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert res.returncode == -9, res.stderr
    with StateStore(path) as s:
        assert [j.payload["n"] for j in s.jobs()] == [0, 1, 2, 3, 4]
        assert s.job(1).status == "r" and s.job(1).pipeline == "p"
        assert s.pipeline("p").jobid == 1 and s.pipeline("p").ready


def test_wal_mode(store: StateStore) -> None:
    db = sqlite3.connect(store.path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


def test_ids_count_up_and_are_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    with StateStore(path) as s:
        assert [s.add_job(PAYLOAD, None, None).id for _ in range(3)] == [1, 2, 3]
    # someone prunes the newest job by hand: its id must still not come back
    db = sqlite3.connect(path)
    with db:
        db.execute("DELETE FROM jobs WHERE id = 3")
    db.close()
    with StateStore(path) as s:
        assert s.add_job(PAYLOAD, None, None).id == 4
        with pytest.raises(KeyError) as ei:
            s.job(3)
        assert str(ei.value) == "no job with id 3"


def test_unknown_names(store: StateStore) -> None:
    with pytest.raises(KeyError) as ei:
        store.job(7)
    assert str(ei.value) == "no job with id 7"
    with pytest.raises(KeyError) as ei:
        store.pipeline("pip-x")
    assert str(ei.value) == "no pipeline named 'pip-x'"
    with pytest.raises(KeyError):
        store.update_pipeline("pip-x", ready=True)
    with pytest.raises(KeyError):
        store.update_job(7, reason="x")
    with pytest.raises(KeyError):
        store.update_progress(7, {})


def test_a_runner_s_progress_is_stored_alone(store: StateStore) -> None:
    """The runner's frequent save writes the progress column and nothing else: the rest
    of the job reads back as it was."""
    job = store.add_job(PAYLOAD, "j", None)
    store.update_job(job.id, status="r", pipeline="pip-a")
    before = store.job(job.id)
    progress = {"tasks": {"0": {"state": "running", "epoch": 3}}, "warnings": ["w"]}
    store.update_progress(job.id, progress)
    after = store.job(job.id)
    assert after.progress == progress
    assert after.model_dump(exclude={"progress"}) == before.model_dump(exclude={"progress"})


def test_sync_pipelines(store: StateStore) -> None:
    store.sync_pipelines(["b", "a", "c"])
    assert [p.name for p in store.pipelines()] == ["b", "a", "c"]  # devices-file order
    assert all(p == PipelineState(name=p.name) for p in store.pipelines())
    store.update_pipeline("a", sampleid="s", ready=True)
    store.update_pipeline("c", sampleid="t", jobid=5)
    store.sync_pipelines(["a", "d"])  # b and c vanish; c runs a job
    assert [p.name for p in store.pipelines()] == ["a", "d", "c"]
    assert store.pipeline("a") == PipelineState(name="a", sampleid="s", ready=True)
    assert store.pipeline("d") == PipelineState(name="d")
    assert store.pipeline("c").jobid == 5  # kept while its job runs
    store.update_pipeline("c", jobid=None)
    # kept for its sample (a devices file cut short removed them all at a start, their
    # samples with them: a fault-injection run), and said
    assert store.sync_pipelines(["a", "d"]) == [PipelineState(name="c", sampleid="t")]
    store.update_pipeline("c", sampleid=None)
    assert store.sync_pipelines(["a", "d"]) == []
    assert [p.name for p in store.pipelines()] == ["a", "d"]


def test_update_pipeline_checks_fields(store: StateStore) -> None:
    store.sync_pipelines(["a"])
    with pytest.raises(ValueError, match="unknown pipeline field"):
        store.update_pipeline("a", colour="red")
    with pytest.raises(ValidationError):
        store.update_pipeline("a", jobid="not a number")
    assert store.pipeline("a") == PipelineState(name="a")
    p = store.update_pipeline("a", sampleid="s", ready=True)
    assert p == store.pipeline("a") == PipelineState(name="a", sampleid="s", ready=True)
    assert store.update_pipeline("a", sampleid=None, ready=False) == PipelineState(name="a")


ALLOWED = {
    ("q", "qw"),
    ("q", "r"),
    ("qw", "r"),
    ("q", "cd"),
    ("qw", "cd"),
    ("qw", "q"),
    ("r", "rd"),
    ("r", "c"),
    ("r", "ce"),
    ("r", "cd"),
    ("rd", "cd"),
    ("rd", "c"),
    ("rd", "ce"),
}


@pytest.mark.parametrize(("old", "new"), list(itertools.product(STATUS_CODES, STATUS_CODES)))
def test_check_transition(old: str, new: str) -> None:
    if (old, new) in ALLOWED:
        check_transition(old, new)
    else:
        with pytest.raises(ValueError, match=f"from '{old}' to '{new}'"):
            check_transition(old, new)


def test_only_a_restored_state_file_ends_a_queued_job_ce() -> None:
    """q/qw -> ce is no transition of a running stack (a review: allowing it for every
    caller let any path end a queued job ce unchecked): only the start of a restored
    state file makes it, of a job that ran already."""
    for old in ("q", "qw"):
        with pytest.raises(ValueError, match=f"from '{old}' to 'ce'"):
            check_transition(old, "ce")
        check_transition(old, "ce", restored=True)
    with pytest.raises(ValueError, match="from 'r' to 'q'"):
        check_transition("r", "q", restored=True)


def test_check_transition_unknown_status() -> None:
    with pytest.raises(ValueError, match="unknown job status 'x'"):
        check_transition("q", "x")


def test_update_job_enforces_transitions(store: StateStore) -> None:
    job = store.add_job(PAYLOAD, None, None)
    with pytest.raises(ValueError, match="cannot go from 'q' to 'c'"):
        store.update_job(job.id, status="c", reason="nope")
    assert store.job(job.id) == job  # nothing of the refused change was written
    store.update_job(job.id, status="q", reason="no pipeline yet")  # same status: no change
    for status in ("qw", "r", "rd", "cd"):
        store.update_job(job.id, status=status)
    assert store.job(job.id).status == "cd"
    with pytest.raises(ValueError, match="the job has ended"):
        store.update_job(job.id, status="r")


def test_update_job_checks_fields(store: StateStore) -> None:
    job = store.add_job(PAYLOAD, None, None)
    with pytest.raises(ValueError, match="cannot update job field"):
        store.update_job(job.id, id=9)
    with pytest.raises(ValueError, match="cannot update job field"):
        store.update_job(job.id, colour="red")
    with pytest.raises(ValueError, match="unknown job status 'x'"):
        store.update_job(job.id, status="x")
    with pytest.raises(ValidationError):
        store.update_job(job.id, progress="not a dict")
    assert store.job(job.id) == job


def test_jobs_selection(store: StateStore) -> None:
    for i in range(5):
        store.add_job(PAYLOAD, f"j{i}", None)
    store.update_job(2, status="qw")
    store.update_job(3, status="r")
    store.update_job(4, status="cd")
    assert [j.id for j in store.jobs()] == [1, 2, 3, 4, 5]
    assert [j.id for j in store.jobs(statuses=["q", "qw"])] == [1, 2, 5]
    assert [j.id for j in store.jobs(ids=[5, 3, 99])] == [3, 5]
    assert [j.id for j in store.jobs(ids=[1, 2, 3], statuses=["r", "q"])] == [1, 3]
    assert store.jobs(ids=[]) == [] and store.jobs(statuses=[]) == []
    assert all(isinstance(j, Job) for j in store.jobs(ids=iter([1, 2])))


def test_search(store: StateStore) -> None:
    names = ["counter run", "Counter 2", "other", None, "100%_done", "counter old"]
    for n in names:
        store.add_job(PAYLOAD, n, None)
    store.update_job(6, status="cd")
    assert [j.id for j in store.search("counter")] == [1, 2]  # like tomato: any case
    assert [j.id for j in store.search("counter", complete=True)] == [1, 2, 6]
    assert [j.id for j in store.search("%_")] == [5]  # wildcards are literal
    assert [j.id for j in store.search("0%")] == [5]
    assert store.search("nothing") == []
    assert [j.id for j in store.search("")] == [1, 2, 3, 5]  # every named, unfinished job


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(RuntimeError, match="newer tomato-mqtt"):
        StateStore(path)
    from tests.test_store import _open_here

    assert _open_here(path) == []  # refused, and not left open


def test_a_transaction_commits_its_writes_once_and_whole(tmp_path: Path) -> None:
    """What one decision changes (a launch: the job and its pipeline) is one commit, one
    fsync; a write that fails inside it takes the others back with it."""
    store = StateStore(tmp_path / "state.sqlite")
    store.sync_pipelines(["pip-1"])
    job = store.add_job(PAYLOAD, None, None)
    commits: list[str] = []
    store._db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    writes = store.writes
    with store.transaction():
        store.update_job(job.id, status="r", pipeline="pip-1")
        store.update_pipeline("pip-1", jobid=job.id)
    assert commits == ["COMMIT"]
    assert store.writes == writes + 2  # each write still counts (scheduling passes)
    other = StateStore(tmp_path / "state.sqlite")  # a restarted scheduler sees both
    assert (other.job(job.id).status, other.pipeline("pip-1").jobid) == ("r", job.id)

    second = store.add_job(PAYLOAD, None, None)
    with pytest.raises(ValueError), store.transaction():
        store.update_pipeline("pip-1", jobid=None)
        store.update_job(second.id, status="c")  # q -> c: not a valid transition
    assert other.pipeline("pip-1").jobid == job.id  # the first write was taken back
    with pytest.raises(KeyError), store.transaction():
        store.update_pipeline("pip-1", jobid=None)
        with store.transaction():
            store.update_job(second.id, reason="inner")
        store.pipeline("no-such-pipeline")
    assert other.pipeline("pip-1").jobid == job.id and other.job(second.id).reason is None
    other.close()
    store.close()


def test_ids_continue_after_those_the_recorder_and_job_folders_know(tmp_path: Path) -> None:
    """A state file removed, emptied or restored from a backup started its ids again
    below ids already used; found by fault injection: the recorder then merged the new
    job 1's points into the old job 1's finished file as late data."""
    from tomato_mqtt.services.recorder.store import BatchStore
    from tomato_mqtt.services.scheduler.store import highest_job_elsewhere

    rec, jobs = tmp_path / "recorder.sqlite", tmp_path / "Jobs"
    assert highest_job_elsewhere(rec, jobs) == (0, "")  # nothing anywhere: a fresh lab
    bs = BatchStore(rec)
    bs.add("c", "s1", 0, epoch=1, job=7, task=0, npoints=1, raw=b'{"seq": 0}')
    bs.close()
    (jobs / "9").mkdir(parents=True)
    (jobs / "notes").mkdir()
    assert highest_job_elsewhere(rec, jobs) == (9, f"the job folder {jobs / '9'}")
    # a datadir tomato 2.2 used (a lab moving over): named so, not taken for a lost
    # state file (a side-by-side tour: the log asked whether it had been lost)
    (jobs / "9" / "jobdata.json").write_text("{}")
    assert highest_job_elsewhere(rec, jobs) == (9, f"tomato 2.2's job folder {jobs / '9'}")
    (jobs / "9" / "jobdata.json").unlink()
    (jobs / "9").rmdir()
    assert highest_job_elsewhere(rec, jobs) == (7, f"the recorder's store {rec}")
    # a batch a node's login forged, naming a job far past any file: not counted (only
    # BATCH_ID_LEAD past the files, none here), as the recorder's status counts it
    bs = BatchStore(rec)
    bs.add("c", "s1", 1, epoch=1, job=999_999_999_998, task=0, npoints=1, raw=b'{"seq": 1}')
    bs.add("c", "s1", 2, epoch=1, job=BATCH_ID_LEAD + 1, task=0, npoints=1, raw=b'{"seq": 2}')
    bs.close()
    assert highest_job_elsewhere(rec, jobs) == (7, f"the recorder's store {rec}")

    store = StateStore(tmp_path / "state.sqlite")  # a fresh state file
    assert store.continue_ids_after(7) is True
    assert store.add_job(PAYLOAD, None, None).id == 8
    assert store.continue_ids_after(7) is False  # already beyond: nothing moves
    assert store.add_job(PAYLOAD, None, None).id == 9
    store.close()
    restored = StateStore(tmp_path / "state.sqlite")
    assert restored.continue_ids_after(20) is True
    assert restored.add_job(PAYLOAD, None, None).id == 21
    restored.close()

    (tmp_path / "bad.sqlite").write_bytes(b"not a database" * 100)  # unreadable: ignored
    # found by a review: a huge folder name stopped the scheduler (OverflowError)
    (jobs / "99999999999999999999").mkdir()
    (jobs / str(2**63 - 1)).mkdir()
    assert highest_job_elsewhere(tmp_path / "bad.sqlite", jobs) == (0, "")
    assert highest_job_elsewhere(tmp_path / "bad.sqlite", tmp_path / "none") == (0, "")


def test_search_ignores_case_beyond_ascii(store: StateStore) -> None:
    """Found by a user: SQLite's LIKE folds ASCII letters only, so 'ESSAI-É' did not
    find 'essai-é' (docs/cli.md: the search ignores case)."""
    for n in ["essai-é", "Straße 1", "plain", None]:
        store.add_job(PAYLOAD, n, None)
    assert [j.id for j in store.search("ESSAI-É")] == [1]
    assert [j.id for j in store.search("É")] == [1]
    assert [j.id for j in store.search("STRASSE")] == []  # an ASCII name: LIKE, where ß is not ss
    assert [j.id for j in store.search("STRAẞE")] == [2]
    assert [j.id for j in store.search("essai")] == [1]  # ASCII: SQLite's own LIKE


async def test_a_job_s_end_and_its_pipeline_s_release_are_one_commit(
    broker: RunningBroker, tmp_path: Path, instance: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A randomized fault run: a job's end and its pipeline's release were two commits, and
    a scheduler killed between them left the pipeline held by an ended job for good
    (`tomato pipeline ready/eject` refused "job 1 is running", the next job stayed qw).
    Here the release is refused once (as by a full disk): the job's end must not be
    stored without it; both are stored once the retry goes through."""

    from tests.inproc import inproc_stack

    async with inproc_stack(broker.port, tmp_path, instance) as st:
        store = st.scheduler.store
        assert store is not None
        seen: list[tuple[str, int | None]] = []
        release = store.update_pipeline

        def refused_once(name: str, **fields: object) -> object:
            if fields.get("jobid", 0) is None and not seen:
                # what a restart would read (committed only: WAL, another connection)
                db = sqlite3.connect(f"file:{st.settings.state_db}?mode=ro", uri=True)
                try:
                    (status,) = db.execute("SELECT status FROM jobs WHERE id = 1").fetchone()
                    (held,) = db.execute(
                        "SELECT jobid FROM pipelines WHERE name = ?", (name,)
                    ).fetchone()
                finally:
                    db.close()
                seen.append((status, held))
                raise sqlite3.OperationalError("database or disk is full")
            return release(name, **fields)  # type: ignore[arg-type]

        monkeypatch.setattr(store, "update_pipeline", refused_once)
        job = await st.submit_counter("pip-counter-1", 0.5, 0.1, tmp_path)
        done = await st.wait_job(job.id, {"c", "ce", "cd"}, timeout=30)
        assert done.status == "c", done.reason
        # when the release was refused, the end was not stored without it
        assert seen == [("r", job.id)], seen
        assert store.pipeline("pip-counter-1").jobid is None


@pytest.mark.parametrize("host_root", [True, False])
def test_room_on_the_disk_counts_the_blocks_this_user_may_write(
    store: StateStore, monkeypatch: pytest.MonkeyPatch, host_root: bool
) -> None:
    """A review: on ext4 the host's root writes into the 5 % the filesystem reserves;
    counting only the blocks others may use kept `storage_error` set while a scheduler run
    as root wrote fine; root in a user namespace (a rootless container) may not, and
    counting the reserve there made the fault come and go. The disk's own numbers are
    replaced here: 8 MiB free, none of it available to other users (a real reserve needs a
    real ext4 filesystem)."""
    import os

    from tomato_mqtt import errors

    real = os.statvfs(store.path.parent)
    fields = dict(zip(os.statvfs_result.__match_args__, real, strict=False))
    full_for_users = {**fields, "f_bavail": 0, "f_bfree": (8 << 20) // real.f_frsize}
    monkeypatch.setattr(os, "statvfs", lambda _p: os.statvfs_result(full_for_users.values()))
    monkeypatch.setattr(errors, "_host_root", lambda: host_root)
    assert store._has_room() is host_root


def test_root_of_a_user_namespace_is_not_the_host_s_root() -> None:
    """Root of a user namespace (`unshare -r`, as a rootless container) may not write into
    the reserve: it is told from the host's root by its uid map."""
    import os
    import shutil

    from tomato_mqtt import errors

    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("setpriv")):
        pytest.skip("needs root, unshare(1) and setpriv(1)")
    probe = "from tomato_mqtt import errors; print(errors._host_root())"
    host = Path("/proc/self/uid_map").read_text().split()[:2] == ["0", "0"]
    assert errors._host_root() is host
    # uid 65534 of this namespace becomes root of a new one (as a rootless container)
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    inner = subprocess.run(
        [*nobody, "unshare", "--user", "--map-root-user", sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if inner.returncode != 0:
        pytest.skip(f"no user namespace here: {inner.stderr.strip()[:200]}")
    assert inner.stdout.strip() == "False", inner


def test_a_reason_in_memory_stays_when_the_write_holding_it_is_rolled_back(
    store: StateStore,
) -> None:
    """A reason given while the file took no writes stays in memory until a write of the
    job is stored: a savepoint rolled back inside a transaction that then commits did not
    store it (a review: it was dropped all the same)."""
    import contextlib

    job = store.add_job({"method": []}, "a", "/tmp").id
    store._reasons[job] = "said while the file took no writes"  # (as set_reason keeps it)
    with store.transaction(), contextlib.suppress(RuntimeError), store._write():
        store.update_job(job, status="r")
        raise RuntimeError("a later step of the same decision failed")
    assert store.job(job).status == "q"
    assert store.job(job).reason == "said while the file took no writes"
    with store.transaction():
        store.update_job(job, status="r")
    assert store.job(job).reason == "said while the file took no writes"  # now stored
    assert job not in store._reasons


def test_a_state_file_on_a_read_only_disk_is_said_so(tmp_path: Path) -> None:
    """A fault run: a datadir remounted read-only by a disk error gave SQLite's "disk I/O
    error" and the advice to free space or fix permissions; the words "read-only" never
    appeared. A read-only tmpfs (root and mount(8); skipped, saying why, without)."""
    from tests.chaos.harness import Unavailable
    from tests.chaos.host_faults import tiny_tmpfs
    from tomato_mqtt.config.statefiles import what_to_do

    ro = tmp_path / "ro"
    try:
        with tiny_tmpfs(ro, "1m"):
            subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True, timeout=10)
            said = what_to_do("state", ro / "state.sqlite", "disk I/O error", "it goes on")
    except Unavailable as e:
        pytest.skip(str(e))
    assert "its disk is read-only now" in said and "free space" not in said, said
    assert "free space" in what_to_do("state", tmp_path / "s.sqlite", "disk I/O error")


def test_writes_while_another_program_holds_the_lock_do_not_each_wait(tmp_path: Path) -> None:
    """A review of the lock timeouts: each write refused by another program's lock still
    waited LOCK_WAIT on the scheduler's loop; its runners retry their progress every
    SAVE_RETRY s, so from four running jobs on the loop did nothing but wait (heartbeats,
    answers, node statuses read seconds late). Once said locked, a write is refused at
    once; the first after the lock is let go goes through, and waits again after that."""
    import time

    from tests.test_reliability_inproc import _locked_by_another_program
    from tomato_mqtt.services.scheduler.store import LOCK_WAIT

    path = tmp_path / "state.sqlite"
    store = StateStore(path)
    ids = [store.add_job(PAYLOAD, f"j{i}", str(tmp_path)).id for i in range(8)]
    with _locked_by_another_program(path):
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            store.update_progress(ids[0], {"n": 1})  # waits LOCK_WAIT, then said
        assert store.write_error is not None
        t0 = time.monotonic()
        for i in ids:
            with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                store.update_progress(i, {"n": 2})
        took = time.monotonic() - t0
        assert took < LOCK_WAIT, took
    store.update_progress(ids[0], {"n": 3})  # let go: taken at once
    assert store.write_error is None and store.job(ids[0]).progress == {"n": 3}
    with _locked_by_another_program(path):
        t0 = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            store.update_progress(ids[0], {"n": 4})
        assert time.monotonic() - t0 >= LOCK_WAIT * 0.8  # waits again (a short write)
    store.close()
