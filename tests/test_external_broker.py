"""The whole stack on an external broker, with no code changes: settings only. Two
implementations: Mosquitto (C) and Aedes (Node.js, tests/aedes/)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import xarray as xr

from tests.conftest import external_broker, free_port
from tests.counts import taken
from tests.stack import make_stack, started

pytestmark = pytest.mark.timeout(180)


@pytest.mark.parametrize("kind", ["mosquitto", "aedes"])
def test_job_runs_end_to_end_on_an_external_broker(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    port = free_port()
    binary = request.getfixturevalue("mosquitto_path") if kind == "mosquitto" else ""
    mosq = external_broker(kind, port, tmp_path, mosquitto=binary)
    asyncio.run(mosq.start())
    try:
        st = make_stack(tmp_path / "stack")
        cfg = st.appdir / "settings.toml"
        cfg.write_text(cfg.read_text().replace("[broker]\n", "[broker]\nembedded = false\n"))
        st.port = port  # tomato start -p: the external broker's port
        with started(st):
            # nothing of ours listens there but Mosquitto: no embedded broker was started
            assert not list(st.logdir.glob("broker*.log"))
            st.load_ready("pip-counter-1", "counter_1_0.1")
            jobid = st.submit("counter_1_0.1.yml")
            job = st.wait_job(jobid, {"c", "ce", "cd"}, timeout=60)
            assert job["status"] == "c", (job, st.logs())
            with xr.open_datatree(job["respath"]) as tree:
                n, missed = taken(job)
                assert tree["counter"]["uts"].size == n and n + missed == 10
            # `tomato start` twice against a running stack on the same broker is refused
            res = st.run("tomato", "start", "-D", str(st.datadir), "-L", str(st.logdir))
            assert res.returncode == 1 and "already" in (res.stdout + res.stderr), res
    finally:
        asyncio.run(mosq.stop())
