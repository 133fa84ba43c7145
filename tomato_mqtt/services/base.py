"""What every service shares: one lifecycle, presence, spawned tasks, signals, logging.

A :class:`Service` follows uvicorn's split: the constructor only stores configuration;
:meth:`Service.run` does the work, in this order:

1. :meth:`~Service.setup` opens local state (stores, spools) before the broker is reached;
2. the client connects with a last will (the small ``lost`` presence message);
3. :meth:`~Service.started` subscribes and announces retained state;
4. the message loop, the heartbeat and the subclass's :meth:`~Service.loops` run until
   :meth:`~Service.request_stop` is called or one of them fails;
5. shutdown: ``stopping`` is published, :meth:`~Service.drain` finishes in-flight work,
   every spawned task is cancelled *and awaited*, ``offline`` is published, the client
   disconnects and :meth:`~Service.teardown` closes local state.

:meth:`Service.run_sync` wraps it for a foreground process: the first SIGINT/SIGTERM
drains gracefully, a second one exits at once.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tomato_mqtt.errors import StartupError
from tomato_mqtt.services.idle import freeze_heap, own_process
from tomato_mqtt.waits import wait_for
from tomato_mqtt.wire.slugs import shown_client_id

# The MQTT client (paho) and the message models are imported where a service runs, not
# here: the broker's process imports this module for setup_logging only (~3 MB of RSS).
if TYPE_CHECKING:
    from pydantic import BaseModel

    from tomato_mqtt.config.url import BrokerURL
    from tomato_mqtt.transport.client import AsyncClient, Message
    from tomato_mqtt.wire.messages import PresenceState
    from tomato_mqtt.wire.topics import Topics

__all__ = ["Service", "install_signal_handlers", "run_until_stopped", "setup_logging"]

log = logging.getLogger(__name__)

#: s between two warnings that the broker cannot be reached (while trying again)
RETRY_TOLD_EVERY = 60.0


async def run_until_stopped(stop: asyncio.Event, *coros: Coroutine[Any, Any, Any]) -> None:
    """Run ``coros`` as tasks until ``stop`` is set or one of them fails.

    A failing loop is re-raised after the others are cancelled and awaited, so a service
    never keeps running half-dead. (A hand-made TaskGroup: Python 3.10 has none.)
    """
    tasks = [asyncio.ensure_future(c) for c in coros]
    stopper = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t is not stopper and not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
    finally:
        await cancel_and_wait([*tasks, stopper])


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel ``tasks`` and wait until each has really ended (none is left pending)."""
    pending = list(tasks)
    for t in pending:
        t.cancel()
    for t in pending:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t


def install_signal_handlers(stop: asyncio.Event, hard: bool = False) -> None:
    """First SIGINT/SIGTERM drains gracefully; a second one exits at once (``hard``: the
    process, at once, with os._exit: a node whose thread is in a driver call that never
    returns, which the interpreter's exit waits for)."""
    loop = asyncio.get_running_loop()

    signalled = False

    def on_signal(sig: signal.Signals) -> None:
        # a second *signal* exits at once; a stop the service requested itself (a
        # scheduler that lost its state file) followed by the watchdog's SIGTERM is not
        # two signals: it exited mid-teardown and its runners finalized jobs on the way
        nonlocal signalled
        if signalled:
            log.warning("%s again: exiting at once", sig.name)
            if hard:  # (a second Ctrl-C of a node with a hung instrument: a review)
                logging.shutdown()
                os._exit(1)
            sys.exit(1)
        signalled = True
        # said in the log (a node stopped by its PC's service manager left no line: an
        # admin's tour)
        log.info("%s: stopping (a second one exits at once)", sig.name, extra=CONSOLE)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig)
    from tomato_mqtt.services.watchdog import SUPERVISOR_PID_ENV

    if hasattr(signal, "SIGHUP") and not os.environ.get(SUPERVISOR_PID_ENV):
        # run by hand, a hangup (its terminal closed) drains as a SIGTERM does; under a
        # supervisor it is ignored (watchdog.follow_supervisor): the supervisor stops
        # its services in order
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, on_signal, signal.SIGHUP)


#: ``log.info(..., extra=CONSOLE)``: said on the console of a service run by hand too
CONSOLE = {"console": True}


#: the most characters of one log message (its traceback aside): a name sent by a client
#: is said in it, and a line of 100 kB each (a forged name) would rotate a service's
#: history out of its logs in a few messages (a hostile tour)
LOG_LINE_MAX = 2000


class _CappedFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        if len(text) <= LOG_LINE_MAX:
            return text
        return f"{text[:LOG_LINE_MAX]}… ({len(text) - LOG_LINE_MAX} more characters)"


