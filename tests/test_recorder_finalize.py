"""The recorder's ``finalize`` against a real store and real NetCDF files: the reply
counts what the file holds, and a stray batch cannot stop the file being written (a
review of the recorder's finalisation)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from tomato_mqtt.config.url import BrokerURL
from tomato_mqtt.services.recorder import netcdf
from tomato_mqtt.services.recorder.guard import group_points
from tomato_mqtt.services.recorder.service import RecorderService
from tomato_mqtt.services.scheduler.lifecycle import judge_file
from tomato_mqtt.transport.types import Message
from tomato_mqtt.wire.batch import encode_batch


def _batch(svc: RecorderService, comp: str, seq: int, task: int | None) -> Message:
    raw = encode_batch(
        component=comp,
        job=1,
        task=task,
        epoch=1,
        stream="s",
        seq=seq,
        uts=[1000.0 + seq],
        vars={"x": [float(seq)]},
        units={"x": ""},
    )
    return Message(topic=svc.topics.component_data(comp), payload=raw)


def _args(root: Path, roles: dict[str, Any], method: list[Any], npoints: int) -> dict[str, Any]:
    return {
        "job": {"id": 1, "submitted_at": "x", "owner": None, "payload": {"method": method}},
        "roles": roles,
        "expect": [
            {
                "component": "c1",
                "task": 0,
                "npoints": npoints,
                "epoch": 1,
                "stream": "s",
                "last_seq": npoints - 1,
            }
        ],
        "path": str(root / "out" / "results.1.nc"),
        "fallback_dir": str(root / "Jobs" / "1"),
        "wait": 0.3,
    }


async def _recorder(root: Path) -> RecorderService:
    # no broker: the store, the files and the replies only (its publishes are queued)
    svc = RecorderService(BrokerURL.parse("mqtt://127.0.0.1:1"), "t", root / "rec.sqlite")
    await svc.setup()
    return svc


async def test_a_batch_stored_during_the_final_write_is_not_counted_as_in_the_file(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """The wait ended with a point missing; it arrives while the file is written: the
    reply said nothing was missing (counted after the write), the job ended ``c`` and its
    file lacked the point until a late merge (and for good if that merge failed)."""
    svc = await _recorder(tmp_path)
    try:
        svc._on_data(_batch(svc, "c1", 0, 0), "c1")
        loop = asyncio.get_running_loop()
        write = netcdf.write_job_file
        merged = asyncio.Event()
        svc.job_event = lambda _job, kind, _detail: (  # type: ignore[method-assign]
            merged.set() if kind == "late_data_merged" else None
        )

        def slow_write(*a: Any, **k: Any) -> Any:
            stored = threading.Event()

            def store() -> None:
                svc._on_data(_batch(svc, "c1", 1, 0), "c1")
                stored.set()

            loop.call_soon_threadsafe(store)  # on the loop, while the file is written
            assert stored.wait(30)
            return write(*a, **k)

        monkeypatch.setattr(netcdf, "write_job_file", slow_write)
        roles = {"r": {"name": "c1"}}
        res = await svc.fileops.finalize(_args(tmp_path, roles, [{"component_role": "r"}], 2))
        monkeypatch.setattr(netcdf, "write_job_file", write)
        data = res.data
        assert isinstance(data, dict)
        path = Path(str(data["path"]))
        assert group_points(path) == {"r": 1}
        assert data["points"] == {"r": 1}  # what the file holds
        assert data["missing"] == ["task 0 on c1: 1 of 2 points stored"], data
        assert judge_file("c", None, data)[0] == "ce"
        # the point is merged into the file as late data
        await asyncio.wait_for(merged.wait(), 30)
        assert group_points(path) == {"r": 2}
    finally:
        await svc.teardown()


async def test_a_batch_of_a_role_without_a_task_does_not_stop_the_file(tmp_path: Path) -> None:
    """A node may publish its component's data naming any running job: one of the
    pipeline's roles without a task in the payload made the write raise KeyError, the
    job end ``ce`` "could not write the output file: r2", and no retry write it."""
    svc = await _recorder(tmp_path)
    try:
        svc._on_data(_batch(svc, "c1", 0, 0), "c1")
        svc._on_data(_batch(svc, "c2", 0, None), "c2")  # r2: no task in the payload
        roles = {"r1": {"name": "c1"}, "r2": {"name": "c2"}}
        res = await svc.fileops.finalize(_args(tmp_path, roles, [{"component_role": "r1"}], 1))
        data = res.data
        assert isinstance(data, dict)
        assert group_points(Path(str(data["path"]))) == {"r1": 1}  # as tomato: no r2 group
        assert data["points"] == {"r1": 1, "r2": 0}, data
        assert judge_file("c", None, data) == ("c", None)
    finally:
        await svc.teardown()


async def test_a_late_batch_that_is_not_the_job_s_is_kept_not_merged(tmp_path: Path) -> None:
    """A finished task holds the points its runner took: a batch more for it (a stream
    no node told, on an open stack anyone's) was merged, and the task of 1 point held 2
    (an integrator's run); one of a role without a task was counted as merged, its file
    having no group for it (a review). Each is kept in the store as no job's, said, and
    no merge is made."""
    svc = await _recorder(tmp_path)
    events: list[tuple[int, str, Any]] = []
    svc.job_event = lambda job, kind, detail: events.append((job, kind, detail))  # type: ignore[method-assign]
    try:
        svc._on_data(_batch(svc, "c1", 0, 0), "c1")
        roles = {"r": {"name": "c1"}, "idle": {"name": "c2"}}
        res = await svc.fileops.finalize(_args(tmp_path, roles, [{"component_role": "r"}], 1))
        assert isinstance(res.data, dict)
        path = Path(str(res.data["path"]))
        assert group_points(path) == {"r": 1}
        forged = _batch(svc, "c1", 0, 0)
        forged = Message(topic=forged.topic, payload=forged.payload.replace(b'"s"', b'"forged"'))
        for msg, comp in ((forged, "c1"), (_batch(svc, "c2", 0, None), "c2")):
            svc._on_data(msg, comp)
        assert svc.store is not None
        assert svc.store.merge_due(1) == 0 and not svc.files.busy(1)  # no merge to come
        assert svc.store.task_points(1) == {("c1", 0): 1}  # the job's: as it was
        said = [d["message"] for j, k, d in events if (j, k) == (1, "warning")]
        assert len(said) == 2, events
        assert "task 0 of job 1 on c1 has its 1 point(s) stored already (1)" in said[0]
        assert "role idle (c2) had no task in job 1: its batch is kept" in said[1]
        svc._on_data(forged, "c1")  # sent again: stored once, said once
        assert len([e for e in events if e[1] == "warning"]) == 2
        assert group_points(path) == {"r": 1}
    finally:
        await svc.teardown()
