"""The services' logs, and what they print, are kept to a bounded size (a soak: 100 MB of
logs in 45 minutes)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
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


def test_what_a_service_prints_is_kept_again_after_a_write_or_turn_over_failed(
    tmp_path: Path,
) -> None:
    """A review: after one failed turn-over (a full disk as the file reached its size,
    or the file removed by an admin) the file stayed closed and nothing was written any
    more until the service restarted."""
    log = tmp_path / "node.stderr.log"
    out = RotatingFile(log, max_bytes=100, keep=1)
    out.write(b"a" * 150)
    out._file.close()  # as after a flush that failed (ENOSPC): closed under it
    out.write(b"b" * 10)  # opened again, and turned over: it was past its size
    assert (tmp_path / "node.stderr.log.1").read_bytes() == b"a" * 150
    assert log.read_bytes() == b"b" * 10
    out.write(b"c" * 100)
    log.unlink()  # removed by an admin just before the file turns over
    out.write(b"d" * 10)
    out.close()
    assert log.read_bytes() == b"d" * 10


async def test_a_service_whose_helper_holds_its_output_is_restarted_at_once(
    tmp_path: Path,
) -> None:
    """A review: with asyncio's own pipes, a service's exit was seen only once every
    process holding its output had closed it. A helper the service left behind (a
    driver's) kept a killed node from being restarted (40 s, or for good) and made
    `tomato stop` wait its grace out. The supervisor's own pipe sees the exit at once."""
    sup = Supervisor(
        [], logdir=tmp_path, pidfile=tmp_path / "pid", embedded_broker=False,
        broker_host="127.0.0.1", port=1, node_name="local",
    )  # fmt: skip
    pids = tmp_path / "helpers"
    leaves_a_helper = (
        "import subprocess, sys\n"
        "h = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pids)!r}, 'a').write(f'{{h.pid}}\\n')\n"
        "print('leaving a helper', flush=True)\n"
        "sys.exit(1)\n"
    )
    child = Child("node", [sys.executable, "-c", leaves_a_helper])
    watch = asyncio.ensure_future(sup._watch(child))
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while child.restarts < 2:  # exits at once each time: 0.2, 0.4 s of back-off
            assert loop.time() < deadline, f"restarted {child.restarts} times in 20 s"
            await asyncio.sleep(0.05)
        assert "leaving a helper" in (tmp_path / "node.stderr.log").read_text()
    finally:
        sup.stopping = True
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
        if child.proc is not None and child.proc.returncode is None:
            child.proc.kill()
            await child.proc.wait()
        for pid in pids.read_text().split() if pids.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        if child.pump is not None:
            child.pump.cancel()
            await asyncio.gather(child.pump, return_exceptions=True)


def test_a_log_line_is_cut_to_a_bounded_length(tmp_path: Path) -> None:
    """A hostile tour: a forged name of 100 kB was said whole in the services' logs, so a
    few messages rotated a service's history away. The message is cut, the traceback
    kept."""
    from tomato_mqtt.services.base import LOG_LINE_MAX, setup_logging

    root = logging.getLogger()
    before = (root.handlers[:], root.level)
    try:
        setup_logging("cut", tmp_path)
        log = logging.getLogger("tomato_mqtt.test")
        log.warning("dropped a message of %s", "x" * 100_000)
        try:
            raise ValueError("kept")
        except ValueError:
            log.exception("short")
        for h in root.handlers:
            h.flush()
        lines = (tmp_path / "cut.log").read_text().splitlines()
    finally:
        for h in root.handlers:
            h.close()
        root.handlers[:], level = before
        root.setLevel(level)
    assert len(lines[0]) < LOG_LINE_MAX + 100, len(lines[0])
    head, _, tail = lines[0].partition("… (")
    said = len(head[: head.index("dropped")]) + len("dropped a message of ") + 100_000
    assert len(head) == LOG_LINE_MAX and tail == f"{said - LOG_LINE_MAX} more characters)"
    assert lines[1].endswith("short") and "ValueError: kept" in lines[-1], lines
