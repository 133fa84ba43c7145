"""How to start a node on its own PC, said the same by ``tomato start`` and ``tomato
reload`` (reload's hint left out the instance and the login: an admin's tour)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tomato_mqtt.config.settings import Settings

__all__ = ["node_command"]


def node_command(s: Settings, node: str, port: int) -> str:
    """How to start ``node`` on its PC, as this stack takes it: the instance, TLS and its
    port when the stack has them, the login in TOMATO_BROKER when it needs one (the hint
    said `--broker mqtt://…:PORT`, which a secured stack refuses: an admin's tour)."""
    instance = s.mqtt.instance
    inst = "" if instance == "default" else f" --instance {instance}"
    if s.broker.certfile:
        where = (
            f"mqtts://{node}:PASSWORD@<this PC's address>:{s.broker.tls_port}?ca_certs=<the lab CA>"
        )
    elif s.users_file is not None:
        where = f"mqtt://{node}:PASSWORD@<this PC's address>:{port}"
    else:
        return f"`tomato node --name {node} --broker mqtt://<this PC's address>:{port}{inst}`"
    return (
        f"`TOMATO_BROKER='{where}' tomato node --name {node}{inst}`, with a login of the role"
        f" node:{node}"
    )
