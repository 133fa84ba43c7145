"""Who runs this process: :func:`login_name`, for the ``user`` of a submitted job.

``getpass.getuser()`` answers the same, but imports ``termios`` and ``warnings`` (~2 ms
of a ~40 ms ``ketchup submit``, where no ``LOGNAME``/``USER`` is set: a service, cron,
a container); the password database is read through ``pwd`` directly instead.
"""

from __future__ import annotations

import os

__all__ = ["login_name"]


def login_name() -> str:
    """The login name, as ``getpass.getuser()`` finds it; ``"unknown"`` when neither the
    environment nor the password database knows one."""
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        if os.environ.get(name):
            return os.environ[name]
    try:
        import pwd
    except ImportError:  # Windows: the environment is all getpass would look at
        return "unknown"
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a uid without a passwd entry (a container's arbitrary uid)
        return "unknown"
