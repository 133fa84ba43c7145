"""The CLI's one-request calls read settings, JSON and names without tomllib, json or re
(issue 15: ~15 ms of a ~25 ms call). Each light reader must give exactly what the
standard one gives, or step aside: compared here on the same inputs."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from tomato_mqtt import jsonlite
from tomato_mqtt.cli.fastsettings import config_dir, light_datadir, light_mqtt, plain_mqtt_table
from tomato_mqtt.config.initfiles import render_default_settings
from tomato_mqtt.wire import slugs

# -- settings.toml ------------------------------------------------------------------

#: files the plain reader must read (as tomllib does)
PLAIN = [
    "",
    "# nothing\n",
    '[mqtt]\nport = 2883\ninstance = "lab1"\n',
    '[mqtt]\r\nhost = "10.0.0.7"\r\nport = +1884\r\n',
    "datadir = '/data'\n[mqtt] # the broker\n  port=1\t# comment\ntls = true\n"
    "tls_insecure = false\nusername = 'me'\npassword = \"p#w\" # not a comment inside\n",
    '[ mqtt ]\nhost = "\u00e9x"\n[broker]\nport = 0\nws_port = 9001\nf = 1.5e3\ng = -0.25\n'
    "h = +inf\ni = 3E-02\nj = 1e05\n",
    "[mqtt]\nkeepalive = 1.5\n",  # read as tomllib reads it (light_mqtt then refuses the type)
    '[jobs]\nx = "[mqtt]"\n[mqtt]\nport = 0\n[recorder]\nport = 5\n',
    "[mqtt]\nport = -0\n",
]

#: files it must leave to tomllib (None): multi-line, escapes, dotted, duplicates, junk
NOT_PLAIN = [
    '[mqtt]\nhost = "a\\tb"\n',  # an escape in an [mqtt] string
    '[mqtt]\nhost = """x"""\n',
    "[jobs]\nnote = '''\n[mqtt]\nport = 1\n'''\n",  # [mqtt] inside a multi-line string
    '[node]\nx = [\n  "a",\n]\n[mqtt]\nport = 1\n',  # an array over lines
    '[node]\nx = ["]"]\n[mqtt]\nport = 1\n',
    "mqtt.port = 1\n",
    "mqtt = {port = 1}\n",
    '["mqtt"]\nport = 1\n',
    "[mqtt.tls]\nx = 1\n",
    "[[mqtt]]\nport = 1\n",
    "[mqtt]\nport = 1\n[mqtt]\nhost = 'x'\n",
    "[mqtt]\nport = 1\nport = 2\n",
    "[mqtt]\nport = 1_000\n",
    "[mqtt]\nport = 0x10\n",
    "[mqtt]\nport = 01\n",
    "[mqtt]\nport = 1 2\n",
    '[mqtt]\nhost = "unterminated\n',
    "[mqtt]\nhost = 'x' junk\n",
    "[mqtt]\n= 1\n",
    "[mqtt]\nport\n",
    "[mqtt]\nport = \n",
    "[mqtt]\nport = 1\x0b\n",
    '"quoted key" = 1\n',
    "[node]\nx = 'open\n",
    "\ufeff[mqtt]\nport = 1\n",
    # valid TOML, but not plain: tomllib reads them
    "[node]\nlist = [1, 2, [3]]\n[mqtt]\nport = 1\n",
    "[node]\nt = {a = 1}\n",
    "[node]\nwhen = 1979-05-27T07:32:00Z\n",
    '[node]\ns = "a\\"b"\n',
    # not TOML at all (found by a review: these were read as plain)
    "[node]\nmode = fast\n[mqtt]\nport = 1\n",
    "[node]\nb = 1 2\n",
    "[node]\nx = ][\n",
    "[node]\nf = True\n",
    "[node]\nd = 1979-13-45\n",
    "[node]\nv = 1.5.3\n",
    "[node]\ni = {,}\n",
    "[node]\nz = 01.5\n",
    "[node]\nz = 1.\n",
    "x = 1\n[x]\ny = 2\n",
    "[mqtt]\nhost = 'a\x7fb'\n",
    "[mqtt]\nport = 1 # \x7f\n",
    "[mqtt]\nport = 1\r",
    # a header without its "]" (a newcomer's tour: read as no [mqtt] table, so
    # `tomato stop` sent its request with the defaults, then failed on the file)
    "[mqtt\nport = 1\n",
    "[node\n[mqtt]\nport = 1\n",
]


@pytest.mark.parametrize("text", PLAIN)
def test_the_plain_settings_reader_reads_what_tomllib_reads(text: str) -> None:
    assert plain_mqtt_table(text) == tomllib.loads(text).get("mqtt", {})


@pytest.mark.parametrize("text", NOT_PLAIN)
def test_the_plain_settings_reader_leaves_anything_else_to_tomllib(text: str) -> None:
    assert plain_mqtt_table(text) is None


def test_the_settings_files_tomato_writes_are_plain(tmp_path: Path) -> None:
    """``tomato init`` / ``tomato start`` write the template: the fast path reads it."""
    text = render_default_settings(tmp_path / "data", tmp_path / "log", port=2999)
    assert plain_mqtt_table(text) == tomllib.loads(text).get("mqtt", {}) == {"port": 2999}


def test_a_settings_file_that_is_not_plain_is_read_by_tomllib(tmp_path: Path) -> None:
    (tmp_path / "settings.toml").write_text('[mqtt]\nhost = "a\\u0062c"\nport = 1_883\n')
    assert light_mqtt(tmp_path) == {"host": "abc", "port": 1883}
    (tmp_path / "settings.toml").write_text("[mqtt]\nport = [\n")  # not TOML: the loader says
    assert light_mqtt(tmp_path) is None


def test_the_plain_reader_agrees_with_tomllib_on_mutated_files() -> None:
    """Random edits of plain files: whatever the reader returns, tomllib reads too."""
    rng = random.Random(7)
    pieces = ["[mqtt]", "[broker]", "port = 1", "host = 'h'", 'x = "a#b"', "tls = true",
              "# c", "", "y = [1, 2]", "mqtt.port = 2", "z = 1.5", "k = '''", " = 3",
              "[mqtt.a]", 'u = "\\u00e9"', "port=3 # c", "v = {a = 1}"]  # fmt: skip
    checked = 0
    for _ in range(4000):
        text = "\n".join(rng.choice(pieces) for _ in range(rng.randint(1, 8))) + "\n"
        got = plain_mqtt_table(text)
        try:
            want = tomllib.loads(text).get("mqtt", {})
        except tomllib.TOMLDecodeError:
            want = "invalid"
        if got is not None:
            checked += 1
            assert got == want, text
    assert checked > 200  # it did read many


@pytest.mark.parametrize(
    "env",
    [
        {"HOME": "/home/lab"},
        {"HOME": "/home/lab/", "XDG_CONFIG_HOME": ""},
        {"HOME": "/root"},
        {"HOME": "/home/lab", "XDG_CONFIG_HOME": "/etc/xdg-lab"},  # platformdirs' own
        {"HOME": "/home/lab", "XDG_CONFIG_HOME": "relative/dir"},
    ],
)
def test_the_settings_folder_is_platformdirs_own(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import platformdirs

    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert config_dir() == platformdirs.user_config_dir("tomato-mqtt", appauthor=False)


# -- JSON ---------------------------------------------------------------------------

DOCS = [None, True, 0, -7, 10**30, 2.5, -1e-300, 1e400, "", "é\u2028\"\\\n\x00", [],
        {}, [1, [2, {"a": None}]], {"ü": {"b": [True, False]}, "n": 1.0}]  # fmt: skip


@pytest.mark.parametrize("doc", DOCS)
def test_jsonlite_writes_and_reads_what_json_does(doc: object) -> None:
    text = json.dumps(doc, separators=(",", ":"))
    assert jsonlite.dumps(doc) == text
    assert repr(jsonlite.loads(text)) == repr(json.loads(text))
    assert repr(jsonlite.loads(f" \n{text}\t".encode())) == repr(json.loads(text))


@pytest.mark.parametrize("bad", ["", " ", "{", "1 2", "[1,]", "nul", '"ab', '{"a":1} x', b"\xff"])
def test_jsonlite_refuses_what_json_refuses_with_its_message(bad: str | bytes) -> None:
    with pytest.raises(ValueError) as want:
        json.loads(bad)
    with pytest.raises(ValueError) as got:
        jsonlite.loads(bad)
    assert str(got.value) == str(want.value)


def test_jsonlite_refuses_what_json_cannot_write() -> None:
    loop: list[object] = []
    loop.append(loop)
    for doc, err in ((object(), TypeError), ({1j: 1}, TypeError), (loop, ValueError)):
        with pytest.raises(err):
            jsonlite.dumps(doc)


# -- names --------------------------------------------------------------------------


def test_slugs_without_re_are_the_slugs_with_it() -> None:
    """The topic-safe names were made with regular expressions; these are the same."""
    slug_re = re.compile(r"[a-z0-9][a-z0-9_.-]*")
    invalid_run = re.compile(r"[^a-z0-9_.-]+")
    hashed_tail = re.compile(r"--[0-9a-f]{10}$")
    rng = random.Random(3)
    alphabet = "abz09_.-:/ ()AZ\u00e9\t-f"
    for _ in range(20000):
        name = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 16)))
        if rng.random() < 0.2:
            name += "--" + "".join(rng.choice("0123456789abcdefg") for _ in range(10))
        assert slugs.is_slug(name) == bool(slug_re.fullmatch(name)), name
        assert slugs._dash_runs(name) == invalid_run.sub("-", name), name
        if slugs.is_slug(name):
            assert slugs._hashed_tail(name) == bool(hashed_tail.search(name)), name


def test_a_one_request_call_loads_no_toml_json_or_re_parser(tmp_path: Path) -> None:
    """With a plain settings.toml (as tomato writes it) in the default folder (no -A),
    a call loads none of them, nor platformdirs."""
    from tests.stack import free_port

    app = tmp_path / ".config" / "tomato-mqtt"
    app.mkdir(parents=True)
    port = free_port()
    (app / "settings.toml").write_text(f"[mqtt]\nport = {port}\n")
    code = (
        "import sys\n"
        "from tomato_mqtt.cli import fast\n"
        "argv = ['get', 'example_counter:(example-addr,1)', 'max']\n"
        "try:\n"
        "    fast.parse('passata', argv)()\n"
        "except SystemExit as e:\n"
        "    assert e.code == 1, e.code\n"
        "light = ('tomllib', 'json', 're', 'socket', 'typing', 'dataclasses', 'platformdirs')\n"
        "print(sorted(m for m in light if m in sys.modules))\n"
    )
    # without the coverage hook of a `.ci/run` (it imports json, typing... itself at start)
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "XDG_CONFIG_HOME" and not k.startswith(("COV_", "COVERAGE_"))
    } | {"HOME": str(tmp_path)}
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]", res.stdout
    # it read that file: the port there, refused
    assert f"cannot connect to the MQTT broker at mqtt://127.0.0.1:{port}" in res.stderr


@pytest.mark.parametrize(
    "text",
    [
        None,  # no settings.toml
        "",
        "[mqtt]\nport = 1884\n",
        'datadir = "data"\n[mqtt]\nport = 1884\n',
        "datadir = '/srv/tomato data'  # absolute\n",
        'datadir = "~/lab"\n',
        'datadir = "a\\u00e9b"\n',  # an escape: TOML's reader
        'datadir = """multi"""\n[broker]\nembedded = false\n',
    ],
)
def test_the_light_datadir_is_the_settings_datadir(
    text: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where a call that could not connect looks for this PC's supervisor (its pid file):
    the datadir the full settings give, for every way settings.toml may give it."""
    from tomato_mqtt.config.settings import load_settings

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    app = tmp_path / "app"
    app.mkdir()
    if text is not None:
        (app / "settings.toml").write_text(text)
    assert light_datadir(app, None) == str(load_settings(app).datadir)
    assert light_datadir(app, tmp_path / "d") == str(load_settings(app, tmp_path / "d").datadir)


