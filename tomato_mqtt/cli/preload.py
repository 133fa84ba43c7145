"""Start the scheduler, recorder and node of ``tomato start`` from one set of imports.

``python -m tomato_mqtt.cli.preload SPEC`` (run by the supervisor, Linux only): imports
what the three services all import (asyncio, paho, pydantic, the settings and the wire
models: ~0.2 CPU-s each time, ~40 % of a service's start), then forks one child per
service and exits. Each child is that service, as if started by ``python -m
tomato_mqtt.cli.serve SERVICE …``: its output goes to the pipe the supervisor made for
it, it runs in the logdir, and ``/proc/<pid>/cmdline`` (what ``ps`` shows, and what
finds a service's process) says that command. The supervisor is the children's
subreaper: once this process has exited they are its own children, watched and
restarted as any it spawned (a restart spawns the service anew: no preloader then).

Issue 15: three processes paid the common imports three times over on two cores;
paid once, ``tomato start`` is ready ~0.2 s sooner with ~0.4 CPU-s less.

What is imported here must be what every one of the three imports anyway
(``tests/test_preload.py`` checks it): a module only one needs would sit in the memory
of the others, and the scheduler must not get numpy or pint (issue 15, memory).

SPEC is a JSON object: ``cwd`` (the logdir) and ``children``, a list of ``name``,
``argv`` (the command shown, as the supervisor would run it) and ``fd`` (the write end
of the child's output pipe, inherited). This process writes one line per child to its
stdout, ``NAME PID`` (or ``NAME -`` when the fork failed), and exits 0.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import sys

from tomato_mqtt.services.watchdog import ADOPTED_FROM_ENV

__all__ = ["PRELOADED", "SERVE_MODULE", "main", "show_as"]

#: the services started from this preloader (the broker reads no settings, no pydantic;
#: the dashboard runs through the typer CLI)
PRELOADED = ("node", "scheduler", "recorder")
#: the services' own entry, which each child runs
SERVE_MODULE = "tomato_mqtt.cli.serve"

#: imported once, before the forks: all are in each service's own imports
_COMMON = (
    "asyncio",
    "tomato_mqtt.cli.serve",
    "tomato_mqtt.config.settings",
    "tomato_mqtt.config.devices",
    "tomato_mqtt.services.base",
    "tomato_mqtt.services.idle",
    "tomato_mqtt.transport.client",
    "tomato_mqtt.transport.rpc",
    "tomato_mqtt.wire.messages",
    "tomato_mqtt.wire.commands",
    "tomato_mqtt.wire.status",
    "tomato_mqtt.wire.data",
    "tomato_mqtt.model.jobs",
    "tomato_mqtt.driver.spec",
)


def show_as(argv: list[str]) -> bool:
    """Make ``/proc/self/cmdline`` read ``argv`` (NUL-separated, as a spawned process's):
    the command line's bytes are this process's own memory, between the ``arg_start``
    and ``arg_end`` of ``/proc/self/stat``, rewritten in place (as setproctitle does). A
    command longer than the original is cut. Linux only; False if it could not."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        # fields after the command's ")" start at the third, state: arg_start is the 48th
        start, end = int(fields[45]), int(fields[46])
        size = end - start
        data = b"\0".join(os.fsencode(a) for a in argv)[: size - 1]
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            mem.write(data.ljust(size, b"\0"))  # the last byte NUL: read as argv
        return True
    except (OSError, IndexError, ValueError):
        return False


def _become(child: dict[str, object], cwd: str, fds: list[int], preloader: int) -> None:
    """In the forked child: become the service (never returns; exits as the service)."""
    fd = int(child["fd"])  # type: ignore[call-overload]
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    for other in fds:
        os.close(other)
    os.chdir(cwd)
    argv = [str(a) for a in child["argv"]]  # type: ignore[attr-defined]
    show_as(argv)
    os.environ[ADOPTED_FROM_ENV] = str(preloader)
    args = argv[argv.index(SERVE_MODULE) + 1 :]
    serve = importlib.import_module(SERVE_MODULE)
    sys.argv = [str(serve.__file__), *args]
    serve.main(args)
    sys.exit(0)  # the interpreter's own exit: atexit, logging and output flushed


def main() -> None:
    spec = json.loads(sys.argv[1])
    children: list[dict[str, object]] = spec["children"]
    fds = [int(c["fd"]) for c in children]  # type: ignore[call-overload]
    for name in _COMMON:
        importlib.import_module(name)
    # what the imports made is never garbage: out of the collectors of the children, whose
    # collections would otherwise write into (and so copy) every page of it
    gc.freeze()
    me = os.getpid()
    for child in children:
        try:
            pid = os.fork()
        except OSError:
            os.write(1, f"{child['name']} -\n".encode())
            continue
        if pid == 0:
            _become(child, str(spec["cwd"]), fds, me)
        os.write(1, f"{child['name']} {pid}\n".encode())
    os._exit(0)  # nothing to flush or clean up: the children carry on


if __name__ == "__main__":
    main()
