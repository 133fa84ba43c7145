"""Warm-ups run in a thread of their own at a low CPU priority (services/idle.py), so
that they do not take CPU from what ``tomato start`` waits for."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path

import pytest

from tomato_mqtt.services.idle import NICE, import_when_idle, run_when_idle


async def test_a_warm_up_runs_niced_in_its_own_thread_and_the_pool_is_untouched() -> None:
    seen: dict[str, int] = {}

    def warm_up() -> None:
        seen["tid"] = threading.get_native_id()
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, seen["tid"])

    before = os.getpriority(os.PRIO_PROCESS, 0)
    await run_when_idle(warm_up)
    assert seen["tid"] != threading.get_native_id()
    if sys.platform == "linux":
        assert seen["nice"] == max(before, NICE), seen  # only ever lowered
    # the loop's own thread and its executor keep their priority
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before
    pool = await asyncio.to_thread(lambda: os.getpriority(os.PRIO_PROCESS, 0))
    assert pool == before


async def test_what_a_warm_up_raises_reaches_its_caller() -> None:
    def broken() -> None:
        raise ValueError("no netCDF4 here")

    with pytest.raises(ValueError, match="no netCDF4 here"):
        await run_when_idle(broken)


async def test_a_cancelled_wait_leaves_the_thread_to_finish_quietly() -> None:
    release = threading.Event()
    finished = threading.Event()

    def slow() -> None:
        release.wait(5)
        finished.set()

    task = asyncio.ensure_future(run_when_idle(slow))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    assert await asyncio.to_thread(finished.wait, 5)
    await asyncio.sleep(0.05)  # its settle callback runs on a done future: no error


def test_imports_run_niced_in_a_thread_of_their_own_and_errors_reach_the_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tomato_idle_probe.py").write_text(
        "import os, threading\n"
        "TID = threading.get_native_id()\n"
        "NICE = os.getpriority(os.PRIO_PROCESS, TID)\n"
    )
    (tmp_path / "tomato_idle_broken.py").write_text("raise RuntimeError('broken driver')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = os.getpriority(os.PRIO_PROCESS, 0)
    import_when_idle("tomato_idle_probe")
    import tomato_idle_probe as probe  # type: ignore[import-not-found]

    assert threading.get_native_id() != probe.TID
    if sys.platform == "linux":
        assert max(before, NICE) == probe.NICE
    assert os.getpriority(os.PRIO_PROCESS, 0) == before  # the caller keeps its priority
    with pytest.raises(RuntimeError, match="broken driver"):
        import_when_idle("tomato_idle_broken")
    with pytest.raises(ModuleNotFoundError):
        import_when_idle("tomato_idle_no_such_module")
    sys.modules.pop("tomato_idle_probe", None)
