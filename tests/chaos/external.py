"""The faults of a stack on an external broker, with nothing of the stack supervising it:
Mosquitto, as docs/security.md's "With Mosquitto instead" sets it up (``[broker]
embedded = false``), and Aedes (Node.js, tests/aedes/), a second implementation.

Both run without persistence (Mosquitto ``persistence false``, Aedes in memory): a crash
loses every session and retained message (the worst case: a site's broker with
persistence keeps them). A killed broker is started again on the same port after the
fault's length, as a site's service manager would. Registered in tests/chaos/scenarios.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.chaos.harness import GRACE, Params, Run, Unavailable, chaos_stack, fault_job
from tests.conftest import ProcessBroker, external_broker, mosquitto_binary, mosquitto_required
from tests.stack import Stack

__all__ = ["mosquitto_or_unavailable", "on_external"]


def mosquitto_or_unavailable() -> str:
    """Mosquitto's binary; :class:`Unavailable` (a skip) if it is not installed, unless
    the run requires it (CI), where that is a failure."""
    binary = mosquitto_binary()
    if binary is None:
        why = "mosquitto is not installed (run scripts/ensure-mosquitto)"
        if mosquitto_required():
            raise AssertionError(f"{why}, but TOMATO_REQUIRE_MOSQUITTO/CI requires it")
        raise Unavailable(why)
    return binary


@contextlib.contextmanager
def _external_stack(
    kind: str, root: Path, persistence: bool = False
) -> Iterator[tuple[Stack, ProcessBroker]]:
    binary = mosquitto_or_unavailable() if kind == "mosquitto" else ""
    brokers: list[ProcessBroker] = []

    def before_start(st: Stack) -> None:
        cfg = st.appdir / "settings.toml"
        cfg.write_text(cfg.read_text().replace("[broker]\n", "[broker]\nembedded = false\n"))
        b = external_broker(kind, st.port, root, mosquitto=binary, persistence=persistence)
        asyncio.run(b.start())
        brokers.append(b)

    try:
        with chaos_stack(root, before_start=before_start) as st:
            assert not list(st.logdir.glob("broker*.log")), "an embedded broker was started"
            yield st, brokers[0]
    finally:
        for b in brokers:
            asyncio.run(b.stop())


def on_external(
    kind: str, what: str, past_grace: bool = False, persistence: bool = False
) -> Callable[[Path, Params], Run]:
    """``what`` on a stack whose broker is ``kind`` (``mosquitto``, ``aedes``):
    ``kill-broker`` (kill -9, started again ``p.down`` s later), ``restart-broker`` (a
    clean stop, SIGTERM, started again ``p.down`` s later: with ``persistence`` it
    brings back the sessions, their queued messages and the retained ones), ``stall-broker``
    (SIGSTOP for ``p.down`` s), or ``kill-<service>`` (kill -9 of that service of ``tomato
    start``; its supervisor restarts it). ``past_grace``: the broker stays down 5 s longer
    than the scheduler's ``node_grace_period`` (a slow service manager, a rebooting
    broker host): nobody can tell a lost node then, so nothing may be counted lost."""

    def scenario(root: Path, p: Params) -> Run:
        if past_grace:
            p = dataclasses.replace(p, down=GRACE + 5.0, end_bound=p.end_bound + GRACE + 5.0)
        with _external_stack(kind, root, persistence) as (st, broker):

            def fault(st: Stack, _job: int) -> None:
                if what in ("kill-broker", "restart-broker"):
                    if what == "kill-broker":
                        broker.kill()
                    else:
                        asyncio.run(broker.stop())
                    time.sleep(p.down)
                    asyncio.run(broker.start())
                elif what == "stall-broker":
                    pid = broker.pid
                    os.kill(pid, signal.SIGSTOP)
                    try:
                        time.sleep(p.down)
                    finally:
                        os.kill(pid, signal.SIGCONT)
                else:
                    os.kill(st.child_pid(what.removeprefix("kill-")), signal.SIGKILL)

            return fault_job(st, f"{kind}-{what}", p, fault)

    return scenario
