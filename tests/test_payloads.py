"""Payloads: every tomato version parses to 2.2; errors name the field; reading is light."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tomato_mqtt.config.payloads import (
    SUPPORTED_VERSIONS,
    PayloadError,
    parse_payload,
    read_payload_file,
    read_payload_text,
)
from tomato_mqtt.documents import DocumentError, parse_document

CONFIG = Path(__file__).resolve().parents[1] / "config"


def method_of(payload: Any) -> list[tuple[str, str, float, float]]:
    return [
        (t.component_role, t.technique_name, t.max_duration, t.sampling_interval)
        for t in payload.method
    ]


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_every_version_parses_to_the_same_2_2_method(version: str) -> None:
    data = read_payload_file(CONFIG / f"counter_v{version}.yml")
    assert data["version"] == version
    p = parse_payload(data, user="alice")
    assert p.version == "2.2"
    assert method_of(p) == [("counter", "count", 1.0, 0.1)]
    assert p.sample.identifier == "counter_1_0.1"
    assert p.settings.verbosity == "DEBUG"
    assert p.user.identifier == ("example-user" if version == "2.2" else "alice")


def test_older_payloads_get_the_current_user_by_default() -> None:
    import getpass

    p = parse_payload(read_payload_file(CONFIG / "counter_v2.1.yml"))
    assert p.user.identifier == getpass.getuser()


@pytest.mark.parametrize(
    ("name", "method"),
    [
        ("counter_1_0.1", [("counter", "count", 1.0, 0.1)]),
        ("counter_5_0.2", [("counter", "count", 5.0, 0.2)]),
        ("counter_multistep", [("counter", "count", 1.0, 0.1), ("counter", "count", 1.0, 0.2)]),
        ("counter_multidev", [("counter-1", "count", 1.0, 0.1), ("counter-2", "count", 1.0, 0.2)]),
        ("counter_output_prefix", [("counter", "count", 1.0, 0.05)]),
        ("counter_snapshot", [("counter", "count", 15.0, 0.1)]),
        ("counter_invalid_1", [("counter", "unknown", 0.2, 0.1)]),
    ],
)
def test_example_payloads(name: str, method: list[tuple[str, str, float, float]]) -> None:
    raw = read_payload_file(CONFIG / f"{name}.yml")
    p = parse_payload(raw)
    assert method_of(p) == method
    assert p.sample.identifier == raw["sample"]["name"]


def test_settings_survive_the_upgrade() -> None:
    prefix = parse_payload(read_payload_file(CONFIG / "counter_output_prefix.yml"))
    assert prefix.settings.output.prefix == "data"
    snap = parse_payload(read_payload_file(CONFIG / "counter_snapshot.yml"))
    assert snap.settings.snapshot is not None and snap.settings.snapshot.interval == 5.0
    inv = parse_payload(read_payload_file(CONFIG / "counter_invalid_1.yml"))
    assert inv.settings.unlock_when_done is True


def test_task_params_survive_the_upgrade() -> None:
    # only the driver can tell these are invalid: they parse
    params = [
        parse_payload(read_payload_file(CONFIG / f"counter_invalid_{n}.yml")).method[0].task_params
        for n in (2, 3, 4)
    ]
    assert params == [{"param": "wrong type"}, {"param": "1 ms"}, {"unknown": "bla"}]
    # 0.2: every extra key of a step becomes a task parameter
    doc = read_payload_file(CONFIG / "counter_v0.2.yml")
    doc["method"][0]["param"] = 3
    assert parse_payload(doc).method[0].task_params == {"param": 3}


def test_triggers() -> None:
    start = parse_payload(read_payload_file(CONFIG / "psutil_counter_with_task_start.yml"))
    assert [t.task_name for t in start.method] == [None, "trigger", None]
    assert start.method[2].start_with_task_name == "trigger"
    assert start.method[2].task_params == {"min": 50.0, "max": 100.0}
    stop = parse_payload(read_payload_file(CONFIG / "psutil_counter_with_task_stop.yml"))
    assert stop.method[2].stop_with_task_name == "trigger"
    assert {t.component_role for t in stop.method} == {"psutil", "counter"}


def test_json_dump_round_trips() -> None:
    """The scheduler stores model_dump(mode='json') and must be able to parse it again."""
    p = parse_payload(read_payload_file(CONFIG / "psutil_counter_with_task_start.yml"))
    dumped = p.model_dump(mode="json")
    assert json.loads(json.dumps(dumped)) == dumped
    assert parse_payload(dumped) == p


def test_json_and_yaml_files_read_alike(tmp_path: Path) -> None:
    data = read_payload_file(CONFIG / "counter_v2.2.yml")
    (tmp_path / "p.json").write_text(json.dumps(data))
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
    assert read_payload_file(tmp_path / "p.json") == data
    assert read_payload_file(tmp_path / "p.yaml") == data


def test_durations_with_units() -> None:
    doc = read_payload_file(CONFIG / "counter_v2.2.yml")
    doc["method"][0]["max_duration"] = "2 min"
    doc["method"][0]["sampling_interval"] = "500 ms"
    assert method_of(parse_payload(doc)) == [("counter", "count", 120.0, 0.5)]


def test_unquoted_version_numbers() -> None:
    doc = yaml.safe_load((CONFIG / "counter_v2.0.yml").read_text().replace('"2.0"', "2.0"))
    assert doc["version"] == 2.0
    assert parse_payload(doc).version == "2.2"


def test_0_1_upgrade_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    parse_payload(read_payload_file(CONFIG / "counter_v0.1.yml"))
    assert capsys.readouterr().out == ""


def test_2_1_snapshot_without_frequency_upgrades() -> None:
    doc = read_payload_file(CONFIG / "counter_v2.1.yml")
    doc["settings"]["snapshot"] = {"prefix": "snap"}  # dgbowl's own update() fails here
    snap = parse_payload(doc).settings.snapshot
    assert snap is not None and (snap.prefix, snap.interval) == ("snap", 3600.0)


def test_sample_and_method_files_are_read_in(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "sample.yml").write_text("sample:\n  name: s-42\n")
    (tmp_path / "method.json").write_text(
        json.dumps({"method": [{"device": "counter", "technique": "count", "time": 2, "delay": 1}]})
    )
    (tmp_path / "p.yml").write_text(
        'version: "0.2"\nsamplefile: sub/sample.yml\nmethodfile: method.json\n'
    )
    data = read_payload_file(tmp_path / "p.yml")
    assert "samplefile" not in data and data["sample"] == {"name": "s-42"}
    p = parse_payload(data)
    assert p.sample.identifier == "s-42"
    assert method_of(p) == [("counter", "count", 2.0, 1.0)]


def test_sample_files_of_tomato_2_2_payloads_are_found_where_ketchup_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tomato 2.2 reads ``samplefile`` from where ketchup runs, tomato-mqtt next to the
    payload: a payload written for tomato (``cd sf; ketchup submit sub/p.yml`` naming
    ``sub/sample.yml``) was refused, "sub/sub/sample.yml: file not found" (an outside
    parity audit). Next to the payload first, then the current folder, else both named."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "sample.yml").write_text("sample:\n  name: s-cwd\n")
    (tmp_path / "sub" / "p.yml").write_text(
        'version: "0.2"\nsamplefile: sub/sample.yml\nmethod: []\n'
    )
    monkeypatch.chdir(tmp_path)
    assert read_payload_file(Path("sub/p.yml"))["sample"] == {"name": "s-cwd"}
    # next to the payload wins when both exist
    (tmp_path / "sub" / "sub").mkdir()
    (tmp_path / "sub" / "sub" / "sample.yml").write_text("sample:\n  name: s-next\n")
    assert read_payload_file(Path("sub/p.yml"))["sample"] == {"name": "s-next"}
    (tmp_path / "sub" / "p.yml").write_text('version: "0.2"\nsamplefile: nope.yml\n')
    with pytest.raises(PayloadError) as ei:
        read_payload_file(Path("sub/p.yml"))
    assert ei.value.location == "samplefile"
    assert "nope.yml: no such file next to the payload (sub/nope.yml) nor in the current" in str(
        ei.value
    ), str(ei.value)


def test_file_references_are_refused_by_the_parser() -> None:
    with pytest.raises(PayloadError) as ei:
        parse_payload({"version": "0.2", "samplefile": "x.yml", "method": []})
    assert ei.value.location == "samplefile"


def _v(ver: str, **changes: Any) -> dict[str, Any]:
    doc = read_payload_file(CONFIG / f"counter_v{ver}.yml")
    for key, value in changes.items():
        doc[key] = value
    return doc


def _task(ver: str, **changes: Any) -> dict[str, Any]:
    doc = _v(ver)
    doc["method"][0].update(changes)
    for k, v in list(doc["method"][0].items()):
        if v is None:
            del doc["method"][0][k]
    return doc


@pytest.mark.parametrize(
    ("doc", "location", "words"),
    [
        pytest.param(
            {"sample": {"name": "x"}, "method": []}, "version", "field required", id="no-version"
        ),
        pytest.param(
            _v("2.2", version="3.0"), "version", "unsupported payload version '3.0'", id="version"
        ),
        pytest.param(
            _task("2.2", technique_name=None),
            "method[0].technique_name",
            "field required",
            id="missing",
        ),
        pytest.param(_task("2.2", colour="red"), "method[0].colour", "unknown field", id="extra"),
        pytest.param(
            _task("2.2", max_duration="5 kg"),
            "method[0].max_duration",
            "not a duration",
            id="units",
        ),
        pytest.param(
            _task("2.2", max_duration="soon"),
            "method[0].max_duration",
            "not a duration",
            id="no-unit",
        ),
        pytest.param(
            _task("2.0", max_duration="long"),
            "method[0].max_duration",
            "valid number",
            id="v2.0-number",
        ),
        pytest.param(
            _task("2.2", sampling_interval=0),
            "method[0].sampling_interval",
            "positive",
            id="zero-interval",
        ),
        pytest.param(
            _task("2.2", max_duration=-1), "method[0].max_duration", "negative", id="negative"
        ),
        # "inf s", "nan", .inf: said as such (it was "task count: max_duration must be
        # >= 0", naming the technique as the task and infinity as negative)
        pytest.param(
            _task("2.2", max_duration="inf s"),
            "method[0].max_duration",
            "a finite number of seconds (got inf)",
            id="inf-text",
        ),
        pytest.param(
            _task("2.2", max_duration="nan"),
            "method[0].max_duration",
            "a finite number of seconds (got nan)",
            id="nan-text",
        ),
        pytest.param(
            _task("2.2", sampling_interval=float("inf")),
            "method[0].sampling_interval",
            "inf is not a value tomato-mqtt takes: give a finite number",
            id="inf-interval",
        ),
        pytest.param(
            _task("2.2", start_with_task_name="nope"), "method", "required task_names", id="trigger"
        ),
        pytest.param(
            _v("2.2", settings={"verbosity": "LOUD"}), "settings.verbosity", "'DEBUG'", id="literal"
        ),
        pytest.param(_v("2.2", user=None), "user", "valid dictionary", id="no-user"),
        pytest.param(_v("0.2", sample={}), "sample.name", "field required", id="v0.2-sample"),
        pytest.param(
            _task("0.2", time=None),
            "method[0].time",
            "found converting the payload from 0.2 to 1.0",
            id="v0.2-time",
        ),
        pytest.param(  # a misspelt task key (0.2 took it as a technique's: a newcomer's tour)
            _task("0.2", delay=None, dealy=0.1),
            "method[0].delay",
            "field required; the task has 'dealy': did you mean 'delay'?",
            id="v0.2-typo",
        ),
        pytest.param(
            _task("0.2", technique=None, techniqe="count"),
            "method[0].technique",
            "did you mean 'technique'?",
            id="v0.2-typo-technique",
        ),
        # a typo beside a task's was not said (a newcomer's tour): in the sample, at the top
        pytest.param(
            _v("2.2", sample={"identifer": "s1"}),
            "sample.identifier",
            "field required; the sample has 'identifer': did you mean 'identifier'?",
            id="v2.2-typo-sample",
        ),
        pytest.param(
            _v("2.2", settigns={}),
            "settigns",
            "unknown field: did you mean 'settings'?",
            id="v2.2-typo-top",
        ),
        pytest.param(
            _v("0.2", tomatoo={}), "tomatoo", "unknown field: did you mean 'tomato'?", id="v0.2-top"
        ),
        pytest.param(
            _task("1.0", component_tag=None),
            "method[0].component_tag",
            "field required",
            id="v1.0-tag",
        ),
        # another version's name of a key (a driver author's tour: "unknown field", and
        # "field required" beside it)
        pytest.param(
            _task("1.0", task_params={"param": "1 s"}),
            "method[0].task_params",
            "unknown field: did you mean 'technique_params'? ('task_params' is its name in "
            "other payload versions)",
            id="v1.0-task-params",
        ),
        pytest.param(
            _task("2.1", component_role=None, component_tag="counter"),
            "method[0].component_role",
            "field required; the task has 'component_tag': did you mean 'component_role'? "
            "('component_tag' is its name in other payload versions)",
            id="v2.1-component-tag",
        ),
        pytest.param({"version": "2.2", "method": "all"}, "user", "field required", id="several"),
        pytest.param(
            {k: v for k, v in _v("2.2").items() if k != "user"},
            "user",
            "field required (payload version 2.2 names who runs it: user: {identifier: ",
            id="v2.2-no-user",
        ),
    ],
)
def test_invalid_payloads_name_the_field(doc: dict[str, Any], location: str, words: str) -> None:
    with pytest.raises(PayloadError) as ei:
        parse_payload(doc)
    e = ei.value
    assert e.location == location, str(e)
    assert words in e.reason, str(e)
    assert str(e) == f"{location}: {e.reason}"
    assert "\n" not in str(e)


def test_a_misspelt_required_key_is_said_once() -> None:
    """A review: the typo was said twice, as the key it meant and as an unknown key."""
    doc = _v("1.0")
    doc["sampel"] = doc.pop("sample")
    with pytest.raises(PayloadError) as ei:
        parse_payload(doc)
    assert str(ei.value) == (
        "sample: field required; the payload has 'sampel': did you mean 'sample'?"
    ), str(ei.value)
    # (a 2.2 payload without `method` read "method: input should be an instance of
    # Sequence (got None)": a review)
    doc = _v("2.2")
    doc["methd"] = doc.pop("method")
    with pytest.raises(PayloadError) as ei:
        parse_payload(doc)
    assert str(ei.value) == (
        "method: field required; the payload has 'methd': did you mean 'method'?"
    ), str(ei.value)


def test_several_problems_in_one_line() -> None:
    with pytest.raises(PayloadError) as ei:
        parse_payload({"version": "2.2", "method": "all"})
    assert "more:" in str(ei.value) and "sample: field required" in str(ei.value)


def test_a_payload_the_schema_refuses_says_its_bad_values_too() -> None:
    """A newcomer's tour: a payload without `user` and with `max_duration: -5` was
    refused for `user` alone; the negative duration came one submit later."""
    doc = _v("2.2")
    del doc["user"]
    doc["method"][0].update(max_duration=-5, sampling_interval="0 s")
    with pytest.raises(PayloadError) as ei:
        parse_payload(doc)
    said = str(ei.value)
    assert said.startswith("user: field required"), said
    assert "method[0].max_duration: must not be negative (got -5)" in said, said
    assert "method[0].sampling_interval: must be positive (got 0)" in said, said
    # in the names of the version written (0.2 calls them `time` and `delay`)
    doc = _v("0.2")
    doc["method"][0].update(time=-5)
    doc.pop("sample")
    with pytest.raises(PayloadError) as ei:
        parse_payload(doc)
    assert "method[0].time: must not be negative (got -5)" in str(ei.value), str(ei.value)
    # a duration that is none is said with what the schema says (it alone was said)
    doc = _v("2.2")
    del doc["user"]
    doc["method"][0].update(sampling_interval="1 Hertz")
    with pytest.raises(PayloadError) as ei:
        parse_payload(doc)
    said = str(ei.value)
    assert said.startswith("user: field required"), said
    assert "method[0].sampling_interval: '1 Hertz' is not a duration" in said, said
    # ... and where the schema takes the rest, every value's problem at once (a review:
    # "1 Hertz" alone, then the negative duration; a negative one, then a zero interval)
    for update, words in (
        (
            {"sampling_interval": "1 Hertz", "max_duration": -5},
            ["sampling_interval: '1 Hertz' is not a duration", "max_duration: must not be"],
        ),
        (
            {"max_duration": "-5 min", "sampling_interval": 0},
            ["max_duration: must not be negative (got -300)", "interval: must be positive"],
        ),
    ):
        doc = _v("2.2")
        doc["method"][0].update(update)
        with pytest.raises(PayloadError) as ei:
            parse_payload(doc)
        assert all(w in str(ei.value) for w in words), (update, str(ei.value))


def test_not_a_mapping() -> None:
    with pytest.raises(PayloadError, match="a payload is a mapping, not a list"):
        parse_payload([1, 2])  # type: ignore[arg-type]


def test_read_errors_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("version: '2.2'\nmethod:\n  - a: 1\n  b: 2\n")
    with pytest.raises(PayloadError) as ei:
        read_payload_file(bad)
    assert ei.value.file == str(bad)
    assert ei.value.location is not None and ei.value.location.startswith("line 4")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"version": "2.2",}')
    # (the column is the json module's: 19 up to Python 3.12, the comma's 18 from 3.13)
    with pytest.raises(PayloadError, match=r"bad\.json: line 1, column 1[89]: invalid JSON"):
        read_payload_file(bad_json)
    with pytest.raises(PayloadError, match="file not found"):
        read_payload_file(tmp_path / "none.yml")
    (tmp_path / "list.yml").write_text("- 1\n")
    with pytest.raises(PayloadError, match="a payload is a mapping, not a list"):
        read_payload_file(tmp_path / "list.yml")


def test_reading_imports_neither_pint_nor_dgbowl() -> None:
    code = (
        "import sys, tomato_mqtt.config.payloads as p\n"
        f"d = p.read_payload_file({str(CONFIG / 'counter_v2.2.yml')!r})\n"
        "assert d['version'] == '2.2'\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('pint', 'dgbowl_schemas')]\n"
        "assert not bad, bad\n"
        "p.parse_payload(d)\n"
        "assert 'dgbowl_schemas' in sys.modules\n"
        # durations as numbers: no pint (~22 MB with numpy) in the scheduler for them
        "assert 'pint' not in sys.modules\n"
        # ... nor for a plain duration as text
        "d['method'][0]['max_duration'] = '1 min'\n"
        "assert p.parse_payload(d).method[0].max_duration == 60.0\n"
        "assert 'pint' not in sys.modules\n"
        # pint reads any other
        "d['method'][0]['max_duration'] = '0.5 week'\n"
        "assert p.parse_payload(d).method[0].max_duration == 302400.0\n"
        "assert 'pint' in sys.modules\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize(
    ("method", "where", "why"),
    [
        ([], "method", "the payload has no tasks"),
        (
            [
                {
                    "component_role": "c",
                    "technique_name": "count",
                    "max_duration": 0.05,
                    "sampling_interval": 0.1,
                }
            ],
            "method[0].max_duration",
            "would take no data point: max_duration (0.05 s) is shorter than "
            "sampling_interval (0.1 s)",
        ),
    ],
)
def test_payloads_that_cannot_produce_data_are_refused(
    method: list[dict[str, Any]], where: str, why: str
) -> None:
    doc = {"version": "2.2", "sample": {"identifier": "s"}, "user": {"identifier": "u"}}
    with pytest.raises(PayloadError) as ei:
        parse_payload({**doc, "method": method})
    assert ei.value.location == where and why in ei.value.reason


def test_yaml_aliases_may_repeat_parts_but_not_expand_without_bound(tmp_path: Path) -> None:
    """Aliases are fine for a payload's repeated parts; nested ones that expand to
    millions of values (a few hundred bytes) are refused before anything walks them."""
    ok = tmp_path / "anchors.yml"
    ok.write_text(
        "version: '2.2'\nuser: {identifier: u}\nsample: {identifier: s}\nmethod:\n"
        "  - &t {component_role: counter, technique_name: count,\n"
        "        max_duration: 1, sampling_interval: 0.1}\n"
        "  - *t\n  - *t\n"
    )
    assert len(parse_payload(read_payload_file(ok)).method) == 3
    levels = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    levels += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 7)]
    bomb = tmp_path / "bomb.yml"
    bomb.write_text("sample:\n" + "".join(f"  {line}\n" for line in levels))
    with pytest.raises(PayloadError, match="expand to more than 100,000 values") as e:
        read_payload_file(bomb)
    assert str(bomb) in str(e.value)
    # a big document without aliases is not counted (a review: a '*' in a comment did)
    big = "a: [" + ",".join(str(i) for i in range(150_000)) + "]  # 3 * 50,000 values\n"
    assert len(parse_document(big)["a"]) == 150_000


def test_pure_python_yaml_refuses_the_same_documents(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where PyYAML was built without libyaml, its Python loader reads the documents: the
    alias bomb and the deep nesting get the same plain answers as with libyaml's."""
    import yaml

    from tomato_mqtt import documents

    monkeypatch.setattr(documents, "_LOADER", documents.make_loader(yaml.SafeLoader))
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 7)]
    with pytest.raises(DocumentError, match="expand to more than 100,000 values"):
        parse_document("\n".join(levels))
    with pytest.raises(DocumentError, match="nested too deeply"):
        parse_document("[" * 5000 + "]" * 5000)
    assert parse_document("a: &x [1, 2]\nb: *x\n") == {"a": [1, 2], "b": [1, 2]}


