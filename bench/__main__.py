"""``python -m bench``: tomato-mqtt against tomato 2.2 and raw MQTT, in one run (issue 6).

See bench/suite.py for how each figure is measured and docs/performance.md for a run.
``python -m bench chaos [...]`` runs the fault-injection scenarios instead (bench/chaos.py).
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["chaos"]:
        from bench.chaos import main as chaos

        sys.exit(chaos(sys.argv[2:]))
    from bench.suite import main

    sys.exit(main())
