"""``passata`` end to end: one component of example_counter, driven directly.

One stack for the module; each test uses its own channel of ``dev-counter``, so the
attrs one test sets do not leak into another.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.stack import Stack, running_stack

pytestmark = pytest.mark.timeout(180)

FULL = "example_counter:(example-addr,{})"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("passata")) as st:
        yield st


def test_status_by_either_name(stack: Stack) -> None:
    for name in ("dev-counter/1", FULL.format(1)):
        out = stack.json("passata", "status", name)
        assert out["success"], out
        assert out["data"]["name"] == FULL.format(1)
        assert out["data"]["state"] == "idle"
        assert out["data"]["running"] is False  # tomato 2.2's key, for its scripts
    res = stack.run("passata", "status", "dev-counter/1")
    assert res.returncode == 0, res.stderr
    assert "idle" in res.stdout and FULL.format(1) in res.stdout


def test_attrs_capabilities_constants(stack: Stack) -> None:
    out = stack.json("passata", "attrs", "dev-counter/1")
    assert out["success"], out
    attrs = out["data"]
    assert set(attrs) >= {"min", "max", "param", "choice"}
    assert attrs["param"]["type"] == "quantity" and attrs["param"]["units"]
    assert attrs["param"]["minimum"] == pytest.approx(0.1)
    assert attrs["choice"]["options"] == ["red", "green", "blue"]
    assert attrs["max"]["rw"] is True and "value" in attrs["max"]
    human = stack.run("passata", "attrs", "dev-counter/1")
    assert human.returncode == 0
    assert human.stdout.splitlines()[0].split()[:3] == ["attr", "type", "units"]

    caps = stack.json("passata", "capabilities", "dev-counter/1")["data"]
    assert set(caps) >= {"count", "random"}
    assert "count" in stack.run("passata", "capabilities", "dev-counter/1").stdout.split()

    consts = stack.json("passata", "constants", "dev-counter/1")["data"]
    assert consts["example_meta"] == "example string"
    res = stack.run("passata", "constants", "dev-counter/1", "-y")
    assert yaml.safe_load(res.stdout)["data"]["example_meta"] == "example string"
    # a name that is no constant, beside one that is: said in plain output too (it was
    # left out without a word: a newcomer's tour)
    res = stack.run("passata", "constants", "dev-counter/1", "example_meta", "nosuch")
    assert res.returncode == 0 and res.stdout.strip() == "example_meta: example string", res
    assert "warning: not constants of it: nosuch" in res.stderr, res.stderr


def test_get_and_set(stack: Stack) -> None:
    c = "dev-counter/2"
    # nothing measured on it since the stack started: said as such, with what takes one
    # (it said "no point yet" of one that measured before a restart: a newcomer's tour)
    res = stack.run("passata", "last", c)
    assert res.returncode == 1, res
    assert (
        f"{FULL.format(2)} has no point retained on tomato/v2/{stack.instance}/component/"
    ) in res.stderr and (
        "none since the broker and its node last started (`passata measure` takes one now)"
    ) in res.stderr, res.stderr
    res = stack.run("passata", "set", c, "max", "7.5")
    assert res.returncode == 0, res.stderr
    out = stack.json("passata", "get", c, "max", "min")
    assert out["success"] and out["data"]["max"] == pytest.approx(7.5)
    assert set(out["data"]) == {"max", "min"}
    assert "max: 7.5" in stack.run("passata", "get", c, "max").stdout

    # a negative value as it is typed (it was "No such option: -5"), and -t after it
    res = stack.run("passata", "set", c, "min", "-5", "-t", "5")
    assert res.returncode == 0, res.stderr
    assert stack.json("passata", "get", c, "min")["data"]["min"] == pytest.approx(-5)
    res = stack.run("passata", "set", c, "min", "-5", "--frobnicate")
    assert res.returncode == 2 and "--frobnicate" in res.stderr, res.stderr
    assert stack.run("passata", "set", c, "min", "0").returncode == 0

    out = stack.json("passata", "set", c, "choice", "green")
    assert out["success"] and out["data"] == {"choice": "green"}
    # values the driver refuses, with the reason
    res = stack.run("passata", "set", c, "choice", "purple")
    assert res.returncode == 1 and "red" in res.stderr  # names the options
    res = stack.run("passata", "set", c, "param", "1 ms")
    assert res.returncode == 1 and "param" in res.stderr
    res = stack.run("passata", "set", c, "max", "lots")
    assert res.returncode == 1 and "max" in res.stderr
    # unknown attrs
    res = stack.run("passata", "get", c, "nope")
    assert res.returncode == 1 and "unknown attr 'nope'" in res.stderr
    res = stack.run("passata", "set", c, "nope", "1")
    assert res.returncode == 1 and "nope" in res.stderr
    out = stack.json("passata", "get", c, "nope")
    assert out["success"] is False


def _documented_keys(command: str) -> set[str]:
    """The top-level keys of ``passata <command>``'s `data` in docs/cli.md's table."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    row = next(ln for ln in doc.splitlines() if ln.startswith(f"| `{command} <c>`"))
    shape = row.split("|")[3].strip().split("`")[1][1:-1]  # `{uts, vars: {...}, ...}`
    while (flat := re.sub(r"\{[^{}]*\}", "", shape)) != shape:  # nested ones out
        shape = flat
    return {part.split(":")[0].strip() for part in shape.split(",")}


