"""Every message on the wire: pydantic models serialised as UTF-8 JSON.

Each model carries ``schema`` (its version). Readers are tolerant: unknown fields are
ignored, so a newer publisher does not break an older dashboard; a payload that is not
JSON, has the wrong shape or a version this code does not know becomes one
:class:`DecodeError`, never an exception that kills a loop.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, JsonValue

from tomato_mqtt.driver.spec import AttrSpec, TaskSpec
from tomato_mqtt.model.jobs import Job, JobStatusCode
from tomato_mqtt.wire.base import SCHEMA, DecodeError, WireModel, decode, encode
from tomato_mqtt.wire.base import renamed as _renamed
from tomato_mqtt.wire.data import AckArgs, DataBatch, LastPoint, ReplayArgs, stream_id

__all__ = [
    "MESSAGES",
    "SCHEMA",
    "AckArgs",
    "ComponentMeta",
    "ComponentStatus",
    "DataBatch",
    "DecodeError",
    "DriverInfo",
    "ErrorCode",
    "JobEvent",
    "JobProgress",
    "JobStatus",
    "LastPoint",
    "NodeComponent",
    "NodeConfigure",
    "NodeStatus",
    "PipelineStatus",
    "RecorderStatus",
    "ReplayArgs",
    "Reply",
    "Request",
    "SchedulerStatus",
    "TaskEndInfo",
    "WireModel",
    "decode",
    "encode",
    "stream_id",
]


# the base (WireModel, SCHEMA, decode, encode) lives in wire/base.py; re-exported here
# -- request / reply -------------------------------------------------------------------
#: the longest request id (a client's is a 32-digit uuid) and reply topic taken
MAX_ID = 128
MAX_TOPIC = 512


class Request(WireModel):
    """A command: published on ``.../cmd/<op>``, answered on ``reply_to``."""

    # bounded: a responder remembers the ids it answered (a reader's 10 MB ids took a
    # scheduler to 850 MB: found by an outside audit)
    id: str = Field(min_length=1, max_length=MAX_ID)
    reply_to: str = Field(max_length=MAX_TOPIC)
    args: dict[str, JsonValue] = Field(default_factory=dict)


ErrorCode = Literal[
    "bad_request",  # args missing, malformed or out of range
    "unknown_op",  # no such operation on this responder
    "not_found",  # a named job, pipeline, component or attr does not exist
    "conflict",  # not now: busy, already in that state, a job runs
    "refused",  # understood and not acceptable (e.g. a payload, a reload)
    "not_allowed",  # the caller's role may not do this
    "unavailable",  # a service this needs did not answer
    "internal",  # a bug: the responder logged it
]


class Reply(WireModel):
    """tomato's Reply, plus the id of the request it answers and, on failure, a code."""

    id: str
    success: bool
    msg: str
    data: JsonValue = None
    code: ErrorCode | None = Field(
        None, description="why it failed, for programs (null on success); msg is for people"
    )


# -- presence --------------------------------------------------------------------------
PresenceState = Literal["online", "stopping", "offline", "lost"]


class SchedulerStatus(WireModel):
    state: PresenceState
    instance: str
    epoch: int = 0
    heartbeat: float = 0.0
    version: str = ""
    started_at: float | None = None
    broker: str | None = None
    jobs_running: int = 0
    jobs_queued: int = 0
    heartbeat_interval: float | None = Field(
        default=None,
        description="s between the statuses of every service ([scheduler] heartbeat)",
    )
    lost_after: float | None = Field(
        default=None,
        description=(
            "s without a status after which the stack counts a peer lost ([scheduler] "
            "lost_after): judge by your own clock at receipt"
        ),
    )
    storage_error: str | None = Field(
        default=None,
        description=(
            "why the scheduler's state file cannot be used now (damaged while it ran, or "
            "it takes no writes: a full disk), and what to do; requests that need it are "
            "answered `unavailable` meanwhile; null again once a write is stored"
        ),
    )
    broker_warnings: list[str] | None = Field(
        default=None,
        description=(
            "what an external broker does not do that this contract needs (checked once "
            "at the scheduler's start: a broker that sends no retained message to a "
            "wildcard subscription, as RabbitMQ's MQTT plugin); [] when it does it; null "
            "before the check, and on the embedded broker"
        ),
    )


