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


LINK = re.compile(r"\]\(([\w./-]*\.md)?(#[^)\s]+)?\)")
HEADING = re.compile(r"^#{1,6} (.+?)\s*$", re.M)


def _anchors(page: Path) -> set[str]:
    """The anchors GitHub makes of a page's headings: lower case, punctuation dropped
    (word characters, '-' and spaces kept), spaces to '-', a repeat numbered."""
    seen: dict[str, int] = {}
    out = set()
    for title in HEADING.findall(_prose(page)):
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_every_link_between_the_pages_and_its_anchor_exists() -> None:
    """A newcomer's tour followed two links to headings renamed since (a page's anchor
    is its heading's words): each link to a page of the repository, and to a heading of
    it, resolves."""
    gone = []
    for page in PAGES:
        for target, anchor in LINK.findall(_prose(page)):
            other = (page.parent / target).resolve() if target else page
            if not other.exists():
                gone.append(f"{page.name}: {target}")
            elif anchor and anchor[1:] not in _anchors(other):
                gone.append(f"{page.name}: {target}{anchor}")
    assert not gone, "the pages link to what is not there:\n" + "\n".join(sorted(set(gone)))
