"""A whole tomato-mqtt stack for end-to-end tests: started by the test, stopped after it.

``tomato start`` runs on a free port in a temp appdir with the given devices file; the
CLIs run as subprocesses exactly as a user would run them. Teardown stops the stack and,
should that fail, kills the supervisor's process group, so nothing is left running.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config"
BIN = Path(sys.executable).parent


# Coverage of CLI calls: the test command measures every subprocess (coverage's
# ``patch = subprocess``), which costs ~0.1 CPU-s per short CLI call and adds up to minutes
# over the suite's ~750 calls. The CLI's own tests keep it; elsewhere a CLI call is a means
# (polling a status, loading a pipeline), so its coverage is dropped there. Services keep
# theirs: ``tomato start`` does not go through ``cli_env``.
CLI_MEASURED = ("tests/test_cli.py", "tests/test_passata.py", "tests/test_stack.py")


class JobWatch:
    """The retained ``job/+/status`` summaries of a stack, pushed to the test (a paho
    client in its own thread): a wait for a job's status sleeps until the scheduler
    publishes, instead of asking the CLI ten times a second.

    Only a wake-up: the test still reads the job from ``ketchup status`` (what it asserts
    on), and polls it every ``SAFETY_POLL`` s whatever the push says, so a missed message
    (a broker killed by the test) costs two seconds, never the test (each poll is a CLI
    process, of the CPU that the stacks of a parallel run share). A secured stack is
    watched with the login and broker address of its settings (the CLI's own, which may
    read job statuses); a stack whose CLI talks TLS keeps the plain polling.
    """

    SAFETY_POLL = 2.0

    def __init__(
        self,
        port: int,
        instance: str,
        login: tuple[str, str | None] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.status: dict[int, str] = {}
        self.cond = threading.Condition()
        prefix = f"tomato/v2/{instance}/job/"
        self.c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-watch-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv311,
        )

        def on_connect(c: Any, *_a: Any) -> None:
            c.subscribe(prefix + "+/status", qos=1)  # again after every reconnect

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            rest = msg.topic[len(prefix) :].split("/")
            if not (msg.payload and rest[0].isdigit()):
                return  # a cleared retained status
            try:
                status = json.loads(msg.payload)["status"]
            except (ValueError, KeyError, TypeError):
                return
            with self.cond:
                self.status[int(rest[0])] = str(status)
                self.cond.notify_all()

        if login is not None:
            self.c.username_pw_set(*login)
        self.c.on_connect = on_connect
        self.c.on_message = on_message
        self.c.reconnect_delay_set(0.05, 0.5)
        self.c.connect(host, port)
        self.c.loop_start()

    def wait(self, jobid: int, ok: Callable[[str | None], bool], timeout: float) -> None:
        """Until the job's pushed status satisfies ``ok`` (at once if it already does),
        or ``timeout`` s."""
        with self.cond:
            self.cond.wait_for(lambda: ok(self.status.get(jobid)), max(0.0, timeout))

    def close(self) -> None:
        self.c.loop_stop()
        with contextlib.suppress(Exception):
            self.c.disconnect()


#: ``--timeout`` of the status polls of a wait (a lost request is asked again after it)
POLL_TIMEOUT = 2.0

#: ``Stack.env`` of a stack whose processes coverage should leave alone: empty values
#: switch off the start-up hook of ``patch = subprocess`` (its ``.pth`` file checks them)
UNMEASURED = {"COVERAGE_PROCESS_CONFIG": "", "COVERAGE_PROCESS_START": ""}

SERVICES = {"start", "supervise", "broker", "scheduler", "recorder", "node", "dashboard"}


def cli_env(extra: dict[str, str] | None = None, *argv: str) -> dict[str, str]:
    """The environment for a CLI call from a test (see ``CLI_MEASURED``); ``argv`` is the
    call (``tomato start`` and the services stay measured)."""
    env = {**os.environ, **(extra or {})}
    starts_services = argv[:1] == ("tomato",) and argv[1:2] and argv[1] in SERVICES
    if not starts_services and not os.environ.get("PYTEST_CURRENT_TEST", "").startswith(
        CLI_MEASURED
    ):
        env.pop("COVERAGE_PROCESS_CONFIG", None)
        env.pop("COVERAGE_PROCESS_START", None)
    return env


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


_EPHEMERAL = _ephemeral_range()
_rng = random.Random(os.getpid() ^ time.monotonic_ns())


def _claimed(port: int) -> bool:
    """Claim ``port`` and the next one for this run of the tests: another worker of the
    same run (pytest-xdist shares its run id) gets other ports. Two workers picked
    overlapping ports between choosing and binding them: a broker's WebSocket listener
    (the next port) found its port taken by another test's server (a CI run)."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run:
        return True  # one process: its own random choices do not collide
    folder = Path(tempfile.gettempdir()) / f"tomato-mqtt-ports-{run}"
    folder.mkdir(exist_ok=True)
    made: list[Path] = []
    for q in (port - 1, port, port + 1):  # a neighbour's "next port" is ours
        f = folder / str(q)
        try:
            os.close(os.open(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            for g in made:
                g.unlink(missing_ok=True)
            return False
        made.append(f)
    return True


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A free port below the kernel's ephemeral range, with the next one free as well.

    A port the kernel hands out for ``bind(0)`` comes from the ephemeral range, where any
    outgoing connection of a parallel test may take it before our server binds it (the
    "address already in use" of a busy run); below the range only servers bind. The next
    port is the embedded broker's WebSocket listener by default.
    """
    lo = 20000
    hi = min(_EPHEMERAL[0], 32768) - 2
    for _ in range(200):
        port = _rng.randrange(lo, hi)
        if _bindable(port) and _bindable(port + 1) and _claimed(port):
            return port
    with socket.socket() as s:  # a crowded machine: fall back on the kernel's choice
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stack:
    root: Path
    port: int
    instance: str
    env: dict[str, str] = field(default_factory=dict)
    # the JobWatch while the stack runs: "" not decided yet, None: polling only
    _watch: JobWatch | str | None = field(default="", repr=False, compare=False)

    @property
    def appdir(self) -> Path:
        return self.root / "app"

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def logdir(self) -> Path:
        return self.root / "log"

    @property
    def workdir(self) -> Path:
        return self.root / "work"

    def dirs(self) -> list[str]:
        return ["-A", str(self.appdir), "-D", str(self.datadir), "-L", str(self.logdir)]

    def run(
        self,
        tool: str,
        *args: str,
        check: bool = False,
        timeout: float = 30,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``tool args`` (tomato, ketchup, passata) against this stack."""
        extra = ["-p", str(self.port), "-A", str(self.appdir)]
        cmd = [str(BIN / tool), *args, *extra]
        res = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd or self.workdir,
            env=cli_env(self.env, tool, *args),
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
            )
        return res

    def json(self, tool: str, *args: str, timeout: float = 30, cwd: Path | None = None) -> Any:
        res = self.run(tool, *args, "--json", timeout=timeout, cwd=cwd)
        try:
            return json.loads(res.stdout)
        except ValueError:
            raise AssertionError(
                f"not JSON ({res.returncode}): {res.stdout!r} {res.stderr!r}"
            ) from None

    def job(self, jobid: int, timeout: float | None = None) -> dict[str, Any]:
        """``ketchup status jobid`` (``timeout``: its ``--timeout``, else the CLI's 5 s)."""
        extra = () if timeout is None else ("--timeout", f"{timeout:g}s")
        out = self.json("ketchup", "status", str(jobid), *extra)
        assert out["success"], out
        return out["data"][0]  # type: ignore[no-any-return]

    def watch(self) -> JobWatch | None:
        """The stack's :class:`JobWatch` (started on first use), or None where it has none."""
        if self._watch == "":
            mqtt = tomllib.loads((self.appdir / "settings.toml").read_text()).get("mqtt", {})
            user = mqtt.get("username")
            login = None if user is None else (str(user), mqtt.get("password"))
            host = str(mqtt.get("host", "127.0.0.1"))
            try:
                # (an env of its own may point the CLI elsewhere: poll, as the CLI sees it)
                elsewhere = set(self.env) - set(UNMEASURED)
                self._watch = (
                    None
                    if mqtt.get("tls") or elsewhere
                    else JobWatch(self.port, self.instance, login, host)
                )
            except OSError:
                self._watch = None  # nothing listens: poll, as before
        return self._watch if isinstance(self._watch, JobWatch) else None

    def unwatch(self) -> None:
        """Close the watch (the stack stops); a later start makes a new one."""
        w, self._watch = self._watch, ""
        if isinstance(w, JobWatch):
            w.close()

    def pause(
        self,
        jobid: int,
        ok: Callable[[str | None], bool],
        poll: float,
        longest: float = JobWatch.SAFETY_POLL,
    ) -> None:
        """Between two looks at a job with the CLI: until its pushed status satisfies ``ok``
        (at most ``longest`` s), but at least ``poll`` s from the call (the old polling
        interval, while the push already says so and the CLI, the judge, not yet);
        without a watch, ``poll`` s."""
        w = self.watch()
        if w is None:
            time.sleep(poll)
            return
        t0 = time.monotonic()
        w.wait(jobid, ok, min(longest, JobWatch.SAFETY_POLL))
        if time.monotonic() - t0 < poll:  # the push says so already: the old interval
            time.sleep(poll - (time.monotonic() - t0))

    def wait_job(self, jobid: int, statuses: set[str], timeout: float = 30) -> dict[str, Any]:
        """Wait until ``ketchup status`` shows the job in one of ``statuses`` (as a user
        would; woken by the pushed status, see :class:`JobWatch`)."""
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                # POLL_TIMEOUT: a request that reached a scheduler still starting (a test
                # killed it) is lost; ask again soon rather than after the CLI's 5 s
                job = self.job(jobid, POLL_TIMEOUT)
            except AssertionError as e:
                # a service being restarted (the tests kill some): ask again, as a user would
                job = {"error": str(e)}
            if job.get("status") in statuses:
                return job
            self.pause(jobid, lambda s: s in statuses, 0.1)
        raise AssertionError(f"job {jobid} not in {statuses} after {timeout} s: {job}")

    def submit(self, payload: str | Path, *args: str) -> int:
        path = Path(payload)
        if not path.is_absolute():
            path = CONFIG / path
        out = self.json("ketchup", "submit", str(path), *args)
        assert out["success"], out
        return int(out["data"]["id"])

    def load_ready(self, pipeline: str, sample: str) -> None:
        self.run("tomato", "pipeline", "load", pipeline, sample, check=True)
        self.run("tomato", "pipeline", "ready", pipeline, check=True)

    def supervisor_pid(self) -> int | None:
        f = self.datadir / f"tomato-mqtt.{self.port}.pid"
        try:
            return int(json.loads(f.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None

    def service_pid(self, service: str) -> int | None:
        """PID of the supervisor's child running ``service`` (scheduler, node, ...)."""
        sup = self.supervisor_pid()
        if sup is None:
            return None
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                # the command may contain spaces or parentheses: fields after the last ')'
                stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
                cmd = (d / "cmdline").read_bytes().split(b"\0")
            except (OSError, IndexError):
                continue
            if int(stat[1]) == sup and service.encode() in cmd:
                return int(d.name)
        return None

    def restart_scheduler(self, timeout: float = 60) -> None:
        """Kill the scheduler (SIGKILL) and wait until the one the supervisor starts again
        answers (its process alone may take seconds more to answer on a loaded machine:
        a CI run's next command found none within its 5 s)."""
        old = self.child_pid("scheduler")
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while self.service_pid("scheduler") in (None, old):
            assert time.monotonic() < deadline, self.logs()
            time.sleep(0.1)
        while self.run("tomato", "status", "-t", "2").returncode != 0:
            assert time.monotonic() < deadline, self.logs()
            time.sleep(0.2)

    def child_pid(self, service: str) -> int:
        pid = self.service_pid(service)
        if pid is None:
            raise AssertionError(f"no {service} process under supervisor {self.supervisor_pid()}")
        return pid

    def logs(self) -> str:
        out = []
        for f in sorted(self.logdir.glob("*.log")):
            out.append(f"==== {f.name}\n{f.read_text(errors='replace')[-4000:]}")
        return "\n".join(out)


def make_stack(
    root: Path,
    devices: str | Path = "devices_counter.yml",
    settings: str = "",
    scheduler: str = "node_grace_period = 5.0\nlost_after = 4.0\n",
) -> Stack:
    """A stack's directories and settings; ``scheduler`` is the body of ``[scheduler]``
    (a second ``[scheduler]`` table in ``settings`` would be a TOML error)."""
    st = Stack(root=root, port=free_port(), instance="t" + os.urandom(4).hex())
    for d in (st.appdir, st.datadir, st.logdir, st.workdir):
        d.mkdir(parents=True, exist_ok=True)
    shutil.copy(CONFIG / devices, st.appdir / "devices.yml")
    (st.appdir / "settings.toml").write_text(
        f'[mqtt]\ninstance = "{st.instance}"\n'
        f"[broker]\nws_port = {free_port()}\n"
        f"[scheduler]\n{scheduler}"
        f"{settings}\n"
    )
    return st


@contextlib.contextmanager
def running_stack(
    root: Path, devices: str = "devices_counter.yml", settings: str = ""
) -> Iterator[Stack]:
    st = make_stack(root, devices, settings)
    with started(st):
        yield st


def _other_ports(st: Stack) -> None:
    """New free ports for the stack's broker (MQTT and, if set, WebSocket listener)."""
    st.port = free_port()
    settings = st.appdir / "settings.toml"
    text = settings.read_text()
    settings.write_text(re.sub(r"(?m)^ws_port = \d+$", f"ws_port = {free_port()}", text))


@contextlib.contextmanager
def started(st: Stack) -> Iterator[Stack]:
    """``tomato start`` on the stack's directories (again), ``tomato stop`` after."""
    res = start_stack(st)
    for _ in range(2):  # a free port taken meanwhile by a parallel test: again on others
        if res.returncode == 0 or "already in use" not in (res.stdout + res.stderr).lower():
            break
        stop_stack(st)
        _other_ports(st)
        res = start_stack(st)
    if res.returncode != 0:
        stop_stack(st)
        raise AssertionError(f"tomato start failed:\n{res.stdout}\n{res.stderr}\n{st.logs()}")
    try:
        yield st
    finally:
        stop_stack(st)


def start_stack(st: Stack, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """``tomato start -t timeout``: returns once the stack answers (or start gave up)."""
    return subprocess.run(
        [str(BIN / "tomato"), "start", *st.dirs(), "-p", str(st.port), "-t", f"{timeout:g}s"],
        capture_output=True,
        text=True,
        timeout=timeout + 30,
        env={**os.environ, **st.env},
    )


def kill_stack(st: Stack) -> None:
    """kill -9 of the supervisor's whole process group (it and every service it runs),
    then wait until the supervisor is gone: a crash of the whole tree, or a fast teardown."""
    st.unwatch()
    pid = st.supervisor_pid()
    if pid is None:
        return
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.02)


def stop_stack(st: Stack) -> None:
    st.unwatch()
    pid = st.supervisor_pid()
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(
            [str(BIN / "tomato"), "stop", *st.dirs(), "-p", str(st.port), "--timeout", "15"],
            capture_output=True,
            timeout=30,
            env=cli_env(None, "tomato", "stop"),  # measured only where the CLI is tested
        )
    if pid is None:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    if _alive(pid):
        # jobs still running or the stack is wedged: take the whole group down
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGTERM)
        time.sleep(1.0)
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)


def end_process(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM ``proc`` (one this test started), SIGKILL it if it has not exited after
    ``grace`` seconds, and reap it."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    # a zombie child of ours is not alive
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return True