class DriverInfo(WireModel):
    version: str | None = None
    loaded: bool = False
    error: str | None = None


#: components (and drivers) one node's status may list: a node's login that listed 200,000
#: made-up ones sent every dashboard page 6 MB per status, and `tomato status nodes` a
#: reply past its bound (a security round); a status beyond it is refused as malformed
NODE_COMPONENTS_MAX = 4096


class NodeStatus(WireModel):
    state: PresenceState
    node: str
    epoch: int = 0
    heartbeat: float = 0.0
    version: str = ""
    host: str | None = None
    pid: int | None = None
    drivers: dict[str, DriverInfo] = Field(default_factory=dict, max_length=NODE_COMPONENTS_MAX)
    components: list[str] = Field(default_factory=list, max_length=NODE_COMPONENTS_MAX)
    streams: dict[str, int] = Field(
        default_factory=dict,
        max_length=NODE_COMPONENTS_MAX,
        description="component -> last data seq of its current stream",
    )
    stream_ids: dict[str, str] = Field(
        default_factory=dict,
        max_length=NODE_COMPONENTS_MAX,
        description="component -> id of its current data stream (see DataBatch.stream)",
    )
    spool_pending: int = 0
    spool_dropped: int = 0
    spool_error: str | None = Field(
        default=None,
        description="why the node's spool takes no writes now (a full or read-only "
        "datadir, another program's lock) and where its batches wait meanwhile (memory, "
        "an overflow file); null when it takes them",
    )
    restarting: bool = Field(
        default=False,
        description="with state offline: the node stopped to be started again at once "
        "(`tomato restart-node`, its supervisor starts it): back within seconds",
    )


class RecorderStatus(WireModel):
    state: PresenceState
    heartbeat: float = 0.0
    version: str = ""
    started_at: float | None = Field(
        default=None,
        description="when this recorder process started (s since the epoch): a new value "
        "means a restart, and requests sent to the old one must be sent again",
    )
    jobs: dict[str, JobProgress] = Field(default_factory=dict)
    highest_job: int | None = Field(
        default=None,
        description="the highest job id this recorder wrote a file of, or named by its "
        "stored batches within 1,000 past that (a node's login may name any job id in its "
        "batches): a scheduler whose state file was replaced (removed, restored from a "
        "backup) continues its job ids after it, so that no new job takes a used id (and "
        "an old job's file its points)",
    )
    storage_error: str | None = Field(
        default=None,
        description="why the recorder cannot store data right now (disk full, read-only, "
        "permission); null when it can. Unstored batches stay in the nodes' spools.",
    )


class JobProgress(WireModel):
    points: dict[str, int] = Field(default_factory=dict)
    gaps: int = 0
    file: str | None = None
    conflicts: int = Field(
        default=0,
        description="batches naming this job that repeated a stored identity with other "
        "content, of any component (the job's verdict names only its own components')",
    )
    merged: int = Field(
        default=0, description="times late data was merged into the job's final file"
    )
    not_merged: str | None = Field(
        default=None,
        description="why late data was not merged into the job's file (it holds points the"
        " recorder's store lost) and where it went instead; null: nothing refused",
    )


# -- nodes and components ----------------------------------------------------------------
class NodeComponent(WireModel):
    """A component as the scheduler assigns it to a node."""

    name: str
    device: str
    driver: str
    address: str
    channel: str
    pollrate: float = 1.0