_HEAD = (
    'version: "2.2"\nsample: {identifier: s}\nuser: {identifier: u}\nmethod:\n'
    "  - component_role: counter\n"
    "    technique_name: count\n    sampling_interval: 0.1\n    max_duration: 1\n"
)


def _merge_bomb() -> str:  # 29 kB: 2,000 mappings that each merge the same 1,000 keys
    keys = ", ".join(f"k{i}: 1" for i in range(1000))
    return _HEAD + f"    task_params: {{a: &a {{{keys}}}, b: [{', '.join(['{<<: *a}'] * 2000)}]}}\n"


def _string_bomb() -> str:  # 208 kB: one alias to a 200 kB string, 2,000 times (400 MB)
    text = "x" * 200_000
    return _HEAD + f"    task_params: {{a: &a '{text}', b: [{', '.join(['*a'] * 2000)}]}}\n"


@pytest.mark.parametrize("loader", ["libyaml", "python"])
@pytest.mark.parametrize(
    ("text", "where", "said"),
    [
        (_merge_bomb(), "method[0].task_params.b[100]",
         "its merge keys (<<) copy more than 100,000 key-value pairs"),
        (_string_bomb(), None, "expand to more than 100,000 values or 1,000,000 characters"),
        (_HEAD + "    task_params: {x: !!pairs [{k: .nan}], y: !!binary aGVsbG8=}",
         "method[0].task_params.x", "!!pairs is not a value tomato-mqtt takes"),
        (_HEAD + "    task_params: !!omap [{x: .inf}]", "method[0].task_params",
         "!!omap is not a value"),
        (_HEAD + "    task_params: !!set {a, b}", "method[0].task_params", "!!set is not"),
        (_HEAD + "    task_params: !thing {a: 1}", "method[0].task_params",
         "the tag !thing is not a value"),
        (_HEAD + "    task_params: &a !!pairs [{x: *a}]", "method[0].task_params", "!!pairs"),
        (_HEAD + "    task_params: &a {x: [*a]}", "method[0].task_params.x[0]",
         "an alias (*name) refers to itself"),
        (_HEAD + "    task_params: &a {<<: *a}", "method[0].task_params.<<", "refers to itself"),
    ],
    ids=["merge-keys", "long-string", "pairs", "omap", "set", "local-tag", "self-pairs",
         "self", "self-merge"],
)  # fmt: skip
def test_what_aliases_and_tags_could_hide_is_refused_before_it_is_built(
    monkeypatch: pytest.MonkeyPatch, loader: str, text: str, where: str | None, said: str
) -> None:
    """Found by a review of the libyaml loader: merge keys (``<<: *a``) and an alias to a
    long string were not counted against the bound on aliases (29 kB became 18 MB of JSON;
    208 kB, 400 MB); ``!!pairs`` and ``!!omap`` became tuples, which no check entered
    (NaN, binary and aliases inside passed, 681 bytes became 10.5 MB of JSON), and a
    self-referencing one was an "internal error". The node graph is now checked before
    anything is built: each refused plainly, naming where, with either loader."""
    from tomato_mqtt import documents

    if loader == "python":
        monkeypatch.setattr(documents, "_LOADER", documents.make_loader(yaml.SafeLoader))
    with pytest.raises(PayloadError) as ei:
        read_payload_text(text, "p.yml")  # the scheduler, a dashboard upload
    assert (ei.value.location, said in ei.value.reason) == (where, True), str(ei.value)


