"""The whole stack on an external broker, with no code changes: settings only. Two
implementations: Mosquitto (C) and Aedes (Node.js, tests/aedes/)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import xarray as xr

from tests.conftest import external_broker, free_port
from tests.counts import taken
from tests.stack import Stack, make_stack, start_stack, started, stop_stack

pytestmark = pytest.mark.timeout(180)


@pytest.mark.parametrize("kind", ["mosquitto", "aedes"])
def test_job_runs_end_to_end_on_an_external_broker(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    port = free_port()
    binary = request.getfixturevalue("mosquitto_path") if kind == "mosquitto" else ""
    mosq = external_broker(kind, port, tmp_path, mosquitto=binary)
    asyncio.run(mosq.start())
    try:
        st = external_stack(tmp_path / "stack")
        st.port = port  # tomato start -p: the external broker's port
        with started(st):
            # nothing of ours listens there but Mosquitto: no embedded broker was started
            assert not list(st.logdir.glob("broker*.log"))
            one_job_with_every_point(st)
            # the scheduler found nothing amiss with the broker (brokercheck.py): said as []
            assert scheduler_status(st)["broker_warnings"] == [], st.logs()
            # `tomato start` twice against a running stack on the same broker is refused
            res = st.run("tomato", "start", "-D", str(st.datadir), "-L", str(st.logdir))
            assert res.returncode == 1 and "already" in (res.stdout + res.stderr), res
    finally:
        asyncio.run(mosq.stop())


def external_stack(root: Path) -> Stack:
    """A stack's folders and settings for the external broker of the test."""
    st = make_stack(root)
    cfg = st.appdir / "settings.toml"
    cfg.write_text(cfg.read_text().replace("[broker]\n", "[broker]\nembedded = false\n"))
    return st


def one_job_with_every_point(st: Stack) -> None:
    """The counter's 1 s job, ended `c` with each of its points in the file."""
    st.load_ready("pip-counter-1", "counter_1_0.1")
    jobid = st.submit("counter_1_0.1.yml")
    job = st.wait_job(jobid, {"c", "ce", "cd"}, timeout=60)
    assert job["status"] == "c", (job, st.logs())
    with xr.open_datatree(job["respath"]) as tree:
        n, missed = taken(job)
        assert tree["counter"]["uts"].size == n and n + missed == 10


async def dashboard_says(st: Stack) -> str:
    """The broker warning of the stack's scheduler, as a dashboard's page shows it."""
    from tests.browser import chromium_page, running_dashboard

    url = f"mqtt://127.0.0.1:{st.port}"
    async with running_dashboard(url, st.instance) as dash, chromium_page() as (_, page):
        await page.goto(dash.address())
        warning = page.locator('#presence tr[data-key="scheduler"] .broker-warning')
        await warning.wait_for(timeout=15_000)
        return str(await warning.text_content())


def scheduler_status(st: Stack) -> dict[str, object]:
    res = st.run("tomato", "status", "--json")
    assert res.returncode == 0, res
    data = json.loads(res.stdout)["data"]
    assert isinstance(data, dict)
    return data


def test_a_broker_that_keeps_retained_messages_from_wildcards_is_said_and_loses_nothing(
    tmp_path: Path,
) -> None:
    """RabbitMQ's MQTT plugin (Debian's rabbitmq-server) sends no retained message to a
    subscription with a wildcard (MQTT 3.1.1 [MQTT-3.3.1-6]): a dashboard opened later saw
    no state at all, and nothing said why (found trying a third external broker). The
    scheduler checks it at its start: `tomato start` and `tomato status` say it, and a job
    runs to the last point all the same."""
    port = free_port()
    rabbit = external_broker("rabbitmq", port, tmp_path)
    asyncio.run(rabbit.start())
    try:
        st = external_stack(tmp_path / "stack")
        st.port = port
        res = start_stack(st, timeout=60)
        try:
            assert res.returncode == 0, (res.stdout, res.stderr, st.logs())
            said = "does not send retained messages to wildcard subscriptions"
            assert f"warning: the broker at mqtt://127.0.0.1:{port} {said}" in res.stderr, res
            assert "MQTT-3.3.1-6" in res.stderr and "RabbitMQ" in res.stderr, res.stderr
            warned = scheduler_status(st)["broker_warnings"]
            assert isinstance(warned, list) and len(warned) == 1 and said in warned[0], warned
            assert f"warning:   the broker at mqtt://127.0.0.1:{port} {said}" in (
                st.run("tomato", "status").stdout
            )
            # the dashboard, which sees little else there, says it too (the scheduler's
            # status comes on a topic of its own)
            assert said in asyncio.run(dashboard_says(st)), st.logs()
            one_job_with_every_point(st)
        finally:
            stop_stack(st)
    finally:
        asyncio.run(rabbit.stop())


