"""Read our result files with tomato 2.2's own models, in tomato 2.2's own venv.

tomato 2.2 is never installed into the project's venv (its wheel's ``tomato``,
``ketchup`` and ``passata`` scripts would replace ours): ``scripts/ensure-tomato22.py``
makes ``.venv-tomato22`` (the test command runs it), and :func:`read_with_tomato` hands
the attrs of a file to ``tomato.models.Job`` / ``Component`` there, as a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.ncread import load_tree

__all__ = ["read_with_tomato", "tomato22_python"]

REPO = Path(__file__).resolve().parents[1]

_CHECK = r"""
import json, sys
from tomato.models import Component, Job
doc = json.load(sys.stdin)
job = Job.model_validate_json(doc["job"])
out = {"job": json.loads(job.model_dump_json()), "components": {}}
for role, raw in doc["components"].items():
    out["components"][role] = json.loads(Component.model_validate_json(raw).model_dump_json())
print(json.dumps(out))
"""


def tomato22_python() -> Path:
    """The interpreter of the tomato 2.2 venv; skips (or fails, in the test command)
    when it is not there."""
    venv = Path(os.environ.get("TOMATO22_VENV", REPO / ".venv-tomato22"))
    py = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    if not (venv / ".installed").exists() or not py.exists():
        why = f"no tomato 2.2 venv at {venv}: run python3 scripts/ensure-tomato22.py"
        if os.environ.get("TOMATO_REQUIRE_TOMATO22"):
            pytest.fail(why)
        pytest.skip(why)
    return py


def read_with_tomato(path: Path | str) -> dict[str, Any]:
    """``{"job": ..., "components": {role: ...}}`` as tomato 2.2's models parse them;
    a validation error fails the test with tomato's message."""
    py = tomato22_python()
    dt = load_tree(path)  # a recorder may run in this process: see ncread.py
    doc = {
        "job": dt.attrs["tomato_Job"],
        "components": {r: g.attrs["tomato_Component"] for r, g in dt.children.items()},
    }
    res = subprocess.run(
        [str(py), "-c", _CHECK],
        input=json.dumps(doc),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO / "tests",  # not the repo: our own tomato_mqtt must not shadow anything
    )
    if res.returncode != 0:
        pytest.fail(f"tomato 2.2's models refuse our file {path}:\n{res.stderr[-3000:]}")
    return dict(json.loads(res.stdout))


if __name__ == "__main__":  # python -m tests.tomato22 FILE
    print(json.dumps(read_with_tomato(sys.argv[1]), indent=1))
