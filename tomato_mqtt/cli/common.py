"""What the three CLIs share: the common options, one MQTT request per call, exit codes.

The common options are declared once, here
-------------------------------------------
A command takes ONE parameter annotated ``common.Opts`` and is wrapped in
``@common.options(...)`` (under ``@app.command()``, which must stay the outer one)::

    @app.command()
    @common.options(common.CLIENT, timeout=10.0)
    def reload(opts: common.Opts) -> None:
        ctx = opts.context()
        topic = ctx.topics.scheduler_cmd("reload")
        opts.output().reply(common.run_request(ctx, topic, {}, timeout=opts.timeout))

The decorator replaces that parameter, in the signature typer reads, by the chosen
options (in the order given: their order in --help), and calls the command with one
``Opts`` holding their values (after parameters with defaults: ``*, opts: common.Opts``).
Options stay options: they may come before or after positional arguments
(``tomato pipeline load P S -p 1884``, ``ketchup status 3 -y``).

- Which options: ``CLIENT`` (-p -b --instance -A -t -y --json) for every command that asks
  a service; ``LOCAL`` (-A -D -L -p) for commands that read settings on this PC; or any
  names of ``OPTIONS``, e.g. ``(*common.LOCAL, "timeout")``. ``timeout=`` is the default
  of ``-t`` for that command.
- ``opts.context()``: where to send requests (settings.toml overridden by the options);
  ``opts.output()``: prints a Reply as text, YAML or JSON; ``opts.settings()``: the full,
  validated settings (pydantic; only for commands that need more than ``[mqtt]``).
- A new common option (say ``--tls``): one field on ``Opts`` (its default), one
  ``Annotated`` alias in ``OPTIONS``, and its use in ``Opts.context()``; then name it in
  ``CLIENT`` or in the commands that take it. tests/test_cli.py checks that every command
  of the three apps declares the common options alike and through this decorator (a new
  command takes ``CLIENT`` unless listed there).
- The command's own annotations are evaluated when the decorator runs, so the names in
  them must exist at module level by then (not only under ``TYPE_CHECKING``).

Light to import: the CLIs are pure MQTT clients and a call should take well under
0.15 s, so no pydantic, asyncio, paho, pint, xarray or amqtt at import time. Nothing
below the CLI prints or exits; here errors become a message on stderr and
``typer.Exit(1)``.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast

import typer
from typer.core import TyperGroup

from tomato_mqtt.cli.core import (
    _REPLY_FORMAT,
    CLIENT,
    LOCAL,
    CallContext,
    Opts,
    ask_scheduler,
    client,
    context,
    fail,
    load_settings,
    loudness,
    oneshot_failed,
    run_request,
    while_broker_restarts,
)
from tomato_mqtt.cli.denied import denied
from tomato_mqtt.cli.output import Output, emit, table
from tomato_mqtt.cli.timeout import parse_timeout

if TYPE_CHECKING:
    from tomato_mqtt.transport.rpc import Requester

__all__ = [
    "CLIENT",
    "LOCAL",
    "OPTIONS",
    "CallContext",
    "CommandFirst",
    "Opts",
    "Output",
    "ask_scheduler",
    "client",
    "context",
    "counter",
    "denied",
    "emit",
    "fail",
    "load_settings",
    "oneshot_failed",
    "options",
    "run_async",
    "run_request",
    "table",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


#: click's UsageError, of the click typer runs on (a copy of its own since typer 0.28)
_USAGE_ERROR: type[Exception] = typer.BadParameter.__mro__[1]


_LOUDNESS = re.compile(r"-v+|-q+|--verbose|--quiet")


class CommandFirst(TyperGroup):
    """A group (``tomato``, ``tomato pipeline``, ``ketchup``, …) whose commands take the
    options: given one before any command (``tomato pipeline -A app -p 1884``), click said
    "No such option: -A", as if tomato had no such option (a newcomer's tour)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        lead = 0  # -v/-q before the command, as tomato 2.2 takes them (`tomato -v status`,
        # its usage line `tomato [--verbose] [--quiet] {status,…}`): handed to the command
        while lead < len(args) and _LOUDNESS.fullmatch(args[lead]):
            lead += 1
        if lead and lead < len(args) and not args[lead].startswith("-"):
            args = [args[lead], *args[:lead], *args[lead + 1 :]]
        if args and args[0].startswith("-") and args[0] != "-":
            name = args[0].split("=", 1)[0]
            own = {o for p in self.get_params(ctx) for o in (*p.opts, *p.secondary_opts)}
            if name not in own:
                commands = ", ".join(
                    n
                    for n in self.list_commands(ctx)
                    if not getattr(self.get_command(ctx, n), "hidden", False)
                )
                raise _USAGE_ERROR(
                    f"{name} is an option of a command: name the command first, "
                    f"'{ctx.command_path} COMMAND {name} …' (commands: {commands})",
                    ctx,
                )
        return super().parse_args(ctx, args)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        """A driver API's method name for a command (``passata set_attr``) names the
        command: click's closest match for ``set_attr`` was ``attrs`` (a tour)."""
        name = args[0] if args else ""
        meant = _METHOD_NAMES.get(name.replace("-", "_"))
        if meant and self.get_command(ctx, name) is None and self.get_command(ctx, meant):
            raise _USAGE_ERROR(
                f"No such command {name!r}: '{ctx.command_path} {meant}' does that "
                f"(see '{ctx.command_path} {meant} --help')",
                ctx,
            )
        return super().resolve_command(ctx, args)


#: the driver API's method names (drivers.md), and the command each one is at the CLI
_METHOD_NAMES = {
    "set_attr": "set",
    "setattr": "set",
    "get_attr": "get",
    "getattr": "get",
    "attr": "attrs",
}


# -- the common options: each declared once, here ---------------------------------------

PortOpt = Annotated[
    int | None,
    typer.Option(
        "-p",
        "--port",
        help="MQTT broker port (default: settings, 1883)",
        min=1,  # 70000 or -5 read "connection refused — is tomato-mqtt running?" (a tour)
        max=65535,
    ),
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

TimeoutOpt = Annotated[
    float,
    typer.Option(
        "--timeout",
        "-t",
        help="seconds to wait for an answer, or with a unit: 500ms, 2s "
        "(tomato's bare milliseconds, 1000 and up, are refused as ambiguous)",
        parser=parse_timeout,
    ),
]


def counter(short: str, long: str, help: str) -> Any:
    """A flag that counts (``-v``, ``-vv``): no value shown in ``--help`` (typer shows
    ``<int>`` for a count, as if ``-v 2`` were how to write it), no default."""
    return typer.Option(short, long, count=True, help=help, metavar=" ", show_default=False)


VerboseOpt = Annotated[int, counter("-v", "--verbose", "more logging (-vv)")]
QuietOpt = Annotated[int, counter("-q", "--quiet", "less logging (-qq)")]
YamlOpt = Annotated[bool, typer.Option("-y", "--yaml", help="print the Reply as YAML")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the Reply as JSON")]

# name -> its one declaration
OPTIONS: dict[str, Any] = {
    "port": PortOpt,
    "broker": BrokerOpt,
    "instance": InstanceOpt,
    "appdir": AppDirOpt,
    "datadir": DataDirOpt,
    "logdir": LogDirOpt,
    "timeout": TimeoutOpt,
    "yaml": YamlOpt,
    "json": JsonOpt,
    "verbose": VerboseOpt,
    "quiet": QuietOpt,
}


_DEFAULTS = {n: inspect.signature(Opts).parameters[n].default for n in OPTIONS}


def options(names: Sequence[str] = CLIENT, *, timeout: float = 5.0) -> Callable[[F], F]:
    """Give a command the common options ``names``, handed to it as one ``Opts``.

    See the module's docstring. Mistakes (no ``Opts`` parameter, an unknown name, a
    parameter of the command named like an option) raise ``TypeError`` at import, so
    every test that imports the CLI finds them.
    """
    unknown = [n for n in names if n not in OPTIONS]
    if unknown:
        raise TypeError(f"unknown common option(s) {unknown}; known: {list(OPTIONS)}")
    chosen = tuple(dict.fromkeys(names))  # --help lists them in this order

    def wrap(func: F) -> F:
        sig = inspect.signature(func, eval_str=True)
        slots = [p.name for p in sig.parameters.values() if p.annotation is Opts]
        if len(slots) != 1:
            raise TypeError(f"{func.__qualname__}: needs exactly one parameter of type Opts")
        slot = slots[0]
        clash = sorted(set(chosen) & set(sig.parameters))
        if clash:
            raise TypeError(f"{func.__qualname__}: parameter(s) {clash} shadow common options")
        # the options take the place of the Opts parameter (so it sets their place in
        # --help); they and all after them are keyword-only: typer passes all by name
        params: list[inspect.Parameter] = []
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        after = False
        for p in sig.parameters.values():
            if p.name == slot:
                after = True
                params += [
                    inspect.Parameter(
                        n,
                        inspect.Parameter.KEYWORD_ONLY,
                        default=timeout if n == "timeout" else _DEFAULTS[n],
                        annotation=OPTIONS[n],
                    )
                    for n in chosen
                ]
            elif after and p.kind in positional:
                params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))
            else:
                params.append(p)
        shown = sig.replace(parameters=params)

        @functools.wraps(func)
        def command(*args: Any, **kwargs: Any) -> Any:
            given = {n: kwargs.pop(n) for n in chosen if n in kwargs}
            opts = Opts(**{"timeout": timeout, **given})
            kwargs[slot] = opts
            _REPLY_FORMAT[0] = "json" if opts.json else "yaml" if opts.yaml else None
            loudness(opts)
            return func(*args, **kwargs)

        # typer reads inspect.signature() (which stops at __signature__) for the
        # parameters and typing.get_type_hints() (__annotations__) for their types
        command.__signature__ = shown  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in shown.parameters.values()}
        if shown.return_annotation is not inspect.Signature.empty:
            command.__annotations__["return"] = shown.return_annotation
        command.__tomato_options__ = chosen  # type: ignore[attr-defined]
        return cast(F, command)

    return wrap


