"""TLS: the embedded broker's TLS listener, CLIs and a remote node over mqtts://.

A throwaway CA (openssl) signs the broker's certificate. A whole job runs with the CLI
and a second driver node ("pc2", its own login and role) talking to the broker only over
TLS; plain MQTT to the TLS port and TLS with the wrong CA are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.secure_stack import LAB_USERS, make_secure_stack, on_mosquitto, wait_listening
from tests.security_env import start_amqtt, stop
from tests.stack import BIN, CONFIG, Stack, free_port, started
from tests.tls_ca import Pki, make_pki
from tomato_mqtt.config.url import BrokerURL
from tomato_mqtt.transport.client import AsyncClient, MqttError

pytestmark = pytest.mark.timeout(240)


async def test_tls_listener_refuses_plain_mqtt_and_a_wrong_ca(
    tmp_path: Path,
    instance: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other")
    b = await start_amqtt(
        tmp_path, instance, certfile=str(pki.server_cert), keyfile=str(pki.server_key)
    )
    try:
        good = f"mqtts://olga:pw-olga@127.0.0.1:{b.tls_port}?ca_certs={pki.ca}"
        async with AsyncClient(good, reconnect=False) as c:
            await c.subscribe(b.topics.all_job_status())
        # the dashboard's WebSocket listener is WSS, with auth and ACL as well
        wss = f"wss://rita:pw-rita@127.0.0.1:{b.extra['ws_port']}?ca_certs={pki.ca}"
        async with AsyncClient(wss, reconnect=False) as c:
            await c.subscribe(b.topics.all_job_status())
            with pytest.raises(MqttError, match="refused the subscription"):
                await c.subscribe(b.topics.scheduler_cmds())
        with pytest.raises(MqttError):
            async with AsyncClient(wss.replace("pw-rita", "nope"), reconnect=False):
                pass
        for bad in (
            f"mqtt://olga:pw-olga@127.0.0.1:{b.tls_port}",  # plain MQTT to the TLS port
            f"mqtts://olga:pw-olga@127.0.0.1:{b.tls_port}?ca_certs={other.ca}",  # wrong CA
            f"mqtts://olga:wrong@127.0.0.1:{b.tls_port}?ca_certs={pki.ca}",  # wrong password
        ):
            with pytest.raises(MqttError):
                async with AsyncClient(bad, reconnect=False):
                    pass
        await asyncio.sleep(0.5)
        # each refused TLS login left 25 lines of traceback in the broker's log (amqtt's
        # close of the stream raised: an admin's tour)
        unhandled = [r for r in caplog.records if "Unhandled exception" in r.getMessage()]
        assert not unhandled, [r.getMessage() for r in unhandled]
        # the other scheme for a port is suggested (it asked "is tomato-mqtt running?"
        # about a broker that runs: an admin's tour)
        for url, said in (
            (f"mqtt://olga:pw-olga@127.0.0.1:{b.tls_port}", "takes TLS, as [broker] tls_port"),
            (f"mqtts://olga:pw-olga@127.0.0.1:{b.port}?ca_certs={pki.ca}", "use mqtt://"),
        ):
            res = await asyncio.to_thread(  # the broker runs in this event loop
                subprocess.run,
                [str(BIN / "tomato"), "status", "--broker", url, "--instance", instance,
                 "-t", "2"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert res.returncode == 1 and said in res.stderr, (url, res.stderr)
        # tls_insecure verifies nothing, and says so (a security audit: it connected to
        # any certificate without a word); the one-request CLI path alike (it checked the
        # CA but not the name: the two paths meant different things by it)
        from tomato_mqtt.config import url as url_mod

        monkeypatch.setattr(url_mod, "_warned_insecure", False, raising=False)
        capsys.readouterr()
        insecure = f"mqtts://olga:pw-olga@127.0.0.1:{b.tls_port}?ca_certs={other.ca}&tls_insecure=1"
        async with AsyncClient(insecure, reconnect=False) as c:
            await c.subscribe(b.topics.all_job_status())
        said = capsys.readouterr().err
        assert "warning: TLS without verifying the broker's certificate" in said, said
        res = await asyncio.to_thread(  # the broker runs in this event loop
            subprocess.run,
            [str(BIN / "tomato"), "status", "--broker", insecure, "--instance", instance,
             "-t", "1"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert "warning: TLS without verifying the broker's certificate" in res.stderr
        assert "certificate verify failed" not in res.stderr, res.stderr
        assert "no scheduler answered" in res.stderr, res.stderr
        # a CA that does not trust the broker is said as such, not as a stack that may
        # not be running ("— is tomato-mqtt running?": a security audit)
        wrong_ca = f"mqtts://olga:pw-olga@127.0.0.1:{b.tls_port}?ca_certs={other.ca}"
        res = await asyncio.to_thread(
            subprocess.run,
            [str(BIN / "tomato"), "status", "--broker", wrong_ca, "--instance", instance],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert res.returncode == 1 and "certificate verify failed" in res.stderr, res.stderr
        assert "is tomato-mqtt running" not in res.stderr, res.stderr
        assert "give the lab's CA (ca_certs=" in res.stderr, res.stderr
        # a node whose CA does not trust the broker stops at once, saying why (it kept
        # trying without a word for good, and a SIGTERM went unheard: a security audit)
        untrusted = f"mqtts://pc2:pw-pc2@127.0.0.1:{b.tls_port}?ca_certs={other.ca}"
        app = tmp_path / "pc2"
        await asyncio.to_thread(
            subprocess.run,
            [str(BIN / "tomato"), "init", "-A", str(app), "-D", str(app / "d"),
             "-L", str(app / "l")],
            capture_output=True, check=True,
        )  # fmt: skip
        t0 = time.monotonic()
        res = await asyncio.to_thread(
            subprocess.run,
            [str(BIN / "tomato"), "node", "--name", "pc2", "--instance", instance,
             "-A", str(app), "--broker", untrusted],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert res.returncode == 1, (res.returncode, res.stderr)
        assert "error: TLS with the MQTT broker at mqtts://" in res.stderr, res.stderr
        assert "certificate verify failed" in res.stderr, res.stderr
        assert time.monotonic() - t0 < 30
    finally:
        await stop(b)


async def test_a_clean_disconnect_over_tls_sends_no_last_will(
    tmp_path: Path, instance: str
) -> None:
    """An admin's tour: a remote node stopped cleanly over TLS was shown `lost` (its
    last will), 3 of 3, never `offline`. The client's TLS stream ended after its
    DISCONNECT (a half-close, as over plain TCP), which ended the broker's side too, and
    amqtt, whose answer to a publish just before found it closed, published the will.
    Here a publish the rules refuse comes just before the stop (8 of 8 wills before)."""
    from tomato_mqtt.transport.types import Will

    pki = make_pki(tmp_path / "pki")
    b = await start_amqtt(
        tmp_path, instance, certfile=str(pki.server_cert), keyfile=str(pki.server_key)
    )
    try:
        topic = b.topics.node_status("pc2")
        async with AsyncClient(f"mqtt://ada:pw-ada@127.0.0.1:{b.port}") as admin:
            await admin.subscribe(topic)
            seen: list[bytes] = []

            async def watch() -> None:
                async for m in admin.messages():
                    seen.append(bytes(m.payload))

            watcher = asyncio.create_task(watch())
            url = f"mqtts://pc2:pw-pc2@127.0.0.1:{b.tls_port}?ca_certs={pki.ca}"
            for _ in range(8):
                c = AsyncClient(url, will=Will(topic, b"lost"))
                await c.connect(timeout=10)
                await c.publish(topic, b"offline", retain=True)
                for _ in range(3):
                    await c.publish(b.topics.component_status("x:(a,1)"), b"{}", wait=False)
                await c.disconnect()
                deadline = time.monotonic() + 5
                while b"offline" not in seen and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.3)  # a will comes within ms of the close
                assert seen == [b"offline"], seen
                seen.clear()
            watcher.cancel()
    finally:
        await stop(b)


def test_url_takes_tls_files_from_the_query() -> None:
    url = BrokerURL.parse("mqtts://a:b@h:8883?ca_certs=/c.pem&certfile=/m.crt&keyfile=/m.key")
    assert (url.tls, url.ca_certs, url.certfile, url.keyfile) == (
        True, "/c.pem", "/m.crt", "/m.key",
    )  # fmt: skip
    url = url.with_tls_defaults({"ca_certs": "/other.pem", "tls_insecure": True})
    assert url.ca_certs == "/c.pem" and url.tls_insecure
    assert BrokerURL.parse("mqtts://h").with_tls_defaults({"ca_certs": "/s.pem"}).ca_certs == (
        "/s.pem"
    )
    with pytest.raises(ValueError, match="without TLS"):
        BrokerURL.parse("mqtt://h?ca_certs=/c.pem")
    with pytest.raises(ValueError, match="unknown option"):
        BrokerURL.parse("mqtts://h?cafile=/c.pem")


def test_a_broker_url_that_cannot_be_read_never_says_its_password() -> None:
    """An admin's tour: a password with @ : / # % in it, not percent-encoded, failed
    "bad port in broker URL 'mqtts://rita:r@t:a/1#x%@…'", the password in clear (on a
    shared screen, in a CI log). Said without it, with how to write it; percent-encoded,
    it is read whole."""
    with pytest.raises(ValueError) as e:
        BrokerURL.parse("mqtts://rita:r@t:a/1#x%@10.77.0.1:23002")
    said = str(e.value)
    assert "r@t:a/1#x%" not in said and "rita:***@10.77.0.1:23002" in said, said
    assert "percent-encoded" in said and "%40" in said, said
    with pytest.raises(ValueError) as e:
        BrokerURL.parse("mqtt://rita:s3cret@h:1883?foo=1")
    assert "s3cret" not in str(e.value) and "rita:***@h:1883" in str(e.value), e.value
    # an @ in the query is no user's (it was shown as "mqtts://h:***@b": a review), and
    # a password with "://" in a URL without a scheme is not said with the scheme
    with pytest.raises(ValueError) as e:
        BrokerURL.parse("mqtts://h:x?certfile=/a@b")
    assert "mqtts://h:x?certfile=/a@b" in str(e.value), e.value
    with pytest.raises(ValueError) as e:
        BrokerURL.parse("ada:s3://x@h")
    assert "s3" not in str(e.value) and "x@h" not in str(e.value), e.value
    url = BrokerURL.parse("mqtts://rita:r%40t%3Aa%2F1%23x%25@10.77.0.1:23002")
    assert (url.username, url.password, url.host) == ("rita", "r@t:a/1#x%", "10.77.0.1")


@pytest.mark.parametrize("mutual", [False, True], ids=["", "mutual"])
@pytest.mark.parametrize("kind", ["amqtt", "mosquitto"])
def test_a_whole_job_over_tls_with_a_remote_node(
    kind: str, mutual: bool, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """On the embedded broker, and on Mosquitto configured by `tomato broker-config
    --mosquitto` from the same settings (its TLS listener, logins and ACL: what
    docs/security.md's "With Mosquitto instead" sets up), nothing else changed.
    ``mutual``: ``[broker] require_certificate`` (mutual TLS): the node and the lab user
    present the client certificate the lab's CA signed; without one, or with one of
    another CA, a login is refused, saying why."""
    pki = make_pki(tmp_path / "pki")
    tls_port = free_port()
    extra = f'certfile = "{pki.server_cert}"\nkeyfile = "{pki.server_key}"\ntls_port = {tls_port}\n'
    if mutual:
        extra += f'cafile = "{pki.ca}"\nrequire_certificate = true\n'
    st = make_secure_stack(tmp_path, devices="netns_devices.yml", embedded=kind == "amqtt")
    text = (st.appdir / "settings.toml").read_text()
    (st.appdir / "settings.toml").write_text(text.replace("[scheduler]", extra + "[scheduler]"))
    with contextlib.ExitStack() as broker:
        if kind == "mosquitto":
            broker.enter_context(on_mosquitto(st, request.getfixturevalue("mosquitto_path")))
            wait_listening(tls_port)
        if mutual:
            _refused_without_a_client_certificate(st, tmp_path, tls_port, pki)
        _whole_job_over_tls(st, pki, tls_port, mutual)
        # nothing of ours served it but Mosquitto: no embedded broker was started
        assert bool(list(st.logdir.glob("broker*.log"))) == (kind == "amqtt")
        if kind == "amqtt":  # its listeners, as clients name them (the TLS one was unsaid)
            said = "".join(f.read_text() for f in st.logdir.glob("broker*.log"))
            assert f"mqtts://127.0.0.1:{tls_port}" in said, said[-3000:]


def _refused_without_a_client_certificate(st: Stack, tmp: Path, tls_port: int, pki: Pki) -> None:
    """Mutual TLS: a login with no client certificate, or one another CA signed, is
    refused by the broker, and the CLI says what is missing."""
    other = make_pki(tmp / "other-pki")
    base = f"mqtts://olga:{LAB_USERS['olga'][0]}@127.0.0.1:{tls_port}?ca_certs={pki.ca}"
    with started(st):
        for url, said in (
            (base, "give one its CA signed: certfile=...&keyfile=... in the broker URL"),
            (
                f"{base}&certfile={other.client_cert}&keyfile={other.client_key}",
                f"is the client certificate {other.client_cert} signed by the CA it trusts",
            ),
        ):
            res = subprocess.run(
                [str(BIN / "tomato"), "status", "--broker", url, "-A", str(st.appdir)],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert res.returncode == 1, (url, res.stdout, res.stderr)
            assert said in res.stderr, (url, res.stderr)
            assert "is tomato-mqtt running" not in res.stderr, res.stderr
        # a node without a client certificate keeps trying (the broker may be restarting),
        # and its log says what to check
        pw = LAB_USERS["pc2"][0]
        app = tmp / "pc2-nocert"
        node = subprocess.Popen(
            [str(BIN / "tomato"), "node", "--name", "pc2", "--instance", st.instance,
             "--broker", f"mqtts://pc2:{pw}@127.0.0.1:{tls_port}?ca_certs={pki.ca}",
             "-A", str(app), "-D", str(app / "d"), "-L", str(app / "l")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            deadline, said_so = time.monotonic() + 30, False
            while not said_so and time.monotonic() < deadline and node.poll() is None:
                time.sleep(0.3)
                logs = [f.read_text(errors="replace") for f in (app / "l").glob("*.log")]
                said_so = any("requires client certificates (mutual TLS)" in t for t in logs)
            assert said_so, [f.read_text()[-2000:] for f in (app / "l").glob("*.log")]
            assert node.poll() is None, "the node gave up"
        finally:
            _stop_node(node)


def _whole_job_over_tls(st: Stack, pki: Pki, tls_port: int, mutual: bool = False) -> None:
    mine = f"&certfile={pki.client_cert}&keyfile={pki.client_key}" if mutual else ""

    def tls_url(user: str) -> str:
        pw = LAB_USERS[user][0]
        return f"mqtts://{user}:{pw}@127.0.0.1:{tls_port}?ca_certs={pki.ca}{mine}"

    # the remote node starts before the stack (it connects once the broker listens, as
    # pc2 would in a lab where it runs already), so that `tomato start` finds its component
    # ready instead of waiting its whole timeout (30 s) for it
    node_dir = st.root / "pc2"
    node_dir.mkdir()
    log = (node_dir / "node.log").open("wb")
    node = subprocess.Popen(
        [
            str(BIN / "tomato"),
            "node",
            "--name",
            "pc2",
            "--broker",
            tls_url("pc2"),
            "--instance",
            st.instance,
            "-A",
            str(node_dir / "app"),
            "-D",
            str(node_dir / "data"),
            "-L",
            str(node_dir / "log"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    try:
        with started(st):
            try:

                def cli(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
                    return subprocess.run(
                        [str(BIN / tool), *args, "--broker", tls_url("olga"), "-A", str(st.appdir)],
                        capture_output=True,
                        text=True,
                        timeout=60,
                        cwd=st.workdir,
                    )

                # the remote node registers its component over TLS (polled as a user would)
                deadline = time.monotonic() + 40
                ok = cli("tomato", "status", "components", "--json")
                while '"registered": true' not in ok.stdout and time.monotonic() < deadline:
                    time.sleep(0.5)
                    ok = cli("tomato", "status", "components", "--json")
                assert '"registered": true' in ok.stdout, (ok.stdout, ok.stderr, st.logs())
                for args in (("load", "pip-remote", "netns"), ("ready", "pip-remote")):
                    res = cli("tomato", "pipeline", *args)
                    assert res.returncode == 0, res.stderr
                res = cli("ketchup", "submit", str(CONFIG / "netns_counter_6_0.1.yml"), "--json")
                assert res.returncode == 0, res.stderr
                jobid = json.loads(res.stdout)["data"]["id"]
                job = st.wait_job(jobid, {"c", "ce", "cd"}, timeout=60)
                assert job["status"] == "c", (job, st.logs())
                assert job["owner"] == "olga"
                # the node gone: `tomato status` says so (it said "online", 0 running, 0
                # queued, a remote node lost: an admin's tour)
                _stop_node(node)
                deadline, away = time.monotonic() + 20, {}
                while not away and time.monotonic() < deadline:
                    out = cli("tomato", "status", "--json")
                    away = json.loads(out.stdout)["data"].get("nodes_away") or {}
                    time.sleep(0.2)
                # stopped cleanly (SIGTERM): `offline`, not its last will's `lost` (over
                # TLS, with its component's status queued as it went, paho's own
                # DISCONNECT was used, and the broker published the will: an admin's tour)
                assert away == {"pc2": "offline"}, away
                text = cli("tomato", "status").stdout
                assert f"node:      pc2 {away['pc2']}" in text, text
            finally:
                _stop_node(node)  # before the stack stops, as a lab would
    finally:
        _stop_node(node)  # (if `tomato start` failed)
        log.close()


def _stop_node(node: subprocess.Popen[bytes]) -> None:
    if node.poll() is not None:
        return
    os.killpg(node.pid, signal.SIGTERM)
    try:
        node.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(node.pid, signal.SIGKILL)
        node.wait()


def test_a_ca_file_that_cannot_be_read_is_named(tmp_path: Path) -> None:
    """An admin's tour: a mistyped ca_certs path said "TLS with the MQTT broker … failed:
    [Errno 2] No such file or directory — is tomato-mqtt running?", naming no file (and
    nothing needs to listen for the files to be checked)."""
    missing = tmp_path / "nope" / "ca.crt"
    res = subprocess.run(
        [str(BIN / "tomato"), "status", "-b", f"mqtts://127.0.0.1:1?ca_certs={missing}",
         "-t", "1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 1, res
    assert f"ca_certs {missing}: No such file or directory" in res.stderr, res.stderr
    assert "is tomato-mqtt running" not in res.stderr, res.stderr
