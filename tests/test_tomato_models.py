"""tomato 2.2's own models read our result files (issue 12).

``tomato.models.Job`` / ``Component.model_validate_json`` on the file's ``tomato_Job``
and each group's ``tomato_Component``, run in tomato 2.2's own venv
(``tests/tomato22.py``): the way a lab's scripts written for tomato read results.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import RunningBroker
from tests.inproc import inproc_stack
from tests.ncread import load_tree
from tests.tomato22 import read_with_tomato, tomato22_python

CONFIG = Path(__file__).resolve().parents[1] / "config"


@pytest.mark.timeout(120)
async def test_tomato_models_read_our_file(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    tomato22_python()  # skip early (before a stack) when the venv is missing
    async with inproc_stack(broker.port, tmp_path, instance) as st:
        await st.call("pipeline_load", {"pipeline": "pip-counter-1", "sample": "counter_1_0.1"})
        await st.call("pipeline_ready", {"pipeline": "pip-counter-1"})
        payload = yaml.safe_load((CONFIG / "counter_v2.2.yml").read_text())
        job = await st.call("job_submit", {"payload": payload, "submit_dir": str(tmp_path)})
        done = await st.wait_job(job.id, {"c", "ce", "cd"})
        assert done.status == "c", done.reason
        (reply,) = await st.call("job_status", {"jobids": [job.id]})
    # dtypes as tomato 2.2 writes the counter's defaults (its tests/common/results.ref.nc)
    dt = load_tree(done.respath)
    try:
        ds = dt["counter"].to_dataset()
        dtypes = {k: ds[k].dtype.kind + str(ds[k].dtype.itemsize) for k in ("val", "min", "max")}
        assert dtypes == {"val": "i8", "min": "i8", "max": "i8"}
        assert ds["param"].dtype == "float64"
    finally:
        dt.close()
    got = read_with_tomato(done.respath)
    j = got["job"]
    assert j["id"] == job.id and j["status"] == "c"
    assert j["connected_at"] and j["jobpath"]  # filled: tomato's Job has them
    # ... and the scheduler's replies say the same (null until the job launches)
    assert reply.jobpath == j["jobpath"], (reply.jobpath, j["jobpath"])
    assert j["payload"]["method"][0]["technique_name"] == "count"
    comp = got["components"]["counter"]
    assert comp["role"] == "counter"
    assert comp["driver"] == "example_counter" and comp["channel"] == "1"
    assert set(comp["capabilities"]) == {"count", "random"}
