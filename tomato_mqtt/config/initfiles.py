"""``tomato init``'s files: a commented settings.toml (from the packaged template) and a
default devices.yml, never written over an existing file."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

__all__ = ["DEVICES_FILE", "SETTINGS_FILE", "render_default_settings", "write_default_files"]

SETTINGS_FILE = "settings.toml"
DEVICES_FILE = "devices.yml"


def _template() -> str:
    return (resources.files("tomato_mqtt") / "config" / "settings.toml.template").read_text(
        encoding="utf-8"
    )


def _default_devices() -> str:
    return (resources.files("tomato_mqtt") / "config" / DEVICES_FILE).read_text(encoding="utf-8")


def render_default_settings(datadir: Path, logdir: Path, port: int | None = None) -> str:
    """The commented settings.toml that `tomato init` writes."""
    # json.dumps gives a valid TOML basic string (escapes backslashes of Windows paths)
    text = _template()
    text = text.replace('"@DATADIR@"', json.dumps(str(datadir)))
    text = text.replace('"@LOGDIR@"', json.dumps(str(logdir)))
    if port is not None:
        text, n = re.subn(r"(?m)^# port = \d+$", f"port = {int(port)}", text, count=1)
        if n != 1:  # the template and this function must change together
            raise RuntimeError("settings template has no '# port = ...' line")
        # the commented default of the WebSocket port follows the MQTT port
        text = text.replace("# ws_port = 1884", f"# ws_port = {int(port) + 1}", 1)
    return text


def write_default_files(
    appdir: Path, datadir: Path, logdir: Path, port: int | None = None
) -> list[Path]:
    """`tomato init`: a commented settings.toml and a default devices.yml.

    An existing file is never overwritten. Returns the files written.
    """
    app = Path(appdir).expanduser().absolute()
    data = Path(datadir).expanduser().absolute()
    log = Path(logdir).expanduser().absolute()
    app.mkdir(parents=True, exist_ok=True)
    written = []
    for path, text in (
        (app / SETTINGS_FILE, render_default_settings(data, log, port)),
        (app / DEVICES_FILE, _default_devices()),
    ):
        try:
            # "x": exclusive creation, so a file made meanwhile is not overwritten either
            with path.open("x", encoding="utf-8", newline="\n") as f:
                f.write(text)
        except FileExistsError:
            continue
        written.append(path)
    if app / SETTINGS_FILE in written:  # (another settings.toml names other folders: a
        # tomato 2.2 user's tour saw `init -D /x` make /x, which nothing used)
        for d in (data, log):
            d.mkdir(parents=True, exist_ok=True)
    return written
