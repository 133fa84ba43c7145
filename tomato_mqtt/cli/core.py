"""What every CLI command stands on, without typer: the common options' values, where
to send a request, one request, and the one way to fail.

:mod:`tomato_mqtt.cli.common` declares the options for typer and re-exports all of this;
:mod:`tomato_mqtt.cli.fast` runs the read-only commands on it without importing typer
(~45 ms of a call). Nothing here imports pydantic, asyncio or paho at import time.
"""

from __future__ import annotations

import os

from tomato_mqtt.cli.denied import denied, whoami
from tomato_mqtt.cli.fastsettings import external_broker, light_datadir, light_mqtt
from tomato_mqtt.cli.output import Output, below, echo
from tomato_mqtt.config.url import BrokerURL
from tomato_mqtt.record import Record
from tomato_mqtt.wire.topics import Topics

# typing, pathlib and dataclasses are not imported at run time: this module is on every
# one-request call, which issue 15 wants within three interpreter starts
TYPE_CHECKING = False
if TYPE_CHECKING:  # the long-lived client is imported only by commands that need it
    from collections.abc import Callable, Mapping
    from os import PathLike
    from pathlib import Path
    from typing import Any, NoReturn

    from tomato_mqtt.client.sync import Tomato
    from tomato_mqtt.config.settings import Settings

    #: a directory given on the command line (typer: a Path; the fast path: as typed)
    Dir = str | PathLike[str]

__all__ = [
    "CLIENT",
    "LOCAL",
    "START",
    "START_TIMEOUT",
    "CallContext",
    "Opts",
    "as_path",
    "ask_scheduler",
    "client",
    "context",
    "exit_now",
    "fail",
    "load_settings",
    "oneshot_failed",
    "run_request",
    "settings_there",
    "while_broker_restarts",
]


#: the common options of commands that ask a service something / that read settings on
#: this PC (cli/common.py declares them for typer, cli/fast.py reads them without it)
CLIENT = ("port", "broker", "instance", "appdir", "timeout", "yaml", "json", "verbose", "quiet")
LOCAL = ("appdir", "datadir", "logdir", "port")
#: ``tomato start``'s common options and default ``--timeout`` (typer's and the fast path's)
START = (*LOCAL, "timeout", "yaml", "json", "verbose", "quiet")
START_TIMEOUT = 30.0


class Opts(Record):
    """The common options a command was called with (those it does not take: defaults)."""

    __slots__ = (
        "_ctx",
        "appdir",
        "broker",
        "datadir",
        "instance",
        "json",
        "logdir",
        "port",
        "quiet",
        "timeout",
        "verbose",
        "yaml",
    )
    _frozen = False
    port: int | None
    broker: str | None
    instance: str | None
    appdir: Dir | None
    datadir: Dir | None
    logdir: Dir | None
    timeout: float
    yaml: bool
    json: bool
    verbose: int
    quiet: int
    _ctx: CallContext | None

    def __init__(
        self,
        port: int | None = None,
        broker: str | None = None,
        instance: str | None = None,
        appdir: Dir | None = None,
        datadir: Dir | None = None,
        logdir: Dir | None = None,
        timeout: float = 5.0,
        yaml: bool = False,
        json: bool = False,
        verbose: int = 0,
        quiet: int = 0,
    ) -> None:
        self._init(locals())

    def context(self) -> CallContext:
        """Where to send requests: settings.toml (if any), overridden by these options."""
        if self._ctx is None:
            self._ctx = context(
                port=self.port,
                broker=self.broker,
                instance=self.instance,
                appdir=self.appdir,
                datadir=self.datadir,
                logdir=self.logdir,
            )
        return self._ctx

    def output(self) -> Output:
        return Output(self.yaml, self.json)

    def settings(self) -> Settings:
        """The full, validated settings for -A/-D/-L/-p (a bad file: message + exit 1)."""
        return load_settings(self.appdir, self.datadir, self.logdir, self.port)


