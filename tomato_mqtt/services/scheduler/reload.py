"""``tomato reload``: the scheduler's one way to take a changed configuration.

The new settings and devices file are loaded and compared with the running ones; a
change that touches a running job's pipeline, components or driver settings is refused
whole (nothing changes), anything else is applied and pushed to the nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import JsonValue

from tomato_mqtt.config.devices import load_devices
from tomato_mqtt.config.nodehint import node_command
from tomato_mqtt.config.settings import load_settings
from tomato_mqtt.errors import ConfigError
from tomato_mqtt.transport.rpc import CommandError, Result
from tomato_mqtt.waits import wait_for
from tomato_mqtt.wire.commands import NoArgs

if TYPE_CHECKING:
    from tomato_mqtt.services.scheduler.ops import SchedulerOps

__all__ = ["reload"]

log = logging.getLogger(__name__)


async def reload(ops: SchedulerOps, args: Mapping[str, JsonValue]) -> Result:
    """``tomato reload``: apply a changed settings.toml and devices file, unless the
    change touches a running job (then nothing changes; the reply says what it would touch).
    """
    ops.access.require("reload")
    NoArgs.model_validate(args)
    svc = ops.svc
    old = svc.settings
    try:
        new_settings = load_settings(
            appdir=old.appdir,
            datadir=old.datadir,
            logdir=old.logdir,
            port=old.mqtt.port,
            host=old.mqtt.host,
        )
        new_layout = load_devices(new_settings.devices_file, new_settings.node.name)
    except ConfigError as e:
        log.warning("reload refused, nothing changed: %s", e)
        raise CommandError(f"reload refused, nothing changed: {e}") from None
    old_layout = svc.layout
    diff = old_layout.diff(new_layout)
    busy_components: set[str] = set()
    busy_pipelines: set[str] = set()
    for job in ops.store.jobs(statuses=["r", "rd"]):
        if job.pipeline:
            busy_pipelines.add(job.pipeline)
            lay = svc.layout.pipelines.get(job.pipeline)
            if lay:
                busy_components.update(lay.roles.values())
    touched = []
    for name in busy_pipelines:
        if svc.layout.pipelines.get(name) != new_layout.pipelines.get(name):
            touched.append(f"pipeline {name}")
    for name in busy_components:
        if svc.layout.components.get(name) != new_layout.components.get(name):
            touched.append(f"component {name}")
        drv = svc.layout.components[name].driver
        if old.drivers.get(drv) != new_settings.drivers.get(drv):
            touched.append(f"settings of driver {drv}")
    if touched:
        why = (
            "reload refused, nothing changed: it would modify "
            + ", ".join(sorted(set(touched)))
            + " of a running job"
        )
        log.warning("%s", why)
        raise CommandError(why, code="conflict")
    removed_pips = set(svc.layout.pipelines) - set(new_layout.pipelines)
    holding = [
        f"{p.name} (sample {p.sampleid!r})"
        for p in ops.store.pipelines()
        if p.name in removed_pips and p.sampleid is not None
    ]
    if holding:  # the sample went with the pipeline, without a word (a fault-injection
        # review: reloading the old file back brought the pipelines back empty)
        why = (
            "reload refused, nothing changed: it would remove pipeline(s) "
            + ", ".join(sorted(holding))
            + ", which hold a sample: eject it first (tomato pipeline eject NAME)"
        )
        log.warning("%s", why)
        raise CommandError(why, code="conflict")
    drivers_changed = sorted(
        d
        for d in set(old.drivers) | set(new_settings.drivers)
        if old.drivers.get(d) != new_settings.drivers.get(d)
    )
    # stored first: a state file that takes no writes refuses the reload whole (it was
    # answered "not done" with the new layout in use all the same, and the next reload
    # found "no changes" while it added the pipelines: a fault review)
    ops.store.sync_pipelines(new_layout.pipelines)
    svc.settings = new_settings
    # the submit limits are checked by the access rules: they held the settings of the
    # start, so a reload said "[jobs]" and changed nothing (an outside fault run)
    ops.access.settings = new_settings
    svc.layout = new_layout
    for name in removed_pips:
        await svc.clear_pipeline(name)
    for p in ops.store.pipelines():
        await svc.publish_pipeline(p.name)
    # the components added (a component's name holds its driver: a driver changed is a
    # component added) and their metas before the nodes take the new layout: a driver
    # their node cannot load is said in the answer (a misspelt driver was "reload done",
    # exit 0, the jobs left queued: a newcomer's tour)
    watched = {
        n: svc.metas.get(n)
        for n in diff.added_components
        if n in new_layout.components
        and (host := svc.nodes.get(new_layout.components[n].node)) is not None
        and host.state == "online"
    }
    await svc.configure_nodes()
    svc.kick()
    loaded = await _metas_after(svc, watched, RELOAD_WAIT)
    what = _describe_diff(diff)
    if drivers_changed:  # not part of the layout's diff, but a change all the same
        more = f"settings of driver(s): {', '.join(drivers_changed)}"
        what = more if what == "no changes" else f"{what}; {more}"
    if old.jobs != new_settings.jobs:  # applied from now on (submits, retention)
        what = "[jobs]" if what == "no changes" else f"{what}; [jobs]"
    # sections the running services read once, at their start: say so, not "no changes"
    first = svc.started_with
    later = [f"[{k}]" for k in _AT_START if getattr(first, k) != getattr(new_settings, k)]
    if "[mqtt]" not in later and _file_port(new_settings) not in (None, first.mqtt.port):
        # (read with the running port, which a changed `port =` in the file never showed:
        # "no changes", and the next CLI call went to the new port: an outside run)
        later.insert(0, "[mqtt]")
    if later:
        what += (
            f"; {', '.join(later)} changed, which reload does not apply: they take effect "
            "when the stack restarts (tomato stop, then tomato start)"
        )
    uninstalled = sorted(  # their nodes look for the drivers again: said (it said "no
        # changes" while it registered two components: a driver author's tour)
        name
        for name in new_layout.components
        if (m := svc.metas.get(name)) is not None and "is not installed" in (m.error or "")
    )
    if uninstalled:
        looked = (
            f"the nodes look again for the drivers of {len(uninstalled)} component(s) not "
            f"installed before ({', '.join(uninstalled)})"
        )
        what = looked if what == "no changes" else f"{what}; {looked}"
    for name, meta in sorted(loaded.items()):
        if meta.error and not meta.registered:
            what += f"; warning: component {name} cannot register: {meta.error}"
            if "is not installed" in meta.error and (has := _installed_on(svc, meta.driver)):
                # the driver is on another PC's node (a newcomer's tour: the device had no
                # `node:`, and the warning advised installing a package that exists nowhere)
                what += (
                    f" (node(s) {', '.join(map(repr, has))} have driver {meta.driver!r}: "
                    f"give the device `node: {has[0]}` in the devices file, then reload)"
                )
    pending = sorted(
        n for n in watched if not ((m := loaded.get(n)) is not None and (m.registered or m.error))
    )
    if pending:  # no last word within the wait (a driver that takes 15 s to connect was
        # not mentioned at all: a driver author's tour)
        what += (
            f"; component(s) {', '.join(pending)} not registered yet after {RELOAD_WAIT:g} s "
            "(a driver still connecting?): `tomato status components` shows when they are"
        )
    if new_layout.ignored:  # said at every reload: the user is looking at the file now
        what += "; warning: " + "; warning: ".join(new_layout.ignored)
    offline: dict[str, list[str]] = {}  # node -> its components, for nodes not online
    for name, c in new_layout.components.items():
        n = svc.nodes.get(c.node)
        if n is None or n.state != "online":
            offline.setdefault(c.node, []).append(name)
    for node, comps in sorted(offline.items()):  # as `tomato start` says it (it said
        # "reload done" only, and the jobs waited: a newcomer's tour)
        n = svc.nodes.get(node)
        if node == new_settings.node.name and n is not None:
            # the stack's own node, which its supervisor runs: not "start it on its PC"
            # of one that was only stalled (SIGSTOP: a randomized fault round)
            what += (
                f"; warning: node {node!r} (this stack's own, run by tomato start) is "
                f"{n.state}, so {len(comps)} component(s) cannot register "
                f"({', '.join(sorted(comps))}) until it answers again: `tomato status "
                "nodes` says since when"
            )
            continue
        what += (
            f"; warning: node {node!r} is not online, so {len(comps)} component(s) cannot "
            f"register ({', '.join(sorted(comps))}): start it on its PC "
            f"({node_command(new_settings, node, new_settings.mqtt.port)})"
        )
    broker = new_settings.broker
    moved = [  # to another node: the rules name each node's components (not pollrate…)
        n
        for n in diff.changed_components
        if n in old_layout.components
        and n in new_layout.components
        and old_layout.components[n].node != new_layout.components[n].node
    ]
    # an external broker's rules were written from the devices file before
    if (diff.added_components or moved) and broker.password_file and not broker.embedded:
        # (the node's messages of a component they lack are dropped without a word:
        # "unregistered", error null, for good: an admin's tour)
        what += (
            "; warning: the broker is not the embedded one: write its rules again "
            "(tomato broker-config) and have it read them, or the nodes cannot serve "
            "the components added or moved (docs/security.md)"
        )
    log.info("reload done: %s", what)  # (nothing in the log told what a reload changed)
    return Result("reload done: " + what, _jsonable_diff(diff))


#: s at most a reload waits for the metas of the components it added on online nodes
#: (a node registers a component, or says why not, within ~0.1 s; a loaded CI box took
#: over 2 s once)
RELOAD_WAIT = 5.0


async def _metas_after(svc: Any, before: Mapping[str, Any], within: float) -> dict[str, Any]:
    """The metas the nodes published for the components of ``before`` (name -> its meta
    then) within ``within`` s: those come, or those come in time (woken by each meta the
    scheduler takes, ``svc.cond``)."""

    def new() -> dict[str, Any]:
        return {n: m for n in before if (m := svc.metas.get(n)) is not before[n] and m}

    def all_said() -> bool:
        # a meta that says neither (registering) is not the last word yet (a review)
        return sum(1 for m in new().values() if m.registered or m.error) == len(before)

    with contextlib.suppress(asyncio.TimeoutError):
        async with svc.cond:
            await wait_for(svc.cond.wait_for(all_said), within)
    return new()


def _file_port(settings: Any) -> int | None:
    """The ``[mqtt] port`` settings.toml says now (None: it says none, or cannot be read)."""
    from tomato_mqtt.config.settings import _read_toml

    path = settings.appdir / "settings.toml" if settings.appdir else None
    try:
        data = _read_toml(path) if path is not None else {}
    except ConfigError:
        return None
    port = (data.get("mqtt") or {}).get("port")
    return port if isinstance(port, int) else None


#: settings.toml sections the services read when they start (reload cannot apply them)
_AT_START = ("mqtt", "broker", "scheduler", "recorder", "node", "dashboard")


def _jsonable_diff(diff: Any) -> JsonValue:
    if hasattr(diff, "model_dump"):
        return diff.model_dump(mode="json")  # type: ignore[no-any-return]
    if hasattr(diff, "__dict__"):
        return {k: sorted(v) if isinstance(v, set) else v for k, v in vars(diff).items()}
    return str(diff)


def _describe_diff(diff: Any) -> str:
    d = _jsonable_diff(diff)
    if isinstance(d, dict):
        parts = [
            f"{k}: {', '.join(map(str, v))}" for k, v in d.items() if isinstance(v, list) and v
        ]
        return "; ".join(parts) or "no changes"
    return str(d)


def _installed_on(svc: Any, driver: str) -> list[str]:
    """The online nodes that have ``driver`` installed (as their statuses say)."""
    return sorted(
        name
        for name, st in svc.nodes.items()
        if st.state == "online"
        and (info := st.drivers.get(driver)) is not None
        and info.error is None
    )
