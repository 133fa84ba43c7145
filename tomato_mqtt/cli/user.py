"""``tomato user``: the users of a secured broker, their passwords and roles.

The users file is ``[broker] password_file`` of settings.toml (or ``--file``); its format
is in :mod:`tomato_mqtt.config.users`. The embedded broker re-reads it on change, so a
new user can log in at once; a Mosquitto set-up needs ``tomato broker-config
--mosquitto`` again (and a reload of Mosquitto).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tomato_mqtt.cli import common
from tomato_mqtt.cli.common import fail
from tomato_mqtt.cli.core import as_path

# the services' logins and the broker's configuration: shared with the typer-free entry
from tomato_mqtt.cli.serve import broker_config, ensure_services, service_url

__all__ = [
    "app",
    "broker_config",
    "broker_config_cmd",
    "ensure_services",
    "service_url",
]

app = typer.Typer(
    cls=common.CommandFirst,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

FileOpt = Annotated[
    Path | None,
    typer.Option("--file", "-f", help="users file (default: [broker] password_file)"),
]
RoleOpt = Annotated[
    str,
    typer.Option(
        "--role",
        "-r",
        help="admin, operator, reader (= dashboard), scheduler, recorder or node:<name>",
    ),
]
PasswordOpt = Annotated[
    str | None, typer.Option("--password", help="the password (visible in the shell history)")
]
StdinOpt = Annotated[
    bool, typer.Option("--password-stdin", help="read the password from standard input")
]


def users_path(file: Path | None, appdir: Path | None) -> Path:
    if file is not None:
        return file.expanduser().absolute()
    from tomato_mqtt.cli.core import settings_there
    from tomato_mqtt.config.settings import load_settings
    from tomato_mqtt.errors import ConfigError

    if appdir is not None:  # (a mistyped -A said to set password_file in a file not there)
        settings_there(appdir, "give the users file with --file to go without")

    try:
        s = load_settings(appdir=appdir)
    except ConfigError as e:
        fail(str(e))
    path = s.users_file
    if path is None:
        fail(
            f"no users file: set [broker] password_file in {s.appdir / 'settings.toml'} "
            "or pass --file"
        )
    return path


def _password(password: str | None, stdin: bool) -> str:
    if password is not None:
        return password
    if stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        # (a script or a pipe: Python's "GetPassWarning: … may be echoed", then a bare
        # "Aborted.": an admin's tour)
        fail(
            "no terminal to ask the password on: give it with --password-stdin (one line "
            "on standard input), or --password PASSWORD"
        )
    return str(typer.prompt("password", hide_input=True, confirmation_prompt=True))


#: a shorter password is warned of: guesses at the broker's port are slowed per address
#: only (docs/security.md), and Mosquitto does not slow them at all
PASSWORD_WARN_BELOW = 10


def _warn_if_short(pw: str) -> None:
    if 0 < len(pw) < PASSWORD_WARN_BELOW:
        print(
            f"warning: a password of {len(pw)} character(s) is quickly guessed: give one "
            f"of {PASSWORD_WARN_BELOW} or more (`tomato user passwd`)",
            file=sys.stderr,
        )


ForceOpt = Annotated[
    bool,
    typer.Option(
        "--force",
        help="change a service's login, the only admin, or give a service's role all the same",
    ),
]


def _edit(
    path: Path,
    change: str,
    fn: object,
    opts: common.Opts,
    name: str,
    what: str,
    role: str | None = None,
    force: bool = False,
) -> None:
    from tomato_mqtt.config.roles import parse_role
    from tomato_mqtt.config.users import load_users, risky_change
    from tomato_mqtt.errors import ConfigError

    try:
        users = load_users(path, missing_ok=True)
        before = users.users.get(name)
        risk = risky_change(users, name, what, role and parse_role(role))
        if risk is not None and not force:
            fail(f"not changed: {risk} (or pass --force)")
        fn(users)  # type: ignore[operator]
        users.save()
    except (ValueError, ConfigError) as e:
        fail(str(e))
    u = users.users.get(name)
    data = {"user": name, "role": u.role if u else None, "file": str(path)}
    notes = _notes(opts, name, before.role if before else None, u.role if u else None, what)
    _reply(opts, f"{change} ({path}){notes}{_external_hint(opts)}", data)


def _notes(
    opts: common.Opts, name: str, was: str | None, now: str | None, what: str = "role"
) -> str:
    """What else a change of ``name``'s role (``was`` -> ``now``; None: none) or password
    touches: this PC's own CLI login, a node that logs in so."""
    from tomato_mqtt.config.roles import node_of_role

    out = ""
    node = node_of_role(was)
    # a node's tasks end ce only once it is away past the grace period (a node whose
    # old password was set back in time ended its job c: an admin's tour)
    away = (
        "tasks it runs end ce once it is away past [scheduler] node_grace_period (30 s by default)"
    )
    if node is not None and what == "passwd":
        # (an admin's tour: a node's password rotated during a job, no word of what it
        # does; the node retried the old one for good, and its job ended ce)
        out += (
            f"; {name} is the login of the node {node}: the broker closes its connections "
            "(the embedded one within a second, an external one once it reads its files "
            f"again), and it cannot come back with the old password; {away}. "
            f"Give node {node} the new password (its --broker URL, or [mqtt] password on "
            "its PC) and restart it, best while it runs no task"
        )
    elif node is not None and what == "remove":
        # (it said "the broker drops what it publishes", which is a role change's: the
        # broker refuses a removed login outright: an admin's tour)
        out += (
            f"; {name} was the login of the node {node}: the broker refuses it from now "
            f"on (the node keeps trying); {away}. Give node {node} another login of role "
            f"node:{node}, or add {name} again"
        )
    elif node is not None and now != was:
        out += (
            f"; {name} was the login of the node {node}: while it logs in so, the broker "
            f"drops what it publishes without a word; {away} (restart it with a login of "
            f"role node:{node})"
        )
    given = node_of_role(now)
    if given is not None and given != node:
        if name not in (given, f"tomato-node-{given}"):
            # (a person's login given a node's role was said nothing: an admin's tour)
            out += (
                f"; {name} may now publish as the node {given} (its status, its "
                f"components' data): give a node's role to that node's own login only"
            )
        elif what == "role":
            out += f"; what the node {given} publishes as {name} is let through again"
    if was in ("admin", "operator") and (what == "remove" or now not in ("admin", "operator")):
        # (a hostile tour: a removed operator's queued job ran when its pipeline was
        # made ready, with nothing said at the removal; an admin's: a demoted one's too,
        # which they may no longer cancel)
        out += (
            f"; jobs {name} submitted stay queued and run, and samples they loaded stay "
            "loaded: cancel or eject them if they should not (ketchup status, ketchup "
            "cancel, tomato pipeline eject)"
        )
    if was == "admin" and now != "admin" and name == _settings_login(opts):
        out += (
            f"; this PC's commands log in as {name} ([mqtt] username of settings.toml): "
            "set another login there"
        )
    return out


