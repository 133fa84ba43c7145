"""``tomato init``, ``start`` and ``stop``: set up the local stack, run it in the background.

``start`` is declared here for typer; its body is :func:`.start_core.start` (the fast
path runs it without typer): it launches the supervisor detached and waits, on MQTT,
until the scheduler answers and every component is registered.
"""

from __future__ import annotations

import time
from typing import Annotated

import typer

from tomato_mqtt.cli import common, core, start_core
from tomato_mqtt.cli.common import fail
from tomato_mqtt.cli.start_core import Done, alive

__all__ = ["app"]

#: s more that `tomato stop --force` waits: the scheduler's FORCE_STOP_WAIT for the
#: cancelled jobs (services/scheduler/ops.py)
FORCE_STOP_WAIT = 30.0

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
    opts.output().reply(Done(msg, {"written": [str(p) for p in written]}))


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
    from tomato_mqtt.services.supervisor import pidfile_path, read_pidfile

    ctx = opts.context()
    reply = common.run_request(
        ctx,
        ctx.topics.scheduler_cmd("stop"),
        {"force": True} if force else {},
        timeout=min(opts.timeout, 5),
        # a scheduler that is only slow (stopped, swapped out) gets the request later and
        # stops the stack then (a fault-injection run: "is it running?", then it stopped)
        unanswered=(
            "; if it is only slow, it may still stop the stack when it gets to the request"
            " (`tomato status` shows whether it runs)"
        ),
        unreachable="nothing to stop, tomato-mqtt is not running there: ",
    )
    if not reply.success:
        opts.output().reply(reply)
    from tomato_mqtt.config.settings import load_settings
    from tomato_mqtt.errors import ConfigError

    try:  # (not ctx.settings, which exits on a bad file)
        s = load_settings(
            appdir=core.as_path(ctx.appdir),
            datadir=core.as_path(ctx.datadir),
            logdir=core.as_path(ctx.logdir),
            port=ctx.port,
        )
    except ConfigError as e:
        # the scheduler took the request and stops the stack: said, with why this call
        # cannot wait for it (it said "error: ...settings.toml... invalid TOML", exit 1,
        # and the stack stopped: a newcomer's tour)
        opts.output().reply(
            Done(
                f"tomato-mqtt on port {ctx.url.port} is stopping (the scheduler took the "
                f"request); not waited for, as the settings cannot be read: {e}",
                {"port": ctx.url.port, "instance": ctx.instance},
            )
        )
        return
    info = read_pidfile(pidfile_path(s.datadir, ctx.url.port)) if s else None
    if info:
        pid = int(str(info.get("pid")))
        # --force: the cancelled jobs' tasks stop and their files are written first
        # (said as waited: "did not stop within 20 s" came after 50 s, a review)
        waited = opts.timeout + (FORCE_STOP_WAIT if force else 0.0)
        deadline = time.monotonic() + waited
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive(pid):
            fail(f"the supervisor (pid {pid}) did not stop within {waited:g} s")
    msg = f"tomato-mqtt on port {ctx.url.port} stopped"
    if force and reply.msg != "stopping tomato-mqtt":  # the jobs it cancelled first: said
        msg = f"{reply.msg}; {msg}"
    opts.output().reply(Done(msg, {"port": ctx.url.port, "instance": ctx.instance}))
