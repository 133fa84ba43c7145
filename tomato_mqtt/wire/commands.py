"""Every command on the wire: its args model, its reply-data type, and the error codes.

One :class:`Command` per ``(responder, op)``; :data:`COMMANDS` lists them all. The
responder (``transport/rpc.py``) validates ``args`` against the model before a handler
runs and the reply ``data`` against its type after; a Python requester can validate the
data it gets back with :meth:`Command.parse_data`. The AsyncAPI document lists every
model, so an integrator sees the same contract.

Failed replies carry a machine-readable ``code`` (:data:`ErrorCode`): clients branch on
it, never on the text of ``msg``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    TypeAdapter,
    model_validator,
)

from tomato_mqtt.config.devices import LayoutDiff
from tomato_mqtt.model.jobs import Job
from tomato_mqtt.wire.messages import (
    AckArgs,
    ComponentStatus,
    ErrorCode,
    NodeConfigure,
    RecorderStatus,
    ReplayArgs,
    TaskStartArgs,
)
from tomato_mqtt.wire.status import (
    STATUS_DATA_BY_WHAT,
    JobSummary,
    PipelineInfo,
    StatusData,
    WhoamiData,
)

__all__ = [
    "COMMANDS",
    "DATA_BY_ARG",
    "ERROR_CODES",
    "Command",
    "ErrorCode",
    "Responder",
    "command",
    "commands_of",
]

ERROR_CODES: tuple[str, ...] = get_args(ErrorCode)

Responder = Literal["scheduler", "node", "component", "recorder"]


class _Args(BaseModel):
    """Request args: unknown keys are refused (a typo never silently defaults), and so
    are values of another JSON type (strict: ``"2"`` or ``true`` for a job id, ``"on"``
    for ``force`` were read as 2, 1 and true: found by an outside audit)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class _Data(BaseModel):
    model_config = ConfigDict(extra="allow")


class NoArgs(_Args):
    pass


class StopArgs(_Args):
    force: bool = Field(
        False,
        description="also while jobs run: they are cancelled first (their tasks stopped, "
        "files written), and the stack stops once their tasks are stopped",
    )


# -- scheduler ---------------------------------------------------------------------------
StatusSection = Literal["scheduler", "pipelines", "devices", "components", "nodes", "drivers"]


class StatusArgs(_Args):
    what: StatusSection = "scheduler"


class PipelineArgs(_Args):
    pipeline: str


def _sample_or_sampleid(schema: dict[str, Any]) -> None:
    """The JSON Schema of LoadArgs as the responder reads it: ``sampleid`` or ``sample``
    (an integrator validating against the contract refused the documented ``sample``)."""
    props = schema.setdefault("properties", {})
    props["sample"] = {**props["sampleid"], "title": "Sample"}
    schema["required"] = [r for r in schema.get("required", []) if r != "sampleid"]
    schema["oneOf"] = [{"required": ["sampleid"]}, {"required": ["sample"]}]


class LoadArgs(_Args):
    model_config = ConfigDict(json_schema_extra=_sample_or_sampleid)
    pipeline: str
    sampleid: str = Field(
        validation_alias=AliasChoices("sampleid", "sample"),
        description="the sample to load (tomato's name; 'sample' is read too)",
    )


#: the longest payload text a submit may carry (a payload file of tomato is a few kB)
PAYLOAD_TEXT_MAX = 1_000_000


def json_chars(payload: Any) -> int:
    """How long a parsed payload is as the scheduler gets it (compact JSON): held to
    PAYLOAD_TEXT_MAX as its text is."""
    import json

    return len(json.dumps(payload, separators=(",", ":")))


