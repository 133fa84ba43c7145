"""settings.toml: the model, the loader, the default paths and `tomato init`'s files.

Precedence: command-line options (-A -D -L -p) win over the file, the file over the
defaults. Relative paths in the file are relative to the appdir. A bad file raises
:class:`~tomato_mqtt.errors.ConfigError` naming the file, the field and the reason.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from tomato_mqtt.config.initfiles import (
    DEVICES_FILE,
    SETTINGS_FILE,
    render_default_settings,
    write_default_files,
)
from tomato_mqtt.config.url import BrokerURL, is_loopback
from tomato_mqtt.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "APPNAME",
    "SETTINGS_FILE",
    "BrokerSettings",
    "DashboardSettings",
    "JobLimits",
    "MqttSettings",
    "NodeSettings",
    "RecorderSettings",
    "SchedulerSettings",
    "Settings",
    "default_dirs",
    "is_loopback",
    "lies_under",
    "load_settings",
    "render_default_settings",
    "settings_url",
    "write_default_files",
]

APPNAME = "tomato-mqtt"

_SLUG = re.compile(r"[a-z0-9][a-z0-9_.-]*")


class _Section(BaseModel):
    # a misspelt key is refused rather than silently ignored
    model_config = ConfigDict(extra="forbid")


class MqttSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    instance: str = "default"
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    tls_insecure: bool = False
    keepalive: int = Field(default=30, gt=0)

    @field_validator("instance")
    @classmethod
    def _instance_is_slug(cls, v: str) -> str:
        if not _SLUG.fullmatch(v):
            raise ValueError(
                f"{v!r} cannot be a topic segment: use lower-case letters, digits, '_', '.' "
                "and '-', starting with a letter or digit"
            )
        return v

    @field_validator("host")
    @classmethod
    def _host_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v


#: bytes of a packet besides its message (topic, header), kept free under max_packet_bytes
PACKET_OVERHEAD = 64 * 1024


class BrokerSettings(_Section):
    embedded: bool = True
    host: str = "127.0.0.1"
    ws_port: int | None = Field(default=None, ge=0, le=65535)
    #: the users file: amqtt's password file plus one role per user (`tomato user`)
    password_file: str | None = None
    #: no longer used: the ACL comes from the roles in the users file (docs/security.md)
    acl_file: str | None = None
    allow_anonymous: bool = True
    #: TLS of the embedded broker: a TLS listener on tls_port, WSS instead of WS
    certfile: str | None = None
    keyfile: str | None = None
    #: the CA of client certificates: a client that presents one signed by another is
    #: refused (without require_certificate, a client may present none)
    cafile: str | None = None
    #: mutual TLS: every client of the TLS listener (and WSS) must present a certificate
    #: cafile's CA signed; its login is still the user name and password it gives
    require_certificate: bool = False
    tls_port: int = Field(default=8883, ge=1, le=65535)
    #: bytes the broker may hold for one client that does not take its messages;
    #: beyond it, messages for that client are dropped (Mosquitto's max_queued_bytes)
    max_queued_bytes: int = Field(default=32 * 1024 * 1024, ge=64 * 1024)
    #: bytes the secured embedded broker may hold for people's logins (admin, operator,
    #: reader) together; past it, their connections that do not take their messages get
    #: no more (docs/security.md)
    max_queued_bytes_people: int = Field(default=64 * 1024 * 1024, ge=64 * 1024)
    #: messages kept for a persistent session while its client is away (Mosquitto's
    #: max_queued_messages); newer ones are dropped
    max_queued_messages: int = Field(default=1000, ge=1)
    #: the largest MQTT packet the embedded broker takes (a message with its topic): a
    #: client that sends a larger one is disconnected, as Mosquitto's max_packet_size.
    #: The services send no larger reply; with an external broker, set it to its limit
    #: (at least 512 KiB: a file's chunk of 256 KiB travels as base64, ~350 kB)
    max_packet_bytes: int = Field(default=8 * 1024 * 1024, ge=512 * 1024, le=256 * 1024 * 1024)
    #: connections one login may hold at once on the secured embedded broker (0: no
    #: limit); one more is refused "server unavailable"
    max_connections_per_login: int = Field(default=32, ge=0)

    @model_validator(mode="after")
    def _network_needs_auth(self) -> BrokerSettings:
        if self.acl_file is not None:
            raise ValueError(
                "acl_file is not used: the ACL is generated from the roles of the users in "
                "password_file (tomato user add NAME --role ...; see docs/security.md)"
            )
        if self.require_certificate and not (self.certfile and self.keyfile and self.cafile):
            raise ValueError(
                "require_certificate needs TLS (certfile and keyfile) and a cafile: the CA "
                "whose certificates clients must present"
            )
        if not self.embedded:
            return self
        if not self.allow_anonymous and not self.password_file:
            raise ValueError(
                "allow_anonymous = false needs a password_file, or every login would be "
                "accepted: set password_file and add users with `tomato user add`"
            )
        if not is_loopback(self.host) and (self.allow_anonymous or not self.password_file):
            raise ValueError(
                f"the embedded broker listens on {self.host}, not a loopback address: "
                "set allow_anonymous = false and a password_file"
            )
        if bool(self.certfile) != bool(self.keyfile):
            raise ValueError("TLS needs both certfile and keyfile")
        return self


class SchedulerSettings(_Section):
    heartbeat: float = Field(default=2.0, gt=0)
    node_grace_period: float = Field(default=30.0, ge=0)
    #: s past a task's max_duration after which a task whose end has not come (a driver
    #: call that does not return) is given up: its job ends ce, its file is written
    stuck_after: float = Field(default=300.0, gt=0)
    lost_after: float = Field(default=10.0, gt=0)
    # a node whose clock differs from the scheduler's by more than this is flagged
    clock_tolerance: float = Field(default=2.0, gt=0)

    @model_validator(mode="after")
    def _lost_after_heartbeat(self) -> SchedulerSettings:
        if self.lost_after <= self.heartbeat:
            raise ValueError(
                f"lost_after ({self.lost_after:g} s) must be longer than the heartbeat "
                f"({self.heartbeat:g} s), or every peer counts as lost"
            )
        return self


class JobLimits(_Section):
    """Bounds checked at submit: a payload beyond them is refused with one message."""

    #: points a task may take at most (max_duration / sampling_interval)
    max_points_per_task: int = Field(default=10_000_000, ge=1)
    #: tasks a payload may hold (a user's 200,000-task payload, 21 MB, was stored, shown
    #: and cancelled at that size: a cancel took 36 s)
    max_tasks: int = Field(default=10_000, ge=1)
    #: the shortest sampling interval (s) of a driver that declares none
    min_sampling_interval: float = Field(default=0.001, gt=0)
    #: jobs one login may have queued (q, qw) at once on a secured stack (0: no limit):
    #: 3,000 of one operator's, each a retained status, drove the broker's memory and
    #: everybody's queue (a hostile tour)
    max_queued_per_login: int = Field(default=1000, ge=0)
    #: retained ``job/<id>/status`` of finished jobs: at most this many (the newest) ...
    retain_finished: int = Field(default=20, ge=0)
    #: ... and none older than this (s after the job ended). The job itself stays in the
    #: scheduler: ``ketchup status``/``search`` and the client still find it.
    retain_finished_age: float = Field(default=3600.0, ge=0)


class RecorderSettings(_Section):
    #: folders (besides the datadir) the recorder may write job files into; relative
    #: paths are relative to the appdir. Empty on a secured stack: the datadir only.
    output_roots: list[Path] = Field(default_factory=list)
    #: days a job's points stay in the recorder's store after its file was written
    #: (late data is merged into the file until then), and idle measurements (no job)
    #: after they arrived; 0: for ever
    keep_days: float = Field(default=30.0, ge=0)


class NodeSettings(_Section):
    name: str = "local"
    spool_max_mb: float = Field(default=512, gt=0)
    batch_interval: float = Field(default=0.5, gt=0)
    batch_max_points: int = Field(default=2000, ge=1)
    #: the largest data message a node sends (bytes): a batch larger than this goes as
    #: several. A broker drops larger messages without a word (EMQX's max_packet_size is
    #: 1 MB by default, Mosquitto's message_size_limit whatever the site sets)
    batch_max_bytes: int = Field(default=512 * 1024, ge=1024)
    #: the venv of upstream tomato driver packages (``tomato drivers install``);
    #: default ``<datadir>/upstream-drivers``; relative paths are relative to the appdir
    upstream_env: Path | None = None

    @field_validator("name")
    @classmethod
    def _name_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v


class DashboardSettings(_Section):
    """``tomato dashboard`` (issue 11): where it listens, and whether ``tomato start`` runs it."""

    enabled: bool = False  # run it under `tomato start` too
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    #: show no controls to anyone, whatever their role
    read_only: bool = False
    #: HTTPS: the page (and the passwords typed into its sign-in form) over TLS, with
    #: this certificate and key (PEM; may be the broker's); both or neither
    certfile: str | None = None
    keyfile: str | None = None
    #: host names the page answers to besides this PC's own (its names, its addresses,
    #: localhost): e.g. an alias in the lab's DNS, or a reverse proxy's name
    hosts: list[str] = Field(default_factory=list)

    @field_validator("hosts")
    @classmethod
    def _host_names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not name or any(c in name for c in "/:@ \t") or name.startswith("."):
                raise ValueError(
                    f"{name!r} is not a host name: give the name alone, as in"
                    ' hosts = ["lab-dash.example.org"] (no scheme, port or path)'
                )
        return [name.lower().rstrip(".") for name in v]

    @model_validator(mode="after")
    def _both_tls_files(self) -> DashboardSettings:
        if bool(self.certfile) != bool(self.keyfile):
            raise ValueError("both certfile and keyfile are needed for HTTPS")
        return self


class Settings(_Section):
    appdir: Path
    datadir: Path
    logdir: Path
    devices_file: Path = Path(DEVICES_FILE)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    jobs: JobLimits = Field(default_factory=JobLimits)
    recorder: RecorderSettings = Field(default_factory=RecorderSettings)
    node: NodeSettings = Field(default_factory=NodeSettings)
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)
    drivers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: tomato 2.2's keys of the file that nothing here reads (key -> value), for :attr:`notes`
    _unused: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _relative_to_appdir(self) -> Settings:
        for name in ("datadir", "logdir", "devices_file"):
            p: Path = getattr(self, name).expanduser()
            if not p.is_absolute():
                p = self.appdir / p
            setattr(self, name, p)
        b = self.broker
        for key in ("password_file", "certfile", "keyfile", "cafile"):
            value = getattr(b, key)
            if value:
                setattr(b, key, str(self._abs(Path(value))))
        d = self.dashboard
        for key in ("certfile", "keyfile"):
            value = getattr(d, key)
            if value:
                setattr(d, key, str(self._abs(Path(value))))
        self.recorder.output_roots = [self._abs(p) for p in self.recorder.output_roots]
        if self.node.upstream_env is not None:
            self.node.upstream_env = self._abs(self.node.upstream_env)
        if self.node.batch_max_bytes + PACKET_OVERHEAD > b.max_packet_bytes:
            raise ValueError(
                f"node.batch_max_bytes ({self.node.batch_max_bytes}) must stay "
                f"{PACKET_OVERHEAD} bytes below broker.max_packet_bytes ({b.max_packet_bytes}):"
                " a larger data message would be refused by the broker"
            )
        return self

    @property
    def max_reply_bytes(self) -> int:
        """The largest reply a service sends: under the broker's packet size."""
        return self.broker.max_packet_bytes - PACKET_OVERHEAD

    def _abs(self, p: Path) -> Path:
        p = p.expanduser()
        return p if p.is_absolute() else self.appdir / p

    @property
    def users_file(self) -> Path | None:
        """The users (password) file, absolute; None on an open stack."""
        return Path(self.broker.password_file) if self.broker.password_file else None

    @property
    def output_roots(self) -> list[Path]:
        """Where the recorder may write job files (resolved): the datadir plus
        ``[recorder] output_roots``; on an open stack (no users file, loopback only, every
        client trusted) anywhere, as the recorder's OS user may."""
        if self.recorder.output_roots:
            roots = [self.datadir, *self.recorder.output_roots]
        elif self.users_file is None:
            roots = [Path(self.datadir.anchor or "/")]
        else:
            roots = [self.datadir]
        return [r.resolve() for r in roots]

    @property
    def jobs_dir(self) -> Path:
        return self.datadir / "Jobs"

    @property
    def state_db(self) -> Path:
        return self.datadir / "state.sqlite"

    @property
    def recorder_db(self) -> Path:
        return self.datadir / "recorder.sqlite"

    @property
    def spool_dir(self) -> Path:
        return self.datadir / "spool"

    @property
    def upstream_env(self) -> Path:
        """The venv of upstream tomato driver packages on this PC's node."""
        return self.node.upstream_env or self.datadir / "upstream-drivers"

    @property
    def notes(self) -> list[str]:
        """What the file holds for tomato 2.2 that tomato-mqtt does not use, and where it
        keeps those things instead (``tomato start`` says so, once)."""
        out = []
        if "jobs.storage" in self._unused:
            storage = str(self._unused["jobs.storage"])
            where = (
                "the folder it names"
                if self._abs(Path(storage)) == self.jobs_dir
                else f"not in {storage!r}"
            )
            out.append(
                f"[jobs] storage (tomato 2.2's job folders) is not used: tomato-mqtt keeps "
                f"each job's folder in the datadir's Jobs, {self.jobs_dir} ({where})"
            )
        if "jobs.dbpath" in self._unused:
            out.append(
                f"[jobs] dbpath (tomato 2.2's job database) is not used: tomato-mqtt keeps "
                f"its jobs and pipelines in {self.state_db}; the jobs in "
                f"{str(self._unused['jobs.dbpath'])!r} are not taken over"
            )
        if self._unused.get("repositories"):
            out.append(
                "[repositories] (tomato 2.2's upload of results to data repositories) is "
                "not used: tomato-mqtt uploads nothing; each job's results stay where its "
                "payload's output says"
            )
        return out

    @property
    def exposed(self) -> list[str]:
        """What of these settings lets others read passwords (``tomato start`` and
        ``tomato broker-config`` say so: found by a security audit, they said nothing)."""
        out = []
        b = self.broker
        if not is_loopback(b.host) and not (b.certfile and b.keyfile):
            out.append(
                f"[broker] host = {b.host!r} without TLS: MQTT on the network in clear, so "
                "every password and message can be read on the way; give [broker] certfile "
                "and keyfile (docs/security.md, TLS)"
            )
        path = self.appdir / SETTINGS_FILE
        if self.mqtt.password and os.name == "posix":
            with contextlib.suppress(OSError):
                mode = path.stat().st_mode & 0o777
                if mode & 0o077:
                    out.append(
                        f"{path} holds a password ([mqtt] password) and other users of "
                        f"this PC may read it (mode {mode:04o}): chmod 600 {path}"
                    )
        return out

    @property
    def ws_port(self) -> int | None:
        """The embedded broker's WebSocket port: None when switched off."""
        if self.broker.ws_port is None:
            return self.mqtt.port + 1
        return self.broker.ws_port or None


