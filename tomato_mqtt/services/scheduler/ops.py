"""The scheduler's operations: one method per ``scheduler/cmd/<op>``, plus the queue.

Dispatched through the explicit table of :meth:`SchedulerOps.table`. Each operation
validates its arguments, changes the durable state, publishes what changed, and returns
a :class:`Result`; refusals raise :class:`CommandError` with a message for the user.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import JsonValue

from tomato_mqtt.config.payloads import PayloadError, parse_payload, read_payload_text
from tomato_mqtt.config.roles import is_admin
from tomato_mqtt.config.settings import lies_under
from tomato_mqtt.errors import cannot_write
from tomato_mqtt.model.jobs import Job
from tomato_mqtt.services.scheduler.access import Access
from tomato_mqtt.services.scheduler.jobstatus import (
    ENDS,
    budget_of,
    cut_ids,
    job_status,
    within_budget,
)
from tomato_mqtt.services.scheduler.lifecycle import JobLifecycle, output_dir
from tomato_mqtt.services.scheduler.queue import QueuePass
from tomato_mqtt.services.scheduler.reload import reload
from tomato_mqtt.services.scheduler.runner import cancelled_by
from tomato_mqtt.services.scheduler.status import pipeline_info, status_section
from tomato_mqtt.transport.rpc import CommandError, Handler, Result
from tomato_mqtt.wire.commands import (
    JobIdsArgs,
    JobStatusArgs,
    LoadArgs,
    NoArgs,
    PipelineArgs,
    SearchArgs,
    SnapshotArgs,
    StatusArgs,
    StopArgs,
    SubmitArgs,
)
from tomato_mqtt.wire.names import did_you_mean
from tomato_mqtt.wire.topics import ANONYMOUS

if TYPE_CHECKING:
    from tomato_mqtt.services.scheduler.service import SchedulerService

__all__ = ["SchedulerOps"]

log = logging.getLogger(__name__)

#: s a snapshot waits for a recorder found not answering to be back (a killed one is
#: restarted by the supervisor and takes the request again) before it says so
SNAPSHOT_RECORDER_BACK = 3.0
#: s `tomato stop --force` waits for the cancelled jobs' runners before it stops all
#: the same (a recorder that does not answer their finalize: each waits up to 3 x 60 s)
FORCE_STOP_WAIT = 30.0


def _submitted(job: Job, note: str = "") -> Result:
    """A submit's answer: the job it queued (also to the same submission sent again)."""
    named = f" and jobname {job.jobname!r}" if job.jobname else ""  # as tomato says it
    return Result(
        f"job submitted successfully with jobid {job.id}{named}{note}",
        job.model_dump(mode="json"),
    )


#: snapshots of one login made at once on a secured stack (job_snapshot)
SNAPSHOTS_PER_LOGIN = 2


def _taken(path: Path) -> bool:
    """Something is at ``path`` (a new job's file would not be written there)."""
    try:
        return path.exists() or path.is_symlink()
    except OSError:
        return False


def _under(folder: Path, roots: list[Path]) -> bool:
    """``folder`` (resolved as far as it exists) lies under one of ``roots``."""
    try:
        target = folder.resolve()
    except OSError:
        return False
    return lies_under(target, roots)


def _resolved(folder: Path) -> Path:
    """``folder`` resolved as far as it can be (a root for :func:`_under`: a datadir on a
    symlinked disk was never found under itself, a review)."""
    try:
        return folder.resolve()
    except OSError:
        return folder


def _payload_from_text(text: str) -> dict[str, Any]:
    """A payload sent as its file's text (``ketchup submit``: the CLI need not load a
    YAML parser). Refusals name no file: the submitter adds its own path."""
    try:
        doc = read_payload_text(text, "")
    except PayloadError as e:
        raise PayloadError(e.location, e.reason) from None
    # YAML may hold dates and the like: what JSON can carry, as the CLI sends it
    out: dict[str, Any] = json.loads(json.dumps(doc, default=str))
    return out


def _digest(a: SubmitArgs) -> str:
    """What a submission asked for, as sent (its copies are byte for byte the same)."""
    try:  # CPython's own sha256, as wire/slugs.py takes its blake2: hashlib's is OpenSSL's,
        # whose first call in the scheduler (forked, its pages shared) touched ~0.9 MB more
        # of libcrypto (bench.memory, issue 15)
        from _sha256 import sha256
    except ImportError:  # another Python (3.12: _sha2)
        from hashlib import sha256

    sent = {"payload": a.payload, "payload_text": a.payload_text, "jobname": a.jobname}
    text = json.dumps(sent, sort_keys=True, separators=(",", ":"), default=str)
    digest: str = sha256(text.encode()).hexdigest()
    return digest


NAME_MAX = 256
"""characters a job name or a sample name may have."""


