"""The scheduler: configuration, pipelines, the job queue and job state.

It owns the durable state (sqlite), publishes it retained for everyone (pipelines,
jobs, its own presence and the AsyncAPI contract), configures the driver nodes,
matches queued jobs to pipelines and runs them through :class:`JobRunner`. Every
request on ``scheduler/cmd/<op>`` gets a Reply; bad input never stops the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
import uuid
from collections.abc import Coroutine, Mapping
from typing import Any

from pydantic import JsonValue

from tomato_mqtt import __version__
from tomato_mqtt.config.devices import Layout, load_devices
from tomato_mqtt.config.settings import Settings, settings_url
from tomato_mqtt.config.statefiles import opened, what_to_do
from tomato_mqtt.errors import cannot_write
from tomato_mqtt.model.jobs import PLAUSIBLE_ID, Job, kept_pipeline_note, utcnow
from tomato_mqtt.services.base import Service
from tomato_mqtt.services.scheduler.lost import LostComponents
from tomato_mqtt.services.scheduler.nodeconfig import NodeConfigurator
from tomato_mqtt.services.scheduler.ops import SchedulerOps
from tomato_mqtt.services.scheduler.presence import Presence
from tomato_mqtt.services.scheduler.recorder_link import RecorderLink
from tomato_mqtt.services.scheduler.retention import Retention
from tomato_mqtt.services.scheduler.runner import JobRunner
from tomato_mqtt.services.scheduler.stale import StaleTasks
from tomato_mqtt.services.scheduler.store import (
    TOMATO22_FOLDER,
    StateStore,
    StoreTaken,
    finals_elsewhere,
    highest_job_elsewhere,
    ran_elsewhere,
)
from tomato_mqtt.services.scheduler.tasks import UNANSWERED
from tomato_mqtt.services.scheduler.warmup import (
    WARM_UP_LATEST,
    SchemaDoc,
    settled,
    warm_up_payloads,
    warm_up_when,
)
from tomato_mqtt.transport.client import BrokerURL, Message, MqttError, MqttTimeout
from tomato_mqtt.transport.rpc import NoResponder, Requester, Responder
from tomato_mqtt.waits import wait_for
from tomato_mqtt.wire.messages import (
    ComponentMeta,
    ComponentStatus,
    DecodeError,
    JobEvent,
    NodeStatus,
    PipelineStatus,
    PresenceState,
    RecorderStatus,
    Reply,
    SchedulerStatus,
    decode,
    encode,
)
from tomato_mqtt.wire.topics import Topics, slug

__all__ = ["SchedulerService"]

log = logging.getLogger(__name__)


#: s a component its node hosts may stay unheard of before its status names the likely
#: cause (SchedulerService.unheard_of)
UNHEARD_AFTER = 10.0
#: the requests whose replies the state file keeps (rpc.ReplyJournal): a client's copy of
#: one reaching a restarted scheduler is answered as the first was. Not job_submit: its
#: token finds its job (and one fsync less on a submit)
JOURNALED = frozenset({"pipeline_load", "pipeline_eject", "pipeline_ready", "job_cancel", "reload"})
#: an answer of the scheduler counts as one request of its login per this many bytes
#: (rpc.Responder.bytes_per_request): ~1.6 MB of answers a second for a login, bursts
#: of 8 MB (at 32 kB, three logins' bursts of 30 answers of 1 MB, each 1,000 jobs built,
#: held the scheduler 14 s: a review's measured run)
REPLY_BYTES_PER_REQUEST = 8 * 1024


class SchedulerService(Service):
    def __init__(self, settings: Settings, url: BrokerURL | None = None) -> None:
        #: when a message last came from the broker (monotonic): presence.check_stale
        self.broker_heard = time.monotonic()
        url = url or settings_url(settings)
        super().__init__(
            url,
            Topics(settings.mqtt.instance, url.username),
            heartbeat=settings.scheduler.heartbeat,
        )
        self.settings = settings
        #: as the stack started: what its services read once (reload compares with it)
        self.started_with = settings
        self._client_id = f"scheduler-{settings.mqtt.instance}-{uuid.uuid4().hex[:16]}"
        self.node_grace_period = settings.scheduler.node_grace_period
        self.stuck_after = settings.scheduler.stuck_after
        self._kick = asyncio.Event()
        self.cond = asyncio.Condition()
        self.metas: dict[str, ComponentMeta] = {}
        self.cstatus: dict[str, ComponentStatus] = {}
        self.nodes: dict[str, NodeStatus] = {}
        #: component -> since when (monotonic) its node has said it hosts it, while
        #: nothing of the component itself has come (unheard_of)
        self.unheard: dict[str, float] = {}
        self.runners: dict[int, JobRunner] = {}
        #: jobs whose runner is done and whose end is being stored and told (lifecycle)
        self.ending: set[int] = set()
        self.layout: Layout = Layout(components={}, pipelines={})
        self.store: StateStore | None = None
        #: another scheduler holds the state file: this one stops and changes nothing
        self.superseded = False
        #: queued jobs of the state file that ran already, ended at setup (said once up)
        self._ran_before: list[Job] = []
        self._ids_past = 0  # the highest id seen elsewhere that the store was told of
        self._ids_implausible = 0  # an id seen elsewhere beyond PLAUSIBLE_ID (said once)
        self.requester: Requester | None = None
        self.epoch = int(time.time())  # s, as the nodes' (schema 2; was ms)
        self._schema = SchemaDoc(self.topics.instance)
        self._settled = asyncio.Event()  # every component registered (or failed to)
        self.started_at = time.time()
        self.exit_requested = False  # `tomato stop`: the supervisor then stops the stack
        #: jobs whose launch is stored (r) but whose runner is not started yet: a `stop
        #: --force` between the two found no runner to wait for and stopped at once, the
        #: job left rd (a review)
        self.launching: set[int] = set()
        self._file_said: str | None = None  # what check_file said last (said once)
        #: the state file was found damaged while the scheduler ran (see state_fault)
        self.state_damaged: str | None = None
        #: the state file takes no writes now (see _state_unwritable)
        self.state_unwritable: str | None = None
        #: what an external broker does not do that the contract needs (brokercheck.py)
        self.broker_warnings: list[str] | None = None
        self.nodeconfig = NodeConfigurator(self)
        self.recorder = RecorderLink(self.topics)  # requests survive a recorder restart
        self.presence_view = Presence(self)
        self.retention = Retention(self)
        self.lost = LostComponents(self)
        self.stale = StaleTasks(self)

    @property
    def client_id(self) -> str:
        return self._client_id

    @property
    def status_topic(self) -> str:
        return self.topics.scheduler_status()

    def presence(self, state: PresenceState) -> SchedulerStatus:
        return self._presence(state)

    def _ids_after(self, used: int | None, where: str) -> None:
        """Job ids continue after ``used``, an id seen in ``where`` that the state file
        does not know (it was removed, emptied or restored from a backup): an id is never
        given to two jobs, so no job's file takes another's points. ``where`` is this
        PC's recorder store or job folders at start, and a recorder's status (it may run
        on another PC) whenever one comes."""
        if self.store is None or not used or used <= self._ids_past:
            return  # a recorder's status comes every heartbeat: the store asked once
        if used > PLAUSIBLE_ID:
            # (a forged recorder status at 2**63-1 made every later submit fail, for
            # good: the id was stored; at 10**30 it raised: a hostile tour)
            if used != self._ids_implausible:
                self._ids_implausible = used
                log.warning(
                    "job ids not moved past %d (seen in %s): beyond any lab's ids (%d), "
                    "not a job this stack ran",
                    used,
                    where,
                    PLAUSIBLE_ID,
                )
            return
        try:
            moved = self.store.continue_ids_after(used)
        except sqlite3.Error as e:  # a state file that takes no writes: said elsewhere
            # (the state file's error: ``where`` only says where the id was seen; a review
            # read it as the recorder's store being damaged)
            log.warning(
                "cannot move the job ids past %d (seen in %s) in the state file %s: %s",
                used,
                where,
                self.store.path,
                e,
            )
            return  # asked again with the next status
        self._ids_past = used
        if moved and where.startswith(TOMATO22_FOLDER):  # a lab moving over: no fault
            log.info(
                "job ids continue after %d (seen in %s: a datadir tomato 2.2 used): no job "
                "folder holds two jobs",
                used,
                where,
            )
        elif moved:
            log.warning(
                "job ids continue after %d (seen in %s, unknown to %s: a state file "
                "removed, emptied or restored from a backup?): an id is never given to "
                "two jobs, so no job's file takes another's points",
                used,
                where,
                self.settings.state_db,
            )

    # -- lifecycle -------------------------------------------------------------------------
    async def setup(self) -> None:
        self.layout = load_devices(self.settings.devices_file, self.settings.node.name)
        for line in self.layout.ignored:  # (tomato start said so on its stderr too)
            log.warning("%s", line)
        self.settings.datadir.mkdir(parents=True, exist_ok=True)
        db = self.settings.state_db
        self.store = opened(
            "state", db, "the scheduler", lambda: StateStore(db, self.settings.jobs_dir)
        )
        self.store.hold()  # a scheduler that held it before writes nothing more
        self.store.on_taken = self._store_taken
        self.store.on_write_error = self._state_unwritable
        for p in self.store.sync_pipelines(self.layout.pipelines):
            if p.sampleid is not None:  # (`tomato start` says it too, on its stderr)
                note = kept_pipeline_note(p.name, p.sampleid, self.settings.devices_file, p.jobid)
                log.warning("%s", note)
        used, where = highest_job_elsewhere(self.settings.recorder_db, self.settings.jobs_dir)
        self._ids_after(used, where)
        # the recorder's store read once, for the queued and the running jobs
        ids = self.store.job_ids(("q", "qw", "r", "rd"))
        finals = finals_elsewhere(self.settings.recorder_db, ids)
        self._ran_before = self._queued_that_ran(self.store, finals) + self._running_that_ended(
            self.store, finals
        )

    def _queued_that_ran(self, store: StateStore, finals: Mapping[int, object]) -> list[Job]:
        """Jobs the state file holds as queued that ran already (a state file restored
        from a backup taken while they were queued): ended ``ce``, not run again. They
        were run a second time under the same ids, ``c`` again, the second run's points
        in no file (a randomized fault round)."""
        ids = store.job_ids(("q", "qw"))
        ran = ran_elsewhere(self.settings.recorder_db, self.settings.jobs_dir, ids, finals)
        ended = []
        for jobid, where in sorted(ran.items()):
            reason = (
                f"not run again: it ran before this state file was restored from an older "
                f"copy ({where}); what it took is in that run's file"
            )
            log.warning("job %d: %s", jobid, reason)
            try:
                ended.append(
                    store.update_job(
                        jobid, restored=True, status="ce", completed_at=utcnow(), reason=reason
                    )
                )
            except sqlite3.Error as e:  # a state file that takes no writes: said elsewhere
                log.warning("job %d: cannot end it in %s: %s", jobid, store.path, e)
        return ended

    def _running_that_ended(
        self, store: StateStore, finals: Mapping[int, dict[str, Any]]
    ) -> list[Job]:
        """Jobs the state file holds as running whose final file this PC's recorder was
        asked for with more of their tasks over than the state file has: they ended after
        the copy the state file was restored from was taken (a job's end stores its
        tasks' ends before it asks for the file, so after a plain restart the two agree:
        a cancelled job's tasks never begun, say, are over in neither, and it is taken up
        as before: a review). Taken up as after a restart, their unfinished tasks ran
        again and wrote over the file (a fault round saw such jobs end `c` twice, or `ce`
        "the file has points no runner reported"). They end as their file says; their
        pipeline is free."""
        jobs = store.jobs(statuses=["r", "rd"])
        ended = []
        for job in jobs:
            if job.id not in finals:
                continue
            told = finals[job.id].get("job")
            told = told if isinstance(told, dict) else {}
            progress = told.get("progress")
            if _tasks_over(progress if isinstance(progress, dict) else {}) <= _tasks_over(
                job.progress
            ):
                continue
            written, status = finals[job.id].get("written"), told.get("status")
            note = (
                "not taken up again: it ended after the copy this state file was restored "
                f"from was taken (the recorder's store {self.settings.recorder_db} "
            )
            fields: dict[str, Any]
            if isinstance(written, str) and status in ("c", "ce", "cd"):
                note += f"wrote its file {written}, and its end is taken from there)"
                reason = "; ".join(str(x) for x in (told.get("reason"), note) if x)
                when = told.get("completed_at")
                fields = {"status": status, "reason": reason, "respath": written}
                fields["completed_at"] = when if isinstance(when, str) else utcnow()
                if isinstance(progress, dict) and isinstance(progress.get("tasks"), dict):
                    # its tasks' ends and counts as the file has them (they read null: a
                    # fault round's re-run)
                    fields["progress"] = job.progress | {"tasks": progress["tasks"]}
            else:
                note += "was asked for its file, which it has not written: its points are "
                note += "there, `ketchup snapshot` writes them)"
                fields = {"status": "ce", "reason": note, "completed_at": utcnow()}
            log.warning("job %d: %s", job.id, fields["reason"])
            try:
                with store.transaction():
                    ended.append(store.update_job(job.id, restored=True, **fields))
                    pip = job.pipeline
                    if pip and pip in self.layout.pipelines and store.pipeline(pip).jobid == job.id:
                        store.update_pipeline(pip, jobid=None)
            except sqlite3.Error as e:  # a state file that takes no writes: said elsewhere
                log.warning("job %d: cannot end it in %s: %s", job.id, store.path, e)
        return ended

    async def started(self) -> None:
        self.requester = Requester(self.mqtt, self.topics, self.settings.max_reply_bytes)
        self.ops = SchedulerOps(self)
        self.responder = Responder(
            self.mqtt,
            self.topics,
            self.ops.table(),
            name="scheduler",
            kind="scheduler",
            max_reply=self.settings.max_reply_bytes,
            journal=self.store,
            journaled=JOURNALED,
            on_fault=self.state_fault,
            # one login's flood must not hold up everyone's (a security tour); on an open
            # stack every client is `anonymous`, and may do anything anyway: not limited
            per_login=self.settings.users_file is not None,
            bytes_per_request=REPLY_BYTES_PER_REQUEST,
        )
        filters = (
            self.topics.scheduler_cmds(),
            self.topics.all_node_status(),
            self.topics.all_component_meta(),
            self.topics.all_component_status(),
            self.topics.recorder_status(),
            self.topics.all_job_status(),  # to clear stale retained ones (retention.py)
            # its own heartbeat comes back through the broker: a broker that stalls is told
            # from nodes that went silent (presence.check_stale)
            self.topics.scheduler_status(),
        )
        # all at once: one round trip to the broker, not seven in a row
        await asyncio.gather(self.requester.start(), *(self.mqtt.subscribe(f) for f in filters))
        await self._announce()
        for job in self._ran_before:  # (ended at setup, before any launch)
            await self.publish_job(job)
            self.job_event(job.id, "completed", status="ce", detail={"reason": job.reason})
        self._ran_before = []
        self.spawn(self._warm_up())
        if not self.settings.broker.embedded:
            self.spawn(self._check_broker())
        self._readopt()

    async def _check_broker(self) -> None:
        """An external broker's retained messages checked once (brokercheck.py), said in
        the status and the log; when it could not be checked (no connection, lost during
        the check, a refusal), tried again 1, 2, 4 … 60 s later."""
        from tomato_mqtt.services.scheduler.brokercheck import broker_warnings

        pause = 1.0
        while self.broker_warnings is None:
            try:
                found = await broker_warnings(self)
            except MqttError as e:
                log.info("the broker's retained messages not checked yet (%s): again", e)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 60.0)
                continue
            for w in found:
                log.warning("%s", w)
            self.broker_warnings = found
            await self.publish(self.topics.scheduler_status(), self._presence("online"))

    async def _warm_up(self) -> None:
        await warm_up_when(self._settled, warm_up_payloads)

    def _check_settled(self) -> None:
        if not self._settled.is_set() and settled(self.layout, self.metas):
            self._settled.set()

    def loops(self) -> list[Coroutine[Any, Any, Any]]:
        return [self._schedule_loop()]

    async def on_connect(self) -> None:
        await self._announce()

    async def on_heartbeat(self) -> None:
        self.presence_view.tick()
        if self.store is not None:
            self.store.probe_write()  # (only while it takes none: see storage_error)
            try:
                what = self.store.check_file()
            except (OSError, sqlite3.Error) as e:
                what = f"the state file {self.store.path} is gone and cannot be written back: {e}"
            if what is not None and what != self._file_said:
                log.error("%s", what)
            self._file_said = what
        self._check_stale_nodes()
        await self.retention.sweep()
        await self.lost.sweep()

    async def teardown(self) -> None:
        if self.store is not None:
            for runner in self.runners.values():  # progress not yet stored (SAVE_DELAY)
                runner.save_now(retry=False)  # no retry after the store closed
            self.store.close()

    def kick(self) -> None:
        """Something changed that may let a job match or launch."""
        self._kick.set()

    def kick_pending(self) -> bool:
        """A scheduling pass is due (something changed since the last one began)."""
        return self._kick.is_set()

    # -- publishing ------------------------------------------------------------------------
    def said_fault(self, e: BaseException) -> str | None:
        return self.state_fault(e)

    def state_fault(self, e: BaseException) -> str | None:
        """What to say of ``e`` when it is SQLite's word for a damaged state file
        ("database disk image is malformed"), found while the scheduler ran: logged once,
        in the scheduler's status from now on, and the answer (``unavailable``) to every
        request that needs the file. None for any other error. A fault-injection run: a
        file damaged under the running scheduler answered every request, `tomato stop`
        included, "internal error in scheduler: DatabaseError(…)", and logged a traceback
        at every pass; the stack could not be stopped but by killing it."""
        if (
            isinstance(e, sqlite3.OperationalError)
            and self.state_unwritable is not None
            and cannot_write(str(e))
        ):
            # what its status says (which file, why, what to do: another program's lock
            # is not a full disk), not the generic "free space or fix the permissions"
            return f"it was not done: {self.state_unwritable}"
        if type(e) is not sqlite3.DatabaseError or self.store is None:
            return None  # (its subclasses: a full disk, a locked file, an SQL bug)
        if self.state_damaged is None:
            self.state_damaged = what_to_do(
                "state",
                self.store.path,
                str(e),
                "no job starts and requests that need it are refused until tomato-mqtt "
                "is stopped (`tomato stop`: accepted now, also while jobs run) and started "
                "on a good file",
            )
            log.error("%s", self.state_damaged)
            self.spawn(self.publish(self.topics.scheduler_status(), self._presence("online")))
        return self.state_damaged

    def _presence(self, state: str) -> SchedulerStatus:
        if state == "lost":  # the last will: who it was, no stale snapshot (as the node's)
            return SchedulerStatus(
                state=state,
                instance=self.settings.mqtt.instance,
                epoch=self.epoch,
                version=__version__,
                started_at=self.started_at,
                broker=str(self.url),
                heartbeat_interval=self.settings.scheduler.heartbeat,
                lost_after=self.settings.scheduler.lost_after,
            )
        # counts from the status index: the heartbeat costs the same at any queue depth
        try:
            n = self.store.status_counts() if self.store else {}
        except sqlite3.Error as e:
            self.state_fault(e)
            n = {}
        return SchedulerStatus(
            state=state,
            instance=self.settings.mqtt.instance,
            epoch=self.epoch,
            heartbeat=time.time(),
            version=__version__,
            started_at=self.started_at,
            broker=str(self.url),
            jobs_running=n.get("r", 0) + n.get("rd", 0),
            jobs_queued=n.get("q", 0) + n.get("qw", 0),
            heartbeat_interval=self.settings.scheduler.heartbeat,
            lost_after=self.settings.scheduler.lost_after,
            storage_error=self.state_damaged or self.state_unwritable,
            broker_warnings=self.broker_warnings,
        )

    async def publish(self, topic: str, msg: Any, retain: bool = True, wait: bool = False) -> None:
        if self.client is None:
            return
        payload = msg if isinstance(msg, bytes) else encode(msg)
        try:
            await self.client.publish(topic, payload, retain=retain, wait=wait)
        except MqttTimeout as e:  # only when waiting: paho still holds it and sends it
            log.warning("%s", e)

    async def _announce(self) -> None:
        """(Re)publish everything retained: after start and after every reconnect."""
        await self.publish(self.topics.scheduler_status(), self._presence("online"))
        # the AsyncAPI document takes ~0.1-0.2 CPU-s to build: in a thread, once, so that
        # it does not hold up the nodes' configuration (what `tomato start` waits for)
        self.spawn(self._publish_schema())
        if self.store is None:
            return
        if not self.store.held():
            return  # superseded: no retained pipelines, no node configuration from here
        for p in self.store.pipelines():
            await self.publish_pipeline(p.name)
        await self.retention.announce()
        await self.nodeconfig.configure_all(again=True)

    async def _publish_schema(self) -> None:
        # after `tomato start`'s wait: the components registered (warmup.py)
        with contextlib.suppress(asyncio.TimeoutError):
            await wait_for(self._settled.wait(), WARM_UP_LATEST)
        await self.publish(self.topics.meta_schema(), await self._schema.get(self.settings))

    async def publish_pipeline(self, name: str) -> None:
        if self.store is None:
            return
        p = self.store.pipeline(name)
        lay = self.layout.pipelines.get(name)
        msg = PipelineStatus(
            name=name,
            sample=p.sampleid,
            ready=p.ready,
            job=p.jobid,
            roles=dict(lay.roles) if lay else {},
            owner=p.owner,
        )
        await self.publish(self.topics.pipeline_status(name), msg)

    async def publish_job(self, job: Job, wait: bool = False) -> None:
        await self.retention.publish(job, wait)

    async def clear_pipeline(self, name: str) -> None:
        await self.publish(self.topics.pipeline_status(name), b"")

    def job_event(self, job: int, event: str, **kw: Any) -> None:
        """Publish a job event (from a task of its own: not in order with what the caller
        publishes next; :meth:`job_event_now` is)."""
        self.spawn(self.job_event_now(job, event, **kw))

    async def job_event_now(self, job: int, event: str, at: float | None = None, **kw: Any) -> None:
        """``at``: when it happened, if not now (a task's start, on its node's clock)."""
        ev = JobEvent(job=job, event=event, time=time.time() if at is None else at, **kw)
        await self.publish(self.topics.job_event(job), ev, retain=False)

    def _check_stale_nodes(self) -> None:
        if self.presence_view.check_stale():
            self.spawn(self._notify())

    async def _notify(self) -> None:
        async with self.cond:
            self.cond.notify_all()

    # -- incoming --------------------------------------------------------------------------
    async def on_message(self, msg: Message) -> None:
        self.broker_heard = time.monotonic()  # any message (its own heartbeat's echo too)
        parsed = self.topics.parse(msg.topic)
        if parsed is None:
            return
        try:
            if parsed.kind == "scheduler_cmd" and parsed.op is not None:
                self.spawn(self.responder.handle(msg, parsed.op))
            elif parsed.kind == "job_status" and parsed.name is not None:
                if msg.payload and parsed.name.isdigit():
                    await self.retention.seen(int(parsed.name), msg.retain)
            elif parsed.kind == "scheduler_status":
                if msg.payload and not msg.retain:  # its own heartbeat, back: how late
                    own = decode(SchedulerStatus, msg.payload, msg.topic)
                    if own.epoch == self.epoch and own.state == "online" and own.heartbeat:
                        self.presence_view.own_echo(own.heartbeat)
            elif not msg.payload:
                if parsed.kind == "component_status" and parsed.name is not None:
                    await self._component_gone(parsed.name)
                elif parsed.kind == "component_meta" and parsed.name is not None:
                    self._meta_gone(parsed.name)
                return  # a cleared retained topic
            elif parsed.kind == "node_status":
                nst = decode(NodeStatus, msg.payload, msg.topic)
                if self._topic_agrees(parsed.name, nst.node, msg.topic):
                    self.presence_view.received(nst, retained=msg.retain)
                    await self._on_node_status(nst)
            elif parsed.kind == "recorder_status":
                rst = decode(RecorderStatus, msg.payload, msg.topic)
                self._ids_after(rst.highest_job, "the recorder's status")
                was_down = self.presence_view.recorder_down is not None
                restarted = await self.recorder.seen(rst)
                await self.presence_view.recorder(rst)
                if was_down and rst.state == "online" and not restarted:  # (once, not twice)
                    await self.recorder.back()
            elif parsed.kind == "component_meta":
                meta = decode(ComponentMeta, msg.payload, msg.topic)
                if self._topic_agrees(parsed.name, meta.name, msg.topic):
                    self.metas[meta.name] = meta
                    self._check_settled()
                    self.kick()
                    async with self.cond:  # (a reload waits for the metas it causes)
                        self.cond.notify_all()
            elif parsed.kind == "component_status":
                st = decode(ComponentStatus, msg.payload, msg.topic)
                if not self._topic_agrees(parsed.name, st.name, msg.topic):
                    return
                if st.state == "lost":  # ours (lost.py): the node's last word stands
                    return
                prev = self.cstatus.get(st.name)
                if prev is not None and _older(st, prev):
                    # a status of before the one held: a broker that restored its retained
                    # messages from disk (Mosquitto's persistence, killed and started
                    # again) sent one of 15 minutes before, of a job long over, which was
                    # then taken for a stale task and reset (a fault round)
                    log.info(
                        "component %s: a status older than the one held (data batch %d "
                        "before %d) ignored: a broker that restored old retained messages?",
                        st.name,
                        st.seq,
                        prev.seq,
                    )
                    return
                self.cstatus[st.name] = st
                if prev is None or (prev.state == "running") != (st.state == "running"):
                    self.kick()  # a component the queue could not launch onto may be free
                self.stale.seen(st)
                if st.last_task is not None:
                    self.presence_view.late_task_end(st)
                async with self.cond:
                    self.cond.notify_all()
        except DecodeError as e:
            log.warning("%s", e)

    async def _component_gone(self, slugged: str) -> None:
        """A node cleared a component's status: it no longer hosts it (a runner waiting
        for a task on it must not wait for ever)."""
        for name in [n for n in self.cstatus if slug(n) == slugged]:
            del self.cstatus[name]
        async with self.cond:
            self.cond.notify_all()

    def _meta_gone(self, slugged: str) -> None:
        """A node cleared a component's meta: it no longer hosts it. The meta is
        forgotten unless it is the current host's (whose meta the old host's clear may
        follow: the two are configured at once). Kept, a component moved to another node
        was taken for the old node's: the scheduler asked that node, not the new one, to
        say it all again, and on an external broker whose rules were written again the
        component never registered (an admin's tour, Mosquitto)."""
        for name in [n for n in self.metas if slug(n) == slugged]:
            c = self.layout.components.get(name)
            if c is None or self.metas[name].node != c.node:
                del self.metas[name]
                self.kick()

    @staticmethod
    def _topic_agrees(segment: str | None, name: str, topic: str) -> bool:
        """Trust topics, not payloads: the broker's ACL guarantees who may publish on a
        node's or component's topic, nothing guarantees the name inside the payload. A
        payload about another name (forged or retained junk) is dropped, with a log."""
        if segment is not None and slug(name) == segment:
            return True
        log.warning(
            "dropped a message on %s about %r: the name disagrees with the topic", topic, name
        )
        return False

    async def _on_node_status(self, st: NodeStatus) -> None:
        prev = self.nodes.get(st.node)
        stale_will = st.state == "lost" and prev is not None and prev.state == "online"
        if stale_will and prev is not None and prev.epoch != st.epoch:
            # the last will of a run before the one online now (its connection's end
            # reached the broker late: a cut, then the node killed and started
            # again): that run is gone, this one is not. It marked the running node
            # lost for seconds, and its job's reason said so (a fault round)
            log.info(
                "node %s: the last will of its run %s came while run %s is online: "
                "not the running node's",
                st.node,
                st.epoch,
                prev.epoch,
            )
            return
        self.nodes[st.node] = st
        now, listed = time.monotonic(), set(st.components)
        again = prev is not None and prev.epoch != st.epoch  # a node restarted: anew
        for name, c in self.layout.components.items():
            if c.node != st.node:
                continue
            if again or name not in listed or self.heard_of(name, st.node):
                self.unheard.pop(name, None)
            if name in listed and not self.heard_of(name, st.node):
                self.unheard.setdefault(name, now)
        await self.lost.node_status(st)
        async with self.cond:
            self.cond.notify_all()
        self.nodeconfig.on_status(st)
        self.kick()

    async def configure_nodes(self) -> None:
        """Send every online node its components again (after a reload changed them)."""
        await self.nodeconfig.configure_all()

    # -- views used by ops and runners -----------------------------------------------------
    def component_status(self, name: str) -> ComponentStatus | None:
        return self.cstatus.get(name)

    def clock_offset(self, node: str) -> float | None:
        """The node's clock less this scheduler's, as its heartbeats show (None: not
        measured yet)."""
        return self.presence_view.clock_offset(node)

    def node_silent(self, node: str) -> bool:
        """No status of ``node`` has arrived for 2.5 heartbeats (it stands still or is cut
        off), whether or not it is counted lost yet."""
        return self.presence_view.silent(node)

    def node_back_since(self, node: str) -> float | None:
        """Seconds since ``node`` spoke again after a silence (a cut link, a freeze),
        None if it never fell silent."""
        return self.presence_view.back_since(node)

    def broker_quiet(self) -> bool:
        """Nothing comes from the broker, not even this scheduler's heartbeat (it stalls,
        or it is down): what the nodes say cannot reach the scheduler meanwhile."""
        return self.presence_view.broker_quiet

    def heard_of(self, component: str, node: str) -> bool:
        """A status of ``component``, or its meta from ``node``, has come."""
        meta = self.metas.get(component)
        return component in self.cstatus or (meta is not None and meta.node == node)

    def unheard_of(self, component: str) -> str | None:
        """Why nothing of ``component`` has come though its node, online, says for
        UNHEARD_AFTER s that it hosts it; None otherwise. The broker's rules not giving the
        node the component (an external broker's, not written again after the devices file
        changed) drop what the node publishes of it, without a word to anyone: it showed
        "unregistered" with no error for good (an admin's tour)."""
        broker = self.settings.broker
        if not broker.password_file and broker.embedded:  # no rules to drop anything
            return None
        c = self.layout.components.get(component)
        since = self.unheard.get(component)
        node = self.nodes.get(c.node) if c else None
        if c is None or since is None or node is None or node.state != "online":
            return None
        if component not in node.components or self.heard_of(component, c.node):
            return None
        if time.monotonic() - since < UNHEARD_AFTER:
            return None
        return (  # (no age in it: a queued job's reason that changed every pass was
            # stored and published again for every job at every pass: a review)
            f"node {c.node} has hosted it for more than {UNHEARD_AFTER:g} s, but nothing of "
            f"it has reached the scheduler: the broker's rules may not give node {c.node} "
            "this component (an external broker: write its rules again with tomato "
            "broker-config and have it read them, docs/security.md)"
        )

    def node_of(self, component: str) -> NodeStatus | None:
        c = self.layout.components.get(component)
        meta = self.metas.get(component)
        node = meta.node if meta else (c.node if c else None)
        return self.nodes.get(node) if node else None

    def show_reason(self, job: int, reason: str | None, replacing: str | None = None) -> None:
        """A running job's reason (what `ketchup status` shows while it runs), unless it
        has one already (a storage fault, the recorder gone); ``None`` clears the reason
        if it is still ``replacing``."""
        if self.store is None:
            return
        with contextlib.suppress(KeyError, sqlite3.Error):
            current = self.store.job(job)
            if current.status not in ("r", "rd") or current.reason != replacing:
                return
            # (kept in memory while the state file takes no writes: set_reason)
            self.spawn(self.publish_job(self.store.set_reason(job, reason)))

    def _state_unwritable(self, why: str | None) -> None:
        """The state file refuses writes (a full disk), or takes them again: said in the
        scheduler's status (``storage_error``) and as the running jobs' reason while it
        lasts. It was said only in the log: a full datadir showed the jobs `r` without a
        word and ``storage_error: null`` for a minute (a fault-injection run)."""
        if why is None:
            if self.state_unwritable is not None:
                log.info("the state file takes writes again")
            self.state_unwritable = None
        else:
            self.state_unwritable = what_to_do(
                "state",
                self.settings.state_db,
                why,
                "running jobs go on (what they change is kept in memory and stored once it "
                "can be); requests that change the queue are refused until then",
            )
            log.error("%s", self.state_unwritable)
        self.spawn(self.publish(self.topics.scheduler_status(), self._presence("online")))
        self.spawn(self.presence_view.state_unwritable(self.state_unwritable))

    def _store_taken(self) -> None:
        self.superseded = True
        log.error(
            "another scheduler holds the state file %s now (this one was stopped while the"
            " stack was started again): this one stops and writes nothing more",
            self.settings.state_db,
        )
        self.request_stop()

    def save_progress(self, job: int, progress: dict[str, Any]) -> None:
        if self.store is not None:
            with contextlib.suppress(StoreTaken):  # said once, and this scheduler stops
                self.store.update_progress(job, progress)

    async def component_request(
        self,
        component: str,
        op: str,
        args: Mapping[str, Any],
        timeout: float = 5.0,
        resend: bool = False,
    ) -> tuple[bool, str, Any]:
        if self.requester is None:
            return False, "scheduler not connected", None
        try:
            reply = await self.component_reply(component, op, args, timeout, resend)
        except NoResponder as e:
            return False, str(e), UNANSWERED
        return reply.success, reply.msg, reply.data

    async def component_reply(
        self,
        component: str,
        op: str,
        args: Mapping[str, Any],
        timeout: float = 5.0,
        resend: bool = False,
    ) -> Reply:
        """The node's whole Reply to ``op`` (its error ``code`` too); raises
        :class:`NoResponder` when none comes, or when the scheduler is not connected."""
        if self.requester is None:
            raise NoResponder("scheduler not connected")
        return await self.requester.request(
            self.topics.component_cmd(component, op),
            dict(args),
            timeout=timeout,
            who=f"node hosting {component}",
            resend=resend,
        )

    async def recorder_request(
        self, op: str, args: Mapping[str, JsonValue], timeout: float = 60.0
    ) -> tuple[bool, str, Any]:
        if self.requester is None:
            return False, "scheduler not connected", None
        return await self.recorder.request(self.requester, op, args, timeout)

    # -- the queue -------------------------------------------------------------------------
    async def _schedule_loop(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            if self.state_damaged is not None:
                continue  # said once (state_fault), not a traceback at every pass
            try:
                await self.ops.schedule()
            except Exception as e:
                if self.state_fault(e) is None:
                    log.exception("scheduling pass failed")

    def _readopt(self) -> None:
        """Jobs that were running when the scheduler stopped keep running: adopt them."""
        if self.store is None:
            return
        for job in self.store.jobs(statuses=["r", "rd"]):
            log.info("re-adopting running job %d on %s", job.id, job.pipeline)
            self.ops.start_runner(job, readopt=True)
        self.kick()


def _tasks_over(progress: Mapping[str, Any]) -> int:
    """How many tasks a job's progress has ended or skipped."""
    tasks = progress.get("tasks")
    if not isinstance(tasks, dict):
        return 0
    return sum(1 for t in tasks.values() if isinstance(t, dict) and t.get("state") in OVER)


#: a task's states once it is over
OVER = ("ended", "skipped")


def _older(st: ComponentStatus, held: ComponentStatus) -> bool:
    """Whether ``st`` was said before ``held``: the same run of its node and data stream,
    and fewer of its batches published (``seq`` only grows within a stream; a new stream
    is drawn at every registration)."""
    return (
        st.epoch == held.epoch
        and bool(st.stream)
        and st.stream == held.stream
        and st.seq < held.seq
    )