# -- found by a review of the above -----------------------------------------------------


def test_jsonlite_forgets_an_object_that_failed_half_way() -> None:
    """The circular-reference markers lived as long as the module: an object whose
    encoding failed (a TypeError half-way) was 'circular' in every later call."""
    doc: dict[str, object] = {"args": [object()]}
    with pytest.raises(TypeError):
        jsonlite.dumps(doc)
    doc["args"] = ["fine now"]
    assert jsonlite.dumps(doc) == json.dumps(doc, separators=(",", ":"))


#: UTF-16 and UTF-32 (json detects them), a UTF-8 BOM, a lone surrogate (surrogatepass)
ODD_BYTES = [
    '{"a": "\u00e9"}'.encode("utf-16"),
    "[1]".encode("utf-32-le"),
    b"\xef\xbb\xbf[2]",
    b'"\xed\xa0\x80"',
]


@pytest.mark.parametrize("raw", ODD_BYTES)
def test_jsonlite_reads_bytes_as_json_does(raw: bytes) -> None:
    assert repr(jsonlite.loads(raw)) == repr(json.loads(raw))


def test_an_empty_appdir_is_the_current_folder_as_for_typer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "settings.toml").write_text("[mqtt]\nport = 1999\n")
    monkeypatch.chdir(tmp_path)
    assert light_mqtt("") == {"port": 1999}


