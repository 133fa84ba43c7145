"""What a driver hands over reaches the file as it was, or is refused at its point.

A data-fidelity review (session 44) sent every kind of value from a driver to the file.
Names and text the file changes or cannot hold, timestamps that are not numbers, values
a variable without dims cannot hold: refused at the point (one-point drivers:
``to_values``; bulk drivers: ``Block.check``), naming the variable, so the task ends
``ce`` with the points before it in the file, never ``c`` with them changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import netCDF4
import numpy as np
import pytest

from tests.ncread import load_tree
from tomato_mqtt.driver.block import Block, BlockError
from tomato_mqtt.driver.names import name_problem
from tomato_mqtt.driver.points import to_values
from tomato_mqtt.services.node.columns import to_columns
from tomato_mqtt.services.recorder.netcdf import RoleInput, write_job_file
from tomato_mqtt.wire.batch import encode_batch

BAD_NAMES = [
    ("I/V", "holds '/', which the file takes for a group's path"),
    (".x", "begins with '.'"),
    ("x ", "ends with a space"),
    ("a\x00b", "control character '\\x00'"),
    ("a\nb", "control character '\\n'"),
    ("v" * 257, "257 bytes long (UTF-8), more than the 256"),
    ("e\u0301", "not in Unicode's NFC form"),
    ("", "the name is empty"),
]


@pytest.mark.parametrize(("name", "said"), BAD_NAMES)
def test_a_name_the_file_cannot_keep_is_refused_on_both_paths(name: str, said: str) -> None:
    """``I/V`` became a group ``I`` holding ``V``, and the others made the whole file
    unwritable, tried again for ever (the recorder took netCDF's refusal for a disk
    error)."""
    with pytest.raises(TypeError, match="variable .*" + _re(said)):
        to_values({"ok": 1.0, name: 1.0}, {}, None)
    block = Block(uts=np.asarray([1.0]), data={name: np.asarray([1.0])})
    with pytest.raises(BlockError, match=_re(said)):
        block.check()
    spectrum = Block(
        uts=np.asarray([1.0]),
        data={"p": np.asarray([[1.0, 2.0]])},
        dims={"p": (name,)},
        coords={name: [1.0, 2.0]},
    )
    with pytest.raises(BlockError, match="dimension .*" + _re(said)):
        spectrum.check()


def _re(text: str) -> str:
    import re

    return re.escape(text)


def test_names_the_file_keeps_are_taken() -> None:
    for name in ("Ewe", "I_mA", "µ V", "é", "温度", "1st", "_x", "a.b-c+d@e", "x" * 256):
        assert name_problem(name) is None, name
    assert to_values({"µ V": 1.0, "温度": 2}, {}, None) == ({"µ V": 1.0, "温度": 2}, None)


def test_text_with_a_nul_is_refused_not_cut_short() -> None:
    """``"a\\x00b"`` reached the file as ``"a"``."""
    for value in ("a\x00b", np.str_("a\x00b")):
        with pytest.raises(TypeError, match="variable 'mode': text holds a NUL"):
            to_values({"mode": value}, {}, None)
    for col in (["a", "a\x00b"], np.asarray(["a", "a\x00b"])):
        with pytest.raises(BlockError, match="variable 'mode': text holds a NUL"):
            Block(uts=[1.0, 2.0], data={"mode": col}).check()


def test_text_the_wire_cannot_carry_and_integers_past_64_bits_are_refused_at_their_point() -> None:
    """A driver author's tour: 2**70 (and a lone surrogate) passed the point's checks and
    failed where the node encoded the batch: the task ended with 0 points, those taken
    before it lost. Each is refused at its point, naming the variable, on both paths;
    the integers a file holds (int64, and uint64 above it) and other text are taken."""
    for value, said in (
        (2**70, "variable 'k': the integer 1180591620717411303424 is beyond the 64 bits"),
        (-(2**63) - 1, "variable 'k': the integer -9223372036854775809 is beyond"),
        (10**400, "variable 'k': the integer of 401 digits is beyond the 64 bits"),
        ("a\udcff", "variable 'k': text is not valid Unicode (surrogates not allowed"),
        (np.str_("a\udcff"), "variable 'k': text is not valid Unicode"),
    ):
        with pytest.raises(TypeError, match=_re(said)):
            to_values({"k": value}, {}, None)
        col: Any = [1, value] if isinstance(value, int) else ["a", value]
        with pytest.raises(BlockError, match=_re(said)):
            Block(uts=[1.0, 2.0], data={"k": col}).check()
    with pytest.raises(BlockError, match="text is not valid Unicode"):
        Block(uts=[1.0, 2.0], data={"k": np.asarray(["a", "a\udcff"])}).check()
    with pytest.raises(BlockError, match="beyond the 64 bits"):  # an array variable too
        Block(uts=[1.0], data={"p": [[1, 2**70]]}, dims={"p": ["f"]}, coords={"f": [1, 2]}).check()
    for ok in (2**64 - 1, -(2**63), "温度 é", np.str_("µV")):
        assert to_values({"k": ok}, {}, None)[0] == {"k": ok}
        Block(uts=[1.0], data={"k": [ok]}).check()


def test_a_quantity_in_units_of_another_dimension_names_its_variable() -> None:
    """A driver author's tour: "DimensionalityError: Cannot convert from 'second' to
    'volt'" named no variable (other type errors do)."""
    import pint

    known: dict[str, Any] = {}
    assert to_values({"v": pint.Quantity(1.0, "V")}, known, None)[0] == {"v": 1.0}
    with pytest.raises(TypeError, match="variable 'v': Cannot convert from 'second'"):
        to_values({"v": pint.Quantity(1.0, "s")}, known, None)
    assert to_values({"v": pint.Quantity(1.0, "mV")}, known, None)[0] == {"v": 0.001}


