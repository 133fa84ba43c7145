"""Create (once) the separate venv in which tests read our files with tomato 2.2's models.

tomato 2.2 must never be installed into the project's venv: its wheel installs console
scripts named ``tomato``, ``ketchup`` and ``passata`` that would replace ours, and its
``tomato/__init__.py`` imports its whole CLI. So ``tests/test_tomato_models.py`` runs
its check as a subprocess of ``.venv-tomato22/bin/python`` (gitignored), which this
script makes with ``tomato==2.2.*`` from PyPI and stamps, so later runs cost nothing.

    python3 scripts/ensure-tomato22.py        # prints the interpreter's path
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("TOMATO22_VENV", REPO / ".venv-tomato22"))
WANT = "tomato==2.2.*"


def main() -> int:
    py = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    stamp = VENV / ".installed"
    if stamp.exists() and stamp.read_text() == WANT and py.exists():
        print(py)
        return 0
    print(
        f"creating {VENV} with {WANT} (tests read our files with tomato's models)", file=sys.stderr
    )
    venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    res = subprocess.run([str(py), "-m", "pip", "install", "--quiet", WANT])
    if res.returncode != 0:
        return res.returncode
    stamp.write_text(WANT)
    print(py)
    return 0


if __name__ == "__main__":
    sys.exit(main())
