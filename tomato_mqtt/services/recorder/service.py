"""The recorder: stores every data batch durably and writes the NetCDF file of a job.

Each batch is committed to sqlite (WAL) keyed by (component, stream, seq) before it is
acknowledged to its node; a repeated identity is dropped only when its content is the
same, else it is a conflict that surfaces in the job (see store.py). Gaps (a seq
skipped, or a node's heartbeat announcing batches we never got) are replayed from the
node's spool. A store that cannot be written (disk full, read-only, permission) is
reported in ``recorder/status`` (``storage_error``) and as a job event while it lasts;
nothing is acknowledged meanwhile, so the nodes keep the data and storage resumes by
itself. Files (completeness per task, late merges, fallbacks, fetches): files.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
import uuid
from collections.abc import Collection, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, JsonValue

from tomato_mqtt import __version__
from tomato_mqtt.config.statefiles import opened, what_to_do
from tomato_mqtt.errors import store_words
from tomato_mqtt.model.jobs import batch_id_bound, highest_ran
from tomato_mqtt.services.base import Service
from tomato_mqtt.services.idle import run_when_idle
from tomato_mqtt.services.recorder.fileops import FileOps
from tomato_mqtt.services.recorder.files import (
    Files,
    epoch_of,
    warm_up_writer,
)
from tomato_mqtt.services.recorder.guard import WriteGuard
from tomato_mqtt.services.recorder.store import BatchStore
from tomato_mqtt.transport.client import BrokerURL, Message
from tomato_mqtt.transport.rpc import (
    MAX_REPLY,
    Handler,
    NoResponder,
    Requester,
    Responder,
    Result,
)
from tomato_mqtt.waits import wait_for
from tomato_mqtt.wire.batch import BatchHeader, read_header
from tomato_mqtt.wire.messages import (
    AckArgs,
    ComponentMeta,
    DecodeError,
    JobEvent,
    JobProgress,
    NodeStatus,
    PresenceState,
    RecorderStatus,
    ReplayArgs,
    Reply,
    decode,
    encode,
    stream_id,
)
from tomato_mqtt.wire.topics import Topics, slug

__all__ = ["RecorderService"]

log = logging.getLogger(__name__)


@dataclass
class _Stream:
    last_replay_request: float = 0.0
    acked: int = -1
    acked_at: float = -1e9  # monotonic: when ``acked`` was last sent
    #: replay requests in a row that brought nothing (the same gaps, the same high water)
    asked: int = 0
    asked_for: tuple[int, tuple[tuple[int, int], ...]] | None = None  # (high water, gaps)
    next_ask: float = 0.0  # monotonic: when the gaps are asked for again
    replayed: int | None = None  # what the node said it sent again, the last time
    ack_failures: int = 0  # acks in a row the node did not confirm


#: replay requests without any result before the recorder says why (and asks less often)
REPLAY_TELL = 5
#: the longest wait between two replay requests for the same gaps (s)
REPLAY_BACKOFF_MAX = 60.0
#: s between two tries of a store that took no writes (_storage_watch)
STORAGE_PROBE = 2.0
#: idle batches released in one transaction (release_idle)
IDLE_RELEASE_CHUNK = 2000
#: s between two acknowledgements of a stream's stored batches (_ack_loop), unless
#: ACK_BATCHES of them wait: an ack is a request to the node and a spool deletion, and
#: once a second per stream it was about 1 CPU-µs of every point at 50 x 1 kHz
ACK_EVERY = 5.0
ACK_BATCHES = 16
#: an ack the node did not confirm (no answer, or refused) is sent again at the next
#: timed round, this many times in a row at most (then the node's spool keeps the
#: batches until it sends them again, and they are acknowledged then)
ACK_RETRIES = 5


#: jobs shown in recorder/status: the newest, and those merged into most recently
STATUS_JOBS = 10
#: s between two conflicts of one component said at ERROR level (and as a job event)
CONFLICT_SAID_EVERY = 60.0

#: s between two looks for jobs whose batches may be released (the first a minute in)
RELEASE_EVERY = 3600.0
RELEASE_FIRST = 60.0


class RecorderService(Service):
    def __init__(
        self,
        url: BrokerURL,
        instance: str,
        db_path: Path,
        *,
        heartbeat: float = 2.0,
        output_roots: list[Path] | None = None,
        users_file: Path | None = None,
        keep_days: float = 30.0,
        max_reply: int = MAX_REPLY,
    ) -> None:
        super().__init__(url, Topics(instance, url.username), heartbeat=heartbeat)
        self.db_path = db_path
        #: the largest reply or request (the broker's max_packet_bytes less a margin)
        self.max_reply = max_reply
        #: days a job's batches stay in the store after its file was written (0: for ever)
        self.keep_days = keep_days
        self.started_at = time.time()
        # default: only below the recorder's own data folder (settings give datadir + home)
        self.guard = WriteGuard(
            output_roots or [db_path.parent], users_file, jobs_dir=db_path.parent / "Jobs"
        )
        #: a secured stack: one login's requests are limited (as the scheduler's)
        self.secured = users_file is not None
        self._client_id = f"recorder-{instance}-{uuid.uuid4().hex[:16]}"
        self._stored = asyncio.Condition()
        self._waiting = 0  # finalize calls waiting for the next stored batch
        self.store: BatchStore | None = None
        self.requester: Requester | None = None
        self.streams: dict[tuple[str, str], _Stream] = {}  # (component, stream)
        #: component -> the node that hosts it, as topic segments (from its retained
        #: meta, on a topic only its node may publish: not the payload's name)
        self.hosts: dict[str, str] = {}
        self.jobs_seen: set[int] = set()
        #: the highest job id stored (told in the status: a scheduler with a new state
        #: file continues its ids after it)
        #: the highest job ids of the final files (the scheduler asked for them) and of
        #: the stored batches: the status's ``highest_job`` (model.jobs.highest_ran)
        self.highest_file: int | None = None
        self.highest_batch: int | None = None
        self.files = Files(self)
        self.fileops = FileOps(self)
        self.storage_error: str | None = None
        #: what to say of a damaged store (store_fault), once found: it stays
        self.store_damaged: str | None = None
        #: the last checkpoint before acks failed (the WAL takes batches, the file not)
        self._durable_failed = False
        self._storage_told: set[int] = set()  # jobs told of the current storage fault
        #: the highest seq of each stream whose batch the store refused (a storage fault):
        #: asked for again once it stores (see _storage_ok)
        self._refused: dict[tuple[str, str], int] = {}
        self._storage_logged = 0.0
        #: the size of the last batch the store refused (what _storage_watch tries)
        self._refused_bytes = 0
        self.conflicts: dict[int, int] = {}  # job -> conflicting batches seen
        self._conflicts_told: set[tuple[int | None, str]] = set()  # (job, component): said
        self._conflict_said: dict[str, float] = {}  # component -> last said (monotonic)
        self._conflicts_hushed: dict[str, int] = {}  # component -> not said since
        self.merged: dict[int, int] = {}  # job -> late merges (most recent last)
        self.not_merged: dict[int, str] = {}  # job -> why its late data was not merged
        #: job -> points per component its file holds, where a merge left a batch out
        self.file_points: dict[int, dict[str, int]] = {}
        self.filenames: dict[int, str] = {}  # job -> its last file written (recent ones)

    @property
    def client_id(self) -> str:
        return self._client_id

    @property
    def status_topic(self) -> str:
        return self.topics.recorder_status()

    def presence(self, state: PresenceState) -> RecorderStatus:
        if state == "lost":
            # the last will, made at connect and sent by the broker maybe hours later:
            # who it was, no snapshot that would be stale by then (docs/topics.md; it
            # carried the jobs and a heartbeat of its connect: an integrator's check)
            return RecorderStatus(state="lost", version=__version__, started_at=self.started_at)
        return self._status(state)

    # -- lifecycle -------------------------------------------------------------------------
    async def setup(self) -> None:
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.store = opened(
            "recorder", self.db_path, "the recorder", lambda: BatchStore(self.db_path)
        )
        self.highest_file, self.highest_batch = self.store.highest_ids()
        self.files.sweep_temporary()

    async def started(self) -> None:
        self.requester = Requester(self.mqtt, self.topics, self.max_reply)
        handlers: dict[str, Handler] = {
            "finalize": self.fileops.finalize,
            "fetch": self.fileops.fetch,
            "status": self.op_status,
        }
        self.responder = Responder(
            self.mqtt,
            self.topics,
            handlers,
            name="recorder",
            kind="recorder",
            max_reply=self.max_reply,
            # one login's flood of fetches must not hold up the scheduler's finalize
            per_login=self.secured,
            on_fault=self.store_fault,
        )
        await self.requester.start()
        # data batches may be dropped when we fall behind: the nodes replay them
        await self.mqtt.subscribe(self.topics.all_component_data(), droppable=True)
        await self.mqtt.subscribe(self.topics.recorder_cmds())
        await self.mqtt.subscribe(self.topics.all_node_status())
        # which node hosts each component: only its node's status asks for its gaps
        await self.mqtt.subscribe(self.topics.all_component_meta())
        await self.publish_presence("online")
        self.files.resume_merges()
        self.spawn(run_when_idle(warm_up_writer, "recorder warm-up"))

    def loops(self) -> list[Coroutine[Any, Any, Any]]:
        return [self._ack_loop(), self._release_loop(), self._storage_watch()]

    async def _storage_watch(self) -> None:
        """While the store takes no writes, try one every STORAGE_PROBE s: storing works
        again when space is freed, not only when a batch next arrives (the batches the
        store refused came back with the next replay request, up to a minute later: an
        outside fault run saw a job's late data merged 38 s after its disk was freed)."""
        while True:
            await asyncio.sleep(STORAGE_PROBE)
            if self.storage_error is None or self.store is None or self.store_damaged:
                continue
            try:
                self.store.probe(self._refused_bytes)
                if self._durable_failed:
                    self.store.make_durable()
            except (sqlite3.Error, OSError):
                continue
            self._durable_failed = False
            self._storage_ok()

    async def _release_loop(self) -> None:
        """Release the batches of jobs whose file was written more than ``keep_days``
        ago: the store kept every point for good (a soak run: 45 MB an hour, ~27 GB a
        month for one 100 Hz component). Their files are not touched; late data for
        them is kept in the store, not merged (see Files.late_batch). Batches of idle
        measurements (no job) go ``keep_days`` after they were stored."""
        if self.keep_days <= 0:
            return
        await asyncio.sleep(RELEASE_FIRST)
        while True:
            await self.release_idle()
            self.release_old()
            self.files.resume_merges()  # (a merge that failed, still due: a review)
            await asyncio.sleep(RELEASE_EVERY)

    async def release_idle(self) -> None:
        """Release the idle measurements (no job) stored more than ``keep_days`` ago, a
        few thousand at a time: data goes on being stored in between."""
        before = time.time() - self.keep_days * 86400
        total = 0
        while self.store is not None:
            try:
                n = self.store.release_idle(before, IDLE_RELEASE_CHUNK)
            except sqlite3.Error as e:
                if self.store_fault(e) is None:
                    log.warning("cannot release idle measurements from the store: %s", e)
                break
            total += n
            if n < IDLE_RELEASE_CHUNK:
                break
            await asyncio.sleep(0.05)
        if total:
            log.info(
                "%d batches of idle measurements (no job) released from the store: stored "
                "more than %g days ago ([recorder] keep_days)",
                total,
                self.keep_days,
            )

    def release_old(self) -> None:
        store = self.store
        if store is None:
            return
        try:
            jobs = store.releasable(time.time() - self.keep_days * 86400)
        except sqlite3.Error as e:
            log.warning("cannot look for jobs to release from the store: %s", e)
            return
        for job in jobs:
            if self.files.busy(job):
                continue  # a finalize or a merge of it is under way: next time
            try:
                n = store.release(job)
            except sqlite3.Error as e:
                log.warning("job %d: its batches could not be released: %s", job, e)
                return
            log.info(
                "job %d: its %d batches released from the store (its file was written more "
                "than %g days ago: [recorder] keep_days)",
                job,
                n,
                self.keep_days,
            )

    async def teardown(self) -> None:
        # snapshots made for a transfer only that nobody fetched to the end (a client
        # killed mid-transfer): no later recorder knows of them (a review: they stayed in
        # the private temporary folder for good)
        self.files.discard_temporary()
        if self.store is not None:
            self.store.close()

    # -- status ----------------------------------------------------------------------------
    def _status(self, state: str) -> RecorderStatus:
        jobs: dict[str, JobProgress] = {}
        if self.store is not None:
            gaps = self._gaps()
            # bounded whatever the history (issue 14): the newest jobs, and the jobs whose
            # file got late data most recently (the scheduler updates the job from this)
            recent = set(sorted(self.jobs_seen)[-STATUS_JOBS:])
            recent |= set(list(self.merged)[-STATUS_JOBS:])
            recent |= set(list(self.not_merged)[-STATUS_JOBS:])
            for job in sorted(recent):
                try:
                    points = self.store.job_points(job)
                except sqlite3.Error:
                    points = {}
                points = self.file_points.get(job, points)  # (a merge the file held less of)
                jobs[str(job)] = JobProgress(
                    points=points,
                    gaps=gaps,
                    conflicts=self.conflicts.get(job, 0),
                    merged=self.merged.get(job, 0),
                    not_merged=self.not_merged.get(job),
                    file=self.filenames.get(job),
                )
        return RecorderStatus(
            state=state,
            heartbeat=time.time(),
            version=__version__,
            started_at=self.started_at,
            jobs=jobs,
            highest_job=highest_ran(self.highest_file, self.highest_batch),
            storage_error=self.storage_error,
        )

    def _gaps(self) -> int:
        if self.store is None:
            return 0
        n = 0
        for component, stream in self.streams:
            top = self.store.max_seq(component, stream)
            n += len(self.store.missing(component, stream, top))
        return n

    # -- data ------------------------------------------------------------------------------
    def _on_data(self, msg: Message, topic_name: str | None) -> None:
        """Store a batch (committed before it is acknowledged to its node).

        Trust topics, not payloads: the broker's ACL lets only the component's own node
        publish on its data topic, so a batch naming another component is dropped.
        """
        if self.store is None:
            return
        try:
            b = read_header(msg.payload, msg.topic)  # the columns are not parsed here
        except DecodeError as e:
            log.warning("%s", e)
            return
        if topic_name is None or slug(b.component) != topic_name:
            log.warning(
                "dropped a batch on %s about %r: the component disagrees with the topic",
                msg.topic,
                b.component,
            )
            return
        if b.job is not None and self.files.foreign(b.job, b.component):
            log.warning(
                "dropped a batch of %s for job %d, which ended without that component",
                b.component,
                b.job,
            )
            return
        stream = b.stream_id()
        job = b.job
        if job is not None and (why := self.files.not_its(job, b.component, b.task, b.n)):
            # stored (its stream stays whole: no replay asked for it again and again), as
            # no job's
            if self.store.stored(b.component, stream, b.seq) is None:
                log.warning("%s stream %s seq %d: %s", b.component, stream, b.seq, why)
                self.job_event(job, "warning", {"message": why})
            job = None
        try:
            res = self.store.add(
                b.component,
                stream,
                b.seq,
                epoch=b.epoch,
                job=job,
                task=b.task,
                npoints=b.n,
                raw=msg.payload,
            )
        except (sqlite3.Error, OSError) as e:
            self._refused_bytes = len(msg.payload)
            key = (b.component, stream)
            if key in self._refused or len(self._refused) < 10_000:
                self._refused[key] = max(b.seq, self._refused.get(key, -1))
            self._storage_failed(e, b.job)
            return
        if not self._durable_failed:  # (the checkpoint says when that fault is over)
            self._storage_ok()
        if job is not None:
            self.jobs_seen.add(job)
            if (self.highest_batch or 0) < job <= batch_id_bound(self.highest_file):
                self.highest_batch = job
        st = self.streams.setdefault((b.component, stream), _Stream())
        if res == "conflict":
            self._conflict(b, stream)
        elif res == "duplicate" and b.seq <= st.acked:
            # acknowledged, yet sent again: the ack did not reach the node (it was killed
            # as it came), which holds the batch in its spool and would send it at every
            # start, its backlog never cleared (an outside run): acknowledge it again,
            # at the next round of the ack loop
            st.acked, st.acked_at = b.seq - 1, -1e9
        elif res == "new":
            if b.seq > 0 and self.store.high_water(b.component, stream) < b.seq - 1:
                self.request_missing(b.component, stream, b.seq)
            if job is not None:
                self.files.late_batch(job)
        if self._waiting:
            self.spawn(self._notify())

    def _conflict(self, b: BatchHeader, stream: str) -> None:
        """Same identity, other content: kept out, counted, and said once per job and
        component (in the log and as a job event: a node's login that sent 30,000 such
        batches naming another node's job had each one logged and sent as an event), and
        at most once a minute per component (the same login, naming a new job id in each
        batch, had each one said all the same: a review)."""
        told = (b.job, b.component)
        now = time.monotonic()
        first = (
            told not in self._conflicts_told
            and now - self._conflict_said.get(b.component, -1e9) >= CONFLICT_SAID_EVERY
        )
        hushed = self._conflicts_hushed.pop(b.component, 0) if first else 0
        if first:
            self._conflicts_told.add(told)
            while len(self._conflicts_told) > 1000:
                self._conflicts_told.pop()
            self._conflict_said[b.component] = now
        else:
            self._conflicts_hushed[b.component] = self._conflicts_hushed.get(b.component, 0) + 1
        log.log(
            logging.ERROR if first else logging.DEBUG,
            "conflicting duplicate: %s stream %s seq %d (job %s task %s) differs from the "
            "batch stored under that identity; kept the stored one%s%s",
            b.component,
            stream,
            b.seq,
            b.job,
            b.task,
            f" ({hushed} more of this component since it was last said)" if hushed else "",
            " (more of this job and component, or of this component within a minute, are "
            "logged at debug level only)"
            if first
            else "",
        )
        if b.job is None:
            return
        self.conflicts[b.job] = self.conflicts.get(b.job, 0) + 1
        if first:
            self.job_event(
                b.job,
                "warning",
                {
                    "message": f"conflicting duplicate batch {b.component} stream {stream} "
                    f"seq {b.seq}: same identity, other content (not stored)"
                },
            )

    def _storage_failed(self, e: BaseException, job: int | None) -> None:
        # a damaged store is said once, by store_fault (here it was logged twice at once,
        # then every 30 s: a review)
        if self.store_fault(e) is None and self.store_damaged is None:
            first = self.storage_error is None
            why = store_words(str(e), self.db_path)  # who holds its lock, which file refuses
            self.storage_error = (
                f"the recorder cannot store data in {self.db_path}: {why} "
                "(the nodes keep it in their spools until it can, within their "
                "spool_max_mb: beyond it the oldest go)"
            )
            now = time.monotonic()
            if first or now - self._storage_logged > 30:
                self._storage_logged = now
                log.error("%s", self.storage_error)
            if first:
                self.spawn(self.publish_presence("online"))
        if job is not None and job not in self._storage_told:
            self._storage_told.add(job)
            self.job_event(job, "storage_fault", {"error": self.storage_error})

    def said_fault(self, e: BaseException) -> str | None:
        return self.store_fault(e)

    def store_fault(self, e: BaseException) -> str | None:
        """What to say of ``e`` when it is SQLite's word for a damaged store ("database
        disk image is malformed"), found while the recorder runs: logged once, in its
        status (``storage_error``, which ``tomato status`` shows) from now on, and the
        answer (``unavailable``) to every request that meets it. None for any other
        error. A fault run: a page of the store overwritten while the stack was stopped
        was found by no check; a snapshot answered "internal error in recorder:
        DatabaseError(…)" with a traceback, and the status said nothing."""
        if type(e) is not sqlite3.DatabaseError or self.store is None:
            return None  # (its subclasses: a full disk, a locked file, an SQL bug)
        if self.store_damaged is None:
            self.store_damaged = what_to_do(
                "recorder",
                Path(self.db_path),
                str(e),
                "the points it holds in the damaged part cannot be read, and files that "
                "need them are not written; stop tomato-mqtt (tomato stop) and start it on "
                "a good file",
            )
            self.storage_error = self.store_damaged
            log.error("%s", self.store_damaged)
            self.spawn(self.publish_presence("online"))
        return self.store_damaged

    def _storage_ok(self) -> None:
        if self.storage_error is None or self.store_damaged is not None:
            return
        log.info("storing data again (was: %s)", self.storage_error)
        self.storage_error = None
        for st in self.streams.values():  # what was refused is asked for at once
            st.next_ask = 0.0
        # also of a stream that sends nothing more (its node was killed meanwhile and
        # runs a new one: the old stream's batches, sent again from its spool at its
        # start, were refused, and nothing asked for them again: a fault run's file
        # lacked 6 batches its node still held)
        refused, self._refused = self._refused, {}
        for (component, stream), seq in refused.items():
            self.streams.setdefault((component, stream), _Stream()).last_replay_request = 0.0
            self.request_missing(component, stream, seq)
        for job in self._storage_told:
            self.job_event(job, "storage_resumed", {})
        self._storage_told.clear()
        self.spawn(self.publish_presence("online"))

    def job_event(self, job: int, event: str, detail: dict[str, Any]) -> None:
        if self.client is None:
            return
        ev = JobEvent(job=job, event=event, time=time.time(), detail=detail)
        self.spawn(self.client.publish(self.topics.job_event(job), encode(ev), wait=False))

    async def wait_stored(self, timeout: float) -> None:
        """Until the next batch is stored (or ``timeout``): finalize waits on this."""
        self._waiting += 1
        try:
            async with self._stored:
                with contextlib.suppress(asyncio.TimeoutError):
                    await wait_for(self._stored.wait(), max(0.0, timeout))
        finally:
            self._waiting -= 1

    async def _notify(self) -> None:
        async with self._stored:
            self._stored.notify_all()

    def request_missing(
        self, component: str, stream: str, upto: int, finalizing: bool = False
    ) -> None:
        """Ask the node to send the batches of ``stream`` up to ``upto`` that the store
        lacks again. At most once a second; gaps that requests do not fill are asked for
        less and less often (up to every REPLAY_BACKOFF_MAX s), and after REPLAY_TELL
        requests the log says why once (the node no longer holds them, or they do not
        arrive): a gap no node can fill was asked for every second, for good (fault
        injection). A finalize waiting for the job's points asks once a second still."""
        if self.store is None:
            return
        st = self.streams.setdefault((component, stream), _Stream())
        now = time.monotonic()
        if now - st.last_replay_request < 1.0:
            return
        gaps = self.store.missing(component, stream, upto)
        if not gaps:
            st.asked, st.asked_for = 0, None
            return
        state = (self.store.high_water(component, stream), tuple(gaps[:20]))
        if state != st.asked_for:  # something came since the last request: a fresh start
            st.asked, st.asked_for, st.next_ask = 0, state, 0.0
        if not finalizing and now < st.next_ask:
            return
        st.last_replay_request = now
        st.asked += 1
        st.next_ask = now + min(REPLAY_BACKOFF_MAX, 2.0 ** (st.asked - 1))
        if st.asked == REPLAY_TELL:  # said once (the verdict says it too: Files.stuck_reasons)
            log.warning("%s", self.why_stuck(component, stream, gaps, st))
        level = logging.INFO if st.asked < REPLAY_TELL else logging.DEBUG
        epoch = epoch_of(stream)
        for first, last in gaps[:20]:
            what = "asking for replay of %s stream %s seq %d..%d"
            log.log(level, what, component, stream, first, last)
            args = ReplayArgs(epoch=epoch, first=first, last=last, stream=stream)
            self.spawn(self._replay(component, st, args))

    def why_stuck(
        self, component: str, stream: str, gaps: list[tuple[int, int]], st: _Stream
    ) -> str:
        """Why the batches ``gaps`` of a stream are still missing after replay requests."""
        seqs = ", ".join(f"{a}..{b}" if a != b else str(a) for a, b in gaps[:5])
        more = f" and {len(gaps) - 5} more" if len(gaps) > 5 else ""
        head = f"{component} stream {stream}: batches {seqs}{more} were asked for {st.asked} times"
        if self.storage_error is not None:
            # they came, and the store refused them (it blamed the broker: an outside run)
            return f"{head}; {self.storage_error}"
        if st.replayed is None:
            return f"{head} and its node did not answer: is it running?"
        if st.replayed == 0:
            return (
                f"{head} and its node no longer holds them (acknowledged to an earlier store "
                "of this recorder, or dropped from its full spool): a job that needs them "
                "ends ce with the count"
            )
        return (
            f"{head}; its node sent them again and they did not arrive: does the broker "
            "drop them (a message size limit, e.g. Mosquitto's message_size_limit, below "
            "the size of a batch)?"
        )

    async def _replay(self, component: str, st: _Stream, args: ReplayArgs) -> None:
        reply = await self._node_request(component, "replay", args)
        if reply is not None and reply.success and isinstance(reply.data, dict):
            n = reply.data.get("replayed")
            st.replayed = n if isinstance(n, int) else st.replayed

    async def _node_request(self, component: str, op: str, args: BaseModel) -> Reply | None:
        if self.requester is None:
            return None
        try:
            return await self.requester.request(
                self.topics.component_cmd(component, op), args, timeout=5, who="node"
            )
        except NoResponder as e:
            log.debug("%s", e)
            return None

    async def on_message(self, msg: Message) -> None:
        parsed = self.topics.parse(msg.topic)
        if parsed is None:
            return
        if parsed.kind == "component_data":
            self._on_data(msg, parsed.name)
        elif parsed.kind == "recorder_cmd" and parsed.op is not None:
            self.spawn(self.responder.handle(msg, parsed.op))
        elif parsed.kind == "component_meta":
            self._on_meta(msg, parsed.name)
        elif parsed.kind == "node_status" and msg.payload:
            try:
                st = decode(NodeStatus, msg.payload, msg.topic)
            except DecodeError as e:
                log.warning("%s", e)
                return
            # the node says how far each stream got: anything beyond what we hold is a gap.
            # Only of the components it hosts: a node's login whose status named another
            # node's component, with a new stream each time, had a replay sent to that
            # node per message, which dropped the scheduler's commands with them (over
            # 200 a second of one login), and its streams filled this recorder's memory
            # (a security round). A component's meta is published by its node alone.
            for component, seq in st.streams.items():
                if self.hosts.get(slug(component)) != parsed.name:
                    continue
                stream = stream_id(st.stream_ids.get(component, ""), st.epoch)
                if (
                    seq >= 0
                    and self.store is not None
                    and (self.store.high_water(component, stream) < seq)
                ):
                    self.streams.setdefault((component, stream), _Stream())
                    self.request_missing(component, stream, seq)

    def _on_meta(self, msg: Message, component: str | None) -> None:
        if component is None:
            return
        if not msg.payload:  # cleared: its node no longer hosts it. Its last host is
            # kept: a component moved to another node had its old meta cleared after the
            # new one came, and its new node's gaps went unasked (a review)
            return
        try:
            meta = decode(ComponentMeta, msg.payload, msg.topic)
        except DecodeError as e:
            log.debug("%s", e)
            return
        self.hosts[component] = slug(meta.node)

    async def _ack_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.ack_stored()

    def ack_stored(
        self,
        components: Collection[str] | None = None,
        streams: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Acknowledge the stored batches of each stream to its node.

        From the loop (``components`` None): a stream every ACK_EVERY s, or within a
        second once ACK_BATCHES of its batches wait (a fast stream's spool stays small).
        With ``components`` (a job's file was written): every stored batch of theirs at
        once, and of ``streams`` (component, stream) too, should this recorder have
        heard nothing of them since it started. A job's last batches otherwise waited up
        to ACK_EVERY s in the node's spool, and a component that ``tomato reload``
        removed meanwhile kept them there for good: their ack went to a component the
        node no longer had.
        """
        if self.store is None:
            return
        for key in streams:
            self.streams.setdefault(key, _Stream())
        now = time.monotonic()
        durable = False
        for (component, stream), st in list(self.streams.items()):
            if components is not None and component not in components:
                continue
            hw = self.store.high_water(component, stream)
            if hw <= st.acked:
                continue
            if components is None and not (
                hw - st.acked >= ACK_BATCHES or now - st.acked_at >= ACK_EVERY
            ):
                continue
            if not durable:  # what is acknowledged is on the disk, not in its cache only
                try:
                    self.store.make_durable()
                except sqlite3.Error as e:
                    if not self._durable_failed:  # once: _storage_failed says it on (every
                        # 30 s); it was logged at every round, each second (a fault review)
                        log.warning("cannot make the stored batches durable: %s; no ack now", e)
                    # a store that takes batches into its WAL but cannot write them to
                    # the file is full all the same: said (the status, the jobs' reason),
                    # not only logged (a chaos run saw no reason while its disk was full)
                    self._durable_failed = True
                    self._storage_failed(e, None)
                    return
                if self._durable_failed:
                    self._durable_failed = False
                    self._storage_ok()
                durable = True
            prev, st.acked, st.acked_at = st.acked, hw, now
            self.spawn(self._ack(component, stream, st, prev, hw))

    async def _ack(self, component: str, stream: str, st: _Stream, prev: int, upto: int) -> None:
        """Send one ack; if the node does not confirm it, the next timed round sends it
        again (ACK_RETRIES times): after a job's file, no later batch of the stream may
        come to bring another ack, and its last batches stayed in the spool (review)."""
        args = AckArgs(epoch=epoch_of(stream), upto=upto, stream=stream)
        reply = await self._node_request(component, "ack", args)
        if reply is not None and reply.success:
            st.ack_failures = 0
            return
        if st.acked != upto:
            return  # a later ack went out meanwhile: it covers these batches
        st.ack_failures += 1
        if st.ack_failures <= ACK_RETRIES:
            st.acked, st.acked_at = prev, time.monotonic()
        elif st.ack_failures == ACK_RETRIES + 1:
            why = "no answer" if reply is None else reply.msg
            log.info(
                "%s did not confirm the ack of its batches up to %d of stream %s (%s, %d "
                "tries): they stay in its spool until it sends them again",
                component, upto, stream, why, ACK_RETRIES + 1,
            )  # fmt: skip

    def remember_file(self, jobid: int, written: Path) -> None:
        """The job's last file, named in recorder/status (bounded: recent jobs only)."""
        self.filenames.pop(jobid, None)
        self.filenames[jobid] = str(written)
        while len(self.filenames) > 4 * STATUS_JOBS:
            self.filenames.pop(next(iter(self.filenames)))

    async def op_status(self, args: Mapping[str, JsonValue]) -> Result:
        st = self._status("online")
        return Result("recorder is running", st.model_dump(mode="json", by_alias=True))
