"""Process trees, CPU and memory accounting, timed CLI calls, and the result table.

CPU accounting is the same for both systems and misses no process:

- The bench makes itself a *child subreaper* (Linux ``PR_SET_CHILD_SUBREAPER``), so
  every process either system starts stays a descendant of the bench even after the
  CLI that spawned it has exited (both ``tomato start`` commands daemonise).
- A window's CPU-s = for every descendant alive at its end, user+system CPU of the
  process and of the children it has reaped (``/proc`` via psutil), plus the rusage of
  every descendant the bench itself reaped in the window (``os.wait4``), minus the same
  figure of every descendant alive at its start. A process that starts and ends inside
  the window is therefore counted in full, one that spans it only for its share.
- CLI calls the bench makes to *observe* a system (status polls) are reaped by the bench
  with ``os.wait4`` and kept out of the window; calls that are part of the workload
  (``ketchup submit``) are added back explicitly from their own rusage.

Peak RSS is the largest sum of RSS over all descendants, sampled every 0.2 s; shared
pages count once per process, so it overstates both systems alike.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

__all__ = [
    "Call",
    "CpuWindow",
    "Figure",
    "RssPeak",
    "Table",
    "become_subreaper",
    "collect",
    "free_port",
    "kill_pids",
    "reap",
    "run",
    "spawn",
    "stop_descendants",
    "wait_for",
]

_SELF = psutil.Process()
_managed: set[int] = set()  # pids whose exit a run() call is waiting for
_reaped_cpu = 0.0  # CPU-s of descendants reaped by reap(), cumulative
_lock = threading.Lock()
_roles: dict[int, str] = {}  # pid -> role, remembered while alive (for reaped processes)
_reaped_by_role: dict[str, float] = {}


def role_of(p: psutil.Process) -> str:
    """Which part of which system a process is, from its command line."""
    try:
        cmd = " ".join(p.cmdline())
    except psutil.Error:
        return "other"
    for name in ("tomato-daemon", "tomato-driver", "tomato-job"):
        if name in cmd:
            return name
    if "tomato_mqtt.services.supervisor" in cmd:  # `tomato start`'s lean supervisor
        return "supervise"
    # the services' typer-free entry (cli/serve.py), or the typer CLI (`tomato node` by hand)
    for entry in ("tomato_mqtt.cli.serve", "tomato_mqtt.cli.tomato"):
        for part in ("node", "recorder", "scheduler", "broker", "supervise"):
            if f"{entry} {part}" in cmd:
                return part
    return "other"


def become_subreaper() -> bool:
    """Adopt orphaned descendants, so their CPU time can be collected at their exit."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(36, 1, 0, 0, 0) == 0)  # PR_SET_CHILD_SUBREAPER


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- CLI calls


@dataclass
class Call:
    cmd: list[str]
    rc: int
    out: str
    err: str
    wall: float  # s, spawn to exit
    cpu: float  # CPU-s of the process and every child it reaped

    def check(self) -> Call:
        if self.rc != 0:
            raise RuntimeError(
                f"{' '.join(self.cmd)} failed ({self.rc}):\n{self.out[-2000:]}\n{self.err[-2000:]}"
            )
        return self


def run(
    cmd: Sequence[str | Path],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
) -> Call:
    """Run one command to completion; wall time and CPU-s from its own rusage."""
    args = [str(c) for c in cmd]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err
        )
        with _lock:
            _managed.add(proc.pid)
        timer = threading.Timer(timeout, _kill_quietly, (proc.pid,))
        timer.start()
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
            with _lock:
                _managed.discard(proc.pid)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Call(
            cmd=args,
            rc=proc.returncode,
            out=out.read().decode(errors="replace"),
            err=err.read().decode(errors="replace"),
            wall=wall,
            cpu=ru.ru_utime + ru.ru_stime,
        )


def spawn(cmd: Sequence[str | Path], **kw: object) -> subprocess.Popen[bytes]:
    """Start a helper the bench owns (not part of any system); finish it with collect()."""
    kw.setdefault("stdin", subprocess.DEVNULL)
    proc = subprocess.Popen([str(c) for c in cmd], **kw)  # type: ignore[call-overload]
    with _lock:
        _managed.add(proc.pid)
    return proc  # type: ignore[no-any-return]


