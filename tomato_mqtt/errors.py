"""Errors of configuration files, and one way to describe pydantic's errors to people.

A bad file is refused with the file, where in it, and why, on one line, e.g.
``devices.yml: pipelines[0] 'pip-counter' devices[0]: unknown device 'dev-x'``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # kept off the CLI's import path (pydantic is ~60 ms)
    from pydantic import ValidationError

__all__ = [
    "BROKEN_DRIVER",
    "ConfigError",
    "DocumentError",
    "StartupError",
    "check_values",
    "describe_validation_error",
    "format_location",
    "one_line",
    "parse_document",
]


#: how a component's error starts when its driver's code is wrong for it (the node does
#: not retry it; ``tomato start`` does not wait for it)
BROKEN_DRIVER = "the driver is broken: "


class StartupError(Exception):
    """A service cannot start (a state file it cannot open): one line for the user, no
    traceback; the service exits 1."""


class ConfigError(ValueError):
    """A configuration file (settings.toml, devices.yml) that cannot be used."""

    def __init__(self, file: str | Path | None, location: str | None, reason: str) -> None:
        self.file = str(file) if file is not None else None
        self.location = location or None
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [p for p in (self.file, self.location) if p]
        return ": ".join([*parts, self.reason])

    @classmethod
    def from_validation_error(
        cls, file: str | Path | None, err: ValidationError, data: Any = None
    ) -> ConfigError:
        """One ConfigError for all of ``err``: the first problem in front, the rest after."""
        return cls(file, *one_line(describe_validation_error(err, data)))


def format_location(loc: Sequence[int | str], data: Any = None) -> str:
    """``("pipelines", 0, "devices", 1, "role")`` -> ``pipelines[0] 'pip-x' devices[1].role``.

    With ``data`` (the raw document), list items that carry a ``name`` are labelled with
    it, as a reader looks for the name rather than count entries.
    """
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            item = _child(node, part)
            name = item.get("name") if isinstance(item, Mapping) else None
            if isinstance(name, str):
                out += f" {name!r}"
            node = item
        else:
            sep = "." if out and not out.endswith("'") else " " if out else ""
            out += f"{sep}{part}"
            node = _child(node, part)
    return out


def _child(node: Any, key: int | str) -> Any:
    if isinstance(key, int) and isinstance(node, Sequence) and not isinstance(node, str):
        return node[key] if -len(node) <= key < len(node) else None
    if isinstance(key, str) and isinstance(node, Mapping):
        return node.get(key)
    return None


_REWORDED = {
    "missing": "field required",
    "extra_forbidden": "unknown field",
}


def describe_validation_error(err: ValidationError, data: Any = None) -> list[tuple[str, str]]:
    """``[(location, reason), ...]`` for every problem in ``err``, in plain words."""
    out: list[tuple[str, str]] = []
    for e in err.errors(include_url=False):
        # union members and function validators add loc parts that mean nothing to users
        loc = [p for p in e["loc"] if not (isinstance(p, str) and p.endswith("]"))]
        where = format_location(loc, data)
        kind = e["type"]
        if kind in _REWORDED:
            reason = _REWORDED[kind]
        else:
            reason = str(e["msg"])
            for lead in ("Value error, ", "Assertion failed, "):
                if reason.startswith(lead):
                    reason = reason[len(lead) :]
            reason = reason[:1].lower() + reason[1:]
            if kind not in ("value_error", "assertion_error") and "input" in e:
                reason += f" (got {_short(e['input'])})"
        out.append((where, reason))
    return out or [("", str(err))]


def one_line(problems: Sequence[tuple[str, str]]) -> tuple[str, str]:
    """``(location, reason)`` of the first problem, with the others appended to the reason."""
    loc, reason = problems[0]
    if len(problems) > 1:
        rest = "; ".join(f"{lo}: {re}" if lo else re for lo, re in problems[1:])
        reason = f"{reason} (and {len(problems) - 1} more: {rest})"
    return loc, reason


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class DocumentError(ValueError):
    """A YAML or JSON document that does not parse; ``location`` names line and column."""

    def __init__(self, location: str | None, reason: str) -> None:
        self.location = location
        self.reason = reason
        super().__init__(f"{location}: {reason}" if location else reason)


def parse_document(text: str, json_only: bool = False) -> Any:
    """Parse YAML (or JSON, which is YAML too); syntax errors name the line.

    ``json_only`` parses with :mod:`json` (stricter and faster for ``.json`` files).
    """
    try:
        return _parse(text, json_only)
    except RecursionError:  # [[[[...]]]]: both parsers recurse per level
        raise DocumentError(None, "nested too deeply to be a payload") from None


def _parse(text: str, json_only: bool) -> Any:
    import json

    if json_only:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DocumentError(
                f"line {e.lineno}, column {e.colno}", f"invalid JSON: {e.msg}"
            ) from None
        except ValueError:  # Python's limit on the digits of an int
            raise DocumentError(None, _HUGE) from None
        check_values(data)
        return data
    import yaml

    loader = _loader()(text)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        if "maximum nesting depth" in str(e.problem):  # libyaml's limit (1000 levels)
            raise DocumentError(None, "nested too deeply to be a payload") from None
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        what = " ".join(p for p in (e.context, e.problem) if p) or "syntax error"
        raise DocumentError(where, f"invalid YAML: {what}") from None
    except yaml.YAMLError as e:
        raise DocumentError(None, f"invalid YAML: {e}") from None
    except ValueError:  # Python's limit on the digits of an int
        raise DocumentError(None, _HUGE) from None
    finally:
        loader.dispose()
    _check_expansion(data)  # what aliases expand to is bounded, not only the text
    check_values(data)
    return data


_HUGE = "a number with more than 4300 digits: no value of a payload or settings is that long"


def check_values(data: Any) -> None:
    """Refuse what JSON cannot carry as it is: NaN and infinity (they became null on the
    way, "input should be a valid number (got None)"), binary data (``!!binary``: it
    became the text "b'...'"); found by a security audit. A date stays (as text)."""
    import math

    stack: list[tuple[list[str | int], Any]] = [([], data)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            why = f"{v!r} is not a value tomato-mqtt takes: give a finite number"
        elif isinstance(v, (bytes, bytearray)):
            why = "binary data (!!binary) is not a value tomato-mqtt takes: give text"
        else:
            if isinstance(v, dict):
                stack.extend(([*path, str(k)], x) for k, x in v.items())
            elif isinstance(v, list):
                stack.extend(([*path, i], x) for i, x in enumerate(v))
            continue
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
        raise DocumentError(where or None, why)


_LOADER: Any = None


def _loader() -> Any:
    """PyYAML's safe loader, libyaml's when PyYAML has it: ~8x faster (a list of 150,000
    numbers: 0.85 s, 7.2 s in Python); made on first use, PyYAML is imported only when a
    YAML document is read."""
    global _LOADER
    if _LOADER is None:
        import yaml

        _LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return _LOADER


#: values a YAML document may expand to through its aliases (``*name``): a few hundred
#: bytes of nested aliases expand to millions of values (28 MB of JSON from 500 bytes),
#: which every later step (validation, JSON, the state file) would walk
MAX_VALUES = 100_000


def _check_expansion(data: Any) -> None:
    """Refuse ``data`` when it holds more than ``MAX_VALUES`` values counted the way a walk
    meets them, and an alias made some list or mapping appear more than once (an alias is
    the same object again: a big document without aliases is not counted against it)."""
    seen = 0
    containers: set[int] = set()
    aliased = False
    stack = [data]
    while stack:
        v = stack.pop()
        seen += 1
        if isinstance(v, (dict, list)) and not aliased:
            aliased = id(v) in containers
            containers.add(id(v))
        if aliased and seen > MAX_VALUES:
            raise DocumentError(
                None,
                f"its aliases (*name) expand to more than {MAX_VALUES:,} values: "
                "write the repeated parts out, or use fewer levels of aliases",
            )
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
