"""docs/architecture.md's table of rooms names every module of the package, and only
modules that exist: a module removed (``scheduler/texts.py``) or added (``queue.py``,
``stale.py``, ``dashboard/views.py``, …) without the page following it is a failure here,
as the layer picture is for ``lint-imports``."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "tomato_mqtt"
DOC = ROOT / "docs" / "architecture.md"

NAME = re.compile(r"`([\w/.]+)`")
CELL = re.compile(r"(?<!\\)\|")


def _rows() -> list[tuple[list[str], list[str]]]:
    """(what the first cell names, what the second names) per row of the rooms' table;
    each a module's path relative to the package, a file named alone taken in the folder
    of the path named before it in the row (``config/settings.py``, ``initfiles.py``)."""
    out = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if not line.startswith("| `"):
            continue
        cells = CELL.split(line)  # (a `|` in a cell is written `\|`, as GFM needs)
        base = ""
        named: list[list[str]] = [[], []]
        for i, cell in enumerate(cells[1:3]):
            for m in NAME.findall(cell):
                if not (m.endswith("/") or m.endswith(".py")):
                    continue
                if m.startswith("tomato_mqtt/"):  # a path from the package's root
                    named[i].append(m.removeprefix("tomato_mqtt/"))
                    continue
                if "/" in m:
                    base = m if m.endswith("/") else m.rsplit("/", 1)[0] + "/"
                    if m.endswith(".py"):
                        named[i].append(m)
                    continue
                named[i].append(base + m)
        out.append((named[0], named[1]))
    return out


def _modules() -> set[str]:
    return {
        str(p.relative_to(PKG))
        for p in PKG.rglob("*.py")
        if p.name != "__init__.py" and "__pycache__" not in p.parts and "static" not in p.parts
    }


def test_every_module_the_table_names_exists() -> None:
    rows = _rows()
    assert len(rows) > 30  # the table was found
    gone = sorted(m for first, second in rows for m in first + second if not (PKG / m).exists())
    assert not gone, f"docs/architecture.md names modules that do not exist: {gone}"


def test_every_module_is_named_in_the_table() -> None:
    named = {m for first, second in _rows() for m in first + second if m.endswith(".py")}
    missing = sorted(_modules() - named)
    assert not missing, f"modules docs/architecture.md does not name: {missing}"
