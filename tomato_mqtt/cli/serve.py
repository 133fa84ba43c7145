"""The services' own entry, without typer: ``python -m tomato_mqtt.cli.serve SERVICE …``.

``tomato start``'s supervisor launches the broker, scheduler, recorder and node this way,
and ``tomato broker|scheduler|recorder|node`` typed by hand (systemd units, an instrument
PC) lands here too (:mod:`.fast`). A long-lived service has no use for typer, click and
rich: they cost every service ~40 ms of CPU at start and ~5 MB of memory for its whole
life (issue 15: the start and memory rows). The bodies below are the commands; the typer
commands in :mod:`.services` parse the same options and call them, so ``--help`` and
every message about a bad option stay typer's: a command line this parser does not know
exactly goes to typer.

Also here, because both the services and ``tomato start`` need them without typer: the
services' own logins on a secured stack (:func:`ensure_services`, :func:`service_url`)
and the embedded broker's configuration (:func:`broker_config`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tomato_mqtt.cli.core import Opts, as_path, fail
from tomato_mqtt.config.url import BrokerURL

if TYPE_CHECKING:
    from tomato_mqtt.config.settings import Settings

__all__ = [
    "SERVICES",
    "broker",
    "broker_config",
    "ensure_services",
    "main",
    "node",
    "parse",
    "recorder",
    "scheduler",
    "service_args",
    "service_url",
]

SERVICES = ("broker", "scheduler", "recorder", "node")


# -- what the services and `tomato start` share ----------------------------------------------
def service_args(s: Settings) -> list[str]:
    """The options that give a child service the same settings as ``s`` (the port first:
    a preloaded service's command line may be cut after it, cli/preload.py ``show_as``)."""
    return ["-p", str(s.mqtt.port), "-A", str(s.appdir), "-D", str(s.datadir), "-L", str(s.logdir)]


def _creds_path(s: Settings) -> Path:
    from tomato_mqtt.config.users import SERVICE_CREDENTIALS

    return Path(s.datadir) / SERVICE_CREDENTIALS


def ensure_services(s: Settings, keys: list[str] | None = None) -> None:
    """On a secured stack, make sure the local services have their own logins.

    A node run with ``--broker`` logs in as told; one run without it on a PC without the
    users file (an instrument PC) has no service login to make.
    """
    if s.users_file is None or (keys is not None and not s.users_file.exists()):
        return
    if not s.users_file.exists():
        fail(
            f"the users file {s.users_file} does not exist: add an admin first "
            "(tomato user add NAME --role admin)"
        )
    from tomato_mqtt.config.users import ensure_service_users
    from tomato_mqtt.errors import ConfigError

    # the dashboard's too (a reader): `broker-config --mosquitto` then writes it into
    # Mosquitto's files before the dashboard first starts (it was refused there)
    default = ["scheduler", "recorder", f"node:{s.node.name}", "dashboard"]
    try:
        ensure_service_users(s.users_file, _creds_path(s), keys or default)
    except (ValueError, ConfigError, OSError) as e:
        fail(f"cannot set up the services' logins in {s.users_file}: {e}")


def service_url(s: Settings, key: str, base: BrokerURL) -> BrokerURL:
    """``base`` with the service's own login, when the stack is secured and has one."""
    if s.users_file is None:
        return base
    from tomato_mqtt.config.users import service_login

    login = service_login(_creds_path(s), key)
    if login is None:
        return base
    return base.replace(username=login[0], password=login[1])


def broker_config(s: Settings) -> Any:
    """The embedded broker's configuration from settings (raises BrokerConfigError)."""
    from tomato_mqtt_broker import BrokerConfig

    b = s.broker
    return BrokerConfig(
        host=b.host,
        port=s.mqtt.port,
        ws_port=s.ws_port,
        password_file=b.password_file,
        allow_anonymous=b.allow_anonymous and not b.password_file,
        instance=s.mqtt.instance,
        devices_file=str(s.devices_file),
        default_node=s.node.name,
        certfile=b.certfile,
        keyfile=b.keyfile,
        cafile=b.cafile,
        require_certificate=b.require_certificate,
        tls_port=b.tls_port,
        max_queued_bytes=b.max_queued_bytes,
        max_queued_bytes_people=b.max_queued_bytes_people,
        max_queued_messages=b.max_queued_messages,
        max_packet_bytes=b.max_packet_bytes,
        max_connections_per_login=b.max_connections_per_login,
    )


# -- the services ---------------------------------------------------------------------------
def broker(opts: Opts) -> None:
    """Run the embedded MQTT broker in the foreground."""
    _follow_supervisor()
    try:
        from tomato_mqtt_broker import run_broker
    except ImportError:
        fail("the embedded broker is not installed here: pip install tomato-mqtt-broker")
    from tomato_mqtt.services.base import setup_logging
    from tomato_mqtt.services.launch import BROKER_CONFIG_ENV, EXIT_CANNOT_LISTEN, LISTEN_FD_ENV

    # under `tomato start` the supervisor hands down the configuration start checked:
    # no settings to read (pydantic), and the broker serves sooner (everything waits
    # for it); `tomato broker` run by hand reads the settings
    given = os.environ.get(BROKER_CONFIG_ENV)
    s = opts.settings() if given is None or opts.logdir is None else None
    setup_logging("broker", as_path(opts.logdir) if s is None else s.logdir)
    # socket activation: the supervisor bound the MQTT port and hands its socket down
    fd = os.environ.get(LISTEN_FD_ENV, "")
    try:
        if s is not None:
            config = broker_config(s)
        else:
            from tomato_mqtt_broker import BrokerConfig

            config = BrokerConfig.from_json(given or "")
        config.listen_fd = int(fd) if fd.isdigit() else None
        run_broker(config)
    except ValueError as e:  # BrokerConfigError: an insecure or impossible set-up
        fail(f"the broker refuses to start: {e}")
    except OSError as e:  # a port is taken: the supervisor gives up on this exit code
        fail(str(e), code=EXIT_CANNOT_LISTEN)


def scheduler(opts: Opts, verbosity: int = 0) -> None:
    """Run the scheduler in the foreground (exits 3 after ``tomato stop``)."""
    _follow_supervisor()
    from tomato_mqtt.config.settings import settings_url
    from tomato_mqtt.errors import ConfigError
    from tomato_mqtt.services.base import setup_logging
    from tomato_mqtt.services.launch import EXIT_STOP_REQUESTED
    from tomato_mqtt.services.scheduler.service import SchedulerService

    s = opts.settings()
    setup_logging("scheduler", s.logdir, verbosity)
    ensure_services(s, ["scheduler"])  # a secured stack: its own login
    svc = SchedulerService(s, url=service_url(s, "scheduler", settings_url(s)))
    try:
        svc.run_sync()
    except ConfigError as e:
        fail(str(e))
    if svc.exit_requested:
        raise SystemExit(EXIT_STOP_REQUESTED)


def recorder(opts: Opts, verbosity: int = 0) -> None:
    """Run the recorder in the foreground."""
    _follow_supervisor()
    from tomato_mqtt.services.idle import import_when_idle

    # nothing waits for the recorder at start: its imports take the CPU the broker,
    # scheduler and nodes leave (services/idle.py); it runs at normal priority
    import_when_idle(
        "tomato_mqtt.config.settings",
        "tomato_mqtt.services.base",
        "tomato_mqtt.services.recorder.service",
    )
    from tomato_mqtt.config.settings import settings_url
    from tomato_mqtt.services.base import setup_logging
    from tomato_mqtt.services.recorder.service import RecorderService

    s = opts.settings()
    setup_logging("recorder", s.logdir, verbosity)
    ensure_services(s, ["recorder"])
    svc = RecorderService(
        service_url(s, "recorder", settings_url(s)),
        s.mqtt.instance,
        s.recorder_db,
        heartbeat=s.scheduler.heartbeat,
        output_roots=s.output_roots,
        users_file=s.users_file,
        keep_days=s.recorder.keep_days,
        max_reply=s.max_reply_bytes,
    )
    svc.run_sync()


def node(
    opts: Opts, name: str | None = None, spool_dir: Path | None = None, verbosity: int = 0
) -> None:
    """Run a driver node in the foreground (e.g. on an instrument PC)."""
    _follow_supervisor()
    from tomato_mqtt.services.base import setup_logging
    from tomato_mqtt.services.node.service import NodeConfig, NodeService
    from tomato_mqtt.services.watchdog import SUPERVISOR_PID_ENV

    ctx = opts.context()
    s = ctx.settings
    node_name = name or s.node.name
    # a node started by hand without -A/-L logs to the console only
    logdir = s.logdir if opts.logdir or opts.appdir else None
    # by hand (no supervisor): its warnings on the console too ("cannot reach the broker")
    by_hand = not os.environ.get(SUPERVISOR_PID_ENV)
    setup_logging(f"node-{node_name}", logdir, verbosity, warnings_to_stderr=by_hand)
    # the local node of a secured stack logs in as its own service user
    if not opts.broker:
        ensure_services(s, [f"node:{node_name}"])
    url = ctx.url if opts.broker else service_url(s, f"node:{node_name}", ctx.url)
    svc = NodeService(
        NodeConfig(
            node_name,
            url,
            ctx.instance,
            spool_dir or s.spool_dir,
            heartbeat=s.scheduler.heartbeat,
            batch_interval=s.node.batch_interval,
            batch_max_points=s.node.batch_max_points,
            batch_max_bytes=s.node.batch_max_bytes,
            spool_max_bytes=int(s.node.spool_max_mb * 2**20),
            driver_settings=s.drivers,
            upstream_env=s.upstream_env,
            max_message=s.max_reply_bytes,
        )
    )
    svc.supervised = not by_hand
    if logdir is not None:  # (said once connected: it printed nothing while it worked)
        svc.log_file = logdir / f"node-{node_name}.log"
    from tomato_mqtt.services.launch import EXIT_NAME_TAKEN, EXIT_RESTART_REQUESTED

    def exit_code() -> int:
        """What the node process exits with once stopped (its supervisor reads it)."""
        if svc.refused is not None:  # its name is another node's
            return 1 if by_hand else EXIT_NAME_TAKEN
        if svc.failed:
            return 1
        if svc.restart_requested and not by_hand:  # its supervisor starts it again at once
            return EXIT_RESTART_REQUESTED
        return 0

    # a thread in a driver call that never returns holds the interpreter at its exit:
    # the process ends all the same, with this code (a driver author's tour); so does
    # a second Ctrl-C or SIGTERM (a review)
    svc.exit_code_if_stuck = exit_code
    svc.hard_second_signal = True
    try:
        svc.run_sync()
    except SystemExit:
        if exit_code() == EXIT_NAME_TAKEN:
            raise SystemExit(EXIT_NAME_TAKEN) from None
        raise
    if exit_code() in (EXIT_NAME_TAKEN, EXIT_RESTART_REQUESTED):
        raise SystemExit(exit_code())


# -- the command line -----------------------------------------------------------------------
_LOCAL = {
    "-A": "appdir",
    "--appdir": "appdir",
    "-D": "datadir",
    "--datadir": "datadir",
    "-L": "logdir",
    "--logdir": "logdir",
    "-p": "port",
    "--port": "port",
}
#: the node's own options (``tomato node`` also takes ``--broker``/``--instance``)
_NODE = {
    "-b": "broker",
    "--broker": "broker",
    "--instance": "instance",
    "-n": "name",
    "--name": "name",
    "--spool-dir": "spool_dir",
}


def parse(argv: Sequence[str]) -> tuple[str, dict[str, str], int] | None:
    """(service, its options, verbosity) of ``argv``, or None when typer should parse it
    (``--help``, an unknown or misspelt option, a missing value)."""
    if not argv or argv[0] not in SERVICES:
        return None
    service, rest = argv[0], list(argv[1:])
    valued = {**_LOCAL, **(_NODE if service == "node" else {})}
    given: dict[str, str] = {}
    verbosity = 0
    while rest:
        a = rest.pop(0)
        if a.startswith("--") and "=" in a:
            name, value = a.split("=", 1)
            if name not in valued:
                return None
            given[valued[name]] = value
        elif a in valued:
            if not rest:
                return None
            given[valued[a]] = rest.pop(0)
        elif service != "broker" and a in ("--verbose", "--quiet"):
            verbosity += 1 if a == "--verbose" else -1
        elif service != "broker" and len(a) > 1 and set(a[1:]) <= {"v", "q"} and a[0] == "-":
            verbosity += a.count("v") - a.count("q")  # -v, -vv, -qq as click counts them
        else:
            return None
    if "port" in given and not given["port"].isdigit():
        return None
    if service == "node" and "broker" not in given and os.environ.get("TOMATO_BROKER") == "":
        return None  # click's reading of an empty variable: leave it to typer
    return service, given, verbosity


def _follow_supervisor() -> None:
    """Stop with the stack when its supervisor is gone (services/supervisor.py)."""
    from tomato_mqtt.services.watchdog import follow_supervisor

    follow_supervisor()


def _run(service: str, given: dict[str, str], verbosity: int) -> None:
    def path(key: str) -> Path | None:
        return Path(given[key]) if key in given else None

    broker_url = given.get("broker")
    if service == "node" and broker_url is None and os.environ.get("TOMATO_BROKER"):
        broker_url = os.environ["TOMATO_BROKER"]  # as typer reads it for --broker
    opts = Opts(
        port=int(given["port"]) if "port" in given else None,
        broker=broker_url,
        instance=given.get("instance"),
        appdir=path("appdir"),
        datadir=path("datadir"),
        logdir=path("logdir"),
    )
    if service == "broker":
        broker(opts)
    elif service == "scheduler":
        scheduler(opts, verbosity)
    elif service == "recorder":
        recorder(opts, verbosity)
    else:
        node(opts, given.get("name"), path("spool_dir"), verbosity)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m tomato_mqtt.cli.serve SERVICE [options]`` (as ``tomato SERVICE``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    parsed = parse(args)
    if parsed is None:  # typer owns --help and the messages about bad options
        from tomato_mqtt.cli import tomato

        sys.argv = ["tomato", *args]
        tomato.main()
        return
    _run(*parsed)


if __name__ == "__main__":
    main()