def _nested_merges(levels: int, keys: int) -> str:  # each level copies all the keys
    inner = "{" + ", ".join(f"k{i}: 0" for i in range(keys)) + "}"
    return "a: " + "{<<: " * levels + inner + "}" * levels + "\n"


@pytest.mark.parametrize("loader", ["libyaml", "python"])
@pytest.mark.parametrize(
    ("text", "where", "said"),
    [
        (_nested_merges(99, 10_000), "a" + ".<<" * 88,  # where 100,000 were copied
         "its merge keys (<<) copy more than 100,000 key-value pairs"),
        ("a: 1" + ":59" * 3000 + "\n", "line 1, column 4", "more than 4300 digits"),
        ("a: 0x" + "f" * 4000 + "\n", "line 1, column 4", "more than 4300 digits"),
        ("a: 0b" + "1" * 14_001 + "\n", "line 1, column 4", "more than 4300 digits"),
        ("a: !!int ''\n", "line 1, column 4", "'' is not a valid int"),
        ("a: !!float ''\n", "line 1, column 4", "'' is not a valid float"),
        ("a: !!bool foo\n", "line 1, column 4", "'foo' is not a valid bool"),
        ("a: !!timestamp foo\n", "line 1, column 4", "'foo' is not a valid timestamp"),
        ("a: 2001-13-45\n", "line 1, column 4", "'2001-13-45' is not a valid timestamp"),
        ("a: 1" + ":59" * 200 + ".5\n", "line 1, column 4", "is not a valid float"),
        ("a: {2001-01-01: 1}\n", "a", "the key datetime.date(2001, 1, 1) is not text"),
        ("a: {? !!binary aGk=\n  : 1}\n", "a", "the key binary data (!!binary) is not text"),
        ('"x\\ny\\x1b[2J": !!set {}\n', "x\\ny\\x1b[2J", "!!set is not a value"),
    ],
    ids=["nested-merges", "sexagesimal", "hex", "binary", "empty-int", "empty-float",
         "bool", "timestamp", "bad-date", "float-overflow", "date-key", "binary-key",
         "control-key"],
)  # fmt: skip
def test_values_yaml_builds_badly_are_refused_plainly_where_they_are(
    monkeypatch: pytest.MonkeyPatch, loader: str, text: str, where: str, said: str
) -> None:
    """Found by a review of the node-graph check: 900 nested merge keys of a large mapping
    (no alias, no tag) took 42 s of CPU to copy; ``1:59:59...`` (sexagesimal) 1 MB long
    took 32 s and then, as ``0x``/``0b`` numbers of any length, was a number no JSON can
    carry ("internal error"); a scalar that is not what its tag says raised IndexError,
    KeyError, AttributeError or OverflowError ("internal error"); a bad date was "a
    number with more than 4300 digits"; a date or binary key broke the scheduler's JSON;
    a key's control characters went to the user's terminal as they were."""
    from tomato_mqtt import documents
    from tomato_mqtt.documents import DocumentError

    if loader == "python":
        monkeypatch.setattr(documents, "_LOADER", documents.make_loader(yaml.SafeLoader))
    with pytest.raises(DocumentError) as ei:
        parse_document(text)
    assert (ei.value.location, said in ei.value.reason) == (where, True), str(ei.value)


