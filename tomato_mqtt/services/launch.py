"""What ``tomato start`` and the supervisor share: the interpreter a service runs in, the
stack's pid file, its ports. Standard library only, and no asyncio: ``tomato start``
uses these before it spawns the supervisor (asyncio's import, ~25 ms, would delay every
service's start by as much; it loads it afterwards, for its wait, while they start).
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

__all__ = [
    "BROKER_CONFIG_ENV",
    "EXIT_CANNOT_LISTEN",
    "EXIT_RESTART_REQUESTED",
    "EXIT_STOP_REQUESTED",
    "LISTEN_FD_ENV",
    "PRELOADED",
    "PRELOAD_ENV",
    "SERVE_MODULE",
    "bind_listener",
    "pidfile_path",
    "port_free",
    "port_in_use",
    "python",
    "read_pidfile",
    "service_argv",
    "subreaper",
]

# The exit codes and variables the supervisor shares with the broker and the scheduler
# live here, not in the supervisor's module: importing that one for them cost the broker
# and the scheduler its code and its imports (bench.memory, issue 15)
#: the scheduler exits with this after ``tomato stop``: the supervisor stops the stack
EXIT_STOP_REQUESTED = 3
#: ``tomato broker`` exits with this when a listener cannot bind (a port is taken)
EXIT_CANNOT_LISTEN = 4
#: a node exits with this after a ``shutdown`` request (``tomato restart-node``): the
#: supervisor starts it again at once, not counted as a crash (a restart asked for within
#: a few seconds of the last waited 0.2, 0.4 … 3.2 s, and `restart-node` meanwhile said
#: "no node answered": fault injection)
EXIT_RESTART_REQUESTED = 5
#: a node exits with this when another running node holds its name: the supervisor says
#: so once and tries again every minute (it restarted it every 10 s, the same error in
#: its log each time: fault injection)
EXIT_NAME_TAKEN = 6
#: the environment variable that hands the bound MQTT socket's fd to ``tomato broker``
LISTEN_FD_ENV = "TOMATO_MQTT_LISTEN_FD"
#: the broker's configuration as JSON, checked by ``tomato start`` already: the broker
#: then reads no settings (no pydantic: ~0.1 s less of the start's critical path)
BROKER_CONFIG_ENV = "TOMATO_MQTT_BROKER_CONFIG"
#: ``0`` spawns every service instead of forking three from a preloader (cli/preload.py)
PRELOAD_ENV = "TOMATO_MQTT_PRELOAD"
#: the services a preloader forks (the broker reads no settings, no pydantic; the
#: dashboard runs through the typer CLI)
PRELOADED = ("node", "scheduler", "recorder")
_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37
#: the services' typer-free entry (cli/serve.py): no typer, click or rich in a long-lived
#: process (~40 ms of CPU at start and ~5 MB each)
SERVE_MODULE = "tomato_mqtt.cli.serve"


def python() -> list[str]:
    """The interpreter for a service started with ``-m``, which puts the working folder
    first on ``sys.path``: a ``json.py``, ``signal.py`` or a ``tomato_mqtt`` source
    folder where ``tomato start`` ran would shadow the real modules. So services run
    in the logdir, and with ``-P`` (Python >= 3.11) the folder is not put there at all."""
    return [sys.executable, "-P"] if sys.version_info >= (3, 11) else [sys.executable]


def pidfile_path(datadir: Path, port: int) -> Path:
    return datadir / f"tomato-mqtt.{port}.pid"


def read_pidfile(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def live_supervisor(datadir: Path, port: int) -> int | None:
    """The pid of this PC's supervisor of the stack on ``port`` (its pid file in
    ``datadir``) while it lives; None otherwise (a zombie, or a pid left by a crash)."""
    from tomato_mqtt.services.watchdog import pid_alive

    info = read_pidfile(pidfile_path(datadir, port))
    try:
        pid = int(str(info.get("pid"))) if info else None
    except ValueError:
        return None
    return pid if pid is not None and pid_alive(pid) else None


def live_stacks(datadir: Path) -> dict[int, int]:
    """port -> pid of every live supervisor of this PC whose pid file is in ``datadir``."""
    found = {}
    for f in datadir.glob("tomato-mqtt.*.pid"):
        port = f.name.split(".")[1]
        if port.isdigit() and (pid := live_supervisor(datadir, int(port))) is not None:
            found[int(port)] = pid
    return found


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def port_free(host: str, port: int) -> bool:
    """Whether a listener could bind ``host:port`` now (as asyncio's servers bind it)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def bind_listener(host: str, port: int) -> socket.socket:
    """Bind and listen on ``host:port`` as asyncio's servers do (raises OSError if taken).

    The backlog holds every service and CLI that connects before the broker serves.
    """
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(128)
    except OSError:
        s.close()
        raise
    return s


def service_argv(name: str, common_args: list[str], flags: list[str], node_name: str) -> list[str]:
    """The command line of the broker, scheduler, recorder or node of a stack (``flags``:
    ``-v``/``-q``, which the broker does not take)."""
    exe = [*python(), "-m", SERVE_MODULE]
    if name == "broker":
        return [*exe, "broker", *common_args]
    if name == "node":  # (the common options first: the port, see cli/serve.py service_args)
        return [*exe, "node", *common_args, "--name", node_name, *flags]
    return [*exe, name, *common_args, *flags]


def subreaper(on: bool) -> bool | None:
    """Become (or stop being) the subreaper of this process's descendants (Linux): an
    orphan among them (the preloader's children, once it exits) becomes our child.
    Returns what it was before (a test process may be one already), None if it cannot."""
    if sys.platform != "linux":
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        was = ctypes.c_int(0)
        if libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(was), 0, 0, 0) != 0:
            return None
        if libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
            return None
        return bool(was.value)
    except (OSError, AttributeError):
        return None
