"""Where the broker is: :class:`BrokerURL`, light to import (no paho, no asyncio).

The CLIs parse ``--broker`` and settings into one of these before deciding whether they
need the asyncio client at all.
"""

from __future__ import annotations

from tomato_mqtt.record import Record

__all__ = ["BrokerURL", "binds_127", "is_loopback", "warn_insecure"]

_warned_insecure = False


def warn_insecure() -> None:
    """Say once per process that TLS runs without verifying the broker (``tls_insecure``):
    it connected to any certificate without a word (found by a security audit)."""
    global _warned_insecure
    if not _warned_insecure:
        _warned_insecure = True
        import sys

        print(
            "warning: TLS without verifying the broker's certificate (tls_insecure): anyone "
            "between this PC and the broker can read the password and every message",
            file=sys.stderr,
        )


class BrokerURL(Record):
    """Where the broker is and how to log in: ``mqtt[s]://[user[:pass]@]host[:port]``.

    A TLS URL may name its files in the query, e.g.
    ``mqtts://lab-pc:8883?ca_certs=/etc/tomato/ca.crt&certfile=me.crt&keyfile=me.key``
    (and ``tls_insecure=true`` to skip the host name check, for tests only).

    Immutable (a :class:`~tomato_mqtt.record.Record`, not a dataclass: the CLI's
    one-request calls import this module).
    """

    __slots__ = (
        "ca_certs",
        "certfile",
        "host",
        "keyfile",
        "password",
        "port",
        "tls",
        "tls_insecure",
        "transport",
        "username",
    )
    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool
    ca_certs: str | None
    certfile: str | None
    keyfile: str | None
    tls_insecure: bool
    transport: str  # "tcp" or "websockets"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        ca_certs: str | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
        tls_insecure: bool = False,
        transport: str = "tcp",
    ) -> None:
        self._init(locals())

    def elsewhere_hint(self) -> str:
        """What to check when a broker on another PC refuses plain MQTT ("" for TLS or
        loopback): a lab whose broker serves TLS keeps plain MQTT on its own loopback,
        and "is tomato-mqtt running? `tomato start` starts it" sent an admin, whose
        stack ran, the wrong way (an admin's tour)."""
        if self.tls or is_loopback(self.host):
            return ""
        return (
            f"; a broker on another PC: does it listen on {self.host} for this PC? One that "
            "serves TLS keeps plain MQTT on its own loopback: use mqtts:// with its [broker] "
            "tls_port (8883) and ca_certs=… (docs/security.md)"
        )

    @classmethod
    def parse(cls, url: str) -> BrokerURL:
        from urllib.parse import parse_qs, unquote, urlsplit

        if "://" not in url:
            url = "mqtt://" + url
        shown = _without_password(url)  # (an error said the password in clear: a tour)
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in {"mqtt", "tcp", "mqtts", "ssl", "ws", "wss"}:
            # (not the URL: "ada:s3://x@h", a password with "://" and no scheme, would
            # be said whole: a review)
            raise ValueError(
                f"unsupported broker URL scheme {scheme!r} (mqtt://, mqtts://, ws://, wss://)"
            )
        tls = scheme in {"mqtts", "ssl", "wss"}
        default_port = 8883 if tls else 1883
        try:
            port = parts.port or default_port
        except ValueError as e:
            hint = ""
            if shown != url:  # "r@t:a/1#x%" read as host and port
                hint = (
                    "; in a password, write @ : / # ? % as %40 %3A %2F %23 %3F %25 "
                    "(percent-encoded)"
                )
            raise ValueError(f"bad port in broker URL {shown!r}{hint}") from e
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        unknown = set(query) - {"ca_certs", "certfile", "keyfile", "tls_insecure"}
        if unknown:
            raise ValueError(
                f"unknown option(s) {', '.join(sorted(unknown))} in broker URL {shown!r} "
                "(known: ca_certs, certfile, keyfile, tls_insecure)"
            )
        if query and not tls:
            raise ValueError(
                f"TLS options in a URL without TLS: use mqtts:// or wss:// ({shown!r})"
            )
        insecure = query.get("tls_insecure", "false").lower()
        if insecure not in {"true", "false", "1", "0", "yes", "no"}:
            raise ValueError(f"tls_insecure must be true or false in {shown!r}")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=tls,
            ca_certs=query.get("ca_certs") or None,
            certfile=query.get("certfile") or None,
            keyfile=query.get("keyfile") or None,
            tls_insecure=insecure in {"true", "1", "yes"},
            transport="websockets" if scheme in {"ws", "wss"} else "tcp",
        )

    def with_tls_defaults(self, settings: dict[str, object]) -> BrokerURL:
        """A TLS URL takes the files the URL does not name from ``[mqtt]`` settings
        (ca_certs, certfile, keyfile, tls_insecure), so ``--broker mqtts://...`` keeps
        them."""
        if not self.tls:
            return self

        def pick(key: str) -> str | None:
            own = getattr(self, key)
            value = settings.get(key)
            return own if own else (str(value) if isinstance(value, str) and value else None)

        return self.replace(
            ca_certs=pick("ca_certs"),
            certfile=pick("certfile"),
            keyfile=pick("keyfile"),
            tls_insecure=self.tls_insecure or settings.get("tls_insecure") is True,
        )

    def __str__(self) -> str:
        scheme = {"tcp": "mqtt", "websockets": "ws"}[self.transport] + ("s" if self.tls else "")
        host = f"[{self.host}]" if ":" in self.host else self.host  # IPv6, as it is written
        return f"{scheme}://{host}:{self.port}"


def _without_password(url: str) -> str:
    """``url`` with the password of its user, if any, as ``***``: its user part ends at
    its last ``@`` (a password with ``@``, ``/`` or ``#`` in it, not percent-encoded, is
    not one urlsplit can find)."""
    head, sep, rest = url.partition("://")
    base, q, query = rest.partition("?")  # (a path in the query may hold an @)
    user, at, host = base.rpartition("@")
    if not at or ":" not in user:
        return url
    return f"{head}{sep}{user.split(':', 1)[0]}:***@{host}{q}{query}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback."""
    if host in ("localhost", "127.0.0.1", "::1"):  # the usual ones, without ipaddress
        return True
    import ipaddress  # (~3 ms of every CLI call's start when imported at the top)

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def binds_127(host: str) -> bool:
    """A listener on ``host`` takes connections to 127.0.0.1, where the stack's own
    services connect: ``host`` is, or is a name of, 127.0.0.1 (unlike
    :func:`is_loopback`, not 127.0.1.1 or ::1; a hostname that /etc/hosts maps to
    127.0.0.1 is: wire/mosquitto.py's listeners)."""
    if host in ("127.0.0.1", "localhost"):
        return True
    import socket

    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return any(info[4][0] == "127.0.0.1" for info in infos)
