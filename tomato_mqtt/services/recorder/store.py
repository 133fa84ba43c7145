"""The recorder's durable store: every data batch, once, keyed by ``(component, stream, seq)``.

Pure (no MQTT). sqlite in WAL mode; each batch is committed before it is acknowledged
to the node, so a ``kill -9`` of the recorder loses nothing it acknowledged. Batches are
kept as the JSON that arrived (the NetCDF writer decodes them once, at the end), which
makes storing a batch one insert, whatever its size: no re-writing of a data file per
batch (upstream tomato's quadratic cost).

A batch whose identity is already stored is a duplicate only when its content is the
same (a digest of the bytes: QoS 1 redelivery, a replay): it is dropped. Same identity,
other content is a *conflict*: the first batch is kept, the other is recorded in
``conflicts`` and surfaces in the job (DESIGN.md §4: identity never repeats).

Per stream the store keeps its *high water*: the largest ``seq`` such that every batch
``0..seq`` is stored. Anything above it that is not stored is a gap.

``finals`` remembers, per job, how its final file was written, so that data arriving
after the job ended is merged into that file (late data, DESIGN.md §5).

A job whose final file was written long enough ago is *released* (:meth:`release`):
its batches are deleted (the store kept every point of every job for good: ~117 bytes
a point, 45 MB an hour in a soak run), its ``finals`` row says so, and ``floors``
keeps each of its streams' high water, so that a restarted recorder sees no gap where
the released batches were.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import hashlib
import json
import sqlite3
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tomato_mqtt.errors import locked
from tomato_mqtt.model.jobs import highest_ran
from tomato_mqtt.services.jobids import highest_batch, highest_stored

__all__ = ["AddResult", "BatchRow", "BatchStore", "Raws", "digest"]

#: how long a write waits for another program's lock on the store (s)
LOCK_WAIT = 1.0

#: conflicting batches a job's file check names (the rest are counted)
CONFLICTS_SHOWN = 10

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stored (
    component TEXT NOT NULL,
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    job INTEGER,
    task INTEGER,
    npoints INTEGER NOT NULL,
    digest TEXT NOT NULL,
    raw BLOB NOT NULL,
    stored_at REAL,
    PRIMARY KEY (component, stream, seq)
);
CREATE INDEX IF NOT EXISTS stored_job ON stored (job);
CREATE TABLE IF NOT EXISTS conflicts (
    job INTEGER,
    component TEXT NOT NULL,
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    time REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS finals (
    job INTEGER PRIMARY KEY,
    args TEXT NOT NULL,
    merged INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS floors (
    component TEXT NOT NULL,
    stream TEXT NOT NULL,
    high_water INTEGER NOT NULL,
    PRIMARY KEY (component, stream)
);
"""

BatchRow = tuple[str, str, int, "int | None", bytes]
"""``(component, stream, seq, task, raw)`` as returned by :meth:`BatchStore.job_batches`."""

AddResult = Literal["new", "duplicate", "conflict"]


def digest(raw: bytes) -> str:
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


@dataclass
class _Stream:
    high_water: int = -1
    above: list[int] = field(default_factory=list)  # sorted seqs stored beyond high_water

    def add(self, seq: int) -> None:
        if seq == self.high_water + 1:
            self.high_water = seq
            while self.above and self.above[0] == self.high_water + 1:
                self.high_water = self.above.pop(0)
        elif seq > self.high_water + 1:
            i = bisect.bisect_left(self.above, seq)
            if i == len(self.above) or self.above[i] != seq:
                self.above.insert(i, seq)

    def raise_to(self, seq: int) -> None:
        """Everything up to ``seq`` counts as stored (released batches)."""
        if seq > self.high_water:
            self.high_water = seq
            self.above = [s for s in self.above if s > seq]
            while self.above and self.above[0] == self.high_water + 1:
                self.high_water = self.above.pop(0)

    def missing(self, upto: int) -> list[tuple[int, int]]:
        gaps: list[tuple[int, int]] = []
        nxt = self.high_water + 1
        for s in self.above:
            if s > upto:
                break
            if s > nxt:
                gaps.append((nxt, s - 1))
            nxt = s + 1
        if nxt <= upto:
            gaps.append((nxt, upto))
        return gaps