def test_what_aliases_add_is_bounded_not_the_whole_document() -> None:
    """One alias in a long document counted the whole document against the bound on what
    aliases expand to (a review); ``=`` as a key is text, whether the document has a tag
    elsewhere or not; 100 levels of lists are fine with or without one."""
    long = "a: &x 1\nb: *x\nc: [" + "1," * 120_000 + "]\n"
    assert len(parse_document(long)["c"]) == 120_000
    assert parse_document("=: 1\nb: !!str 2\n") == {"=": 1, "b": "2"}
    deep = "y: " + "[" * 99 + "1" + "]" * 99 + "\n"
    big = "9" * 308  # the longest integer a float holds
    assert parse_document(f"a: {big}\n") == {"a": int(big)}
    # the longest Python converts (a review: 4215 digits were refused as more than 4300),
    # refused as no float holds it (a 400-digit integer stopped every pipeline's validation)
    with pytest.raises(DocumentError, match="^a: an integer beyond ±1.8e\\+308"):
        parse_document("a: " + "9" * 4300 + "\n")
    tagged = parse_document(deep + "z: !!str x\n")
    assert parse_document(deep)["y"] == tagged["y"] and tagged["z"] == "x"


def test_aliases_that_expand_to_little_are_fine_also_as_merge_keys() -> None:
    """The bound counts what aliases expand to, so a payload's shared parts stay usable."""
    text = _HEAD + (
        "    task_params: &p {a: 1, b: 'some text'}\n"
        "  - {component_role: counter, technique_name: count, sampling_interval: 0.1,\n"
        "     max_duration: 1, task_params: {<<: *p, b: other}}\n"
    )
    payload = parse_payload(read_payload_text(text, "p.yml"))
    assert [t.task_params for t in payload.method] == [
        {"a": 1, "b": "some text"},
        {"a": 1, "b": "other"},
    ]