def collect(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """Wait for a spawn()ed helper (SIGTERM, then SIGKILL, by its PID after ``timeout``)."""
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            rc = proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
    with _lock:
        _managed.discard(proc.pid)
    for f in (proc.stdout, proc.stderr):
        if f is not None:
            f.close()
    return rc


def _kill_quietly(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------- process trees


def reap() -> None:
    """Reap every exited, unmanaged child (adopted orphans); add up their rusage."""
    global _reaped_cpu
    for child in _SELF.children():
        with _lock:
            if child.pid in _managed:
                continue
        try:
            pid, _, ru = os.wait4(child.pid, os.WNOHANG)
        except ChildProcessError:
            continue
        if pid:
            cpu = ru.ru_utime + ru.ru_stime
            with _lock:
                _reaped_cpu += cpu
                role = _roles.get(pid, "other")
                _reaped_by_role[role] = _reaped_by_role.get(role, 0.0) + cpu


def descendants() -> list[psutil.Process]:
    with _lock:
        managed = set(_managed)
    return [p for p in _SELF.children(recursive=True) if p.pid not in managed]


def _tree_cpu() -> dict[int, float]:
    """CPU-s of each live descendant, including the children it has reaped itself."""
    cpu: dict[int, float] = {}
    for p in descendants():
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            cpu[p.pid] = t.user + t.system + t.children_user + t.children_system
            if p.pid not in _roles:
                _roles[p.pid] = role_of(p)
    return cpu


class CpuWindow:
    """CPU-s of all descendants of the bench between ``start()`` and ``stop()``."""

    def __init__(self) -> None:
        self._start: dict[int, float] = {}
        self._reaped0 = 0.0
        self._reaped_roles0: dict[str, float] = {}
        self.cpu = 0.0
        self.by_role: dict[str, float] = {}  # CPU-s per role_of() in the window

    def start(self) -> CpuWindow:
        reap()
        self._start = _tree_cpu()
        self._reaped0 = _reaped_cpu
        self._reaped_roles0 = dict(_reaped_by_role)
        return self

    def stop(self) -> float:
        reap()
        end = _tree_cpu()
        self.cpu = sum(end.values()) + (_reaped_cpu - self._reaped0) - sum(self._start.values())
        roles: dict[str, float] = {}
        for pid, c in end.items():
            r = _roles.get(pid, "other")
            roles[r] = roles.get(r, 0.0) + c - self._start.get(pid, 0.0)
        for r, c in _reaped_by_role.items():
            roles[r] = roles.get(r, 0.0) + c - self._reaped_roles0.get(r, 0.0)
        # a process alive at the start and reaped before the end: its start share is gone
        for pid, c in self._start.items():
            if pid not in end:
                r = _roles.get(pid, "other")
                roles[r] = roles.get(r, 0.0) - c
        self.by_role = roles
        return self.cpu

    def role(self, *names: str) -> float:
        return sum(self.by_role.get(n, 0.0) for n in names)


class RssPeak:
    """Largest sum of RSS over all descendants, sampled in a thread while in the block."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            total = 0
            for p in _SELF.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)


def kill_pids(pids: Iterable[int], grace: float = 3.0) -> list[int]:
    """SIGTERM each pid, then SIGKILL what is left after ``grace`` s; returns the pids hit."""
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            p.terminate()
            procs.append(p)
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=grace)
    reap()
    return [p.pid for p in procs]


def stop_descendants(timeout: float = 10.0) -> list[str]:
    """Wait for every descendant to exit; kill stragglers by PID. Returns their names."""
    deadline = time.monotonic() + timeout
    while True:
        reap()
        alive = [p for p in descendants() if _running(p)]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    names = []
    for p in alive:
        with contextlib.suppress(psutil.Error):
            names.append(f"{p.name()}[{p.pid}]")
    kill_pids(p.pid for p in alive)
    return names


def _running(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_for(pred: Callable[[], object], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``pred()`` (a cheap check in this process, e.g. a stat) until true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())


# ---------------------------------------------------------------------------- results


@dataclass
class Figure:
    """One row of the table: samples of each system, a target ratio, an optional limit."""

    key: str
    label: str
    unit: str
    fmt: str = "{:.3g}"
    target: str = ""  # e.g. "<= 0.2x"
    higher_is_better: bool = False
    values: dict[str, list[float]] = field(default_factory=dict)
    limit: float | None = None
    limit_note: str = ""

    def add(self, system: str, value: float) -> None:
        self.values.setdefault(system, []).append(value)

    def median(self, system: str) -> float | None:
        v = self.values.get(system)
        return statistics.median(v) if v else None

    def ratio(self, a: str, b: str) -> float | None:
        ma, mb = self.median(a), self.median(b)
        if ma is None or mb is None or mb == 0:
            return None
        return ma / mb

    def cell(self, system: str) -> str:
        v = self.values.get(system)
        if not v:
            return "—"
        s = self.fmt.format(statistics.median(v))
        if len(v) > 1:
            s += f" ({self.fmt.format(min(v))}..{self.fmt.format(max(v))})"
        return s


class Table:
    def __init__(self, systems: Sequence[tuple[str, str]]) -> None:
        self.systems = list(systems)  # (id, title)
        self.figures: dict[str, Figure] = {}
        self.notes: list[str] = []

    def figure(self, key: str, label: str, unit: str, **kw: object) -> Figure:
        if key not in self.figures:
            self.figures[key] = Figure(key, label, unit, **kw)  # type: ignore[arg-type]
        return self.figures[key]

    def markdown(self) -> str:
        (a, ta), (b, tb) = self.systems
        head = f"| figure | unit | {ta} | {tb} | ratio {ta} : {tb} | target | raw MQTT limit |"
        lines = [head, "|" + "---|" * 7]
        for f in self.figures.values():
            r = f.ratio(a, b)
            ratio = "—" if r is None else f"{r:.3g}x"
            limit = "" if f.limit is None else f.fmt.format(f.limit)
            if f.limit_note:
                limit += f" {f.limit_note}"
            row = [f.label, f.unit, f.cell(a), f.cell(b), ratio, f.target, limit.strip()]
            lines.append("| " + " | ".join(row) + " |")
        text = "\n".join(lines)
        if self.notes:
            text += "\n\n" + "\n".join(f"- {n}" for n in self.notes)
        return text

    def as_json(self) -> dict[str, object]:
        return {
            "systems": self.systems,
            "figures": [
                {
                    "key": f.key,
                    "label": f.label,
                    "unit": f.unit,
                    "values": f.values,
                    "medians": {s: f.median(s) for s, _ in self.systems},
                    "limit": f.limit,
                    "target": f.target,
                }
                for f in self.figures.values()
            ],
            "notes": self.notes,
        }
