"""Payload files: reading them (CLI side) and parsing them into a 2.2 Payload (scheduler).

:func:`read_payload_file` imports neither pint nor dgbowl-schemas, so ``ketchup submit``
starts fast; :func:`parse_payload` imports dgbowl-schemas when it is first called, and
pint (with numpy, ~22 MB) only when a payload has a unit to parse. Every payload
version tomato accepts (0.1 to 2.2) is parsed by its own dgbowl-schemas model and
upgraded step by step to 2.2. A bad payload raises :class:`PayloadError` naming the field
and the reason.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tomato_mqtt.config.login import login_name
from tomato_mqtt.documents import DocumentError, check_values, kind_of, parse_document
from tomato_mqtt.errors import describe_validation_error, one_line

if TYPE_CHECKING:
    from dgbowl_schemas.tomato.payload import Payload
    from pydantic import ValidationError

__all__ = [
    "LATEST_VERSION",
    "SUPPORTED_VERSIONS",
    "PayloadError",
    "field_as_written",
    "parse_payload",
    "read_payload_file",
    "read_payload_text",
]

SUPPORTED_VERSIONS = ("0.1", "0.2", "1.0", "2.0", "2.1", "2.2")
LATEST_VERSION = "2.2"
_NEXT = dict(itertools.pairwise(SUPPORTED_VERSIONS))
_DURATIONS = ("max_duration", "sampling_interval", "polling_interval")

# Field names an upgrade step renames: an error in the new field is reported under the
# name the user wrote in the file.
_RENAMED: dict[str, dict[str, str]] = {
    "0.2": {
        "component_tag": "device",
        "technique_name": "technique",
        "max_duration": "time",
        "sampling_interval": "delay",
    },
    "1.0": {"task_params": "technique_params"},
    "2.0": {"component_role": "component_tag"},
    "2.1": {"identifier": "name"},
}


#: renamed fields of one place only (``name`` is the sample's: a user's `name` is no
#: `identifier` of an older version: a review)
_RENAMED_AT = {"identifier": "sample"}


class PayloadError(ValueError):
    """A payload that cannot be parsed; ``location`` is the field path, e.g. ``method[0]``."""

    def __init__(self, location: str | None, reason: str, file: str | Path | None = None) -> None:
        self.location = location or None
        self.reason = reason
        self.file = str(file) if file is not None else None
        super().__init__(str(self))

    def __str__(self) -> str:
        return ": ".join(p for p in (self.file, self.location, self.reason) if p)


def read_payload_file(path: Path | str) -> dict[str, Any]:
    """The payload in a YAML or JSON file, as a dict, with ``samplefile`` and ``methodfile``
    (tomato's references to other files) read in, relative to the payload file (or, as
    tomato 2.2 reads them, to the current folder when no such file is next to it).

    Only the syntax is checked here; :func:`parse_payload` checks the content.
    """
    path = Path(path)
    data = _read_document(path)
    if not isinstance(data, dict):
        raise PayloadError(None, f"a payload is a mapping, not {kind_of(data)}", path)
    for key, field in (("samplefile", "sample"), ("methodfile", "method")):
        if key not in data:
            continue
        ref = data.pop(key)
        if not isinstance(ref, str):
            raise PayloadError(key, f"must be a file name, not {kind_of(ref)}", path)
        other = Path(ref).expanduser()
        if not other.is_absolute():
            # next to the payload; else, as tomato 2.2 reads it, where ketchup runs
            here = path.parent / other
            if here.exists() or other.exists():
                other = here if here.exists() else other
            else:
                raise PayloadError(
                    key,
                    f"{ref}: no such file next to the payload ({here}) nor in the current "
                    f"folder ({Path.cwd() / other})",
                    path,
                )
        doc = _read_document(other)
        if not isinstance(doc, dict) or field not in doc:
            raise PayloadError(None, f"the file named by {key} must have a {field!r} key", other)
        data[field] = doc[field]
    return data


def read_payload_text(text: str, name: str) -> dict[str, Any]:
    """A payload uploaded as text (the dashboard): as :func:`read_payload_file`, but a
    reference to another file (``samplefile``, ``methodfile``) is refused: an upload
    must not make the server read its own files (and say whether they exist)."""
    try:
        data = parse_document(text, json_only=name.lower().endswith(".json"))
    except DocumentError as e:
        raise PayloadError(e.location, e.reason, name) from None
    if not isinstance(data, dict):
        raise PayloadError(None, f"a payload is a mapping, not {kind_of(data)}", name)
    for key, field in (("samplefile", "sample"), ("methodfile", "method")):
        if key in data:
            raise PayloadError(
                key,
                f"an uploaded payload cannot name another file: put its {field!r} in the "
                "payload itself (or submit the file with ketchup submit)",
                name,
            )
    return data


def _read_document(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PayloadError(None, "file not found", path) from None
    except UnicodeDecodeError as e:
        raise PayloadError(None, f"not UTF-8 text ({e.reason})", path) from None
    except OSError as e:
        raise PayloadError(None, f"cannot be read: {e.strerror or e}", path) from None
    try:
        return parse_document(text, json_only=path.suffix.lower() == ".json")
    except DocumentError as e:
        raise PayloadError(e.location, e.reason, path) from None


def parse_payload(data: Mapping[str, Any], user: str | None = None) -> Payload:
    """A dgbowl-schemas 2.2 Payload from a payload of any version.

    ``user`` is the user identifier given to payloads older than 2.2 (which have none);
    by default the user running this process.
    """
    if not isinstance(data, Mapping):
        raise PayloadError(None, f"a payload is a mapping, not {kind_of(data)}")
    try:  # a script's parsed payload too: its NaN became null, or NaN on the wire
        check_values(data)
    except DocumentError as e:
        raise PayloadError(e.location, e.reason) from None
    doc = dict(data)
    version = _version(doc.get("version"))
    doc["version"] = version
    for key in ("samplefile", "methodfile"):
        if key in doc:
            # read on the submitting side: the scheduler may not see the user's files
            raise PayloadError(key, "file references must be read in before submitting")
    not_durations: list[tuple[str, str]] = []
    if version in ("2.1", "2.2") and "method" in doc:  # (one it lacks: said missing)
        doc["method"], not_durations = _durations_in_seconds(doc["method"])

    import importlib

    from pydantic import ValidationError

    from tomato_mqtt.config.lazy import deferred

    # dgbowl-schemas imports pint (and so numpy, ~22 MB) for durations given as text,
    # which _durations_in_seconds has converted already: load it only if it is used
    with deferred("pint"):
        module = importlib.import_module(
            f"dgbowl_schemas.tomato.payload_{version.replace('.', '_')}"
        )
    try:
        payload: Any = module.Payload.model_validate(doc)
    except ValidationError as e:
        raise _from_validation_error(
            e,
            doc,
            written=doc,
            model=module.Payload,
            user=user,
            more=not_durations + _raw_value_problems(data),
        ) from None
    if not_durations:  # with the values wrong beside them (a review: one at a time)
        said = {loc for loc, _ in not_durations}
        more = [p for p in _raw_value_problems(data) if p[0] not in said]
        raise PayloadError(*one_line(not_durations + more))
    while version != LATEST_VERSION:
        nxt = _NEXT[version]
        try:
            payload = _upgrade(payload, version, user)
        except ValidationError as e:
            raise _from_validation_error(e, None, (version, nxt), doc) from None
        except Exception as e:  # dgbowl's update() has no error contract of its own
            raise PayloadError(None, f"cannot upgrade from {version} to {nxt}: {e}") from None
        version = nxt
    _check_values(payload, data)  # as written: errors name its fields
    return payload


def _version(raw: Any) -> str:
    supported = ", ".join(SUPPORTED_VERSIONS)
    if raw is None:
        raise PayloadError("version", f"field required (one of {supported})")
    # unquoted in YAML, `version: 2.0` is a float
    if isinstance(raw, float):
        text = repr(raw)
    elif isinstance(raw, int) and not isinstance(raw, bool):
        text = f"{raw}.0"
    elif isinstance(raw, str):
        text = raw.strip()
    else:
        text = None
    if text not in SUPPORTED_VERSIONS:
        raise PayloadError(
            "version", f"unsupported payload version {raw!r} (supported: {supported})"
        )
    return text


def _durations_in_seconds(method: Any) -> tuple[Any, list[tuple[str, str]]]:
    """Durations given as text ("5 min") in seconds, and the problems of those that are
    none ("1 Hertz"), each naming its field; such a one is 1 s in what is returned, so
    that the schema still says what else is wrong (it said nothing else: a newcomer's
    tour found a missing `user` one submit later).

    dgbowl-schemas converts them itself, but pint's errors are not ValueErrors and would
    escape pydantic without saying which field they concern.
    """
    if not isinstance(method, list):
        return method, []
    out = []
    problems: list[tuple[str, str]] = []
    for i, task in enumerate(method):
        if isinstance(task, dict):
            task = dict(task)
            for key in _DURATIONS:
                if isinstance(task.get(key), str):
                    try:
                        task[key] = _seconds(task[key], f"method[{i}].{key}")
                    except PayloadError as e:
                        problems.append((e.location or f"method[{i}].{key}", e.reason))
                        task[key] = 1.0
        out.append(task)
    return out, problems


#: seconds per unit of the durations read without pint (pint's names and symbols)
_TIME_UNITS = {
    "": 1.0,
    **dict.fromkeys(("s", "sec", "second", "seconds"), 1.0),
    **dict.fromkeys(("ms", "millisecond", "milliseconds"), 1e-3),
    **dict.fromkeys(("min", "minute", "minutes"), 60.0),
    **dict.fromkeys(("h", "hr", "hour", "hours"), 3600.0),
    **dict.fromkeys(("d", "day", "days"), 86400.0),
}
_PLAIN_DURATION = re.compile(
    r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([a-z]*)\s*", re.ASCII
)


def plain_seconds(text: str) -> float | None:
    """``text``, a number with a plain time unit ("5 min", "0.2 s", "2min") or none, in
    seconds, read as pint reads it (but for a number with leading zeros, "05 min", which
    pint reads as 0); None for anything else. Light: the client library's progress reads
    durations with it too (it read "1 d" as 1 s and "2min" as 0: a review)."""
    plain = _PLAIN_DURATION.fullmatch(text)
    if plain is not None and plain[2] in _TIME_UNITS:
        return float(plain[1]) * _TIME_UNITS[plain[2]]
    return None


def _seconds(text: str, where: str) -> float:
    """``text`` in seconds. A number with a plain time unit is read without pint
    (:func:`plain_seconds`), whose first use costs the scheduler ~17 MB for good (numpy
    with it) and ~0.3 s (a memory hunt: a payload's "0.2 s" did); anything else by pint."""
    plain = plain_seconds(text)
    if plain is not None:
        return plain
    import pint

    hint = "give seconds (5, 0.5) or a number with a time unit (10 s, 2 min, 1.5 h)"
    try:
        q: Any = pint.Quantity(text)
    except Exception:  # pint raises AttributeError, TypeError and ValueError alike
        raise PayloadError(where, f"{text!r} is not a duration: {hint}") from None
    if q.dimensionless:
        return float(q.m)
    try:
        return float(q.to("seconds").m)
    except Exception:  # a quantity of another kind (5 kg)
        raise PayloadError(
            where, f"{text!r} is not a duration ({q.units:~} is not a unit of time): {hint}"
        ) from None


def _upgrade(payload: Any, version: str, user: str | None) -> Any:
    if version == "0.1":
        # Payload-0.1.update() prints the payload to stdout: its two lines here, without
        # the print. Not contextlib.redirect_stdout: it rebinds sys.stdout for the whole
        # process, and the scheduler parses a 0.1 payload in its warm-up thread
        # (services/scheduler/warmup.py); a thread printing meanwhile lost its output
        # into the StringIO, or got its own stream swapped back under it at the end
        # (typer's CliRunner in tests/upstream: "I/O operation on closed file")
        from dgbowl_schemas.tomato.payload_0_2 import Payload as Payload02

        md = payload.model_dump(exclude_defaults=True, exclude_none=True)
        md["version"] = "0.2"
        return Payload02(**md)
    if version == "2.1":
        return _upgrade_2_1(payload, user)
    return payload.update()


def _upgrade_2_1(payload: Any, user: str | None) -> Any:
    """Payload-2.1.update(), without its two flaws: it takes the user from the password
    database (KeyError for a uid without an entry, as in containers) with no way to give
    the submitting user, and it fails on a snapshot without an explicit frequency."""
    from dgbowl_schemas.tomato.payload_2_2 import Payload as Payload22

    md = payload.model_dump(exclude_defaults=True, exclude_none=True)
    md["version"] = "2.2"
    md["sample"]["identifier"] = md["sample"].pop("name")
    md["user"] = {"identifier": user or login_name()}
    snapshot = md.get("settings", {}).get("snapshot")
    if snapshot is not None and "frequency" in snapshot:
        snapshot["interval"] = snapshot.pop("frequency")
    return Payload22.model_validate(md)


def as_written(field: str, version: str) -> str:
    """The name a field of version 2.2 has in a payload of ``version`` (``max_duration``
    is ``time`` in 0.1 and 0.2): a refusal names what the user wrote (a newcomer's tour:
    ``delay: -1`` was refused as ``sampling_interval``)."""
    steps = SUPPORTED_VERSIONS[SUPPORTED_VERSIONS.index(version) : -1]
    for step in reversed(steps):
        field = _RENAMED.get(step, {}).get(field, field)
    return field


def field_as_written(doc: Mapping[str, Any], i: int, field: str) -> str:
    """The name a field of task ``i`` (``method[i]``, as version 2.2 names it) has in the
    payload ``doc`` as the user wrote it: 0.1 and 0.2 spell ``max_duration`` as ``time``
    and ``sampling_interval`` as ``delay`` or, for biologic, ``record_every_dt``."""
    try:
        version = _version(doc.get("version"))
    except PayloadError:
        return field
    name = as_written(field, version)
    method = doc.get("method")
    as_given = method[i] if isinstance(method, list) and i < len(method) else None
    if name == "delay" and isinstance(as_given, Mapping) and "record_every_dt" in as_given:
        return "record_every_dt"
    return name


def _check_values(payload: Any, doc: Mapping[str, Any]) -> None:
    """What the schema lets through but no job can do: refused here, with where and why,
    in the field names of the version ``doc`` (the payload as written) was written in;
    every such problem at once (one at a time, a payload took a submit each: a review)."""
    if not payload.method:
        raise PayloadError("method", "the payload has no tasks: there is nothing to run")
    problems: list[tuple[str, str]] = []
    for i, task in enumerate(payload.method):
        dur = field_as_written(doc, i, "max_duration")
        dt = field_as_written(doc, i, "sampling_interval")
        finite = True
        for field in ("max_duration", "sampling_interval"):
            value = getattr(task, field)
            if not math.isfinite(value):  # "inf s", "nan", 1e999: no task ends or samples
                finite = False
                problems.append(
                    (
                        f"method[{i}].{dur if field == 'max_duration' else dt}",
                        f"must be a finite number of seconds (got {value})",
                    )
                )
        if not finite:
            continue
        problems += _sign_problems(
            f"method[{i}]", dur, task.max_duration, dt, task.sampling_interval
        )
        if 0 <= task.max_duration < task.sampling_interval and task.sampling_interval > 0:
            problems.append(
                (
                    f"method[{i}].{dur}",
                    f"the task would take no data point: {dur} ({task.max_duration:g} s) "
                    f"is shorter than {dt} ({task.sampling_interval:g} s)",
                )
            )
    if problems:
        raise PayloadError(*one_line(problems))


def _raw_value_problems(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What :func:`_check_values` would refuse in the tasks of ``doc`` as written, for a
    payload the schema refused: said with the schema's problems, not one submit later (a
    payload without `user` and with `max_duration: -5` was refused for `user` only, then
    for the duration: a newcomer's tour). Only numbers and plain durations are read
    here; anything else is the schema's to say."""
    method = doc.get("method")
    out: list[tuple[str, str]] = []
    for i, task in enumerate(method if isinstance(method, list) else []):
        if not isinstance(task, Mapping):
            continue
        dur = field_as_written(doc, i, "max_duration")
        dt = field_as_written(doc, i, "sampling_interval")
        out += _sign_problems(
            f"method[{i}]", dur, _number(task.get(dur)), dt, _number(task.get(dt))
        )
    return out


def _number(raw: Any) -> float | None:
    """A duration as written, in seconds: a number or a plain text duration (None for
    anything else, a bool, or a number that is not finite)."""
    if isinstance(raw, bool):
        return None
    value = plain_seconds(raw) if isinstance(raw, str) else raw
    if not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _sign_problems(
    task: str, dur: str, duration: float | None, dt: str, interval: float | None
) -> list[tuple[str, str]]:
    """A task's negative duration and its interval that is not positive (None: not
    known), named as written (``dur``, ``dt``)."""
    out = []
    if duration is not None and duration < 0:
        out.append((f"{task}.{dur}", f"must not be negative (got {duration:g})"))
    if interval is not None and interval <= 0:
        out.append((f"{task}.{dt}", f"must be positive (got {interval:g})"))
    return out


def _from_validation_error(
    err: ValidationError,
    data: Any,
    step: tuple[str, str] | None = None,
    written: Mapping[str, Any] | None = None,
    model: Any = None,
    user: str | None = None,
    more: Sequence[tuple[str, str]] = (),
) -> PayloadError:
    """The schema's problems as one PayloadError; ``more``: problems of the values found
    beside them (:func:`_raw_value_problems`), said after them unless at the same place."""
    import re

    problems = describe_validation_error(err, data)
    problems += [p for p in more if p[0] not in {loc for loc, _ in problems}]
    if step is None:
        problems = [
            (loc, _with_near_key(written, loc, reason, model, user)) for loc, reason in problems
        ]
    else:
        renamed = _RENAMED.get(step[0], {})
        fixed = []
        for loc, reason in problems:
            head, _, last = loc.rpartition(".")
            if last in renamed:
                loc = f"{head}.{renamed[last]}" if head else renamed[last]
            # a misspelt key of a task (0.2 takes any key as one of the technique's:
            # `dealy` was "delay: field required (upgrading …)": a newcomer's tour)
            said = _with_near_key(written, loc, reason)
            if said == reason:
                said = f"{reason} (found converting the payload from {step[0]} to {step[1]})"
            fixed.append((loc, said))
        problems = fixed
    # a typo named beside the key it meant is not said again as an unknown key ("sample:
    # field required; the payload has 'sampel' … (and 1 more: sampel: unknown field …)":
    # a review)
    typos = {
        f"{loc.rpartition('.')[0]}.{m.group(1)}".lstrip(".")
        for loc, reason in problems
        if (m := re.search(r" has '([^']+)': did you mean ", reason))
    }
    problems = [
        (loc, reason)
        for loc, reason in problems
        if not (loc in typos and reason.startswith("unknown field"))
    ] or problems
    return PayloadError(*one_line(problems))


def _with_near_key(
    written: Mapping[str, Any] | None,
    loc: str,
    reason: str,
    model: Any = None,
    user: str | None = None,
) -> str:
    """``reason`` with the key one typo away, where there is one: a required key the
    payload has misspelt (in a task, the sample, at the top), or a key no field is named
    (``model``'s fields there). Only a task's were said: `identifer` in the sample read
    "sample.identifier: field required", `settigns` "unknown field" (a newcomer's tour)."""
    import difflib

    head, _, last = loc.rpartition(".")
    if loc == "user" and reason.startswith("field required"):
        # what to write (a 2.2 payload without it said just that: a driver author's tour)
        # (the submitter's name, not the scheduler's login: a review)
        who = f"user: {{identifier: {user or login_name()}}}"
        return f"{reason} (payload version 2.2 names who runs it: {who})"
    if reason.startswith("field required"):
        keys = [k for k in _keys_at(written, head) if k != last]
        # another version's name of it first (`component_tag` in a 2.1 payload, which
        # calls it `component_role`: a driver author's tour)
        others = _other_names(last, head)
        near = [k for k in keys if k in others]
        near = near or difflib.get_close_matches(last, keys, n=1, cutoff=0.75)
        if near:
            owner = "the task" if head.startswith("method[") else f"the {head or 'payload'}"
            other = (
                f" ({near[0]!r} is its name in other payload versions)" if near[0] in others else ""
            )
            return f"{reason}; {owner} has {near[0]!r}: did you mean {last!r}?{other}"
    elif reason.startswith("unknown field") and model is not None:
        known = [k for k in _fields_at(model, head) if k != last]
        near = [k for k in known if k in _other_names(last, head)]
        if near:  # (`task_params` in a 1.0 payload, which calls it `technique_params`)
            return (
                f"{reason}: did you mean {near[0]!r}? ({last!r} is its name in other "
                "payload versions)"
            )
        near = difflib.get_close_matches(last, known, n=1, cutoff=0.75)
        if near:
            return f"{reason}: did you mean {near[0]!r}?"
    return reason


def _other_names(key: str, where: str) -> set[str]:
    """The names ``key``'s field at ``where`` (``method[0]``, ``sample``) has in other
    payload versions (_RENAMED, both ways)."""
    pairs = [
        (a, b)
        for step in _RENAMED.values()
        for a, b in step.items()
        if _RENAMED_AT.get(a, where) == where
    ]
    names, more = {key}, {key}
    while more:
        found = {b for a, b in pairs if a in more} | {a for a, b in pairs if b in more}
        more = found - names
        names |= more
    return names - {key}


def _keys_at(written: Any, where: str) -> list[str]:
    """The keys of the payload as written at ``where`` (``""``, ``sample``, ``method[0]``)."""
    import re

    node = written
    for part in where.split(".") if where else []:
        m = re.fullmatch(r"(\w+)\[(\d+)\]", part)
        name, index = (m.group(1), int(m.group(2))) if m else (part, None)
        node = node.get(name) if isinstance(node, Mapping) else None
        if index is not None:
            node = node[index] if isinstance(node, list) and index < len(node) else None
    return [str(k) for k in node] if isinstance(node, Mapping) else []


def _fields_at(model: Any, where: str) -> list[str]:
    """The field names (and aliases) of the pydantic ``model`` at ``where``."""
    import re
    import typing

    from pydantic import BaseModel

    def models_in(annotation: Any) -> list[type[BaseModel]]:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return [annotation]
        return [m for arg in typing.get_args(annotation) for m in models_in(arg)]

    current: list[type[BaseModel]] = [model]
    for part in where.split(".") if where else []:
        name = re.sub(r"\[\d+\]$", "", part)
        current = [
            m
            for c in current
            for field_name, f in c.model_fields.items()
            if name in (field_name, f.alias)
            for m in models_in(f.annotation)
        ]
    return [k for c in current for name, f in c.model_fields.items() for k in (name, f.alias) if k]