def test_the_broker_check_blames_no_broker_it_lost_during_the_check(tmp_path: Path) -> None:
    """The scheduler's check of an external broker (brokercheck.py) waits 2 s for its
    retained status to come back: a broker killed meanwhile sent nothing, and was blamed
    for good, as one that keeps retained messages from wildcards (a review). Lost during
    the check, it is not judged (the scheduler asks again later); back, it is."""
    from tomato_mqtt.config.url import BrokerURL
    from tomato_mqtt.services.scheduler.brokercheck import broker_warnings
    from tomato_mqtt.transport.client import AsyncClient, MqttError
    from tomato_mqtt.wire.messages import SchedulerStatus
    from tomato_mqtt.wire.topics import Topics

    port = free_port()
    rabbit = external_broker("rabbitmq", port, tmp_path)
    asyncio.run(rabbit.start())

    async def check() -> None:
        url = BrokerURL.parse(f"mqtt://127.0.0.1:{port}")
        client = AsyncClient(url)
        await client.connect(timeout=10)
        try:
            # what the check reads of the scheduler: its client, topics, URL and status
            scheduler = SimpleNamespace(
                mqtt=client,
                topics=Topics("tcheck"),
                url=url,
                _presence=lambda state: SchedulerStatus(state=state, instance="tcheck"),
            )
            checking = asyncio.ensure_future(broker_warnings(scheduler))  # type: ignore[arg-type]
            await asyncio.sleep(0.5)  # subscribed, waiting for what RabbitMQ never sends
            assert not checking.done()
            rabbit.kill()
            with pytest.raises(MqttError):
                await checking
            await rabbit.start()
            await client.wait_connected(60)
            said = await broker_warnings(scheduler)  # type: ignore[arg-type]
            assert len(said) == 1 and "does not send retained messages" in said[0], said
        finally:
            await client.disconnect()

    try:
        asyncio.run(check())
    finally:
        asyncio.run(rabbit.stop())