@pytest.mark.parametrize("levels", [101, 300, 999])
def test_a_payload_nested_past_the_depth_limit_is_refused_plainly(levels: int) -> None:
    """Nested 256-999 levels (below libyaml's limit), a payload passed parsing and failed
    in pydantic's serializer: "internal error". Refused plainly now, as YAML, as JSON and
    as a script's parsed payload."""
    inner = "[" * levels + "]" * levels
    text = _HEAD + f"    task_params: {{x: {inner}}}\n"
    doc = yaml.safe_load(_HEAD)
    doc["method"][0]["task_params"] = {"x": "X"}
    as_json = json.dumps(doc).replace('"X"', inner)
    nested: list[Any] = []
    for _ in range(levels - 1):
        nested = [nested]
    doc["method"][0]["task_params"] = {"x": nested}
    parsed = doc
    for read in (
        lambda: read_payload_text(text, "p.yml"),
        lambda: read_payload_text(as_json, "p.json"),
        lambda: parse_payload(parsed),
    ):
        with pytest.raises(PayloadError, match="nested too deeply to be a payload"):
            read()


@pytest.mark.parametrize("json_only", [False, True])
def test_a_document_nested_too_deeply_is_refused_plainly(json_only: bool) -> None:
    """[[[[...]]]] a few thousand deep made PyYAML's composer (and json) recurse out of
    the stack: the submitter got "internal error: RecursionError" (found by a review)."""
    from tomato_mqtt.documents import DocumentError

    text = "[" * 5000 + "]" * 5000
    with pytest.raises(DocumentError, match="nested too deeply"):
        parse_document(text, json_only=json_only)


