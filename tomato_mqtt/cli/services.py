"""``tomato broker|scheduler|recorder|node|supervise``: run one service in the foreground.

For systemd, Windows services, an instrument PC (``tomato node``), and for the
supervisor that ``tomato start`` launches. These are the typer faces of the commands
(``--help``, messages about bad options); the bodies are in :mod:`.serve`, which the
supervisor runs without typer. The services (and amqtt, netCDF4) are imported inside
the bodies, so that ``tomato status`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tomato_mqtt.cli import common, serve
from tomato_mqtt.cli.serve import service_args

__all__ = ["app", "service_args"]

# merged into ``tomato`` (no name): ``tomato scheduler`` etc.
app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)

# the service's own logging (a name of their own: the common -v/-q are the CLI's)
VerboseOpt = Annotated[int, common.counter("-v", "--verbose", "more logging (-vv)")]
QuietOpt = Annotated[int, common.counter("-q", "--quiet", "less logging (-qq)")]


@app.command()
@common.options(common.LOCAL)
def broker(opts: common.Opts) -> None:
    """Run the embedded MQTT broker in the foreground."""
    serve.broker(opts)


@app.command()
@common.options(common.LOCAL)
def scheduler(opts: common.Opts, more: VerboseOpt = 0, less: QuietOpt = 0) -> None:
    """Run the scheduler in the foreground."""
    serve.scheduler(opts, more - less)


@app.command()
@common.options(common.LOCAL)
def recorder(opts: common.Opts, more: VerboseOpt = 0, less: QuietOpt = 0) -> None:
    """Run the recorder in the foreground."""
    serve.recorder(opts, more - less)


@app.command()
@common.options(("broker", "instance", *common.LOCAL))
def node(
    name: Annotated[str | None, typer.Option("--name", "-n", help="node name")] = None,
    *,
    opts: common.Opts,
    spool_dir: Annotated[Path | None, typer.Option("--spool-dir", help="spool folder")] = None,
    more: VerboseOpt = 0,
    less: QuietOpt = 0,
) -> None:
    """Run a driver node in the foreground (e.g. on an instrument PC)."""
    serve.node(opts, name, spool_dir, more - less)


@app.command(hidden=True)
@common.options(common.LOCAL)
def supervise(opts: common.Opts, more: VerboseOpt = 0, less: QuietOpt = 0) -> None:
    """Run the local stack under supervision (started by ``tomato start``)."""
    import asyncio

    from tomato_mqtt.services.base import setup_logging
    from tomato_mqtt.services.supervisor import Supervisor, pidfile_path

    s = opts.settings()
    setup_logging("supervisor", s.logdir)
    serve.ensure_services(s)
    sup = Supervisor(
        service_args(s),
        logdir=s.logdir,
        pidfile=pidfile_path(s.datadir, s.mqtt.port),
        embedded_broker=s.broker.embedded,
        broker_host=s.broker.host,
        port=s.mqtt.port,
        node_name=s.node.name,
        service_flags=["-v"] * more + ["-q"] * less,
        dashboard=s.dashboard.enabled,
    )
    raise typer.Exit(asyncio.run(sup.run()))
