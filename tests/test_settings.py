"""settings.toml: defaults, file and command-line precedence, errors, `tomato init`."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from tomato_mqtt.config.settings import (
    BrokerSettings,
    JobLimits,
    MqttSettings,
    NodeSettings,
    SchedulerSettings,
    Settings,
    default_dirs,
    load_settings,
    render_default_settings,
    write_default_files,
)
from tomato_mqtt.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_a_file(tmp_path: Path) -> None:
    app = tmp_path / "app"
    s = load_settings(appdir=app)
    _, data, log = default_dirs()
    assert s.appdir == app
    assert (s.datadir, s.logdir) == (data, log)
    assert s.devices_file == app / "devices.yml"
    assert s.mqtt == MqttSettings()
    assert (s.mqtt.host, s.mqtt.port, s.mqtt.instance) == ("127.0.0.1", 1883, "default")
    assert s.broker == BrokerSettings() and s.broker.embedded and s.broker.host == "127.0.0.1"
    assert s.scheduler == SchedulerSettings()
    assert s.node == NodeSettings() and s.node.name == "local"
    assert s.drivers == {}
    assert s.ws_port == 1884


def test_default_dirs_are_distinct_and_named_for_the_app() -> None:
    dirs = default_dirs()
    assert len(set(dirs)) == 3
    assert all("tomato-mqtt" in str(d) for d in dirs)


def test_derived_paths(tmp_path: Path) -> None:
    s = load_settings(appdir=tmp_path / "a", datadir=tmp_path / "d", logdir=tmp_path / "l")
    d = tmp_path / "d"
    assert s.jobs_dir == d / "Jobs"
    assert s.state_db == d / "state.sqlite"
    assert s.recorder_db == d / "recorder.sqlite"
    assert s.spool_dir == d / "spool"


def test_file_overrides_defaults_and_relative_paths_follow_the_appdir(tmp_path: Path) -> None:
    app = tmp_path / "app"
    write(
        app / "settings.toml",
        'datadir = "data"\nlogdir = "/var/log/tm"\ndevices_file = "lab/devices.json"\n'
        '[mqtt]\nport = 2883\ninstance = "lab1"\nusername = "sched"\n'
        "[broker]\nws_port = 0\n"
        "[scheduler]\nheartbeat = 1.0\nlost_after = 3.0\n"
        '[node]\nname = "pc-7"\nbatch_max_points = 10\n'
        "[drivers.example_counter]\nlpp_timeout = 2\n",
    )
    s = load_settings(appdir=app)
    assert s.datadir == app / "data"
    assert s.logdir == Path("/var/log/tm")
    assert s.devices_file == app / "lab" / "devices.json"
    assert (s.mqtt.port, s.mqtt.instance, s.mqtt.username) == (2883, "lab1", "sched")
    assert s.mqtt.host == "127.0.0.1"  # untouched keys keep their default
    assert s.ws_port is None  # 0 switches the WebSocket listener off
    assert (s.scheduler.heartbeat, s.scheduler.lost_after) == (1.0, 3.0)
    assert (s.node.name, s.node.batch_max_points) == ("pc-7", 10)
    assert s.drivers == {"example_counter": {"lpp_timeout": 2}}


def test_command_line_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = tmp_path / "app"
    write(
        app / "settings.toml",
        'datadir = "/from/file/data"\nlogdir = "/from/file/log"\n'
        '[mqtt]\nport = 2000\nhost = "broker.lab"\n',
    )
    monkeypatch.chdir(tmp_path)
    s = load_settings(appdir=app, datadir=Path("d2"), logdir=tmp_path / "l2", port=3000, host="h")
    assert s.datadir == tmp_path / "d2"  # relative on the command line: to the cwd
    assert s.logdir == tmp_path / "l2"
    assert (s.mqtt.port, s.mqtt.host) == (3000, "h")
    assert s.ws_port == 3001


def test_bad_toml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "settings.toml", '[mqtt]\nport = 1883\nhost = "x\n')
    with pytest.raises(ConfigError) as ei:
        load_settings(appdir=tmp_path)
    e = ei.value
    assert e.file == str(path)
    assert e.location is not None and e.location.startswith("line 3")
    assert str(e).startswith(f"{path}: line 3")
    assert "invalid TOML" in e.reason
    assert "\n" not in str(e)


@pytest.mark.parametrize(
    ("text", "location", "words"),
    [
        ('[mqtt]\nport = "abc"\n', "mqtt.port", "valid integer"),
        ("[mqtt]\nport = 70000\n", "mqtt.port", "less than or equal to 65535"),
        ('[mqtt]\ninstance = "Lab 1"\n', "mqtt.instance", "topic segment"),
        ("[mqtt]\nprot = 1883\n", "mqtt.prot", "unknown field"),
        ("[node]\nbatch_interval = 0\n", "node.batch_interval", "greater than 0"),
        ('[broker]\nhost = "0.0.0.0"\n', "broker", "allow_anonymous = false"),
        ("[scheduler]\nheartbeat = 5.0\nlost_after = 4.0\n", "scheduler", "longer than"),
        ("mqtt = 5\n", "mqtt", "dictionary"),
        ('appdir = "/x"\n', "appdir", "cannot be set"),
        # tomato 2.2's keys are taken, but a misspelt one is still refused
        ("[jobs]\nstorag = '/x'\n", "jobs.storag", "unknown field"),
        ("[devices]\nconfg = '/x.yml'\n", "devices.confg", "unknown field"),
        ("[repositorie]\n", "repositorie", "unknown field"),
        ("devices = '/x.yml'\n", "devices", "must be a table"),
        ("[devices]\nconfig = 5\n", "devices.config", "must be a path"),
    ],
)
def test_bad_field_names_path_and_reason(
    tmp_path: Path, text: str, location: str, words: str
) -> None:
    path = write(tmp_path / "settings.toml", text)
    with pytest.raises(ConfigError) as ei:
        load_settings(appdir=tmp_path)
    e = ei.value
    assert (e.file, e.location) == (str(path), location)
    assert words in e.reason
    assert str(e) == f"{path}: {location}: {e.reason}"


def tomato22_settings(root: Path) -> str:
    """settings.toml as tomato 2.2's `tomato init` writes it (for a datadir ``root``)."""
    return (
        f"datadir = '{root}'\nlogdir = '{root}'\n"
        f"[jobs]\nstorage = '{root / 'Jobs'}'\ndbpath = '{root / 'Jobs' / 'dbpath.sqlite'}'\n"
        f"[devices]\nconfig = '{root / 'devices.yml'}'\n"
        "[repositories]\n# default.endpoint = ...\n"
        "[drivers]\nexample_counter.idle_measurement_interval = 1\n"
    )


