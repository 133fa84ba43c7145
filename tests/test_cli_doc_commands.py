"""Every ``tomato``/``ketchup``/``passata`` command line the docs and the README show
names commands and options the CLI has: a sub-command renamed, an option dropped or
misspelt on a page fails here (what ``--help`` shows is the CLI's, from typer)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer

from tomato_mqtt.cli import ketchup, passata, tomato

ROOT = Path(__file__).resolve().parents[1]
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
CMD = re.compile(r"`((?:tomato|ketchup|passata) [^`]*)`")
OPTION = re.compile(r"-{1,2}[A-Za-z][\w-]*")
APPS = {"tomato": tomato.app, "ketchup": ketchup.app, "passata": passata.app}


def _command_lines() -> list[tuple[str, str]]:
    out = []
    for page in PAGES:
        text = re.sub(r"/\n", "/", page.read_text(encoding="utf-8"))  # a span cut at a "/"
        out += [(page.name, " ".join(c.split())) for c in CMD.findall(text)]
    return sorted(set(out))


def _options(cmd: Any) -> set[str]:
    names = {"--help"}
    for p in cmd.params:
        names.update(getattr(p, "opts", []))
        names.update(getattr(p, "secondary_opts", []))
    return names


def _check(line: str) -> list[str]:
    toks = line.replace("\\|", "|").split()
    cmd: Any = typer.main.get_command(APPS[toks[0]])
    path, i = [toks[0]], 1
    # -v/-q before a command go to it, as tomato 2.2 takes them (common.CommandFirst)
    loud = [t for t in toks[1:] if re.fullmatch(r"-(v+|q+)|--verbose|--quiet", t)]
    if loud and hasattr(cmd, "commands"):
        toks = [toks[0], *(t for t in toks[1:] if t not in loud), *loud]
    while hasattr(cmd, "commands") and i < len(toks) and not toks[i].startswith("-"):
        if toks[i] in ("…", "...") or toks[i].startswith("<"):
            return []  # "tomato user …": the group itself
        alts = re.split(r"[/|]", toks[i].strip("[]"))  # "load/eject/ready", "[a|b]"
        if not all(a in cmd.commands for a in alts):
            return [f"no command {toks[i]!r} under `{' '.join(path)}`"]
        path.append(toks[i])
        cmd = cmd.commands[alts[0]]
        i += 1
    have = _options(cmd)
    problems = []
    for tok in toks[i:]:
        for piece in re.split(r"[\[\]|/]", tok):
            piece = piece.split("=")[0]
            if not OPTION.fullmatch(piece) or piece in have:
                continue
            if re.fullmatch(r"-(v+|q+)", piece) and piece[:2] in have:  # -vv, -qq: counted
                continue
            problems.append(f"`{' '.join(path)}` has no option {piece}")
    return problems


def test_the_check_finds_what_it_is_for() -> None:
    assert _check("ketchup status -y --all") == []
    assert _check("tomato pipeline load/eject/ready -y") == []
    assert _check("ketchup status --everything") == ["`ketchup status` has no option --everything"]
    assert _check("tomato pipeline unload x") == ["no command 'unload' under `tomato pipeline`"]
    assert _check("tomato -v status") == []
    assert _check("tomato -v init") == ["`tomato init` has no option -v"]


def test_every_command_line_in_the_docs_is_one_the_cli_takes() -> None:
    lines = _command_lines()
    assert len(lines) > 100  # the pages were read
    problems = [f"{page}: `{line}`: {p}" for page, line in lines for p in _check(line)]
    assert not problems, "\n".join(problems)


def test_the_boot_units_verify(tmp_path: Path) -> None:
    """docs/cli.md's systemd units (an admin's tour found none: "for systemd" alone),
    as an admin would install them, pass ``systemd-analyze verify`` without a word; a
    misspelt setting is said (so the check can fail)."""
    import shutil
    import subprocess
    import sys

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        import pytest

        pytest.skip("systemd-analyze is not installed (the units are not checked)")
    text = (ROOT / "docs" / "cli.md").read_text()
    blocks = re.findall(r"<!-- systemd-unit -->\n```ini\n(.*?)\n```", text, flags=re.S)
    assert len(blocks) == 2, "docs/cli.md lost its systemd units"
    tomato = Path(sys.executable).parent / "tomato"
    (tmp_path / "node-rig-7.env").write_text("TOMATO_BROKER=mqtt://127.0.0.1:1\n")

    def verify(name: str, unit: str) -> subprocess.CompletedProcess[str]:
        unit = unit.replace("/opt/tomato/bin/tomato", str(tomato))
        unit = unit.replace("/etc/tomato/", f"{tmp_path}/").replace(
            "/var/lib/tomato", str(tmp_path)
        )
        (tmp_path / name).write_text(unit + "\n")
        return subprocess.run(
            [analyze, "verify", "--man=no", str(tmp_path / name)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    for name, unit in zip(("tomato-node@rig-7.service", "tomato.service"), blocks, strict=True):
        res = verify(name, unit)
        assert res.returncode == 0 and res.stderr.strip() == "", (name, res.stderr)
    bad = verify("tomato.service", blocks[1].replace("Type=oneshot", "Type=oneshoot"))
    assert "oneshoot" in bad.stderr, bad
