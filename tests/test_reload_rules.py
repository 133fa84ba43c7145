"""A component added by ``tomato reload`` on a secured stack whose broker's rules lack it.

Found by an admin's tour: a device added to devices.yml and `tomato reload` at once (the
embedded broker re-reads its files at most every 0.5 s; an external broker only when its
rules are written again): the node's subscription to the new component's commands was
refused, `configure` failed half-way, and the component stayed "unregistered" for good
with ``error: null``; a second reload said "no changes", `passata register` was not
answered. Mosquitto takes the node's wildcard subscription and drops what the node publishes of the
component, telling nobody: the scheduler now says so in the component's status once its
node has hosted it for 10 s with nothing of it arriving, and asks the node to say it all
again (every 10 s), so it registers once the rules are written again. On the embedded
broker, which refuses the subscription, the node subscribes as part of the component's
registration and tries again (1, 2, 4 … 30 s), and the broker looks at its files before it
refuses (tests/test_acl.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import RunningBroker, secured_aedes
from tests.inproc import inproc_stack
from tests.secure_stack import make_secure_stack, on_mosquitto, wait_listening
from tests.stack import CONFIG, Stack, end_process, started

pytestmark = pytest.mark.timeout(240)

ADDED = """\
  - name: dev-more
    driver: example_counter
    address: more-addr
    channels: ["1"]
    pollrate: 1
pipelines:
  - name: pip-more
    devices:
      - {role: counter, device: dev-more, channel: "1"}
"""
MORE = "example_counter:(more-addr,1)"


def component(st: Stack, name: str) -> dict[str, object]:
    res = st.run("tomato", "status", "components", "--json", "-t", "5")
    comps = json.loads(res.stdout)["data"] if res.returncode == 0 else {}
    return comps.get(name) or {}  # type: ignore[no-any-return]


def wait_for(st: Stack, name: str, ok: object, what: str, timeout: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        c = component(st, name)
        if ok(c):  # type: ignore[operator]
            return c
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}: not {what} within {timeout:g} s: {c}\n{st.logs()}")
        time.sleep(0.3)


def registered_idle(c: dict[str, object]) -> bool:
    """Registered, and its state said: a node says a registration in two messages, its meta
    then its status, and a status asked between them reads "unregistered"."""
    return c.get("registered") is True and c.get("state") == "idle"


def add_a_device(st: Stack) -> None:
    """pip-more on dev-more (node local), and ``tomato reload`` at once: it says what an
    external broker needs."""
    devices = st.appdir / "devices.yml"
    devices.write_text(
        (CONFIG / "devices_counter.yml").read_text().replace("pipelines:\n", ADDED, 1)
    )
    res = st.run("tomato", "reload", "-t", "20")
    assert res.returncode == 0 and "added_components" in res.stdout, res
    # (the warnings one a line under the message, for people)
    out = " ".join(res.stdout.split())
    assert "warnings: the broker is not the embedded one: write its rules again" in out, out


def test_a_component_the_broker_s_rules_lack_says_so_and_registers_once_they_have_it(
    tmp_path: Path, mosquitto_path: str
) -> None:
    st = make_secure_stack(tmp_path, embedded=False)
    with on_mosquitto(st, mosquitto_path) as conf, started(st):
        add_a_device(st)
        # Mosquitto's rules are those written before: it takes the node's subscription
        # (a wildcard: judged message by message) and drops what the node publishes of
        # the new component; its status says so (it said "unregistered", error null)
        c = wait_for(
            st,
            MORE,
            lambda c: "nothing of it has reached the scheduler" in str(c.get("error")),
            "said unheard",
        )
        assert c["registered"] is False and "tomato broker-config" in str(c["error"]), c
        assert "rules may not give node local this component" in str(c["error"]), c
        # the admin writes the rules again and has Mosquitto read them: the node, asked
        # again, says it all again, and it is registered
        st.run(
            "tomato", "broker-config", "--mosquitto", str(conf), "-D", str(st.datadir), check=True
        )
        os.kill(int((conf / "pid").read_text()), signal.SIGHUP)
        c = wait_for(st, MORE, lambda c: c.get("registered") is True, "registered", timeout=90)
        assert c.get("error") is None, c
        res = st.run("passata", "get", MORE, "max", "-t", "10")
        assert res.returncode == 0, res


def test_a_refused_subscription_is_tried_again_until_the_broker_takes_it(
    tmp_path: Path,
) -> None:
    """Aedes refuses the node's subscription to the commands of a component its rules lack
    (and closes the connection of a publish they forbid): the node publishes nothing of the
    component and tries again, 1, 2, 4 … 30 s apart, so it registers once the broker has
    the rules (configure failed half-way, and it was never tried again)."""
    st = make_secure_stack(tmp_path, embedded=False)
    rules = st.root / "aedes" / "rules.json"

    def aedes() -> object:
        st.run("tomato", "broker-config", "--rules", str(rules), "-D", str(st.datadir), check=True)
        proc = secured_aedes(st.port, rules, rules.parent / "aedes.log")
        wait_listening(st.port)
        return proc

    proc = aedes()
    try:
        with started(st):
            add_a_device(st)
            c = wait_for(
                st, MORE, lambda c: "nothing of it has reached" in str(c.get("error")), "unheard"
            )
            assert c["registered"] is False, c
            log = (st.logdir / "node-local.log").read_text()
            assert "the broker refused node local's subscription to this component's" in log
            assert "retrying in" in log
            # the others go on: the node's connection was not closed over it
            assert component(st, "example_counter:(example-addr,1)")["state"] == "idle"
            end_process(proc)  # type: ignore[arg-type]
            proc = aedes()  # with the rules of the devices file as it is now
            # (its meta and its status are two messages: wait for both)
            c = wait_for(st, MORE, registered_idle, "registered and idle", 90)
            assert c.get("error") is None, c
    finally:
        end_process(proc)  # type: ignore[arg-type]


async def test_a_component_whose_driver_takes_long_to_connect_is_not_taken_for_the_rules(
    broker: RunningBroker, tmp_path: Path, instance: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review: the node said nothing of a component until its registration ended, so a
    driver that takes longer than 10 s to connect read "the broker's rules may not give
    node local this component" on a stack with an external broker. The node says the
    component (its meta, not registered yet) as soon as it is subscribed to its commands.
    Here with the check's 10 s cut to 0.3 s and an instrument that takes 2 s."""
    from tomato_mqtt.services.scheduler import service

    monkeypatch.setattr(service, "UNHEARD_AFTER", 0.3)
    settings = "[broker]\nembedded = false\n[drivers.faulty]\nconnect_seconds = 2\n"
    async with inproc_stack(  # (not waiting for the registrations)
        broker.port,
        tmp_path,
        instance,
        devices="faulty_retry_devices.yml",
        settings=settings,
        components=0,
    ) as st:
        name = "faulty:(ok,1)"
        seen: list[object] = []
        for _ in range(40):  # 2 s and more
            comps = await st.call("status", {"what": "components"})
            c = comps[name].model_dump() if name in comps else {}
            seen.append((c.get("registered"), c.get("error")))
            if c.get("registered"):
                break
            await asyncio.sleep(0.1)
        assert seen[-1][0] is True, seen
        assert not any("rules" in str(err) for _, err in seen), seen


