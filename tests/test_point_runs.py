"""PointRun: how a runner buffers one task's points (driver/points.py), and how the node
turns runs into a batch's columns (services/node/columns.py)."""

from __future__ import annotations

from tomato_mqtt.driver import Point, TaskSpec
from tomato_mqtt.driver.block import Block
from tomato_mqtt.driver.points import PointRun
from tomato_mqtt.services.node.columns import to_columns


def _task(index: int = 0) -> TaskSpec:
    return TaskSpec(technique_name="t", max_duration=1, sampling_interval=0.1, job=3, index=index)


def test_a_variable_missing_from_some_points_is_null_there() -> None:
    run = PointRun(_task())
    run.add(1.0, {"a": 1, "b": "x"})
    run.add(2.0, {"a": 2})  # no b
    run.add(3.0, {"c": 3.5})  # a new variable, and no a, no b
    run.add(4.0, {"a": 4, "b": "y", "c": 4.5})
    assert len(run) == 4 and run.uts == [1.0, 2.0, 3.0, 4.0]
    assert run.cols == {
        "a": [1, 2, None, 4],
        "b": ["x", None, None, "y"],
        "c": [None, None, 3.5, 4.5],
    }
    # as Point objects (ComponentRunner.drain): each with the values its driver gave
    pts = run.points()
    assert [p.values for p in pts] == [
        {"a": 1, "b": "x"},
        {"a": 2},
        {"c": 3.5},
        {"a": 4, "b": "y", "c": 4.5},
    ]
    assert all(p.task is run.task for p in pts)


def test_a_value_of_none_the_driver_gave_is_kept() -> None:
    """A driver may give None for a value it could not read: drain() hands it back as
    given (a null on the wire either way), apart from a variable a point did not have."""
    run = PointRun(_task())
    run.add(1.0, {"a": None, "b": 1})
    run.add(2.0, {"a": 2.0})
    run.add(3.0, {"a": None, "b": None})
    assert run.cols == {"a": [None, 2.0, None], "b": [1, None, None]}
    assert [p.values for p in run.points()] == [
        {"a": None, "b": 1},
        {"a": 2.0},
        {"a": None, "b": None},
    ]
    plain = PointRun(_task())  # no variable ever missing: the fast path
    plain.add(1.0, {"a": None})
    assert [p.values for p in plain.points()] == [{"a": None}]


def test_runs_and_points_make_the_same_columns() -> None:
    t = _task()
    values = [{"a": 1.0, "q": 2.0}, {"a": 2.0}, {"a": 3.0, "q": 4.0}]
    run = PointRun(t)
    for i, v in enumerate(values):
        run.add(float(i), v)
    units = {"q": "V"}
    from_run = to_columns([run], units)
    from_points = to_columns([Point(float(i), v, t) for i, v in enumerate(values)], units)
    assert len(from_run) == len(from_points) == 1
    for cols in (from_run[0], from_points[0]):
        assert cols.uts == [0.0, 1.0, 2.0]
        assert cols.vars == {"a": [1.0, 2.0, 3.0], "q": [2.0, None, 4.0]}
        assert cols.units == {"q": "V"}


def test_consecutive_runs_join_and_a_block_between_splits_them() -> None:
    t = _task()
    r1, r2, r3 = PointRun(t), PointRun(t), PointRun(t)
    r1.add(1.0, {"a": 1})
    r2.add(2.0, {"b": 2})
    r3.add(4.0, {"a": 4})
    block = Block(uts=[3.0], data={"v": [0.5]})
    out = to_columns([r1, r2, block, r3], {})
    assert [c.uts for c in out] == [[1.0, 2.0], [3.0], [4.0]]
    assert out[0].vars == {"a": [1, None], "b": [None, 2]}
    assert out[1].vars == {"v": [0.5]}
    assert out[2].vars == {"a": [4]}
