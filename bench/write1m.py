"""Time the recorder's NetCDF writer on one job of N points (``python -m bench.write1m N``).

The points come as a node sends them: 1,000-point data batches (JSON) of the example
counter's variables. Prints the seconds from the batches in memory to the file renamed
into place (parsing, building the DataTree, netCDF4 write).
"""

from __future__ import annotations

import json
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

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    data = batches(n)
    with tempfile.TemporaryDirectory(prefix="bench-write-") as d:
        path = Path(d) / "results.1.nc"
        t0 = time.perf_counter()
        write_job_file(path, [RoleInput("counter", "{}", data)], {"tomato_version": "bench"})
        dt = time.perf_counter() - t0
    print(f"{n} points written in {dt:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
