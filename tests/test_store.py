"""The recorder's batch store and the node's spool: durable, de-duplicating, gap-aware."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tomato_mqtt.services.node.spool import Spool
from tomato_mqtt.services.recorder.store import BatchStore


def _raw(seq: int, n: int = 2) -> bytes:
    return json.dumps({"seq": seq, "uts": list(range(n))}).encode()


def _add(st: BatchStore, stream: str, seq: int, job: int | None, n: int, raw: bytes) -> str:
    return st.add("c", stream, seq, epoch=1, job=job, task=0, npoints=n, raw=raw)


def test_store_drops_duplicates_and_tracks_high_water(tmp_path: Path) -> None:
    st = BatchStore(tmp_path / "r.sqlite")
    assert st.high_water("c", "s1") == -1
    assert _add(st, "s1", 0, 7, 2, _raw(0)) == "new"
    assert _add(st, "s1", 0, 7, 2, _raw(0)) == "duplicate"  # QoS 1 may deliver twice
    assert _add(st, "s1", 1, 7, 2, _raw(1)) == "new"
    assert st.high_water("c", "s1") == 1
    assert st.job_points(7) == {"c": 4}
    assert st.task_points(7) == {("c", 0): 4}
    st.close()


def test_same_identity_other_content_is_a_conflict_never_dropped_silently(
    tmp_path: Path,
) -> None:
    st = BatchStore(tmp_path / "r.sqlite")
    assert _add(st, "s1", 0, 7, 2, _raw(0)) == "new"
    # a second job's batch that (by a bug) reuses the identity: kept out, but recorded
    assert _add(st, "s1", 0, 8, 3, _raw(0, 3)) == "conflict"
    assert st.conflicts(8, ["c"]) == ["c stream s1 seq 0"]
    assert st.conflicts(7, ["c"]) == ["c stream s1 seq 0"]
    assert st.job_points(7) == {"c": 2} and st.job_points(8) == {}
    # a new stream of the same component (re-registered): seq 0 again is a new batch
    assert _add(st, "s2", 0, 8, 3, _raw(0, 3)) == "new"
    assert st.job_points(8) == {"c": 3}
    st.close()


def test_old_store_is_migrated_to_streams(tmp_path: Path) -> None:
    import sqlite3

    db = sqlite3.connect(tmp_path / "r.sqlite")
    db.executescript(
        "CREATE TABLE batches (component TEXT, epoch INTEGER, seq INTEGER, job INTEGER, "
        "task INTEGER, npoints INTEGER, raw BLOB, PRIMARY KEY (component, epoch, seq));"
        "INSERT INTO batches VALUES ('c', 5, 0, 1, 0, 2, X'7B7D');"
    )
    db.commit()
    db.close()
    st = BatchStore(tmp_path / "r.sqlite")
    assert st.high_water("c", "e5") == 0 and st.job_points(1) == {"c": 2}
    st.close()


def test_a_released_job_s_batches_go_and_its_streams_show_no_gap_after_a_restart(
    tmp_path: Path,
) -> None:
    """Found by a soak run: the store kept every batch for good (~117 bytes a point).
    A job whose file was written long ago is released: its batches go, its streams'
    high water stays (a restarted recorder asked nodes for the released batches as
    gaps otherwise), the other jobs' batches stay."""
    import time

    db = tmp_path / "r.sqlite"
    st = BatchStore(db)
    for seq in range(3):
        _add(st, "s1", seq, 1, 2, _raw(seq))
    _add(st, "s1", 4, 1, 2, _raw(4))  # seq 3 never came: a gap of job 1
    for seq in range(5, 8):
        _add(st, "s1", seq, 2, 2, _raw(seq))
    st.set_final(1, {"path": "x.nc", "written": "x.nc"})
    assert st.releasable(time.time() - 60) == []  # written just now
    assert st.releasable(time.time() + 1) == [1]
    assert st.release(1) == 4 and st.released(1) and not st.released(2)
    assert st.job_points(1) == {} and st.job_points(2) == {"c": 6}
    assert st.high_water("c", "s1") == 7 and st.missing("c", "s1", 7) == []
    assert st.releasable(time.time() + 1) == []
    st.close()
    again = BatchStore(db)  # a restarted recorder
    assert again.high_water("c", "s1") == 7 and again.missing("c", "s1", 7) == []
    assert again.released(1) and len(again.job_batches(2)) == 3
    _add(again, "s1", 8, 2, 2, _raw(8))
    assert again.high_water("c", "s1") == 8
    again.close()


