"""The node's crash-safe spool: every data batch until the recorder says it is stored.

A batch is written here *before* it is published, so a node killed or cut off from the
broker loses nothing it measured: on restart (or on a replay request) the batches are
sent again, and the recorder drops the duplicates by ``(component, stream, seq)``.

sqlite in WAL mode with ``synchronous=NORMAL``: a committed batch survives a crash of
the process (not of the operating system, which is the trade-off that keeps a commit
in the tens of microseconds). Retention is bounded by ``max_bytes``: when full, the
oldest unacknowledged batches are dropped and counted, and the node warns.

A spool that cannot be written (its disk is full, an I/O error) does not lose what it
is given: the batches it could not write are held in memory (within the same
``max_bytes``) and served from there (``get``, ``pending``) until acknowledged, and
written to the file as soon as it takes writes again; ``failing`` says why meanwhile.
They are also written to an *overflow* file on another disk where one takes them (a
private folder in the system's temporary folder, services/scratch.py): a node killed
or stopped while its spool refused writes lost them (a fault run: 326 of 400 points of
a job on a read-only datadir), and the next start of the spool takes them back from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import secrets
import sqlite3
import time
from pathlib import Path

__all__ = ["RETRY", "Spool"]

#: s between attempts to write held batches into a file that refused them
RETRY = 1.0

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS spooled (
    component TEXT NOT NULL,
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    raw BLOB NOT NULL,
    PRIMARY KEY (component, stream, seq)
);
"""

# a spool of a version that keyed batches by (component, epoch, seq): its streams are
# e<epoch>, as the recorder names the streams of batches without a stream id
_MIGRATE = """
INSERT OR IGNORE INTO spooled (component, stream, seq, epoch, raw)
    SELECT component, 'e' || epoch, seq, epoch, raw FROM batches;
DROP TABLE batches;
"""


#: bytes of the spool's WAL kept after a checkpoint (SQLite keeps all of it otherwise)
WAL_KEPT = 2**20