def test_numpy_s_bool_is_a_bool_under_numpy_2() -> None:
    """numpy 2 calls its bool ``bool``, not ``bool_``: it was refused as "not bool"."""
    assert to_values({"on": np.bool_(True), "off": np.False_}, {}, None) == (
        {"on": True, "off": False},
        None,
    )


@pytest.mark.parametrize(
    ("uts", "said"),
    [
        (np.asarray(["2026-12-04T10:00", "2026-12-04T10:01"], dtype="datetime64[s]"), "datetime64"),
        (np.asarray([1.0, np.inf]), "a timestamp is not finite"),
        (np.asarray([1.0, np.nan]), "a timestamp is not finite"),
        ([1.0, "2"], "uts[1]: timestamps are finite numbers"),
        ([1.0, float("inf")], "uts[1]: timestamps are finite numbers"),
        ([1.0, 10**400], "uts[1]: timestamps are finite numbers"),
    ],
)
def test_timestamps_that_are_not_finite_numbers_are_refused(uts: Any, said: str) -> None:
    """A datetime64 uts went on the wire as text: the recorder left the whole batch out of
    the file, and the job ended ``c``."""
    with pytest.raises(BlockError, match=_re(said)):
        Block(uts=uts, data={"v": [1.0, 2.0]}).check()
    Block(uts=np.asarray([1, 2], dtype=np.int64), data={"v": [1.0, 2.0]}).check()


@pytest.mark.parametrize(
    ("data", "dims", "coords", "said"),
    [
        ({"v": [{"a": 1}, {"a": 2}]}, {}, {}, "a point's value must be a number, text, bool"),
        ({"v": [[1.0, 2.0], [3.0, 4.0]]}, {}, {}, "not list (an array variable names"),
        ({"v": np.ones((2, 3))}, {}, {}, "2-d values without dims"),
        ({"p": [[1.0, 2.0], [1.0]]}, {"p": ["f"]}, {"f": [1, 2]}, "a point has shape (1,)"),
        ({"p": [[1.0, "x"], [1.0, 2.0]]}, {"p": ["f"]}, {"f": [1, 2]}, "must be numbers"),
        ({"p": np.asarray([["a", "b"], ["c", "d"]])}, {"p": ["f"]}, {"f": [1, 2]}, "numbers"),
        ({"p": np.ones((2, 2))}, {"p": ["f"]}, {"f": [1.0, float("nan")]}, "or text, not nan"),
        ({"p": np.ones((2, 2))}, {"p": ["f"]}, {"f": np.asarray([1.0, np.inf])}, "not finite"),
    ],
)
def test_values_a_variable_cannot_hold_are_refused(
    data: dict[str, Any], dims: dict[str, Any], coords: dict[str, Any], said: str
) -> None:
    """A dict went into the file as its Python text; a list without dims, or a NaN
    coordinate, made the file unwritable; ragged or text arrays became NaN rows (and the
    job ended ``c``)."""
    block = Block(uts=[1.0, 2.0], data=data, dims=dims, coords=coords)
    with pytest.raises(BlockError, match=_re(said)):
        block.check()


