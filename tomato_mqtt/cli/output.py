"""How the CLIs print: a Reply as text, YAML or JSON; plain tables cut to the terminal.

Light to import (``yaml`` only when ``-y`` asks for it); ``cli.common`` re-exports these.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence

TYPE_CHECKING = False  # typing is ~2 ms of a one-request call: for the type checker only
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Output", "below", "echo", "emit", "errors_below", "safe", "table"]

#: what a terminal would act on (C0/C1 controls, DEL, bidirectional overrides), shown as
#: escapes instead: a job named "x\nstatus:    c" or "\x1b]0;…" printed a fake status
#: line or retitled and cleared the admin's terminal (an outside audit)
_UNSAFE = {
    **{c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]},
    **{c: f"\\u{c:04x}" for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]},
}


def safe(text: str) -> str:
    """``text`` (a value a user or a driver chose) with what a terminal acts on escaped."""
    return text.translate(_UNSAFE)


def echo(text: str, err: bool = False) -> None:
    """A line on stdout (or stderr): the CLIs' one way to print (typer-free, so the
    fast path of :mod:`tomato_mqtt.cli.fast` prints exactly what the typer commands do)."""
    out = sys.stderr if err else sys.stdout
    out.write(f"{text}\n")
    out.flush()


class Output:
    """Prints a Reply: human text by default, or the whole Reply as YAML / JSON."""

    def __init__(self, yaml_: bool = False, json_: bool = False) -> None:
        self.yaml = yaml_
        self.json = json_

    def reply(self, reply: Any, human: Callable[[Any], str] | None = None) -> None:
        doc = {"success": reply.success, "msg": reply.msg, "data": reply.data}
        if not reply.success:
            # stderr says why, also under -y/--json (stdout then carries the Reply): a
            # script that only checks the exit code and logs stderr learns the reason,
            # as from ``fail`` (an outside audit: `ketchup status 999 -y 2>err` was empty)
            echo(f"error: {reply.msg}", err=True)
        if self.json or self.yaml:
            self.print_doc(doc)
        elif reply.success:
            echo(human(reply.data) if human and reply.data is not None else reply.msg)
        if not reply.success:
            raise SystemExit(1)

    def print_doc(self, doc: Mapping[str, Any]) -> None:
        """A Reply-shaped document as JSON or YAML (whichever was asked for)."""
        if self.json:
            import json  # only for --json: it imports re, ~4 ms of a call

            echo(json.dumps(doc, indent=2, default=str))
        elif self.yaml:
            import yaml

            echo(yaml.safe_dump(dict(doc), sort_keys=False, allow_unicode=True).rstrip())


def emit(text: str) -> None:
    echo(text)


def table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[tuple[str, str]],
    cut_first: str | None = None,
) -> str:
    """A plain text table that fits a terminal: (key, header) columns, long cells cut
    (the column ``cut_first``, free text, down to 12 before any other)."""
    width = _term_width()
    cells = [[_cell(r.get(k)) for k, _ in columns] for r in rows]
    heads = [h for _, h in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(heads)]
    keys = [k for k, _ in columns]
    if cut_first in keys:  # (a job's reason cut the times of day off its row: a tour)
        i = keys.index(cut_first)
        over = sum(widths) + 2 * (len(widths) - 1) - width
        widths[i] = max(min(widths[i], 12), widths[i] - max(0, over))
    while sum(widths) + 2 * (len(widths) - 1) > width and max(widths) > 12:
        i = widths.index(max(widths))
        widths[i] -= 1

    def fmt(vals: Sequence[str]) -> str:
        return "  ".join(_fit(v, w) for v, w in zip(vals, widths, strict=True)).rstrip()

    lines = [fmt(heads), fmt(["-" * w for w in widths])]
    lines += [fmt(c) for c in cells]
    return "\n".join(lines)


def _term_width() -> int:
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns
    except OSError:
        return 120


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple, set)):
        return safe(", ".join(map(str, v)))
    if isinstance(v, dict):
        return safe(", ".join(f"{k}={x}" for k, x in v.items()))
    return safe(str(v))


def _fit(v: str, w: int) -> str:
    return v.ljust(w) if len(v) <= w else v[: max(0, w - 1)] + "…"


def errors_below(notes: Iterable[tuple[object, object]]) -> str:
    """Errors in full under the table, one a line: a table column cut them to its width
    (a sentence saying what to fix ended in "…" at 120 columns or in a pipe)."""
    return below("errors", [f"{who}: {err}" for who, err in notes if err])


def below(title: str, lines: Sequence[str]) -> str:
    """``lines`` one a line, made safe to print, under ``title:`` after a blank line;
    "" for none."""
    if not lines:
        return ""
    return f"\n\n{title}:\n" + "\n".join(f"  {safe(line)}" for line in lines)
