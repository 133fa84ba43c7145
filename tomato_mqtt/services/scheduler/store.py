"""The scheduler's durable state: pipelines and jobs in sqlite.

WAL journal, one connection per store, every change committed on its own, so a
``kill -9`` at any moment leaves the last committed state behind. SQL is parametrised
throughout; JSON columns hold the payload and the job runner's progress.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tomato_mqtt.errors import ROOM_BYTES, cannot_write, locked, writable_bytes
from tomato_mqtt.model.jobs import (
    PLAUSIBLE_ID,
    Job,
    PipelineState,
    UnknownName,
    check_transition,
    highest_ran,
    utcnow,
)
from tomato_mqtt.services.jobids import finals_of, highest_stored

__all__ = [
    "StateStore",
    "StoreTaken",
    "finals_elsewhere",
    "highest_job_elsewhere",
    "ran_elsewhere",
]


class StoreTaken(RuntimeError):
    """Another scheduler holds the state file now (:meth:`StateStore.hold`)."""


_SCHEMA_VERSION = 2  # 2: jobs.owner (issue 10)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS pipelines (
    name TEXT PRIMARY KEY,
    position INTEGER NOT NULL DEFAULT 0,
    sample TEXT,
    ready INTEGER NOT NULL DEFAULT 0,
    jobid INTEGER,
    owner TEXT
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    jobname TEXT,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    submitted_at TEXT NOT NULL,
    launched_at TEXT,
    completed_at TEXT,
    pipeline TEXT,
    submit_dir TEXT,
    respath TEXT,
    snappath TEXT,
    reason TEXT,
    progress TEXT NOT NULL DEFAULT '{}',
    owner TEXT
);
-- the scheduler that holds the file (StateStore.hold): one that held it before may not
-- write (a table of its own: a file with it still opens in a tomato-mqtt that predates it)
CREATE TABLE IF NOT EXISTS holder (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    token TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
-- the job-status summary (queries.py) reads counts from these alone, never the rows
CREATE INDEX IF NOT EXISTS jobs_status_reason ON jobs (status, reason);
CREATE INDEX IF NOT EXISTS jobs_pipeline_status ON jobs (pipeline, status);
-- a submit's token (SubmitArgs.token) -> its job: a submit sent again is not queued twice
-- (a table of its own: a file with it still opens in a tomato-mqtt that predates it)
CREATE TABLE IF NOT EXISTS submit_tokens (
    owner TEXT NOT NULL,
    token TEXT NOT NULL,
    jobid INTEGER NOT NULL,
    PRIMARY KEY (owner, token)
);
-- the replies to requests that changed something (rpc.ReplyJournal): a copy of one, sent
-- again by a client while no answer came, that reaches the next scheduler is answered as
-- the first was (not "already holds the sample" for a load its predecessor carried out)
CREATE TABLE IF NOT EXISTS kept_replies (
    user TEXT NOT NULL,
    op TEXT NOT NULL,
    id TEXT NOT NULL,
    at REAL NOT NULL,
    reply BLOB NOT NULL,
    PRIMARY KEY (user, op, id)
);
CREATE INDEX IF NOT EXISTS kept_replies_at ON kept_replies (at);
"""

# tomato's pid / connected_at / jobpath are derived on reading (see _job), not stored
_DERIVED = frozenset({"pid", "connected_at", "jobpath"})
_JOB_COLUMNS = tuple(f for f in Job.model_fields if f not in _DERIVED)
_JSON_COLUMNS = frozenset({"payload", "progress"})
_CHUNK = 500  # ids per "IN (...)": below every sqlite's limit of parameters
_PIPELINE_FIELDS = frozenset(PipelineState.model_fields) - {"name"}
#: how long a kept reply is given again (s): far beyond a client's resends (-t)
REPLY_KEEP = 3600.0
#: how long a write waits for another program's lock on the file (s); only another
#: program takes it: this store is the file's one writer
LOCK_WAIT = 0.25


