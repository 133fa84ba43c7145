"""Runs the local stack in the background and keeps it running.

``tomato start`` launches this module (``python -m tomato_mqtt.services.supervisor
SPEC``, detached; ``tomato supervise`` runs the same in the foreground). The supervisor
starts the embedded broker (unless an external one is configured), the scheduler, the
recorder and the local driver node as child processes, all at once, each logging into
the logdir, and restarts any that crashes (with back-off). It stops everything when the
scheduler exits because of ``tomato stop`` (exit code :data:`EXIT_STOP_REQUESTED`) or on
SIGTERM.

The scheduler, recorder and node are forked from one preloader (``cli/preload.py``) on
Linux: what all three import is imported once, not three times over on two cores (issue
15: the start). The supervisor is their subreaper while the preloader runs, so they are
its children once it exits; a restart spawns the service anew. ``TOMATO_MQTT_PRELOAD=0``
spawns every service (as on other systems).

Socket activation: the MQTT port of the embedded broker is bound and listening *before*
any service starts (by ``tomato start``, which hands the socket down, or else here), and
the broker serves that socket. A service that connects while the broker still imports
waits in the socket's backlog and gets its CONNACK the moment the broker serves: no
connection is refused, so nobody retries with back-off, and the services' start-up
overlaps the broker's. A broker that is restarted serves the same socket.

This module imports only the standard library (and services/watchdog.py and
services/logfile.py, stdlib only):
the supervisor is a small, long-lived process (no CLI, no pydantic), started in a few
tens of milliseconds.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and "ssl" not in sys.modules:
    # the supervisor process never speaks TLS; asyncio imports ssl (and with it OpenSSL,
    # ~4 MB of RSS) only to offer it. Blocked here, asyncio runs without TLS support.
    # (Only when this module *is* the supervisor: `tomato start` imports it too.)
    sys.modules["ssl"] = None  # type: ignore[assignment]

import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tomato_mqtt.services.base import cancel_and_wait
from tomato_mqtt.services.launch import (
    BROKER_CONFIG_ENV,
    EXIT_CANNOT_LISTEN,
    EXIT_NAME_TAKEN,
    EXIT_RESTART_REQUESTED,
    EXIT_STOP_REQUESTED,
    LISTEN_FD_ENV,
    PRELOAD_ENV,
    PRELOADED,
    bind_listener,
    pidfile_path,
    port_free,
    port_in_use,
    python,
    read_pidfile,
    service_argv,
    subreaper,
)
from tomato_mqtt.services.logfile import RotatingFile, RotatingLog
from tomato_mqtt.services.watchdog import SUPERVISOR_PID_ENV, pid_alive
from tomato_mqtt.waits import wait_for

__all__ = [
    "BROKER_CONFIG_ENV",
    "EXIT_CANNOT_LISTEN",
    "EXIT_STOP_REQUESTED",
    "LISTEN_FD_ENV",
    "PRELOAD_ENV",
    "STABLE_RUN",
    "Adopted",
    "Supervisor",
    "bind_listener",
    "main",
    "pid_alive",
    "pidfile_path",
    "port_free",
    "port_in_use",
    "python",
    "read_pidfile",
    "restart_delay",
]

log = logging.getLogger("tomato_mqtt.services.supervisor")  # also when run as __main__

#: the preloader's module (the services' layer does not import the CLI's)
PRELOADER = "tomato_mqtt.cli.preload"
#: s the preloader may take to import and fork, on a slow machine; then it is killed and
#: the services are spawned
PRELOAD_TIMEOUT = 30.0


#: a broker that exits this soon after its first start could not listen: give up
BROKER_STARTUP_WINDOW = 10.0


#: a run at least this long (s) served: its end is a fault (a kill), not a crash loop, so
#: the back-off starts afresh. Counted over the last minute alone, a scheduler killed a
#: few times within a minute, however long each run served, came back after seconds,
#: beyond a CLI's -t (a fault-injection run: submits failed that a 0.2 s restart takes)
STABLE_RUN = 5.0
FIRST_DELAY = 0.2
MAX_DELAY = 10.0
#: s between the starts of a node whose name another running node holds
NAME_TAKEN_RETRY = 60.0


def restart_delay(fails: list[float], started: float, now: float) -> tuple[list[float], float]:
    """The exits that count towards the back-off (``fails``, monotonic times, with this
    one at ``now``) and the delay before a restart: 0.2 s, doubling per exit within a
    minute of runs shorter than :data:`STABLE_RUN` (a service that cannot start), at most
    :data:`MAX_DELAY`."""
    kept = [] if now - started >= STABLE_RUN else [t for t in fails if now - t < 60]
    kept.append(now)
    return kept, min(FIRST_DELAY * 2 ** (len(kept) - 1), MAX_DELAY)


class Adopted:
    """A child this supervisor did not spawn (the preloader forked it, then exited), as
    much of :class:`asyncio.subprocess.Process` as :class:`Supervisor` uses: its exit is
    awaited by a thread in ``waitpid``, as asyncio's own child watcher does."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = loop.create_future()
        threading.Thread(
            target=self._reap, args=(loop,), name=f"waitpid-{pid}", daemon=True
        ).start()

    def _reap(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            _, status = os.waitpid(self.pid, 0)
            rc = os.waitstatus_to_exitcode(status)
        except ChildProcessError:  # reaped by someone else: its code is lost
            rc = 255
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            loop.call_soon_threadsafe(self._done, rc)

    def _done(self, rc: int) -> None:
        self.returncode = rc
        if not self._exited.done():
            self._exited.set_result(rc)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def send_signal(self, sig: int) -> None:
        if self.returncode is not None:
            raise ProcessLookupError(self.pid)
        os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: asyncio.subprocess.Process | Adopted | None = None
    restarts: int = 0
    started: float = 0.0
    log_path: Path | None = None
    fails: list[float] = field(default_factory=list)
    #: copies what the process prints into its rotating stderr log (see _spawn)
    pump: asyncio.Task[None] | None = None
    #: its name was another node's at its last exit (said once, until it runs again)
    name_taken: bool = False


class Supervisor:
    def __init__(
        self,
        common_args: list[str],
        *,
        logdir: Path,
        pidfile: Path,
        embedded_broker: bool,
        broker_host: str,
        port: int,
        node_name: str,
        service_flags: list[str] | None = None,
        dashboard: bool = False,
        listen_fd: int | None = None,
        broker_config: str | None = None,
        forked: dict[str, Any] | None = None,
    ) -> None:
        # the services' typer-free entry (cli/serve.py): no typer, click or rich in a
        # long-lived process (~40 ms of CPU at start and ~5 MB each); the dashboard's
        # options are many and rarely used: it goes through the typer command
        typer_exe = [*python(), "-m", "tomato_mqtt.cli.tomato"]
        flags = list(service_flags or [])  # -v/-q of `tomato start`
        self.logdir = logdir
        self.pidfile = pidfile
        self.port = port
        self.broker_host = broker_host
        self.embedded_broker = embedded_broker
        #: the listening MQTT socket the broker serves (see the module docstring)
        self.listen_fd = listen_fd
        #: the embedded broker's configuration (JSON), or None: it reads the settings
        self.broker_config = broker_config
        self._listener: socket.socket | None = None
        self.children: list[Child] = []
        names = ["broker"] if embedded_broker else []
        for name in [*names, "scheduler", "recorder", "node"]:
            self.children.append(Child(name, service_argv(name, common_args, flags, node_name)))
        if dashboard:  # [dashboard] enabled: the web UI is one more supervised service
            self.children.append(Child("dashboard", [*typer_exe, "dashboard", *common_args]))
        self._stop = asyncio.Event()
        #: the preloader's run (see _preload), None when the services are spawned
        self._preloading: asyncio.Future[None] | None = None
        #: whether this process was a subreaper before the preloader made it one
        self._was_subreaper = False
        #: the preloader `tomato start` forked before it started this process (its pid,
        #: its report's and the services' output pipes' read ends: cli/preload.py), or None
        self.forked = forked
        self.stopping = False
        #: why the stack gave up at start (the broker could not listen), else None
        self.failed: str | None = None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._signalled, sig)
        if hasattr(signal, "SIGHUP"):
            # a daemon's "reload" (`tomato start`'s supervisor has no terminal): it ended
            # the stack at once, the services all together, and a job's count was lost
            # with the scheduler that went first (fault injection); kept running, said.
            # A foreground `tomato supervise` whose terminal closes stops in order
            loop.add_signal_handler(
                signal.SIGHUP,
                functools.partial(self._signalled, signal.SIGHUP)
                if _has_terminal()
                else self._hangup,
            )
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        self.pidfile.write_text(json.dumps({"pid": os.getpid(), "port": self.port}))
        try:
            if self.embedded_broker and self.listen_fd is None and os.name == "posix":
                try:  # `tomato supervise` run by hand: bind here
                    self._listener = bind_listener(self.broker_host, self.port)
                except OSError as e:
                    self.failed = f"cannot listen on {self.broker_host}:{self.port}: {e}"
                    log.error("the broker could not start: %s", self.failed)
                    return 1
                self.listen_fd = self._listener.fileno()
            # all at once: the services retry their connection until the broker listens,
            # so its start-up (~0.5 s of imports) overlaps with theirs
            preloaded = [c for c in self.children if c.name in PRELOADED]
            if self.forked is not None:  # a subreaper already (the process that forked it)
                self._preloading = asyncio.ensure_future(self._take_forked(preloaded))
            elif preloaded and os.environ.get(PRELOAD_ENV) != "0":
                was = subreaper(True)
                if was is not None:  # first: the broker serves long before a node needs it
                    self._was_subreaper = was
                    self._preloading = asyncio.ensure_future(self._preload(preloaded))
            if self._preloading is not None:  # what it did not start, the watchers spawn
                self._preloading.add_done_callback(_said_if_failed)
            watchers = [asyncio.ensure_future(self._watch(c)) for c in self.children]
            await self._stop.wait()
            self.stopping = True
            for w in watchers:
                w.cancel()
            if self._preloading is not None:  # what it forked is ours to stop
                await asyncio.wait([self._preloading])
            # nodes first (they flush data), broker last; after a failed start nothing
            # holds data and the services cannot reach a broker: do not wait long
            if self.failed:  # all at once, shortly: there is nothing to flush
                await asyncio.gather(*(self._terminate(c, 2.0) for c in self.children))
                return 1
            for name in ("dashboard", "node", "scheduler", "recorder", "broker"):
                for c in self.children:
                    if c.name == name:
                        await self._terminate(c)
            pumps = [c.pump for c in self.children if c.pump is not None]
            if pumps:  # their last words reach their logs
                _done, held = await asyncio.wait(pumps, timeout=2.0)
                # a process the service left behind holds its output
                await cancel_and_wait(held)
            return 0
        finally:
            if self._listener is not None:
                self._listener.close()
            with contextlib.suppress(OSError):
                self.pidfile.unlink()

    def _signalled(self, sig: signal.Signals) -> None:
        if not self._stop.is_set():  # (its log said nothing of why the stack stopped)
            log.info(
                "%s: stopping the stack (nodes first, the broker last)", signal.Signals(sig).name
            )
        self._stop.set()

    def _hangup(self) -> None:
        log.warning(
            "SIGHUP ignored: the stack runs on (`tomato reload` reloads the devices file and "
            "settings, `tomato stop` or SIGTERM stops it)"
        )

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env[SUPERVISOR_PID_ENV] = str(os.getpid())  # the service stops when we are gone
        return env

    async def _preload(self, children: list[Child]) -> None:
        """Start ``children`` from the preloader (module docstring): each one forked gets
        its :class:`Adopted` process and its output pump; one that did not is spawned
        by its watcher (_spawn), as are all of them if the preloader failed."""
        pipes = {c.name: os.pipe() for c in children}
        kids = [{"name": c.name, "argv": c.argv, "fd": pipes[c.name][1]} for c in children]
        spec = {"cwd": str(self.logdir), "children": kids}
        pids: dict[str, int] = {}
        said: tuple[int | None, str] = (0, "")  # the preloader's exit code, its last words
        try:
            proc = await asyncio.create_subprocess_exec(
                *python(),
                "-m",
                PRELOADER,
                json.dumps(spec),
                cwd=self.logdir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=[w for _, w in pipes.values()],
                env=self._env(),
            )
            for _, w in pipes.values():  # the preloader and its children hold them now
                os.close(w)
            try:
                out, err = await wait_for(proc.communicate(), PRELOAD_TIMEOUT)
            except asyncio.TimeoutError:
                proc.kill()
                out, err = await proc.communicate()
            pids = _pids(out.decode(errors="replace"), pipes)
            tail = err.decode(errors="replace").strip().splitlines()[-1:]
            said = (proc.returncode, f": {tail[0]}" if tail else "")
        except OSError as e:  # (said once, with the others, by _adopt)
            said = (None, f"; it could not start: {e}")
            for _, w in pipes.values():
                with contextlib.suppress(OSError):
                    os.close(w)
        finally:
            # its children are ours now (or init's, had they been orphaned before): a
            # service's orphan later goes to init again, as without the preloader
            subreaper(self._was_subreaper)
        reads = {n: r for n, (r, _) in pipes.items()}
        self._adopt(children, reads, pids, "preloaded", *said)

    async def _take_forked(self, children: list[Child]) -> None:
        """The preloader that `tomato start` forked (cli/preload.py ``fork_stack``): its
        report of the services it forked, then its exit, then the services are ours."""
        f = self.forked or {}
        reads = {str(n): int(fd) for n, fd in f.get("pipes", {}).items()}
        pids: dict[str, int] = {}
        rc: int | None = None
        report = int(f["report_fd"])
        try:
            preloader = Adopted(int(f["pid"]))
            got: list[bytes] = []  # what the report said so far
            reading = asyncio.ensure_future(asyncio.to_thread(_read_all, report, got))
            try:
                await wait_for(asyncio.shield(reading), PRELOAD_TIMEOUT)
                rc = await wait_for(preloader.wait(), PRELOAD_TIMEOUT)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    preloader.kill()
                rc = await preloader.wait()
                # what it forked before it hung is running: ours, not spawned again (a
                # child stopped before it closed the report holds it: what is said so far)
                with contextlib.suppress(asyncio.TimeoutError):
                    await wait_for(asyncio.shield(reading), 2.0)
            pids = _pids(b"".join(got).decode(errors="replace"), reads)
        finally:
            subreaper(False)  # (see _preload)
        where = "; its log: supervisor.log"
        self._adopt(children, reads, pids, "preloaded by tomato start", rc, where)

    def _adopt(
        self,
        children: list[Child],
        reads: dict[str, int],
        pids: dict[str, int],
        how: str,
        rc: int | None,
        detail: str,
    ) -> None:
        """Make the forked ``pids`` our children (``reads``: their output pipes); say so
        if the preloader (its exit code ``rc``) did not start them all."""
        if rc != 0 or len(pids) < len(children):
            log.warning(
                "the preloader started %s of %d services (exit code %s%s): spawning the rest",
                len(pids),
                len(children),
                rc,
                detail,
            )
        for c in children:
            r = reads.pop(c.name)
            if c.name not in pids:
                os.close(r)
                continue
            c.log_path = self.logdir / f"{c.name}.stderr.log"
            c.proc = Adopted(pids[c.name])
            c.pump = asyncio.ensure_future(_pump(r, RotatingFile(c.log_path)))
            c.started = time.monotonic()
            log.info("started %s (pid %d, %s)", c.name, c.proc.pid, how)
        for r in reads.values():  # (a pipe for a service this stack does not run)
            os.close(r)

    async def _spawn(self, c: Child) -> None:
        if self._preloading is not None and c.restarts == 0 and c.name in PRELOADED:
            await asyncio.wait([self._preloading])  # (a stop waits for it in run)
            if c.proc is not None:
                return
        c.log_path = self.logdir / f"{c.name}.stderr.log"
        fds: tuple[int, ...] = ()
        env = self._env()
        if c.name == "broker":
            if self.listen_fd is not None:
                fds = (self.listen_fd,)
                env[LISTEN_FD_ENV] = str(self.listen_fd)
            if self.broker_config is not None:
                env[BROKER_CONFIG_ENV] = self.broker_config
        # through a pipe into a file kept to a bounded size (services.logfile): written
        # straight into the file, a driver that prints each point filled the disk. A
        # pipe of our own, not asyncio's: its Process.wait() waits for its pipes to
        # close, and a process the service left behind (a driver's helper) holding
        # them kept a killed node from being restarted and `tomato stop` waiting (a
        # review)
        if c.pump is not None and not c.pump.done():
            c.pump.cancel()  # the last run's output, held open by what it left behind
        out = RotatingFile(c.log_path)
        read_end, write_end = os.pipe()
        try:
            c.proc = await asyncio.create_subprocess_exec(
                *c.argv,
                cwd=self.logdir,  # see python(): never the folder tomato start ran in
                stdin=asyncio.subprocess.DEVNULL,
                stdout=write_end,
                stderr=write_end,
                pass_fds=fds,
                env=env,
            )
        except BaseException:
            os.close(read_end)
            out.close()
            raise
        finally:
            os.close(write_end)
        c.pump = asyncio.ensure_future(_pump(read_end, out))
        c.started = time.monotonic()
        log.info("started %s (pid %d)", c.name, c.proc.pid)

    async def _watch(self, c: Child) -> None:
        while not self.stopping:
            if c.proc is None or c.proc.returncode is not None:
                await self._spawn(c)
            if c.proc is None:
                return
            rc = await c.proc.wait()
            if c.pump is not None:  # what it printed last is in its log (_last_error)
                with contextlib.suppress(asyncio.TimeoutError):
                    await wait_for(asyncio.shield(c.pump), 2.0)
            if self.stopping:
                return
            if c.name == "scheduler" and rc == EXIT_STOP_REQUESTED:
                log.info("scheduler stopped on request: stopping the stack")
                self._stop.set()
                return
            if c.name == "node" and rc == EXIT_NAME_TAKEN:
                if not c.name_taken:
                    log.warning(
                        "node: another running node holds its name (its log says which): "
                        "not running while that one does; trying again every %g s",
                        NAME_TAKEN_RETRY,
                    )
                c.name_taken = True
                c.restarts += 1
                with contextlib.suppress(asyncio.TimeoutError):
                    await wait_for(self._stop.wait(), NAME_TAKEN_RETRY)
                c.proc = None
                continue
            c.name_taken = False
            if c.name == "node" and rc == EXIT_RESTART_REQUESTED:
                log.info("node stopped on request (tomato restart-node): starting it again")
                c.restarts += 1
                c.proc = None
                continue
            now = time.monotonic()
            first = c.name == "broker" and c.restarts == 0
            # a broker that exited by itself soon after its first start never served (a
            # port taken, a bad certificate): restarting cannot help; the exit code says so
            # however long its start took on a busy machine. One killed by a signal
            # (rc < 0: kill -9, the OOM killer) did serve, or could have: restart it.
            soon = rc is not None and rc > 0 and now - c.started < BROKER_STARTUP_WINDOW
            if first and (rc == EXIT_CANNOT_LISTEN or soon):
                self.failed = _last_error(c.log_path) or f"the broker exited with code {rc}"
                log.error("the broker could not start: %s", self.failed)
                self._stop.set()
                return
            c.fails, delay = restart_delay(c.fails, c.started, now)
            c.restarts += 1
            log.warning("%s exited with code %s; restarting in %.1f s", c.name, rc, delay)
            with contextlib.suppress(asyncio.TimeoutError):
                await wait_for(self._stop.wait(), delay)
            c.proc = None

    async def _terminate(self, c: Child, grace: float = 10.0) -> None:
        p = c.proc
        if p is None or p.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            p.terminate()
        try:
            await wait_for(p.wait(), grace)
        except asyncio.TimeoutError:
            log.warning("%s did not stop within %g s: killing it", c.name, grace)
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            await p.wait()


