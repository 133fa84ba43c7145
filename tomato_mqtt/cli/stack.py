"""``tomato init``, ``start`` and ``stop``: set up the local stack, run it in the background.

``start`` runs ``tomato supervise`` (cli/services.py) as a detached process and waits,
on MQTT, until the scheduler answers and every component is registered.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import typer

from tomato_mqtt.cli import common
from tomato_mqtt.cli import user as _user
from tomato_mqtt.cli.common import fail
from tomato_mqtt.cli.services import service_args

__all__ = ["app"]

# merged into ``tomato`` (no name): ``tomato init``, ``tomato start``, ``tomato stop``
app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)


@app.command()
@common.options(common.LOCAL)
def init(opts: common.Opts) -> None:
    """Write a commented settings.toml and a default devices.yml (never overwrites)."""
    from tomato_mqtt.config.settings import default_dirs, write_default_files

    a, d, lg = default_dirs()
    written = write_default_files(
        opts.appdir or a, opts.datadir or d, opts.logdir or lg, port=opts.port
    )
    if written:
        for p in written:
            common.emit(f"wrote {p}")
    else:
        common.emit(f"nothing to do: settings already exist in {opts.appdir or a}")


@app.command()
@common.options((*common.LOCAL, "timeout"), timeout=30.0)
def start(opts: common.Opts) -> None:
    """Start the local stack in the background; return when it answers."""
    from tomato_mqtt.config.devices import load_devices
    from tomato_mqtt.errors import ConfigError
    from tomato_mqtt.services.supervisor import pidfile_path, port_in_use, read_pidfile

    s = opts.settings()
    try:  # refuse a bad devices file here, with its reason, rather than in a log
        load_devices(s.devices_file, s.node.name)
    except ConfigError as e:
        fail(str(e))
    _user.ensure_services(s)  # a secured stack: the services' own logins
    ctx = common.context(port=s.mqtt.port, appdir=s.appdir, datadir=s.datadir, logdir=s.logdir)
    pidfile = pidfile_path(s.datadir, s.mqtt.port)
    info = read_pidfile(pidfile)
    # a zombie or a reused pid left by a crash is dead: start at once
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
            [sys.executable, "-m", "tomato_mqtt.cli.tomato", "supervise", *service_args(s)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    ready = _wait_ready(ctx, proc, opts.timeout)
    if ready is None:
        fail(f"tomato-mqtt did not come up within {opts.timeout:g} s; see the logs in {s.logdir}")
    n_ok, n_all = ready
    common.emit(
        f"tomato-mqtt started on {ctx.url} (instance {ctx.instance}, pid {proc.pid}); "
        f"{n_ok}/{n_all} component(s) ready"
    )
    if s.dashboard.enabled:
        common.emit(f"dashboard: http://{s.dashboard.host}:{s.dashboard.port}/")


def _alive(pid: int) -> bool:
    from tomato_mqtt.services.supervisor import pid_alive

    return pid_alive(pid)  # a zombie or stale pid left by a crash is not alive


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
@common.options((*common.LOCAL, "broker", "timeout"), timeout=20.0)
def stop(opts: common.Opts) -> None:
    """Stop the stack (refused while jobs run)."""
    from tomato_mqtt.services.supervisor import pidfile_path, read_pidfile

    ctx = opts.context()
    reply = common.run_request(
        ctx, ctx.topics.scheduler_cmd("stop"), {}, timeout=min(opts.timeout, 5)
    )
    if not reply.success:
        fail(reply.msg)
    s = ctx.settings
    info = read_pidfile(pidfile_path(s.datadir, ctx.url.port)) if s else None
    if info:
        pid = int(str(info.get("pid")))
        deadline = time.monotonic() + opts.timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            fail(f"the supervisor (pid {pid}) did not stop within {opts.timeout:g} s")
    common.emit("tomato-mqtt stopped")
