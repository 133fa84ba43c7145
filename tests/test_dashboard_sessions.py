"""The dashboard's sign-in sessions (found by a security review: they never expired,
50 sign-ins by one reader locked everyone out, wrong passwords were not slowed down).

The policies are checked on the session table itself; signing in for real (a broker,
a scheduler's whoami) is in tests/test_dashboard.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.browser import running_dashboard
from tests.inproc import running
from tests.security_env import USERS, SecureBroker, scheduler_settings, secured
from tests.stack import free_port
from tomato_mqtt.config.url import BrokerURL
from tomato_mqtt.services.dashboard.sessions import LoginFailed, Session, Sessions
from tomato_mqtt.services.scheduler.service import SchedulerService
from tomato_mqtt.wire.topics import Topics


def _sessions() -> Sessions:
    # nobody listens on this port: a real sign-in fails at once ("did not accept")
    return Sessions(BrokerURL.parse(f"mqtt://127.0.0.1:{free_port()}"), "lab", read_only=False)


def _held(ss: Sessions, user: str, n: int, used: float | None = None) -> list[Session]:
    out = []
    for i in range(n):
        s = Session(f"{user}-{i}", user, None, Topics("lab", user), key=f"k-{user}-{i}")  # type: ignore[arg-type]
        s.used = time.monotonic() - n + i if used is None else used
        ss._by_token[s.token] = s
        out.append(s)
    return out


async def test_wrong_passwords_make_the_next_tries_wait() -> None:
    ss = _sessions()
    for _ in range(Sessions.FREE_FAILURES):
        with pytest.raises(LoginFailed, match="did not accept"):
            await ss.sign_in("olga", "wrong")
    with pytest.raises(LoginFailed, match="failed sign-ins for 'olga' in a row: try again"):
        await ss.sign_in("olga", "right-but-too-soon")
    with pytest.raises(LoginFailed, match="did not accept"):  # another login: not held up
        await ss.sign_in("otto", "x")


async def test_wrong_passwords_from_one_address_do_not_keep_the_user_out() -> None:
    """A hostile tour: three wrong passwords a minute for otto, from anyone who reached
    the page, kept otto himself out (his right password: "try again in 3 s"). The wait
    is per client address; a login's guesses from every address together slow down only
    after FREE_FAILURES_PER_LOGIN."""
    ss = _sessions()
    for _ in range(Sessions.FREE_FAILURES):
        with pytest.raises(LoginFailed, match="did not accept"):
            await ss.sign_in("otto", "wrong", peer="192.0.2.66")
    with pytest.raises(LoginFailed, match="failed sign-ins for 'otto' in a row: try again"):
        await ss.sign_in("otto", "wrong", peer="192.0.2.66")
    # otto, from his own PC: his try reaches the broker (here: none there)
    with pytest.raises(LoginFailed, match="did not accept"):
        await ss.sign_in("otto", "right", peer="192.0.2.10")
    # one address, however patient (each wait let pass), counts no more for the login
    # once it is slowed down (60 from it kept otto out for good: a review)
    for _ in range(60):
        count, last = ss._failures["otto@192.0.2.66"]
        ss._failures["otto@192.0.2.66"] = (count, last - 100)
        with contextlib.suppress(LoginFailed):
            await ss.sign_in("otto", "wrong", peer="192.0.2.66")
    with pytest.raises(LoginFailed, match="did not accept"):
        await ss.sign_in("otto", "right", peer="192.0.2.10")
    # guesses from many addresses: held up once they add up for the login
    for i in range(Sessions.FREE_FAILURES_PER_LOGIN):
        ss._failures.pop(f"otto@192.0.2.{100 + i}", None)
        with contextlib.suppress(LoginFailed):
            await ss.sign_in("otto", "wrong", peer=f"192.0.2.{100 + i}")
    with pytest.raises(LoginFailed, match="try again in"):
        await ss.sign_in("otto", "wrong", peer="192.0.2.250")


async def test_guesses_from_many_addresses_do_not_keep_a_user_out_of_their_own(
    tmp_path: Path, instance: str
) -> None:
    """A hostile tour: wrong passwords for ada from 17 addresses, then one each time the
    wait lapsed, kept ada out (her right password refused 40 of 40 times: "55 failed
    sign-ins for 'ada' in a row"). An address the login signed in from is not held by
    the login's own wait; the others still are."""
    async with (
        secured("amqtt", tmp_path / "b", instance) as b,
        running(SchedulerService(scheduler_settings(b, tmp_path))),
    ):
        ss = Sessions(BrokerURL.parse(b.url()), instance, read_only=False)
        pw = USERS["olga"][0]
        s = await ss.sign_in("olga", pw, peer="192.0.2.10")  # her own PC, earlier
        ss.end(s, "signed out")
        for i in range(Sessions.FREE_FAILURES_PER_LOGIN + 5):  # guesses from elsewhere
            with contextlib.suppress(LoginFailed):
                await ss.sign_in("olga", "wrong", peer=f"192.0.2.{100 + i}")
        with pytest.raises(LoginFailed, match="try again in"):
            await ss.sign_in("olga", pw, peer="192.0.2.251")  # a new address: held
        again = await ss.sign_in("olga", pw, peer="192.0.2.10")  # hers: signed in
        assert again.user == "olga"
        ss.end(again, "signed out")


async def test_tries_sent_at_once_do_not_pass_the_wait_together(
    tmp_path: Path, instance: str
) -> None:
    """Found by a security audit: after 3 wrong passwords a 4th try waited 2 s, but once
    the wait had passed, 20 tries sent at once all reached the broker's password check
    (each was checked before any had failed). Counted from their start, one goes."""
    async with secured("amqtt", tmp_path, instance) as b:
        ss = Sessions(BrokerURL.parse(b.url()), instance, read_only=False)
        for _ in range(Sessions.FREE_FAILURES):
            with pytest.raises(LoginFailed, match="wrong user name or password"):
                await ss.sign_in("olga", "wrong")
        count, last = ss._failures["olga"]
        ss._failures["olga"] = (count, last - 60)  # the wait has passed
        tries = [ss.sign_in("olga", f"guess-{i}") for i in range(20)]
        said = [str(e) for e in await asyncio.gather(*tries, return_exceptions=True)]
        checked = [m for m in said if "wrong user name or password" in m]
        assert len(checked) == 1, said
        assert all("try again in" in m for m in said if m not in checked), said
        # many logins tried at once from one address: a few at a time reach the broker
        tries = [ss.sign_in(f"guess{i}", "x", peer="192.0.2.7") for i in range(20)]
        said = [str(e) for e in await asyncio.gather(*tries, return_exceptions=True)]
        checked = [m for m in said if "wrong user name or password" in m]
        assert len(checked) == Sessions.MAX_IN_FLIGHT_PER_PEER, said
        assert all("under way" in m for m in said if m not in checked), said
        assert not ss._in_flight  # and nothing left counted once they are done
        with pytest.raises(LoginFailed, match="wrong user name or password"):
            await ss.sign_in("ada", "wrong", peer="192.0.2.7")


async def test_a_login_holds_a_few_sessions_and_idle_ones_end() -> None:
    ss = _sessions()
    rita = _held(ss, "rita", 8)
    olga = _held(ss, "olga", 1)
    with pytest.raises(LoginFailed):  # the broker is not there; the table is tidied first
        await ss.sign_in("rita", "pw")
    left = [s for s in ss._by_token.values() if s.user == "rita"]
    assert len(left) == Sessions.MAX_PER_USER - 1  # room for the new one
    assert {s.token for s in left} == {s.token for s in rita[-len(left) :]}  # newest kept
    assert ss.get(olga[0].token, olga[0].key) is olga[0]  # another login's: untouched
    # the cookie alone (any server on this PC may have received it) is no one's, and does
    # not keep the session alive
    used = olga[0].used
    for key in (None, "", "k-olga-1", olga[0].key + "x", "k-olgé-0"):
        assert ss.get(olga[0].token, key) is ss.shared, key
    assert olga[0].used == used
    stale: Any = olga[0]
    stale.used = time.monotonic() - Sessions.IDLE - 1
    assert ss.get(olga[0].token, olga[0].key) is ss.shared  # idle too long: signed out
    assert olga[0].token not in ss._by_token


async def test_a_page_whose_sign_in_ended_is_told_why() -> None:
    """A cookie that no longer signs anyone in was shown the shared read-only view
    without a word (a user's audit: a restarted dashboard 'signed everyone out')."""
    ss = _sessions()
    rita = _held(ss, "rita", 8)
    olga = _held(ss, "olga", 1)
    assert ss.ended(None) is None and ss.ended(olga[0].token) is None  # none / still on
    with pytest.raises(LoginFailed):
        await ss.sign_in("rita", "pw")  # her oldest sessions make room
    said = ss.ended(rita[0].token) or ""
    assert "sign-in has ended" in said and "signed in more than" in said, said
    stale: Any = olga[0]
    stale.used = time.monotonic() - Sessions.IDLE - 1
    ss.get(olga[0].token, olga[0].key)
    assert "12 h without use" in (ss.ended(olga[0].token) or "")
    # a token of a dashboard that ran before on this port: said so
    said = ss.ended(_sessions().new_token()) or ""
    assert "sign-in has ended (the dashboard was restarted since)" in said, said
    # one it cannot place: no restart claimed (it was said for any cookie: a security
    # audit, a sign-in on another port's dashboard); one signed out: said so
    assert ss.ended("from-elsewhere") == "your sign-in has ended; sign in again"
    await ss.sign_out(rita[-1].token, None)  # the cookie alone signs no one out
    assert ss.ended(rita[-1].token) is None
    await ss.sign_out(rita[-1].token, rita[-1].key)
    assert ss.ended(rita[-1].token) == "your sign-in has ended (signed out): sign in again"


def _scheduler(b: SecureBroker, root: Path) -> SchedulerService:
    """A scheduler with its own login on the secured broker ``b``."""
    return SchedulerService(scheduler_settings(b, root))


async def test_a_node_login_is_told_its_role_cannot_use_the_dashboard(
    tmp_path: Path, instance: str
) -> None:
    """A node's login (role node:pc1) with its right password was told "no scheduler
    answered whoami: is it running?" while the scheduler ran (a node may not ask it)."""
    async with (
        secured("amqtt", tmp_path / "b", instance) as b,
        running(_scheduler(b, tmp_path)),
        running_dashboard(b.url("dash"), instance) as dash,
        aiohttp.ClientSession() as http,
    ):
        for user, password in (("pc1", "pw-pc1"), ("rita", "pw-rita")):
            async with http.post(
                dash.address() + "api/login", json={"username": user, "password": password}
            ) as r:
                got = await r.json()
            if user == "pc1":
                assert not got["success"], got
                assert "'pc1' cannot use the dashboard: its role" in got["msg"], got
            else:  # a person's login: signed in
                assert got["success"] and got["me"]["role"] == "reader", got
        # a control without a session: "not signed in" (it named the dashboard's own
        # login's role, reader: a hostile tour)
        body = {"op": "job_cancel", "args": {"jobids": [1]}}
        async with http.post(dash.address() + "api/cmd", json=body) as r:
            got = await r.json()
        assert got["code"] == "not_allowed" and got["msg"].startswith("not signed in"), got


async def test_a_sign_in_ends_when_its_login_s_password_changes(
    tmp_path: Path, instance: str
) -> None:
    """A hostile tour: after `tomato user passwd otto` the dashboard's sign-in of otto
    went on ejecting samples, and after `tomato user remove` its controls timed out "no
    scheduler answered … is it running?". The broker ends the connection of a login that
    changed; the next control ends the sign-in, saying why."""
    got = await _control_after(
        tmp_path, instance, lambda b: b.users.set_password("olga", "a-new-password-1")
    )
    assert got["msg"] == (
        "your sign-in has ended (the broker no longer takes this login: its password was "
        "changed or the user removed): sign in again"
    ), got


@pytest.mark.parametrize("how", ["passwd-to-the-same", "remove-and-add-again"])
async def test_a_sign_in_ends_when_its_login_is_set_again_with_the_same_password(
    tmp_path: Path, instance: str, how: str
) -> None:
    """A security tour: an admin who removes and adds a user again (or sets the same
    password again) to cut off a stolen sign-in left it signed in: its connection,
    closed by the broker, reconnected with the password it had. The broker closed this
    login's connection alone (the dashboard's own stayed): the sign-in ends."""
    same = USERS["olga"][0]

    def change(b: Any) -> None:
        if how == "passwd-to-the-same":
            b.users.set_password("olga", same)
        else:
            b.users.remove("olga")
            b.users.add("olga", same, "operator")

    got = await _control_after(tmp_path, instance, change)
    assert got["msg"] == (
        "your sign-in has ended (the broker closed this login's connection: its password "
        "was set again, or the user removed (and maybe added again)): sign in again"
    ), got


async def test_a_sign_in_outlives_a_broker_restart(tmp_path: Path, instance: str) -> None:
    """A dashboard tour: the broker killed and restarted (0.2 s under its supervisor)
    cut every signed-in user's connection for good; their pages still showed their
    controls, a download waited 60 s for "no scheduler answered", the job page's fetch
    failed every 10 s. The session's connection comes back by itself; a control while
    it is away says so at once."""
    from tomato_mqtt_broker import EmbeddedBroker

    async with _olga_signed_in(tmp_path, instance) as (b, dash, http, key):
        cmd = {"op": "pipeline_ready", "args": {"pipeline": "pip-counter-1"}}
        assert b._broker is not None
        config = b._broker.config
        await b._broker.stop()  # the broker gone: a control says the connection is away
        b._broker = None
        async with http.post(dash.address() + "api/cmd", json=cmd, headers=key) as r:
            away = await r.json()
        async with http.get(dash.address() + "api/job/1/download", headers=key) as r:
            download = r.status, await r.text()
        b._broker = EmbeddedBroker(config)  # and back
        await b._broker.start()
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            async with http.post(dash.address() + "api/cmd", json=cmd, headers=key) as r:
                got = await r.json()
            if got.get("code") != "unavailable" or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.5)
    reconnecting = (
        "your connection to the broker is being restored (the broker restarted?): try "
        "again in a moment"
    )
    assert (away["code"], away["msg"]) == ("unavailable", reconnecting), away
    assert download == (503, reconnecting), download
    # olga's own answer, as olga: signed in still (pip-counter-1 holds no sample)
    assert got["code"] != "unavailable" and "sign-in has ended" not in got["msg"], got
    assert "pip-counter-1" in got["msg"], got


