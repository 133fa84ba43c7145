"""Why a request went unanswered, when the broker's ACL dropped it (issue 10).

MQTT 3.1.1 has no negative PUBACK: a publish the ACL forbids just vanishes, and the CLI
would say "is it running?". This asks ``whoami`` and compares the op with the role's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tomato_mqtt.cli.common import CallContext

__all__ = ["denied"]


def denied(ctx: CallContext, topic: str) -> str | None:
    """After a request went unanswered: was it the broker's ACL that dropped it?

    MQTT 3.1.1 has no negative PUBACK, so a forbidden request just vanishes. If the
    scheduler answers ``whoami`` (every role may send it) and the op is not among the
    requester's, say so plainly instead of "is it running?".
    """
    if not ctx.url.username:
        return None  # an open stack has no ACL
    from tomato_mqtt.transport import oneshot

    parsed = ctx.topics.parse(topic)
    if parsed is None or parsed.op is None or parsed.op == "whoami":
        return None
    try:
        me = oneshot.request(
            ctx.url, ctx.topics.scheduler_cmd("whoami"), ctx.topics.reply, {}, timeout=2.0
        )
    except oneshot.OneShotError:
        return None
    from tomato_mqtt.config import roles

    data = me.data if me.success and isinstance(me.data, dict) else {}
    role = str(data.get("role") or "")
    allowed: tuple[str, ...] = tuple(data.get("ops") or ())
    target = {"scheduler_cmd": "", "recorder_cmd": "the recorder's "}.get(parsed.kind)
    if parsed.kind == "recorder_cmd":
        allowed = roles.REC_OPERATOR_OPS if role in ("admin", "operator") else roles.REC_READ_OPS
    elif parsed.kind == "component_cmd":
        target = "the component command "
        allowed = {"admin": roles.CMP_ADMIN_OPS, "operator": roles.CMP_READ_OPS}.get(role, ())
    elif parsed.kind == "node_cmd":
        target = "the node command "
        allowed = roles.NODE_ADMIN_OPS if role == "admin" else ()
    if target is None or parsed.op in allowed:
        return None  # allowed: the responder is just down, slow or busy
    return (
        f"not allowed: user {ctx.url.username!r} (role {data.get('role') or 'unknown'}) may not "
        f"send {target}{parsed.op!r}; the broker dropped the request (see the role table in "
        f"docs/security.md) ({ctx.where()})"
    )
