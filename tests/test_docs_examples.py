"""The examples in docs/topics.md and docs/output.md run against a live stack, and the
event table of docs/topics.md is the one generated from wire/events.py."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import yaml

from tests.conftest import RunningBroker
from tests.inproc import CONFIG, inproc_stack
from tomato_mqtt.wire.events import events_markdown

ROOT = Path(__file__).resolve().parents[1]
TOPICS = ROOT / "docs" / "topics.md"


def block(doc: Path, marker: str) -> str:
    m = re.search(rf"<!-- {marker} -->\n```python\n(.*?)\n```", doc.read_text(), flags=re.S)
    assert m, f"{doc.name} lost its {marker} example"
    return m.group(1)


async def run(script: str, tmp: Path, *args: str, env: dict[str, str] | None = None) -> str:
    path = tmp / f"ex-{abs(hash(script))}.py"
    path.write_text(script)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(path),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:  # a timeout, a failed assertion beside it or a cancel: no script left running
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode()
    assert proc.returncode == 0, text
    return text


def test_event_table_is_generated_from_the_models() -> None:
    text = TOPICS.read_text()
    begin, end = "<!-- events:begin -->\n", "<!-- events:end -->"
    assert text[text.index(begin) + len(begin) : text.index(end)] == events_markdown(), (
        "docs/topics.md's event table is stale: paste tomato_mqtt.wire.events.events_markdown()"
    )


async def test_topics_paho_examples_and_output_example_run(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    env = {"TOMATO_HOST": "127.0.0.1", "TOMATO_PORT": str(broker.port)}
    env |= {"TOMATO_INSTANCE": instance, "TOMATO_BATCHES": "3"}
    payload = yaml.safe_load((CONFIG / "counter_1_0.1.yml").read_text())
    payload["method"][0]["time"] = 4.0
    async with inproc_stack(broker.port, tmp_path, instance) as st:
        await st.call("pipeline_load", {"pipeline": "pip-counter-1", "sampleid": "counter_1_0.1"})
        await st.call("pipeline_ready", {"pipeline": "pip-counter-1"})
        sub = asyncio.ensure_future(run(block(TOPICS, "paho-subscriber"), tmp_path, env=env))
        try:
            work = st.settings.datadir / "work"
            work.mkdir(parents=True)
            job = await st.call("job_submit", {"payload": payload, "submit_dir": str(work)})
            text = await sub  # ends after 3 batches
        finally:
            sub.cancel()  # the script killed (run's finally) if it is still going
        lines = [ln for ln in text.splitlines() if ln.startswith("example_counter:(")]
        assert lines and all(f" {job.id} " in ln and "'val'" in ln for ln in lines), text

        reply = await run(block(TOPICS, "paho-request"), tmp_path, env=env)
        assert reply.startswith("True 4 pipeline(s)"), reply
        # running: not ready, with its job (as tomato: a launch takes `ready`)
        assert f"pip-counter-1 counter_1_0.1 False {job.id}" in reply, reply

        done = await st.wait_job(job.id, {"c", "ce", "cd"}, timeout=60)
        assert done.status == "c", done.reason
    out = await run(
        block(ROOT / "docs" / "output.md", "output-example"), tmp_path, str(done.respath)
    )
    assert f"job {job.id} c roles: ['counter']" in out, out
    m = re.search(r"^counter task 0 (\d+) points \{.*'val'", out, flags=re.M)
    assert m and 20 <= int(m.group(1)) <= 41, out  # a loaded machine skips deadlines
