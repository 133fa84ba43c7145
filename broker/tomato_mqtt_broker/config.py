"""The embedded broker's configuration (its listeners, its security rules): plain data,
checked, as JSON for the process that runs it. No asyncio, no amqtt: ``tomato start``
checks it before it spawns anything (see :mod:`tomato_mqtt_broker`)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from tomato_mqtt.config.url import binds_127, is_loopback

__all__ = ["LOCAL_ORIGIN", "BrokerConfig", "BrokerConfigError"]


#: the origins of web pages an open stack's WebSocket listener accepts: this PC's own
LOCAL_ORIGIN = re.compile(r"https?://(localhost|127\.0\.0\.1|\[::1\])(:[0-9]+)?")


class BrokerConfigError(ValueError):
    """A broker configuration that would be insecure or cannot work."""


@dataclass
class BrokerConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    ws_port: int | None = None  # None: no WebSocket listener
    #: the users file (amqtt password file + roles); None: an open, loopback-only broker
    password_file: str | None = None
    allow_anonymous: bool = True
    #: the ACL's topic root and the devices file that says which node hosts what
    instance: str = "default"
    devices_file: str | None = None
    default_node: str = "local"
    #: TLS: a listener on tls_port (and WSS instead of WS) when certfile and keyfile are set
    certfile: str | None = None
    keyfile: str | None = None
    cafile: str | None = None  # CA of client certificates (verified when presented)
    #: mutual TLS: the TLS listeners (MQTT and WSS) refuse a client without a certificate
    #: cafile's CA signed
    require_certificate: bool = False
    tls_port: int = 8883
    #: bytes of messages the broker may hold for one client (sent but not yet taken by
    #: it, or waiting for its acknowledgement); beyond it, messages for that client are
    #: dropped and the log says so, as Mosquitto's max_queued_bytes: a client that stops
    #: reading (a laptop asleep, a stuck script) costs the broker this much, not all
    #: the lab's data since
    max_queued_bytes: int = 32 * 1024 * 1024
    #: bytes of messages the broker may hold for the connections of people's logins
    #: (admin, operator, reader) together, on a secured broker; past it, a login holding
    #: its share of it or more gets no more until it takes what it has. Each login's own
    #: bound (max_queued_bytes) let three readers' non-reading connections take the
    #: broker from 118 to 474 MB, a hostile tour: as many logins, as many times that.
    #: The services' logins are not held to it
    max_queued_bytes_people: int = 64 * 1024 * 1024
    #: messages kept for a persistent session (clean_session false) while its client is
    #: away; beyond it, newer ones are dropped and the log says so, as Mosquitto's
    #: max_queued_messages (amqtt kept every one: a script that died held the broker's
    #: memory for all the data that came since)
    max_queued_messages: int = 1000
    #: the largest packet a client may send (bytes); a larger one closes its connection
    #: before its body is read, as Mosquitto's max_packet_size (amqtt took 256 MB)
    max_packet_bytes: int = 8 * 1024 * 1024
    #: connections one login may hold at once on a secured broker (0: no limit); one
    #: more is refused "server unavailable" (each costs the broker up to
    #: max_queued_bytes: 40 that never read took it from 47 to 845 MB, a hostile tour)
    max_connections_per_login: int = 32
    #: an already listening socket for the plain MQTT listener (handed down by the
    #: supervisor, which binds it before anything starts): clients that connect while
    #: this broker still imports wait in its backlog instead of retrying with back-off
    listen_fd: int | None = None

    def to_json(self) -> str:
        """The configuration as JSON (``listen_fd`` excluded: a descriptor is per process)."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k != "listen_fd"}
        return json.dumps(fields)

    @classmethod
    def from_json(cls, text: str) -> BrokerConfig:
        """The configuration :meth:`to_json` wrote (unknown keys are an error)."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise BrokerConfigError(f"a broker configuration is a JSON object, not {text!r}")
        try:
            return cls(**data)
        except TypeError as e:
            raise BrokerConfigError(f"not a broker configuration: {e}") from None

    @property
    def tls(self) -> bool:
        return bool(self.certfile)

    @property
    def plain_host(self) -> str:
        """The address of the plain MQTT listener: with TLS it stays on loopback for the
        local services, and the network gets TLS (and WSS) only."""
        return "127.0.0.1" if self.tls and not is_loopback(self.host) else self.host

    def check(self) -> None:
        """Refuse what would let anyone in, with one clear message."""
        if not self.allow_anonymous and not self.password_file:
            raise BrokerConfigError(
                "allow_anonymous = false but there is no password_file: every login would be "
                "accepted. Set [broker] password_file and add users with `tomato user add`."
            )
        if self.password_file and not os.path.isfile(self.password_file):
            raise BrokerConfigError(
                f"the password_file {self.password_file} does not exist: create it with "
                "`tomato user add NAME --role admin`"
            )
        if not is_loopback(self.host) and not self.password_file:
            raise BrokerConfigError(
                f"the broker would listen on {self.host}, not a loopback address, without "
                "authentication: set [broker] password_file (and add users)"
            )
        if bool(self.certfile) != bool(self.keyfile):
            raise BrokerConfigError("TLS needs both certfile and keyfile")
        if self.require_certificate and not (self.tls and self.cafile):
            raise BrokerConfigError(
                "require_certificate needs TLS (certfile and keyfile) and a cafile"
            )
        for f in (self.certfile, self.keyfile, self.cafile):
            if f and not os.path.isfile(f):
                raise BrokerConfigError(f"TLS file {f} does not exist")

    def amqtt_config(self) -> dict[str, Any]:
        self.check()
        ssl: dict[str, Any] = {}
        if self.tls:
            ssl = {"ssl": True, "certfile": self.certfile, "keyfile": self.keyfile}
            if self.cafile:
                ssl["cafile"] = self.cafile
        plain_host = self.plain_host
        listeners: dict[str, Any] = {
            "default": {"type": "tcp", "bind": f"{plain_host}:{self.port}", "max_connections": 0}
        }
        if plain_host not in ("0.0.0.0", "::", "") and not binds_127(plain_host):
            # the stack's own services connect to 127.0.0.1: with only the lab network's
            # address they were refused, and `tomato start` gave up after 30 s without a
            # cause (an admin's tour; the Mosquitto rules had it already)
            listeners["local"] = {
                "type": "tcp",
                "bind": f"127.0.0.1:{self.port}",
                "max_connections": 0,
            }
        if self.tls:
            listeners["tls"] = {
                "type": "tcp",
                "bind": f"{self.host}:{self.tls_port}",
                "max_connections": 0,
                **ssl,
            }
        if self.ws_port:
            listeners["ws"] = {"type": "ws", "bind": f"{self.host}:{self.ws_port}", **ssl}
        plugins: dict[str, Any] = {
            "tomato_mqtt_broker.security.UsersAuthPlugin": {
                "users_file": self.password_file,
                "allow_anonymous": self.allow_anonymous,
            },
            "tomato_mqtt_broker.security.RoleAclPlugin": {
                "users_file": self.password_file,
                "instance": self.instance,
                "devices_file": self.devices_file,
                "default_node": self.default_node,
            },
        }
        return {"listeners": listeners, "plugins": plugins, "timeout_disconnect_delay": 0}
