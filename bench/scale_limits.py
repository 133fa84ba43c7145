"""Issue 15, throughput rows: points/s sustained and CPU-µs per point, end to end.

``python -m bench.scale_limits [--reps N] [--duration S]``: the two shapes of the issue's
table, each on a stack of its own started with ``tomato start`` (bench/scale.py's
``Stack``; its docstring says how points, lag and CPU are counted):

- *bulk*: 20 channels of the simulated DAQ (``daq_sim``) at 10 kHz each — 200,000
  points/s offered (a sustained rate is at most the offered one, so the target needs
  more); targets ≥ 100,000 points/s sustained into the file (points / (task duration +
  the file's lag)), ≤ 5 CPU-µs per point summed over node, broker, recorder and
  scheduler, 100 % of the points in the file;
- *one-point*: 50 channels of ``example_counter`` at 1 kHz (one ``do_task`` call per
  point) — the issue's "50 components x 1 kHz" row, same targets per point, except
  that 50,000 points/s are all it offers: keeping up with all of them is its 100 % in
  the file, and its points/s (below the offered rate by the file's lag) is shown only.

Baseline in the same run: raw paho → amqtt → paho with batches of the same shape
(bench/scale.py's ``raw_limit``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench import harness
from bench.limits import Row, print_table
from bench.scale import Row as ScaleRow
from bench.scale import Stack, raw_limit

__all__ = ["rows"]

SHAPES = [("bulk", 20, 10_000.0), ("one-point", 50, 1_000.0)]


def rows(reps: int, duration: float = 5.0) -> list[Row]:
    harness.become_subreaper()
    out: list[Row] = []
    cache: dict[tuple[str, int], tuple[float, float]] = {}
    for kind, n, rate in SHAPES:
        r = ScaleRow(kind, n, rate, duration, expected=int(n * rate * duration))
        with tempfile.TemporaryDirectory(prefix="bench-limits-") as tmp:
            st = Stack(Path(tmp), kind, n)
            st.start()
            try:
                for i in range(reps):
                    pts, lag, cpu, status = st.run_job(rate, duration, i)
                    r.points.append(pts)
                    r.lag.append(lag)
                    r.cpu.append(cpu)
                    r.status.append(status)
            finally:
                st.stop()
        raw_pps, raw_us = raw_limit(kind, rate, cache)
        label = f"{kind}, {n} components x {rate / 1000:g} kHz"
        pps = [p / (duration + lag) for p, lag in zip(r.points, r.lag, strict=True)]
        us = [sum(c.values()) * 1e6 / max(1, p) for c, p in zip(r.cpu, r.points, strict=True)]
        infile = [100.0 * p / r.expected for p in r.points]
        # the issue's >= 100,000 points/s needs a shape that offers that many: the bulk
        # one (200,000 offered). 50 x 1 kHz offers 50,000, and keeping up with all of
        # them is its "100 % in the file" row: its points/s, counted over the task and
        # the file's lag, is below the offered rate by construction (any lag > 0), so
        # it is shown, not judged (it was judged against all offered until session 36:
        # a check that could not pass)
        offered = int(n * rate)
        judged = offered >= 100_000
        out += [
            Row(
                f"{label}: points/s into the file",
                "points/s",
                pps,
                ">= 100,000" if judged else f"info (offers {offered:,}: see 100 % below)",
                r.pps >= 100_000 if judged else True,
                baseline="raw paho → amqtt → paho",
                baseline_values=[raw_pps],
                fmt="{:.0f}",
            ),
            Row(
                f"{label}: CPU per point, all services",
                "µs",
                us,
                "<= 5 µs",
                r.us_total() <= 5.0,
                baseline="raw paho → amqtt → paho",
                baseline_values=[raw_us],
                fmt="{:.2f}",
            ),
            Row(
                f"{label}: points in the file (jobs {'/'.join(r.status)})",
                "%",
                infile,
                "100 %",
                r.in_file >= 99.999 and all(s == "c" for s in r.status),
                fmt="{:.1f}",
            ),
        ]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scale_limits", description=__doc__)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    a = ap.parse_args()
    got = rows(a.reps, a.duration)
    print_table(got, f"issue 15 — throughput, {a.reps} jobs of {a.duration:g} s per shape")
    return 0 if all(r.ok for r in got) else 1


if __name__ == "__main__":
    sys.exit(main())