class NodeConfigure(WireModel):
    """Args of ``node/<n>/cmd/configure``: the full set of components the node hosts."""

    # required: a configure without its component list is refused, never read as "none"
    components: list[NodeComponent]
    driver_settings: dict[str, dict[str, JsonValue]] = Field(default_factory=dict)
    batch_interval: float | None = None


class ComponentMeta(WireModel):
    name: str
    device: str
    driver: str
    address: str
    channel: str
    node: str
    registered: bool = False
    error: str | None = None
    attrs: dict[str, AttrSpec] = Field(default_factory=dict)
    capabilities: list[str] = Field(default_factory=list)
    constants: dict[str, JsonValue] = Field(default_factory=dict)
    block_interval: float | None = Field(
        default=None,
        description="a bulk component: s between the blocks of points its driver hands over "
        "(the floor on sampling_interval does not apply to its tasks)",
    )


class TaskEndInfo(WireModel):
    job: int | None = Field(alias="jobid", validation_alias=_renamed("jobid", "job"))
    task: int | None
    task_name: str | None = None
    reason: Literal["done", "stopped", "error"] = Field(
        description="how the task ended; 'error' also for a task whose start failed on its "
        "node (after the node had said it accepted it): then npoints is 0, t_start equals "
        "t_end and message says why"
    )
    message: str | None = None
    t_start: float
    t_end: float
    npoints: int = Field(default=0, description="points the runner took in this task")
    missed: int = Field(
        default=0, description="sampling deadlines skipped because the runner was behind"
    )
    clock_step: float = Field(
        default=0.0,
        description="s the node's wall clock stepped by while the task ran (its points "
        "keep the node's timestamps: uts jump there); 0: none",
    )
    clock_step_at: float | None = Field(
        default=None, description="the uts of the first point after the (first) step"
    )
    epoch: int = 0
    stream: str = Field(default="", description="the data stream the task's points went to")
    last_seq: int = Field(default=-1, description="last batch of the task in its stream")

    @property
    def failed_start(self) -> bool:
        """The end of a task whose start failed on its node (it never ran)."""
        return self.reason == "error" and self.npoints == 0 and self.t_start == self.t_end


ComponentState = Literal["unregistered", "idle", "running", "error", "lost"]


class ComponentStatus(WireModel):
    name: str
    node: str
    state: ComponentState
    time: float
    job: int | None = Field(None, alias="jobid", validation_alias=_renamed("jobid", "job"))
    task: int | None = None
    task_name: str | None = None
    technique: str | None = None
    started_at: float | None = Field(
        None,
        description="when the task began (s since the epoch, on the node's clock); null "
        "when no task runs, and while a task just accepted is still being set up",
    )
    max_duration: float | None = Field(
        None,
        description="the running task's planned duration (s, its payload's max_duration); "
        "null when no task runs",
    )
    attrs: dict[str, JsonValue] = Field(default_factory=dict)
    error: str | None = None
    epoch: int = 0
    stream: str = ""  # the component's current data stream (see DataBatch.stream)
    seq: int = -1  # last data batch published in that stream
    last_task: TaskEndInfo | None = None


class TaskStartArgs(WireModel):
    task: TaskSpec
    epoch: int | None = Field(
        None,
        description="the node's epoch the requester starts the task on (its status's "
        "epoch when the start was decided): a node of another epoch (it restarted "
        "meanwhile, and may have run the task in part before) refuses it, code conflict",
    )


# -- pipelines and jobs ----------------------------------------------------------------
class PipelineStatus(WireModel):
    """A pipeline, named as tomato 2.2's ``Pipeline`` (``sampleid``, ``jobid``)."""

    name: str
    sample: str | None = Field(
        None, alias="sampleid", validation_alias=_renamed("sampleid", "sample")
    )
    ready: bool = False
    job: int | None = Field(None, alias="jobid", validation_alias=_renamed("jobid", "job"))
    roles: dict[str, str] = Field(default_factory=dict)
    owner: str | None = Field(
        None,
        description="whose sample it holds: the operator who loaded it on a secured stack "
        "(only their jobs run on it; only they or an admin eject it or mark it ready); "
        "null: the lab's (loaded by an admin, or on an open stack), for every job",
    )


