"""The transport's plain types: errors, the last will, a received message, topic matching.

No paho here (``topic_matches`` is MQTT 3.1.1's wildcard rule, written out), so that
code which only handles messages need not import the client.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Message", "MqttError", "MqttTimeout", "Will", "topic_matches"]


class MqttError(Exception):
    """An MQTT operation failed (not connected, refused, broker gone)."""


class MqttTimeout(MqttError, TimeoutError):
    """The broker (or a responder) did not answer in time."""


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
