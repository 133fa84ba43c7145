"""``tomato drivers``: install upstream tomato driver packages, list every driver.

Local to this PC (the node that runs here): upstream drivers go into the node's own venv
(``[node] upstream_env``, default ``<datadir>/upstream-drivers``), never into
tomato-mqtt's environment, whose ``tomato``/``ketchup``/``passata`` they would replace.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Annotated, Any

import typer

from tomato_mqtt.cli import common

__all__ = ["app"]

app = typer.Typer(
    cls=common.CommandFirst,
    name="drivers",
    help="Install upstream tomato driver packages; list native and upstream drivers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_OPTS = (*common.LOCAL, "yaml", "json")


@app.command()
@common.options(_OPTS)
def install(
    requirements: Annotated[
        list[str], typer.Argument(help="pip requirements, e.g. tomato-psutil or ./my-driver")
    ],
    opts: common.Opts,
    upgrade: Annotated[bool, typer.Option("--upgrade", "-U", help="upgrade if installed")] = False,
) -> None:
    """Install tomato driver packages (from PyPI) into the node's upstream-driver venv."""
    from tomato_mqtt.driver.upstream.env import UpstreamEnv

    s = opts.settings()
    env = UpstreamEnv(s.upstream_env)
    before = env.drivers()
    try:
        took = env.install(requirements, upgrade=upgrade)
    except RuntimeError as e:
        common.fail(str(e))
    after = env.drivers()
    new = [n for n in after if n not in before or before[n] != after[n]]
    names = ", ".join(f"{n} ({after[n].package} {after[n].version})" for n in new) or "none new"
    msg = (
        f"installed {' '.join(requirements)} into {env.path} in {took:.1f} s; drivers: {names}."
        " A running stack uses them after `tomato reload` (a component in a task keeps"
        " the version it started with until a `tomato reload` after the task)."
    )
    data = {
        "env": str(env.path),
        "seconds": round(took, 1),
        "drivers": {n: {"package": d.package, "version": d.version} for n, d in after.items()},
    }
    opts.output().reply(SimpleNamespace(success=True, msg=msg, data=data), lambda _d: msg)


@app.command("list")
@common.options(_OPTS)
def list_(opts: common.Opts) -> None:
    """List the drivers installed here: native ones and upstream tomato ones."""
    from tomato_mqtt.driver.discovery import all_drivers

    s = opts.settings()
    rows: list[dict[str, Any]] = [
        {
            "name": d.name,
            "source": d.source,
            "package": d.package,
            "version": d.version,
            "used": d.used,
        }
        for d in all_drivers(s.drivers, s.upstream_env)
    ]
    msg = f"{len(rows)} driver(s); upstream environment: {s.upstream_env}"

    def human(_d: Any) -> str:
        cols = [
            ("name", "DRIVER"),
            ("source", "SOURCE"),
            ("package", "PACKAGE"),
            ("version", "VERSION"),
            ("used", "SELECTED"),
        ]
        return common.table(rows, cols) + "\n" + msg

    reply = SimpleNamespace(success=True, msg=msg, data=rows)
    opts.output().reply(reply, human)