async def test_driver_settings_are_an_admin_s_to_read(tmp_path: Path, instance: str) -> None:
    """A hostile tour: any reader (and the dashboard's own login) read the driver
    settings of `tomato status drivers`, an instrument's password among them, which
    cli.md keeps out of `tomato status` because settings may hold credentials."""
    from tests.security_env import scheduler_settings
    from tomato_mqtt.transport.client import AsyncClient
    from tomato_mqtt.transport.rpc import Requester

    extra = '[drivers.example_counter]\napi_password = "SECRET-DRIVER-PW"\n'
    async with (
        secured("amqtt", tmp_path / "b", instance) as b,
        running(SchedulerService(scheduler_settings(b, tmp_path, extra))),
    ):
        seen = {}
        for user in ("rita", "olga", "ada"):
            async with AsyncClient(b.url(user), client_id=f"{user}-{instance}") as c:
                topics = Topics(instance, user)
                req = Requester(c, topics)
                await req.start()
                reply = await req.request(
                    topics.scheduler_cmd("status"), {"what": "drivers"}, timeout=10
                )
                assert reply.success, reply
                seen[user] = reply.data["example_counter"]["settings"]  # type: ignore[index]
                # the default section's `drvs` too (a review: `tomato status --json`)
                reply = await req.request(topics.scheduler_cmd("status"), {}, timeout=10)
                drvs = reply.data["drvs"]  # type: ignore[index]
                assert drvs["example_counter"]["settings"] == seen[user], (user, drvs)
        hidden = {"api_password": "(hidden: admins only)"}
        assert seen == {"rita": hidden, "olga": hidden, "ada": {"api_password": "SECRET-DRIVER-PW"}}


