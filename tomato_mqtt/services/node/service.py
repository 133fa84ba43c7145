"""The driver node: hosts components on an instrument PC and runs their tasks.

It announces itself (retained status, last will, heartbeat), takes its component list
from the scheduler (``node/<n>/cmd/configure``), registers each component with its
driver (retrying with back-off when the instrument is not there yet), answers component
commands, and publishes measured points in numbered batches. Every batch is written to
the local spool before it is published and stays there until the recorder acknowledges
it, so a broker restart or a network cut loses nothing.

Imports no amqtt, xarray or netCDF4.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import JsonValue

from tomato_mqtt import __version__
from tomato_mqtt.driver import ModelInterface, TaskEnd, TaskSpec, TaskValidationError
from tomato_mqtt.driver.discovery import DriverNotFound, available_drivers, load_driver
from tomato_mqtt.driver.validate import to_jsonable
from tomato_mqtt.services.base import run_until_stopped
from tomato_mqtt.services.node.hosted import HostedComponent, points_to_columns
from tomato_mqtt.services.node.spool import Spool
from tomato_mqtt.transport.client import AsyncClient, BrokerURL, Message, Will
from tomato_mqtt.transport.rpc import CommandError, Handler, Responder, Result
from tomato_mqtt.wire.messages import (
    AckArgs,
    DataBatch,
    DriverInfo,
    LastPoint,
    NodeConfigure,
    NodeStatus,
    ReplayArgs,
    ShutdownArgs,
    encode,
)
from tomato_mqtt.wire.topics import Topics, slug

__all__ = ["NodeConfig", "NodeService"]

log = logging.getLogger(__name__)


class NodeConfig:
    """What a node needs to start: who it is, where the broker is, where to spool."""

    def __init__(
        self,
        name: str,
        url: BrokerURL,
        instance: str,
        spool_dir: Path,
        *,
        heartbeat: float = 2.0,
        batch_interval: float = 0.5,
        batch_max_points: int = 2000,
        spool_max_bytes: int = 512 * 2**20,
        driver_settings: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.name = name
        self.url = url
        self.instance = instance
        self.spool_dir = spool_dir
        self.heartbeat = heartbeat
        self.batch_interval = batch_interval
        self.batch_max_points = batch_max_points
        self.spool_max_bytes = spool_max_bytes
        self.driver_settings = {k: dict(v) for k, v in (driver_settings or {}).items()}


def _load_units() -> None:
    """Load pint's unit registry once, before any driver is registered.

    pint fills its application registry lazily and not thread-safely: drivers registered
    in parallel worker threads would otherwise race on it ("'second' is not defined").
    """
    import pint

    pint.get_application_registry().Quantity(1, "s")  # type: ignore[no-untyped-call]


class NodeService:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.name = config.name
        self.topics = Topics(config.instance, config.url.username)
        self._stop = asyncio.Event()
        self._flush_now = asyncio.Event()
        self.components: dict[str, HostedComponent] = {}
        self._by_slug: dict[str, str] = {}
        self.drivers: dict[str, ModelInterface] = {}
        self.driver_errors: dict[str, str] = {}
        self.driver_settings = dict(config.driver_settings)
        self.spool: Spool | None = None
        self.epoch = 0
        self.client: AsyncClient | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._units_loaded: asyncio.Future[None] | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dropped_warned = 0

    def request_stop(self) -> None:
        self._stop.set()

    # -- lifecycle -----------------------------------------------------------------------
    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.config.spool_dir.mkdir(parents=True, exist_ok=True)
        self.spool = Spool(
            self.config.spool_dir / f"{slug(self.name)}.sqlite",
            max_bytes=self.config.spool_max_bytes,
        )
        self.epoch = self.spool.new_epoch()
        # pint's registry takes ~0.5 s to load: do it while connecting, not at registration
        self._units_loaded = asyncio.ensure_future(asyncio.to_thread(_load_units))
        will = Will(self.topics.node_status(self.name), encode(self._status("lost")))
        self.client = AsyncClient(
            self.config.url,
            client_id=f"node-{slug(self.name)}-{os.getpid()}",
            will=will,
            on_connect=self._on_reconnect,
        )
        node_handlers: dict[str, Handler] = {
            "configure": self._op_configure,
            "rebirth": self._op_rebirth,
            "shutdown": self._op_shutdown,
        }
        self._node_responder = Responder(
            self.client, self.topics, node_handlers, name=f"node {self.name}"
        )
        self._cmp_responder = Responder(self.client, self.topics, {}, name=f"node {self.name}")
        # the node may start before the broker: keep trying until stopped
        while not self._stop.is_set():
            try:
                await self.client.connect(timeout=3600 * 24 * 365, retry=True)
                break
            except Exception as e:
                log.warning("node %s: %s", self.name, e)
        log.info("node %s: connected to %s (epoch %d)", self.name, self.config.url, self.epoch)
        try:
            await self.client.subscribe(self.topics.node_cmds(self.name))
            await self._announce()
            # batches of an earlier epoch that the recorder never acknowledged
            self._spawn(self._replay_pending())
            await run_until_stopped(
                self._stop, self._message_loop(), self._flush_loop(), self._heartbeat_loop()
            )
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        for hc in self.components.values():
            if hc.runner is not None and hc.runner.running:
                hc.runner.stop_task("node shutting down")
        await self._flush_all()
        if self.client is not None and self.client.is_connected:
            with contextlib.suppress(Exception):
                await self.client.publish(
                    self.topics.node_status(self.name),
                    encode(self._status("offline")),
                    retain=True,
                    timeout=2,
                )
            await self.client.disconnect()
        for hc in self.components.values():
            if hc.runner is not None:
                hc.runner.close()
        for t in list(self._tasks):
            t.cancel()
        if self.spool is not None:
            self.spool.close()

    def _spawn(self, coro: Any) -> None:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _on_reconnect(self) -> None:
        # the broker may have lost every retained message (amqtt keeps none across restarts)
        await self._announce()

    # -- presence ------------------------------------------------------------------------
    def _status(self, state: str) -> NodeStatus:
        drivers = {
            name: DriverInfo(version=ver, loaded=name in self.drivers, error=None)
            for name, ver in available_drivers().items()
        }
        for name, err in self.driver_errors.items():
            drivers[name] = DriverInfo(loaded=False, error=err)
        pending = 0
        dropped = 0
        if self.spool is not None:
            pending = sum(last - first + 1 for first, last in self.spool.pending().values())
            dropped = self.spool.dropped_total
        return NodeStatus(
            state=state,
            node=self.name,
            epoch=self.epoch,
            heartbeat=time.time(),
            version=__version__,
            host=socket.gethostname(),
            pid=os.getpid(),
            drivers=drivers,
            components=sorted(self.components),
            streams={n: hc.seq for n, hc in self.components.items()},
            spool_pending=pending,
            spool_dropped=dropped,
        )

    async def _publish_node_status(self) -> None:
        if self.client is None:
            return
        await self.client.publish(
            self.topics.node_status(self.name), encode(self._status("online")), retain=True
        )

    async def _announce(self) -> None:
        await self._publish_node_status()
        for hc in list(self.components.values()):
            await self._publish_meta(hc)
            await self._publish_status(hc)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat)
            if self.client is not None and self.client.is_connected:
                try:
                    await self._publish_node_status()
                except Exception as e:
                    log.debug("heartbeat failed: %s", e)

    async def _publish_meta(self, hc: HostedComponent) -> None:
        if self.client is not None:
            await self.client.publish(
                self.topics.component_meta(hc.name), encode(hc.meta()), retain=True, wait=False
            )

    async def _publish_status(self, hc: HostedComponent) -> None:
        if self.client is not None:
            await self.client.publish(
                self.topics.component_status(hc.name),
                encode(hc.status(self.epoch)),
                retain=True,
                wait=False,
            )

    # -- messages ------------------------------------------------------------------------
    async def _message_loop(self) -> None:
        if self.client is None:
            return
        async for msg in self.client.messages():
            parsed = self.topics.parse(msg.topic)
            if parsed is None or parsed.op is None:
                continue
            if parsed.kind == "node_cmd":
                self._spawn(self._node_responder.handle(msg, parsed.op))
            elif parsed.kind == "component_cmd" and parsed.name is not None:
                name = self._by_slug.get(parsed.name)
                if name is None:
                    continue
                self._spawn(self._component_request(name, msg, parsed.op))

    async def _component_request(self, name: str, msg: Message, op: str) -> None:
        hc = self.components.get(name)
        if hc is None:
            return
        table: dict[str, Handler] = {
            op_name: functools.partial(method, hc) for op_name, method in self._cmp_ops().items()
        }
        await self._cmp_responder.handle(msg, op, table)

    def _cmp_ops(self) -> dict[str, Any]:
        return {
            "task_start": self._op_task_start,
            "task_stop": self._op_task_stop,
            "set_attr": self._op_set_attr,
            "get_attr": self._op_get_attr,
            "measure": self._op_measure,
            "reset": self._op_reset,
            "register": self._op_register,
            "status": self._op_status,
            "replay": self._op_replay,
            "ack": self._op_ack,
        }

    # -- node operations -----------------------------------------------------------------
    async def _op_configure(self, args: Mapping[str, JsonValue]) -> Result:
        cfg = NodeConfigure.model_validate(args)
        log.info("node %s: configured with %d component(s)", self.name, len(cfg.components))
        for drv, settings in cfg.driver_settings.items():
            self.driver_settings[drv] = dict(settings)
        if cfg.batch_interval:
            self.config.batch_interval = cfg.batch_interval
        wanted = {c.name: c for c in cfg.components}
        removed = [n for n in self.components if n not in wanted]
        for n in removed:
            await self._remove_component(n)
        added = []
        for n, c in wanted.items():
            hc = self.components.get(n)
            if hc is not None and hc.config == c:
                continue
            if hc is not None:
                await self._remove_component(n)
            self.components[n] = HostedComponent(config=c, node=self.name)
            self._by_slug[slug(n)] = n
            await self.client.subscribe(self.topics.component_cmds(n))  # type: ignore[union-attr]
            added.append(n)
        await self._publish_node_status()
        for n in added:
            self._spawn(self._register_loop(self.components[n]))
        return Result(
            f"node {self.name}: {len(added)} component(s) added, {len(removed)} removed",
            {"added": list[JsonValue](added), "removed": list[JsonValue](removed)},
        )

    async def _remove_component(self, name: str) -> None:
        hc = self.components.pop(name)
        hc.closed = True
        self._by_slug.pop(slug(name), None)
        if hc.runner is not None:
            hc.runner.stop_task("component removed")
            await self._flush(hc)
            hc.runner.close()
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.unsubscribe(self.topics.component_cmds(name))
            # clear the retained topics of a component that is gone
            for t in (self.topics.component_meta(name), self.topics.component_status(name)):
                await self.client.publish(t, b"", retain=True, wait=False)

    async def _op_rebirth(self, args: Mapping[str, JsonValue]) -> Result:
        await self._announce()
        return Result(f"node {self.name} re-announced {len(self.components)} component(s)")

    async def _op_shutdown(self, args: Mapping[str, JsonValue]) -> Result:
        # destructive: only a well-formed request ({} or {"force": true|false}); the
        # broker's ACL lets only an admin send it (docs/security.md)
        a = ShutdownArgs.model_validate(args)
        running = [n for n, hc in self.components.items() if hc.state == "running"]
        if running and not a.force:
            raise CommandError(f"node {self.name} has running tasks on {', '.join(running)}")
        log.warning("node %s: shutting down on request (force=%s)", self.name, a.force)
        self.request_stop()
        return Result(f"node {self.name} shutting down")

    # -- registration --------------------------------------------------------------------
    def _driver(self, name: str) -> ModelInterface:
        drv = self.drivers.get(name)
        if drv is None:
            try:
                cls = load_driver(name)
            except DriverNotFound as e:
                self.driver_errors[name] = str(e)
                raise
            drv = cls(self.driver_settings.get(name, {}))
            self.drivers[name] = drv
            self.driver_errors.pop(name, None)
        return drv

    async def _register_loop(self, hc: HostedComponent) -> None:
        delay = 1.0
        while not hc.closed and not self._stop.is_set():
            try:
                await self._register(hc)
                return
            except DriverNotFound as e:
                hc.error = str(e)
                await self._publish_node_status()
                await self._publish_meta(hc)
                await self._publish_status(hc)
                return  # nothing to retry until the driver is installed and the node restarted
            except Exception as e:
                hc.retries += 1
                hc.error = (
                    f"registration failed (attempt {hc.retries}, retrying in {delay:g} s): {e}"
                )
                log.warning("node %s: %s: %s", self.name, hc.name, hc.error)
                await self._publish_meta(hc)
                await self._publish_status(hc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            delay = min(delay * 2, 30.0)

    async def _register(self, hc: HostedComponent) -> None:
        if self._units_loaded is not None:
            await asyncio.shield(self._units_loaded)
        drv = self._driver(hc.config.driver)
        loop = asyncio.get_running_loop()
        name = hc.name

        def on_task_end(end: TaskEnd) -> None:
            loop.call_soon_threadsafe(lambda: self._spawn(self._task_ended(name, end)))

        def on_error(msg: str) -> None:
            log.warning("node %s: component %s: %s", self.name, name, msg)

        def on_full() -> None:
            loop.call_soon_threadsafe(self._flush_now.set)

        await asyncio.to_thread(
            hc.register, drv, on_task_end, on_error, on_full, self.config.batch_max_points
        )
        log.info("node %s: registered %s", self.name, name)
        await self._publish_meta(hc)
        await self._publish_status(hc)
        await self._publish_node_status()  # its drivers are loaded now: say so at once

    # -- component operations -----------------------------------------------------------
    def _lock(self, hc: HostedComponent) -> asyncio.Lock:
        return self._locks.setdefault(hc.name, asyncio.Lock())

    def _runner(self, hc: HostedComponent) -> Any:
        if hc.runner is None:
            why = f": {hc.error}" if hc.error else ""
            raise CommandError(f"component {hc.name} is not registered{why}")
        return hc.runner

    async def _op_task_start(self, hc: HostedComponent, args: Mapping[str, JsonValue]) -> Result:
        task = TaskSpec.model_validate(args.get("task"))
        async with self._lock(hc):
            runner = self._runner(hc)
            if runner.running:
                raise CommandError(f"component {hc.name} is busy with job {hc.job} task {hc.task}")
            await self._flush(hc)  # leftovers (idle points) go out under their own tags
            try:
                await asyncio.to_thread(runner.start_task, task)
            except TaskValidationError as e:
                raise CommandError(f"task rejected by {hc.name}: {e}") from None
            except Exception as e:
                raise CommandError(f"task could not start on {hc.name}: {e}") from None
            hc.begin(task)
        await self._publish_status(hc)
        return Result(
            f"task {task.index} of job {task.job} started on {hc.name}",
            {"started_at": hc.started_at, "epoch": self.epoch},
        )

    async def _op_task_stop(self, hc: HostedComponent, args: Mapping[str, JsonValue]) -> Result:
        runner = self._runner(hc)
        job = args.get("job")
        if not runner.running:
            return Result(f"component {hc.name} has no running task", {"running": False})
        if job is not None and hc.job != job:
            raise CommandError(f"component {hc.name} runs job {hc.job}, not job {job}")
        runner.stop_task(str(args.get("reason") or "stopped"))
        return Result(f"task stopped on {hc.name}", {"running": True})

    def _refuse_while_running(
        self, hc: HostedComponent, what: str, args: Mapping[str, Any]
    ) -> None:
        if self._runner(hc).running and not args.get("force"):
            raise CommandError(
                f"cannot {what} {hc.name}: a task of job {hc.job} is running (use --force)"
            )

    async def _op_set_attr(self, hc: HostedComponent, args: Mapping[str, JsonValue]) -> Result:
        attr = str(args.get("attr"))
        if "val" not in args:
            raise CommandError("set_attr needs 'attr' and 'val'")
        self._refuse_while_running(hc, f"set {attr!r} on", args)
        dev = hc.device
        if dev is None:
            why = f": {hc.error}" if hc.error else ""
            raise CommandError(f"component {hc.name} is not registered{why}")
        try:
            val = await asyncio.to_thread(dev.set_attr, attr, args["val"])
        except (ValueError, TypeError, AttributeError, KeyError) as e:
            raise CommandError(f"cannot set {attr!r} on {hc.name}: {e}") from None
        except Exception as e:
            raise CommandError(f"driver error setting {attr!r} on {hc.name}: {e}") from None
        await self._publish_status(hc)
        jv = to_jsonable(val)
        return Result(f"{attr} of {hc.name} set to {jv}", {attr: jv})

    async def _op_get_attr(self, hc: HostedComponent, args: Mapping[str, JsonValue]) -> Result:
        dev = hc.device
        if dev is None:
            why = f": {hc.error}" if hc.error else ""
            raise CommandError(f"component {hc.name} is not registered{why}")
        raw = args.get("attrs") or ([args["attr"]] if "attr" in args else [])
        names = [str(a) for a in raw] if isinstance(raw, list) else [str(raw)]
        if not names:
            names = list(dev.attrs())
        known = dev.attrs()
        out: dict[str, JsonValue] = {}
        for a in names:
            if a not in known:
                raise CommandError(
                    f"unknown attr {a!r} on {hc.name} (known: {', '.join(sorted(known))})"
                )
            try:
                out[a] = to_jsonable(await asyncio.to_thread(dev.get_attr, a))
            except Exception as e:
                raise CommandError(f"driver error reading {a!r} on {hc.name}: {e}") from None
        return Result(", ".join(f"{k}={v}" for k, v in out.items()), out)

    async def _op_measure(self, hc: HostedComponent, args: Mapping[str, JsonValue]) -> Result:
        runner = self._runner(hc)
        try:
            point = await asyncio.to_thread(runner.measure)
        except RuntimeError as e:
            raise CommandError(str(e)) from None
        await self._flush(hc)
        if point is None:
            return Result(f"{hc.name} returned no data")
        return Result(f"measured on {hc.name}", {"uts": point.uts, "values": point.values})

    async def _op_reset(self, hc: HostedComponent, args: Mapping[str, JsonValue]) -> Result:
        runner = self._runner(hc)
        if runner.running:
            if not args.get("force"):
                raise CommandError(
                    f"cannot reset {hc.name}: a task of job {hc.job} is running (use --force)"
                )
            runner.stop_task("reset")
        try:
            await asyncio.to_thread(runner.reset)
        except Exception as e:
            raise CommandError(f"reset of {hc.name} failed: {e}") from None
        hc.error = None
        await self._publish_status(hc)
        return Result(f"component {hc.name} reset")

    async def _op_register(self, hc: HostedComponent, args: Mapping[str, JsonValue]) -> Result:
        if hc.runner is not None and hc.runner.running:
            raise CommandError(f"cannot re-register {hc.name} while a task runs")
        if hc.runner is not None:
            hc.runner.close()
        hc.runner = None
        hc.device = None
        try:
            await self._register(hc)
        except Exception as e:
            hc.error = f"registration failed: {e}"
            await self._publish_status(hc)
            raise CommandError(f"registration of {hc.name} failed: {e}") from None
        return Result(f"component {hc.name} registered")

    async def _op_status(self, hc: HostedComponent, args: Mapping[str, JsonValue]) -> Result:
        st = hc.status(self.epoch)
        return Result(f"{hc.name} is {st.state}", st.model_dump(mode="json", by_alias=True))

    async def _op_replay(self, hc: HostedComponent, args: Mapping[str, JsonValue]) -> Result:
        ra = ReplayArgs.model_validate(args)
        if self.spool is None or self.client is None:
            raise CommandError("spool not open")
        rows = self.spool.get(hc.name, ra.epoch, ra.first, ra.last)
        for _seq, raw in rows:
            await self.client.publish(self.topics.component_data(hc.name), raw, wait=False)
        return Result(f"replayed {len(rows)} batch(es) of {hc.name}", {"replayed": len(rows)})

    async def _op_ack(self, hc: HostedComponent, args: Mapping[str, JsonValue]) -> Result:
        aa = AckArgs.model_validate(args)
        n = self.spool.ack(hc.name, aa.epoch, aa.upto) if self.spool is not None else 0
        return Result(f"{n} batch(es) acknowledged", {"acked": n})

    # -- data path -----------------------------------------------------------------------
    async def _task_ended(self, name: str, end: TaskEnd) -> None:
        hc = self.components.get(name)
        if hc is None:
            return
        await self._flush(hc)
        hc.last_task = {
            "job": end.task.job,
            "task": end.task.index,
            "task_name": end.task.task_name,
            "reason": end.reason,
            "message": end.message,
            "t_start": end.t_start,
            "t_end": end.t_end,
            "npoints": end.npoints,
            "epoch": self.epoch,
            "last_seq": hc.seq,
        }
        if end.reason == "error":
            hc.error = end.message
        await self._publish_status(hc)

    async def _flush_loop(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._flush_now.wait(), self.config.batch_interval)
            self._flush_now.clear()
            await self._flush_all()

    async def _flush_all(self) -> None:
        for hc in list(self.components.values()):
            await self._flush(hc)

    async def _flush(self, hc: HostedComponent) -> None:
        """Publish the component's new points as one batch (spooled first)."""
        if hc.runner is None or self.spool is None:
            return
        points, units = hc.runner.drain()
        if not points:
            return
        uts, cols = points_to_columns(points)
        running_or_just_ended = hc.job is not None
        hc.seq += 1
        batch = DataBatch(
            component=hc.name,
            job=hc.job if running_or_just_ended else None,
            task=hc.task if running_or_just_ended else None,
            epoch=self.epoch,
            seq=hc.seq,
            uts=uts,
            vars=cols,
            units=units,
        )
        raw = encode(batch)
        dropped = self.spool.put(hc.name, self.epoch, hc.seq, raw)
        if dropped:
            log.warning(
                "node %s: spool full (%d MiB): dropped %d unacknowledged batch(es); "
                "is the recorder running?",
                self.name,
                self.config.spool_max_bytes // 2**20,
                dropped,
            )
        if not hc.runner.running:
            # the task is over: later points (idle measurements) are not the job's
            hc.job = None
            hc.task = None
        if self.client is None:
            return
        await self.client.publish(self.topics.component_data(hc.name), raw, wait=False)
        last = LastPoint(
            component=hc.name,
            uts=uts[-1],
            values={k: v[-1] for k, v in cols.items()},
            units=units,
            job=batch.job,
            task=batch.task,
        )
        await self.client.publish(
            self.topics.component_last(hc.name), encode(last), retain=True, wait=False
        )

    async def _replay_pending(self) -> None:
        if self.spool is None or self.client is None:
            return
        for (component, epoch), (first, last) in self.spool.pending().items():
            if epoch == self.epoch:
                continue
            for _seq, raw in self.spool.get(component, epoch, first, last):
                await self.client.publish(self.topics.component_data(component), raw, wait=False)
