"""The CLIs' fast path (cli/fast.py): the same output as the typer commands, without typer.

A real in-process stack (broker, scheduler, recorder, node) answers; each command line
runs twice as a process — once through the console script (the fast path) and once
through the typer app itself (``python -m tomato_mqtt.cli.<prog>``) — and stdout,
stderr and the exit code must be the same. Command lines the fast path does not own
(help, unknown options, bad values) must reach typer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningBroker
from tests.inproc import inproc_stack
from tests.stack import free_port
from tests.test_settings import tomato22_settings
from tomato_mqtt.cli.fast import parse, read_line

BIN = Path(sys.executable).parent
COMP = "example_counter:(example-addr,1)"


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "--help"],
        ["status", "-h"],
        ["status", "-p1883"],  # attached values: typer's spelling
        ["status", "--port", "x"],
        ["status", "--timeout", "2000"],  # tomato's milliseconds: typer explains
        ["status", "--timeout", "500"],
        ["start", "-t", "120"],  # a bare wait above a minute: say its unit
        ["status", "-p"],
        ["status", "queue"],  # not a section
        ["status", "pipelines", "extra"],
        ["status", "-D", "/x"],  # status reads no data folder: typer refuses the option
        ["start", "-b", "mqtt://h:1"],  # start takes no broker URL
        ["start", "--instance", "i"],
        ["start", "-vvv"],  # a cluster the fast path does not count: typer counts it
        ["start", "extra"],
        ["stop"],
        ["pipeline", "load", "p"],  # the sample is missing: typer says so
        ["pipeline", "--help"],
        [],
    ],
)
def test_what_typer_owns_goes_to_typer(argv: list[str]) -> None:
    assert parse("tomato", argv) is None


@pytest.mark.parametrize(
    ("prog", "argv"),
    [
        ("tomato", ["status"]),
        ("tomato", ["status", "Pipelines", "-p", "1", "-y"]),
        ("tomato", ["status", "--port=1", "--json", "-t", "500ms", "-A", "/x", "--instance", "i"]),
        ("passata", ["status", COMP, "-b", "mqtt://h:1"]),
        ("passata", ["get", COMP, "max", "min"]),
        ("passata", ["set", COMP, "max", "5", "--force"]),
        ("passata", ["reset", "-f", COMP]),
        ("passata", ["capabilities", COMP]),
        ("ketchup", ["submit", "p.yml", "--jobname=x"]),
        ("ketchup", ["cancel", "1", "2", "-y"]),
        ("tomato", ["pipeline", "load", "p", "s", "--json"]),
        ("tomato", ["reload", "-t", "3"]),
        ("ketchup", ["status"]),
        ("ketchup", ["status", "1", "2", "-y"]),
        ("ketchup", ["status", "-a", "--limit", "10"]),
        ("ketchup", ["search", "x", "--complete"]),
        ("passata", ["constants", COMP, "a", "b"]),
        ("tomato", ["start"]),
        ("tomato", ["start", "-A", "/a", "-D", "/d", "--logdir=/l", "-p", "1", "-t", "9"]),
        ("tomato", ["start", "-vv", "-q", "--json"]),
        ("tomato", ["start", "--verbose", "-v", "--quiet"]),
    ],
)
def test_the_fast_commands_are_taken(prog: str, argv: list[str]) -> None:
    assert parse(prog, argv) is not None
    assert parse("passata", ["get", COMP]) is None  # get needs an attribute
    assert parse("ketchup", ["cancel", "one"]) is None  # not a job id: typer says so
    assert parse("ketchup", ["submit", "p.yml", "-j"]) is None
    assert parse("ketchup", ["status", "--limit", "0"]) is None  # out of range: typer says
    assert parse("ketchup", ["status", "1", "--follow"]) is None  # watched on the client


#: (program, command) of the lines that send a request that could change something
CHANGES = {
    ("passata", "set"),
    ("ketchup", "submit"),
    ("ketchup", "cancel"),
    ("tomato", "pipeline"),
    ("tomato", "reload"),
}


def _run(cmd: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    return res.returncode, res.stdout, res.stderr


def _reply_of(out: str, argv: list[str]) -> dict[str, Any]:
    import yaml

    doc = json.loads(out) if "--json" in argv else yaml.safe_load(out)
    assert isinstance(doc, dict) and set(doc) == {"success", "msg", "data"}, out
    return doc


# ~45-60 s alone; two runs on a loaded machine (load ~10) took longer than the
# default 120 s in their many bounded waits, each of which still bounds its step
@pytest.mark.timeout(240)
async def test_fast_and_typer_print_the_same(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    # Up to 6 CLI processes at once beside this one, which runs the broker and every
    # service on one event loop: on a loaded 2-core machine that loop once went 2 s
    # without a heartbeat, the in-process stacks' lost_after, and the node was shown
    # lost between a line's two calls. What is compared here is not loss detection.
    relaxed = "[scheduler]\nheartbeat = 0.5\nnode_grace_period = 3.0\nlost_after = 30.0\n"
    async with inproc_stack(broker.port, tmp_path, instance, settings=relaxed) as st:
        app = st.settings.appdir
        env = {**os.environ, "COLUMNS": "200"}
        env.pop("TOMATO_BROKER", None)
        common = ["-p", str(broker.port), "-A", str(app)]
        good = tmp_path / "queued.yml"  # no pipeline holds sample q1: it stays queued
        good.write_text(
            "version: '2.2'\nsample: {identifier: q1}\nuser: {identifier: me}\nmethod:\n"
            "  - {component_role: counter, technique_name: count, max_duration: 1.0,"
            " sampling_interval: 0.1}\n"
        )
        code, out, err = await asyncio.to_thread(
            _run, [str(BIN / "ketchup"), "submit", str(good), "-j", "queued", *common], env
        )
        assert code == 0, err
        bad = tmp_path / "bad.yml"
        bad.write_text("version: '2.2'\nsample: {identifier: s}\nmethod: []\n")
        lines = [
            ("tomato", ["status", "pipelines", *common]),
            ("tomato", ["status", "devices", *common, "--json"]),
            ("tomato", ["status", "components", *common, "-y"]),
            ("tomato", ["status", "drivers", *common]),
            ("passata", ["get", "dev-counter/1", "max", *common]),
            ("passata", ["get", COMP, "max", *common, "--json"]),
            ("passata", ["get", "dev-counter/9", "max", *common]),  # unknown: exit 1
            ("passata", ["get", COMP, "nosuch", *common, "-y"]),  # refused by the node
            ("passata", ["set", COMP, "max", "7", *common]),
            ("passata", ["capabilities", "dev-counter/1", *common]),
            ("passata", ["constants", COMP, *common, "-y"]),
            ("passata", ["constants", COMP, "nosuch", *common]),
            ("passata", ["status", COMP, *common]),  # (its JSON carries the time)
            ("passata", ["get", COMP, "max", *common]),
            ("tomato", ["status", *common, "--instance", "nobody", "-t", "1.5"]),  # no answer (a
            # loaded run: 0.3 s was sometimes too short for the CONNACK on one side)
            ("ketchup", ["submit", str(tmp_path / "none.yml"), *common]),  # no such file
            ("ketchup", ["submit", str(bad), "-j", "x", *common, "--json"]),  # refused
            ("ketchup", ["cancel", "99", "98", *common]),  # unknown jobs
            ("ketchup", ["status", *common]),  # the grouped summary
            ("ketchup", ["status", "--all", *common]),
            ("ketchup", ["status", "1", *common]),
            ("ketchup", ["status", "1", "99", *common, "--json"]),
            ("ketchup", ["status", "999", *common, "-y"]),  # unknown: the Reply and error:
            ("ketchup", ["status", *common, "-y", "--limit", "1", "--offset=0"]),
            ("ketchup", ["status", *common, "--summary", "--json"]),
            ("ketchup", ["status", "1", "--all", *common]),  # refused: ids and --all
            ("ketchup", ["search", "queu", *common]),
            ("ketchup", ["search", "nosuch", *common, "-c"]),
            ("tomato", ["pipeline", "load", "nosuch", "s1", *common]),
            ("tomato", ["pipeline", "ready", "nosuch", *common, "-y"]),
            ("tomato", ["pipeline", "eject", "pip-counter", *common]),  # empty: as it was
            ("tomato", ["reload", *common]),  # nothing changed
            ("passata", ["capabilities", COMP, "-p", str(free_port()), "-A", str(app)]),
        ]
        # Lines that only read run side by side (each with its pair: the same state seen
        # by both), a few at a time; a line that sends a request that could change
        # something (set, submit, cancel, pipeline, reload) runs alone, its two processes
        # one after the other, as before: the reads around it see the state in order.
        limit = asyncio.Semaphore(3)

        async def same(prog: str, argv: list[str], together: bool) -> None:
            fast_cmd = [str(BIN / prog), *argv]
            slow_cmd = [sys.executable, "-m", f"tomato_mqtt.cli.{prog}", *argv]
            async with limit:
                if together:
                    fast, slow = await asyncio.gather(
                        asyncio.to_thread(_run, fast_cmd, env),
                        asyncio.to_thread(_run, slow_cmd, env),
                    )
                else:
                    fast = await asyncio.to_thread(_run, fast_cmd, env)
                    slow = await asyncio.to_thread(_run, slow_cmd, env)
            assert fast == slow, (prog, argv)
            # a failure says why on stderr, also when stdout carries the Reply (-y/--json)
            code, out, err = fast
            assert code == 0 or err.startswith("error: "), (prog, argv, fast)
            if code and {"-y", "--json"} & set(argv):
                assert _reply_of(out, argv)["success"] is False, (prog, argv, out)

        reads: list[Coroutine[Any, Any, None]] = []
        for prog, argv in lines:
            if (prog, argv[0]) in CHANGES:
                await asyncio.gather(*reads)
                reads = []
                await same(prog, argv, together=False)
            else:
                reads.append(same(prog, argv, together=True))
        await asyncio.gather(*reads)
        # and the set above took effect on the component
        code, out, _ = await asyncio.to_thread(
            _run, [str(BIN / "passata"), "get", COMP, "max", *common], env
        )
        assert (code, out.strip()) == (0, "max: 7.0")


def test_tomato_start_reads_its_options_as_typer() -> None:
    line = read_line("tomato", ["start", "-vv", "-q", "-v", "-D", "/d", "-t", "2s", "--json"])
    assert line is not None
    _, opts, args, own = line
    assert (own, args) == ({}, [])
    assert (opts.verbose, opts.quiet) == (3, 1)  # click counts -vv -v as 3
    assert (str(opts.datadir), opts.timeout, opts.json, opts.broker) == ("/d", 2.0, True, None)
    line = read_line("tomato", ["start"])
    assert line is not None and line[1].timeout == 30.0  # start's own default


def test_tomato_start_fails_alike_on_both_paths(tmp_path: Path) -> None:
    """``tomato start`` runs on the fast path (cli/start_core.py) unless typer owns the
    line: its refusals (no settings, a bad devices file, a taken port) read the same,
    and neither path started anything."""
    import socket

    port = free_port()
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("TOMATO_BROKER", None)
    dirs = ["-A", str(tmp_path / "app"), "-D", str(tmp_path / "data")]
    dirs += ["-L", str(tmp_path / "log"), "-p", str(port)]
    fast_cmd = [str(BIN / "tomato"), "start", *dirs]
    typer_cmd = [sys.executable, "-m", "tomato_mqtt.cli.tomato", "start", *dirs]

    def both(*expect: str) -> None:
        got = [_run(c, env) for c in (fast_cmd, typer_cmd)]
        assert got[0] == got[1], got
        code, out, err = got[0]
        assert code == 1 and out == "" and all(e in err for e in expect), got[0]
        assert not (tmp_path / "log" / "supervisor.log").exists()  # nothing was started

    both("settings file not found")
    code, _, err = _run([str(BIN / "tomato"), "init", *dirs], env)
    assert code == 0, err
    devices = tmp_path / "app" / "devices.yml"
    good = devices.read_text()
    devices.write_text("devices: [\n")
    both("devices")
    # a tomato 2.2 devices file with a key nothing reads (a comment), and tomato 2.2's
    # settings.toml naming it: both are read, and what is ignored or not used is said on
    # stderr before anything else
    devices.write_text(good.replace("    pollrate:", "    comment: bench 2\n    pollrate:", 1))
    settings = tmp_path / "app" / "settings.toml"
    settings.write_text(
        tomato22_settings(tmp_path / "t22").replace(
            f"config = '{tmp_path / 't22' / 'devices.yml'}'", f"config = '{devices}'"
        )
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        both(
            f"port {port} on 127.0.0.1 is already in use by another program",
            f"warning: {devices}: devices[0] 'dev-counter': unknown key 'comment' ignored,"
            " as tomato 2.2 ignores it",
            f"note: {settings}: [jobs] storage (tomato 2.2's job folders) is not used:"
            f" tomato-mqtt keeps each job's folder in the datadir's Jobs,"
            f" {tmp_path / 'data' / 'Jobs'}",
            f"note: {settings}: [jobs] dbpath (tomato 2.2's job database) is not used",
        )


def test_fast_path_imports_no_typer_paho_asyncio_or_pydantic(tmp_path: Path) -> None:
    """A fast call (here one that finds no broker) loads none of the heavy modules."""
    (tmp_path / "settings.toml").write_text("")  # an app folder, as -A names one
    code = (
        "import sys\n"
        "from tomato_mqtt.cli import fast\n"
        f"argv = ['status', '-A', {str(tmp_path)!r}, '-p', '{free_port()}']\n"
        "try:\n"  # the call itself (fast.tomato() ends the process when it is done)
        "    fast.parse('tomato', argv)()\n"
        "except SystemExit as e:\n"
        "    assert e.code == 1, e.code\n"
        "heavy = ('typer', 'click', 'paho', 'asyncio', 'pydantic', 'yaml', 'ssl', 'dataclasses',\n"
        "         'inspect', 'typing', 'pathlib', 'datetime', 'encodings.idna', 'platformdirs',\n"
        "         'urllib.request', 'http', 'logging', 'platformdirs.android')\n"
        "print(sorted(set(sys.modules) & set(heavy)))\n"
    )
    # without the coverage hook of a `.ci/run` (it imports json, typing... itself at start)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COV_", "COVERAGE_"))}
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]", res.stdout
    assert "cannot connect to the MQTT broker" in res.stderr


def test_naming_a_component_loads_no_openssl() -> None:
    """passata hashes the component's name into its topic: with hashlib that loaded
    OpenSSL (_hashlib), ~2-3 ms of every call (passata was 1.10-1.13x ketchup, which
    hashes nothing; 1.02-1.04x without). The hash is hashlib's blake2b all the same."""
    code = (
        "import sys, json\n"
        "from tomato_mqtt.wire.slugs import slug\n"
        "s = slug('example_counter:(example-addr,1)')\n"
        "print(json.dumps([s, '_hashlib' in sys.modules]))\n"
    )
    # without the coverage hook of a `.ci/run` (it imports hashlib itself at start)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COV_", "COVERAGE_"))}
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert res.returncode == 0, res.stderr
    name, openssl = json.loads(res.stdout)
    want = hashlib.blake2b(b"example_counter:(example-addr,1)", digest_size=5).hexdigest()
    assert name == f"example_counter-example-addr-1--{want}" and openssl is False, res.stdout