def test_a_job_whose_file_was_not_written_keeps_its_batches_for_good(tmp_path: Path) -> None:
    """A review: a job that ended while the output disk was full had no file, yet its
    final was stamped as written before the write was tried, and its batches, the only
    copy of its points, were deleted keep_days later. A job is released only once its
    file is written; a store of the older version (stamped, no file) keeps them too."""
    import json
    import sqlite3
    import time

    db = tmp_path / "r.sqlite"
    st = BatchStore(db)
    for job in (1, 2, 3):
        _add(st, f"s{job}", 0, job, 2, _raw(0))
    st.set_final(1, {"path": "a.nc"})  # remembered before its write, which failed
    st.set_final(2, {"path": "b.nc"})
    st.set_final(2, {"path": "b.nc", "written": "b.nc"})  # written (a retry)
    st.set_final(3, {"path": "c.nc", "written": "c.nc"})
    st.set_final(3, {"path": "c.nc"})  # finalized again, not (yet) written: kept for now
    assert st.releasable(time.time() + 1) == [2]
    st.set_final(3, {"path": "c.nc", "written": "c.nc"})
    assert st.releasable(time.time() + 1) == [2, 3]
    st.close()
    old = sqlite3.connect(db)  # what the older version stored for job 1
    old.execute("UPDATE finals SET written_at = ? WHERE job = 1", (time.time() - 100,))
    old.commit()
    old.close()
    again = BatchStore(db)
    assert again.releasable(time.time() + 1) == [2, 3]
    assert json.loads(again._db.execute("SELECT args FROM finals WHERE job = 1").fetchone()[0])
    assert again.job_points(1) == {"c": 2}
    again.close()


def test_idle_measurements_go_keep_days_after_they_were_stored(tmp_path: Path) -> None:
    """Batches measured between jobs (a driver's idle_measurement_interval: no job, no
    file, read by nothing) were kept for good, and each one's seq read into memory at
    every start. They go as a job's batches do, keep_days after they were stored; the
    jobs' batches stay, and the stream shows no gap after a restart."""
    import sqlite3
    import time

    db = tmp_path / "r.sqlite"
    st = BatchStore(db)
    for seq in range(3):
        _add(st, "s1", seq, None, 2, _raw(seq))  # idle
    for seq in range(3, 5):
        _add(st, "s1", seq, 9, 2, _raw(seq))  # job 9, not finished
    _add(st, "s1", 5, None, 2, _raw(5))  # idle again
    assert st.release_idle(time.time() - 60) == 0  # stored just now
    assert st.release_idle(time.time() + 1) == 4
    assert st.job_points(9) == {"c": 4} and len(st.job_batches(9)) == 2
    assert st.release_idle(time.time() + 1) == 0
    st.close()
    again = BatchStore(db)  # a restarted recorder
    assert again.high_water("c", "s1") == 5 and again.missing("c", "s1", 5) == []
    again.close()
    with contextlib.closing(sqlite3.connect(db)) as con:
        rows = con.execute("SELECT count(*) FROM stored").fetchone()
    assert rows == (2,)


def test_idle_measurements_above_a_gap_stay_and_go_a_few_at_a_time(tmp_path: Path) -> None:
    """A review: releasing idle batches raised the stream's floor past a batch of a job
    still missing below them (the gap vanished, also after a restart); and a month of
    them went in one transaction (seconds of a recorder that stores nothing else)."""
    import time

    db = tmp_path / "r.sqlite"
    st = BatchStore(db)
    _add(st, "s1", 0, None, 2, _raw(0))  # idle
    _add(st, "s1", 1, 9, 2, _raw(1))  # job 9; its seq 2 never came
    _add(st, "s1", 3, None, 2, _raw(3))  # idle, above the gap
    for seq in range(5):
        _add(st, "s2", seq, None, 2, _raw(seq))
    later = time.time() + 1
    assert st.release_idle(later, limit=3) == 3  # a few at a time
    assert st.release_idle(later, limit=3) == 3
    assert st.release_idle(later, limit=3) == 0  # s1 seq 3 stays: above the gap
    assert st.missing("c", "s1", 3) == [(2, 2)]
    st.close()
    again = BatchStore(db)
    assert again.missing("c", "s1", 3) == [(2, 2)] and again.missing("c", "s2", 4) == []
    _add(again, "s1", 2, 9, 2, _raw(2))  # the job's batch comes
    assert again.release_idle(later) == 1 and again.missing("c", "s1", 3) == []
    again.close()