def test_a_host_without_ipv6_connects_over_ipv4(monkeypatch: pytest.MonkeyPatch) -> None:
    """localhost resolves to ::1 first; a kernel without IPv6 refuses to make that socket
    (EAFNOSUPPORT), and the connection must go on to 127.0.0.1 as create_connection's."""
    import _socket
    import errno
    import socket

    from tomato_mqtt.transport import session

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        real_socket = _socket.socket

        def no_ipv6(family: int, kind: int, proto: int) -> _socket.socket:
            if family == _socket.AF_INET6:
                raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
            return real_socket(family, kind, proto)

        both = [
            (_socket.AF_INET6, _socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0)),
            (_socket.AF_INET, _socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
        ]
        monkeypatch.setattr(_socket, "getaddrinfo", lambda *a, **k: both)
        monkeypatch.setattr(_socket, "socket", no_ipv6)
        sock = session._tcp("localhost", port, 2.0, tls=False)
        try:
            assert sock.getpeername() == ("127.0.0.1", port)
        finally:
            sock.close()


def test_a_record_subclass_keeps_its_base_s_fields() -> None:
    from tomato_mqtt.config.url import BrokerURL

    class Sub(BrokerURL):
        pass

    a, b = Sub(host="a"), Sub(host="b")
    assert Sub.fields() == BrokerURL.fields() and a != b and hash(a) != hash(b)
    assert repr(a).startswith("Sub(host='a', port=1883")


@pytest.mark.parametrize(
    "mqtt", ["port = -1", "port = 70000", "keepalive = 0", 'instance = "Bad Name!"']
)
def test_a_value_the_loader_refuses_is_said_with_the_file(tmp_path: Path, mqtt: str) -> None:
    """Found by a user: port = -1 reached the socket ("Servname not supported"), a bad
    instance was refused without naming the file; the full loader says where."""
    (tmp_path / "settings.toml").write_text(f"[mqtt]\n{mqtt}\n")
    assert light_mqtt(tmp_path) is None  # not read on the light path: the loader's
    res = subprocess.run(
        [str(Path(sys.executable).parent / "ketchup"), "status", "-A", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1 and "settings.toml" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_an_ipv6_broker_is_written_with_brackets() -> None:
    from tomato_mqtt.config.url import BrokerURL

    url = BrokerURL.parse("mqtt://[::1]:21883")
    assert (url.host, url.port, str(url)) == ("::1", 21883, "mqtt://[::1]:21883")
