"""Secured brokers for the security tests: users with every role, on amqtt, Mosquitto and
Aedes.

The brokers get their rules from the same users file and devices file (the embedded one
through its ACL plugin, Mosquitto through ``tomato broker-config --mosquitto``'s files,
Aedes through the JSON of ``--rules``, read by ``tests/aedes/rules.mjs``), so one table
of checks runs on each.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tomato_mqtt_broker import BrokerConfig, EmbeddedBroker

from tests.conftest import _wait_listening, secured_aedes
from tests.stack import free_port
from tomato_mqtt.config.users import UsersFile
from tomato_mqtt.wire import mosquitto as mq
from tomato_mqtt.wire.broker_rules import rules_document
from tomato_mqtt.wire.topics import Topics

if TYPE_CHECKING:
    from tomato_mqtt.config.settings import Settings

#: login -> (password, role)
USERS: dict[str, tuple[str, str]] = {
    "ada": ("pw-ada", "admin"),
    "olga": ("pw-olga", "operator"),
    "otto": ("pw-otto", "operator"),
    "rita": ("pw-rita", "reader"),
    "dash": ("pw-dash", "dashboard"),
    "pc1": ("pw-pc1", "node:pc1"),
    "pc2": ("pw-pc2", "node:pc2"),
    "sched": ("pw-sched", "scheduler"),
    "rec": ("pw-rec", "recorder"),
    "nobody": ("pw-nobody", "reader"),  # its role is removed below: a login with no rights
}

DEVICES = """\
devices:
  - name: dev-a
    driver: example_counter
    address: addr-a
    channels: ["1"]
    pollrate: 1
    node: pc1
  - name: dev-b
    driver: example_counter
    address: addr-b
    channels: ["1"]
    pollrate: 1
    node: pc2
pipelines:
  - name: pip-a
    devices:
      - role: counter
        device: dev-a
        channel: "1"
