"""``python -m bench``: tomato-mqtt against tomato 2.2 and raw MQTT, in one run (issue 6).

See bench/suite.py for how each figure is measured and docs/performance.md for a run.
"""

from __future__ import annotations

import sys

from bench.suite import main

if __name__ == "__main__":
    sys.exit(main())
