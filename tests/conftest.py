"""Fixtures shared by every test: free ports, a real broker per test, a topic root per test.

- ``broker``: the embedded amqtt broker (tomato_mqtt_broker) on a free 127.0.0.1 port,
  in the test's event loop; it can be stopped and started again on the same port.
- ``mosquitto``: a Mosquitto process (Debian package, installed by
  ``scripts/ensure-mosquitto``) with a temporary config on a free port.
  When the binary is missing the test is skipped on a developer machine, but *fails*
  when ``TOMATO_REQUIRE_MOSQUITTO`` is set or ``CI`` is true: CI installs Mosquitto
  (``.ci/run`` -> ``scripts/dev.py test`` -> ``ensure-mosquitto``), so a missing binary
  there means the compatibility tests silently stopped running, which must not pass.
- ``instance``: a unique instance name, so each test has its own ``tomato/v2/<instance>``.
- every async test fails if it leaves asyncio tasks behind (see ``pytest_runtest_call``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import getpass
import inspect
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tomato_mqtt_broker import BrokerConfig, EmbeddedBroker

from tests.stack import free_port

# pytest's assertion rewriter caches the test modules it rewrote in tests/__pycache__,
# unless bytecode writing is off, as this CI machine turns it off (PYTHONDONTWRITEBYTECODE;
# scripts/dev.py compiles our sources for the same reason): then each of the 4 workers
# rewrites every test module again on every run (~2.5 s of CPU each, while the first
# stacks start). This process only: the environment its subprocesses get is unchanged.
sys.dont_write_bytecode = False

MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


async def _fail_on_leaked_tasks(before: set[asyncio.Task[Any]]) -> None:
    """Fail if tasks the test started are still pending (after a short grace to finish)."""
    me = asyncio.current_task()

    def ours(t: asyncio.Task[Any]) -> bool:
        # the in-process amqtt broker of the `broker` fixture serves clients in its own
        # tasks (amqtt's, and the embedded broker's stream_connected: a client gone with
        # a flood of messages unread was still being closed after 2 s in a loaded CI
        # run), and one of ours always waits there for the next message to broadcast;
        # amqtt reads a client's next packet header in a task of its own (wait_for, on
        # Python 3.11), through the embedded broker's `from_stream` (a CI run: a client
        # of the test gone, its reader not yet ended 2 s on)
        code = getattr(t.get_coro(), "cr_code", None)
        if getattr(code, "co_name", "") in ("_run_broadcast", "stream_connected", "from_stream"):
            return False
        return t is not me and not t.done() and "amqtt" not in str(getattr(code, "co_filename", ""))

    leaked = {t for t in asyncio.all_tasks() - before if ours(t)}
    if leaked:
        await asyncio.wait(leaked, timeout=2.0)
        leaked = {t for t in leaked if not t.done()}
    if leaked:
        for t in leaked:
            t.cancel()
        names = ", ".join(sorted(f"{t.get_name()} ({t.get_coro()!r})" for t in leaked))
        pytest.fail(f"the test leaked {len(leaked)} asyncio task(s): {names}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """Run every async test through the leak check (a test that leaks tasks fails)."""
    fn = getattr(item, "obj", None)
    if fn is None or not inspect.iscoroutinefunction(fn):
        yield
        return

    @functools.wraps(fn)
    async def guarded(*args: Any, **kwargs: Any) -> None:
        before = asyncio.all_tasks()
        await fn(*args, **kwargs)
        await _fail_on_leaked_tasks(before)

    item.obj = guarded  # type: ignore[attr-defined]
    try:
        yield
    finally:
        item.obj = fn  # type: ignore[attr-defined]


def _uses_module_fixture(item: pytest.Item) -> bool:
    """Does the test use a fixture that lives for its whole module (a shared stack)?"""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(
        d.scope in ("module", "package") for defs in info.name2fixturedefs.values() for d in defs
    )


#: the long end-to-end files (a real stack per test, or one per module, and jobs that take
#: seconds), started first in a parallel run: started last, one of them is the run's tail
#: while the other workers idle. In this order; everything else follows as collected.
#: xdist (``--dist loadgroup``, whose ``--loadscope-reorder`` is on by default) hands out
#: the groups with the most tests first, so this order decides among groups of one size:
#: first the files of one module stack, then single tests by how long they took in a full
#: run (longest first; seconds under the load of 4 workers on 2 cores, issue 13).
SLOW_FIRST = (
    "tests/test_cli.py",
    "tests/test_passata.py",
    "tests/test_jobs.py",
    "tests/test_upstream_drivers.py",
    "tests/test_faults.py",
    "tests/test_fuzz.py",  # 2 x 35 s: 10,000 messages through the services
    "tests/test_integrator.py",  # 40 s: a whole session, then node + the AsyncAPI parser
    "tests/test_security_stack.py",
    "tests/test_fast_cli.py",  # 65 CLI processes
    "tests/chaos/",
    "tests/upstream/test_upstream_stack.py",
    "tests/test_netns.py",
    "tests/test_forgery.py",
    "tests/test_scheduler.py",
    "tests/test_security_docs.py",
    "tests/test_tls.py",
    "tests/test_reliability.py",
    "tests/test_external_broker.py",
    "tests/test_dashboard.py",
    "tests/test_dashboard_tls.py",  # Chromium as well
    "tests/test_readme.py",
    "tests/test_stack.py",
    "tests/test_topics.py",  # a hypothesis property
    "tests/test_user_cli.py",
    "tests/test_follow.py",
    "tests/test_acl.py",
    "tests/test_supervisor_start.py",
    "tests/test_retention.py",
    "tests/test_node.py",
)


def _slow_rank(item: pytest.Item) -> int:
    for i, prefix in enumerate(SLOW_FIRST):
        if item.nodeid.startswith(prefix):
            return i
    return len(SLOW_FIRST)


@pytest.hookimpl(tryfirst=True)  # the marks before xdist's hook reads them
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Parallel runs (``-n N --dist loadgroup``): tests that share a module-scoped stack
    stay on one worker (the stack starts once); every other test goes to whichever worker
    is free, so a file of long end-to-end tests no longer queues on one worker. The chaos
    suite groups its tests by scenario itself (tests/chaos/conftest.py). The long files
    of :data:`SLOW_FIRST` start first (a stable sort: their own order is kept).
    (:class:`GroupIds` makes xdist see the groups under pytest >= 9.2)."""
    for item in items:
        if "tests/chaos/" in item.nodeid:
            continue  # grouped by scenario in tests/chaos/conftest.py
        if item.get_closest_marker("xdist_group") is None and _uses_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))
    items.sort(key=_slow_rank)