class Spool:
    """Unacknowledged data batches of one node, keyed by ``(component, stream, seq)``."""

    def __init__(
        self, path: Path, max_bytes: int = 256 * 2**20, overflow: Path | None = None
    ) -> None:
        """``overflow``: the folder of the overflow file (see the module); None: none."""
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.dropped_total = 0
        #: the overflow file of this spool (None: no folder for one)
        self.overflow_path = (
            overflow
            / f"spool-{hashlib.sha1(str(self.path.resolve()).encode()).hexdigest()[:16]}.sqlite"
            if overflow is not None
            else None
        )
        self._ov: sqlite3.Connection | None = None
        self._in_overflow: set[tuple[str, str, int]] = set()
        #: held batches not yet copied to the overflow file, oldest first (a scan of every
        #: held batch at each put made a long outage quadratic)
        self._to_copy: dict[tuple[str, str, int], None] = {}
        self._ov_retry_at = 0.0  # monotonic: when to try an overflow file that refused
        # its one writer: only another program takes the lock (an sqlite3 shell inside a
        # transaction); each write waited 5 s before the fault was said
        self._db = sqlite3.connect(
            self.path, timeout=1.0, isolation_level=None, check_same_thread=False
        )
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            # the WAL is cut back to this after a checkpoint: it stayed ~4 MB with nothing
            # spooled, counted in no `spool_max_mb`, and filled a small disk by itself (a
            # fault round: a 4 MiB tmpfs)
            self._db.execute(f"PRAGMA journal_size_limit={WAL_KEPT}")
            self._db.executescript(_SCHEMA)
            old = self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'batches'"
            ).fetchone()
            if old:
                self._db.executescript("BEGIN;" + _MIGRATE + "COMMIT;")
            row = self._db.execute("SELECT COALESCE(SUM(LENGTH(raw)), 0) FROM spooled").fetchone()
        except BaseException:
            self._db.close()  # an unreadable file: refused, and not left open
            raise
        self._bytes = int(row[0])
        #: batches the file did not take (disk full): (component, stream, seq) -> (epoch, raw)
        self._held: dict[tuple[str, str, int], tuple[int, bytes]] = {}
        #: why the file takes no writes now (None: it does)
        self.failing: str | None = None
        self._retry_at = 0.0  # monotonic: when to try the file again
        #: this spool file's own number, kept in it and in its overflow file: the overflow
        #: file is named by the path only, and a datadir removed and made again (a new
        #: stack, its job ids from 1 again) took back the old one's batches (a review)
        self.ident = self._ident()
        self._take_back_overflow()

    def _ident(self) -> int | None:
        with contextlib.suppress(sqlite3.Error):
            row = self._db.execute("SELECT value FROM meta WHERE key = 'ident'").fetchone()
            if row is not None:
                return int(row[0])
            ident = secrets.randbits(62)
            self._db.execute("INSERT INTO meta (key, value) VALUES ('ident', ?)", (ident,))
            return ident
        return None  # a new spool on a disk that takes no writes: its overflow is taken back

    # -- the overflow file ------------------------------------------------------------------
    def _overflow(self) -> sqlite3.Connection | None:
        if self._ov is None and self.overflow_path is not None:
            with contextlib.suppress(sqlite3.Error, OSError):
                db = sqlite3.connect(
                    self.overflow_path, timeout=1.0, isolation_level=None, check_same_thread=False
                )
                try:
                    db.execute("PRAGMA journal_mode=WAL")
                    db.execute("PRAGMA synchronous=NORMAL")
                    db.executescript(_SCHEMA)
                    if self.ident is not None:  # whose batches they are (_take_back_overflow)
                        db.execute(
                            "INSERT OR IGNORE INTO meta (key, value) VALUES ('ident', ?)",
                            (self.ident,),
                        )
                except BaseException:
                    db.close()  # (a full disk, say: tried again at the next flush)
                    raise
                self._ov = db
        return self._ov

    def _take_back_overflow(self) -> None:
        """At the start: what a spool that refused writes left in its overflow file (the
        node was killed or stopped meanwhile) is held again, and goes into the file."""
        if self.overflow_path is None or not self.overflow_path.exists():
            return
        db = self._overflow()
        if db is None:
            return
        owner = db.execute("SELECT value FROM meta WHERE key = 'ident'").fetchone()
        if owner is not None and self.ident is not None and int(owner[0]) != self.ident:
            self._set_aside(int(owner[0]))
            return
        rows = db.execute("SELECT component, stream, seq, epoch, raw FROM spooled").fetchall()
        for c, st, q, ep, raw in rows:
            key = (str(c), str(st), int(q))
            if key not in self._held:
                self._held[key] = (int(ep), bytes(raw))
                self._bytes += len(raw)
            self._in_overflow.add(key)
        if rows:
            log.warning(
                "spool %s: %d unacknowledged batch(es) taken back from its overflow file %s "
                "(written there while the spool refused writes)",
                self.path,
                len(rows),
                self.overflow_path,
            )
        self.retry(force=True)
        if not self._held:
            self._drop_overflow()

    def _set_aside(self, owner: int) -> None:
        """The overflow file of another spool file that had this path (removed since):
        its batches are not this spool's to send (their job ids name jobs of another
        state), kept under another name for a person to look at."""
        assert self.overflow_path is not None
        self._close_overflow()
        aside = self.overflow_path.with_name(f"{self.overflow_path.stem}.{owner}.orphan.sqlite")
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                Path(f"{self.overflow_path}{suffix}").rename(f"{aside}{suffix}")
        log.warning(
            "spool %s: the overflow file %s is of another spool file that had this path "
            "(removed since): not taken back, kept as %s",
            self.path,
            self.overflow_path,
            aside,
        )

    def _to_overflow(self) -> None:
        """The held batches the overflow file does not have yet, into it (best effort:
        it is the second copy's place, the memory keeps serving them)."""
        if not self._to_copy or time.monotonic() < self._ov_retry_at:
            return
        todo = [k for k in self._to_copy if k in self._held and k not in self._in_overflow]
        if not todo:
            self._to_copy.clear()
            return
        db = self._overflow()
        if db is None:
            return
        try:
            with db:
                db.execute("BEGIN")
                db.executemany(
                    "INSERT OR REPLACE INTO spooled (component, stream, seq, epoch, raw) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [(*k, *self._held[k]) for k in todo],
                )
        except sqlite3.Error as e:  # (its disk full too): tried again once per RETRY s
            log.debug(
                "spool %s: overflow file %s refused writes: %s", self.path, self.overflow_path, e
            )
            self._ov_retry_at = time.monotonic() + RETRY
            return
        self._in_overflow.update(todo)
        self._to_copy.clear()

    def _drop_overflow(self) -> None:
        """Every batch it had is in the spool's file now (or acknowledged): gone."""
        self._in_overflow.clear()
        self._close_overflow()
        if self.overflow_path is not None:
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(OSError):
                    Path(f"{self.overflow_path}{suffix}").unlink()

    def _close_overflow(self) -> None:
        if self._ov is not None:
            with contextlib.suppress(sqlite3.Error):
                self._ov.close()
            self._ov = None

    @property
    def overflowed(self) -> int:
        """Held batches that are in the overflow file too (safe from a kill of the node)."""
        return len(self._in_overflow)

    def close(self) -> None:
        self.retry(force=True)
        if self._held:
            self._to_overflow()
            lost = len(self._held) - len(self._in_overflow)
            if lost:  # in memory only: a stop while the file refused writes loses them
                log.warning(
                    "spool %s: %d unacknowledged batch(es) could not be written to the file "
                    "or its overflow file before the stop (%s): they are lost unless the "
                    "recorder stored them",
                    self.path,
                    lost,
                    self.failing,
                )
            if self._in_overflow:
                log.warning(
                    "spool %s: %d unacknowledged batch(es) the file refused (%s) are kept in "
                    "the overflow file %s: the node's next start sends them",
                    self.path,
                    len(self._in_overflow),
                    self.failing,
                    self.overflow_path,
                )
        self._close_overflow()
        self._db.close()

    def retry(self, force: bool = False) -> None:
        """Write the held batches into the file if it takes writes now (at most once per
        RETRY s unless ``force``): the node calls this with every flush round, so they
        reach the file also when no new batch comes."""
        if not force and time.monotonic() < self._retry_at:
            return
        if not self._held and self.failing is None:
            return
        try:
            if self._held:
                self._write_held()
            else:  # nothing held (the recorder stored them): is the file back? (its
                # fault was said until the next batch came, 45 s and more after space was
                # freed: an admin's tour)
                with self._db:
                    self._db.execute("BEGIN")
                    self._db.execute(
                        "INSERT INTO meta (key, value) VALUES ('probe', ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        (int(time.time()),),
                    )
            self.failing = None
        except sqlite3.Error as e:
            self.failing = str(e)
            self._retry_at = time.monotonic() + RETRY
            self._to_overflow()
            return
        if self._in_overflow:
            self._drop_overflow()

    def new_epoch(self) -> int:
        """A number never used before by this spool (and, being time-based, by a lost one)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        last = int(row[0]) if row else 0
        epoch = max(last + 1, int(time.time()))
        try:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('epoch', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (epoch,),
            )
        except sqlite3.Error as e:  # time-based: still new after a restart with a full disk
            self.failing = str(e)
        return epoch

    def put(self, component: str, stream: str, seq: int, epoch: int, raw: bytes) -> int:
        """Store one batch; returns how many old batches had to be dropped to make room.
        Never raises for the file: a batch it does not take is held (see the module)."""
        self._held[(component, stream, seq)] = (epoch, raw)
        self._to_copy[(component, stream, seq)] = None
        self._bytes += len(raw)
        self.retry(force=self.failing is None)  # a file that refused: once per RETRY s
        if self.failing is not None:  # each batch safe from a kill at once, not at a retry
            self._to_overflow()

        dropped = 0
        while self._bytes > self.max_bytes:  # the oldest go: in the file, else held ones
            freed = 0
            with contextlib.suppress(sqlite3.Error):  # a full disk may refuse a delete too
                oldest = self._db.execute(
                    "SELECT rowid, LENGTH(raw) FROM spooled ORDER BY rowid LIMIT 1"
                ).fetchone()
                if oldest is not None:
                    self._db.execute("DELETE FROM spooled WHERE rowid = ?", (oldest[0],))
                    freed = int(oldest[1])  # only once the delete went through
            if freed:
                self._bytes -= freed
            elif self._held:
                key = next(iter(self._held))
                self._bytes -= len(self._held.pop(key)[1])
                self._forget_overflow([key])
            else:
                break
            dropped += 1
        self.dropped_total += dropped
        return dropped

    def _write_held(self) -> None:
        """Into the file, oldest first, what it has not taken yet (raises sqlite3.Error)."""
        if not self._held:
            return
        with self._db:  # one transaction: all held batches, or none
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO spooled (component, stream, seq, epoch, raw) "
                "VALUES (?, ?, ?, ?, ?)",
                [(c, st, q, ep, raw) for (c, st, q), (ep, raw) in self._held.items()],
            )
        self._held.clear()
        self._to_copy.clear()

    def get(self, component: str, stream: str, first: int, last: int) -> list[tuple[int, bytes]]:
        """The batches still held in ``first..last`` (inclusive), by seq."""
        rows = self._db.execute(
            "SELECT seq, raw FROM spooled WHERE component = ? AND stream = ? "
            "AND seq BETWEEN ? AND ? ORDER BY seq",
            (component, stream, first, last),
        ).fetchall()
        out = {int(s): bytes(r) for s, r in rows}
        for (c, st, q), (_ep, raw) in self._held.items():
            if c == component and st == stream and first <= q <= last:
                out[q] = raw
        return sorted(out.items())

    def ack(self, component: str, stream: str, upto: int) -> int:
        """Forget every batch up to ``upto`` (the recorder has stored them); how many."""
        held = [k for k in self._held if k[0] == component and k[1] == stream and k[2] <= upto]
        for k in held:
            self._bytes -= len(self._held.pop(k)[1])
        self._forget_overflow(held)
        size = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(raw)), 0) FROM spooled "
            "WHERE component = ? AND stream = ? AND seq <= ?",
            (component, stream, upto),
        ).fetchone()
        if not size[0]:
            return len(held)
        try:
            self._db.execute(
                "DELETE FROM spooled WHERE component = ? AND stream = ? AND seq <= ?",
                (component, stream, upto),
            )
        except sqlite3.Error as e:  # kept: sent again on a replay, dropped as a duplicate
            self.failing = str(e)
            return len(held)
        self._bytes -= int(size[1])
        return int(size[0]) + len(held)

    def _forget_overflow(self, keys: list[tuple[str, str, int]]) -> None:
        """Batches acknowledged (or dropped for room) leave the overflow file too."""
        gone = [k for k in keys if k in self._in_overflow]
        if not gone or self._ov is None:
            return
        with contextlib.suppress(sqlite3.Error):
            self._ov.executemany(
                "DELETE FROM spooled WHERE component = ? AND stream = ? AND seq = ?", gone
            )
            self._in_overflow.difference_update(gone)
        if not self._held:
            self._drop_overflow()

    def pending(self) -> dict[tuple[str, str], tuple[int, int]]:
        """``{(component, stream): (first, last)}`` of what is not yet acknowledged."""
        rows = self._db.execute(
            "SELECT component, stream, MIN(seq), MAX(seq) FROM spooled GROUP BY component, stream"
        ).fetchall()
        out = {(str(c), str(st)): (int(a), int(b)) for c, st, a, b in rows}
        for c, st, q in self._held:
            a, b = out.get((c, st), (q, q))
            out[(c, st)] = (min(a, q), max(b, q))
        return out

    @property
    def size_bytes(self) -> int:
        return self._bytes