def _has_terminal() -> bool:
    """Whether this process has a controlling terminal (a foreground `tomato supervise`;
    `tomato start`'s supervisor runs in a session of its own, without one)."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True


def _said_if_failed(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the preloader's services: %r; spawning them", task.exception())


def _pids(report: str, names: Any) -> dict[str, int]:
    """name -> pid of the services a preloader's report (``NAME PID`` lines) names."""
    pids: dict[str, int] = {}
    for line in report.splitlines():
        name, _, pid = line.partition(" ")
        if name in names and pid.isdigit():
            pids[name] = int(pid)
    return pids


def _read_all(fd: int, into: list[bytes]) -> None:
    """Read the pipe ``fd`` into ``into`` until every writer closed it, and close it."""
    with os.fdopen(fd, "rb", buffering=0) as f:
        while chunk := f.read(4096):
            into.append(chunk)


async def _pump(fd: int, out: RotatingFile) -> None:
    """Copy a child's output (the read end ``fd`` of its pipe) into its log until every
    process that holds the pipe closed it."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport = None
    try:
        pipe = os.fdopen(fd, "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
        while chunk := await reader.read(65536):
            out.write(chunk)
    finally:
        if transport is not None:
            transport.close()
        out.close()


def _last_error(path: Path | None) -> str | None:
    """The last line of a child's stderr that names an error (its traceback's last line)."""
    if path is None:
        return None
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines[-40:]):
        line = line.strip()
        if line and ("Error" in line.split(":", 1)[0] or line.startswith("error:")):
            return line
    return None


def _setup_logging(logdir: Path, verbosity: int) -> None:
    """As services.base.setup_logging (same file and format), without its imports."""
    level = min(max(logging.INFO - 10 * verbosity, logging.DEBUG), logging.CRITICAL)
    logdir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[RotatingLog(logdir / "supervisor.log")],
        force=True,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m tomato_mqtt.services.supervisor --port PORT SPEC``: SPEC is a JSON
    object of the :class:`Supervisor` arguments, written by ``tomato start`` (which has
    parsed and checked the settings already: the supervisor does not read them again);
    ``--port`` repeats the stack's port, so that ``ps`` tells the stacks apart."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[0] != "--port":
        print("usage: python -m tomato_mqtt.services.supervisor --port PORT SPEC", file=sys.stderr)
        return 2
    spec = json.loads(args[2])
    logdir = Path(spec["logdir"])
    _setup_logging(logdir, int(spec.get("verbosity", 0)))
    fd = spec.get("listen_fd")
    sup = Supervisor(
        list(spec["common_args"]),
        logdir=logdir,
        pidfile=Path(spec["pidfile"]),
        embedded_broker=bool(spec["embedded_broker"]),
        broker_host=str(spec["broker_host"]),
        port=int(spec["port"]),
        node_name=str(spec["node_name"]),
        service_flags=list(spec.get("service_flags", [])),
        dashboard=bool(spec.get("dashboard", False)),
        listen_fd=None if fd is None else int(fd),
        broker_config=spec.get("broker_config"),
        forked=spec.get("forked"),
    )
    return asyncio.run(sup.run())


if __name__ == "__main__":
    sys.exit(main())
