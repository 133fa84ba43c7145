"""The dashboard's ``/api/cmd`` without a browser: an unknown op is ``unknown_op`` (with
the known ones), a known op the session may not use is ``not_allowed``, and a component
is named as ``passata`` names it (an unknown one refused at once, ``not_found``)."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.browser import running_dashboard
from tests.conftest import RunningBroker
from tests.inproc import client, inproc_stack
from tomato_mqtt.config.settings import DashboardSettings
from tomato_mqtt.services.dashboard.service import DashboardService
from tomato_mqtt.services.dashboard.sessions import KNOWN_OPS
from tomato_mqtt.services.dashboard.web import cookie_name
from tomato_mqtt.wire.commands import PAYLOAD_TEXT_MAX
from tomato_mqtt.wire.messages import ComponentMeta, encode
from tomato_mqtt.wire.topics import Topics

FULL = "example_counter:(example-addr,1)"


async def _cmd(dash: DashboardService, op: str, args: dict[str, Any]) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(dash.address() + "api/cmd", json={"op": op, "args": args}) as r,
    ):
        assert r.status == 200, await r.text()
        got: dict[str, Any] = await r.json()
        return got


async def _controls(dash: DashboardService) -> list[str]:
    """The shared session's controls, once the scheduler answered its whoami."""
    for _ in range(200):
        shared = dash.sessions.shared
        if shared is not None and shared.me is not None:
            return shared.controls
        await asyncio.sleep(0.05)
    raise AssertionError("the dashboard never learnt who it is")


