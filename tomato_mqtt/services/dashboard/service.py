"""``tomato dashboard``: an ordinary subscriber of the topic contract that serves a page.

One MQTT connection (the dashboard's own login, read-only on a secured stack) subscribes
to every retained status and to the data stream; :class:`~.state.LabState` keeps the
latest of each; every ``flush_interval`` the changed views go to every open page over a
WebSocket, coalesced (a component that published ten times since the last flush is sent
once). Pages that show a job also get that job's decimated series (``series.py``).

Why a server and not the browser on the broker's WebSocket listener: the page then works
with any broker (Mosquitto without a WebSocket listener, a site broker behind a
firewall), the decimation of a 1 kHz stream happens once instead of in every browser,
a page that opens gets the full state in one message, and the users' passwords go to
one place the lab controls.

Nothing is published but requests (``whoami`` and the controls of signed-in users), so
the dashboard has no presence topic and needs no write rights of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import math
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tomato_mqtt.config.settings import is_loopback
from tomato_mqtt.config.url import BrokerURL
from tomato_mqtt.services.base import cancel_and_wait, install_signal_handlers, run_until_stopped
from tomato_mqtt.services.dashboard.sessions import Session, Sessions
from tomato_mqtt.services.dashboard.state import LabState
from tomato_mqtt.transport.client import (
    AsyncClient,
    Message,
    MqttError,
    MqttRefused,
    MqttUntrusted,
)
from tomato_mqtt.waits import wait_for
from tomato_mqtt.wire.messages import DecodeError
from tomato_mqtt.wire.topics import Topics

if TYPE_CHECKING:
    from tomato_mqtt.model.jobs import Job
    from tomato_mqtt.wire.messages import JobStatus

__all__ = ["BrokerUnreachable", "DashboardConfig", "DashboardService", "Viewer", "stack_id"]

log = logging.getLogger(__name__)

#: a job launched this long (s) after the dashboard started was seen live from its start
BACKFILL_MARGIN = 5.0
#: job files larger than this are not loaded into the plots (the download still works)
BACKFILL_MAX_BYTES = 256 * 2**20
#: a load of stored points that failed (a timeout, a refusal) is tried again after (s)
BACKFILL_RETRY = 5.0
#: how long (s) the first connection to the broker is tried before the dashboard gives
#: up (then ``run`` raises ``BrokerUnreachable``; under ``tomato start`` the supervisor
#: restarts it); once connected, the client reconnects by itself for as long as it runs
CONNECT_TIMEOUT = 30.0
#: a whole job fetched this recently (s) goes to a page that opens it from memory; found
#: by a security audit: each page's ``watch`` asked the scheduler for the whole job, and
#: 300 of them on 8 anonymous sockets took the dashboard to 1.4 GB
JOB_FRESH = 2.0
#: whole jobs kept for that (the newest)
JOB_KEPT = 16
#: requests for whole jobs under way at once, whatever the pages ask
FETCHES_MAX = 4
#: job pages one socket may open per second, and at once (a burst); a ``watch`` over the
#: rate waits, and a newer one replaces it
WATCH_RATE = 4.0
WATCH_BURST = 8.0
#: pages open at once, and from one client address (a review: one address could hold
#: them all; a lab PC's own tabs share one), and what one page's queue may hold (bytes;
#: a page that does not read is sent the full state again instead): at most ~200 MB
#: queued in all, whatever is asked
VIEWERS_MAX = 100
VIEWERS_PER_ADDRESS = 16
#: of VIEWERS_MAX, the places only pages of signed-in users may take
VIEWERS_SIGNED_IN = 20
QUEUE_BYTES_MAX = 2 * 2**20


class BrokerUnreachable(MqttError):
    """The first connection to the broker failed for ``connect_timeout`` s: the
    dashboard has given up (the text names the broker and the last failure)."""


def stack_id(instance: str, broker_host: str, broker_port: int) -> str:
    """Which stack a dashboard shows, as a short digest (no address given away): the
    page's ``X-Tomato-Stack`` header, which ``tomato dashboard`` compares with its own
    when it finds its port taken."""
    import hashlib

    text = f"{instance}\n{broker_host.lower()}\n{broker_port}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class DashboardConfig:
    url: BrokerURL
    instance: str
    host: str = "127.0.0.1"
    port: int = 8765  # 0: any free port (tests); see DashboardService.port
    read_only: bool = False
    lost_after: float = 10.0  # a presence silent this long shows as lost
    flush_interval: float = 0.05  # a point waits 25 ms on average before it goes out
    title: str = ""
    #: see CONNECT_TIMEOUT (read when the config is made, so a test may shorten it)
    connect_timeout: float = field(default_factory=lambda: CONNECT_TIMEOUT)
    #: HTTPS with this certificate and key (PEM); None: plain HTTP
    certfile: str | None = None
    keyfile: str | None = None
    #: names the page answers to besides this PC's own (``[dashboard] hosts``)
    hosts: tuple[str, ...] = ()

    @property
    def tls(self) -> bool:
        return bool(self.certfile and self.keyfile)


def page_json(msg: Any) -> str:
    """``msg`` as the page's JSON: a NaN or an infinity (which no message decoded from the
    wire carries, wire.base.decode) goes as null, not as ``NaN``, which the page's
    ``JSON.parse`` refuses: the whole update was lost, and every page showed nothing."""
    global _nan_said
    try:
        return json.dumps(msg, separators=(",", ":"), allow_nan=False)
    except ValueError:
        if time.monotonic() - _nan_said >= 60:  # (once a minute, not per page: a review)
            _nan_said = time.monotonic()
            log.warning("a page update held a NaN or an infinity: sent as null")
        return json.dumps(_finite(msg), separators=(",", ":"), allow_nan=False)


_nan_said = -60.0  # when page_json last said it sent a NaN as null


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


@dataclass(eq=False)  # kept in a set, by identity
class Viewer:
    """One open page: its session, the job it shows, and its outgoing queue."""

    session: Session
    queue: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(maxsize=200))
    job: int | None = None
    behind: bool = False  # the queue overflowed: send the full state again
    close: Callable[[], Awaitable[object]] | None = None  # closes the page's socket
    queued: int = 0  # characters in the queue
    #: a ``watch`` over the rate, applied when the rate allows (only the newest waits)
    wanted: int | None = None
    wanting: bool = False
    allowance: float = WATCH_BURST  # watches it may apply now (a token bucket)
    peer: str | None = None  # the client's address
    allowed_at: float = field(default_factory=time.monotonic)

    def send(self, msg: dict[str, Any]) -> None:
        if self.behind:
            return
        text = page_json(msg)
        if self.queued and self.queued + len(text) > QUEUE_BYTES_MAX:
            self.behind = True  # (the first message always goes: a hello may be big)
            return
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            self.behind = True  # the writer resyncs it (drops the queue, sends hello)
            return
        self.queued += len(text)

    def allowed(self, now: float) -> bool:
        """Whether the rate lets this page open a job now (takes one if so)."""
        self.allowance = min(WATCH_BURST, self.allowance + (now - self.allowed_at) * WATCH_RATE)
        self.allowed_at = now
        if self.allowance < 1.0:
            return False
        self.allowance -= 1.0
        return True


class DashboardService:
    def __init__(self, cfg: DashboardConfig) -> None:
        self.cfg = cfg
        self.topics = Topics(cfg.instance, cfg.url.username)
        self.state = LabState()
        exposed = not is_loopback(cfg.host)  # 127.0.0.2 too: any loopback address
        self.sessions = Sessions(cfg.url, cfg.instance, cfg.read_only, exposed)
        self.sessions.on_end = self._session_ended
        self.viewers: set[Viewer] = set()
        self.client: AsyncClient | None = None
        self._told_broker = True  # what the pages were told of the broker connection
        self.port: int | None = None  # the bound port, once serving
        #: the host names the page answers to (``web.this_pc_names``, set by ``run``)
        self.names: frozenset[str] = frozenset({"localhost", *cfg.hosts})
        self.ready = asyncio.Event()
        self.bad_messages = 0
        #: called with the page's address once it is served (``tomato dashboard --open``)
        self.on_ready: Callable[[str], object] | None = None
        self._stop = asyncio.Event()
        #: stopped (Ctrl-C) while it was still trying to reach the broker
        self.stopped_before_connected = False
        self.started_at = time.time()
        self._backfilled: set[int] = set()
        self._refilled: set[int] = set()  # ended jobs whose plots were made anew from the file
        #: per job: how its stored points were loaded ("loading", "loaded N", "failed: …")
        self.backfill_state: dict[int, str] = {}
        self._backfill_after: dict[int, float] = {}  # job -> monotonic time of the retry
        self._tasks: set[asyncio.Task[None]] = set()
        #: whole jobs: the one request under way per job, what came lately (monotonic
        #: time, the page message), jobs whose status changed during their request
        self._fetching: dict[int, asyncio.Task[None]] = {}
        self._fetched: dict[int, tuple[float, dict[str, Any]]] = {}
        self._refetch: set[int] = set()
        self._fetch_slots = asyncio.Semaphore(FETCHES_MAX)
        self.fetches = 0  # requests for whole jobs sent

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def mqtt(self) -> AsyncClient:
        if self.client is None:
            raise RuntimeError("the dashboard is not connected yet")
        return self.client

    def address(self) -> str:
        host = self.cfg.host if self.cfg.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        return f"{'https' if self.cfg.tls else 'http'}://{host}:{self.port}/"

    def _tls(self) -> ssl.SSLContext | None:
        """The server's TLS context (HTTPS), or None for plain HTTP."""
        if not self.cfg.tls:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.cfg.certfile), str(self.cfg.keyfile))
        return ctx

    # -- life -------------------------------------------------------------------------------
    async def run(self) -> None:
        from aiohttp import web  # the [dashboard] extra: imported only where it serves

        from tomato_mqtt.services.dashboard.web import make_app, this_pc_names

        self.names = frozenset(await asyncio.to_thread(this_pc_names)) | self.names
        runner: web.AppRunner | None = None
        client = AsyncClient(self.cfg.url, client_id=f"tomato-dashboard-{uuid.uuid4().hex[:8]}")
        try:
            # the port first: one in use is an OSError at once, not after the broker's
            # wait; until connected, the page's socket and controls answer 503
            runner = web.AppRunner(make_app(self), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, self.cfg.host, self.cfg.port, ssl_context=self._tls())
            await site.start()
            addresses = runner.addresses  # the bound port, also when asked for port 0
            self.port = int(addresses[0][1]) if addresses else self.cfg.port
            self.client = client
            # while it tries, a stop (Ctrl-C) is taken at once: it was not looked at until
            # the broker's 30 s were over (a newcomer's tour)
            connecting = asyncio.ensure_future(
                client.connect(timeout=self.cfg.connect_timeout, retry=True)
            )
            stopping = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if self._stop.is_set():  # (the signal may end the attempt it came in as well)
                connecting.cancel()
                with contextlib.suppress(asyncio.CancelledError, MqttError):
                    await connecting
                self.stopped_before_connected = not client.is_connected
                if self.stopped_before_connected:
                    return
            try:
                connecting.result()
            except (MqttRefused, MqttUntrusted):
                raise  # a login or certificate refused at once: not "kept trying"
            except MqttError as e:
                raise BrokerUnreachable(str(e)) from e
            t = self.topics
            for f in (
                t.scheduler_status(),
                t.recorder_status(),
                t.all_node_status(),
                t.all_component_meta(),
                t.all_component_status(),
                t.pattern("component_last"),
                t.all_pipeline_status(),
                t.all_job_status(),
                t.all_job_events(),
            ):
                await self.client.subscribe(f)
            await self.client.subscribe(t.all_component_data(), droppable=True)
            await self.sessions.start_shared(self.client)
            if self.sessions.exposed and not self.cfg.tls:
                log.warning(
                    "the dashboard serves plain HTTP on %s: passwords typed into its sign-in"
                    " form cross the network in clear; set [dashboard] certfile and keyfile",
                    self.cfg.host,
                )
            log.info("dashboard on %s (broker %s)", self.address(), self.cfg.url)
            self.ready.set()
            if self.on_ready is not None:
                self.on_ready(self.address())
            await run_until_stopped(
                self._stop, self._message_loop(), self._flush_loop(), self._whoami_loop()
            )
        finally:
            await cancel_and_wait(set(self._tasks))
            for v in list(self.viewers):  # closed here, not left to the garbage collector
                if v.close is not None:
                    with contextlib.suppress(Exception):
                        await wait_for(v.close(), 2.0)
            if runner is not None:
                await runner.cleanup()
            await self.sessions.close()
            await client.disconnect()

    def run_sync(self) -> None:
        async def main() -> None:
            install_signal_handlers(self._stop)
            await self.run()

        asyncio.run(main())

    # -- input ------------------------------------------------------------------------------
    async def _message_loop(self) -> None:
        async for msg in self.mqtt.messages():
            self.on_message(msg)

    def on_message(self, msg: Message) -> None:
        parsed = self.topics.parse(msg.topic)
        if parsed is None:
            return
        if not msg.payload:
            self.state.forget(parsed)
            return
        try:
            self.state.apply(parsed, msg.topic, msg.payload)
        except DecodeError as e:
            self.bad_messages += 1
            log.warning("%s", e)

    async def _whoami_loop(self) -> None:
        # the scheduler may start after the dashboard: ask until it answers
        while True:
            await self.sessions.refresh_shared()
            if self.sessions.shared is not None and self.sessions.shared.me is not None:
                for v in list(self.viewers):
                    if v.session is self.sessions.shared:
                        v.send({"t": "me", "me": v.session.describe()})
                await self._stop.wait()  # a loop that returns would stop the service
            await asyncio.sleep(1.0)

    # -- output -----------------------------------------------------------------------------
    def hello(self, viewer: Viewer) -> dict[str, Any]:
        """The first message of a page: who it is, and the full state."""
        return {
            "t": "hello",
            "now": time.time(),
            "instance": self.cfg.instance,
            "title": self.cfg.title or self.cfg.instance,
            "lost_after": self.cfg.lost_after,
            "broker": self._broker_up(),
            "me": viewer.session.describe(),
            **self.state.full(),
        }

    def ask_watch(self, viewer: Viewer, job: int | None) -> None:
        """A page's ``watch``: applied now if its rate allows, else when it does (one
        waits per page: a newer one replaces it)."""
        if job is None:  # back to the overview: it asks the scheduler nothing (a review:
            viewer.wanting = False  # it spent a token, delaying the next job opened)
            self.watch(viewer, None)
            return
        viewer.wanted, viewer.wanting = job, True
        self._apply_watch(viewer, time.monotonic())

    def _apply_watch(self, viewer: Viewer, now: float) -> None:
        if viewer.wanting and viewer.allowed(now):
            viewer.wanting = False
            self.watch(viewer, viewer.wanted)

    def watch(self, viewer: Viewer, job: int | None) -> None:
        old, viewer.job = viewer.job, job
        if old is not None and old != job:
            self._maybe_abandon(old)
        if job is not None:
            self._maybe_backfill(job)
            # how its earlier points were loaded, for a page whose plots lack some (it
            # showed "points on screen 0" beside 300 stored, and no word why: a tour)
            load = self.backfill_state.get(job)
            detail = self.state.job_detail(job)
            viewer.send({"t": "job", "id": job, "now": time.time(), "load": load, **detail})
            self._fetch_job(job, viewer)

    def _session_ended(self, s: Session) -> None:
        """A sign-in ended (signed out in another tab, a sixth sign-in of its login, 12 h
        idle): its pages' live sockets close, and the pages connect again as who they are
        now. They kept the ended session: its closed connection was asked for the whole
        job a page opened, for every page of that job, and none got it (a review)."""
        for v in [v for v in self.viewers if v.session is s]:
            if v.close is not None:
                task = asyncio.ensure_future(_closed(v.close))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    # -- the whole job (its payload) --------------------------------------------------------
    def _fetch_job(self, job: int, page: Viewer, changed: bool = False) -> None:
        """Ask the scheduler for the whole job: retained statuses are summaries without the
        payload (schema 2), and a job page shows the payload and its current task. One
        request per job at a time, for every page; one that came lately is reused unless
        the job ``changed``."""
        # (a page's session that ended as it asked: not its closed connection)
        own = page.session if self.sessions.live(page.session) else None
        who = (own, self.sessions.shared)
        s = next((x for x in who if x is not None and x.me and "job_status" in x.me.ops), None)
        if s is None:
            return  # this login may not read jobs: the page shows the summary only
        got = self._fetched.get(job)
        if changed:
            self._fetched.pop(job, None)
        elif got is not None and time.monotonic() - got[0] < JOB_FRESH:
            page.send(got[1])
            return
        if job in self._fetching:
            if changed:  # the request under way may have left before the change
                self._refetch.add(job)
            return
        task = asyncio.ensure_future(self._fetch(job, s))
        self._fetching[job] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._fetch_done)  # also one cancelled before it ran

    def _fetch_done(self, task: asyncio.Future[None]) -> None:
        for job, t in list(self._fetching.items()):
            if t is task:
                del self._fetching[job]

    def _maybe_abandon(self, job: int) -> None:
        """No page shows ``job`` any more: its request, if still waiting for a slot, is
        dropped (so a page has at most one waiting: the newest watch replaces it)."""
        task = self._fetching.get(job)
        if task is not None and not any(v.job == job for v in self.viewers):
            task.cancel()  # it checks again once it has a slot, if it had one already
            self._refetch.discard(job)  # nobody waits for it again (a review: it stayed)

    async def _fetch(self, job: int, s: Session) -> None:
        from tomato_mqtt.model.jobs import Job

        me = asyncio.current_task()
        whole = None
        try:
            async with self._fetch_slots:
                if not any(v.job == job for v in self.viewers):
                    return  # no page shows it any more
                self.fetches += 1
                r = await s.requester.request(
                    s.topics.scheduler_cmd("job_status"), {"jobids": [job]}, timeout=10
                )
            data = r.data if r.success and isinstance(r.data, list) and r.data else None
            whole = Job.model_validate(data[0]) if data else None
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a refusal, a timeout, a shape this code does not know
            log.warning("job %d: whole job not fetched: %s", job, e)
        finally:
            if self._fetching.get(job) is me:
                del self._fetching[job]
        if whole is not None:
            self.state.job_fetched(whole)
            msg = {
                "t": "jobdata",
                "id": job,
                "job": whole.model_dump(mode="json"),
                "summary": self.state.whole_summary(whole),
                "events": self.state.job_events(job),
            }
            self._fetched.pop(job, None)
            self._fetched[job] = (time.monotonic(), msg)
            while len(self._fetched) > JOB_KEPT:
                del self._fetched[next(iter(self._fetched))]
            for v in list(self.viewers):
                if v.job == job:
                    v.send(msg)
            if job not in self.state.jobs:  # its retained status went: known from now
                self._maybe_backfill(job)
        if job in self._refetch:
            self._refetch.discard(job)
            page = next((v for v in self.viewers if v.job == job), None)
            if page is not None:
                self._fetch_job(job, page, changed=True)

    # -- stored data first ------------------------------------------------------------------
    def _maybe_backfill(self, job: int) -> None:
        """A job that began before this dashboard: load its stored points once. Also one
        no longer among the retained statuses, known from its whole job only (its page
        said "points on screen 0" for good, and nothing why: a dashboard tour)."""
        j: JobStatus | Job | None = self.state.jobs.get(job) or self.state.details.get(job)
        if job in self._backfilled or j is None or j.status in ("q", "qw") or not j.launched_at:
            return
        if time.monotonic() < self._backfill_after.get(job, 0.0):
            return  # failed a moment ago: the next tick after the pause tries again
        with contextlib.suppress(ValueError):
            launched = datetime.datetime.fromisoformat(j.launched_at).timestamp()
            if launched > self.started_at + BACKFILL_MARGIN:
                return  # seen live from its start
        # with the dashboard's own login only: the points loaded go to every page that
        # shows the job, so a person's right to the job's file must not fetch them (found
        # by a security review: an owner's page loaded them, then a page nobody signed in
        # to showed them). On a secured stack that login is a reader: the plots of a job
        # that began before the dashboard start with the live data there.
        if self._load_stored(job, replace=False):
            self._backfilled.add(job)

    def _maybe_refill(self, job: int) -> None:
        """An ended job whose stored points outnumber those this dashboard holds: the live
        view missed some (found by a user's audit: 2 points sent as the broker was killed
        never reached the page; 188 on screen, 190 stored, for good). Its series are made
        anew from its file, once."""
        j = self.state.jobs.get(job)
        if j is None or j.status not in ("c", "ce", "cd") or job in self._refilled:
            return
        if time.monotonic() < self._backfill_after.get(job, 0.0):
            return  # failed a moment ago
        stored = sum(j.points.values()) if j.points else 0
        if stored <= self.state.held(job):
            return
        if self._load_stored(job, replace=True):
            self._refilled.add(job)

    def _load_stored(self, job: int, replace: bool) -> bool:
        """Start loading the job's stored points with the dashboard's own login (see
        _maybe_backfill); False when that login may not take snapshots."""
        s = self.sessions.shared
        if s is None or s.me is None or "job_snapshot" not in s.me.ops:
            if s is not None and s.me is not None:
                self.backfill_state[job] = (
                    "not loaded: the dashboard's own login may not take snapshots (on a "
                    "secured stack it is a reader): the plots start with the live data"
                )
            return False
        self.backfill_state[job] = "loading"
        task = asyncio.ensure_future(self._backfill(job, s, replace=replace))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _backfill(self, job: int, s: Session, replace: bool = False) -> None:
        from tomato_mqtt.services.dashboard.files import chunks, read_job_file, take_snapshot

        try:
            snap = await take_snapshot(s, job, record=False)
            if snap.size > BACKFILL_MAX_BYTES:
                log.info("job %d: file of %d bytes not loaded into the plots", job, snap.size)
                self.backfill_state[job] = f"not loaded: {snap.size} bytes"
                self._tell_load(job)
                return
            data = b"".join([c async for c in chunks(s, snap)])
            roles = await asyncio.to_thread(read_job_file, data)
        except ImportError:
            log.warning("netCDF4 is not installed: plots start with live data only")
            self.backfill_state[job] = "failed: netCDF4 is not installed"
            self._tell_load(job)
            return
        except Exception as e:  # a refusal, a timeout, a bad file: live now, again later
            log.warning(
                "job %d: stored data not loaded (tried again in %g s): %s", job, BACKFILL_RETRY, e
            )
            self.backfill_state[job] = f"failed: {e}"
            self._backfill_after[job] = time.monotonic() + BACKFILL_RETRY
            (self._refilled if replace else self._backfilled).discard(job)
            self._tell_load(job)
            return
        n = 0
        for r in roles:
            n += self.state.backfill(
                job, r.component, r.role, r.uts, r.columns, r.units, r.task, fresh=replace
            )
        log.info("job %d: %d stored points loaded%s", job, n, " (the plots made anew)" * replace)
        self.backfill_state[job] = f"loaded {n}"
        for v in list(self.viewers):
            if v.job == job:
                self.watch(v, job)

    def _tell_load(self, job: int) -> None:
        """The pages of ``job`` learn how the load of its stored points went."""
        msg = {"t": "load", "id": job, "load": self.backfill_state.get(job)}
        for v in list(self.viewers):
            if v.job == job:
                v.send(msg)

    async def _flush_loop(self) -> None:
        next_tick = 0.0
        while True:
            await asyncio.sleep(self.cfg.flush_interval)
            now = time.time()
            self.flush(now, tick=now >= next_tick)
            if now >= next_tick:
                next_tick = now + 1.0

    def flush(self, now: float, tick: bool = False) -> None:
        mono = time.monotonic()
        for v in list(self.viewers):  # watches that waited for their page's rate
            self._apply_watch(v, mono)
        items = self.state.take_changes()
        events = {int(i["id"]) for i in items if i["k"] == "event"}
        items = [i for i in items if i["k"] != "event"]
        watched = {v.job for v in self.viewers if v.job is not None}
        # a watched job whose status changed: its page gets the whole job (payload too)
        jobs = {int(i["id"]) for i in items if i["k"] == "job" and int(i["id"]) in watched}
        updates = {
            j: self.state.series_updates(j) for j in self.state.take_series_changed() & watched
        }
        if not self.viewers:
            return
        up = self._broker_up()
        if up != self._told_broker:  # said at once: the page said "live" for 10 s more,
            # until every service had been silent for lost_after (a dashboard tour)
            self._told_broker = up
            for v in self.viewers:
                v.send({"t": "broker", "now": now, "connected": up})
        if tick:  # the dashboard's login may snapshot now (its whoami answered late)
            for v in list(self.viewers):
                if v.job is not None and v.job not in self._backfilled:
                    self._maybe_backfill(v.job)
                if v.job is not None:
                    self._maybe_refill(v.job)
        msg = {"t": "items", "now": now, "items": items} if items else None
        for v in self.viewers:
            if msg is not None:
                v.send(msg)
            elif tick:
                v.send({"t": "tick", "now": now})
            if v.job in updates:
                v.send({"t": "series", "job": v.job, "now": now, **updates[v.job]})
        for job in jobs:  # a watched job's status changed: its page gets the whole job again
            page = next((v for v in self.viewers if v.job == job), None)
            if page is not None:
                self._fetch_job(job, page, changed=True)
        for v in self.viewers:
            if v.job in events:
                evs = self.state.job_events(v.job)
                v.send({"t": "events", "job": v.job, "events": evs})

    def _broker_up(self) -> bool:
        """Whether this dashboard's own connection to the broker is up now."""
        return self.client is not None and self.client.is_connected

    async def writer(self, viewer: Viewer, send: Any) -> None:
        """Drain one page's queue into its socket (``send``: the socket's send_str)."""
        while True:
            if viewer.behind:
                while not viewer.queue.empty():
                    viewer.queue.get_nowait()
                viewer.queued = 0
                viewer.behind = False
                viewer.send(self.hello(viewer))
                self.watch(viewer, viewer.job)
            text = await viewer.queue.get()
            viewer.queued -= len(text)
            with contextlib.suppress(ConnectionResetError):
                await send(text)


async def _closed(close: Callable[[], Awaitable[object]]) -> None:
    await close()
