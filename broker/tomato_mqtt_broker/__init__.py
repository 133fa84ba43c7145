"""The embedded MQTT broker of tomato-mqtt (amqtt), for the scheduler PC.

Instrument PCs do not install this package: it is the only place amqtt is imported.
The broker binds to 127.0.0.1 unless told otherwise, offers a TCP listener and a
WebSocket listener (for browser dashboards), optionally a TLS listener (and WSS), and
with a users file (amqtt's password-file format plus roles) authentication and the ACL
of tomato-mqtt's role model (:mod:`tomato_mqtt_broker.security`).

Auth cannot be switched off by accident: :meth:`BrokerConfig.check` refuses
``allow_anonymous = false`` without a users file, and any listener off loopback without
one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tomato_mqtt_broker.config import BrokerConfig, BrokerConfigError

if TYPE_CHECKING:
    from tomato_mqtt_broker.server import EmbeddedBroker, run_broker

__all__ = ["BrokerConfig", "BrokerConfigError", "EmbeddedBroker", "run_broker"]


def __getattr__(name: str) -> Any:
    """The broker itself (asyncio, amqtt) is imported when first used: ``tomato start``
    checks a :class:`BrokerConfig` before it spawns anything, and asyncio's import
    (~25 ms) would delay every service's start by as much."""
    if name in ("EmbeddedBroker", "run_broker"):
        from tomato_mqtt_broker import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
