"""The base of every wire message: ``WireModel``, the schema version, decode / encode.

Split from :mod:`tomato_mqtt.wire.messages` (which re-exports all of it) to keep that
module to the messages themselves.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final, Literal, TypeVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

__all__ = ["SCHEMA", "DecodeError", "WireModel", "decode", "encode", "renamed"]

#: The message schema version this code writes. 2 (issue 14): one name per concept, as
#: tomato 2.2 spells it (``jobid``, ``sampleid``, ``vars``); epochs in s; retained job
#: status is a summary. Readers accept 1 as well: old names are read as aliases.
SCHEMA: Final = 2


def renamed(new: str, old: str) -> Any:
    """A field written as ``new`` (schema 2) and read as ``new`` or ``old`` (schema 1)."""
    return AliasChoices(new, old)


class WireModel(BaseModel):
    """Base of every message: JSON, versioned by ``schema``, tolerant of extra fields."""

    model_config = ConfigDict(
        extra="ignore",
        populate_by_name=True,
        serialize_by_alias=True,
    )

    schema_: Literal[1, 2] = Field(default=SCHEMA, alias="schema")

    #: decode looks for infinities in its lists and free JSON too (see decode); a data
    #: batch's columns are not walked (a client or page following 10 kHz would pay it)
    walked: ClassVar[bool] = True


M = TypeVar("M", bound=BaseModel)


class DecodeError(ValueError):
    """A payload that is not a valid message of the expected kind."""

    def __init__(self, model: type[BaseModel], topic: str | None, reason: str) -> None:
        self.model = model
        self.topic = topic
        self.reason = reason
        where = f" on {topic}" if topic else ""
        super().__init__(f"bad {model.__name__} message{where}: {reason}")


def _summarise(e: ValidationError) -> str:
    parts = []
    for err in e.errors(include_url=False)[:3]:
        loc = ".".join(str(x) for x in err["loc"]) or "(message)"
        parts.append(f"{loc}: {err['msg']}")
    more = e.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def decode(model: type[M], payload: bytes | str, topic: str | None = None) -> M:
    """Decode ``payload`` as ``model``; any failure is a :class:`DecodeError`."""
    try:
        msg = model.model_validate_json(payload)
    except ValidationError as e:
        bad = next((err for err in e.errors() if err["type"] == "json_invalid"), None)
        if bad is not None:
            # where and why, as the parser says it: 5,000 nested lists read "not valid
            # JSON" (valid, and too deep: an integrator's tour)
            why = str((bad.get("ctx") or {}).get("error") or "").strip()
            if why.startswith("recursion limit exceeded"):
                why = "nested too deeply: " + why
            raise DecodeError(
                model, topic, f"not valid JSON ({why})" if why else "not valid JSON"
            ) from None
        raise DecodeError(model, topic, _summarise(e)) from None
    except (UnicodeDecodeError, ValueError) as e:
        raise DecodeError(model, topic, f"not UTF-8 JSON ({e})") from None
    if _nonfinite(payload):
        # pydantic's parser reads them (into any field that is not a float): passed on
        # as such, a dashboard's page could not parse its update, and showed nothing
        # until the message was gone (a forged retained point: a hostile tour)
        raise DecodeError(model, topic, _NAN)
    # a number beyond a double's range (1e999) is valid JSON that reads as an infinity (a
    # scheduler's lost_after of inf: no peer ever lost). Checked on decode only: a
    # message built here with NaN or inf sends null, as before (a driver's NaN reading in
    # a `measure` reply). Everywhere in the message, but a data batch's columns (their
    # parsers refuse it; a page or client following 10 kHz would pay the walk)
    if (where := _infinite_at(msg, getattr(msg, "walked", True))) is not None:
        raise DecodeError(model, topic, f"{where}: {_HUGE}")
    return msg


_NAN = "not valid JSON (NaN and Infinity are not JSON: a value that could not be measured is null)"
_HUGE = "a number beyond a double's range (it reads as an infinity)"


def _infinite_at(msg: BaseModel, deep: bool) -> str | None:
    """Where ``msg`` holds an infinite float (a dotted path), or None; with ``deep``, in
    its lists and dicts too. Looked for without paths first (most messages have none)."""
    if not _has_infinite(msg, deep):
        return None
    todo: list[tuple[str, Any]] = [("", msg)]
    while todo:
        at, v = todo.pop()
        if isinstance(v, float):
            if v - v != 0.0:  # inf - inf is nan; a finite float's difference is 0
                return at or "(message)"
        elif isinstance(v, BaseModel):
            for k, f in type(v).model_fields.items():  # (named as on the wire)
                name = f.alias if isinstance(f.alias, str) else k
                todo.append((f"{at}.{name}" if at else name, getattr(v, k)))
        elif deep and isinstance(v, dict):
            todo.extend((f"{at}.{k}", x) for k, x in v.items())
        elif deep and isinstance(v, list):
            todo.extend((at, x) for x in v)
    return "(message)"


def _has_infinite(msg: BaseModel, deep: bool) -> bool:
    """Whether ``msg`` holds an infinite float. A list of numbers is summed (C speed: a
    sum of finite doubles is finite unless it overflows, and then its items are looked
    at): 256 kB of numbers item by item took 35 ms (a review)."""
    todo: list[Any] = [msg]
    pop, push, many = todo.pop, todo.append, todo.extend
    while todo:
        v = pop()
        t = type(v)
        if t is float:
            if v - v != 0.0:
                return True
        elif t is dict:
            if deep:
                many(v.values())
        elif t is list:
            if deep and v:
                try:
                    total = sum(v)
                except (TypeError, OverflowError):  # (not all numbers, or an int no
                    many(v)  # float holds beside a float: each item, a review)
                    continue
                if (
                    isinstance(total, float)
                    and total - total != 0.0
                    and any(type(x) is float and x - x != 0.0 for x in v)
                ):
                    return True
        elif isinstance(v, BaseModel):
            many(v.__dict__.values())
        elif isinstance(v, float):  # (a float's subclass)
            push(float(v))
    return False


class _NonFinite(ValueError):
    pass


def _refuse(name: str) -> Any:
    raise _NonFinite(name)


def _nonfinite(payload: bytes | str) -> bool:
    """Whether ``payload`` (valid JSON) holds ``NaN``, ``Infinity`` or ``-Infinity`` outside
    its strings: only a payload with those letters is parsed again to find out, by
    orjson (which refuses them; ~4x pydantic's speed), then, where orjson refuses it for
    another reason (an integer beyond 64 bits), by json."""
    raw = payload.encode() if isinstance(payload, str) else bytes(payload)
    # (one byte's search is a memchr: ~10 µs a MB; a data batch has neither letter)
    if (b"N" not in raw or b"NaN" not in raw) and (b"I" not in raw or b"Infinity" not in raw):
        return False
    import orjson

    try:
        orjson.loads(raw)
        return False
    except orjson.JSONDecodeError:
        pass
    import json

    try:
        json.loads(raw, parse_constant=_refuse)
    except _NonFinite:
        return True
    except ValueError:  # (a BOM, say: what pydantic read, json may not)
        return False
    return False


def encode(msg: BaseModel) -> bytes:
    return msg.model_dump_json(by_alias=True).encode()
