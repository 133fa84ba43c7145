"""``tomato status [section]`` and ``tomato reload``: ask the scheduler about the stack."""

from __future__ import annotations

import enum
from typing import Annotated

import typer

from tomato_mqtt.cli import common, status_text

__all__ = ["Section", "app"]

# merged into ``tomato`` (no name): ``tomato status``, ``tomato reload``
app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)


class Section(str, enum.Enum):
    scheduler = "scheduler"
    pipelines = "pipelines"
    devices = "devices"
    components = "components"
    nodes = "nodes"
    drivers = "drivers"
    tomato = "tomato"  # tomato's name of the default section: the scheduler


@app.command()
@common.options(common.CLIENT)
def status(
    section: Annotated[
        Section, typer.Argument(help="what to show", case_sensitive=False)
    ] = Section.scheduler,
    *,
    opts: common.Opts,
) -> None:
    """Show the scheduler, or its pipelines, devices, components, nodes or drivers."""
    status_text.show(opts, section.value)


@app.command()
@common.options(common.CLIENT, timeout=10.0)
def reload(opts: common.Opts) -> None:
    """Re-read settings and devices; refused if it would touch a running job."""
    common.ask_scheduler(opts, "reload", {})
