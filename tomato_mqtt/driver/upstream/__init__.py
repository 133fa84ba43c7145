"""Upstream tomato driver packages (tomato's ``driverinterface_2_1``) on a node, unchanged.

They run in a venv of their own (:mod:`.env`), one driver-host process per driver
(:mod:`.host`, :mod:`.client`), seen by the node as an ordinary driver
(:mod:`.adapter`) whose tasks are run by the driver's own thread (:mod:`.runner`).
See docs/drivers.md, "Running an existing tomato driver".
"""

from __future__ import annotations

from tomato_mqtt.driver.upstream.adapter import UpstreamDevice, UpstreamDriver
from tomato_mqtt.driver.upstream.env import UpstreamDriverInfo, UpstreamEnv
from tomato_mqtt.driver.upstream.runner import UpstreamRunner

__all__ = [
    "UpstreamDevice",
    "UpstreamDriver",
    "UpstreamDriverInfo",
    "UpstreamEnv",
    "UpstreamRunner",
]
