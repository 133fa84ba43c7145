"""The recorder's files: the completeness check, the NetCDF writes, late merges, fetches.

- **Completeness is counted per task.** The scheduler's ``finalize`` names, for every
  task that ended with a known count, the points the runner took
  (:class:`Expect`). The recorder waits (asking nodes to replay gaps) until the store
  holds exactly that many points of that task, or the wait is over; the reply lists each
  task that lacks points or has extra ones, with both counts.
- **Late data is merged.** A final file's arguments are remembered (in memory and in
  the store's ``finals``); a batch of that job stored later schedules a rewrite of the
  same file (coalesced), a ``late_data_merged`` job event and a fresh recorder status,
  whose ``merged`` count tells the scheduler to update the job.
- **A path that cannot be written** gets the file in the job's fallback folder, and the
  reply's message names that fallback file.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from tomato_mqtt import __version__
from tomato_mqtt.model.jobs import merge_noted, merged_note
from tomato_mqtt.services.recorder.guard import file_points, group_points, missing_points
from tomato_mqtt.services.scratch import private_dir
from tomato_mqtt.transport.rpc import CommandError
from tomato_mqtt.wire.commands import Expect, FetchArgs, FinalizeArgs
from tomato_mqtt.wire.messages import stream_id

if TYPE_CHECKING:
    from tomato_mqtt.services.recorder.service import RecorderService

__all__ = ["CHUNK", "Expect", "FetchArgs", "Files", "FinalizeArgs", "count_problems"]

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
MERGE_DELAY = 0.5  # s: late batches of a replay arrive in a burst: one rewrite for all
#: file tokens (fetches that may go on) kept per login, and in all
TOKENS_PER_LOGIN = 20
TOKENS_KEPT = 2000
#: a fetch holds its file open from its first chunk on (at most this many at once, each
#: until its last chunk or FETCH_IDLE without one), so it reads the file as it was: a
#: snapshot of the same job written meanwhile replaces the file by name (two clients
#: snapshotting one job got "transfer incomplete: 23113 of 22473 bytes", and files of
#: equal size would have been spliced from two: fault injection). A fetch whose file is
#: not held finds it by name and is refused if another file took the name. Files are
#: not held for tokens nobody fetches (periodic snapshots, final writes: a review found
#: 63 replaced snapshots' space held), nor where os.pread is missing (Windows, where
#: an open file could not be replaced either)
TOKENS_OPEN = 64
FETCH_IDLE = 60.0
_PREAD = hasattr(os, "pread")


class FileKept(CommandError):
    """A job's file holds points the recorder's store no longer has: it is not
    replaced (its disk failed and lost what it had not made durable)."""


class Wrote(NamedTuple):
    """A file written: where, a note (a fallback, a kept file), the stored points it
    could not hold as they came, and the points it was written from, per component and
    per ``(component, task)``: counted with the rows the write read, so that a batch
    stored during the write (seconds for a large file) is not counted as in the file (a
    review: the job ended ``c`` with that point missing until a late merge)."""

    path: Path
    note: str
    altered: list[str]
    points: dict[str, int]
    task_points: dict[tuple[str, int | None], int]


@dataclass
class Written:
    path: Path
    size: int
    created: float = field(default_factory=time.time)
    owner: str | None = None  # the job's owner: only they (or an admin) may fetch it
    ident: tuple[int, int] = (0, 0)  # its (st_dev, st_ino) when the token was given
    fd: int | None = None  # the file, held open by a fetch under way (TOKENS_OPEN)
    used: float = 0.0  # monotonic: the fetch's last chunk

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None

    def read(self, offset: int, n: int, hold: bool) -> bytes:
        """``n`` bytes at ``offset`` of the file the token was given for (``hold``: keep
        it open for the next chunks); OSError (ESTALE) when another file has its name."""
        self.used = time.monotonic()
        if self.fd is None:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            keep = False
            try:
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != self.ident:
                    raise OSError(errno.ESTALE, "replaced")
                if not (hold and _PREAD):  # (a file of one chunk, read at once: its
                    # descriptor was never closed, one per snapshot: a soak run)
                    os.lseek(fd, offset, os.SEEK_SET)
                    return os.read(fd, n)
                keep = True
            finally:
                if not keep:
                    os.close(fd)
            self.fd = fd
        return os.pread(self.fd, n, offset)


def count_problems(
    expect: list[Expect], stored: dict[tuple[str, int | None], int]
) -> tuple[list[str], list[str]]:
    """(tasks lacking points, tasks with extra points), each described with both counts."""
    missing: list[str] = []
    extra: list[str] = []
    for e in expect:
        if e.npoints is None or e.task is None:
            continue
        got = stored.get((e.component, e.task), 0)
        if got < e.npoints:
            missing.append(f"task {e.task} on {e.component}: {got} of {e.npoints} points stored")
        elif got > e.npoints:
            extra.append(
                f"task {e.task} on {e.component}: {got} points stored, "
                f"but its runner took {e.npoints}"
            )
    return missing, extra


class Files:
    def __init__(self, svc: RecorderService) -> None:
        self.svc = svc
        self.tokens: dict[str, Written] = {}
        #: snapshots made in the private temporary folder (removed once fetched)
        self.temporary: set[Path] = set()
        self.finals: dict[int, dict[str, Any]] = {}  # job -> FinalizeArgs (+ "written")
        self._merging: set[int] = set()
        self._running: set[int] = set()  # jobs known to have no final file yet
        self._lock = asyncio.Lock()
        self._writing: int | None = None  # the job whose file is written under _lock
        self._final_locks: dict[int, list[Any]] = {}  # job -> [Lock, users]: final_lock
        #: released jobs whose late data was said to be kept unmerged (late_batch)
        self._released_told: set[int] = set()

    # -- completeness ---------------------------------------------------------------------
    async def wait_complete(self, job: int, expect: list[Expect], wait: float) -> list[str]:
        """Wait until no task lacks points (asking for replays); the shortfalls left."""
        store = self.svc.store
        if store is None:
            return []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            missing, _ = count_problems(expect, store.task_points(job))
            if not missing or loop.time() >= deadline:
                return missing
            for e in expect:
                if e.last_seq >= 0:
                    self.svc.request_missing(
                        e.component, stream_id(e.stream, e.epoch), e.last_seq, finalizing=True
                    )
            await self.svc.wait_stored(min(1.0, deadline - loop.time()))

    def stuck_reasons(self, expect: list[Expect]) -> list[str]:
        """Why the replays asked for did not fill the gaps of these tasks' streams (a
        batch the broker dropped as too large left a job ce with only the counts: fault
        injection), once they were asked for twice."""
        out: list[str] = []
        for e in expect:
            sid = stream_id(e.stream, e.epoch)
            st = self.svc.streams.get((e.component, sid))
            if st is None or st.asked < 2 or st.asked_for is None:
                continue
            why = self.svc.why_stuck(e.component, sid, list(st.asked_for[1]), st)
            if why not in out:
                out.append(why)
        return out

    # -- writing --------------------------------------------------------------------------
    async def write(self, a: FinalizeArgs, path: Path, *, merge: bool = False) -> Wrote:
        """Write the job's file at ``path``, else in the fallback folder."""
        from tomato_mqtt.services.recorder.netcdf import RoleInput, write_job_file
        from tomato_mqtt.services.recorder.store import Raws

        store = self.svc.store
        assert store is not None
        jobid = int(a.job["id"])  # type: ignore[arg-type]
        if store.released(jobid):
            # its batches are gone: a file written now would hold none of its points
            raise CommandError(
                f"job {jobid}'s points were released from the recorder's store "
                f"{self.svc.keep_days:g} days after its file was written ([recorder] "
                f"keep_days): its file {self.written_file(jobid) or a.path} is the one to use",
                code="conflict",
            )
        comp_to_role = {str(m.get("name")): role for role, m in a.roles.items()}
        # as tomato: a group per role that had a task (a role without one gets none)
        per_role: dict[str, list[int]] = {role: [] for role in roles_with_tasks(a)}
        async with self._lock:
            self._writing = jobid  # (busy: its batches are not released meanwhile)
            # their rowids only: the writer reads them in its thread, a few at a time
            for component, rowid in store.job_rows(jobid):
                role = comp_to_role.get(component)
                # (a role of the pipeline without a task gets no group: a batch its node
                # published naming the job is not in the file; it raised KeyError, and
                # the job's file could not be written at all: a review)
                if role in per_role:
                    per_role[role].append(rowid)
            roles = [
                RoleInput(
                    role=role,
                    component_json=component_json(role, a.roles[role]),
                    batches=Raws(store.path, rowids, jobid),
                    attrs=(
                        {"tomato_clock_offset": a.clock_offsets[role]}
                        if role in a.clock_offsets
                        else {}
                    ),
                )
                for role, rowids in per_role.items()
            ]
            root = {"tomato_version": __version__, "tomato_Job": job_json(a)}
            guard = self.svc.guard
            # counted in the same step as the rows were listed (nothing is stored
            # between: the store is written on this loop only)
            stored, per_task = store.job_points(jobid), store.task_points(jobid)
            will_hold = sum(n for c, n in stored.items() if comp_to_role.get(c) in per_role)
            checked = [path]  # the path as the guard resolved it (a symlink followed)
            problems: list[str] = []

            def checked_write(target: Path, guarded: bool = True) -> Path:
                # only below the allowed roots, never over a file of another job (the
                # check reads an existing file: in the thread too, as it waits for the
                # netCDF lock like the write: tomato_mqtt/nclock.py)
                if not guarded:  # a snapshot in this recorder's private folder
                    target.parent.mkdir(parents=True, exist_ok=True)
                    return write_in(target, target)
                own = Path(a.fallback_dir)
                target = checked[0] = guard.check_path(target, a.job, own, existing=False)
                folder = guard.open_folder(target.parent, own)
                if folder is None:
                    guard.check_existing(target, a.job, target)
                    return write_in(target, target)
                try:  # through the folder as opened and checked: no symlink swapped in
                    # after the check is followed (a review); an existing file read once
                    via = Path(f"/proc/self/fd/{folder}") / target.name
                    guard.check_existing(via, a.job, target)
                    write_in(via, target)
                except OSError as e:
                    if e.filename and str(e.filename).startswith("/proc/self/fd/"):
                        e.filename = str(target.parent / Path(str(e.filename)).name)
                    raise
                finally:
                    os.close(folder)
                return target

            def write_in(via: Path, target: Path) -> Path:
                """The file written at ``via`` (``target``, or a path to it through its
                open folder), said as ``target``."""
                keep = None
                if not a.snapshot and via.is_file():
                    had = file_points(via)
                    if had is not None and had > will_hold:
                        # the store lost points the file has (its disk failed: a fault
                        # review found a 117-point file replaced by one of 16 at a restart)
                        raise FileKept(
                            f"refused to overwrite {target}: it holds {had} points of job "
                            f"{jobid}, more than the {will_hold} in the recorder's store now; "
                            "it is kept as it is"
                        )

                    def keep(new: str) -> None:
                        # the same, point by point: late data can make up the total of a
                        # store that lost points (a review)
                        if lost := missing_points(via, new):
                            raise FileKept(
                                f"refused to overwrite {target}: it holds {lost} points of "
                                f"job {jobid} the recorder's store no longer has; it is kept "
                                "as it is"
                            )

                attrs = root
                if a.snapshot:  # a snapshot's tomato_Job names the file it is in
                    attrs = {**root, "tomato_Job": job_json(a, snappath=str(target))}
                problems.clear()
                write_job_file(via, roles, attrs, problems, keep, shown=target)
                return target

            def wrote(path: Path, note: str = "") -> Wrote:
                inside = {c for c, r in comp_to_role.items() if r in per_role}
                points = {c: n for c, n in stored.items() if c in inside}
                tasks = {k: n for k, n in per_task.items() if k[0] in inside}
                return Wrote(path, note, problems, points, tasks)

            try:
                return wrote(await asyncio.to_thread(checked_write, path))
            except (OSError, CommandError) as e:
                if merge and isinstance(e, FileKept):
                    raise  # (the merge says it and keeps following the file)
                log.warning("job %d: %s", jobid, e)
                path = checked[0]
                if isinstance(e, FileKept):
                    # the kept file stays the job's file (a fault run: the restarted
                    # stack's respath named the poorer one beside it); the store's points
                    # go beside it, said
                    side = beside(path, Path(a.fallback_dir))
                    try:
                        there = await asyncio.to_thread(checked_write, side)
                        also = f"the recorder's store's points are in {there}"
                    except (OSError, CommandError) as e2:
                        also = f"the recorder's store's points could not be written ({e2})"
                    return wrote(path, f"{e}; {also}")
                # keep the data: the job folder (checked the same way) instead
                fallback = beside(path, Path(a.fallback_dir))
                try:
                    written = await asyncio.to_thread(checked_write, fallback)
                except OSError as e2:
                    spare = private_dir() if a.snapshot else None
                    if spare is None:
                        # both named: the error named the fallback's temporary file, an
                        # admin could not tell which file of which folder (an admin's tour)
                        both = OSError(
                            f"{path} could not be written ({_said(e)}), nor {fallback} "
                            f"({_said(e2)}); the points stay in the recorder's store, and "
                            "the file is written once the folder takes writes again"
                        )
                        both.errno = e2.errno  # (not in its words: "[Errno 17] …")
                        raise both from e2
                    # a snapshot is a copy to read: on a full or read-only datadir it is
                    # made for its transfer only (it failed: "no space left in …/Jobs/1",
                    # while the user's own folder, where it goes, had room: a fault run)
                    name = f"snapshot.{jobid}.{uuid.uuid4().hex[:8]}.nc"
                    written = await asyncio.to_thread(checked_write, spare / name, False)
                    self.temporary.add(written)
                    return wrote(
                        written,
                        f"{path} could not be written ({_said(e2)}): the snapshot was made in "
                        f"{written} for this transfer only (removed once fetched)",
                    )
                return wrote(
                    written,
                    f"{path} could not be written ({_said(e)}); the file was written to "
                    f"the fallback file {written} instead",
                )

    def remember_final(self, a: FinalizeArgs) -> None:
        """From now on, a batch of this job stored later is merged into its file."""
        jobid = int(a.job["id"])  # type: ignore[arg-type]
        args = a.model_dump(mode="json")
        self._running.discard(jobid)
        self.finals[jobid] = args
        while len(self.finals) > 200:  # the store keeps them all: load older ones on demand
            self.finals.pop(next(iter(self.finals)))
        if self.svc.store is not None:
            try:
                self.svc.store.set_final(jobid, args)
            except sqlite3.Error as e:  # a full disk: late merges still work until restart
                log.warning("job %d: cannot remember its final file: %s", jobid, e)

    def written(self, jobid: int, path: Path) -> None:
        if jobid in self.finals:
            self.finals[jobid]["written"] = str(path)
            if self.svc.store is not None:
                with contextlib.suppress(sqlite3.Error):
                    self.svc.store.set_final(jobid, self.finals[jobid])

    def token(self, path: Path, owner: str | None = None) -> tuple[str, int]:
        st = os.stat(path)
        token = uuid.uuid4().hex
        self.tokens[token] = Written(path, st.st_size, owner=owner, ident=(st.st_dev, st.st_ino))
        # each login's oldest go beyond its own few: 100 kept for all, one operator's 101
        # snapshots ended another's download half-way ("unknown or expired file token": a
        # hostile tour)
        mine = [t for t, w in self.tokens.items() if w.owner == owner]
        if owner is not None:  # (an open stack's jobs have none: the bound for all)
            for old in mine[: max(0, len(mine) - TOKENS_PER_LOGIN)]:
                self.drop_token(old)
        while len(self.tokens) > TOKENS_KEPT:
            self.drop_token(next(iter(self.tokens)))
        self._held()  # (a fetch left half-way lets go of its file)
        return token, st.st_size

    def _held(self, but: Written | None = None) -> list[Written]:
        """The tokens whose fetch holds its file (``but`` aside), once those idle for
        FETCH_IDLE have let go of theirs."""
        now = time.monotonic()
        for x in self.tokens.values():
            if x.fd is not None and now - x.used > FETCH_IDLE:
                x.close()
        return [x for x in self.tokens.values() if x.fd is not None and x is not but]

    def hold(self, w: Written) -> bool:
        """Whether a fetch of ``w`` may hold its file open: the oldest held beyond
        TOKENS_OPEN (with it) are let go first."""
        held = self._held(but=w)
        for x in sorted(held, key=lambda x: x.used)[: max(0, len(held) + 1 - TOKENS_OPEN)]:
            x.close()
        return TOKENS_OPEN > 0

    def drop_token(self, token: str) -> None:
        """A token done with (its last chunk fetched, or evicted): its file let go."""
        w = self.tokens.pop(token, None)
        if w is not None:
            w.close()
            self.fetched(w.path)

    def close_tokens(self) -> None:
        for w in self.tokens.values():
            w.close()

    @staticmethod
    def sweep_temporary(older_than: float = 600.0) -> None:
        """At the recorder's start: the snapshots made for a transfer that never ended
        (the fetching client gone, a recorder restarted) go; a younger one may be another
        stack's of this user, being fetched."""
        folder = private_dir()
        if folder is None:
            return
        now = time.time()
        for p in folder.glob("snapshot.*.nc"):
            with contextlib.suppress(OSError):
                if now - p.stat().st_mtime > older_than:
                    p.unlink()

    def discard_temporary(self) -> None:
        """At the stop: every snapshot made for a transfer only goes, fetched or not."""
        self.close_tokens()
        for path in list(self.temporary):
            with contextlib.suppress(OSError):
                path.unlink()
        self.temporary.clear()

    def fetched(self, path: Path) -> None:
        """A file whose token is done with (its last chunk fetched, or evicted): a
        temporary snapshot goes."""
        if path in self.temporary and not any(w.path == path for w in self.tokens.values()):
            self.temporary.discard(path)
            with contextlib.suppress(OSError):
                path.unlink()

    # -- late data ------------------------------------------------------------------------
    def final_args(self, jobid: int) -> dict[str, Any] | None:
        if jobid in self.finals:
            return self.finals[jobid]
        store = self.svc.store
        got = store.final(jobid) if store is not None else None
        if got is not None:
            self.finals[jobid] = got[0]
            return got[0]
        return None

    def final_lock(
        self, jobid: int, snapshot: bool
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """Held while a job's file is finalized (not for a snapshot): in arrival order."""
        return contextlib.nullcontext() if snapshot else self._final_locked(jobid)

    @contextlib.asynccontextmanager
    async def _final_locked(self, jobid: int) -> AsyncIterator[None]:
        # (lock, how many hold or wait for it): forgotten when nobody does
        entry = self._final_locks.setdefault(jobid, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._final_locks[jobid]

    def foreign(self, jobid: int, component: str) -> bool:
        """A batch of ``component`` for a job whose file is final and which had no such
        component: a node's login may publish its own components' data naming any job,
        and such a batch was merged into another job's file, rewritten at each one (found
        by an outside audit)."""
        if jobid in self._running:
            return False
        args = self.final_args(jobid)
        if args is None:
            return False
        roles = args.get("roles")
        names = (
            {str(r.get("name")) for r in roles.values() if isinstance(r, dict)}
            if isinstance(roles, dict)
            else set()
        )
        return component not in names

    def not_its(self, jobid: int, component: str, task: int | None, n: int) -> str | None:
        """Why a batch of ``n`` points is not the ended job's: the store holds all the
        points its task on ``component`` took already (a batch of a stream no node told,
        merged into a finished job's file, made a task of 25 points hold 27: an
        integrator's run), or its role had no task (its file has no group for it: the
        merge counted it all the same, a review). None when it may be (a job still
        running, a count unknown)."""
        if jobid in self._running:
            return None
        args = self.final_args(jobid)
        store = self.svc.store
        if args is None or store is None:
            return None
        roles = args.get("roles")
        if isinstance(roles, dict):
            role = next(
                (r for r, m in roles.items() if isinstance(m, dict) and m.get("name") == component),
                None,
            )
            if role is not None and role not in task_roles(roles, args.get("job") or {}):
                return (
                    f"role {role} ({component}) had no task in job {jobid}: its batch is "
                    "kept, not merged into the job's file (which has no group for it)"
                )
        if task is None:
            return None
        want = next(
            (
                e.get("npoints")
                for e in args.get("expect") or []
                if isinstance(e, dict) and e.get("component") == component and e.get("task") == task
            ),
            None,
        )
        if not isinstance(want, int):
            return None
        have = store.task_points(jobid).get((component, task), 0)
        if have + n <= want:
            return None
        return (
            f"task {task} of job {jobid} on {component} has its {want} point(s) stored "
            f"already ({have}): a batch of {n} more is kept, not merged into its file"
        )

    def written_file(self, jobid: int) -> str | None:
        args = self.final_args(jobid)
        if args is None:
            return None
        return str(args.get("written") or args.get("path") or "") or None

    def busy(self, jobid: int) -> bool:
        """A finalize or a late merge of the job is under way or waiting, or a file of it
        (a snapshot too: a review) is being written, its batches read meanwhile."""
        writing = self._lock.locked() and self._writing == jobid
        return writing or jobid in self._final_locks or jobid in self._merging

    def late_batch(self, jobid: int, count: bool = True) -> None:
        """A new batch of ``jobid`` was stored: merge it if the job's file is final
        (``count``: a merge more is due; False: one due already is made)."""
        if jobid in self._merging or jobid in self._running or jobid in self._released_told:
            return
        if self.final_args(jobid) is None:
            # a running job: no store query per batch (remember_final forgets it)
            self._running.add(jobid)
            while len(self._running) > 1000:
                self._running.pop()
            return
        store = self.svc.store
        if store is not None and store.released(jobid):
            # its other batches are gone: a merge would write a file of these alone
            self._released_told.add(jobid)
            log.warning(
                "job %d: late data arrived after its points were released from the store "
                "([recorder] keep_days): kept in the store, its file is not rewritten",
                jobid,
            )
            return
        if store is not None and count:  # due until merged, also for a recorder started
            with contextlib.suppress(sqlite3.Error):  # again
                store.merge_due(jobid, 1)
        self._merging.add(jobid)
        self.svc.spawn(self._merge(jobid))

    def resume_merges(self) -> None:
        """The late merges left due are made: at the start, those a stopped recorder
        left (it was killed between storing late points and merging them: the file
        lacked them for good, and the job's reason said they were merged), and later,
        each release round, those that failed (a write refused)."""
        store = self.svc.store
        if store is None:
            return
        try:
            due = store.merges_due()
        except sqlite3.Error as e:
            log.warning("cannot read the late merges left to do: %s", e)
            return
        for jobid in due:
            if jobid in self._merging:
                continue
            log.info("job %d: merging the late data not merged yet", jobid)
            self.late_batch(jobid, count=False)

    async def _merge(self, jobid: int) -> None:
        await asyncio.sleep(MERGE_DELAY)
        self._merging.discard(jobid)  # batches from now on schedule another merge
        store = self.svc.store
        # (from the store when the memory's 200 no longer hold it: a review)
        args = self.final_args(jobid) if store is not None else None
        if args is None or store is None:
            return
        try:
            taken = store.merge_due(jobid)  # what this merge does: those made later stay
        except sqlite3.Error:
            taken = 0
        try:
            a = FinalizeArgs.model_validate({k: v for k, v in args.items() if k != "written"})
        except ValueError as e:  # (still due: said, and tried again later)
            log.error("job %d: its final file's arguments cannot be read: %s", jobid, e)
            return
        target = Path(str(args.get("written") or a.path))
        # the file's tomato_Job says what the job's status will (it kept "the file lacks
        # points: 72 of 300" in a file that held all 300: a fault review)
        total = sum(role_points(a, store.job_points(jobid)).values())
        # the batches stored late may be in the file already (written from the recorder's
        # memory while its store refused them, stored once the disk was freed): the file
        # is written again all the same, but nothing is said merged (a `c` job's reason
        # said "late data merged" of a file that had held every point: fault injection)
        before = await asyncio.to_thread(file_points, target) if target.is_file() else None
        nothing_new = before == total
        reason = str(a.job.get("reason") or "")
        if not nothing_new:
            reason = merge_noted(reason, merged_note(total))
        as_was, a = a, a.model_copy(update={"job": {**a.job, "reason": reason}})
        try:
            written, note, altered, _, _ = await self.write(a, target, merge=True)
        except FileKept as e:
            await self._kept(as_was, jobid, target, e)  # (nothing merged into the file)
            with contextlib.suppress(sqlite3.Error):
                store.merge_done(jobid, taken)  # (said, and the store keeps its points)
            return
        except Exception as e:  # (still due: a restarted recorder tries it again)
            log.error("job %d: merging late data into %s failed: %s", jobid, target, e)
            return
        # the file holds every stored point now: it counts as the job's write (a final
        # write that failed left it unstamped, and its batches were kept for good)
        self.written(jobid, written)
        with contextlib.suppress(sqlite3.Error):
            store.merge_done(jobid, taken)
        if nothing_new and not altered:
            log.info(
                "job %d: the batches stored late were in its file already (%d points): "
                "nothing merged",
                jobid,
                total,
            )
            return
        merged = 0
        with contextlib.suppress(sqlite3.Error):
            merged = store.count_merge(jobid)
        merged = max(merged, self.svc.merged.pop(jobid, 0) + 1)
        self.svc.merged[jobid] = merged  # re-inserted: the most recent merge comes last
        points = role_points(a, store.job_points(jobid))
        if altered:
            # a batch it could not hold (values of no point: a forged or buggy publish)
            # counted all the same: "now 11 points" of a file that held 10 (an
            # integrator's run). What the file holds, and the batch said as not merged
            held = await asyncio.to_thread(group_points, written)
            left_out = "late data not merged: " + "; ".join(altered)
            if held is not None:
                points = {role: held.get(role, 0) for role in points}
                components = {str(a.roles[r].get("name")): n for r, n in points.items()}
                self.svc.file_points[jobid] = components
                if sum(points.values()) != total:  # the file's tomato_Job says it too
                    said = f"{merged_note(sum(points.values()))}; {left_out}"
                    job = {
                        **a.job,
                        "reason": merge_noted(str(as_was.job.get("reason") or ""), said),
                    }
                    with contextlib.suppress(Exception):
                        await self.write(a.model_copy(update={"job": job}), written, merge=True)
            self.svc.not_merged[jobid] = left_out
        else:
            self.svc.file_points.pop(jobid, None)
        log.info("job %d: late data merged into %s (%s points)", jobid, written, points)
        self.svc.job_event(
            jobid,
            "late_data_merged",  # points per role, as the job's status counts them
            {"path": str(written), "points": points, "note": note or None, "altered": altered},
        )
        for problem in altered:
            log.error(
                "job %d: its file could not hold stored points as they came: %s", jobid, problem
            )
        await self.svc.publish_presence("online")

    async def _kept(self, a: FinalizeArgs, jobid: int, target: Path, e: FileKept) -> None:
        """Late data of a job whose file holds points the store lost: the file stays
        as it is (and stays the one later merges go to: the job's ``respath`` names it);
        the store's points with the late ones are written beside it, and said."""
        side = beside(target, Path(a.fallback_dir))
        try:
            written = (await self.write(a, side, merge=True)).path
            also = f"; the recorder's store with the late points is in {written}"
        except Exception as e2:
            also = f"; the late points stay in the recorder's store ({e2})"
        msg = f"late data not merged: {e}{also}"
        log.error("job %d: %s", jobid, msg)
        self.svc.job_event(jobid, "warning", {"message": msg})
        # the scheduler puts it in the job's reason (it said the points are merged)
        self.svc.not_merged.pop(jobid, None)
        self.svc.not_merged[jobid] = msg
        while len(self.svc.not_merged) > 200:
            self.svc.not_merged.pop(next(iter(self.svc.not_merged)))
        await self.svc.publish_presence("online")


def _said(e: BaseException) -> str:
    """An error in words, without the file name it carries (a writer's temporary file)."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e)


def beside(path: Path, folder: Path) -> Path:
    """Where a file that cannot be written at ``path`` goes: ``folder`` (the job folder),
    or, when ``path`` is in it already, a ``.store`` name beside it (a refused rewrite of
    a file in the job folder had nowhere to go: a review)."""
    there = folder / path.name
    if there.resolve() == path.resolve():
        return path.with_name(f"{path.stem}.store{path.suffix}")
    return there


def role_points(a: FinalizeArgs, stored: Mapping[str, int]) -> dict[str, int]:
    """Points per role of the job (the store counts them per component)."""
    return {role: stored.get(str(a.roles[role].get("name")), 0) for role in a.roles}


def roles_with_tasks(a: FinalizeArgs) -> list[str]:
    """The job's roles that have a task in its payload, in the pipeline's order."""
    return task_roles(a.roles, a.job)


def task_roles(roles: Mapping[str, Any], job: Mapping[str, Any]) -> list[str]:
    """Of ``roles`` (a pipeline's, in order), those with a task in ``job``'s payload (all
    of them when it has no method to tell)."""
    payload = job.get("payload")
    method = payload.get("method") if isinstance(payload, dict) else None
    if not isinstance(method, list):
        return list(roles)
    used = {t.get("component_role") for t in method if isinstance(t, dict)}
    return [r for r in roles if r in used]


def job_json(a: FinalizeArgs, **update: Any) -> str:
    """``tomato_Job``: the job with the fields of ``tomato.models.Job`` it lacks filled
    (``connected_at``: when the tasks started, ``jobpath``: the job's folder, ``pid``:
    none, no job process here), and ``update`` (a snapshot's ``snappath``: the file it
    was written to, also when that is the fallback folder's)."""
    job = {**a.job, **update}
    # the scheduler's Job has these fields (schema 2) but may leave them null
    job["connected_at"] = job.get("connected_at") or job.get("launched_at")
    job["jobpath"] = job.get("jobpath") or a.fallback_dir
    job.setdefault("pid", None)
    return json.dumps(job, separators=(",", ":"))


def component_json(role: str, meta: dict[str, Any]) -> str:
    """``tomato_Component``: the component's meta with its ``role``, as
    ``tomato.models.Component`` requires (name, driver, device, address, channel, role,
    capabilities)."""
    return json.dumps({**meta, "role": role}, separators=(",", ":"))


def warm_up_writer() -> None:
    """Import xarray/netCDF4 and write one tiny file, before the first job ends.

    Both load lazily and the first file otherwise takes ~1 s longer than the next ones;
    that second belongs to startup, not to the user waiting for a results file.
    """
    import tempfile

    from tomato_mqtt.services.recorder.netcdf import RoleInput, write_job_file

    try:
        with tempfile.TemporaryDirectory(prefix="tomato-mqtt-warmup-") as d:
            write_job_file(Path(d) / "warmup.nc", [RoleInput("r", "{}", [])], {"x": "y"})
    except Exception as e:  # a warm-up must never take the recorder down
        log.debug("writer warm-up failed: %s", e)


def epoch_of(stream: str) -> int:
    """The node epoch a stream id starts with (``<epoch hex>-<random>`` or ``e<epoch>``)."""
    try:
        n = int(stream[1:]) if stream.startswith("e") else int(stream.split("-", 1)[0], 16)
    except ValueError:
        return 0
    return n if abs(n) < 2**63 else 0  # (as a node's spool stores it: a forged stream)
