"""The role model: who may publish and subscribe which topics (issue 10, DESIGN §8).

Pure data, no I/O: a role maps to a list of :class:`Rule` (an MQTT topic pattern and
``publish`` or ``subscribe``), built with :meth:`Topics.pattern` so no topic string is
written here. The embedded broker's ACL plugin and the generated Mosquitto ``acl_file``
both come from :func:`rules`; ``docs/security.md`` shows the same table
(:func:`role_table`), and a test checks every row on both brokers.

Roles:

- ``admin``: everything, including ``stop``, ``reload``, node ``shutdown`` and direct
  component control (``passata set/measure/reset``).
- ``operator``: submit jobs, cancel and snapshot them (the scheduler allows their own
  jobs only), load samples, eject / mark ready pipelines of their own sample or the
  lab's (the scheduler checks), read component attributes with
  passata, fetch their jobs' data from the recorder; reads everything a reader reads.
- ``reader`` (alias ``dashboard``): subscribes to presence, status, metadata, data and
  events; sends only queries (``status``, ``job_status``, ``job_search``); never
  commands, never another user's replies.
- ``node:<name>``: publishes only its own node topics and the meta / status / data /
  last of the components assigned to it (devices file); receives only their commands;
  answers requests on reply topics.
- ``scheduler``, ``recorder``: the services' own logins. Only the recorder publishes the
  spool commands ``ack`` and ``replay``; only the scheduler publishes the retained
  pipeline and job status and commands tasks; besides a node, only the scheduler
  publishes a component's status (``lost``, when the component's node is lost).

Every user reads only their own replies (``reply/<user>/#``); requests carry the login as
their ``{user}`` segment and may only be published with one's own login there. Users'
component commands too (``component/<c>/cmd/<op>/<user>``, answered only on that user's
replies); the form without a login is the services' (scheduler, recorder).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from tomato_mqtt.config.roles import (
    ADMIN_OPS,
    CMP_ADMIN_OPS,
    CMP_READ_OPS,
    CMP_RECORDER_OPS,
    CMP_SCHEDULER_OPS,
    NODE_ADMIN_OPS,
    NODE_SCHEDULER_OPS,
    OPERATOR_OPS,
    READ_OPS,
    REC_OPERATOR_OPS,
    REC_READ_OPS,
    REC_SCHEDULER_OPS,
    ROLES,
    is_admin,
    node_of_role,
    parse_role,
)
from tomato_mqtt.wire.topics import Topics

if TYPE_CHECKING:
    from tomato_mqtt.config.users import User, UsersFile

__all__ = [
    "ADMIN_OPS",
    "OPERATOR_OPS",
    "READ_OPS",
    "ROLES",
    "Access",
    "Rule",
    "allowed",
    "filter_covered",
    "granted_logins",
    "is_admin",
    "node_of_role",
    "parse_role",
    "role_table",
    "role_table_markdown",
    "rules",
]  # the role names and op lists are re-exported from tomato_mqtt.config.roles

Access = Literal["publish", "subscribe"]


@dataclass(frozen=True)
class Rule:
    pattern: str
    access: Access
    what: str = ""  # for the documentation table


def _reads(t: Topics) -> list[Rule]:
    """What a reader (and everyone above it) may subscribe to: presence, state, data."""
    p = t.pattern
    return [
        Rule(p("meta_schema"), "subscribe", "the AsyncAPI document"),
        Rule(p("scheduler_status"), "subscribe", "presence"),
        Rule(p("recorder_status"), "subscribe", "presence"),
        Rule(p("node_status"), "subscribe", "presence"),
        Rule(p("component_meta"), "subscribe", "component metadata"),
        Rule(p("component_status"), "subscribe", "component status"),
        Rule(p("component_data"), "subscribe", "data"),
        Rule(p("component_last"), "subscribe", "data"),
        Rule(p("pipeline_status"), "subscribe", "pipeline status"),
        Rule(p("job_status"), "subscribe", "job status"),
        Rule(p("job_event"), "subscribe", "job events"),
    ]


def _requests(
    t: Topics,
    kind: Literal["scheduler_cmd", "recorder_cmd", "component_user_cmd"],
    ops: Iterable[str],
    user: str,
) -> list[Rule]:
    return [Rule(t.pattern(kind, op=op, user=user), "publish", op) for op in ops]


def rules(topics: Topics, role: str, user: str, components: Iterable[str] = ()) -> list[Rule]:
    """The rules of one login: ``user`` is the login (or ``%u`` for a Mosquitto pattern),
    ``components`` the full names of the components assigned to a ``node:<name>`` role."""
    role = parse_role(role)
    t, p = topics, topics.pattern
    own_replies = Rule(p("reply", user=user, client_id="#"), "subscribe", "own replies")
    answer = Rule(p("reply", user="+", client_id="+"), "publish", "answer requests")
    if role == "admin":
        return [
            Rule(t.all(), "subscribe", "everything"),
            *_requests(t, "scheduler_cmd", ADMIN_OPS, user),
            *_requests(t, "recorder_cmd", REC_OPERATOR_OPS, user),
            *(
                Rule(p("component_user_cmd", op=op, user=user), "publish", op)
                for op in CMP_ADMIN_OPS
            ),
            *(Rule(p("node_cmd", op=op), "publish", op) for op in NODE_ADMIN_OPS),
        ]
    if role == "operator":
        return [
            *_reads(t),
            own_replies,
            *_requests(t, "scheduler_cmd", OPERATOR_OPS, user),
            *_requests(t, "recorder_cmd", REC_OPERATOR_OPS, user),
            *(
                Rule(p("component_user_cmd", op=op, user=user), "publish", op)
                for op in CMP_READ_OPS
            ),
        ]
    if role == "reader":
        return [
            *_reads(t),
            own_replies,
            *_requests(t, "scheduler_cmd", READ_OPS, user),
            *_requests(t, "recorder_cmd", REC_READ_OPS, user),
        ]
    if role == "scheduler":
        return [
            Rule(t.all(), "subscribe", "everything"),
            answer,
            Rule(p("scheduler_status"), "publish", "presence"),
            Rule(p("meta_schema"), "publish", "the AsyncAPI document"),
            Rule(p("pipeline_status"), "publish", "pipeline status"),
            Rule(p("job_status"), "publish", "job status"),
            Rule(p("job_event"), "publish", "job events"),
            # a lost node's components are shown lost by the scheduler (services/
            # scheduler/lost.py): a node cannot leave a last will per component
            Rule(p("component_status"), "publish", "lost status of a lost node's components"),
            *(Rule(p("node_cmd", op=op), "publish", op) for op in NODE_SCHEDULER_OPS),
            *(Rule(p("component_cmd", op=op), "publish", op) for op in CMP_SCHEDULER_OPS),
            *_requests(t, "recorder_cmd", REC_SCHEDULER_OPS, user),
        ]
    if role == "recorder":
        return [
            Rule(t.all(), "subscribe", "everything"),
            answer,
            Rule(p("recorder_status"), "publish", "presence"),
            Rule(p("job_event"), "publish", "job events"),
            *(Rule(p("component_cmd", op=op), "publish", op) for op in CMP_RECORDER_OPS),
        ]
    node = node_of_role(role)
    assert node is not None  # parse_role accepted it
    out = [
        answer,
        own_replies,
        Rule(p("node_status", node=node), "publish", "own presence"),
        Rule(p("node_status", node=node), "subscribe", "own presence (is its name free?)"),
        Rule(p("node_cmd", node=node), "subscribe", "own commands"),
        Rule(p("scheduler_status"), "subscribe", "presence"),
    ]
    for c in sorted(set(components)):
        out += [
            Rule(p("component_meta", component=c), "publish", "own components"),
            Rule(p("component_status", component=c), "publish", "own components"),
            Rule(p("component_data", component=c), "publish", "own components"),
            Rule(p("component_last", component=c), "publish", "own components"),
            Rule(p("component_cmd", component=c), "subscribe", "own components' commands"),
            Rule(p("component_user_cmd", component=c), "subscribe", "own components' commands"),
        ]
    return out


def granted_logins(
    users: UsersFile, topics: Topics, node_components: Mapping[str, Sequence[str]]
) -> Iterator[tuple[User, list[Rule]]]:
    """Each login an external broker takes, by name, with its rules: those with a role
    and a Mosquitto password hash (the others may do nothing there); a node's login with
    the components the devices file gives its node (``node_components``)."""
    for u in sorted(users.users.values(), key=lambda u: u.name):
        if not u.role or not u.mosquitto_hash:
            continue
        node = node_of_role(u.role)
        comps = node_components.get(node, ()) if node else ()
        yield u, rules(topics, u.role, u.name, comps)


def _match(pattern: str, topic: str) -> bool:
    """MQTT matching of a concrete topic against a pattern with ``+`` / ``#``."""
    pp, tt = pattern.split("/"), topic.split("/")
    for i, seg in enumerate(pp):
        if seg == "#":
            return True
        if i >= len(tt) or (seg != "+" and seg != tt[i]):
            return False
    return len(pp) == len(tt)


