"""Every MQTT topic of tomato-mqtt: builders, wildcard filters, parsing and slugging.

No other module writes a topic string. The root is ``tomato/v2/<instance>/``; below it
the channels of DESIGN §4. v2 (issue 10) puts the requester's authenticated identity into
the topics of requests and replies (``scheduler/cmd/<op>/<user>``,
``recorder/cmd/<op>/<user>``, ``reply/<user>/<client-id>``), so a broker ACL can pin it
to the login (Mosquitto's ``%u``) and a service knows who asked without trusting the
payload. ACL patterns are built here too (:meth:`Topics.pattern`).

Names that are not topic-safe (tomato's component names such as
``example_counter:(example-addr,1)``, ``COM3``, ``/dev/ttyUSB0``) are mapped to a slug by
:func:`slug`; the full name always travels in the payload too.
"""

from __future__ import annotations

from tomato_mqtt.record import Record
from tomato_mqtt.wire.channels import CHANNELS, ChannelDef, Kind
from tomato_mqtt.wire.slugs import is_slug, slug

__all__ = [
    "ANONYMOUS",
    "CHANNELS",
    "PROTOCOL",
    "ChannelDef",
    "Kind",
    "ParsedTopic",
    "Topics",
    "is_slug",
    "slug",
]

PROTOCOL = "tomato/v2"

#: the identity of a client that logged in without a username (open local stacks)
ANONYMOUS = "anonymous"


class ParsedTopic(Record):
    """A received topic taken apart. ``name`` is the slug segment, never the full name."""

    __slots__ = ("kind", "name", "op", "user")
    kind: Kind
    name: str | None
    op: str | None
    user: str | None  # the requester's identity, for *_cmd with a user and reply

    def __init__(
        self, kind: Kind, name: str | None = None, op: str | None = None, user: str | None = None
    ) -> None:
        self._init(locals())


