"""Fuzz: >= 10,000 random and malformed messages on every command topic family, then a job.

From an authenticated operator on a secured stack (the broker drops what the role may
not send, the services refuse the rest), and on an open stack, where every message
reaches the services (stop / reload / shutdown with malformed arguments included). The
stack keeps running with no service restarted, the fuzz creates no job and changes no
pipeline, and a job then completes. ``bench/fuzz_stack.py`` runs the long variant.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from tests.fuzz import messages
from tests.secure_stack import LAB_USERS, make_secure_stack
from tests.stack import Stack, make_stack, started
from tomato_mqtt.transport.client import AsyncClient, Message
from tomato_mqtt.wire.topics import Topics

N = int(os.environ.get("TOMATO_FUZZ_N", "10000"))
pytestmark = pytest.mark.timeout(300 + N // 200)
COMPONENTS = [f"example_counter:(example-addr,{i})" for i in (1, 2, 3, 4)]
SERVICES = ("broker", "scheduler", "recorder", "node")


async def fuzz(st: Stack, user: str | None, n: int) -> dict[str, int]:
    """Send ``n`` messages as ``user``; return counts of what came back."""
    pw = LAB_USERS[user][0] if user else ""
    login = f"{user}:{pw}@" if user else ""
    t = Topics(st.instance, user)
    replies: list[Message] = []
    async with AsyncClient(f"mqtt://{login}127.0.0.1:{st.port}") as c:
        await c.subscribe(t.replies(user or "anonymous"), handler=replies.append)
        sent = 0
        slowest = 0.0
        for topic, payload in messages(t, user or "anonymous", COMPONENTS, "local", n):
            await c.publish(topic, payload, qos=0, wait=False)
            sent += 1
            if sent % 500 == 0:
                # let the broker breathe: a bounded in-flight window. Its acknowledgement
                # comes after the broker has taken the 500 messages before it: ~0.25 s
                # here, more than 5 s once in a CI run with 4 test workers on 2 cores, so
                # it is given a minute (a broker that stops answering still fails it)
                began = time.monotonic()
                await c.publish(t.scheduler_cmd("whoami"), b"{}", qos=1, timeout=60)
                slowest = max(slowest, time.monotonic() - began)
        # everything before this request has reached the scheduler once it answers
        end = b'{"schema":1,"id":"fz-end","reply_to":"%s","args":{}}' % t.reply("end").encode()
        await c.subscribe(t.reply("end"), handler=replies.append)
        await c.publish(t.scheduler_cmd("whoami"), end, qos=1)
        deadline = time.monotonic() + 60
        asked_at = time.monotonic()
        while not any(b'"fz-end"' in m.payload for m in replies):
            assert time.monotonic() < deadline, "the scheduler stopped answering"
            await asyncio.sleep(0.05)
            if time.monotonic() - asked_at > 1.0:  # (a secured scheduler takes 200 requests a
                # second of one login, bursts of 1,000: the flood's last ones, and this
                # one, may be dropped unread; sent again, as a client does)
                await c.publish(t.scheduler_cmd("whoami"), end, qos=1)
                asked_at = time.monotonic()
    return {
        "sent": sent,
        "replies": len(replies),
        "refused": sum(b'"success":false' in m.payload for m in replies),
        "slowest window (ms)": round(slowest * 1000),
    }


def check_survived(st: Stack, pids: dict[str, int | None], stats: dict[str, int]) -> None:
    assert {s: st.service_pid(s) for s in SERVICES} == pids, "a service was restarted"
    assert st.run("tomato", "status", check=True).returncode == 0
    jobs = st.json("ketchup", "status")
    assert jobs["success"] and jobs["data"] == [], jobs  # the fuzz created no job
    pips = st.json("tomato", "status", "pipelines")
    assert all(p["sampleid"] is None and not p["ready"] for p in pips["data"].values()), pips
    st.load_ready("pip-counter-1", "counter_1_0.1")
    jobid = st.submit("counter_1_0.1.yml")
    job = st.wait_job(jobid, {"c", "ce", "cd"}, timeout=60)
    assert job["status"] == "c", (job, st.logs())
    logs = st.logs()
    assert "Traceback" not in logs and "internal error" not in logs, logs
    broker_log = st.logdir / "broker.log"
    if broker_log.exists():
        stats["dropped by the broker's ACL"] = broker_log.read_text().count(" may not ")
    print(f"fuzz {stats}")


def test_fuzz_as_operator_on_a_secured_stack(tmp_path: Path) -> None:
    st = make_secure_stack(tmp_path)
    with started(st):
        pids = {s: st.service_pid(s) for s in SERVICES}
        stats = asyncio.run(fuzz(st, "olga", N))
        assert stats["sent"] >= 10_000 or N < 10_000
        check_survived(st, pids, stats)


def test_fuzz_reaches_the_services_on_an_open_stack(tmp_path: Path) -> None:
    with started(make_stack(tmp_path)) as st:
        pids = {s: st.service_pid(s) for s in SERVICES}
        try:
            stats = asyncio.run(fuzz(st, None, N))
            assert stats["refused"] > 1000  # the services saw the junk and said no
            check_survived(st, pids, stats)
        finally:
            print(st.logs()[-6000:])