def filter_covered(pattern: str, filter_: str) -> bool:
    """True when every topic that ``filter_`` can match also matches ``pattern``.

    A subscription is allowed only if it cannot reach a topic the rule does not grant
    (``+`` in the filter needs ``+`` or ``#`` in the rule, ``#`` needs ``#``).
    """
    pp, ff = pattern.split("/"), filter_.split("/")
    for i, seg in enumerate(pp):
        if seg == "#":
            return True
        if i >= len(ff):
            return False
        f = ff[i]
        if f == "#":
            return False
        if seg != "+" and (f == "+" or seg != f):
            return False
    return len(pp) == len(ff)


def allowed(role_rules: Sequence[Rule], access: Access | Literal["receive"], topic: str) -> bool:
    """Whether a login with these rules may publish / subscribe ``topic`` (a filter for
    subscribe) / receive a message on ``topic``."""
    if access == "publish":
        return any(r.access == "publish" and _match(r.pattern, topic) for r in role_rules)
    if access == "subscribe":
        return any(r.access == "subscribe" and filter_covered(r.pattern, topic) for r in role_rules)
    return any(r.access == "subscribe" and _match(r.pattern, topic) for r in role_rules)


def role_table(instance: str = "lab1") -> list[tuple[str, str, str, str]]:
    """(role, access, topic below the root, what) for docs/security.md."""
    t = Topics(instance)
    root = t.root + "/"
    out: list[tuple[str, str, str, str]] = []
    for role in ("admin", "operator", "reader", "scheduler", "recorder", "node:<name>"):
        r = "node:pc1" if role == "node:<name>" else role
        for rule in rules(t, r, "%u", components=["cmp-of-pc1"] if r == "node:pc1" else ()):
            pattern = rule.pattern.removeprefix(root)
            pattern = pattern.replace("node/pc1/", "node/<name>/").replace(
                "component/cmp-of-pc1/", "component/<its component>/"
            )
            out.append((role, rule.access, pattern, rule.what))
    return out


def role_table_markdown() -> str:
    """The role table of docs/security.md: one row per role, access and topic, the
    operations of a command topic folded into ``{a,b,...}`` (a test keeps the doc equal)."""
    t = Topics("lab1")
    groups: dict[tuple[str, str, str], list[str]] = {}
    for role, access, pattern, what in role_table():
        parsed = t.parse(f"{t.root}/{pattern}")
        if parsed is not None and parsed.op is not None and what == parsed.op:
            folded = pattern.replace(f"/cmd/{parsed.op}", "/cmd/{op}", 1)
            groups.setdefault((role, access, folded), []).append(parsed.op)
        else:
            groups.setdefault((role, access, pattern), []).append(what)
    lines = [
        "| role | access | topic (below `tomato/v2/<instance>/`) | operations / what |",
        "|---|---|---|---|",
    ]
    for (role, access, pattern), whats in groups.items():
        if "{op}" in pattern:
            ops = ", ".join(f"`{w}`" for w in whats)
            pattern = pattern.replace("{op}", "<op>")
        else:
            ops = "; ".join(dict.fromkeys(whats))
        lines.append(f"| {role} | {access} | `{pattern}` | {ops} |")
    return "\n".join(lines) + "\n"
