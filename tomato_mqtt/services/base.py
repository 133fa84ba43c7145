"""What every service shares: run a set of loops until asked to stop, and logging setup."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

__all__ = ["install_signal_handlers", "run_until_stopped", "setup_logging"]


async def run_until_stopped(stop: asyncio.Event, *coros: Coroutine[Any, Any, Any]) -> None:
    """Run ``coros`` as tasks until ``stop`` is set or one of them fails.

    A failing loop is re-raised after the others are cancelled, so a service never
    keeps running half-dead. (A hand-made TaskGroup: Python 3.10 has none.)
    """
    tasks = [asyncio.ensure_future(c) for c in coros]
    stopper = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t is not stopper and not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
    finally:
        for t in [*tasks, stopper]:
            t.cancel()
        for t in [*tasks, stopper]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t


def install_signal_handlers(stop: asyncio.Event) -> None:
    """First SIGINT/SIGTERM drains gracefully; a second one exits at once."""
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            sys.exit(1)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)


def setup_logging(name: str, logdir: Path | None, verbosity: int = 0) -> None:
    level = logging.DEBUG if verbosity > 0 else logging.INFO
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if logdir is not None:
        logdir.mkdir(parents=True, exist_ok=True)
        handlers = [logging.FileHandler(logdir / f"{name}.log")]
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