def test_a_start_after_a_stop_says_ready_once_the_nodes_are_back(
    mosquitto_path: str, tmp_path: Path
) -> None:
    """An admin's tour: on Mosquitto (running across the restart), `tomato stop; tomato
    start` said ready while `tomato status` still showed the node `offline` and its
    components `lost` for ~2 s: the scheduler had the components' retained metas of the
    node's last run, `registered`, and start counted them ready (here: 1 run in 3). A
    component is ready once its node is online too; an instrument PC's node that runs
    on across the restart is online at once."""
    from tests.stack import BIN, end_process
    from tests.test_startup import _merge_devices

    port = free_port()
    mosq = external_broker("mosquitto", port, tmp_path, mosquitto=mosquitto_path)
    asyncio.run(mosq.start())
    st = external_stack(tmp_path / "stack")
    st.port = port
    devices = (st.appdir / "devices.yml").read_text()
    remote = (Path(__file__).resolve().parents[1] / "config" / "netns_devices.yml").read_text()
    (st.appdir / "devices.yml").write_text(_merge_devices(devices, remote))
    with (tmp_path / "pc2.log").open("w") as log:
        node = subprocess.Popen(
            [BIN / "tomato", "node", "--name", "pc2", "-p", str(port), "-A", str(st.appdir)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        for run in range(4):
            res = start_stack(st)
            assert res.returncode == 0, f"{res.stdout}\n{res.stderr}\n{st.logs()}"
            comps = st.json("tomato", "status", "components")["data"]
            states = {name: (c["state"], c["registered"]) for name, c in comps.items()}
            assert set(states.values()) == {("idle", True)}, (run, states, res.stderr)
            assert len(states) == 5, states
            stop_stack(st)
    finally:
        end_process(node)
        stop_stack(st)
        asyncio.run(mosq.stop())
    # run by hand, it says where it logs, that it connected and was configured (it said
    # nothing while it worked: an admin's tour), and nothing more of the kind
    said = (tmp_path / "pc2.log").read_text()
    assert f"node pc2: connected to mqtt://127.0.0.1:{port}" in said, said
    assert "; its log: " in said and "/node-pc2.log\n" in said, said
    assert "node pc2: configured with " in said, said
    assert "INFO tomato_mqtt.node.drivers" not in said, said


def test_a_call_while_the_broker_restarts_waits_for_it_within_its_timeout(
    mosquitto_path: str, tmp_path: Path
) -> None:
    """A fault-injection round: `ketchup submit -t 60` while Mosquitto was restarted
    (17 s) failed at once, "connection refused … is it running? Start it". With a
    supervisor of the stack alive on this PC, the call waits for the broker within its
    timeout, says so, and the job is submitted once it is back; with none, or past the
    timeout, it fails, saying which."""
    from tests.stack import BIN, CONFIG, cli_env

    port = free_port()
    mosq = external_broker("mosquitto", port, tmp_path, mosquitto=mosquitto_path)
    asyncio.run(mosq.start())
    st = external_stack(tmp_path / "stack")
    st.port = port
    # the data folder in the settings, as a lab has it: where the CLI finds the pid file
    toml = st.appdir / "settings.toml"
    toml.write_text(f'datadir = "{st.datadir}"\n{toml.read_text()}')
    try:
        with started(st):
            st.load_ready("pip-counter-1", "counter_1_0.1")
            asyncio.run(mosq.stop())
            began = time.monotonic()
            short = st.run("ketchup", "status", "-t", "1")
            assert short.returncode == 1 and time.monotonic() - began < 10, short
            sup = st.supervisor_pid()
            assert "waiting up to 1 s for it to be back" in short.stderr, short.stderr
            assert f"tomato-mqtt runs here (supervisor pid {sup}) and its broker" in short.stderr
            assert "took no connection within 1 s" in short.stderr, short.stderr
            submit = [BIN / "ketchup", "submit", CONFIG / "counter_1_0.1.yml", "-t", "60"]
            asked = subprocess.Popen(
                [*submit, "-p", str(port), "-A", str(st.appdir)],
                env=cli_env(st.env, "ketchup", "submit"),
                cwd=st.workdir,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            status = [BIN / "passata", "status", "dev-counter/1", "-t", "60"]
            looked = subprocess.Popen(  # passata's own exchange: waited for as well
                [*status, "-p", str(port), "-A", str(st.appdir)],
                env=cli_env(st.env, "passata", "status"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            last = [BIN / "passata", "last", "dev-counter/1", "-t", "60"]
            streamed = subprocess.Popen(  # the long-lived client's connection: waited for too
                [*last, "-p", str(port), "-A", str(st.appdir)],
                env=cli_env(st.env, "passata", "last"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(3)
            assert asked.poll() is None, asked.communicate()  # waiting, not failed
            assert looked.poll() is None, looked.communicate()
            assert streamed.poll() is None, streamed.communicate()  # (it failed at once)
            asyncio.run(mosq.start())
            out, err = asked.communicate(timeout=60)
            assert asked.returncode == 0, (out, err)
            assert "takes no connection" in err and f"supervisor pid {sup}" in err, err
            seen, said = looked.communicate(timeout=60)
            assert looked.returncode == 0 and "state" in seen, (seen, said)
            assert "takes no connection" in said, said
            seen, said = streamed.communicate(timeout=60)
            assert "takes no connection" in said and "refused" not in said, (seen, said)
            jobid = int(out.split()[-1])
            job = st.wait_job(jobid, {"c", "ce", "cd"}, timeout=60)
            assert job["status"] == "c", (job, st.logs())
            # the submit made one job, however often it tried to connect
            listed = st.json("ketchup", "status")
            assert [j["id"] for j in listed["data"]] == [jobid], listed
            # a stack stopped while a call waits for its broker ends the wait (it waited
            # out its -t, naming a supervisor gone: a review)
            asyncio.run(mosq.stop())
            waiting = subprocess.Popen(
                [BIN / "ketchup", "status", "-t", "60", "-p", str(port), "-A", str(st.appdir)],
                env=cli_env(st.env, "ketchup", "status"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(2)
            assert waiting.poll() is None, waiting.communicate()
            assert sup is not None
            os.kill(sup, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and st.supervisor_pid() is not None:
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                while time.monotonic() < deadline:
                    os.kill(sup, 0)
                    time.sleep(0.05)
            gone = time.monotonic()
            out, err = waiting.communicate(timeout=30)
            assert waiting.returncode == 1 and time.monotonic() - gone < 5, (out, err)
            assert "waiting up to 60 s" in err and "is it running? Start it" in err, err
        # no stack here any more: said at once, as before
        asyncio.run(mosq.stop())
        began = time.monotonic()
        res = st.run("ketchup", "status", "-t", "20")
        assert res.returncode == 1 and time.monotonic() - began < 10, res
        assert "is it running? Start it" in res.stderr and "waiting" not in res.stderr, res
    finally:
        asyncio.run(mosq.stop())