def test_float32_reaches_the_file_as_its_float64_value_on_both_paths(tmp_path: Path) -> None:
    """orjson writes a float32 in its shortest float32 text, which reads back as another
    float64: a bulk float32(1e-45) came back 29 % off, float32(0.1) as 0.1 where the
    one-point path wrote float(np.float32(0.1)), 0.10000000149011612."""
    values = np.asarray([0.1, 1e-45, 3.4e38], dtype=np.float32)
    block = Block(uts=np.asarray([1.0, 2.0, 3.0], dtype=np.float32), data={"v": values})
    block.check()
    (cols,) = to_columns([block], {})
    raw = _raw(0, cols.uts, cols.vars, units=cols.units)
    path = write_job_file(tmp_path / "f.nc", [RoleInput("r", "{}", [raw])], {})
    got = load_tree(path)["r"].to_dataset()["v"].values
    assert got.tolist() == values.astype(np.float64).tolist()
    one, _ = to_values({"v": np.float32(0.1)}, {}, None)
    assert one["v"] == got[0]


def test_a_name_the_file_cannot_hold_is_left_out_and_said(tmp_path: Path) -> None:
    """A node login's batch with a name the file cannot take (the node refuses them
    from its drivers): the recorder took netCDF's refusal for a disk error (EIO) and
    tried again for ever; then it refused the whole file, and every snapshot of it (a
    security round: one batch with a variable '(V)' cost a job its file). Only the
    variables the file cannot hold are left out, each said; the rest is written."""
    raw = _raw(
        0,
        [1.0, 2.0],
        {
            ".x": [1.0, 2.0],
            "(V)": [3.0, 4.0],
            "I/V": [5.0, 6.0],
            "uts": [7.0, 8.0],
            "E": [9.0, 10.0],
        },
        units={},
    )
    problems: list[str] = []
    path = write_job_file(tmp_path / "f.nc", [RoleInput("r", "{}", [raw])], {}, problems)
    ds = load_tree(path)["r"].to_dataset()
    assert ds["E"].values.tolist() == [9.0, 10.0] and ds["uts"].values.tolist() == [1.0, 2.0]
    assert set(ds.data_vars) == {"E", "task"}, ds
    with netCDF4.Dataset(path) as nc:
        assert set(nc["r"].groups) == set()  # ('I/V' made a subgroup 'I')
    said = " | ".join(problems)
    for name in (".x", "(V)", "I/V", "uts"):
        assert f"variable {name!r}: " in said and "not in the file (role 'r')" in said, said
    assert len(problems) == 4, problems
    assert [p.name for p in tmp_path.iterdir()] == ["f.nc"]  # no temporary file left behind


def _raw(seq: int, uts: list[float], vars: dict[str, Any], **kw: Any) -> bytes:
    return encode_batch(
        component="c", job=1, task=0, epoch=1, stream="s", seq=seq, uts=uts, vars=vars, **kw
    )


def test_a_variable_whose_units_change_keeps_each_value_s_units(tmp_path: Path) -> None:
    """A bulk driver's units went from V to mV between blocks: the file labelled both
    values mV (units: the last batch's), and the job ended ``c``."""
    raws = [
        _raw(0, [1.0], {"E": [1.0], "I": [5.0]}, units={"E": "V", "I": "mA"}),
        _raw(1, [2.0], {"E": [500.0], "I": [6.0]}, units={"E": "mV", "I": "mA"}),
        _raw(2, [3.0], {"E": [2.0], "I": [7.0]}, units={"E": "V"}),  # I: units not said
    ]
    path = write_job_file(tmp_path / "f.nc", [RoleInput("r", "{}", raws)], {})
    ds = load_tree(path)["r"].to_dataset()
    assert ds["E"].attrs["units"] == "V" and ds["E_1"].attrs["units"] == "mV"
    assert np.array_equal(ds["E"].values, [1.0, np.nan, 2.0], equal_nan=True)
    assert np.array_equal(ds["E_1"].values, [np.nan, 500.0, np.nan], equal_nan=True)
    assert ds["I"].values.tolist() == [5.0, 6.0, 7.0] and ds["I"].attrs["units"] == "mA"
    assert "I_1" not in ds


