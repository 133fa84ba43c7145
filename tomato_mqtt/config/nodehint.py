"""How to start a node on its own PC, said the same by ``tomato start`` and ``tomato
reload`` (reload's hint left out the instance and the login: an admin's tour)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tomato_mqtt.config.url import is_loopback

if TYPE_CHECKING:
    from tomato_mqtt.config.settings import Settings

__all__ = ["node_command"]

_ANY = ("", "0.0.0.0", "::")


def node_command(s: Settings, node: str, port: int) -> str:
    """How to start ``node`` on its PC, as this stack takes it: the instance, TLS and its
    port when the stack has them, the login in TOMATO_BROKER when it needs one (the hint
    said `--broker mqtt://…:PORT`, which a secured stack refuses: an admin's tour)."""
    instance = s.mqtt.instance
    inst = "" if instance == "default" else f" --instance {instance}"
    # the one address the broker listens on, when the settings name it (an admin's tour:
    # "<this PC's address>" of a broker whose [broker] host said it)
    host = s.broker.host
    addr = "<this PC's address>" if host in _ANY or is_loopback(host) else host
    if ":" in addr and not addr.startswith("<"):
        addr = f"[{addr}]"  # an IPv6 address in a URL
    if s.broker.certfile:
        where = f"mqtts://{node}:PASSWORD@{addr}:{s.broker.tls_port}?ca_certs=<the lab CA>"
    elif s.users_file is not None:
        where = f"mqtt://{node}:PASSWORD@{addr}:{port}"
    else:
        return f"`tomato node --name {node} --broker mqtt://{addr}:{port}{inst}`"
    return (
        f"`TOMATO_BROKER='{where}' tomato node --name {node}{inst}`, with a login of the role"
        f" node:{node}"
    )
