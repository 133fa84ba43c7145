"""Where the broker is: :class:`BrokerURL`, light to import (no paho, no asyncio).

The CLIs parse ``--broker`` and settings into one of these before deciding whether they
need the asyncio client at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

__all__ = ["BrokerURL"]


@dataclass(frozen=True)
class BrokerURL:
    """Where the broker is and how to log in: ``mqtt[s]://[user[:pass]@]host[:port]``."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    tls_insecure: bool = False
    transport: str = "tcp"  # or "websockets"

    @classmethod
    def parse(cls, url: str) -> BrokerURL:
        if "://" not in url:
            url = "mqtt://" + url
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in {"mqtt", "tcp", "mqtts", "ssl", "ws", "wss"}:
            raise ValueError(f"unsupported broker URL scheme {scheme!r} in {url!r}")
        tls = scheme in {"mqtts", "ssl", "wss"}
        default_port = 8883 if tls else 1883
        try:
            port = parts.port or default_port
        except ValueError as e:
            raise ValueError(f"bad port in broker URL {url!r}") from e
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=tls,
            transport="websockets" if scheme in {"ws", "wss"} else "tcp",
        )

    def __str__(self) -> str:
        scheme = {"tcp": "mqtt", "websockets": "ws"}[self.transport] + ("s" if self.tls else "")
        return f"{scheme}://{self.host}:{self.port}"