def setup_logging(
    name: str, logdir: Path | None, verbosity: int = 0, *, warnings_to_stderr: bool = False
) -> None:
    """Log to ``logdir/<name>.log``; ``verbosity`` is -v count minus -q count, as in
    tomato: 0 INFO, 1+ DEBUG, -1 WARNING, -2 ERROR, -3 CRITICAL. With
    ``warnings_to_stderr`` (a service run by hand) warnings go to the console as well."""
    level = min(max(logging.INFO - 10 * verbosity, logging.DEBUG), logging.CRITICAL)
    console = logging.StreamHandler()
    # what the service prints itself as its last word ("error: …") comes once
    console.addFilter(lambda r: not getattr(r, "printed", False))
    handlers: list[logging.Handler] = [console]
    if logdir is not None:
        logdir.mkdir(parents=True, exist_ok=True)
        from tomato_mqtt.services.logfile import RotatingLog

        handlers = [RotatingLog(logdir / f"{name}.log")]
        if warnings_to_stderr:
            # warnings, and the few lines a service run by hand says to its console
            # (``extra=CONSOLE``: a node in the foreground printed nothing while it
            # worked, nor where it logs: an admin's tour)
            console.addFilter(lambda r: r.levelno >= logging.WARNING or hasattr(r, "console"))
            handlers.append(console)
    formatter = _CappedFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for h in handlers:
        h.setFormatter(formatter)
    logging.basicConfig(level=level, handlers=handlers, force=True)
    if level > logging.DEBUG:
        # dgbowl-schemas says "Updating from Payload-1.0 to Payload-2.0" (and on) at INFO
        # for every payload it reads: two lines of each submit in the scheduler's log
        logging.getLogger("dgbowl_schemas").setLevel(logging.WARNING)