class GroupIds:
    """``--dist loadgroup`` under pytest >= 9.2: each test's group into its node id.

    xdist's worker hands the controller each test's group as a suffix of its node id
    (``tests/test_cli.py::test_x@tests/test_cli.py``), written into ``item._nodeid``; pytest
    9.2 computes ``nodeid`` from a structured ``item._id`` instead, so the suffix is lost
    and every test is spread on its own (pytest-xdist issue #1386): a module stack was then
    started by each worker that got one of its tests (test_cli.py's 4 times, test_jobs.py's
    twice per fixture, a chaos scenario twice). After xdist's hook, this writes the suffix
    where pytest reads it; with a pytest where xdist's own suffix took, it does nothing.
    """

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            marks = item.iter_markers("xdist_group")
            groups = sorted(
                {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in marks}
            )
            nodeid = item.nodeid
            if not groups or nodeid.rfind("@") > nodeid.rfind("]"):
                continue  # no group, or xdist's suffix is there
            ident = getattr(item, "_id", None)
            if ident is None:  # pragma: no cover - pytest < 9.2 (xdist's suffix took)
                continue
            item._id = type(ident).parse(f"{nodeid}@{'_'.join(groups)}")  # type: ignore[attr-defined]


def pytest_configure(config: pytest.Config) -> None:
    if getattr(config.option, "loadgroup", False):  # an xdist worker of --dist loadgroup
        config.pluginmanager.register(GroupIds(), "tomato-xdist-group-ids")
    if not hasattr(config, "workerinput") and hasattr(config.option, "testrunuid"):
        # the run's id, which xdist hands its workers: known here too, so that the
        # ports they claim (tests/stack.py _claimed) are removed at the end
        config.option.testrunuid = config.option.testrunuid or uuid.uuid4().hex


