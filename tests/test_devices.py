"""The devices file: tomato's files load, wildcards expand, every mistake is named."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from tomato_mqtt.config.devices import Layout, load_devices
from tomato_mqtt.errors import ConfigError

CONFIG = Path(__file__).resolve().parents[1] / "config"

# tomato's tests/common/devices_*.json, verbatim
TOMATO_COUNTER = {
    "devices": [
        {
            "name": "dev-counter",
            "driver": "example_counter",
            "address": "example-addr",
            "channels": ["1", "2", "3", "4"],
            "pollrate": 2,
        }
    ],
    "pipelines": [
        {
            "name": "pip-counter-*",
            "devices": [{"role": "counter", "device": "dev-counter", "channel": "each"}],
        }
    ],
}
TOMATO_MULTIDEV = {
    "devices": [
        {
            "name": "dev-counter-1",
            "driver": "example_counter",
            "address": "example-addr-1",
            "channels": ["1", "2", "3", "4"],
            "pollrate": 2,
        },
        {
            "name": "dev-counter-2",
            "driver": "example_counter",
            "address": "example-addr-2",
            "channels": ["5", "6", "7", "8"],
            "pollrate": 1,
        },
    ],
    "pipelines": [
        {
            "name": "pip-counter",
            "devices": [{"role": "counter", "device": "dev-counter-1", "channel": "1"}],
        },
        {
            "name": "pip-multidev",
            "devices": [
                {"role": "counter-1", "device": "dev-counter-1", "channel": "4"},
                {"role": "counter-2", "device": "dev-counter-2", "channel": "5"},
            ],
        },
    ],
}
TOMATO_PSUTIL = {
    "devices": [
        {
            "name": "dev-counter",
            "driver": "example_counter",
            "address": "counter-addr",
            "channels": ["1"],
            "pollrate": 1,
        },
        {
            "name": "dev-psutil",
            "driver": "psutil",
            "address": "psutil-addr",
            "channels": ["10"],
            "pollrate": 1,
        },
    ],
    "pipelines": [
        {
            "name": "pip-multidev",
            "devices": [
                {"role": "counter", "device": "dev-counter", "channel": "1"},
                {"role": "psutil", "device": "dev-psutil", "channel": "10"},
            ],
        }
    ],
}


def write(tmp_path: Path, text: str, name: str = "devices.yml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return p


def roles(layout: Layout) -> dict[str, dict[str, str]]:
    return {n: dict(p.roles) for n, p in layout.pipelines.items()}


def test_tomato_counter_json_expands_the_wildcard(tmp_path: Path) -> None:
    layout = load_devices(write(tmp_path, json.dumps(TOMATO_COUNTER), "devices.json"))
    assert roles(layout) == {
        f"pip-counter-{ch}": {"counter": f"example_counter:(example-addr,{ch})"} for ch in "1234"
    }
    assert list(layout.pipelines) == [
        "pip-counter-1",
        "pip-counter-2",
        "pip-counter-3",
        "pip-counter-4",
    ]
    c = layout.components["example_counter:(example-addr,3)"]
    assert (c.device, c.driver, c.address, c.channel, c.pollrate, c.node) == (
        "dev-counter",
        "example_counter",
        "example-addr",
        "3",
        2.0,
        "local",
    )
    assert layout.drivers == {"example_counter"}


def test_tomato_multidev_json(tmp_path: Path) -> None:
    layout = load_devices(write(tmp_path, json.dumps(TOMATO_MULTIDEV), "devices.json"))
    assert roles(layout) == {
        "pip-counter": {"counter": "example_counter:(example-addr-1,1)"},
        "pip-multidev": {
            "counter-1": "example_counter:(example-addr-1,4)",
            "counter-2": "example_counter:(example-addr-2,5)",
        },
    }
    # every device is listed (as tomato's devs), with all its channels
    assert sorted(layout.devices) == ["dev-counter-1", "dev-counter-2"]
    assert layout.devices["dev-counter-2"].channels == ["5", "6", "7", "8"]
    assert layout.devices["dev-counter-2"].node == "local"
    # as tomato: only the channels pipelines use are components (3 of the 8 declared)
    assert sorted(layout.components) == [
        "example_counter:(example-addr-1,1)",
        "example_counter:(example-addr-1,4)",
        "example_counter:(example-addr-2,5)",
    ]
    assert layout.pipelines_of_component("example_counter:(example-addr-1,2)") == []
    assert layout.pipelines_of_component("example_counter:(example-addr-1,4)") == ["pip-multidev"]


def test_tomato_psutil_json(tmp_path: Path) -> None:
    layout = load_devices(write(tmp_path, json.dumps(TOMATO_PSUTIL), "devices.json"))
    assert roles(layout) == {
        "pip-multidev": {
            "counter": "example_counter:(counter-addr,1)",
            "psutil": "psutil:(psutil-addr,10)",
        }
    }
    assert layout.drivers == {"example_counter", "psutil"}


@pytest.mark.parametrize(
    ("yml", "doc"),
    [
        ("devices_counter.yml", TOMATO_COUNTER),
        ("devices_multidev.yml", TOMATO_MULTIDEV),
        ("devices_psutil.yml", TOMATO_PSUTIL),
    ],
)
def test_example_yaml_files_match_tomatos_json(tmp_path: Path, yml: str, doc: object) -> None:
    from_yaml = load_devices(CONFIG / yml)
    from_json = load_devices(write(tmp_path, json.dumps(doc), "devices.json"))
    assert roles(from_yaml) == roles(from_json)
    assert set(from_yaml.components) == set(from_json.components)


def test_default_example_is_what_init_writes() -> None:
    default = load_devices(CONFIG / "devices_default.yml")
    packaged = Path(__file__).resolve().parents[1] / "tomato_mqtt" / "config" / "devices.yml"
    assert default == load_devices(packaged)
    assert roles(default) == {"pip-counter": {"counter": "example_counter:(example-addr,1)"}}


def test_numbers_in_yaml_become_strings(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        """\
        devices:
          - {name: d, driver: drv, address: 5, channels: [1, 2]}
        pipelines:
          - {name: p, devices: [{role: r, device: d, channel: 2}]}
        """,
    )
    layout = load_devices(p)
    assert roles(layout) == {"p": {"r": "drv:(5,2)"}}
    assert layout.components["drv:(5,2)"].channel == "2"
    assert "drv:(5,1)" not in layout.components  # in no pipeline: no component (as tomato)


def test_wildcard_with_a_shared_fixed_component(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        """\
        devices:
          - {name: pots, driver: pot, address: a, channels: ["1", "2"]}
          - {name: oven, driver: heat, address: b, channels: ["0"]}
        pipelines:
          - name: cell-*
            devices:
              - {role: potentiostat, device: pots, channel: each}
              - {role: oven, device: oven, channel: "0"}
        """,
    )
    assert roles(load_devices(p)) == {
        "cell-1": {"potentiostat": "pot:(a,1)", "oven": "heat:(b,0)"},
        "cell-2": {"potentiostat": "pot:(a,2)", "oven": "heat:(b,0)"},
    }


def test_node_defaults_to_the_local_node(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        """\
        devices:
          - {name: here, driver: d, address: a, channels: ["1"]}
          - {name: there, driver: d, address: b, channels: ["1", "2"], node: pc-7}
        pipelines:
          - {name: p1, devices: [{role: r, device: here, channel: "1"}]}
          - {name: q-*, devices: [{role: r, device: there, channel: each}]}
        """,
    )
    layout = load_devices(p, default_node="bench-pc")
    assert layout.components["d:(a,1)"].node == "bench-pc"
    assert layout.components["d:(b,1)"].node == "pc-7"
    assert [c.name for c in layout.components_of_node("pc-7")] == ["d:(b,1)", "d:(b,2)"]
    assert [c.name for c in layout.components_of_node("bench-pc")] == ["d:(a,1)"]
    assert layout.components_of_node("nowhere") == []
    assert layout.nodes == {"bench-pc", "pc-7"}
    assert load_devices(p).components["d:(a,1)"].node == "local"


BASE_DEVICES = """\
devices:
  - name: dev-counter
    driver: example_counter
    address: example-addr
    channels: ["1", "2"]
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            BASE_DEVICES + "pipelines:\n  - name: pip-counter\n    devices:\n"
            "      - {role: counter, device: dev-x, channel: '1'}\n",
            "pipelines[0] 'pip-counter' devices[0]: unknown device 'dev-x' (known: dev-counter)",
            id="unknown-device",
        ),
        pytest.param(
            BASE_DEVICES + "pipelines:\n  - name: p\n    devices:\n"
            "      - {role: counter, device: dev-counter, channel: '5'}\n",
            "pipelines[0] 'p' devices[0]: channel '5' is not a channel of device "
            "'dev-counter' (channels: 1, 2)",
            id="channel-not-on-device",
        ),
        pytest.param(
            BASE_DEVICES + "  - {name: dev-counter, driver: x, address: y, channels: ['1']}\n",
            "devices[1] 'dev-counter': duplicate device name (also devices[0])",
            id="duplicate-device",
        ),
        pytest.param(
            BASE_DEVICES + "pipelines:\n"
            "  - {name: p, devices: [{role: a, device: dev-counter, channel: '1'}]}\n"
            "  - {name: p, devices: [{role: a, device: dev-counter, channel: '2'}]}\n",
            "pipelines[1] 'p': duplicate pipeline name 'p' (also from pipelines[0] 'p')",
            id="duplicate-pipeline",
        ),
        pytest.param(
            BASE_DEVICES + "pipelines:\n"
            "  - {name: p-1, devices: [{role: a, device: dev-counter, channel: '1'}]}\n"
            "  - {name: p-*, devices: [{role: a, device: dev-counter, channel: each}]}\n",
            "pipelines[1] 'p-*': duplicate pipeline name 'p-1' (also from pipelines[0] 'p-1')",
            id="wildcard-clashes-with-a-pipeline",
        ),
        pytest.param(
            BASE_DEVICES + "pipelines:\n  - name: p\n    devices:\n"
            "      - {role: a, device: dev-counter, channel: '1'}\n"
            "      - {role: a, device: dev-counter, channel: '2'}\n",
            "pipelines[0] 'p' devices[1]: duplicate role 'a'",
            id="duplicate-role",
        ),
        pytest.param(
            BASE_DEVICES + "pipelines:\n  - name: p\n    devices:\n"
            "      - {role: a, device: dev-counter, channel: each}\n",
            "pipelines[0] 'p' devices[0]: channel 'each' is only allowed in a wildcard "
            "pipeline (a name ending in '*', e.g. 'p-*')",
            id="each-outside-wildcard",
        ),
        pytest.param(
            BASE_DEVICES + "pipelines:\n  - name: p-*\n    devices:\n"
            "      - {role: a, device: dev-counter, channel: '1'}\n",
            "pipelines[0] 'p-*': a wildcard pipeline needs an entry with channel 'each' "
            "(one pipeline is made per channel of that device)",
            id="wildcard-without-each",
        ),
        pytest.param(
            BASE_DEVICES + "pipelines:\n  - name: p-*-x\n    devices:\n"
            "      - {role: a, device: dev-counter, channel: each}\n",
            "pipelines[0] 'p-*-x': '*' may only end a pipeline name, as in 'pip-*'",
            id="star-inside-name",
        ),
        pytest.param(
            BASE_DEVICES + "  - {name: dev-twin, driver: example_counter, address: example-addr,"
            " channels: ['2', '3']}\n",
            "devices[1] 'dev-twin': channel '2' gives component example_counter:(example-addr,2),"
            " which devices[0] 'dev-counter' gives too (same driver, address and channel)",
            id="duplicate-component",
        ),
        pytest.param(
            BASE_DEVICES + "pipelines:\n  - name: p\n    devices:\n"
            "      - {role: a, device: dev-counter, channel: '1'}\n"
            "      - {role: b, device: dev-counter, channel: '1'}\n",
            "pipelines[0] 'p' devices[1]: channel '1' of device 'dev-counter' is already in "
            "role 'a' of this pipeline",
            id="component-twice-in-a-pipeline",
        ),
        pytest.param(
            BASE_DEVICES + "pipelines:\n  - name: p\n    devices:\n"
            "      - {role: a/b, device: dev-counter, channel: '1'}\n",
            "pipelines[0] 'p' devices[0].role: 'a/b' cannot contain '/': the role names the "
            "component's group in the results file, where '/' would nest groups (use e.g. "
            "'a-b')",
            id="slash-in-role",
        ),
        pytest.param(
            BASE_DEVICES + "    pollrate: fast\n",
            "devices[0] 'dev-counter' pollrate: input should be a valid number, unable to "
            "parse string as a number (got 'fast')",
            id="bad-type",
        ),
        pytest.param(  # a misspelt key is ignored (as tomato does), and named with
            # the field it left missing
            "devices:\n  - {name: d, driver: x, address: y, chanels: ['1']}\n",
            "devices[0] 'd' channels: field required (unknown keys: devices[0] 'd': 'chanels')",
            id="misspelt-key",
        ),
        pytest.param(
            "devices:\n  - {name: d, driver: x, address: y, channels: ['1', '1']}\n",
            "devices[0] 'd' channels: channel '1' is listed twice",
            id="channel-twice",
        ),
        pytest.param(
            "devices:\n  - {name: d, driver: x, address: y}\n",
            "devices[0] 'd' channels: field required",
            id="missing-channels",
        ),
        pytest.param(
            BASE_DEVICES + "pipelines:\n  - {name: p, devices: []}\n",
            "pipelines[0] 'p' devices: list should have at least 1 item after validation, "
            "not 0 (got [])",
            id="empty-pipeline",
        ),
        pytest.param("", "the file is empty: it needs 'devices' and 'pipelines'", id="empty"),
        pytest.param(
            "- a\n- b\n", "expected a mapping with 'devices' and 'pipelines', not a list", id="list"
        ),
    ],
)
def test_each_mistake_names_file_entry_and_reason(tmp_path: Path, text: str, expected: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_devices(p)
    assert str(ei.value) == f"{p}: {expected}"


def test_unknown_keys_are_ignored_as_tomato_does_and_named(tmp_path: Path) -> None:
    """tomato 2.2 ignores keys it does not know (a ``comment:`` anywhere): its files load
    here too, but each such key is named (file, entry, key), so a typo shows."""
    plain = BASE_DEVICES + (
        "pipelines:\n  - name: pip\n    devices:\n"
        "      - {role: counter, device: dev-counter, channel: '1'}\n"
    )
    commented = (
        "comment: the lab's counters\n"
        + BASE_DEVICES
        + "    comment: on the bench\n"
        + "    pollrat: 5\n"
        + "pipelines:\n  - name: pip\n    comment: one counter\n    devices:\n"
        "      - {role: counter, device: dev-counter, channel: '1', note: x}\n"
    )
    p = write(tmp_path, commented)
    layout = load_devices(p)
    assert layout.ignored == [
        f"{p}: top level: unknown key 'comment' ignored, as tomato 2.2 ignores it (the "
        "file has: devices, pipelines)",
        f"{p}: devices[0] 'dev-counter': unknown key 'comment' ignored, as tomato 2.2 "
        "ignores it (a device has: name, driver, address, channels, pollrate, node)",
        f"{p}: devices[0] 'dev-counter': unknown key 'pollrat' ignored, as tomato 2.2 "
        "ignores it (did you mean 'pollrate'? a device has: name, driver, address, "
        "channels, pollrate, node)",
        f"{p}: pipelines[0] 'pip': unknown key 'comment' ignored, as tomato 2.2 ignores it "
        "(a pipeline has: name, devices)",
        f"{p}: pipelines[0] 'pip' devices[0]: unknown key 'note' ignored, as tomato 2.2 "
        "ignores it (a pipeline's entry has: role, device, channel)",
    ]
    bare = load_devices(write(tmp_path, plain, "plain.yml"))
    assert bare.ignored == []
    assert layout.model_copy(update={"ignored": []}) == bare  # nothing else differs
    assert layout.devices["dev-counter"].pollrate == 1.0  # the typo did not set it


def test_a_misspelt_node_is_refused_not_ignored(tmp_path: Path) -> None:
    """An admin's tour: ``nod: pc2`` was ignored with a warning, as tomato 2.2 ignores
    keys it does not know, and the instrument moved to the scheduler PC's node. ``node``
    is not tomato 2.2's: a misspelling of it is refused, naming the entry."""
    p = write(tmp_path, BASE_DEVICES.rstrip("\n") + "\n    nod: pc2\n" + "pipelines: []\n")
    with pytest.raises(ConfigError) as ei:
        load_devices(p)
    assert str(ei.value) == (
        f"{p}: devices[0] 'dev-counter': unknown key 'nod': did you mean 'node'? (were it "
        "ignored, the device would run on the default node, not on the PC it names)"
    )
    # words near it that a tomato 2.2 file may hold are ignored with a warning, as before
    # (a review: model, mode, note, code were refused as "did you mean 'node'?")
    for key in ("model", "mode", "note", "notes", "code"):
        q = write(tmp_path, BASE_DEVICES.rstrip("\n") + f"\n    {key}: x\n" + "pipelines: []\n")
        assert [f"unknown key {key!r} ignored" in w for w in load_devices(q).ignored] == [True]


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    p = write(tmp_path, "devices:\n  - name: a\n   driver: x\n")
    with pytest.raises(ConfigError) as ei:
        load_devices(p)
    e = ei.value
    assert e.file == str(p)
    assert e.location == "line 3, column 4"
    assert e.reason.startswith("invalid YAML: ")
    assert "\n" not in str(e)


def test_json_syntax_error_names_the_line(tmp_path: Path) -> None:
    p = write(tmp_path, '{\n  "devices": [\n    ,\n  ]\n}\n', "devices.json")
    with pytest.raises(ConfigError) as ei:
        load_devices(p)
    assert ei.value.location == "line 3, column 5"
    assert ei.value.reason.startswith("invalid JSON: ")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        load_devices(tmp_path / "nope.yml")
    assert (
        str(ei.value)
        == f"{tmp_path / 'nope.yml'}: file not found (`tomato init` writes a default one)"
    )


def _layout(tmp_path: Path, doc: dict[str, object], name: str) -> Layout:
    return load_devices(write(tmp_path, yaml.safe_dump(doc), name))


def test_diff(tmp_path: Path) -> None:
    old = _layout(tmp_path, TOMATO_MULTIDEV, "old.yml")
    assert old.diff(old).empty
    new_doc = json.loads(json.dumps(TOMATO_MULTIDEV))
    new_doc["devices"][1]["pollrate"] = 5  # dev-counter-2: every component changes
    new_doc["devices"][0]["address"] = "moved"  # dev-counter-1: components renamed
    new_doc["devices"].append({"name": "ps", "driver": "psutil", "address": "x", "channels": ["1"]})
    new_doc["pipelines"] = [
        new_doc["pipelines"][1],
        {"name": "pip-ps", "devices": [{"role": "psutil", "device": "ps", "channel": "1"}]},
    ]
    new = _layout(tmp_path, new_doc, "new.yml")
    d = old.diff(new)
    assert not d.empty
    # components only for channels in pipelines (as tomato)
    assert d.added_components == ["example_counter:(moved,4)", "psutil:(x,1)"]
    assert d.removed_components == [f"example_counter:(example-addr-1,{c})" for c in "14"]
    assert d.changed_components == ["example_counter:(example-addr-2,5)"]
    assert d.added_pipelines == ["pip-ps"]
    assert d.removed_pipelines == ["pip-counter"]
    assert d.changed_pipelines == ["pip-multidev"]  # its counter-1 role moved
    assert (d.added_drivers, d.removed_drivers) == (["psutil"], [])
    back = new.diff(old)
    assert (back.added_pipelines, back.removed_pipelines) == (["pip-counter"], ["pip-ps"])
    assert back.removed_drivers == ["psutil"]
    assert d.model_dump()["added_pipelines"] == ["pip-ps"]  # what `tomato reload` reports


def test_a_diff_lists_names_in_number_order(tmp_path: Path) -> None:
    """An integrator's tour: a reload's 24 pipelines read pip-1, pip-10 … pip-19, pip-2."""
    doc = {
        "devices": [{"name": "c", "driver": "example_counter", "address": "a", "channels": ["1"]}],
        "pipelines": [{"name": "pip-0", "devices": [{"role": "r", "device": "c", "channel": "1"}]}],
    }
    old = _layout(tmp_path, doc, "old.yml")
    doc["pipelines"] += [
        {"name": f"pip-{i}", "devices": [{"role": "r", "device": "c", "channel": "1"}]}
        for i in (10, 2, 1, 20, 3)
    ]
    d = old.diff(_layout(tmp_path, doc, "new.yml"))
    assert d.added_pipelines == ["pip-1", "pip-2", "pip-3", "pip-10", "pip-20"]


def test_empty_layout() -> None:
    layout = Layout(components={}, pipelines={})
    assert layout.drivers == set() and layout.diff(Layout()).empty


def test_a_pollrate_of_infinity_is_refused(tmp_path: Path) -> None:
    """A review: `pollrate: .inf` passed `gt=0`, and the node's configuration then
    carried it as null (JSON has no infinity)."""
    doc = {
        "devices": [
            {
                "name": "c",
                "driver": "example_counter",
                "address": "a",
                "channels": ["1"],
                "pollrate": float("inf"),
            }
        ],
        "pipelines": [{"name": "p", "devices": [{"role": "r", "device": "c", "channel": "1"}]}],
    }
    with pytest.raises(ConfigError, match=r"devices\[0\]\.pollrate: inf is not a value"):
        _layout(tmp_path, doc, "inf.yml")