def _settings_login(opts: common.Opts) -> str | None:
    from tomato_mqtt.config.settings import load_settings
    from tomato_mqtt.errors import ConfigError

    try:
        return load_settings(appdir=as_path(opts.appdir)).mqtt.username
    except (ConfigError, OSError, ValueError):
        return None


def _external_hint(opts: common.Opts) -> str:
    """What an external broker needs before the change counts (the embedded one reads
    the file within a second; Mosquitto refused the new user, without a hint here: an
    admin's tour)."""
    from tomato_mqtt.config.settings import load_settings
    from tomato_mqtt.errors import ConfigError

    try:
        s = load_settings(appdir=as_path(opts.appdir))
    except (ConfigError, OSError, ValueError):
        return ""
    if s.broker.embedded:
        return ""
    return (
        "; the broker is external ([broker] embedded = false): run `tomato broker-config "
        "--mosquitto DIR` again and reload it (kill -HUP) for the change to count"
    )


def _reply(opts: common.Opts, msg: str, data: Any, human: Any = None) -> None:
    """Text by default; a Reply with ``-y``/``--json`` (as every command, like tomato)."""
    from types import SimpleNamespace

    reply = SimpleNamespace(success=True, msg=msg, data=data)
    opts.output().reply(reply, human or (lambda _d: msg))


@app.command("add")
@common.options(("appdir", "yaml", "json"))
def add(
    name: Annotated[str, typer.Argument(help="login (lower-case letters, digits, _ . -)")],
    role: RoleOpt,
    password: PasswordOpt = None,
    password_stdin: StdinOpt = False,
    file: FileOpt = None,
    force: ForceOpt = False,
    *,
    opts: common.Opts,
) -> None:
    """Add a user with a role (argon2 hash; asks for the password unless given)."""
    path = users_path(file, as_path(opts.appdir))
    pw = _password(password, password_stdin)
    _warn_if_short(pw)
    change = f"added {name} ({_role_said(role)})"
    _edit(path, change, lambda u: u.add(name, pw, role), opts, name, "add", role, force)


def _role_said(role: str) -> str:
    """A role as `tomato user list` shows it: ``reader, which dashboard is a name of`` for
    the alias (`add --role dashboard` said "dashboard", `list` then "reader")."""
    from tomato_mqtt.config.roles import parse_role

    try:
        canonical = parse_role(role)
    except ValueError:
        return role  # (refused with its own message)
    return canonical if canonical == role.strip() else f"{canonical}, which {role} is a name of"


@app.command("passwd")
@common.options(("appdir", "yaml", "json"))
def passwd(
    name: str,
    password: PasswordOpt = None,
    password_stdin: StdinOpt = False,
    file: FileOpt = None,
    force: ForceOpt = False,
    *,
    opts: common.Opts,
) -> None:
    """Set a user's password."""
    path = users_path(file, as_path(opts.appdir))
    pw = _password(password, password_stdin)
    _warn_if_short(pw)
    change = f"changed the password of {name}"
    _edit(path, change, lambda u: u.set_password(name, pw), opts, name, "passwd", force=force)