async def _with_requester(
    ctx: CallContext, fn: Callable[[Requester], Awaitable[T]], timeout: float
) -> T:
    from tomato_mqtt.client.aio import AsyncTomato, ClientError
    from tomato_mqtt.transport import oneshot
    from tomato_mqtt.transport.client import MqttError

    t = AsyncTomato(ctx.url, ctx.instance, timeout=timeout)
    try:
        await t.connect()
    except ClientError as e:
        if e.unreachable:  # (waited for while this PC's supervisor runs: run_async)
            raise oneshot.Unreachable(str(e)) from None
        raise MqttError(f"{e} ({ctx.where()})") from None
    try:
        return await fn(t.requester)
    finally:
        await t.close()


def run_async(ctx: CallContext, fn: Callable[[Requester], Awaitable[T]], timeout: float) -> T:
    """Several requests or subscriptions on the asyncio client."""
    import asyncio

    from tomato_mqtt.transport.client import MqttError
    from tomato_mqtt.transport.rpc import NoResponder

    try:
        return while_broker_restarts(  # type: ignore[no-any-return]
            ctx, timeout, lambda within: asyncio.run(_with_requester(ctx, fn, within))
        )
    except NoResponder as e:
        fail(denied(ctx, e.topic) or f"{e} ({ctx.where()})")
    except MqttError as e:
        fail(str(e))
