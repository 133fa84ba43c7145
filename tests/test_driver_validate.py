"""Task and attribute validation: every path a lab user can hit, with its message."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pint
import pytest

from tomato_mqtt.driver import Attr, AttrSpec, TaskSpec
from tomato_mqtt.driver.validate import (
    TaskValidationError,
    coerce_value,
    to_jsonable,
    validate_task,
)

# The example counter's surface, as a node publishes it in component meta.
CAPS = {"count", "random"}
ATTRS = {
    "min": AttrSpec(type="float", rw=True),
    "max": AttrSpec(type="float", rw=True),
    "param": AttrSpec(type="quantity", units="seconds", rw=True, minimum=0.1),
    "choice": AttrSpec(type="str", rw=True, options=["red", "green", "blue"]),
    "serial": AttrSpec(type="str"),
}


def reject(technique: str, params: dict[str, Any]) -> str:
    with pytest.raises(TaskValidationError) as e:
        validate_task(CAPS, ATTRS, technique, params)
    return str(e.value)


def test_unknown_technique_lists_the_known_ones() -> None:
    msg = reject("unknown", {})
    assert "'unknown'" in msg
    assert "supported: count, random" in msg


def test_unknown_attr_lists_the_known_ones() -> None:
    msg = reject("count", {"unknown": "bla"})
    assert "unknown parameter 'unknown'" in msg
    assert "'count'" in msg
    # the attributes a task may set: `serial` is read-only (a driver author's tour)
    assert msg.endswith("(a task may set: choice, max, min, param)"), msg
    msg = reject("count", {"parm": "2 s"})
    assert "unknown parameter 'parm' for technique 'count' (did you mean 'param'? " in msg, msg


def test_read_only_attr() -> None:
    assert "'serial' is read-only" in reject("count", {"serial": "x"})


def test_none_is_refused() -> None:
    assert reject("count", {"min": None}) == "min: a value is required, got None"


def test_wrong_type_for_a_quantity() -> None:
    msg = reject("count", {"param": "wrong type"})
    assert msg.startswith("param: cannot read 'wrong type' as a quantity in seconds")


def test_offset_units_as_text() -> None:
    """A setpoint in degC given as text was refused ("cannot read '30 degC' as a
    quantity ... write e.g. '1.5 s'"): pint refuses 30 * degC for an offset unit."""
    attrs = {"setpoint": AttrSpec(type="quantity", units="degC", rw=True, maximum=100)}
    got = validate_task(CAPS, attrs, "count", {"setpoint": "30 degC"})["setpoint"]
    assert got == pint.Quantity(30.0, "degC"), got
    kelvin = validate_task(CAPS, attrs, "count", {"setpoint": "300 K"})["setpoint"]
    assert abs(kelvin.m_as("degC") - 26.85) < 1e-9
    for text in ("-5.5 degC", "1e1degC", "30 °C"):
        validate_task(CAPS, attrs, "count", {"setpoint": text})
    with pytest.raises(TaskValidationError) as e:
        validate_task(CAPS, attrs, "count", {"setpoint": "warm"})
    assert (
        str(e.value) == "setpoint: cannot read 'warm' as a quantity in degC (write e.g. '1.5 degC')"
    )
    with pytest.raises(TaskValidationError, match="above the maximum"):
        validate_task(CAPS, attrs, "count", {"setpoint": "120 degC"})


def test_quantity_below_minimum_is_compared_in_the_attr_units() -> None:
    assert reject("count", {"param": "1 ms"}) == "param: 1 ms is below the minimum 0.1 s"


def test_wrong_dimensionality() -> None:
    msg = reject("count", {"param": "3 m"})
    assert msg.startswith("param: 3 m has the wrong dimensionality")
    assert "[length]" in msg and "[time]" in msg


def test_options_violation_lists_the_options() -> None:
    assert reject("random", {"choice": "yellow"}) == (
        "choice: 'yellow' is not one of the options: red, green, blue"
    )


def test_float_from_text_that_is_not_a_number() -> None:
    assert reject("random", {"max": "wrong type"}) == "max: expected a number, got 'wrong type'"


def test_valid_task_params_are_coerced() -> None:
    out = validate_task(
        CAPS, ATTRS, "random", {"min": "5", "max": 7, "param": "200 ms", "choice": "red"}
    )
    assert out["min"] == 5.0 and isinstance(out["min"], float)
    assert out["max"] == 7.0 and isinstance(out["max"], float)
    param = out["param"]
    assert isinstance(param, pint.Quantity)
    assert param.magnitude == pytest.approx(0.2)
    assert str(param.units) == "second"  # converted to the canonical units
    assert out["choice"] == "red"


def test_no_params_is_fine() -> None:
    assert validate_task(CAPS, ATTRS, "count", {}) == {}


@pytest.mark.parametrize(
    ("val", "expected"),
    [("5", 5.0), (5, 5.0), (2.5, 2.5), (" -1e3 ", -1000.0), ("inf", float("inf"))],
)
def test_float_coercion(val: object, expected: float) -> None:
    out = coerce_value("x", AttrSpec(type="float"), val)
    assert out == expected and type(out) is float


@pytest.mark.parametrize("val", [True, "nan", [1], {"a": 1}])
def test_float_refuses(val: object) -> None:
    with pytest.raises(TaskValidationError, match="^x: expected a number"):
        coerce_value("x", AttrSpec(type="float"), val)


@pytest.mark.parametrize(
    ("spec", "val", "said"),
    [
        (AttrSpec(type="float"), "1e400", "x: 1e400 is out of range"),
        (AttrSpec(type="float"), " -1e999 ", "x: -1e999 is out of range"),
        (AttrSpec(type="float"), "1" + "0" * 400, r"x: 1000000000…000000 \(401 char"),
        (AttrSpec(type="float"), 10**400, "x: an integer beyond ±1.8e\\+308 is out of range"),
        (AttrSpec(type="int"), 10**400, "x: an integer beyond ±1.8e\\+308 is out of range"),
        (AttrSpec(type="int", maximum=5), 10**20, "x: 100000000000000000000 is above the max"),
        (AttrSpec(type="quantity", units="s"), "1e400 s", "x: 1e400 is out of range"),
        (AttrSpec(type="quantity", units="s"), 10**400, "x: an integer beyond ±1.8e\\+308"),
        # pint reads a whole number as an int (a review: OverflowError past the check)
        (AttrSpec(type="quantity", units="s"), "1" + "0" * 400 + " s", "x: 1000000000…"),
    ],
)  # fmt: skip
def test_a_number_a_float_cannot_hold_is_out_of_range(
    spec: AttrSpec, val: object, said: str
) -> None:
    """``passata set … max 1e400`` said "set to inf", and a 400-digit integer raised
    OverflowError out of the validation (the scheduler said "validation failed:
    OverflowError: int too large to convert to float"); infinity said as such stays."""
    with pytest.raises(TaskValidationError, match=f"^{said}"):
        coerce_value("x", spec, val)
    if spec.type != "int":
        assert coerce_value("x", spec, "-Infinity" if spec.type == "float" else "-inf s") < 0


@pytest.mark.parametrize(("val", "expected"), [("5", 5), (5.0, 5), ("7.0", 7), (3, 3)])
def test_int_coercion(val: object, expected: int) -> None:
    out = coerce_value("n", AttrSpec(type="int"), val)
    assert out == expected and type(out) is int


@pytest.mark.parametrize("val", [5.5, "5.5", "five", False])
def test_int_refuses(val: object) -> None:
    with pytest.raises(TaskValidationError, match="^n: expected an integer"):
        coerce_value("n", AttrSpec(type="int"), val)


@pytest.mark.parametrize(
    ("val", "expected"),
    [(True, True), ("yes", True), ("False", False), ("0", False), (1, True), (0, False)],
)
def test_bool_coercion(val: object, expected: bool) -> None:
    assert coerce_value("b", AttrSpec(type="bool"), val) is expected


@pytest.mark.parametrize("val", ["maybe", 2, 1.0])
def test_bool_refuses(val: object) -> None:
    with pytest.raises(TaskValidationError, match="^b: expected true or false"):
        coerce_value("b", AttrSpec(type="bool"), val)


def test_str_coercion_of_numbers_and_refusal_of_lists() -> None:
    spec = AttrSpec(type="str")
    assert coerce_value("s", spec, 5) == "5"
    assert coerce_value("s", spec, 2.5) == "2.5"
    with pytest.raises(TaskValidationError, match="expected text"):
        coerce_value("s", spec, ["a"])


def test_int_limits_and_numeric_options() -> None:
    spec = AttrSpec(type="int", minimum=1, maximum=8, options=[1, 2, 4, 8])
    assert coerce_value("gain", spec, "4") == 4
    with pytest.raises(TaskValidationError, match="^gain: 16 is above the maximum 8$"):
        coerce_value("gain", spec, 16)
    with pytest.raises(TaskValidationError, match="^gain: 0 is below the minimum 1$"):
        coerce_value("gain", spec, 0)
    with pytest.raises(TaskValidationError, match="^gain: 3 is not one of the options: 1, 2, 4, 8"):
        coerce_value("gain", spec, 3)


def test_a_number_s_declared_units_are_in_its_limit_refusals() -> None:
    """A float attribute with units (informative for numbers): "setpoint: 200 is above
    the maximum 100" left a user guessing which unit (a newcomer's tour)."""
    spec = AttrSpec(type="float", units="degC", minimum=-20, maximum=100)
    assert coerce_value("setpoint", spec, 40) == 40.0
    with pytest.raises(
        TaskValidationError, match="^setpoint: 200 degC is above the maximum 100 degC$"
    ):
        coerce_value("setpoint", spec, 200)
    with pytest.raises(
        TaskValidationError, match="^setpoint: -30 degC is below the minimum -20 degC$"
    ):
        coerce_value("setpoint", spec, -30)


def test_quantity_from_number_quantity_and_bare_text() -> None:
    spec = ATTRS["param"]
    assert coerce_value("param", spec, 2) == pint.Quantity(2.0, "s")
    assert coerce_value("param", spec, "5") == pint.Quantity(5, "s")
    assert coerce_value("param", spec, pint.Quantity(3, "min")) == pint.Quantity(180, "s")
    own = pint.UnitRegistry()  # a driver with its own registry still works
    q = coerce_value("param", spec, own.Quantity(500, "ms"))
    assert isinstance(q, pint.Quantity) and q.m_as("s") == pytest.approx(0.5)
    # a magnitude is a float however it was written: "2" made the file's variable int64,
    # float64 after "2.0" (a side-by-side tour)
    for given in (2, "2", "2 s", pint.Quantity(2, "s"), pint.Quantity(2, "min"), "2.0"):
        q = coerce_value("param", spec, given)
        assert type(q.magnitude) is float, (given, q)


def test_quantity_maximum_in_units() -> None:
    spec = AttrSpec(type="quantity", units="mA", maximum=100)
    assert coerce_value("i", spec, "0.05 A") == pint.Quantity(50.0, "mA")
    with pytest.raises(TaskValidationError, match="^i: 0.2 A is above the maximum 100 mA$"):
        coerce_value("i", spec, "0.2 A")


@pytest.mark.parametrize("val", [True, "1 +", "nan s", [1, 2]])
def test_quantity_refuses(val: object) -> None:
    with pytest.raises(TaskValidationError, match="^param: "):
        coerce_value("param", ATTRS["param"], val)


def test_to_jsonable_round_trips_through_coerce_value() -> None:
    q = pint.Quantity(1.0, "second")
    text = to_jsonable(q)
    assert text == "1.0 second"
    assert coerce_value("param", ATTRS["param"], text) == q
    assert json.loads(json.dumps(to_jsonable(float("inf")))) == "inf"
    assert [to_jsonable(v) for v in (None, True, 3, 2.5, "x")] == [None, True, 3, 2.5, "x"]
    assert to_jsonable(object) == str(object)


def test_attr_spec_from_tomato_style_declarations() -> None:
    # tomato drivers give quantity limits and set options: both port unchanged
    a = Attr(type=pint.Quantity, rw=True, units="seconds", minimum=pint.Quantity("100 ms"))
    assert a.spec() == AttrSpec(type="quantity", units="seconds", rw=True, minimum=0.1)
    b = Attr(type=str, rw=True, options={"red", "green", "blue"})
    assert b.spec().options == ["blue", "green", "red"]
    c = Attr(type=pint.Quantity, maximum=pint.Quantity(2, "V"))
    assert c.spec().units == "volt" and c.spec().maximum == 2.0
    assert Attr(type="int", status=True).spec().status is True


def test_attr_declaration_errors_are_caught_early() -> None:
    with pytest.raises(TypeError, match="Attr type must be"):
        Attr(type=list)
    with pytest.raises(ValueError, match="'bogus_unit' are not known to pint"):
        Attr(type=float, units="bogus_unit")
    with pytest.raises(ValueError, match="minimum 5.0 is above maximum 1.0"):
        Attr(type=float, minimum=5, maximum=1)


def test_a_quantity_without_units_is_warned_at_declaration() -> None:
    """A driver author's tour: ``Attr(type=pint.Quantity)`` without units took any units
    a user wrote (a bare number dimensionless) and nothing said so."""
    with pytest.warns(UserWarning, match="quantity without units: values reach the driver"):
        a = Attr(type=pint.Quantity, rw=True)
    assert a.spec().units is None
    # units from a limit (as tomato drivers give them) are units: no warning
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Attr(type=pint.Quantity, minimum=pint.Quantity("1 mL/min"))
        Attr(type=pint.Quantity, units="mL/min")


def test_litres_are_said_as_labs_write_them() -> None:
    """A driver author's tour: a flow declared in ``mL/min`` was refused in pint's
    ``ml/min``."""
    flow = AttrSpec(type="quantity", units="mL/min", rw=True, maximum=10)
    with pytest.raises(
        TaskValidationError, match=r"^flow: 12.5 mL/min is above the maximum 10 mL/min$"
    ):
        coerce_value("flow", flow, "12.5 mL/min")
    with pytest.raises(TaskValidationError, match=r"^flow: 5 µL has the wrong dimensionality"):
        coerce_value("flow", flow, "5 uL")
    vol = AttrSpec(type="quantity", units="liter", rw=True, minimum=0.5)
    with pytest.raises(TaskValidationError, match=r"^v: 100 mL is below the minimum 0.5 L$"):
        coerce_value("v", vol, "100 ml")
    # other units keep pint's symbols: "l" inside a symbol is not a litre
    with pytest.raises(TaskValidationError, match=r"^t: 1 ms is below the minimum 0.1 s$"):
        coerce_value("t", ATTRS["param"], "1 ms")
    assert coerce_value("flow", flow, "3 ml/min") == pint.Quantity(3.0, "mL/min")


def test_specs_are_json_on_the_wire() -> None:
    spec = ATTRS["choice"]
    assert AttrSpec.model_validate_json(spec.model_dump_json()) == spec
    with pytest.raises(ValueError, match="extra"):
        AttrSpec.model_validate({"type": "float", "colour": "red"})
    task = TaskSpec(
        technique_name="count",
        max_duration=1,
        sampling_interval=0.1,
        task_params={"param": "1 s"},
        job=3,
        index=0,
    )
    assert TaskSpec.model_validate_json(task.model_dump_json()) == task
    assert task.npoints == 10
    with pytest.raises(ValueError, match="greater than 0"):
        TaskSpec(technique_name="count", max_duration=1, sampling_interval=0)


def test_spec_import_stays_light() -> None:
    # messages (and through them the CLI) import the specs: that must not pull in pint
    code = "import sys, tomato_mqtt.driver.spec; print('pint' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", ["uts", "task"])
