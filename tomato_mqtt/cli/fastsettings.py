"""The CLI's fast path to the broker settings: ``[mqtt]`` of settings.toml without pydantic.

A call that sends one request must not pay for validating every section of the
settings (pydantic and the full loader cost ~0.1 s); anything unusual falls back to the
full loader, which reports problems with file and field.
"""

from __future__ import annotations

import os
import sys

from tomato_mqtt.wire.slugs import is_slug

TYPE_CHECKING = False  # typing is ~2 ms of a one-request call: for the type checker only
if TYPE_CHECKING:
    from typing import Any

__all__ = ["MQTT_KEYS", "external_broker", "light_datadir", "light_mqtt"]


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
    return _user_dir("XDG_CONFIG_HOME", "~/.config", "user_config_dir")


def _user_dir(variable: str, linux: str, name: str) -> str:
    """platformdirs' ``name("tomato-mqtt")``; on Linux with the defaults (``variable``
    unset, an absolute ``$HOME``) ``linux``/tomato-mqtt, without importing it."""
    home = os.environ.get("HOME", "")
    if (
        sys.platform.startswith("linux")
        and not os.environ.get(variable)
        and "ANDROID_DATA" not in os.environ
        and home.startswith("/")
    ):
        return os.path.join(os.path.expanduser(linux), "tomato-mqtt")
    import platformdirs

    return str(getattr(platformdirs, name)("tomato-mqtt", appauthor=False))


