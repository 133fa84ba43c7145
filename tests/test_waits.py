"""``tomato_mqtt.waits.wait_for``: asyncio's, except that a cancellation is never lost."""

from __future__ import annotations

import asyncio

import pytest

from tomato_mqtt.waits import wait_for


async def test_a_cancel_that_comes_as_the_awaited_completes_is_not_lost() -> None:
    """Before Python 3.12 asyncio.wait_for returned the result when its task was
    cancelled in the step the awaited future completed: a retry loop around it never
    ended, and a node stopped while it waited for its broker ignored the SIGTERM (5 of
    300 tries on a loaded machine)."""
    loop = asyncio.get_running_loop()
    for result in (1, OSError("refused")):
        fut: asyncio.Future[int] = loop.create_future()
        waiting = asyncio.ensure_future(wait_for(fut, 10))
        await asyncio.sleep(0)  # it waits for fut
        if isinstance(result, Exception):
            fut.set_exception(result)
        else:
            fut.set_result(result)
        waiting.cancel()  # in the same step
        with pytest.raises(asyncio.CancelledError):
            await waiting


async def test_a_retry_loop_around_it_ends_when_cancelled() -> None:
    """The shape of the node's connect: try, fail, try again; cancelled at the moment an
    attempt fails, it ends."""
    loop = asyncio.get_running_loop()
    attempts: list[asyncio.Future[None]] = []

    async def retry_for_good() -> None:
        while True:
            attempt: asyncio.Future[None] = loop.create_future()
            attempts.append(attempt)
            try:
                await wait_for(attempt, 10)
            except OSError:
                continue

    task = asyncio.ensure_future(retry_for_good())
    await asyncio.sleep(0)
    attempts[-1].set_exception(OSError("refused"))
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    assert done and task.cancelled()


async def test_results_timeouts_and_errors_are_as_asyncio_has_them() -> None:
    async def soon(x: int) -> int:
        await asyncio.sleep(0.01)
        return x

    assert await wait_for(soon(3), 5) == 3
    assert await wait_for(soon(4), None) == 4
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def never() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        finally:
            cancelled.set()

    with pytest.raises(asyncio.TimeoutError):
        await wait_for(never(), 0.05)
    assert started.is_set() and cancelled.is_set()  # the awaited was cancelled, and ended

    async def fails() -> None:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        await wait_for(fails(), 5)
    # the task that waits is cancelled: so is what it waits for
    started.clear()
    cancelled.clear()
    outer = asyncio.ensure_future(wait_for(never(), 60))
    await started.wait()
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert cancelled.is_set()
