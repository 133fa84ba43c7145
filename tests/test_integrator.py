"""The integrator check of issue 14: a capture of a whole session (start, a job, a
cancel, a snapshot, passata, a node killed, stop), validated against the AsyncAPI
document the stack publishes on ``meta/schema``, by the official AsyncAPI parser
(@asyncapi/parser, from npm, installed by this test into tests/asyncapi/node_modules)
and Ajv: 0 document errors, 0 invalid messages, 0 undeclared fields (the reply ``data``
and request ``args`` of every command checked against ``x-commands``, every event's
``detail`` against ``x-event-details``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import npm_installed
from tests.stack import CONFIG, make_stack, started
from tomato_mqtt.wire.messages import MESSAGES
from tomato_mqtt.wire.topics import Topics

HERE = Path(__file__).resolve().parent / "asyncapi"
RESPONDER = {
    "scheduler_cmd": "scheduler",
    "node_cmd": "node",
    "component_cmd": "component",
    "recorder_cmd": "recorder",
}


def parser_installed() -> Path:
    """The pinned parser, installed by npm (once, under a lock; offline after that)."""
    return npm_installed(HERE, "the official AsyncAPI parser")


def check(folder: Path, modules: Path) -> dict[str, Any]:
    """check.cjs's summary of ``folder``'s doc.json and capture.jsonl."""
    res = subprocess.run(
        ["node", str(HERE / "check.cjs"), str(folder / "doc.json"), str(folder / "capture.jsonl")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NODE_PATH": str(modules)},
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)  # type: ignore[no-any-return]


class Capture:
    """Every message of the instance (``#``), from a plain paho client in its thread."""

    def __init__(self, port: int, instance: str) -> None:
        self.root = f"tomato/v2/{instance}"
        self.items: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
        self.c.on_connect = lambda c, *a: c.subscribe(f"{self.root}/#", qos=1)
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on_message(self, c: Any, ud: Any, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.items.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def wait(self, pred: Any, what: str, timeout: float = 40) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if any(pred(t, p) for t, p, _ in self.items):
                    return
            time.sleep(0.05)
        raise AssertionError(f"never captured {what}")

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def state_on(kind: str, state: str) -> Any:
    def pred(topic: str, payload: bytes) -> bool:
        if not topic.endswith(kind) or not payload:
            return False
        return json.loads(payload).get("state") == state

    return pred


def test_capture_validates_against_the_published_asyncapi_document(tmp_path: Path) -> None:
    modules = parser_installed()
    st = make_stack(tmp_path)
    topics = Topics(st.instance)
    cap: Capture | None = None
    with started(st):
        cap = Capture(st.port, st.instance)
        cap.wait(lambda t, p: t.endswith("/meta/schema") and bool(p), "meta/schema")
        # a job to the end, and its snapshot
        st.load_ready("pip-counter-1", "counter_1_0.1")
        j1 = st.submit("counter_1_0.1.yml")
        assert st.wait_job(j1, {"c", "ce", "cd"}, timeout=60)["status"] == "c", st.logs()
        assert st.run("ketchup", "snapshot", str(j1), cwd=st.workdir).returncode == 0
        # a job cancelled while it runs
        st.load_ready("pip-counter-2", "counter_5_0.2")
        long = yaml.safe_load((CONFIG / "counter_5_0.2.yml").read_text())
        long["method"][0]["time"] = 120.0  # still running when the cancel comes, under load
        (st.workdir / "long.yml").write_text(yaml.safe_dump(long))
        j2 = st.submit(st.workdir / "long.yml")
        st.wait_job(j2, {"r"}, timeout=30)
        assert st.json("ketchup", "cancel", str(j2))["success"]
        st.wait_job(j2, {"cd"}, timeout=30)
        # passata on a component
        cmp = "example_counter:(example-addr,3)"
        for args in (("status", cmp), ("get", cmp, "max"), ("measure", cmp)):
            res = st.run("passata", *args)
            assert res.returncode == 0, (args, res.stdout, res.stderr)
        # the node killed: its will, its components shown lost, then back
        os.kill(st.child_pid("node"), signal.SIGKILL)
        cap.wait(state_on("/status", "lost"), "a lost status")
        cap.wait(
            lambda t, p: "/component/" in t and t.endswith("/status") and b'"lost"' in p,
            "a component shown lost",
        )
        cap.wait(
            lambda t, p: "/component/" in t and t.endswith("/status") and b'"idle"' in p,
            "components back",
            timeout=60,
        )
    assert cap is not None
    time.sleep(0)  # the stop's last messages are in (stop waits for the stack to exit)
    cap.close()
    stops = [
        json.loads(p).get("state") for t, p, _ in cap.items if t.endswith("scheduler/status") and p
    ]
    assert "stopping" in stops and stops[-1] == "offline", stops

    # the document an integrator gets: the retained meta/schema
    (doc_raw,) = {p for t, p, _ in cap.items if t.endswith("/meta/schema") and p}
    doc = json.loads(doc_raw)
    lines, ops, event_errors = [], {}, []
    details = doc["x-event-details"]
    kinds_seen: dict[str, int] = {}
    for topic, payload, _retained in cap.items:
        parsed = topics.parse(topic)
        assert parsed is not None, f"a topic outside the contract: {topic}"
        if not payload or parsed.kind == "meta_schema":
            continue
        kinds_seen[parsed.kind] = kinds_seen.get(parsed.kind, 0) + 1
        msg = json.loads(payload)
        schemas = [f"doc#/components/schemas/{m.__name__}" for m in MESSAGES[parsed.kind]]
        checks = []
        if parsed.kind in RESPONDER and parsed.op:
            resp = RESPONDER[parsed.kind]
            ops[msg.get("id")] = (resp, parsed.op)
            checks.append([f"doc#/x-commands/{resp}/{parsed.op}/args", ["args"]])
        elif parsed.kind == "reply" and msg.get("success") and msg.get("id") in ops:
            resp, op = ops[msg["id"]]
            checks.append([f"doc#/x-commands/{resp}/{op}/data", ["data"]])
        elif parsed.kind == "job_event":
            extra = set(msg.get("detail") or {}) - set(details[msg["event"]])
            if extra:
                event_errors.append((msg["event"], sorted(extra)))
        lines.append(
            json.dumps(
                {"topic": topic, "payload": payload.decode(), "schemas": schemas, "checks": checks}
            )
        )
    (tmp_path / "doc.json").write_bytes(doc_raw)
    (tmp_path / "capture.jsonl").write_text("\n".join(lines) + "\n")
    report = check(tmp_path, modules)
    out = os.environ.get("TOMATO_INTEGRATOR_REPORT")
    if out:
        Path(out).write_text(json.dumps({**report, "kinds": kinds_seen}, indent=1))
        shutil.copy(tmp_path / "capture.jsonl", out + ".capture.jsonl")
        shutil.copy(tmp_path / "doc.json", out + ".doc.json")
    assert report["parsed"] and report["doc_errors"] == [], report["doc_errors"]
    assert report["errors"] == [], report["errors"][:5]
    assert report["undeclared"] == [], report["undeclared"][:20]
    assert event_errors == []
    assert report["messages"] > 100, report["messages"]
    for kind in ("scheduler_status", "node_status", "component_data", "job_event", "reply"):
        assert kinds_seen.get(kind), (kind, kinds_seen)


def test_a_secured_stack_s_document_says_its_servers_need_a_login(tmp_path: Path) -> None:
    """An integrator's tour: a secured stack's document named its servers and no login,
    though the broker refuses an anonymous one. Its servers now say ``userPassword``
    (AsyncAPI 3.0 security), and the official parser takes the document."""
    from tomato_mqtt.config.settings import load_settings
    from tomato_mqtt.wire.asyncapi import schema_json

    modules = parser_installed()
    app = tmp_path / "app"
    app.mkdir()
    (app / "settings.toml").write_text(
        '[broker]\npassword_file = "users"\nws_port = 0\n'  # (anonymous ones refused)
    )
    secured = json.loads(schema_json("lab1", load_settings(appdir=app)))
    login = [{"$ref": "#/components/securitySchemes/userPassword"}]
    assert [s.get("security") for s in secured["servers"].values()] == [login], secured["servers"]
    assert secured["components"]["securitySchemes"]["userPassword"]["type"] == "userPassword"
    assert all("security" not in s for s in json.loads(schema_json("lab1"))["servers"].values())
    (tmp_path / "doc.json").write_text(json.dumps(secured))
    (tmp_path / "capture.jsonl").write_text("")
    report = check(tmp_path, modules)
    assert report["parsed"] and report["doc_errors"] == [], report["doc_errors"]
