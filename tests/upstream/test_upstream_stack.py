"""Upstream tomato 2.2's start/stop scenarios (``test_01_tomato``: start without init,
with init, twice, verbosity, stop; ``test_03_state``: stop with queued jobs and start
again), ported to the real ``tomato start``/``stop`` as a user runs them: one stack in
subprocesses, stopped and started again once.

Also the port clash of issue 12: with the WebSocket port (MQTT port + 1) taken,
``tomato start`` fails at once with one clear error and leaves nothing running.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.stack import BIN, CONFIG, cli_env, free_port

pytestmark = pytest.mark.timeout(180)


def tomato(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=cwd,
        env=cli_env(None, *args),  # (coverage: `tomato start` and its services only)
    )


def reply(res: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """The Reply a -y call printed (upstream's tests read ``ret.success`` / ``ret.msg``)."""
    doc = yaml.safe_load(res.stdout)
    assert isinstance(doc, dict) and set(doc) == {"success", "msg", "data"}, (
        res.stdout,
        res.stderr,
    )
    return doc


#: the modules a process of a stack runs: the services' entry, the CLI, the supervisor
_ENTRIES = (b"tomato_mqtt.cli.serve", b"tomato_mqtt.cli.tomato", b"tomato_mqtt.services.supervisor")


def processes_of(port: int, service: str = "") -> list[int]:
    """Live processes whose command line names this stack's port (ours only)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        entries = (
            b"tomato_mqtt.cli.serve",
            b"tomato_mqtt.cli.tomato",
            b"tomato_mqtt.services.supervisor",
        )
        mod = any(e in cmd for e in entries)
        ours = mod and str(port).encode() in cmd
        if state != "Z" and ours and (not service or service.encode() in cmd):
            out.append(int(d.name))
    return out


def wait_status(jobid: int, want: set[str], port: int, cwd: Path) -> dict[str, Any]:
    """Upstream's wait_until_ketchup_status, on the -y Reply (not the human text)."""
    deadline = time.monotonic() + 30
    while True:
        data = reply(tomato("ketchup", "status", str(jobid), "-p", str(port), "-y", cwd=cwd))[
            "data"
        ]
        job: dict[str, Any] = data[0]  # type: ignore[index]
        if job["status"] in want or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


def test_01_03_start_stop_state(tmp_path: Path) -> None:
    port = free_port()
    here = tmp_path
    dirs = ["-A", ".", "-D", ".", "-L", "."]
    p = ["-p", str(port)]

    # upstream: test_tomato_status_down (the CLI, -y): a Reply with success false
    res = tomato("tomato", "status", "-y", *p, cwd=here)
    assert res.returncode == 1 and reply(res)["success"] is False

    # upstream: test_tomato_start_no_init
    res = tomato("tomato", "start", "-A", ".", *p, "-y", cwd=here)
    doc = reply(res)
    assert res.returncode == 1 and doc["success"] is False
    assert "settings file not found" in str(doc["msg"])

    # issue 12: the WebSocket listener's port (P+1) is taken -> one clear error, at once,
    # nothing left running (was: 30 s wait, a supervisor restarting services for ever)
    res = tomato("tomato", "init", *dirs, *p, "-y", cwd=here)
    assert res.returncode == 0 and reply(res)["success"] is True
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port + 1))
        taken.listen()
        t0 = time.monotonic()
        res = tomato("tomato", "start", "-A", ".", *p, cwd=here)
        assert res.returncode == 1
        assert time.monotonic() - t0 < 10
        assert f"port {port + 1}" in res.stderr and "WebSocket" in res.stderr, res.stderr
        assert processes_of(port) == []
    # the neighbouring port is free again: the next start uses it

    try:
        # upstream: test_tomato_start_with_init, test_tomato_log_verbosity_testing (-vv)
        res = tomato("tomato", "start", "-A", ".", *p, "-vv", "--json", cwd=here)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["success"] is True
        assert " DEBUG " in (here / "scheduler.log").read_text()

        # upstream: test_tomato_start_double
        res = tomato("tomato", "start", "-A", ".", *p, "-y", cwd=here)
        assert res.returncode == 1 and f"already running on port {port}" in str(reply(res)["msg"])

        # upstream: test_stop_with_queued_jobs -- stop, start again, the queue is kept
        for name in ("job-1", "job-2"):
            res = tomato(
                "ketchup", "submit", str(CONFIG / "counter_1_0.1.yml"), "-j", name, *p, cwd=here
            )
            assert res.returncode == 0, res.stderr
        # upstream: test_tomato_stop -- and it returns only once the stack has exited
        res = tomato("tomato", "stop", "-A", ".", *p, "-y", cwd=here)
        assert res.returncode == 0 and reply(res)["success"] is True, res.stderr
        assert processes_of(port) == []
        # upstream: test_tomato_log_verbosity_0 (--quiet): right after stop, no waiting
        res = tomato("tomato", "start", "-A", ".", *p, "--quiet", cwd=here)
        assert res.returncode == 0, res.stderr
        res = tomato("ketchup", "status", *p, "-y", cwd=here)
        doc = reply(res)
        assert [j["jobname"] for j in doc["data"]] == ["job-1", "job-2"]  # type: ignore[union-attr]
        for log in ("supervisor.log", "broker.log"):
            assert (here / log).stat().st_size > 0

        # upstream: test_restart_with_complete_jobs -- the job ends while the scheduler
        # is not there to see it (here: stopped with SIGSTOP, then let go): it ends c,
        # the pipeline is free and keeps its sample
        for args in (("load", "pip-counter", "counter_1_0.1"), ("ready", "pip-counter")):
            assert tomato("tomato", "pipeline", *args, *p, cwd=here).returncode == 0
        wait_status(1, {"r"}, port, here)
        (sched,) = processes_of(port, "scheduler")
        os.kill(sched, signal.SIGSTOP)
        try:
            # the fault's length, not a wait for a condition: the 1 s job ends meanwhile
            time.sleep(2.0)
        finally:
            os.kill(sched, signal.SIGCONT)
        job = wait_status(1, {"c", "ce", "cd"}, port, here)
        assert job["status"] == "c", job
        pips = reply(tomato("tomato", "status", "pipelines", *p, "-y", cwd=here))["data"]
        pip = pips["pip-counter"] if isinstance(pips, dict) else pips[0]  # type: ignore[index]
        assert pip["jobid"] is None and pip.get("sampleid", pip.get("sample")) == "counter_1_0.1"
    finally:
        tomato("ketchup", "cancel", "1", "2", *p, cwd=here)
        tomato("tomato", "stop", "-A", ".", *p, cwd=here)
        for pid in processes_of(port):  # only if stop failed: this stack's own processes
            os.kill(pid, 9)
    assert processes_of(port) == []
