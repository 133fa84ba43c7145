"""``tomato dashboard``: serve the live web UI (issue 11; see docs/dashboard.md).

Runs in the foreground (``tomato start`` runs it as one more supervised service when
``[dashboard] enabled = true``). It is an ordinary MQTT client: ``--broker`` points it at
any broker from any PC. Needs the ``dashboard`` extra (aiohttp, plotly), which the
instrument-PC install does not pull in.
"""

from __future__ import annotations

import errno
from typing import Annotated, Any

import typer

from tomato_mqtt.cli import common, serve
from tomato_mqtt.cli.common import fail

__all__ = ["app"]

app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)


@app.command()
@common.options(("broker", "instance", *common.LOCAL))
def dashboard(
    *,
    opts: common.Opts,
    host: Annotated[
        str | None, typer.Option("--host", help="address to serve on (default: dashboard.host)")
    ] = None,
    web_port: Annotated[
        int | None, typer.Option("--web-port", help="HTTP port (default: dashboard.port, 8765)")
    ] = None,
    read_only: Annotated[
        bool, typer.Option("--read-only", help="show no controls to anyone")
    ] = False,
    open_browser: Annotated[
        bool, typer.Option("--open", help="open the page in this PC's web browser")
    ] = False,
    more: Annotated[int, common.counter("-v", "--verbose", "more logging (-vv)")] = 0,
) -> None:
    """Serve the live dashboard (default http://127.0.0.1:8765/)."""
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        fail("the dashboard is not installed here: pip install 'tomato-mqtt[dashboard]'")
    from tomato_mqtt.services.base import setup_logging
    from tomato_mqtt.services.dashboard.service import (
        DashboardConfig,
        DashboardService,
        stack_id,
    )
    from tomato_mqtt.services.watchdog import follow_supervisor

    follow_supervisor()  # under tomato start: stop with the stack's supervisor

    ctx = opts.context()
    s = ctx.settings
    setup_logging("dashboard", s.logdir if opts.logdir or opts.appdir else None, more)
    url = ctx.url
    if not opts.broker:  # the local stack's own dashboard login (role dashboard = reader)
        serve.ensure_services(s, ["dashboard"])
        url = serve.service_url(s, "dashboard", ctx.url)
    svc = DashboardService(
        DashboardConfig(
            url=url,
            instance=ctx.instance,
            host=host or s.dashboard.host,
            port=s.dashboard.port if web_port is None else web_port,
            read_only=read_only or s.dashboard.read_only,
            lost_after=s.scheduler.lost_after,
            certfile=s.dashboard.certfile,
            keyfile=s.dashboard.keyfile,
            hosts=tuple(s.dashboard.hosts),
        )
    )

    def ready(address: str) -> None:  # bound and connected: only now is the URL true
        typer.echo(f"dashboard: {address} (Ctrl-C stops it)", err=True)
        if open_browser:
            _open(address)

    svc.on_ready = ready
    from tomato_mqtt.services.dashboard.service import BrokerUnreachable
    from tomato_mqtt.transport.client import MqttError, MqttRefused, MqttUntrusted

    # said at once: it printed nothing while it tried to reach the broker, 30 s when
    # there was none (a newcomer's tour)
    typer.echo(f"dashboard: connecting to the broker at {url} (Ctrl-C stops it)", err=True)
    try:
        svc.run_sync()
        if svc.stopped_before_connected:
            raise typer.Exit(130)  # said "interrupted" (cli/fast.py)
    except MqttRefused as e:
        login = url.username or "(anonymous)"
        fail(
            f"the broker refused the dashboard's login {login!r}: {e}. "
            + (
                "Check the user and password of --broker."
                if opts.broker
                else "The dashboard adds its login to the users file when it first starts: "
                "on the embedded broker that is all; on Mosquitto, run `tomato "
                "broker-config --mosquitto DIR` again and have Mosquitto read its files "
                "(kill -HUP <its pid>), then start the dashboard again (docs/dashboard.md)."
            )
        )
    except BrokerUnreachable as e:
        fail(
            f"the dashboard cannot reach the broker ({e}). It kept trying for "
            f"{svc.cfg.connect_timeout:g} s and has stopped"
            + (
                url.elsewhere_hint()
                or ": start the stack (tomato start), or name the broker with --broker URL "
                "or -p PORT"
            )
        )
    except MqttUntrusted as e:  # it runs, and its certificate is not trusted here
        fail(f"the dashboard cannot use the broker: {e}")
    except MqttError as e:
        fail(f"the dashboard stopped on an error of the broker at {url}: {e}")
    except OSError as e:
        where = f"{svc.cfg.host}:{svc.cfg.port}"
        if e.errno == errno.EADDRINUSE:
            there, stack = _dashboard_at(svc.cfg.host, svc.cfg.port, svc.cfg.tls)
            ours = stack_id(ctx.instance, ctx.url.host, ctx.url.port)
            if there is not None and stack in (None, ours):  # this stack's (the one of
                # [dashboard] enabled), or another `tomato dashboard` of it: "the port is
                # in use" sent its user looking for a program to stop (a newcomer's tour)
                typer.echo(
                    f"dashboard: a tomato-mqtt dashboard of this stack serves {there} "
                    "already (the stack's own when [dashboard] enabled = true): nothing "
                    "more started",
                    err=True,
                )
                if open_browser:
                    _open(there)
                raise typer.Exit(0) from None
            if there is not None:  # another stack's (another instance, broker or user)
                fail(
                    f"the dashboard cannot serve on {where}: the dashboard of another stack "
                    f"serves there ({there}); choose a free port with --web-port N, or set "
                    "port = N under [dashboard] in settings.toml"
                )
            ours = (
                f" (the embedded broker's WebSocket listener takes {s.ws_port}, the MQTT port"
                " + 1 unless [broker] ws_port says otherwise)"
                if s.broker.embedded and s.ws_port == svc.cfg.port
                else ""
            )
            fail(
                f"the dashboard cannot serve on {where}: the port is in use (another "
                f"dashboard, or another program{ours}); choose a free one with --web-port N, "
                "or set port = N under [dashboard] in settings.toml"
            )
        fail(
            f"the dashboard cannot serve on {where}: {e}; serve another address with "
            "--host ADDRESS or host = ... under [dashboard] in settings.toml"
        )


