"""The recorder's file commands: ``finalize`` (a job's file or a snapshot) and ``fetch``.

``finalize`` waits until every task's points are stored (no fixed wait: it wakes on each
stored batch, asking nodes to replay gaps), writes the file and replies with what is in
it; ``fetch`` hands a written file out in chunks to a CLI on another PC.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import logging
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import JsonValue

from tomato_mqtt.model.jobs import PLAUSIBLE_ID
from tomato_mqtt.services.recorder.files import (
    CHUNK,
    FetchArgs,
    FinalizeArgs,
    count_problems,
    role_points,
)
from tomato_mqtt.transport.rpc import CommandError, Result
from tomato_mqtt.wire.messages import stream_id

if TYPE_CHECKING:
    from tomato_mqtt.services.recorder.service import RecorderService

__all__ = ["FileOps"]

log = logging.getLogger(__name__)


class FileOps:
    def __init__(self, svc: RecorderService) -> None:
        self.svc = svc

    # -- files------------------------------------------------------------------------
    async def finalize(self, args: Mapping[str, JsonValue]) -> Result:
        svc = self.svc
        svc.guard.require_scheduler("finalize")
        a = FinalizeArgs.model_validate(args)
        store = svc.store
        if store is None:
            raise CommandError("recorder store not open")
        jobid = int(a.job["id"])  # type: ignore[arg-type]
        svc.jobs_seen.add(jobid)
        t0 = time.monotonic()
        # one job's finalizes one after the other, in the order they came: a recorder that
        # hung has several queued, and the scheduler's last one (the job's verdict, sent
        # once it is back) must be the file's last word (scheduler/lifecycle.py)
        async with svc.files.final_lock(jobid, a.snapshot):
            if not a.snapshot:
                await svc.files.wait_complete(jobid, a.expect, a.wait)
                # from here on, a batch of this job is late: it is merged into the file
                svc.files.remember_final(a)
                if svc.highest_file is None or svc.highest_file < jobid <= PLAUSIBLE_ID:
                    svc.highest_file = jobid  # (the scheduler's word: model.jobs.batch_id_bound)
                    # batches stored before that bound rose count now, as in the store's
                    # reading at a restart (they did not until one came: a review)
                    with contextlib.suppress(sqlite3.Error):
                        svc.highest_batch = store.highest_batch(jobid)
            t_wait = time.monotonic() - t0
            wrote = await svc.files.write(a, Path(a.path))
            written, note, altered = wrote.path, wrote.note, wrote.altered
            if not a.snapshot:
                svc.files.written(jobid, written)
        svc.remember_file(jobid, written)
        names = {str(m.get("name")) for m in a.roles.values()}  # the job's components
        if not a.snapshot:  # its points are in the file: the nodes may let them go now
            streams = [
                (e.component, stream_id(e.stream, e.epoch)) for e in a.expect if e.stream or e.epoch
            ]
            svc.ack_stored(names | {c for c, _ in streams}, streams)
        owner = a.job.get("owner")
        token, size = svc.files.token(written, owner if isinstance(owner, str) else None)
        log.info(
            "job %d: %s written to %s (%d bytes; waited %.3f s for data, wrote in %.3f s)",
            jobid,
            "snapshot" if a.snapshot else "file",
            written,
            size,
            t_wait,
            time.monotonic() - t0 - t_wait,
        )
        # what the file holds: the points it was written from (a batch stored during
        # the write is in the next, late merge, not in this file: counted as in it, the
        # job ended c with the point missing: a review)
        points = role_points(a, wrote.points)
        missing, extra = count_problems(a.expect, wrote.task_points)
        if missing:  # and why replays did not fill them, where that is known
            missing += svc.files.stuck_reasons(a.expect)
        conflicts = store.conflicts(jobid, names)
        kind = "snapshot" if a.snapshot else "file"
        msg = f"{kind} of job {jobid} written to {written}" + (f" ({note})" if note else "")
        if missing and not a.snapshot:
            msg += f"; still missing after {a.wait:g} s: {', '.join(missing)}"
        if altered:
            msg += f"; not as they came: {'; '.join(altered)}"
        await svc.publish_presence("online")
        return Result(
            msg,
            {
                "path": str(written),
                "size": size,
                "token": token,
                "chunks": max(1, -(-size // CHUNK)),
                "points": points,  # type: ignore[dict-item]
                "missing": missing,  # type: ignore[dict-item]
                "extra": extra,  # type: ignore[dict-item]
                "conflicts": conflicts,  # type: ignore[dict-item]
                "altered": altered,  # type: ignore[dict-item]
                "fallback": note or None,
                "storage_error": svc.storage_error,
                "temporary": written in svc.files.temporary,
            },
        )

    async def fetch(self, args: Mapping[str, JsonValue]) -> Result:
        svc = self.svc
        a = FetchArgs.model_validate(args)
        w = svc.files.tokens.get(a.token)
        if w is None:
            raise CommandError("unknown or expired file token: ask for the snapshot again")
        svc.guard.require_fetch(w.owner)
        chunks = max(1, -(-w.size // CHUNK))
        if a.index >= chunks:  # an empty success read as the file's end (an outside audit)
            raise CommandError(
                f"{w.path.name} has {chunks} chunk(s): no chunk {a.index}", code="not_found"
            )
        last = a.index == chunks - 1
        try:
            chunk = w.read(a.index * CHUNK, CHUNK, hold=not last and svc.files.hold(w))
        except OSError as e:
            if e.errno == errno.ESTALE:
                why = (
                    f"{w.path} has been replaced since the token was given (a newer "
                    "snapshot of the job?): ask for it again"
                )
            elif e.errno == errno.ENOENT:
                why = f"{w.path} is no longer there (moved or removed): ask for it again"
            else:
                why = f"cannot read {w.path}: {e.strerror or e}"
            gone = e.errno in (errno.ESTALE, errno.ENOENT)
            raise CommandError(why, code="conflict" if gone else "unavailable") from None
        if last:
            # its last chunk: a snapshot made for this transfer only goes; another file
            # is let go (its chunks fetched again are read by name, if it is the same)
            if w.path in svc.files.temporary:
                svc.files.drop_token(a.token)
            else:
                w.close()
        return Result(
            f"chunk {a.index} of {w.path.name}",
            {"index": a.index, "data": base64.b64encode(chunk).decode()},
        )
