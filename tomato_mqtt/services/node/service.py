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
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

from pydantic import JsonValue

from tomato_mqtt import __version__
from tomato_mqtt.config.roles import CMP_ADMIN_OPS
from tomato_mqtt.config.statefiles import opened
from tomato_mqtt.driver import TaskEnd, discovery
from tomato_mqtt.driver.discovery import DriverNotFound
from tomato_mqtt.driver.tasking import TaskRunner
from tomato_mqtt.errors import BROKEN_DRIVER, StartupError
from tomato_mqtt.services.base import CONSOLE, Service, cancel_and_wait
from tomato_mqtt.services.idle import freeze_heap
from tomato_mqtt.services.node.datapath import DataPath, new_stream
from tomato_mqtt.services.node.drivers import NodeDrivers, off_loop
from tomato_mqtt.services.node.hosted import BrokenDriver, HostedComponent
from tomato_mqtt.services.node.ops import ComponentOps
from tomato_mqtt.services.node.spool import Spool
from tomato_mqtt.services.scratch import private_dir
from tomato_mqtt.services.watchdog import SUPERVISOR_PID_ENV, pid_alive
from tomato_mqtt.transport.client import BrokerURL, Message, MqttError, SubscriptionRefused
from tomato_mqtt.transport.rpc import MAX_REPLY, CommandError, Handler, Responder, Result
from tomato_mqtt.waits import wait_for
from tomato_mqtt.wire.commands import ShutdownArgs
from tomato_mqtt.wire.messages import (
    ComponentStatus,
    NodeConfigure,
    NodeStatus,
    PresenceState,
    Reply,
    decode,
    encode,
)
from tomato_mqtt.wire.names import RESTARTING
from tomato_mqtt.wire.topics import Topics, slug

__all__ = ["NodeConfig", "NodeService"]

log = logging.getLogger(__name__)


class _Unsubscribed(Exception):
    """The node's subscription to a component's commands failed: ``refused`` by the
    broker (its rules), or not made (a timeout, the connection lost)."""

    def __init__(self, msg: str, refused: bool) -> None:
        super().__init__(msg)
        self.refused = refused


#: s after connecting by which the scheduler's first ``configure`` should have come; then
#: the node says why it may not have (it ran on, silent, under another node's login)
CONFIGURE_WAIT = 30.0


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
        batch_max_bytes: int = 512 * 1024,
        spool_max_bytes: int = 512 * 2**20,
        driver_settings: Mapping[str, Mapping[str, Any]] | None = None,
        upstream_env: Path | None = None,
        configure_wait: float = CONFIGURE_WAIT,
        max_message: int = MAX_REPLY,
    ) -> None:
        self.name = name
        #: the largest message it sends (a point that cannot be split, a reply): the
        #: broker's max_packet_bytes less a margin; a larger one would cost the node its
        #: connection, again and again (paho sends it again at each reconnect)
        self.max_message = max_message
        self.configure_wait = configure_wait
        self.url = url
        self.instance = instance
        self.spool_dir = spool_dir
        self.heartbeat = heartbeat
        self.batch_interval = batch_interval
        self.batch_max_points = batch_max_points
        self.batch_max_bytes = batch_max_bytes
        self.spool_max_bytes = spool_max_bytes
        self.driver_settings = {k: dict(v) for k, v in (driver_settings or {}).items()}
        #: the venv of upstream tomato driver packages (None: native drivers only)
        self.upstream_env = upstream_env


def _load_units() -> None:
    """Load pint's unit registry once, before any driver is registered.

    pint fills its application registry lazily and not thread-safely: drivers registered
    in parallel worker threads would otherwise race on it ("'second' is not defined").
    """
    from tomato_mqtt.driver.units import load_registry

    load_registry()  # parsed from the user's cache folder: ~0.02 s instead of ~0.15


#: s a driver may take to connect to a component's instrument before its status says so
SLOW_CONNECT = 10.0
#: s a stopped node's process may take to end before it just exits (_exit_if_stuck)
EXIT_STUCK = 5.0
#: s a stopping node waits for a driver call under way, past its runner's stop_wait, to
#: close the device (then it is left to the process's exit); a `passata set` may take
#: DEVICE_WAIT (3 s)
CLOSE_WAIT = 5.0

#: heartbeats a node may miss before another of its name takes it for gone
GONE_AFTER = 2.5
#: s after a node found it had stood still that a shutdown read past its deadline is not
#: carried out (_op_shutdown)
THAWED_FOR = 10.0
#: s past its deadline (the sender's clock) that a shutdown is not carried out by a node
#: that did not stand still: as much as two PCs' clocks may differ (clock_tolerance)
SHUTDOWN_SLACK = 2.0
#: s a stopping node waits for the ends of the tasks it stopped to be told (a runner's
#: thread tells its end after the stop: on a loaded machine the node was gone first, and
#: its next start read "restarted mid-task … is gone", the task's count unknown)
ENDS_TOLD_WAIT = 2.0


class _Liveness:
    """Whether other nodes are alive, judged by what arrives: two heartbeats in a row of a
    node, each newer than the one before and come about as long after it as it was sent
    after it (at least half as long, at most twice and a second). Never by comparing
    another PC's clock with this one's (an instrument PC without NTP may be minutes off:
    a live node's heartbeats looked old, and two nodes ran under one name). A retained
    status alone proves nothing (a node long gone), nor do heartbeats queued in a stall
    and delivered at once, nor one heartbeat of a gone node delivered late (a review: a
    running node yielded its name to it), nor the one a node frozen as it sent it sends
    when it resumes (it then finds the name taken and stops: one such heartbeat made the
    node that had taken the name yield, and neither was left).

    Where the caller tells that a heartbeat was ``fresh`` as it came (sent within
    GONE_AFTER heartbeats by its node's clock: right when both PCs' clocks agree), two
    fresh ones in a row are enough as well."""

    #: heartbeats in a row, each as far after the last as it was sent, that prove a node alive
    IN_A_ROW = 2

    def __init__(self) -> None:
        #: (epoch, pid, host) -> (its heartbeat, when it arrived: monotonic, how many in a
        #: row, whether it was fresh as it came)
        self._last: dict[tuple[int, int | None, str | None], tuple[float, float, int, bool]] = {}

    def alive(
        self, key: tuple[int, int | None, str | None], heartbeat: float, fresh: bool = False
    ) -> bool:
        now = time.monotonic()
        last = self._last.get(key)
        if last is None:
            self._last[key] = (heartbeat, now, 0, fresh)
            return False
        if heartbeat <= last[0]:
            return False
        sent, came = heartbeat - last[0], now - last[1]
        row = last[2] + 1 if 0.5 * sent <= came <= 2 * sent + 1.0 else 0
        self._last[key] = (heartbeat, now, row, fresh)
        return row >= self.IN_A_ROW or (fresh and last[3])


