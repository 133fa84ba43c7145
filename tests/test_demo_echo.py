"""The demo echoes each command whole, real paths included, so pasting it works."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def demo_module() -> ModuleType:
    """``scripts/demo.py`` as a module (it is a script, not a package's)."""
    spec = importlib.util.spec_from_file_location("demo", REPO / "scripts" / "demo.py")
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo


def test_echoed_demo_command_can_be_pasted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    demo = demo_module()
    monkeypatch.setattr(demo, "DEMO", tmp_path)  # its working folder
    app = tmp_path / "my app"  # a space: the echo must quote it
    dirs = ["-A", str(app), "-D", str(tmp_path / "d"), "-L", str(tmp_path / "l"), "-p", "1999"]
    demo.run("tomato", "init", *dirs)
    echoed = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("$ "))
    assert str(app) in echoed.replace("'", "")
    # pasted into a shell (with the venv on PATH): it does the same again
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    res = subprocess.run(
        ["bash", "-c", echoed[2:]], capture_output=True, text=True, env=env, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert f"settings already exist in {app}" in res.stdout
