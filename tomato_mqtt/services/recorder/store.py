"""The recorder's durable store: every data batch, once, keyed by ``(component, epoch, seq)``.

Pure (no MQTT). sqlite in WAL mode; each batch is committed before it is acknowledged
to the node, so a ``kill -9`` of the recorder loses nothing it acknowledged. Batches are
kept as the JSON that arrived (the NetCDF writer decodes them once, at the end), which
makes storing a batch one insert, whatever its size: no re-writing of a data file per
batch (upstream tomato's quadratic cost).

Per stream the store keeps its *high water*: the largest ``seq`` such that every batch
``0..seq`` is stored. Anything above it that is not stored is a gap.
"""

from __future__ import annotations

import bisect
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["BatchRow", "BatchStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    component TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    job INTEGER,
    task INTEGER,
    npoints INTEGER NOT NULL,
    raw BLOB NOT NULL,
    PRIMARY KEY (component, epoch, seq)
);
CREATE INDEX IF NOT EXISTS batches_job ON batches (job);
"""

BatchRow = tuple[str, int, int, "int | None", bytes]
"""``(component, epoch, seq, task, raw)`` as returned by :meth:`BatchStore.job_batches`."""


@dataclass
class _Stream:
    high_water: int = -1
    above: list[int] = field(default_factory=list)  # sorted seqs stored beyond high_water

    def add(self, seq: int) -> None:
        if seq == self.high_water + 1:
            self.high_water = seq
            while self.above and self.above[0] == self.high_water + 1:
                self.high_water = self.above.pop(0)
        elif seq > self.high_water + 1:
            i = bisect.bisect_left(self.above, seq)
            if i == len(self.above) or self.above[i] != seq:
                self.above.insert(i, seq)

    def missing(self, upto: int) -> list[tuple[int, int]]:
        gaps: list[tuple[int, int]] = []
        nxt = self.high_water + 1
        for s in self.above:
            if s > upto:
                break
            if s > nxt:
                gaps.append((nxt, s - 1))
            nxt = s + 1
        if nxt <= upto:
            gaps.append((nxt, upto))
        return gaps


class BatchStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._streams: dict[tuple[str, int], _Stream] = {}
        for c, e, s in self._db.execute(
            "SELECT component, epoch, seq FROM batches ORDER BY component, epoch, seq"
        ):
            self._stream(str(c), int(e)).add(int(s))

    def close(self) -> None:
        self._db.close()

    def _stream(self, component: str, epoch: int) -> _Stream:
        st = self._streams.get((component, epoch))
        if st is None:
            st = self._streams[(component, epoch)] = _Stream()
        return st

    def add(
        self,
        component: str,
        epoch: int,
        seq: int,
        job: int | None,
        task: int | None,
        npoints: int,
        raw: bytes,
    ) -> bool:
        """Store a batch durably; False when it was already stored (a duplicate)."""
        cur = self._db.execute(
            "INSERT OR IGNORE INTO batches (component, epoch, seq, job, task, npoints, raw) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (component, epoch, seq, job, task, npoints, raw),
        )
        if cur.rowcount == 0:
            return False
        self._stream(component, epoch).add(seq)
        return True

    @property
    def streams(self) -> list[tuple[str, int]]:
        return list(self._streams)

    def high_water(self, component: str, epoch: int) -> int:
        st = self._streams.get((component, epoch))
        return st.high_water if st is not None else -1

    def max_seq(self, component: str, epoch: int) -> int:
        st = self._streams.get((component, epoch))
        if st is None:
            return -1
        return st.above[-1] if st.above else st.high_water

    def missing(self, component: str, epoch: int, upto: int) -> list[tuple[int, int]]:
        """Gaps ``(first, last)`` (inclusive) of the stream in ``0..upto``."""
        st = self._streams.get((component, epoch))
        if st is None:
            return [(0, upto)] if upto >= 0 else []
        return st.missing(upto)

    def job_batches(self, job: int) -> list[BatchRow]:
        rows = self._db.execute(
            "SELECT component, epoch, seq, task, raw FROM batches WHERE job = ? "
            "ORDER BY component, epoch, seq",
            (job,),
        ).fetchall()
        return [(str(c), int(e), int(s), t, bytes(r)) for c, e, s, t, r in rows]

    def job_points(self, job: int) -> dict[str, int]:
        rows = self._db.execute(
            "SELECT component, SUM(npoints) FROM batches WHERE job = ? GROUP BY component",
            (job,),
        ).fetchall()
        return {str(c): int(n) for c, n in rows}
