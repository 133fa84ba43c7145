"""Socket plumbing of :class:`~tomato_mqtt.transport.client.AsyncClient`.

paho tells the client which socket it opened; the asyncio loop then drives its reads
and writes (``add_reader``/``add_writer``), as aiomqtt does, so there is no network
thread. Also the ack bookkeeping (a future per message id) and the clean disconnect.
Kept apart from ``client.py`` only for size: paho is imported here for types only.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tomato_mqtt.waits import wait_for

if TYPE_CHECKING:
    import paho.mqtt.client as paho

__all__: list[str] = []

#: MQTT 3.1.1 DISCONNECT: packet type 14, no flags, remaining length 0
_DISCONNECT = b"\xe0\x00"


class _LoopDriven:
    _paho: paho.Client | None
    _loop: asyncio.AbstractEventLoop | None
    _loop_thread: int | None
    _connected: asyncio.Event
    _sock: Any
    _acks: dict[int, asyncio.Future[Any]]
    _connack: asyncio.Future[int] | None
    _websockets: bool  # paho's WebSocket transport: its own DISCONNECT (no raw bytes)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        raise NotImplementedError  # AsyncClient's

    # acks: a future per message id, resolved by paho's callbacks
    def _ack_future(self, mid: int) -> asyncio.Future[Any]:
        fut = self._acks.get(mid)
        if fut is None:
            fut = self._running_loop().create_future()
            self._acks[mid] = fut
        return fut

    def _resolve(self, mid: int, value: Any) -> None:
        fut = self._acks.get(mid)
        # nobody waits for it: a publish without ``wait`` (the waiters register at once
        # after paho's call, before the loop can read an ack). A resolved future was left
        # behind for each such message: up to 65,535 of them per client (~12 MB; a soak
        # run's scheduler grew 45 -> 80 MB), and a later message of the same id, after
        # the ids wrapped, found it and took the old ack for its own
        if fut is not None and not fut.done():
            fut.set_result(value)

    def _fail_pending(self, exc: Exception) -> None:
        for fut in self._acks.values():
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: nobody may be waiting any more
        self._acks.clear()
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(exc)
            self._connack.exception()

    def _on_publish(self, c: paho.Client, ud: Any, mid: int, rc: Any, props: Any) -> None:
        self._resolve(mid, None)

    def _on_subscribe(self, c: paho.Client, ud: Any, mid: int, granted: Any, props: Any) -> None:
        self._resolve(mid, [getattr(g, "value", g) for g in granted])

    def _on_unsubscribe(self, c: paho.Client, ud: Any, mid: int, rcs: Any, props: Any) -> None:
        self._resolve(mid, None)

    # socket plumbing: paho tells us its socket; the asyncio loop drives reads/writes
    def _in_loop(self, fn: Callable[[], None]) -> None:
        # paho opens the socket inside reconnect(), which runs in an executor thread
        if threading.get_ident() == self._loop_thread:
            fn()
        else:
            self._running_loop().call_soon_threadsafe(fn)

    def _on_socket_open(self, c: paho.Client, ud: Any, sock: Any) -> None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock

        def add() -> None:
            self._running_loop().add_reader(sock, self._do_read)

        self._in_loop(add)

    def _on_socket_close(self, c: paho.Client, ud: Any, sock: Any) -> None:
        def rm() -> None:
            with contextlib.suppress(Exception):
                loop = self._running_loop()
                loop.remove_reader(sock)
                loop.remove_writer(sock)

        self._in_loop(rm)

    def _on_socket_register_write(self, c: paho.Client, ud: Any, sock: Any) -> None:
        def add() -> None:
            with contextlib.suppress(Exception):
                self._running_loop().add_writer(sock, self._do_write)

        self._in_loop(add)

    def _on_socket_unregister_write(self, c: paho.Client, ud: Any, sock: Any) -> None:
        def rm() -> None:
            with contextlib.suppress(Exception):
                self._running_loop().remove_writer(sock)

        self._in_loop(rm)

    def _do_read(self) -> None:
        if self._paho is not None:
            self._paho.loop_read(max_packets=100)

    def _do_write(self) -> None:
        if self._paho is not None:
            self._paho.loop_write()

    async def _misc_loop(self) -> None:
        # keep-alive pings and paho's retry bookkeeping; paho wants this about once a second
        while True:
            await asyncio.sleep(1.0)
            if self._paho is not None and self._connected.is_set():
                self._paho.loop_misc()

    async def _disconnect_cleanly(self, linger: float = 1.0) -> bool:
        """DISCONNECT, then half-close and read until the broker closes (≤ ``linger`` s).

        paho closes its socket right after writing DISCONNECT. A socket closed while
        incoming messages wait unread in it sends a RST, and a broker that gets the RST
        before it has read the DISCONNECT drops it unread and publishes the last will:
        a service stopping in order (``offline``) was then shown ``lost``. A FIN after
        the DISCONNECT (over TLS, none: the broker closes on DISCONNECT), and reading on
        until the broker closes, leave no such race.
        False when this way does not apply (WebSockets, a write still pending): then
        paho's own DISCONNECT is used.
        """
        sock, loop, c = self._sock, self._loop, self._paho
        if sock is None or loop is None or c is None or self._websockets:
            return False
        with contextlib.suppress(Exception):
            c.loop_write()  # what paho still has queued goes first, whole
        if c.want_write():
            return False
        with contextlib.suppress(Exception):
            loop.remove_reader(sock)
            loop.remove_writer(sock)
        try:
            sock.send(_DISCONNECT)
            if not isinstance(sock, ssl.SSLSocket):
                # (over TLS, no end of its own: a TLS stream that ends, with TLS's
                # close_notify or without, ends the broker's side of it too, and amqtt,
                # whose PUBACK for a publish just before then found it closed, published
                # the will: a remote node stopped cleanly over TLS was shown `lost` (an
                # admin's tour, 3 of 3). The broker closes the connection on DISCONNECT)
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            return True  # the broker is gone: nothing more to say to it
        closed: asyncio.Future[None] = loop.create_future()

        def readable() -> None:  # what still arrives is dropped; EOF: the broker closed
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                return
            except OSError:
                data = b""
            if not data and not closed.done():
                closed.set_result(None)

        # by its number: the socket may be closed meanwhile (then sock.fileno() is -1
        # and removing the reader by the socket object raised ValueError at a stop)
        fd = sock.fileno()
        loop.add_reader(fd, readable)
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await wait_for(closed, linger)
        finally:
            loop.remove_reader(fd)
        return True
