"""The services' log files, each kept to a bounded size.

A plain ``logging.FileHandler`` grew for good: a 45-minute soak left 100 MB of logs
(~1 KB per job in the scheduler, node and recorder logs alone; the broker's more), and a
lab runs for months. :class:`RotatingLog` starts a new file when one reaches
:data:`MAX_BYTES` and keeps the :data:`KEEP` before it (``scheduler.log.1`` is the newest
of those). Not ``logging.handlers.RotatingFileHandler``: that module imports pickle,
socket and queue into every service, and the supervisor stays lean.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["KEEP", "MAX_BYTES", "RotatingLog"]

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
        path = self.baseFilename
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        for i in range(self.keep - 1, 0, -1):
            if os.path.exists(f"{path}.{i}"):
                os.replace(f"{path}.{i}", f"{path}.{i + 1}")
        if self.keep > 0:
            os.replace(path, f"{path}.1")
        else:
            os.remove(path)
        self.stream = self._open()
