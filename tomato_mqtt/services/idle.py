"""Work a service does for later, on CPU the start leaves idle: warm-ups, and the
recorder's own imports.

The recorder loads netCDF4 and writes a tiny file, the scheduler loads dgbowl-schemas,
so that the first results file and the first ``ketchup submit`` do not wait for them.
Run at once, they compete for the machine's cores with what ``tomato start`` waits for
(a node importing its drivers, the broker serving): on a 2-core PC the recorder's
warm-up alone is ~0.1-0.15 CPU-s inside start's second. So a warm-up runs in a thread
of its own at a low CPU priority (on Linux the nice value is per thread: only that
thread is nice 10, ~1/10 of a normal thread's share when the cores are busy); it takes
mostly what the other processes leave, and on an idle machine it runs as fast as
before. Not nice 19: a job that ends while the warm-up still imports netCDF4 waits for
that import (Python's per-module import lock), so the warm-up must still get somewhere
on a machine kept busy. Elsewhere it runs at normal priority, as it did.

The recorder's imports (asyncio, paho, pydantic, numpy: ~0.2-0.3 CPU-s) are the same
case: ``tomato start`` waits for the broker, the scheduler and the nodes, not for the
recorder (a job's points wait in the nodes until the recorder acknowledges them). So
``cli/serve.py`` imports the recorder in a thread at nice 10 (:func:`import_when_idle`)
and runs it, once imported, in its main thread at normal priority: a thread cannot
lower its nice value again without privileges, so the import gets a thread of its own.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
from collections.abc import Callable

__all__ = ["NICE", "freeze_heap", "import_when_idle", "own_process", "run_when_idle"]

#: the nice value of a warm-up thread (Linux)
NICE = 10


def _lower_this_thread() -> None:
    if sys.platform == "linux":  # a thread id is a process id for setpriority there only
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)


async def run_when_idle(fn: Callable[[], None], name: str = "warm-up") -> None:
    """Run ``fn`` in a new daemon thread at a low CPU priority; returns (or raises what
    ``fn`` raised) when it is done. Not the loop's executor: a thread of the pool would
    stay niced for the real work it does later."""
    import asyncio  # not at the top: import_when_idle runs before asyncio is imported

    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(exc: BaseException | None) -> None:
        if done.done():  # the awaiting task was cancelled (a stop)
            return
        if exc is None:
            done.set_result(None)
        else:
            done.set_exception(exc)

    def run() -> None:
        _lower_this_thread()
        exc: BaseException | None = None
        try:
            fn()
        except BaseException as e:  # handed to the awaiting task, as to_thread does
            exc = e
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    await done
    freeze_heap()  # what the warm-up loaded stays: out of the collector's way


#: set by a process that runs one service (Service.run_sync): only then may its heap be
#: frozen; a process that hosts services among other work (the tests) is left alone
_OWN_PROCESS = False


def own_process() -> None:
    """This process runs one service and nothing else (see :func:`freeze_heap`)."""
    global _OWN_PROCESS
    _OWN_PROCESS = True


def freeze_heap(collect: bool = True) -> None:
    """Move every object alive now out of the garbage collector's way (``gc.freeze``): a
    service's imports, models, registries and warm-ups are never garbage, and a full
    collection walking them held the event loop 10-15 ms at a random moment (timing the
    1 s job found one in the recorder between a job's end and its file write). Called
    once a service has started, and after each warm-up; only in a service's own
    process (what is alive in another, a test run, may still become garbage)."""
    if not _OWN_PROCESS:
        return
    import gc

    # collected first: a cycle that is garbage now would otherwise stay for good (and
    # any later cycle through it). Not at start (``collect=False``): that one walks all
    # the imports (~10 ms) while the service's first messages wait, for the little
    # garbage imports leave; the later ones walk only what came since the last freeze
    if collect:
        gc.collect()
    gc.freeze()


def import_when_idle(*modules: str) -> None:
    """Import ``modules`` in a thread at a low CPU priority and wait for it (raises what
    the import raised); the calling thread keeps its priority."""
    failed: list[BaseException] = []

    def run() -> None:
        _lower_this_thread()
        try:
            for name in modules:
                importlib.import_module(name)
        except BaseException as e:  # handed to the caller
            failed.append(e)

    t = threading.Thread(target=run, name="imports", daemon=True)
    t.start()
    t.join()
    if failed:
        raise failed[0]