class SubmitArgs(_Args):
    payload: dict[str, JsonValue] | None = Field(
        None, description="the payload, parsed (one of payload and payload_text)"
    )
    payload_text: str | None = Field(
        None,
        max_length=PAYLOAD_TEXT_MAX,
        description=(
            "the payload file's text (YAML or JSON), parsed by the scheduler; it may not "
            "name other files (samplefile, methodfile)"
        ),
    )
    jobname: str | None = None
    submit_dir: str | None = None
    user: str | None = Field(
        None,
        description="the user identifier a payload older than 2.2 (which has none) is given: "
        "who submits it (ketchup and the client library give the user they run as); by "
        "default the request's login, 'anonymous' on an open stack",
    )
    token: str | None = Field(
        None,
        min_length=8,
        max_length=64,
        description=(
            "the client's id for this submission (random): a submit with a token the same "
            "login used before is answered with that job, not queued again (a client "
            "sends its request again when no answer comes, e.g. across a scheduler restart)"
        ),
    )

    @model_validator(mode="after")
    def _one_payload(self) -> SubmitArgs:
        if (self.payload is None) == (self.payload_text is None):
            raise ValueError("give one of payload and payload_text")
        if self.payload is not None:  # as large as its text may be, parsed or not
            size = json_chars(self.payload)
            if size > PAYLOAD_TEXT_MAX:
                raise ValueError(
                    f"the payload is {size:,} characters as JSON, more than a payload may "
                    f"have ({PAYLOAD_TEXT_MAX:,})"
                )
        return self


#: a job id: what the scheduler's store can hold (a bigger one was an OverflowError
#: deep in SQLite, answered "internal error" with a traceback in the log)
JOB_ID_MAX = 2**63 - 1
JobId = Annotated[int, Field(ge=0, le=JOB_ID_MAX)]


#: the most job ids one request may name (``[1] * 120000`` made a 200 MB reply, and the
#: scheduler's heartbeat stopped for 12 s while it was built: an outside audit)
JOB_IDS_MAX = 1000


class JobIdsArgs(_Args):
    jobids: list[JobId] | None = Field(None, max_length=JOB_IDS_MAX)


#: the most jobs one ``job_status`` reply lists (the whole listing is paged beyond it)
JOB_PAGE_MAX = 500


class JobStatusArgs(_Args):
    """``job_status``: the jobs given, a page of the whole listing, or a summary."""

    jobids: list[JobId] | None = Field(
        None,
        max_length=JOB_IDS_MAX,
        description=f"these jobs, in this order (not paged; at most {JOB_IDS_MAX})",
    )
    summary: bool = Field(
        False, description="counts per status and pipeline instead of jobs (JobSummary)"
    )
    limit: int | None = Field(
        None,
        ge=1,
        le=JOB_PAGE_MAX,
        description=f"jobs per page of the whole listing (default and most: {JOB_PAGE_MAX})",
    )
    offset: int | None = Field(
        None,
        ge=0,
        le=2**63 - 1,
        description="position of the page's first job in the listing by id (default: the "
        "last page, so the newest jobs are always in it)",
    )


class SearchArgs(_Args):
    name: str = Field(max_length=1000)  # SQLite refuses a LIKE pattern past 50,000
    complete: bool = Field(
        False,
        description="also the jobs that ended (c, ce, cd); false, the default here: only "
        "queued and running ones (`ketchup search` and the client library ask for all)",
    )


class SnapshotArgs(_Args):
    jobid: JobId
    record: bool = Field(
        True,
        description=(
            "false: a copy to read (a dashboard's plots of a job it did not see begin): "
            "the job's snappath is not changed and no snapshot_written event is sent"
        ),
    )


# -- recorder ----------------------------------------------------------------------------
class Expect(BaseModel):
    """One ended task: its component, and how many points its runner took."""

    model_config = ConfigDict(extra="ignore")
    component: str
    task: int | None = None
    npoints: int | None = None
    epoch: int = 0
    stream: str = ""
    last_seq: int = -1


class FinalizeArgs(_Args):
    job: dict[str, JsonValue]
    roles: dict[str, dict[str, JsonValue]]
    expect: list[Expect] = Field(default_factory=list)
    path: str
    fallback_dir: str
    snapshot: bool = False
    wait: float = 30.0
    clock_offsets: dict[str, float] = Field(
        default_factory=dict, description="role -> node clock minus scheduler clock, s"
    )