def _ident(path: Path) -> tuple[int, int] | None:
    """The file at ``path`` (device, inode), or None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class StateStore:
    """Pipelines and jobs of one scheduler. Not thread-safe: use it from one thread."""

    def __init__(self, path: Path, jobs_dir: Path | None = None) -> None:
        self.path = Path(path)
        #: the jobs' folders (``<jobs_dir>/<id>``): a launched job's ``jobpath``, as tomato
        self.jobs_dir = jobs_dir
        #: committed write transactions so far: a scheduling pass that finds the same
        #: count (and the same components and pipelines) has nothing new to decide
        self.writes = 0
        self._depth = 0  # nesting of _write: the outermost commits
        self._holder: str | None = None  # this store's token once it holds the file
        #: called (once) when another scheduler holds the file now (see hold)
        self.on_taken: Callable[[], object] | None = None
        #: why the file takes no writes now (a full disk, a read-only file): SQLite's
        #: words, from the first write refused until one is stored again; None: it does
        self.write_error: str | None = None
        #: called with write_error each time it changes
        self.on_write_error: Callable[[str | None], object] | None = None
        #: reasons given to jobs while the file took no writes, kept in memory (a reason
        #: is advisory): every read of the job has it until a write of the job is stored.
        #: A full datadir showed a running job `r` without a word for a minute, the reason
        #: the scheduler meant to give it lost with the write (a fault-injection run)
        self._reasons: dict[int, str | None] = {}
        self._stored: list[int] = []  # jobs written inside a transaction not yet committed
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._connect()
        try:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} was written by a newer tomato-mqtt (schema {version}, "
                    f"this one knows {_SCHEMA_VERSION})"
                )
            with self._write():
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
                cols = {r["name"] for r in self._db.execute("PRAGMA table_info(jobs)")}
                if "owner" not in cols:  # a version-1 file: jobs had no owner
                    self._db.execute("ALTER TABLE jobs ADD COLUMN owner TEXT")
                pcols = {r["name"] for r in self._db.execute("PRAGMA table_info(pipelines)")}
                if "owner" not in pcols:  # whose sample a pipeline holds (secured stacks)
                    self._db.execute("ALTER TABLE pipelines ADD COLUMN owner TEXT")
                tcols = {r["name"] for r in self._db.execute("PRAGMA table_info(submit_tokens)")}
                if "digest" not in tcols:  # what each submission asked for (ops._digest)
                    self._db.execute("ALTER TABLE submit_tokens ADD COLUMN digest TEXT")
                self._db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        except BaseException:
            self._db.close()  # refused (newer, or unreadable), and not left open
            raise

    def _connect(self) -> sqlite3.Connection:
        # autocommit mode: transactions are explicit (see _write). The scheduler's writes
        # run on its event loop: another program holding the file's write lock (an
        # sqlite3 shell inside a transaction) froze the whole scheduler for 30 s at each
        # write, heartbeats and answers too (a fault run); refused after LOCK_WAIT now,
        # said as the state file taking no writes (see write_error), and tried again
        db = sqlite3.connect(self.path, timeout=LOCK_WAIT, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed change survives a power cut too, not only a crash
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
        except BaseException:
            db.close()  # an unreadable file: refused, and not left open
            raise
        self._ident = _ident(self.path)
        return db

    def check_file(self) -> str | None:
        """Whether the file this store writes is still the one at its path; what was done
        about it if not (None: it is).

        A state file removed while the scheduler ran (its -wal and -shm too) was written
        on, open but nameless: submits, samples and job ends were accepted, and all of
        it was gone at the next start (a fault-injection review). It is written back
        from the open copy, and this store goes on with it. A file put in its place by
        someone else is not overwritten: said, for the next start to use."""
        now = _ident(self.path)
        if now == self._ident or self._depth or self._db.in_transaction:
            return None  # (a transaction open: the backup below would wait for it for ever)
        if now is not None:
            return (
                f"the state file {self.path} was replaced while the scheduler ran: it "
                "writes to the one it opened; the new one is used at the next start"
            )
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.restore")
        try:
            dst = sqlite3.connect(tmp)
            try:
                self._db.backup(dst)
            finally:
                dst.close()
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        old, self._db = self._db, self._connect()  # the old one stays if this fails
        old.close()
        return (
            f"the state file {self.path} was removed while the scheduler ran: written "
            "back from the copy it had open (nothing lost)"
        )

    def held(self) -> bool:
        """Whether this scheduler still holds the file (a read; every write checks it):
        True when it never took it (a store of a test, opened without :meth:`hold`)."""
        if self._holder is None:
            return True
        row = self._db.execute("SELECT token FROM holder WHERE id = 1").fetchone()
        if row is not None and row[0] == self._holder:
            return True
        if self.on_taken is not None:
            self.on_taken()
            self.on_taken = None
        return False

    def hold(self) -> None:
        """This scheduler holds the file from now on: one that held it before may write
        nothing more. A scheduler frozen (SIGSTOP) while its supervisor was killed and the
        stack started again went on when it resumed, as its successor ran: it wrote the
        progress it held over a job its successor had ended (a task "running" again, its
        end and points gone: a randomized fault run)."""
        token = uuid.uuid4().hex
        with self._write():
            self._db.execute(
                "INSERT INTO holder (id, token) VALUES (1, ?) "
                "ON CONFLICT(id) DO UPDATE SET token = excluded.token",
                (token,),
            )
        self._holder = token

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """The writes inside commit together (one fsync): what one decision changes
        (a job and its pipeline at launch) is stored whole or not at all. Synchronous
        code only: no ``await`` inside, so no other coroutine's write joins it."""
        with self._write(count=False):
            yield

    @contextmanager
    def _write(self, count: bool = True) -> Iterator[sqlite3.Connection]:
        if self._depth:  # inside transaction(): a savepoint, committed with it
            self._depth += 1
            self._db.execute("SAVEPOINT w")
            stored = len(self._stored)
            try:
                yield self._db
            except BaseException:
                del self._stored[stored:]  # (not stored: their reasons stay in memory)
                self._db.execute("ROLLBACK TO w")
                self._db.execute("RELEASE w")
                raise
            finally:
                self._depth -= 1
            self._db.execute("RELEASE w")
            self.writes += 1
            return
        try:
            # IMMEDIATE: take the write lock up front, so a read-check-write is atomic
            self._db.execute("BEGIN IMMEDIATE")
            if not self.held():
                self._db.execute("ROLLBACK")
                raise StoreTaken(
                    f"{self.path} is held by another scheduler now (this one was stopped"
                    " while a stack was started again): nothing more is written by this one"
                )
            self._depth = 1
            try:
                yield self._db
            except BaseException:
                if self._db.in_transaction:  # SQLite may have rolled back itself (SQLITE_FULL)
                    self._db.execute("ROLLBACK")
                raise
            finally:
                self._depth = 0
            self._db.execute("COMMIT")
        except sqlite3.Error as e:
            self._stored.clear()
            if self._db.in_transaction:  # a COMMIT refused (SQLite may or may not roll back)
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            if cannot_write(str(e)):
                self._write_state(str(e))
            raise
        except BaseException:
            self._stored.clear()
            raise
        for jobid in self._stored:  # their reasons are in the file now
            self._reasons.pop(jobid, None)
        self._stored.clear()
        self.writes += count
        if self.write_error is not None and self._has_room():
            self._write_state(None)

    def _has_room(self) -> bool:
        """Whether the file's disk has room and takes writes: a write that fits in the
        WAL's pages goes through on a full disk, and its success alone made the fault
        come and go every other second (a fault-injection review)."""
        free = writable_bytes(self.path.parent)
        return free is None or free >= ROOM_BYTES

    def probe_write(self) -> None:
        """While the file takes no writes: one small write, to find that it does again
        (an idle stack said the fault for as long as nothing else wrote)."""
        if self.write_error is None:
            return
        # a row written and taken back: an UPDATE that changed nothing wrote nothing, and
        # went through on a file made immutable, whose real writes failed ("takes writes
        # again", then the fault, every 2 s: a fault-injection tour)
        with contextlib.suppress(sqlite3.Error, StoreTaken), self._write(count=False) as db:
            probe = ("\0probe", "")  # (an owner no login has: NUL is in no name)
            db.execute("INSERT INTO submit_tokens (owner, token, jobid) VALUES (?, ?, 0)", probe)
            db.execute("DELETE FROM submit_tokens WHERE owner = ? AND token = ?", probe)

    def _write_state(self, error: str | None) -> None:
        if error == self.write_error:
            return
        self.write_error = error
        # once another program's lock is said, a write is refused at once until one goes
        # through: each waited LOCK_WAIT on the scheduler's loop, and the runners retry
        # their progress every second, so from four running jobs the loop did nothing but
        # wait (a review)
        wait = 0 if error is not None and locked(error) else int(LOCK_WAIT * 1000)
        with contextlib.suppress(sqlite3.Error):
            self._db.execute(f"PRAGMA busy_timeout = {wait}")
        if self.on_write_error is not None:
            self.on_write_error(error)

    # -- pipelines -------------------------------------------------------------------------
    def sync_pipelines(self, names: Iterable[str]) -> list[PipelineState]:
        """Make the stored pipelines those of the devices file; returns the vanished ones
        kept.

        New ones are added empty and not ready; existing ones keep sample, ready and job;
        vanished ones are removed unless a job runs on them or they hold a sample (a
        devices file cut short removed every pipeline at a start, their samples with
        them, and they came back empty with the file: a fault-injection run).
        """
        wanted = list(dict.fromkeys(names))
        with self._write() as db:
            have = {r["name"]: r for r in db.execute("SELECT name, jobid, sample FROM pipelines")}
            for pos, name in enumerate(wanted):
                if name in have:
                    db.execute("UPDATE pipelines SET position = ? WHERE name = ?", (pos, name))
                else:
                    db.execute("INSERT INTO pipelines (name, position) VALUES (?, ?)", (name, pos))
            keep = set(wanted)
            gone = [
                n
                for n, r in have.items()
                if n not in keep and r["jobid"] is None and r["sample"] is None
            ]
            db.executemany("DELETE FROM pipelines WHERE name = ?", [(n,) for n in gone])
        return [p for p in self.pipelines() if p.name not in keep]

    def pipelines(self) -> list[PipelineState]:
        rows = self._db.execute(
            "SELECT name, sample, ready, jobid, owner FROM pipelines ORDER BY position, name"
        )
        return [_pipeline(r) for r in rows]

    def pipeline(self, name: str) -> PipelineState:
        row = self._db.execute(
            "SELECT name, sample, ready, jobid, owner FROM pipelines WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            raise UnknownName(f"no pipeline named {name!r}")
        return _pipeline(row)

    def update_pipeline(self, name: str, /, **fields: Any) -> PipelineState:
        unknown = set(fields) - _PIPELINE_FIELDS
        if unknown:
            raise ValueError(
                f"unknown pipeline field(s) {', '.join(sorted(unknown))} "
                f"(known: {', '.join(sorted(_PIPELINE_FIELDS))})"
            )
        with self._write() as db:
            new = PipelineState.model_validate(self.pipeline(name).model_dump() | fields)
            db.execute(
                "UPDATE pipelines SET sample = ?, ready = ?, jobid = ?, owner = ? WHERE name = ?",
                (new.sampleid, int(new.ready), new.jobid, new.owner, name),
            )
        return new

    # -- jobs ------------------------------------------------------------------------------
    def last_id(self) -> int:
        """The highest job id given out so far (0 for none): the next is above it."""
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'jobs'").fetchone()
        top = self._db.execute("SELECT max(id) FROM jobs").fetchone()[0]
        return max(int(row[0]) if row else 0, int(top or 0))

    def continue_ids_after(self, n: int) -> bool:
        """Make the next job id at least ``n + 1`` (ids used elsewhere: see
        :func:`highest_job_elsewhere`); True when that moved it."""
        if n <= self.last_id():
            return False
        with self._write() as db:
            if db.execute("SELECT 1 FROM sqlite_sequence WHERE name = 'jobs'").fetchone():
                db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'jobs'", (n,))
            else:
                db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('jobs', ?)", (n,))
        return True

    def add_job(
        self,
        payload: dict[str, Any],
        jobname: str | None,
        submit_dir: str | None,
        owner: str | None = None,
        token: str | None = None,
        digest: str | None = None,
    ) -> Job:
        """Queue a job; ids count up from 1 and are never reused. ``token``: the
        submission's id, remembered with the job (:meth:`submitted`)."""
        with self._write() as db:
            cur = db.execute(
                "INSERT INTO jobs (jobname, payload, status, submitted_at, submit_dir, owner) "
                "VALUES (?, ?, 'q', ?, ?, ?)",
                (jobname, json.dumps(payload), utcnow(), submit_dir, owner),
            )
            jobid = cur.lastrowid
            if token is not None and jobid is not None:
                db.execute(
                    "INSERT INTO submit_tokens (owner, token, jobid, digest) VALUES (?, ?, ?, ?)",
                    (owner or "", token, jobid, digest),
                )
        if jobid is None:  # pragma: no cover - sqlite sets it on every INSERT
            raise RuntimeError("sqlite gave no id for the new job")
        return self.job(jobid)

    def submitted(self, owner: str | None, token: str) -> tuple[Job, str | None] | None:
        """The job that ``owner``'s submission ``token`` queued, if one did, and the
        digest of what that submission asked for (None: kept before digests were)."""
        row = self._db.execute(
            "SELECT jobid, digest FROM submit_tokens WHERE owner = ? AND token = ?",
            (owner or "", token),
        ).fetchone()
        if row is None:
            return None
        try:
            return self.job(int(row[0])), row[1]
        except UnknownName:  # its job is gone (a state file edited by hand): a new one
            return None

    # -- rpc.ReplyJournal: not state (``writes`` does not count them) ------------------------
    def reply_for(self, user: str, op: str, rid: str) -> bytes | None:
        """The reply kept for ``user``'s request ``rid`` of ``op`` (:data:`REPLY_KEEP`):
        by op too, so an id a client uses again for another op is never answered with
        the first op's reply (a review: an eject answered "loaded", not carried out)."""
        row = self._db.execute(
            "SELECT reply FROM kept_replies WHERE user = ? AND op = ? AND id = ? AND at > ?",
            (user, op, rid, time.time() - REPLY_KEEP),
        ).fetchone()
        return None if row is None else bytes(row[0])

    def keep_reply(self, user: str, op: str, rid: str, reply: bytes) -> None:
        """Keep the reply to ``user``'s request ``rid`` of ``op``; older ones than
        :data:`REPLY_KEEP` go."""
        now = time.time()
        with self._write(count=False) as db:
            db.execute("DELETE FROM kept_replies WHERE at < ?", (now - REPLY_KEEP,))
            db.execute(
                "INSERT OR REPLACE INTO kept_replies (user, op, id, at, reply)"
                " VALUES (?, ?, ?, ?, ?)",
                (user, op, rid, now, reply),
            )

    def job(self, id: int) -> Job:
        row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (id,)).fetchone()
        if row is None:
            raise UnknownName(f"no job with id {id}")
        return self._job(row)

    def jobs(
        self, ids: Iterable[int] | None = None, statuses: Iterable[str] | None = None
    ) -> list[Job]:
        """Jobs ordered by id; ``ids`` and ``statuses`` narrow the selection."""
        if ids is not None:
            ids = list(ids)
            if len(ids) > _CHUNK:  # sqlite limits the number of "?" in one statement
                parts = [ids[i : i + _CHUNK] for i in range(0, len(ids), _CHUNK)]
                found = [j for part in parts for j in self.jobs(part, statuses)]
                return sorted(found, key=lambda j: j.id)
        where: list[str] = []
        args: list[Any] = []
        for column, values in (("id", ids), ("status", statuses)):
            if values is None:
                continue
            vals = list(values)
            if not vals:
                return []
            # only "?" placeholders are spliced in, never values
            where.append(f"{column} IN ({', '.join('?' * len(vals))})")
            args.extend(vals)
        sql = "SELECT * FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [self._job(r) for r in self._db.execute(sql + " ORDER BY id", args)]

    def job_sizes(self, ids: list[int]) -> dict[int, int]:
        """The bytes of each job's payload and progress as stored (what its JSON in a
        reply is made of, beside ~1 kB of fields): read without building the jobs."""
        out: dict[int, int] = {}
        for i in range(0, len(ids), _CHUNK):
            part = ids[i : i + _CHUNK]
            rows = self._db.execute(
                "SELECT id, length(CAST(payload AS BLOB)) + "
                "coalesce(length(CAST(progress AS BLOB)), 0) FROM jobs "
                f"WHERE id IN ({', '.join('?' * len(part))})",
                part,
            )
            out.update((int(j), int(n)) for j, n in rows)
        return out

    def page_sizes(self, offset: int, limit: int) -> list[int]:
        """:meth:`job_sizes` of the jobs of a page of the whole listing, in its order."""
        rows = self._db.execute(
            "SELECT length(CAST(payload AS BLOB)) + coalesce(length(CAST(progress AS BLOB)), 0)"
            " FROM jobs ORDER BY id LIMIT ? OFFSET ?",
            (limit, offset),
        )
        return [int(n) for (n,) in rows]

    def jobs_page(self, offset: int, limit: int) -> list[Job]:
        """``limit`` jobs from position ``offset`` of the whole listing (by id)."""
        rows = self._db.execute("SELECT * FROM jobs ORDER BY id LIMIT ? OFFSET ?", (limit, offset))
        return [self._job(r) for r in rows]

    def queued_of(self, owner: str) -> int:
        """How many jobs ``owner`` has queued (q, qw): an index range per status."""
        return int(
            self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE status IN ('q', 'qw') AND owner = ?", (owner,)
            ).fetchone()[0]
        )

    def queue_ends(self, n: int) -> tuple[int, list[Job], list[Job]]:
        """How many jobs are queued (q, qw), the first ``n`` and the last ``n`` of them
        (none in both): one index range per status, however deep the queue."""
        first: list[int] = []
        last: list[int] = []
        count = 0
        for st in ("q", "qw"):
            count += self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE status = ?", (st,)
            ).fetchone()[0]
            first += self.status_ids(st, n)
            last += self.status_ids(st, n, last=True)
        head = sorted(first)[:n]
        tail = sorted(set(last) - set(head))[-n:] if count > len(head) else []
        byid = {j.id: j for j in self.jobs(ids=head + tail)}
        return count, [byid[i] for i in head], [byid[i] for i in tail]

    def job_ids(self, statuses: Iterable[str]) -> list[int]:
        """The ids of every job with one of ``statuses``, ascending (from the index)."""
        vals = list(statuses)
        marks = ", ".join("?" * len(vals))  # only "?" placeholders are spliced in
        sql = f"SELECT id FROM jobs WHERE status IN ({marks}) ORDER BY id"
        return [r[0] for r in self._db.execute(sql, vals)]

    def status_ids(self, status: str, n: int, last: bool = False) -> list[int]:
        """The first (or last) ``n`` ids with ``status``, ascending."""
        order = "DESC" if last else "ASC"  # one of two literals, never the caller's text
        rows = self._db.execute(
            f"SELECT id FROM jobs WHERE status = ? ORDER BY id {order} LIMIT ?", (status, n)
        )
        return sorted(r[0] for r in rows)

    def status_counts(self) -> dict[str, int]:
        """status -> number of jobs (from the index: no row is read)."""
        rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status")
        return {r[0]: r[1] for r in rows}

    def pipeline_counts(self) -> dict[str, dict[str, int]]:
        """pipeline -> status -> number of jobs that ran (or run) there."""
        out: dict[str, dict[str, int]] = {}
        rows = self._db.execute(
            "SELECT pipeline, status, COUNT(*) FROM jobs WHERE pipeline IS NOT NULL "
            "GROUP BY pipeline, status"
        )
        for pip, st, n in rows:
            out.setdefault(pip, {})[st] = n
        return out

    def reason_counts(self, statuses: Iterable[str]) -> list[tuple[str | None, int]]:
        """(reason, number of jobs) among ``statuses``, the most frequent first."""
        vals = list(statuses)
        marks = ", ".join("?" * len(vals))  # only "?" placeholders are spliced in
        rows = self._db.execute(
            f"SELECT reason, COUNT(*) AS n FROM jobs WHERE status IN ({marks}) "
            "GROUP BY reason ORDER BY n DESC, reason",
            vals,
        )
        return [(r[0], r[1]) for r in rows]

    def queue_rows(self) -> list[tuple[int, str, str | None, str, str | None]]:
        """(id, status, reason, payload JSON, owner) of every queued job, by id: what a
        scheduling pass needs, without building a model per job."""
        rows = self._db.execute(
            "SELECT id, status, reason, payload, owner FROM jobs "
            "WHERE status IN ('q', 'qw') ORDER BY id"
        )
        return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    def set_queue_states(self, changes: Iterable[tuple[int, str, str | None]]) -> list[int]:
        """Status and reason of many queued jobs in one transaction (one fsync, not one
        per job); returns the ids changed. Only q <-> qw: launching goes by update_job."""
        done: list[int] = []
        with self._write() as db:
            for jobid, status, reason in changes:
                if status not in ("q", "qw"):
                    raise ValueError(f"set_queue_states only queues jobs, not {status!r}")
                cur = db.execute(
                    "UPDATE jobs SET status = ?, reason = ? WHERE id = ? AND status IN ('q', 'qw')",
                    (status, reason, jobid),
                )
                if cur.rowcount:
                    done.append(jobid)
            self._stored.extend(done)
        return done

    def recent_finished(self, n: int) -> list[Job]:
        """The ``n`` finished jobs that ended last (newest first)."""
        if n <= 0:
            return []
        rows = self._db.execute(
            "SELECT * FROM jobs WHERE status IN ('c', 'ce', 'cd') "
            "ORDER BY completed_at DESC, id DESC LIMIT ?",
            (n,),
        )
        return [self._job(r) for r in rows]

    def _job(self, row: sqlite3.Row) -> Job:
        data = {c: row[c] for c in _JOB_COLUMNS}
        for c in _JSON_COLUMNS:
            data[c] = json.loads(data[c])
        data["connected_at"] = data["launched_at"]  # tasks start on the nodes at launch
        if self._reasons and data["id"] in self._reasons:
            data["reason"] = self._reasons[data["id"]]  # given, not stored (set_reason)
        if self.jobs_dir is not None and data["launched_at"] is not None:
            # the folder the recorder falls back to and writes snapshots into (the
            # results file's tomato_Job says the same)
            data["jobpath"] = str(self.jobs_dir / str(data["id"]))
        return Job.model_validate(data)

    def update_job(self, id: int, /, restored: bool = False, **fields: Any) -> Job:
        """Change fields of a job; a status change must be a valid transition
        (``restored``: also one only a restored state file's start makes)."""
        unknown = set(fields) - set(_JOB_COLUMNS)
        if unknown or "id" in fields:
            bad = ", ".join(sorted(unknown | ({"id"} & set(fields))))
            raise ValueError(f"cannot update job field(s) {bad}")
        with self._write() as db:
            old = self.job(id)
            if "status" in fields and fields["status"] != old.status:
                check_transition(old.status, str(fields["status"]), restored)
            new = Job.model_validate(old.model_dump() | fields)
            new.connected_at = new.launched_at
            dumped = new.model_dump()
            # column names come from the Job model, never from the caller
            cols = [c for c in _JOB_COLUMNS if c != "id"]
            values = [json.dumps(dumped[c]) if c in _JSON_COLUMNS else dumped[c] for c in cols]
            db.execute(
                f"UPDATE jobs SET {', '.join(f'{c} = ?' for c in cols)} WHERE id = ?",
                (*values, id),
            )
            # what it was given is stored with it, once the outermost write commits (a
            # savepoint inside transaction() is not stored yet: the COMMIT is what a full
            # disk refuses, and the reason was lost at the first retry: a review)
            self._stored.append(id)
        return new

    def set_reason(self, id: int, reason: str | None) -> Job:
        """A job's reason, stored; kept in memory instead while the file takes no
        writes (its reads have it until a write of the job is stored)."""
        try:
            return self.update_job(id, reason=reason)
        except sqlite3.Error as e:
            if not cannot_write(str(e)):
                raise
        self._reasons[id] = reason
        return self.job(id)

    def update_progress(self, id: int, progress: Mapping[str, Any]) -> None:
        """A running job's progress, that column alone: a runner stores it at each start
        and end of a task, and :meth:`update_job` read, validated and wrote the whole job
        again each time (its payload encoded anew: 0.55 against 0.11 ms a save at 50
        tasks, twice per task)."""
        with self._write() as db:
            cur = db.execute(
                "UPDATE jobs SET progress = ? WHERE id = ?", (json.dumps(progress), id)
            )
            if cur.rowcount == 0:
                raise UnknownName(f"no job with id {id}")

    def search(self, name: str, complete: bool = False) -> list[Job]:
        """Jobs whose name contains ``name`` (case-insensitive); ended jobs only when
        ``complete``."""
        ids = self.search_ids(name, complete)
        return self.jobs(ids=ids) if ids else []

    def search_ids(self, name: str, complete: bool = False) -> list[int]:
        """The ids of :meth:`search`'s jobs, none of them built."""
        escaped = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        # SQLite's LIKE ignores the case of ASCII letters only: for any other name the
        # candidates are every named job, matched here (found by a user: 'ESSAI-É' did
        # not find 'essai-é')
        sql = "SELECT id, jobname FROM jobs WHERE jobname LIKE ? ESCAPE '\\'"
        args: list[Any] = [f"%{escaped}%" if name.isascii() else "%"]
        if not complete:
            sql += " AND status NOT IN ('c', 'ce', 'cd')"
        rows = self._db.execute(sql + " ORDER BY id", args).fetchall()
        want = name.casefold()
        return [int(r[0]) for r in rows if name.isascii() or want in str(r[1]).casefold()]