async def test_a_phone_sees_the_whole_page_and_a_stale_one_is_said(
    tmp_path: Path, instance: str
) -> None:
    """A dashboard tour at a phone's width (390 px): the page was 861 px wide, the
    sign-in off-screen to the right, words broken mid-word ("onli / ne"); and once the
    stack went quiet its services stayed green "online". The page fits the width, and a
    page that is not live is greyed under a line saying as of when."""
    from tests.browser import chromium_page
    from tests.security_env import stop

    b_dir = tmp_path / "b"
    async with (
        secured("amqtt", b_dir, instance) as b,
        running(_scheduler(b, tmp_path)),
        running_dashboard(b.url("dash"), instance, lost_after=2.0) as dash,
        chromium_page(width=390, height=844) as (_, page),
    ):
        await page.goto(dash.address())
        await page.wait_for_function(
            "() => document.getElementById('conn').textContent === 'live'", timeout=15_000
        )
        await page.locator("#login-pass").wait_for(state="visible", timeout=5_000)
        wide = await page.evaluate("() => document.documentElement.scrollWidth")
        assert wide <= 390, wide
        box = await page.locator("#login button").bounding_box()
        assert box is not None and box["x"] + box["width"] <= 390, box
        state = page.locator("#presence td", has_text="online").first
        assert await state.evaluate("td => td.scrollWidth <= td.clientWidth + 1")
        await stop(b)  # the stack goes quiet: nothing comes any more
        await page.wait_for_function(
            "() => document.body.classList.contains('stale')", timeout=15_000
        )
        said = await page.evaluate("() => getComputedStyle(document.body, '::before').content")
        assert "the page shows the stack as it was at" in said, said
        conn = await page.text_content("#conn")
        # (the dashboard lost the broker: said at once, before the services' silence)
        assert conn is not None and conn.startswith("not live · "), conn