class FileData(_Data):
    """A written results file or snapshot; fetch its bytes with ``token``."""

    path: str
    size: int
    token: str
    chunks: int
    points: dict[str, int]
    missing: list[str] = Field(default_factory=list, description="tasks short of points")
    extra: list[str] = Field(default_factory=list, description="tasks with points too many")
    conflicts: list[str] = Field(
        default_factory=list, description="batches whose identity repeated with other data"
    )
    altered: list[str] = Field(
        default_factory=list,
        description="stored points or values the file could not hold as they came, and why",
    )
    fallback: str | None = Field(None, description="why the file went to the job folder")
    storage_error: str | None = Field(None, description="the recorder cannot store now: why")
    temporary: bool = Field(
        False,
        description="a snapshot its job folder's disk refused (full, read-only), made in "
        "the recorder's private temporary folder for this transfer only: removed once its "
        "last chunk is fetched; not the job's snappath",
    )


class FetchArgs(_Args):
    token: str
    index: int = Field(ge=0)


class ChunkData(_Data):
    index: int
    data: str = Field(description="base64 of up to 256 KiB of the file")


# -- node and components -----------------------------------------------------------------
class ShutdownArgs(_Args):
    """Destructive, so strict: unknown keys and non-booleans are refused, not defaulted."""

    force: bool = False
    deadline: float | None = Field(
        default=None,
        description="when the sender stops waiting for the answer (s since the epoch, its "
        "clock): a node that stood still (SIGSTOP, a suspended VM) and reads the request "
        "after it does not carry it out (the sender was told that nothing answered)",
    )


class ConfigureData(_Data):
    added: list[str] = Field(description="components registered (new, or made again)")
    removed: list[str]
    renewed: list[str] = Field(
        default_factory=list,
        description="of ``added``, those it had and made again (new driver settings, a "
        "driver installed or its host process gone)",
    )


class TaskStopArgs(_Args):
    job: int | None = None
    reason: str | None = None


class SetAttrArgs(_Args):
    attr: str
    val: JsonValue
    force: bool = False


class GetAttrArgs(_Args):
    attrs: list[str] | None = None
    attr: str | None = None


class ForceArgs(_Args):
    force: bool = False


class ResetArgs(ForceArgs):
    job: int | None = Field(
        default=None,
        description="reset only if this job's task is the one running, or the last that "
        "ran, on the component (the scheduler's reset after a job that ended without "
        "its node: a status of it that came late, from a broker that restored old "
        "retained messages, stopped the task of the job running since)",
    )


class StartedData(_Data):
    started_at: float | None
    epoch: int


class StopData(_Data):
    running: bool


class MeasureData(_Data):
    uts: float
    vars: dict[str, JsonValue] = Field(description="variable -> value (as LastPoint.vars)")
    units: dict[str, str] = Field(
        default_factory=dict, description="variable -> units, for quantities (as LastPoint.units)"
    )


class RegisteredData(_Data):
    """The component registered again, as tomato's ``Component`` (its ``role`` is the
    pipeline's: null from a node, which knows no pipelines)."""

    name: str
    device: str
    driver: str
    address: str
    channel: str
    capabilities: list[str]
    role: str | None = None


class ReplayData(_Data):
    replayed: int


class AckData(_Data):
    acked: int


# -- the registry ------------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    responder: Responder
    op: str
    args: type[BaseModel]
    data: Any  # a type pydantic can validate (a model, a list of models, a union), or None
    doc: str
    #: changes nothing a second call would find changed (a copy of the request, sent again
    #: while no answer came, is simply answered anew): see rpc.Responder
    reads: bool = False

    @cached_property
    def _adapter(self) -> TypeAdapter[Any]:
        return TypeAdapter(self.data)

    def parse_args(self, args: Any) -> BaseModel:
        """The args as a responder reads them: strictly of their JSON type, as they travel
        (a caller's tuple is an array, numpy's integers are integers: strict checks of
        the Python objects refused a script's ``jobs(*df["id"])``, found by a review)."""
        return self.args.model_validate(_as_sent(args))

    def parse_data(self, data: Any) -> Any:
        """The reply data as typed objects (raises pydantic's ValidationError)."""
        return self._adapter.validate_python(data)

    def data_schema(self) -> dict[str, Any]:
        return self._adapter.json_schema(mode="serialization")


def _as_sent(args: Any) -> Any:
    """``args`` as JSON carries them; as they are when JSON cannot (refused then)."""
    import orjson

    try:
        return orjson.loads(orjson.dumps(args, option=orjson.OPT_SERIALIZE_NUMPY))
    except (TypeError, orjson.JSONEncodeError):
        return args