def _pipeline(row: sqlite3.Row) -> PipelineState:
    return PipelineState(
        name=row["name"],
        sampleid=row["sample"],
        ready=bool(row["ready"]),
        jobid=row["jobid"],
        owner=row["owner"],
    )


def highest_job_elsewhere(recorder_db: Path, jobs_dir: Path) -> tuple[int, str]:
    """The highest job id this PC's recorder store or job folders know, and where it was
    seen. A state file that was removed, emptied or restored from a backup would start
    its ids again at 1 (or below ids already used): the recorder would then take a new
    job's points for late data of the old job of that id and rewrite its finished file.
    Read only (the recorder's file is its own; WAL lets a reader in while it writes)."""
    best, where = 0, ""
    if recorder_db.is_file():
        try:
            db = sqlite3.connect(f"file:{recorder_db}?mode=ro", uri=True, timeout=5.0)
            try:
                got = highest_ran(*highest_stored(db))
                if got is not None and got > best:
                    best, where = got, f"the recorder's store {recorder_db}"
            finally:
                db.close()
        except sqlite3.Error:
            pass  # unreadable: the recorder says so itself; the folders below still count
    if jobs_dir.is_dir():
        for d in jobs_dir.iterdir():
            if d.name.isdigit() and best < int(d.name) <= PLAUSIBLE_ID:
                best, where = int(d.name), f"the job folder {d}"
                if (d / "jobdata.json").is_file():  # (what tomato 2.2's job writes)
                    where = f"{TOMATO22_FOLDER} {d}"
    return best, where


