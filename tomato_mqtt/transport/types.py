"""The transport's plain types: errors, the last will, a received message, topic matching.

No paho here (``topic_matches`` is MQTT 3.1.1's wildcard rule, written out), so that
code which only handles messages need not import the client.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

__all__ = [
    "UNTRUSTED_HINT",
    "Message",
    "MqttError",
    "MqttRefused",
    "MqttTimeout",
    "MqttUnreachable",
    "MqttUntrusted",
    "SubscriptionRefused",
    "Will",
    "client_cert_hint",
    "topic_matches",
]


class MqttError(Exception):
    """An MQTT operation failed (not connected, refused, broker gone)."""


if sys.version_info >= (3, 11):
    _TIMEOUTS: tuple[type[Exception], ...] = (TimeoutError,)
else:  # asyncio's TimeoutError is its own class before 3.11: caught as either
    from asyncio.exceptions import TimeoutError as _AsyncioTimeout

    _TIMEOUTS = (TimeoutError, _AsyncioTimeout)


class MqttTimeout(MqttError, *_TIMEOUTS):  # type: ignore[misc]
    """The broker (or a responder) did not answer in time: a :class:`TimeoutError`,
    and on Python 3.10 an ``asyncio.TimeoutError`` too (one class from 3.11 on), so that
    ``except asyncio.TimeoutError`` around a publish catches it on every version."""


class SubscriptionRefused(MqttError):
    """The broker answered a SUBSCRIBE with a failure code: its rules do not give this
    login that filter (an answer, not a broker that is down)."""


class MqttUnreachable(MqttError):
    """Nothing listens on the broker's port (the connection was refused): a broker that
    is down, or being restarted (as against one that refused the login)."""


class MqttRefused(MqttError):
    """The broker answered the CONNECT with a refusal (``code``: its CONNACK code)."""

    def __init__(self, msg: str, code: int) -> None:
        super().__init__(msg)
        self.code = code

    @property
    def final(self) -> bool:
        """A login or client id the broker does not take: trying again will not help."""
        return self.code in LOGIN_REFUSED or self.code in (2, 133)


class MqttUntrusted(MqttError):
    """TLS failed on a certificate (the broker's not trusted, or its name not the one
    asked for): trying again will not help until the set-up changes."""


#: what to do about a certificate TLS did not trust (every client says it alike)
UNTRUSTED_HINT = (
    "give the lab's CA (ca_certs=... in the broker URL, or [mqtt] ca_certs in "
    "settings.toml) and the broker's name as its certificate has it"
)


def client_cert_hint(certfile: str | None) -> str:
    """What to check when a TLS connection ends before the broker answers the login: a
    broker that requires client certificates (mutual TLS) ends it so (Mosquitto with an
    alert, amqtt without a word) when the client presents none, or one it does not trust."""
    if not certfile:
        return (
            "if the broker requires client certificates (mutual TLS), give one its CA "
            "signed: certfile=...&keyfile=... in the broker URL, or [mqtt] certfile and "
            "keyfile in settings.toml"
        )
    return (
        "if the broker requires client certificates (mutual TLS), is the client "
        f"certificate {certfile} signed by the CA it trusts ([broker] cafile)?"
    )


#: CONNACK refusals: MQTT 3.1.1 return codes and the MQTT 5 reason codes paho 2 maps
#: them to (paho's connack_string knows only the former: "unknown reason" for the rest)
CONNACK_WHY = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
    128: "unspecified error",
    132: "unacceptable protocol version",
    133: "client identifier rejected",
    134: "bad user name or password",
    135: "not authorised",
    136: "server unavailable",
    138: "banned",
}
#: the refusals that are about the login
LOGIN_REFUSED = frozenset({4, 5, 134, 135})


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    #: time.monotonic() when it arrived (0.0: not known), before any wait in a queue
    at: float = 0.0


def topic_matches(filter_: str, topic: str) -> bool:
    """MQTT wildcard matching: ``+`` is one level, a trailing ``#`` any number (even 0)."""
    f = filter_.split("/")
    t = topic.split("/")
    for i, part in enumerate(f):
        if part == "#":
            return i == len(f) - 1
        if i >= len(t) or (part != "+" and part != t[i]):
            return False
    return len(t) == len(f)
