"""This user's private folder in the system's temporary folder, for what a service must
keep outside its datadir when that disk refuses writes (a full or read-only datadir):
a node's spool overflow (node/spool.py), a snapshot made for its transfer only
(recorder/files.py)."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

__all__ = ["private_dir"]


def private_dir() -> Path | None:
    """``<tmp>/tomato-mqtt-<uid>`` (mode 0700), or None when it cannot be had safely: a
    folder of that name someone else made, one others may open, or a link (another user
    could read the data, or plant a file for a service to take back)."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    folder = Path(tempfile.gettempdir()) / f"tomato-mqtt-{uid if uid is not None else 'user'}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(folder)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or (uid is not None and st.st_uid != uid):
        return None
    if st.st_mode & 0o077:
        return None
    return folder
