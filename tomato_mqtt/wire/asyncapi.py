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
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

from tomato_mqtt import __version__
from tomato_mqtt.wire.commands import COMMANDS, DATA_BY_ARG
from tomato_mqtt.wire.events import EVENT_DETAILS
from tomato_mqtt.wire.examples import example_messages
from tomato_mqtt.wire.messages import (
    MESSAGES,
    WireModel,
)
from tomato_mqtt.wire.topics import CHANNELS, PROTOCOL, ChannelDef, Topics

if TYPE_CHECKING:
    from tomato_mqtt.config.settings import Settings

__all__ = [
    "ASYNCAPI_VERSION",
    "PARAMETERS",
    "QOS",
    "build_asyncapi",
    "deployment_servers",
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
    "client_id": "A name the requester picks and subscribes to (a slug): its MQTT client "
    "id will do; tomato-mqtt's own clients use their kind and a random part, so that a "
    "responder learns no client id from it.",
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
        named = dict(data.pop("$defs", {}))
        if isinstance(c.data, type) and issubclass(c.data, BaseModel):
            # a reply's model is a schema of its own name too, as topics.md names it
            # (FileData, WhoamiData … were inlined in x-commands: an integrator's tour)
            named[c.data.__name__] = data
        for name, sch in named.items():
            if schemas.setdefault(name, sch) != sch:
                raise RuntimeError(f"two different schemas named {name}")
    return {k: _untitled(v) for k, v in sorted(schemas.items())}


def _untitled(node: Any, in_properties: bool = False) -> Any:
    """A JSON schema without pydantic's generated ``title`` keys (a third of the bytes of
    ``meta/schema``; the names are the keys already). A property *named* title stays."""
    if isinstance(node, dict):
        return {
            k: _untitled(v, k == "properties" and not in_properties)
            for k, v in node.items()
            if in_properties or not (k == "title" and isinstance(v, str))
        }
    if isinstance(node, list):
        return [_untitled(v) for v in node]
    return node


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
            entry["data"] = _schema_of(c.data, ref=True)
        by_arg = DATA_BY_ARG.get((c.responder, c.op))
        if by_arg is not None:
            # which branch of data answers which args (a validator matched `status
            # components` against the pipelines' branch: an integrator's tour)
            arg, branches = by_arg
            entry["x-data-by-args"] = {
                arg: {v: _schema_of(t, ref=True) for v, t in branches.items()}
            }
        out.setdefault(c.responder, {})[c.op] = entry
    return out


def _schema_of(data: Any, ref: bool = False) -> Any:
    """``data``'s JSON schema; with ``ref``, a model is its $ref to components/schemas
    (as in a union)."""
    if ref and isinstance(data, type) and issubclass(data, BaseModel):
        return {"$ref": f"#/components/schemas/{data.__name__}"}
    schema = TypeAdapter(data).json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return _untitled(schema)


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
        payload = example.model_dump(mode="json")
        if model.__name__ == "DataBatch":
            # as a node writes it (wire.batch.encode_batch): no empty dims, coords or
            # nonfinite (topics.md says nonfinite is absent when there is none; the
            # example had it empty: an integrator's tour)
            for key in ("dims", "coords", "nonfinite"):
                if not payload.get(key):
                    payload.pop(key, None)
        msg["examples"] = [{"name": f"{model.__name__}-example", "payload": payload}]
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


def build_asyncapi(instance: str, servers: dict[str, Any] | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the wire contract of one instance.

    ``servers``: the deployment's listeners (:func:`deployment_servers` of its settings);
    without it, those of a default stack.
    """
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
        "servers": servers if servers is not None else deployment_servers(None),
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": _schemas(),
            "securitySchemes": {"userPassword": _USER_PASSWORD},
        },
        # the typed commands: args on .../cmd/<op>, data in the Reply (error codes in Reply)
        "x-commands": _commands(),
        # per JobEvent kind, the keys its free-form 'detail' may hold (wire/events.py)
        "x-event-details": EVENT_DETAILS,
    }


def schema_json(instance: str, settings: Settings | None = None, *, compact: bool = False) -> str:
    """The AsyncAPI document as JSON text: indented for people (``tomato schema``),
    compact on ``meta/schema`` (a retained message every subscriber to ``#`` receives)."""
    doc = build_asyncapi(instance, deployment_servers(settings))
    if compact:
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    return json.dumps(doc, indent=2, ensure_ascii=False)


#: a secured stack's logins (docs/security.md): named by the servers that need one
_USER_PASSWORD = {
    "type": "userPassword",
    "description": (
        "The MQTT CONNECT's username and password, from the broker's users file "
        "('tomato user add'); the login's role decides what it may publish and read "
        "(docs/security.md), and its name is the {user} segment of its requests."
    ),
}
_LOGIN = [{"$ref": "#/components/securitySchemes/userPassword"}]


def _server(host: str, port: int, protocol: str, description: str, **extra: Any) -> Any:
    return {
        "host": f"{host}:{port}",
        "protocol": protocol,
        "protocolVersion": "3.1.1",
        "description": description,
        **extra,
    }


def deployment_servers(settings: Settings | None) -> dict[str, Any]:
    """The ``servers`` of the document: the listeners this deployment's settings give.

    With the embedded broker: its plain MQTT listener (on loopback when TLS serves the
    network), the TLS listener (``secure-mqtt``) when a certificate is set, and the
    WebSocket listener (``ws``, or ``wss`` with TLS; any path, ``/mqtt`` by convention)
    on ``[broker] ws_port`` (default: MQTT port + 1; 0 switches it off). With an
    external broker: the one ``[mqtt]`` names.
    """
    if settings is None:
        return {
            "mqtt": _server("127.0.0.1", 1883, "mqtt", "The embedded broker (defaults)."),
            "websocket": _server(
                "127.0.0.1", 1884, "ws", "Its WebSocket listener.", pathname="/mqtt"
            ),
        }
    m, b = settings.mqtt, settings.broker
    # a login is needed: the servers say so (an integrator's tour: a secured stack's
    # document said nothing of it, and an anonymous client was refused)
    login: dict[str, Any] = {"security": _LOGIN} if b.password_file else {}  # (anonymous
    # logins are refused whenever there is a users file: cli/serve.py)
    if not b.embedded:
        proto = "secure-mqtt" if m.tls else "mqtt"
        return {"mqtt": _server(m.host, m.port, proto, "The site's MQTT broker ([mqtt]).", **login)}
    tls = bool(b.certfile and b.keyfile)
    plain = "127.0.0.1" if tls and not _loopback(b.host) else b.host
    out: dict[str, Any] = {
        "mqtt": _server(
            plain, m.port, "mqtt", "The embedded broker started by 'tomato start'.", **login
        )
    }
    if tls:
        out["mqtts"] = _server(b.host, b.tls_port, "secure-mqtt", "Its TLS listener.", **login)
    if settings.ws_port:
        out["websocket"] = _server(
            b.host,
            settings.ws_port,
            "wss" if tls else "ws",
            "Its WebSocket listener, for browser dashboards (any path; '/mqtt' by convention).",
            pathname="/mqtt",
            **login,
        )
    return out


def _loopback(host: str) -> bool:
    return host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.")
