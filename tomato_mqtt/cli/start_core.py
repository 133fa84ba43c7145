"""``tomato start`` without typer: the checks, the supervisor's launch, the wait for ready.

:mod:`tomato_mqtt.cli.fast` runs it when the command line has only the options it knows
(typer's import and command tree are ~0.1 s of a start); ``tomato start`` through typer
(``--help``, an option spelt differently) runs the same function.

The supervisor (services/supervisor.py) is launched detached; the wait
(:mod:`.ready`) is on MQTT, until the scheduler answers and every component is registered.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

from tomato_mqtt.cli import core, preload, serve
from tomato_mqtt.cli.core import fail
from tomato_mqtt.cli.output import echo
from tomato_mqtt.cli.ready import wait_ready
from tomato_mqtt.cli.serve import service_args
from tomato_mqtt.config.nodehint import node_command
from tomato_mqtt.errors import ROOM_BYTES, writable_bytes

__all__ = ["Done", "alive", "start"]


class Done:
    """A Reply made here (init, start, stop ask no service, or more than one)."""

    def __init__(self, msg: str, data: Any = None, success: bool = True) -> None:
        self.success, self.msg, self.data = success, msg, data


def start(opts: core.Opts, verbose: int = 0, quiet: int = 0) -> None:
    """Start the local stack in the background; return when it answers (see the module)."""
    from tomato_mqtt.config.devices import load_devices
    from tomato_mqtt.errors import ConfigError
    from tomato_mqtt.services.launch import (
        live_supervisor,
        pidfile_path,
        port_in_use,
        python,
    )

    # (services.launch, not the supervisor's module: asyncio would delay every service)
    s = opts.settings()
    if not (s.appdir / "settings.toml").exists():  # as tomato: nothing to start from
        fail(f"settings file not found in {s.appdir}, run 'tomato init' to create one")
    with contextlib.suppress(OSError):
        if not (s.appdir / "settings.toml").read_text(errors="replace").strip():
            # (a file emptied started another stack, on port 1883 with the default data
            # folder, without a word: a fault-injection run)
            echo(
                f"warning: {s.appdir / 'settings.toml'} is empty: every setting is its "
                f"default (port {s.mqtt.port}, data folder {s.datadir}): a file cut short? "
                "`tomato init` writes one",
                err=True,
            )
    for line in s.notes:  # a tomato 2.2 file: what it says that is not used here, once
        echo(f"note: {s.appdir / 'settings.toml'}: {line}", err=True)
    for line in s.exposed:  # passwords others could read
        echo(f"warning: {line}", err=True)
    try:  # refuse a bad devices file here, with its reason, rather than in a log
        layout = load_devices(s.devices_file, s.node.name)
    except ConfigError as e:
        fail(str(e))
    # keys nothing reads (tomato 2.2 ignores them too): said here, where the user looks,
    # so a misspelt one is seen (the scheduler's log says it again)
    for line in layout.ignored:
        echo(f"warning: {line}", err=True)
    # (before the services' logins are made: two first starts made them both, a review)
    _one_start_at_a_time(s.datadir)
    serve.ensure_services(s)  # a secured stack: the services' own logins
    ctx = core.context(port=s.mqtt.port, appdir=s.appdir, datadir=s.datadir, logdir=s.logdir)
    pidfile = pidfile_path(s.datadir, s.mqtt.port)
    # a zombie or a reused pid left by a crash is dead: start at once
    if (running := live_supervisor(s.datadir, s.mqtt.port)) is not None:
        fail(f"tomato-mqtt is already running on port {s.mqtt.port} (pid {running})")
    _refuse_a_datadir_in_use(s.datadir, pidfile)
    if s.broker.embedded and port_in_use(s.broker.host, s.mqtt.port):
        if _scheduler_answers(ctx, 1.0):
            fail(f"tomato-mqtt is already running on port {s.mqtt.port} ({ctx.where()})")
        fail(
            f"port {s.mqtt.port} on {s.broker.host} is already in use by another program; "
            f"nothing was started. {_other_port(s)}"
        )
    if not s.broker.embedded and _scheduler_answers(ctx, 2.0):
        fail(f"a tomato-mqtt scheduler already answers on {ctx.where()}")
    # after those: a running stack's own services hold its files' write locks for a
    # moment at each write, and its recorder mid-write was said to be "another program"
    # holding the store, not a stack already running (a review)
    _check_state_files(s)
    if s.broker.embedded:
        _check_listener_ports(s)
    for what, flag, folder in (("logdir", "-L", s.logdir), ("datadir", "-D", s.datadir)):
        # said here: the supervisor failed on its pid file, "exited with code 1", the
        # cause in a traceback in its log (a fault review: a datadir this user may not
        # write, or a read-only disk)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            fail(f"tomato-mqtt could not start: cannot make the {what} {folder}: {e}")
        if not os.access(folder, os.W_OK | os.X_OK):
            fail(
                f"tomato-mqtt could not start: this user may not write the {what} {folder} "
                f"(or its disk is read-only); nothing was started. Fix its permissions, or "
                f"choose another with {flag}"
            )
        free = writable_bytes(folder)
        if free is not None and free < ROOM_BYTES:
            # (it started without a word, the fault said at the first write refused)
            fail(
                f"tomato-mqtt could not start: the disk of the {what} {folder} is full "
                f"({free // 1024} KiB free); nothing was started. Free space on it, or "
                f"choose another with {flag}"
            )
    # socket activation (services/supervisor.py): the MQTT port listens from here on, so
    # the services and this command connect at once and are served when the broker is
    # (POSIX: Windows cannot hand a socket to a child this way; its services retry)
    # the broker's configuration, also handed down (it then reads no settings of its own)
    broker = _embedded_broker(s) if s.broker.embedded else None
    listener = _bind_mqtt_port(s, broker) if s.broker.embedded and os.name == "posix" else None
    spec = {
        "common_args": service_args(s),
        "logdir": str(s.logdir),
        "pidfile": str(pidfile),
        "embedded_broker": s.broker.embedded,
        "broker_host": s.broker.host,
        "port": s.mqtt.port,
        "node_name": s.node.name,
        "service_flags": ["-v"] * verbose + ["-q"] * quiet,
        "dashboard": s.dashboard.enabled,
        "listen_fd": None if listener is None else listener.fileno(),
        "broker_config": None if broker is None else broker.to_json(),
    }
    log_path = s.logdir / "supervisor.log"
    # the supervisor imports no CLI and no pydantic (a lean, long-lived process); in the
    # logdir, with -P: nothing where start ran is imported
    argv = [*python(), "-m", "tomato_mqtt.services.supervisor", "--port", str(s.mqtt.port)]
    keep = [] if listener is None else [listener.fileno()]
    proc: subprocess.Popen[bytes] | preload.Forked | None
    try:
        with log_path.open("ab") as out:
            # Linux: forked, with the preloader of its services (cli/preload.py)
            proc = preload.fork_stack(spec, argv, out.fileno(), keep)
            if proc is None:
                proc = subprocess.Popen(
                    [*argv, json.dumps(spec)],
                    cwd=s.logdir,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    start_new_session=True,
                    pass_fds=keep,
                )
    finally:
        if listener is not None:  # the supervisor holds it now: a failed start frees it
            listener.close()
    try:
        ready = wait_ready(ctx, proc, opts.timeout, s.node.name)
    except KeyboardInterrupt:  # Ctrl-C: the start is called off, as a failed one is
        # (the stack started on in the background, unsaid, and a retry was "already
        # running": a newcomer's tour); said first: the stop takes up to seconds
        echo("tomato start interrupted: stopping what it had started", err=True)
        _take_down(proc)
        core.exit_now(130)
    if ready is None:
        rc = proc.poll()
        why = _startup_error(s.logdir) if rc is not None else None
        # while its broker still runs: can the services reach it where they connect?
        unreachable = _unreachable(ctx) if rc is None and why is None else None
        _take_down(proc)  # nothing of a failed start is left running
        if why:
            fail(f"tomato-mqtt could not start: {why} (logs in {s.logdir})")
        if rc is not None:  # it ended the wait at once: not a timeout (an outside review)
            how = (
                f"was killed (signal {-rc})"
                if rc < 0
                else "stopped (a `tomato stop` meanwhile?)"
                if rc == 0
                else f"exited with code {rc}"
            )
            fail(
                f"tomato-mqtt could not start: its supervisor (pid {proc.pid}) {how} "
                f"before the stack was ready; nothing is left running (logs in {s.logdir})"
            )
        if unreachable is not None and s.broker.embedded:
            # (it said only "see the logs": an admin's tour, with [broker] host set to
            # the lab's address, where the embedded broker listened alone)
            fail(
                f"tomato-mqtt did not come up within {opts.timeout:g} s: its services "
                f"connect to {ctx.url}, and {unreachable[0]} (the embedded broker listens "
                f"on [broker] host = {s.broker.host!r}); logs in {s.logdir}"
            )
        if unreachable is not None:  # (it said only "see the logs": an admin's tour)
            why, refused = unreachable
            check = "" if refused else ": is it running, and is [mqtt] host where it listens?"
            fail(
                f"tomato-mqtt did not come up within {opts.timeout:g} s: {why} (the "
                f"external broker of settings.toml, [broker] embedded = false{check}); "
                f"logs in {s.logdir}"
            )
        fail(f"tomato-mqtt did not come up within {opts.timeout:g} s; see the logs in {s.logdir}")
    n_ok, n_all, missing, absent, pending = ready
    msg = (
        f"tomato-mqtt started on {ctx.url} (instance {ctx.instance}, pid {proc.pid}); "
        f"{n_ok}/{n_all} component(s) ready"
    )
    data: dict[str, Any] = {
        "port": ctx.url.port,
        "instance": ctx.instance,
        "pid": proc.pid,
        "appdir": str(s.appdir),
        "components_ready": n_ok,
        "components": n_all,
    }
    data["missing_drivers"] = [
        {"node": node, "driver": driver, "why": why, "components": sorted(comps)}
        for (node, driver), (why, comps) in sorted(missing.items())
    ]
    data["nodes_not_online"] = [
        {"node": node, "components": sorted(comps)} for node, comps in sorted(absent.items())
    ]
    data["not_ready"] = dict(sorted(pending.items()))
    warned = [] if s.broker.embedded else _broker_warnings(ctx, BROKER_CHECK_WAIT)
    if warned:
        data["broker_warnings"] = warned
    if s.dashboard.enabled:
        scheme = "https" if s.dashboard.certfile else "http"
        data["dashboard"] = f"{scheme}://{s.dashboard.host}:{s.dashboard.port}/"
        msg += f"\ndashboard: {data['dashboard']}"
    opts.output().reply(Done(msg, data))
    if opts.port is not None and opts.port != _file_port(opts):
        # `tomato status` then looked on the file's port and said "`tomato start` starts
        # it", which was refused (a newcomer's tour)
        echo(
            f"note: port {opts.port} is not the one {s.appdir / 'settings.toml'} gives: the "
            f"other commands need -p {opts.port} too (or set [mqtt] port = {opts.port} there)",
            err=True,
        )
    for w in warned:
        echo(f"warning: {w}", err=True)
    for node, comps in sorted(absent.items()):
        echo(
            f"warning: node {node!r} is not online, so {len(comps)} component(s) are not"
            f" ready ({', '.join(sorted(comps))}): start it on its PC"
            f" ({node_command(s, node, ctx.url.port)}); its components register when it"
            " connects.",
            err=True,
        )
    for (node, driver), (why, comps) in sorted(missing.items()):
        # not installed, or installed but its code is wrong (advice to install it again
        # misled a newcomer whose driver did not import)
        installed = "is not installed" not in why
        what = "cannot be used" if installed else "is missing"
        if "restart node" in why:  # a broken driver's error says what to do itself
            todo = ""
        elif "did you mean" in why:  # a misspelt name: the devices file is to be fixed
            # ("install it" beside "did you mean": a newcomer's tour)
            todo = " Fix the name in the devices file, then run `tomato reload`."
        elif installed:
            todo = " Fix it (or install what it imports), then run `tomato reload`."
        else:
            todo = " Install it, then run `tomato reload`."
        echo(
            f"warning: driver {driver!r} {what} on node {node}, so {len(comps)}"
            f" component(s) cannot register ({', '.join(sorted(comps))}): {why}.{todo}",
            err=True,
        )
    # pipelines gone from the devices file, kept for their samples (a file cut short
    # removed them all, with their samples, without a word: a fault-injection run)
    from tomato_mqtt.model.jobs import kept_pipeline_note

    for name, p in (core.status_section(ctx, "pipelines", 2.0) or {}).items():
        if isinstance(p, dict) and not p.get("roles") and p.get("sampleid") is not None:
            note = kept_pipeline_note(name, p["sampleid"], s.devices_file, p.get("jobid"))
            echo(f"warning: {note}", err=True)
    if pending:  # not ready when the wait ended: say which, and why, not only a count
        echo(
            f"warning: {len(pending)} component(s) not ready after {opts.timeout:g} s"
            f" (`tomato status components` shows them; logs in {s.logdir}):",
            err=True,
        )
        for name, why in sorted(pending.items()):
            echo(f"  {name}: {why}", err=True)
    core.exit_now()  # the stack runs on its own: ~50 ms of teardown helps nobody


def _embedded_broker(s: Any) -> Any:
    """The embedded broker's configuration (a ``BrokerConfig``), or None when the broker
    is not installed here (`tomato broker` then says so in its log, as before)."""
    try:
        return serve.broker_config(s)
    except ImportError:
        return None


def _bind_mqtt_port(s: Any, broker: Any) -> socket.socket:
    """The embedded broker's MQTT listener, bound now (a port taken is one clear error,
    and nothing was started)."""
    from tomato_mqtt.services.launch import bind_listener

    host = s.broker.host if broker is None else broker.plain_host
    try:
        return bind_listener(host, s.mqtt.port)
    except OSError as e:
        fail(
            f"port {s.mqtt.port} on {host} is already in use by another program ({e}); "
            f"nothing was started. {_other_port(s)}"
        )


def _other_port(s: Any) -> str:
    return (
        "Use another port: `tomato start -p N` (and -p N on every command), or "
        f"[mqtt] port = N in {s.appdir / 'settings.toml'}"
    )


def _check_listener_ports(s: Any) -> None:
    """Refuse at once when a listener of the embedded broker cannot bind (not after 30 s).

    The WebSocket listener takes the MQTT port + 1 unless ``[broker] ws_port`` says
    otherwise, so two stacks on neighbouring ports clash there.
    """
    from tomato_mqtt.services.launch import port_free

    host = s.broker.host
    listeners = []
    if s.ws_port:
        how = "[broker] ws_port" if s.broker.ws_port else "by default the MQTT port + 1"
        listeners.append((s.ws_port, f"the embedded broker's WebSocket listener ({how})"))
    if s.broker.certfile:
        listeners.append(
            (s.broker.tls_port, "the embedded broker's TLS listener ([broker] tls_port)")
        )
    for port, what in listeners:
        if not port_free(host, port):
            fail(
                f"port {port} on {host}, for {what}, is already in use by another program; "
                f"nothing was started. Set another port in {s.appdir / 'settings.toml'} "
                "([broker] ws_port = N, or 0 to switch the WebSocket listener off)"
            )


def _check_state_files(s: Any) -> None:
    """Refuse at once a state file its service could not open (it would crash at every
    restart, and this command wait its whole timeout for nothing)."""
    from tomato_mqtt.config.statefiles import held_elsewhere, unreadable, what_to_do
    from tomato_mqtt.wire.slugs import slug

    for kind, path in (
        ("state", s.state_db),
        ("recorder", s.recorder_db),
        ("spool", s.spool_dir / f"{slug(s.node.name)}.sqlite"),
    ):
        # (a damaged page of the recorder's store passed the cheap probe: a fault run; so
        # did one of the spool, and the node crash-looped while the start waited its
        # whole timeout, saying "no status of node local has come": another)
        why = unreadable(path, thorough=True) or held_elsewhere(path)
        if why is not None:
            fail(what_to_do(kind, path, why))
    _check_emptied(s)


def _check_emptied(s: Any) -> None:
    """An empty state file where jobs ran before is refused: SQLite takes it for a new
    one, and the stack started without its queue and samples, said only in the
    scheduler's log (a fault-injection run)."""
    path = s.state_db
    try:
        if path.stat().st_size:
            return
    except OSError:
        return  # none yet: a new stack
    from tomato_mqtt.config.statefiles import what_to_do
    from tomato_mqtt.services.scheduler.store import highest_job_elsewhere

    wal = path.with_name(path.name + "-wal")
    with contextlib.suppress(OSError):
        if wal.stat().st_size:  # (SQLite would drop it, and what it holds: a review)
            fail(what_to_do("state", path, f"it is empty, beside its write-ahead log {wal}"))
    used, where = highest_job_elsewhere(s.recorder_db, s.jobs_dir)
    if used:
        fail(what_to_do("state", path, f"it is empty, while {where} has job {used}"))


