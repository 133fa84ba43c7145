"""The recorder's batch store and the node's spool: durable, de-duplicating, gap-aware."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tomato_mqtt.services.node.spool import Spool
from tomato_mqtt.services.recorder.store import BatchStore


def _raw(seq: int, n: int = 2) -> bytes:
    return json.dumps({"seq": seq, "uts": list(range(n))}).encode()


def test_store_drops_duplicates_and_tracks_high_water(tmp_path: Path) -> None:
    st = BatchStore(tmp_path / "r.sqlite")
    assert st.high_water("c", 1) == -1
    assert st.add("c", 1, 0, 7, 0, 2, _raw(0))
    assert not st.add("c", 1, 0, 7, 0, 2, _raw(0))  # QoS 1 may deliver twice
    assert st.add("c", 1, 1, 7, 0, 2, _raw(1))
    assert st.high_water("c", 1) == 1
    assert st.job_points(7) == {"c": 4}
    st.close()


def test_store_reports_gaps_until_they_are_filled(tmp_path: Path) -> None:
    st = BatchStore(tmp_path / "r.sqlite")
    for seq in (0, 1, 4, 5, 8):
        st.add("c", 1, seq, 1, 0, 1, _raw(seq))
    assert st.high_water("c", 1) == 1
    assert st.max_seq("c", 1) == 8
    assert st.missing("c", 1, 8) == [(2, 3), (6, 7)]
    assert st.missing("c", 1, 10) == [(2, 3), (6, 7), (9, 10)]
    assert st.missing("other", 1, 2) == [(0, 2)]
    for seq in (2, 3, 6, 7):
        st.add("c", 1, seq, 1, 0, 1, _raw(seq))
    assert st.missing("c", 1, 8) == []
    assert st.high_water("c", 1) == 8
    assert [row[2] for row in st.job_batches(1)] == list(range(9))
    st.close()


def test_store_survives_kill_9(tmp_path: Path) -> None:
    """A batch add() returned for is on disk, even if the process dies right after."""
    db = tmp_path / "r.sqlite"
    code = (
        "import os, sys\n"
        "from tomato_mqtt.services.recorder.store import BatchStore\n"
        f"st = BatchStore({str(db)!r})\n"
        "for seq in range(50):\n"
        "    st.add('c', 3, seq, 9, 0, 1, b'{}')\n"
        "os.kill(os.getpid(), 9)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert res.returncode == -9
    st = BatchStore(db)
    assert st.high_water("c", 3) == 49
    assert st.job_points(9) == {"c": 50}
    st.close()


def test_spool_keeps_until_acked_and_survives_restart(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s.sqlite")
    e1 = sp.new_epoch()
    for seq in range(5):
        assert sp.put("c", e1, seq, _raw(seq)) == 0
    assert sp.pending() == {("c", e1): (0, 4)}
    assert sp.ack("c", e1, 2) == 3
    assert [s for s, _ in sp.get("c", e1, 0, 10)] == [3, 4]
    sp.close()
    sp = Spool(tmp_path / "s.sqlite")
    e2 = sp.new_epoch()
    assert e2 > e1  # a restarted node never reuses an epoch
    assert sp.pending() == {("c", e1): (3, 4)}
    assert sp.size_bytes == sum(len(_raw(s)) for s in (3, 4))
    sp.close()


def test_spool_bounded_drops_oldest_and_counts(tmp_path: Path) -> None:
    one = len(_raw(0, 100))
    sp = Spool(tmp_path / "s.sqlite", max_bytes=3 * one)
    e = sp.new_epoch()
    dropped = [sp.put("c", e, seq, _raw(seq, 100)) for seq in range(5)]
    assert sum(dropped) == 2
    assert sp.dropped_total == 2
    assert sp.pending() == {("c", e): (2, 4)}
    assert sp.size_bytes <= 3 * one
    sp.close()
