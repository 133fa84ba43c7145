"""A stack whose broker cannot listen gives up at once instead of restarting for ever.

`tomato start` checks the broker's ports before it starts anything; this is the case it
cannot see (the port taken between the check and the bind): the supervisor itself must
give up when the broker exits at its first start, and take every service down.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stack import free_port
from tests.upstream.test_upstream_stack import processes_of
from tomato_mqtt.services.supervisor import STABLE_RUN, restart_delay

pytestmark = pytest.mark.timeout(240)


def test_supervisor_gives_up_when_the_broker_cannot_listen(tmp_path: Path) -> None:
    port = free_port()
    dirs = ["-A", str(tmp_path), "-D", str(tmp_path), "-L", str(tmp_path), "-p", str(port)]
    exe = [sys.executable, "-m", "tomato_mqtt.cli.tomato"]
    subprocess.run([*exe, "init", *dirs], check=True, capture_output=True, timeout=60)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port + 1))  # the WebSocket listener's port
        taken.listen()
        # it ends by itself (a restart loop would run into the timeout)
        res = subprocess.run([*exe, "supervise", *dirs], capture_output=True, timeout=180)
    assert res.returncode == 1, res
    log = (tmp_path / "supervisor.log").read_text()
    assert "the broker could not start" in log and "address already in use" in log, log
    assert log.count("started broker") == 1  # given up after its first exit, not restarted
    assert processes_of(port) == []


def test_a_service_that_served_is_restarted_at_once_a_crash_loop_backs_off() -> None:
    """A service killed after it served (a fault, not a crash loop) comes back after 0.2
    s however often it was killed in the last minute (a scheduler killed a few times in
    a minute came back after seconds, beyond a CLI's -t); one that exits soon after each
    start backs off, doubling up to 10 s."""
    fails: list[float] = []
    delays = []
    for k in range(4):  # killed every 6 s, each run serving more than STABLE_RUN
        now = 100.0 + 6 * k
        fails, delay = restart_delay(fails, now - STABLE_RUN - 1, now)
        delays.append(delay)
    assert delays == [0.2] * 4 and len(fails) == 1
    fails, delays = [], []
    for k in range(8):  # exits 0.5 s after each start
        now = 100.0 + k
        fails, delay = restart_delay(fails, now - 0.5, now)
        delays.append(delay)
    assert delays == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]
    # a minute later the old exits no longer count
    assert restart_delay(fails, 200.0 - 0.5, 200.0)[1] == 0.2
