"""The three CLIs, run in-process against an in-process stack, for the upstream ports.

Upstream tomato's tests drive its CLI and Python API against a fresh daemon per test.
Here one :func:`tests.inproc.inproc_stack` (scheduler, recorder, node as asyncio tasks
on the test's broker) serves a whole upstream module, and the real ``tomato``,
``ketchup`` and ``passata`` typer apps are invoked in a worker thread (they are
synchronous MQTT clients), one at a time (the runner swaps ``sys.stdout``). A call costs
milliseconds instead of a process start; what is tested is the same code a user runs.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from tomato_mqtt.cli import ketchup, passata, tomato

__all__ = ["Cli", "Out", "payload"]

APPS = {"tomato": tomato.app, "ketchup": ketchup.app, "passata": passata.app}
UPSTREAM = Path(__file__).resolve().parent / "payloads"
CONFIG = Path(__file__).resolve().parents[2] / "config"


@dataclass
class Out:
    code: int
    stdout: str
    stderr: str

    @property
    def reply(self) -> dict[str, Any]:
        """The Reply printed by ``--json`` (every call of :meth:`Cli.json`)."""
        doc = json.loads(self.stdout)
        assert set(doc) == {"success", "msg", "data"}, doc
        return doc  # type: ignore[no-any-return]


class Cli:
    """``await cli("ketchup", "status", "1")``: one CLI call against the stack."""

    def __init__(self, appdir: Path, port: int) -> None:
        self.extra = ["-A", str(appdir), "-p", str(port)]
        self._lock = asyncio.Lock()

    async def __call__(self, tool: str, *args: str) -> Out:
        def invoke() -> Out:
            res = CliRunner().invoke(APPS[tool], [*args, *self.extra])
            if res.exception is not None and not isinstance(res.exception, SystemExit):
                raise res.exception
            return Out(res.exit_code, res.stdout, res.stderr)

        async with self._lock:
            return await asyncio.to_thread(invoke)

    async def json(self, tool: str, *args: str) -> dict[str, Any]:
        return (await self(tool, *args, "--json")).reply

    async def job(self, jobid: int) -> dict[str, Any]:
        r = await self.json("ketchup", "status", str(jobid))
        assert r["success"], r
        return r["data"][0]  # type: ignore[no-any-return]

    async def wait_job(self, jobid: int, statuses: set[str], timeout: float = 30) -> dict[str, Any]:
        """Poll ``ketchup status`` as upstream's ``wait_until_ketchup_status`` does."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        job: dict[str, Any] = {}
        while loop.time() < deadline:
            job = await self.job(jobid)
            if job["status"] in statuses:
                return job
            await asyncio.sleep(0.1)
        raise AssertionError(f"job {jobid} not in {statuses} after {timeout} s: {job}")

    async def run_case(self, case: Path, pipeline: str, jobname: str | None = None) -> int:
        """Upstream's ``run_casenames``: load the payload's sample, ready, submit."""
        sample = sample_of(case)
        for args in (("pipeline", "load", pipeline, sample), ("pipeline", "ready", pipeline)):
            r = await self.json("tomato", *args)
            assert r["success"], r
        extra = ("--jobname", jobname) if jobname else ()
        r = await self.json("ketchup", "submit", str(case), *extra)
        assert r["success"], r
        return int(r["data"]["id"])


def sample_of(case: Path) -> str:
    doc = yaml.safe_load(case.read_text())
    s = doc["sample"]
    return str(s.get("name") or s.get("identifier"))


def payload(name: str) -> Path:
    """A payload of the upstream scenarios: ours in config/, else tests/upstream/payloads."""
    for folder in (CONFIG, UPSTREAM):
        p = folder / f"{name}.yml"
        if p.exists():
            return p
    raise FileNotFoundError(name)
