"""``tomato broker|scheduler|recorder|node|supervise``: run one service in the foreground.

For systemd, Windows services, an instrument PC (``tomato node``), and for the
supervisor that ``tomato start`` launches. The services (and amqtt, xarray) are imported
inside the commands, so that ``tomato status`` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from tomato_mqtt.cli import common
from tomato_mqtt.cli import user as _user
from tomato_mqtt.cli.common import fail

__all__ = ["app", "service_args"]

# merged into ``tomato`` (no name): ``tomato scheduler`` etc.
app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)

VerboseOpt = Annotated[int, typer.Option("-v", "--verbose", count=True, help="more logging")]
QuietOpt = Annotated[int, typer.Option("-q", "--quiet", count=True, help="less logging")]


def service_args(s: Any) -> list[str]:
    """The options that give a child service the same settings as ``s`` (a Settings)."""
    return ["-A", str(s.appdir), "-D", str(s.datadir), "-L", str(s.logdir), "-p", str(s.mqtt.port)]


@app.command()
@common.options(common.LOCAL)
def broker(opts: common.Opts) -> None:
    """Run the embedded MQTT broker in the foreground."""
    try:
        from tomato_mqtt_broker import run_broker
    except ImportError:
        fail("the embedded broker is not installed here: pip install tomato-mqtt-broker")
    from tomato_mqtt.services.base import setup_logging

    s = opts.settings()
    setup_logging("broker", s.logdir)
    from tomato_mqtt.services.supervisor import EXIT_CANNOT_LISTEN, LISTEN_FD_ENV

    # socket activation: the supervisor bound the MQTT port and hands its socket down
    fd = os.environ.get(LISTEN_FD_ENV, "")
    try:
        config = _user.broker_config(s)
        config.listen_fd = int(fd) if fd.isdigit() else None
        run_broker(config)
    except ValueError as e:  # BrokerConfigError: an insecure or impossible set-up
        fail(f"the broker refuses to start: {e}")
    except OSError as e:  # a port is taken: the supervisor gives up on this exit code
        fail(str(e), code=EXIT_CANNOT_LISTEN)


@app.command()
@common.options(common.LOCAL)
def scheduler(opts: common.Opts, verbose: VerboseOpt = 0, quiet: QuietOpt = 0) -> None:
    """Run the scheduler in the foreground."""
    from tomato_mqtt.config.settings import settings_url
    from tomato_mqtt.errors import ConfigError
    from tomato_mqtt.services.base import setup_logging
    from tomato_mqtt.services.scheduler.service import SchedulerService
    from tomato_mqtt.services.supervisor import EXIT_STOP_REQUESTED

    s = opts.settings()
    setup_logging("scheduler", s.logdir, verbose - quiet)
    _user.ensure_services(s, ["scheduler"])  # a secured stack: its own login
    svc = SchedulerService(s, url=_user.service_url(s, "scheduler", settings_url(s)))
    try:
        svc.run_sync()
    except ConfigError as e:
        fail(str(e))
    if svc.exit_requested:
        raise typer.Exit(EXIT_STOP_REQUESTED)


@app.command()
@common.options(common.LOCAL)
def recorder(opts: common.Opts, verbose: VerboseOpt = 0, quiet: QuietOpt = 0) -> None:
    """Run the recorder in the foreground."""
    from tomato_mqtt.config.settings import settings_url
    from tomato_mqtt.services.base import setup_logging
    from tomato_mqtt.services.recorder.service import RecorderService

    s = opts.settings()
    setup_logging("recorder", s.logdir, verbose - quiet)
    _user.ensure_services(s, ["recorder"])
    svc = RecorderService(
        _user.service_url(s, "recorder", settings_url(s)),
        s.mqtt.instance,
        s.recorder_db,
        heartbeat=s.scheduler.heartbeat,
        output_roots=s.output_roots,
        users_file=s.users_file,
    )
    svc.run_sync()


@app.command()
@common.options(("broker", "instance", *common.LOCAL))
def node(
    name: Annotated[str | None, typer.Option("--name", "-n", help="node name")] = None,
    *,
    opts: common.Opts,
    spool_dir: Annotated[Path | None, typer.Option("--spool-dir", help="spool folder")] = None,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = 0,
) -> None:
    """Run a driver node in the foreground (e.g. on an instrument PC)."""
    from tomato_mqtt.services.base import setup_logging
    from tomato_mqtt.services.node.service import NodeConfig, NodeService

    ctx = opts.context()
    s = ctx.settings
    node_name = name or s.node.name
    # a node started by hand without -A/-L logs to the console only
    logdir = s.logdir if opts.logdir or opts.appdir else None
    setup_logging(f"node-{node_name}", logdir, verbose - quiet)
    # the local node of a secured stack logs in as its own service user
    if not opts.broker:
        _user.ensure_services(s, [f"node:{node_name}"])
    url = ctx.url if opts.broker else _user.service_url(s, f"node:{node_name}", ctx.url)
    svc = NodeService(
        NodeConfig(
            node_name,
            url,
            ctx.instance,
            spool_dir or s.spool_dir,
            heartbeat=s.scheduler.heartbeat,
            batch_interval=s.node.batch_interval,
            batch_max_points=s.node.batch_max_points,
            spool_max_bytes=int(s.node.spool_max_mb * 2**20),
            driver_settings=s.drivers,
            upstream_env=s.upstream_env,
        )
    )
    svc.run_sync()


@app.command(hidden=True)
@common.options(common.LOCAL)
def supervise(opts: common.Opts, verbose: VerboseOpt = 0, quiet: QuietOpt = 0) -> None:
    """Run the local stack under supervision (started by ``tomato start``)."""
    import asyncio

    from tomato_mqtt.services.base import setup_logging
    from tomato_mqtt.services.supervisor import Supervisor, pidfile_path

    s = opts.settings()
    setup_logging("supervisor", s.logdir)
    _user.ensure_services(s)
    sup = Supervisor(
        service_args(s),
        logdir=s.logdir,
        pidfile=pidfile_path(s.datadir, s.mqtt.port),
        embedded_broker=s.broker.embedded,
        broker_host=s.broker.host,
        port=s.mqtt.port,
        node_name=s.node.name,
        service_flags=["-v"] * verbose + ["-q"] * quiet,
        dashboard=s.dashboard.enabled,
    )
    raise typer.Exit(asyncio.run(sup.run()))
