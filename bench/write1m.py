"""Time the recorder's NetCDF writer on one job of N points (``python -m bench.write1m N``).

The points come as a node sends them: 1,000-point data batches (JSON) of the example
counter's variables, stored first in a recorder's store (SQLite), as the recorder
stores them. Prints the seconds from the store to the file renamed into place (reading,
planning, parsing, netCDF4 write), and how much the process's peak RSS grew meanwhile.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path


def batches(n: int, size: int = 1000) -> list[bytes]:
    out, t0 = [], 1.7e9
    for seq, start in enumerate(range(0, n, size)):
        k = min(size, n - start)
        doc = {
            "schema": 1,
            "job": 1,
            "task": 0,
            "epoch": 1,
            "seq": seq,
            "uts": [t0 + (start + i) * 1e-3 for i in range(k)],
            "vars": {
                "val": list(range(start, start + k)),
                "max": [n] * k,
                "min": [0] * k,
                "param": [1.0] * k,
                "choice": ["green"] * k,
            },
            "units": {"val": "", "param": ""},
        }
        out.append(json.dumps(doc).encode())
    return out


def main() -> int:
    from tomato_mqtt.services.recorder.netcdf import RoleInput, write_job_file
    from tomato_mqtt.services.recorder.store import BatchStore, Raws

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with tempfile.TemporaryDirectory(prefix="bench-write-") as d:
        store = BatchStore(Path(d) / "store.sqlite")
        for at in range(0, n, 100_000):  # (not all in memory: the peak is the write's)
            for seq, raw in enumerate(batches(min(100_000, n - at)), start=at // 1000):
                store.add("c", "e1", seq, epoch=1, job=1, task=0, npoints=1000, raw=raw)
        rows = [r for _, r in store.job_rows(1)]
        store.close()
        write_job_file(Path(d) / "warm.nc", [RoleInput("r", "{}", [])], {"x": "y"})
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        path = Path(d) / "results.1.nc"
        t0 = time.perf_counter()
        role = RoleInput("counter", "{}", Raws(Path(d) / "store.sqlite", rows, 1))
        write_job_file(path, [role], {"tomato_version": "bench"})
        dt = time.perf_counter() - t0
        grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024
    print(f"{n} points (peak RSS +{grew} MB) written in {dt:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