def test_a_store_from_before_stored_at_keeps_its_idle_batches_keep_days_more(
    tmp_path: Path,
) -> None:
    import sqlite3
    import time

    db = tmp_path / "r.sqlite"
    st = BatchStore(db)
    for seq in range(2000):  # ~2 MB
        _add(st, "s1", seq, None, 2, _raw(seq) + b" " * 1000)
    st.close()
    con = sqlite3.connect(db)  # the store as the version before wrote it
    con.executescript("ALTER TABLE stored DROP COLUMN stored_at; VACUUM;")
    con.close()
    assert db.stat().st_size > 2_000_000
    old = BatchStore(db)  # no batch is written again (it took as much space as the store)
    wal = Path(f"{db}-wal")
    assert not wal.exists() or wal.stat().st_size < 200_000, wal.stat().st_size
    assert old.release_idle(time.time() - 60) == 0  # counted as stored now
    assert old.release_idle(time.time() + 1) == 2000
    old.close()


def test_store_reports_gaps_until_they_are_filled(tmp_path: Path) -> None:
    st = BatchStore(tmp_path / "r.sqlite")
    for seq in (0, 1, 4, 5, 8):
        _add(st, "1", seq, 1, 1, _raw(seq))
    assert st.high_water("c", "1") == 1
    assert st.max_seq("c", "1") == 8
    assert st.missing("c", "1", 8) == [(2, 3), (6, 7)]
    assert st.missing("c", "1", 10) == [(2, 3), (6, 7), (9, 10)]
    assert st.missing("other", "1", 2) == [(0, 2)]
    for seq in (2, 3, 6, 7):
        _add(st, "1", seq, 1, 1, _raw(seq))
    assert st.missing("c", "1", 8) == []
    assert st.high_water("c", "1") == 8
    assert [row[2] for row in st.job_batches(1)] == list(range(9))
    st.close()


