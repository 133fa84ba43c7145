"""Why a request went unanswered, when the broker's ACL dropped it (issue 10).

MQTT 3.1.1 has no negative PUBACK: a publish the ACL forbids just vanishes, and the CLI
would say "is it running?". This asks ``whoami`` and compares the op with the role's.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is ~2 ms of a one-request call: for the type checker only
if TYPE_CHECKING:
    from tomato_mqtt.cli.common import CallContext

__all__ = ["denied", "whoami"]


def whoami(ctx: CallContext) -> str | None:
    """The whoami topic a one-shot exchange asks meanwhile (``oneshot.Exchange``'s
    ``whoami``) for a login; None on an open stack (no ACL drops anything there)."""
    return ctx.topics.scheduler_cmd("whoami") if ctx.url.username else None


def denied(ctx: CallContext, topic: str, told: Exception | None = None) -> str | None:
    """After a request went unanswered: was it the broker's ACL that dropped it?

    MQTT 3.1.1 has no negative PUBACK, so a forbidden request just vanishes. If the
    scheduler answers ``whoami`` (every role may send it) and the op is not among the
    requester's, say so plainly instead of "is it running?". ``told``: the request's
    ``NoAnswer``; when it carries whoami's answer (asked meanwhile, see :func:`whoami`),
    that answer is used, and whoami is not asked again (a login that may not ask it, as
    a node's, waited 2 s more for nothing).
    """
    if not ctx.url.username:
        return None  # an open stack has no ACL
    from tomato_mqtt.transport import oneshot

    parsed = ctx.topics.parse(topic)
    if parsed is None or parsed.op is None or parsed.op == "whoami":
        return None
    if isinstance(told, oneshot.NoAnswer) and told.asked:
        if told.me is None:
            return None
        me = told.me
    else:
        try:
            me = oneshot.request(
                ctx.url, ctx.topics.scheduler_cmd("whoami"), ctx.topics.reply, {}, timeout=2.0
            )
        except oneshot.OneShotError:
            return None
    from tomato_mqtt.config import roles

    data = me.data if me.success and isinstance(me.data, dict) else {}
    why = roles.refusal(parsed.kind, parsed.op, ctx.url.username, data)
    return None if why is None else f"{why} ({ctx.where()})"