def default_dirs() -> tuple[Path, Path, Path]:
    """The platform's appdir, datadir and logdir for tomato-mqtt."""
    import platformdirs

    return (
        Path(platformdirs.user_config_dir(APPNAME, appauthor=False)),
        Path(platformdirs.user_data_dir(APPNAME, appauthor=False)),
        Path(platformdirs.user_log_dir(APPNAME, appauthor=False)),
    )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(path, None, f"not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise ConfigError(path, None, f"cannot be read: {e.strerror or e}") from None
    try:
        data: dict[str, Any] = tomllib.loads(text)
        return data
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r"\s*\(at line (\d+), column (\d+)\)", msg)
        where = None
        if m:
            where = f"line {m.group(1)}, column {m.group(2)}"
            msg = msg[: m.start()] + msg[m.end() :]
        elif "end of document" in msg:
            where = "end of file"
        raise ConfigError(path, where, f"invalid TOML: {msg[:1].lower() + msg[1:]}") from None


def load_settings(
    appdir: Path | None = None,
    datadir: Path | None = None,
    logdir: Path | None = None,
    port: int | None = None,
    host: str | None = None,
) -> Settings:
    """Settings from ``appdir/settings.toml`` (defaults if absent) and the CLI overrides."""

    # platformdirs only for a folder not given (a service of `tomato start` is given all
    # three): ~0.3 MB of RSS in `tomato start`, and in each service forked from it
    def default(i: int) -> Path:
        return default_dirs()[i]

    app = Path(appdir).expanduser().absolute() if appdir is not None else default(0)
    path = app / SETTINGS_FILE
    data: dict[str, Any] = _read_toml(path) if path.is_file() else {}
    if "appdir" in data:
        raise ConfigError(path, "appdir", "cannot be set in the file that the appdir holds")
    doc = dict(data)
    unused = _tomato22_keys(doc, path, app)
    doc["appdir"] = app
    if datadir is not None:
        doc["datadir"] = Path(datadir).expanduser().absolute()
    elif "datadir" not in doc:
        doc["datadir"] = default(1)
    if logdir is not None:
        doc["logdir"] = Path(logdir).expanduser().absolute()
    elif "logdir" not in doc:
        doc["logdir"] = default(2)
    if port is not None or host is not None:
        mqtt = doc.get("mqtt", {})
        mqtt = dict(mqtt) if isinstance(mqtt, dict) else mqtt
        if isinstance(mqtt, dict):
            if port is not None:
                mqtt["port"] = port
            if host is not None:
                mqtt["host"] = host
        doc["mqtt"] = mqtt
    try:
        settings = Settings.model_validate(doc)
    except ValidationError as e:
        raise ConfigError.from_validation_error(path, e, doc) from None
    settings._unused = unused
    return settings


