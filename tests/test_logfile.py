"""The services' logs, and what they print, are kept to a bounded size (a soak: 100 MB of
logs in 45 minutes)."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from tomato_mqtt.services.logfile import MAX_BYTES, RotatingFile, RotatingLog
from tomato_mqtt.services.supervisor import Child, Supervisor, _last_error


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


async def test_what_a_service_prints_is_kept_to_a_bounded_size(tmp_path: Path) -> None:
    """A supervised service's stdout and stderr went straight into NAME.stderr.log, which
    grew for good (a driver printing every point fills a disk). They now go through the
    supervisor into files of MAX_BYTES, KEEP of them; the last words of a service that
    exits are in the newest one, where `tomato start` looks for the reason."""
    sup = Supervisor(
        [], logdir=tmp_path, pidfile=tmp_path / "pid", embedded_broker=False,
        broker_host="127.0.0.1", port=1, node_name="local",
    )  # fmt: skip
    line = "x" * 99 + "\n"
    chatty = (
        "import sys\n"
        f"for i in range({(MAX_BYTES * 3) // 100}):\n"
        f"    (sys.stdout if i % 2 else sys.stderr).write({line!r})\n"
        "sys.stdout.flush()\n"
        "sys.stderr.write('ValueError: the last words\\n')\n"
        "sys.exit(3)\n"
    )
    child = Child("node", [sys.executable, "-c", chatty])
    await sup._spawn(child)
    assert child.proc is not None and child.pump is not None
    assert await asyncio.wait_for(child.proc.wait(), 60) == 3
    await asyncio.wait_for(child.pump, 10)
    files = sorted(p.name for p in tmp_path.glob("node.stderr.log*"))
    assert files == ["node.stderr.log", "node.stderr.log.1", "node.stderr.log.2"], files
    sizes = [(tmp_path / f).stat().st_size for f in files]
    assert all(s <= MAX_BYTES + 65536 for s in sizes), sizes
    assert sum(sizes) >= 3 * (MAX_BYTES // 100) * 100  # nothing printed was lost
    assert _last_error(child.log_path) == "ValueError: the last words"


def test_a_full_disk_does_not_stop_what_a_service_prints(tmp_path: Path) -> None:
    out = RotatingFile(tmp_path / "node.stderr.log", max_bytes=100, keep=1)
    out.write(b"a" * 150)
    out._file.close()  # as a write that fails (ENOSPC): the data is lost, no exception
    out.write(b"b" * 10)
    out.close()
    assert (tmp_path / "node.stderr.log").read_bytes() == b"a" * 150