def loudness(opts: Opts) -> None:
    """tomato's -v/-vv and -q/-qq, accepted on every command as tomato 2.2 does: how
    much the command logs on stderr (warnings by default; -v info, -vv debug: the MQTT
    exchange; -q errors only). ``tomato start`` passes them on to the services."""
    level = opts.verbose - opts.quiet
    if not level:
        return
    import logging

    from tomato_mqtt.transport import oneshot

    levels = {-2: logging.CRITICAL, -1: logging.ERROR, 1: logging.INFO, 2: logging.DEBUG}
    logging.basicConfig(
        level=levels.get(max(-2, min(2, level)), logging.WARNING),
        format="%(levelname)s %(name)s: %(message)s",
    )
    if level > 0:
        oneshot.trace = logging.getLogger("tomato_mqtt.cli").info


def as_path(d: Dir | None) -> Path | None:
    """A directory option as a Path (pathlib is imported by the commands that use it)."""
    from pathlib import Path

    return None if d is None else Path(d)


def load_settings(
    appdir: Dir | None, datadir: Dir | None, logdir: Dir | None, port: int | None
) -> Settings:
    """The full, validated settings (pydantic: not on the fast path); errors exit 1."""
    from tomato_mqtt.config import settings
    from tomato_mqtt.errors import ConfigError

    try:
        return settings.load_settings(
            appdir=as_path(appdir), datadir=as_path(datadir), logdir=as_path(logdir), port=port
        )
    except ConfigError as e:
        fail(str(e))


class CallContext(Record):
    __slots__ = ("_settings", "appdir", "datadir", "instance", "logdir", "port", "url")
    _frozen = False
    url: BrokerURL
    instance: str
    appdir: Dir | None
    datadir: Dir | None
    logdir: Dir | None
    port: int | None
    _settings: Settings | None

    def __init__(
        self,
        url: BrokerURL,
        instance: str,
        appdir: Dir | None = None,
        datadir: Dir | None = None,
        logdir: Dir | None = None,
        port: int | None = None,
    ) -> None:
        self._init(locals())

    @property
    def topics(self) -> Topics:
        # the login is the {user} segment of requests and replies (issue 10)
        try:
            return Topics(self.instance, self.url.username)
        except ValueError as e:
            fail(str(e))

    @property
    def settings(self) -> Settings:
        """The full, validated settings (loaded on first use: pydantic is not cheap)."""
        if self._settings is None:
            self._settings = load_settings(self.appdir, self.datadir, self.logdir, self.port)
        return self._settings

    def where(self) -> str:
        return f"broker {self.url}, instance {self.instance}"


def settings_there(
    appdir: Dir, instead: str = "give the broker with -b/--broker to go without"
) -> None:
    """An app folder given with -A holds settings.toml: a mistyped one fell back to the
    defaults without a word, so `tomato stop -A <typo>` stopped another stack on the
    default port, and a status reported that one (an admin's tour)."""
    app = os.path.abspath(os.path.expanduser(os.fspath(appdir) or "."))
    if not os.path.isfile(os.path.join(app, "settings.toml")):
        fail(
            f"no settings.toml in {app} (-A/--appdir): is the folder mistyped? `tomato init "
            f"-A {app}` makes one there" + (f"; {instead}" if instead else "")
        )


def context(
    port: int | None = None,
    broker: str | None = None,
    instance: str | None = None,
    appdir: Dir | None = None,
    datadir: Dir | None = None,
    logdir: Dir | None = None,
) -> CallContext:
    """Where to send requests: settings.toml (if any), overridden by the options."""
    ctx = CallContext(
        url=BrokerURL(), instance="", appdir=appdir, datadir=datadir, logdir=logdir, port=port
    )
    if appdir is not None and not broker:
        settings_there(appdir)
    light = light_mqtt(appdir)
    if light is None:
        m = ctx.settings.mqtt
        light = m.model_dump()
    if broker:
        try:
            url = BrokerURL.parse(broker)
        except ValueError as e:
            fail(str(e))
        if port is not None:
            url = url.replace(port=port)
        url = url.with_tls_defaults(light)  # settings' CA and client cert stay in force
    else:
        fields = {k: v for k, v in light.items() if k in BrokerURL.fields()}
        if port is not None:
            fields["port"] = port
        url = BrokerURL(**fields)
    ctx.url = url
    ctx.instance = instance or str(light.get("instance") or "default")
    return ctx


