"""``tomato pipeline``: load a sample into a pipeline, eject it, mark a pipeline ready."""

from __future__ import annotations

from typing import Annotated

import typer

from tomato_mqtt.cli import common
from tomato_mqtt.cli.core import ask_scheduler

__all__ = ["app"]

app = typer.Typer(
    cls=common.CommandFirst,
    name="pipeline",
    help="Load, eject and mark pipelines ready.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

PipelineArg = Annotated[str, typer.Argument(help="pipeline name, e.g. pip-counter-1")]


@app.command()
@common.options(common.CLIENT)
def load(
    pipeline: PipelineArg,
    sample: Annotated[str, typer.Argument(help="sample name, as in the payload")],
    opts: common.Opts,
) -> None:
    """Load a sample into an empty pipeline."""
    ask_scheduler(opts, "pipeline_load", {"pipeline": pipeline, "sampleid": sample})


@app.command()
@common.options(common.CLIENT)
def eject(pipeline: PipelineArg, opts: common.Opts) -> None:
    """Remove the sample from a pipeline and mark it not ready (refused while a job runs)."""
    ask_scheduler(opts, "pipeline_eject", {"pipeline": pipeline})


@app.command()
@common.options(common.CLIENT)
def ready(pipeline: PipelineArg, opts: common.Opts) -> None:
    """Mark a pipeline ready: a matching job for its sample may now run on it."""
    ask_scheduler(opts, "pipeline_ready", {"pipeline": pipeline})