def pytest_unconfigure(config: pytest.Config) -> None:
    """The controller of a parallel run removes the ports its workers claimed
    (tests/stack.py ``_claimed``)."""
    run = getattr(config.option, "testrunuid", None)
    if run and not hasattr(config, "workerinput"):
        import shutil
        import tempfile

        shutil.rmtree(Path(tempfile.gettempdir()) / f"tomato-mqtt-ports-{run}", True)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() not in {"", "0", "false", "no", "off"}


def mosquitto_required() -> bool:
    return _truthy(os.environ.get("TOMATO_REQUIRE_MOSQUITTO")) or _truthy(os.environ.get("CI"))


def mosquitto_binary() -> str | None:
    for path in MOSQUITTO_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("mosquitto")


async def _wait_listening(port: int, timeout: float, what: str) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:port."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            _r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
        except (OSError, asyncio.TimeoutError):
            if loop.time() >= deadline:
                msg = f"{what} is not listening on port {port} after {timeout:g} s"
                raise TimeoutError(msg) from None
            await asyncio.sleep(0.02)  # a connection attempt was refused: try again soon
            continue
        w.close()
        with contextlib.suppress(OSError):
            await w.wait_closed()
        return


@dataclass
class RunningBroker:
    """A broker on 127.0.0.1:``port`` that a test may stop and start again."""

    kind: str
    port: int
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError


@dataclass
class AmqttBroker(RunningBroker):
    _broker: EmbeddedBroker | None = None

    async def start(self) -> None:
        # the port was free a moment ago, or was ours before a stop(): retry briefly, since
        # the kernel may still hold it for a few ms after the old listener closed
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while True:
            b = EmbeddedBroker(BrokerConfig(host=self.host, port=self.port))
            try:
                await b.start()
            except OSError:
                if loop.time() >= deadline:
                    raise
                await asyncio.sleep(0.05)
                continue
            self._broker = b
            return

    async def stop(self) -> None:
        if self._broker is not None:
            b, self._broker = self._broker, None
            await b.stop()


