"""``passata attrs|capabilities|constants|get|set``: a component's attributes and facts.

Merged into ``passata`` (see passata.py). Attributes and their limits come from the
retained meta the node publishes; current values from the node (``get_attr``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import typer

from tomato_mqtt.cli import common, components, passata_core
from tomato_mqtt.cli.components import ComponentArg, ForceOpt
from tomato_mqtt.cli.output import errors_below
from tomato_mqtt.transport.rpc import NoResponder, Requester
from tomato_mqtt.wire.messages import Reply

__all__ = ["app"]

app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)


@app.command()
@common.options(common.CLIENT)
def attrs(component: ComponentArg, opts: common.Opts) -> None:
    """The component's attributes: type, units, read/write, limits, options, value."""

    user = opts.context().url.username

    async def call(req: Requester, name: str) -> Reply:
        meta = await components.meta(req, name, opts.timeout)
        data: dict[str, Any] = {  # every key of tomato's Attr, unset ones null
            k: v.model_dump(mode="json") for k, v in meta.attrs.items()
        }
        msg = f"{len(data)} attr(s) of {name}"
        if meta.registered and data:
            # each value says why it is missing (they were left out without a word); a
            # login whose role may not read values is told so at once (a reader's rows
            # said "no node … answered … is it running?" after the whole -t: an admin's
            # tour). Asked first: sent beside the values, the whoami went with the
            # connection Aedes closes for the forbidden get_attr
            why = await _may_not(req, user, opts.timeout)
            # a node the scheduler has away: its values waited for briefly (AWAY_WAIT),
            # the attributes shown all the same from the retained meta
            away = components.NODE_AWAY.get()
            wait = min(opts.timeout, components.AWAY_WAIT) if away else opts.timeout
            get = components.cmd("get_attr", {"attrs": sorted(data)}, wait)
            r: Reply | None = None
            try:
                if why is None:
                    r = await get(req, name)
            except NoResponder as e:
                why = (
                    f"{e} — {away}"
                    if away
                    else f"{e} (the node does not answer, or this login may not ask it)"
                )
            if r is None:
                for k in data:
                    data[k]["error"] = f"value not read: {why}"
                return Reply(id="", success=True, msg=f"{msg}; value not read: {why}", data=data)
            if r.success and isinstance(r.data, dict):
                for k, v in r.data.items():
                    if k in data:
                        data[k]["value"] = v
            elif "driver error reading" in r.msg:
                # one attr the driver cannot read: the others' values, its error
                # (every value was dropped without a word: a newcomer's tour)
                for k in sorted(data):
                    one = components.cmd("get_attr", {"attrs": [k]}, opts.timeout)
                    try:
                        r1 = await one(req, name)
                    except NoResponder as e:
                        data[k]["error"] = str(e)
                        continue
                    if r1.success and isinstance(r1.data, dict) and k in r1.data:
                        data[k]["value"] = r1.data[k]
                    else:
                        data[k]["error"] = r1.msg
        return Reply(id="", success=True, msg=msg, data=data)

    components.run(component, call, _attrs_human, opts, asks_node=False)


async def _may_not(req: Requester, user: str | None, timeout: float) -> str | None:
    """Why ``user``'s role may not read a component's values (``whoami`` says the role),
    or None: it may, it is not known, or there is no login (an open stack)."""
    if not user:
        return None
    from tomato_mqtt.config import roles

    try:
        me = await req.request(
            req.topics.scheduler_cmd("whoami"), {}, timeout=min(2.0, timeout), who="scheduler"
        )
    except NoResponder:
        return None
    if not (me.success and isinstance(me.data, dict)):
        return None
    return roles.refusal("component_user_cmd", "get_attr", user, me.data, sent=False)


@app.command()
@common.options(common.CLIENT)
def capabilities(component: ComponentArg, opts: common.Opts) -> None:
    """The techniques the component can run."""
    passata_core.run_meta(
        component, "capabilities", passata_core.capabilities, passata_core.list_human, opts
    )


@app.command()
@common.options(common.CLIENT)
def constants(
    component: ComponentArg,
    names: Annotated[
        list[str] | None, typer.Argument(metavar="[NAMES]...", help="only these constants")
    ] = None,
    *,
    opts: common.Opts,
) -> None:
    """The component's constants (fixed facts the driver reports), or only those named.

    tomato accepts (and ignores) names after the component; here they pick constants,
    and a name that is not one is reported in the message, not as a failure.
    """
    pick = passata_core.constants(list(names or []))
    passata_core.run_meta(component, "constants", pick, passata_core.constants_human, opts)


@app.command()
@common.options(common.CLIENT)
def get(
    component: ComponentArg,
    names: Annotated[list[str], typer.Argument(metavar="ATTRS...", help="attribute names")],
    opts: common.Opts,
) -> None:
    """Read attributes of the component."""
    args = {"attrs": list(names)}
    passata_core.run_cmd(component, "get_attr", args, passata_core.dict_human, opts)


# a value may be negative: "-5" was taken for an option ("No such option: -5", a
# newcomer's tour); an option this command does not have is still refused, as an
# extra argument
@app.command("set", context_settings={"ignore_unknown_options": True})
@common.options(common.CLIENT)
def set_(
    component: ComponentArg,
    attr: Annotated[str, typer.Argument(help="attribute name")],
    val: Annotated[str, typer.Argument(help="new value, e.g. 5, red, '1 s'")],
    force: ForceOpt = False,
    *,
    opts: common.Opts,
) -> None:
    """Set an attribute (the driver converts and checks the value); refused while a task
    runs unless --force."""
    args = {"attr": attr, "val": val, "force": force}
    passata_core.run_cmd(component, "set_attr", args, passata_core.message, opts)


# -- human output --------------------------------------------------------------------------
def _attrs_human(msg: str, data: Any) -> str:
    if not isinstance(data, Mapping) or not data:
        return f"{msg}: none"
    rows = [{"attr": k, **v} for k, v in data.items() if isinstance(v, Mapping)]
    cols = [
        ("attr", "attr"),
        ("type", "type"),
        ("units", "units"),
        ("rw", "rw"),
        ("minimum", "min"),
        ("maximum", "max"),
        ("options", "options"),
    ]
    if any("value" in r or "error" in r for r in rows):
        cols.append(("value", "value"))
    # an error is said whole under the table (a column cut "driver error reading
    # 'tempe…" to its width: a driver author's tour)
    for r in rows:
        if "error" in r and "value" not in r:
            r["value"] = "(error below)"
    notes = [(r["attr"], r["error"]) for r in rows if r.get("error")]
    if len(notes) == len(rows) > 1 and len({e for _, e in notes}) == 1:
        notes = [("every attr", notes[0][1])]  # (a reader's: said once, not per attr)
    return common.table(rows, cols) + errors_below(notes)