def test_an_array_variable_on_other_dimensions_keeps_its_own(tmp_path: Path) -> None:
    """``p`` over ``f``, then over ``t``: the second spectrum was labelled with ``f``."""
    raws = [
        _raw(0, [1.0], {"p": [[1.0, 2.0]]}, units={}, dims={"p": ["f"]}, coords={"f": [1, 2]}),
        _raw(1, [2.0], {"p": [[3.0, 4.0]]}, units={}, dims={"p": ["t"]}, coords={"t": [10, 20]}),
    ]
    path = write_job_file(tmp_path / "f.nc", [RoleInput("r", "{}", raws)], {})
    ds = load_tree(path)["r"].to_dataset()
    assert ds["p"].dims == ("uts", "f") and ds["p_1"].dims == ("uts", "t")
    assert np.array_equal(ds["p"].values, [[1.0, 2.0], [np.nan, np.nan]], equal_nan=True)
    assert np.array_equal(ds["p_1"].values, [[np.nan, np.nan], [3.0, 4.0]], equal_nan=True)
    assert ds["t"].values.tolist() == [10, 20]


def test_integers_past_int64_keep_every_digit_within_one_batch(tmp_path: Path) -> None:
    """numpy makes [2**63 + 5, 1] float64: the file held 9.223372036854776e18 (uint64 was
    kept only when the big integers came in batches of their own)."""
    big = [2**63 + 5, 1, 2**64 - 1]
    raws = [
        _raw(0, [1.0, 2.0, 3.0], {"n": big}, units={}),
        _raw(
            1,
            [4.0],
            {"n": [3], "a": [[2**63 + 5, 1]]},
            units={},
            dims={"a": ["k"]},
            coords={"k": [0, 1]},
        ),
    ]
    path = write_job_file(tmp_path / "f.nc", [RoleInput("r", "{}", raws)], {})
    ds = load_tree(path)["r"].to_dataset()
    assert ds["n"].dtype == np.uint64 and ds["n"].values[[0, 2]].tolist() == [2**63 + 5, 2**64 - 1]
    one = write_job_file(tmp_path / "g.nc", [RoleInput("r", "{}", raws[1:])], {})
    ds = load_tree(one)["r"].to_dataset()
    assert ds["a"].dtype == np.uint64 and ds["a"].values[-1].tolist() == [2**63 + 5, 1]


def test_infinities_reach_the_file_on_both_paths(tmp_path: Path) -> None:
    """JSON has no infinity: orjson wrote ±inf as null, and the file held NaN (the job
    ``c``). The batch says where they were (``nonfinite``), and the recorder puts them
    back; a reader that ignores it reads missing values, as before."""
    import orjson

    from tomato_mqtt.driver.names import nonfinite_seen
    from tomato_mqtt.wire.batch import infinities

    inf = float("inf")
    one = to_values({"v": inf, "w": -inf, "x": float("nan")}, {}, None)[0]
    # from now on the node looks through list columns too (until a driver of its process
    # hands one over, only numpy arrays: two scans a column cost ~0.24 µs a point)
    assert nonfinite_seen()
    assert infinities({"v": [1.0, inf]}, lists=False) == {}
    assert infinities({"v": np.asarray([1.0, inf])}, lists=False) == {"v": {"inf": [1]}}
    bulk = Block(
        uts=np.asarray([1.0, 2.0]),
        data={"a": np.asarray([inf, 1.0]), "p": np.asarray([[1.0, -inf], [inf, 2.0]])},
        dims={"p": ("f",)},
        coords={"f": [1, 2]},
    )
    bulk.check()
    (cols,) = to_columns([bulk], {})
    raws = [
        _raw(0, [0.5], {k: [v] for k, v in one.items()}, units={}),
        _raw(1, [1.0, 2.0], {"a": [1.0, -inf]}, units={}),  # lists, as one-point runs
        _raw(2, cols.uts, cols.vars, units={}, dims=cols.dims, coords=cols.coords),
    ]
    wire = orjson.loads(raws[0])
    assert wire["vars"]["v"] == [None] and wire["nonfinite"] == {
        "v": {"inf": [0]},
        "w": {"-inf": [0]},
    }
    assert orjson.loads(raws[2])["nonfinite"] == {"a": {"inf": [0]}, "p": {"inf": [2], "-inf": [1]}}
    path = write_job_file(tmp_path / "f.nc", [RoleInput("r", "{}", raws[:1])], {})
    ds = load_tree(path)["r"].to_dataset()
    assert ds["v"].values.tolist() == [inf] and ds["w"].values.tolist() == [-inf]
    assert np.isnan(ds["x"].values[0])
    path = write_job_file(tmp_path / "g.nc", [RoleInput("r", "{}", raws[1:])], {})
    ds = load_tree(path)["r"].to_dataset()
    assert ds["a"].values.tolist() == [1.0, -inf, inf, 1.0]
    assert np.array_equal(
        ds["p"].values,
        [[np.nan, np.nan], [np.nan, np.nan], [1.0, -inf], [inf, 2.0]],
        equal_nan=True,
    )


