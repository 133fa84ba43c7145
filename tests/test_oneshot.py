"""The CLI's fast path: the same wire envelope as the models, and nothing heavy imported."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import RunningBroker
from tomato_mqtt.config.url import BrokerURL
from tomato_mqtt.transport import oneshot
from tomato_mqtt.transport.client import AsyncClient, Message
from tomato_mqtt.wire.messages import Reply, Request, decode, encode
from tomato_mqtt.wire.topics import Topics


async def test_oneshot_request_is_a_valid_request_and_reads_the_reply(
    broker: RunningBroker, instance: str
) -> None:
    topics = Topics(instance)
    url = BrokerURL.parse(broker.url)
    seen: list[Request] = []
    pending: list[asyncio.Future[None]] = []
    async with AsyncClient(url) as c:

        def answer(msg: Message) -> None:
            req = decode(Request, msg.payload, msg.topic)
            seen.append(req)
            reply = Reply(id=req.id, success=True, msg="hi", data={"echo": req.args})
            pending.append(asyncio.ensure_future(c.publish(req.reply_to, encode(reply))))

        await c.subscribe(topics.scheduler_cmd("echo"), handler=answer)
        rep = await asyncio.to_thread(
            oneshot.request,
            url,
            topics.scheduler_cmd("echo"),
            topics.reply,
            {"x": [1, "a"]},
            timeout=5,
        )
    assert rep.success and rep.msg == "hi" and rep.data == {"echo": {"x": [1, "a"]}}
    assert seen[0].reply_to.startswith(topics.root + "/reply/anonymous/cli-")


async def test_oneshot_no_answer_names_topic_and_wait(broker: RunningBroker, instance: str) -> None:
    topic = Topics(instance).scheduler_cmd("status")
    with pytest.raises(oneshot.NoAnswer, match=rf"no scheduler answered on {topic} within 0.3 s"):
        await asyncio.to_thread(
            oneshot.request,
            BrokerURL.parse(broker.url),
            topic,
            Topics(instance).reply,
            timeout=0.3,
            who="scheduler",
        )


@pytest.mark.parametrize("answers", [True, False])
async def test_an_unanswered_request_asks_whoami_before_its_timeout_ends(
    broker: RunningBroker, instance: str, answers: bool
) -> None:
    """A login's request the broker's rules dropped is only ever unanswered: the exchange
    asks ``whoami`` meanwhile, 2 s (at most half the timeout) before it ends, and the
    NoAnswer carries its answer, so the CLI says why within its ``-t``. It was asked
    after the timeout: a login that may not ask it either (a node's) waited 2 s more."""
    import time

    topics = Topics(instance)
    url = BrokerURL.parse(broker.url)
    asked: list[float] = []
    pending: list[asyncio.Future[None]] = []
    async with AsyncClient(url) as c:

        def whoami(msg: Message) -> None:
            asked.append(time.monotonic())
            req = decode(Request, msg.payload, msg.topic)
            reply = Reply(id=req.id, success=True, msg="you", data={"role": "reader"})
            pending.append(asyncio.ensure_future(c.publish(req.reply_to, encode(reply))))

        if answers:
            await c.subscribe(topics.scheduler_cmd("whoami"), handler=whoami)

        second: list[oneshot.NoAnswer] = []

        def call() -> oneshot.NoAnswer:
            with oneshot.Exchange(
                url, topics.reply, timeout=3, whoami=topics.scheduler_cmd("whoami")
            ) as ex:
                with pytest.raises(oneshot.NoAnswer) as e:
                    ex.request(topics.scheduler_cmd("stop"), {}, timeout=3, who="scheduler")
                elapsed.append(time.monotonic() - t0)
                # a second request of the exchange (passata: a name, then its op) takes
                # the answer whoami gave: asked once
                with pytest.raises(oneshot.NoAnswer) as e2:
                    ex.request(topics.scheduler_cmd("reload"), {}, timeout=0.5)
                second.append(e2.value)
                return e.value

        elapsed: list[float] = []
        t0 = time.monotonic()
        e = await asyncio.to_thread(call)
        took = elapsed[0]
    assert e.topic == topics.scheduler_cmd("stop") and "within 3 s" in str(e)
    assert e.asked
    assert 2.9 < took < 4.0, took  # the request's timeout, and no whoami after it
    assert second[0].asked and second[0].me == e.me
    if answers:
        assert e.me is not None and e.me.data == {"role": "reader"}
        assert len(asked) == 1 and 1.3 < asked[0] - t0 < 2.9, [a - t0 for a in asked]
    else:
        assert e.me is None and not asked


def test_oneshot_unreachable_broker_is_a_clear_error() -> None:
    from tests.stack import free_port

    url = BrokerURL(port=free_port())
    with pytest.raises(oneshot.OneShotError, match=f"cannot connect to the MQTT broker at {url}"):
        oneshot.request(url, "t/x", lambda c: f"t/reply/{c}", timeout=1)


def test_cli_status_path_imports_nothing_heavy(tmp_path: Path) -> None:
    """`ketchup status` and `tomato status` must stay fast: no pydantic, asyncio, pint…"""
    (tmp_path / "settings.toml").write_text("")  # an app folder, as -A names one
    code = (
        "import sys\n"
        "from tomato_mqtt.cli import {mod}\n"
        "sys.argv = ['x', 'status', '-A', {app!r}, '-p', '1', '--timeout', '0.1']\n"
        "try:\n"
        "    {mod}.main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('pydantic', 'asyncio', 'pint', 'xarray', 'numpy', 'pandas', 'amqtt',\n"
        "         'dgbowl_schemas', 'yaml')\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    for mod in ("ketchup", "tomato"):
        res = subprocess.run(
            [sys.executable, "-c", code.format(mod=mod, app=str(tmp_path))],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.stdout.strip() == "[]", (mod, res.stdout, res.stderr)
        assert "cannot connect" in res.stderr  # it did try, on the fast path


def test_fast_settings_read_knows_every_mqtt_field_and_agrees_with_the_loader(
    tmp_path: Path,
) -> None:
    """The CLI's pydantic-free read of [mqtt] must not drift from the validating loader."""
    from tomato_mqtt.cli import common, fastsettings
    from tomato_mqtt.config.settings import MqttSettings

    assert set(fastsettings.MQTT_KEYS) == set(MqttSettings.model_fields)
    (tmp_path / "settings.toml").write_text('[mqtt]\nport = 2883\ninstance = "lab1"\n')
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "settings.toml").write_text("")  # the defaults, in both readers
    for appdir in (tmp_path, tmp_path / "empty"):
        ctx = common.context(appdir=appdir)
        full = ctx.settings.mqtt
        assert (ctx.url.host, ctx.url.port, ctx.instance) == (full.host, full.port, full.instance)


def test_a_submit_s_refusal_names_the_file_only_when_the_payload_was_refused() -> None:
    """The scheduler cannot know the file a payload came from: ketchup and the client
    name it in a payload's refusal, and leave any other refusal (the state not stored,
    say) as the scheduler said it (a review: "x.yml: the scheduler could not …")."""
    said = oneshot.payload_refused("x.yml", "payload refused: method[0].time: must be > 0")
    assert said == "payload refused: x.yml: method[0].time: must be > 0"
    other = "the job could not be stored: disk full"
    assert oneshot.payload_refused("x.yml", other) == other