def _startup_error(logdir: Path) -> str | None:
    """The reason the supervisor gave up, from the last error line of its log."""
    try:
        lines = (logdir / "supervisor.log").read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines[-50:]):
        if " ERROR " in line:
            return line.split(": ", 1)[-1]
    return None


def _take_down(proc: subprocess.Popen[bytes] | preload.Forked) -> None:
    """Stop the supervisor of a failed start and everything it started (its session)."""
    import signal

    def signal_all(sig: int) -> None:
        # its children are in its session and process group (start_new_session, setsid);
        # the process itself also by its pid: one stopped just after its fork, before
        # its setsid, is still in ours and no signal to its group reached it (a loaded
        # CI run: the start's pipes stayed held, its caller waited for ever)
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, sig)
        if proc.poll() is None:  # (not reaped: its pid is not another process's yet)
            with contextlib.suppress(OSError):
                os.kill(proc.pid, sig)

    # a Ctrl-C now (a second one, while it waits) must not leave half of it running (a
    # review: the SIGKILL below was skipped, a supervisor that ignored SIGTERM stayed)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if proc.poll() is None:
            signal_all(signal.SIGTERM)
            # a stopped process acts on its SIGTERM only once continued: a start whose
            # supervisor was stopped took 5 s more than its timeout (an outside review)
            signal_all(signal.SIGCONT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        signal_all(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
    finally:
        signal.signal(signal.SIGINT, previous)


#: the lock of a start under way, held until this process ends (see below)
_starting: Any = None


def _one_start_at_a_time(datadir: Path) -> None:
    """Refuse a start while another ``tomato start`` of this data folder is under way:
    two at once were told "already running (pid N)" of a pid gone a moment later, or that
    the port was in use "by another program" (a newcomer's tour). A POSIX lock: not
    inherited by the supervisor forked from here, given up when this process ends."""
    global _starting
    try:
        import fcntl
    except ImportError:  # (Windows: the checks below still refuse a second stack)
        return
    try:
        datadir.mkdir(parents=True, exist_ok=True)
        # (unbuffered: nothing left to flush at exit on a full disk)
        f = open(datadir / "tomato-mqtt.starting", "a+b", buffering=0)  # noqa: SIM115
    except OSError:  # the folder checks below say what is wrong with it
        return
    try:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EAGAIN):  # a disk without locks (NFS
            f.close()  # without lockd, some FUSE mounts): no lock, as on Windows (a
            return  # review: it refused every start there as "another start")
        f.seek(0)
        pid = f.read().decode(errors="replace").strip()
        f.close()
        fail(
            f"another `tomato start`{f' (pid {pid})' if pid.isdigit() else ''} is starting "
            f"tomato-mqtt on the data folder {datadir}: wait for it (`tomato status` shows "
            "it once it is up)"
        )
    with contextlib.suppress(OSError):  # (a full disk: the pid is a courtesy; the folder
        f.truncate(0)  # checks below say what is wrong with it)
        f.write(str(os.getpid()).encode())
    _starting = f


def _file_port(opts: core.Opts) -> int:
    """The broker port the settings give without -p (settings.toml's, or the default)."""
    from tomato_mqtt.config.settings import load_settings

    return load_settings(
        core.as_path(opts.appdir), core.as_path(opts.datadir), core.as_path(opts.logdir)
    ).mqtt.port


def _refuse_a_datadir_in_use(datadir: Path, own: Path) -> None:
    """Refuse to start on a data folder another running stack (on another port) uses:
    two schedulers took turns on its state file, each restarted by its supervisor, and
    jobs of one ended ``ce`` on the other's node, a cancel was lost (a newcomer's tour:
    the same app folder started with another ``-p``, or two app folders with one ``-D``)."""
    from tomato_mqtt.services.launch import read_pidfile

    for other in sorted(datadir.glob("tomato-mqtt.*.pid")):
        if other == own:
            continue
        info = read_pidfile(other) or {}
        try:
            pid = int(str(info.get("pid")))
        except ValueError:
            continue
        if alive(pid) and _is_tomato(pid, other):
            port = info.get("port", other.name.split(".")[1])
            fail(
                f"the data folder {datadir} is in use by the tomato-mqtt stack on port {port}"
                f" (pid {pid}): one data folder holds one stack's state and jobs; nothing was"
                f" started. Stop that stack first (tomato stop -p {port}), or give this one a"
                " data folder of its own with -D"
            )


def _is_tomato(pid: int, pidfile: Path) -> bool:
    """Whether ``pid`` runs the tomato-mqtt supervisor of ``pidfile``, where the system
    says (a pid file a crash left behind may name a pid another program has now, another
    stack's too); True where it cannot tell."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no procfs: cannot tell
    except OSError:
        return True
    if b"tomato" not in cmdline or b"supervis" not in cmdline:
        return False
    # `tomato start`'s supervisor names its pid file among its arguments (as JSON);
    # `tomato supervise`, run by hand, does not
    return b'"pidfile"' not in cmdline or json.dumps(str(pidfile)).encode() in cmdline


def alive(pid: int) -> bool:
    from tomato_mqtt.services.watchdog import pid_alive

    return pid_alive(pid)  # a zombie or stale pid left by a crash is not alive


BROKER_CHECK_WAIT = 4.0
"""s ``tomato start`` waits, once the stack is ready, for the scheduler's check of an
external broker (services/scheduler/brokercheck.py: at most 2 s after its start)."""


def _unreachable(ctx: core.CallContext) -> tuple[str, bool] | None:
    """Why the broker at ``ctx.url`` takes no connection, and whether it refused it (a
    login, a certificate: it runs); None: it takes one."""
    from tomato_mqtt.transport import oneshot

    if ctx.url.transport == "websockets":  # (Exchange speaks TCP and TLS only)
        return None
    try:
        with oneshot.Exchange(ctx.url, ctx.topics.reply, timeout=2.0):
            return None
    except oneshot.OneShotError as e:
        return str(e), isinstance(e, oneshot.Refused)


def _broker_warnings(ctx: core.CallContext, within: float) -> list[str]:
    """What the scheduler found an external broker not to do (its status's
    ``broker_warnings``), once it has checked; [] when fine, or not said within
    ``within`` s (a scheduler older than the check)."""
    import time

    from tomato_mqtt.transport import oneshot

    end = time.monotonic() + within
    try:
        with oneshot.Exchange(ctx.url, ctx.topics.reply, timeout=within) as ex:  # one connection
            while (left := end - time.monotonic()) > 0:
                r = ex.request(
                    ctx.topics.scheduler_cmd("status"),
                    {"what": "scheduler"},
                    timeout=max(0.5, left),
                    who="scheduler",
                )
                ok = r.success and isinstance(r.data, dict)
                said = r.data.get("broker_warnings") if ok else []
                if isinstance(said, list):
                    return [str(w) for w in said]
                time.sleep(min(0.2, max(0.0, end - time.monotonic())))
    except oneshot.OneShotError:
        pass
    return []


def _scheduler_answers(ctx: core.CallContext, timeout: float) -> bool:
    import asyncio

    from tomato_mqtt.transport.client import AsyncClient, MqttError
    from tomato_mqtt.transport.rpc import NoResponder, Requester

    async def go() -> bool:
        c = AsyncClient(ctx.url, client_id=f"cli-probe-{os.getpid()}-{os.urandom(3).hex()}")
        try:
            await c.connect(timeout=timeout)
        except MqttError:
            return False
        try:
            r = await Requester(c, ctx.topics).request(
                ctx.topics.scheduler_cmd("status"), {}, timeout=timeout, who="scheduler"
            )
            return bool(r.success)
        except NoResponder:
            return False
        finally:
            await c.disconnect()

    return asyncio.run(go())
