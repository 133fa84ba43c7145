"""Components of a lost node (or one stopped) are shown ``lost`` to every subscriber
(issue 14).

A node's last will says the node is lost, but the retained ``component/<c>/status`` of
its components would say ``running`` or ``idle`` for ever. MQTT has one will per
connection, so the node cannot leave one per component; the scheduler, which owns the
layout (which component lives on which node), publishes a retained ``lost`` status for
each of them instead. The broker's ACL lets the scheduler publish on component status
topics for exactly this (``wire/acl.py``); nodes still publish only their own.

When the node comes back, the scheduler asks it to ``rebirth`` (re-publish every
retained topic), so a ``lost`` status that crossed the node's own fresh one on the wire
is overwritten with the truth. Until it answers, no job is launched onto its components
(:attr:`LostComponents.returning`): after a network cut the node's heartbeats reach the
broker at once while the broker's messages to it wait for TCP's next retransmission,
which backed off through the cut (12-15 s after a 16-40 s cut). A job launched then
ended ``ce`` "no node … answered … is it running?" while the node started its task
moments later (a randomized fault run); now it waits ``qw``, saying why, and is launched
once the node answers. It is asked again until it answers or is lost again. A node
this scheduler has not heard answer yet is treated the same (a scheduler started again
right after a cut does not know the node was lost).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from tomato_mqtt.wire.messages import ComponentStatus, NodeStatus
from tomato_mqtt.wire.names import RESTARTING

if TYPE_CHECKING:
    from tomato_mqtt.services.scheduler.service import SchedulerService

__all__ = ["LostComponents"]

log = logging.getLogger(__name__)


class LostComponents:
    def __init__(self, svc: SchedulerService) -> None:
        self.svc = svc
        #: nodes whose components were published lost, and why
        self.marked: dict[str, str] = {}
        #: nodes back from lost, or new to this scheduler, that have not answered since
        #: (see the module): no job is launched onto their components (queue.py) until
        #: they do
        self.returning: set[str] = set()
        #: nodes that answered this scheduler since they were last lost
        self.answered: set[str] = set()
        #: nodes of the layout no status has come from, since when (monotonic): sweep
        self._unseen_since: dict[str, float] = {}
        #: nodes that said they restart, since when (monotonic): sweep
        self._restarting_since: dict[str, float] = {}

    async def node_status(self, st: NodeStatus) -> None:
        if st.state == "lost":
            await self.mark(st.node, "its last will arrived")
        elif st.state == "offline":
            # stopped cleanly: its components' statuses said `idle` for good beside a
            # node `offline` (an integrator's review), while the scheduler counted them
            # lost and jobs waited for them
            if st.restarting:
                self._restarting_since.setdefault(st.node, time.monotonic())
            await self.mark(st.node, RESTARTING if st.restarting else STOPPED)
        elif st.state == "online" and (st.node in self.marked or st.node not in self.answered):
            self._restarting_since.pop(st.node, None)
            # back from lost, or not heard answering by this scheduler yet (one started
            # again just after a cut does not know the node was lost: a fault run)
            self.marked.pop(st.node, None)
            if st.node not in self.returning:
                self.returning.add(st.node)
                self.svc.spawn(self._until_answered(st.node))

    async def sweep(self) -> None:
        """Nodes counted lost by a stale heartbeat (no will: a hung node), and nodes of
        the devices file never heard of for :data:`NOT_SEEN_AFTER` (a dashboard had
        nothing retained of their components, while `tomato status` said "no node": an
        integrator's tour); a node marked so that starts is asked for its rebirth, as
        one back from lost."""
        for name, st in list(self.svc.nodes.items()):
            if st.state == "lost" and name not in self.marked:
                await self.mark(name, "its heartbeat stopped")
        now = time.monotonic()
        for node, since in list(self._restarting_since.items()):
            if now - since >= RESTART_BELIEVED and self.marked.get(node) == RESTARTING:
                # not back: believed "restarting" for good, a passata request waited its
                # whole -t for it (a crash-looping node: a review); now it is stopped
                del self._restarting_since[node]
                self.marked.pop(node, None)
                await self.mark(node, STOPPED)
        unseen = {c.node for c in self.svc.layout.components.values()} - set(self.svc.nodes)
        self._unseen_since = {n: self._unseen_since.get(n, now) for n in unseen}
        for node, since in self._unseen_since.items():
            if now - since >= NOT_SEEN_AFTER and node not in self.marked:
                await self.mark(node, NOT_SEEN)

    def said(self, node: str) -> str | None:
        """Why ``node``'s components are shown lost ("node pc2 is offline (it was
        stopped)"), None while it is not counted away."""
        why = self.marked.get(node)
        return _said(node, why) if why is not None else None

    @staticmethod
    def not_seen(node: str) -> str:
        """What is said of a node no status has come from (shown lost or not yet)."""
        return _said(node, NOT_SEEN)

    async def mark(self, node: str, why: str) -> None:
        self.answered.discard(node)
        if node in self.marked:
            return
        self.marked[node] = why
        comps = self.svc.layout.components_of_node(node)
        log.warning("%s: %d component(s) shown lost", _said(node, why), len(comps))
        for c in comps:
            await self._publish_lost(c.name, node, why)

    async def _publish_lost(self, name: str, node: str, why: str, in_job: bool = True) -> None:
        """``name`` shown lost; ``in_job``: with the job and task it ran (else none)."""
        prev = self.svc.cstatus.get(name)
        msg = ComponentStatus(
            name=name,
            node=node,
            state="lost",
            time=time.time(),
            job=prev.job if prev and in_job else None,
            task=prev.task if prev and in_job else None,
            error=_said(node, why),
            epoch=prev.epoch if prev else 0,
        )
        await self.svc.publish(self.svc.topics.component_status(name), msg)

    async def job_ended(self, components: Iterable[str]) -> None:
        """A job ended while the node of some of its components was lost: their ``lost``
        status no longer names it (every reader showed ``lost, job 5, task 0`` after job 5
        had ended ce, its pipeline free: an outside run)."""
        for name in components:
            c = self.svc.layout.components.get(name)
            if c is not None and c.node in self.marked:
                await self._publish_lost(name, c.node, self.marked[c.node], in_job=False)

    async def _until_answered(self, node: str) -> None:
        """Ask ``node``, back from lost, for a rebirth until it answers (then jobs may be
        launched onto it again) or is lost again (asked again when it is back)."""
        try:
            while node not in self.marked:
                if await self.rebirth(node):
                    self.answered.add(node)
                    log.info("node %s answers: jobs may be launched onto it", node)
                    return
                await asyncio.sleep(0.5)  # (each try waits 10 s for an answer)
        finally:
            self.returning.discard(node)
            self.svc.kick()

    async def rebirth(self, node: str) -> bool:
        """Ask ``node`` to publish all its retained topics again; whether it answered."""
        req = self.svc.requester
        if req is None:
            return False
        try:
            await req.request(self.svc.topics.node_cmd(node, "rebirth"), {}, timeout=10.0)
        except Exception as e:  # the node re-announces on its own reconnect anyway
            log.info("node %s: rebirth after lost not answered: %s", node, e)
            return False
        return True


#: why a node that said ``offline`` is away
STOPPED = "it was stopped"
#: s a node that said it restarts is believed so, then shown stopped (one that crash-loops
#: never comes back to say otherwise)
RESTART_BELIEVED = 60.0
#: why a node no status has come from is away
NOT_SEEN = "not seen"
#: s a node of the devices file may go unheard of (since the scheduler started, or since
#: a reload put it there) before its components are shown lost: a node started with the
#: stack says its status within a second or two, one on another PC may be started later
NOT_SEEN_AFTER = 30.0


def _said(node: str, why: str) -> str:
    """Why ``node``'s components are shown lost: a node stopped cleanly is offline, not
    lost (the log and every component's error read "node pc2 is lost (it was stopped)"
    of a node an admin had stopped: an admin's tour)."""
    if why in (STOPPED, RESTARTING):
        return f"node {node} is offline ({why})"
    if why == NOT_SEEN:  # (as `tomato status components` says it: status.py)
        return (
            f"no status of node {node} has come (since the scheduler started, or a reload "
            "added it): is it started?"
        )
    return f"node {node} is lost ({why})"