def test_store_survives_kill_9(tmp_path: Path) -> None:
    """A batch add() returned for is on disk, even if the process dies right after."""
    db = tmp_path / "r.sqlite"
    code = (
        "import os, sys\n"
        "from tomato_mqtt.services.recorder.store import BatchStore\n"
        f"st = BatchStore({str(db)!r})\n"
        "for seq in range(50):\n"
        "    st.add('c', 's3', seq, epoch=3, job=9, task=0, npoints=1, raw=b'{}')\n"
        "os.kill(os.getpid(), 9)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert res.returncode == -9
    st = BatchStore(db)
    assert st.high_water("c", "s3") == 49
    assert st.job_points(9) == {"c": 50}
    st.close()


def test_spool_keeps_until_acked_and_survives_restart(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s.sqlite")
    e1 = sp.new_epoch()
    for seq in range(5):
        assert sp.put("c", "s1", seq, e1, _raw(seq)) == 0
    assert sp.pending() == {("c", "s1"): (0, 4)}
    assert sp.ack("c", "s1", 2) == 3
    assert [s for s, _ in sp.get("c", "s1", 0, 10)] == [3, 4]
    sp.close()
    sp = Spool(tmp_path / "s.sqlite")
    e2 = sp.new_epoch()
    assert e2 > e1  # a restarted node never reuses an epoch
    assert sp.pending() == {("c", "s1"): (3, 4)}
    assert sp.size_bytes == sum(len(_raw(s)) for s in (3, 4))
    sp.close()


def _full_spool(tmp_path: Path, n: int) -> tuple[Spool, int]:
    """A spool whose disk is full after its first batch (SQLite's max_page_count gives
    the SQLITE_FULL a full disk gives), sent ``n`` batches in all; and its epoch."""
    sp = Spool(tmp_path / "s.sqlite")
    e = sp.new_epoch()
    sp.put("c", "s", 0, e, _raw(0))
    pages = sp._db.execute("PRAGMA page_count").fetchone()[0]
    sp._db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full from here on
    for seq in range(1, n):
        assert sp.put("c", "s", seq, e, _raw(seq, 200)) == 0  # no exception, nothing dropped
    return sp, e


def test_a_spool_s_wal_is_cut_back_once_its_batches_are_acknowledged(tmp_path: Path) -> None:
    """A fault round: a node's spool kept a ~4 MB WAL with nothing spooled, which no
    `spool_max_mb` counts, and it filled a small disk by itself."""
    from tomato_mqtt.services.node.spool import WAL_KEPT

    sp = Spool(tmp_path / "s.sqlite")
    e1 = sp.new_epoch()
    big = b"x" * 60_000
    for seq in range(200):  # ~12 MB through the WAL
        sp.put("c", "s1", seq, e1, big)
    sp.ack("c", "s1", 199)
    for seq in range(200, 230):  # the WAL restarts after the checkpoints: cut back
        sp.put("c", "s1", seq, e1, b"y")
        sp.ack("c", "s1", seq)
    wal = tmp_path / "s.sqlite-wal"
    assert wal.stat().st_size <= WAL_KEPT + 65536, wal.stat().st_size
    sp.close()


def test_a_spool_whose_disk_is_full_holds_batches_and_loses_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by fault injection: a full disk made put() raise after the points had left
    the runner (lost), and killed the node. SQLite's max_page_count gives the same
    SQLITE_FULL a full disk gives."""
    from tomato_mqtt.services.node import spool as spool_mod

    monkeypatch.setattr(spool_mod, "RETRY", 0.0)
    sp, e = _full_spool(tmp_path, 40)
    assert sp.failing and "full" in sp.failing
    assert [q for q, _ in sp.get("c", "s", 0, 100)] == list(range(40))  # replays serve all
    assert sp.pending() == {("c", "s"): (0, 39)}
    assert sp.ack("c", "s", 9) == 10  # acknowledged: gone, from the file and from memory
    sp._db.execute("PRAGMA max_page_count = 1000000")  # space again
    sp.retry()  # the node's flush round: the file takes them without a new batch coming
    assert sp.failing is None and not sp._held
    sp.put("c", "s", 40, e, _raw(40))
    sp.close()
    sp = Spool(tmp_path / "s.sqlite")  # held batches reached the file: they survive a kill
    assert [q for q, _ in sp.get("c", "s", 0, 100)] == list(range(10, 41))
    sp.close()


def test_a_spool_whose_disk_is_freed_says_so_without_a_new_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An admin's tour: with every held batch acknowledged (the recorder stored them),
    a spool whose disk was freed kept its fault in `tomato status` until the next job
    wrote to it (45 s and more). The flush round's retry tries the file then too."""
    from tomato_mqtt.services.node import spool as spool_mod

    monkeypatch.setattr(spool_mod, "RETRY", 0.0)
    sp, _e = _full_spool(tmp_path, 20)
    assert sp.failing and "full" in sp.failing
    assert sp.ack("c", "s", 19) == 20 and not sp._held  # all stored by the recorder
    # (the ack freed pages: the file itself would take a write now) while it refuses...
    sp._db.execute("PRAGMA query_only = 1")
    sp.retry()
    assert sp.failing, "the spool took writes"  # ... still said
    sp._db.execute("PRAGMA query_only = 0")  # and once it takes them, said so
    sp.retry()
    assert sp.failing is None
    sp.close()


def test_a_spool_stopped_while_its_file_refuses_writes_says_what_it_loses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sp = Spool(tmp_path / "s.sqlite")
    e = sp.new_epoch()
    sp._db.execute("PRAGMA query_only = 1")  # the file takes no writes
    for seq in range(3):
        sp.put("c", "s", seq, e, _raw(seq))
    sp.close()
    assert "3 unacknowledged batch(es) could not be written" in caplog.text


def test_spool_bounded_drops_oldest_and_counts(tmp_path: Path) -> None:
    one = len(_raw(0, 100))
    sp = Spool(tmp_path / "s.sqlite", max_bytes=3 * one)
    e = sp.new_epoch()
    dropped = [sp.put("c", "s", seq, e, _raw(seq, 100)) for seq in range(5)]
    assert sum(dropped) == 2
    assert sp.dropped_total == 2
    assert sp.pending() == {("c", "s"): (2, 4)}
    assert sp.size_bytes <= 3 * one
    sp.close()


def test_old_spool_is_migrated_and_its_batches_replayable(tmp_path: Path) -> None:
    import sqlite3

    db = sqlite3.connect(tmp_path / "s.sqlite")
    db.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
        "INSERT INTO meta VALUES ('epoch', 7);"
        "CREATE TABLE batches (component TEXT, epoch INTEGER, seq INTEGER, raw BLOB,"
        " PRIMARY KEY (component, epoch, seq));"
        "INSERT INTO batches VALUES ('c', 7, 0, X'7B7D'), ('c', 7, 1, X'7B7D');"
    )
    db.commit()
    db.close()
    sp = Spool(tmp_path / "s.sqlite")
    assert sp.new_epoch() > 7
    # an older recorder names the stream by its epoch: e7
    assert sp.pending() == {("c", "e7"): (0, 1)}
    assert [s for s, _ in sp.get("c", "e7", 0, 5)] == [0, 1]
    assert sp.ack("c", "e7", 1) == 2 and sp.pending() == {}
    sp.close()


def test_a_job_s_conflicts_are_those_of_its_components_and_a_few_are_named(
    tmp_path: Path,
) -> None:
    """A hostile tour: a node's login sent pairs of batches of one identity on its own
    component's topic naming another node's running job; the job ended `ce` "the file
    has conflicting duplicate batches", with 30,506 of them in a reason of 3 MB. A job's
    conflicts are its own components' now, and ten are named, the rest counted."""
    st = BatchStore(tmp_path / "r.sqlite")

    def pair(component: str, stream: str, seq: int) -> None:  # a batch, then its conflict
        for n, said in ((2, "new"), (3, "conflict")):
            got = st.add(
                component, stream, seq, epoch=1, job=7, task=0, npoints=n, raw=_raw(seq, n)
            )
            assert got == said, (component, seq, got)

    for seq in range(15):  # the job's own component: 15 conflicts
        pair("mine", "s1", seq)
    for seq in range(3):  # another node's component naming job 7
        pair("theirs", "x", seq)
    named = st.conflicts(7, ["mine", "counter"])
    assert named == [f"mine stream s1 seq {i}" for i in range(10)] + ["and 5 more"], named
    assert st.conflicts(7, ["counter"]) == [] and st.conflicts(7, []) == []
    assert st.conflicts(7, ["theirs"]) == [f"theirs stream x seq {i}" for i in range(3)]
    st.close()


def test_the_store_says_the_highest_job_it_holds(tmp_path: Path) -> None:
    """What the recorder's status tells a scheduler whose state file was replaced (the
    ids continue after it); an implausible id (10**13) does not count."""
    st = BatchStore(tmp_path / "r.sqlite")
    assert st.highest_job() is None
    _add(st, "s1", 0, 7, 2, _raw(0))
    _add(st, "s1", 1, None, 2, _raw(1))  # idle points: no job
    _add(st, "s1", 2, 10**13, 2, _raw(2))
    assert st.highest_job() == 7
    st.close()
    again = BatchStore(tmp_path / "r.sqlite")  # as a restarted recorder
    assert again.highest_job() == 7
    again.close()


def test_a_batch_s_job_id_counts_only_a_little_past_the_files_the_scheduler_asked_for(
    tmp_path: Path,
) -> None:
    """A hostile tour: one batch on a node's own data topic naming job 999,999,999,998
    moved the lab's job ids there for good (the recorder's status said it, the
    scheduler's ids continued after it). A batch's job id counts only up to
    BATCH_ID_LEAD past the highest job the recorder wrote a file of (the scheduler asked
    for it): the jobs running when a state file was lost have no file yet."""
    from tomato_mqtt.model.jobs import BATCH_ID_LEAD, batch_id_bound, highest_ran

    assert batch_id_bound(None) == BATCH_ID_LEAD and batch_id_bound(40) == 40 + BATCH_ID_LEAD
    assert highest_ran(None, None) is None and highest_ran(10**13, None) is None
    assert highest_ran(None, 5) == 5 and highest_ran(40, 12) == 40 and highest_ran(40, 45) == 45
    st = BatchStore(tmp_path / "r.sqlite")
    _add(st, "s1", 0, 999_999_999_998, 2, _raw(0))  # the forged one: not counted at all
    assert st.highest_ids() == (None, None) and st.highest_job() is None
    _add(st, "s1", 1, 3, 2, _raw(1))  # a job whose state file was lost as it ran
    assert st.highest_job() == 3
    st.set_final(40, {"written": True})  # a file the scheduler asked for
    _add(st, "s1", 2, 41, 2, _raw(2))
    assert st.highest_ids() == (40, 41) and st.highest_job() == 41
    _add(st, "s1", 3, 40 + BATCH_ID_LEAD + 1, 2, _raw(3))  # past the lead: not counted
    assert st.highest_job() == 41
    _add(st, "s1", 4, 40 + BATCH_ID_LEAD, 2, _raw(4))  # within it
    assert st.highest_job() == 40 + BATCH_ID_LEAD
    st.close()


def test_what_is_acknowledged_is_checkpointed_first(tmp_path: Path) -> None:
    """A review: with synchronous=NORMAL, a commit in WAL mode is on the disk only after
    a checkpoint; the recorder acknowledged batches (the node then dropped its copy) that
    a power cut could still take. ``make_durable`` (before each round of acks)
    checkpoints: the batches are in the database file itself, which is synced."""
    db = tmp_path / "r.sqlite"
    st = BatchStore(db)
    marker = b"acknowledged-batch-marker"
    st.add("c", "s1", 0, epoch=1, job=1, task=0, npoints=1, raw=marker)
    assert marker not in db.read_bytes()  # committed: in the WAL only
    st.make_durable()
    assert marker in db.read_bytes()
    st.close()


def test_the_writer_reads_only_its_job_s_batches_and_says_when_they_went(
    tmp_path: Path,
) -> None:
    """A review of the writer reading the store on its own connection: a job's batches
    released while its file was written (a snapshot held off no release), their rowids
    then used again by new batches, would have been read as the job's. Only rows of the
    job are read; rows gone are an error of the write (OSError, as a disk's)."""
    from tomato_mqtt.services.recorder.store import Raws

    st = BatchStore(tmp_path / "s.sqlite")
    for seq, job in ((0, 1), (1, 1), (2, 2)):
        st.add("c", "e1", seq, epoch=1, job=job, task=0, npoints=1, raw=b'{"n": %d}' % seq)
    rows = [r for _, r in st.job_rows(1)]
    other = [r for _, r in st.job_rows(2)]
    assert list(Raws(st.path, rows, 1)) == [b'{"n": 0}', b'{"n": 1}']
    with pytest.raises(OSError, match="went while being read"):
        Raws(st.path, other, 1).fetch([0])  # another job's row under this job's rowid
    st.release(1)
    with pytest.raises(OSError, match="went while being read"):
        list(Raws(st.path, rows, 1))
    st.close()


def _killed_while_full(path: Path, overflow: Path, n: int, fill: str) -> None:
    """A process (a node) puts ``n`` batches into a spool whose file takes no writes,
    then is killed (SIGKILL: nothing of it runs after)."""
    code = (
        "import os\n"
        "from pathlib import Path\n"
        "from tomato_mqtt.services.node.spool import Spool\n"
        f"sp = Spool(Path({str(path)!r}), overflow=Path({str(overflow)!r}))\n"
        "e = sp.new_epoch()\n"
        f"{fill}\n"
        f"for seq in range({n}):\n"
        "    sp.put('c', 's', seq, e, bytes([seq % 256]) * 300)\n"
        "assert sp.failing, 'the spool took writes'\n"
        "os.kill(os.getpid(), 9)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], timeout=60, capture_output=True, text=True)
    assert res.returncode == -9, res.stderr


def _killed_with_40_held(tmp_path: Path) -> tuple[Path, Path]:
    """A spool ``s.sqlite`` whose node was killed holding 40 batches its file refused
    (SQLite's own SQLITE_FULL, as a full disk gives it; the real disk: a test below),
    copied to the overflow folder ``ov``: (spool path, overflow folder)."""
    ov = tmp_path / "ov"
    ov.mkdir(mode=0o700)
    path = tmp_path / "s.sqlite"
    Spool(path).close()
    full = (
        "n = sp._db.execute('PRAGMA page_count').fetchone()[0]\n"
        "sp._db.execute(f'PRAGMA max_page_count = {n}')"
    )
    _killed_while_full(path, ov, 40, full)
    return path, ov


def test_a_spool_killed_while_its_file_refuses_writes_keeps_its_batches(tmp_path: Path) -> None:
    """A fault run: a node killed while its spool's disk refused writes lost every batch
    held in memory meanwhile (326 of 400 points of a job on a read-only datadir). They are
    copied to an overflow file on another disk as they come; the next start takes them
    back, into the spool once it takes writes, and removes the overflow file."""
    path, ov = _killed_with_40_held(tmp_path)
    sp = Spool(path, overflow=ov)
    assert sp.pending() == {("c", "s"): (0, 39)}
    assert [bytes(r) for _q, r in sp.get("c", "s", 0, 99)] == [bytes([q]) * 300 for q in range(40)]
    assert not sp._held and list(ov.iterdir()) == []  # in the file now; the overflow gone
    sp.close()
    sp = Spool(path)  # and there for good (a start without an overflow folder)
    assert sp.pending() == {("c", "s"): (0, 39)}
    sp.close()


def test_a_spool_on_a_full_disk_killed_loses_nothing_to_its_overflow(tmp_path: Path) -> None:
    """The same on a real full disk (a filled tmpfs: root and mount(8); skipped, saying
    why, without), then on that disk read-only: the batches wait in the overflow file
    until the spool's disk takes writes again."""
    from tests.chaos.harness import Unavailable
    from tests.chaos.host_faults import tiny_tmpfs

    ov = tmp_path / "ov"
    ov.mkdir(mode=0o700)
    try:
        with tiny_tmpfs(tmp_path / "data", "2m") as data:
            path = data / "s.sqlite"
            # the disk fills while the node runs (the spool opened before)
            _killed_while_full(
                path,
                ov,
                60,
                f"from tests.chaos.host_faults import _fill; _fill(Path({str(data)!r}))",
            )
            filler = data / "filler"
            # a start while the disk is still full: held again, the overflow kept
            sp = Spool(path, overflow=ov)
            assert sp.failing and sp.pending() == {("c", "s"): (0, 59)}
            sp.close()
            assert [p.name for p in ov.iterdir() if p.suffix == ".sqlite"], "overflow gone"
            filler.unlink()
            subprocess.run(["mount", "-o", "remount,ro", str(data)], check=True, timeout=10)
            sp = Spool(path, overflow=ov)  # read-only now: still held, still kept
            assert sp.pending() == {("c", "s"): (0, 59)} and sp.overflowed == 60
            sp.close()
            subprocess.run(["mount", "-o", "remount,rw", str(data)], check=True, timeout=10)
            sp = Spool(path, overflow=ov)
            assert sp.failing is None and not sp._held
            assert sp.pending() == {("c", "s"): (0, 59)}
            assert [p for p in ov.iterdir()] == []
            sp.close()
    except Unavailable as e:
        pytest.skip(str(e))


def test_an_overflow_folder_someone_else_could_read_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The overflow folder is in the shared temporary folder: one made by someone else,
    open to others, or a link, would let another user read or replace the batches."""
    import os
    import tempfile

    from tomato_mqtt.services.scratch import private_dir

    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    mine = tmp_path / f"tomato-mqtt-{os.getuid()}"
    got = private_dir()
    assert got == mine and (os.stat(mine).st_mode & 0o777) == 0o700
    os.chmod(mine, 0o777)
    assert private_dir() is None
    os.rmdir(mine)
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    os.symlink(tmp_path / "elsewhere", mine)
    assert private_dir() is None


def test_batches_while_another_program_holds_the_lock_do_not_each_wait(tmp_path: Path) -> None:
    """A review of the lock timeouts: each batch refused by another program's lock
    waited LOCK_WAIT on the recorder's loop, and the nodes' resends kept it waiting (its
    status and answers late). Once refused, a batch is refused at once;
    the first after the lock is let go goes in, and a new lock is waited for again."""
    import sqlite3
    import time

    import pytest

    from tests.test_reliability_inproc import _locked_by_another_program
    from tomato_mqtt.services.recorder.store import LOCK_WAIT, BatchStore

    path = tmp_path / "recorder.sqlite"
    store = BatchStore(path)

    def add(seq: int) -> str:
        return store.add("c", "s", seq, epoch=1, job=1, task=0, npoints=1, raw=b"x%d" % seq)

    with _locked_by_another_program(path):
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            add(0)
        t0 = time.monotonic()
        for seq in range(8):
            with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                add(seq)
        took = time.monotonic() - t0
        assert took < LOCK_WAIT, took
    assert add(0) == "new"  # let go: taken at once
    with _locked_by_another_program(path):
        t0 = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            add(1)
        assert time.monotonic() - t0 >= LOCK_WAIT * 0.8  # waited again
    store.close()


def test_a_recorder_stopping_removes_its_unfetched_temporary_snapshots(tmp_path: Path) -> None:
    # a review (fault: `ketchup snapshot` on a full datadir, its client killed before the
    # last chunk, then `tomato stop`): the snapshot made for that transfer only stayed in
    # /tmp/tomato-mqtt-<uid> for good, no later recorder knowing of it
    import asyncio

    from tomato_mqtt.config.url import BrokerURL
    from tomato_mqtt.services.recorder.service import RecorderService

    svc = RecorderService(BrokerURL.parse("mqtt://127.0.0.1:1"), "x", tmp_path / "rec.sqlite")
    snap = tmp_path / "snapshot.1.abcd.nc"
    snap.write_bytes(b"x")
    svc.files.temporary.add(snap)
    asyncio.run(svc.teardown())
    assert not snap.exists()
    assert not svc.files.temporary


def test_a_new_spool_at_the_same_path_does_not_take_back_an_old_ones_overflow(
    tmp_path: Path,
) -> None:
    # a review: the overflow file is named by the spool's path only, so a datadir removed
    # and made again (same path, a new stack whose job ids start at 1 again) took back the
    # old stack's batches, sent as the new job 1's points; the old ones are kept aside
    path, ov = _killed_with_40_held(tmp_path)
    for suffix in ("", "-wal", "-shm"):  # the datadir removed, then made again
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    sp = Spool(path, overflow=ov)
    assert sp.pending() == {}
    sp.close()
    kept = [p.name for p in ov.iterdir()]
    assert any("orphan" in n for n in kept), kept  # not lost: set aside
    sp = Spool(path, overflow=ov)  # and not taken back later either
    assert sp.pending() == {}
    sp.close()


def _open_here(path: Path) -> list[str]:
    """This process's descriptors open on ``path`` (or on its -wal and -shm)."""
    here = []
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd).startswith(str(path)):
                here.append(fd.name)
    return here


@pytest.mark.parametrize("kind", ["state", "recorder", "spool"])
def test_a_store_that_refuses_its_file_does_not_keep_it_open(tmp_path: Path, kind: str) -> None:
    """A store whose file is not a database is refused with SQLite's words, and closes
    the file (a newer schema too: test_state.py): it kept the connection for the garbage
    collector (Python 3.13 warns of each), open on a file `tomato start` moves aside."""
    from tomato_mqtt.services.scheduler.store import StateStore

    path = tmp_path / f"{kind}.sqlite"
    path.write_bytes(b"not a database, " * 512)
    opener = {"state": StateStore, "recorder": BatchStore, "spool": Spool}[kind]
    with pytest.raises(Exception, match="not a database"):
        opener(path)
    assert _open_here(path) == []


def test_a_store_file_that_refuses_writes_is_named_with_why(tmp_path: Path) -> None:
    """An admin's tour: a store made immutable (`chattr +i`) mid-job was said in the
    job's reason and `tomato status` as SQLite's "disk I/O error" only, which reads as a
    failing disk. The words name the file that refuses writes and what to look at."""
    import shutil
    import sqlite3
    import subprocess

    from tomato_mqtt.errors import store_words

    if shutil.which("chattr") is None:
        pytest.skip("no chattr here")
    db = tmp_path / "recorder.sqlite"
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not allowed here (not root, or a filesystem without it)")
    try:
        con = sqlite3.connect(db)
        with pytest.raises(sqlite3.Error) as e:
            con.execute("INSERT INTO t VALUES (1)")
            con.commit()
        con.close()
        words = store_words(str(e.value), db)
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True)
    assert words.startswith(str(e.value)), words  # SQLite's own words first
    assert f"{db} cannot be written by this user" in words and "lsattr" in words, words
    # other errors are left as they are
    assert store_words("no such table: t", db) == "no such table: t"


