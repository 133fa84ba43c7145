"""The highest job id a recorder's store shows the stack ran: the recorder's own reading
(recorder/store.py), and the scheduler's of the same file, read only, at its start
(scheduler/store.py), so that a replaced state file never gives a used id again."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from tomato_mqtt.model.jobs import PLAUSIBLE_ID, batch_id_bound

__all__ = ["finals_of", "highest_batch", "highest_stored"]


def highest_stored(db: sqlite3.Connection) -> tuple[int | None, int | None]:
    """The highest job id of the final files the store lists (table ``finals``), and of
    its stored batches within :func:`batch_id_bound` of it (:func:`highest_batch`)."""
    files = db.execute("SELECT max(job) FROM finals WHERE job <= ?", (PLAUSIBLE_ID,)).fetchone()[0]
    files = None if files is None else int(files)
    return files, highest_batch(db, files)


def highest_batch(db: sqlite3.Connection, files: int | None) -> int | None:
    """The highest job id of the store's batches (table ``stored``) within
    :func:`batch_id_bound` of ``files`` (a node's login names any job id in its batches:
    model.jobs)."""
    got = db.execute(
        "SELECT max(job) FROM stored WHERE job <= ?", (batch_id_bound(files),)
    ).fetchone()[0]
    return None if got is None else int(got)


def finals_of(db: sqlite3.Connection, ids: list[int]) -> dict[int, dict[str, Any]]:
    """How the store's final files of those of ``ids`` were asked for (table ``finals``:
    the job as its file carries it, and ``written``, the file's path, once written). The
    scheduler asks for each; a node's login, which may name any job in its batches,
    cannot make one."""
    marks = ",".join("?" * len(ids))
    rows = db.execute(f"SELECT job, args FROM finals WHERE job IN ({marks})", ids).fetchall()
    out: dict[int, dict[str, Any]] = {}
    for job, args in rows:
        try:
            got = json.loads(args)
        except ValueError:
            continue  # (the recorder says so itself when it reads it)
        if isinstance(got, dict):
            out[int(job)] = got
    return out