def _tomato22_keys(doc: dict[str, Any], path: Path, app: Path) -> dict[str, Any]:
    """Take tomato 2.2's keys out of ``doc`` (its `tomato init` writes them): ``[devices]
    config`` becomes ``devices_file``; ``[jobs] storage``, ``[jobs] dbpath`` and
    ``[repositories]``, which nothing here reads, are returned (key -> value) for the
    notes. Anything else stays, so an unknown key is still refused (a typo is caught)."""
    unused: dict[str, Any] = {}
    jobs = doc.get("jobs")
    if isinstance(jobs, dict) and ("storage" in jobs or "dbpath" in jobs):
        jobs = dict(jobs)  # our [jobs] holds the job limits; these two are tomato's
        for key in ("storage", "dbpath"):
            if key in jobs:
                unused[f"jobs.{key}"] = jobs.pop(key)
        doc["jobs"] = jobs
    if "repositories" in doc:
        unused["repositories"] = doc.pop("repositories")
    if "devices" in doc:
        devices = doc.pop("devices")
        if not isinstance(devices, dict):
            raise ConfigError(
                path,
                "devices",
                "must be a table: tomato 2.2's [devices], with config = the "
                "devices file (or set devices_file)",
            )
        for key in devices:
            if key != "config":
                raise ConfigError(
                    path,
                    f"devices.{key}",
                    "unknown field ([devices] holds only config, the "
                    "devices file, as in tomato 2.2)",
                )
        if "config" in devices:
            config = devices["config"]
            if not isinstance(config, str):
                raise ConfigError(path, "devices.config", "must be a path (a string)")
            ours = doc.get("devices_file")
            if ours is not None and _in(app, str(ours)) != _in(app, config):
                raise ConfigError(
                    path,
                    "devices.config",
                    f"names the devices file {config!r}, but devices_file names {ours!r}: "
                    "keep one of the two (devices_file, or tomato 2.2's [devices] config)",
                )
            doc["devices_file"] = config
    return unused


def _in(app: Path, p: str) -> Path:
    """A path of the file as it is used: relative ones are relative to the appdir."""
    q = Path(p).expanduser()
    return q if q.is_absolute() else app / q


def settings_url(settings: Settings) -> BrokerURL:
    """Where the broker of ``settings`` is, with credentials and TLS."""
    m = settings.mqtt
    return BrokerURL(
        host=m.host,
        port=m.port,
        username=m.username,
        password=m.password,
        tls=m.tls,
        ca_certs=m.ca_certs,
        certfile=m.certfile,
        keyfile=m.keyfile,
        tls_insecure=m.tls_insecure,
    )


def lies_under(target: Path, roots: Sequence[Path]) -> bool:
    """``target`` (resolved already) is one of ``roots`` or lies below one: where the
    recorder may write (the scheduler says so at a submit, the recorder checks it)."""
    return any(target == r or r in target.parents for r in roots)