def client(ctx: CallContext, timeout: float = 10.0) -> Tomato:
    """The Python client for this call (tomato_mqtt.client: the CLI's one code path),
    connected: a broker this PC's supervisor restarts is waited for within ``timeout``,
    as for a one-shot call (:func:`while_broker_restarts`; `ketchup snapshot`, `passata
    last` and `ketchup status --follow` failed at once: a review)."""
    from tomato_mqtt.client.aio import ClientError
    from tomato_mqtt.client.sync import Tomato
    from tomato_mqtt.transport import oneshot

    def connected(within: float) -> Tomato:
        t = Tomato(ctx.url, ctx.instance, timeout=timeout)
        try:
            return t.connect()
        except ClientError as e:
            t.close()
            if e.unreachable:
                raise oneshot.Unreachable(str(e)) from None
            fail(f"{e} ({ctx.where()})")  # (a login refused, a certificate not trusted)

    return while_broker_restarts(ctx, timeout, connected)  # type: ignore[no-any-return]


# -y/--json of the command running now: then a failure is also a Reply on stdout
_REPLY_FORMAT: list[str | None] = [None]


#: what the line said on Ctrl-C adds to "interrupted" (set by the command: what goes on)
interrupted_note: str | None = None


def exit_now(code: int = 0) -> NoReturn:
    """End a command whose work is done and printed, skipping the interpreter's teardown.

    With pydantic, asyncio and paho loaded (~350 modules) that teardown (freeing modules
    and objects: nothing of ours runs in it) took ~50 ms of ``tomato start``, after its
    output was printed and before its caller could go on. Where something could still
    be left to finish (another non-daemon thread running, output that cannot be
    flushed) the command takes the ordinary way out.
    """
    import os
    import sys

    if "threading" in sys.modules:  # else no thread was started (the fast path's calls)
        import threading

        main = threading.main_thread()
        if any(t is not main and not t.daemon and t.is_alive() for t in threading.enumerate()):
            raise SystemExit(code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe: as Python's own exit reports it
        raise SystemExit(code) from None
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()
    os._exit(code)


def fail(msg: str, code: int = 1) -> NoReturn:
    """The one way a command fails: ``error: msg`` on stderr and exit ``code``.

    Under ``-y``/``--json`` the failure is also printed on stdout as a Reply with
    ``success: false`` (as tomato does, e.g. ``tomato status -y`` with no stack), so a
    script that parses stdout always gets a Reply.
    """
    echo(f"error: {msg}", err=True)
    fmt = _REPLY_FORMAT[0]
    if fmt is not None:
        Output(fmt == "yaml", fmt == "json").print_doc({"success": False, "msg": msg, "data": None})
    raise SystemExit(code)


def run_request(
    ctx: CallContext,
    topic: str,
    args: Mapping[str, Any] | None,
    *,
    timeout: float,
    who: str = "scheduler",
    unanswered: str = "",
    unreachable: str = "",
) -> Any:
    """One request, synchronously, on the fast path (:mod:`~tomato_mqtt.transport.oneshot`,
    as the Python client's ``request``); problems become a message + exit 1.
    ``unanswered`` is added to the message when no answer came (what may still happen);
    ``unreachable`` replaces the question "is tomato-mqtt running?" when no broker could
    be reached (``tomato stop``: then there is nothing to stop)."""
    from tomato_mqtt.transport import oneshot

    def call(within: float) -> Any:
        return oneshot.request(
            ctx.url,
            topic,
            ctx.topics.reply,
            args,
            timeout=within,
            who=who,
            resend=who == "scheduler",  # it may be restarting; a node's ops are not resent
            whoami=whoami(ctx),
        )

    try:
        return while_broker_restarts(ctx, timeout, call, unanswered, unreachable)
    except oneshot.OneShotError as e:
        oneshot_failed(ctx, e, unanswered, unreachable)


def while_broker_restarts(
    ctx: CallContext,
    timeout: float,
    call: Callable[[float], Any],
    unanswered: str = "",
    unreachable: str = "",
) -> Any:
    """``call(timeout)``, made again while nothing listens on the broker's port and a
    supervisor of its stack runs on this PC: a broker being restarted (killed, crashed;
    an external one its service manager restarts), waited for within ``timeout`` (each
    call gets what is left of it). ``ketchup submit -t 60`` failed at once in a 17 s
    restart of Mosquitto (a fault-injection round). With no supervisor here it fails at
    once, as before (:func:`oneshot_failed`); other errors are raised."""
    import time

    from tomato_mqtt.transport import oneshot

    deadline = time.monotonic() + timeout
    supervisor: int | None = None  # this PC's live supervisor, once the broker refused us
    while True:
        try:
            return call(timeout if supervisor is None else max(deadline - time.monotonic(), 0.5))
        except oneshot.Unreachable as e:
            # looked for at each refusal: a stack stopped or killed during the wait ends
            # it (the call waited out its -t and named a supervisor long gone: a review)
            first = supervisor is None
            supervisor = _local_supervisor(ctx)
            if supervisor is None:
                oneshot_failed(ctx, e, unanswered, unreachable)
            if first:
                echo(
                    f"note: the MQTT broker at {ctx.url} takes no connection, and tomato-mqtt "
                    f"runs here (supervisor pid {supervisor}): waiting up to {timeout:g} s "
                    "for it to be back (restarting?)",
                    err=True,
                )
            if deadline - time.monotonic() <= RECONNECT_GAP:
                fail(_not_back(ctx, e, supervisor, timeout, unreachable))
            time.sleep(RECONNECT_GAP)


#: s between connections tried again to a broker that this PC's supervisor runs
RECONNECT_GAP = 0.25


def _not_back(
    ctx: CallContext, e: Exception, supervisor: int, timeout: float, unreachable: str
) -> str:
    """What a call that waited ``timeout`` for the broker of a running stack says."""
    if unreachable:
        return f"{unreachable}{e} ({ctx.where()}); waited {timeout:g} s for it"
    if external_broker(ctx.appdir):
        return (
            f"{e} ({ctx.where()}): tomato-mqtt runs here (supervisor pid {supervisor}) and "
            f"its broker, not the embedded one ([broker] embedded = false), took no "
            f"connection within {timeout:g} s: is it running? Start it (its service "
            "manager, if it has one); tomato-mqtt's services reconnect by themselves"
        )
    return (
        f"{e} ({ctx.where()}): tomato-mqtt runs here (supervisor pid {supervisor}), and "
        f"its broker took no connection within {timeout:g} s: it is being restarted, or "
        "failed to start again (broker.log and supervisor.log in the logdir say which). "
        "Try again with a longer -t/--timeout"
    )


def status_section(ctx: CallContext, what: str, timeout: float) -> dict[str, Any] | None:
    """The scheduler's ``status`` of section ``what`` as plain JSON, quietly: None when
    no scheduler answers within ``timeout`` or it refuses (a look before a command)."""
    from tomato_mqtt.transport import oneshot

    try:
        reply = oneshot.request(
            ctx.url,
            ctx.topics.scheduler_cmd("status"),
            ctx.topics.reply,
            {"what": what},
            timeout=timeout,
            who="scheduler",
        )
    except oneshot.OneShotError:
        return None
    return reply.data if reply.success and isinstance(reply.data, dict) else None


def scheduler_state(ctx: CallContext) -> str | None:
    """The ``state`` of the scheduler's retained status ("": none retained, as for an
    instance never started on this broker or a login that may not read it; None:
    unreadable)."""
    return scheduler_presence(ctx)[0]


def scheduler_presence(ctx: CallContext) -> tuple[str | None, float | None]:
    """The ``state`` of the scheduler's retained status (as :func:`scheduler_state`) and,
    when it says ``online``, how many seconds ago its last heartbeat came by this PC's
    clock, when that is more than 3 beats (10 s at least; None: not so, or not known)."""
    import time

    from tomato_mqtt import jsonlite
    from tomato_mqtt.transport import oneshot

    if ctx.url.transport == "websockets":  # (Exchange speaks TCP and TLS only)
        return None, None
    try:
        with oneshot.Exchange(ctx.url, ctx.topics.reply, timeout=2.0) as ex:
            raw = ex.retained(ctx.topics.scheduler_status(), 0.5)
        if not raw:
            return "", None
        doc = jsonlite.loads(raw)
    except (oneshot.OneShotError, ValueError):
        return None, None
    state = doc.get("state") if isinstance(doc, dict) else None
    if not isinstance(state, str):
        return None, None
    beat, every = doc.get("heartbeat"), doc.get("heartbeat_interval")
    if state != "online" or not isinstance(beat, int | float) or not beat:
        return state, None
    every = every if isinstance(every, int | float) and every > 0 else 5.0
    # (3 beats late, and 10 s at least: two PCs' clocks may disagree by seconds); the
    # time since the last beat is said ("0 s overdue" of one silent for 10 s, when the
    # margin was taken off it: a randomized fault round)
    since = time.time() - beat
    return state, since if since > max(3 * every, 10.0) else None


def other_instances(ctx: CallContext, wait: float = 0.5) -> list[str]:
    """The instances whose scheduler's retained status on this broker says ``online``,
    but ``ctx``'s own ([] if none, or the login may not read them)."""
    import contextlib

    from tomato_mqtt import jsonlite
    from tomato_mqtt.transport import oneshot
    from tomato_mqtt.wire.topics import PROTOCOL

    if ctx.url.transport == "websockets":  # (Exchange speaks TCP and TLS only)
        return []
    found: set[str] = set()

    def seen(topic: str, raw: bytes) -> None:
        parts = topic.split("/")
        with contextlib.suppress(ValueError):
            doc = jsonlite.loads(raw) if raw else None
            if len(parts) == 5 and isinstance(doc, dict) and doc.get("state") == "online":
                found.add(parts[2])

    try:
        with oneshot.Exchange(ctx.url, ctx.topics.reply, timeout=2.0) as ex:
            ex.watch(f"{PROTOCOL}/+/scheduler/status", wait, seen)
    except oneshot.OneShotError:
        return []
    return sorted(found - {ctx.instance})


def _scheduler_away(ctx: CallContext) -> tuple[str | None, str | None]:
    """(what the scheduler's retained status says of a scheduler that did not answer,
    when it is not running or stands still: "status says offline", "status says online,
    but its last heartbeat came N s ago: …"; None when it says it runs on time), and the
    state it says (:func:`scheduler_presence`)."""
    state, overdue = scheduler_presence(ctx)
    if state in ("offline", "lost", "stopping"):
        return f"status says {state}", state
    if overdue is not None:
        return (
            f"status says online, but its last heartbeat came {overdue:.0f} s ago: it is "
            "stalled (stopped, swapped out, overloaded) or cut off from the broker",
            state,
        )
    return None, state


#: broker hosts that are this PC (where a supervisor's pid file can be looked at)
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")

#: a timeout under which a connection that got no answer says the timeout was too short
#: (a broker on a quiet PC answers in ms; a stalled one is said so above it)
SHORT_WAIT = 0.5


def oneshot_failed(
    ctx: CallContext, e: Exception, unanswered: str = "", unreachable: str = ""
) -> NoReturn:
    """A one-shot call that went wrong, said plainly: nobody answered (or the ACL dropped
    the request), the broker refused us, or it cannot be reached."""
    from tomato_mqtt.transport import oneshot

    if isinstance(e, oneshot.NoAnswer):
        why = denied(ctx, e.topic, e)
        if why is not None:
            fail(why)
        hint = ""
        if "/scheduler/" in e.topic:
            # whoami went unanswered too (denied() says nothing then): a login that may
            # not ask the scheduler, as a node's (a leftover TOMATO_BROKER), reads the
            # same as a scheduler that is down (an admin's tour); unless the scheduler's
            # retained status says it is not running (an admin's after `tomato stop`
            # was told it may not ask it: another tour), or that it stands still
            said, state = _scheduler_away(ctx)
            if said is not None:  # (a scheduler stopped by SIGSTOP on a secured stack was
                # said to be one the admin's login may not ask: a fault run)
                hint = f"; the scheduler's {said}"
            elif not ctx.url.username:
                # an open stack: a misspelt instance reads as a stack that is down (a
                # newcomer's tour with README's `--instance lab1` on a `default` stack)
                if state == "" and (others := other_instances(ctx)):
                    hint = (
                        f"; no scheduler of instance {ctx.instance!r} is on this broker, "
                        f"but one of {', '.join(repr(i) for i in others)} is: is the "
                        "instance right (--instance, [mqtt] instance)?"
                    )
            elif e.asked and e.me is not None:  # it answered whoami meanwhile: it runs
                hint = "; the scheduler answered whoami meanwhile: it runs, and is slow"
            else:
                hint = (
                    f"; if the scheduler runs, the login {ctx.url.username!r} may not ask "
                    "it (a node's login may not: check -b/--broker and TOMATO_BROKER)"
                )
                if state == "":  # (a misspelt --instance was blamed on the login: an
                    # admin's tour)
                    hint = (
                        f"; no scheduler status of instance {ctx.instance!r} is kept on "
                        f"this broker: is the instance right (--instance, [mqtt] "
                        f"instance)?{hint.replace('; if', ' If', 1)}"
                    )
        elif ctx.url.username and e.asked and e.me is None:
            # a node's or a component's command, and whoami unanswered too: a login that
            # may ask neither, as a node's (`tomato restart-node` with a node's login
            # read as a node that is down: a security round); unless the scheduler's
            # retained status says why it did not answer (an admin was told "may not
            # ask it" of a stack frozen by SIGSTOP: a review)
            said, _state = _scheduler_away(ctx)
            if said is not None:
                hint = f"; the scheduler did not answer whoami either: its {said}"
            else:
                hint = (
                    f"; if it runs, the login {ctx.url.username!r} may not ask it: the "
                    "scheduler did not answer whoami either (a node's login may ask "
                    "neither: check -b/--broker and TOMATO_BROKER)"
                )
        fail(f"{e} ({ctx.where()}){unanswered}{hint}")
    if isinstance(e, oneshot.Refused):
        fail(f"{e} ({ctx.where()})")
    if isinstance(e, oneshot.Closed):  # a broker that closes the connection of a publish
        # its rules forbid (Aedes) instead of dropping it: said as the others' drop is
        why = denied(ctx, e.topic)
        if why is not None:
            fail(why)
        if ctx.url.username and "/scheduler/" in e.topic:  # whoami was closed too
            fail(
                f"{e} — is tomato-mqtt running? ({ctx.where()}); if it runs, the login "
                f"{ctx.url.username!r} may not ask the scheduler (a node's login may not: "
                "check -b/--broker and TOMATO_BROKER)"
            )
        if ctx.url.username and e.topic:  # another node's or component's command
            # (read as an external broker that is down: a security round on Aedes)
            fail(
                f"{e} ({ctx.where()}) as it took the request on {e.topic}: a broker that "
                f"went away, or one whose rules the login {ctx.url.username!r} may not "
                "send it by (Aedes closes the connection then; a node's login may command "
                "only its own components: check -b/--broker and TOMATO_BROKER)"
            )
    if isinstance(e, oneshot.Stuck) and e.timeout < SHORT_WAIT:
        # `tomato status -t 0.001` on a healthy stack was said to be a stalled broker,
        # with `kill PID` to stop it (a newcomer's tour)
        fail(
            f"{e} ({ctx.where()}): a -t/--timeout of {e.timeout:g} s is likely too short "
            "for the broker to answer; try again with a longer one"
        )
    if isinstance(e, oneshot.Stuck) and not unreachable:
        # a broker that runs, stuck (stopped, swapped out): said as such ("is it running?
        # `tomato start` starts it", and `tomato start` said "already running": a
        # fault-injection tour)
        if external_broker(ctx.appdir):
            # (it named broker.log, which an external broker does not write, and `kill
            # PID` of the supervisor, which does not stop it: a fault-injection round
            # with Mosquitto stopped)
            fail(
                f"{e} ({ctx.where()}): its port takes connections, and nothing answers "
                "them: the broker, not the embedded one ([broker] embedded = false), is "
                "stalled or overloaded? Try again; its own log says more, and its "
                "service manager restarts it if it stays stuck"
            )
        pid = _local_supervisor(ctx)
        fail(
            f"{e} ({ctx.where()}): "
            + (
                f"tomato-mqtt runs here (supervisor pid {pid}), but its broker does not "
                f"answer: stalled or overloaded? Try again; its log (broker.log in the "
                f"logdir) says more, and `kill {pid}` stops the stack if it stays stuck"
                if pid is not None
                else "its port takes connections, and nothing answers them: a broker "
                "that runs and is stalled or overloaded? Try again; its log says more"
            )
        )
    if not unreachable and external_broker(ctx.appdir):
        # (it said "`tomato start` starts it", which answered "already running": a
        # fault-injection run with Mosquitto stopped)
        fail(
            f"{e} ({ctx.where()}): the broker is not the embedded one ([broker] embedded "
            "= false): is it running? Start it; tomato-mqtt's services reconnect by themselves"
        )
    elsewhere = ctx.url.elsewhere_hint()
    fail(
        f"{unreachable}{e} ({ctx.where()}){elsewhere}"
        if unreachable
        else f"{e} ({ctx.where()}){elsewhere}"
        if elsewhere
        # (what to do, for a newcomer: "is it running?" alone left them guessing)
        else f"{e} — is tomato-mqtt running? ({ctx.where()}): `tomato start` starts it"
    )


def _local_supervisor(ctx: CallContext) -> int | None:
    """The pid of a live ``tomato start`` supervisor of this PC on the broker's port
    (None: none, or the settings cannot be read). Light: the datadir as
    :func:`~tomato_mqtt.cli.fastsettings.light_datadir` reads it (a call that could not
    connect must stay on the fast path: pydantic's settings cost ~0.1 s)."""
    if ctx.url.host not in LOCAL_HOSTS:
        return None
    datadir = light_datadir(ctx.appdir, ctx.datadir)
    # (no pid file, as of a stack not running: nothing more imported; the name is
    # launch.pidfile_path's, which imports json and socket)
    if datadir is None or not os.path.isfile(
        os.path.join(datadir, f"tomato-mqtt.{ctx.url.port}.pid")
    ):
        return None
    from pathlib import Path

    from tomato_mqtt.services.launch import live_supervisor

    return live_supervisor(Path(datadir), ctx.url.port)


def ask_scheduler(opts: Opts, op: str, args: Mapping[str, Any]) -> None:
    """A scheduler command whose Reply message says it all (pipeline load/eject/ready,
    reload): one request, the message printed (the whole Reply with -y/--json)."""
    ctx = opts.context()
    # a scheduler only slow (stopped, swapped out) gets to it later: said, as a cancel's
    # (an eject and a reload said "error: no scheduler answered" and were made 22 s
    # later without a word: a fault-injection tour)
    look = "`tomato status`" if op == "reload" else "`tomato status pipelines`"
    later = (
        f"; the {op.replace('pipeline_', '')} may still take effect if a scheduler got the "
        f"request and answers later: look with {look} before asking again"
    )
    if op == "reload" and opts.appdir is not None:
        _reload_reads_its_own(ctx, opts.appdir, opts.timeout)
    reply = run_request(
        ctx, ctx.topics.scheduler_cmd(op), args, timeout=opts.timeout, unanswered=later
    )
    opts.output().reply(reply, lambda _data: by_line(reply.msg))


def _reload_reads_its_own(ctx: CallContext, appdir: Dir, timeout: float) -> None:
    """Say it when ``-A`` of ``tomato reload`` is not the scheduler's appdir: the
    scheduler re-reads its own settings.toml and devices file; tomato 2.2's reload took
    those of the CLI's ``-A``. ``reload -A other`` read "reload done: no changes" and
    left the other folder's pipelines out without a word (a tomato 2.2 user's tour)."""
    status = status_section(ctx, "scheduler", min(timeout, 2.0)) or {}
    theirs, devices = status.get("appdir"), status.get("devices_file")
    given = os.path.realpath(os.path.expanduser(os.fspath(appdir) or "."))
    if isinstance(theirs, str) and os.path.realpath(theirs) != given:
        echo(
            f"note: the scheduler reloads its own files (appdir {theirs}"
            + (f", devices file {devices}" if isinstance(devices, str) else "")
            + f"), not those under -A {os.fspath(appdir)}, which only says how this call "
            "reaches the broker (tomato 2.2 reloaded those of the CLI's -A). To run the "
            f"stack on them: tomato stop, then tomato start -A {os.fspath(appdir)}",
            err=True,
        )


def by_line(msg: str) -> str:
    """A reply's message for people: its warnings one a line under what was done (a
    reload's answer was one line of 2,000 characters: a driver author's tour)."""
    head, *warnings = msg.split("; warning: ")
    return head + below("warnings", warnings)  # (safe: a driver's text among them)