async def test_a_driver_slow_to_connect_is_said_in_its_component_s_status(
    broker: RunningBroker, instance: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A driver author's tour: a driver whose connect never returned left its component
    `unregistered`, no error, no log line, for minutes. After SLOW_CONNECT (here 0.3 s,
    an instrument that takes 2 s) its status says it is still connecting, to what; once
    it has, the note goes."""
    from tomato_mqtt.services.node import service

    monkeypatch.setattr(service, "SLOW_CONNECT", 0.3)
    async with inproc_stack(  # (not waiting for the registrations)
        broker.port,
        tmp_path,
        instance,
        devices="faulty_retry_devices.yml",
        settings="[drivers.faulty]\nconnect_seconds = 2\n",
        components=0,
    ) as st:
        name = "faulty:(ok,1)"
        seen: list[tuple[object, object]] = []
        for _ in range(60):  # 2 s and more
            comps = await st.call("status", {"what": "components"})
            c = comps[name].model_dump() if name in comps else {}
            seen.append((c.get("registered"), c.get("error")))
            if c.get("registered"):
                break
            await asyncio.sleep(0.1)
        assert seen[-1] == (True, None), seen
        # (before the node's first status: "no status of node local has come …")
        said = [str(err) for _, err in seen if err and "no status of node" not in str(err)]
        assert said and said[0].startswith("still connecting: the driver has not returned"), seen
        assert "'ok' for 0.3 s" in said[0], said


async def test_a_payload_may_not_name_another_job_s_folder_in_the_datadir(
    broker: RunningBroker, instance: str, tmp_path: Path
) -> None:
    """A security tour: an operator's job named `Jobs/3` and `results.3` as its output,
    wrote there first, and job 3's owner found the other's data under her job's name
    (hers went to a side file). A payload's output in another job's datadir folder goes
    to the job's own folder, and the submit says so."""
    import yaml

    from tests.inproc import CONFIG

    async with inproc_stack(broker.port, tmp_path, instance) as st:
        first = await st.short_job()
        other = st.settings.jobs_dir / str(first.id + 5)  # (a job to come)
        for folder in (st.settings.jobs_dir / str(first.id), other):
            payload = yaml.safe_load((CONFIG / "counter_1_0.1.yml").read_text())
            payload["method"][0].update(time=0.3, delay=0.1)
            payload.setdefault("tomato", {})["output"] = {
                "path": str(folder),
                "prefix": f"results.{folder.name}",
            }
            work = st.settings.datadir / "work"
            await st.call("pipeline_ready", {"pipeline": "pip-counter-1"})
            said = await st.raw(
                st.topics.scheduler_cmd("job_submit"),
                {"payload": payload, "submit_dir": str(work)},
            )
            assert said.success, said
            assert "is another job's folder in the datadir" in said.msg, said.msg
            job = await st.wait_job(said.data["id"], {"c", "ce", "cd"}, timeout=30)
            own = st.settings.jobs_dir / str(job.id)
            assert job.status == "c" and job.respath == str(own / f"results.{folder.name}.nc")
        assert not (other / f"results.{other.name}.nc").exists()


async def test_an_output_folder_swapped_for_another_job_s_folder_mid_job_is_not_written(
    broker: RunningBroker, instance: str, tmp_path: Path
) -> None:
    """A hostile tour: a payload's output folder, fine at the submit, was replaced by a
    symlink to a job to come's folder (Jobs/N) while the job ran: the recorder wrote the
    file there under job N's name and made the folder (job N then ended `ce`, its file
    refused). The file goes to the job's own folder, and Jobs/N is not made."""
    import yaml

    from tests.inproc import CONFIG

    async with inproc_stack(broker.port, tmp_path, instance) as st:
        first = await st.short_job()
        coming = first.id + 3
        tw = st.settings.datadir / "work" / "tw"
        tw.mkdir(parents=True)
        payload = yaml.safe_load((CONFIG / "counter_1_0.1.yml").read_text())
        payload["method"][0].update(time=1.5, delay=0.1)
        payload.setdefault("tomato", {})["output"] = {
            "path": str(tw),
            "prefix": f"results.{coming}",
        }
        await st.call("pipeline_ready", {"pipeline": "pip-counter-1"})
        said = await st.raw(
            st.topics.scheduler_cmd("job_submit"),
            {"payload": payload, "submit_dir": str(st.settings.datadir / "work")},
        )
        assert said.success and "another job" not in said.msg, said  # fine at the submit
        jobid = said.data["id"]
        await st.wait_job(jobid, {"r"})
        tw.rmdir()
        tw.symlink_to(st.settings.jobs_dir / str(coming))
        job = await st.wait_job(jobid, {"c", "ce", "cd"}, timeout=30)
        own = st.settings.jobs_dir / str(jobid)
        assert job.status == "c", job
        assert job.respath == str(own / f"results.{coming}.nc"), job
        assert (own / f"results.{coming}.nc").is_file()
        assert not (st.settings.jobs_dir / str(coming)).exists()


async def test_a_payload_s_file_names_are_file_names(
    broker: RunningBroker, instance: str, tmp_path: Path
) -> None:
    """A hostile tour: `prefix: Jobs/1/results.1` (a path, not a name) put an operator's
    file in job 1's folder under its name (job 1's own went beside it), and made folders
    such as Jobs/999999999999; a snapshot's `path` named another job's folder unchecked;
    a NUL or a 5,000 character prefix failed at the job's end with no file; a snapshot
    every 0.0001 s rewrote the file 783 times; a job named with a zero-width space looked
    exactly like another's. Each is refused at submit naming the field, or (a snapshot in
    another job's folder) goes to the job's own folder."""
    import yaml

    from tests.inproc import CONFIG

    def payload(**settings: object) -> dict[str, object]:
        doc = yaml.safe_load((CONFIG / "counter_1_0.1.yml").read_text())
        doc["method"][0].update(time=2.5, delay=0.1)
        doc.setdefault("tomato", {}).update(settings)
        return doc

    async with inproc_stack(broker.port, tmp_path, instance) as st:
        first = await st.short_job()
        work = st.settings.datadir / "work"
        refused = {
            f"settings.output.prefix: 'Jobs/{first.id}/results.{first.id}' is a file name, "
            "not a path: give the folder as settings.output.path": payload(
                output={
                    "path": str(st.settings.datadir),
                    "prefix": f"Jobs/{first.id}/results.{first.id}",
                }
            ),
            "settings.snapshot.prefix: '../x' is a file name": payload(
                snapshot={"prefix": "../x", "frequency": 5}
            ),
            "settings.output.prefix: 'a\\x00b' holds a control character": payload(
                output={"prefix": "a\x00b"}
            ),
            "settings.output.prefix is 5,000 bytes long: at most 200": payload(
                output={"prefix": "x" * 5000}
            ),
            "settings.snapshot.interval: 0 s is below 1 s": payload(  # (a 0.2 takes ints)
                snapshot={"prefix": "s", "frequency": 0}
            ),
        }
        for words, doc in refused.items():
            said = await st.raw(
                st.topics.scheduler_cmd("job_submit"), {"payload": doc, "submit_dir": str(work)}
            )
            assert not said.success and said.code == "bad_request", (words, said)
            assert words in said.msg, (words, said.msg)
        said = await st.raw(
            st.topics.scheduler_cmd("job_submit"),
            {"payload": payload(), "submit_dir": str(work), "jobname": "otto-job\u200b"},
        )
        assert not said.success and "may not hold control characters, invisible" in said.msg, said
        said = await st.raw(  # a blank letter (a Hangul filler) looks like nothing too
            st.topics.scheduler_cmd("job_submit"),
            {"payload": payload(), "submit_dir": str(work), "jobname": "otto-job\u3164"},
        )
        assert not said.success and "invisible" in said.msg, said
        said = await st.raw(  # an empty prefix is the default name, as before
            st.topics.scheduler_cmd("job_submit"),
            {"payload": payload(output={"prefix": ""}), "submit_dir": str(work)},
        )
        assert said.success, said
        await st.call("job_cancel", {"jobids": [said.data["id"]]})
        assert not (st.settings.jobs_dir / "999999999999").exists()
        # a snapshot whose folder is another job's: it goes to the job's own
        theirs = st.settings.jobs_dir / str(first.id)
        before = sorted(p.name for p in theirs.iterdir()) if theirs.is_dir() else []
        doc = payload(
            snapshot={"path": str(theirs), "prefix": f"results.{first.id}", "frequency": 1}
        )
        await st.call("pipeline_ready", {"pipeline": "pip-counter-1"})
        said = await st.raw(
            st.topics.scheduler_cmd("job_submit"), {"payload": doc, "submit_dir": str(work)}
        )
        assert said.success, said
        job = await st.wait_job(said.data["id"], {"c", "ce", "cd"}, timeout=30)
        own = st.settings.jobs_dir / str(job.id)
        assert job.status == "c" and (own / f"results.{first.id}.nc").is_file(), job
        after = sorted(p.name for p in theirs.iterdir()) if theirs.is_dir() else []
        assert after == before, (before, after)


def test_a_component_moved_to_another_node_registers_once_the_rules_have_it(
    tmp_path: Path, mosquitto_path: str
) -> None:
    """An admin's tour (Mosquitto): a device moved from one node to another with `tomato
    reload`, then the rules written again and Mosquitto HUP'd: it stayed `unregistered`
    for minutes, until the new node was restarted by hand. The old node cleared the
    component's meta, the scheduler kept it, took the component for the old node's, and
    asked the old node, every 10 s, to say it all again."""
    from tests.secure_stack import LAB_USERS
    from tests.stack import BIN

    st = make_secure_stack(tmp_path, embedded=False)
    with on_mosquitto(st, mosquitto_path) as conf, started(st):
        url = f"mqtt://pc2:{LAB_USERS['pc2'][0]}@127.0.0.1:{st.port}"
        cmd = [BIN / "tomato", "node", "--name", "pc2", "-b", url, "--instance", st.instance]
        dirs = ["-D", str(tmp_path / "pc2"), "-L", str(tmp_path / "pc2")]
        with (tmp_path / "pc2.log").open("w") as log:
            node = subprocess.Popen([*cmd, *dirs], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while st.json("tomato", "status", "nodes")["data"].get("pc2", {}).get("state") != (
                "online"
            ):
                assert time.monotonic() < deadline, (tmp_path / "pc2.log").read_text()
                time.sleep(0.3)
            devices = st.appdir / "devices.yml"
            text = (CONFIG / "devices_counter.yml").read_text()
            devices.write_text(
                text.replace("    pollrate: 1\n", "    pollrate: 1\n    node: pc2\n")
            )
            res = st.run("tomato", "reload", "-t", "20")
            assert res.returncode == 0, res
            st.run(
                "tomato", "broker-config", "--mosquitto", str(conf), "-D", str(st.datadir),
                check=True,
            )  # fmt: skip
            os.kill(int((conf / "pid").read_text()), signal.SIGHUP)
            name = "example_counter:(example-addr,1)"
            # (its meta and its status are two messages: the status view can be asked
            # between them, so both are waited for; ci79 asked in between)
            c = wait_for(
                st, name, lambda c: registered_idle(c) and c.get("node") == "pc2",
                "registered and idle on pc2", timeout=60,
            )  # fmt: skip
            assert c.get("error") is None, c
        finally:
            end_process(node)
