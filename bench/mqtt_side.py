"""tomato-mqtt, driven through its CLI (``tomato``, ``ketchup``) from the project's venv.

Same shape as :class:`bench.tomato22.Tomato22`: the workloads in ``bench.__main__`` do
not know which system they drive. ``tomato start`` returns once every component is
registered, so its own wall time is the start → ready figure.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from bench import harness

__all__ = ["MessageCounter", "TomatoMqtt"]

BIN = Path(sys.executable).parent


class MessageCounter:
    """Counts every message under a topic filter, with a paho client in a thread here."""

    def __init__(self, port: int, filter_: str) -> None:
        import paho.mqtt.client as paho

        self.count = 0
        self.t0 = self.t1 = 0.0
        self._sub = threading.Event()
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-count-{os.getpid()}")
        c.on_message = self._on_message
        c.on_subscribe = lambda *a: self._sub.set()
        c.connect("127.0.0.1", port)
        c.loop_start()
        c.subscribe(filter_, 0)
        if not self._sub.wait(10):
            raise RuntimeError(f"could not subscribe to {filter_} on 127.0.0.1:{port}")
        self._c = c

    def _on_message(self, client: object, ud: object, msg: object) -> None:
        if not getattr(msg, "retain", False):
            self.count += 1

    def __enter__(self) -> MessageCounter:
        self.count = 0
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.t1 = time.monotonic()
        self._c.disconnect()
        self._c.loop_stop()

    def rate(self) -> float:
        return self.count / max(1e-9, self.t1 - self.t0)


class TomatoMqtt:
    """One tomato-mqtt stack in ``root`` (embedded broker on 127.0.0.1, a free port)."""

    id = "mqtt"
    title = "tomato-mqtt"

    def __init__(self, root: Path, n_components: int) -> None:
        self.root = root
        self.n = n_components
        self.port = harness.free_port()
        self.env = dict(os.environ)
        self.pipelines = [f"pip-counter-{i}" for i in range(1, n_components + 1)]
        self.instance = f"bench{self.port}"

    @property
    def dirs(self) -> list[str]:
        return ["-A", str(self.root), "-D", str(self.root), "-L", str(self.root)]

    def _run(self, tool: str, *args: str, cwd: Path | None = None, timeout: float = 60) -> Any:
        cmd = [str(BIN / tool), *args, "-p", str(self.port), "-A", str(self.root)]
        return harness.run(cmd, cwd=cwd or self.root, env=self.env, timeout=timeout)

    def _json(self, tool: str, *args: str, cwd: Path | None = None) -> Any:
        call = self._run(tool, *args, "--json", cwd=cwd)
        try:
            return call, json.loads(call.out)
        except ValueError:
            raise RuntimeError(
                f"{tool} {' '.join(args)}: not JSON: {call.out!r} {call.err!r}"
            ) from None

    # ------------------------------------------------------------------ lifecycle

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        harness.run(
            [str(BIN / "tomato"), "init", *self.dirs, "-p", str(self.port)], env=self.env
        ).check()
        # The bench's own settings: a unique topic root, no WebSocket listener (one port
        # fewer to find free), everything else at its default.
        (self.root / "settings.toml").write_text(
            f'datadir = "{self.root}"\nlogdir = "{self.root}"\n'
            f'[mqtt]\nport = {self.port}\ninstance = "{self.instance}"\n'
            "[broker]\nws_port = 0\n"
        )
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
        """``tomato start`` returns when all components are registered: its wall time."""
        call = harness.run(
            [str(BIN / "tomato"), "start", *self.dirs, "-p", str(self.port)],
            env=self.env,
            timeout=timeout,
        ).check()
        return call.wall

    def stop(self) -> list[str]:
        """``tomato stop``, then every process of the stack must exit (else killed by PID)."""
        harness.run(
            [str(BIN / "tomato"), "stop", *self.dirs, "-p", str(self.port), "--timeout", "15"],
            env=self.env,
            timeout=30,
        )
        return harness.stop_descendants(5)

    @contextlib.contextmanager
    def message_counter(self) -> Iterator[MessageCounter]:
        """Every non-retained message under this instance's topic root, while in the block."""
        with MessageCounter(self.port, f"tomato/v2/{self.instance}/#") as m:
            yield m

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
        call, rep = self._json("ketchup", "submit", str(payload), cwd=cwd)
        if not rep.get("success"):
            raise RuntimeError(f"ketchup submit failed: {rep.get('msg')}")
        return call, int(rep["data"]["id"])

    def jobs(self) -> dict[int, dict[str, Any]]:
        _, rep = self._json("ketchup", "status")
        if not rep.get("success"):
            return {}
        return {int(j["id"]): j for j in rep["data"]}

    @staticmethod
    def running_since(job: dict[str, Any]) -> float | None:
        """Epoch seconds at which the job entered ``r`` (``launched_at``, set with it)."""
        ts = job.get("launched_at")
        return None if ts is None else datetime.datetime.fromisoformat(ts).timestamp()

    @staticmethod
    def respath(job: dict[str, Any], cwd: Path) -> Path:
        return Path(job.get("respath") or cwd / f"results.{job['id']}.nc")

    @staticmethod
    def result_path(jobid: int, cwd: Path) -> Path:
        return cwd / f"results.{jobid}.nc"
