"""docs/cli.md's ``ketchup status`` example is what ``ketchup status`` prints.

The queue of the example is built for real (an in-process stack; the CLI is a real
``ketchup`` process): one job done, one running, one that can never match, two waiting
for a sample. The output must equal the example's, but for what a run cannot repeat:
timestamps and the output folder.
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from typing import Any

from tests.conftest import RunningBroker
from tests.inproc import InProc, inproc_stack

ROOT = Path(__file__).resolve().parents[1]
CLI_MD = ROOT / "docs" / "cli.md"
KETCHUP = Path(sys.executable).parent / "ketchup"
STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def _payload(sample: str, technique: str, duration: float, name: str | None = None) -> Any:
    task = {
        "component_tag": "counter",
        "technique_name": technique,
        "max_duration": duration,
        "sampling_interval": 0.1,
    }
    pl: dict[str, Any] = {"version": "1.0", "sample": {"name": sample}, "method": [task]}
    if name:
        pl["tomato"] = {"jobname": name}
    return pl


def doc_example() -> str:
    """The ``$ ketchup status`` console block of docs/cli.md (both commands)."""
    text = CLI_MD.read_text()
    m = re.search(r"```\n(\$ ketchup status\n.*?)```", text, flags=re.S)
    assert m, "docs/cli.md lost its ketchup status example"
    return m.group(1)


def normal(text: str, outdir: str) -> str:
    text = STAMP.sub("YYYY-MM-DD hh:mm:ss", text)
    return text.replace(outdir, "/home/me/runs")


async def ketchup(st: InProc, port: int, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        KETCHUP,
        *args,
        "-p",
        str(port),
        "-A",
        str(st.settings.appdir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode()
    return out.decode()


async def test_ketchup_status_prints_the_documented_summary(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    async with inproc_stack(broker.port, tmp_path, instance) as st:
        await st.call("pipeline_load", {"pipeline": "pip-counter-1", "sampleid": "s1"})
        await st.call("pipeline_ready", {"pipeline": "pip-counter-1"})

        async def submit(pl: Any, jobname: str | None = None) -> int:
            args = {"payload": pl, "submit_dir": str(runs), "jobname": jobname}
            return int((await st.call("job_submit", args)).id)

        first = await submit(_payload("s1", "count", 0.2))
        assert (await st.wait_job(first, {"c", "ce", "cd"}, timeout=30)).status == "c"
        await st.call("pipeline_ready", {"pipeline": "pip-counter-1"})
        alpha = await submit(_payload("s1", "count", 120.0), "alpha")
        await st.wait_job(alpha, {"r"}, timeout=30)
        never = await submit(_payload("s1", "unknown", 1.0))
        waiting = [await submit(_payload("s2", "count", 1.0)) for _ in range(2)]
        for j in waiting:
            await st.wait_job(j, {"qw"}, timeout=30)
        await st.wait_job(never, {"q"}, timeout=30)
        assert [first, alpha, never, *waiting] == list(range(first, first + 5))
        try:
            summary = await ketchup(st, broker.port, "status")
            detail = await ketchup(st, broker.port, "status", str(alpha))
        finally:
            await st.call("job_cancel", {"jobids": [alpha, never, *waiting]})
    got = normal(f"$ ketchup status\n{summary}$ ketchup status {alpha}\n{detail}", str(runs))
    want = normal(doc_example(), str(runs))
    assert got == want, f"docs/cli.md's example differs from a real run:\n{got}"
