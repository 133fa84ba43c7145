"""The users file: logins, argon2 password hashes and one role per user.

The file *is* amqtt's password file (``name:<argon2 hash>`` per line, ``#`` comments), so
amqtt's own FileAuthPlugin still reads it unchanged. What amqtt cannot store goes into a
comment line just above each user, which amqtt skips::

    # tomato-user: alice role=operator mosquitto=$7$20000$<salt>$<hash>
    alice:$argon2id$v=19$m=65536,t=3,p=4$...

- ``role``: one of :data:`tomato_mqtt.config.roles.ROLES` (``node:<name>`` for a node);
- ``mosquitto``: the same password as Mosquitto 2.0 understands it (PBKDF2-SHA512,
  ``$7$``), so ``tomato broker-config --mosquitto`` can write Mosquitto's password_file
  without asking for every password again. It is as strong as its iteration count
  (20,000), weaker than argon2: keep the users file readable by its owner only (it is
  written with mode 0600).

A user line without a ``tomato-user`` comment has no role: it may log in but the ACL
grants it nothing. Users are managed with ``tomato user add/list/remove/passwd``, never by
hand; writes go to a temporary file and are renamed into place, so a broker that re-reads
the file never sees half of it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from tomato_mqtt.config.roles import parse_role
from tomato_mqtt.errors import ConfigError

__all__ = [
    "SERVICE_CREDENTIALS",
    "RoleBook",
    "User",
    "UsersFile",
    "ensure_service_users",
    "hash_argon2",
    "hash_mosquitto",
    "load_users",
    "risky_change",
    "service_login",
    "service_login_name",
    "verify_argon2",
    "verify_mosquitto",
]

_META = re.compile(r"#\s*tomato-user:\s*(\S+)((?:\s+\w+=\S+)*)\s*$")
_PBKDF2_ITERATIONS = 20_000
_SLUG = re.compile(r"[a-z0-9][a-z0-9_.-]*")


@dataclass(frozen=True)
class User:
    name: str
    hash: str  # argon2, what amqtt verifies
    role: str | None = None
    mosquitto_hash: str | None = None


def hash_argon2(password: str) -> str:
    try:
        from pwdlib import PasswordHash
        from pwdlib.hashers.argon2 import Argon2Hasher
    except ImportError:  # pragma: no cover - the broker package brings pwdlib[argon2]
        raise ConfigError(
            None, None, "argon2 hashing needs pwdlib[argon2]: pip install tomato-mqtt-broker"
        ) from None
    return str(PasswordHash((Argon2Hasher(),)).hash(password))


def verify_argon2(password: str, hash_: str) -> bool:
    from pwdlib import PasswordHash
    from pwdlib.hashers.argon2 import Argon2Hasher

    try:
        return bool(PasswordHash((Argon2Hasher(),)).verify(password, hash_))
    except Exception:
        return False


def hash_mosquitto(password: str, *, iterations: int = _PBKDF2_ITERATIONS) -> str:
    """Mosquitto 2.0's ``$7$`` format: PBKDF2-HMAC-SHA512, 12-byte salt, base64."""
    salt = os.urandom(12)
    dk = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(dk).decode()}"


def verify_mosquitto(password: str, hash_: str) -> bool:
    try:
        _, seven, it, salt, dk = hash_.split("$")
        if seven != "7":
            return False
        got = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(it))
        return hmac.compare_digest(base64.b64encode(got).decode(), dk)
    except ValueError:
        return False


def check_name(name: str) -> str:
    """A login is a topic segment as is (the ACL pins ``reply/<user>/#`` to it)."""
    if not _SLUG.fullmatch(name) or len(name) > 64:
        raise ValueError(
            f"user name {name!r} is not allowed: use lower-case letters, digits, '_', '.' "
            "and '-' (starting with a letter or digit, at most 64 characters)"
        )
    return name


