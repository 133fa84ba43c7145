"""Issue 15, CLI start: one whole-process CLI call against a bare interpreter start.

``python -m bench.clistart [--reps N]``: a stack with one component; per repetition,
``--calls`` calls of each command, interleaved with ``python -c pass`` of the same
interpreter (the baseline, measured in the same run: every call pays the interpreter's
start and ``site``, so the ratio is what the CLI adds). Targets: every call ≤ 3 times the
baseline; ``passata`` as fast as ``ketchup`` (≤ 1.1 times it), judged on the median of
the ratios of calls made one after the other (pair by pair: the ratio of two medians
swung 1.03-1.15x between runs with the host's speed, while 30 paired calls of
``passata get`` and ``ketchup status`` came out 1.00x).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from bench import harness
from bench.limits import Row, print_table
from bench.mqtt_side import BIN, TomatoMqtt

__all__ = ["rows"]

COMP = "example_counter:(example-addr,1)"


def rows(reps: int, calls: int = 7) -> list[Row]:
    harness.become_subreaper()
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        sys_ = TomatoMqtt(Path(tmp), 1)
        sys_.prepare()
        sys_.start()
        try:
            return _measure(sys_, reps, calls)
        finally:
            sys_.stop()


def _measure(s: TomatoMqtt, reps: int, calls: int) -> list[Row]:
    where = ["-p", str(s.port), "-A", str(s.root)]
    cmds: dict[str, list[str | Path]] = {
        "`tomato status`": [BIN / "tomato", "status", *where],
        "`passata status <component>`": [BIN / "passata", "status", COMP, *where],
        "`ketchup status`": [BIN / "ketchup", "status", *where],
        "`passata get <component> max`": [BIN / "passata", "get", COMP, "max", *where],
    }
    base: list[float] = []
    got: dict[str, list[float]] = {k: [] for k in cmds}
    paired: dict[str, list[float]] = {k: [] for k in cmds}  # passata's / ketchup's call
    for _ in range(reps):  # per repetition: the medians of `calls` interleaved calls
        b: list[float] = []
        per: dict[str, list[float]] = {k: [] for k in cmds}
        for _ in range(calls):
            b.append(harness.run([BIN / "python", "-c", "pass"]).check().wall)
            for k, cmd in cmds.items():
                per[k].append(harness.run(cmd, cwd=s.root).check().wall)
        for k in paired:  # each passata call next to a ketchup call (just before/after)
            if k.startswith("`passata"):
                paired[k] += [p / q for p, q in zip(per[k], per["`ketchup status`"], strict=True)]
        base.append(statistics.median(b))
        for k in cmds:
            got[k].append(statistics.median(per[k]))
    limit = 3 * statistics.median(base)
    out = []
    for k in cmds:
        med = statistics.median(got[k])
        out.append(
            Row(
                f"one CLI call: {k}",
                "s",
                got[k],
                "<= 3x `python -c pass`",
                med <= limit,
                baseline="`python -c pass`",
                baseline_values=base,
            )
        )
    for k in ("`passata status <component>`", "`passata get <component> max`"):
        out.append(
            Row(
                f"{k} : `ketchup status`, call by call",
                "x",
                paired[k],
                "<= 1.1x ketchup",
                statistics.median(paired[k]) <= 1.1,
                fmt="{:.2f}",
            )
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.clistart", description=__doc__)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--calls", type=int, default=7, help="calls per command and repetition")
    a = ap.parse_args()
    got = rows(a.reps, a.calls)
    print_table(got, f"issue 15 — CLI calls, {a.reps} x {a.calls} calls each")
    return 0 if all(r.ok for r in got) else 1


if __name__ == "__main__":
    sys.exit(main())
