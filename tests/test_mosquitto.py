"""The same round trips against external brokers: the services must run on any MQTT 3.1.1
broker. Two implementations besides the embedded amqtt: Mosquitto (C, Debian's package)
and Aedes (Node.js, from npm: tests/aedes/).

Mosquitto is started by the ``mosquitto`` fixture on a free port; the tests skip when it
is not installed, and fail instead under CI / TOMATO_REQUIRE_MOSQUITTO. Aedes is
installed by the first test that needs it (``npm ci`` of its pinned version).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import RunningBroker, external_broker, free_port
from tests.test_mqtt import (
    check_last_will,
    check_pubsub,
    check_reconnect,
    check_second_subscription_keeps_qos,
)
from tests.test_rpc import check_duplicate_answered_once, check_no_responder, check_request_reply
from tomato_mqtt.wire.topics import Topics


@pytest.fixture(params=["mosquitto", "aedes"])
async def external(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunningBroker]:
    """Each external broker in turn, on a free port."""
    binary = request.getfixturevalue("mosquitto_path") if request.param == "mosquitto" else ""
    b = external_broker(request.param, free_port(), tmp_path, mosquitto=binary)
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


async def test_publish_subscribe_with_ack(external: RunningBroker, instance: str) -> None:
    await check_pubsub(external, Topics(instance))


async def test_reconnect_resubscribes(external: RunningBroker, instance: str) -> None:
    await check_reconnect(external, Topics(instance))


async def test_last_will_when_process_is_killed(external: RunningBroker, instance: str) -> None:
    await check_last_will(external, Topics(instance))


async def test_request_reply_round_trip(external: RunningBroker, instance: str) -> None:
    await check_request_reply(external, Topics(instance))


async def test_no_responder_names_topic_and_wait(external: RunningBroker, instance: str) -> None:
    await check_no_responder(external, Topics(instance))


async def test_duplicated_request_id_is_answered_once(
    external: RunningBroker, instance: str
) -> None:
    await check_duplicate_answered_once(external, Topics(instance))


async def test_a_second_subscription_to_a_filter_keeps_the_first_one_s_qos(
    external: RunningBroker, instance: str
) -> None:
    await check_second_subscription_keeps_qos(external, Topics(instance))