@dataclass
class ProcessBroker(RunningBroker):
    """A broker that is a process of its own (Mosquitto, Aedes), on ``port``."""

    workdir: Path = field(default_factory=Path)
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.kind}.log"

    #: s it may take to listen on its port
    start_wait: float = 10.0

    def argv(self) -> list[str]:
        raise NotImplementedError

    def popen_options(self) -> dict[str, Any]:
        """More ``subprocess.Popen`` options of its process (an environment, a session)."""
        return {}

    async def start(self) -> None:
        argv = self.argv()
        with open(self.workdir / f"{self.kind}.out", "ab") as out:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                **self.popen_options(),
            )
        try:
            await _wait_listening(self.port, self.start_wait, self.kind)
        except TimeoutError:
            await self.stop()
            logs = [f for f in (self.log_path, self.workdir / f"{self.kind}.out") if f.exists()]
            said = "\n".join(f.read_text(errors="replace")[-2000:] for f in logs) or "(no log)"
            raise TimeoutError(f"{self.kind} did not start on port {self.port}:\n{said}") from None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise AssertionError(f"{self.kind} is not running")
        return self._proc.pid

    def kill(self) -> None:
        """kill -9 and reap (a crash: no session or retained message saved, no will sent
        of its own); :meth:`start` brings it back on the same port."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait(10)

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                await asyncio.wait_for(asyncio.to_thread(proc.wait), 10.0)
            except asyncio.TimeoutError:
                proc.kill()
                await asyncio.to_thread(proc.wait)


@dataclass
class MosquittoBroker(ProcessBroker):
    binary: str = ""
    #: keep sessions, their queued messages and retained messages in a file across a
    #: restart, as Debian's packaged configuration does (saved at a clean stop)
    persistence: bool = False

    def argv(self) -> list[str]:
        conf = self.workdir / "mosquitto.conf"
        keep = (
            f"persistence true\npersistence_location {self.workdir}/\n"
            # run as root, Mosquitto drops to the user 'mosquitto', who may not write here
            + (f"user {getpass.getuser()}\n" if os.geteuid() == 0 else "")
            if self.persistence
            else "persistence false\n"
        )
        conf.write_text(
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            f"{keep}"
            f"log_dest file {self.log_path}\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
        )
        return [self.binary, "-c", str(conf)]


RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # Debian's rabbitmq-server


def _three() -> tuple[int, int, int]:
    return free_port(), free_port(), free_port()


@dataclass
class RabbitMQBroker(ProcessBroker):
    """RabbitMQ (Erlang, Debian's package) with its MQTT plugin, on ``port`` for MQTT and
    free ports for everything else it opens (AMQP, Erlang distribution and its own epmd,
    all on 127.0.0.1), its files in ``workdir``. Not an MQTT 3.1.1 broker in full: it
    sends no retained message to a wildcard subscription (what the scheduler checks)."""

    #: AMQP, Erlang distribution, epmd
    ports: tuple[int, int, int] = field(default_factory=_three)
    start_wait: float = 90.0  # an Erlang VM: seconds

    def _env(self) -> dict[str, str]:
        base = str(self.workdir / "rabbitmq")
        amqp, dist, epmd = self.ports
        return {
            **os.environ,
            "HOME": base,  # its Erlang cookie
            "RABBITMQ_NODENAME": f"tomato{self.port}@localhost",
            "RABBITMQ_BASE": base,
            "RABBITMQ_MNESIA_BASE": f"{base}/mnesia",
            "RABBITMQ_LOG_BASE": f"{base}/log",
            "RABBITMQ_CONFIG_FILE": f"{base}/rabbitmq",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{base}/enabled_plugins",
            "RABBITMQ_PID_FILE": f"{base}/pid",
            "RABBITMQ_DIST_PORT": str(dist),
            "ERL_EPMD_PORT": str(epmd),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_AMQP_PORT": str(amqp),
        }

    def argv(self) -> list[str]:
        env = self._env()
        base = Path(env["RABBITMQ_BASE"])
        base.mkdir(parents=True, exist_ok=True)
        (base / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{env['RABBITMQ_AMQP_PORT']}\n"
            f"mqtt.listeners.tcp.1 = {self.host}:{self.port}\n"
            "mqtt.allow_anonymous = true\nloopback_users = none\n"
        )
        (base / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        return [RABBITMQ_SERVER]

    def popen_options(self) -> dict[str, Any]:
        # its Erlang VM and helpers: stopped as a group
        return {"env": self._env(), "start_new_session": True}

    def kill(self) -> None:
        """kill -9 of its whole process group (the Erlang VM with it); :meth:`start`
        brings it back on the same ports (its epmd stays)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.to_thread(proc.wait), 20.0)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await asyncio.to_thread(proc.wait)
        # its epmd (on its own port) daemonised out of the group: only that one is stopped
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        if os.path.exists(epmd):
            subprocess.run(
                [epmd, "-kill"], env=self._env(), capture_output=True, timeout=10, check=False
            )


def rabbitmq_server() -> str | None:
    """Debian's rabbitmq-server, if installed (scripts/ensure-rabbitmq)."""
    return RABBITMQ_SERVER if os.access(RABBITMQ_SERVER, os.X_OK) else None


