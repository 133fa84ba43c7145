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


def light_mqtt(appdir: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """The ``[mqtt]`` table of settings.toml without pydantic, or None if unsure.

    A call that only sends one request must not pay for validating every section; when
    the file is absent the defaults apply, when anything looks unusual the full loader
    runs (and reports the problem with file and field).
    """
    if appdir:
        app = os.path.expanduser(appdir)
    else:  # platformdirs (~10 ms with the tempfile and shutil it loads) only when needed
        import platformdirs

        app = platformdirs.user_config_dir("tomato-mqtt", appauthor=False)
    path = os.path.join(app, "settings.toml")  # os.path: pathlib is ~3 ms of a call
    if not os.path.isfile(path):
        return {}
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        with open(path, encoding="utf-8") as f:
            doc = tomllib.loads(f.read())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    mqtt = doc.get("mqtt", {})
    if not isinstance(mqtt, dict):
        return None
    for k, v in mqtt.items():
        want = MQTT_KEYS.get(k)
        if want is None or type(v) is not want:
            return None
    return mqtt
