"""The channels of the wire contract: what each topic carries, who publishes it, who
reads it, whether it is retained. One table (:data:`CHANNELS`), from which the AsyncAPI
document, the docs' channel table and the topic builders' kinds all come.
"""

from __future__ import annotations

from tomato_mqtt.record import Record

__all__ = ["CHANNELS", "ChannelDef", "Kind"]

TYPE_CHECKING = False  # typing is not imported by the CLI's one-request calls
if TYPE_CHECKING:
    from typing import Literal

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
        "component_user_cmd",
        "component_data",
        "component_last",
        "pipeline_status",
        "job_status",
        "job_event",
        "recorder_status",
        "recorder_cmd",
    ]
else:
    Kind = str


class ChannelDef(Record):
    """One channel of the wire contract (used for the AsyncAPI document and docs)."""

    __slots__ = ("description", "kind", "publisher", "retained", "subscribers", "template")
    kind: Kind
    template: str  # below the root, with {placeholders}
    publisher: str
    subscribers: str
    retained: bool
    description: str

    def __init__(
        self,
        kind: Kind,
        template: str,
        publisher: str,
        subscribers: str,
        retained: bool,
        description: str,
    ) -> None:
        self._init(locals())


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
        "scheduler, recorder",
        "driver node",
        False,
        "Commands to a component from the services: task_start, task_stop, reset, "
        "register, status, get_attr (scheduler), replay, ack (recorder). Users send "
        "theirs with their login: component/{component}/cmd/{op}/{user}.",
    ),
    ChannelDef(
        "component_user_cmd",
        "component/{component}/cmd/{op}/{user}",
        "passata, dashboards, scripts",
        "driver node",
        False,
        "Commands to a component from a user: get_attr, status, set_attr, measure, reset, "
        "register. {user} is the requester's login, pinned by the broker ACL; the node "
        "answers only on that user's reply topics.",
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
