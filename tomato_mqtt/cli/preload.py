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

import atexit
import contextlib
import gc
import importlib
import json
import os
import subprocess
import sys
import threading
import traceback
from typing import Any, NoReturn

from tomato_mqtt.services.launch import (
    PRELOAD_ENV,
    PRELOADED,
    SERVE_MODULE,
    service_argv,
    subreaper,
)
from tomato_mqtt.services.watchdog import ADOPTED_FROM_ENV, SUPERVISOR_PID_ENV

__all__ = ["PRELOADED", "SERVE_MODULE", "Forked", "fork_services", "fork_stack", "main", "show_as"]

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


def _argv_area() -> tuple[int, int] | None:
    """Where this process's command line lies in its memory (``/proc/self/stat``'s
    ``arg_start`` and ``arg_end``); its size is what a process forked from it can show
    (:func:`show_as`). None where that cannot be read."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        # fields after the command's ")" start at the third, state: arg_start is the 48th
        return int(fields[45]), int(fields[46])
    except (OSError, IndexError, ValueError):
        return None


def _fits(argv: list[str], room: int) -> bool:
    """Whether a service's command line fits ``room`` up to its port, the interpreter
    named without its folder (what tells a stack's services apart in ``ps``)."""
    shown = [os.path.basename(argv[0]), *argv[1 : argv.index("-p") + 2]]
    return len(b"\0".join(os.fsencode(a) for a in shown)) < room


def show_as(argv: list[str]) -> bool:
    """Make ``/proc/self/cmdline`` read ``argv`` (NUL-separated, as a spawned process's):
    the command line's bytes are this process's own memory, between the ``arg_start``
    and ``arg_end`` of ``/proc/self/stat``, rewritten in place (as setproctitle does). A
    command longer than the original names the interpreter without its folder, and is
    cut if still too long (`tomato start`'s own command line is the room a service forked
    from it has). Linux only; False if it could not."""
    area = _argv_area()
    if area is None:
        return False
    start, end = area
    size = end - start
    try:
        data = b"\0".join(os.fsencode(a) for a in argv)
        if len(data) >= size and argv:  # the interpreter by its name, not its whole path
            data = b"\0".join(os.fsencode(a) for a in [os.path.basename(argv[0]), *argv[1:]])
        data = data[: size - 1]
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            mem.write(data.ljust(size, b"\0"))  # the last byte NUL: read as argv
        return True
    except (OSError, IndexError, ValueError):
        return False


def _become(
    child: dict[str, object], cwd: str, fds: list[int], preloader: int, report: int
) -> None:
    """In the forked child: say its pid in ``report`` itself (a line: atomic in a pipe),
    then become the service (never returns; exits as the service). Said by the preloader
    after the fork, a preloader killed or stopped in between left a service running that
    nobody adopted, and the supervisor spawned it a second time (two schedulers)."""
    os.write(report, f"{child['name']} {os.getpid()}\n".encode())
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
    code: object = 0
    try:
        serve.main(args)
    except SystemExit as e:  # (the scheduler's 3 on `tomato stop` stops the stack)
        code = e.code
    except BaseException:
        traceback.print_exc()
        code = 1
    _exit(code)


def _exit(code: object) -> NoReturn:
    """End as the interpreter ends a program (its threads joined, ``atexit``, output
    flushed) with ``code`` as ``sys.exit`` takes it: the frames above this forked
    process's call are its parent's (the preloader's, or `tomato start`'s), not its own,
    so no exception may go up through them."""
    if code is None:
        n = 0
    elif isinstance(code, int):
        n = code
    else:
        print(code, file=sys.stderr)
        n = 1
    try:
        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
    finally:
        for f in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                f.flush()
        os._exit(n & 0xFF)


def fork_services(
    children: list[dict[str, object]], cwd: str, report: int, close: list[int]
) -> None:
    """Import what the services share, fork each of ``children`` (``name``, ``argv``,
    ``fd``), write ``NAME PID`` lines into ``report`` and exit: never returns. Each child
    closes ``close`` (the other children's pipes, the report) and becomes its service."""
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
            os.write(report, f"{child['name']} -\n".encode())
            continue
        if pid == 0:
            _become(child, cwd, close, me, report)
    os._exit(0)  # nothing to flush or clean up: the children carry on


def main() -> None:
    spec = json.loads(sys.argv[1])
    children: list[dict[str, object]] = spec["children"]
    fds = [int(c["fd"]) for c in children]  # type: ignore[call-overload]
    fork_services(children, str(spec["cwd"]), 1, fds)


# -- `tomato start`'s own preloader ----------------------------------------------------------
class Forked:
    """The supervisor `tomato start` forked: as much of :class:`subprocess.Popen` as it
    uses (``pid``, ``poll``, ``wait``); a thread waits for its exit."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._code = 255  # the exit code, once _exited is set
        self._exited = threading.Event()
        threading.Thread(target=self._reap, name="supervisor-reap", daemon=True).start()

    def _reap(self) -> None:
        try:
            _, status = os.waitpid(self.pid, 0)
            self._code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            self._code = 255
        self.returncode = self._code
        self._exited.set()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired(f"supervisor {self.pid}", timeout or 0.0)
        return self._code


def fork_stack(spec: dict[str, Any], argv: list[str], log: int, keep: list[int]) -> Forked | None:
    """``tomato start``'s launch of the supervisor when it can fork (Linux; the fast
    path without typer; no thread yet): what it imported for its checks (pydantic, the
    settings and the devices file: half of what the services share) is not imported
    again. A child becomes the supervisor (its own session, its output into ``log``,
    ``exec`` of ``argv`` + the spec); before that it forks the preloader, which imports
    the rest and forks the scheduler, recorder and node (:func:`fork_services`). The
    supervisor adopts them as it adopts its own preloader's (``spec["forked"]``: the
    preloader's pid, its report's and the services' pipes). ``keep``: fds the supervisor
    inherits (the MQTT listener). None when it cannot fork: spawn the supervisor."""
    if (
        sys.platform != "linux"
        or os.environ.get(PRELOAD_ENV) == "0"
        or "typer" in sys.modules  # the services would carry the CLI's modules
        or threading.active_count() > 1
    ):
        return None
    args = (spec["common_args"], spec["service_flags"], spec["node_name"])
    argvs = {n: service_argv(n, *args) for n in PRELOADED}
    area = _argv_area()
    if area is None or not all(_fits(a, area[1] - area[0]) for a in argvs.values()):
        return None  # `tomato start`'s command line too short to show what they are
    kids: list[dict[str, object]] = [{"name": n, "argv": a} for n, a in argvs.items()]
    pipes = {n: os.pipe() for n in PRELOADED}
    report_r, report_w = os.pipe()
    ours = [report_r, report_w, *(fd for pair in pipes.values() for fd in pair)]
    for f in (sys.stdout, sys.stderr):
        f.flush()  # (what is buffered would be written again by each process forked)
    try:
        pid = os.fork()
    except OSError:
        pid = -1
    if pid == 0:
        _supervisor(spec, argv, log, keep, kids, pipes, (report_r, report_w))
    for fd in ours:
        os.close(fd)
    return Forked(pid) if pid > 0 else None


def _supervisor(
    spec: dict[str, Any],
    argv: list[str],
    log: int,
    keep: list[int],
    kids: list[dict[str, object]],
    pipes: dict[str, tuple[int, int]],
    report: tuple[int, int],
) -> None:
    """In `tomato start`'s child: fork the preloader, then become the supervisor."""
    try:
        os.setsid()
        forked: dict[str, Any] | None = None
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.dup2(log, 1)  # not the terminal or pipe of `tomato start`: whoever reads that
        os.dup2(log, 2)  # waits for every process that holds it
        os.chdir(spec["logdir"])
        os.environ[SUPERVISOR_PID_ENV] = str(os.getpid())  # the pid stays across exec
        if subreaper(True) is not None:  # across exec: the preloader's children are ours
            writes = [w for _, w in pipes.values()]
            try:
                preloader = os.fork()
            except OSError:  # (EAGAIN, ENOMEM): the supervisor spawns its services
                traceback.print_exc()
                subreaper(False)
                preloader = -1
            if preloader == 0:
                _preloader(spec, kids, pipes, report)
            forked = (
                None
                if preloader < 0
                else {
                    "pid": preloader,
                    "report_fd": report[0],
                    "pipes": {n: r for n, (r, _) in pipes.items()},
                }
            )
            for fd in [*writes, report[1]]:
                os.close(fd)
            for fd in [report[0], *(r for r, _ in pipes.values())]:
                os.set_inheritable(fd, True)
        for fd in keep:
            os.set_inheritable(fd, True)
        ours = {*keep, *([] if forked is None else [report[0], *(r for r, _ in pipes.values())])}
        _close_on_exec_but(ours)
        os.execv(sys.executable, [*argv, json.dumps({**spec, "forked": forked})])
    except BaseException:
        traceback.print_exc()  # into the supervisor's log, where `tomato start` looks
    finally:
        os._exit(127)  # (exec failed: `tomato start` sees the supervisor exit)


