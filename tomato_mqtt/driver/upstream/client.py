"""The node's side of a driver host: start the process, send requests, read answers.

One :class:`HostProcess` per upstream driver (as tomato runs one process per driver).
Requests are serialised by a lock (the host answers them one at a time, in order); a
reader thread hands each answer line over, so a hung host is a timeout, and a dead one
an error naming its exit code, never a hang of the node.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import queue
import subprocess
import threading
from pathlib import Path
from typing import Any

__all__ = ["HOST_SCRIPT", "HostCallError", "HostDied", "HostProcess"]

log = logging.getLogger(__name__)

HOST_SCRIPT = Path(__file__).with_name("host.py")


class HostCallError(Exception):
    """A request the driver refused or failed; ``kind`` as in the host's answer."""

    def __init__(self, msg: str, kind: str = "driver") -> None:
        super().__init__(msg)
        self.kind = kind


class HostDied(HostCallError):
    """The host process exited or did not answer in time."""


_EOF = object()


class HostProcess:
    def __init__(self, python: Path, name: str, *, timeout: float = 60.0) -> None:
        self.name = name
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._answers: queue.Queue[Any] = queue.Queue()
        # -I: the venv's own site-packages only (no user site, no PYTHONPATH, no cwd)
        self._proc = subprocess.Popen(
            [str(python), "-I", str(HOST_SCRIPT), name],  # the name: for ps, ignored
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # the driver's own logging ends up in the node's log
            text=True,
            encoding="utf-8",
            bufsize=1,
        )
        self._reader = threading.Thread(
            target=self._read, name=f"upstream-host-{name}", daemon=True
        )
        self._reader.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.poll() is None

    def _read(self) -> None:
        out = self._proc.stdout
        assert out is not None
        for line in out:
            try:
                self._answers.put(json.loads(line))
            except ValueError:
                log.warning("driver host %s wrote a non-protocol line: %r", self.name, line)
        self._answers.put(_EOF)

    def call(self, op: str, timeout: float | None = None, **args: Any) -> Any:
        """Send one request and return its ``data``; raises :class:`HostCallError`."""
        with self._lock:
            return self._call(op, timeout, args)

    def _call(self, op: str, timeout: float | None, args: dict[str, Any]) -> Any:
        if not self.alive():
            raise HostDied(f"the driver host of {self.name} exited ({self._proc.returncode})")
        rid = next(self._ids)
        line = json.dumps({"id": rid, "op": op, "args": args}, default=str)
        stdin = self._proc.stdin
        try:
            assert stdin is not None
            stdin.write(line + "\n")
            stdin.flush()
        except (OSError, ValueError) as e:  # (ValueError: its pipe closed by close())
            raise HostDied(f"the driver host of {self.name} is gone: {e}") from None
        wait = self.timeout if timeout is None else timeout
        while True:
            try:
                ans = self._answers.get(timeout=wait)
            except queue.Empty:
                raise HostDied(
                    f"the driver host of {self.name} did not answer {op!r} within {wait:g} s"
                ) from None
            if ans is _EOF:
                self._answers.put(_EOF)  # every later call sees it too
                code = self._proc.wait(5)
                raise HostDied(
                    f"the driver host of {self.name} exited (code {code}) during {op!r};"
                    " see the node's log"
                )
            if isinstance(ans, dict) and ans.get("id") == rid:
                break
            log.warning("driver host %s: dropped a stale answer %r", self.name, ans)
        if ans.get("ok"):
            return ans.get("data")
        raise HostCallError(str(ans.get("error")), str(ans.get("kind") or "driver"))

    def close(self, timeout: float = 10.0) -> None:
        """Close stdin (the host resets its components and exits); kill it if it hangs."""
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("driver host %s did not exit in %g s: killing it", self.name, timeout)
            self._proc.kill()
            self._proc.wait(5)