async def test_cmd_ops_and_component_names(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    url = f"mqtt://127.0.0.1:{broker.port}"
    async with (
        inproc_stack(broker.port, tmp_path, instance, components=4) as st,
        running_dashboard(url, instance) as dash,
    ):
        assert "get_attr" in await _controls(dash)  # an open stack on loopback: every one

        # an op that does not exist: unknown_op, with the ops there are
        for op in ("bogus", ""):
            r = await _cmd(dash, op, {})
            assert not r["success"] and r["code"] == "unknown_op", r
            assert all(k in r["msg"] for k in KNOWN_OPS), r

        # a component named device/channel: answered at once
        for name in ("dev-counter/1", FULL):
            t0 = time.monotonic()
            r = await _cmd(dash, "get_attr", {"component": name, "attrs": ["max"]})
            assert r["success"] and set(r["data"]) == {"max"}, r
            assert time.monotonic() - t0 < 3, r

        # an unknown one: refused at once, naming the known ones
        t0 = time.monotonic()
        r = await _cmd(dash, "set_attr", {"component": "dev-counter/9", "attr": "max", "val": 1})
        assert time.monotonic() - t0 < 3, r
        assert not r["success"] and r["code"] == "not_found", r
        assert f"dev-counter/1 = {FULL}" in r["msg"], r

        # no scheduler: among the metas the dashboard holds (its own subscription to
        # them stays: a meta published afterwards still reaches its state)
        st.scheduler.request_stop()
        for _ in range(100):
            if st.scheduler.client is None or not st.scheduler.client.is_connected:
                break
            await asyncio.sleep(0.05)
        r = await _cmd(dash, "get_attr", {"component": "dev-counter/2", "attrs": ["max"]})
        assert r["success"] and set(r["data"]) == {"max"}, r
        r = await _cmd(dash, "get_attr", {"component": "dev-counter/9", "attrs": ["max"]})
        assert r["code"] == "not_found" and "no scheduler answered" in r["msg"], r
        new = ComponentMeta(
            name="x:(y,1)", device="dev-x", driver="x", address="y", channel="1", node="pc9"
        )
        async with client(url) as other:
            await other.publish(Topics(instance).component_meta(new.name), encode(new))
            for _ in range(100):
                if any(m.name == new.name for m in dash.state.metas.values()):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the dashboard no longer receives component metas")

    # read only: a known op is not allowed, an unknown one is still unknown
    async with (
        inproc_stack(broker.port, tmp_path / "ro", instance),
        running_dashboard(url, instance, read_only=True) as dash,
    ):
        assert await _controls(dash) == []
        r = await _cmd(dash, "pipeline_load", {"pipeline": "pip-counter-1", "sampleid": "x"})
        assert not r["success"] and r["code"] == "not_allowed", r
        r = await _cmd(dash, "bogus", {})
        assert not r["success"] and r["code"] == "unknown_op", r


async def test_an_upload_may_not_make_the_server_read_its_files(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """Found by a security review: an uploaded payload's ``samplefile`` was read on the
    dashboard's host (a root-only file became a job's sample, readable by any reader; a
    FIFO froze the dashboard for everyone). An upload may not name other files."""
    url = f"mqtt://127.0.0.1:{broker.port}"
    secret = tmp_path / "secret.yml"
    secret.write_text("sample: {name: top-secret-value}\n")
    secret.chmod(0o600)
    upload = (
        "version: '0.2'\n"
        f"samplefile: {secret}\n"
        "method: [{device: counter, technique: count, time: 1.0}]\n"
    )
    async with (
        inproc_stack(broker.port, tmp_path / "st", instance),
        running_dashboard(url, instance) as dash,
    ):
        await _controls(dash)
        r = await _cmd(dash, "job_submit", {"text": upload, "filename": "up.yml"})
        assert not r["success"] and r["code"] == "refused", r
        assert "cannot name another file" in r["msg"] and "top-secret" not in r["msg"], r
        r = await _cmd(dash, "job_submit", {"text": upload, "filename": ".."})  # was a 500
        assert not r["success"] and r["code"] == "refused", r
        # the scheduler's own arguments (topics.md) are taken too (a user's script was
        # told "choose a payload file"), and checked there the same way
        r = await _cmd(dash, "job_submit", {"payload_text": upload})
        assert not r["success"] and "cannot name another file" in r["msg"], r
        assert "top-secret" not in r["msg"], r
        as_doc = {"version": "0.2", "samplefile": str(secret), "method": []}
        r = await _cmd(dash, "job_submit", {"payload": as_doc})
        assert not r["success"] and "top-secret" not in r["msg"], r
        plain = (
            "version: '2.2'\nuser: {identifier: u}\nsample: {identifier: s1}\nmethod: "
            "[{component_role: counter, technique_name: count, max_duration: 1,"
            " sampling_interval: 0.1}]\n"
        )
        r = await _cmd(dash, "job_submit", {"payload_text": plain, "jobname": "from-a-script"})
        assert r["success"] and r["data"]["jobname"] == "from-a-script", r
        # found by a user's audit: an empty file chosen read "choose a payload file"
        r = await _cmd(dash, "job_submit", {"text": "", "filename": "empty.yml"})
        assert r["msg"] == "payload refused: empty.yml: the file is empty", r
        # a refusal by the scheduler names the uploaded file too, as ketchup's does (only
        # the page's own checks did: a newcomer's tour)
        short = plain.replace("max_duration: 1", "max_duration: -1")
        r = await _cmd(dash, "job_submit", {"text": short, "filename": "short.yml"})
        assert not r["success"] and r["msg"].startswith("payload refused: short.yml: "), r
        assert "max_duration" in r["msg"], r
        # found by a review: 600 bytes of nested YAML aliases expanded to 2.5 GB of JSON
        # in the dashboard (these 7 levels: 28 MB in 0.8 s; each level more x9)
        levels = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
        levels += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 7)]
        bomb = (
            "version: '2.2'\nuser: {identifier: u}\nsample:\n  identifier: s\n"
            + "".join(f"  {line}\n" for line in levels)
            + "method: [{component_role: counter, technique_name: count,"
            + " max_duration: 1, sampling_interval: 0.1}]\n"
        )
        t0 = time.monotonic()
        r = await _cmd(dash, "job_submit", {"text": bomb, "filename": "bomb.yml"})
        assert not r["success"] and "expand to more than 100,000 values" in r["msg"], r
        assert time.monotonic() - t0 < 5
        async with (
            aiohttp.ClientSession() as http,
            http.post(dash.address() + "api/cmd", data="[" * 100_000 + "]" * 100_000) as resp,
        ):
            assert resp.status == 400 and "nested" in await resp.text()  # was a 500


