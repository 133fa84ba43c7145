"""One request, one reply, then exit: the CLI's fast path, on paho's blocking API.

This is the one place besides :mod:`tomato_mqtt.transport.client` that imports paho, on purpose: a
``tomato status`` or ``ketchup status`` process makes a single request and exits, and
for it asyncio (~35 ms to import) and pydantic (~60 ms, plus building the message
models) are most of its wall time (issue #3 asks ≤ 0.15 s per call). The envelope is
the same :class:`~tomato_mqtt.wire.messages.Request` / :class:`~tomato_mqtt.wire.messages.Reply`
JSON (tests check both directions against the models); everything long-lived uses the
asyncio client.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from tomato_mqtt.config.url import BrokerURL

__all__ = ["NoAnswer", "OneShotError", "Refused", "Reply", "request"]

SCHEMA = 2  # tomato_mqtt.wire.messages.SCHEMA


class OneShotError(Exception):
    """The broker could not be reached or refused the connection."""


class Refused(OneShotError):
    """The broker refused us: credentials or authorisation, not a service that is down."""


class NoAnswer(OneShotError):
    """Nobody answered the request in time."""


@dataclass
class Reply:
    id: str
    success: bool
    msg: str
    data: Any = None
    code: str | None = None  # wire.messages.ErrorCode of a failed reply


def _client(url: BrokerURL, client_id: str) -> paho.Client:
    c = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv311,
        clean_session=True,
        transport="websockets" if url.transport == "websockets" else "tcp",
    )
    if url.username:
        c.username_pw_set(url.username, url.password)
    if url.tls:
        c.tls_set(ca_certs=url.ca_certs, certfile=url.certfile, keyfile=url.keyfile)
        c.tls_insecure_set(url.tls_insecure)
    return c


def request(
    url: BrokerURL,
    topic: str,
    reply_topic: Callable[[str], str],
    args: Mapping[str, Any] | None = None,
    *,
    timeout: float = 5.0,
    who: str = "responder",
) -> Reply:
    """Publish a request on ``topic`` and wait for the reply on ``reply_topic(client_id)``.

    Raises :class:`OneShotError` when the broker is unreachable and :class:`NoAnswer`
    (naming the topic and the wait) when nobody replies within ``timeout``.
    """
    client_id = f"cli-{os.getpid()}-{os.urandom(3).hex()}"
    reply_to = reply_topic(client_id)
    req_id = os.urandom(16).hex()
    payload = json.dumps(
        {"schema": SCHEMA, "id": req_id, "reply_to": reply_to, "args": dict(args or {})},
        separators=(",", ":"),
    )
    c = _client(url, client_id)
    state: dict[str, Any] = {}

    def on_connect(cl: paho.Client, ud: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            state["error"] = (
                f"the MQTT broker at {url} refused the connection ({rc}): check the "
                "username and password (--broker mqtt://user:pass@host:port or settings.toml)"
            )
            return
        cl.subscribe(reply_to, qos=1)

    def on_subscribe(cl: paho.Client, ud: Any, mid: int, granted: Any, props: Any) -> None:
        cl.publish(topic, payload, qos=1)

    def on_message(cl: paho.Client, ud: Any, msg: paho.MQTTMessage) -> None:
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(doc, dict) and doc.get("id") == req_id:
            state["reply"] = Reply(
                id=req_id,
                success=bool(doc.get("success")),
                msg=str(doc.get("msg", "")),
                data=doc.get("data"),
                code=doc.get("code"),
            )

    c.on_connect = on_connect
    c.on_subscribe = on_subscribe
    c.on_message = on_message
    deadline = time.monotonic() + timeout
    try:
        c.connect(url.host, url.port, keepalive=max(5, int(timeout) + 5))
    except (OSError, ValueError) as e:
        raise OneShotError(f"cannot connect to the MQTT broker at {url}: {e}") from None
    sock = c.socket()
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        # without it each hop of the round trip can wait ~40 ms for a delayed ACK
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while "reply" not in state and "error" not in state:
            left = deadline - time.monotonic()
            if left <= 0:
                raise NoAnswer(
                    f"no {who} answered on {topic} within {timeout:g} s — is it running?"
                )
            rc = c.loop(timeout=min(left, 0.5))
            if "error" in state:
                break
            if rc == paho.MQTT_ERR_CONN_REFUSED:
                raise Refused(
                    f"the MQTT broker at {url} refused the connection: check the username "
                    "and password (--broker mqtt://user:pass@host:port or settings.toml)"
                )
            if rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_AGAIN):
                raise OneShotError(
                    f"lost the connection to the MQTT broker at {url}: {paho.error_string(rc)}"
                )
        if "error" in state:
            raise Refused(state["error"])
        return state["reply"]  # type: ignore[no-any-return]
    finally:
        c.disconnect()
        c.loop(timeout=0.01)  # let DISCONNECT leave, so no last will, no broker-side error