class UsersFile:
    """The users of one file; :meth:`save` writes it back atomically (mode 0600)."""

    def __init__(self, path: Path, users: dict[str, User] | None = None) -> None:
        self.path = Path(path)
        self.users: dict[str, User] = dict(users or {})

    def role_of(self, name: str | None) -> str | None:
        u = self.users.get(name or "")
        return u.role if u else None

    def add(self, name: str, password: str, role: str) -> User:
        check_name(name)
        if name in self.users:
            raise ValueError(f"user {name!r} already exists in {self.path}")
        if not password:
            raise ValueError("the password must not be empty")
        user = User(name, hash_argon2(password), parse_role(role), hash_mosquitto(password))
        self.users[name] = user
        return user

    def set_password(self, name: str, password: str) -> None:
        if not password:
            raise ValueError("the password must not be empty")
        user = self._get(name)
        self.users[name] = replace(
            user, hash=hash_argon2(password), mosquitto_hash=hash_mosquitto(password)
        )

    def set_role(self, name: str, role: str) -> None:
        self.users[name] = replace(self._get(name), role=parse_role(role))

    def remove(self, name: str) -> None:
        self._get(name)
        del self.users[name]

    def _get(self, name: str) -> User:
        try:
            return self.users[name]
        except KeyError:
            raise ValueError(f"no user {name!r} in {self.path}") from None

    def render(self) -> str:
        lines = [
            "# tomato-mqtt users: amqtt password file (name:argon2) plus one role per user.",
            "# Managed by `tomato user ...`; do not edit by hand.",
        ]
        for u in sorted(self.users.values(), key=lambda u: u.name):
            meta = f"# tomato-user: {u.name}"
            if u.role:
                meta += f" role={u.role}"
            if u.mosquitto_hash:
                meta += f" mosquitto={u.mosquitto_hash}"
            lines += [meta, f"{u.name}:{u.hash}"]
        return "\n".join(lines) + "\n"

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(self.render())
        os.replace(tmp, self.path)