def _dashboard_at(host: str, port: int, tls: bool) -> tuple[str | None, str | None]:
    """The address of a tomato-mqtt dashboard serving on ``host:port`` and the stack it
    shows (its ``X-Tomato-Stack``; None from a version without it); (None, None) for
    another program, or none that answers within a second."""
    import ssl
    import urllib.request

    near = "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host
    shown = f"[{near}]" if ":" in near else near
    address = f"{'https' if tls else 'http'}://{shown}:{port}/"
    handlers: list[Any] = [urllib.request.ProxyHandler({})]  # this PC: never a proxy
    if tls:  # only looked at: its certificate may be one this PC does not trust
        handlers.append(urllib.request.HTTPSHandler(context=ssl._create_unverified_context()))
    try:
        with urllib.request.build_opener(*handlers).open(address, timeout=1.0) as r:
            page = r.read(4096)
            stack = r.headers.get("X-Tomato-Stack")
    except Exception:  # (a TLS or SSH listener's answer is no HTTP: a review) not ours
        return None, None
    if b"<title>tomato-mqtt dashboard</title>" not in page:
        return None, None
    return address, stack


def _open(address: str) -> None:
    """``--open``: the address in this PC's web browser, or why not."""
    import webbrowser

    try:
        opened = webbrowser.open(address)
    except webbrowser.Error:
        opened = False
    if not opened:  # it said nothing when this PC has no browser (a server, ssh)
        typer.echo(
            f"dashboard: --open found no web browser on this PC: open {address} "
            "in a browser that reaches it",
            err=True,
        )
