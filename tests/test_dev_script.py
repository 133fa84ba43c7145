"""The README's two commands: ``scripts/dev.py`` and the virtual environment it keeps."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def _dev(monkeypatch: pytest.MonkeyPatch, venv: Path) -> ModuleType:
    monkeypatch.setenv("TOMATO_VENV", str(venv))
    spec = importlib.util.spec_from_file_location("dev_script", REPO / "scripts" / "dev.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_venv_another_python_made_is_named_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python3.13 scripts/dev.py test` in a checkout whose .venv Python 3.11 made ran
    everything on 3.11 without a word: the environment is made again for the Python
    that runs the script, and it says why."""
    venv = tmp_path / "venv"
    dev = _dev(monkeypatch, venv)
    assert dev.other_python() is None  # none yet: created, as before
    venv.mkdir()
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    (venv / "pyvenv.cfg").write_text(f"home = /usr/bin\nversion = {here}.99\n")
    assert dev.other_python() is None  # another patch release: the same environment
    (venv / "pyvenv.cfg").write_text("home = /opt/py/bin\nversion = 3.9.18\n")
    assert dev.other_python() == f"{venv} was made by Python 3.9, this is Python {here}"


def test_an_unknown_command_is_said_before_anything_is_installed(tmp_path: Path) -> None:
    import subprocess

    venv = tmp_path / "no-venv"
    res = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "dev.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "TOMATO_VENV": str(venv)},
    )
    assert res.returncode != 0
    assert "unknown command '--help': use demo, test, install" in res.stderr, res
    assert not venv.exists()  # nothing made, nothing installed