#: the shortest period of a job's own snapshots (settings.snapshot.interval): each is a
#: whole file written anew (0.0001 s made 783 of a 15 s job, the recorder at 63 % of a
#: core: a hostile tour)
MIN_SNAPSHOT_INTERVAL = 1.0
#: the longest file name prefix, in UTF-8 bytes ("<prefix>.store.nc" within a file
#: system's 255)
PREFIX_MAX = 200


def _check_files(settings: Mapping[str, Any]) -> None:
    """What a payload names of its files: ``output`` and ``snapshot`` each take a folder
    (``path``) and a file name (``prefix``). A prefix with ``/`` named a file in another
    job's folder (``Jobs/1/results.1``: the owner's file went beside it), made folders
    such as ``Jobs/999999999999`` (the next job ids followed it), and a NUL or a 5,000
    character prefix failed only at the job's end, with no file (a hostile tour)."""
    for key in ("output", "snapshot"):
        part = settings.get(key)
        if not isinstance(part, Mapping):
            continue
        for field in ("path", "prefix"):
            value = part.get(field)
            if not isinstance(value, str):
                continue
            where = f"settings.{key}.{field}"
            if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
                raise CommandError(
                    f"payload refused: {where}: {value!r} holds a control character",
                    code="bad_request",
                )
            if field != "prefix" or not value:  # (empty: the default name)
                continue
            if "/" in value or "\\" in value or value in ("", ".", ".."):
                raise CommandError(
                    f"payload refused: {where}: {value!r} is a file name, not a path: "
                    f"give the folder as settings.{key}.path",
                    code="bad_request",
                )
            if len(value.encode()) > PREFIX_MAX:
                raise CommandError(
                    f"payload refused: {where} is {len(value.encode()):,} bytes long: at "
                    f"most {PREFIX_MAX} (a file name's limit)",
                    code="bad_request",
                )
    snap = settings.get("snapshot")
    interval = snap.get("interval") if isinstance(snap, Mapping) else None
    if isinstance(interval, (int, float)) and interval < MIN_SNAPSHOT_INTERVAL:
        raise CommandError(
            f"payload refused: settings.snapshot.interval: {interval:g} s is below "
            f"{MIN_SNAPSHOT_INTERVAL:g} s (each snapshot writes the whole file anew)",
            code="bad_request",
        )


def _hidden(c: str) -> bool:
    """A character a terminal or page does not show as itself: a control character, or
    an invisible or reordering one (zero-width space U+200B, right-to-left override
    U+202E, line separator U+2028: a job named ``otto-job\u200b`` looked exactly like
    otto's, a hostile tour)."""
    if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0:
        return True
    if ord(c) < 0x80:
        return False
    import unicodedata

    # (and the blank letters: Hangul fillers, the braille blank; U+061C, U+180E are Cf:
    # a review), the marks that show nothing (the combining grapheme joiner U+034F,
    # variation selectors), and spaces other than " " (U+3000, U+00A0: `s3` + U+034F
    # and `olga-job` + U+3000 looked exactly like `s3` and `olga-job`, a security round)
    return (
        unicodedata.category(c) in ("Cf", "Zl", "Zp", "Zs")
        or c in _BLANKS
        or any(a <= ord(c) <= b for a, b in _NO_SHOW)
    )


#: letters that show nothing (a name ending in one looks like the name without it)
_BLANKS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
#: marks that show nothing (Unicode's default-ignorable nonspacing marks)
_NO_SHOW = (
    (0x034F, 0x034F),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0xFE00, 0xFE0F),
    (0xE0100, 0xE01EF),
)


def _no_controls(what: str, text: object) -> None:
    """Names people read in terminals hold no control characters: a job named
    "x\nstatus:    c" printed a fake status line in another user's `ketchup status`,
    and an escape sequence retitled and cleared their terminal (an outside audit), nor
    invisible ones (:func:`_hidden`); and at most ``NAME_MAX`` characters."""
    if isinstance(text, str) and any(_hidden(c) for c in text):
        raise CommandError(
            f"{what} may not hold control characters, invisible ones or spaces other "
            f"than ' ' (got {text!r})",
            code="bad_request",
        )
    if isinstance(text, str) and len(text) > NAME_MAX:
        # 5,000 characters were taken, and made the dashboard's tables 50,000 px wide
        # and every `ketchup status` table unreadable (a dashboard tour)
        raise CommandError(
            f"{what} is {len(text):,} characters long: at most {NAME_MAX} (it is shown in "
            f"tables, pages and file attributes; got {text[:40]!r}…)",
            code="bad_request",
        )


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


