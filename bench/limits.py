"""Issue 15: every row of its table, each against its target, in one run.

``python -m bench.limits [--reps N] [--only NAME ...]`` runs the sections below (each a
module of ``bench/`` with a ``rows(reps)`` function) and prints one table: the median
(min..max) of ``reps`` repetitions, the baseline measured in the same run, the ratio,
the target and whether it is met. A section can also be run alone
(``python -m bench.<module>``), which prints its own part of the table.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Row", "main", "print_table"]


@dataclass
class Row:
    """One figure of the table: the measured values of every repetition."""

    figure: str
    unit: str
    values: list[float]
    target: str
    #: does the median meet the target? (computed by the section, which knows the rule)
    ok: bool
    #: what the figure is compared with, measured in the same run (e.g. ``python -c pass``)
    baseline: str = ""
    baseline_values: list[float] = field(default_factory=list)
    fmt: str = "{:.3f}"

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def baseline_median(self) -> float | None:
        return statistics.median(self.baseline_values) if self.baseline_values else None

    def cells(self) -> list[str]:
        f = self.fmt.format
        got = (
            f"{f(self.median)} ({f(min(self.values))}..{f(max(self.values))})"
            if self.values
            else "failed"
        )
        b = self.baseline_median
        base = f"{self.baseline}: {f(b)}" if b is not None else self.baseline
        ratio = f"{self.median / b:.2f}x" if b and self.values else ""
        return [
            self.figure,
            f"{got} {self.unit}",
            base,
            ratio,
            self.target,
            "yes" if self.ok else "NO",
        ]


#: (name, module): the sections of the table, in its order
SECTIONS: list[tuple[str, str]] = [
    ("cli", "bench.clistart"),
    ("start", "bench.startup"),
    ("queue", "bench.queue"),
    ("memory", "bench.memory"),
    ("scale", "bench.scale_limits"),
]


def print_table(rows: Sequence[Row], title: str, out: Callable[[str], None] = print) -> str:
    head = [
        "figure",
        "tomato-mqtt median (min..max)",
        "baseline (same run)",
        "ratio",
        "target",
        "met",
    ]
    table = [head, *[r.cells() for r in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    lines = [f"## {title}", ""]
    lines.append("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in table[1:]:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    text = "\n".join(lines)
    out(text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.limits", description=__doc__)
    ap.add_argument("--reps", type=int, default=3, help="repetitions per figure (median)")
    ap.add_argument(
        "--only", nargs="*", default=None, help="sections: " + ", ".join(n for n, _ in SECTIONS)
    )
    a = ap.parse_args(argv)
    rows: list[Row] = []
    t0 = time.monotonic()
    for name, mod in SECTIONS:
        if a.only and name not in a.only:
            continue
        print(f"[{time.monotonic() - t0:6.1f} s] {name} ...", file=sys.stderr, flush=True)
        try:
            rows += importlib.import_module(mod).rows(a.reps)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
            print(f"  {mod} is missing: section skipped", file=sys.stderr)
    text = print_table(
        rows, f"issue 15 — limits, {a.reps} repetitions, {time.monotonic() - t0:.0f} s"
    )
    out = Path(__file__).parent / "results" / "limits.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + "\n")
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
