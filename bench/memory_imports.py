"""What each library adds to each service's RSS: ``python -m bench.memory --imports``.

One fresh interpreter per service imports, step by step and in the order the service
does, what its process imports; the RSS increment of each step (``/proc/self/statm``) is
what that library costs the service. Shared libraries count in full in every process
that maps them, as in the RSS figures of :mod:`bench.memory`.
"""

from __future__ import annotations

import json
import subprocess
import sys

__all__ = ["IMPORT_CHAINS", "import_costs", "print_import_costs"]

MB = 1e6

#: per service, the imports of its process in the order it makes them (``exec:`` runs
#: code, e.g. a warm-up; ``  # `` starts a note); each step's RSS increment is what that
#: library costs the service
IMPORT_CHAINS: dict[str, list[str]] = {
    "broker": [
        "asyncio",
        "tomato_mqtt.cli.serve",  # under tomato start: its configuration as JSON, no settings
        "tomato_mqtt.services.base",
        "amqtt.broker",
        "tomato_mqtt_broker.security",
    ],
    "scheduler": [
        "asyncio",
        "tomato_mqtt.cli.serve",
        "pydantic",
        "tomato_mqtt.config.settings",
        "paho.mqtt.client",
        "tomato_mqtt.services.scheduler.service",
        "exec:from tomato_mqtt.services.scheduler.warmup import warm_up_payloads as w; w()"
        "  # warm-up: dgbowl-schemas",
        "exec:import pint; pint.Quantity('1 s')  # only once a payload has units",
    ],
    "node": [
        "asyncio",
        "tomato_mqtt.cli.serve",
        "tomato_mqtt.config.settings",
        "paho.mqtt.client",
        "numpy",
        "pint",
        "tomato_mqtt.services.node.service",
        "tomato_mqtt_example_counter",
        "exec:from tomato_mqtt.services.node.service import _load_units; _load_units()"
        "  # pint's unit registry",
    ],
    "recorder": [
        "asyncio",
        "tomato_mqtt.cli.serve",
        "tomato_mqtt.config.settings",
        "paho.mqtt.client",
        "tomato_mqtt.services.recorder.service",
        "numpy",
        "netCDF4",
        "exec:from tomato_mqtt.services.recorder.files import warm_up_writer as w; w()"
        "  # warm-up: one file written",
        "xarray  # not imported any more: the writer built xarray Datasets",
    ],
}

_STEPS = """
import importlib, json, sys
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
out = [("(bare interpreter)", rss())]
for label in json.loads(sys.argv[1]):
    step = label.partition("  # ")[0]
    if step.startswith("exec:"):
        exec(step[5:])
    else:
        importlib.import_module(step)
    out.append((label, rss()))
print(json.dumps(out))
"""


def import_costs(python: str = sys.executable) -> dict[str, list[tuple[str, float]]]:
    """Per service: (step, MB of RSS it adds) for each step of ``IMPORT_CHAINS``, each
    service in a fresh interpreter (the last step of the recorder, xarray, is what the
    writer no longer imports)."""
    costs: dict[str, list[tuple[str, float]]] = {}
    for svc, steps in IMPORT_CHAINS.items():
        res = subprocess.run(
            [python, "-c", _STEPS, json.dumps(steps)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if res.returncode != 0:
            costs[svc] = [(f"failed: {res.stderr.strip().splitlines()[-1:]}", 0.0)]
            continue
        got = json.loads(res.stdout)
        costs[svc] = [(got[0][0], got[0][1] / MB)] + [
            (got[i][0], (got[i][1] - got[i - 1][1]) / MB) for i in range(1, len(got))
        ]
    return costs


def print_import_costs(costs: dict[str, list[tuple[str, float]]]) -> None:
    print("## RSS each import adds, per service (fresh interpreter per service)\n")
    print("| service | step | + MB |")
    print("|---|---|---|")
    for svc, steps in costs.items():
        for label, mb in steps:
            step, _, note = label.partition("  # ")
            shown = (
                note if step.startswith("exec:") else f"`{step}`" + (f" ({note})" if note else "")
            )
            print(f"| {svc} | {shown} | {mb:.1f} |")
