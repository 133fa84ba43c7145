"""tomato 2.2 from PyPI, in its own virtual environment, driven through its CLI.

The environment is bench/.tomato22 (gitignored), created once; nothing of tomato 2.2 is
ever imported into the project's environment. The stack is driven as tomato's own test
suite drives it (tests/conftest.py, tests/utils.py at tag 2.2): ``tomato init -p PORT
-A . -D . -L .``, ``tomato start -p PORT -A .``, ``tomato pipeline load/ready``,
``ketchup submit``, ``ketchup status``, ``tomato stop``. The one exception is the wait
for readiness after ``tomato start``: the test suite polls ``tomato status components
-y`` until every component has capabilities; each such CLI call takes ~0.6 s here, so
the bench makes the same query through the same function (``tomato.tomato.status``) in
one long-lived process in that environment, every 20 ms, so the figure is not rounded
up to the next CLI call.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import subprocess
import sys
import time
import venv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from bench import harness

__all__ = ["REQUIREMENTS", "VENV", "Tomato22", "ensure_venv"]

VENV = Path(__file__).resolve().parent / ".tomato22"
REQUIREMENTS = ["tomato==2.2", "tomato-example-counter"]
BIN = VENV / "bin"

_POLLER = """
import sys, time, zmq
from tomato import tomato as t
port, n, deadline = int(sys.argv[1]), int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
ctx = zmq.Context()
print("armed", flush=True)
while time.monotonic() < deadline:
    r = t.status(port=port, timeout=200, context=ctx, stgrp="components", yaml=True)
    if r.success and len(r.data) == n and all(c.capabilities for c in r.data.values()):
        print(time.time(), flush=True)
        sys.exit(0)
    time.sleep(0.02)
sys.exit(1)
"""


def ensure_venv(log: Any = print) -> Path:
    """Create bench/.tomato22 with tomato 2.2 and its example counter, once."""
    stamp = VENV / ".installed"
    want = " ".join(REQUIREMENTS)
    if stamp.exists() and stamp.read_text() == want and (BIN / "tomato").exists():
        return VENV
    log(f"creating {VENV} with {want} (once)")
    venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    py = str(BIN / "python")
    res = subprocess.run(
        [py, "-m", "pip", "install", "--quiet", *REQUIREMENTS],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        raise RuntimeError(f"pip install {want} failed:\n{res.stdout}\n{res.stderr}")
    stamp.write_text(want)
    return VENV


class Tomato22:
    """One tomato 2.2 stack in ``root`` (appdir = datadir = logdir = root, as its tests)."""

    id = "tomato22"
    title = "tomato 2.2"

    def __init__(self, root: Path, n_components: int) -> None:
        self.root = root
        self.n = n_components
        self.port = harness.free_port()
        self.env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.env.pop("VIRTUAL_ENV", None)
        self.pipelines = [f"pip-counter-{i}" for i in range(1, n_components + 1)]

    def _run(self, tool: str, *args: str, cwd: Path | None = None, timeout: float = 60) -> Any:
        cmd = [str(BIN / tool), *args, "-p", str(self.port)]
        return harness.run(cmd, cwd=cwd or self.root, env=self.env, timeout=timeout)

    # ------------------------------------------------------------------ lifecycle

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._run("tomato", "init", "-A", ".", "-D", ".", "-L", ".").check()
        devices = {
            "devices": [
                {
                    "name": "dev-counter",
                    "driver": "example_counter",
                    "address": "example-addr",
                    "channels": [str(i) for i in range(1, self.n + 1)],
                    "pollrate": 1,
                }
            ],
            "pipelines": [
                {
                    "name": "pip-counter-*",
                    "devices": [{"role": "counter", "device": "dev-counter", "channel": "each"}],
                }
            ],
        }
        (self.root / "devices.yml").write_text(yaml.safe_dump(devices))

    def start(self, timeout: float = 60.0) -> float:
        """``tomato start``; returns seconds from its spawn until every component is ready."""
        poller = harness.spawn(
            [str(BIN / "python"), "-c", _POLLER, str(self.port), str(self.n), str(timeout)],
            env=self.env,
            stdout=subprocess.PIPE,
        )
        try:
            assert poller.stdout is not None
            if poller.stdout.readline().strip() != b"armed":
                raise RuntimeError("tomato 2.2 readiness poller did not start")
            t0 = time.time()
            self._run("tomato", "start", "-A", ".").check()
            line = poller.stdout.readline().strip()
        finally:
            rc = harness.collect(poller, timeout + 10)
        if rc != 0 or not line:
            raise RuntimeError(f"tomato 2.2 components not ready within {timeout} s")
        return float(line) - t0

    def stop(self) -> list[str]:
        """``tomato stop``, then every process of the stack must exit (else killed by PID)."""
        self._run("tomato", "stop", timeout=30)
        return harness.stop_descendants(5)

    @contextlib.contextmanager
    def message_counter(self) -> Iterator[None]:
        """tomato 2.2 has no broker: nothing to count."""
        yield None

    # ----------------------------------------------------------------------- calls

    def status_call(self) -> harness.Call:
        return self._run("tomato", "status").check()

    def job_status_call(self, jobid: int) -> harness.Call:
        return self._run("ketchup", "status", str(jobid)).check()

    def load_ready(self, pipeline: str, sample: str, again: bool = False) -> None:
        """Load ``sample`` and mark ready; ``again``: the load may have gone through."""
        load = self._run("tomato", "pipeline", "load", pipeline, sample)
        if not again:
            load.check()
        self._run("tomato", "pipeline", "ready", pipeline).check()

    def submit(self, payload: Path, cwd: Path) -> tuple[harness.Call, int]:
        call = self._run("ketchup", "submit", str(payload), "-y", cwd=cwd).check()
        rep = yaml.safe_load(call.out)
        if not rep.get("success"):
            raise RuntimeError(f"ketchup submit failed: {rep.get('msg')}")
        return call, int(rep["data"]["id"])

    def jobs(self) -> dict[int, dict[str, Any]]:
        call = self._run("ketchup", "status", "-y").check()
        rep = yaml.safe_load(call.out)
        if not rep.get("success"):
            return {}
        return {int(j["id"]): j for j in rep["data"]}

    @staticmethod
    def running_since(job: dict[str, Any]) -> float | None:
        """Epoch seconds at which the job entered ``r`` (``connected_at``, set with it)."""
        ts = job.get("connected_at")
        return None if ts is None else datetime.datetime.fromisoformat(ts).timestamp()

    @staticmethod
    def respath(job: dict[str, Any], cwd: Path) -> Path:
        return Path(job.get("respath") or cwd / f"results.{job['id']}.nc")

    @staticmethod
    def result_path(jobid: int, cwd: Path) -> Path:
        return cwd / f"results.{jobid}.nc"


if __name__ == "__main__":  # python -m bench.tomato22: create the environment only
    ensure_venv()
    sys.exit(0)
