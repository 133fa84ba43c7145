"""Issue 9: the chaos scenarios of tests/chaos, repeated, with longer jobs, at 20 Hz and 1 kHz.

``python3 scripts/dev.py bench chaos [options]`` (or ``python -m bench.chaos``): every
scenario of ``tests/chaos/scenarios.py`` (the same code the tests run, imported, not
copied), ``--reps`` times at each rate, each on a fresh stack on a free port; then the
table (scenario, Hz, run, status, points expected / in the file, duplicates,
seconds from the fault to the job's end) and whether the run ended as issue 9 specifies.
The table is printed and written to bench/results/chaos.md.

Scenarios this machine cannot run (no root, no ``ip netns``, no libfaketime) are listed
as skipped with the reason. Exit status 1 when any run did not end as specified.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tests.chaos.harness import (
    FAST_HZ,
    RATE_HZ,
    RUNS,
    Params,
    Run,
    Unavailable,
    format_table,
    record,
)
from tests.chaos.scenarios import SCENARIOS, run_scenario

RESULTS = Path(__file__).resolve().parent / "results"


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench chaos", description=__doc__)
    ap.add_argument("--reps", type=int, default=3, help="runs per scenario and rate (3)")
    ap.add_argument("--duration", type=float, default=15.0, help="task length, s (15)")
    ap.add_argument("--down", type=float, default=5.0, help="stall/cut/full-disk length, s (5)")
    ap.add_argument(
        "--hz",
        default=f"{RATE_HZ:g},{FAST_HZ:g}",
        help=f"comma-separated sampling rates ({RATE_HZ:g},{FAST_HZ:g})",
    )
    ap.add_argument(
        "--only", action="append", default=[], metavar="NAME", help="this scenario (repeatable)"
    )
    ap.add_argument("--quick", action="store_true", help="1 run, 5 s tasks, 3 s faults")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    ap.add_argument(
        "--keep",
        action="store_true",
        help="keep every work directory (those of runs not as specified are kept anyway)",
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.list:
        print("\n".join(SCENARIOS))
        return 0
    if args.quick:
        args.reps, args.duration, args.down = 1, 5.0, 3.0
    unknown = [n for n in args.only if n not in SCENARIOS]
    if unknown:
        print(f"unknown scenario(s) {unknown}; see --list", file=sys.stderr)
        return 2
    names = args.only or list(SCENARIOS)
    rates = [float(x) for x in args.hz.split(",") if x.strip()]
    work = Path(tempfile.mkdtemp(prefix="tomato-chaos-"))
    skipped: dict[str, str] = {}
    kept: list[Path] = []
    t0 = time.monotonic()
    try:
        for name in names:
            for hz in rates:
                for i in range(1, args.reps + 1):
                    if name in skipped:
                        break
                    d = args.duration
                    p = Params(hz=hz, duration=d, fault_at=0.3 * d, down=args.down)
                    root = work / f"{name.replace('+', 'p')}-{hz:g}-{i}"
                    root.mkdir(parents=True)
                    progress(f"{name} @{hz:g} Hz run {i}", t0)
                    n_runs = len(RUNS)
                    try:
                        run_scenario(name, root, p, run=i)
                    except Unavailable as e:
                        skipped[name] = str(e)
                    except Exception as e:  # a broken run is a row, not the end of the bench
                        record(Run(name, hz, run=i, problems=[f"{type(e).__name__}: {e}"[:200]]))
                    if any(r.faults() for r in RUNS[n_runs:]):
                        kept.append(root)  # its logs say why (a run once failed unexplained)
                    elif not args.keep:
                        shutil.rmtree(root, ignore_errors=True)
    finally:
        if args.keep:
            print(f"work directories kept in {work}", file=sys.stderr)
        elif kept:
            print(
                f"the runs not as specified are kept: {', '.join(map(str, kept))}", file=sys.stderr
            )
        else:
            shutil.rmtree(work, ignore_errors=True)
    report(args, skipped, time.monotonic() - t0)
    return 1 if any(r.faults() for r in RUNS) else 0


def progress(msg: str, t0: float) -> None:
    print(f"[{time.monotonic() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)


def report(args: argparse.Namespace, skipped: dict[str, str], elapsed: float) -> None:
    ok = sum(1 for r in RUNS if not r.faults())
    head = (
        f"issue 9 — chaos scenarios, {args.reps} run(s) each, {args.duration:g} s tasks, "
        f"faults {args.down:g} s long; {ok}/{len(RUNS)} run(s) as specified; "
        f"Python {platform.python_version()}, {platform.machine()}; run took {elapsed:.0f} s"
    )
    text = f"{head}\n\n{format_table(RUNS)}\n"
    if skipped:
        text += "\n" + "\n".join(f"- skipped {n}: {why}" for n, why in skipped.items()) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "chaos.md").write_text(text)


if __name__ == "__main__":
    sys.exit(main())
