"""What ``passata``'s commands on a component's node share, without typer or asyncio:
naming a component, asking it over one connection, and the text views.

passata.py / passata_attrs.py declare the commands; :mod:`tomato_mqtt.cli.fast` runs
``status``, ``get``, ``measure``, ``set``, ``reset`` and ``register`` through
:func:`run_cmd` without importing typer. A component is named as in tomato,
``driver:(address,channel)``, or as ``device/channel``; the latter is resolved through
the scheduler's list of components or, without a scheduler, the retained metas the nodes
publish. Over WebSockets the asyncio path of components.py does the same.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence

from tomato_mqtt import jsonlite
from tomato_mqtt.cli.core import Opts, oneshot_failed, while_broker_restarts
from tomato_mqtt.cli.denied import whoami
from tomato_mqtt.wire.names import (
    RESTARTING,
    RETAINED_WAIT,
    SCHEDULER_WAIT,
    UnknownComponent,
    announced_meta,
    from_scheduler,
    is_full_name,
    not_announced,
    nothing_on,
    pick,
)

TYPE_CHECKING = False  # typing is ~2 ms of a one-request call: for the type checker only
if TYPE_CHECKING:
    from typing import Any

    from tomato_mqtt.transport.oneshot import Exchange, NoAnswer
    from tomato_mqtt.wire.topics import Topics

__all__ = [
    "AWAY_WAIT",
    "READS",
    "RETAINED_WAIT",
    "Refused",
    "capabilities",
    "constants",
    "dict_human",
    "kv",
    "list_human",
    "message",
    "node_away",
    "point_human",
    "resolve",
    "run_cmd",
    "run_meta",
    "show",
    "status_human",
    "waits_briefly",
    "when",
]


class Refused(Exception):
    """A problem found on this side (unknown component, nothing retained)."""


#: ops a node only reads for: sent again (same id) while no answer comes, as the CLI's
#: requests to the scheduler are (oneshot.RESEND_AFTER): a node restarting meanwhile never
#: got the first, the broker drops what nobody subscribes to, and `passata get` said "no
#: node … answered within 20 s" of a node back 0.5 s after it asked (a test of a hung
#: close); a copy costs a read. The ops that act are sent once (a new node process does
#: not know what its predecessor carried out)
READS = frozenset({"get_attr", "status"})

#: s a request waits for a node the scheduler has as not online (:func:`node_away`), not
#: the whole ``-t``: enough for a node coming back meanwhile (READS are sent again), and
#: the user hears at once what the scheduler knows (`passata status` of a component whose
#: node was stopped waited out its 20 s before it said so: a live check)
AWAY_WAIT = 2.0


def run_cmd(
    component: str,
    op: str,
    args: Mapping[str, Any],
    human: Callable[[str, Any], str],
    opts: Opts,
) -> None:
    """Resolve ``component``, send it ``op``, print the Reply, exit 0 or 1."""
    ctx = opts.context()
    shaped = _as_tomato if op == "status" else _unchanged
    if ctx.url.transport == "websockets":  # the one-shot session speaks TCP and TLS only
        from tomato_mqtt.cli import components

        base = components.cmd(op, args, opts.timeout)

        async def op_shaped(req: Any, name: str) -> Any:
            return shaped(await base(req, name))

        components.run(component, op_shaped, human, opts)
        return

    if is_full_name(component):  # one round trip: the request and the name's check at once

        def at_once(ex: Exchange, timeout: float) -> Any:
            return shaped(_asked_and_checked(ex, ctx.topics, component, op, args, timeout))

        _in_exchange(at_once, human, opts)
        return

    def ask(ex: Exchange, name: str, timeout: float) -> Any:
        topic = ctx.topics.component_user_cmd(name, op)
        who = f"node hosting {name}"
        return shaped(ex.request(topic, dict(args), timeout=timeout, who=who, resend=op in READS))

    _on_component(component, ask, human, opts)


def _unchanged(reply: Any) -> Any:
    return reply


def _as_tomato(reply: Any) -> Any:
    """``passata status``'s data with tomato 2.2's ``running`` too: ``false``, or the
    running task (a script reading tomato's ``data.running`` broke: found comparing the
    two); the component's status fields stay as they are."""
    data = reply.data
    if reply.success and isinstance(data, dict) and "state" in data:
        running = data.get("state") == "running"
        data["running"] = (
            {
                "technique_name": data.get("technique"),
                "task_name": data.get("task_name"),
                "jobid": data.get("jobid", data.get("job")),  # the wire's alias
                "index": data.get("task"),
            }
            if running
            else False
        )
    return reply


