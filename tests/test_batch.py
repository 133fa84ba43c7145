"""The hot path's batch encoder and header reader (wire/batch.py), the node's columns
(services/node/columns.py) and the bulk runner loop (driver/bulk.py): pure, no broker."""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from tomato_mqtt.driver import Attr, Block, ComponentRunner, ModelDevice, ModelInterface, TaskSpec
from tomato_mqtt.driver.block import BlockError
from tomato_mqtt.driver.points import Point, TaskEnd
from tomato_mqtt.services.node.columns import to_columns
from tomato_mqtt.wire.batch import encode_batch, read_header
from tomato_mqtt.wire.messages import DataBatch, DecodeError, decode


def _encode(**kw: Any) -> bytes:
    base: dict[str, Any] = dict(
        component="c1", job=3, task=1, epoch=7, stream="s", seq=4, units={"v": "V"}
    )
    return encode_batch(**{**base, **kw})


def test_numpy_columns_encode_to_a_valid_data_batch() -> None:
    uts = np.arange(5, dtype=float) + 1e9
    v = np.array([0.5, math.nan, 1.5, 2.0, 3.0])
    power = np.arange(15, dtype=float).reshape(5, 3)
    raw = _encode(
        uts=uts,
        vars={"v": v, "n": np.arange(5), "power": power},
        dims={"power": ["freq"]},
        coords={"freq": np.array([1.0, 2.0, 3.0])},
    )
    b = decode(DataBatch, raw)  # the contract's own model accepts it
    assert b.n == 5 and b.uts[0] == 1e9
    assert b.vars["v"][1] is None  # NaN travels as null (JSON has no NaN)
    assert b.vars["power"][4] == [12.0, 13.0, 14.0]
    assert b.dims == {"power": ["freq"]} and b.coords == {"freq": [1.0, 2.0, 3.0]}
    h = read_header(raw)
    assert (h.component, h.job, h.task, h.epoch, h.seq, h.n) == ("c1", 3, 1, 7, 4, 5)


def test_a_batch_in_another_key_order_is_read_whole_and_checked() -> None:
    model = DataBatch(component="c", epoch=1, seq=0, uts=[1.0, 2.0], vars={"x": [1, 2]})
    raw = model.model_dump_json().encode()
    assert read_header(raw).n == 2
    with pytest.raises(DecodeError, match=r"vars.x: one value per uts \(2\)"):
        read_header(b'{"component":"c","epoch":1,"seq":0,"uts":[1,2],"vars":{"x":[1]}}')
    with pytest.raises(DecodeError, match="not valid JSON"):
        read_header(b"{nope")
    with pytest.raises(DecodeError, match="seq"):
        read_header(_encode(uts=[1.0], vars={"v": [1.0]}).replace(b'"seq":4', b'"seq":"x"'))


def test_a_batch_whose_count_is_not_its_points_is_refused() -> None:
    """``n`` says how many points a batch holds: a forged one saying 5 of 1 ``uts`` was
    stored as 5 points and grew a finished job's count and file (an integrator's run)."""
    good = _encode(uts=[1.0, 2.0, 3.0], vars={"v": [1.0, 2.0, 3.0]})
    assert read_header(good).n == 3
    for n in (b'"n":5', b'"n":0', b'"n":2'):
        with pytest.raises(DecodeError, match=r"n: \d+ point\(s\), but uts has 3$"):
            read_header(good.replace(b'"n":3', n))
    empty = _encode(uts=[], vars={})
    assert read_header(empty).n == 0
    with pytest.raises(DecodeError, match="uts has 0$"):
        read_header(empty.replace(b'"n":0', b'"n":1'))
    # JSON the quick count cannot read (a third party's spaces) is read whole, as before
    import json

    spaced = json.dumps(json.loads(good), separators=(",", ": ")).encode()
    assert read_header(spaced).n == 3
    assert read_header(empty.replace(b'"uts":[]', b'"uts":[ ]')).n == 0
    with pytest.raises(DecodeError, match="uts has 3$"):
        read_header(spaced.replace(b'"n": 3', b'"n": 4'))


