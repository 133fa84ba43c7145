"""Errors of configuration files, and one way to describe pydantic's errors to people.

A bad file is refused with the file, where in it, and why, on one line, e.g.
``devices.yml: pipelines[0] 'pip-counter' devices[0]: unknown device 'dev-x'``.
Reading a YAML or JSON document (and what it may hold) is :mod:`tomato_mqtt.documents`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # kept off the CLI's import path (pydantic is ~60 ms)
    from pydantic import ValidationError

__all__ = [
    "BROKEN_DRIVER",
    "ConfigError",
    "StartupError",
    "cannot_write",
    "describe_validation_error",
    "format_location",
    "lock_holders",
    "locked",
    "locked_by",
    "nearest",
    "one_line",
    "read_only",
    "store_words",
    "writable_bytes",
]


#: how a component's error starts when its driver's code is wrong for it (the node does
#: not retry it; ``tomato start`` does not wait for it)
BROKEN_DRIVER = "the driver is broken: "


#: SQLite's words for a file it cannot *write* (or open for writing): its disk, its
#: folder's or its own permissions; the file itself may well be intact. One list for the
#: message at a start (config.statefiles) and the answer to a request (transport.rpc).
_CANNOT_WRITE = (
    "disk is full",
    "readonly",
    "unable to open",
    "disk I/O error",
    "Permission denied",
    "Read-only file system",
    "No space left",
    "database is locked",  # another program holds its write lock (see lock_holders)
)


def cannot_write(why: str) -> bool:
    """Whether SQLite's (or the OS's) ``why`` says a file cannot be written, not that it
    is damaged (an SQL bug such as "no such table" is neither)."""
    return any(w in why for w in _CANNOT_WRITE)


def locked(why: str) -> bool:
    """Whether SQLite's ``why`` says another connection holds the file's write lock
    (SQLITE_BUSY): the file is intact, and writes go through once it lets go."""
    return "database is locked" in why


def locked_by(why: str, path: str | Path) -> str:
    """SQLite's ``why`` with who holds the file's lock and what to do, when it says the
    file is locked (another program's transaction); else ``why`` as it is."""
    if not locked(why):
        return why
    holders = ", ".join(lock_holders(path)) or "a process not found in /proc/locks"
    return f"{why} by another program ({holders}): end its transaction"


def store_words(why: str, path: str | Path) -> str:
    """SQLite's ``why`` about the store at ``path``, with what it is about: who holds its
    lock (:func:`locked_by`), or, for its "disk I/O error" and "readonly database",
    which of its files cannot be written or that its disk is full (an immutable store
    read "disk I/O error" only, and an admin could not tell it was no disk fault: an
    admin's tour)."""
    if locked(why):
        return locked_by(why, path)
    if "disk I/O error" not in why and "readonly" not in why:
        return why
    p = Path(path)
    files = [p, p.with_name(p.name + "-wal"), p.with_name(p.name + "-shm")]
    denied = [str(f) for f in files if f.exists() and not os.access(f, os.W_OK)]
    if not os.access(p.parent, os.W_OK):
        denied.append(f"its folder {p.parent}")
    if denied:
        return (
            f"{why}: {', '.join(denied)} cannot be written by this user (permissions, a "
            "read-only mount, or an immutable attribute: `lsattr`)"
        )
    free = writable_bytes(p.parent)
    if free is not None and free < 1 << 20:
        return f"{why}: its disk is full ({free} bytes free in {p.parent})"
    return why


def lock_holders(path: str | Path) -> list[str]:
    """The other processes that hold a write lock on the SQLite file at ``path`` or on
    its ``-shm`` (where a WAL file's writer locks), as ``pid N (command line)``; empty
    where the OS does not say (no ``/proc/locks``) or none is found. An admin's
    ``sqlite3`` shell left inside a transaction froze the scheduler for 30 s at each
    write, and the answer blamed a full disk or permissions (a fault run)."""
    inodes = set()
    for p in (Path(path), Path(f"{path}-shm")):
        try:
            st = os.stat(p)
        except OSError:
            continue
        inodes.add((os.major(st.st_dev), os.minor(st.st_dev), st.st_ino))
    try:
        table = Path("/proc/locks").read_text()
    except OSError:
        return []
    pids: list[int] = []
    for line in table.splitlines():
        f = line.split()
        # "1: POSIX  ADVISORY  WRITE 3372 fd:00:123456 0 EOF" (a waiter has "->" first)
        if len(f) < 6 or f[1] == "->" or f[3] != "WRITE" or not f[4].isdigit():
            continue
        try:
            maj, mnr, ino = f[5].split(":")
            key = (int(maj, 16), int(mnr, 16), int(ino))
        except ValueError:
            continue
        pid = int(f[4])
        if key in inodes and pid != os.getpid() and pid not in pids:
            pids.append(pid)
    out = []
    for pid in pids:
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            cmd = raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmd = ""
        cmd = " ".join(cmd.split())
        cmd = cmd if len(cmd) <= 80 else cmd[:77] + "..."
        out.append(f"pid {pid} ({cmd})" if cmd else f"pid {pid}")
    return out


#: bytes a disk needs free for a state file on it to take writes (below: said full, and
#: `tomato start` refuses)
ROOM_BYTES = 1 << 20


def writable_bytes(folder: str | Path) -> int | None:
    """Bytes this process may still write on the folder's disk (0 on a read-only one);
    None where the OS does not say (Windows, a folder gone). The filesystem's reserve
    (ext4: 5 %) counts for the host's root only: root in a user namespace (a rootless
    container) may not write into it, and counting it there made a full disk's fault come
    and go (a review)."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    if st.f_flag & os.ST_RDONLY:
        return 0
    return (st.f_bfree if _host_root() else st.f_bavail) * st.f_frsize


def read_only(folder: str | Path) -> bool:
    """Whether the folder's disk is mounted read-only now (False where the OS does not
    say)."""
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def _host_root() -> bool:
    if os.geteuid() != 0:
        return False
    try:  # "0 0 4294967295" in the host's namespace; "0 100000 65536" in a container's
        return Path("/proc/self/uid_map").read_text().split()[:2] == ["0", "0"]
    except OSError:  # no user namespaces here
        return True


class StartupError(Exception):
    """A service cannot start (a state file it cannot open): one line for the user, no
    traceback; the service exits 1."""


class ConfigError(ValueError):
    """A configuration file (settings.toml, devices.yml) that cannot be used."""

    def __init__(self, file: str | Path | None, location: str | None, reason: str) -> None:
        self.file = str(file) if file is not None else None
        self.location = location or None
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [p for p in (self.file, self.location) if p]
        return ": ".join([*parts, self.reason])

    @classmethod
    def from_validation_error(
        cls, file: str | Path | None, err: ValidationError, data: Any = None
    ) -> ConfigError:
        """One ConfigError for all of ``err``: the first problem in front, the rest after."""
        return cls(file, *one_line(describe_validation_error(err, data)))


def format_location(loc: Sequence[int | str], data: Any = None) -> str:
    """``("pipelines", 0, "devices", 1, "role")`` -> ``pipelines[0] 'pip-x' devices[1].role``.

    With ``data`` (the raw document), list items that carry a ``name`` are labelled with
    it, as a reader looks for the name rather than count entries.
    """
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            item = _child(node, part)
            name = item.get("name") if isinstance(item, Mapping) else None
            if isinstance(name, str):
                out += f" {name!r}"
            node = item
        else:
            sep = "." if out and not out.endswith("'") else " " if out else ""
            out += f"{sep}{part}"
            node = _child(node, part)
    return out


def _child(node: Any, key: int | str) -> Any:
    if isinstance(key, int) and isinstance(node, Sequence) and not isinstance(node, str):
        return node[key] if -len(node) <= key < len(node) else None
    if isinstance(key, str) and isinstance(node, Mapping):
        return node.get(key)
    return None


_REWORDED = {
    "missing": "field required",
    "extra_forbidden": "unknown field",
}


def describe_validation_error(err: ValidationError, data: Any = None) -> list[tuple[str, str]]:
    """``[(location, reason), ...]`` for every problem in ``err``, in plain words."""
    out: list[tuple[str, str]] = []
    for e in err.errors(include_url=False):
        # union members and function validators add loc parts that mean nothing to users
        loc = [p for p in e["loc"] if not (isinstance(p, str) and p.endswith("]"))]
        where = format_location(loc, data)
        kind = e["type"]
        if kind in _REWORDED:
            reason = _REWORDED[kind]
        else:
            reason = str(e["msg"])
            for lead in ("Value error, ", "Assertion failed, "):
                if reason.startswith(lead):
                    reason = reason[len(lead) :]
            reason = reason[:1].lower() + reason[1:]
            if kind not in ("value_error", "assertion_error") and "input" in e:
                reason += f" (got {_short(e['input'])})"
        out.append((where, reason))
    return out or [("", str(err))]


def one_line(problems: Sequence[tuple[str, str]]) -> tuple[str, str]:
    """``(location, reason)`` of the first problem, with the others appended to the reason."""
    loc, reason = problems[0]
    if len(problems) > 1:
        rest = "; ".join(f"{lo}: {re}" if lo else re for lo, re in problems[1:])
        reason = f"{reason} (and {len(problems) - 1} more: {rest})"
    return loc, reason


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def nearest(name: str, choices: Iterable[str], cutoff: float = 0.8) -> str | None:
    """The one of ``choices`` that ``name`` most likely misspells, or None: the same but
    for case, one letter added, dropped, changed, or two neighbours swapped (names of 3
    letters or more), else difflib's closest at ``cutoff``. difflib alone missed short
    names: `mcf` for `mfc` is 0.67 (a driver author's tour)."""
    known = [c for c in choices if c != name]
    low = name.casefold()
    for c in known:
        if c.casefold() == low:
            return c
    if len(name) >= 3:
        for c in known:
            if _one_edit(low, c.casefold()):
                return c
    import difflib

    near = difflib.get_close_matches(name, known, n=1, cutoff=cutoff)
    return near[0] if near else None


def _one_edit(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` differ by one letter added, dropped or changed, or by two
    neighbouring letters swapped."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    if len(a) == len(b):
        swapped = i + 1 < len(a) and a[i] == b[i + 1] and a[i + 1] == b[i]
        return a[i + 1 :] == b[i + 1 :] or (swapped and a[i + 2 :] == b[i + 2 :])
    return a[i + 1 :] == b[i:] if len(a) > len(b) else a[i:] == b[i + 1 :]
