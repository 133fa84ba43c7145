"""A blocking MQTT 3.1.1 session on a plain socket: the CLI's one-shot calls.

A CLI call connects, subscribes to its reply topic, publishes one or two requests, reads
the replies and exits. paho does that well but costs ~20 ms to import (it pulls in
``urllib.request``, ``http.client``, ``email``, ``ssl`` and ``logging``), which was a
sixth of a ``tomato status`` call; the few packets a call needs are written here instead
(CONNECT, SUBSCRIBE, PUBLISH at QoS 0/1, PUBACK, DISCONNECT; OASIS MQTT 3.1.1 §3).
Everything long-lived uses paho (:mod:`tomato_mqtt.transport.client`), and so does a
call over WebSockets (:mod:`tomato_mqtt.transport.oneshot` picks).
"""

from __future__ import annotations

import _socket
import contextlib
import struct
import time

TYPE_CHECKING = False  # typing is ~2 ms of a one-request call: for the type checker only
if TYPE_CHECKING:
    import socket
    import ssl

    from tomato_mqtt.config.url import BrokerURL

__all__ = ["Session", "SessionError", "SessionRefused", "SessionTimeout"]

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, PINGRESP, DISCONNECT = (
    1,
    2,
    3,
    4,
    8,
    9,
    13,
    14,
)
_CONNACK_WHY = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


class SessionError(Exception):
    """The broker cannot be reached, or the connection broke."""


class SessionRefused(SessionError):
    """The broker refused the connection (CONNACK code ``code``) or a subscription."""

    def __init__(self, msg: str, code: int = 0) -> None:
        super().__init__(msg)
        self.code = code


class SessionUntrusted(SessionError):
    """TLS failed on a certificate: the broker is there, and not trusted."""


class SessionExplained(SessionError):
    """Something answered (or ended the connection) in a way that says what to check:
    the message says it, and it is no question of whether a broker runs."""


class SessionTimeout(SessionError):
    """Nothing arrived before the deadline."""


class SessionUnreachable(SessionError):
    """Nothing listens on the broker's port (the connection was refused): a broker that
    is down, or restarting."""


class SessionStuck(SessionError):
    """The port took the connection and nothing answered its CONNECT: a broker that runs
    and is stalled (stopped, swapped out) or overloaded, not one that is down."""