def _c(
    responder: Responder,
    op: str,
    args: type[BaseModel],
    data: Any,
    doc: str,
    *,
    reads: bool = False,
) -> Command:
    return Command(responder, op, args, data, doc, reads)


#: (responder, op) -> (an arg, which reply data each of its values gets): for a reply
#: whose data is one of several shapes (the AsyncAPI's x-data-by-args)
DATA_BY_ARG: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {
    ("scheduler", "status"): ("what", STATUS_DATA_BY_WHAT),
}

COMMANDS: tuple[Command, ...] = (
    _c(
        "scheduler",
        "status",
        StatusArgs,
        StatusData,
        "scheduler, pipelines, devices, …",
        reads=True,
    ),
    _c("scheduler", "reload", NoArgs, LayoutDiff, "re-read settings and devices file"),
    _c(
        "scheduler",
        "stop",
        StopArgs,
        None,
        "stop the stack (refused while jobs run, unless force: they are cancelled first)",
    ),
    _c("scheduler", "pipeline_load", LoadArgs, PipelineInfo, "load a sample"),
    _c("scheduler", "pipeline_eject", PipelineArgs, PipelineInfo, "eject the sample"),
    _c("scheduler", "pipeline_ready", PipelineArgs, PipelineInfo, "mark ready"),
    _c("scheduler", "job_submit", SubmitArgs, Job, "queue a payload"),
    _c(
        "scheduler",
        "job_status",
        JobStatusArgs,
        list[Job] | JobSummary,
        "jobs by id, a page of all, or a summary",
        reads=True,
    ),
    _c(
        "scheduler",
        "job_cancel",
        JobIdsArgs,
        list[Job],
        "cancel jobs; a job that has already ended is left as it is and answered "
        '`success: true` ("job 1 has already ended (c)"), as tomato 2.2\'s `ketchup cancel` does',
    ),
    _c(
        "scheduler",
        "job_search",
        SearchArgs,
        list[Job],
        "jobs by name; none: `not_found` (as tomato's `ketchup search`), not an empty list",
        reads=True,
    ),
    _c("scheduler", "job_snapshot", SnapshotArgs, FileData, "up-to-date file of a job", reads=True),
    _c(
        "scheduler",
        "whoami",
        NoArgs,
        WhoamiData,
        "who the scheduler sees, what they may do",
        reads=True,
    ),
    _c("node", "configure", NodeConfigure, ConfigureData, "the node's components"),
    _c("node", "rebirth", NoArgs, None, "re-publish every retained topic"),
    _c(
        "node",
        "shutdown",
        ShutdownArgs,
        None,
        "stop the node (one under `tomato start` is started again)",
    ),
    _c("component", "task_start", TaskStartArgs, StartedData, "start a task"),
    _c("component", "task_stop", TaskStopArgs, StopData, "stop the running task"),
    _c("component", "set_attr", SetAttrArgs, dict[str, JsonValue], "set an attribute"),
    _c("component", "get_attr", GetAttrArgs, dict[str, JsonValue], "read attributes", reads=True),
    _c("component", "measure", NoArgs, MeasureData | None, "one measurement now"),
    _c("component", "reset", ResetArgs, None, "reset the device"),
    _c("component", "register", NoArgs, RegisteredData, "register the device again"),
    _c("component", "status", NoArgs, ComponentStatus, "the component's status", reads=True),
    _c("component", "replay", ReplayArgs, ReplayData, "re-send spooled batches", reads=True),
    _c("component", "ack", AckArgs, AckData, "batches stored: drop them from the spool"),
    _c("recorder", "finalize", FinalizeArgs, FileData, "write a job's file or snapshot"),
    _c("recorder", "fetch", FetchArgs, ChunkData, "a chunk of a written file", reads=True),
    _c("recorder", "status", NoArgs, RecorderStatus, "the recorder's status", reads=True),
)

_BY_KEY = {(c.responder, c.op): c for c in COMMANDS}


def command(responder: Responder, op: str) -> Command:
    """The command ``op`` of ``responder``; KeyError if there is none."""
    return _BY_KEY[(responder, op)]


def commands_of(responder: Responder) -> dict[str, Command]:
    return {c.op: c for c in COMMANDS if c.responder == responder}