def load_users(path: Path, *, missing_ok: bool = False) -> UsersFile:
    """Read a users file; a line that is neither a comment nor ``name:hash`` is an error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return UsersFile(path)
        raise ConfigError(path, None, "the users (password) file does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(path, None, f"cannot be read: {e}") from None
    meta: dict[str, dict[str, str]] = {}
    users: dict[str, User] = {}
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            m = _META.match(line)
            if m:
                fields = dict(kv.split("=", 1) for kv in m.group(2).split())
                meta[m.group(1)] = fields
            continue
        name, sep, hash_ = line.partition(":")
        if not sep or not name or not hash_:
            raise ConfigError(path, f"line {n}", "expected name:hash")
        info = meta.get(name, {})
        role = info.get("role")
        if role is not None:
            try:
                role = parse_role(role)
            except ValueError as e:
                raise ConfigError(path, f"line {n}", str(e)) from None
        users[name] = User(name, hash_, role, info.get("mosquitto"))
    return UsersFile(path, users)


# -- the services' own logins --------------------------------------------------------------
SERVICE_CREDENTIALS = "service-users.json"


def service_login_name(key: str) -> str:
    """The login of a service: ``scheduler`` -> ``tomato-scheduler``, ``node:pc1`` ->
    ``tomato-node-pc1`` (a prefix, so no lab user's name is ever taken over)."""
    return "tomato-" + key.replace(":", "-")


#: the prefix of every service's login (:func:`service_login_name`)
SERVICE_PREFIX = "tomato-"


def risky_change(users: UsersFile, name: str, what: str, role: str | None = None) -> str | None:
    """Why a change an admin asks of ``tomato user`` would cut the stack off, or None.
    ``what``: ``add``, ``passwd``, ``role`` (to ``role``) or ``remove``. An admin's tour:
    `tomato user remove tomato-scheduler` was taken while the stack ran and made it deaf
    (no command could stop it); removing the only admin locked everyone out; `role`
    offered the services' roles to hand out to people."""
    if what != "add" and name not in users.users:
        return None  # (the change says there is no such user)
    if name.startswith(SERVICE_PREFIX):
        service = name.removeprefix(SERVICE_PREFIX)
        if what == "add":
            return (
                f"logins named {SERVICE_PREFIX}… are the services' own: `tomato start` makes "
                "them; choose another name"
            )
        return (
            f"{name} is the login of the service {service}, made and kept by `tomato start` "
            "(its password is in service-users.json): changing it cuts that service off the "
            "broker at once, and the stack stops answering. To renew it, stop the stack, "
            f"`tomato user remove {name} --force`; the next start makes it again"
        )
    if what in ("add", "role") and role in ("scheduler", "recorder"):
        return (
            f"the role {role} is the {role} service's own ({SERVICE_PREFIX}{role}, made by "
            f"`tomato start`): a person with it could publish what only the {role} may "
            "(job status, data acknowledgements); give admin, operator or reader"
        )
    old = users.users.get(name)
    if old is not None and old.role == "admin" and what in ("role", "remove"):
        if role == "admin":
            return None
        admins = [u for u in users.users.values() if u.role == "admin"]
        if len(admins) == 1:
            return (
                f"{name} is the only admin: without one nobody can stop or reload the stack "
                "over MQTT; add another admin first"
            )
    return None


def service_role(key: str) -> str:
    return key  # scheduler, recorder, node:<name>: the key is the role


def ensure_service_users(users_path: Path, creds_path: Path, keys: list[str]) -> list[str]:
    """Make sure each service in ``keys`` has a login in the users file whose password is
    in ``creds_path`` (JSON, mode 0600, next to the data). Returns the logins created or
    reset. A service login whose password is not on record gets a new random one."""
    with _locked(users_path):  # scheduler, recorder and node may start at once
        return _ensure_service_users(users_path, creds_path, keys)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An advisory lock next to ``path`` (POSIX; elsewhere a no-op)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _ensure_service_users(users_path: Path, creds_path: Path, keys: list[str]) -> list[str]:
    import json
    import secrets

    try:
        creds: dict[str, dict[str, str]] = json.loads(creds_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        creds = {}
    users = load_users(users_path, missing_ok=True)
    changed = []
    for key in keys:
        name = service_login_name(key)
        have = creds.get(key)
        user = users.users.get(name)
        if (
            have is not None
            and user is not None
            and have.get("username") == name
            and user.role == parse_role(service_role(key))
            and verify_argon2(have.get("password", ""), user.hash)
        ):
            continue
        pw = secrets.token_urlsafe(24)
        if user is None:
            users.add(name, pw, service_role(key))
        else:
            users.set_password(name, pw)
            users.set_role(name, service_role(key))
        creds[key] = {"username": name, "password": pw}
        changed.append(name)
    if changed:
        users.save()
        creds_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = creds_path.with_name(f".{creds_path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(creds, f, indent=1)
        os.replace(tmp, creds_path)
    return changed


def service_login(creds_path: Path, key: str) -> tuple[str, str] | None:
    """(username, password) of a service, if ``ensure_service_users`` made one."""
    import json

    try:
        creds = json.loads(creds_path.read_text(encoding="utf-8"))
        entry = creds[key]
        return str(entry["username"]), str(entry["password"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class RoleBook:
    """The role of a login, for a service that must know who asked (re-read on change).

    Without a users file the stack is open (loopback only, no ACL): every identity is an
    admin there, as every client could do everything anyway.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._users = UsersFile(path or Path("-"))

    @property
    def open(self) -> bool:
        return self.path is None

    def role_of(self, user: str | None) -> str | None:
        if self.path is None:
            return "admin"
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if stamp != self._stamp:
            # a bad file: keep the last good version (the broker logs the problem too)
            with contextlib.suppress(ConfigError):
                self._users = load_users(self.path)
            self._stamp = stamp
        return self._users.role_of(user)
