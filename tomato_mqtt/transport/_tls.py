"""TLS for the MQTT client: the context a ``mqtts://`` URL asks for.

As ``ssl.create_default_context()`` (hostname check, certificate required) with the
URL's CA file and client certificate; ``tls_insecure`` turns verification off (tests,
self-signed set-ups that know what they do). paho does not close a TLS socket whose
handshake failed, so the context remembers the last socket it wrapped and the client
closes it (one leaked fd per reconnect attempt otherwise).
"""

from __future__ import annotations

import contextlib
import ssl
from typing import Any

from tomato_mqtt.config.url import BrokerURL, warn_insecure

__all__ = ["TrackingContext", "client_tls_context"]


class TrackingContext(ssl.SSLContext):
    """An SSLContext that remembers the last socket it wrapped."""

    last: ssl.SSLSocket | None = None

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        sock = super().wrap_socket(*args, **kwargs)
        self.last = sock
        return sock

    def close_last(self) -> None:
        sock, self.last = self.last, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


def client_tls_context(url: BrokerURL) -> TrackingContext:
    """The context; a file of the URL (or settings) that cannot be read is an OSError
    naming it and its key (it said "[Errno 2] No such file or directory — is
    tomato-mqtt running?": an admin's tour)."""
    ctx = TrackingContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if url.ca_certs:
            ctx.load_verify_locations(cafile=url.ca_certs)
        else:
            ctx.load_default_certs()
    except OSError as e:
        raise OSError(e.errno, f"ca_certs {url.ca_certs}: {e.strerror or e}") from None
    try:
        if url.certfile:
            ctx.load_cert_chain(url.certfile, url.keyfile)
    except OSError as e:
        raise OSError(
            e.errno, f"certfile {url.certfile} / keyfile {url.keyfile}: {e.strerror or e}"
        ) from None
    if url.tls_insecure:
        warn_insecure()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
