"""The services' logs are kept to a bounded size (a soak: 100 MB of logs in 45 minutes)."""

from __future__ import annotations

import logging
from pathlib import Path

from tomato_mqtt.services.logfile import RotatingLog


def test_a_log_turns_over_at_its_size_and_keeps_that_many_before_it(tmp_path: Path) -> None:
    path = tmp_path / "scheduler.log"
    log = logging.getLogger("test-rotating-log")
    log.propagate = False
    handler = RotatingLog(path, max_bytes=1000, keep=3)
    log.addHandler(handler)
    try:
        for i in range(500):  # ~25 kB
            log.warning("line %04d of the log, long enough to fill it soon", i)
    finally:
        log.removeHandler(handler)
        handler.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["scheduler.log", "scheduler.log.1", "scheduler.log.2", "scheduler.log.3"]
    assert all((tmp_path / f).stat().st_size < 1100 for f in files)
    # the newest lines in the log itself, the ones before them in .1
    assert "line 0499" in path.read_text()
    newest_before = (tmp_path / "scheduler.log.1").read_text().splitlines()[-1]
    first_now = path.read_text().splitlines()[0]
    assert int(newest_before.split()[1]) + 1 == int(first_now.split()[1])