def light_mqtt(appdir: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """The ``[mqtt]`` table of settings.toml without pydantic, or None if unsure.

    A call that only sends one request must not pay for validating every section; when
    the file is absent the defaults apply, when anything looks unusual the full loader
    runs (and reports the problem with file and field).
    """
    # -A "" is the current folder, as typer's Path("") reads it
    app = os.path.expanduser(os.fspath(appdir) or ".") if appdir is not None else config_dir()
    # os.path: pathlib is ~3 ms of a call
    if not os.path.isfile(os.path.join(app, "settings.toml")):
        return {}
    read = _read_settings(app)
    if read is None:
        return None
    mqtt = read[0]
    if not isinstance(mqtt, dict):
        return None
    for k, v in mqtt.items():
        want = MQTT_KEYS.get(k)
        if want is None or type(v) is not want:
            return None
    # values the full loader refuses go to it, which names the file and field (found by a
    # user: port = -1 became "Servname not supported", a bad instance named no file)
    port, keepalive = mqtt.get("port", 1883), mqtt.get("keepalive", 30)
    if not (isinstance(port, int) and 1 <= port <= 65535) or not (
        isinstance(keepalive, int) and keepalive > 0
    ):
        return None
    if not is_slug(str(mqtt.get("instance", "default"))):
        return None
    return mqtt


def external_broker(appdir: str | os.PathLike[str] | None) -> bool:
    """Whether settings.toml says the broker is not the embedded one (``[broker]
    embedded = false``); False when unsure. Light (no TOML reader: a failed one-request
    call loads none), for a call that could not connect."""
    app = os.path.expanduser(os.fspath(appdir) or ".") if appdir is not None else config_dir()
    try:
        with open(os.path.join(app, "settings.toml"), encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return False
    table = ""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("["):
            table = line.strip("[] \t")
            continue
        key, eq, value = (p.strip() for p in line.partition("="))
        if not eq:
            continue
        where = f"{table}.{key}" if table else key  # [broker] embedded, broker.embedded
        if where.replace(" ", "") == "broker.embedded":
            return value == "false"
        if where == "broker" and value.startswith("{"):  # broker = { embedded = false }
            pairs = (p.partition("=") for p in value.strip("{} ").split(","))
            return any(k.strip() == "embedded" and v.strip() == "false" for k, _, v in pairs)
    return False


def light_datadir(
    appdir: str | os.PathLike[str] | None, datadir: str | os.PathLike[str] | None
) -> str | None:
    """The datadir as the settings resolve it (``datadir`` given, else settings.toml's,
    relative to the appdir, else the platform's), without pydantic: a call that could
    not connect looks for this PC's supervisor there, and that path must stay as light
    as the call (tests/test_fast_readers.py). None when settings.toml cannot be read."""
    if datadir is not None:
        return os.path.abspath(os.path.expanduser(os.fspath(datadir)))
    app = os.path.expanduser(os.fspath(appdir) or ".") if appdir is not None else config_dir()
    app = os.path.abspath(app)
    read = _read_settings(app)
    if read is None:
        return None
    given = read[1].get("datadir")
    if isinstance(given, str):
        return os.path.join(app, os.path.expanduser(given))  # (an absolute one wins)
    if given is not None:
        return None
    return _user_dir("XDG_DATA_HOME", "~/.local/share", "user_data_dir")


def _read_settings(app: str) -> tuple[object, dict[str, object]] | None:
    """(the ``[mqtt]`` table, the root keys) of ``app``'s settings.toml, read plainly
    when it is plain (:func:`plain_mqtt_table`), else by TOML's own reader; ``({}, {})``
    when there is none, None when it cannot be read."""
    try:
        with open(os.path.join(app, "settings.toml"), encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return {}, {}
    except (OSError, UnicodeDecodeError):
        return None
    plain = _plain(text)
    if plain is not None:
        return plain
    if sys.version_info >= (3, 11):  # not the plain shape: TOML's own reader
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        doc: dict[str, object] = tomllib.loads(text)
    except ValueError:
        return None
    return doc.get("mqtt", {}), doc


_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_DIGITS = frozenset("0123456789")


def plain_mqtt_table(text: str) -> dict[str, object] | None:
    """The ``[mqtt]`` table of a settings.toml written plainly, without a TOML parser;
    None for anything else (then ``tomllib`` reads it, and says what is wrong).

    ``tomllib`` imports ``re``, ``typing`` and ``datetime``: ~10 ms of a CLI call that
    issue 15 wants within ~25 ms. The settings files tomato-mqtt writes and documents
    are plain: ``[table]`` headers, ``key = value`` on one line, comments. Here every
    line must be one of those, with bare keys and headers, each value a string without
    escapes, a decimal integer, a float or a boolean: nothing spans lines, nothing needs
    a TOML parser to be understood. Such a file reads as ``tomllib`` reads it, and a file
    ``tomllib`` refuses is never plain (tests/test_fast_readers.py compares them).
    """
    plain = _plain(text)
    return None if plain is None else plain[0]


def _plain(text: str) -> tuple[dict[str, object], dict[str, object]] | None:
    """:func:`plain_mqtt_table`'s reading: (the ``[mqtt]`` table, the root keys)."""
    mqtt: dict[str, object] = {}
    root: dict[str, object] = {}
    table = ""  # the root table
    seen: set[str] = set()  # tables as "name", keys as "table.key" (root keys: ".key")
    lines = text.split("\n")
    for i, raw in enumerate(lines):
        line = raw[:-1] if raw.endswith("\r") and i < len(lines) - 1 else raw  # CRLF
        if any((c < " " and c != "\t") or c == "\x7f" for c in line):
            return None  # control characters (a lone CR too): TOML refuses them
        line = line.strip(" \t")
        if not line or line[0] == "#":
            continue
        if line[0] == "[":
            head, closed, rest = line[1:].partition("]")
            name = head.strip(" \t")
            if not closed:  # "[mqtt": read as no table at all, and a request was sent
                return None  # with the defaults (a newcomer's tour: `tomato stop`)
            if rest.strip(" \t")[:1] not in ("", "#") or not name or not _BARE.issuperset(name):
                return None  # [[array]], [a.b], ["quoted"], junk: TOML's reader
            if name in seen or f".{name}" in seen:
                return None  # a table twice, or a table named as a root key
            seen.add(name)
            table = name
            continue
        key, eq, value = line.partition("=")
        key, value = key.strip(" \t"), value.strip(" \t")
        if not eq or not key or not _BARE.issuperset(key) or not value:
            return None
        if f"{table}.{key}" in seen or (table == "" and (key in seen or key == "mqtt")):
            return None  # a key twice, a root key named as a table, or mqtt = ... itself
        seen.add(f"{table}.{key}")
        ok, got = _value(value)
        if not ok:
            return None
        if table == "mqtt":
            mqtt[key] = got
        elif table == "":
            root[key] = got
    return mqtt, root


def _value(value: str) -> tuple[bool, object]:
    """(True, the value) of a plain one-line value with at most a comment after it: a
    string without escapes, a decimal integer, a float, a boolean; else (False, None)."""
    if value[0] in "\"'":
        quote = value[0]
        end = value.find(quote, 1)
        body = value[1:end]
        if end < 0 or (quote == '"' and "\\" in body):
            return False, None  # unterminated, or escapes: TOML's reader
        rest = value[end + 1 :].strip(" \t")
        return (True, body) if rest[:1] in ("", "#") else (False, None)
    token, _, _comment = value.partition("#")
    token = token.strip(" \t")
    if token in ("true", "false"):
        return True, token == "true"
    if _is_int(token):
        return True, int(token)
    if _is_float(token):
        return True, float(token)
    return False, None  # arrays, inline tables, dates, 1_000, 0x10...: TOML's reader


def _is_int(token: str, signed: bool = True, leading_zero: bool = False) -> bool:
    """A decimal integer as TOML writes it (no underscores: those go to tomllib)."""
    digits = token[1:] if signed and token[:1] in "+-" else token
    if not digits or not _DIGITS.issuperset(digits):
        return False
    return leading_zero or len(digits) == 1 or digits[0] != "0"


def _is_float(token: str) -> bool:
    """A float as TOML writes it: an integer part, then a fraction and/or an exponent;
    or inf / nan (signed or not)."""
    body = token[1:] if token[:1] in "+-" else token
    if body in ("inf", "nan"):
        return True
    mantissa, e, exponent = body.replace("E", "e").partition("e")
    whole, dot, fraction = mantissa.partition(".")
    if not _is_int(whole, signed=False) or (dot and not _is_int(fraction, False, True)):
        return False
    if e:
        return _is_int(exponent, signed=True, leading_zero=True)
    return bool(dot)