def _asked_and_checked(
    ex: Exchange, topics: Topics, name: str, op: str, args: Mapping[str, Any], timeout: float
) -> Any:
    """``op`` asked of ``name`` (a full name) while the scheduler's list of components,
    asked at the same time, says whether there is such a component: an unknown name is
    refused as soon as that list comes, a known one costs no round trip more than the
    request itself (``passata`` as fast as ``ketchup``)."""
    from tomato_mqtt.transport.oneshot import NoAnswer  # (imported already: Exchange's)

    topic = topics.component_user_cmd(name, op)
    ask_id = ex.send(topic, dict(args))
    check = ex.send(topics.scheduler_cmd("status"), {"what": "components"})
    # the first entry is the one a timeout names: the component's node
    waiting = {ask_id: (topic, f"node hosting {name}"), check: ("", "scheduler")}
    start = time.monotonic()
    deadline = start + timeout
    ask_at = ex.ask_whoami_at(topic, deadline, timeout)
    again = ask_id if op in READS else None  # (a node restarting never got it: READS)
    listed: Any = None  # the scheduler's list, once it came
    while True:
        try:
            got, reply = ex.first_reply(waiting, deadline, timeout, ask_at, again)
        except NoAnswer as e:
            raise _with_node_away(e, listed, name) from None
        if got == ask_id:
            return reply
        del waiting[check]
        listed = reply
        try:
            from_scheduler(name, reply)  # raises for a name the scheduler does not know
        except UnknownComponent as e:
            raise Refused(str(e)) from None
        if waits_briefly(listed, name):  # its node is not online: a short wait, not all of -t
            timeout = min(timeout, round(time.monotonic() - start + AWAY_WAIT, 1))
            deadline = start + timeout
            ask_at = None if ask_at is None else ex.ask_whoami_at(topic, deadline, timeout)


def _with_node_away(e: NoAnswer, listed: Any, name: str) -> NoAnswer:
    """``e`` (its node did not answer a request to ``name``) with what the scheduler's
    list of components says of that node, in place of "is it running?"."""
    from tomato_mqtt.transport.oneshot import NoAnswer

    note = node_away(listed, name) or _node_online(listed, name)
    if not note:
        return e
    told = NoAnswer(f"{str(e).removesuffix(' — is it running?')} — {note}", e.topic)
    told.asked, told.me = e.asked, e.me
    return told


def _node_online(listed: Any, name: str) -> str:
    """What to say of a request the node of ``name`` did not answer while the
    scheduler's list has that node online ("" if the list says nothing of it): "is it
    running?" of a node that ran, whose answers a network cut healed moments ago held up
    (TCP's retransmission backs off through a cut: a fault-injection round)."""
    data = getattr(listed, "data", None)
    row = data.get(name) if isinstance(data, dict) else None
    if not isinstance(row, dict) or row.get("state") in ("lost", "no node"):
        return ""
    return (
        f"the scheduler has its node {row.get('node')!r} online (its heartbeats arrive), "
        "so the request or its answer was held up: by a network cut that healed moments "
        "ago (TCP's retransmission backs off, up to ~15 s), or a node too busy to answer;"
        " try again"
    )


def waits_briefly(listed: Any, name: str) -> bool:
    """Whether a request to ``name`` waits only :data:`AWAY_WAIT` for its node: the
    scheduler's list (a Reply, or None) has the node not online, and not restarting (a
    `passata get` sent as `tomato restart-node` returned said "offline (it was stopped)"
    after 2 s of a node back a second later: a test)."""
    if not node_away(listed, name):
        return False
    row = listed.data.get(name)  # (node_away found it: a dict row)
    return not str(row.get("error") or "").endswith(f"({RESTARTING})")


def node_away(listed: Any, name: str) -> str:
    """What the scheduler's list of components (a Reply, or None) says of the node of
    ``name`` when it is not online, for a request its node did not answer ("" if
    nothing): a node cut off from the network read as "is it running?", while the
    scheduler had counted it lost (an admin's tour)."""
    data = getattr(listed, "data", None)
    row = data.get(name) if isinstance(data, dict) else None
    if not isinstance(row, dict):
        return ""
    node, state, error = row.get("node"), row.get("state"), row.get("error")
    if state == "lost" and isinstance(error, str) and error.startswith(f"node {node} is "):
        return f"the scheduler says {error}"  # "… is offline (it was stopped)", "… lost"
    if state == "lost":  # (the list says "lost" of an offline node too)
        return (
            f"the scheduler has its node {node!r} as not online (stopped, or cut off from "
            "the broker: `tomato status nodes` says which)"
        )
    if state == "no node":
        return f"the scheduler has never heard of its node {node!r} (is it started?)"
    return ""


