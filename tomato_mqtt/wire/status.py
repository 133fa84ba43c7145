"""What the scheduler's status replies carry: ``status`` sections, job summaries, whoami.

The reply-data models of :mod:`tomato_mqtt.wire.commands` that describe the scheduler's
state: tomato 2.2's ``Daemon``/``Pipeline``/``Device``/``Component``/``Driver`` shapes
plus what tomato-mqtt adds (nodes, roles, clock offsets), and the bounded summary of a
deep queue. Listed in the AsyncAPI document through the commands that return them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from tomato_mqtt.model.jobs import Job, PipelineState
from tomato_mqtt.wire.messages import NodeStatus, SchedulerStatus

__all__ = [
    "STATUS_DATA_BY_WHAT",
    "ComponentInfo",
    "DeviceInfo",
    "DriverNodes",
    "JobSummary",
    "NodeInfo",
    "PipelineInfo",
    "SchedulerInfo",
    "StatusData",
    "StatusIds",
    "WhoamiData",
]


class _Data(BaseModel):
    model_config = ConfigDict(extra="allow")


class StatusIds(_Data):
    """The jobs of one status: how many, and the first and last of their ids."""

    count: int
    head: list[int] = Field(description="the first ids, ascending")
    tail: list[int] = Field(
        description="the last ids, ascending, none of them in head: when "
        "len(head) + len(tail) == count these are all the ids"
    )


class JobSummary(_Data):
    """``job_status`` with ``summary``: a bounded reply however deep the queue."""

    total: int = Field(description="jobs in the store, of any status")
    statuses: dict[str, StatusIds] = Field(description="status code -> its jobs")
    pipelines: dict[str, dict[str, int]] = Field(
        description="pipeline -> status -> jobs that ran or run there"
    )
    running: list[Job] = Field(
        description="every job in r or rd (at most one per pipeline); in the jobs of a "
        "summary the payload is cut to its sample and the number of its tasks "
        "({sample, tasks}): the whole one is in job_status with the job's id"
    )
    queued: int = Field(description="jobs in q or qw")
    queued_head: list[Job] = Field(
        description="the first queued jobs (they launch first; payloads as in running)"
    )
    queued_tail: list[Job] = Field(
        description="the last queued jobs, none in queued_head (payloads as in running)"
    )
    waiting: list[tuple[str | None, int]] = Field(
        description="(reason, number of queued jobs) — why the queue waits, most first"
    )


class PipelineInfo(PipelineState):
    """tomato 2.2's ``Pipeline`` plus ``roles`` (role -> component)."""

    components: list[str] = Field(default_factory=list)
    roles: dict[str, str] = Field(default_factory=dict)


class DeviceInfo(_Data):
    """tomato 2.2's ``Device`` plus the ``node`` that hosts it."""

    name: str
    driver: str
    address: str
    channels: list[str]
    pollrate: float = 1.0
    node: str


class ComponentInfo(_Data):
    """tomato 2.2's ``Component`` plus what the scheduler knows of it now."""

    name: str
    driver: str
    device: str
    address: str
    channel: str
    role: str | None = Field(None, description="its role in the first pipeline naming it")
    capabilities: list[str]
    node: str
    state: str
    registered: bool
    jobid: int | None = None
    error: str | None = None


class NodeInfo(NodeStatus):
    """A node as the scheduler sees it: its status plus what the receiver measured."""

    heartbeat_age: float | None = Field(None, description="s since the last heartbeat arrived")
    clock_offset: float | None = Field(
        None, description="s the node's clock is ahead of the scheduler's (estimate)"
    )
    clock_skewed: bool = False
    clock_warning: str | None = None


class DriverNodes(_Data):
    """tomato 2.2's ``Driver`` (no process of its own here: null port/pid/times) + nodes."""

    name: str
    version: str | None = None
    port: int | None = None
    pid: int | None = None
    spawned_at: str | None = None
    connected_at: str | None = None
    settings: dict[str, JsonValue]
    nodes: dict[str, dict[str, JsonValue]]


class SchedulerInfo(SchedulerStatus):
    """Our scheduler status plus tomato 2.2's ``Daemon`` fields (``tomato status -y``)."""

    datadir: str
    logdir: str | None = Field(
        default=None,
        description="where the stack's services log (null from a scheduler older than this field)",
    )
    devices_file: str
    recorder: Literal["online", "not answering", "not seen"] | None = Field(
        default=None,
        description="the recorder as the scheduler sees it: online, not answering (lost, "
        "stopped or silent past its heartbeats: the points wait in the nodes' spools), "
        "or not seen since the scheduler started; null from a scheduler older than this "
        "field",
    )
    recorder_storage_error: str | None = Field(
        default=None,
        description="why the recorder cannot store data now, as its status says "
        "(RecorderStatus.storage_error); null when it can. While the recorder is not "
        "answering, what its last status said, marked as such",
    )
    node_storage_errors: dict[str, str] = Field(
        default_factory=dict,
        description="node -> why its spool takes no writes now, as its status says "
        "(NodeStatus.spool_error)",
    )
    nodes_away: dict[str, str] = Field(
        default_factory=dict,
        description="node -> its state, of the nodes that are not online (lost, offline) "
        "and of those that host components and were not seen since the scheduler started "
        "('not seen'): their components cannot run tasks",
    )
    status: Literal["running"] = "running"
    port: int
    appdir: str | None = None
    pips: dict[str, PipelineInfo] = Field(default_factory=dict)
    devs: dict[str, DeviceInfo] = Field(default_factory=dict)
    drvs: dict[str, DriverNodes] = Field(default_factory=dict)
    cmps: dict[str, ComponentInfo] = Field(default_factory=dict)


# each section a name -> object mapping, as tomato 2.2's status replies
StatusData = (
    SchedulerInfo
    | dict[str, PipelineInfo]
    | dict[str, DeviceInfo]
    | dict[str, ComponentInfo]
    | dict[str, NodeInfo]
    | dict[str, DriverNodes]
)
#: which of StatusData answers which ``what`` (the AsyncAPI's x-data-by-args)
STATUS_DATA_BY_WHAT: dict[str, Any] = {
    "scheduler": SchedulerInfo,
    "pipelines": dict[str, PipelineInfo],
    "devices": dict[str, DeviceInfo],
    "components": dict[str, ComponentInfo],
    "nodes": dict[str, NodeInfo],
    "drivers": dict[str, DriverNodes],
}


class WhoamiData(_Data):
    user: str | None = Field(description="the login the scheduler saw (null: an open stack)")
    role: str | None
    ops: list[str] = Field(description="the scheduler operations this role may send")
    open: bool = Field(description="true when the broker admits anyone (no users file)")
