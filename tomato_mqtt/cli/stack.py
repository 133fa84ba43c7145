"""``tomato init``, ``start`` and ``stop``: set up the local stack, run it in the background.

``start`` is declared here for typer; its body is :func:`.start_core.start` (the fast
path runs it without typer): it launches the supervisor detached and waits, on MQTT,
until the scheduler answers and every component is registered.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from tomato_mqtt.cli import common, core, start_core
from tomato_mqtt.cli.common import fail
from tomato_mqtt.cli.start_core import Done, alive

__all__ = ["app"]

#: s more that `tomato stop --force` waits: the scheduler's FORCE_STOP_WAIT for the
#: cancelled jobs (services/scheduler/ops.py)
FORCE_STOP_WAIT = 30.0
#: s after which a stop still under way is asked again (each time)
STOP_AGAIN = 5.0

# merged into ``tomato`` (no name): ``tomato init``, ``tomato start``, ``tomato stop``
app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)


@app.command()
@common.options((*common.LOCAL, "yaml", "json"))
def init(opts: common.Opts) -> None:
    """Write a commented settings.toml and a default devices.yml (never overwrites)."""
    from tomato_mqtt.config.settings import default_dirs, write_default_files

    a, d, lg = default_dirs()
    written = write_default_files(
        core.as_path(opts.appdir) or a,
        core.as_path(opts.datadir) or d,
        core.as_path(opts.logdir) or lg,
        port=opts.port,
    )
    if written:
        msg = "\n".join(f"wrote {p}" for p in written)
    else:
        msg = f"nothing to do: settings already exist in {opts.appdir or a}"
    appdir = core.as_path(opts.appdir) or a
    if not any(p.name == "settings.toml" for p in written):
        msg += _not_applied(appdir, opts)
    opts.output().reply(Done(msg, {"written": [str(p) for p in written]}))


def _not_applied(appdir: Path, opts: common.Opts) -> str:
    """What of -D/-L/-p an existing settings.toml says otherwise (never overwritten): it
    was silent, and a stack meant for a folder of its own used the default datadir (a
    dashboard tour wrote a job into another's state file)."""
    from tomato_mqtt.config.settings import load_settings
    from tomato_mqtt.errors import ConfigError

    try:
        s = load_settings(appdir=appdir)
    except (ConfigError, OSError, ValueError):
        return ""
    given = core.as_path(opts.datadir), core.as_path(opts.logdir)
    differ = [
        f"{what} is {have} (not {want}, given with {flag})"
        for what, flag, want, have in (
            ("datadir", "-D", given[0], s.datadir),
            ("logdir", "-L", given[1], s.logdir),
        )
        if want is not None and Path(want).resolve() != Path(have).resolve()
    ]
    if opts.port is not None and opts.port != s.mqtt.port:
        differ.append(f"port is {s.mqtt.port} (not {opts.port}, given with -p)")
    if not differ:
        return ""
    return (
        f"\nwarning: {appdir / 'settings.toml'} exists and is not changed: its "
        + "; its ".join(differ)
        + ". Edit it, or init another appdir (-A)"
    )


@app.command()
@common.options(core.START, timeout=core.START_TIMEOUT)
def start(opts: common.Opts) -> None:
    """Start the local stack in the background; return when it answers.

    -v/-vv and -q/-qq set how much the services log (as tomato's start does).
    """
    start_core.start(opts, opts.verbose, opts.quiet)


@app.command()
@common.options(
    (*common.LOCAL, "broker", "instance", "timeout", "yaml", "json", "verbose", "quiet"),
    timeout=20.0,
)
def stop(
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="also while jobs run: they are cancelled first (cd, their files written), "
            "and the stack stops once their tasks are stopped",
        ),
    ] = False,
    *,
    opts: common.Opts,
) -> None:
    """Stop the stack (refused while jobs run, unless --force)."""
    from tomato_mqtt.services.launch import live_stacks, live_supervisor

    began = time.monotonic()  # -t bounds the whole stop (it waited -t after the request)
    ctx = opts.context()
    from tomato_mqtt.config.settings import load_settings
    from tomato_mqtt.errors import ConfigError

    bad: ConfigError | None = None
    try:  # (not ctx.settings, which exits on a bad file)
        s = load_settings(
            appdir=core.as_path(ctx.appdir),
            datadir=core.as_path(ctx.datadir),
            logdir=core.as_path(ctx.logdir),
            port=ctx.port,
        )
    except ConfigError as e:
        s, bad = None, e
    pid = live_supervisor(s.datadir, ctx.url.port) if s else None
    # this data folder's stack on another port (started with -p): named, with the -p to
    # give (it said "nothing to stop" while that stack ran on: a fault run)
    # (not this port's: live_supervisor found none there)
    elsewhere = sorted(live_stacks(s.datadir).items()) if s and pid is None else []
    if pid is None and not elsewhere and core.scheduler_state(ctx) == "offline":
        # a stack stopped already, its broker external: "nothing to stop" at once (it
        # waited 5 s for "no scheduler answered … if it is only slow, it may still stop
        # the stack": an admin's tour)
        fail(
            f"nothing to stop: the scheduler of instance {ctx.instance} on "
            f"{ctx.url} says it is offline (stopped)"
        )
    if pid is None and s is not None:
        # started with -D, stopped without it: "stopped" was said at once while the stack
        # still ran, and a `tomato start` right after started a second one (fault
        # injection): the scheduler says which data folder holds the pid file
        pid = _supervisor_by_scheduler(ctx, min(1.0, opts.timeout / 2))
    running = pid is not None
    if running:
        elsewhere = []
    nothing = "nothing to stop, tomato-mqtt is not running there: "
    if elsewhere:
        (other, other_pid), *_ = elsewhere
        nothing = (
            f"nothing to stop on port {ctx.url.port} (tomato-mqtt of this data folder runs "
            f"on port {other}, supervisor pid {other_pid}: `tomato stop -p {other}` stops "
            "it): "
        )
    args = {"force": True} if force else {}
    reply = common.run_request(
        ctx,
        ctx.topics.scheduler_cmd("stop"),
        args,
        timeout=min(opts.timeout, 5),
        # a scheduler that is only slow (stopped, swapped out) gets the request later and
        # stops the stack then (a fault-injection run: "is it running?", then it stopped)
        unanswered=(
            "; if it is only slow, it may still stop the stack when it gets to the request"
            " (`tomato status` shows whether it runs)"
        ),
        # a stack whose broker is stuck runs all the same: said (it read "nothing to
        # stop, … not running there" while `tomato start` said "already running": a
        # fault-injection tour)
        unreachable=(
            f"tomato-mqtt runs here (supervisor pid {pid}), but its broker cannot be "
            f"reached, so the stop cannot be asked (`kill {pid}` stops the stack): "
            if running
            else nothing
        ),
    )
    if not reply.success:
        opts.output().reply(reply)
    # Ctrl-C while it waits for the stack to go: it said only "interrupted", and the stack
    # stopped all the same, its jobs cancelled with --force (a newcomer's tour)
    core.interrupted_note = (
        "the stack stops all the same (the scheduler took the request"
        + ("; running jobs are cancelled" if force else "")
        + "): `tomato status` shows when it is down"
    )
    if bad is not None:
        # the scheduler took the request and stops the stack: said, with why this call
        # cannot wait for it (it said "error: ...settings.toml... invalid TOML", exit 1,
        # and the stack stopped: a newcomer's tour)
        opts.output().reply(
            Done(
                f"tomato-mqtt on port {ctx.url.port} is stopping (the scheduler took the "
                f"request); not waited for, as the settings cannot be read: {bad}",
                {"port": ctx.url.port, "instance": ctx.instance},
            )
        )
        return
    if pid is not None:
        # --force: the cancelled jobs' tasks stop and their files are written first
        # (said as waited: "did not stop within 20 s" came after 50 s, a review)
        waited = opts.timeout + (FORCE_STOP_WAIT if force else 0.0)
        deadline = began + waited
        again = time.monotonic() + STOP_AGAIN
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
            if time.monotonic() >= again and alive(pid):
                # asked again: a scheduler restarted meanwhile (killed, frozen past its
                # watchdog) forgot the stop, and the stack ran on while this waited 50 s
                # (a fault-injection tour)
                _ask_again(ctx, args)
                again = time.monotonic() + STOP_AGAIN
        if alive(pid):
            fail(
                f"the supervisor (pid {pid}) did not stop within {waited:g} s; it may still "
                "(a service it waits for is given 10 s before it is killed): `tomato status` "
                "shows whether the stack runs"
            )
    msg = f"tomato-mqtt on port {ctx.url.port} stopped"
    if pid is None:  # not this PC's, or its pid file not found: not waited for
        msg = (
            f"tomato-mqtt on port {ctx.url.port} is stopping (the scheduler took the "
            "request); not waited for: its supervisor is not found on this PC"
        )
    if force and reply.msg != "stopping tomato-mqtt":  # the jobs it cancelled first: said
        msg = f"{reply.msg}; {msg}"
    opts.output().reply(Done(msg, {"port": ctx.url.port, "instance": ctx.instance}))


def _supervisor_by_scheduler(ctx: core.CallContext, timeout: float) -> int | None:
    """The live supervisor of this PC whose pid file is in the data folder the stack's
    scheduler names (None: a broker elsewhere, no answer, or none there)."""
    from tomato_mqtt.services.launch import live_supervisor

    if ctx.url.host not in core.LOCAL_HOSTS:
        return None
    datadir = (core.status_section(ctx, "scheduler", timeout) or {}).get("datadir")
    return live_supervisor(Path(datadir), ctx.url.port) if isinstance(datadir, str) else None


def _ask_again(ctx: core.CallContext, args: Mapping[str, Any]) -> None:
    """The stop asked once more, quietly: the scheduler that took it may have restarted
    since (a repeated stop of a stopping stack is answered "stopping" again)."""
    from tomato_mqtt.transport import oneshot

    with contextlib.suppress(oneshot.OneShotError):
        oneshot.request(
            ctx.url,
            ctx.topics.scheduler_cmd("stop"),
            ctx.topics.reply,
            dict(args),
            timeout=2.0,
            who="scheduler",
        )
