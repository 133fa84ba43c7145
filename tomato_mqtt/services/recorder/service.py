"""The recorder: stores every data batch durably and writes the NetCDF file of a job.

Each batch is committed to sqlite (WAL) keyed by (component, epoch, seq) before it is
acknowledged to its node, so duplicates are dropped and a ``kill -9`` loses nothing
that was acknowledged. Gaps (a seq skipped, or a node's heartbeat announcing batches we
never got) are replayed from the node's spool. ``finalize`` waits until every batch the
scheduler expects is stored, then writes the file; the same call with ``snapshot``
writes an up-to-date copy while the job runs, and ``fetch`` hands the bytes of a
written file to a CLI on another PC in chunks.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, JsonValue

from tomato_mqtt import __version__
from tomato_mqtt.services.base import run_until_stopped
from tomato_mqtt.services.recorder.guard import WriteGuard
from tomato_mqtt.services.recorder.store import BatchStore
from tomato_mqtt.transport.client import AsyncClient, BrokerURL, Message, Will
from tomato_mqtt.transport.rpc import (
    CommandError,
    Handler,
    NoResponder,
    Requester,
    Responder,
    Result,
)
from tomato_mqtt.wire.messages import (
    AckArgs,
    DataBatch,
    DecodeError,
    JobProgress,
    NodeStatus,
    RecorderStatus,
    ReplayArgs,
    decode,
    encode,
)
from tomato_mqtt.wire.topics import Topics

__all__ = ["RecorderService"]

log = logging.getLogger(__name__)

CHUNK = 256 * 1024


class _Expect(BaseModel):
    model_config = ConfigDict(extra="ignore")
    component: str
    epoch: int
    last_seq: int


class FinalizeArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    job: dict[str, JsonValue]
    roles: dict[str, dict[str, JsonValue]]
    expect: list[_Expect] = []
    path: str
    fallback_dir: str
    snapshot: bool = False
    wait: float = 30.0


class FetchArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str
    index: int


@dataclass
class _Stream:
    last_replay_request: float = 0.0
    acked: int = -1


@dataclass
class _Written:
    path: Path
    size: int
    created: float = field(default_factory=time.time)
    owner: str | None = None  # the job's owner: only they (or an admin) may fetch it


def _warm_up_writer() -> None:
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


class RecorderService:
    def __init__(
        self,
        url: BrokerURL,
        instance: str,
        db_path: Path,
        *,
        heartbeat: float = 2.0,
        output_roots: list[Path] | None = None,
        users_file: Path | None = None,
    ) -> None:
        self.url = url
        # default: only below the recorder's own data folder (settings give datadir + home)
        self.guard = WriteGuard(output_roots or [db_path.parent], users_file)
        self.topics = Topics(instance, url.username)
        self.db_path = db_path
        self.heartbeat = heartbeat
        self._stop = asyncio.Event()
        self._stored = asyncio.Condition()
        self.store: BatchStore | None = None
        self.client: AsyncClient | None = None
        self.requester: Requester | None = None
        self.streams: dict[tuple[str, int], _Stream] = {}
        self.jobs_seen: set[int] = set()
        self.files: dict[str, _Written] = {}
        self._write_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.store = BatchStore(self.db_path)
        self.client = AsyncClient(
            self.url,
            client_id=f"recorder-{self.topics.instance}-{uuid.uuid4().hex[:6]}",
            will=Will(self.topics.recorder_status(), encode(self._status("lost"))),
            on_connect=self._publish_status,
        )
        await self.client.connect(timeout=30, retry=True)
        self.requester = Requester(self.client, self.topics)
        handlers: dict[str, Handler] = {
            "finalize": self.op_finalize,
            "fetch": self.op_fetch,
            "status": self.op_status,
        }
        self.responder = Responder(self.client, self.topics, handlers, name="recorder")
        try:
            await self.requester.start()
            await self.client.subscribe(self.topics.all_component_data(), handler=self._on_data)
            await self.client.subscribe(self.topics.recorder_cmds())
            await self.client.subscribe(self.topics.all_node_status())
            await self._publish_status()
            self._spawn(asyncio.to_thread(_warm_up_writer))
            await run_until_stopped(
                self._stop, self._message_loop(), self._ack_loop(), self._heartbeat_loop()
            )
        finally:
            for t in list(self._tasks):
                t.cancel()
            if self.client.is_connected:
                with contextlib.suppress(Exception):
                    await self.client.publish(
                        self.topics.recorder_status(),
                        encode(self._status("offline")),
                        retain=True,
                        timeout=2,
                    )
                await self.client.disconnect()
            self.store.close()

    def _spawn(self, coro: Any) -> None:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    # -- status ----------------------------------------------------------------------------
    def _status(self, state: str) -> RecorderStatus:
        jobs: dict[str, JobProgress] = {}
        if self.store is not None:
            for job in sorted(self.jobs_seen)[-50:]:
                jobs[str(job)] = JobProgress(points=self.store.job_points(job), gaps=self._gaps())
        return RecorderStatus(
            state=state,
            heartbeat=time.time(),
            version=__version__,
            jobs=jobs,
        )

    def _gaps(self) -> int:
        if self.store is None:
            return 0
        n = 0
        for component, epoch in self.streams:
            top = self.store.max_seq(component, epoch)
            n += len(self.store.missing(component, epoch, top))
        return n

    async def _publish_status(self) -> None:
        if self.client is not None:
            await self.client.publish(
                self.topics.recorder_status(),
                encode(self._status("online")),
                retain=True,
                wait=False,
            )

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            with contextlib.suppress(Exception):
                await self._publish_status()

    # -- data ------------------------------------------------------------------------------
    def _on_data(self, msg: Message) -> None:
        """Store a batch the moment it arrives (called from the client's read callback)."""
        if self.store is None:
            return
        try:
            b = decode(DataBatch, msg.payload, msg.topic)
        except DecodeError as e:
            log.warning("%s", e)
            return
        new = self.store.add(b.component, b.epoch, b.seq, b.job, b.task, len(b.uts), msg.payload)
        if b.job is not None:
            self.jobs_seen.add(b.job)
        key = (b.component, b.epoch)
        self.streams.setdefault(key, _Stream())
        if new and b.seq > 0 and self.store.high_water(b.component, b.epoch) < b.seq - 1:
            self._request_missing(b.component, b.epoch, b.seq)
        self._spawn(self._notify())

    async def _notify(self) -> None:
        async with self._stored:
            self._stored.notify_all()

    def _request_missing(self, component: str, epoch: int, upto: int, force: bool = False) -> None:
        if self.store is None:
            return
        st = self.streams.setdefault((component, epoch), _Stream())
        now = time.monotonic()
        if not force and now - st.last_replay_request < 1.0:
            return
        gaps = self.store.missing(component, epoch, upto)
        if not gaps:
            return
        st.last_replay_request = now
        for first, last in gaps[:20]:
            log.info("asking for replay of %s epoch %d seq %d..%d", component, epoch, first, last)
            self._spawn(
                self._node_request(
                    component, "replay", ReplayArgs(epoch=epoch, first=first, last=last)
                )
            )

    async def _node_request(self, component: str, op: str, args: BaseModel) -> None:
        if self.requester is None:
            return
        try:
            await self.requester.request(
                self.topics.component_cmd(component, op), args, timeout=5, who="node"
            )
        except NoResponder as e:
            log.debug("%s", e)

    async def _message_loop(self) -> None:
        if self.client is None:
            return
        async for msg in self.client.messages():
            parsed = self.topics.parse(msg.topic)
            if parsed is None:
                continue
            if parsed.kind == "recorder_cmd" and parsed.op is not None:
                self._spawn(self.responder.handle(msg, parsed.op))
            elif parsed.kind == "node_status" and msg.payload:
                try:
                    st = decode(NodeStatus, msg.payload, msg.topic)
                except DecodeError as e:
                    log.warning("%s", e)
                    continue
                # the node says how far each stream got: anything beyond what we hold is a gap
                for component, seq in st.streams.items():
                    if (
                        seq >= 0
                        and self.store is not None
                        and (self.store.high_water(component, st.epoch) < seq)
                    ):
                        self.streams.setdefault((component, st.epoch), _Stream())
                        self._request_missing(component, st.epoch, seq)

    async def _ack_loop(self) -> None:
        # acknowledge stored batches to the nodes about once a second, per stream
        while True:
            await asyncio.sleep(1.0)
            if self.store is None:
                continue
            for (component, epoch), st in list(self.streams.items()):
                hw = self.store.high_water(component, epoch)
                if hw > st.acked:
                    st.acked = hw
                    self._spawn(self._node_request(component, "ack", AckArgs(epoch=epoch, upto=hw)))

    # -- files -----------------------------------------------------------------------------
    async def _wait_complete(self, expect: list[_Expect], wait: float) -> list[str]:
        """Wait until every expected batch is stored, asking for replays; what is missing."""
        if self.store is None:
            return []
        store = self.store

        def missing() -> list[str]:
            out = []
            for e in expect:
                hw = store.high_water(e.component, e.epoch)
                if hw < e.last_seq:
                    out.append(f"{e.component} epoch {e.epoch} seq {hw + 1}..{e.last_seq}")
            return out

        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            miss = missing()
            if not miss or loop.time() >= deadline:
                return miss
            for e in expect:
                self._request_missing(e.component, e.epoch, e.last_seq)
            async with self._stored:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stored.wait(), min(1.0, deadline - loop.time()))

    async def op_finalize(self, args: Mapping[str, JsonValue]) -> Result:
        from tomato_mqtt.services.recorder.netcdf import RoleInput, write_job_file

        self.guard.require_scheduler("finalize")
        a = FinalizeArgs.model_validate(args)
        store = self.store
        if store is None:
            raise CommandError("recorder store not open")
        jobid = int(a.job["id"])  # type: ignore[arg-type]
        self.jobs_seen.add(jobid)
        t0 = time.monotonic()
        missing = [] if a.snapshot else await self._wait_complete(a.expect, a.wait)
        t_wait = time.monotonic() - t0
        comp_to_role = {str(m.get("name")): role for role, m in a.roles.items()}
        per_role: dict[str, list[bytes]] = {role: [] for role in a.roles}
        for component, _epoch, _seq, _task, raw in store.job_batches(jobid):
            role = comp_to_role.get(component)
            if role is not None:
                per_role[role].append(raw)
        roles = [
            RoleInput(role=role, component_json=json.dumps(a.roles[role]), batches=raws)
            for role, raws in per_role.items()
        ]
        root = {"tomato_version": __version__, "tomato_Job": json.dumps(a.job)}
        note = ""
        async with self._write_lock:
            try:
                path = self.guard.check_path(a.path, a.job)
                path.parent.mkdir(parents=True, exist_ok=True)
                written = await asyncio.to_thread(write_job_file, path, roles, root)
            except (OSError, CommandError) as e:
                # keep the data: the job folder (checked the same way) instead
                log.warning("job %d: %s", jobid, e)
                fallback = self.guard.check_path(Path(a.fallback_dir) / Path(a.path).name, a.job)
                fallback.parent.mkdir(parents=True, exist_ok=True)
                written = await asyncio.to_thread(write_job_file, fallback, roles, root)
                note = f" ({a.path} was not written: {e}; written to the job folder instead)"
        size = written.stat().st_size
        log.info(
            "job %d: %s written to %s (%d bytes; waited %.3f s for data, wrote in %.3f s)",
            jobid,
            "snapshot" if a.snapshot else "file",
            written,
            size,
            t_wait,
            time.monotonic() - t0 - t_wait,
        )
        token = uuid.uuid4().hex
        owner = a.job.get("owner")
        self.files[token] = _Written(written, size, owner=owner if isinstance(owner, str) else None)
        while len(self.files) > 100:
            self.files.pop(next(iter(self.files)))
        stored = store.job_points(jobid)
        points = {role: stored.get(str(a.roles[role].get("name")), 0) for role in a.roles}
        kind = "snapshot" if a.snapshot else "file"
        msg = f"{kind} of job {jobid} written to {written}{note}"
        if missing:
            msg += f"; still missing after {a.wait:g} s: {', '.join(missing)}"
        await self._publish_status()
        return Result(
            msg,
            {
                "path": str(written),
                "size": size,
                "token": token,
                "chunks": max(1, -(-size // CHUNK)),
                "points": points,  # type: ignore[dict-item]
                "missing": missing,  # type: ignore[dict-item]
                "fallback": bool(note),
            },
        )

    async def op_fetch(self, args: Mapping[str, JsonValue]) -> Result:
        a = FetchArgs.model_validate(args)
        w = self.files.get(a.token)
        if w is None:
            raise CommandError("unknown or expired file token: ask for the snapshot again")
        self.guard.require_fetch(w.owner)
        with w.path.open("rb") as f:
            f.seek(a.index * CHUNK)
            chunk = f.read(CHUNK)
        return Result(
            f"chunk {a.index} of {w.path.name}",
            {"index": a.index, "data": base64.b64encode(chunk).decode()},
        )

    async def op_status(self, args: Mapping[str, JsonValue]) -> Result:
        st = self._status("online")
        return Result("recorder is running", st.model_dump(mode="json", by_alias=True))