class Raws:
    """Stored batches (rowids) as the file's writer reads them: once in order, then by
    index; from its own thread, on a connection of its own, a few hundred rows per read
    (the write held a job's every batch in memory: a long high-rate job's file could
    take the recorder out of memory)."""

    _AT_ONCE = 256

    def __init__(self, path: Path, rowids: list[int], job: int) -> None:
        self.path = path
        self.rowids = rowids
        self.job = job  # rows of another job (a rowid used again) are not read

    def __len__(self) -> int:
        return len(self.rowids)

    def __iter__(self) -> Iterator[bytes]:
        with self._reading() as db:
            for at in range(0, len(self.rowids), self._AT_ONCE):
                yield from self._read(db, self.rowids[at : at + self._AT_ONCE])

    def fetch(self, idx: Sequence[int]) -> list[bytes]:
        with self._reading() as db:
            out: list[bytes] = []
            for at in range(0, len(idx), self._AT_ONCE):
                out += self._read(db, [self.rowids[i] for i in idx[at : at + self._AT_ONCE]])
            return out

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """A connection of its own; SQLite's errors (a busy or unreadable file) are the
        write's: an OSError, as a disk's (a review: they ended the request "internal",
        and no fallback was tried)."""
        try:
            db = sqlite3.connect(self.path, isolation_level=None)
            try:
                db.execute("PRAGMA query_only = 1")
                yield db
            finally:
                db.close()
        except sqlite3.Error as e:
            why = f"the recorder's store {self.path} could not be read: {e}"
            raise OSError(errno.EIO, why) from e

    def _read(self, db: sqlite3.Connection, rowids: list[int]) -> list[bytes]:
        marks = ",".join("?" * len(rowids))
        got = dict(
            db.execute(
                f"SELECT rowid, raw FROM stored WHERE rowid IN ({marks}) AND job IS ?",
                [*rowids, self.job],
            )
        )
        if len(got) != len(set(rowids)):
            # released or removed while the file was written: it would not hold them
            raise OSError(
                errno.EIO, f"{len(rowids) - len(got)} stored batch(es) went while being read"
            )
        return [bytes(got[r]) for r in rowids]


class BatchStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # its one writer: only another program takes the write lock (an sqlite3 shell
        # inside a transaction), and each write waited 5 s before the fault was said
        self._db = sqlite3.connect(
            self.path, timeout=LOCK_WAIT, isolation_level=None, check_same_thread=False
        )
        self._lock_said = False  # another program's lock refused a batch (see add)
        self._streams: dict[tuple[str, str], _Stream] = {}
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._migrate()
            for c, st, hw in self._db.execute("SELECT component, stream, high_water FROM floors"):
                self._stream(str(c), str(st)).high_water = int(hw)
            for c, st, s in self._db.execute(
                "SELECT component, stream, seq FROM stored ORDER BY component, stream, seq"
            ):
                self._stream(str(c), str(st)).add(int(s))
        except BaseException:
            self._db.close()  # an unreadable file: refused, and not left open
            raise

    def _migrate(self) -> None:
        """A store of the version keyed by (component, epoch, seq): streams e<epoch>; a
        ``finals`` table without ``written_at``/``released`` (its jobs count as written
        now)."""
        if "stored_at" not in {str(r[1]) for r in self._db.execute("PRAGMA table_info(stored)")}:
            # idle batches stored before count as stored now (released keep_days later):
            # a default, not an UPDATE, which rewrote every batch (as much free space as
            # the store's size: a review) and could fail half-way on a full disk
            now = float(time.time())
            self._db.execute(f"ALTER TABLE stored ADD COLUMN stored_at REAL DEFAULT {now!r}")
        cols = {str(r[1]) for r in self._db.execute("PRAGMA table_info(finals)")}
        if "written_at" not in cols:
            self._db.execute("ALTER TABLE finals ADD COLUMN written_at REAL")
            self._db.execute("UPDATE finals SET written_at = ?", (time.time(),))
        if "released" not in cols:
            self._db.execute("ALTER TABLE finals ADD COLUMN released INTEGER NOT NULL DEFAULT 0")
        if "merge_due" not in cols:  # late batches stored, not yet merged into the file
            self._db.execute("ALTER TABLE finals ADD COLUMN merge_due INTEGER NOT NULL DEFAULT 0")
        old = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'batches'"
        ).fetchone()
        if not old:
            return
        self._db.execute("BEGIN")
        rows = self._db.execute(
            "SELECT component, epoch, seq, job, task, npoints, raw FROM batches"
        ).fetchall()
        now = time.time()
        self._db.executemany(
            "INSERT OR IGNORE INTO stored "
            "(component, stream, seq, epoch, job, task, npoints, digest, raw, stored_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(c, f"e{e}", s, e, j, t, n, digest(bytes(r)), r, now) for c, e, s, j, t, n, r in rows],
        )
        self._db.execute("DROP TABLE batches")
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def probe(self, nbytes: int) -> None:
        """Whether the store takes a batch of ``nbytes`` again (raises sqlite3.Error when
        it does not: a full disk), without a batch to store: that many bytes written
        and committed, then deleted. (A write of a few bytes fitted into room a refused
        batch had left, and storing was said to work again while batches still failed:
        a review.)"""
        self._db.execute("CREATE TABLE IF NOT EXISTS probe (b BLOB)")
        try:
            self._db.execute("INSERT INTO probe VALUES (zeroblob(?))", (max(1, nbytes),))
        finally:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("DELETE FROM probe")

    def _stream(self, component: str, stream: str) -> _Stream:
        st = self._streams.get((component, stream))
        if st is None:
            st = self._streams[(component, stream)] = _Stream()
        return st

    def add(
        self,
        component: str,
        stream: str,
        seq: int,
        *,
        epoch: int,
        job: int | None,
        task: int | None,
        npoints: int,
        raw: bytes,
    ) -> AddResult:
        """Store a batch durably (raises sqlite3.Error when it cannot: disk full, ...)."""
        d = digest(raw)
        try:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO stored "
                "(component, stream, seq, epoch, job, task, npoints, digest, raw, stored_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (component, stream, seq, epoch, job, task, npoints, d, raw, time.time()),
            )
        except sqlite3.OperationalError as e:
            if locked(str(e)) and not self._lock_said:
                # refused at once from now on, until a batch goes in: each batch waited
                # LOCK_WAIT on the recorder's loop, and the nodes' resends kept it waiting
                # (its status late: a review, 8 refused batches took 8 s)
                self._lock_said = True
                self._db.execute("PRAGMA busy_timeout = 0")
            raise
        if self._lock_said:
            self._lock_said = False
            self._db.execute(f"PRAGMA busy_timeout = {int(LOCK_WAIT * 1000)}")
        if cur.rowcount == 1:
            self._stream(component, stream).add(seq)
            return "new"
        row = self._db.execute(
            "SELECT digest, job FROM stored WHERE component = ? AND stream = ? AND seq = ?",
            (component, stream, seq),
        ).fetchone()
        if row is not None and row[0] == d:
            return "duplicate"
        jobs = {j for j in (job, row[1] if row else None) if j is not None} or {None}
        self._db.executemany(
            "INSERT INTO conflicts (job, component, stream, seq, time) VALUES (?, ?, ?, ?, ?)",
            [(j, component, stream, seq, time.time()) for j in jobs],
        )
        return "conflict"

    def stored(self, component: str, stream: str, seq: int) -> str | None:
        """The digest of the batch stored under that identity (None: none is)."""
        row = self._db.execute(
            "SELECT digest FROM stored WHERE component = ? AND stream = ? AND seq = ?",
            (component, stream, seq),
        ).fetchone()
        return None if row is None else str(row[0])

    @property
    def streams(self) -> list[tuple[str, str]]:
        return list(self._streams)

    def high_water(self, component: str, stream: str) -> int:
        st = self._streams.get((component, stream))
        return st.high_water if st is not None else -1

    def max_seq(self, component: str, stream: str) -> int:
        st = self._streams.get((component, stream))
        if st is None:
            return -1
        return st.above[-1] if st.above else st.high_water

    def missing(self, component: str, stream: str, upto: int) -> list[tuple[int, int]]:
        """Gaps ``(first, last)`` (inclusive) of the stream in ``0..upto``."""
        st = self._streams.get((component, stream))
        if st is None:
            return [(0, upto)] if upto >= 0 else []
        return st.missing(upto)

    def job_batches(self, job: int) -> list[BatchRow]:
        rows = self._db.execute(
            "SELECT component, stream, seq, task, raw FROM stored WHERE job = ? "
            "ORDER BY component, epoch, stream, seq",
            (job,),
        ).fetchall()
        return [(str(c), str(st), int(s), t, bytes(r)) for c, st, s, t, r in rows]

    def job_rows(self, job: int) -> list[tuple[str, int]]:
        """``(component, rowid)`` of the job's batches, in the order of
        :meth:`job_batches`, without their bytes (read by :class:`Raws`)."""
        rows = self._db.execute(
            "SELECT component, rowid FROM stored WHERE job = ? "
            "ORDER BY component, epoch, stream, seq",
            (job,),
        ).fetchall()
        return [(str(c), int(r)) for c, r in rows]

    def highest_job(self) -> int | None:
        """The highest job id this store shows the stack ran (:func:`highest_ran`)."""
        return highest_ran(*self.highest_ids())

    def highest_ids(self) -> tuple[int | None, int | None]:
        """The highest job id of the final files, and of the stored batches within
        :func:`~tomato_mqtt.model.jobs.batch_id_bound` of it."""
        return highest_stored(self._db)

    def highest_batch(self, files: int | None) -> int | None:
        """The highest job id of the stored batches within
        :func:`~tomato_mqtt.model.jobs.batch_id_bound` of ``files``."""
        return highest_batch(self._db, files)

    def job_points(self, job: int) -> dict[str, int]:
        rows = self._db.execute(
            "SELECT component, SUM(npoints) FROM stored WHERE job = ? GROUP BY component",
            (job,),
        ).fetchall()
        return {str(c): int(n) for c, n in rows}

    def task_points(self, job: int) -> dict[tuple[str, int | None], int]:
        """Points stored per ``(component, task)`` of a job."""
        rows = self._db.execute(
            "SELECT component, task, SUM(npoints) FROM stored WHERE job = ? "
            "GROUP BY component, task",
            (job,),
        ).fetchall()
        return {(str(c), None if t is None else int(t)): int(n) for c, t, n in rows}

    def conflicts(self, job: int, components: Collection[str]) -> list[str]:
        """The conflicting batches of ``job`` from ``components`` (the job's own: a node's
        login may name any job in its own components' batches, and two such batches of
        one identity ended another node's job `ce`, its reason 3 MB long: a hostile
        tour), the first :data:`CONFLICTS_SHOWN` of them and how many more."""
        names = sorted(set(components))
        if not names:
            return []
        marks = ", ".join("?" * len(names))
        where = f"FROM conflicts WHERE job = ? AND component IN ({marks})"
        rows = self._db.execute(
            f"SELECT component, stream, seq {where} ORDER BY rowid LIMIT ?",
            (job, *names, CONFLICTS_SHOWN),
        ).fetchall()
        said = [f"{c} stream {st} seq {s}" for c, st, s in rows]
        if len(rows) == CONFLICTS_SHOWN:
            (n,) = self._db.execute(f"SELECT count(*) {where}", (job, *names)).fetchone()
            if n > CONFLICTS_SHOWN:
                said.append(f"and {n - CONFLICTS_SHOWN} more")
        return said

    def make_durable(self) -> None:
        """Everything committed so far on the disk, before the nodes are told they may let
        go of it: with ``synchronous=NORMAL`` a commit in WAL mode is not synced until a
        checkpoint, and a power cut lost batches already acknowledged (a review). A
        checkpoint syncs the WAL first; called before each round of acks (≤ 1/s)."""
        self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    # -- final files (for late data) ------------------------------------------------------
    def set_final(self, job: int, args: dict[str, Any]) -> None:
        """Remember a job's final file's arguments; ``written_at`` only once ``args`` name
        the file written (a review: a final write that failed on a full disk stamped it
        all the same, and the job's batches, its only copy, went after ``keep_days``)."""
        written_at = time.time() if args.get("written") else None
        self._db.execute(
            "INSERT INTO finals (job, args, merged, written_at) VALUES (?, ?, 0, ?) "
            "ON CONFLICT(job) DO UPDATE SET args = excluded.args, "
            "written_at = COALESCE(excluded.written_at, finals.written_at)",
            (job, json.dumps(args), written_at),
        )

    # -- releasing the batches of jobs written long ago ----------------------------------
    def released(self, job: int) -> bool:
        row = self._db.execute("SELECT released FROM finals WHERE job = ?", (job,)).fetchone()
        return bool(row and row[0])

    def releasable(self, written_before: float) -> list[int]:
        """Jobs whose final file was last written before that time, not released yet; never
        one whose file was not written (also in a store of an older version, which
        stamped ``written_at`` before the write)."""
        rows = self._db.execute(
            "SELECT job, args FROM finals WHERE released = 0 AND written_at < ? "
            "AND merge_due = 0 ORDER BY job",
            (written_before,),
        ).fetchall()
        return [int(job) for job, args in rows if json.loads(args).get("written")]

    def release(self, job: int) -> int:
        """Delete the job's batches (its file is written); returns how many. Each of its
        streams keeps its high water in ``floors``, raised past the released batches: a
        restarted recorder must not take them for gaps and ask nodes for them."""
        tops = self._db.execute(
            "SELECT component, stream, max(seq), count(*) FROM stored WHERE job = ? "
            "GROUP BY component, stream",
            (job,),
        ).fetchall()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for c, st, top, _n in tops:
                stream = self._stream(str(c), str(st))
                floor = max(stream.high_water, int(top))
                self._db.execute(
                    "INSERT INTO floors (component, stream, high_water) VALUES (?, ?, ?) "
                    "ON CONFLICT(component, stream) DO UPDATE SET high_water = "
                    "max(high_water, excluded.high_water)",
                    (str(c), str(st), floor),
                )
            self._db.execute("DELETE FROM stored WHERE job = ?", (job,))
            self._db.execute("UPDATE finals SET released = 1 WHERE job = ?", (job,))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        for c, st, top, _n in tops:
            self._stream(str(c), str(st)).raise_to(int(top))
        return sum(int(n) for *_x, n in tops)

    def release_idle(self, stored_before: float, limit: int = 2000) -> int:
        """Delete at most ``limit`` batches measured between jobs (a driver's idle
        measurements: no job, no file, read by nothing) stored before that time; returns
        how many (call again while it returns ``limit``: a month of them at once held
        the recorder for seconds). They were kept for good, and each one's seq was read
        into memory at every start. Only those at or below their stream's high water: a
        batch of a job still missing below them stays a gap (a review)."""
        done = 0
        for (c, st), stream in list(self._streams.items()):
            hw = stream.high_water
            if hw < 0 or done >= limit:
                continue
            rows = self._db.execute(
                "SELECT rowid FROM stored WHERE component = ? AND stream = ? AND seq <= ? "
                "AND job IS NULL AND stored_at < ? LIMIT ?",
                (c, st, hw, stored_before, limit - done),
            ).fetchall()
            if not rows:
                continue
            self._db.execute("BEGIN IMMEDIATE")
            try:  # the high water stays when the batches below it go (as in release)
                self._db.execute(
                    "INSERT INTO floors (component, stream, high_water) VALUES (?, ?, ?) "
                    "ON CONFLICT(component, stream) DO UPDATE SET high_water = "
                    "max(high_water, excluded.high_water)",
                    (c, st, hw),
                )
                self._db.executemany("DELETE FROM stored WHERE rowid = ?", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            done += len(rows)
        return done

    def final(self, job: int) -> tuple[dict[str, Any], int] | None:
        """How the job's final file was written, and how often late data was merged."""
        row = self._db.execute("SELECT args, merged FROM finals WHERE job = ?", (job,)).fetchone()
        return None if row is None else (json.loads(row[0]), int(row[1]))

    # -- late merges that are due (kept across a restart) ---------------------------------
    def merge_due(self, job: int, more: int = 0) -> int:
        """How many late-merge requests of the job are not done, after adding ``more``:
        a merge waits in memory, and a recorder killed meanwhile left the late points
        out of the file for good, its reason saying they were merged (fault injection)."""
        if more:
            self._db.execute(
                "UPDATE finals SET merge_due = merge_due + ? WHERE job = ?", (more, job)
            )
        row = self._db.execute("SELECT merge_due FROM finals WHERE job = ?", (job,)).fetchone()
        return int(row[0]) if row else 0

    def merge_done(self, job: int, taken: int) -> None:
        """The ``taken`` requests a merge started with are done; those made meanwhile stay."""
        self._db.execute(
            "UPDATE finals SET merge_due = max(0, merge_due - ?) WHERE job = ?", (taken, job)
        )

    def merges_due(self) -> list[int]:
        """Jobs whose late data is stored and not yet in their file (a merge cut short)."""
        rows = self._db.execute(
            "SELECT job FROM finals WHERE merge_due > 0 AND released = 0 ORDER BY job"
        ).fetchall()
        return [int(r[0]) for r in rows]

    def count_merge(self, job: int) -> int:
        self._db.execute("UPDATE finals SET merged = merged + 1 WHERE job = ?", (job,))
        got = self.final(job)
        return got[1] if got else 0
