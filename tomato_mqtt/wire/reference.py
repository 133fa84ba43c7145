"""The contract as text for people: the table of every command in docs/topics.md.

Generated from ``commands.py`` and ``topics.py`` (a test compares it with the docs).
"""

from __future__ import annotations

from typing import Any, get_origin

from pydantic import BaseModel

from tomato_mqtt.config.roles import CMP_ADMIN_OPS, CMP_READ_OPS
from tomato_mqtt.wire.commands import COMMANDS
from tomato_mqtt.wire.topics import CHANNELS

__all__ = ["commands_markdown"]

# each responder's command channel, as topics.py defines it
_TOPIC = {c.kind.removesuffix("_cmd"): c.template for c in CHANNELS if c.kind.endswith("_cmd")}


def _topic(responder: str, op: str) -> str:
    """Where a command is sent: a user sends a component command with its login."""
    if responder == "component" and op in CMP_ADMIN_OPS + CMP_READ_OPS:
        return _TOPIC["component_user"]
    return _TOPIC[responder]


def _type_name(ann: Any) -> str:
    # (list[Job] is an instance of type before Python 3.11, named just "list")
    plain = isinstance(ann, type) and get_origin(ann) is None
    text = getattr(ann, "__name__", None) if plain else None
    text = text or str(ann).replace("typing.", "")
    text = _without_annotated(text)
    for mod in (
        "tomato_mqtt.",
        "wire.messages.",
        "wire.commands.",
        "wire.status.",
        "model.jobs.",
        "pydantic.types.",
    ):
        text = text.replace(mod, "")
    text = text.replace("NoneType", "null").replace("JsonValue", "json").replace("None", "null")
    # a markdown table cell: no pipes
    return text.replace(" | ", " or ").replace("Literal[", "one of [")


def _without_annotated(text: str) -> str:
    """``Annotated[int, FieldInfo(...)]`` (a bounded int such as ``JobId``) as ``int``."""
    while (start := text.find("Annotated[")) >= 0:
        inner = start + len("Annotated[")
        depth, end = 1, inner
        while depth and end < len(text):
            depth += {"[": 1, "]": -1}.get(text[end], 0)
            end += 1
        head = text[inner : end - 1].split(",", 1)[0]
        text = text[:start] + head + text[end:]
    return text


def _args_text(model: type[BaseModel]) -> str:
    fields = []
    for name, f in model.model_fields.items():
        if name == "schema_":
            continue
        opt = "" if f.is_required() else "?"
        fields.append(f"`{name}{opt}`: {_type_name(f.annotation)}")
    return ", ".join(fields) or "—"


def commands_markdown() -> str:
    """The table of every command for docs/topics.md (a test keeps the docs in step)."""
    rows = [
        "| topic | op | args (`?` optional) | reply `data` | what |",
        "|---|---|---|---|---|",
    ]
    for c in COMMANDS:
        data = "null" if c.data is None else _type_name(c.data)
        rows.append(
            f"| `{_topic(c.responder, c.op)}` | `{c.op}` | {_args_text(c.args)} | {data} |"
            f" {c.doc} |"
        )
    return "\n".join(rows) + "\n"
