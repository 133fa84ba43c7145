"""Where the recorder may write, what it may overwrite, and who may fetch (issue 10).

``finalize`` writes a file at a path that arrives over MQTT. Even with the broker's ACL
(only the scheduler may send it) the path is checked here: resolved (symlinks, ``..``)
and required to lie under an allowed root (``[recorder] output_roots``, default the
datadir and the recorder user's home); an existing file is replaced only when it is a
previous version of the same job's output (its ``tomato_Job`` root attribute names the
same job id and submission time), never an unrelated file. ``fetch`` hands a written
file only to the job's owner, an admin, or the scheduler.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import JsonValue

from tomato_mqtt.config.roles import is_admin
from tomato_mqtt.config.settings import lies_under
from tomato_mqtt.config.users import RoleBook
from tomato_mqtt.nclock import NC_LOCK
from tomato_mqtt.transport.rpc import CommandError, requester

__all__ = ["WriteGuard"]

#: the open files of this process, each a link to its real path (Linux)
_PROC_FD = Path("/proc/self/fd")
#: how a folder is opened to write in it (O_PATH: no read permission needed)
_OPEN = getattr(os, "O_PATH", os.O_RDONLY)


class WriteGuard:
    def __init__(
        self, roots: Sequence[Path], users_file: Path | None = None, jobs_dir: Path | None = None
    ) -> None:
        self.roots = [Path(r).resolve() for r in roots]
        self.roles = RoleBook(users_file)
        #: the datadir's job folders (``<datadir>/Jobs``): a job writes only in its own
        self.jobs = jobs_dir.resolve() if jobs_dir is not None else None

    def check_path(
        self,
        path: str | Path,
        job: Mapping[str, JsonValue],
        own: Path | None = None,
        existing: bool = True,
    ) -> Path:
        """The resolved path to write, or CommandError saying why not. ``own``: the job's
        own folder (``<datadir>/Jobs/<id>``); the folders beside it are other jobs'.
        ``existing=False``: a file there is left to :meth:`check_existing` (read once,
        through the folder the caller opens)."""
        raw = Path(path)
        if not raw.is_absolute():
            raise CommandError(f"refused to write {path}: not an absolute path")
        target = raw.resolve()
        if not lies_under(target, self.roots):
            roots = ", ".join(str(r) for r in self.roots) or "(none)"
            raise CommandError(
                f"refused to write {path}: outside the folders the recorder may write to "
                f"({roots}; [recorder] output_roots)"
            )
        # resolved now, as the file is written: a folder of the payload's path swapped for
        # a symlink to another job's folder after the submit's check wrote there, under
        # that job's name, and made folders of ids to come (a hostile tour)
        self._not_another_job_s(target.parent, own, path)
        if existing:
            self.check_existing(target, job, path)
        return target

    def _not_another_job_s(self, folder: Path, own: Path | None, shown: str | Path) -> None:
        """``folder`` (resolved) is not in the datadir's job folders but ``own``'s."""
        if own is None or self.jobs is None:
            return
        if lies_under(folder, [self.jobs]) and not lies_under(folder, [own.resolve()]):
            raise CommandError(
                f"refused to write {shown}: it is in another job's folder in the datadir ({folder})"
            )

    def check_existing(self, at: Path, job: Mapping[str, JsonValue], shown: str | Path) -> None:
        """A file at ``at`` (read through any path to it) is replaced only when it is an
        earlier version of this job's output."""
        if at.exists() or at.is_symlink():
            if not at.is_file():
                raise CommandError(f"refused to write {shown}: it exists and is not a file")
            if not _same_job(at, job):
                raise CommandError(
                    f"refused to overwrite {shown}: it is not an earlier version of job "
                    f"{job.get('id')}'s output"
                )

    def open_folder(self, folder: Path, own: Path | None) -> int | None:
        """``folder`` (resolved and checked by :meth:`check_path`) opened, its missing
        parts made and opened one by one from the nearest existing one (never following
        a symlink), and its real path (the kernel's, of the open folder) checked again:
        the file is then written through it, so a folder swapped for a symlink after the
        check (while the job's batches are read: seconds) is not followed (a review).
        None where the system gives no folder's real path (no /proc): by path, as before.
        """
        if not _PROC_FD.is_dir() or not hasattr(os, "O_DIRECTORY"):
            folder.mkdir(parents=True, exist_ok=True)
            return None
        missing: list[str] = []
        at = folder
        while not at.is_dir() and at.parent != at:
            missing.append(at.name)
            at = at.parent
        # O_PATH (Linux): a folder this user may write in but not list is opened too
        fd = os.open(at, _OPEN | os.O_DIRECTORY)
        try:
            # where the missing parts will be made, checked before any is made
            self._real_folder_ok(fd, own, folder, below=missing[::-1])
            for name in reversed(missing):
                try:
                    os.mkdir(name, dir_fd=fd)
                except FileExistsError:  # made meanwhile: a folder, not a file or a link
                    made = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    if not stat.S_ISDIR(made.st_mode):
                        raise
                inner = os.open(name, _OPEN | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = inner
            self._real_folder_ok(fd, own, folder)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _real_folder_ok(
        self, fd: int, own: Path | None, shown: Path, below: Sequence[str] = ()
    ) -> None:
        """The open folder's real path, with the folders ``below`` it still to be made,
        is allowed."""
        real = Path(os.readlink(_PROC_FD / str(fd))).joinpath(*below)
        if not lies_under(real, self.roots):
            raise CommandError(
                f"refused to write in {shown}: it is {real} now, outside the folders the "
                "recorder may write to ([recorder] output_roots)"
            )
        self._not_another_job_s(real, own, shown)

    def require_scheduler(self, op: str) -> None:
        user = requester()
        if user is None or self.roles.open:
            return
        role = self.roles.role_of(user)
        if role != "scheduler":
            raise CommandError(
                f"not allowed: user {user!r} (role {role or 'none'}) may not {op}",
                code="not_allowed",
            )

    def require_fetch(self, owner: str | None) -> None:
        user = requester()
        if user is None or self.roles.open:
            return
        role = self.roles.role_of(user)
        # the owner while they may still take snapshots: a user lowered to reader (or
        # removed) kept fetching their old jobs' files here (a review; the embedded
        # broker refuses their publish first, a hand-made broker's rules may not)
        mine = owner is not None and user == owner and role == "operator"
        if is_admin(role) or role == "scheduler" or mine:
            return
        raise CommandError(
            f"not allowed: user {user!r} (role {role or 'none'}) may not fetch the data of a "
            f"job owned by {owner or 'nobody'}",
            code="not_allowed",
        )


def _same_job(path: Path, job: Mapping[str, JsonValue]) -> bool:
    """Whether the NetCDF file at ``path`` was written for this very job."""
    try:
        import netCDF4

        with NC_LOCK, netCDF4.Dataset(path, "r") as ds:  # see tomato_mqtt/nclock.py
            if "tomato_Job" not in ds.ncattrs():
                return False
            old = json.loads(ds.getncattr("tomato_Job"))
    except Exception:  # not NetCDF, unreadable, not JSON: not ours
        return False
    return (
        isinstance(old, dict)
        and old.get("id") == job.get("id")
        and old.get("submitted_at") == job.get("submitted_at")
    )


def file_points(path: Path) -> int | None:
    """The points a job's NetCDF file holds (the ``uts`` of its groups); None when it
    cannot be read as one (nothing to compare with)."""
    groups = group_points(path)
    return None if groups is None else sum(groups.values())


def group_points(path: Path) -> dict[str, int] | None:
    """Points per group (role) of a job's NetCDF file; None when it cannot be read."""
    try:
        import netCDF4

        with NC_LOCK, netCDF4.Dataset(path, "r") as ds:  # see tomato_mqtt/nclock.py
            return {
                name: len(g.dimensions["uts"])
                for name, g in ds.groups.items()
                if "uts" in g.dimensions
            }
    except Exception:  # not NetCDF, unreadable
        return None


def missing_points(old: Path, new: str | Path) -> int:
    """The points of the job file ``old`` that ``new`` does not hold, group by group (by
    their ``uts``, as many times as each is there): 0 when ``old`` cannot be read as a
    job's file (nothing to keep). Totals alone let a store that lost points, its total
    made up again by late ones, replace a file with one lacking the lost points (a
    review)."""
    try:
        import netCDF4
        import numpy as np

        with NC_LOCK, netCDF4.Dataset(old, "r") as was:  # see tomato_mqtt/nclock.py
            had = {
                n: np.asarray(g["uts"][:], dtype="f8")
                for n, g in was.groups.items()
                if "uts" in g.variables
            }
    except Exception:  # not NetCDF, unreadable: nothing to compare with
        return 0
    lost = 0
    with NC_LOCK, netCDF4.Dataset(new, "r") as now:
        for name, uts in had.items():  # (one group's array of the new file at a time)
            g = now.groups.get(name)
            if g is None or "uts" not in g.variables:
                lost += uts.size
            else:
                lost += lacking(uts, np.asarray(g["uts"][:], dtype="f8"))
    return lost


def lacking(had: Any, holds: Any) -> int:
    """How many of the values ``had`` are not in ``holds``, counted as a multiset (a
    value twice in one, once in the other, lacks once; NaN apart); sorted, not ``isin``
    (its ~90 bytes a point held a 10-million-point file's check at 1 GB: a review)."""
    import numpy as np

    a, b = np.sort(had, kind="stable"), np.sort(holds, kind="stable")
    an, bn = np.isnan(a), np.isnan(b)  # (sorted last)
    nan_lost = max(int(an.sum()) - int(bn.sum()), 0)
    a, b = a[: a.size - int(an.sum())], b[: b.size - int(bn.sum())]
    values, counts = np.unique(a, return_counts=True)
    have = np.searchsorted(b, values, "right") - np.searchsorted(b, values, "left")
    return nan_lost + int(np.maximum(counts - have, 0).sum())
