"""The machine-readable wire contract: an AsyncAPI 3.0 document.

Built from the channel table of :mod:`tomato_mqtt.wire.topics` and the JSON schemas of the
pydantic models of :mod:`tomato_mqtt.wire.messages`, so it cannot drift from the code. The
scheduler publishes it retained on ``meta/schema``; ``tomato schema`` prints it.

Every channel carries the MQTT facts an integrator needs as extensions next to the
standard fields: ``x-retained``, ``x-qos``, ``x-publisher`` and ``x-subscribers``; the
same facts are in the MQTT operation bindings (``qos``, ``retain``).

Light to import: pydantic and the message models only (no pint, xarray or paho).
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

from tomato_mqtt import __version__
from tomato_mqtt.driver.spec import AttrSpec, TaskSpec
from tomato_mqtt.model.jobs import Job
from tomato_mqtt.wire.commands import COMMANDS
from tomato_mqtt.wire.messages import (
    MESSAGES,
    AckArgs,
    ComponentMeta,
    ComponentStatus,
    DataBatch,
    DriverInfo,
    JobEvent,
    JobProgress,
    JobStatus,
    LastPoint,
    NodeComponent,
    NodeConfigure,
    NodeStatus,
    PipelineStatus,
    RecorderStatus,
    ReplayArgs,
    Reply,
    Request,
    SchedulerStatus,
    TaskEndInfo,
    TaskStartArgs,
    WireModel,
)
from tomato_mqtt.wire.topics import CHANNELS, PROTOCOL, ChannelDef, Topics

__all__ = [
    "ASYNCAPI_VERSION",
    "PARAMETERS",
    "QOS",
    "build_asyncapi",
    "example_messages",
    "schema_json",
]

ASYNCAPI_VERSION = "3.0.0"

#: Every message is published with QoS 1 (at least once); requests are de-duplicated
#: by id and data batches by (component, stream, seq) and content, so a second delivery
#: is harmless.
QOS = 1

#: The placeholders of the channel templates, as AsyncAPI channel parameters.
PARAMETERS: dict[str, str] = {
    "op": "Operation name (a slug), e.g. 'status', 'submit', 'task_start', 'configure'.",
    "client_id": "Slug of the requester's MQTT client id; the requester subscribes to it.",
    "node": "Slug of the driver node's name (see slugging rules in docs/topics.md).",
    "component": "Slug of the component's full name, e.g. "
    "'example_counter:(example-addr,1)' -> 'example_counter-example-addr-1--<hash>'; "
    "the full name is in every payload.",
    "pipeline": "Slug of the pipeline's name.",
    "job": "The job id (a decimal integer).",
    "user": "The requester's login (a slug; 'anonymous' on an open local stack). The broker "
    "ACL pins it to the authenticated user (Mosquitto '%u'), so services read who asked "
    "from the topic, never from the payload (docs/security.md).",
}

#: Models that travel as ``args`` of a request (one per command of wire/commands.py).
_ARGS_MODELS: tuple[type[BaseModel], ...] = tuple(dict.fromkeys(c.args for c in COMMANDS))

_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


def _camel(kind: str) -> str:
    head, *rest = kind.split("_")
    return head + "".join(p.capitalize() for p in rest)


def _wire_models() -> list[type[WireModel]]:
    seen: dict[str, type[WireModel]] = {}
    for models in MESSAGES.values():
        for m in models:
            seen.setdefault(m.__name__, m)
    return list(seen.values())


def _schemas() -> dict[str, Any]:
    models: list[type[BaseModel]] = [*_wire_models(), *_ARGS_MODELS]
    keyed, top = models_json_schema(
        [(m, "validation") for m in models],
        ref_template="#/components/schemas/{model}",
        title="tomato-mqtt messages",
    )
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    # every model must be a named definition under its own name (pydantic renames clashes)
    for (m, _mode), ref in keyed.items():
        name = ref["$ref"].rsplit("/", 1)[-1]
        if name != m.__name__ or name not in schemas:
            raise RuntimeError(f"no schema named {m.__name__} (got {name})")
    for c in COMMANDS:  # reply data: models, lists and unions, with their definitions
        if c.data is None:
            continue
        data = TypeAdapter(c.data).json_schema(ref_template="#/components/schemas/{model}")
        for name, sch in data.get("$defs", {}).items():
            if schemas.setdefault(name, sch) != sch:
                raise RuntimeError(f"two different schemas named {name}")
    return dict(sorted(schemas.items()))


def _commands() -> dict[str, Any]:
    """``x-commands``: per responder and operation, the args model and the reply data."""
    out: dict[str, dict[str, Any]] = {}
    for c in COMMANDS:
        entry: dict[str, Any] = {
            "summary": c.doc,
            "args": {"$ref": f"#/components/schemas/{c.args.__name__}"},
        }
        if c.data is None:
            entry["data"] = {"type": "null"}
        else:
            data = TypeAdapter(c.data).json_schema(ref_template="#/components/schemas/{model}")
            data.pop("$defs", None)
            entry["data"] = data
        out.setdefault(c.responder, {})[c.op] = entry
    return out


def _meta_schema_message() -> dict[str, Any]:
    return {
        "name": "AsyncAPIDocument",
        "title": "This document",
        "summary": "The AsyncAPI 3.0 document of this instance (what you are reading).",
        "contentType": "application/json",
        "payload": {"type": "object", "description": "An AsyncAPI 3.0.0 document."},
    }


def _message(model: type[WireModel], example: BaseModel | None) -> dict[str, Any]:
    doc = (model.__doc__ or "").strip()
    if doc.startswith(("Usage docs:", "!!!")) or model.__doc__ == WireModel.__doc__:
        doc = ""
    msg: dict[str, Any] = {
        "name": model.__name__,
        "title": model.__name__,
        "contentType": "application/json",
        "payload": {"$ref": f"#/components/schemas/{model.__name__}"},
    }
    if doc:
        msg["summary"] = " ".join(doc.split("\n\n", 1)[0].split())
    if example is not None:
        msg["examples"] = [
            {"name": f"{model.__name__}-example", "payload": example.model_dump(mode="json")}
        ]
    return msg


def _channel(topics: Topics, ch: ChannelDef, message_names: list[str]) -> dict[str, Any]:
    params = _PLACEHOLDER.findall(ch.template)
    channel: dict[str, Any] = {
        "address": topics.channel_address(ch),
        "title": ch.template,
        "description": ch.description,
        "messages": {n: {"$ref": f"#/components/messages/{n}"} for n in message_names},
        "x-retained": ch.retained,
        "x-qos": QOS,
        "x-publisher": ch.publisher,
        "x-subscribers": ch.subscribers,
    }
    if params:
        channel["parameters"] = {p: {"description": PARAMETERS[p]} for p in params}
    return channel


def _operation(ch: ChannelDef, message_names: list[str], has_reply: bool) -> dict[str, Any]:
    cid = _camel(ch.kind)
    op: dict[str, Any] = {
        "action": "send",
        "title": f"{ch.publisher} publishes on {ch.template}",
        "channel": {"$ref": f"#/channels/{cid}"},
        "messages": [{"$ref": f"#/channels/{cid}/messages/{n}"} for n in message_names],
        "bindings": {"mqtt": {"qos": QOS, "retain": ch.retained, "bindingVersion": "0.2.0"}},
    }
    if has_reply:
        op["reply"] = {
            "address": {
                "description": "The requester's reply topic, given in the request.",
                "location": "$message.payload#/reply_to",
            },
            "channel": {"$ref": "#/channels/reply"},
            "messages": [{"$ref": "#/channels/reply/messages/Reply"}],
        }
    return op


def build_asyncapi(instance: str) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the wire contract of one instance."""
    topics = Topics(instance)
    examples = example_messages()
    messages: dict[str, Any] = {"AsyncAPIDocument": _meta_schema_message()}
    for model in _wire_models():
        messages[model.__name__] = _message(model, examples.get(model.__name__))

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for ch in CHANNELS:
        names = [m.__name__ for m in MESSAGES.get(ch.kind, ())] or ["AsyncAPIDocument"]
        cid = _camel(ch.kind)
        channels[cid] = _channel(topics, ch, names)
        operations[f"publish{cid[0].upper()}{cid[1:]}"] = _operation(
            ch, names, has_reply="Request" in names
        )

    return {
        "asyncapi": ASYNCAPI_VERSION,
        "id": f"urn:tomato-mqtt:{PROTOCOL.replace('/', ':')}:{instance}",
        "info": {
            "title": f"tomato-mqtt wire contract ({instance})",
            "version": __version__,
            "description": (
                "MQTT 3.1.1 topics and JSON messages of tomato-mqtt, under the root "
                f"'{topics.root}/'. Every message is UTF-8 JSON with a 'schema' version "
                "field; readers ignore unknown fields. Retained channels hold the current "
                "state; presence is retained status + last will + heartbeat time. "
                "Requests carry {id, reply_to, args} and are answered on reply_to."
            ),
            "license": {"name": "MIT"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "embedded": {
                "host": "127.0.0.1:1883",
                "protocol": "mqtt",
                "protocolVersion": "3.1.1",
                "description": "The embedded broker started by 'tomato start' (default).",
            },
            "embeddedWebSocket": {
                "host": "127.0.0.1:9001",
                "protocol": "ws",
                "protocolVersion": "3.1.1",
                "description": "Its WebSocket listener for browser dashboards, when enabled.",
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": _schemas()},
        # the typed commands: args on .../cmd/<op>, data in the Reply (error codes in Reply)
        "x-commands": _commands(),
    }


def schema_json(instance: str) -> str:
    """The AsyncAPI document as indented JSON text (printed by ``tomato schema``)."""
    return json.dumps(build_asyncapi(instance), indent=2, ensure_ascii=False)


def example_messages() -> dict[str, BaseModel]:
    """One valid example of every message model (and request args), by model name.

    Used for the ``examples`` of the AsyncAPI document and the payloads in docs/topics.md.
    """
    t0 = 1_750_000_000.0
    cmp = "example_counter:(example-addr,1)"
    task_end = TaskEndInfo(
        job=7,
        task=0,
        task_name="count",
        reason="done",
        t_start=t0,
        t_end=t0 + 10,
        npoints=10,
        missed=0,
        epoch=3,
        stream="3-5d1c0b7e9a2f4c68",
        last_seq=9,
    )
    node_component = NodeComponent(
        name=cmp,
        device="dev-counter",
        driver="example_counter",
        address="example-addr",
        channel="1",
        pollrate=1.0,
    )
    driver = DriverInfo(version="1.0", loaded=True)
    progress = JobProgress(points={cmp: 10}, gaps=0, conflicts=0, merged=0)
    ex: list[BaseModel] = [
        node_component,
        driver,
        progress,
        task_end,
        Request(
            id="5f0c6a2e8d7b4c1e9a3f2b1c0d9e8f7a",
            reply_to="tomato/v2/lab1/reply/alice/ketchup-3b9f2a1c4d5e",
            args={"jobid": 7},
        ),
        Reply(
            id="5f0c6a2e8d7b4c1e9a3f2b1c0d9e8f7a",
            success=True,
            msg="found 1 job",
            data=[{"id": 7, "status": "r"}],
        ),
        SchedulerStatus(
            state="online",
            instance="lab1",
            epoch=3,
            heartbeat=t0 + 42,
            version="0.1.0",
            started_at=t0,
            broker="mqtt://127.0.0.1:1883",
            jobs_running=1,
            jobs_queued=2,
        ),
        NodeStatus(
            state="online",
            node="local",
            epoch=3,
            heartbeat=t0 + 42,
            version="0.1.0",
            host="lab-pc-1",
            pid=4242,
            drivers={"example_counter": driver},
            components=[cmp],
            streams={cmp: 9},
            stream_ids={cmp: "3-5d1c0b7e9a2f4c68"},
        ),
        ComponentMeta(
            name=cmp,
            device="dev-counter",
            driver="example_counter",
            address="example-addr",
            channel="1",
            node="local",
            registered=True,
            attrs={"max": AttrSpec(type="float", rw=True, status=True)},
            capabilities=["count", "random"],
            constants={"vendor": "example"},
        ),
        ComponentStatus(
            name=cmp,
            node="local",
            state="running",
            time=t0 + 15,
            job=7,
            task=1,
            task_name="count-again",
            technique="count",
            started_at=t0 + 10,
            attrs={"max": 10.0},
            epoch=3,
            stream="3-5d1c0b7e9a2f4c68",
            seq=4,
            last_task=task_end,
        ),
        DataBatch(
            component=cmp,
            job=7,
            task=0,
            epoch=3,
            stream="3-5d1c0b7e9a2f4c68",
            seq=4,
            uts=[t0 + 4, t0 + 5],
            vars={"val": [4, 5]},
            units={},
        ),
        LastPoint(component=cmp, uts=t0 + 5, values={"val": 5}, job=7, task=0),
        PipelineStatus(
            name="pip-counter",
            sample="counter_1_0.1",
            ready=True,
            job=7,
            roles={"counter": cmp},
        ),
        JobStatus(
            job=Job(
                id=7,
                jobname="counter-demo",
                payload={"version": "2.2", "sample": {"name": "counter_1_0.1"}, "method": []},
                status="r",
                submitted_at="2025-06-15T15:06:40+00:00",
                launched_at="2025-06-15T15:06:41+00:00",
                pipeline="pip-counter",
            )
        ),
        JobEvent(
            job=7,
            event="task_ended",
            time=t0 + 10,
            role="counter",
            task=0,
            detail=task_end.model_dump(mode="json"),
        ),
        RecorderStatus(
            state="online",
            heartbeat=t0 + 42,
            version="0.1.0",
            jobs={"7": progress},
        ),
        NodeConfigure(
            components=[node_component],
            driver_settings={"example_counter": {}},
        ),
        TaskStartArgs(
            task=TaskSpec(
                technique_name="count",
                max_duration=10.0,
                sampling_interval=1.0,
                task_name="count",
                job=7,
                index=0,
            )
        ),
        ReplayArgs(epoch=3, first=2, last=4, stream="3-5d1c0b7e9a2f4c68"),
        AckArgs(epoch=3, upto=9, stream="3-5d1c0b7e9a2f4c68"),
    ]
    return {type(m).__name__: m for m in ex}
