"""``--version`` on ``tomato``, ``ketchup`` and ``passata``."""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = ["add_version"]


def _show_version(ctx: typer.Context, value: bool) -> None:
    if value:
        from tomato_mqtt import __version__

        # tomato 2.2's words ("tomato version 2.2"), so that a script that reads the
        # version after "version" reads ours; which tomato, after it
        typer.echo(f"{ctx.find_root().info_name} version {__version__} (tomato-mqtt)")
        raise typer.Exit()


VersionOpt = Annotated[
    bool,
    typer.Option(
        "--version", help="print the version and exit", is_eager=True, callback=_show_version
    ),
]


def _version_main(version: VersionOpt = False) -> None:
    pass


def add_version(app: typer.Typer) -> None:
    """``--version`` on an app (an eager option of its callback)."""
    app.callback()(_version_main)
