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

from dataclasses import dataclass
from typing import Literal

from tomato_mqtt.wire.slugs import is_slug, slug

__all__ = [
    "ANONYMOUS",
    "CHANNELS",
    "PROTOCOL",
    "ChannelDef",
    "ParsedTopic",
    "Topics",
    "is_slug",
    "slug",
]

PROTOCOL = "tomato/v2"

#: the identity of a client that logged in without a username (open local stacks)
ANONYMOUS = "anonymous"

Kind = Literal[
    "meta_schema",
    "scheduler_status",
    "scheduler_cmd",
    "reply",
    "node_status",
    "node_cmd",
    "component_meta",
    "component_status",
    "component_cmd",
    "component_data",
    "component_last",
    "pipeline_status",
    "job_status",
    "job_event",
    "recorder_status",
    "recorder_cmd",
]


@dataclass(frozen=True)
class ChannelDef:
    """One channel of the wire contract (used for the AsyncAPI document and docs)."""

    kind: Kind
    template: str  # below the root, with {placeholders}
    publisher: str
    subscribers: str
    retained: bool
    description: str


CHANNELS: tuple[ChannelDef, ...] = (
    ChannelDef(
        "meta_schema",
        "meta/schema",
        "scheduler",
        "anyone",
        True,
        "Machine-readable description of every channel and message (AsyncAPI 3.0).",
    ),
    ChannelDef(
        "scheduler_status",
        "scheduler/status",
        "scheduler (+ last will)",
        "all",
        True,
        "Presence of the scheduler: online / stopping / offline / lost, with heartbeat.",
    ),
    ChannelDef(
        "scheduler_cmd",
        "scheduler/cmd/{op}/{user}",
        "CLI, dashboards, scripts",
        "scheduler",
        False,
        "Requests to the scheduler; envelope {id, reply_to, args}; answered on reply_to. "
        "{user} is the requester's login, pinned by the broker ACL.",
    ),
    ChannelDef(
        "reply",
        "reply/{user}/{client_id}",
        "any responder",
        "the requester",
        False,
        "Replies {id, success, msg, data} to a request, on the requester's reply topic; "
        "only {user} may subscribe.",
    ),
    ChannelDef(
        "node_status",
        "node/{node}/status",
        "driver node (+ last will)",
        "all",
        True,
        "Presence of a driver node: drivers loaded, components hosted, heartbeat.",
    ),
    ChannelDef(
        "node_cmd",
        "node/{node}/cmd/{op}",
        "scheduler",
        "driver node",
        False,
        "Commands to a node: configure, rebirth, shutdown.",
    ),
    ChannelDef(
        "component_meta",
        "component/{component}/meta",
        "driver node",
        "all",
        True,
        "What a component is: device, driver, address, channel, attrs, capabilities.",
    ),
    ChannelDef(
        "component_status",
        "component/{component}/status",
        "driver node",
        "all",
        True,
        "State of a component: idle / running / error / lost, current task and job.",
    ),
    ChannelDef(
        "component_cmd",
        "component/{component}/cmd/{op}",
        "scheduler, passata, recorder",
        "driver node",
        False,
        "Commands to a component: task_start, task_stop, set_attr, get_attr, measure, "
        "reset, register, status, replay, ack.",
    ),
    ChannelDef(
        "component_data",
        "component/{component}/data",
        "driver node",
        "recorder, dashboards",
        False,
        "Batches of measured points, one task each, identified by (component, stream, seq).",
    ),
    ChannelDef(
        "component_last",
        "component/{component}/last",
        "driver node",
        "dashboards",
        True,
        "The latest measured point of a component.",
    ),
    ChannelDef(
        "pipeline_status",
        "pipeline/{pipeline}/status",
        "scheduler",
        "all",
        True,
        "Sample, ready flag, job and role -> component map of a pipeline.",
    ),
    ChannelDef(
        "job_status",
        "job/{job}/status",
        "scheduler",
        "all",
        True,
        "Status of a job (tomato's codes q qw r rd c ce cd), timestamps, output path.",
    ),
    ChannelDef(
        "job_event",
        "job/{job}/event",
        "scheduler, recorder",
        "all",
        False,
        "Lifecycle and task events of a job.",
    ),
    ChannelDef(
        "recorder_status",
        "recorder/status",
        "recorder (+ last will)",
        "all",
        True,
        "Presence of the recorder and per-job progress (points stored, gaps open).",
    ),
    ChannelDef(
        "recorder_cmd",
        "recorder/cmd/{op}/{user}",
        "scheduler, CLI",
        "recorder",
        False,
        "Requests to the recorder: finalize (write a job's file), fetch, status. "
        "{user} is the requester's login, pinned by the broker ACL.",
    ),
)


@dataclass(frozen=True)
class ParsedTopic:
    """A received topic taken apart. ``name`` is the slug segment, never the full name."""

    kind: Kind
    name: str | None = None
    op: str | None = None
    user: str | None = None  # the requester's identity, for *_cmd with a user and reply


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
        return self._t("component", slug(component), "cmd", _op(op))

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
