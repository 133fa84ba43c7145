"""Issue 10: the long fuzz run, ``python -m bench.fuzz_stack [N]`` (default 100,000).

Runs ``tests/test_fuzz.py`` (a secured stack fuzzed by an operator, and an open stack
where every message reaches the services) with ``TOMATO_FUZZ_N=N`` and prints the counts
each run reports (sent, replies, refused). The default test run uses 10,000 messages.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    n = sys.argv[1] if len(sys.argv) > 1 else "100000"
    cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
           "tests/test_fuzz.py"]  # fmt: skip
    return subprocess.call(cmd, cwd=REPO, env={**os.environ, "TOMATO_FUZZ_N": n})


if __name__ == "__main__":
    sys.exit(main())