def _submit_code(job: Path, common: list[str], probe: str) -> str:
    """Python for ``-c``: ``ketchup submit job --json`` on the fast path, then ``probe``
    (an expression on ``sys``) printed as the last line of stderr."""
    return (
        "import sys\n"
        "from tomato_mqtt.cli import fast\n"
        f"argv = ['submit', {str(job)!r}, '--json', *{common!r}]\n"
        "try:\n"
        "    fast.parse('ketchup', argv)()\n"
        "finally:\n"
        f"    print({probe}, file=sys.stderr)\n"
    )


async def test_submit_sends_a_yaml_payload_as_text_and_loads_no_yaml_parser(
    broker: RunningBroker, tmp_path: Path, instance: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ketchup submit job.yml`` sends the file's text: the scheduler parses it (the CLI
    process saves the ~9 ms of importing PyYAML). A file naming other files is read
    here as before; a scheduler that does not know ``payload_text`` gets it parsed."""
    from pydantic import BaseModel, ConfigDict, JsonValue

    from tomato_mqtt.services.scheduler import ops

    async with inproc_stack(broker.port, tmp_path, instance) as st:
        # (20 s: the stack runs in this process, whose loop a loaded run starved past 5 s)
        common = ["-p", str(broker.port), "-A", str(st.settings.appdir), "-t", "20"]
        job = tmp_path / "job.yml"
        job.write_text(
            "version: '2.2'\nsample: {identifier: q1, when: 2026-01-01}\nuser: {identifier: me}\n"
            "method:\n  - {component_role: counter, technique_name: count, max_duration: 1.0,"
            " sampling_interval: 0.1}\n"
        )
        code = _submit_code(
            job, common, "sorted(m for m in sys.modules if m in ('yaml', 'dataclasses'))"
        )
        res = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", code], capture_output=True, text=True
        )
        assert res.returncode == 0, res.stderr
        assert "'yaml'" not in res.stderr.splitlines()[-1], res.stderr
        sent = json.loads(res.stdout)["data"]
        sample = sent["payload"]["sample"]
        assert (sample["identifier"], sample["when"]) == ("q1", "2026-01-01")  # a YAML date

        # refusals name this file, once
        bad = tmp_path / "bad.yml"
        bad.write_text("version: '2.2'\nsample: {identifier: q1\nmethod: []\n")
        rc, _out, err = await asyncio.to_thread(
            _run, [str(BIN / "ketchup"), "submit", str(bad), *common], dict(os.environ)
        )
        assert rc == 1 and err.count("bad.yml") == 1, err
        assert f"payload refused: {bad}: line 3, column 7: invalid YAML" in err, err

        # a scheduler of before payload_text (its args had payload only, nothing else)
        class OldSubmitArgs(BaseModel):
            model_config = ConfigDict(extra="forbid")
            payload: dict[str, JsonValue]
            jobname: str | None = None
            submit_dir: str | None = None
            user: str | None = None

        class Old:  # refuses what the old model refused, then as now
            @staticmethod
            def model_validate(args: Any) -> Any:
                OldSubmitArgs.model_validate(args)
                return real.model_validate(args)

        real = ops.SubmitArgs
        monkeypatch.setattr(ops, "SubmitArgs", Old)
        rc, out, err = await asyncio.to_thread(
            _run, [str(BIN / "ketchup"), "submit", str(job), *common], dict(os.environ)
        )
        assert rc == 0 and "job submitted successfully with jobid 2" in out, (out, err)


async def test_a_submit_without_a_login_name_in_the_environment_names_the_passwd_user(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """No LOGNAME/USER (a service, cron, a container): the job's user is the password
    database's name for this uid, read without ``getpass`` (its termios and warnings
    were ~2 ms of the submit)."""
    import pwd

    async with inproc_stack(broker.port, tmp_path, instance) as st:
        common = ["-p", str(broker.port), "-A", str(st.settings.appdir)]
        job = tmp_path / "job.yml"
        job.write_text(
            "version: '2.1'\nsample: {name: q1}\n"  # 2.1 has no user: the submitter's
            "method:\n  - {component_role: counter, technique_name: count, max_duration: 0.2,"
            " sampling_interval: 0.1}\n"
        )
        code = _submit_code(job, common, "'getpass' in sys.modules")
        env = {k: v for k, v in os.environ.items() if k not in LOGIN_VARS}
        res = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", code], capture_output=True, text=True, env=env
        )
        assert res.returncode == 0, res.stderr
        assert res.stderr.splitlines()[-1] == "False", res.stderr
        user = json.loads(res.stdout)["data"]["payload"]["user"]["identifier"]
        assert user == pwd.getpwuid(os.getuid()).pw_name

        env["LOGNAME"] = "ada-lovelace"  # the environment's name comes first, as getpass's
        res = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", code], capture_output=True, text=True, env=env
        )
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["data"]["payload"]["user"]["identifier"] == "ada-lovelace"


LOGIN_VARS = ("LOGNAME", "USER", "LNAME", "USERNAME")


async def test_a_submit_nobody_answered_says_the_job_may_still_come(
    broker: RunningBroker, tmp_path: Path
) -> None:
    """Found by a user: with the scheduler paused, `ketchup submit` said nobody answered;
    the scheduler took the job once it went on, and the job submitted again ran twice.
    The message says so, on both paths (here no scheduler listens at all)."""
    (tmp_path / "settings.toml").write_text("")  # an app folder, as -A names one
    job = tmp_path / "job.yml"
    job.write_text("version: '2.2'\nsample: {name: s}\nmethod: []\n")
    env = {k: v for k, v in os.environ.items() if k != "TOMATO_BROKER"}
    line = ["submit", str(job), "-p", str(broker.port), "-A", str(tmp_path), "-t", "1"]
    typer = [sys.executable, "-m", "tomato_mqtt.cli.ketchup"]
    for cmd in ([str(BIN / "ketchup"), *line], [*typer, *line]):
        rc, _out, err = await asyncio.to_thread(_run, cmd, env)
        assert rc == 1 and "no scheduler answered" in err, err
        assert "before submitting it again" in err and "ketchup search" in err, err


async def test_verbose_shows_the_exchange_on_both_paths(
    broker: RunningBroker, tmp_path: Path
) -> None:
    """A tomato 2.2 user's review: `ketchup status 1 -v` (tomato 2.2 takes -v/-q on every
    command) was a usage error. -v now says each step of the exchange on stderr."""
    (tmp_path / "settings.toml").write_text("")
    env = {k: v for k, v in os.environ.items() if k != "TOMATO_BROKER"}
    line = ["status", "1", "-p", str(broker.port), "-A", str(tmp_path), "-t", "1", "-v"]
    typer = [sys.executable, "-m", "tomato_mqtt.cli.ketchup"]
    for cmd in ([str(BIN / "ketchup"), *line], [*typer, *line]):
        rc, _out, err = await asyncio.to_thread(_run, cmd, env)
        assert rc == 1 and "no scheduler answered" in err, err  # (none runs here)
        assert f"connecting to mqtt://127.0.0.1:{broker.port} as cli-" in err, err
        assert "connected (" in err, err
        assert "sent tomato/v2/" in err and "/scheduler/cmd/job_status" in err, err
        rc, _out, err = await asyncio.to_thread(_run, [*cmd[:-1], "-q"], env)
        assert rc == 1 and "connect" not in err.replace("cannot connect", ""), err


@pytest.mark.parametrize("command", ["start", "node", "scheduler", "dashboard"])
def test_a_counting_flag_shows_no_value_in_help(command: str) -> None:
    """``-v``/``-vv`` count: the help showed ``-v <int> [default: 0]`` (an outside user
    took it for ``-v 2``)."""
    out = subprocess.run(
        [str(BIN / "tomato"), command, "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "120", "NO_COLOR": "1"},
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if "--verbose" in ln or "--quiet" in ln]
    assert lines and any("--verbose" in ln for ln in lines), out.stdout
    for ln in lines:
        assert "<int>" not in ln and "default" not in ln, ln
        assert "(-vv)" in ln or "(-qq)" in ln, ln


@pytest.mark.parametrize(
    "argv",
    [
        ["ketchup", "status"],
        ["tomato", "status"],
        # the typer path: these ended 130 without a word, and --follow printed its
        # client's tracebacks as the interpreter tore it down (a newcomer's tour)
        ["tomato", "stop"],
        ["ketchup", "snapshot", "1"],
        ["ketchup", "status", "1", "--follow"],
    ],
)
def test_ctrl_c_while_a_call_waits_is_one_line_not_a_traceback(
    tmp_path: Path, argv: list[str]
) -> None:
    """A newcomer's tour: Ctrl-C while a call waited (a broker that does not answer, a
    wrong --instance: when users press it) printed ~25 lines of traceback."""
    (tmp_path / "settings.toml").write_text("")  # an app folder, as -A names one
    import signal
    import socket
    import time

    silent = socket.socket()  # accepts, never answers a CONNECT
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    silent.settimeout(30)
    port = silent.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", f"from tomato_mqtt.cli import fast; fast.{argv[0]}()",
         *argv[1:], "-A", str(tmp_path), "-p", str(port), "-t", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "100"},
        # as from a terminal: a test worker may run with SIGINT ignored, which a child
        # inherits (Python then installs no handler: the call never saw the Ctrl-C)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    conn: socket.socket | None = None
    try:
        # a real SIGINT once it waits: it has connected (past its imports: a SIGINT
        # during them, in a CI run, was swallowed by coverage's start-up hook)
        conn, _ = silent.accept()
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if conn is not None:
            conn.close()
        silent.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (proc.returncode, out, err) == (130, "", "interrupted\n"), (proc.returncode, err)


def test_a_broker_silent_within_a_very_short_timeout_is_not_said_stalled(tmp_path: Path) -> None:
    """A newcomer's tour: `tomato status -t 0.001` on a healthy stack was said to be a
    stalled broker, with `kill PID` to stop the stack. Within a very short -t the
    timeout is said to be too short; with a usual one, a silent broker is said stalled."""
    import socket

    (tmp_path / "settings.toml").write_text("")
    silent = socket.socket()  # accepts, never answers a CONNECT
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    said = {}
    try:
        for t in ("0.2", "1"):
            res = subprocess.run(
                [sys.executable, "-c", "from tomato_mqtt.cli import fast; fast.tomato()",
                 "status", "-A", str(tmp_path), "-p", str(port), "-t", t],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert res.returncode == 1, res
            said[t] = res.stderr
    finally:
        silent.close()
    assert (f"did not answer the connection within 0.2 s (broker mqtt://127.0.0.1:{port}") in said[
        "0.2"
    ], said
    assert (
        said["0.2"]
        .rstrip()
        .endswith(
            "a -t/--timeout of 0.2 s is likely too short for the broker to answer; try again "
            "with a longer one"
        )
    ), said
    assert "too short" not in said["1"] and "stalled or overloaded" in said["1"], said


def test_ctrl_c_while_a_command_is_still_imported_is_one_line(tmp_path: Path) -> None:
    """A newcomer's tour: Ctrl-C in the first ~0.1 s of a command not on the fast path
    (`ketchup snapshot 9`), while typer and the command were imported, printed a
    KeyboardInterrupt traceback and the process died of the signal. The SIGINT is sent
    for real, from inside that import."""
    import signal

    (tmp_path / "settings.toml").write_text("")
    code = (
        "import importlib.abc, os, signal, sys\n"
        "class CtrlC(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'tomato_mqtt.cli.ketchup':\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "        return None\n"
        "sys.meta_path.insert(0, CtrlC())\n"
        "from tomato_mqtt.cli import fast\n"
        "fast.ketchup()\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, "snapshot", "9", "-A", str(tmp_path),
         "-p", str(free_port()), "-t", "2"],
        capture_output=True, text=True, timeout=60,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert (res.returncode, res.stdout, res.stderr) == (130, "", "interrupted\n"), res


@pytest.mark.parametrize("name", ["read.py", "shadow", "notes.txt"])
def test_a_file_that_is_no_yaml_or_json_is_not_sent_as_a_payload(tmp_path: Path, name: str) -> None:
    """A newcomer's tour: `ketchup submit read.py` sent the script's text to the
    scheduler ("invalid YAML: ..."), and so would /etc/shadow ("version: field
    required"). As tomato: a payload is a YAML or JSON file; nothing is sent (no broker
    runs on the port here: the refusal comes first)."""
    (tmp_path / "settings.toml").write_text("")  # an app folder, as -A names one
    f = tmp_path / name
    f.write_text("import os\n")
    res = subprocess.run(
        [sys.executable, "-c", "from tomato_mqtt.cli import fast; fast.ketchup()",
         "submit", str(f), "-A", str(tmp_path), "-p", str(free_port()), "-t", "2"],
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert res.returncode == 1, res
    assert res.stderr == (
        f"error: payload refused: {f}: a payload is a YAML (.yml, .yaml) or JSON (.json) file\n"
    ), res.stderr
