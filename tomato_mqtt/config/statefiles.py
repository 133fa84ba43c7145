"""The services' SQLite files, checked before anything starts on them.

A state file that cannot be read (garbage, a truncated copy, a disk error) made its
service crash at every restart: ``tomato start`` waited its whole timeout, then said
only "did not come up", the reason in a service's stderr log. :func:`unreadable` is a
cheap probe (the header, the schema and the file's length; not a full integrity check,
which would read a large store whole), and :func:`what_to_do` says what moving the file
away costs.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tomato_mqtt.errors import StartupError, cannot_write, lock_holders, locked, read_only

__all__ = ["held_elsewhere", "opened", "unreadable", "what_to_do"]

T = TypeVar("T")


#: a file up to this size is checked whole (``thorough``): a few tens of ms
THOROUGH_MAX = 32 * 2**20


def unreadable(path: Path, thorough: bool = False) -> str | None:
    """Why the SQLite file at ``path`` cannot be used, or None (also when it does not
    exist: a service creates it).

    ``thorough``: also SQLite's ``quick_check`` of every page, for a file of at most
    THOROUGH_MAX bytes (the scheduler's state: a damaged page inside it passed the cheap
    probe, and the scheduler then crash-looped, or failed its passes every 0.5 s for good
    while accepting submits into the damaged file: a fault-injection review)."""
    if not path.exists():
        return None
    try:
        size = path.stat().st_size
        if size == 0:
            return None  # an empty file is a new database to SQLite
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            page = db.execute("PRAGMA page_size").fetchone()[0]
            if thorough and size <= THOROUGH_MAX:
                found = [r[0] for r in db.execute("PRAGMA quick_check(3)")]
                if found != ["ok"]:
                    return "damaged: " + "; ".join(map(str, found))
        finally:
            db.close()
    except sqlite3.OperationalError as e:
        if "locked" in str(e):
            return None  # a running service holds it: not ours to judge
        return str(e)
    except (sqlite3.DatabaseError, OSError) as e:
        return str(e)
    wal = path.with_name(path.name + "-wal")
    if pages * page > size and not (wal.exists() and wal.stat().st_size > 0):
        # pages past the end of the file, and no WAL that holds them: cut short
        return f"truncated: {size} bytes of the {pages * page} its header describes"
    return None


def held_elsewhere(path: Path, wait: float = 0.2) -> str | None:
    """SQLite's words when another program holds the write lock of the file at ``path``
    (an sqlite3 shell inside a transaction), else None. Before a start: its service gave
    up at every restart, and `tomato start` said only "did not come up within 30 s" (a
    fault run). Takes the lock for a moment and writes nothing."""
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=wait)
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")
        finally:
            db.close()
    except sqlite3.Error as e:
        return str(e) if locked(str(e)) else None  # (anything else: unreadable's or the service's)
    return None


#: what moving each file away costs, for the message that names it
_COSTS = {
    "state": (
        "the queue and the pipelines' samples are lost (finished files are not touched; "
        "job ids continue after those the recorder and the job folders know)"
    ),
    "recorder": (
        "points of jobs that have not ended are lost unless a node's spool still holds "
        "them (finished files are not touched)"
    ),
    "spool": "the batches in it that the recorder has not stored are lost",
}


def opened(kind: str, path: Path, who: str, open_: Callable[[], T]) -> T:
    """``open_()`` of a service's SQLite file; a file SQLite cannot use becomes a
    :class:`~tomato_mqtt.errors.StartupError` naming it and the way out."""
    try:
        return open_()
    except sqlite3.DatabaseError as e:
        raise StartupError(what_to_do(kind, path, str(e), f"{who} cannot start")) from None


def what_to_do(kind: str, path: Path, why: str, outcome: str = "nothing was started") -> str:
    """One message: which file, why, and what to do: free space or fix permissions when
    it cannot be written (a fault-injection review: a full disk or an unwritable folder
    was reported as an unreadable file, with advice that would have thrown the intact
    queue away), else what moving it away costs."""
    what = {
        "state": "the scheduler's state file",
        "recorder": "the recorder's store",
        "spool": "the node's spool",
    }[kind]
    if locked(why):
        by = ", ".join(lock_holders(path)) or "a process not found in /proc/locks"
        # (before a start nothing retries: "writes go through once it lets go" left the
        # user waiting for a stack that was never started: a review)
        then = (
            "then run tomato start again"
            if outcome == "nothing was started"
            else "writes go through once it lets go"
        )
        return (
            f"{what} {path} is locked by another program ({by}): {outcome}. The file is "
            "intact: end that program's transaction or close it (an sqlite3 shell, a "
            f"backup tool); {then}. Do not move the file away: {_COSTS[kind]}"
        )
    if cannot_write(why):
        fix = (
            # (a disk error remounts ext4 read-only: SQLite says "disk I/O error", and
            # free space or permissions sent the user the wrong way: a fault run)
            "its disk is read-only now (mounted so, or remounted after a disk error): "
            "check the disk and mount it read-write"
            if read_only(path.parent)
            else f"free space on its disk, or let this user write {path.parent} and the "
            f"file (SQLite writes {path.name}-wal and -shm beside it)"
        )
        return (
            f"{what} {path} cannot be written ({why}): {outcome}. The file itself may "
            f"well be intact: {fix}; do not move it away: {_COSTS[kind]}"
        )
    return (
        f"{what} {path} cannot be read ({why}): {outcome}. Restore it from a "
        f"backup, or move it away to start afresh ({_COSTS[kind]})"
    )
