"""``tomato status [section]`` and ``tomato reload``: ask the scheduler about the stack."""

from __future__ import annotations

import enum
from typing import Annotated, Any

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
        Section,
        typer.Argument(
            # (the choices as the metavar were cut mid-word off a terminal: "componen ts")
            metavar="[SECTION]",
            help="what to show: scheduler (the default; tomato's name: tomato), pipelines,"
            " devices, components, nodes or drivers",
            case_sensitive=False,
        ),
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


def _node_away(row: Any, name: str) -> str:
    """What the scheduler's view of node ``name`` (its row of `tomato status nodes`) adds
    to a request it did not answer ("" if nothing): a node cut off from the network read
    as "is it running?" while the scheduler had it as lost (a randomized fault run; the
    same as passata says of a component's node)."""
    if not isinstance(row, dict):
        return ""
    state, age, silent = row.get("state"), row.get("heartbeat_age"), row.get("silent")
    if state not in (None, "online"):
        return f"; the scheduler has node {name} as {state} (`tomato status nodes`)"
    if silent is None:  # a scheduler of an older version: its default heartbeat's 2.5
        silent = isinstance(age, (int, float)) and age > 5
    # (by the scheduler's judgement: a fixed 5 s called a node with a longer heartbeat
    # setting, on time, "stands still": a review)
    if silent and isinstance(age, (int, float)):
        return (
            f"; the scheduler's last status of node {name} came {age:.0f} s ago: it stands "
            "still or is cut off"
        )
    return ""


@app.command("restart-node")
@common.options(common.CLIENT)
def restart_node(
    name: Annotated[str, typer.Argument(help="the node's name (tomato status nodes)")] = "local",
    force: Annotated[
        bool,
        typer.Option("--force", help="also while it runs tasks (their jobs end ce)"),
    ] = False,
    *,
    opts: common.Opts,
) -> None:
    """Restart a node: its drivers are loaded anew (refused while it runs tasks)."""
    # a driver fixed on disk was used only once its node restarted, and no command did
    # that: an author killed the node's process (a driver author's tour)
    import time

    from tomato_mqtt.cli import core
    from tomato_mqtt.cli.start_core import Done

    ctx = opts.context()
    # a misspelt name waited the whole timeout for "no node pc9 answered … is it
    # running?" (a newcomer's tour): the scheduler's list of nodes says it at once
    nodes = core.status_section(ctx, "nodes", min(opts.timeout, 1.0))
    known = None if nodes is None else set(nodes)
    if known is not None and name not in known:
        common.fail(
            f"no node {name!r} ({ctx.where()}; known: {', '.join(sorted(known)) or 'none'}:"
            " `tomato status nodes`)"
        )
    away = _node_away(nodes.get(name) if nodes is not None else None, name)

    def ask(args: dict[str, object]) -> Any:
        return core.run_request(
            ctx,
            ctx.topics.node_cmd(name, "shutdown"),
            args,
            timeout=opts.timeout,
            who=f"node {name}",
            unanswered=(
                f"{away} (a node that reads it more than 2 s after this, or at all after"
                " standing still, e.g. stopped with SIGSTOP, does not carry this out when it"
                " wakes up; one that reads it sooner may: `tomato status nodes` shows it back)"
            ),
        )

    # a node that stood still and reads it after this does not carry it out (it
    # restarted when it woke up, after this command said it failed: fault injection)
    reply = ask({"force": force, "deadline": round(time.time() + opts.timeout, 3)})
    if not reply.success and reply.code == "bad_request" and "deadline" in (reply.msg or ""):
        reply = ask({"force": force})  # a node of an older version: without it
    if not reply.success:
        opts.output().reply(reply)
    said = reply.msg or ""
    if "(tomato start) starts it again" in said:  # the node says which (this version on)
        text = f"{said} (`tomato status nodes` shows it back)"
    elif "so it stays stopped" in said:
        text = said
    else:  # an older node: both cases
        text = (
            f"{said}: a node of `tomato start` is started again by its supervisor, "
            "with its drivers loaded anew (`tomato status nodes` shows it back); one run "
            f"by `tomato node --name {name}` on its own PC stops: start it again there"
        )
    opts.output().reply(Done(text, {"node": name}))
