"""The bulk data path and array-valued variables, end to end in-process (issues 15, 12).

A simulated DAQ channel at 10 kHz and a spectrum analyser channel (an extra dimension
``freq`` with its own coordinate and units) run one job on the real scheduler, node and
recorder over the embedded broker; the file holds every point, the array with its
dimensions, the driver's own unit spelling, ``role`` in ``tomato_Component``, and no
group for the role that had no task.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import RunningBroker
from tests.inproc import inproc_stack
from tests.ncread import load_tree
from tests.tomato22 import read_with_tomato

PAYLOAD = {
    "version": "2.2",
    "sample": {"identifier": "daq-sample"},
    "user": {"identifier": "bulk-test"},
    "method": [
        {
            "component_role": "daq",
            "technique_name": "acquire",
            "max_duration": 1.0,
            "sampling_interval": 0.0001,
            "task_params": {"amplitude": 2.0},
        },
        {
            "component_role": "analyser",
            "technique_name": "spectrum",
            "max_duration": 1.0,
            "sampling_interval": 0.05,
            "task_params": {"bins": 32},
        },
    ],
    "settings": {"unlock_when_done": True},
}


@pytest.mark.timeout(90)
async def test_bulk_and_array_data_reach_the_file(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    async with inproc_stack(
        broker.port, tmp_path, instance, devices="devices_daq.yml", components=3
    ) as st:
        await st.call("pipeline_load", {"pipeline": "pip-daq", "sample": "daq-sample"})
        await st.call("pipeline_ready", {"pipeline": "pip-daq"})
        job = await st.call("job_submit", {"payload": PAYLOAD, "submit_dir": str(tmp_path)})
        done = await st.wait_job(job.id, {"c", "ce", "cd"}, timeout=60)
        assert done.status == "c", done.reason
        assert done.respath is not None
        dt = load_tree(done.respath)
        try:
            assert set(dt.children) == {"daq", "analyser"}  # "spare" had no task
            daq = dt["daq"].to_dataset()
            assert daq.sizes["uts"] == 10_000  # every sample of 1 s at 10 kHz
            assert daq["voltage"].dtype == np.float64
            assert daq["voltage"].attrs["units"] == "V"
            assert float(np.abs(daq["voltage"]).max()) <= 2.0 + 0.01  # the task's amplitude
            assert np.all(np.diff(daq["uts"].values) > 0)
            assert daq["uts"].attrs["units"] == "second"  # our axis: pint's canonical name
            comp = json.loads(daq.attrs["tomato_Component"])
            assert comp["role"] == "daq" and comp["driver"] == "daq_sim"
            ana = dt["analyser"].to_dataset()
            assert ana.sizes["uts"] == 20
            assert ana["power"].dims == ("uts", "freq")
            assert ana["power"].shape == (20, 32)
            assert ana["power"].attrs["units"] == "dBm"
            assert ana["freq"].attrs["units"] == "MHz"  # the driver's own spelling
            assert ana["peak_freq"].dims == ("uts",)
            peak = ana["freq"].values[ana["power"].values.argmax(axis=1)]
            assert np.all(np.abs(peak - ana["peak_freq"].values) < 100 / 31)
        finally:
            dt.close()
    # tomato 2.2's own models read the file (issue 12)
    got = read_with_tomato(done.respath)
    assert set(got["components"]) == {"daq", "analyser"}
    assert got["components"]["analyser"]["role"] == "analyser"


def test_a_batch_goes_as_pieces_in_order_lists_and_arrays_alike() -> None:
    """A batch over ``[node] batch_max_bytes`` goes as several (a broker drops a larger
    message without a word): consecutive pieces of one size, spectra (2-d arrays) cut
    along their points, none empty."""
    from tomato_mqtt.services.node.columns import Columns, pieces

    cols = Columns(
        uts=np.arange(10.0),
        vars={"power": np.arange(30.0).reshape(10, 3), "n": list(range(10))},
        units={"power": "dBm"},
        dims={"power": ["freq"]},
        coords={"freq": [1.0, 2.0, 3.0]},
        job=4,
        task=0,
    )
    parts = pieces(cols, 3)
    assert [len(p.uts) for p in parts] == [3, 3, 4]
    assert np.concatenate([p.uts for p in parts]).tolist() == cols.uts.tolist()
    assert np.concatenate([p.vars["power"] for p in parts]).tolist() == cols.vars["power"].tolist()
    assert [x for p in parts for x in p.vars["n"]] == cols.vars["n"]
    assert all((p.job, p.task, p.dims, p.coords) == (4, 0, cols.dims, cols.coords) for p in parts)
    assert [len(p.uts) for p in pieces(cols, 50)] == [1] * 10  # never an empty piece