async def test_a_dashboard_on_loopback_answers_to_this_pc_s_names_only(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """Found by a security review: with Host and Origin both attacker.example:PORT (what
    a browser sends after DNS rebinding) the dashboard of an open stack loaded and
    ejected samples; its /ws took any Origin. Now: this PC's names only, Origin checked
    on POST and on /ws, scripts (no Origin) as before."""
    url = f"mqtt://127.0.0.1:{broker.port}"
    async with (
        inproc_stack(broker.port, tmp_path / "st", instance),
        running_dashboard(url, instance) as dash,
        aiohttp.ClientSession() as http,
    ):
        await _controls(dash)
        base, port = dash.address(), dash.port
        body = {"op": "pipeline_eject", "args": {"pipeline": "pip-counter-1"}}
        evil = {"Host": f"attacker.example:{port}", "Origin": f"http://attacker.example:{port}"}
        async with http.post(base + "api/cmd", json=body, headers=evil) as r:
            assert r.status == 403, await r.text()
        async with http.get(base, headers={"Host": f"attacker.example:{port}"}) as r:
            assert r.status == 403
        for origin in ("http://evil.example", f"http://127.0.0.1:{port + 1}"):
            async with http.post(base + "api/cmd", json=body, headers={"Origin": origin}) as r:
                assert r.status == 403, origin
            try:
                async with http.ws_connect(base + "ws", headers={"Origin": origin}):
                    raise AssertionError(f"/ws took a page of {origin}")
            except aiohttp.WSServerHandshakeError as e:
                assert e.status == 403, e
        for host in (f"localhost:{port}", f"127.0.0.1:{port}"):  # this PC's own pages
            own = {"Host": host, "Origin": f"http://{host}"}
            async with http.post(base + "api/cmd", json=body, headers=own) as r:
                assert r.status == 200 and (await r.json())["success"], await r.text()
        async with http.post(base + "api/cmd", json=body) as r:  # a script: no Origin
            assert r.status == 200 and (await r.json())["success"]
        async with http.ws_connect(base + "ws", headers={"Origin": base.rstrip("/")}) as ws:
            assert not ws.closed
        # the page's plain look at why its socket closed: nothing to say (it got a 400,
        # an error in the console at each sign-in: a dashboard tour)
        async with http.get(base + "ws") as r:
            assert r.status == 204, (r.status, await r.text())


async def test_a_download_refused_says_why_with_its_http_code(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """A read-only dashboard told an admin "your role may not take snapshots" (the
    reason is the read-only mode), and refusals came as 409 or 403 by chance (a
    newcomer's tour): read-only is 403 saying so, a job that does not exist 404."""
    url = f"mqtt://127.0.0.1:{broker.port}"
    async with inproc_stack(broker.port, tmp_path / "st", instance):
        async with running_dashboard(url, instance, read_only=True) as dash:
            await _controls(dash)
            async with (
                aiohttp.ClientSession() as http,
                http.get(dash.address() + "api/job/1/download") as r,
            ):
                assert r.status == 403 and "read-only" in await r.text()
        async with running_dashboard(url, instance) as dash:
            await _controls(dash)
            async with (
                aiohttp.ClientSession() as http,
                http.get(dash.address() + "api/job/999/download") as r,
            ):
                assert r.status == 404 and "999" in await r.text(), await r.text()
            # an id past what a job id may be: 400, not a 500 and a traceback in the log
            # (a security tour)
            big = "9" * 20
            async with (
                aiohttp.ClientSession() as http,
                http.get(dash.address() + f"api/job/{big}/download") as r,
            ):
                assert r.status == 400 and "a job id is a whole number" in await r.text()


async def test_a_page_signed_out_elsewhere_is_told_so_at_its_next_control(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """A sign-in ended elsewhere (the login signed in more often since): its page kept
    its controls, and a click answered "not allowed here: … (role reader)" (a newcomer's
    tour). The answer now says the sign-in ended and who the page is now."""
    url = f"mqtt://127.0.0.1:{broker.port}"
    async with (
        inproc_stack(broker.port, tmp_path / "st", instance),
        running_dashboard(url, instance, read_only=True) as dash,
    ):
        await _controls(dash)
        dash.sessions._ended["tok-1"] = "'olga' signed in more than 5 times since"
        async with (
            aiohttp.ClientSession(cookies={cookie_name(dash.port): "tok-1"}) as http,
            http.post(dash.address() + "api/cmd", json={"op": "pipeline_ready", "args": {}}) as r,
        ):
            got = await r.json()
        assert not got["success"] and got["ended"] is True, got
        assert got["msg"].startswith("your sign-in has ended ('olga' signed in more"), got
        assert got["me"]["controls"] == [], got


async def test_an_upload_is_no_longer_than_the_scheduler_takes_a_payload_text(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """Found by a security audit: security.md says a payload sent as text has at most
    1,000,000 characters, but the dashboard parsed uploads itself up to the 8 MiB of a
    request (a 7.9 MB file and a payload with a 7 MB string were queued). Every form of
    upload is held to the scheduler's limit, and the refusal names the file and it."""
    url = f"mqtt://127.0.0.1:{broker.port}"
    plain = (
        "version: '2.2'\nuser: {identifier: u}\nsample: {identifier: s1}\nmethod: "
        "[{component_role: counter, technique_name: count, max_duration: 1,"
        " sampling_interval: 0.1}]\n"
    )
    long = plain + "# " + "x" * PAYLOAD_TEXT_MAX + "\n"  # a valid payload, too long
    doc = yaml.safe_load(plain)
    doc["sample"]["description"] = "x" * PAYLOAD_TEXT_MAX
    async with (
        inproc_stack(broker.port, tmp_path / "st", instance),
        running_dashboard(url, instance) as dash,
    ):
        await _controls(dash)
        limit = f"more than a payload may have ({PAYLOAD_TEXT_MAX:,})"
        r = await _cmd(dash, "job_submit", {"text": long, "filename": "big.yml"})
        assert not r["success"] and r["code"] == "refused", r["msg"][:300]
        assert r["msg"].startswith("payload refused: big.yml: 1,000,") and limit in r["msg"]
        for form in ("payload_text", "payload"):
            r = await _cmd(dash, "job_submit", {form: long if form == "payload_text" else doc})
            assert not r["success"] and r["code"] == "refused", r["msg"][:300]
            assert r["msg"].startswith(f"payload refused: {form}: ") and limit in r["msg"]
        r = await _cmd(dash, "job_submit", {"text": plain, "filename": "fine.yml"})
        assert r["success"] and r["data"]["id"] == 1, r  # the first job: none queued before


async def _hello(
    http: aiohttp.ClientSession, dash: DashboardService, key: str | None = None
) -> dict[str, Any]:
    # the key as the page offers it: a second subprotocol
    offered = ("tomato", f"key.{key}") if key else ()
    async with http.ws_connect(dash.address() + "ws", protocols=offered) as ws:
        got: dict[str, Any] = await ws.receive_json(timeout=10)
        assert got["t"] == "hello", got
        return got


async def test_two_dashboards_on_one_pc_keep_their_own_sign_ins(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """Found by a security audit: a browser sends a host's cookies to every port, so a
    sign-in on the dashboard at :23311 replaced the cookie of the one at :23310 and
    signed the user out there, "(the dashboard was restarted since)"."""
    url = f"mqtt://127.0.0.1:{broker.port}"
    jar = aiohttp.CookieJar(unsafe=True)  # cookies of 127.0.0.1, by host as a browser's
    async with (
        inproc_stack(broker.port, tmp_path / "st", instance),
        running_dashboard(url, instance) as one,
        running_dashboard(url, instance) as two,
        aiohttp.ClientSession(cookie_jar=jar) as http,
    ):
        keys = {}
        for dash, user in ((one, "olga"), (two, "otto")):
            await _controls(dash)
            body = {"username": user, "password": "pw"}
            async with http.post(dash.address() + "api/login", json=body) as r:
                said = await r.json()
                assert said["success"], said
                keys[dash.port] = said["key"]
        for dash, user in ((one, "olga"), (two, "otto")):
            hello = await _hello(http, dash, keys[dash.port])
            assert hello["me"]["signed_in"] and hello["me"]["user"] == user, hello["me"]
            assert hello["ended"] is None, hello["ended"]
        key = {"X-Tomato-Key": keys[one.port]}
        async with http.post(one.address() + "api/logout", json={}, headers=key) as r:
            assert r.status == 200
        assert not (await _hello(http, one, keys[one.port]))["me"]["signed_in"]
        # still signed in there
        assert (await _hello(http, two, keys[two.port]))["me"]["user"] == "otto"


async def test_a_dashboard_on_the_network_answers_to_this_pc_s_names_only(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """Found by a security audit: served on 0.0.0.0 over plain HTTP, the dashboard
    answered any Host, so a page of rebind.evil.example (re-pointed at the lab PC) read
    the whole state over the live socket and could try sign-ins. Now only this PC's names
    and addresses and those of ``[dashboard] hosts``; and one served on 127.0.0.2 answers
    to the address it prints (it refused every request)."""
    url = f"mqtt://127.0.0.1:{broker.port}"
    async with (
        inproc_stack(broker.port, tmp_path / "st", instance),
        running_dashboard(url, instance, host="0.0.0.0", hosts=("dash.lab.example",)) as dash,
        aiohttp.ClientSession() as http,
    ):
        base, port = dash.address(), dash.port
        evil = {"Host": f"rebind.evil.example:{port}"}
        async with http.get(base, headers=evil) as r:
            said = await r.text()
            assert r.status == 403 and "'rebind.evil.example:" in said, said
            assert "hosts = [...] under [dashboard]" in said, said
        body = {"username": "olga", "password": "pw"}
        async with http.post(base + "api/login", json=body, headers=evil) as r:
            assert r.status == 403
        try:
            async with http.ws_connect(base + "ws", headers=evil):
                raise AssertionError("/ws answered to rebind.evil.example")
        except aiohttp.WSServerHandshakeError as e:
            assert e.status == 403, e
        own = [socket.gethostname(), socket.getfqdn(), "localhost", "127.0.0.1", "[::1]"]
        for host in [*own, "192.0.2.10", "DASH.lab.example", "dash.lab.example."]:
            async with http.get(base, headers={"Host": f"{host}:{port}"}) as r:
                assert r.status == 200, (host, await r.text())
            async with http.ws_connect(base + "ws", headers={"Host": f"{host}:{port}"}) as ws:
                assert (await ws.receive_json(timeout=10))["t"] == "hello"
    async with running_dashboard(url, instance, host="127.0.0.2") as dash:
        assert dash.address() == f"http://127.0.0.2:{dash.port}/"
        assert not dash.sessions.exposed  # a loopback address: an open stack's controls
        async with aiohttp.ClientSession() as http, http.get(dash.address()) as r:
            assert r.status == 200, await r.text()


def test_dashboard_hosts_setting_takes_names_only() -> None:
    assert DashboardSettings(hosts=["Lab-Dash.example.org."]).hosts == ["lab-dash.example.org"]
    for bad in ("http://lab-dash", "lab-dash:8765", "", ".example.org"):
        with pytest.raises(ValueError, match="not a host name"):
            DashboardSettings(hosts=[bad])


async def test_a_body_larger_than_its_request_may_carry_is_refused_as_it_comes(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """A security round: every POST was read and parsed whole, up to the 8 MiB of a
    payload, before anything was checked: 32 such bodies to the sign-in of a page nobody
    signed in to took the dashboard from 115 to 525 MB. A sign-in, and a control of a
    session that may not submit, carry 64 KiB at most (a submit keeps its 8 MiB:
    test_an_upload_is_no_longer_than_the_scheduler_takes_a_payload_text)."""
    from tomato_mqtt.services.dashboard.web import SMALL_BODY

    url = f"mqtt://127.0.0.1:{broker.port}"
    big = {"username": "x", "password": "y" * SMALL_BODY}
    async with (
        inproc_stack(broker.port, tmp_path / "st", instance),
        running_dashboard(url, instance, read_only=True) as dash,
        aiohttp.ClientSession() as http,
    ):
        assert "job_submit" not in await _controls(dash)
        for path, body in (("api/login", big), ("api/cmd", {"op": "job_submit", "args": big})):
            sized = io.BytesIO(json.dumps(body).encode())  # (its length given)
            async with http.post(dash.address() + path, data=sized) as r:
                assert r.status == 413, (path, r.status)
                assert f"larger than {SMALL_BODY:,} bytes" in await r.text()

            async def chunked(raw: bytes) -> AsyncIterator[bytes]:  # no length: counted
                yield raw

            async with http.post(
                dash.address() + path, data=chunked(json.dumps(body).encode())
            ) as r:
                assert r.status == 413, (path, r.status)
        # a name no login has (tomato user makes 64 characters at most): refused at once,
        # nothing kept of it (a name of 60,000 filled the tables of failed tries)
        async with http.post(dash.address() + "api/login", json={"username": "u" * 60_000}) as r:
            got = await r.json()
            assert r.status == 200 and not got["success"], got
            assert got["msg"].startswith("wrong user name or password for 'uuu"), got["msg"][:200]
        assert not dash.sessions._failures and not dash.sessions._login_failures
        # a small one is answered as before
        async with http.post(dash.address() + "api/cmd", json={"op": "job_submit"}) as r:
            assert r.status == 200 and "read-only" in (await r.json())["msg"]
