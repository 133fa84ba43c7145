"""What the three CLIs share: options, one MQTT request per call, output, exit codes.

The CLIs are pure MQTT clients. This module must stay light to import: no pint,
xarray, pandas, amqtt or dgbowl-schemas on the CLI path (a call should take well under
0.15 s). Nothing below the CLI prints or exits; here errors become a message on stderr
and ``typer.Exit(1)``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from tomato_mqtt.config.url import BrokerURL
from tomato_mqtt.wire.topics import Topics

if TYPE_CHECKING:  # the long-lived client is imported only by commands that need it
    from tomato_mqtt.config.settings import Settings
    from tomato_mqtt.transport.rpc import Requester

__all__ = [
    "AppDirOpt",
    "BrokerOpt",
    "CallContext",
    "DataDirOpt",
    "InstanceOpt",
    "JsonOpt",
    "LogDirOpt",
    "Output",
    "PortOpt",
    "TimeoutOpt",
    "YamlOpt",
    "context",
    "emit",
    "fail",
    "run_request",
    "table",
]

T = TypeVar("T")

PortOpt = Annotated[
    int | None, typer.Option("-p", "--port", help="MQTT broker port (default: settings, 1883)")
]
BrokerOpt = Annotated[
    str | None,
    typer.Option(
        "--broker",
        "-b",
        help="broker URL, e.g. mqtt://lab-pc:1883 (default: from settings.toml)",
        envvar="TOMATO_BROKER",
    ),
]
InstanceOpt = Annotated[
    str | None, typer.Option("--instance", help="instance name (topic root tomato/v2/<instance>)")
]
AppDirOpt = Annotated[Path | None, typer.Option("-A", "--appdir", help="settings directory")]
DataDirOpt = Annotated[Path | None, typer.Option("-D", "--datadir", help="data directory")]
LogDirOpt = Annotated[Path | None, typer.Option("-L", "--logdir", help="log directory")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", "-t", help="seconds to wait for an answer")]
YamlOpt = Annotated[bool, typer.Option("-y", "--yaml", help="print the Reply as YAML")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the Reply as JSON")]


@dataclass
class CallContext:
    url: BrokerURL
    instance: str
    appdir: Path | None = None
    datadir: Path | None = None
    logdir: Path | None = None
    port: int | None = None
    _settings: Settings | None = None

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
            from tomato_mqtt.config.settings import load_settings
            from tomato_mqtt.errors import ConfigError

            try:
                self._settings = load_settings(
                    appdir=self.appdir, datadir=self.datadir, logdir=self.logdir, port=self.port
                )
            except ConfigError as e:
                fail(str(e))
        return self._settings

    def where(self) -> str:
        return f"broker {self.url}, instance {self.instance}"


# [mqtt] keys the fast path understands; anything else goes through the full settings
_MQTT_KEYS = {
    "host": str,
    "port": int,
    "instance": str,
    "username": str,
    "password": str,
    "tls": bool,
    "ca_certs": str,
    "certfile": str,
    "keyfile": str,
    "tls_insecure": bool,
    "keepalive": int,
}


def _light_mqtt(appdir: Path | None) -> dict[str, Any] | None:
    """The ``[mqtt]`` table of settings.toml without pydantic, or None if unsure.

    A call that only sends one request must not pay for validating every section; when
    the file is absent the defaults apply, when anything looks unusual the full loader
    runs (and reports the problem with file and field).
    """
    import platformdirs

    app = (
        Path(appdir).expanduser()
        if appdir
        else Path(platformdirs.user_config_dir("tomato-mqtt", appauthor=False))
    )
    path = app / "settings.toml"
    if not path.is_file():
        return {}
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    mqtt = doc.get("mqtt", {})
    if not isinstance(mqtt, dict):
        return None
    for k, v in mqtt.items():
        want = _MQTT_KEYS.get(k)
        if want is None or type(v) is not want:
            return None
    return mqtt


def context(
    port: int | None = None,
    broker: str | None = None,
    instance: str | None = None,
    appdir: Path | None = None,
    datadir: Path | None = None,
    logdir: Path | None = None,
) -> CallContext:
    """Where to send requests: settings.toml (if any), overridden by the options."""
    ctx = CallContext(
        url=BrokerURL(), instance="", appdir=appdir, datadir=datadir, logdir=logdir, port=port
    )
    light = _light_mqtt(appdir)
    if light is None:
        m = ctx.settings.mqtt
        light = m.model_dump()
    if broker:
        try:
            url = BrokerURL.parse(broker)
        except ValueError as e:
            fail(str(e))
        if port is not None:
            url = BrokerURL(**{**url.__dict__, "port": port})
        url = url.with_tls_defaults(light)  # settings' CA and client cert stay in force
    else:
        fields = {k: v for k, v in light.items() if k in BrokerURL.__dataclass_fields__}
        if port is not None:
            fields["port"] = port
        url = BrokerURL(**fields)
    ctx.url = url
    ctx.instance = instance or str(light.get("instance") or "default")
    return ctx


def fail(msg: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


async def _with_requester(
    ctx: CallContext, fn: Callable[[Requester], Awaitable[T]], timeout: float
) -> T:
    from tomato_mqtt.transport.client import AsyncClient, MqttError
    from tomato_mqtt.transport.rpc import Requester

    client = AsyncClient(ctx.url, client_id=f"cli-{os.getpid()}-{os.urandom(3).hex()}")
    try:
        await client.connect(timeout=timeout)
    except MqttError as e:
        raise MqttError(f"{e} — is tomato-mqtt running? ({ctx.where()})") from None
    try:
        req = Requester(client, ctx.topics)
        return await fn(req)
    finally:
        await client.disconnect()


def run_request(
    ctx: CallContext,
    topic: str,
    args: Mapping[str, Any] | None,
    *,
    timeout: float,
    who: str = "scheduler",
) -> Any:
    """One request, synchronously, on the fast path; problems become a message + exit 1."""
    from tomato_mqtt.transport import oneshot

    try:
        return oneshot.request(ctx.url, topic, ctx.topics.reply, args, timeout=timeout, who=who)
    except oneshot.NoAnswer as e:
        fail(_denied(ctx, topic) or f"{e} ({ctx.where()})")
    except oneshot.Refused as e:
        fail(f"{e} ({ctx.where()})")
    except oneshot.OneShotError as e:
        fail(f"{e} — is tomato-mqtt running? ({ctx.where()})")


def _denied(ctx: CallContext, topic: str) -> str | None:
    """After a request went unanswered: was it the broker's ACL that dropped it?

    MQTT 3.1.1 has no negative PUBACK, so a forbidden request just vanishes. If the
    scheduler answers ``whoami`` (every role may send it) and the op is not among the
    requester's, say so plainly instead of "is it running?".
    """
    if not ctx.url.username:
        return None  # an open stack has no ACL
    from tomato_mqtt.transport import oneshot

    parsed = ctx.topics.parse(topic)
    if parsed is None or parsed.op is None or parsed.op == "whoami":
        return None
    try:
        me = oneshot.request(
            ctx.url, ctx.topics.scheduler_cmd("whoami"), ctx.topics.reply, {}, timeout=2.0
        )
    except oneshot.OneShotError:
        return None
    from tomato_mqtt.config import roles

    data = me.data if me.success and isinstance(me.data, dict) else {}
    role = str(data.get("role") or "")
    allowed: tuple[str, ...] = tuple(data.get("ops") or ())
    target = {"scheduler_cmd": "", "recorder_cmd": "the recorder's "}.get(parsed.kind)
    if parsed.kind == "recorder_cmd":
        allowed = ("fetch", "status") if role in ("admin", "operator") else ("status",)
    elif parsed.kind == "component_cmd":
        target = "the component command "
        allowed = {"admin": roles.CMP_ADMIN_OPS, "operator": roles.CMP_READ_OPS}.get(role, ())
    elif parsed.kind == "node_cmd":
        target = "the node command "
        allowed = ("rebirth", "shutdown") if role == "admin" else ()
    if target is None or parsed.op in allowed:
        return None  # allowed: the responder is just down, slow or busy
    return (
        f"not allowed: user {ctx.url.username!r} (role {data.get('role') or 'unknown'}) may not "
        f"send {target}{parsed.op!r}; the broker dropped the request (see the role table in "
        f"docs/security.md) ({ctx.where()})"
    )


def run_async(ctx: CallContext, fn: Callable[[Requester], Awaitable[T]], timeout: float) -> T:
    """Several requests or subscriptions on the asyncio client."""
    import asyncio

    from tomato_mqtt.transport.client import MqttError
    from tomato_mqtt.transport.rpc import NoResponder

    try:
        return asyncio.run(_with_requester(ctx, fn, timeout))
    except NoResponder as e:
        fail(_denied(ctx, e.topic) or f"{e} ({ctx.where()})")
    except MqttError as e:
        fail(str(e))


class Output:
    """Prints a Reply: human text by default, or the whole Reply as YAML / JSON."""

    def __init__(self, yaml_: bool = False, json_: bool = False) -> None:
        self.yaml = yaml_
        self.json = json_

    def reply(self, reply: Any, human: Callable[[Any], str] | None = None) -> None:
        doc = {"success": reply.success, "msg": reply.msg, "data": reply.data}
        if self.json:
            typer.echo(json.dumps(doc, indent=2, default=str))
        elif self.yaml:
            import yaml

            typer.echo(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).rstrip())
        elif not reply.success:
            typer.echo(f"error: {reply.msg}", err=True)
        else:
            typer.echo(human(reply.data) if human and reply.data is not None else reply.msg)
        if not reply.success:
            raise typer.Exit(1)


def emit(text: str) -> None:
    typer.echo(text)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A plain text table that fits a terminal: (key, header) columns, long cells cut."""
    width = _term_width()
    cells = [[_cell(r.get(k)) for k, _ in columns] for r in rows]
    heads = [h for _, h in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(heads)]
    while sum(widths) + 2 * (len(widths) - 1) > width and max(widths) > 12:
        i = widths.index(max(widths))
        widths[i] -= 1

    def fmt(vals: Sequence[str]) -> str:
        return "  ".join(_fit(v, w) for v, w in zip(vals, widths, strict=True)).rstrip()

    lines = [fmt(heads), fmt(["-" * w for w in widths])]
    lines += [fmt(c) for c in cells]
    return "\n".join(lines)


def _term_width() -> int:
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns
    except OSError:
        return 120


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple, set)):
        return ", ".join(map(str, v))
    if isinstance(v, dict):
        return ", ".join(f"{k}={x}" for k, x in v.items())
    return str(v)


def _fit(v: str, w: int) -> str:
    return v.ljust(w) if len(v) <= w else v[: max(0, w - 1)] + "…"
