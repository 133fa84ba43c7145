"""Tasks that outlived their job: stopped, so that the next job can have the component.

A job whose node is lost for longer than ``node_grace_period`` ends ``ce``; its end
cannot reset the components (the node does not answer). A node that was only frozen
(SIGSTOP, a suspended VM, a network cut) comes back with the task still running, and
the job queued next on that pipeline was launched onto it: the node refused its first
task as "busy" and the job ended ``ce`` with no points (found by an outside admin).

Now the queue does not launch onto a component whose node says it runs a task
(``QueuePass._occupied``: the job waits, saying for what), and this module has such a
task stopped when its job is over: the component is reset (``force``: the task stops
with ``reset``, its points so far are merged into the ended job's file as late data),
as the job's own end would have done. So is a task of a job the state file does not
know (one restored from a backup): no job of this scheduler can be running it.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from tomato_mqtt.model.jobs import DONE_STATUSES, UnknownName
from tomato_mqtt.transport.rpc import NoResponder
from tomato_mqtt.wire.messages import ComponentStatus

if TYPE_CHECKING:
    from tomato_mqtt.services.scheduler.service import SchedulerService

__all__ = ["ASK_AGAIN", "UNKNOWN_GRACE", "StaleTasks"]

log = logging.getLogger(__name__)

#: s before a component still running the same stale task is asked again
ASK_AGAIN = 10.0
#: s a registered component of an online node may stay without a known state before
#: its node is asked for it (stale.unknown)
UNKNOWN_GRACE = 2.0


class StaleTasks:
    def __init__(self, svc: SchedulerService) -> None:
        self.svc = svc
        # component -> (job, task, epoch) last asked to stop, and when
        self._asked: dict[str, tuple[tuple[int, int | None, int], float]] = {}
        #: component -> the ended job whose stale task it is being reset after: no job is
        #: launched onto it until the reset is over (its task ends before the reset does)
        self.resetting: dict[str, int] = {}
        self._asked_rebirth: dict[str, float] = {}  # node -> when last asked (unknown())
        self._unknown_since: dict[str, float] = {}  # node -> since when (unknown())

    def seen(self, st: ComponentStatus) -> None:
        """A component's status: when it runs a task of a job that is over, stop it."""
        if st.state != "running" or st.job is None:
            self._asked.pop(st.name, None)
            return
        svc = self.svc
        if st.job in svc.runners or svc.store is None:
            return  # its job runs (or is re-adopted): its runner owns the task
        key = (st.job, st.task, st.epoch)
        last = self._asked.get(st.name)
        if last is not None and last[0] == key and time.monotonic() - last[1] < ASK_AGAIN:
            return
        try:
            status = svc.store.job(st.job).status
        except UnknownName:
            # not in this state file (restored from a backup, or removed): no job of
            # this scheduler runs it (a launch is stored before its task is sent), and
            # it held the pipeline until the task ended (found by a review)
            ended = "this scheduler's state file does not know (restored or removed)"
        except Exception as e:  # a state file that cannot be read now: asked again later
            log.debug("component %s: job %d's status unreadable: %s", st.name, st.job, e)
            return
        else:
            if status not in DONE_STATUSES:
                return
            ended = f"ended {status} (its node was lost or did not answer at the job's end)"
        self._asked[st.name] = (key, time.monotonic())
        log.warning(
            "component %s still runs task %s of job %d, which %s: stopping it and "
            "resetting the component, as the job's end would have",
            st.name,
            st.task,
            st.job,
            ended,
        )
        svc.spawn(self._reset(st.name, st.job))

    def unknown(self, nodes: set[str]) -> None:
        """``nodes`` (online) have registered components whose state the scheduler does
        not know: a scheduler started while a node was lost has only its own ``lost``
        status of them, and a node that comes back before it is counted lost again says
        nothing new until something changes (a stale task then held the pipeline until
        it ended, a minute: found by a review). A node whose components stay unknown for
        UNKNOWN_GRACE s (not the moment between a registration's meta and status) is
        asked to say everything again (``rebirth``), at most every ASK_AGAIN s."""
        now = time.monotonic()
        for node in list(self._unknown_since):
            if node not in nodes:
                del self._unknown_since[node]
        for node in nodes:
            since = self._unknown_since.setdefault(node, now)
            last = self._asked_rebirth.get(node)
            if now - since < UNKNOWN_GRACE or (last is not None and now - last < ASK_AGAIN):
                continue
            log.log(
                logging.DEBUG if last is not None else logging.INFO,
                "node %s: asking it for its components' state (not known here)",
                node,
            )
            self._asked_rebirth[node] = now
            self.svc.spawn(self.svc.lost.rebirth(node))

    async def _reset(self, component: str, job: int) -> None:
        """Reset ``component`` if job ``job``'s task is still the one it runs (or the
        last it ran): a status of the job that came late (a Mosquitto that kept its
        retained messages on disk, killed and started again, restored a status of 15
        minutes before) made the scheduler stop the task of the job running since, which
        ended ``ce`` "stopped before its end: reset" (a fault round)."""
        self.resetting[component] = job
        try:
            ok, msg, code = await self._ask_reset(component, {"force": True, "job": job})
            if code == "bad_request" and "job" in msg:
                # a node older than the reset's `job` refuses the key: as before
                ok, msg, code = await self._ask_reset(component, {"force": True})
        finally:
            self.resetting.pop(component, None)
            self.svc.kick()
        if code == "conflict":  # it runs a later job's task: that status was old
            # (the old status stays held until the node's next one, which its announce
            # at every reconnect sends, as after any broker that restores it)
            log.info("component %s: after job %d's stale task: %s", component, job, msg)
        elif not ok:
            log.warning(
                "component %s: reset after job %d's stale task failed: %s", component, job, msg
            )

    async def _ask_reset(
        self, component: str, args: dict[str, Any]
    ) -> tuple[bool, str, str | None]:
        """(success, message, error code) of a reset asked of ``component``'s node."""
        try:
            reply = await self.svc.component_reply(component, "reset", args, timeout=10.0)
        except NoResponder as e:
            return False, str(e), None
        return reply.success, reply.msg, reply.code