class SchedulerOps:
    def __init__(self, svc: SchedulerService) -> None:
        self.svc = svc
        self.queue = QueuePass(self)
        self._summary: tuple[int, Result] | None = None  # (store writes, summary)
        self.jobs = JobLifecycle(svc)
        self.access = Access(svc.settings)
        #: login -> its snapshots being made (job_snapshot)
        self._snapping: dict[str, int] = {}
        #: a stop is under way (its task spawned): a repeated `stop` changes nothing
        self._stopping = False

    @property
    def store(self) -> Any:
        if self.svc.store is None:
            raise CommandError("scheduler state is not open", code="unavailable")
        return self.svc.store

    def table(self) -> dict[str, Handler]:
        return {
            "status": self.status,
            "reload": self.reload,
            "stop": self.stop,
            "pipeline_load": self.pipeline_load,
            "pipeline_eject": self.pipeline_eject,
            "pipeline_ready": self.pipeline_ready,
            "job_submit": self.job_submit,
            "job_status": self.job_status,
            "job_cancel": self.job_cancel,
            "job_search": self.job_search,
            "job_snapshot": self.job_snapshot,
            "whoami": self.whoami,
        }

    async def whoami(self, args: Mapping[str, JsonValue]) -> Result:
        """Who the scheduler thinks asked, and what that role may send."""
        NoArgs.model_validate(args)
        me = self.access.whoami()
        return Result(f"you are {me['user']} (role {me['role'] or 'none'})", me)

    # -- status ----------------------------------------------------------------------------
    async def status(self, args: Mapping[str, JsonValue]) -> Result:
        self.access.require("status")
        a = StatusArgs.model_validate(args)
        _user, role = self.access.who()
        # driver settings are an admin's to read (in every section that holds them)
        shown = self.access.roles.open or is_admin(role)
        return status_section(self.svc, self.store, a.what, settings_shown=shown)

    # -- reload ----------------------------------------------------------------------------
    async def reload(self, args: Mapping[str, JsonValue]) -> Result:
        return await reload(self, args)

    async def stop(self, args: Mapping[str, JsonValue]) -> Result:
        self.access.require("stop")
        a = StopArgs.model_validate(args)
        if self._stopping:  # asked again (`tomato stop` repeats a stop under way, lest a
            # restarted scheduler forgot it): one stop, not a second wait
            return Result("stopping tomato-mqtt (asked already)")
        try:
            running = self.store.jobs(statuses=["r", "rd"])
        except sqlite3.DatabaseError as e:
            damaged = self.svc.state_fault(e)
            if damaged is None:
                raise
            # the file cannot say which jobs run: the stack stops (a user who cannot
            # stop it is left with kill); their points stay in the recorder's store
            ids = ", ".join(str(i) for i in sorted(self.svc.runners)) or "none"
            self.svc.exit_requested = self._stopping = True
            self.svc.spawn(self._stop_soon())
            return Result(
                f"stopping tomato-mqtt, its state file being damaged (jobs running: {ids}; "
                "their points so far stay in the recorder's store). " + damaged
            )
        if running and a.force:
            return await self._stop_cancelling(running)
        if running:
            ids = ", ".join(str(j.id) for j in running)
            why = (
                f"cannot stop: job(s) {ids} are running (cancel them first, or `tomato stop "
                "--force`, which cancels them and stops once their tasks are stopped)"
            )
            if self.svc.state_unwritable is not None:
                # their ends wait for the file (a review: refused without saying why
                # they did not end)
                why += (
                    "; they end once the state file takes their ends: " + self.svc.state_unwritable
                )
            raise CommandError(why, code="conflict")
        self.svc.exit_requested = self._stopping = True
        self.svc.spawn(self._stop_soon())
        return Result("stopping tomato-mqtt")

    async def _stop_cancelling(self, running: list[Job]) -> Result:
        """``stop`` with ``force`` while jobs run: each is cancelled (its tasks stopped,
        its file written, ``cd``), and the stack stops once their runners are done, or
        after FORCE_STOP_WAIT s. A datadir gone read-only mid-job left no way out but a
        kill (its jobs' ends could not be stored, so `tomato stop` was refused for good:
        a fault run); their points stay in the recorder's store and the nodes' spools,
        and a job whose end the state file did not take ends at the next start."""
        self.svc.exit_requested = True  # nothing launches meanwhile (queue.py)
        ids = [j.id for j in running]
        to_cancel: list[JsonValue] = [j.id for j in running if j.status == "r"]
        try:
            told = await self.job_cancel({"jobids": to_cancel}) if to_cancel else None
        except BaseException:  # no stop under way: the next `stop` tries again (a review)
            self.svc.exit_requested = False
            raise
        self._stopping = True
        self.svc.spawn(self._stop_when_done(ids))
        unstored = (
            "; the state file takes no writes now: a job whose end it has not taken by the "
            "stop ends ce at the next start, its points kept in the recorder's store and "
            f"the nodes' spools ({self.svc.state_unwritable})"
            if self.svc.state_unwritable is not None
            else ""
        )
        if self.svc.presence_view.recorder_down is not None:
            # said now: the reply goes before the wait, and the CLI then said only
            # "stopped" after 30 s (a review: the files were not written at the stop)
            unstored += (
                f"; the recorder is not answering: the stack stops after at most "
                f"{FORCE_STOP_WAIT:g} s without their files, which are written at the next start"
            )
        return Result(
            f"stopping tomato-mqtt once the tasks of job(s) {', '.join(map(str, ids))} are "
            f"stopped ({told.msg if told else 'being cancelled already'}){unstored}"
        )

    async def _stop_when_done(self, ids: list[int]) -> None:
        deadline = time.monotonic() + FORCE_STOP_WAIT

        def busy(i: int) -> bool:  # (a job being launched: its runner is started soon)
            svc = self.svc
            # (a job whose end is being stored and told, while the state file takes
            # writes: a full one keeps it from being stored before the next start)
            ending = i in svc.ending and svc.state_unwritable is None
            return i in svc.runners or i in svc.launching or ending

        while any(busy(i) for i in ids) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        left = [i for i in ids if busy(i)]
        if left:
            log.warning(
                "tomato stop --force: job(s) %s not done within %g s: stopping all the same",
                ", ".join(map(str, left)),
                FORCE_STOP_WAIT,
            )
        await self._stop_soon()

    async def _stop_soon(self) -> None:
        await self.svc.publish(self.svc.topics.scheduler_status(), self.svc._presence("stopping"))
        self.svc.request_stop()

    # -- pipelines -------------------------------------------------------------------------
    def _pipeline(self, name: str) -> Any:
        try:
            return self.store.pipeline(name)
        except KeyError:
            names = [p.name for p in self.store.pipelines()]
            raise CommandError(
                f"no pipeline named {name!r}{did_you_mean(name, names)} (known:"
                f" {', '.join(names) or 'none'})",
                code="not_found",
            ) from None

    def _in_devices_file(self, p: Any) -> None:
        """Refuse a pipeline kept for its sample (store.sync_pipelines), gone from the
        devices file: it takes no sample and no job until the file has it again."""
        if p.name not in self.svc.layout.pipelines:
            raise CommandError(
                f"pipeline {p.name} is not in the devices file any more (kept for its "
                f"sample until the file has it again, or the sample is ejected)",
                pipeline_info(self.svc, p),
                code="conflict",
            )

    async def pipeline_load(self, args: Mapping[str, JsonValue]) -> Result:
        self.access.require("pipeline_load")
        a = LoadArgs.model_validate(args)
        p = self._pipeline(a.pipeline)
        if p.sampleid is not None:
            raise CommandError(  # with the pipeline, as tomato 2.2 answers it
                f"pipeline {a.pipeline} already holds sample {p.sampleid!r}: eject it first",
                pipeline_info(self.svc, p),
                code="conflict",
            )
        self._in_devices_file(p)
        if not a.sampleid.strip():
            raise CommandError("the sample name must not be empty", code="bad_request")
        _no_controls("the sample name", a.sampleid)
        owner = self.access.sample_owner()
        # an operator's sample starts not ready: another operator may have marked the
        # empty pipeline ready, and the owner's jobs started unasked (a review)
        ready = p.ready if owner is None else False
        p = self.store.update_pipeline(a.pipeline, sampleid=a.sampleid, owner=owner, ready=ready)
        await self.svc.publish_pipeline(a.pipeline)
        self.svc.kick()
        return Result(f"sample {a.sampleid!r} loaded into {a.pipeline}", pipeline_info(self.svc, p))

    async def pipeline_eject(self, args: Mapping[str, JsonValue]) -> Result:
        self.access.require("pipeline_eject")
        a = PipelineArgs.model_validate(args)
        p = self._pipeline(a.pipeline)
        if p.jobid is not None:
            raise CommandError(
                f"cannot eject from {a.pipeline}: job {p.jobid} is running",
                pipeline_info(self.svc, p),
                code="conflict",
            )
        held = p.sampleid
        if held is None:  # as tomato 2.2: nothing changes (its `ready` was cleared here)
            return Result(f"pipeline {a.pipeline} was already empty", pipeline_info(self.svc, p))
        self.access.require_pipeline(p, "eject")
        p = self.store.update_pipeline(a.pipeline, sampleid=None, ready=False, owner=None)
        said = f"sample {held!r} ejected from {a.pipeline}"
        if a.pipeline not in self.svc.layout.pipelines:  # kept for its sample: gone now
            self.store.sync_pipelines(self.svc.layout.pipelines)
            await self.svc.clear_pipeline(a.pipeline)
            said += "; the pipeline, gone from the devices file, is removed"
        else:
            await self.svc.publish_pipeline(a.pipeline)
        self.svc.kick()  # queued jobs for that sample now wait for the user again: say so
        return Result(said, pipeline_info(self.svc, p))

    async def pipeline_ready(self, args: Mapping[str, JsonValue]) -> Result:
        self.access.require("pipeline_ready")
        a = PipelineArgs.model_validate(args)
        p = self._pipeline(a.pipeline)
        # (ready, its jobs launched unasked once the file had it again: a review)
        self._in_devices_file(p)
        running = p.jobid
        if running is not None:  # as tomato: the flag was cleared at the launch, and was
            # set again here without a word, to be cleared at the job's end (a user's
            # "ready" for the next job was dropped; found comparing with tomato 2.2)
            raise CommandError(
                f"cannot mark a running pipeline as ready: job {running} runs on "
                f"{a.pipeline}; mark it ready once that job has ended (or submit with "
                "settings.unlock_when_done for the next job to start by itself)",
                pipeline_info(self.svc, p),
                code="conflict",
            )
        self.access.require_pipeline(p, "mark ready")
        if p.ready:  # as tomato 2.2 says it (it said "is ready" again: a side-by-side tour)
            self.svc.kick()
            return Result(f"pipeline {a.pipeline} was already ready", pipeline_info(self.svc, p))
        p = self.store.update_pipeline(a.pipeline, ready=True)
        await self.svc.publish_pipeline(a.pipeline)
        self.svc.kick()
        return Result(f"pipeline {a.pipeline} is ready", pipeline_info(self.svc, p))

    # -- jobs ------------------------------------------------------------------------------
    async def job_submit(self, args: Mapping[str, JsonValue]) -> Result:
        self.access.require("job_submit")
        a = SubmitArgs.model_validate(args)
        digest = _digest(a) if a.token is not None else None
        if a.token is not None:  # the same submission again (sent once more): its job
            found = self.store.submitted(self.access.owner(), a.token)
            if found is not None:
                known, kept = found
                if kept is not None and kept != digest:
                    # a token is one submission: another payload under it was answered
                    # with the first job, the new one dropped without a word (an audit)
                    raise CommandError(
                        f"the submit token {a.token} was used for job {known.id}, with"
                        " another payload or name: give a new token for a new job",
                        code="conflict",
                    )
                # answered as it is, not checked again: a scheduler restarted with other
                # limits (or parsers) refused a copy of a job it had queued (a review)
                log.info(
                    "job %d: its submit came again (token %s): not queued twice",
                    known.id,
                    a.token,
                )
                return _submitted(known)
        try:
            if a.payload_text is not None:
                doc = await asyncio.to_thread(_payload_from_text, a.payload_text)
            else:
                doc = dict(a.payload or {})
            method = doc.get("method")
            if isinstance(method, list):  # before each task is validated
                self.access.check_task_count(len(method))
            # not the scheduler's own user, which a script's submit over MQTT without
            # `user` was recorded under (root, for every lab user: an integrator's tour)
            payload = parse_payload(doc, user=a.user or self.access.owner())
        except PayloadError as e:
            raise CommandError(f"payload refused: {e}") from None
        pdict = payload.model_dump(mode="json")
        _no_controls("the job name", a.jobname)
        sample = pdict.get("sample") or {}
        _no_controls("the sample name", sample.get("identifier") or sample.get("name"))
        bulk = frozenset(
            t for m in self.svc.metas.values() if m.block_interval for t in m.capabilities
        )
        self.access.check_bounds(pdict.get("method") or [], bulk, written=doc)
        _check_files(pdict.get("settings") or {})
        self._check_queued()
        with self.store.transaction():  # the job and its file's path: one fsync
            job = self.store.add_job(
                pdict,
                a.jobname,
                a.submit_dir,
                owner=self.access.owner(),
                token=a.token,
                digest=digest,
            )
            out = pdict.get("settings", {}).get("output", {})
            own = self.svc.settings.jobs_dir / str(job.id)
            base = output_dir(out.get("path"), a.submit_dir, own)
            prefix = out.get("prefix") or f"results.{job.id}"
            note = ""
            roots = self.svc.settings.output_roots
            if not _under(base, roots):
                # the recorder will refuse it: said now, and the job names the file it
                # will have (an admin's tour: a secured stack's submit printed a path
                # that was never written, and each job's reason said so at its end)
                note = (
                    f"; its results go to {own / f'{prefix}.nc'} on the scheduler's PC: "
                    f"{base} is outside the folders the recorder may write to "
                    f"({', '.join(map(str, roots))}; [recorder] output_roots): "
                    f"`ketchup snapshot {job.id}` fetches a copy"
                )
                base = own
            elif _under(base, [_resolved(self.svc.settings.jobs_dir)]) and not _under(
                base, [_resolved(own)]
            ):
                # the datadir's job folders are the jobs' own: an operator's output named
                # another's folder and file (Jobs/3, results.3), got there first, and the
                # owner's data went to a side file (a security tour)
                note = (
                    f"; its results go to {own / f'{prefix}.nc'}: {base} is another job's "
                    "folder in the datadir, which no payload may name"
                )
                base = own
            elif _taken(base / f"{prefix}.nc"):
                # the recorder writes over no file but an earlier version of the job's
                # own: said now (a lab moving over from tomato 2.2, which overwrote, ran
                # job 27 in a folder holding tomato 2.2's results.27.nc: the job ended
                # `c`, a script opened the old experiment's file; a prefix used again, the
                # same)
                there = base / f"{prefix}.nc"
                what = (  # (a dangling link "exists already": a hostile tour)
                    f"is a symbolic link (to {os.readlink(there)}), which is not followed"
                    if there.is_symlink()
                    else "exists already"
                )
                note = (
                    f"; {there} {what} and is not overwritten "
                    "(tomato 2.2 overwrote it): unless it is moved away before the job "
                    f"ends, the job's file goes to {own / f'{prefix}.nc'} instead "
                    f"(`ketchup status {job.id}` names it then)"
                )
            filled: dict[str, Any] = {}
            settings = dict(pdict.get("settings") or {})
            if out.get("path") is None and isinstance(out, dict):
                # the folder the file goes to, as tomato 2.2's ketchup fills it in: a
                # tomato 2.2 script finds its results through it (it read None: a
                # side-by-side tour)
                settings["output"] = {**out, "path": str(base)}
            snap = settings.get("snapshot")
            if isinstance(snap, dict) and snap.get("path") is None:
                # so is the snapshots' folder: next to the results (a side-by-side tour)
                settings["snapshot"] = {**snap, "path": str(base)}
            if settings != (pdict.get("settings") or {}):
                filled["payload"] = {**pdict, "settings": settings}
            job = self.store.update_job(job.id, respath=str(base / f"{prefix}.nc"), **filled)
        await self.svc.publish_job(job)
        log.info("job %d submitted (%s)", job.id, job.jobname or "no name")
        self.svc.job_event(job.id, "queued", status=job.status)
        await self.queue.place(job)
        return _submitted(self.store.job(job.id), note)

    def _jobs(self, ids: list[int] | None) -> list[Job]:
        if not ids:
            return list(self.store.jobs())
        out = []
        for i in ids:
            try:
                out.append(self.store.job(i))
            except KeyError:
                raise CommandError(f"no job with id {i}", code="not_found") from None
        return out

    async def job_status(self, args: Mapping[str, JsonValue]) -> Result:
        self.access.require("job_status")
        a = JobStatusArgs.model_validate(args)
        store = self.store
        if not (a.summary and a.jobids is None and a.limit is None and a.offset is None):
            return job_status(store, a, budget_of(self.svc.settings.max_reply_bytes))
        # the summary depends on the store alone: while nothing was written, the last
        # one stands (dashboards and CLIs asking in a row cost one set of counts)
        if self._summary is None or self._summary[0] != store.writes:
            self._summary = (store.writes, job_status(store, a))
        return self._summary[1]

    async def job_search(self, args: Mapping[str, JsonValue]) -> Result:
        self.access.require("job_search")
        a = SearchArgs.model_validate(args)
        ids = self.store.search_ids(a.name, complete=a.complete)
        if not ids:  # as tomato: no match is a failure
            raise CommandError(f"no job matching {a.name!r} found", code="not_found")
        what = "job" if len(ids) == 1 else "jobs"
        # (one reply: the newest when too many; the ids' list cut to its ends)
        kept = within_budget(self.store, ids, budget_of(self.svc.settings.max_reply_bytes))
        more = (
            f" (the newest {len(kept)} listed: the others would not fit one reply; "
            "search a longer name, or `ketchup status ID`)"
            if len(kept) < len(ids)
            else ""
        )
        jobs = self.store.jobs(ids=kept)
        count = f"{len(ids)} " if len(ids) > 2 * ENDS else ""  # (with the list cut short)
        return Result(
            f"{count}{what} matching {a.name!r} found: {cut_ids(ids)}{more}",
            [j.model_dump(mode="json") for j in jobs],
        )

    async def job_cancel(self, args: Mapping[str, JsonValue]) -> Result:
        self.access.require("job_cancel")
        a = JobIdsArgs.model_validate(args)
        if not a.jobids:
            raise CommandError("give the id of the job(s) to cancel", code="bad_request")
        try:
            jobs = self._jobs(a.jobids)
        except CommandError as e:  # all or nothing: said (`ketchup cancel 99 9999` left 99
            # queued with only "no job with id 9999": an outside run)
            if len(a.jobids) > 1:
                e = CommandError(f"{e}: none of the jobs was cancelled", code=e.code)
            raise e from None
        for job in jobs:  # all or nothing: no job is cancelled if one is not theirs
            self.access.require_job(job, "cancel")
        out: list[JsonValue] = []
        msgs = []
        # the queued ones end together, before any await: one fsync, not one per job
        # (239 took 1.28 s, now 1.1 s, in tests/test_job_path.py's stack), and none
        # can be launched between the read above and its cancel
        cancelled: dict[int, Job] = {}
        by = self.access.owner()
        by = None if by == ANONYMOUS else by  # (an open stack: nobody to name)
        queued = [job for job in jobs if job.status in ("q", "qw")]
        if queued:  # (a running job's cancel needs no write first: a full disk stops it)
            with self.store.transaction():
                for job in queued:
                    # its waiting reason goes ("no pipeline holds sample …" stayed on it)
                    cancelled[job.id] = self.store.update_job(
                        job.id, status="cd", completed_at=_now(), reason=cancelled_by(job, by)
                    )
        for job in jobs:
            if job.id in cancelled:
                job = cancelled[job.id]
                await self.svc.publish_job(job)
                detail = {"reason": job.reason, "by": by}
                self.svc.job_event(job.id, "completed", status="cd", detail=detail)
                msgs.append(f"job {job.id} cancelled")
            elif (
                job.status == "r"
                and (ending := self.svc.runners.get(job.id)) is not None
                and ending.verdict is not None
                and not ending.cancelled
            ):
                # its tasks are over and its file is being written: nothing to cancel
                # (it was said "being cancelled", showed rd, and ended c: fault injection);
                # the file's check may still make a c ce, so the tasks' verdict is said
                msgs.append(
                    f"job {job.id} has run its tasks (they ended {ending.verdict}) and its "
                    "file is being written: nothing is left to cancel"
                )
            elif job.status == "r":
                runner = self.svc.runners.get(job.id)
                if runner is not None:  # first: a state file that refuses writes (a full
                    runner.cancelled_by = cancelled_by(job, by)  # disk) must not keep a
                    runner.by = by  # job running
                    self.svc.spawn(runner.cancel())
                unstored = ""
                try:
                    # who, in its reason while it ends (kept across a scheduler's restart)
                    job = self.store.update_job(
                        job.id, status="rd", reason=cancelled_by(job, by) or job.reason
                    )
                except sqlite3.Error as e:  # its end (cd) is stored once the file takes it
                    log.warning("job %d: cannot store its cancel (%s)", job.id, e)
                    # said where `ketchup status` reads it (a fault run: `r` for 17 s,
                    # its reason saying requests are refused, as if it were ignored)
                    unstored = (
                        f"its task is stopped; it shows r until the scheduler's state file"
                        f" takes writes again ({e}), then it ends cd"
                    )
                    with contextlib.suppress(sqlite3.Error, KeyError):
                        job = self.store.set_reason(job.id, f"being cancelled: {unstored}")
                    job = job.model_copy(update={"status": "rd"})
                await self.svc.publish_job(job)
                self.svc.job_event(job.id, "cancel_requested", status="rd", detail={"by": by})
                msgs.append(
                    f"job {job.id} is being cancelled" + (f" ({unstored})" if unstored else "")
                )
            elif job.status == "rd":
                msgs.append(f"job {job.id} is already being cancelled")
            else:
                msgs.append(f"job {job.id} has already ended ({job.status})")
            out.append(job.model_dump(mode="json"))
        return Result("; ".join(msgs), out)

    async def job_snapshot(self, args: Mapping[str, JsonValue]) -> Result:
        """A snapshot; on a secured stack at most SNAPSHOTS_PER_LOGIN of one login at once
        (the recorder writes one file at a time: one operator's 200 snapshots sent at once
        held another's own for 5.5 s, a hostile tour)."""
        user = self.access.owner()
        busy = self._snapping.get(user or "", 0)
        if busy >= SNAPSHOTS_PER_LOGIN and self.svc.settings.users_file is not None:
            raise CommandError(
                f"{busy} snapshots of {user or 'this login'} are being made already: ask "
                "again once one is done",
                code="conflict",
            )
        self._snapping[user or ""] = busy + 1
        try:
            return await self._job_snapshot(args)
        finally:
            left = self._snapping.get(user or "", 1) - 1
            if left > 0:
                self._snapping[user or ""] = left
            else:
                self._snapping.pop(user or "", None)

    async def _job_snapshot(self, args: Mapping[str, JsonValue]) -> Result:
        self.access.require("job_snapshot")
        a = SnapshotArgs.model_validate(args)
        job = self._jobs([a.jobid])[0]
        self.access.require_job(job, "snapshot")
        if job.status in ("q", "qw"):
            raise CommandError(
                f"job {job.id} has not started yet: no data to snapshot", code="conflict"
            )
        if job.launched_at is None:  # cancelled while it waited: it never ran
            raise CommandError(
                f"job {job.id} never started (it ended {job.status} while queued): "
                "no data to snapshot",
                code="conflict",
            )
        path = Path(self.svc.settings.jobs_dir) / str(job.id) / f"snapshot.{job.id}.nc"
        # a recorder found not answering (stopped, hung) ends the wait at once, said: the
        # request waited 60 s for it, as long as the CLI's own timeout, so the CLI always
        # gave up first and said "no scheduler answered ... is it running?" of a scheduler
        # that ran and knew the recorder was down (a stall hunt, session 49)
        asked = asyncio.ensure_future(
            self.svc.recorder_request(
                "finalize", self.recorder_args(job, path, snapshot=True), timeout=60
            )
        )
        loop = asyncio.get_running_loop()
        down_since: float | None = None
        try:
            while not asked.done():
                down = self.svc.presence_view.recorder_down
                if down is None:
                    down_since = None
                elif down_since is None:
                    down_since = loop.time()
                elif loop.time() - down_since >= SNAPSHOT_RECORDER_BACK:
                    # (not at once: a recorder killed is restarted in well under a second
                    # and takes the request again; failing at its last will was a review's
                    # finding against the stall hunt's fix)
                    raise CommandError(
                        f"snapshot of job {job.id} not written: {down.split(':', 1)[0]}; "
                        "ask again once `tomato status` says the recorder is online",
                        code="unavailable",
                    )
                await asyncio.wait({asked}, timeout=0.25)
        finally:
            if not asked.done():
                asked.cancel()
        ok, msg, data = asked.result()
        if not ok:
            raise CommandError(f"snapshot of job {job.id} failed: {msg}", code="unavailable")
        written = str(data["path"]) if isinstance(data, dict) and data.get("path") else str(path)
        # the file's own path (issue 14) becomes the job's snappath, unless the job writes
        # periodic snapshots of its own (settings.snapshot): that path stays the job's
        # (it was overwritten with this copy's, also in the results file: found side by
        # side with tomato 2.2, whose ketchup snapshot stores nothing)
        settings = job.payload.get("settings")
        if not a.record:  # a copy to read: the job and its events stay as they were (an
            return Result(msg, data)  # old job's page opened in a dashboard changed both)
        if isinstance(data, dict) and data.get("temporary"):
            return Result(msg, data)  # made for its transfer only: no snappath of the job
        if not (isinstance(settings, dict) and settings.get("snapshot")):
            try:
                job = self.store.update_job(job.id, snappath=written)
            except sqlite3.Error as e:
                if not cannot_write(str(e)):
                    raise
                # the snapshot is made: a state file that takes no writes now (a full
                # datadir) costs only its snappath (the answer was an error: a fault run)
                return Result(f"{msg} (its snappath is not stored: {e})", data)
            await self.svc.publish_job(job)
        self.svc.job_event(job.id, "snapshot_written", detail={"path": written})
        return Result(msg, data)

    def _check_queued(self) -> None:
        """Refuse a submit of a login that has ``[jobs] max_queued_per_login`` jobs
        queued already (a secured stack: on an open one every client is anonymous)."""
        most = self.svc.settings.jobs.max_queued_per_login
        if not most or self.svc.settings.users_file is None:
            return
        owner = self.access.owner()
        n = self.store.queued_of(owner)
        if n >= most:
            raise CommandError(
                f"payload refused: {owner} has {n:,} jobs queued already, the most one "
                f"login may ([jobs] max_queued_per_login = {most:,}): wait for some to "
                "run, or cancel some",
                code="conflict",
            )

    # -- the queue -------------------------------------------------------------------------
    async def schedule(self) -> None:
        await self.queue.schedule()

    async def launch(self, job: Job, pipeline: str) -> None:
        with self.store.transaction():
            job = self.store_launch(job, pipeline)
        self.svc.launching.add(job.id)  # (`stop --force` waits for its runner)
        try:
            await self.announce_launch(job, pipeline)
        finally:
            self.svc.launching.discard(job.id)

    def store_launch(self, job: Job, pipeline: str) -> Job:
        """A launch's writes (the job runs, the pipeline is taken), to be committed
        before :meth:`announce_launch` tells anyone and starts its tasks."""
        roles = dict(self.svc.layout.pipelines[pipeline].roles)
        job = self.store.update_job(
            job.id,
            status="r",
            pipeline=pipeline,
            launched_at=_now(),
            reason=self.svc.presence_view.lasting_fault(),
            progress={"roles": roles, "tasks": {}},
        )
        # as tomato: a launch takes the pipeline's "ready" (set again at the job's end
        # only with unlock_when_done; `tomato status` showed a running pipeline ready)
        self.store.update_pipeline(pipeline, jobid=job.id, ready=False)
        return job

    async def announce_launch(self, job: Job, pipeline: str) -> None:
        svc = self.svc
        # as tomato 2.2: a launched job's folder (its jobpath) exists (a review found it
        # missing unless a snapshot or a fallback file was made); a full disk: it runs
        with contextlib.suppress(OSError):
            (svc.settings.jobs_dir / str(job.id)).mkdir(parents=True, exist_ok=True)
        await svc.publish_pipeline(pipeline)
        await svc.publish_job(job)
        log.info("job %d launched on %s", job.id, pipeline)
        svc.job_event(job.id, "launched", status="r", detail={"pipeline": pipeline})
        # as stored now: a cancel handled since the launch was stored made it rd, and
        # the runner then starts cancelled (JobLifecycle.start_runner)
        self.start_runner(self.store.job(job.id))

    def start_runner(self, job: Job, readopt: bool = False) -> None:
        self.jobs.start_runner(job, readopt)

    def recorder_args(self, job: Job, path: Path, snapshot: bool) -> dict[str, JsonValue]:
        return self.jobs.recorder_args(job, path, snapshot)