def run_meta(
    component: str,
    what: str,
    pick: Callable[[Mapping[str, Any]], tuple[Any, str]],
    human: Callable[[str, Any], str],
    opts: Opts,
) -> None:
    """Print what ``pick`` takes from the component's retained meta (its JSON object):
    ``(data, a note for the message)``; exit 0, or 1 if there is no such component."""
    ctx = opts.context()
    if ctx.url.transport == "websockets":
        from tomato_mqtt.cli import components

        async def op(req: Any, name: str) -> Any:
            m = await components.meta(req, name, opts.timeout)
            return _meta_reply(name, what, m.model_dump(mode="json"), pick)

        components.run(component, op, human, opts, asks_node=False)
        return

    def ask(ex: Exchange, name: str, _timeout: float) -> Any:  # retained: no node asked
        topic = ctx.topics.component_meta(name)
        raw = ex.retained(topic, min(opts.timeout, RETAINED_WAIT))
        if raw is None:
            raise Refused(f"no node has announced component {name} (nothing retained on {topic})")
        try:
            meta = jsonlite.loads(raw)
        except ValueError:
            meta = None
        if not isinstance(meta, dict):
            raise Refused(f"{topic}: the retained meta is not a JSON object")
        return _meta_reply(name, what, meta, pick)

    _on_component(component, ask, human, opts)


def _on_component(
    component: str,
    ask: Callable[[Exchange, str, float], Any],
    human: Callable[[str, Any], str],
    opts: Opts,
) -> None:
    """Resolve ``component`` and ``ask`` it (full name, and how long to wait for its
    node) over one connection; print the Reply, exit 0 or 1 (a problem found here: a
    failed Reply; a broker problem: said)."""
    from tomato_mqtt.transport.oneshot import NoAnswer

    topics = opts.context().topics

    def resolved_and_asked(ex: Exchange, timeout: float) -> Any:
        listed: list[Any] = []  # the scheduler's list of components, if it came
        name = resolve(ex, topics, component, timeout, listed)
        known = listed[0] if listed else None
        try:  # a node the scheduler has as not online: a short wait (AWAY_WAIT)
            return ask(ex, name, min(timeout, AWAY_WAIT) if waits_briefly(known, name) else timeout)
        except NoAnswer as e:
            raise _with_node_away(e, known, name) from None

    _in_exchange(resolved_and_asked, human, opts)


def _in_exchange(
    fn: Callable[[Exchange, float], Any], human: Callable[[str, Any], str], opts: Opts
) -> None:
    """``fn(exchange, timeout)``'s Reply over one connection, printed; exit 0 or 1 (the
    timeout: what is left of ``-t`` once a broker being restarted is back)."""
    from tomato_mqtt.transport import oneshot

    ctx = opts.context()

    def call(within: float) -> Any:
        with oneshot.Exchange(ctx.url, ctx.topics.reply, timeout=within, whoami=whoami(ctx)) as ex:
            return fn(ex, within)

    try:  # (a broker this PC's stack restarts is waited for, as the other commands')
        reply = while_broker_restarts(ctx, opts.timeout, call)
    except Refused as e:
        reply = oneshot.Reply(id="", success=False, msg=str(e))
    except oneshot.OneShotError as e:
        oneshot_failed(ctx, e)
    opts.output().reply(reply, lambda data: human(reply.msg, data))


def _meta_reply(
    name: str,
    what: str,
    meta: Mapping[str, Any],
    pick: Callable[[Mapping[str, Any]], tuple[Any, str]],
) -> Any:
    from tomato_mqtt.transport.oneshot import Reply

    data, note = pick(meta)
    text = f"{what} of {name}"
    if not meta.get("registered"):
        text += f" (not registered: {meta['error']})" if meta.get("error") else " (not registered)"
    return Reply(id="", success=True, msg=text + note, data=data)


def capabilities(meta: Mapping[str, Any]) -> tuple[Any, str]:
    return sorted(meta.get("capabilities") or []), ""


#: how constants() notes the names that are not constants (constants_human reads it)
_NOT_CONSTANTS = " (not constants of it: "


def constants(wanted: Sequence[str]) -> Callable[[Mapping[str, Any]], tuple[Any, str]]:
    """The constants named (all if none), and a note naming those that are not."""

    def pick(meta: Mapping[str, Any]) -> tuple[Any, str]:
        have = dict(meta.get("constants") or {})
        data = {k: have[k] for k in wanted if k in have} if wanted else have
        unknown = [k for k in wanted if k not in data]
        return data, f"{_NOT_CONSTANTS}{', '.join(unknown)})" if unknown else ""

    return pick


