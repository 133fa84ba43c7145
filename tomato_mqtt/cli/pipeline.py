"""``tomato pipeline``: load a sample into a pipeline, eject it, mark a pipeline ready."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tomato_mqtt.cli import common
from tomato_mqtt.cli.common import (
    AppDirOpt,
    BrokerOpt,
    InstanceOpt,
    JsonOpt,
    Output,
    PortOpt,
    TimeoutOpt,
    YamlOpt,
)

__all__ = ["app"]

app = typer.Typer(
    name="pipeline",
    help="Load, eject and mark pipelines ready.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

PipelineArg = Annotated[str, typer.Argument(help="pipeline name, e.g. pip-counter-1")]


def _call(
    op: str,
    args: dict[str, Any],
    port: int | None,
    broker: str | None,
    instance: str | None,
    appdir: Path | None,
    timeout: float,
    yaml_: bool,
    json_: bool,
) -> None:
    ctx = common.context(port=port, broker=broker, instance=instance, appdir=appdir)
    reply = common.run_request(ctx, ctx.topics.scheduler_cmd(op), args, timeout=timeout)
    Output(yaml_, json_).reply(reply, lambda _p: reply.msg)


@app.command()
def load(
    pipeline: PipelineArg,
    sample: Annotated[str, typer.Argument(help="sample name, as in the payload")],
    port: PortOpt = None,
    broker: BrokerOpt = None,
    instance: InstanceOpt = None,
    appdir: AppDirOpt = None,
    timeout: TimeoutOpt = 5.0,
    yaml_: YamlOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Load a sample into an empty pipeline."""
    _call(
        "pipeline_load",
        {"pipeline": pipeline, "sample": sample},
        port,
        broker,
        instance,
        appdir,
        timeout,
        yaml_,
        json_,
    )


@app.command()
def eject(
    pipeline: PipelineArg,
    port: PortOpt = None,
    broker: BrokerOpt = None,
    instance: InstanceOpt = None,
    appdir: AppDirOpt = None,
    timeout: TimeoutOpt = 5.0,
    yaml_: YamlOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Remove the sample from a pipeline and mark it not ready (refused while a job runs)."""
    _call(
        "pipeline_eject",
        {"pipeline": pipeline},
        port,
        broker,
        instance,
        appdir,
        timeout,
        yaml_,
        json_,
    )


@app.command()
def ready(
    pipeline: PipelineArg,
    port: PortOpt = None,
    broker: BrokerOpt = None,
    instance: InstanceOpt = None,
    appdir: AppDirOpt = None,
    timeout: TimeoutOpt = 5.0,
    yaml_: YamlOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Mark a pipeline ready: a matching job for its sample may now run on it."""
    _call(
        "pipeline_ready",
        {"pipeline": pipeline},
        port,
        broker,
        instance,
        appdir,
        timeout,
        yaml_,
        json_,
    )