def _fds_but(keep: set[int]) -> list[int]:
    """This process's open fds above 2 but ``keep``."""
    return [fd for fd in map(int, os.listdir("/proc/self/fd")) if fd > 2 and fd not in keep]


def _close_on_exec_but(keep: set[int]) -> None:
    """Mark every fd above 2 but ``keep`` close-on-exec: one `tomato start` inherited
    itself (a caller's pipe passed on, a make jobserver's) is not the supervisor's to hold
    for the stack's whole life (as ``close_fds`` of the spawned supervisor)."""
    for fd in _fds_but(keep):
        with contextlib.suppress(OSError):
            os.set_inheritable(fd, False)


def _preloader(
    spec: dict[str, Any],
    kids: list[dict[str, object]],
    pipes: dict[str, tuple[int, int]],
    report: tuple[int, int],
) -> None:
    """In the supervisor-to-be's child: the preloader (:func:`fork_services`)."""
    try:
        writes = {n: w for n, (_, w) in pipes.items()}
        for fd in _fds_but({report[1], *writes.values()}):  # what `tomato start` held
            with contextlib.suppress(OSError):
                os.close(fd)
        if not getattr(sys.flags, "safe_path", False) and sys.path:
            del sys.path[0]  # the folder of `tomato start`'s script: as -P (services/launch.py)
        for k in kids:
            k["fd"] = writes[str(k["name"])]
        fork_services(kids, str(spec["logdir"]), report[1], [report[1], *writes.values()])
    except BaseException:
        traceback.print_exc()  # into the supervisor's log (the supervisor says the rest)
    finally:
        os._exit(1)


if __name__ == "__main__":
    main()
