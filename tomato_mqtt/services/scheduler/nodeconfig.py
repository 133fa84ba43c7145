"""Which components each driver node hosts, and telling the node so (``configure``).

The scheduler owns the layout (devices file); a node learns its components from a
``node/<node>/cmd/configure`` request. It is sent when a node comes online with a new
epoch or with components other than the layout's, after every reconnect of the
scheduler, and after a reload changed the layout; the same configuration is not sent
twice to the same epoch of a node.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tomato_mqtt.transport.rpc import NoResponder
from tomato_mqtt.wire.messages import NodeComponent, NodeConfigure, NodeStatus

if TYPE_CHECKING:
    from tomato_mqtt.services.scheduler.service import SchedulerService

__all__ = ["NodeConfigurator"]

log = logging.getLogger(__name__)


class NodeConfigurator:
    def __init__(self, svc: SchedulerService) -> None:
        self.svc = svc
        #: node -> (epoch, configuration) last sent
        self._sent: dict[str, tuple[int, str]] = {}

    def args(self, node: str) -> NodeConfigure:
        svc = self.svc
        comps = [
            NodeComponent(
                name=c.name,
                device=c.device,
                driver=c.driver,
                address=c.address,
                channel=c.channel,
                pollrate=c.pollrate,
            )
            for c in svc.layout.components_of_node(node)
        ]
        drivers = {c.driver for c in comps}
        return NodeConfigure(
            components=comps,
            driver_settings={d: s for d, s in svc.settings.drivers.items() if d in drivers},
            batch_interval=svc.settings.node.batch_interval,
        )

    def _key(self, node: str) -> str:
        return self.args(node).model_dump_json()

    def on_status(self, st: NodeStatus) -> None:
        """A node's presence: configure it if it is online and not configured as it should."""
        if st.state != "online":
            return
        want = self._key(st.node)
        hosted = {c.name for c in self.svc.layout.components_of_node(st.node)}
        if self._sent.get(st.node) != (st.epoch, want) or set(st.components) != hosted:
            self._sent[st.node] = (st.epoch, want)
            self.svc.spawn(self.configure(st.node))

    async def configure(self, node: str) -> None:
        svc = self.svc
        if svc.requester is None:
            return
        try:
            reply = await svc.requester.request(
                svc.topics.node_cmd(node, "configure"),
                self.args(node),
                who=f"node {node}",
                timeout=10,
            )
            if not reply.success:
                log.warning("configuring node %s failed: %s", node, reply.msg)
        except NoResponder as e:
            log.warning("%s", e)
            self._sent.pop(node, None)

    async def configure_all(self, again: bool = False) -> None:
        """Configure every online node (``again``: also those configured already)."""
        if again:
            self._sent.clear()
        for node, st in self.svc.nodes.items():
            if st.state == "online":
                self._sent[node] = (st.epoch, self._key(node))
                self.svc.spawn(self.configure(node))
