"""docs/security.md: the role table is the code's, and the lab walk-through works as written.

Every ``sh`` block after a ``<!-- test -->`` marker runs in bash (``set -e``), in order,
with ``LAB``, ``LAB_HOST``, ``MQTT_PORT`` and ``TLS_PORT`` set by the test; the block
after ``<!-- test: background -->`` (the remote node) runs alongside the rest, from the
block before it (the one that starts the stack) on.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from tests.stack import BIN, REPO, free_port
from tomato_mqtt.wire.acl import role_table_markdown

DOC = REPO / "docs" / "security.md"
pytestmark = pytest.mark.timeout(300)


def test_role_table_in_the_docs_is_the_code_s() -> None:
    text = DOC.read_text()
    m = re.search(r"<!-- role-table -->\n(.*?)<!-- /role-table -->", text, flags=re.S)
    assert m is not None
    assert m.group(1) == role_table_markdown()


def blocks() -> list[tuple[str, str]]:
    """(marker, script) of the tested blocks, in order."""
    found = re.findall(r"<!-- (test(?:: background)?) -->\n```sh\n(.*?)```", DOC.read_text(), re.S)
    return [(marker, script) for marker, script in found]


def test_lab_walkthrough_runs_as_written(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "LAB": str(tmp_path / "lab"),
        "LAB_HOST": "localhost",
        "MQTT_PORT": str(free_port()),
        "TLS_PORT": str(free_port()),
    }
    env.pop("TOMATO_BROKER", None)
    parts = blocks()
    markers = [m for m, _ in parts]
    assert markers.count("test: background") == 1 and len(parts) >= 6
    # the background block (the remote node) starts alongside the block before it, the
    # one that runs `tomato start`: the node connects once the broker listens (it retries
    # for 30 s), so `tomato start` finds its component ready instead of waiting its whole
    # timeout (30 s) for a node that would only be started after it returned
    bg = markers.index("test: background")
    assert bg >= 2 and "tomato start" in parts[bg - 1][1]
    node: subprocess.Popen[bytes] | None = None
    log = tmp_path / "background.log"
    try:
        run("set -e\n" + "".join(t for _, t in parts[: bg - 1]), env, tmp_path)
        with log.open("wb") as out:
            node = subprocess.Popen(
                ["bash", "-c", "set -e\n" + parts[bg][1]],
                env=env,
                cwd=tmp_path,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        rest = [t for i, (_, t) in enumerate(parts) if i >= bg - 1 and i != bg]
        run("set -e\n" + "".join(rest), env, tmp_path, log)
    finally:
        if node is not None:
            with contextlib.suppress(OSError):
                os.killpg(node.pid, signal.SIGTERM)
            try:
                node.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
        lab = Path(env["LAB"])
        if (lab / "app" / "settings.toml").exists():  # never leave the stack running
            subprocess.run(
                [str(BIN / "tomato"), "stop", "-A", str(lab / "app"), "-D", str(lab / "data"),
                 "-L", str(lab / "log")],
                capture_output=True, timeout=60, env=env,
            )  # fmt: skip
    files = sorted(p.name for p in (Path(env["LAB"]) / "mosquitto").iterdir())
    assert files == ["acl_file", "password_file", "tomato.conf"]


def run(script: str, env: dict[str, str], cwd: Path, log: Path | None = None) -> None:
    res = subprocess.run(
        ["bash", "-c", script], env=env, cwd=cwd, capture_output=True, text=True, timeout=180
    )
    extra = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    assert res.returncode == 0, f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}\n{extra}"
