"""``tomato``: set up, start, stop and inspect a tomato-mqtt stack; run its services.

Heavy modules (services, amqtt, xarray) are imported inside the commands that need
them, so ``tomato status`` stays fast.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from tomato_mqtt.cli import common
from tomato_mqtt.cli import user as _user
from tomato_mqtt.cli.common import (
    AppDirOpt,
    BrokerOpt,
    DataDirOpt,
    InstanceOpt,
    LogDirOpt,
    PortOpt,
    TimeoutOpt,
    fail,
)

app = typer.Typer(
    name="tomato",
    help="tomato-mqtt: laboratory instrument automation over MQTT.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

VerboseOpt = Annotated[int, typer.Option("-v", "--verbose", count=True, help="more logging")]


def _settings(
    appdir: Path | None, datadir: Path | None, logdir: Path | None, port: int | None
) -> Any:
    from tomato_mqtt.config.settings import load_settings
    from tomato_mqtt.errors import ConfigError

    try:
        return load_settings(appdir=appdir, datadir=datadir, logdir=logdir, port=port)
    except ConfigError as e:
        fail(str(e))


def _common_args(s: Any) -> list[str]:
    return ["-A", str(s.appdir), "-D", str(s.datadir), "-L", str(s.logdir), "-p", str(s.mqtt.port)]


@app.command()
def init(
    appdir: AppDirOpt = None,
    datadir: DataDirOpt = None,
    logdir: LogDirOpt = None,
    port: PortOpt = None,
) -> None:
    """Write a commented settings.toml and a default devices.yml (never overwrites)."""
    from tomato_mqtt.config.settings import default_dirs, write_default_files

    a, d, lg = default_dirs()
    written = write_default_files(appdir or a, datadir or d, logdir or lg, port=port)
    if written:
        for p in written:
            common.emit(f"wrote {p}")
    else:
        common.emit(f"nothing to do: settings already exist in {appdir or a}")


@app.command()
def start(
    appdir: AppDirOpt = None,
    datadir: DataDirOpt = None,
    logdir: LogDirOpt = None,
    port: PortOpt = None,
    timeout: TimeoutOpt = 30.0,
) -> None:
    """Start the local stack in the background; return when it answers."""
    from tomato_mqtt.config.devices import load_devices
    from tomato_mqtt.errors import ConfigError
    from tomato_mqtt.services.supervisor import pidfile_path, port_in_use, read_pidfile

    s = _settings(appdir, datadir, logdir, port)
    try:  # refuse a bad devices file here, with its reason, rather than in a log
        load_devices(s.devices_file, s.node.name)
    except ConfigError as e:
        fail(str(e))
    _user.ensure_services(s)  # a secured stack: the services' own logins
    ctx = common.context(port=s.mqtt.port, appdir=s.appdir, datadir=s.datadir, logdir=s.logdir)
    pidfile = pidfile_path(s.datadir, s.mqtt.port)
    info = read_pidfile(pidfile)
    if info and _alive(int(str(info.get("pid")))):
        fail(f"tomato-mqtt is already running on port {s.mqtt.port} (pid {info['pid']})")
    if s.broker.embedded and port_in_use(s.broker.host, s.mqtt.port):
        if _scheduler_answers(ctx, 1.0):
            fail(f"tomato-mqtt is already running on port {s.mqtt.port} ({ctx.where()})")
        fail(f"port {s.mqtt.port} on {s.broker.host} is already in use by another program")
    if not s.broker.embedded and _scheduler_answers(ctx, 2.0):
        fail(f"a tomato-mqtt scheduler already answers on {ctx.where()}")
    s.logdir.mkdir(parents=True, exist_ok=True)
    s.datadir.mkdir(parents=True, exist_ok=True)
    log_path = s.logdir / "supervisor.log"
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tomato_mqtt.cli.tomato", "supervise", *_common_args(s)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    ready = _wait_ready(ctx, proc, timeout)
    if ready is None:
        fail(f"tomato-mqtt did not come up within {timeout:g} s; see the logs in {s.logdir}")
    n_ok, n_all = ready
    common.emit(
        f"tomato-mqtt started on {ctx.url} (instance {ctx.instance}, pid {proc.pid}); "
        f"{n_ok}/{n_all} component(s) ready"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _scheduler_answers(ctx: common.CallContext, timeout: float) -> bool:
    import asyncio

    from tomato_mqtt.transport.client import AsyncClient, MqttError
    from tomato_mqtt.transport.rpc import NoResponder, Requester

    async def go() -> bool:
        c = AsyncClient(ctx.url, client_id=f"cli-probe-{os.getpid()}")
        try:
            await c.connect(timeout=timeout)
        except MqttError:
            return False
        try:
            r = await Requester(c, ctx.topics).request(
                ctx.topics.scheduler_cmd("status"), {}, timeout=timeout, who="scheduler"
            )
            return bool(r.success)
        except NoResponder:
            return False
        finally:
            await c.disconnect()

    return asyncio.run(go())


def _is_online(payload: bytes) -> bool:
    """Whether a retained scheduler status says online (cheaply: no pydantic here)."""
    import json

    try:
        doc = json.loads(payload)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("state") == "online"


def _wait_ready(
    ctx: common.CallContext, proc: subprocess.Popen[bytes], timeout: float
) -> tuple[int, int] | None:
    """Wait until the scheduler answers and every component is registered."""
    import asyncio

    from tomato_mqtt.transport.client import AsyncClient, MqttError, MqttTimeout
    from tomato_mqtt.transport.rpc import NoResponder, Requester

    async def go() -> tuple[int, int] | None:
        deadline = time.monotonic() + timeout
        c = AsyncClient(ctx.url, client_id=f"cli-start-{os.getpid()}")
        while True:
            if proc.poll() is not None:
                return None
            try:
                await c.connect(timeout=0.5)
                break
            except MqttError:
                if time.monotonic() > deadline:
                    return None
                await asyncio.sleep(0.05)
        try:
            # push, not poll: ask again whenever the scheduler's presence or a component's
            # meta changes (both retained), and once a second in case a request was lost
            await c.subscribe(ctx.topics.scheduler_status())
            await c.subscribe(ctx.topics.all_component_meta())
            req = Requester(c, ctx.topics)
            last: tuple[int, int] | None = None
            online = False
            while time.monotonic() < deadline and proc.poll() is None:
                with contextlib.suppress(MqttTimeout):
                    msg = await c.next_message(1.0)
                    if msg.topic == ctx.topics.scheduler_status():
                        online = _is_online(msg.payload)
                    while (more := c.take_message()) is not None:  # a burst: ask once
                        if more.topic == ctx.topics.scheduler_status():
                            online = _is_online(more.payload)
                if not online:
                    continue
                try:
                    r = await req.request(
                        ctx.topics.scheduler_cmd("status"),
                        {"what": "components"},
                        timeout=1.0,
                        who="scheduler",
                    )
                except NoResponder:
                    continue
                comps = r.data if isinstance(r.data, list) else []
                ok = sum(1 for x in comps if isinstance(x, dict) and x.get("registered"))
                last = (ok, len(comps))
                if ok == len(comps):
                    return last
            return last
        finally:
            await c.disconnect()

    return asyncio.run(go())


@app.command()
def stop(
    appdir: AppDirOpt = None,
    datadir: DataDirOpt = None,
    logdir: LogDirOpt = None,
    port: PortOpt = None,
    broker: BrokerOpt = None,
    timeout: TimeoutOpt = 20.0,
) -> None:
    """Stop the stack (refused while jobs run)."""
    from tomato_mqtt.services.supervisor import pidfile_path, read_pidfile

    ctx = common.context(port=port, broker=broker, appdir=appdir, datadir=datadir, logdir=logdir)
    reply = common.run_request(ctx, ctx.topics.scheduler_cmd("stop"), {}, timeout=min(timeout, 5))
    if not reply.success:
        fail(reply.msg)
    s = ctx.settings
    info = read_pidfile(pidfile_path(s.datadir, ctx.url.port)) if s else None
    if info:
        pid = int(str(info.get("pid")))
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            fail(f"the supervisor (pid {pid}) did not stop within {timeout:g} s")
    common.emit("tomato-mqtt stopped")


@app.command()
def schema(instance: InstanceOpt = None, appdir: AppDirOpt = None) -> None:
    """Print the AsyncAPI 3.0 document of the wire contract."""
    from tomato_mqtt.wire.asyncapi import schema_json

    s = _settings(appdir, None, None, None)
    common.emit(schema_json(instance or s.mqtt.instance))


# -- services (foreground) -------------------------------------------------------------------
@app.command()
def broker(
    appdir: AppDirOpt = None,
    datadir: DataDirOpt = None,
    logdir: LogDirOpt = None,
    port: PortOpt = None,
) -> None:
    """Run the embedded MQTT broker in the foreground."""
    try:
        from tomato_mqtt_broker import run_broker
    except ImportError:
        fail("the embedded broker is not installed here: pip install tomato-mqtt-broker")
    from tomato_mqtt.services.base import setup_logging

    s = _settings(appdir, datadir, logdir, port)
    setup_logging("broker", s.logdir)
    try:
        run_broker(_user.broker_config(s))
    except ValueError as e:  # BrokerConfigError: an insecure or impossible set-up
        fail(f"the broker refuses to start: {e}")


@app.command()
def scheduler(
    appdir: AppDirOpt = None,
    datadir: DataDirOpt = None,
    logdir: LogDirOpt = None,
    port: PortOpt = None,
    verbose: VerboseOpt = 0,
) -> None:
    """Run the scheduler in the foreground."""
    import asyncio

    from tomato_mqtt.errors import ConfigError
    from tomato_mqtt.services.base import install_signal_handlers, setup_logging
    from tomato_mqtt.services.scheduler.service import SchedulerService, settings_url
    from tomato_mqtt.services.supervisor import EXIT_STOP_REQUESTED

    s = _settings(appdir, datadir, logdir, port)
    setup_logging("scheduler", s.logdir, verbose)
    _user.ensure_services(s, ["scheduler"])  # a secured stack: its own login
    svc = SchedulerService(s, url=_user.service_url(s, "scheduler", settings_url(s)))

    async def main() -> None:
        install_signal_handlers(svc._stop)
        await svc.run()

    try:
        asyncio.run(main())
    except ConfigError as e:
        fail(str(e))
    if svc.exit_requested:
        raise typer.Exit(EXIT_STOP_REQUESTED)


@app.command()
def recorder(
    appdir: AppDirOpt = None,
    datadir: DataDirOpt = None,
    logdir: LogDirOpt = None,
    port: PortOpt = None,
    verbose: VerboseOpt = 0,
) -> None:
    """Run the recorder in the foreground."""
    import asyncio

    from tomato_mqtt.services.base import install_signal_handlers, setup_logging
    from tomato_mqtt.services.recorder.service import RecorderService
    from tomato_mqtt.services.scheduler.service import settings_url

    s = _settings(appdir, datadir, logdir, port)
    setup_logging("recorder", s.logdir, verbose)
    _user.ensure_services(s, ["recorder"])
    svc = RecorderService(
        _user.service_url(s, "recorder", settings_url(s)),
        s.mqtt.instance,
        s.recorder_db,
        heartbeat=s.scheduler.heartbeat,
        output_roots=s.output_roots,
        users_file=s.users_file,
    )

    async def main() -> None:
        install_signal_handlers(svc._stop)
        await svc.run()

    asyncio.run(main())


@app.command()
def node(
    name: Annotated[str | None, typer.Option("--name", "-n", help="node name")] = None,
    broker: BrokerOpt = None,
    instance: InstanceOpt = None,
    spool_dir: Annotated[Path | None, typer.Option("--spool-dir", help="spool folder")] = None,
    appdir: AppDirOpt = None,
    datadir: DataDirOpt = None,
    logdir: LogDirOpt = None,
    port: PortOpt = None,
    verbose: VerboseOpt = 0,
) -> None:
    """Run a driver node in the foreground (e.g. on an instrument PC)."""
    import asyncio

    from tomato_mqtt.services.base import install_signal_handlers, setup_logging
    from tomato_mqtt.services.node.service import NodeConfig, NodeService

    ctx = common.context(
        port=port, broker=broker, instance=instance, appdir=appdir, datadir=datadir, logdir=logdir
    )
    s = ctx.settings
    node_name = name or s.node.name
    setup_logging(f"node-{node_name}", s.logdir if logdir or appdir else None, verbose)
    # the local node of a secured stack logs in as its own service user
    if not broker:
        _user.ensure_services(s, [f"node:{node_name}"])
    url = ctx.url if broker else _user.service_url(s, f"node:{node_name}", ctx.url)
    svc = NodeService(
        NodeConfig(
            node_name,
            url,
            ctx.instance,
            spool_dir or s.spool_dir,
            heartbeat=s.scheduler.heartbeat,
            batch_interval=s.node.batch_interval,
            batch_max_points=s.node.batch_max_points,
            spool_max_bytes=int(s.node.spool_max_mb * 2**20),
            driver_settings=s.drivers,
        )
    )

    async def main() -> None:
        install_signal_handlers(svc._stop)
        await svc.run()

    asyncio.run(main())


@app.command(hidden=True)
def supervise(
    appdir: AppDirOpt = None,
    datadir: DataDirOpt = None,
    logdir: LogDirOpt = None,
    port: PortOpt = None,
) -> None:
    """Run the local stack under supervision (started by ``tomato start``)."""
    import asyncio

    from tomato_mqtt.services.base import setup_logging
    from tomato_mqtt.services.supervisor import Supervisor, pidfile_path

    s = _settings(appdir, datadir, logdir, port)
    setup_logging("supervisor", s.logdir)
    _user.ensure_services(s)
    sup = Supervisor(
        _common_args(s),
        logdir=s.logdir,
        pidfile=pidfile_path(s.datadir, s.mqtt.port),
        embedded_broker=s.broker.embedded,
        broker_host=s.broker.host,
        port=s.mqtt.port,
        node_name=s.node.name,
    )
    raise typer.Exit(asyncio.run(sup.run()))


def _mount() -> None:
    # sub-apps and shared commands written in their own modules
    from tomato_mqtt.cli import pipeline as _pipeline
    from tomato_mqtt.cli import status as _status

    app.add_typer(_pipeline.app, name="pipeline", help="Load, eject and mark pipelines ready.")
    app.add_typer(_user.app, name="user", help="Users, passwords and roles of the broker.")
    app.command("broker-config")(_user.broker_config_cmd)
    app.command("status")(_status.status)
    app.command("reload")(_status.reload)


_mount()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