def test_blocks_of_one_task_join_into_one_batch_points_stay_in_order() -> None:
    t = TaskSpec(technique_name="a", max_duration=1, sampling_interval=0.1, job=1, index=0)
    b1 = Block(uts=np.array([1.0, 2.0]), data={"v": np.array([1.0, 2.0])}, task=t)
    b2 = Block(uts=np.array([3.0]), data={"v": np.array([3.0])}, task=t)
    other = Block(uts=[4.0], data={"w": [4]}, task=t)
    p = Point(5.0, {"x": 1}, t)
    cols = to_columns([b1, b2, other, p], {})
    assert [list(c.uts) for c in cols] == [[1.0, 2.0, 3.0], [4.0], [5.0]]
    assert list(cols[0].vars["v"]) == [1.0, 2.0, 3.0]
    assert cols[1].vars == {"w": [4]} and cols[2].vars == {"x": [1]}


def test_block_check_names_what_does_not_fit() -> None:
    with pytest.raises(BlockError, match="2 values for 3 timestamps"):
        Block(uts=[1, 2, 3], data={"v": [1, 2]}).check()
    with pytest.raises(BlockError, match="dimension 'f' has no coordinate"):
        Block(uts=[1], data={"s": [[1, 2]]}, dims={"s": ["f"]}).check()
    with pytest.raises(
        BlockError, match=r"shape \(2,\), but its dims \('f',\) have lengths \(3,\)"
    ):
        Block(uts=[1], data={"s": [[1, 2]]}, dims={"s": ["f"]}, coords={"f": [1, 2, 3]}).check()


class _Bulk(ModelDevice):
    block_interval = 0.02

    def __init__(
        self, driver: ModelInterface, key: tuple[str, str], bad: bool = False, bad_at: int = 1
    ) -> None:
        super().__init__(driver, key)
        self.taken = 0
        self.bad = bad
        self.bad_at = bad_at  # the call whose block is bad
        self.calls = 0

    def attrs(self) -> dict[str, Attr]:
        return {}

    def capabilities(self) -> set[str]:
        return {"acq"}

    def do_measure(self) -> dict[str, Any]:
        return {"v": 0.0}

    def do_task_block(self, task: TaskSpec, t_start: float, t_now: float) -> Block | None:
        self.calls += 1
        due = min(task.npoints, int((t_now - t_start) / task.sampling_interval))
        k = np.arange(self.taken + 1, due + 1)
        self.taken = due
        bad = self.bad and self.calls >= self.bad_at
        v = k.astype(float) if not bad else k[:-1].astype(float)
        return Block(uts=t_start + k * task.sampling_interval, data={"v": v})


class _Drv(ModelInterface):
    def DeviceFactory(self, key: tuple[str, str], **kwargs: Any) -> ModelDevice:
        return _Bulk(self, key, **kwargs)


def _run(device: ModelDevice, task: TaskSpec) -> tuple[TaskEnd, list[Any]]:
    ended: list[TaskEnd] = []
    done = threading.Event()

    def on_end(e: TaskEnd) -> None:
        ended.append(e)
        done.set()

    r = ComponentRunner(device, on_task_end=on_end, on_error=lambda m: None)
    try:
        r.start_task(task)
        assert done.wait(10)
        items, _ = r.drain()
    finally:
        r.close()
    return ended[0], items


def test_a_bulk_task_takes_every_point_of_its_duration() -> None:
    task = TaskSpec(technique_name="acq", max_duration=0.3, sampling_interval=0.0001)
    end, items = _run(_Drv().DeviceFactory(("a", "1")), task)
    assert end.reason == "done", end.message
    assert end.npoints == sum(len(b) for b in items) == 3000
    assert all(isinstance(b, Block) and b.task is task for b in items)


