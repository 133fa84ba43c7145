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