AEDES = Path(__file__).resolve().parent / "aedes"


def npm_installed(folder: Path, what: str) -> Path:
    """``folder``'s pinned npm packages installed (``npm ci``, once), its node_modules
    returned. Parallel test workers may ask at the same time: each waits on a lock, and
    the packages count as installed only once ``npm ci`` has ended well (a marker file
    written after it), never from a folder another worker is still filling."""
    import fcntl

    modules = folder / "node_modules"
    done = modules / ".tomato-installed"
    if done.is_file():
        return modules
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.fail(f"Node.js and npm are needed for {what} (apt-get install npm)")
    with open(folder / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.is_file():
            subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=folder,
                check=True,
                timeout=600,
            )
            done.write_text("npm ci ended well\n")
    return modules


def aedes_server() -> Path:
    """tests/aedes/server.mjs, its pinned Aedes installed from npm first."""
    npm_installed(AEDES, "the Aedes broker")
    return AEDES / "server.mjs"


def secured_aedes(port: int, rules: Path, log: Path) -> subprocess.Popen[bytes]:
    """Aedes on ``port`` enforcing ``rules`` (the JSON of ``tomato broker-config
    --rules``, read by tests/aedes/rules.mjs), its output in ``log``; not waited for."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [
                shutil.which("node") or "node",
                str(aedes_server()),
                str(port),
                "127.0.0.1",
                str(rules),
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@dataclass
class AedesBroker(ProcessBroker):
    """Aedes (Node.js) with its in-memory persistence: a second MQTT 3.1.1 implementation."""

    def argv(self) -> list[str]:
        return [shutil.which("node") or "node", str(aedes_server()), str(self.port), self.host]


def external_broker(
    kind: str, port: int, workdir: Path, mosquitto: str = "", persistence: bool = False
) -> ProcessBroker:
    """An external broker, not yet started: ``mosquitto`` (its binary given) or ``aedes``."""
    if kind == "mosquitto":
        return MosquittoBroker(
            kind=kind, port=port, workdir=workdir, binary=mosquitto, persistence=persistence
        )
    if kind == "aedes":
        return AedesBroker(kind=kind, port=port, workdir=workdir)
    if kind == "rabbitmq":
        if rabbitmq_server() is None:
            reason = "rabbitmq-server is not installed (run scripts/ensure-rabbitmq)"
            if mosquitto_required():  # the test command installs both
                pytest.fail(f"{reason}, but TOMATO_REQUIRE_MOSQUITTO/CI requires it")
            pytest.skip(reason)
        return RabbitMQBroker(kind=kind, port=port, workdir=workdir)
    raise ValueError(f"no external broker {kind!r}")


@pytest.fixture
def instance() -> str:
    """A unique instance name: the test's own topic root ``tomato/v2/<instance>``."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def broker() -> AsyncIterator[RunningBroker]:
    """The embedded amqtt broker on a free port, running in the test's event loop."""
    b = AmqttBroker(kind="amqtt", port=free_port())
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


@pytest.fixture
def mosquitto_path() -> Iterator[str]:
    path = mosquitto_binary()
    if path is None:
        reason = "mosquitto is not installed (run scripts/ensure-mosquitto)"
        if mosquitto_required():
            pytest.fail(f"{reason}, but TOMATO_REQUIRE_MOSQUITTO/CI requires it")
        pytest.skip(reason)
    yield path


@pytest.fixture
async def mosquitto(mosquitto_path: str, tmp_path: Path) -> AsyncIterator[RunningBroker]:
    """A Mosquitto broker on a free port with a temporary config (skips if not installed)."""
    b = MosquittoBroker(kind="mosquitto", port=free_port(), binary=mosquitto_path, workdir=tmp_path)
    await b.start()
    try:
        yield b
    finally:
        await b.stop()
