"""Every ``[section] key`` of settings.toml the docs name is a key the settings take:
one renamed or dropped while a page still tells labs to set it would be refused (an
unknown key is an error, docs/cli.md) the day a lab follows the page. tomato 2.2's
keys that are read and said to be unused are named as such."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tomato_mqtt.config.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
KEY = re.compile(r"`\[([a-z_]+)\] ([a-z_]+)`")

#: tomato 2.2's settings.toml keys: read, and said to be unused (config/settings.py)
TOMATO22 = {("devices", "config"), ("jobs", "storage"), ("jobs", "dbpath")}


def _keys() -> dict[tuple[str, str], list[str]]:
    found: dict[tuple[str, str], list[str]] = {}
    for page in PAGES:
        for section, key in KEY.findall(page.read_text(encoding="utf-8")):
            found.setdefault((section, key), []).append(page.name)
    return found


def test_every_settings_key_the_docs_name_exists() -> None:
    keys = _keys()
    assert len(keys) > 20  # the pages were read
    sections = Settings.model_fields
    unknown = []
    for (section, key), pages in sorted(keys.items()):
        if (section, key) in TOMATO22:
            continue
        model = sections[section].annotation if section in sections else None
        fields = getattr(model, "model_fields", {})
        if key not in fields:
            unknown.append(f"[{section}] {key} (in {', '.join(sorted(set(pages)))})")
    assert not unknown, "the docs name settings that do not exist: " + "; ".join(unknown)


def test_every_settings_toml_block_in_the_docs_has_known_keys() -> None:
    """The ``toml`` blocks that are settings.toml (not a driver's pyproject.toml): each
    section and key is one the settings take (``[drivers.<name>]`` is the driver's own)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib

    sections = Settings.model_fields
    seen = 0
    unknown = []
    for page in PAGES:
        for block in re.findall(r"```toml\n(.*?)\n```", page.read_text(encoding="utf-8"), re.S):
            doc = tomllib.loads(block)
            if "project" in doc or "drivers" in doc:
                continue  # a pyproject.toml, or a driver's own table
            seen += 1
            for section, table in doc.items():
                model = sections[section].annotation if section in sections else None
                fields = getattr(model, "model_fields", None)
                if fields is None:
                    unknown.append(f"{page.name}: [{section}]")
                    continue
                unknown += [f"{page.name}: [{section}] {k}" for k in table if k not in fields]
    assert seen >= 2  # README's and dashboard.md's
    assert not unknown, "settings the docs' settings.toml blocks set that do not exist: " + (
        "; ".join(unknown)
    )
