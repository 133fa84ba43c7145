"""What the scheduler checks of an external broker at its start (not of the embedded one,
whose behaviour the tests hold).

tomato-mqtt's state is retained (presence, components, pipelines, jobs) and read by
wildcard subscriptions (``+/status``): the dashboard, ``tomato-mqtt``'s own services
after a restart and any third-party subscriber of the contract (docs/topics.md). MQTT
3.1.1 requires a broker to send the retained message of every topic a new subscription
matches [MQTT-3.3.1-6], but RabbitMQ's MQTT plugin sends none for a filter with a
wildcard (measured on Debian 12's 3.10; its documentation says so of later releases):
jobs run and their files are whole, but a dashboard opened later shows nothing until
each thing changes. Said once, in the scheduler's status (``broker_warnings``) and log,
so that ``tomato start`` and ``tomato status`` say it, not found out in a lab.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from tomato_mqtt.transport.client import Message, MqttError
from tomato_mqtt.waits import wait_for
from tomato_mqtt.wire.messages import encode

if TYPE_CHECKING:
    from tomato_mqtt.services.scheduler.service import SchedulerService

log = logging.getLogger(__name__)

__all__ = ["RETAINED_WAIT", "broker_warnings"]

RETAINED_WAIT = 2.0
"""s a retained message may take to come after the subscription is acknowledged (it
comes with the SUBACK on a broker that sends it: a few ms on loopback)."""


async def broker_warnings(svc: SchedulerService) -> list[str]:
    """What the broker does not do that tomato-mqtt's contract needs; [] when it does it.

    The scheduler's own retained status (published, acknowledged) must come back to a new
    subscription to ``<root>/+/status``, a filter its role may read on every broker."""
    loop = asyncio.get_running_loop()
    mine = svc.topics.scheduler_status()
    filt = f"{svc.topics.root}/+/status"
    came = asyncio.Event()

    def on_message(m: Message) -> None:  # paho's thread
        if m.topic == mine and m.retain:
            loop.call_soon_threadsafe(came.set)

    # judged on one connection only: a broker restarted (or away) meanwhile takes the
    # subscription without acknowledging it, and sent nothing: a compliant broker was
    # blamed for good (a review)
    if not svc.mqtt.is_connected:
        raise MqttError("not connected to the broker")
    connects = svc.mqtt.connects
    await svc.mqtt.publish(mine, encode(svc._presence("online")), retain=True, wait=True)
    await svc.mqtt.subscribe(filt, handler=on_message)
    try:
        with contextlib.suppress(asyncio.TimeoutError):
            await wait_for(came.wait(), RETAINED_WAIT)
    finally:
        with contextlib.suppress(MqttError):
            await svc.mqtt.unsubscribe(filt, handler=on_message)
    if came.is_set():
        return []
    if not svc.mqtt.is_connected or svc.mqtt.connects != connects:
        raise MqttError("the connection to the broker was lost during the check")
    return [
        f"the broker at {svc.url} does not send retained messages to wildcard "
        f"subscriptions (MQTT 3.1.1 [MQTT-3.3.1-6]; RabbitMQ's MQTT plugin does not): "
        "jobs run and their files are whole, but a dashboard or subscriber of "
        f"{svc.topics.root}/… sees no state (services, components, pipelines, jobs) "
        "until it changes; use Mosquitto, EMQX, HiveMQ, Aedes or the embedded broker "
        "(docs/reliability.md)"
    ]
