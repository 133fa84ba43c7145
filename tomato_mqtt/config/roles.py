"""Role names and which operations each role may request (issue 10).

The topic rules built from these live in :mod:`tomato_mqtt.wire.acl`; this module is the
part that settings, the users file and the services need without knowing topics.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = [
    "ADMIN_OPS",
    "CMP_ADMIN_OPS",
    "CMP_READ_OPS",
    "CMP_RECORDER_OPS",
    "CMP_SCHEDULER_OPS",
    "NODE_ADMIN_OPS",
    "NODE_SCHEDULER_OPS",
    "OPERATOR_OPS",
    "READ_OPS",
    "REC_OPERATOR_OPS",
    "REC_READ_OPS",
    "REC_SCHEDULER_OPS",
    "ROLES",
    "is_admin",
    "node_of_role",
    "parse_role",
    "refusal",
]

#: scheduler operations a reader may send (queries, no effect)
READ_OPS = ("status", "job_status", "job_search", "whoami")
#: ... an operator may send (own jobs: the scheduler checks ownership)
OPERATOR_OPS = (
    *READ_OPS,
    "job_submit",
    "job_cancel",
    "job_snapshot",
    "pipeline_load",
    "pipeline_eject",
    "pipeline_ready",
)
#: ... only an admin may send
ADMIN_OPS = (*OPERATOR_OPS, "reload", "stop")

#: component commands: what passata users may send, and what the services send
CMP_READ_OPS = ("get_attr", "status")
CMP_ADMIN_OPS = (*CMP_READ_OPS, "set_attr", "measure", "reset", "register")
CMP_SCHEDULER_OPS = ("task_start", "task_stop", "reset", "register", "status", "get_attr")
CMP_RECORDER_OPS = ("ack", "replay")

#: recorder and node commands: what users may send, and what the scheduler sends
REC_READ_OPS = ("status",)
REC_OPERATOR_OPS = ("fetch", "status")
REC_SCHEDULER_OPS = ("finalize", "status")
NODE_ADMIN_OPS = ("rebirth", "shutdown")
NODE_SCHEDULER_OPS = ("configure", "rebirth")

ROLES = ("admin", "operator", "reader", "dashboard", "scheduler", "recorder", "node:<name>")

_NODE_ROLE = re.compile(r"node:(.+)")
_SLUG = re.compile(r"[a-z0-9][a-z0-9_.-]*")


def parse_role(role: str) -> str:
    """The canonical role (``dashboard`` -> ``reader``); ValueError if unknown."""
    role = role.strip()
    if role == "dashboard":
        return "reader"
    if role in ("admin", "operator", "reader", "scheduler", "recorder"):
        return role
    m = _NODE_ROLE.fullmatch(role)
    if m and _SLUG.fullmatch(m.group(1)):
        return role
    raise ValueError(
        f"unknown role {role!r}: use admin, operator, reader (or dashboard), scheduler, "
        "recorder or node:<name> (a node name that is a topic segment)"
    )


def node_of_role(role: str | None) -> str | None:
    m = _NODE_ROLE.fullmatch(role or "")
    return m.group(1) if m else None


def is_admin(role: str | None) -> bool:
    return role == "admin"


def refusal(
    kind: str, op: str, user: str, me: Mapping[str, object], *, sent: bool = True
) -> str | None:
    """Why the broker dropped a request ``op`` on a topic of ``kind`` (``scheduler_cmd``,
    ``recorder_cmd``, ``component_user_cmd``, ``node_cmd``) that nobody answered, given what
    ``whoami`` said of its sender (``me``: role and scheduler ops); None when the role
    may send it (the responder is just down, slow or busy). MQTT 3.1.1 has no negative
    PUBACK: a publish the ACL forbids just vanishes. ``sent``: False for a request looked
    at before it is sent (then it is not)."""
    role = str(me.get("role") or "")
    ops = me.get("ops")
    allowed: tuple[str, ...] = tuple(str(o) for o in ops) if isinstance(ops, list) else ()
    target = {"scheduler_cmd": "", "recorder_cmd": "the recorder's "}.get(kind)
    if kind == "recorder_cmd":
        allowed = REC_OPERATOR_OPS if role in ("admin", "operator") else REC_READ_OPS
    elif kind in ("component_cmd", "component_user_cmd"):
        target = "the component command "
        allowed = {"admin": CMP_ADMIN_OPS, "operator": CMP_READ_OPS}.get(role, ())
    elif kind == "node_cmd":
        target = "the node command "
        allowed = NODE_ADMIN_OPS if role == "admin" else ()
    if target is None or op in allowed:
        return None
    dropped = "the broker dropped the request (see" if sent else "it was not sent (see"
    return (
        f"not allowed: user {user!r} (role {role or 'unknown'}) may not send {target}{op!r}; "
        f"{dropped} the role table in docs/security.md)"
    )
