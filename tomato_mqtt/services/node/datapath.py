"""The node's data path: measured points -> numbered, spooled batches -> the broker.

Rules (DESIGN.md §4, issue 9):

- **A point belongs to the task it was taken in.** The runner stamps each point with
  its task (:attr:`~tomato_mqtt.driver.runner.Point.task`) when it takes it; a flush
  splits the drained points into one batch per task (``job``/``task`` from that stamp),
  so the job of a point is never inferred at flush time, idle points never carry a job
  and a task's last points never lose theirs.
- **Identity never repeats.** Each component's batches form a *stream* with a random
  id drawn at every (re-)registration (:func:`new_stream`); ``seq`` counts from 0 in
  it. A reload that removes and adds a component back, or a node restart, starts a new
  stream, so ``(component, stream, seq)`` is unique for the life of the recorder.
- **Durable before published.** A batch goes to the spool before it is published and
  stays there until the recorder acknowledges it; at start the node replays what an
  earlier run (or a crash) left unacknowledged.
- **A task's end is announced after its last batch.** The component status with
  ``last_task`` (points taken, deadlines missed, stream and last seq) is published
  only after every point of the task is spooled and published.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tomato_mqtt.driver import TaskEnd
from tomato_mqtt.driver.block import Block
from tomato_mqtt.driver.names import nonfinite_seen
from tomato_mqtt.driver.points import Point, PointRun
from tomato_mqtt.errors import store_words
from tomato_mqtt.services.node.columns import Columns, pieces, to_columns
from tomato_mqtt.services.node.hosted import HostedComponent
from tomato_mqtt.waits import wait_for
from tomato_mqtt.wire.batch import encode_batch, encode_json
from tomato_mqtt.wire.messages import SCHEMA

if TYPE_CHECKING:
    from tomato_mqtt.services.node.service import NodeService

__all__ = ["DataPath", "new_stream", "split_by_task"]

log = logging.getLogger(__name__)


def new_stream(epoch: int) -> str:
    """A fresh stream id: the node's epoch (for the humans) and 64 random bits."""
    return f"{epoch:x}-{secrets.token_hex(8)}"


TaskKey = tuple[int | None, int | None]


Item = Point | PointRun | Block


def split_by_task(points: Sequence[Item]) -> list[tuple[TaskKey, list[Item]]]:
    """Consecutive runs of points (and blocks) taken in the same task (``(None, None)``:
    idle)."""
    out: list[tuple[TaskKey, list[Item]]] = []
    for p in points:
        key: TaskKey = (p.task.job, p.task.index) if p.task is not None else (None, None)
        if out and out[-1][0] == key:
            out[-1][1].append(p)
        else:
            out.append((key, [p]))
    return out