async def test_a_page_says_at_once_that_the_dashboard_lost_the_broker(
    tmp_path: Path, instance: str
) -> None:
    """A dashboard tour: after `tomato stop` the pill said "live" for 10 s more (until
    every service had been silent for lost_after), the controls waiting 15 s each, while
    the dashboard had lost the broker at once. The page says so within a second or two,
    greyed as of the stack's last word."""
    from tests.browser import chromium_page
    from tests.security_env import stop

    async with (
        secured("amqtt", tmp_path / "b", instance) as b,
        running(_scheduler(b, tmp_path)),
        running_dashboard(b.url("dash"), instance, lost_after=60.0) as dash,
        chromium_page() as (_, page),
    ):
        await page.goto(dash.address())
        await page.wait_for_function(
            "() => document.getElementById('conn').textContent === 'live'", timeout=15_000
        )
        t0 = asyncio.get_running_loop().time()
        await stop(b)
        await page.wait_for_function(
            "() => document.getElementById('conn').textContent.includes('lost the broker')",
            timeout=10_000,
        )
        assert asyncio.get_running_loop().time() - t0 < 10  # not lost_after (60 s)
        assert await page.evaluate("() => document.body.classList.contains('stale')")


async def test_a_sign_in_whose_role_was_lowered_is_told_so(
    tmp_path: Path, instance: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hostile tour's check: an operator lowered to reader kept the dashboard's
    sign-in, and its controls (dropped by the broker) waited 15 s for "no scheduler
    answered … is it running?". The sign-in ends, saying the role changed."""
    from tomato_mqtt.services.dashboard import web

    monkeypatch.setattr(web, "SCHEDULER_TIMEOUT", 2.0)
    got = await _control_after(tmp_path, instance, lambda b: b.users.set_role("olga", "reader"))
    assert got["msg"] == (
        "your sign-in has ended (the role of 'olga' changed to reader): sign in again"
    ), got


async def test_a_download_whose_role_was_lowered_is_told_so_at_once(
    tmp_path: Path, instance: str
) -> None:
    """A hostile tour: olga's download after she was lowered to reader waited 60 s and
    answered 503 "no scheduler answered … is it running?" (her sign-in kept). It is
    refused at once, her sign-in ended, saying the role changed."""
    t0 = asyncio.get_running_loop().time()
    status, text = await _control_after(
        tmp_path, instance, lambda b: b.users.set_role("olga", "reader"), download=True
    )
    took = asyncio.get_running_loop().time() - t0
    assert status == 403, (status, text)
    assert text == "your sign-in has ended (the role of 'olga' changed to reader): sign in again"
    assert took < 30, took  # (the stack's start and the 2 s for the broker included)
    # a role raised goes on, as a control does (no job 1 here: not found, not "ended")
    status, text = await _control_after(
        tmp_path / "raised", instance, lambda b: b.users.set_role("olga", "admin"), download=True
    )
    assert status == 404 and "ended" not in text, (status, text)


@contextlib.asynccontextmanager
async def _olga_signed_in(
    tmp_path: Path, instance: str
) -> AsyncIterator[tuple[Any, Any, Any, dict[str, str]]]:
    """A secured stack (amqtt, its scheduler), its dashboard, and olga signed in to it
    over HTTP: yields the broker, the dashboard, the HTTP session and her key header."""
    jar = aiohttp.CookieJar(unsafe=True)
    async with (
        secured("amqtt", tmp_path / "b", instance) as b,
        running(_scheduler(b, tmp_path)),
        running_dashboard(b.url("dash"), instance) as dash,
        aiohttp.ClientSession(cookie_jar=jar) as http,
    ):
        body = {"username": "olga", "password": USERS["olga"][0]}
        async with http.post(dash.address() + "api/login", json=body) as r:
            said = await r.json()
        assert said["success"], said
        yield b, dash, http, {"X-Tomato-Key": said["key"]}


async def _control_after(tmp_path: Path, instance: str, change: Any, download: bool = False) -> Any:
    """olga signed in to a dashboard of a secured stack, ``change(broker)`` made to the
    users file, then a control of hers: its answer (a download: its status and text)."""
    async with _olga_signed_in(tmp_path, instance) as (b, dash, http, key):
        change(b)
        b.users.save()
        await asyncio.sleep(2.0)  # the broker looks at the users file every 0.5 s
        if download:
            async with http.get(dash.address() + "api/job/1/download", headers=key) as r:
                return r.status, await r.text()
        cmd = {"op": "pipeline_ready", "args": {"pipeline": "pip-counter-1"}}
        async with http.post(dash.address() + "api/cmd", json=cmd, headers=key) as r:
            return await r.json()
