"""The AsyncAPI document and docs/topics.md cover the whole wire contract."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tomato_mqtt.wire.asyncapi import PARAMETERS, build_asyncapi, example_messages, schema_json
from tomato_mqtt.wire.messages import MESSAGES, decode
from tomato_mqtt.wire.topics import CHANNELS, Topics

DOCS = Path(__file__).resolve().parents[1] / "docs" / "topics.md"
DOC = build_asyncapi("lab1")


def _resolve(ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = DOC
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_is_json_and_asyncapi_3() -> None:
    text = schema_json("lab1")
    doc = json.loads(text)
    assert doc == DOC
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] and doc["info"]["version"]
    assert doc["defaultContentType"] == "application/json"


def test_lists_every_topic_of_the_channel_table() -> None:
    addresses = {ch["address"] for ch in DOC["channels"].values()}
    root = Topics("lab1").root
    assert addresses == {f"{root}/{ch.template}" for ch in CHANNELS}
    assert len(DOC["channels"]) == len(CHANNELS)


@pytest.mark.parametrize("ch", CHANNELS, ids=lambda c: c.kind)
def test_channel_facts(ch: Any) -> None:
    channel = next(c for c in DOC["channels"].values() if c["title"] == ch.template)
    assert channel["x-retained"] is ch.retained
    assert channel["x-qos"] == 1
    assert channel["x-publisher"] == ch.publisher
    placeholders = re.findall(r"\{(\w+)\}", ch.template)
    assert sorted(channel.get("parameters", {})) == sorted(placeholders)
    for p in placeholders:
        assert p in PARAMETERS
    names = {m.__name__ for m in MESSAGES[ch.kind]} or {"AsyncAPIDocument"}
    assert set(channel["messages"]) == names


def test_every_message_has_a_schema() -> None:
    messages = DOC["components"]["messages"]
    wire = {m.__name__ for models in MESSAGES.values() for m in models}
    assert wire <= set(messages)
    for name, msg in messages.items():
        payload = msg["payload"]
        if "$ref" in payload:
            schema = _resolve(payload["$ref"])
            assert schema["type"] == "object", name
            assert schema["properties"]["schema"]["enum"] == [1, 2], name
        else:
            assert payload["type"] == "object", name


def test_every_reference_resolves() -> None:
    refs = _refs(DOC)
    assert len(refs) > 50
    for ref in refs:
        _resolve(ref)


def test_operations_have_mqtt_bindings_and_replies() -> None:
    ops = DOC["operations"]
    assert len(ops) == len(CHANNELS)
    for op in ops.values():
        assert op["action"] == "send"
        channel = _resolve(op["channel"]["$ref"])
        assert op["bindings"]["mqtt"]["retain"] is channel["x-retained"]
        is_request = "Request" in channel["messages"]
        assert ("reply" in op) is is_request
        if is_request:
            assert op["reply"]["address"]["location"] == "$message.payload#/reply_to"


def test_message_examples_decode() -> None:
    models = {m.__name__: m for models in MESSAGES.values() for m in models}
    for name, msg in DOC["components"]["messages"].items():
        for ex in msg.get("examples", []):
            decode(models[name], json.dumps(ex["payload"]))


def test_import_is_light() -> None:
    code = (
        "import sys, tomato_mqtt.wire.asyncapi as a; a.schema_json('x');"
        "heavy = {'pint', 'xarray', 'numpy', 'netCDF4', 'amqtt', 'paho'} & set(sys.modules);"
        "print(sorted(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


# -- docs/topics.md cannot drift from the code ------------------------------------------
def test_docs_list_every_topic_pattern() -> None:
    text = DOCS.read_text()
    for ch in CHANNELS:
        assert f"`{ch.template}`" in text, f"docs/topics.md does not list {ch.template}"


def test_docs_name_every_message_model() -> None:
    text = DOCS.read_text()
    for name in example_messages():
        assert f"`{name}`" in text, f"docs/topics.md does not mention {name}"


def test_docs_example_payloads_are_valid() -> None:
    """Each ```json block under a '### `Model`' heading decodes as that model."""
    text = DOCS.read_text()
    models = {name: type(m) for name, m in example_messages().items()}
    blocks = re.findall(r"^### `(\w+)`.*?\n```json\n(.*?)\n```", text, flags=re.S | re.M)
    assert {name for name, _ in blocks} == set(models)
    for name, block in blocks:
        assert decode(models[name], block) == example_messages()[name], name


def test_docs_name_every_field_of_each_message() -> None:
    """Each '### `Model`' section shows or names every field of its model (a newcomer's
    tour found fields on the wire and in the AsyncAPI document that the page never
    named: a block may leave out what is null or false, if its prose names it)."""
    text = DOCS.read_text()
    sections = re.findall(r"^### `(\w+)`(.*?)(?=^##)", text + "\n##", flags=re.S | re.M)
    missing = []
    for name, section in sections:
        model = type(example_messages()[name]) if name in example_messages() else None
        if model is None:
            continue
        for field_name, info in model.model_fields.items():
            key = info.alias or field_name
            if f'"{key}"' not in section and f"`{key}`" not in section:
                missing.append(f"{name}.{key}")
    assert not missing, f"docs/topics.md does not name: {', '.join(missing)}"


def test_docs_list_every_command_with_its_args() -> None:
    """docs/topics.md holds the table generated from wire/commands.py, unchanged."""
    from tomato_mqtt.wire.reference import commands_markdown

    text = DOCS.read_text()
    begin, end = "<!-- commands:begin -->\n", "<!-- commands:end -->"
    assert begin in text and end in text
    block = text[text.index(begin) + len(begin) : text.index(end)]
    assert block == commands_markdown(), (
        "docs/topics.md's command table is stale; replace the block between the markers "
        "with the output of tomato_mqtt.wire.reference.commands_markdown()"
    )


def test_the_document_lists_every_command() -> None:
    from tomato_mqtt.wire.asyncapi import build_asyncapi
    from tomato_mqtt.wire.commands import COMMANDS

    doc = build_asyncapi("lab1")
    for c in COMMANDS:
        entry = doc["x-commands"][c.responder][c.op]
        ref = entry["args"]["$ref"].rsplit("/", 1)[-1]
        assert ref in doc["components"]["schemas"], (c.op, ref)
        assert "data" in entry


def test_a_reply_of_several_shapes_says_which_answers_which_args() -> None:
    """An integrator's tour: a `status components` reply also matched the pipelines'
    branch of `data` (whose fields are few), so a validator could not tell which applied.
    `x-data-by-args` names the branch of every `what`, each one of `data`'s."""
    from typing import get_args

    from tomato_mqtt.wire.asyncapi import build_asyncapi
    from tomato_mqtt.wire.commands import StatusSection

    entry = build_asyncapi("lab1")["x-commands"]["scheduler"]["status"]
    by_what = entry["x-data-by-args"]["what"]
    assert set(by_what) == set(get_args(StatusSection))
    assert sorted(map(str, by_what.values())) == sorted(map(str, entry["data"]["anyOf"]))
    assert by_what["components"]["additionalProperties"]["$ref"].endswith("/ComponentInfo")
    assert by_what["scheduler"] == {"$ref": "#/components/schemas/SchedulerInfo"}


def test_every_reply_model_is_a_schema_of_its_own_name() -> None:
    """An integrator's tour looked up FileData, WhoamiData … (named in topics.md's
    command table) under components/schemas: they were inlined in x-commands, untitled."""
    from pydantic import BaseModel

    from tomato_mqtt.wire.asyncapi import build_asyncapi
    from tomato_mqtt.wire.commands import COMMANDS

    doc = build_asyncapi("x")
    for c in COMMANDS:
        if isinstance(c.data, type) and issubclass(c.data, BaseModel):
            name = c.data.__name__
            assert name in doc["components"]["schemas"], name
            ref = {"$ref": f"#/components/schemas/{name}"}
            assert doc["x-commands"][c.responder][c.op]["data"] == ref, (c.responder, c.op)