class DataPath:
    """Flushes, task ends, replays and acknowledgements of one node's components."""

    def __init__(self, node: NodeService) -> None:
        self.node = node
        self.flush_now = asyncio.Event()
        self._spool_failing: str | None = None  # what was last said about the spool
        #: what the node's status says of its spool while it takes no writes
        self.spool_error: str | None = None

    def _tell_spool_state(self, failing: str | None) -> None:
        """Say once when the spool file stops taking writes, and once when it takes them
        again: meanwhile batches wait in memory, nothing is lost (node/spool.py)."""
        if failing == self._spool_failing:
            return
        spool = self.node.spool
        where = spool.path if spool is not None else "the spool"
        if failing is not None and self._spool_failing is None:
            # who holds it (another program's lock), or which of its files refuses writes
            said = store_words(failing, spool.path) if spool is not None else failing
            kept = (
                f" (and copied to its overflow file {spool.overflow_path}, which a restart "
                "of the node takes back)"
                if spool is not None and spool.overflowed
                else ""
            )
            # in the node's status too (`tomato status` names it): it was in its log only
            self.spool_error = (
                f"node {self.node.name}: cannot write the spool {where} ({said}): "
                f"unacknowledged batches are held in memory{kept} until it can"
            )
            log.warning("%s", self.spool_error)
        elif failing is None:
            self.spool_error = None
            log.info("node %s: the spool %s takes writes again", self.node.name, where)
        self._spool_failing = failing

    async def loop(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await wait_for(self.flush_now.wait(), self.node.config.batch_interval)
            self.flush_now.clear()
            await self.flush_all()
            spool = self.node.spool
            if spool is not None:  # held batches reach the file also when no new ones come
                spool.retry()
                self._tell_spool_state(spool.failing)

    async def flush_all(self) -> None:
        for hc in list(self.node.components.values()):
            await self.flush(hc)

    async def flush(self, hc: HostedComponent) -> None:
        """Publish the component's new points, one batch per task (spooled first)."""
        node = self.node
        spool = node.spool
        if hc.runner is None or spool is None:
            return
        items, units = hc.runner.drain_runs()
        if not items or node.refused is not None:  # its name is another node's: so are they
            return
        out: list[bytes] = []
        last: Columns | None = None
        # no await until every batch is numbered and spooled: concurrent flushes (the
        # loop, a task end, a measure) never interleave their seqs
        limit = node.config.batch_max_bytes
        for (job, task), group in split_by_task(items):
            parts = list(to_columns(group, units))
            while parts:
                cols = parts.pop(0)
                try:
                    raw = encode_batch(
                        component=hc.name,
                        job=job,
                        task=task,
                        epoch=node.epoch,
                        stream=hc.stream,
                        seq=hc.seq + 1,
                        uts=cols.uts,
                        vars=cols.vars,
                        units=cols.units,
                        dims=cols.dims,
                        coords=cols.coords,
                        scan_lists=nonfinite_seen(),
                    )
                except Exception as e:  # a value the driver's checks let through: this
                    # task fails, the node and every other component's task go on (a
                    # driver's dict with an int key took the node and all its jobs down)
                    self._unsendable(hc, job, task, len(cols.uts), e)
                    continue
                if len(raw) > limit and len(cols.uts) > 1:  # as several: a broker drops
                    # what exceeds its limit without a word (a size per point is the
                    # same along a batch: one more part than the size says, one encoding)
                    parts[:0] = pieces(cols, len(raw) // limit + 2)
                    continue
                if len(raw) > node.config.max_message:  # one point, more than the broker
                    # takes: sent, it closed the node's connection again at each resend
                    why = ValueError(
                        f"one point of {len(raw):,} bytes, more than a message may carry "
                        f"(at most {node.config.max_message:,} bytes under [broker] "
                        "max_packet_bytes)"
                    )
                    self._unsendable(hc, job, task, len(cols.uts), why)
                    continue
                hc.seq += 1
                dropped = spool.put(hc.name, hc.stream, hc.seq, node.epoch, raw)
                self._tell_spool_state(spool.failing)
                if dropped:
                    log.warning(
                        "node %s: spool full (%d MiB): dropped %d unacknowledged batch(es); "
                        "is the recorder running?",
                        node.name,
                        node.config.spool_max_bytes // 2**20,
                        dropped,
                    )
                out.append(raw)
                last = cols
                last.job, last.task = job, task
        client = node.client
        if client is None or last is None:
            return
        topic = node.topics.component_data(hc.name)
        for raw in out:
            await client.publish(topic, raw, wait=False)
        lp = {
            "schema": SCHEMA,
            "component": hc.name,
            "uts": last.uts[-1],
            "vars": {k: v[-1] for k, v in last.vars.items()},
            "units": last.units,
            "jobid": last.job,
            "task": last.task,
            "dims": {k: list(v) for k, v in last.dims.items()},
            "coords": last.coords,
        }
        hc.last_point = encode_json(lp)
        await client.publish(
            node.topics.component_last(hc.name), hc.last_point, retain=True, wait=False
        )

    def _unsendable(
        self, hc: HostedComponent, job: int | None, task: int | None, n: int, e: Exception
    ) -> None:
        why = (
            f"{n} point(s) of {hc.name} could not be encoded for sending "
            f"({type(e).__name__}: {e}): the driver returned values the wire cannot carry"
        )
        log.error("node %s: job %s task %s: %s", self.node.name, job, task, why)
        known = hc.unsent.get((job, task))
        hc.unsent[(job, task)] = (known[0] if known else why, (known[1] if known else 0) + n)
        if known is None and hc.runner is not None and hc.job == job and hc.task == task:
            hc.runner.stop_task(why)

    async def task_ended(self, name: str, end: TaskEnd) -> None:
        node = self.node
        hc = node.components.get(name)
        if hc is None:
            return
        try:
            await self.flush(hc)  # every point of the task is in a batch before its end is told
        except Exception as e:  # its end is still told: untold, the component stayed
            # "running" for good and its job hung (a review)
            why = f"the task's last points could not be sent ({type(e).__name__}: {e})"
            log.exception("node %s: %s: %s", node.name, hc.name, why)
            end = dataclasses.replace(end, reason="error", message=why)
        unsent = hc.unsent.pop((end.task.job, end.task.index), None)
        if unsent is not None:  # points are missing: never "done"
            why, n = unsent
            end = dataclasses.replace(
                end, reason="error", message=why, npoints=max(0, end.npoints - n)
            )
        if end.reason == "error":
            hc.error = end.message
        await self.tell_end(hc, end)

    async def tell_end(self, hc: HostedComponent, end: TaskEnd) -> None:
        """Tell ``end`` in the component's status (``last_task``), from now on."""
        node = self.node
        hc.told_end(
            {
                "job": end.task.job,
                "task": end.task.index,
                "task_name": end.task.task_name,
                "reason": end.reason,
                "message": end.message,
                "t_start": end.t_start,
                "t_end": end.t_end,
                "npoints": end.npoints,
                "missed": end.missed,
                **(
                    {"clock_step": end.clock_step, "clock_step_at": end.clock_step_at}
                    if end.clock_step
                    else {}
                ),
                "epoch": node.epoch,
                "stream": hc.stream,
                "last_seq": hc.seq,
            }
        )
        await node.publish_status(hc)

    async def replay(self, component: str, stream: str, first: int, last: int) -> int:
        """Publish the spooled batches ``first..last`` of a stream again; how many."""
        node = self.node
        if node.spool is None or node.client is None or node.refused is not None:
            return 0  # (refused: its name, and its batches, are another node's)
        rows = node.spool.get(component, stream, first, last)
        topic = node.topics.component_data(component)
        for _seq, raw in rows:
            await node.client.publish(topic, raw, wait=False)
        return len(rows)

    async def replay_pending(self) -> None:
        """Batches of earlier runs (or streams) that the recorder never acknowledged."""
        node = self.node
        if node.spool is None:
            return
        current = {hc.stream for hc in node.components.values()}
        for (component, stream), (first, last) in node.spool.pending().items():
            if stream in current:
                continue
            n = await self.replay(component, stream, first, last)
            log.info(
                "node %s: replayed %d unacknowledged batch(es) of %s stream %s",
                node.name,
                n,
                component,
                stream,
            )