def test_what_the_review_of_the_checks_found_is_taken_or_refused_as_it_should(
    tmp_path: Path,
) -> None:
    """A review of this session's checks: a list of numpy arrays for an array variable
    (valid) failed to encode; list bools in an array variable were refused; a ragged list
    point raised ValueError (not BlockError: an upstream task ended instead of the block
    being dropped); tuple points lost their infinities; a name ending in a no-break space
    (netCDF keeps it) was refused; a malformed ``nonfinite`` broke the whole file."""
    from tomato_mqtt.wire.batch import infinities

    inf = float("inf")
    spectra = Block(
        uts=[1.0, 2.0],
        data={"p": [np.asarray([1.0, 2.0]), np.asarray([3.0, 4.0])]},
        dims={"p": ["f"]},
        coords={"f": [1, 2]},
    )
    spectra.check()
    assert infinities(spectra.data) == {}
    assert infinities({"p": [(1.0, inf), (2.0, 3.0)]}) == {"p": {"inf": [1]}}
    Block(uts=[1.0], data={"m": [[True, False]]}, dims={"m": ["k"]}, coords={"k": [0, 1]}).check()
    ragged = Block(uts=[1.0, 2.0], data={"v": [1.0, [2.0, 3.0]]})
    with pytest.raises(BlockError):
        ragged.check()
    assert name_problem("Ewe\u00a0") is None
    good = _raw(0, [1.0], {"v": [1.0]}, units={})
    bad = orjson_loads(_raw(1, [2.0], {"v": [None]}, units={}))
    bad["nonfinite"] = ["v"]
    problems: list[str] = []
    path = write_job_file(
        tmp_path / "f.nc", [RoleInput("r", "{}", [good, orjson_dumps(bad)])], {}, problems
    )
    assert load_tree(path)["r"].to_dataset()["v"].values.tolist() == [1.0]
    assert len(problems) == 1 and "its nonfinite is not an object" in problems[0], problems


def test_a_coordinate_whose_units_change_keeps_each_set(tmp_path: Path) -> None:
    """A review: the same frequencies in Hz, then in kHz, were one coordinate labelled kHz."""
    raws = [
        _raw(
            0,
            [1.0],
            {"p": [[1.0, 2.0]]},
            units={"f": "Hz"},
            dims={"p": ["f"]},
            coords={"f": [1, 2]},
        ),
        _raw(
            1,
            [2.0],
            {"p": [[3.0, 4.0]]},
            units={"f": "kHz"},
            dims={"p": ["f"]},
            coords={"f": [1, 2]},
        ),
    ]
    ds = load_tree(write_job_file(tmp_path / "f.nc", [RoleInput("r", "{}", raws)], {}))["r"]
    ds = ds.to_dataset()
    assert ds["f"].attrs["units"] == "Hz" and ds["f_1"].attrs["units"] == "kHz", ds
    assert ds["p_1"].dims == ("uts", "f_1")


def orjson_loads(raw: bytes) -> Any:
    import orjson

    return orjson.loads(raw)


def orjson_dumps(doc: Any) -> bytes:
    import orjson

    return orjson.dumps(doc)


def test_booleans_read_back_as_booleans(tmp_path: Path) -> None:
    """A tomato 2.2 user's review: tomato 2.2's files give a driver's booleans back as
    bool (xarray writes them as int8 with the attr ``dtype: bool``); ours gave int8, and
    a script's masks (``ds.where(ds.ok)``) broke."""
    raws = [_raw(0, [1.0, 2.0], {"ok": [True, False], "n": [1, 2]}, units={}, dims={})]
    ds = load_tree(write_job_file(tmp_path / "f.nc", [RoleInput("r", "{}", raws)], {}))["r"]
    assert ds["ok"].dtype == bool and ds["ok"].values.tolist() == [True, False]
    assert ds["n"].dtype == np.int64 and "dtype" not in ds["n"].attrs