def test_a_tomato22_settings_file_is_read(tmp_path: Path) -> None:
    """tomato 2.2's file loads: [devices] config is the devices file; [jobs] storage,
    dbpath and [repositories] are not used here, and the notes say where things are."""
    root = tmp_path / "t22"
    path = write(tmp_path / "app" / "settings.toml", tomato22_settings(root))
    s = load_settings(appdir=path.parent)
    assert (s.datadir, s.logdir, s.devices_file) == (root, root, root / "devices.yml")
    assert s.drivers == {"example_counter": {"idle_measurement_interval": 1}}
    assert s.jobs == JobLimits()  # our [jobs] keys keep their defaults
    assert s.notes == [
        "[jobs] storage (tomato 2.2's job folders) is not used: tomato-mqtt keeps each "
        f"job's folder in the datadir's Jobs, {root / 'Jobs'} (the folder it names)",
        "[jobs] dbpath (tomato 2.2's job database) is not used: tomato-mqtt keeps its jobs "
        f"and pipelines in {root / 'state.sqlite'}; the jobs in "
        f"'{root / 'Jobs' / 'dbpath.sqlite'}' are not taken over",
    ]  # an empty [repositories] (as tomato init writes it) holds nothing to mention
    write(path, "[jobs]\nstorage = 'elsewhere'\nmax_tasks = 5\n[repositories]\nzenodo.x = 1\n")
    s = load_settings(appdir=path.parent)
    assert s.jobs.max_tasks == 5
    assert "(not in 'elsewhere')" in s.notes[0]
    assert s.notes[1].startswith("[repositories] (tomato 2.2's upload of results")
    assert load_settings(appdir=tmp_path / "none").notes == []


def test_devices_config_and_devices_file_must_agree(tmp_path: Path) -> None:
    path = write(
        tmp_path / "settings.toml",
        "devices_file = 'devices.yml'\n[devices]\nconfig = 'lab.yml'\n",
    )
    with pytest.raises(ConfigError) as ei:
        load_settings(appdir=tmp_path)
    assert str(ei.value) == (
        f"{path}: devices.config: names the devices file 'lab.yml', but devices_file names "
        "'devices.yml': keep one of the two (devices_file, or tomato 2.2's [devices] config)"
    )
    # the same file, said both ways (one relative to the appdir): no conflict
    write(path, f"devices_file = 'lab.yml'\n[devices]\nconfig = '{tmp_path / 'lab.yml'}'\n")
    assert load_settings(appdir=tmp_path).devices_file == tmp_path / "lab.yml"


def test_bad_port_on_the_command_line_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"mqtt\.port"):
        load_settings(appdir=tmp_path, port=0)


@pytest.mark.parametrize(
    "tls", ["", 'certfile = "s.crt"\nkeyfile = "s.key"\n', 'cafile = "ca.crt"\n']
)
def test_client_certificates_required_without_tls_and_a_ca_are_refused(
    tmp_path: Path, tls: str
) -> None:
    """require_certificate needs the TLS listener and the CA of the client certificates:
    alone, it would require nothing (no TLS) or take no certificate (no CA)."""
    write(tmp_path / "settings.toml", f"[broker]\nrequire_certificate = true\n{tls}")
    with pytest.raises(ConfigError, match="require_certificate needs TLS .* and a cafile"):
        load_settings(appdir=tmp_path)


