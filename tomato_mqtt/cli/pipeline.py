"""``tomato pipeline``: load a sample into a pipeline, eject it, mark a pipeline ready."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tomato_mqtt.cli import common

__all__ = ["app"]

app = typer.Typer(
    name="pipeline",
    help="Load, eject and mark pipelines ready.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

PipelineArg = Annotated[str, typer.Argument(help="pipeline name, e.g. pip-counter-1")]


def _call(op: str, args: dict[str, Any], opts: common.Opts) -> None:
    ctx = opts.context()
    reply = common.run_request(ctx, ctx.topics.scheduler_cmd(op), args, timeout=opts.timeout)
    opts.output().reply(reply, lambda _p: reply.msg)


@app.command()
@common.options(common.CLIENT)
def load(
    pipeline: PipelineArg,
    sample: Annotated[str, typer.Argument(help="sample name, as in the payload")],
    opts: common.Opts,
) -> None:
    """Load a sample into an empty pipeline."""
    _call("pipeline_load", {"pipeline": pipeline, "sampleid": sample}, opts)


@app.command()
@common.options(common.CLIENT)
def eject(pipeline: PipelineArg, opts: common.Opts) -> None:
    """Remove the sample from a pipeline and mark it not ready (refused while a job runs)."""
    _call("pipeline_eject", {"pipeline": pipeline}, opts)


@app.command()
@common.options(common.CLIENT)
def ready(pipeline: PipelineArg, opts: common.Opts) -> None:
    """Mark a pipeline ready: a matching job for its sample may now run on it."""
    _call("pipeline_ready", {"pipeline": pipeline}, opts)