"""
CMP_A = "example_counter:(addr-a,1)"  # hosted by pc1
CMP_B = "example_counter:(addr-b,1)"  # hosted by pc2


def write_users(path: Path) -> UsersFile:
    users = UsersFile(path)
    for name, (pw, role) in USERS.items():
        users.add(name, pw, role)
    # a user line without a role: may log in, may do nothing
    users.users["nobody"] = users.users["nobody"].__class__(
        "nobody", users.users["nobody"].hash, None, users.users["nobody"].mosquitto_hash
    )
    users.save()
    return users


@dataclass
class SecureBroker:
    kind: str
    port: int
    instance: str
    workdir: Path
    users: UsersFile
    tls_port: int | None = None
    _broker: EmbeddedBroker | None = None
    _proc: subprocess.Popen[bytes] | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def topics(self) -> Topics:
        return Topics(self.instance)

    def url(self, user: str | None = None, password: str | None = None) -> str:
        if user is None:
            return f"mqtt://127.0.0.1:{self.port}"
        pw = USERS[user][0] if password is None else password
        return f"mqtt://{user}:{pw}@127.0.0.1:{self.port}"

    def log(self) -> str:
        p = self.workdir / f"{self.kind}.log"
        return p.read_text() if p.exists() else ""


async def start_amqtt(
    workdir: Path,
    instance: str,
    max_per_login: int = 32,
    max_queued: int = 0,
    max_people: int = 0,
    **tls: str,
) -> SecureBroker:
    users = write_users(workdir / "users")
    (workdir / "devices.yml").write_text(DEVICES)
    b = SecureBroker("amqtt", free_port(), instance, workdir, users)
    cfg = BrokerConfig(
        port=b.port,
        password_file=str(workdir / "users"),
        allow_anonymous=False,
        instance=instance,
        devices_file=str(workdir / "devices.yml"),
        default_node="local",
        max_connections_per_login=max_per_login,
    )
    if max_queued:
        cfg.max_queued_bytes = max_queued
    if max_people:
        cfg.max_queued_bytes_people = max_people
    if tls:
        b.tls_port = free_port()
        cfg.tls_port = b.tls_port
        b.extra["ws_port"] = str(free_port())
        cfg.ws_port = int(b.extra["ws_port"])  # WSS, with the same certificate
        cfg.certfile, cfg.keyfile = tls["certfile"], tls["keyfile"]
        cfg.cafile = tls.get("cafile")
    b._broker = EmbeddedBroker(cfg)
    await b._broker.start()
    return b


async def start_mosquitto(binary: str, workdir: Path, instance: str) -> SecureBroker:
    users = write_users(workdir / "users")
    b = SecureBroker("mosquitto", free_port(), instance, workdir, users)
    pw, acl = workdir / "password_file", workdir / "acl_file"
    pw.write_text(mq.password_file(users))
    acl.write_text(mq.acl_file(users, Topics(instance), {"pc1": [CMP_A], "pc2": [CMP_B]}))
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        mq.config_snippet(host="127.0.0.1", port=b.port, password_path=str(pw), acl_path=str(acl))
        # run as root, Mosquitto drops to user 'mosquitto', who cannot read the test's files
        + (f"user {getpass.getuser()}\n" if os.geteuid() == 0 else "")
        + f"persistence false\nlog_dest file {workdir / 'mosquitto.log'}\n"
        "log_type error\nlog_type warning\nlog_type notice\n"
    )
    b._proc = subprocess.Popen(
        [binary, "-c", str(conf)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await _wait_listening(b.port, 10.0, "mosquitto")
    except TimeoutError:
        await stop(b)
        raise TimeoutError(f"mosquitto did not start:\n{b.log()}") from None
    return b


async def start_aedes(workdir: Path, instance: str) -> SecureBroker:
    """Aedes with the logins and rules of ``tomato broker-config --rules`` (its JSON)."""
    users = write_users(workdir / "users")
    b = SecureBroker("aedes", free_port(), instance, workdir, users)
    rules = workdir / "rules.json"
    doc = rules_document(users, Topics(instance), {"pc1": [CMP_A], "pc2": [CMP_B]})
    rules.write_text(json.dumps(doc))
    b._proc = secured_aedes(b.port, rules, workdir / "aedes.log")
    try:
        await _wait_listening(b.port, 10.0, "aedes")
    except TimeoutError:
        await stop(b)
        raise TimeoutError(f"aedes did not start:\n{b.log()}") from None
    return b


async def stop(b: SecureBroker) -> None:
    if b._broker is not None:
        broker, b._broker = b._broker, None
        await broker.stop()
    proc, b._proc = b._proc, None
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            await asyncio.wait_for(asyncio.to_thread(proc.wait), 10.0)
        except asyncio.TimeoutError:
            proc.kill()
            await asyncio.to_thread(proc.wait)


@contextlib.asynccontextmanager
async def secured(
    kind: str, workdir: Path, instance: str, binary: str = ""
) -> AsyncIterator[SecureBroker]:
    if kind == "amqtt":
        b = await start_amqtt(workdir, instance)
    elif kind == "aedes":
        b = await start_aedes(workdir, instance)
    else:
        b = await start_mosquitto(binary, workdir, instance)
    try:
        yield b
    finally:
        await stop(b)


def scheduler_settings(b: SecureBroker, root: Path, extra: str = "") -> Settings:
    """The settings of a scheduler with its own login on the secured broker ``b`` (the
    devices file :data:`DEVICES`; app, data and log folders under ``root``)."""
    from tomato_mqtt.config.settings import load_settings

    app = root / "app"
    app.mkdir(parents=True)
    (app / "devices.yml").write_text(DEVICES)
    (app / "settings.toml").write_text(
        f'[mqtt]\ninstance = "{b.instance}"\nport = {b.port}\n'
        'username = "sched"\npassword = "pw-sched"\n'
        f'[broker]\nembedded = false\npassword_file = "{b.workdir / "users"}"\n{extra}'
    )
    return load_settings(appdir=app, datadir=root / "data", logdir=root / "log")
