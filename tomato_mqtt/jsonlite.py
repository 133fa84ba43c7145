"""Compact JSON for the CLI's one-request calls, without importing the ``json`` package.

``json`` imports ``re`` (with ``enum`` and the regular-expression compiler): ~4 ms of a
``ketchup status`` that issue 15 wants within three bare interpreter starts (~25 ms). The
encoding and decoding themselves are CPython's C accelerator, ``_json``, which ``json``
calls too, set up here the way ``json.dumps(obj, separators=(",", ":"))`` and
``json.loads`` set it up, so the text is the same; tests/test_jsonlite.py compares them.
Another Python (no ``_json``) gets ``json`` itself. Errors are ``json``'s own (a
``ValueError``), and ``json`` is imported only to raise them.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["dumps", "loads"]

try:
    import _json
except ImportError:  # pragma: no cover - not CPython
    _json = None  # type: ignore[assignment]

_WS = " \t\n\r"


class _Context:
    """What ``_json.make_scanner`` reads from a ``json.JSONDecoder`` (its defaults)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {
        "-Infinity": float("-inf"),
        "Infinity": float("inf"),
        "NaN": float("nan"),
    }.__getitem__


def _no_default(o: object) -> object:
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


if _json is not None:
    _scan = _json.make_scanner(_Context())  # type: ignore[arg-type]


def _encoder() -> Any:
    """A C encoder as ``json.dumps`` makes one, for one call (its markers, which refuse
    circular references, must not outlive a call that failed half-way)."""
    return _json.make_encoder(
        {},  # markers
        _no_default,
        _json.encode_basestring_ascii,
        None,  # indent
        ":",
        ",",
        False,  # sort_keys
        False,  # skipkeys
        True,  # allow_nan
    )


def dumps(obj: Any) -> str:
    """``json.dumps(obj, separators=(",", ":"))``."""
    if _json is None:  # pragma: no cover - not CPython
        import json

        return json.dumps(obj, separators=(",", ":"))
    if isinstance(obj, str):
        return _json.encode_basestring_ascii(obj)
    return "".join(_encoder()(obj, 0))


def loads(s: str | bytes | bytearray) -> Any:
    """``json.loads(s)``; ``ValueError`` (json's ``JSONDecodeError``) if it is not JSON."""
    if _json is None or not isinstance(s, str | bytes | bytearray):  # pragma: no cover
        return _by_json(s)
    if isinstance(s, str):
        if s.startswith("\ufeff"):  # json refuses it in its own words
            return _by_json(s)
        text = s
    else:  # UTF-8 (as MQTT payloads are); json itself for a BOM, UTF-16/32, bad bytes
        raw = bytes(s)
        if raw[:3] == b"\xef\xbb\xbf" or (len(raw) > 1 and not (raw[0] and raw[1])):
            return _by_json(raw)
        try:
            text = raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return _by_json(raw)
    start = len(text) - len(text.lstrip(_WS))
    try:
        obj, end = _scan(text, start)
    except StopIteration as e:
        return _fail("Expecting value", text, e.value)
    if text[end:].strip(_WS):
        return _fail("Extra data", text, end + len(text[end:]) - len(text[end:].lstrip(_WS)))
    return obj


def _by_json(s: Any) -> Any:
    """What ``json`` itself makes of ``s`` (what this module does not read itself)."""
    import json

    return json.loads(s)


def _fail(msg: str, text: str, pos: int) -> Any:
    from json import JSONDecodeError

    raise JSONDecodeError(msg, text, pos)
