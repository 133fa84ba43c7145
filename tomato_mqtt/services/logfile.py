"""The services' log files, each kept to a bounded size.

A plain ``logging.FileHandler`` grew for good: a 45-minute soak left 100 MB of logs
(~1 KB per job in the scheduler, node and recorder logs alone; the broker's more), and a
lab runs for months. :class:`RotatingLog` starts a new file when one reaches
:data:`MAX_BYTES` and keeps the :data:`KEEP` before it (``scheduler.log.1`` is the newest
of those). Not ``logging.handlers.RotatingFileHandler``: that module imports pickle,
socket and queue into every service, and the supervisor stays lean.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

__all__ = ["KEEP", "MAX_BYTES", "RotatingFile", "RotatingLog"]

#: bytes of one log file before the next one is started
MAX_BYTES = 10 * 1024 * 1024
#: older files kept (``NAME.log.1`` … ``NAME.log.KEEP``)
KEEP = 5


class RotatingLog(logging.FileHandler):
    """A log file of at most ``max_bytes`` (give or take a record), and ``keep`` older ones."""

    def __init__(self, path: Path, max_bytes: int = MAX_BYTES, keep: int = KEEP) -> None:
        super().__init__(path, encoding="utf-8")
        self.max_bytes = max_bytes
        self.keep = keep

    def emit(self, record: logging.LogRecord) -> None:
        try:  # under the handler's lock, as the write is
            if self.stream is not None and self.stream.tell() >= self.max_bytes:
                self._rotate()
        except (OSError, ValueError):  # a log that cannot turn over goes on as it is
            pass
        super().emit(record)

    def _rotate(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        _turn_over(self.baseFilename, self.keep)
        self.stream = self._open()


class RotatingFile:
    """What a child process prints (its stdout and stderr, as bytes), kept as
    :class:`RotatingLog` keeps a log: the supervisor wrote it straight into a file that
    grew for good (a driver that prints each point fills a disk in days)."""

    def __init__(self, path: Path, max_bytes: int = MAX_BYTES, keep: int = KEEP) -> None:
        self.path = str(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self._file = open(self.path, "ab")  # noqa: SIM115 (closed by close())

    def write(self, data: bytes) -> None:
        """Append ``data``; what cannot be written (a full disk) is lost, the child goes
        on (it must never block on its output), and the next write opens the file
        again (a failed turn-over left it closed: nothing was written any more)."""
        try:
            if self._file.closed:
                self._file = open(self.path, "ab")  # noqa: SIM115
            if self._file.tell() >= self.max_bytes:
                self._file.close()
                with contextlib.suppress(OSError):  # (a file removed meanwhile)
                    _turn_over(self.path, self.keep)
                self._file = open(self.path, "ab")  # noqa: SIM115
            self._file.write(data)
            self._file.flush()
        except (OSError, ValueError):
            with contextlib.suppress(OSError, ValueError):
                self._file.close()  # opened again by the next write

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()


def _turn_over(path: str, keep: int) -> None:
    """``path`` becomes ``path.1`` (``path.1`` becomes ``path.2``, ...); ``keep`` older
    files stay, the oldest goes."""
    for i in range(keep - 1, 0, -1):
        if os.path.exists(f"{path}.{i}"):
            os.replace(f"{path}.{i}", f"{path}.{i + 1}")
    if keep > 0:
        os.replace(path, f"{path}.1")
    else:
        os.remove(path)
