"""``tomato``: set up, start, stop and inspect a tomato-mqtt stack; run its services.

One sub-app per file, merged into this one (no name: ``tomato start``, not
``tomato stack start``): stack.py (init, start, stop), services.py (the services in the
foreground), status.py (status, reload); pipeline.py is ``tomato pipeline``. Heavy
modules (services, amqtt, xarray) are imported inside the commands that need them, so
``tomato status`` stays fast.
"""

from __future__ import annotations

import typer

from tomato_mqtt.cli import common, dashboard, drivers, pipeline, services, stack, status, user
from tomato_mqtt.cli.version import add_version

__all__ = ["app", "main"]

app = typer.Typer(
    cls=common.CommandFirst,
    name="tomato",
    help="tomato-mqtt: laboratory instrument automation over MQTT.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
add_version(app)

# a sub-app of its own only to keep its place in --help (typer lists a group's own
# commands before the merged ones)
_schema = typer.Typer()


@_schema.command()
@common.options(("instance", "appdir", "yaml", "json"))
def schema(opts: common.Opts) -> None:
    """Print the AsyncAPI document of the wire contract (with -y/--json: in a Reply)."""
    import json
    from types import SimpleNamespace

    from tomato_mqtt.wire.asyncapi import schema_json

    if opts.appdir is not None:  # (a mistyped -A printed the defaults' document)
        from tomato_mqtt.cli.core import settings_there

        settings_there(opts.appdir, "")
    s = opts.settings()
    text = schema_json(opts.instance or s.mqtt.instance, s)
    reply = SimpleNamespace(success=True, msg="the AsyncAPI document", data=json.loads(text))
    opts.output().reply(reply, lambda _d: text)


app.add_typer(stack.app)
app.add_typer(_schema)
app.add_typer(services.app)
app.add_typer(dashboard.app)
app.add_typer(status.app)
app.add_typer(pipeline.app, name="pipeline", help="Load, eject and mark pipelines ready.")
app.add_typer(user.app, name="user", help="Users, passwords and roles of the broker.")
app.add_typer(
    drivers.app,
    name="drivers",
    help="Install upstream tomato driver packages; list native and upstream drivers.",
)
app.command("broker-config")(user.broker_config_cmd)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