def _utf8(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("!H", len(b)) + b


def _packet(kind: int, flags: int, body: bytes) -> bytes:
    n, length = len(body), bytearray()
    while True:  # the remaining length: 7 bits per byte, low first
        byte, n = n % 128, n // 128
        length.append(byte | (0x80 if n else 0))
        if not n:
            break
    return bytes([kind << 4 | flags]) + bytes(length) + body


def _tcp(host: str, port: int, timeout: float, tls: bool) -> _socket.socket:
    """A TCP connection, as ``socket.create_connection`` makes it.

    A plain one is made with ``_socket`` itself: the ``socket`` module imports ``enum``
    and ``selectors`` (~3 ms of a CLI call); ``ssl`` wants a ``socket.socket``. An ASCII
    host name is looked up as bytes: a str goes through the ``idna`` codec, whose import
    (``unicodedata``, ``stringprep``) is ~1.5 ms more.
    """
    if tls:
        import socket

        return socket.create_connection((host, port), timeout=timeout)
    name: str | bytes = host.encode("ascii") if host.isascii() else host
    error: OSError | None = None
    for family, kind, proto, _canon, addr in _socket.getaddrinfo(
        name, port, 0, _socket.SOCK_STREAM
    ):
        sock = None
        try:
            sock = _socket.socket(family, kind, proto)  # no IPv6 in the kernel: next one
            sock.settimeout(timeout)
            sock.connect(addr)
        except OSError as e:
            if sock is not None:
                sock.close()
            error = e  # as create_connection: the last one's
            continue
        return sock
    raise error or OSError(f"no address for {host}")


class Session:
    """One connection: ``connect()``, ``subscribe()``, ``publish()``, ``receive()``,
    ``close()``. Not thread-safe; for a process that lives for one exchange."""

    def __init__(self, url: BrokerURL, client_id: str, keepalive: int = 30) -> None:
        self.url, self.client_id, self.keepalive = url, client_id, keepalive
        self._sock: _socket.socket | None = None
        self._buf = b""
        self._mid = 0
        self._pending: list[tuple[str, bytes, bool]] = []  # arrived while waiting for a SUBACK
        self._shut = False  # shutdown() was called (from another thread)
        self._first = b""  # the first bytes the broker sent: said if they are no MQTT

    # -- connection ---------------------------------------------------------------------
    def connect(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        u = self.url
        ctx = None
        if u.tls:  # its files first: one that cannot be read is named, not taken for
            # a broker that is down (an admin's tour: a mistyped ca_certs path said
            # "No such file or directory — is tomato-mqtt running?")
            from tomato_mqtt.transport._tls import client_tls_context

            try:
                ctx = client_tls_context(u)
            except OSError as e:
                raise SessionUntrusted(f"TLS for the MQTT broker at {u}: {e}") from None
        try:
            sock = _tcp(u.host, u.port, timeout, tls=u.tls)
        except _socket.gaierror as e:  # not a broker that is down: a host name that is
            # not known ("Name or service not known — is tomato-mqtt running?": a tour)
            raise SessionExplained(
                f"cannot find the host {u.host!r} of the MQTT broker at {u} ({e.strerror}):"
                " check its name (-b/--broker, TOMATO_BROKER or [mqtt] host)"
            ) from None
        except ConnectionRefusedError as e:
            raise SessionUnreachable(f"cannot connect to the MQTT broker at {u}: {e}") from None
        except OSError as e:
            raise SessionError(f"cannot connect to the MQTT broker at {u}: {e}") from None
        # without it each hop of a round trip can wait ~40 ms for a delayed ACK
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        if ctx is not None:
            sock = self._wrap_tls(sock, ctx)  # type: ignore[arg-type]
        self._sock = sock
        if self._shut:  # shutdown() came while the socket was being made (see there)
            raise SessionError(f"the connection to the MQTT broker at {u} was shut down")
        flags = 0x02  # clean session
        payload = _utf8(self.client_id)
        if u.username:
            flags |= 0x80
            payload += _utf8(u.username)
            if u.password is not None:
                flags |= 0x40
                payload += _utf8(u.password)
        head = _utf8("MQTT") + bytes([4, flags]) + struct.pack("!H", self.keepalive)
        try:
            self._send(_packet(CONNECT, 0, head + payload))
            kind, _flags, body = self._read(deadline)
        except SessionTimeout:
            raise SessionStuck(
                f"the MQTT broker at {u} did not answer the connection within {timeout:g} s"
            ) from None
        except SessionError as e:
            if self._first:  # bytes came, and no whole packet: no MQTT broker
                raise self._not_mqtt() from None
            if u.tls:
                from tomato_mqtt.transport.types import client_cert_hint

                # TLS ended before the login was answered: a broker that requires client
                # certificates ends it so when it takes none, or not ours
                raise SessionExplained(f"{e}: {client_cert_hint(u.certfile)}") from None
            # plain MQTT to a TLS port: closed at once (an admin's tour: "— is tomato-mqtt
            # running?" about a broker that runs)
            raise SessionError(
                f"{e} (if port {u.port} takes TLS, as [broker] tls_port does, use mqtts://;"
                f" if it is the broker's WebSocket port, [broker] ws_port, use ws://)"
            ) from None
        if kind != CONNACK or len(body) < 2:
            raise self._not_mqtt()
        if body[1]:
            why = _CONNACK_WHY.get(body[1], f"code {body[1]}")
            raise SessionRefused(f"the MQTT broker at {u} refused the connection ({why})", body[1])

    def _not_mqtt(self) -> SessionExplained:
        u = self.url
        return SessionExplained(
            f"something at {u.host}:{u.port} answered, but not as an MQTT broker (it began "
            f"{self._first[:40]!r}): is {u.port} the broker's MQTT port, not a web "
            "server's (the dashboard's web_port, say)?"
        )

    def _wrap_tls(self, sock: socket.socket, ctx: ssl.SSLContext) -> socket.socket:
        import ssl

        u = self.url
        try:
            return ctx.wrap_socket(sock, server_hostname=u.host)
        except (OSError, ssl.SSLError) as e:
            sock.close()
            if isinstance(e, ssl.SSLCertVerificationError):
                raise SessionUntrusted(f"TLS with the MQTT broker at {u} failed: {e}") from None
            hint = ""
            if isinstance(e, ssl.SSLError) and any(
                w in str(e) for w in ("WRONG_VERSION_NUMBER", "UNEXPECTED_EOF", "record layer")
            ):  # TLS to a plain MQTT port (an admin's tour)
                hint = f" (if port {u.port} takes plain MQTT, use mqtt://)"
            raise SessionError(f"TLS with the MQTT broker at {u} failed: {e}{hint}") from None

    def close(self) -> None:
        """DISCONNECT (so the broker sends no last will and logs no error), then close."""
        if self._sock is None:
            return
        try:
            self._sock.sendall(_packet(DISCONNECT, 0, b""))
        except OSError:
            pass
        finally:
            self._sock.close()
            self._sock = None

    def shutdown(self) -> None:
        """From another thread: end the connection, so that what waits on it (a read)
        returns at once with :class:`SessionError`; also one :meth:`connect` is still
        making (it looks at the flag once its socket is public: one of the two sees the
        other)."""
        self._shut = True
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(_socket.SHUT_RDWR)

    # -- packets -------------------------------------------------------------------------
    def _next_mid(self) -> int:
        self._mid = self._mid % 65535 + 1
        return self._mid

    def subscribe(self, topic: str, qos: int, timeout: float) -> None:
        """Subscribe and wait for the SUBACK (a refused subscription raises)."""
        deadline = time.monotonic() + timeout
        mid = self._next_mid()
        self._send(_packet(SUBSCRIBE, 0x02, struct.pack("!H", mid) + _utf8(topic) + bytes([qos])))
        while True:
            try:
                kind, _flags, body = self._read(deadline)
            except SessionTimeout:
                raise SessionTimeout(
                    f"the MQTT broker at {self.url} did not acknowledge the subscription to "
                    f"{topic} within {timeout:g} s"
                ) from None
            if kind == SUBACK and body[:2] == struct.pack("!H", mid):
                if body[2:3] == b"\x80":
                    raise SessionRefused(f"the MQTT broker refused the subscription to {topic}")
                return
            if kind == PUBLISH:  # a retained message on an earlier subscription: keep it
                self._pending.append(self._publish(_flags, body))

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Send a PUBLISH (its PUBACK is read, and dropped, with the next packets)."""
        head = _utf8(topic)
        if qos:
            head += struct.pack("!H", self._next_mid())
        self._send(_packet(PUBLISH, qos << 1, head + payload))

    def receive(self, deadline: float) -> tuple[str, bytes, bool]:
        """The next message (topic, payload, retained) before ``deadline`` (monotonic)."""
        if self._pending:
            return self._pending.pop(0)
        while True:
            kind, flags, body = self._read(deadline)
            if kind == PUBLISH:
                return self._publish(flags, body)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _publish(self, flags: int, body: bytes) -> tuple[str, bytes, bool]:
        (n,) = struct.unpack_from("!H", body)
        topic = body[2 : 2 + n].decode("utf-8", "replace")
        at = 2 + n
        qos = (flags >> 1) & 3
        if qos:
            mid = body[at : at + 2]
            at += 2
            if qos == 1:
                self._send(_packet(PUBACK, 0, mid))
            else:  # QoS 2 is never asked for; answer as the protocol wants
                self._send(_packet(5, 0, mid))  # PUBREC
        return topic, body[at:], bool(flags & 1)

    def _connected(self) -> _socket.socket:
        if self._sock is None:
            raise SessionError(f"not connected to the MQTT broker at {self.url}")
        return self._sock

    def _send(self, data: bytes) -> None:
        sock = self._connected()
        try:
            sock.sendall(data)
        except OSError as e:
            raise SessionError(
                f"lost the connection to the MQTT broker at {self.url}: {e}"
            ) from None

    def _read(self, deadline: float) -> tuple[int, int, bytes]:
        """One whole packet: (type, flags, body)."""
        while True:
            got = self._split()
            if got is not None:
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                raise SessionTimeout("nothing arrived in time")
            sock = self._connected()
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise SessionTimeout("nothing arrived in time") from None
            except OSError as e:
                raise SessionError(
                    f"lost the connection to the MQTT broker at {self.url}: {e}"
                ) from None
            if not chunk:
                raise SessionError(f"the MQTT broker at {self.url} closed the connection")
            if not self._first:
                self._first = chunk[:64]
            self._buf += chunk

    def _split(self) -> tuple[int, int, bytes] | None:
        buf = self._buf
        n, mult, i = 0, 1, 1
        while True:
            if i >= len(buf):
                return None
            byte = buf[i]
            n += (byte & 0x7F) * mult
            mult *= 128
            i += 1
            if not byte & 0x80:
                break
            if i > 4:
                raise SessionError(f"a malformed packet from the MQTT broker at {self.url}")
        if len(buf) < i + n:
            return None
        self._buf = buf[i + n :]
        return buf[0] >> 4, buf[0] & 0x0F, buf[i : i + n]