def test_measure_last_reset_register(stack: Stack) -> None:
    c = "dev-counter/3"
    out = stack.json("passata", "measure", c)
    assert out["success"], out
    assert isinstance(out["data"]["uts"], float) and out["data"]["vars"]
    # a quantity keeps its units, as in `passata last` (param is a pint quantity)
    assert out["data"]["units"] == {"param": "second"}, out["data"]
    human = stack.run("passata", "measure", c)
    assert human.returncode == 0 and "param: 1.0 second" in " ".join(human.stdout.split()), human
    measured = out["data"]["uts"]
    deadline = time.monotonic() + 5
    last = stack.json("passata", "last", c)
    while time.monotonic() < deadline and not (last["success"] and last["data"]["uts"] >= measured):
        time.sleep(0.1)
        last = stack.json("passata", "last", c)
    assert last["success"], last
    assert last["data"]["component"] == FULL.format(3)
    assert last["data"]["uts"] >= measured and last["data"]["vars"]
    assert last["data"]["jobid"] is None
    human = stack.run("passata", "last", c)
    assert human.returncode == 0 and "time:" in human.stdout
    # the shapes docs/cli.md gives (it said `values` and `job`: a script written from it
    # got a KeyError, a newcomer's tour)
    assert set(out["data"]) == _documented_keys("measure"), out["data"]
    assert set(last["data"]) == _documented_keys("last"), last["data"]

    res = stack.run("passata", "reset", c)
    assert res.returncode == 0, res.stderr
    assert "reset" in res.stdout
    res = stack.run("passata", "register", c)
    assert res.returncode == 0, res.stderr
    assert stack.json("passata", "status", c)["data"]["state"] == "idle"
    # as tomato's: the component (its data was null: a parity audit)
    reg = stack.json("passata", "register", c)["data"]
    assert reg["name"] == FULL.format(3) and reg["driver"] == "example_counter", reg
    assert set(reg) >= {"name", "device", "driver", "address", "channel", "capabilities", "role"}
    assert "count" in reg["capabilities"] and reg["role"] is None, reg
    # and attrs with every key of tomato's Attr, the unset ones null (they were left out)
    attrs = stack.json("passata", "attrs", c)["data"]
    assert attrs["min"]["maximum"] is None and attrs["min"]["options"] is None, attrs["min"]
    assert {"type", "rw", "status", "units", "minimum", "maximum", "options"} <= set(
        attrs["min"]
    ), attrs["min"]


def test_unknown_component(stack: Stack) -> None:
    for name in ("dev-counter/9", "example_counter:(nowhere,1)", "no-such-device"):
        t0 = time.monotonic()
        res = stack.run("passata", "status", name)
        assert res.returncode == 1
        assert f"unknown component {name!r}" in res.stderr
        assert "dev-counter/1" in res.stderr  # lists the known ones
        assert time.monotonic() - t0 < 8
    out = stack.json("passata", "attrs", "dev-counter/9")
    assert out["success"] is False


def test_no_scheduler_and_no_node(stack: Stack) -> None:
    # on an instance nobody serves: the full name is tried directly, and the error names
    # the broker and the instance
    res = stack.run(
        "passata", "status", FULL.format(1), "--instance", "nobody-here", "--timeout", "1"
    )
    assert res.returncode == 1
    assert "no node hosting" in res.stderr and "instance nobody-here" in res.stderr
    # a name to look up: nothing there is no wrong name (it said "unknown component":
    # a newcomer's wrong instance; the client said "unavailable" by then)
    for cmd in (("get", "dev-counter/1", "max"), ("status", "dev-counter/1")):
        res = stack.run("passata", *cmd, "--instance", "nobody-here", "-t", "1")
        assert res.returncode == 1, (res.stdout, res.stderr)
        assert "on instance 'nobody-here'" in res.stderr, res.stderr
        assert "unknown component" not in res.stderr, res.stderr


