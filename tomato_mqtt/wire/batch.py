"""Data batches at C speed: the hot path's encoder and the recorder's header reader.

A :class:`~tomato_mqtt.wire.messages.DataBatch` is the contract (its JSON Schema is in
the AsyncAPI document, and every batch this module writes validates against it), but
the hot path does not build the model: building it validates every value in Python.
:func:`encode_batch` writes the same JSON with orjson straight from the columns (numpy
arrays serialise natively, NaN becomes null), header fields first and ``n`` (the point
count) before the columns, so :func:`read_header` gets everything the recorder needs to
store and count a batch by parsing only those first few hundred bytes. A batch in any
other key order (a third-party publisher, an older node) is parsed whole and checked
the same way. Neither side makes one Python object per point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from pydantic import Field, ValidationError

from tomato_mqtt.wire.base import renamed
from tomato_mqtt.wire.data import STREAM_MAX
from tomato_mqtt.wire.messages import SCHEMA, DecodeError, WireModel, stream_id

__all__ = ["BatchHeader", "encode_batch", "encode_json", "infinities", "read_header"]

_OPTS = orjson.OPT_SERIALIZE_NUMPY
_UTS = b',"uts":'
_HEAD_MAX = 4096  # the header of our own batches is far shorter


class BatchHeader(WireModel):
    """The fields of a data batch the recorder stores it by (not its columns)."""

    component: str
    job: int | None = Field(None, alias="jobid", validation_alias=renamed("jobid", "job"))
    task: int | None = None
    epoch: int
    stream: str = Field("", max_length=STREAM_MAX)
    seq: int
    n: int

    def stream_id(self) -> str:
        return stream_id(self.stream, self.epoch)


def _default(obj: Any) -> Any:
    # numpy arrays orjson cannot take as they are (non-contiguous, float16, objects):
    # the rare slow path
    tolist = getattr(obj, "tolist", None)
    if tolist is not None:
        return tolist()
    raise TypeError(f"cannot put a {type(obj).__name__} on the wire")


def encode_json(obj: Any) -> bytes:
    """JSON for wire messages built from columns (numpy arrays, NaN → null)."""
    return orjson.dumps(obj, option=_OPTS, default=_default)


def encode_batch(
    *,
    component: str,
    job: int | None,
    task: int | None,
    epoch: int,
    stream: str,
    seq: int,
    uts: Sequence[float] | Any,
    vars: Mapping[str, Any],
    units: Mapping[str, str],
    dims: Mapping[str, Sequence[str]] | None = None,
    coords: Mapping[str, Any] | None = None,
    scan_lists: bool = True,
) -> bytes:
    """One data batch as JSON, header first (see the module docstring). ``scan_lists``:
    look for infinities in list columns too (numpy arrays always: one ``isinf``); the
    node passes False while no driver of its process has handed one over."""
    msg: dict[str, Any] = {
        "schema": SCHEMA,
        "component": component,
        "jobid": job,
        "task": task,
        "epoch": epoch,
        "stream": stream,
        "seq": seq,
        "n": len(uts),
        "uts": uts,
        "vars": vars,
        "units": units,
    }
    if dims:
        msg["dims"] = {k: list(v) for k, v in dims.items()}
        msg["coords"] = dict(coords or {})
    nonfinite = infinities(vars, scan_lists)
    if nonfinite:
        msg["nonfinite"] = nonfinite
    return encode_json(msg)


_INF = float("inf")


def infinities(vars: Mapping[str, Any], lists: bool = True) -> dict[str, dict[str, list[int]]]:
    """Per variable, the flat indices of its +inf and -inf values (orjson writes them as
    null, as NaN: a data-fidelity review found ±inf in the file as NaN, the job ``c``).
    Two scans of a list at C speed (``in``), one ``isinf`` of an array; nothing is built
    unless a column holds one."""
    out: dict[str, dict[str, list[int]]] = {}
    for name, col in vars.items():
        found: dict[str, list[int]] | None = None
        dtype = getattr(col, "dtype", None)
        if dtype is not None:
            if dtype.kind == "f":
                found = _in_array(col)
        elif isinstance(col, (list, tuple)) and lists:
            if col and not isinstance(col[0], (list, tuple)) and not hasattr(col[0], "shape"):
                if _INF in col or -_INF in col:  # scalars: two scans at C speed
                    found = {
                        "inf": [i for i, v in enumerate(col) if v == _INF],
                        "-inf": [i for i, v in enumerate(col) if v == -_INF],
                    }
            else:  # an array variable's points (lists, tuples, arrays): numpy's view
                found = _in_array(col)
        if found:
            out[name] = {k: v for k, v in found.items() if v}
    return out


def _in_array(col: Any) -> dict[str, list[int]] | None:
    """The flat indices of an array's (or of nested points') infinities; None if none, or
    if its values are not numbers (the encoder then says what is wrong)."""
    import numpy as np  # the driver that made the array (or a tomato 2.2 one) has it

    try:
        flat = np.asarray(col, dtype=float).ravel()
    except (TypeError, ValueError):
        return None
    where = np.isinf(flat)
    if not where.any():
        return None
    idx = np.flatnonzero(where)
    return {"inf": idx[flat[idx] > 0].tolist(), "-inf": idx[flat[idx] < 0].tolist()}


def read_header(raw: bytes, topic: str | None = None) -> BatchHeader:
    """The header of a data batch; :class:`DecodeError` for anything malformed."""
    head: Any = None
    i = raw.find(_UTS, 0, _HEAD_MAX)
    if i > 0:
        try:
            head = orjson.loads(raw[:i] + b"}")
        except orjson.JSONDecodeError:
            head = None
    if (
        not isinstance(head, dict)
        or not isinstance(head.get("n"), int)
        or _uts_count(raw, i + len(_UTS)) != head["n"]
    ):
        # read whole (its n checked against its uts there): a batch saying n 5 of 1 uts
        # was stored as 5 points and made a finished job's file and count grow (an
        # integrator's run); one whose uts the quick count cannot read (JSON with
        # spaces) is read whole, as before
        head = _whole(raw, topic)
    try:
        return BatchHeader.model_validate(head)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        loc = ".".join(str(x) for x in err["loc"]) or "(message)"
        raise DecodeError(BatchHeader, topic, f"{loc}: {err['msg']}") from None


def _uts_count(raw: bytes, at: int) -> int | None:
    """The number of values in the ``uts`` list starting at ``raw[at]`` (compact JSON of
    numbers, as every batch this fast path reads: its header ended at ``,"uts":``),
    counted without parsing the batch; None if it is not a list of numbers."""
    if raw[at : at + 1] != b"[":
        return None
    end = raw.find(b"]", at)
    if end < 0 or raw.find(b"[", at + 1, end) >= 0:
        return None
    if end == at + 1:
        return 0
    return raw.count(b",", at, end) + 1


def _whole(raw: bytes, topic: str | None) -> dict[str, Any]:
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise DecodeError(BatchHeader, topic, "not valid JSON") from None
    if not isinstance(msg, dict):
        raise DecodeError(BatchHeader, topic, "not a JSON object")
    uts = msg.get("uts")
    cols = msg.get("vars")
    if not isinstance(uts, list) or not isinstance(cols, dict):
        raise DecodeError(BatchHeader, topic, "uts and vars are required (a list, an object)")
    for name, col in cols.items():
        if not isinstance(col, list) or len(col) != len(uts):
            raise DecodeError(
                BatchHeader, topic, f"vars.{name}: one value per uts ({len(uts)}) is required"
            )
    n = msg.get("n", len(uts))
    if n != len(uts):  # the points counted are the points there
        raise DecodeError(BatchHeader, topic, f"n: {n} point(s), but uts has {len(uts)}")
    msg["n"] = len(uts)
    return msg