class JobStatus(WireModel):
    """The retained summary of a job (schema 2): no payload; ``job_status`` has it all.

    Kept small so that retained state stays bounded: a finished job's status is cleared
    from the broker past ``[jobs] retain_finished`` / ``retain_finished_age`` (its history stays
    in the scheduler, reachable with ``ketchup status``/``search`` and the client).
    """

    jobid: int
    jobname: str | None = None
    status: JobStatusCode
    pipeline: str | None = None
    sampleid: str | None = None
    owner: str | None = None
    submitted_at: str | None = None
    launched_at: str | None = None
    completed_at: str | None = None
    respath: str | None = None
    snappath: str | None = None
    reason: str | None = None
    points: dict[str, int] = Field(
        default_factory=dict, description="role -> points stored (set when the job ends)"
    )
    tasks: int | None = Field(
        None,
        description="how many tasks its payload's method has (a running task's index is "
        "in its component's status)",
    )
    roles: dict[str, str] = Field(
        default_factory=dict,
        description="role -> the component that runs its tasks (set once the job runs): "
        "the recorder counts points per component, a job's file and `points` per role",
    )

    @classmethod
    def of(cls, job: Job) -> JobStatus:
        sample = job.payload.get("sample")
        sid = (sample.get("identifier") or sample.get("name")) if isinstance(sample, dict) else None
        pts = job.progress.get("points")
        method = job.payload.get("method")
        roles = job.progress.get("roles")
        return cls(
            jobid=job.id,
            jobname=job.jobname,
            status=job.status,
            pipeline=job.pipeline,
            sampleid=sid if isinstance(sid, str) else None,
            owner=job.owner,
            submitted_at=job.submitted_at,
            launched_at=job.launched_at,
            completed_at=job.completed_at,
            respath=job.respath,
            snappath=job.snappath,
            reason=job.reason,
            points={str(k): int(v) for k, v in pts.items()} if isinstance(pts, dict) else {},
            tasks=len(method) if isinstance(method, list) else None,
            roles={str(r): str(c) for r, c in roles.items()} if isinstance(roles, dict) else {},
        )


JobEventKind = Literal[
    "queued",
    "matched",
    "launched",
    "task_started",
    "task_ended",
    "cancel_requested",
    "snapshot_written",
    "file_written",
    "completed",
    "warning",  # something the user should know that does not fail the job (detail.message)
    "storage_fault",  # the recorder cannot store data (detail.error); the spools keep it
    "storage_resumed",
    "late_data_merged",  # points that arrived after the job ended are now in its file
]


class JobEvent(WireModel):
    job: int = Field(alias="jobid", validation_alias=_renamed("jobid", "job"))
    event: JobEventKind
    time: float
    role: str | None = None
    task: int | None = None
    status: str | None = None
    detail: dict[str, JsonValue] = Field(default_factory=dict)


RecorderStatus.model_rebuild()

#: Every message model, by channel kind (for the AsyncAPI document and tests).
MESSAGES: dict[str, tuple[type[WireModel], ...]] = {
    "meta_schema": (),  # the AsyncAPI document itself
    "scheduler_status": (SchedulerStatus,),
    "scheduler_cmd": (Request,),
    "reply": (Reply,),
    "node_status": (NodeStatus,),
    "node_cmd": (Request,),
    "component_meta": (ComponentMeta,),
    "component_status": (ComponentStatus,),
    "component_cmd": (Request,),
    "component_user_cmd": (Request,),
    "component_data": (DataBatch,),
    "component_last": (LastPoint,),
    "pipeline_status": (PipelineStatus,),
    "job_status": (JobStatus,),
    "job_event": (JobEvent,),
    "recorder_status": (RecorderStatus,),
    "recorder_cmd": (Request,),
}
