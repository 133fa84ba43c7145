"""The README's "Using it" walk-through, run line by line as written.

Each line of the block runs in bash exactly as it stands in README.md. The only things
set from outside are what a lab PC has and a test must not touch: HOME and the XDG
folders (so `tomato init` writes into a temp dir), and the port (`tomato init` writes
the default 1883; the test moves it, and the WebSocket port, to free ones right after
`init`, as two stacks on one test machine must not share a port). The working folder
holds `config/` and `.venv` links to this checkout, as the README's folder would.

Between lines the test waits as a person does before typing the next one: before
`tomato stop` until the job has ended (stop is refused while a job runs).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.stack import free_port

REPO = Path(__file__).resolve().parents[1]


def readme_block() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Using it", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    return [ln for ln in block.strip().splitlines() if ln.strip()]


def test_readme_walkthrough_works_as_written(tmp_path: Path) -> None:
    lines = readme_block()
    assert lines[0] == "source .venv/bin/activate"
    work = tmp_path / "work"
    work.mkdir()
    (work / "config").symlink_to(REPO / "config")
    (work / ".venv").symlink_to(Path(sys.executable).parent.parent)
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOMATO_", "XDG_", "VIRTUAL_"))}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local/share"),
        XDG_STATE_HOME=str(home / ".local/state"),
        XDG_CACHE_HOME=str(home / ".cache"),
    )
    port = free_port()
    started = False

    def sh(line: str) -> subprocess.CompletedProcess[str]:
        # `source` of the first line in the same shell as the command
        return subprocess.run(
            ["bash", "-c", f"{lines[0]} && {line}"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )

    def job_status() -> str:
        out = sh(f"ketchup status 1 --json -p {port}")
        return str(json.loads(out.stdout)["data"][0]["status"])

    try:
        for line in lines[1:]:
            cmd = line.split("#", 1)[0].strip()
            if cmd == "tomato stop":
                deadline = time.monotonic() + 30
                while job_status() not in ("c", "ce", "cd") and time.monotonic() < deadline:
                    time.sleep(0.2)
            res = sh(line)
            assert res.returncode == 0, f"{line!r} failed:\n{res.stdout}\n{res.stderr}"
            if cmd == "tomato init":
                settings = home / ".config" / "tomato-mqtt" / "settings.toml"
                text = settings.read_text()
                text = re.sub(r"(?m)^# port = \d+$", f"port = {port}", text, count=1)
                text = text.replace("# ws_port = 1884", f"ws_port = {free_port()}")
                settings.write_text(text)
            started |= cmd == "tomato start"
            if cmd == "tomato stop":
                started = False
            if cmd.startswith("ketchup submit"):
                assert "job submitted successfully with jobid 1" in res.stdout
            if cmd.startswith("passata get"):
                assert re.search(r"max:\s+\d", res.stdout), res.stdout
            if cmd.startswith("ketchup snapshot"):
                assert (work / "snapshot.1.nc").stat().st_size > 0
        # the job ran on the loaded sample and its file landed where submit ran
        assert (work / "results.1.nc").stat().st_size > 0
    finally:
        if started:
            sh(f"tomato stop -p {port}")