class Topics:
    """Builders and filters for the topics of one instance (``tomato/v2/<instance>``).

    ``user`` is the login of the client that builds requests with these topics (the
    ``{user}`` segment of its commands and of its reply topic); a client that logs in
    without a username is :data:`ANONYMOUS`.
    """

    def __init__(self, instance: str, user: str | None = None) -> None:
        if not is_slug(instance):
            raise ValueError(
                f"instance name {instance!r} is not topic-safe: use lower-case letters, "
                "digits, '_', '.', '-' (starting with a letter or digit)"
            )
        self.instance = instance
        self.user = _user(user) if user else ANONYMOUS
        self.root = f"{PROTOCOL}/{instance}"

    def _t(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    # -- builders ------------------------------------------------------------------
    def meta_schema(self) -> str:
        return self._t("meta", "schema")

    def scheduler_status(self) -> str:
        return self._t("scheduler", "status")

    def scheduler_cmd(self, op: str, user: str | None = None) -> str:
        return self._t("scheduler", "cmd", _op(op), _user(user or self.user))

    def reply(self, client_id: str, user: str | None = None) -> str:
        return self._t("reply", _user(user or self.user), slug(client_id))

    def replies(self, user: str) -> str:
        """Every reply topic of one user (what the ACL lets that user read)."""
        return self._t("reply", _user(user), "#")

    def node_status(self, node: str) -> str:
        return self._t("node", slug(node), "status")

    def node_cmd(self, node: str, op: str) -> str:
        return self._t("node", slug(node), "cmd", _op(op))

    def component_meta(self, component: str) -> str:
        return self._t("component", slug(component), "meta")

    def component_status(self, component: str) -> str:
        return self._t("component", slug(component), "status")

    def component_cmd(self, component: str, op: str) -> str:
        """A service's command (scheduler, recorder): the ACL lets only them send it."""
        return self._t("component", slug(component), "cmd", _op(op))

    def component_user_cmd(self, component: str, op: str, user: str | None = None) -> str:
        """A user's command (passata, a dashboard, a script), with their login: the node
        answers it only on that login's reply topics."""
        return self._t("component", slug(component), "cmd", _op(op), _user(user or self.user))

    def component_data(self, component: str) -> str:
        return self._t("component", slug(component), "data")

    def component_last(self, component: str) -> str:
        return self._t("component", slug(component), "last")

    def pipeline_status(self, pipeline: str) -> str:
        return self._t("pipeline", slug(pipeline), "status")

    def job_status(self, job: int) -> str:
        return self._t("job", str(int(job)), "status")

    def job_event(self, job: int) -> str:
        return self._t("job", str(int(job)), "event")

    def recorder_status(self) -> str:
        return self._t("recorder", "status")

    def recorder_cmd(self, op: str, user: str | None = None) -> str:
        return self._t("recorder", "cmd", _op(op), _user(user or self.user))

    # -- wildcard filters ----------------------------------------------------------
    def all(self) -> str:
        return self._t("#")

    def scheduler_cmds(self) -> str:
        return self._t("scheduler", "cmd", "+", "+")

    def node_cmds(self, node: str) -> str:
        return self._t("node", slug(node), "cmd", "+")

    def all_node_status(self) -> str:
        return self._t("node", "+", "status")

    def component_cmds(self, component: str) -> str:
        return self._t("component", slug(component), "cmd", "+")

    def component_user_cmds(self, component: str) -> str:
        return self._t("component", slug(component), "cmd", "+", "+")

    def all_component_meta(self) -> str:
        return self._t("component", "+", "meta")

    def all_component_status(self) -> str:
        return self._t("component", "+", "status")

    def all_component_data(self) -> str:
        return self._t("component", "+", "data")

    def all_pipeline_status(self) -> str:
        return self._t("pipeline", "+", "status")

    def all_job_status(self) -> str:
        return self._t("job", "+", "status")

    def all_job_events(self) -> str:
        return self._t("job", "+", "event")

    def recorder_cmds(self) -> str:
        return self._t("recorder", "cmd", "+", "+")

    def pattern(self, kind: Kind, **segments: str) -> str:
        """An ACL pattern of one channel: each placeholder is a name (slugged), ``+``,
        ``#`` (only as the last segment) or ``%u`` (the login, for Mosquitto patterns).

        A placeholder not given becomes ``+``.
        """
        channel = next(c for c in CHANNELS if c.kind == kind)
        parts = []
        for seg in channel.template.split("/"):
            if seg.startswith("{"):
                value = segments.pop(seg[1:-1], "+")
                if value not in ("+", "#", "%u"):
                    value = str(int(value)) if seg == "{job}" else slug(value)
                parts.append(value)
            else:
                parts.append(seg)
        if segments:
            raise ValueError(f"channel {kind} has no segment {', '.join(segments)}")
        return self._t(*parts)

    # -- parsing -------------------------------------------------------------------
    def parse(self, topic: str) -> ParsedTopic | None:
        """Take a received topic apart; ``None`` if it is not one of ours."""
        prefix = self.root + "/"
        if not topic.startswith(prefix):
            return None
        p = topic[len(prefix) :].split("/")
        match p:
            case ["meta", "schema"]:
                return ParsedTopic("meta_schema")
            case ["scheduler", "status"]:
                return ParsedTopic("scheduler_status")
            case ["scheduler", "cmd", op, user]:
                return ParsedTopic("scheduler_cmd", op=op, user=user)
            case ["reply", user, client]:
                return ParsedTopic("reply", name=client, user=user)
            case ["node", node, "status"]:
                return ParsedTopic("node_status", name=node)
            case ["node", node, "cmd", op]:
                return ParsedTopic("node_cmd", name=node, op=op)
            case ["component", cmp, "meta"]:
                return ParsedTopic("component_meta", name=cmp)
            case ["component", cmp, "status"]:
                return ParsedTopic("component_status", name=cmp)
            case ["component", cmp, "cmd", op]:
                return ParsedTopic("component_cmd", name=cmp, op=op)
            case ["component", cmp, "cmd", op, user]:
                return ParsedTopic("component_user_cmd", name=cmp, op=op, user=user)
            case ["component", cmp, "data"]:
                return ParsedTopic("component_data", name=cmp)
            case ["component", cmp, "last"]:
                return ParsedTopic("component_last", name=cmp)
            case ["pipeline", pip, "status"]:
                return ParsedTopic("pipeline_status", name=pip)
            case ["job", job, "status"] if job.isdigit():
                return ParsedTopic("job_status", name=job)
            case ["job", job, "event"] if job.isdigit():
                return ParsedTopic("job_event", name=job)
            case ["recorder", "status"]:
                return ParsedTopic("recorder_status")
            case ["recorder", "cmd", op, user]:
                return ParsedTopic("recorder_cmd", op=op, user=user)
        return None

    def channel_address(self, channel: ChannelDef) -> str:
        """The full topic template of a channel, as listed in the AsyncAPI document."""
        return f"{self.root}/{channel.template}"


def _user(user: str) -> str:
    # a login is a topic segment as is: a slugged one could not be pinned by %u
    if not is_slug(user):
        raise ValueError(
            f"user name {user!r} cannot be a topic segment: use lower-case letters, digits, "
            "'_', '.', '-' (starting with a letter or digit)"
        )
    return user


def _op(op: str) -> str:
    if not is_slug(op):
        raise ValueError(f"operation name {op!r} is not topic-safe")
    return op
