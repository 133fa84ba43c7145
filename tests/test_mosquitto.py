"""The same round trips against Mosquitto: the services must run on any MQTT 3.1.1 broker.

Mosquitto (Debian package) is started by the ``mosquitto`` fixture on a free port; the
tests skip when it is not installed, and fail instead under CI / TOMATO_REQUIRE_MOSQUITTO.
"""

from __future__ import annotations

from tests.conftest import RunningBroker
from tests.test_mqtt import (
    check_last_will,
    check_pubsub,
    check_reconnect,
    check_second_subscription_keeps_qos,
)
from tests.test_rpc import check_duplicate_answered_once, check_no_responder, check_request_reply
from tomato_mqtt.wire.topics import Topics


async def test_publish_subscribe_with_ack(mosquitto: RunningBroker, instance: str) -> None:
    await check_pubsub(mosquitto, Topics(instance))


async def test_reconnect_resubscribes(mosquitto: RunningBroker, instance: str) -> None:
    await check_reconnect(mosquitto, Topics(instance))


async def test_last_will_when_process_is_killed(mosquitto: RunningBroker, instance: str) -> None:
    await check_last_will(mosquitto, Topics(instance))


async def test_request_reply_round_trip(mosquitto: RunningBroker, instance: str) -> None:
    await check_request_reply(mosquitto, Topics(instance))


async def test_no_responder_names_topic_and_wait(mosquitto: RunningBroker, instance: str) -> None:
    await check_no_responder(mosquitto, Topics(instance))


async def test_duplicated_request_id_is_answered_once(
    mosquitto: RunningBroker, instance: str
) -> None:
    await check_duplicate_answered_once(mosquitto, Topics(instance))


async def test_a_second_subscription_to_a_filter_keeps_the_first_one_s_qos(
    mosquitto: RunningBroker, instance: str
) -> None:
    await check_second_subscription_keeps_qos(mosquitto, Topics(instance))