def test_running_component_refuses_set_and_reset_without_force(stack: Stack) -> None:
    pip, c = "pip-counter-4", "dev-counter/4"
    payload = {
        "version": "2.2",
        "sample": {"identifier": "passata-busy"},
        "user": {"identifier": "tester"},
        "method": [
            {
                "component_role": "counter",
                "technique_name": "count",
                "max_duration": 60.0,
                "sampling_interval": 0.2,
            }
        ],
    }
    p = stack.workdir / "busy.yml"
    p.write_text(yaml.safe_dump(payload))
    stack.load_ready(pip, "passata-busy")
    jobid = stack.submit(p)
    try:
        stack.wait_job(jobid, {"r"}, timeout=20)
        deadline = time.monotonic() + 10
        st = stack.json("passata", "status", c)["data"]
        while time.monotonic() < deadline and st["state"] != "running":
            time.sleep(0.1)
            st = stack.json("passata", "status", c)["data"]
        assert st["state"] == "running" and st["jobid"] == jobid, st

        res = stack.run("passata", "set", c, "max", "20")
        assert res.returncode == 1
        assert "running" in res.stderr and "--force" in res.stderr
        # ... and to a request over MQTT, which has no options (it said "use --force" to
        # an integrator: an integrator's tour)
        assert (
            '(with passata --force it is done all the same; a script sends "force": true)'
            in res.stderr
        ), res.stderr
        res = stack.run("passata", "reset", c)
        assert res.returncode == 1 and "--force" in res.stderr
        # register's refusal names the reset that frees it (it named a plain reset, which
        # is refused while a task runs: a side-by-side tour)
        res = stack.run("passata", "register", c)
        assert res.returncode == 1 and "`passata reset --force` stops it" in res.stderr, res
        res = stack.run("passata", "set", c, "max", "20", "--force")
        assert res.returncode == 0, res.stderr
        assert stack.json("passata", "get", c, "max")["data"]["max"] == pytest.approx(20)
        # still running: the forced set did not stop the task
        assert stack.json("passata", "status", c)["data"]["state"] == "running"
    finally:
        stack.run("ketchup", "cancel", str(jobid), check=True)
        stack.wait_job(jobid, {"c", "ce", "cd"}, timeout=30)
        stack.run("tomato", "pipeline", "eject", pip, check=True)


def test_status_carries_tomato_s_running_while_a_task_runs() -> None:
    """tomato 2.2's `passata status -y` data is `{running: false}` or `{running: Task}`:
    a script reading `data.running` broke on ours (found comparing the two)."""
    from tomato_mqtt.cli.passata_core import _as_tomato
    from tomato_mqtt.transport.oneshot import Reply
    from tomato_mqtt.wire.messages import ComponentStatus

    st = ComponentStatus(
        name=FULL.format(1), node="local", state="running", time=0.0, job=7, task=1,
        technique="count", task_name="a",
    )  # fmt: skip
    status = st.model_dump(mode="json", by_alias=True)  # as the node answers
    out = _as_tomato(Reply(id="x", success=True, msg="", data=dict(status))).data
    assert out["running"] == {"technique_name": "count", "task_name": "a", "jobid": 7, "index": 1}
    assert {k: out[k] for k in status} == status  # the component's own fields stay
    failed = Reply(id="x", success=False, msg="no", data=None)
    assert _as_tomato(failed).data is None


def test_status_says_why_the_last_task_failed() -> None:
    """A driver author's tour: `passata status` said "last task: job 3 task 0: error, 3
    point(s)", and only `-y` said why."""
    from tomato_mqtt.cli.passata_core import status_human

    last = {"job": 3, "task": 0, "reason": "error", "npoints": 3, "message": "boom at point 4"}
    text = status_human("status", {"name": "c", "state": "idle", "last_task": last})
    assert "job 3 task 0: error, 3 point(s) (boom at point 4)" in text, text
    done = {**last, "reason": "done", "message": None}
    text = status_human("status", {"name": "c", "state": "idle", "last_task": done})
    assert text.rstrip().endswith("done, 3 point(s)"), text