def ran_elsewhere(
    recorder_db: Path, jobs_dir: Path, ids: list[int], finals: Mapping[int, object]
) -> dict[int, str]:
    """Those of ``ids`` (queued in the state file) that ran already, and where that is
    seen: this PC's recorder store wrote its final file (``finals``, as
    :func:`finals_elsewhere` read them), or its job folder (made at its launch) exists. A
    state file restored from a backup taken while they were queued ran them again under
    the same ids, their second run's points in no file (a randomized fault round). Not
    the store's batches: a node's login may name any job in its own components'
    batches, and would end others' queued jobs so."""
    out = {j: f"the recorder's store {recorder_db} wrote its file" for j in ids if j in finals}
    for job in ids:
        if job not in out and (jobs_dir / str(job)).is_dir():
            out[job] = f"its job folder {jobs_dir / str(job)} exists (made at its launch)"
    return out


def finals_elsewhere(recorder_db: Path, ids: list[int]) -> dict[int, dict[str, Any]]:
    """Those of ``ids`` whose final file this PC's recorder was asked for, with how
    (:func:`tomato_mqtt.services.jobids.finals_of`). Read only, as
    :func:`highest_job_elsewhere`; an unreadable store counts none (the recorder says so
    itself)."""
    out: dict[int, dict[str, Any]] = {}
    if ids and recorder_db.is_file():
        try:
            db = sqlite3.connect(f"file:{recorder_db}?mode=ro", uri=True, timeout=5.0)
            try:
                for i in range(0, len(ids), 500):  # (sqlite's limit on ? marks)
                    out.update(finals_of(db, ids[i : i + 500]))
            finally:
                db.close()
        except sqlite3.Error:
            pass  # unreadable: the recorder says so itself
    return out


#: how :func:`highest_job_elsewhere` names a job folder tomato 2.2 wrote: a lab moving
#: over with its datadir, whose ids continue after tomato 2.2's (a side-by-side tour:
#: the log asked whether the state file had been lost)
TOMATO22_FOLDER = "tomato 2.2's job folder"