@pytest.mark.parametrize(
    ("text", "where", "said"),
    [
        ("max_duration: .nan", "method[0].max_duration", "nan is not a value tomato-mqtt takes"),
        ("max_duration: 1\n    task_params: {x: .inf}", "method[0].task_params.x", "inf is not"),
        ("max_duration: 1\n    task_params: {x: !!binary aGVsbG8=}", "method[0].task_params.x",
         "binary data (!!binary) is not a value tomato-mqtt takes"),
        ("max_duration: " + "9" * 5000, "line 8, column 19",
         "a number with more than 4300 digits"),
        # it was taken, and every pipeline's validation said "OverflowError: int too
        # large to convert to float": queued for ever
        ("max_duration: 1\n    task_params: {max: 1" + "0" * 400 + "}",
         "method[0].task_params.max", "an integer beyond ±1.8e+308 is out of range"),
    ],
)  # fmt: skip
def test_values_json_cannot_carry_are_refused_naming_where(
    tmp_path: Path, text: str, where: str, said: str
) -> None:
    """Found by a security audit: NaN as max_duration said "input should be a valid
    number (got None)", NaN and infinity in task_params became null, ``!!binary`` the
    text "b'hello'", and a 5000-digit number Python's own message, no file or place."""
    doc = (
        'version: "2.2"\nsample: {identifier: s}\nuser: {identifier: u}\nmethod:\n'
        "  - component_role: counter\n"
        f"    technique_name: count\n    sampling_interval: 0.1\n    {text}\n"
    )
    (tmp_path / "p.yml").write_text(doc)
    for read in (
        lambda: read_payload_file(tmp_path / "p.yml"),  # ketchup submit
        lambda: read_payload_text(doc, "p.yml"),  # the scheduler, a dashboard upload
    ):
        with pytest.raises(PayloadError) as ei:
            read()
        assert (ei.value.location, said in ei.value.reason) == (where, True), str(ei.value)
    if where.startswith("method") and "binary" not in said:  # a script's parsed payload
        parsed = yaml.safe_load(doc)
        with pytest.raises(PayloadError) as ei:
            parse_payload(parsed)
        assert ei.value.location == where and said in ei.value.reason, str(ei.value)