def test_a_bad_block_ends_the_task_in_error_saying_why() -> None:
    task = TaskSpec(technique_name="acq", max_duration=0.2, sampling_interval=0.001)
    end, _ = _run(_Drv().DeviceFactory(("a", "1"), bad=True), task)
    assert end.reason == "error"
    assert end.message is not None and "bad block" in end.message and "timestamps" in end.message
    # named by the call that made it (the 4th was said "at call 5": a driver author's tour)
    task = TaskSpec(technique_name="acq", max_duration=2.0, sampling_interval=0.001)
    end, items = _run(_Drv().DeviceFactory(("a", "1"), bad=True, bad_at=4), task)
    assert end.message is not None and " at call 4: BlockError" in end.message, end.message
    assert len(items) == 3, items  # the three good blocks are kept


def test_a_block_that_is_no_block_is_said_as_such() -> None:
    """A driver author's tour: a do_task_block returning a dict ended its task with
    "AttributeError: 'dict' object has no attribute 'check'"."""

    class _Dict(_Bulk):
        def do_task_block(self, task: TaskSpec, t_start: float, t_now: float) -> Any:
            return {"uts": [t_now], "v": [1.0]}

    class _DictDrv(ModelInterface):
        def DeviceFactory(self, key: tuple[str, str], **kwargs: Any) -> ModelDevice:
            return _Dict(self, key, **kwargs)

    task = TaskSpec(technique_name="acq", max_duration=0.2, sampling_interval=0.001)
    end, _ = _run(_DictDrv().DeviceFactory(("a", "1")), task)
    assert end.reason == "error" and end.message is not None
    assert "bad block" in end.message and "at call 1" in end.message, end.message
    assert "do_task_block must return a Block or None, not dict" in end.message, end.message


def test_the_adapter_example_in_the_docs_maps_a_dataset_to_a_block() -> None:
    """docs/drivers.md: ``block_from_dataset`` (tomato 2.2 driver data -> Block) runs."""
    import re
    from pathlib import Path

    import xarray as xr

    text = (Path(__file__).resolve().parents[1] / "docs" / "drivers.md").read_text()
    code = next(
        c for c in re.findall(r"```python\n(.*?)```", text, re.S) if "def block_from_dataset" in c
    )
    ns: dict[str, Any] = {"Block": Block}
    exec(code, ns)
    freq = xr.DataArray([1.0, 2.0, 3.0], dims="freq", attrs={"units": "MHz"})
    ds = xr.Dataset(
        {
            "s11": (("uts", "freq"), np.arange(6.0).reshape(2, 3), {"units": "dB"}),
            "temp": ("uts", [20.0, 21.0], {"units": "degC"}),
        },
        coords={"uts": [1.0, 2.0], "freq": freq},
    )
    b = ns["block_from_dataset"](ds)
    b.check()
    assert b.dims == {"s11": ["freq"]} and list(b.coords["freq"]) == [1.0, 2.0, 3.0]
    assert b.units == {"s11": "dB", "temp": "degC", "freq": "MHz"}
    assert ns["block_from_dataset"](None) is None


def test_a_stream_id_longer_than_any_node_draws_is_refused() -> None:
    """A hostile tour: a node's login sent batches with 100 kB stream ids; the recorder
    stored them, listed them in a job's finalize reply (10 MB, too large to send) and
    the job's point count was lost. A stream id is at most STREAM_MAX characters."""
    from tomato_mqtt.wire.data import STREAM_MAX

    ok = _encode(uts=[1.0], vars={"v": [1.0]}, stream="s" * STREAM_MAX)
    assert read_header(ok).stream == "s" * STREAM_MAX
    long = _encode(uts=[1.0], vars={"v": [1.0]}, stream="s" * (STREAM_MAX + 1))
    with pytest.raises(DecodeError, match="stream"):
        read_header(long)
    with pytest.raises(ValidationError):
        DataBatch(component="c", epoch=1, stream="s" * 100_000, seq=0, uts=[1.0], vars={})
