"""Issue 3: CLI wall time, submit → `r`, a 1 s job → file, start → ready, vs tomato 2.2.

``python -m bench.cli [--quick]``: the median of 20 whole-process calls of each CLI
figure per system (alternating A B A B), with tomato 2.2 from PyPI measured beside it.
"""

from __future__ import annotations

import sys

from bench.suite import Config, main

if __name__ == "__main__":
    sys.exit(
        main(
            prog="python -m bench.cli",
            title="issue 3 — CLI and start-up, tomato-mqtt vs tomato 2.2",
            rows=("cli.", "start.1", "job."),
            doc=__doc__,
            base=Config(reps=3, cli_calls=7),  # 3 x 7 = 21 calls per figure and system
            results="cli",
        )
    )