def resolve(
    ex: Exchange, topics: Topics, want: str, timeout: float, listed: list[Any] | None = None
) -> str:
    """The full component name for ``want`` (full name, device/channel, or slug);
    ``listed`` gets the scheduler's list of components when it answered."""
    from tomato_mqtt.transport.oneshot import NoAnswer

    try:
        r = ex.request(
            topics.scheduler_cmd("status"),
            {"what": "components"},
            timeout=min(timeout, SCHEDULER_WAIT),
            who="scheduler",
        )
    except NoAnswer:
        r = None
    if r is not None and listed is not None:
        listed.append(r)
    try:
        name = from_scheduler(want, r)
    except UnknownComponent as e:
        raise Refused(str(e)) from None
    if name is not None:
        return name
    # no scheduler: find it among the components the nodes have announced
    metas: list[Mapping[str, Any]] = []

    def on_meta(_topic: str, raw: bytes) -> str | None:
        meta = announced_meta(raw)
        if meta is None:
            return None
        metas.append(meta)
        return pick(want, metas)

    found = ex.watch(topics.all_component_meta(), min(timeout, RETAINED_WAIT), on_meta)
    if found is None:
        if not metas:  # nothing on this instance: not a wrong name (as the client says)
            raise NoAnswer(nothing_on(topics.instance), topics.scheduler_cmd("status"))
        raise Refused(str(not_announced(want, metas)))
    return found


# -- human output, shared ----------------------------------------------------------------
def message(msg: str, _data: Any) -> str:
    """Human output that is just the Reply's message."""
    return msg


def kv(data: Mapping[str, Any], indent: str = "") -> str:
    width = max((len(str(k)) for k in data), default=0) + 1
    return "\n".join(f"{indent}{str(k) + ':':<{width}} {show(v)}" for k, v in data.items())


def show(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, Mapping):
        return ", ".join(f"{k}={show(x)}" for k, x in v.items()) or "-"
    if isinstance(v, list):
        return ", ".join(show(x) for x in v) or "-"
    return str(v)


def when(uts: Any) -> str:
    if not isinstance(uts, int | float):
        return "-"
    import datetime  # only where a point has a time to show

    t = datetime.datetime.fromtimestamp(uts).astimezone()
    return t.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


# -- human output --------------------------------------------------------------------------
def status_human(msg: str, data: Any) -> str:
    if not isinstance(data, Mapping):
        return msg
    fields: dict[str, Any] = {
        "component": data.get("name"),
        "node": data.get("node"),
        "state": data.get("state"),
        "job": data.get("jobid", data.get("job")),
        "task": data.get("task"),
        "technique": data.get("technique"),
        "started": when(data.get("started_at")) if data.get("started_at") else None,
        "attrs": data.get("attrs") or None,
        "error": data.get("error"),
    }
    last = data.get("last_task")
    if isinstance(last, Mapping):
        fields["last task"] = (
            f"job {last.get('jobid', last.get('job'))} task {last.get('task')}: "
            f"{last.get('reason')}, "
            f"{last.get('npoints')} point(s)"
            # why, when it failed (only -y said it: a driver author's tour)
            + (f" ({last['message']})" if last.get("message") else "")
        )
    return kv({k: v for k, v in fields.items() if v is not None})


def point_human(msg: str, data: Any) -> str:
    if not isinstance(data, Mapping):
        return msg
    units = data.get("units") if isinstance(data.get("units"), Mapping) else {}
    values = data.get("vars", data.get("values"))  # LastPoint: "vars" since schema 2
    values = values if isinstance(values, Mapping) else {}
    out: dict[str, Any] = {"time": when(data.get("uts"))}
    for k, v in (values or {}).items():
        u = (units or {}).get(k)
        out[k] = f"{v} {u}" if u else v
    job = data.get("jobid", data.get("job"))
    if job is not None:
        out["job"] = f"{job} (task {data.get('task')})"
    return kv(out)


def dict_human(msg: str, data: Any) -> str:
    if not isinstance(data, Mapping) or not data:
        return f"{msg}: none"
    return kv(data)


def constants_human(msg: str, data: Any) -> str:
    """The constants; the names that are not, said on stderr (in plain output they were
    left out without a word, said only with -y or when no name was one: a tour)."""
    unknown = msg.partition(_NOT_CONSTANTS)[2].removesuffix(")")
    if unknown and isinstance(data, Mapping) and data:
        print(f"warning: not constants of it: {unknown}", file=sys.stderr)
    return dict_human(msg, data)


def list_human(msg: str, data: Any) -> str:
    if not data:
        return f"{msg}: none"
    return "\n".join(str(x) for x in data)