def _who(st: NodeStatus) -> tuple[int, int | None, str | None]:
    """Which run of a node sent ``st``: epoch, pid and host (two nodes started within one
    second share a time-based epoch)."""
    return (st.epoch, st.pid, st.host)


class NodeService(Service):
    def __init__(self, config: NodeConfig) -> None:
        super().__init__(
            config.url, Topics(config.instance, config.url.username), heartbeat=config.heartbeat
        )
        self.config = config
        self._configured: asyncio.Event | None = None  # set by the first configure
        #: the node's name checked free (at each connect: _claim_name); None: not yet
        self._claimed: bool | None = None
        #: when it last said it is online (monotonic; None: not yet)
        self._beat_at: float | None = None
        #: when it last found itself silent for longer than others wait (_may_speak)
        self._thawed_at: float | None = None
        #: stopped by a ``shutdown`` request (``tomato restart-node``)
        self.restart_requested = False
        #: run by a supervisor, which starts it again at once after such a request (one
        #: run by hand stays stopped): its ``offline`` says ``restarting`` then
        self.supervised = False
        #: the check of its name after a freeze, while it runs (_may_speak)
        self._recheck: asyncio.Future[bool] | None = None
        #: a status it could not say: the check of its name found no broker to ask (it
        #: says everything again once it can: on_heartbeat)
        self._unsaid = False
        #: one configure at a time: each is handled as its message comes, and two that
        #: came together (a node back from a stall after two reloads) ran side by side,
        #: a removal's unsubscribes after the re-add's subscribes of the same filters: the
        #: component registered and took no command (a randomized fault run)
        self._configuring = asyncio.Lock()
        #: other nodes heard on this node's own status topic (_heard_own_status)
        self._rivals = _Liveness()
        #: the listener of this node's own status topic (_claim_name), replaced at a claim
        self._own_status_handler: Callable[[Message], None] | None = None
        #: why it stopped at once: its name is another running node's (_refuse)
        self.refused: str | None = None
        self._warned_unconfigured = False
        self._last_configure: NodeConfigure | None = None  # (said again only if it differs)
        #: a node process's exit code once stopped (cli/serve.py): set, a process that
        #: does not end after the teardown exits with it (_exit_if_stuck)
        self.exit_code_if_stuck: Callable[[], int] | None = None
        self.name = config.name
        self.data = DataPath(self)
        self.ops = ComponentOps(self)
        self.components: dict[str, HostedComponent] = {}
        self._by_slug: dict[str, str] = {}
        self.drivers = NodeDrivers(config.driver_settings, config.upstream_env, self.name)
        self.spool: Spool | None = None
        self.epoch = 0
        self._units_loaded: asyncio.Future[None] | None = None
        #: task ends being told (their last points flushed, then the component's status)
        self._telling: set[asyncio.Task[Any]] = set()
        # not guessable from what the node publishes (its pid is in its status): a
        # broker that lets any login take over a client id (Mosquitto does) cannot be
        # used to cut this node off by someone who reads its status
        self._client_id = f"node-{slug(self.name)}-{os.getpid()}-{os.urandom(8).hex()}"

    @property
    def client_id(self) -> str:
        return self._client_id

    @property
    def status_topic(self) -> str:
        return self.topics.node_status(self.name)

    def presence(self, state: PresenceState) -> NodeStatus:
        if state == "lost":
            # the last will: small, and nothing in it goes stale while the node runs
            return NodeStatus(
                state="lost",
                node=self.name,
                epoch=self.epoch,
                version=__version__,
                host=socket.gethostname(),
                pid=os.getpid(),
            )
        return self._status(state)

    # -- lifecycle -----------------------------------------------------------------------
    async def setup(self) -> None:
        self.config.spool_dir.mkdir(parents=True, exist_ok=True)
        path = self.config.spool_dir / f"{slug(self.name)}.sqlite"
        self.spool = opened(
            "spool",
            path,
            f"node {self.name}",
            lambda: Spool(path, max_bytes=self.config.spool_max_bytes, overflow=private_dir()),
        )
        spool = self.spool
        # (a damaged page of its meta table raised a raw traceback here at every restart:
        # a randomized fault round)
        self.epoch = opened("spool", path, f"node {self.name}", spool.new_epoch)
        # pint's registry takes ~0.5 s to load: do it while connecting, not at registration
        self._units_loaded = asyncio.ensure_future(asyncio.to_thread(_load_units))
        # pint's registry is for good: out of the garbage collector's way (idle.py), at
        # once: a job started right after it would otherwise have its collections walk it
        # (a later freeze was tried, to keep the collection before it, ~10 ms, off the
        # path `tomato start` waits for: the one-point bench could not tell them apart)
        self._units_loaded.add_done_callback(lambda _f: freeze_heap())
        node_handlers: dict[str, Handler] = {
            "configure": self._op_configure,
            "rebirth": self._op_rebirth,
            "shutdown": self._op_shutdown,
        }
        self._node_handlers = node_handlers

    #: the node may start before the broker (or lose it for long): it keeps trying
    #: (saying so once a minute) until stopped; a login or certificate the broker will
    #: never take stops it at once, saying why (it hung without a word, and a SIGTERM
    #: went unheard until the broker came: found by a security audit)
    connect_timeout = 3600 * 24 * 365.0
    #: the node's log file, said with "connected" on the console of a node run by hand
    log_file: Path | None = None

    async def connect(self) -> None:
        await super().connect()
        if not self.stopping:
            log.info(
                "node %s: connected to %s (epoch %d)%s",
                self.name,
                self.config.url,
                self.epoch,
                f"; its log: {self.log_file}" if self.log_file else "",
                extra=CONSOLE,
            )

    async def started(self) -> None:
        if not await self._claim_name():
            return
        # no reply larger than the broker takes: a larger one would cost the node its
        # connection (a too large `measure` is refused in words, not answered empty)
        # a node with a login is on a secured stack: one login's requests are limited
        # (an operator's flood of `measure` must not hold up the scheduler's tasks)
        secured = self.config.url.username is not None
        self._node_responder = Responder(
            self.mqtt,
            self.topics,
            self._node_handlers,
            name=f"node {self.name}",
            kind="node",
            max_reply=self.config.max_message,
            per_login=secured,
        )
        self._cmp_responder = Responder(
            self.mqtt,
            self.topics,
            {},
            name=f"node {self.name}",
            kind="component",
            max_reply=self.config.max_message,
            per_login=secured,
            users_ops=CMP_ADMIN_OPS,  # (what a user may send; the rest are the services')
        )
        if self._configured is None:  # before anything can answer: the first connect
            self._configured = asyncio.Event()
            self.spawn(self._expect_configure(self._configured))
        await self.mqtt.subscribe(self.topics.node_cmds(self.name))
        await self._announce()
        # batches of an earlier epoch that the recorder never acknowledged
        self.spawn(self.data.replay_pending())

    async def _expect_configure(self, configured: asyncio.Event) -> None:
        """Say so when no ``configure`` comes: a node whose status or commands the broker
        drops (another node's login: a secured broker drops what a login may not publish
        or read without a word) logged "connected" and ran on, silent (an outside admin)."""
        wait = self.config.configure_wait
        try:
            await wait_for(configured.wait(), wait)
        except asyncio.TimeoutError:
            login = self.config.url.username
            log.warning(
                "node %s: no configuration from the scheduler %g s after connecting: is "
                "the scheduler running (tomato status), on instance %r?%s",
                self.name,
                wait,
                self.config.instance,
                f" Is the login {login!r} this node's own? A node logs in with a login of the "
                f"role node:{self.name} (on the scheduler's PC: tomato user add {self.name} "
                f"--role node:{self.name}); if {login!r} is another node's, give this node "
                "its own (changing that login's role would cut the other node off). A "
                "secured broker drops without a word what a login may not publish or read"
                if login
                else "",
            )
            self._warned_unconfigured = True

    def loops(self) -> list[Coroutine[Any, Any, Any]]:
        return [self.data.loop()]

    async def drain(self) -> None:
        stopped = []
        for hc in self.components.values():
            if hc.runner is not None and hc.runner.running:
                # who asked, when someone did: the job's reason read only "node shutting
                # down" after a `tomato restart-node --force` (a fault round); a node run
                # by hand stays stopped, and the client library may send it (a review)
                hc.runner.stop_task(
                    "node shutting down (asked to by a shutdown command: tomato restart-node"
                    " --force)"
                    if self.restart_requested
                    else "node shutting down"
                )
                stopped.append(hc)
            elif hc.runner is not None and hc.ending is not None:
                stopped.append(hc)  # ended on its own just now: its end not told yet
        await self._ends_told(stopped)
        await self.data.flush_all()

    async def _ends_told(self, stopped: list[HostedComponent]) -> None:
        """Wait (at most ENDS_TOLD_WAIT) until the ends of the tasks of ``stopped`` are
        told, their last points and counts out, before the node says it goes offline (a
        driver call that does not return holds its task: the bound ends the wait)."""
        deadline = time.monotonic() + ENDS_TOLD_WAIT
        while (left := deadline - time.monotonic()) > 0:
            if self._telling:
                await asyncio.wait(set(self._telling), timeout=left)
            elif all(hc.ending is None or hc.runner is None for hc in stopped):
                return
            else:  # its runner's thread has not told it yet
                await asyncio.sleep(0.02)

    def _task_ended(self, name: str, end: TaskEnd) -> None:
        told = self.spawn(self.data.task_ended(name, end))
        self._telling.add(told)
        told.add_done_callback(self._telling.discard)

    async def teardown(self) -> None:
        try:
            await self._teardown()
        finally:  # (also when the teardown failed: a spool on a disk gone bad)
            if self.exit_code_if_stuck is not None:
                self._exit_if_stuck(self.exit_code_if_stuck)

    async def _teardown(self) -> None:
        if self._recheck is not None and not self._recheck.done():
            # a name check after a freeze, under way as the node stops (a test saw it
            # left pending by a stopping node)
            await cancel_and_wait({self._recheck})
        self._close_runners()
        self.drivers.close_all()  # an upstream driver's host process ends here
        if self._units_loaded is not None:
            with contextlib.suppress(Exception):
                await self._units_loaded
        if self.spool is not None:
            # the points the runners took since the drain go to the spool (replayed at
            # the next start); a task end told after this finds no spool, not a closed one
            with contextlib.suppress(Exception):
                await self.data.flush_all()
            self.spool.close()
            self.spool = None

    def _close_runners(self) -> None:
        """Close every component's runner at once, each on a thread of its own, within
        one bound: a driver call that never returns holds its component's thread, not
        the others' closes nor the node's stop (closed one after another, each hung one
        took 11-16 s: a review)."""
        import threading

        runners = [hc.runner for hc in self.components.values() if hc.runner is not None]
        threads = [
            threading.Thread(target=r.close, args=(CLOSE_WAIT,), name="close", daemon=True)
            for r in runners
        ]
        for t in threads:
            t.start()
        # a runner's stop_wait only where a task or an idle measurement is under way (its
        # worker waited for): a driver's close() that never returns held every stop 16 s,
        # past the 10 s after which the supervisor kills a node, before its spool's last
        # flush (a test)
        busy = [r.stop_wait for r in runners if r.running or r.measuring]
        wait = max(busy, default=0.0) + CLOSE_WAIT + 1.0
        end = time.monotonic() + wait
        for t in threads:
            t.join(max(0.0, end - time.monotonic()))

    def _exit_if_stuck(self, code: Callable[[], int]) -> None:
        """After the teardown (the spool flushed and closed): the process exits within
        EXIT_STUCK however its threads stand. A thread the interpreter waits for at its
        exit that never ends (a driver's own; a driver call in asyncio's pool, before
        drivers.off_loop) held a node asked to restart offline for good, never started
        again (a driver author's tour). Only a node process asks for it (cli/serve.py),
        with the exit code its end would have had."""
        import threading

        def exit_now() -> None:
            time.sleep(EXIT_STUCK)
            log.error(
                "node %s: stopped, and its process has not ended %g s later (a driver "
                "call that does not return: a hung instrument?): exiting now",
                self.name,
                EXIT_STUCK,
            )
            logging.shutdown()
            os._exit(code() or 1)  # (a stop that had to be forced is no clean one)

        threading.Thread(target=exit_now, name="exit-stuck", daemon=True).start()

    async def on_connect(self) -> None:  # a reconnect
        try:
            if not await self._claim_name():
                return
        except MqttError as e:  # the broker, just back, did not answer the check in time
            self._said_later(e)
            return
        # the broker may have lost every retained message (amqtt keeps none across restarts)
        await self._announce()

    def _said_later(self, e: MqttError) -> None:
        """The broker did not answer the check of this node's name: what it would say
        waits for a heartbeat at which it does (on_heartbeat)."""
        if not self._unsaid:
            log.warning("node %s: cannot check its name now (%s): its statuses wait", self.name, e)
        self._unsaid = True

    async def on_heartbeat(self) -> None:
        """Say again what could not be said (_unsaid): a task's end told while the broker
        did not answer the check of the node's name was never published, and its job
        waited for it (an outside run: a broker down 29 s)."""
        connected = self.client is not None and self.client.is_connected
        if self._unsaid and self._claimed and connected and await self._may_speak():
            self._unsaid = False
            await self._announce()

    async def _claim_name(self, after_freeze: bool = False) -> bool:
        """Whether this node may go on under its name (else it stops: :meth:`_refuse`)."""
        other = await self._name_in_use(after_freeze)
        if other is not None:
            self._claimed = False
            self._refuse(other)
            return False
        self._claimed = True
        self._rivals = _Liveness()
        silent_since = self._beat_at
        if self._beat_at is not None:  # checked just now: not silent (_may_speak)
            self._beat_at = time.monotonic()
        loop = asyncio.get_running_loop()

        def on_status(m: Message) -> None:  # paho's thread: hand over only
            with contextlib.suppress(Exception):
                st = decode(NodeStatus, m.payload, m.topic)
                loop.call_soon_threadsafe(self._heard_own_status, st)

        # heard for as long as it runs (one listener: a claim made again replaces it)
        if self._own_status_handler is not None:
            with contextlib.suppress(Exception):
                await self.mqtt.unsubscribe(self.status_topic, handler=self._own_status_handler)
        self._own_status_handler = on_status
        try:
            await self.mqtt.subscribe(self.status_topic, handler=on_status)
        except MqttError:  # the broker did not answer: no other node would be heard, so
            self._beat_at = silent_since  # still silent: checked again before it speaks
            raise
        return True

    def _me(self) -> tuple[int, int | None, str | None]:
        return (self.epoch, os.getpid(), socket.gethostname())

    def _fresh(self, st: NodeStatus) -> bool:
        """Whether ``st`` was sent (by its node's clock) within GONE_AFTER heartbeats:
        right when both PCs' clocks agree (what _Liveness adds does not need them to)."""
        return time.time() - st.heartbeat <= GONE_AFTER * self.heartbeat

    def _heard_own_status(self, st: NodeStatus) -> None:
        """Two nodes of one name that checked it at the same moment (both connecting when
        the broker came up, a boot after a power cut) each found it free: both would run
        every task. Each hears the other's heartbeats on the topic they share; the node
        started later (by epoch, then host and pid: both judge alike) stops, without a
        word on the shared topics and with its spooled batches forgotten (the other
        measured the same tasks), and the other says its status again."""
        key = _who(st)
        if st.state != "online" or key == self._me() or self._claimed is not True:
            return
        # twice in a row, each sent within GONE_AFTER heartbeats by its clock as it came
        # (once may be a retained status of a node long gone, or the heartbeat a node
        # frozen as it built it sends when it resumes, after a retained one of before
        # the freeze: it then finds its name taken and yields, and this node must not);
        # or, whatever the clocks, heartbeats about as far apart as they were sent
        # (_Liveness)
        if not self._rivals.alive(key, st.heartbeat, self._fresh(st)):
            return
        other = f"pid {st.pid} on {st.host}, epoch {st.epoch}"
        mine = (self.epoch, socket.gethostname(), os.getpid())
        # a node back from a freeze, silent for longer than others wait, is the one that
        # yields: the other took the name while it was gone (and runs its jobs now)
        if not self._silent() and mine < (st.epoch, st.host or "", st.pid or 0):
            log.warning(
                "node %s: another node started under this name at the same time (%s): "
                "it was started later and stops",
                self.name,
                other,
            )
            self.spawn(self._announce())
            return
        self._claimed = False  # from here on nothing more on the shared topics
        spool = self.spool
        for hc in self.components.values():
            if spool is not None and hc.stream:
                spool.ack(hc.name, hc.stream, 2**62)
        self._refuse(f"{other}, started under this name at the same time as this one")

    async def run(self) -> None:
        await super().run()
        if self.refused is not None:
            raise StartupError(self.refused)

    async def publish_presence(self, state: PresenceState, timeout: float | None = None) -> None:
        if not self._claimed:  # a node refused its name says nothing on the other's topic
            return
        if state == "online" and not await self._may_speak():
            return
        said_at = time.monotonic()
        await super().publish_presence(state, timeout)
        if state == "online":
            self._said(said_at)
        elif state == "offline":
            await self._components_gone()

    async def _components_gone(self) -> None:
        """Its components said lost as it stops, as the scheduler says them: under
        `tomato stop` the scheduler goes first, and they stayed "idle" under an offline
        node for every later subscriber (an integrator's run)."""
        if self.client is None or not await self._may_speak():
            return
        why = RESTARTING if self.restarting else "it was stopped"  # (as the scheduler says)
        for hc in self.components.values():
            gone = ComponentStatus(
                name=hc.name,
                node=self.name,
                state="lost",
                time=time.time(),
                error=f"node {self.name} is offline ({why})",
                epoch=self.epoch,
            )
            with contextlib.suppress(Exception):
                await self.client.publish(
                    self.topics.component_status(hc.name), encode(gone), retain=True, wait=False
                )

    async def _may_speak(self) -> bool:
        """Whether this node may say something on its shared topics (its status, its
        components' meta and status): not once it gave its name up; back from a freeze
        (SIGSTOP, a suspended VM) longer than others wait for it, only after it checked
        that no node took the name meanwhile. Its first word after the freeze (a
        heartbeat, a configure's status) made the live node, started later, yield to
        it (a review). One check, however many ask at once."""
        if self._claimed is False:
            return False
        if self._silent():
            self._thawed_at = time.monotonic()  # (a late shutdown is not carried out)
            if self._recheck is None or self._recheck.done():
                self._recheck = asyncio.ensure_future(self._claim_name(after_freeze=True))
            try:
                if not await asyncio.shield(self._recheck):  # (it marks the node not silent)
                    return False
            except MqttError as e:
                # no broker to ask (down, or back and not answering yet): not said now, said
                # once it can be (it raised into the caller: a task's end was never told)
                self._said_later(e)
                return False
        return True

    def _stood_still(self) -> bool:
        """Whether this node stood still (silent longer than others take it for gone) up
        to now or within the last THAWED_FOR s."""
        thawed = self._thawed_at is not None and time.monotonic() - self._thawed_at < THAWED_FOR
        return thawed or self._silent()

    def _silent(self) -> bool:
        """Whether this node said nothing for longer than others take it for gone."""
        return self._beat_at is not None and time.monotonic() - self._beat_at > GONE_AFTER * (
            self.heartbeat
        )

    def _refuse(self, other: str) -> None:
        msg = (
            f"a node named {self.name!r} is running already ({other}) on instance"
            f" {self.config.instance!r}: two would both run every task of its components"
            " and mix their points. Stop that one first, or give this one another name"
            " (tomato node --name)"
        )
        log.error("node %s: %s", self.name, msg)
        self.refused = msg
        self.request_stop()

    async def _name_in_use(self, after_freeze: bool = False) -> str | None:
        """Who holds this node's name, if another node does: its retained status says it
        is online, and it is not provably gone (a dead pid on this host, a heartbeat long
        past) and it sends a heartbeat within GONE_AFTER (+ 0.25) of its intervals. Two
        nodes of one name each took every task: a job's points doubled, and the scheduler
        took the other's status for a restart, ending the running job ce (found by fault
        injection).

        Costs one round trip when the name is free: a marker published to this node's own
        topic comes back after any retained status (the broker's order on a connection).
        """
        loop = asyncio.get_running_loop()
        statuses: asyncio.Queue[NodeStatus] = asyncio.Queue()
        marked = asyncio.Event()
        # a reply as the contract has it (reply topics carry Reply messages: a bare marker
        # broke an integrator's schema check of every message)
        marker = encode(Reply(id=os.urandom(8).hex(), success=True, msg="is this name free?"))
        probe = self.topics.reply(f"{self.client_id}-probe")

        def on_status(m: Message) -> None:
            with contextlib.suppress(Exception):
                st = decode(NodeStatus, m.payload, m.topic)
                loop.call_soon_threadsafe(statuses.put_nowait, st)

        def on_marker(m: Message) -> None:
            if m.payload == marker:
                loop.call_soon_threadsafe(marked.set)

        mine = self.topics.node_status(self.name)
        try:
            await self.mqtt.subscribe(mine, handler=on_status)
            await self.mqtt.subscribe(probe, handler=on_marker)
            await self.mqtt.publish(probe, marker)
            with contextlib.suppress(asyncio.TimeoutError):
                await wait_for(marked.wait(), 2.0)
            last: NodeStatus | None = None
            while not statuses.empty():
                last = statuses.get_nowait()
            me = self._me()
            if after_freeze:
                # the retained status may be this node's own, sent late: what it had
                # queued before the freeze went out when it resumed. Listen instead
                return await self._another_heard(statuses, loop, last)
            # its own status (a reconnect) by epoch, pid and host: two nodes started in
            # one second have one epoch (it is time-based), and the second took the
            # first's status for its own (seen in a parallel test run)
            if last is None or last.state != "online" or _who(last) == me:
                return None
            if last.host == socket.gethostname() and last.pid and not pid_alive(last.pid):
                return None
            # alive if a newer heartbeat of it comes (its clock is not compared with this
            # one's: a heartbeat "a minute old" was of a live node on a PC whose clock
            # ran a minute behind, and a second node took its name)
            # (what comes after the marker was sent after this node subscribed: refusing
            # to start on a gone node's late heartbeat costs a second try; starting next
            # to a live node doubles its points)
            # as long as the holder may stay silent before it takes itself for gone
            # (_silent: GONE_AFTER heartbeats), and a little more: with 1.5 intervals a
            # holder stalled for 3-5 s, not yet back from a freeze by its own rule, lost
            # its name to a node started then: its running job ended ce "restarted
            # mid-task", and where the newcomer's clock was behind (its epoch smaller)
            # the holder yielded to it (found by a fault run)
            deadline = loop.time() + (GONE_AFTER + 0.25) * self.heartbeat
            while (left := deadline - loop.time()) > 0:
                try:
                    st = await wait_for(statuses.get(), left)
                except asyncio.TimeoutError:
                    break
                newer = st.state == "online" and st.heartbeat > last.heartbeat
                if newer and _who(st) == _who(last):
                    return f"pid {st.pid} on {st.host}, epoch {st.epoch}"
            return None
        except Exception as e:  # the check must not keep a node from starting
            log.warning("node %s: could not check whether its name is free: %s", self.name, e)
            return None
        finally:
            for f, h in ((mine, on_status), (probe, on_marker)):
                with contextlib.suppress(Exception):
                    await self.mqtt.unsubscribe(f, handler=h)

    async def _another_heard(
        self,
        statuses: asyncio.Queue[NodeStatus],
        loop: asyncio.AbstractEventLoop,
        first: NodeStatus | None,
    ) -> str | None:
        """Another node of this name heard alive on its topic within GONE_AFTER heartbeats,
        or None: a status it sent within that time by its clock (what a frozen node had
        queued goes out late and old); or, whatever the clocks, any status of another
        node that comes after this node's marker (_name_in_use): it was sent after this
        node was back. Yielding to a node that died just then costs a restart; not
        yielding made the live node, which took the name and runs its jobs, yield."""
        pending = [(first, False)] if first is not None else []
        deadline = loop.time() + GONE_AFTER * self.heartbeat
        while True:
            while pending:
                st, live = pending.pop()
                if st.state != "online" or _who(st) == self._me():
                    continue
                if live or self._fresh(st):
                    return f"pid {st.pid} on {st.host}, epoch {st.epoch}"
            left = deadline - loop.time()
            if left <= 0:
                return None
            try:
                pending.append((await wait_for(statuses.get(), left), True))
            except asyncio.TimeoutError:
                return None

    # -- presence ------------------------------------------------------------------------
    def _status(self, state: str) -> NodeStatus:
        drivers = self.drivers.infos({hc.config.driver for hc in self.components.values()})
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
            stream_ids={n: hc.stream for n, hc in self.components.items() if hc.stream},
            spool_pending=pending,
            spool_dropped=dropped,
            spool_error=self.data.spool_error,
            restarting=state == "offline" and self.restarting,
        )

    @property
    def restarting(self) -> bool:
        """Stopped to be started again at once: ``tomato restart-node`` of a node its
        supervisor runs (a `passata get` sent meanwhile waited only the short wait for a
        stopped node, and said it was stopped, of a node back a second later: a test)."""
        return self.restart_requested and self.supervised

    async def _publish_node_status(self) -> None:
        if self.client is None or not await self._may_speak():  # the name is another's
            return
        said_at = time.monotonic()
        await self.client.publish(
            self.topics.node_status(self.name), encode(self._status("online")), retain=True
        )
        self._said(said_at)

    def _said(self, at: float) -> None:
        """The node said it is online at ``at`` (monotonic): when it checked and built the
        status, not when the broker's acknowledgement came. A node frozen while it waited
        for one (a CI run) took the end of the wait for its last word, skipped the check
        of its name, and took the name back from the node that had taken it meanwhile."""
        if self._beat_at is None or at > self._beat_at:
            self._beat_at = at

    async def _announce(self) -> None:
        await self._publish_node_status()
        for hc in list(self.components.values()):
            if not hc.subscribed:  # its registration says it (refused: see _subscribe_commands)
                continue
            await self._publish_meta(hc)
            await self.publish_status(hc)
            if hc.last_point is not None and self.client is not None:
                await self.client.publish(
                    self.topics.component_last(hc.name), hc.last_point, retain=True, wait=False
                )

    async def _publish_meta(self, hc: HostedComponent) -> None:
        if self.client is not None and await self._may_speak():
            await self.client.publish(
                self.topics.component_meta(hc.name), encode(hc.meta()), retain=True, wait=False
            )

    async def publish_status(self, hc: HostedComponent) -> None:
        if self.client is not None and await self._may_speak():
            await self.client.publish(
                self.topics.component_status(hc.name),
                encode(hc.status(self.epoch)),
                retain=True,
                wait=False,
            )

    # -- messages ------------------------------------------------------------------------
    async def on_message(self, msg: Message) -> None:
        parsed = self.topics.parse(msg.topic)
        if parsed is None or parsed.op is None:
            return
        if parsed.kind == "node_cmd":
            self.spawn(self._node_responder.handle(msg, parsed.op))
        elif parsed.kind in ("component_cmd", "component_user_cmd") and parsed.name is not None:
            name = self._by_slug.get(parsed.name)
            if name is not None:
                self.spawn(self._component_request(name, msg, parsed.op))

    async def _component_request(self, name: str, msg: Message, op: str) -> None:
        hc = self.components.get(name)
        if hc is None:
            return
        table: dict[str, Handler] = {
            op_name: functools.partial(method, hc) for op_name, method in self.ops.table().items()
        }
        await self._cmp_responder.handle(
            msg, op, table, where=f"component {name} (node {self.name})"
        )

    # -- node operations -----------------------------------------------------------------
    async def _op_configure(self, args: Mapping[str, JsonValue]) -> Result:
        async with self._configuring:
            return await self._configure(args)

    async def _configure(self, args: Mapping[str, JsonValue]) -> Result:
        cfg = NodeConfigure.model_validate(args)
        if cfg != self._last_configure:  # (said twice at every start: an admin's tour)
            log.info(
                "node %s: configured with %d component(s)%s",
                self.name,
                len(cfg.components),
                " (after all)" if self._warned_unconfigured else "",
                extra=CONSOLE,
            )
        self._last_configure = cfg
        if self._configured is not None:
            self._configured.set()
        discovery.refresh()  # a reload finds driver packages installed since
        changed_drivers = self.drivers.update_settings(cfg.driver_settings)
        # an upgraded driver's host process runs the old code: made anew once none of its
        # components is in a task (else the idle ones came back on the old process, at
        # every reload: a review)
        changed_drivers |= {
            d
            for d in self.drivers.upgraded()
            if not any(hc.busy for hc in self.components.values() if hc.config.driver == d)
        }
        if cfg.batch_interval:
            self.config.batch_interval = cfg.batch_interval
        wanted = {c.name: c for c in cfg.components}
        removed = [n for n in self.components if n not in wanted]
        for n in removed:
            await self._remove_component(n)
        added = []
        # a driver installed since (`tomato reload` finds it), an upstream driver whose
        # host process died, or new settings for a driver: register its idle components
        # again, with a fresh driver instance
        again = [
            n
            for n, hc in self.components.items()
            if n in wanted
            and (
                hc.driver_missing
                or hc.host_died
                or (hc.config.driver in changed_drivers and not hc.busy)
            )
        ]
        # the last point measured of one registered again stays its last (a reload of
        # driver settings cleared every component's retained `last`: a dashboard showed
        # no value until the next job)
        kept: dict[str, bytes] = {}
        for n in again:
            same = self.components[n].config == wanted[n]  # (not one of a changed device)
            drv = self.components[n].config.driver
            if (point := await self._remove_component(n, coming_back=same)) is not None and same:
                kept[n] = point
            if all(hc.config.driver != drv for hc in self.components.values()):
                self.drivers.drop(drv)
        for n, c in wanted.items():
            hc = self.components.get(n)
            if hc is not None and hc.config == c:
                continue
            if hc is not None:
                await self._remove_component(n)
            hc = self.components[n] = HostedComponent(config=c, node=self.name)
            hc.last_point = kept.get(n)
            self._by_slug[slug(n)] = n
            # subscribed before the reply (one configure at a time: a removal's unsubscribes
            # never come after a re-add's subscribes); refused, its registration tries
            # again and says why (the configure failed half-way: _subscribe_commands)
            with contextlib.suppress(_Unsubscribed):
                await self._subscribe_commands(hc)
            added.append(n)
        # each one's meta (not registered yet) before the status that lists it: a
        # scheduler takes a listed component's retained meta for this run's (its last
        # run's said `registered`: `tomato start` said ready before it was)
        for n in added:
            hc = self.components[n]
            if hc.subscribed:
                hc.told = True
                await self._publish_meta(hc)
        await self._publish_node_status()
        for n in added:
            self.spawn(self._register_loop(self.components[n]))
        # those made again said as such (a driver's new settings read "3 component(s)
        # added, 0 removed" of the three it had: an integrator's run)
        new = [n for n in added if n not in again]
        renewed = f", {len(again)} registered again (new driver settings or driver)"
        return Result(
            f"node {self.name}: {len(new)} component(s) added, {len(removed)} removed"
            + (renewed if again else ""),
            {
                "added": list[JsonValue](added),
                "removed": list[JsonValue](removed),
                "renewed": list[JsonValue](again),
            },
        )

    async def _remove_component(self, name: str, *, coming_back: bool = False) -> bytes | None:
        """Unsubscribe ``name`` and clear its retained topics; ``coming_back``: it is
        registered again at once, and its retained ``last`` (returned) stays."""
        hc = self.components.pop(name)
        hc.closed = True
        self._by_slug.pop(slug(name), None)
        if hc.runner is not None:
            hc.runner.stop_task("component removed")
            await self.data.flush(hc)
            await self.close_runner(hc.runner)
        # one never subscribed to (refused, or a registration still under way, which ends
        # its own) published nothing: nothing to end or clear (a clear the rules forbid
        # closed the node's connection on Aedes, sent again at each reconnect: a review)
        if self.client is not None and hc.subscribed:
            with contextlib.suppress(Exception):
                for f in (self.topics.component_cmds(name), self.topics.component_user_cmds(name)):
                    await self.client.unsubscribe(f)
            # clear the retained topics of a component that is gone
            for t in (
                self.topics.component_meta(name),
                self.topics.component_status(name),
                *(() if coming_back else (self.topics.component_last(name),)),
            ):
                await self.client.publish(t, b"", retain=True, wait=False)
        return hc.last_point

    async def _op_rebirth(self, args: Mapping[str, JsonValue]) -> Result:
        await self._announce()
        return Result(f"node {self.name} re-announced {len(self.components)} component(s)")

    async def _op_shutdown(self, args: Mapping[str, JsonValue]) -> Result:
        # destructive: only a well-formed request ({} or {"force": true|false}); the
        # broker's ACL lets only an admin send it (docs/security.md)
        a = ShutdownArgs.model_validate(args)
        late = None if a.deadline is None else time.time() - a.deadline
        # read after its sender was told nothing answered: a frozen node restarted when it
        # woke up, ending a running job ce (fault injection: `tomato restart-node` said it
        # failed, twice, and both were carried out 8 s later); so did a node held up 13 s
        # by two operators' floods of requests (a hostile tour). Past the deadline by
        # more than the clocks of two PCs may differ, or past it at all after a freeze
        if late is not None and (late > SHUTDOWN_SLACK or (late > 0 and self._stood_still())):
            why = (
                f"node {self.name} read this shutdown {late:.0f} s after its sender stopped "
                "waiting for the answer (it stood still or was held up, or its clock runs "
                "ahead of the sender's): not carried out (ask again)"
            )
            log.warning("node %s: %s", self.name, why)
            raise CommandError(why, code="conflict")
        running = [n for n, hc in self.components.items() if hc.state == "running"]
        if running and not a.force:
            raise CommandError(
                f"node {self.name} has running tasks on {', '.join(running)}; --force stops "
                "them (their jobs end ce)",
                code="conflict",
            )
        log.warning("node %s: shutting down on request (force=%s)", self.name, a.force)
        self.restart_requested = True  # (its exit code says so: cli/serve.py)
        self.request_stop()
        # which of the two it is (the CLI said both: a newcomer's tour)
        if os.environ.get(SUPERVISOR_PID_ENV):  # (as cli/serve.py tells a node by hand)
            return Result(
                f"node {self.name} shutting down: its supervisor (tomato start) starts it "
                "again, with its drivers loaded anew"
            )
        return Result(
            f"node {self.name} shutting down: it runs on its own (tomato node), so it "
            f"stays stopped: start it again on its PC (tomato node --name {self.name})"
        )

    # -- registration --------------------------------------------------------------------
    async def _register_loop(self, hc: HostedComponent) -> None:
        try:
            await self._register_until_done(hc)
        finally:
            hc.settled.set()

    async def _register_until_done(self, hc: HostedComponent) -> None:
        delay = 1.0
        told = hc.told
        while not hc.closed and not self.stopping:
            try:
                await self._subscribe_commands(hc)
                if hc.closed:  # removed meanwhile
                    return
                if not told:  # heard of at once: a registration that takes long (a driver
                    # connecting) is not taken for rules that drop what the node says of it
                    told = True  # (the scheduler's unheard_of)
                    await self._publish_meta(hc)
                await self.register(hc)
                return
            except _Unsubscribed as e:
                # nothing published of it: the rules that refused this refuse that too
                # (Aedes closes the connection of such a publish); the scheduler says it
                # in the component's status, from the node's own (unheard_of)
                hc.retries += 1
                hc.error = (
                    f"the broker refused node {self.name}'s subscription to this component's"
                    f" commands (attempt {hc.retries}, retrying in {delay:g} s): {e}; its"
                    " rules give the node the components of the devices file it read (an"
                    " external broker: write its rules again with tomato broker-config)"
                    if e.refused
                    else f"subscribing to this component's commands failed (attempt"
                    f" {hc.retries}, retrying in {delay:g} s): {e}"
                )
                log.warning("node %s: %s: %s", self.name, hc.name, hc.error)
                hc.settled.set()  # a task_start waiting for it hears why (retried later)
            except DriverNotFound as e:
                hc.error = str(e)
                hc.driver_missing = True
                await self._publish_node_status()
                await self._publish_meta(hc)
                await self.publish_status(hc)
                return  # nothing to retry until the driver is installed and `tomato reload`
            except BrokenDriver as e:
                await self._unregister(hc)
                hc.error = (
                    f"{BROKEN_DRIVER}{e} (fix it, then restart node {self.name}: "
                    f"`tomato restart-node {self.name}`; a node imports a driver's code once)"
                )
                log.error("node %s: %s: %s", self.name, hc.name, hc.error)
                await self._publish_meta(hc)
                await self.publish_status(hc)
                return  # retrying cannot help
            except Exception as e:
                await self._unregister(hc)
                hc.retries += 1
                hc.error = (
                    f"registration failed (attempt {hc.retries}, retrying in {delay:g} s):"
                    f" {type(e).__name__}: {e}"
                )
                log.warning("node %s: %s: %s", self.name, hc.name, hc.error)
                await self._publish_meta(hc)
                await self.publish_status(hc)
                hc.settled.set()  # a task_start waiting for it hears why (retried later)
            with contextlib.suppress(asyncio.TimeoutError):
                await wait_for(self._stop.wait(), delay)
            delay = min(delay * 2, 30.0)

    async def _subscribe_commands(self, hc: HostedComponent) -> None:
        """The services' commands to ``hc`` and the users' (with their login), in one
        round trip. They were subscribed to by ``configure``, whose failure (the broker's
        rules not yet holding a component just added: an admin's tour) left the component
        hosted, never registered and never tried again, with nothing said."""
        if hc.subscribed or self.client is None:
            return
        client = self.client
        cmds = (self.topics.component_cmds(hc.name), self.topics.component_user_cmds(hc.name))
        done = await asyncio.gather(*(client.subscribe(f) for f in cmds), return_exceptions=True)
        failed = [e for e in done if isinstance(e, BaseException)]
        if hc.closed or failed:  # removed meanwhile (its removal left these alone), or half
            for f, e in zip(cmds, done, strict=True):  # refused: each one made is ended
                if not isinstance(e, BaseException):
                    with contextlib.suppress(Exception):
                        await client.unsubscribe(f)
        if failed:
            if not isinstance(failed[0], MqttError):
                raise failed[0]
            refused = [e for e in failed if isinstance(e, SubscriptionRefused)]
            raise _Unsubscribed(str((refused or failed)[0]), refused=bool(refused))
        hc.subscribed = not hc.closed

    async def _unregister(self, hc: HostedComponent) -> None:
        """A registration that failed half-way leaves no device behind (its meta would
        call the broken driver again)."""
        if hc.runner is not None:
            await self.close_runner(hc.runner)
        hc.device, hc.runner = None, None

    @staticmethod
    async def close_runner(runner: TaskRunner[Any]) -> None:
        """Close a component's runner off the event loop, bounded: a driver call that
        never returns left the node's loop waiting for it (no heartbeat, deaf to
        SIGTERM) at a reload that removed the component, or a re-register (a review)."""
        await off_loop(runner.close, CLOSE_WAIT)

    async def register(self, hc: HostedComponent) -> None:
        if hc.connecting:  # (a `passata register` meanwhile started a second constructor
            # of the instrument, for good: a fault-injection run)
            raise RuntimeError(f"{hc.name} is registering already: {hc.error or 'connecting'}")
        hc.connecting = True
        try:
            await self._register(hc)
        finally:
            hc.connecting = False

    async def _register(self, hc: HostedComponent) -> None:
        if self._units_loaded is not None:
            await asyncio.shield(self._units_loaded)
        drv = await self.drivers.get(hc.config.driver)
        hc.driver_missing = False
        loop = asyncio.get_running_loop()
        name = hc.name

        def on_task_end(end: TaskEnd) -> None:
            loop.call_soon_threadsafe(self._task_ended, name, end)

        def on_error(msg: str) -> None:
            log.warning("node %s: component %s: %s", self.name, name, msg)

        def on_full() -> None:
            loop.call_soon_threadsafe(self.data.flush_now.set)

        work = asyncio.ensure_future(
            off_loop(hc.register, drv, on_task_end, on_error, on_full, self.config.batch_max_points)
        )
        done, _ = await asyncio.wait({work}, timeout=SLOW_CONNECT)
        slow: str | None = None
        if not done:  # a driver that never returns from connecting was never said (a
            # driver author's tour: `unregistered`, no error, no log line, for minutes)
            slow = (
                f"still connecting: the driver has not returned from connecting to "
                f"{hc.config.address!r} for {SLOW_CONNECT:g} s (an instrument that does not "
                "answer? the component registers once it does)"
            )
            hc.error = slow
            log.warning("node %s: %s: %s", self.name, name, slow)
            await self.publish_status(hc)
        try:
            await work
        finally:
            if slow is not None and hc.error == slow:
                hc.error = None
        # a new stream for every registration: a component reloaded, re-registered or
        # renamed back never reuses a (component, stream, seq) the recorder holds
        hc.stream = new_stream(self.epoch)
        hc.seq = -1
        log.info("node %s: registered %s", self.name, name)
        # its status (no error now) before the meta that says it registered: between the
        # two, `tomato status components` showed it registered beside the "still
        # connecting" of the status before (a CI run)
        await self.publish_status(hc)
        await self._publish_meta(hc)
        await self._publish_node_status()  # its drivers are loaded now: say so at once