def test_the_state_file_s_probe_writes_what_a_real_write_writes(tmp_path: Path) -> None:
    """A fault-injection tour: the state file made immutable during a job; the probe (an
    UPDATE that changed nothing, so wrote nothing) went through, and the log said "the
    state file takes writes again", then the fault, every 2 s for as long as it lasted.
    The probe writes a row and takes it back: it fails as the real writes do, and passes
    once they would."""
    import shutil
    import sqlite3

    from tomato_mqtt.services.scheduler.store import StateStore

    if shutil.which("chattr") is None:
        pytest.skip("no chattr here")
    st = StateStore(tmp_path / "state.sqlite")
    st.add_job({"method": []}, "x", None)
    files = [str(f) for f in tmp_path.glob("state.sqlite*")]
    if subprocess.run(["chattr", "+i", *files], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not allowed here (not root, or a filesystem without it)")
    try:
        with pytest.raises(sqlite3.Error):
            st.add_job({"method": []}, "y", None)
        assert st.write_error is not None
        st.probe_write()
        assert st.write_error is not None  # still failing: said so, not "takes writes again"
    finally:
        subprocess.run(["chattr", "-i", *files], check=True)
    st.probe_write()
    assert st.write_error is None
    assert st.add_job({"method": []}, "z", None).id == 2  # and nothing of the probe stayed
    assert st._db.execute("SELECT count(*) FROM submit_tokens").fetchone()[0] == 0
    st.close()
