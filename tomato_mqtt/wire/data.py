"""The data path's messages: batches of points as columns, the latest point, and the
recorder's replay and ack requests to a node (see DESIGN §4 and docs/output.md)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from tomato_mqtt.wire.base import WireModel
from tomato_mqtt.wire.base import renamed as _renamed

__all__ = ["STREAM_MAX", "AckArgs", "Cell", "DataBatch", "LastPoint", "ReplayArgs", "stream_id"]

#: the longest stream id a batch may carry (a node draws ~25 characters; a node's login
#: sent 100 kB ones, which the recorder stored and listed in a job's reply: a hostile tour)
STREAM_MAX = 128


Cell = float | int | bool | str | None | list[Any]
"""One value of a variable at one ``uts``: a scalar, or nested lists for extra dims."""


class DataBatch(WireModel):
    """A batch of points of one component stream, as columns.

    ``vars`` maps each variable to one value per entry of ``uts``; ``jobid`` and ``task``
    are those the points were taken in (null for idle measurements): all points of a
    batch belong to the same task. ``n`` is ``len(uts)`` (written before the columns, so
    a reader can count points without parsing them). A value that could not be measured
    is null (JSON has no NaN).

    **Infinities**: JSON has no infinity either; a value that is +inf or -inf is null in
    ``vars`` too, and ``nonfinite`` says which: variable -> ``{"inf": [i, ...], "-inf":
    [i, ...]}``, indices into the variable's values flattened in order (for an
    array-valued variable, ``point * size_of_one_point + offset``). A reader that ignores
    ``nonfinite`` reads them as missing values.

    **Array-valued variables**: a variable named in ``dims`` has, per point, a nested
    list whose axes are the extra dimensions listed there (in order); each extra
    dimension's coordinate values are in ``coords``. ``units`` holds the units of
    variables and of coordinates, as the driver spells them.

    Identity: ``(component, stream, seq)``. ``stream`` is a random id the node draws
    whenever a component's stream starts (node start, registration, re-registration,
    reload), so an identity is never reused; ``seq`` numbers the stream's batches from 0
    without gaps. Batches of older nodes carry no ``stream``: their stream is
    ``e<epoch>`` (:meth:`stream_id`).
    """

    walked: ClassVar[bool] = False  # (its columns: see WireModel.walked)

    component: str
    job: int | None = Field(None, alias="jobid", validation_alias=_renamed("jobid", "job"))
    task: int | None = None
    epoch: int
    stream: str = Field(default="", max_length=STREAM_MAX)
    seq: int
    n: int | None = Field(default=None, description="number of points (len of uts)")
    uts: list[float]
    vars: dict[str, list[Cell]]
    units: dict[str, str] = Field(default_factory=dict)
    dims: dict[str, list[str]] = Field(
        default_factory=dict, description="variable -> its extra dimensions (after uts)"
    )
    coords: dict[str, list[float | int | str]] = Field(
        default_factory=dict, description="extra dimension -> its coordinate values"
    )
    nonfinite: dict[str, dict[Literal["inf", "-inf"], list[int]]] = Field(
        default_factory=dict,
        description="variable -> the flat indices of its values that are +inf / -inf "
        "(null in vars: JSON has no infinity)",
    )

    @model_validator(mode="after")
    def _count(self) -> DataBatch:
        if self.n is None:
            self.n = len(self.uts)
        elif self.n != len(self.uts):
            raise ValueError(f"n is {self.n}, but uts has {len(self.uts)} entries")
        return self

    def stream_id(self) -> str:
        return stream_id(self.stream, self.epoch)


class LastPoint(WireModel):
    """The latest point of a component: ``vars`` as in :class:`DataBatch`, one value each."""

    component: str
    uts: float
    values: dict[str, Cell] = Field(alias="vars", validation_alias=_renamed("vars", "values"))
    units: dict[str, str] = Field(default_factory=dict)
    job: int | None = Field(None, alias="jobid", validation_alias=_renamed("jobid", "job"))
    task: int | None = None
    dims: dict[str, list[str]] = Field(default_factory=dict)
    coords: dict[str, list[float | int | str]] = Field(default_factory=dict)


def stream_id(stream: str, epoch: int) -> str:
    """A stream's identity: its id, or ``e<epoch>`` for a node that sends none."""
    return stream or f"e{epoch}"


#: a sequence number or epoch as the node's spool stores it (SQLite's INTEGER)
_Seq = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]


class _RecorderArgs(WireModel):
    """A recorder's request to a node: refused if it has an unknown key or a value of
    another JSON type, as every other request's args are (``true`` for an epoch was read
    as 1, and a seq of 2**70 failed in the spool as an internal error: a hostile tour)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ReplayArgs(_RecorderArgs):
    epoch: _Seq
    first: _Seq
    last: _Seq
    stream: str = ""  # "" : the stream e<epoch> of an older recorder


class AckArgs(_RecorderArgs):
    epoch: _Seq
    upto: _Seq
    stream: str = ""