class Service(abc.ABC):
    """Base of the scheduler, node and recorder (see the module docstring)."""

    #: how long :meth:`run` keeps trying to reach the broker at start
    connect_timeout: float = 30.0
    #: a second SIGINT/SIGTERM ends the process with os._exit (install_signal_handlers)
    hard_second_signal: bool = False
    #: run() ended by an error (a StartupError, a loop that failed), not by a stop
    failed: bool = False

    def __init__(self, url: BrokerURL, topics: Topics, *, heartbeat: float = 2.0) -> None:
        self.url = url
        self.topics = topics
        self.heartbeat = heartbeat
        self.client: AsyncClient | None = None
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- what a service says about itself ---------------------------------------------------
    @property
    @abc.abstractmethod
    def client_id(self) -> str:
        """The MQTT client id (unique per process)."""

    @property
    def shown_id(self) -> str:
        """The client id as logs show it (its unguessable tail cut: wire.slugs)."""
        return shown_client_id(self.client_id)

    @property
    @abc.abstractmethod
    def status_topic(self) -> str:
        """The retained presence topic of this service."""

    @abc.abstractmethod
    def presence(self, state: PresenceState) -> BaseModel:
        """The presence message for ``state`` (``lost`` is the last will: keep it small)."""

    # -- hooks (all optional) ---------------------------------------------------------------
    async def setup(self) -> None:  # noqa: B027 - optional hook
        """Open local state before the broker is reached."""

    async def started(self) -> None:  # noqa: B027 - optional hook
        """Connected: subscribe and announce."""

    def loops(self) -> list[Coroutine[Any, Any, Any]]:
        """Long-running loops besides the message loop and the heartbeat."""
        return []

    async def on_message(self, msg: Message) -> None:  # noqa: B027 - optional hook
        """One message of the stream (subscriptions without a handler)."""

    async def on_connect(self) -> None:
        """Every (re)connect: the broker may have lost every retained message."""
        await self.publish_presence("online")

    async def on_heartbeat(self) -> None:  # noqa: B027 - optional hook
        """Called every ``heartbeat`` seconds after presence was refreshed."""

    async def drain(self) -> None:  # noqa: B027 - optional hook
        """Finish in-flight work before the spawned tasks are cancelled."""

    async def teardown(self) -> None:  # noqa: B027 - optional hook
        """Close local state; runs last, also when the start failed."""

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def mqtt(self) -> AsyncClient:
        """The connected client (from :meth:`started` on)."""
        if self.client is None:
            raise RuntimeError(f"{self.shown_id}: not connected yet")
        return self.client

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def said_fault(self, e: BaseException) -> str | None:
        """What the service says of an error of its own storage (see the scheduler's),
        said once there; None: a bug, logged with its traceback where it happened."""
        return None

    def request_stop(self) -> None:
        """Ask :meth:`run` to shut down in order; returns at once."""
        self._stop.set()

    async def wait_stopped(self, timeout: float | None = None) -> bool:
        """True once a stop was requested (within ``timeout``)."""
        with contextlib.suppress(asyncio.TimeoutError):
            await wait_for(self._stop.wait(), timeout)
        return self._stop.is_set()

    async def run(self) -> None:
        try:
            await self.setup()
            from tomato_mqtt.transport.client import AsyncClient, Will
            from tomato_mqtt.wire.messages import encode

            self.client = AsyncClient(
                self.url,
                client_id=self.client_id,
                will=Will(self.status_topic, encode(self.presence("lost"))),
                on_connect=self.on_connect,
            )
            await self.connect()
            if self.stopping:
                return
            await self.started()
            freeze_heap(collect=False)  # the imports: out of the collector's way
            await run_until_stopped(
                self._stop, self._message_loop(), self._heartbeat_loop(), *self.loops()
            )
        except BaseException:
            self.failed = True  # (its process exits 1: cli/serve.py reads it too)
            raise
        finally:
            await self._shutdown()

    async def connect(self) -> None:
        """Connect, trying again for ``connect_timeout`` (each failure logged, once a
        minute) unless a stop comes first. A login or certificate the broker will never
        take ends it with a StartupError (one line: the service exits 1)."""
        if self.client is None:
            return
        from tomato_mqtt.transport.client import MqttRefused, MqttUntrusted

        told = -math.inf

        def failed(e: Exception) -> None:
            nonlocal told
            now = time.monotonic()
            if now - told >= RETRY_TOLD_EVERY:
                told = now
                log.warning(
                    "%s: cannot reach the MQTT broker at %s (%s): trying again",
                    self.shown_id,
                    self.url,
                    e,
                )

        connecting = asyncio.ensure_future(
            self.client.connect(timeout=self.connect_timeout, retry=True, on_retry=failed)
        )
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({connecting, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not connecting.done():  # stopped while it waited for the broker
                await cancel_and_wait({connecting})
        if connecting.cancelled():
            return
        e = connecting.exception()
        if isinstance(e, MqttUntrusted) or (isinstance(e, MqttRefused) and e.final):
            raise StartupError(str(e))
        if isinstance(e, OSError):  # the TLS files named cannot be read, say
            raise StartupError(f"cannot connect to the MQTT broker at {self.url}: {e}")
        connecting.result()

    async def _shutdown(self) -> None:
        connected = self.client is not None and self.client.is_connected
        if connected:
            with contextlib.suppress(Exception):
                await self.publish_presence("stopping", timeout=2)
        try:
            await self.drain()
        except Exception:
            log.exception("%s: draining failed", self.shown_id)
        await cancel_and_wait(set(self._tasks))
        if self.client is not None:
            if self.client.is_connected:
                with contextlib.suppress(Exception):
                    await self.publish_presence("offline", timeout=2)
            await self.client.disconnect()
        await self.teardown()
        log.info("%s: stopped", self.shown_id)

    def run_sync(self) -> None:
        """Run in the foreground until a signal (first drains, second forces)."""
        own_process()  # the process is this service's: its heap may be frozen

        async def main() -> None:
            install_signal_handlers(self._stop, hard=self.hard_second_signal)
            await self.run()

        try:
            asyncio.run(main())
        except StartupError as e:  # one line, no traceback (a state file, say)
            log.error("%s", e, extra={"printed": True})
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(1) from None

    # -- helpers ----------------------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task that shutdown cancels and awaits; failures are logged."""
        t: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._task_done)
        return t

    def _task_done(self, t: asyncio.Task[Any]) -> None:
        self._tasks.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.error("%s: task failed", self.shown_id, exc_info=t.exception())

    async def publish_presence(self, state: PresenceState, timeout: float | None = None) -> None:
        if self.client is None:
            return
        from tomato_mqtt.wire.messages import encode

        payload = encode(self.presence(state))
        if timeout is None:
            await self.client.publish(self.status_topic, payload, retain=True, wait=False)
        else:
            await self.client.publish(self.status_topic, payload, retain=True, timeout=timeout)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            if self.client is not None and self.client.is_connected:
                try:
                    await self.publish_presence("online")
                except Exception as e:
                    log.debug("%s: heartbeat failed: %s", self.shown_id, e)
            await self.on_heartbeat()

    async def _message_loop(self) -> None:
        if self.client is None:
            return
        async for msg in self.client.messages():
            try:
                await self.on_message(msg)
            except Exception as e:  # one bad message must never stop a service
                if self.said_fault(e) is None:
                    log.exception("%s: handling a message on %s failed", self.shown_id, msg.topic)
