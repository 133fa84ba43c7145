"""Topic-safe names: tomato's names (``example_counter:(example-addr,1)``, ``COM3``,
``/dev/ttyUSB0``) mapped to topic segments, stably and without collisions.

Used by ``topics.py`` (which re-exports both functions); no topic strings here.
"""

from __future__ import annotations

__all__ = ["is_slug", "shown_client_id", "slug"]

# the slug alphabet, checked without ``re``: this module is on every CLI call that names
# something, and ``re`` (with ``enum`` and its compiler) is ~2-4 ms of such a call
_LEAD = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_ALLOWED = _LEAD | frozenset("_.-")
_HEX = frozenset("0123456789abcdef")
_MAX_READABLE = 48


def is_slug(name: str) -> bool:
    """True when ``name`` can stand as a topic segment unchanged (``[a-z0-9][a-z0-9_.-]*``)."""
    return bool(name) and name[0] in _LEAD and _ALLOWED.issuperset(name)


def _hashed_tail(name: str) -> bool:
    """Whether ``name`` ends in ``--`` and ten hex digits, as a hashed slug does."""
    return len(name) >= 12 and name[-12:-10] == "--" and _HEX.issuperset(name[-10:])


def _dash_runs(name: str) -> str:
    """Each run of characters outside the slug alphabet replaced by one ``-``."""
    out: list[str] = []
    outside = False
    for c in name:
        if c in _ALLOWED:
            out.append(c)
            outside = False
        elif not outside:
            out.append("-")
            outside = True
    return "".join(out)


def slug(name: str) -> str:
    """Map any name to a topic-safe segment, stably and without collisions.

    A name that is already a slug maps to itself, so simple names stay readable in
    topics. Any other name maps to a readable part plus ``--`` and ten hex digits of a
    hash of the whole name. The hash keeps distinct names distinct (``COM3`` and
    ``com3``); a slug-like name that happens to end in that ``--hex`` pattern is hashed
    too, so an identity mapping can never collide with a hashed one.
    """
    if is_slug(name) and len(name) <= _MAX_READABLE + 12 and not _hashed_tail(name):
        return name
    readable = _dash_runs(name.lower()).strip("-._")[:_MAX_READABLE].rstrip("-._")
    if not readable or not readable[0].isalnum():
        readable = "x" + readable
    try:  # CPython's own blake2 (hashlib's is this one): hashlib would load OpenSSL too,
        from _blake2 import blake2b  # ~2-3 ms of every passata call
    except ImportError:  # another Python
        from hashlib import blake2b

    digest = blake2b(name.encode("utf-8"), digest_size=5).hexdigest()
    return f"{readable}--{digest}"


#: the hex digits of a service's unguessable client id tail (64 bits: docs/security.md)
_SECRET_TAIL = 16


def shown_client_id(client_id: str) -> str:
    """``client_id`` as logs show it: a service's unguessable tail (``-`` and 16 or more
    hex digits: ``scheduler-lab-<random>``, ``node-<name>-<pid>-<random>``) cut to ``-…``.
    The tail is what keeps another login from taking the id over on Mosquitto, and the
    services' logs (and the embedded broker's) are readable by other users of the PC: it
    was in every reconnect line (a hostile tour)."""
    head, dash, tail = client_id.rpartition("-")
    if dash and len(tail) >= _SECRET_TAIL and _HEX.issuperset(tail):
        return f"{head}-…"
    return client_id