def test_broker_on_a_network_address_with_a_password_file_is_accepted(tmp_path: Path) -> None:
    write(
        tmp_path / "settings.toml",
        '[broker]\nhost = "0.0.0.0"\nallow_anonymous = false\npassword_file = "passwd"\n',
    )
    assert load_settings(appdir=tmp_path).broker.host == "0.0.0.0"


def test_init_writes_both_files_and_never_overwrites(tmp_path: Path) -> None:
    app, data, log = tmp_path / "a", tmp_path / "d", tmp_path / "l"
    written = write_default_files(app, data, log)
    assert written == [app / "settings.toml", app / "devices.yml"]
    assert data.is_dir() and log.is_dir()
    (app / "settings.toml").write_text("# mine\n")
    (app / "devices.yml").unlink()
    again = write_default_files(app, data, log, port=1234)
    assert again == [app / "devices.yml"]  # only the missing one
    assert (app / "settings.toml").read_text() == "# mine\n"
    assert write_default_files(app, data, log) == []
    # folders the existing settings.toml does not name are not made (a tomato 2.2
    # user's tour: `init -D /x` made /x, which nothing used)
    other = tmp_path / "other"
    assert write_default_files(app, other / "d", other / "l") == []
    assert not other.exists()


def test_init_output_loads_to_the_defaults(tmp_path: Path) -> None:
    app, data, log = tmp_path / "a", tmp_path / "d", tmp_path / "l"
    write_default_files(app, data, log)
    s = load_settings(appdir=app)
    assert s == Settings(appdir=app, datadir=data, logdir=log)
    # the default devices file is valid and has tomato's default pipeline
    from tomato_mqtt.config.devices import load_devices

    layout = load_devices(s.devices_file, s.node.name)
    assert {n: p.roles for n, p in layout.pipelines.items()} == {
        "pip-counter": {"counter": "example_counter:(example-addr,1)"}
    }
    assert layout.components["example_counter:(example-addr,1)"].node == "local"


def test_init_with_port_sets_the_port(tmp_path: Path) -> None:
    app = tmp_path / "a"
    write_default_files(app, tmp_path / "d", tmp_path / "l", port=1234)
    s = load_settings(appdir=app)
    assert s.mqtt.port == 1234 and s.ws_port == 1235
    # the commented default says what applies: the MQTT port + 1
    assert "\n# ws_port = 1235\n" in (app / "settings.toml").read_text()


def test_init_escapes_windows_like_paths(tmp_path: Path) -> None:
    text = render_default_settings(Path("C:\\Users\\lab\\data"), Path('odd "dir"'))
    doc = tomllib.loads(text)
    assert doc["datadir"] == "C:\\Users\\lab\\data"
    assert doc["logdir"] == 'odd "dir"'


def test_template_comments_show_the_true_defaults(tmp_path: Path) -> None:
    """Uncommenting every `# key = value` line that documents a default changes nothing."""
    text = render_default_settings(tmp_path / "d", tmp_path / "l")
    tomllib.loads(text)  # valid as written
    sections: dict[str, type[BaseModel]] = {
        "": Settings,
        "mqtt": MqttSettings,
        "broker": BrokerSettings,
        "scheduler": SchedulerSettings,
        "node": NodeSettings,
    }
    out, section, uncommented = [], "", 0
    for line in text.splitlines():
        if m := re.fullmatch(r"\[(\w+)\]", line):
            section = m.group(1)
        m = re.fullmatch(r"# (\w+) = (.+)", line)
        model = sections.get(section)
        if (
            m
            and model is not None
            and m.group(1) in model.model_fields
            and model.model_fields[m.group(1)].default is not None
        ):
            line = line[2:]
            uncommented += 1
        out.append(line)
    assert uncommented >= 15
    write(tmp_path / "a" / "settings.toml", "\n".join(out))
    s = load_settings(appdir=tmp_path / "a")
    assert s == Settings(appdir=tmp_path / "a", datadir=tmp_path / "d", logdir=tmp_path / "l")


def test_settings_that_let_others_read_passwords_are_said(tmp_path: Path) -> None:
    """Found by a security audit: a settings.toml holding the admin's password was left
    readable by every user of the PC (tomato init writes 0644), and a broker on the
    network without TLS sent every password in clear, both without a word. tomato start
    and tomato broker-config now warn (Settings.exposed)."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "users").write_text("")
    f = app / "settings.toml"
    f.write_text('[mqtt]\nusername = "ada"\npassword = "ada-secret"\n')
    f.chmod(0o644)
    said = load_settings(appdir=app).exposed
    assert said == [
        f"{f} holds a password ([mqtt] password) and other users of this PC may read it "
        f"(mode 0644): chmod 600 {f}"
    ], said
    f.chmod(0o600)
    assert load_settings(appdir=app).exposed == []
    f.write_text('[broker]\nhost = "0.0.0.0"\npassword_file = "users"\nallow_anonymous = false\n')
    said = load_settings(appdir=app).exposed
    assert len(said) == 1 and said[0].startswith("[broker] host = '0.0.0.0' without TLS"), said
