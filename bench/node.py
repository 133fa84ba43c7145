"""Issue 4: one example_counter component at 0.1, 0.01 and 0.001 s for 10 s.

``python -m bench.node [--quick]``: points in the file vs expected, MQTT messages/s on
the broker (tomato-mqtt; tomato 2.2 has no broker), CPU of the node (tomato 2.2: its
driver process) per second of task and of all processes, and the project's points/s
beside the raw paho → amqtt limit for the same batches.
"""

from __future__ import annotations

import sys

from bench.suite import main

if __name__ == "__main__":
    sys.exit(
        main(
            prog="python -m bench.node",
            title="issue 4 — sampling on one component, tomato-mqtt vs tomato 2.2",
            rows=("sample.", "rate.", "raw.amqtt.batch"),
            doc=__doc__,
            results="node",
        )
    )