def test_0_1_upgrade_leaves_sys_stdout_to_other_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scheduler parses a 0.1 payload in its warm-up thread, beside threads that print
    (or, in tests/upstream, a CliRunner that swaps sys.stdout for a CLI call): the upgrade
    must not rebind sys.stdout. With contextlib.redirect_stdout it did, and at its end
    put back the stream it had found, under a CliRunner that had started meanwhile
    (test_99_psutil: "ValueError: I/O operation on closed file")."""
    import io
    import threading

    from dgbowl_schemas.tomato import payload_0_1

    inside, go = threading.Event(), threading.Event()
    dump = payload_0_1.Payload.model_dump

    def held(self: Any, *args: Any, **kwargs: Any) -> Any:  # the upgrade, half done
        inside.set()
        assert go.wait(10)
        return dump(self, *args, **kwargs)

    monkeypatch.setattr(payload_0_1.Payload, "model_dump", held)
    doc = read_payload_file(CONFIG / "counter_v0.1.yml")
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(parse_payload(doc)))
    t.start()
    try:
        assert inside.wait(10)
        other = io.StringIO()  # another thread's stream, set while the upgrade runs
        monkeypatch.setattr(sys, "stdout", other)
    finally:
        go.set()
        t.join(10)
    assert sys.stdout is other
    assert other.getvalue() == ""  # and the 0.1 payload was not printed on it
    assert out and out[0].version == "2.2"


@pytest.mark.parametrize(
    ("version", "task", "said"),
    [
        ("0.2", {"time": 1.0, "delay": -1}, "method[0].delay: must be positive (got -1)"),
        (
            "0.2",
            {"time": 0.5, "delay": 1.0},
            "method[0].time: the task would take no data point: time (0.5 s) is shorter than"
            " delay (1 s)",
        ),
        ("0.1", {"time": -2, "delay": 0.1}, "method[0].time: must not be negative (got -2)"),
        (  # the biologic spelling of 0.2's interval (a review)
            "0.2",
            {"time": 1.0, "record_every_dt": 0},
            "method[0].record_every_dt: must be positive (got 0)",
        ),
        (
            "1.0",
            {"max_duration": 1.0, "sampling_interval": -1},
            "method[0].sampling_interval: must be positive (got -1)",
        ),
    ],
)
def test_a_refusal_names_the_field_as_the_payload_s_version_spells_it(
    version: str, task: dict[str, Any], said: str
) -> None:
    """A newcomer's tour: `delay: -1` in a 0.2 payload was refused as
    "method[0].sampling_interval: must be positive": a name the user never wrote."""
    if version in ("0.1", "0.2"):
        method = [{"device": "counter", "technique": "count", **task}]
    else:
        method = [{"component_tag": "counter", "technique_name": "count", **task}]
    doc = {"version": version, "sample": {"name": "s"}, "method": method}
    with pytest.raises(PayloadError) as e:
        parse_payload(doc)
    assert str(e.value) == said


def test_a_yaml_syntax_error_says_where_its_construct_began(tmp_path: Path) -> None:
    """The parser gives up a line after an unclosed ``[``: the message said only where it
    gave up (line 4 for a mistake on line 3: a newcomer's tour); it now also says where
    the flow sequence began."""
    bad = tmp_path / "bad.yml"
    bad.write_text('version: "2.2"\nsample:\n  name: [oops\nmethod:\n  - component_tag: c\n')
    with pytest.raises(PayloadError) as e:
        read_payload_file(bad)
    assert str(e.value) == (
        f"{bad}: line 4, column 7: invalid YAML: did not find expected ',' or ']' "
        "(while parsing a flow sequence that begins at line 3, column 9)"
    )


def test_a_tab_in_yaml_is_named() -> None:
    """A newcomer's tour: a tab from an editor read "found character that cannot start
    any token", the character unnamed (libyaml does not name it)."""
    from tomato_mqtt.documents import DocumentError, parse_document

    with pytest.raises(DocumentError) as e:
        parse_document('version: "0.2"\nsample:\n\tname: x\n')
    assert "line 3, column 1" in str(e.value) and "a tab there" in str(e.value), e.value
    with pytest.raises(DocumentError) as e:  # another mistake: no word of tabs
        parse_document("a: [1\nb: 2\n")
    assert "tab" not in str(e.value), e.value


@pytest.mark.parametrize(
    ("name", "said"),
    [
        (
            "broken_duration_v2.0.yml",
            "method[0].max_duration: input should be a valid number, unable to parse string "
            "as a number (got 'abc')",
        ),
        (
            "broken_duration_v2.2.yml",
            "method[0].max_duration: 'abc' is not a duration: give seconds (5, 0.5) or a "
            "number with a time unit (10 s, 2 min, 1.5 h)",
        ),
    ],
)
def test_the_broken_payloads_of_cli_md_say_what_it_shows(name: str, said: str) -> None:
    """docs/cli.md's `ketchup submit` examples name these files and their refusals (it
    named files that did not exist: a newcomer's tour)."""
    with pytest.raises(PayloadError) as ei:
        parse_payload(read_payload_file(CONFIG / name))
    assert str(ei.value) == said, str(ei.value)
    assert f"payload refused: config/{name}: {said}" in (CONFIG.parent / "docs/cli.md").read_text()


def test_a_2_2_payload_without_its_user_is_told_what_to_write() -> None:
    """A driver author's tour: "user: field required", nothing more. The submitter's name
    is given (not the scheduler's own login: a review); `name` is another version's key
    of the sample only."""
    doc = {k: v for k, v in _v("2.2").items() if k != "user"}
    with pytest.raises(PayloadError) as ei:
        parse_payload(doc, user="alice")
    assert ei.value.reason.endswith("who runs it: user: {identifier: alice})"), ei.value
    with pytest.raises(PayloadError) as ei:
        parse_payload({**doc, "user": {"name": "alice"}}, user="alice")
    assert str(ei.value) == "user.identifier: field required", ei.value


@pytest.mark.parametrize(
    "text",
    ["5", "0.5", " 2 min", "10 s", "0.2 s", "1.5 h", "1.5 hours", "3 days", "250 ms", "-1 s",
     "1e3 ms", ".5 min", "2 minutes", "1 hr", "7 seconds", "1 d", "12sec", "5 kg", "1 m",
     "abc", "1 s 2", "PT5S", "2 µs", "٣ s"],
)  # fmt: skip
def test_a_text_duration_reads_as_pint_reads_it(text: str) -> None:
    """Plain durations ("0.2 s", "5 min") are read without pint (its first use took the
    scheduler +17 MB for good, with numpy: a memory hunt); each reads as pint reads it,
    and what pint refuses is refused with the same words. (A number with leading zeros
    is the exception: pint reads "05 min" as 0, here it is 300 s, below.)"""
    import pint

    from tomato_mqtt.config.payloads import _seconds

    try:
        q = pint.Quantity(text)
        want: float | str = float(q.m) if q.dimensionless else float(q.to("seconds").m)
    except Exception:
        want = "refused"
    try:
        got: float | str = _seconds(text, "here")
    except PayloadError:
        got = "refused"
    assert got == pytest.approx(want) if isinstance(want, float) else got == want, (got, want)


def test_a_number_with_leading_zeros_is_read_as_written() -> None:
    """pint reads "05 min" as 0 s (a review); it is 300 s, and "007" 7 s."""
    from tomato_mqtt.config.payloads import _seconds

    assert (_seconds("05 min", "x"), _seconds("010 s", "x"), _seconds("007", "x")) == (
        300.0,
        10.0,
        7.0,
    )


def test_a_follow_s_expected_duration_reads_durations_as_the_scheduler() -> None:
    """The client library's progress read "1 d" and "1 hr" as 1 s and "2min" as 0 (a
    review): it reads them as the scheduler does; one only pint reads counts 0."""
    from tomato_mqtt.client.progress import expected_duration

    def task(d: object, role: str = "a") -> dict[str, object]:
        return {"component_role": role, "max_duration": d}

    assert expected_duration({"method": [task("1 d"), task("1 hr"), task("2min")]}) == 90120.0
    assert expected_duration({"method": [task("0.5 week"), task(5), task("250 ms", "b")]}) == 5.0


def test_a_plain_text_duration_loads_no_pint() -> None:
    """A payload with "0.2 s" durations is parsed without importing pint (in a fresh
    interpreter: this one may have it already)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from tomato_mqtt.config.payloads import _seconds\n"
        "assert _seconds('0.2 s', 'x') == 0.2 and _seconds('5 min', 'x') == 300.0\n"
        "print('pint' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out
