"""A secured local stack for end-to-end security tests: users file, roles, own logins."""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.stack import CONFIG, Stack, end_process, free_port, started
from tomato_mqtt.config.users import UsersFile

#: login -> (password, role) of the lab users of a secured stack
LAB_USERS: dict[str, tuple[str, str]] = {
    "ada": ("pw-ada", "admin"),
    "olga": ("pw-olga", "operator"),
    "otto": ("pw-otto", "operator"),
    "rita": ("pw-rita", "reader"),
    "pc2": ("pw-pc2", "node:pc2"),  # a node that hosts none of this stack's components
}


def make_secure_stack(
    root: Path,
    devices: str = "devices_counter.yml",
    extra: str = "",
    mqtt_extra: str = "",
    embedded: bool = True,
) -> Stack:
    """A stack whose broker needs a login; the CLI's own settings log in as ``ada``."""
    st = Stack(root=root, port=free_port(), instance="t" + os.urandom(4).hex())
    for d in (st.appdir, st.datadir, st.logdir, st.workdir):
        d.mkdir(parents=True, exist_ok=True)
    shutil.copy(CONFIG / devices, st.appdir / "devices.yml")
    users = UsersFile(st.appdir / "users")
    for name, (pw, role) in LAB_USERS.items():
        users.add(name, pw, role)
    users.save()
    (st.appdir / "settings.toml").write_text(
        f'[mqtt]\ninstance = "{st.instance}"\nusername = "ada"\npassword = "pw-ada"\n'
        f"{mqtt_extra}"
        f'[broker]\nws_port = 0\npassword_file = "users"\nallow_anonymous = false\n'
        f"embedded = {'true' if embedded else 'false'}\n"
        "[scheduler]\nnode_grace_period = 5.0\nlost_after = 4.0\n"
        f"{extra}\n"
    )
    return st


def as_user(st: Stack, user: str) -> list[str]:
    """CLI options that make a call log in as ``user`` (instead of the settings' ada)."""
    return ["--broker", f"mqtt://{user}:{LAB_USERS[user][0]}@127.0.0.1:{st.port}"]


@contextlib.contextmanager
def secure_stack(
    root: Path,
    devices: str = "devices_counter.yml",
    extra: str = "",
    mosquitto: str = "",
    mosquitto_conf: str = "",
    aedes: bool = False,
) -> Iterator[Stack]:
    """A secured stack on the embedded broker, or, given Mosquitto's binary, on a Mosquitto
    configured by ``tomato broker-config --mosquitto`` (as docs/security.md says), with
    ``mosquitto_conf`` lines of the site's own; or (``aedes``) on Aedes enforcing the
    JSON of ``tomato broker-config --rules`` (tests/aedes/rules.mjs)."""
    st = make_secure_stack(root, devices, extra, embedded=not (mosquitto or aedes))
    if aedes:
        with on_aedes(st), started(st):
            yield st
        return
    if not mosquitto:
        with started(st):
            yield st
        return
    with on_mosquitto(st, mosquitto, mosquitto_conf), started(st):
        yield st


@contextlib.contextmanager
def on_aedes(st: Stack) -> Iterator[Path]:
    """Aedes with the logins and rules ``tomato broker-config --rules`` writes from
    ``st``'s settings, running until the block ends; yields the rules file."""
    from tests.conftest import secured_aedes

    rules = st.root / "aedes" / "rules.json"
    st.run("tomato", "broker-config", "--rules", str(rules), "-D", str(st.datadir), check=True)
    proc = secured_aedes(st.port, rules, rules.parent / "aedes.log")
    try:
        wait_listening(st.port)
        yield rules
    finally:
        end_process(proc)


@contextlib.contextmanager
def on_mosquitto(
    st: Stack, mosquitto: str, mosquitto_conf: str = "", host: str = "127.0.0.1"
) -> Iterator[Path]:
    """Mosquitto, configured by ``tomato broker-config --mosquitto`` from ``st``'s
    settings (its listeners, TLS included, logins and ACL), with ``mosquitto_conf`` lines
    of the site's own, running until the block ends; yields its configuration folder.
    ``host``: where it listens (``[broker] host`` of the settings)."""
    conf = st.root / "mosquitto"
    st.run("tomato", "broker-config", "--mosquitto", str(conf), "-D", str(st.datadir), check=True)
    text = (conf / "tomato.conf").read_text()
    (conf / "run.conf").write_text(
        text
        # run as root, Mosquitto drops to user 'mosquitto', who cannot read the test's files
        + (f"user {getpass.getuser()}\n" if os.geteuid() == 0 else "")
        + f"persistence false\nlog_dest file {conf / 'mosquitto.log'}\n"
        + mosquitto_conf
    )
    proc = subprocess.Popen(
        [mosquitto, "-c", str(conf / "run.conf")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    (conf / "pid").write_text(str(proc.pid))  # for a test that has it read its files again
    try:
        wait_listening(st.port, host=host)
        yield conf
    finally:
        end_process(proc)


def wait_listening(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), 0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on port {port}") from None
            time.sleep(0.02)