def test_a_variable_named_as_the_file_s_own_is_refused_at_its_point(name: str) -> None:
    """A review: a one-point driver's ``task`` values were overwritten in the file by the
    task index, and ``uts`` made the file unwritable (the job ended ``ce`` without one);
    a bulk driver's ``task`` the same. The point is refused, naming the variable."""
    import numpy as np

    from tomato_mqtt.driver.block import Block, BlockError
    from tomato_mqtt.driver.points import to_values

    with pytest.raises(TypeError, match=f"variable '{name}': the name is taken"):
        to_values({"val": 1.0, name: "heat"}, {}, None)
    block = Block(uts=np.asarray([1.0]), data={name: np.asarray([1.0])})
    with pytest.raises(BlockError, match=f"variable '{name}': the name is taken"):
        block.check()


def test_a_dimension_named_task_is_refused() -> None:
    """A review: a bulk driver's extra dimension `task` passed Block.check and the file
    could not be written (a coordinate of the file's own name)."""
    import numpy as np

    from tomato_mqtt.driver.block import Block, BlockError

    block = Block(
        uts=np.asarray([1.0]),
        data={"v": np.asarray([[1.0, 2.0]])},
        dims={"v": ("task",)},
        coords={"task": [0, 1]},
    )
    with pytest.raises(BlockError, match="'task' cannot be an extra dimension"):
        block.check()
