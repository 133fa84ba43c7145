"""Services in the test's own event loop, against the ``broker`` fixture: fast and real.

``inproc_stack``: a whole stack (scheduler, recorder, a node) as asyncio tasks;
``running``: one service as a task while the test plays the other parts with a plain
``client`` and a ``Collector`` of messages.

Uvicorn-style in-process testing: the services are the real classes, talking to the real
broker of the ``broker`` fixture over MQTT, but nothing is spawned, so a job runs in
milliseconds of overhead instead of seconds of process start-up. ``InProc.call`` sends
typed commands (args and reply data validated against ``wire/commands.py``);
``InProc.wait_job`` waits on the retained ``job/<id>/status`` messages (no polling).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tomato_mqtt.config.settings import Settings, load_settings, settings_url
from tomato_mqtt.model.jobs import Job
from tomato_mqtt.services.base import Service
from tomato_mqtt.services.node.service import NodeConfig, NodeService
from tomato_mqtt.services.recorder.service import RecorderService
from tomato_mqtt.services.scheduler.service import SchedulerService
from tomato_mqtt.transport.client import AsyncClient, BrokerURL, Message
from tomato_mqtt.transport.rpc import Requester
from tomato_mqtt.wire.commands import command
from tomato_mqtt.wire.messages import ComponentMeta, JobStatus, Reply, decode
from tomato_mqtt.wire.topics import Topics

__all__ = ["Collector", "InProc", "client", "inproc_stack", "running"]

CONFIG = Path(__file__).resolve().parents[1] / "config"


@dataclass
class InProc:
    settings: Settings
    scheduler: SchedulerService
    recorder: RecorderService
    node: NodeService
    client: AsyncClient
    requester: Requester
    topics: Topics
    jobs: dict[int, Job] = field(default_factory=dict)
    metas: dict[str, ComponentMeta] = field(default_factory=dict)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def call(self, op: str, args: dict[str, Any] | None = None, timeout: float = 10) -> Any:
        """A typed scheduler command; raises ReplyError when refused."""
        return await self.requester.call(
            self.topics.scheduler_cmd(op), command("scheduler", op), args or {}, timeout=timeout
        )

    async def raw(self, topic: str, args: dict[str, Any] | None = None) -> Reply:
        return await self.requester.request(topic, args or {}, timeout=10)

    async def short_job(self) -> Job:
        """counter_1_0.1 for 0.3 s on pip-counter-1 (loaded and made ready), ended ``c``."""
        payload = yaml.safe_load((CONFIG / "counter_1_0.1.yml").read_text())
        payload["method"][0].update(time=0.3, delay=0.1)
        work = self.settings.datadir / "work"
        work.mkdir(parents=True, exist_ok=True)
        await self.call("pipeline_load", {"pipeline": "pip-counter-1", "sampleid": "counter_1_0.1"})
        await self.call("pipeline_ready", {"pipeline": "pip-counter-1"})
        job = await self.call("job_submit", {"payload": payload, "submit_dir": str(work)})
        done = await self.wait_job(job.id, {"c", "ce", "cd"}, timeout=30)
        assert done.status == "c", done
        return done

    async def submit_counter(
        self, pipeline: str, duration: float, interval: float, submit_dir: Path
    ) -> Job:
        """The counter's 2.2 payload (one task of ``duration`` s every ``interval`` s)
        submitted on ``pipeline``, loaded with its sample and made ready first."""
        await self.call("pipeline_load", {"pipeline": pipeline, "sample": "counter_1_0.1"})
        await self.call("pipeline_ready", {"pipeline": pipeline})
        payload = yaml.safe_load((CONFIG / "counter_v2.2.yml").read_text())
        payload["method"][0].update(max_duration=duration, sampling_interval=interval)
        job: Job = await self.call(
            "job_submit", {"payload": payload, "submit_dir": str(submit_dir)}
        )
        return job

    async def wait_job(self, jobid: int, statuses: set[str], timeout: float = 30) -> Job:
        async def seen() -> Job:
            async with self.changed:
                await self.changed.wait_for(
                    lambda: jobid in self.jobs and self.jobs[jobid].status in statuses
                )
                return self.jobs[jobid]

        try:
            return await asyncio.wait_for(seen(), timeout)
        except asyncio.TimeoutError:
            last = self.jobs.get(jobid)
            raise AssertionError(
                f"job {jobid} not in {statuses} after {timeout} s: "
                f"{last.status if last else 'never seen'} ({last.reason if last else ''})"
            ) from None

    async def wait_registered(self, n: int, timeout: float = 20) -> None:
        async def ready() -> None:
            async with self.changed:
                await self.changed.wait_for(
                    lambda: sum(1 for m in self.metas.values() if m.registered) >= n
                )

        await asyncio.wait_for(ready(), timeout)

    async def _watch(self) -> None:
        async for msg in self.client.messages():
            parsed = self.topics.parse(msg.topic)
            if parsed is None or not msg.payload:
                continue
            if parsed.kind == "job_status":
                js = decode(JobStatus, msg.payload, msg.topic)  # a summary (schema 2)
                self.jobs[js.jobid] = Job(
                    id=js.jobid,
                    jobname=js.jobname,
                    payload={},
                    status=js.status,
                    submitted_at=js.submitted_at or "",
                    launched_at=js.launched_at,
                    completed_at=js.completed_at,
                    pipeline=js.pipeline,
                    respath=js.respath,
                    snappath=js.snappath,
                    reason=js.reason,
                    owner=js.owner,
                    progress={"points": js.points},
                )
            elif parsed.kind == "component_meta":
                meta = decode(ComponentMeta, msg.payload, msg.topic)
                self.metas[meta.name] = meta
            async with self.changed:
                self.changed.notify_all()


def _settings(root: Path, port: int, instance: str, devices: str, extra: str) -> Settings:
    app = root / "app"
    app.mkdir(parents=True, exist_ok=True)
    shutil.copy(CONFIG / devices, app / "devices.yml")
    # the tests' quick timings, unless ``extra`` gives its own [scheduler]
    sched = "[scheduler]\nheartbeat = 0.5\nnode_grace_period = 3.0\nlost_after = 2.0\n"
    (app / "settings.toml").write_text(
        f'[mqtt]\ninstance = "{instance}"\n{"" if "[scheduler]" in extra else sched}{extra}\n'
    )
    return load_settings(appdir=app, datadir=root / "data", logdir=root / "log", port=port)


@contextlib.asynccontextmanager
async def inproc_stack(
    port: int,
    root: Path,
    instance: str,
    *,
    devices: str = "devices_counter.yml",
    settings: str = "",
    components: int = 1,
) -> AsyncIterator[InProc]:
    """Scheduler, recorder and node ``local`` as tasks; stopped in order afterwards."""
    s = _settings(root, port, instance, devices, settings)
    url = settings_url(s)
    sched = SchedulerService(s)
    rec = RecorderService(
        url, instance, s.recorder_db, heartbeat=s.scheduler.heartbeat, max_reply=s.max_reply_bytes
    )
    node = NodeService(
        NodeConfig(
            s.node.name,
            url,
            instance,
            s.spool_dir,
            heartbeat=s.scheduler.heartbeat,
            batch_interval=0.1,
            driver_settings=s.drivers,
            upstream_env=s.upstream_env,
            max_message=s.max_reply_bytes,  # as cli/serve.py
        )
    )
    services = [sched, rec, node]
    tasks = [asyncio.create_task(svc.run(), name=type(svc).__name__) for svc in services]
    topics = Topics(instance)
    client = AsyncClient(url)
    watcher: asyncio.Task[None] | None = None
    try:
        await client.connect(timeout=10, retry=True)
        st = InProc(s, sched, rec, node, client, Requester(client, topics), topics)
        await client.subscribe(topics.all_job_status())
        await client.subscribe(topics.all_component_meta())
        watcher = asyncio.create_task(st._watch())
        await st.wait_registered(components)
        # the scheduler answers: the metas above may be retained ones of an earlier stack
        # of this instance (a test that restarts it), so they do not say it has subscribed
        # yet, and a first request sent before it has was lost (a CI run on a loaded host)
        await st.requester.request(topics.scheduler_cmd("whoami"), {}, timeout=20, resend=True)
        yield st
    finally:
        # one at a time, node first (as the supervisor does): amqtt leaves a server-side
        # stream unclosed when several clients disconnect while it delivers to them
        for svc, task in reversed(list(zip(services, tasks, strict=True))):
            svc.request_stop()
            await asyncio.wait([task], timeout=15)
        done = {t for t in tasks if t.done()}
        pending = set(tasks) - done
        for t in pending:
            t.cancel()
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await client.disconnect()
        for t in done:
            if not t.cancelled() and t.exception() is not None:
                raise AssertionError(f"{t.get_name()} failed") from t.exception()
        if pending:
            raise AssertionError(
                f"services did not stop in 15 s: {[t.get_name() for t in pending]}"
            )


@contextlib.asynccontextmanager
async def running(svc: Service, ready: Callable[[], bool] | None = None) -> AsyncIterator[Any]:
    """Run ``svc`` as a task until the block ends; waits until it is connected."""
    task = asyncio.ensure_future(svc.run())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while not (svc.client is not None and svc.client.is_connected and (ready is None or ready())):
        if task.done():
            task.result()  # raises what stopped it
        if loop.time() > deadline:
            raise TimeoutError(f"{svc.client_id} did not come up")
        await asyncio.sleep(0.01)
    try:
        yield svc
    finally:
        svc.request_stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 20)


@contextlib.asynccontextmanager
async def client(url: str) -> AsyncIterator[AsyncClient]:
    c = AsyncClient(BrokerURL.parse(url))
    await c.connect(10, retry=True)
    try:
        yield c
    finally:
        await c.disconnect()


class Collector:
    """Messages of one subscription, waited for by predicate."""

    def __init__(self) -> None:
        self.items: list[Message] = []
        self._cond = asyncio.Condition()
        self._loop = asyncio.get_running_loop()

    def __call__(self, msg: Message) -> None:  # paho's thread: hand over only
        self._loop.call_soon_threadsafe(self._add, msg)

    def _add(self, msg: Message) -> None:
        self.items.append(msg)
        self._loop.create_task(self._notify())

    async def _notify(self) -> None:
        async with self._cond:
            self._cond.notify_all()

    async def wait(self, pred: Callable[[Message], bool], timeout: float = 10) -> Message:
        async def find() -> Message:
            async with self._cond:
                while True:
                    for m in self.items:
                        if pred(m):
                            return m
                    await self._cond.wait()

        return await asyncio.wait_for(find(), timeout)


def write_settings(appdir: Path, instance: str, port: int, extra: str = "") -> None:
    """A settings.toml for an in-process scheduler on the test's broker."""
    appdir.mkdir(parents=True, exist_ok=True)
    (appdir / "settings.toml").write_text(
        f'[mqtt]\ninstance = "{instance}"\nport = {port}\n'
        "[broker]\nembedded = false\n"
        "[scheduler]\nheartbeat = 0.2\nlost_after = 1.0\nnode_grace_period = 5.0\n"
        f"{extra}"
    )
