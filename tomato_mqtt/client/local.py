"""What a client reads on this PC: settings.toml's broker and instance, payload files."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import JsonValue

from tomato_mqtt.config.url import BrokerURL

__all__ = ["payload_args", "settings_of"]


def settings_of(appdir: str | os.PathLike[str] | None) -> tuple[BrokerURL, str, int]:
    """(broker URL, instance, largest request) of ``settings.toml`` (the default appdir,
    or ``appdir``)."""
    from tomato_mqtt.config.settings import load_settings, settings_url

    if appdir is not None and not (Path(appdir) / "settings.toml").is_file():
        # an appdir with a typo connected to the default broker (127.0.0.1:1883): on a
        # shared PC, perhaps someone else's stack
        raise FileNotFoundError(
            f"no settings.toml in {appdir}: is that the appdir of a tomato-mqtt set-up?"
            " (`tomato status` shows the appdir it uses)"
        )
    s = load_settings(appdir=Path(appdir) if appdir else None)
    return settings_url(s), s.mqtt.instance, s.max_reply_bytes


def payload_args(src: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, JsonValue]:
    """A payload (a file of any tomato version, or a mapping) as a request's JSON."""
    if isinstance(src, Mapping):
        doc: Any = dict(src)
    elif not isinstance(src, (str, os.PathLike)):  # submit(42): said, not a raw TypeError
        raise TypeError(f"a payload is a file's path or a dict, not {type(src).__name__} ({src!r})")
    else:
        from tomato_mqtt.config.payloads import read_payload_file

        doc = read_payload_file(Path(src))
    # YAML may hold dates and the like: send what JSON can carry
    return json.loads(json.dumps(doc, default=str))  # type: ignore[no-any-return]
