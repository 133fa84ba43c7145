"""The services' typer-free entry (cli/serve.py) and pint's definitions cache
(driver/units.py): what the supervisor starts, and what each start costs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tomato_mqtt.cli import serve

BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        (
            ["scheduler", "-A", "a", "-D", "d", "-L", "l", "-p", "1883", "-vv", "-q"],
            ("scheduler", {"appdir": "a", "datadir": "d", "logdir": "l", "port": "1883"}, 1),
        ),
        (["recorder", "--appdir=a", "--quiet", "--quiet"], ("recorder", {"appdir": "a"}, -2)),
        (
            ["node", "--name=x", "-b", "mqtt://h:1", "--spool-dir", "s", "--instance", "i"],
            ("node", {"name": "x", "broker": "mqtt://h:1", "spool_dir": "s", "instance": "i"}, 0),
        ),
        (["broker", "-p", "1"], ("broker", {"port": "1"}, 0)),
    ],
)
def test_parse_takes_what_typer_takes(argv: list[str], want: object) -> None:
    assert serve.parse(argv) == want


@pytest.mark.parametrize(
    "argv",
    [
        ["scheduler", "--help"],
        ["scheduler", "-p"],  # no value
        ["scheduler", "-p", "x"],  # not a port
        ["scheduler", "--name", "n"],  # the node's option
        ["broker", "-v"],  # the broker has no -v
        ["recorder", "stray"],
        ["status"],  # not a service
        [],
    ],
)
def test_parse_leaves_the_rest_to_typer(argv: list[str]) -> None:
    assert serve.parse(argv) is None


def test_a_bad_option_gets_typers_message() -> None:
    res = subprocess.run(
        [BIN / "tomato", "scheduler", "--bogus"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2
    assert "No such option: --bogus" in res.stderr


def test_the_entry_of_every_service_imports_no_typer() -> None:
    code = textwrap.dedent(
        """
        import sys
        from tomato_mqtt.cli import serve
        import tomato_mqtt.services.scheduler.service
        import tomato_mqtt.services.recorder.service
        import tomato_mqtt.services.node.service
        import tomato_mqtt_broker
        assert serve.parse(["node", "-p", "1"]) is not None
        print(sorted(m for m in ("typer", "click", "rich") if m in sys.modules))
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert res.stdout.strip() == "[]"


_UNITS = """
import logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stdout)
import pint
from tomato_mqtt.driver.units import load_registry
reg = load_registry()
assert load_registry() is reg  # once per process
q = pint.Quantity(1500, "ms")
print("value", q.to("s").magnitude, pint.get_application_registry().get() is reg)
"""


def _units(cache: Path) -> str:
    env = {**os.environ, "TOMATO_MQTT_CACHE": str(cache)}
    res = subprocess.run(
        [sys.executable, "-c", _UNITS], capture_output=True, text=True, env=env, timeout=60
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_pint_definitions_are_cached_whole_and_a_broken_cache_is_not_trusted(
    tmp_path: Path,
) -> None:
    import pint

    out = _units(tmp_path)
    assert "value 1.5 True" in out
    folder = tmp_path / f"pint-{pint.__version__}"
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files, "the parsed definitions were not written"
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no half-built folder left
    assert "value 1.5 True" in _units(tmp_path)  # read from the cache
    for p in files:  # a cache broken by anything: units still work
        p.write_bytes(b"\x80garbage")
    out = _units(tmp_path)
    assert "value 1.5 True" in out
    assert "definitions cache is not usable" in out
    out = _units(tmp_path)  # the broken folder was removed: built anew, no warning
    assert "value 1.5 True" in out and "not usable" not in out
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")  # the cache root cannot be made
    assert "value 1.5 True" in _units(blocked)


def test_start_where_local_files_shadow_modules(tmp_path: Path) -> None:
    """``python -m`` puts the working folder first on ``sys.path``: services started by
    ``tomato start`` from a folder with a ``json.py`` or a ``tomato_mqtt`` source tree
    must still import the real modules (they run in the logdir, with ``-P``)."""
    from tests.stack import BIN as STACK_BIN
    from tests.stack import make_stack, stop_stack

    st = make_stack(tmp_path / "stack")
    here = tmp_path / "lab-folder"
    (here / "tomato_mqtt").mkdir(parents=True)
    poison = "raise ImportError('imported from the working folder')\n"
    for name in ("json.py", "signal.py", "pint.py", "tomato_mqtt/__init__.py"):
        (here / name).write_text(poison)
    try:
        res = subprocess.run(
            [STACK_BIN / "tomato", "start", *st.dirs(), "-p", str(st.port), "-t", "30"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=here,
            env={**os.environ, **st.env},
        )
        assert res.returncode == 0, f"{res.stdout}\n{res.stderr}\n{st.logs()}"
        assert "imported from the working folder" not in st.logs()
        status = st.run("tomato", "status", "components", "-y", cwd=here)
        assert status.returncode == 0 and "registered: true" in status.stdout, status.stdout
        # what the processes of the stack do not load (issue 15's memory row): the
        # supervisor no TLS, the broker (configured by `tomato start`) no pydantic
        sup = st.supervisor_pid()
        assert sup is not None
        assert "/_ssl." not in _maps(sup)
        broker = st.child_pid("broker")
        assert "pydantic_core" not in _maps(broker)
        assert "/_ssl." in _maps(broker)  # the check can fail: the broker does load ssl
    finally:
        stop_stack(st)


def _maps(pid: int) -> str:
    """The files mapped by a process: its shared libraries and extension modules."""
    return Path(f"/proc/{pid}/maps").read_text()


def test_the_broker_configuration_travels_as_json() -> None:
    from tomato_mqtt_broker import BrokerConfig, BrokerConfigError

    c = BrokerConfig(host="0.0.0.0", port=1, ws_port=2, password_file="/x/users", listen_fd=7)
    back = BrokerConfig.from_json(c.to_json())
    assert back == BrokerConfig(host="0.0.0.0", port=1, ws_port=2, password_file="/x/users")
    assert back.listen_fd is None  # a descriptor belongs to one process
    with pytest.raises(BrokerConfigError, match="not a broker configuration"):
        BrokerConfig.from_json('{"hots": "x"}')
    with pytest.raises(BrokerConfigError, match="JSON object"):
        BrokerConfig.from_json("[1]")


def test_a_service_freezes_its_heap_only_in_its_own_process() -> None:
    """``gc.freeze`` after start and warm-ups (services/idle.py): a full collection over
    the imports held a service's loop 10-15 ms (the recorder's first file write waited
    for one). Only a process that runs one service (run_sync) freezes: a test process
    hosting services in-process keeps collecting what it drops."""
    # (counted from what an interpreter starts with: Python 3.12 starts with 375 frozen)
    code = (
        "import gc\n"
        "from tomato_mqtt.services import idle\n"
        "before = gc.get_freeze_count()\n"
        "idle.freeze_heap(); hosted = gc.get_freeze_count() - before\n"
        "idle.own_process(); idle.freeze_heap()\n"
        "print(hosted, gc.get_freeze_count() - before > 1000)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["0", "True"], out.stdout + out.stderr
