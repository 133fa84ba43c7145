"""What the docs point a reader to exists: every test they name (``tests/….py`` and
``::test_name``), every module and script path, every ``python -m bench.…`` command. A
test renamed or a module moved without the page following it fails here (the pages
name hundreds of them as the evidence of what they claim)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]

#: paths the pages name that are not this repository's: tomato 2.2's own tests
ELSEWHERE = {"tests/test_01_tomato.py", "tests/utils.py"}

TEST = re.compile(r"(?<![\w/.])(tests/[\w/]+\.py)(?:::([\w]+))?")
PATH = re.compile(r"(?<![\w/.])((?:tomato_mqtt|bench|broker|drivers|scripts)/[\w/.-]+\.py)")
BENCH = re.compile(r"python -m (bench(?:\.\w+)*)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _prose(page: Path) -> str:
    """The page without its code blocks (a profile's output names the modules of the
    day it was taken)."""
    return FENCE.sub("", page.read_text(encoding="utf-8"))


def test_every_test_the_docs_name_exists() -> None:
    gone = []
    for page in PAGES:
        for path, name in TEST.findall(_prose(page)):
            if path in ELSEWHERE:
                continue
            f = ROOT / path
            if not f.exists():
                gone.append(f"{page.name}: {path}")
            elif name and not re.search(rf"def {name}\b", f.read_text(encoding="utf-8")):
                gone.append(f"{page.name}: {path}::{name}")
    assert not gone, "the docs name tests that do not exist:\n" + "\n".join(sorted(set(gone)))


def test_every_path_and_bench_command_the_docs_name_exists() -> None:
    gone = []
    for page in PAGES:
        text = _prose(page)
        gone += [f"{page.name}: {p}" for p in PATH.findall(text) if not (ROOT / p).exists()]
        for mod in BENCH.findall(page.read_text(encoding="utf-8")):
            base = ROOT / mod.replace(".", "/")
            if not (base.with_suffix(".py").exists() or (base / "__main__.py").exists()):
                gone.append(f"{page.name}: python -m {mod}")
    assert not gone, "the docs name paths that do not exist:\n" + "\n".join(sorted(set(gone)))