@app.command("role")
@common.options(("appdir", "yaml", "json"))
def role(
    name: str, new_role: str, file: FileOpt = None, force: ForceOpt = False, *, opts: common.Opts
) -> None:
    """Change a user's role."""
    path = users_path(file, as_path(opts.appdir))
    change = f"{name} is now {_role_said(new_role)}"
    set_role = lambda u: u.set_role(name, new_role)  # noqa: E731
    _edit(path, change, set_role, opts, name, "role", new_role, force)


@app.command("remove")
@common.options(("appdir", "yaml", "json"))
def remove(name: str, file: FileOpt = None, force: ForceOpt = False, *, opts: common.Opts) -> None:
    """Remove a user."""
    path = users_path(file, as_path(opts.appdir))
    _edit(path, f"removed {name}", lambda u: u.remove(name), opts, name, "remove", force=force)


@app.command("list")
@common.options(("appdir", "yaml", "json"))
def list_(file: FileOpt = None, *, opts: common.Opts) -> None:
    """List the users and their roles."""
    from tomato_mqtt.config.users import load_users
    from tomato_mqtt.errors import ConfigError

    path = users_path(file, as_path(opts.appdir))
    try:
        users = load_users(path, missing_ok=True)
    except ConfigError as e:
        fail(str(e))
    rows: list[dict[str, Any]] = [
        {"user": u.name, "role": u.role or "(none)", "service": _is_service(u.name)}
        for u in sorted(users.users.values(), key=lambda u: u.name)
    ]
    shown = [
        {
            **r,
            "role": f"{r['role']} (a service's, kept by tomato start)"
            if r["service"]
            else r["role"],
        }
        for r in rows
    ]
    text = common.table(shown, [("user", "user"), ("role", "role")])
    _reply(opts, f"{len(rows)} user(s) in {path}", rows, lambda _d: text)


@common.options(("appdir", "datadir", "port", "yaml", "json"))
def broker_config_cmd(
    mosquitto: Annotated[
        Path | None,
        typer.Option("--mosquitto", help="folder for password_file, acl_file, tomato.conf"),
    ] = None,
    rules: Annotated[
        Path | None,
        typer.Option(
            "--rules",
            help="file for every login's password hash and topic rules as JSON, for "
            "another broker's authentication and authorisation (docs/security.md)",
        ),
    ] = None,
    *,
    opts: common.Opts,
) -> None:
    """Write an external broker's logins and rules from the users and devices files:
    Mosquitto's password_file, acl_file and a config snippet (--mosquitto), or one JSON
    document for any other broker (--rules)."""
    if mosquitto is None and rules is None:
        fail("say where to write: --mosquitto DIR (Mosquitto) and/or --rules FILE (JSON)")
    from tomato_mqtt.config.devices import load_devices
    from tomato_mqtt.config.settings import load_settings
    from tomato_mqtt.config.users import load_users
    from tomato_mqtt.errors import ConfigError
    from tomato_mqtt.wire import mosquitto as mq
    from tomato_mqtt.wire.topics import Topics

    try:
        s = load_settings(
            appdir=as_path(opts.appdir), datadir=as_path(opts.datadir), port=opts.port
        )
        if s.users_file is None:
            fail("set [broker] password_file (the users file) first: see docs/security.md")
        ensure_services(s)  # the services' logins go into Mosquitto's files too
        users = load_users(s.users_file)
        layout = load_devices(s.devices_file, s.node.name)
    except ConfigError as e:
        fail(str(e))
    nodes: dict[str, list[str]] = {}
    for c in layout.components.values():
        nodes.setdefault(c.node, []).append(c.name)
    topics = Topics(s.mqtt.instance)
    files: dict[Path, str] = {}
    if mosquitto is not None:
        out = mosquitto.expanduser().absolute()
        out.mkdir(parents=True, exist_ok=True)
        pw, acl = out / "password_file", out / "acl_file"
        b = s.broker
        tls = None
        if b.certfile and b.keyfile:
            tls = mq.MosquittoTls(
                b.tls_port, b.cafile or "", b.certfile, b.keyfile, b.require_certificate
            )
        files[pw] = mq.password_file(users)
        files[acl] = mq.acl_file(users, topics, nodes)
        files[out / "tomato.conf"] = mq.config_snippet(
            host=b.host,
            port=s.mqtt.port,
            password_path=str(pw),
            acl_path=str(acl),
            tls=tls,
            max_packet_bytes=b.max_packet_bytes,
        )
    if rules is not None:
        from tomato_mqtt.wire.broker_rules import rules_document

        path = rules.expanduser().absolute()
        if path.is_dir():
            fail(f"--rules {rules}: that is a folder; give the file to write")
        path.parent.mkdir(parents=True, exist_ok=True)
        files[path] = json.dumps(rules_document(users, topics, nodes), indent=1) + "\n"
    for line in s.exposed:  # passwords others could read (a plain listener on the network)
        print(f"warning: {line}", file=sys.stderr)
    for path, text in files.items():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
    _reply(opts, f"wrote {', '.join(str(p) for p in files)}", {"files": [str(p) for p in files]})


def _is_service(name: str) -> bool:
    from tomato_mqtt.config.users import SERVICE_PREFIX

    return name.startswith(SERVICE_PREFIX)
