"""A supervised service stops when its supervisor is gone (``tomato start``); whether a
pid is a live tomato-mqtt process (the supervisor's pid file, a node's name).

Stdlib only and light: every service calls :func:`follow_supervisor` first thing, before
its own imports (the supervisor's module would bring asyncio in at normal priority).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

__all__ = [
    "ADOPTED_FROM_ENV",
    "STOP_GRACE",
    "SUPERVISOR_PID_ENV",
    "WATCH_INTERVAL",
    "follow_supervisor",
    "pid_alive",
]

log = logging.getLogger(__name__)

#: the supervisor's pid, handed to every service it starts (see follow_supervisor)
SUPERVISOR_PID_ENV = "TOMATO_MQTT_SUPERVISOR_PID"
#: set by the supervisor's preloader (cli/preload.py) in a service it forked: its pid
ADOPTED_FROM_ENV = "TOMATO_MQTT_ADOPTED_FROM"
#: s between a service's looks at whether its supervisor is still there
WATCH_INTERVAL = 0.5
#: s a service has to stop cleanly once its supervisor is gone, before it just exits
STOP_GRACE = 5.0


def follow_supervisor() -> None:
    """Under a supervisor: stop this service (a clean stop: SIGTERM) once the supervisor
    is gone. A stack whose supervisor was killed would otherwise run on with no one to
    restart a crashed service, while `tomato stop` stopped only the scheduler and
    `tomato start` found the port taken by the old broker. A thread that looks at the
    parent pid twice a second (a restarted supervisor starts new services).

    POSIX only: on Windows a venv's ``python.exe`` is a launcher that runs the real
    interpreter as its child, so a service's parent is not the supervisor (and SIGTERM
    is TerminateProcess there, no clean stop); services there are not followed.
    """
    import threading

    given = os.environ.get(SUPERVISOR_PID_ENV, "")
    # forked by the supervisor's preloader (cli/preload.py): its child until it exits
    # (milliseconds), then the supervisor's. Not handed on to what this service starts
    preloader = os.environ.pop(ADOPTED_FROM_ENV, "")
    if not given.isdigit() or os.name != "posix":
        return  # run by hand (no supervisor to follow), or Windows (see above)
    # a hangup of the supervisor's terminal reaches its whole process group: the
    # supervisor stops its services in order (they died at once, no drain, and were
    # restarted: a review); the broker, which installs no handlers of ours, too
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    pid = int(given)
    parents = {pid, int(preloader)} if preloader.isdigit() else {pid}

    def watch() -> None:
        while os.getppid() in parents:
            time.sleep(WATCH_INTERVAL)
        log.warning("the supervisor (pid %d) is gone: stopping, as the whole stack does", pid)
        os.kill(os.getpid(), signal.SIGTERM)
        # a clean stop may not come: the signal's handler runs in the main thread, which
        # may wait for a lock (a full run once saw a recorder, still importing at low
        # priority, outlive its supervisor by 20 s); an orphan must not stay
        time.sleep(STOP_GRACE)
        log.error("not stopped %g s after the supervisor left: exiting now", STOP_GRACE)
        os._exit(1)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


def pid_alive(pid: int, marker: str = "tomato_mqtt") -> bool:
    """Whether ``pid`` is a live tomato-mqtt process (for a pid file left by a crash).

    A zombie (killed, not yet reaped by a parent that may never do it) is dead; so is a
    pid the system reused for another program (its command line does not name
    ``marker``). Where /proc is missing, a process that exists counts as alive.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    proc = Path("/proc") / str(pid)
    if not proc.exists():
        return not Path("/proc/self").exists()
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes()
    except (OSError, IndexError):
        return False  # it went away meanwhile
    if state in ("Z", "X"):
        return False
    return marker.encode() in cmdline or b"tomato" in cmdline
