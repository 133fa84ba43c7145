"""The CLI's fast path to the broker settings: ``[mqtt]`` of settings.toml without pydantic.

A call that sends one request must not pay for validating every section of the
settings (pydantic and the full loader cost ~0.1 s); anything unusual falls back to the
full loader, which reports problems with file and field.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing is ~2 ms of a one-request call: for the type checker only
if TYPE_CHECKING:
    from typing import Any

__all__ = ["MQTT_KEYS", "light_mqtt"]


# [mqtt] keys the fast path understands; anything else goes through the full settings
MQTT_KEYS = {
    "host": str,
    "port": int,
    "instance": str,
    "username": str,
    "password": str,
    "tls": bool,
    "ca_certs": str,
    "certfile": str,
    "keyfile": str,
    "tls_insecure": bool,
    "keepalive": int,
}


def config_dir() -> str:
    """platformdirs' ``user_config_dir("tomato-mqtt")``, where settings.toml is.

    On Linux with the defaults (``$XDG_CONFIG_HOME`` unset, an absolute ``$HOME``) that
    is ``~/.config/tomato-mqtt``, said here: platformdirs loads ``tempfile``, ``shutil``
    and ``random`` (~10 ms of a CLI call that should take ~15). Anything else (another
    system, an XDG variable, Android) asks platformdirs itself."""
    home = os.environ.get("HOME", "")
    if (
        sys.platform.startswith("linux")
        and not os.environ.get("XDG_CONFIG_HOME")
        and "ANDROID_DATA" not in os.environ
        and home.startswith("/")
    ):
        return os.path.join(os.path.expanduser("~/.config"), "tomato-mqtt")
    import platformdirs

    return platformdirs.user_config_dir("tomato-mqtt", appauthor=False)


def light_mqtt(appdir: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """The ``[mqtt]`` table of settings.toml without pydantic, or None if unsure.

    A call that only sends one request must not pay for validating every section; when
    the file is absent the defaults apply, when anything looks unusual the full loader
    runs (and reports the problem with file and field).
    """
    app = os.path.expanduser(appdir) if appdir else config_dir()
    path = os.path.join(app, "settings.toml")  # os.path: pathlib is ~3 ms of a call
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return None
    mqtt = plain_mqtt_table(text)
    if mqtt is None:  # not the plain shape: TOML's own reader
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python 3.10
            import tomli as tomllib
        try:
            mqtt = tomllib.loads(text).get("mqtt", {})
        except ValueError:
            return None
    if not isinstance(mqtt, dict):
        return None
    for k, v in mqtt.items():
        want = MQTT_KEYS.get(k)
        if want is None or type(v) is not want:
            return None
    return mqtt


_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_DIGITS = frozenset("0123456789")


def plain_mqtt_table(text: str) -> dict[str, str | int | bool] | None:
    """The ``[mqtt]`` table of a settings.toml written plainly, without a TOML parser;
    None for anything else (then ``tomllib`` reads it).

    ``tomllib`` imports ``re``, ``typing`` and ``datetime``: ~10 ms of a CLI call that
    issue 15 wants within ~25 ms. The settings files tomato-mqtt writes and documents
    are plain: ``[table]`` headers, ``key = value`` on one line, comments. Here every
    line must be one of those, the ``[mqtt]`` values strings without escapes, decimal
    integers or booleans, and nothing may span lines (no multi-line strings, no arrays
    or inline tables that do not close on their line, no dotted or quoted keys): what
    is read is then what ``tomllib`` reads (tests/test_fastsettings.py compares them).
    """
    if '"""' in text or "'''" in text:
        return None
    mqtt: dict[str, str | int | bool] = {}
    table = ""  # the root table
    seen: set[str] = set()  # tables, and keys as "table.key"
    for raw in text.split("\n"):
        line = raw[:-1] if raw.endswith("\r") else raw
        if any(c < " " and c != "\t" for c in line):
            return None
        line = line.strip(" \t")
        if not line or line[0] == "#":
            continue
        if line[0] == "[":
            head, _, rest = line[1:].partition("]")
            name = head.strip(" \t")
            if rest.strip(" \t")[:1] not in ("", "#") or not name or not _BARE.issuperset(name):
                return None  # [[array]], [a.b], ["quoted"], junk: TOML's reader
            if name in seen:
                return None
            seen.add(name)
            table = name
            continue
        key, eq, value = line.partition("=")
        key, value = key.strip(" \t"), value.strip(" \t")
        if not eq or not key or not _BARE.issuperset(key) or not value:
            return None
        if (table == "" and key == "mqtt") or f"{table}.{key}" in seen:
            return None  # mqtt = {...} (an inline table), a key given twice
        seen.add(f"{table}.{key}")
        if table == "mqtt":
            got = _scalar(value)
            if got is None:
                return None
            mqtt[key] = got
        elif not _one_line(value):
            return None
    return mqtt


def _scalar(value: str) -> str | int | bool | None:
    """A plain ``[mqtt]`` value (and only a comment after it), else None."""
    if value[0] in "\"'":
        end = _string_end(value)
        body = value[1 : end - 1] if end else ""
        if not end or (value[0] == '"' and "\\" in body):
            return None  # unterminated, junk after it, or escapes: TOML's reader
        return body
    token, _, _comment = value.partition("#")
    token = token.strip(" \t")
    if token in ("true", "false"):
        return token == "true"
    digits = token[1:] if token[:1] in "+-" else token
    if not digits or not _DIGITS.issuperset(digits) or (len(digits) > 1 and digits[0] == "0"):
        return None
    return int(token)


def _string_end(value: str) -> int:
    """Where the string ``value`` starts with ends (past its closing quote), if only
    blanks or a comment follow it; else 0."""
    quote, i = value[0], 1
    while i < len(value):
        c = value[i]
        if c == "\\" and quote == '"':
            i += 2
            continue
        if c == quote:
            rest = value[i + 1 :].strip(" \t")
            return i + 1 if rest[:1] in ("", "#") else 0
        i += 1
    return 0


def _one_line(value: str) -> bool:
    """Whether a value of another table surely ends on its line: a string that closes,
    an array or inline table without strings (whose text could hold brackets) whose
    brackets close, or a bare value (a number, a boolean, a date) without quotes."""
    if value[0] in "\"'":
        return bool(_string_end(value))
    if '"' in value or "'" in value:
        return False
    return value.count("[") == value.count("]") and value.count("{") == value.count("}")
