"""The commands a node answers for each of its components (``component/<c>/cmd/<op>``).

Each handler takes the hosted component and the request's args and returns a
:class:`Result`, or raises :class:`CommandError` with a message for the user. Blocking
driver calls run in a worker thread; a component's task start is serialised by a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import JsonValue

from tomato_mqtt.driver import ComponentRunner, TaskEnd, TaskSpec, TaskValidationError
from tomato_mqtt.driver.tasking import DriverBusy
from tomato_mqtt.driver.upstream.runner import UpstreamRunner
from tomato_mqtt.driver.validate import to_jsonable
from tomato_mqtt.services.node.drivers import off_loop
from tomato_mqtt.services.node.hosted import HostedComponent
from tomato_mqtt.transport.rpc import CommandError, Result
from tomato_mqtt.waits import wait_for
from tomato_mqtt.wire.commands import RegisteredData
from tomato_mqtt.wire.messages import AckArgs, ReplayArgs, stream_id

if TYPE_CHECKING:
    from tomato_mqtt.services.node.service import NodeService

__all__ = ["ComponentOps"]

#: how to do it anyway, said to the CLI and to a request over MQTT alike (it said "use
#: --force" to an integrator, whose request has no options: an integrator's tour)
FORCE_HINT = '(with passata --force it is done all the same; a script sends "force": true)'

#: s a task_start waits for its component's first registration to end (the scheduler
#: waits 10 s for the answer, which must leave time for the task's own start)
REGISTER_WAIT = 6.0
#: s a `passata get/set/measure` waits for another call into the driver to end (a do_task
#: that hangs), or for its component's registration, then says so: under the CLI's 5 s,
#: which read it as a node that is down
DEVICE_WAIT = 3.0
#: s a task_start of the task the node is setting up waits for that set-up to end (then
#: answered with the start it made); past it, answered "being set up" (the scheduler
#: waits 10 s for the answer)
SETUP_WAIT = 5.0


class ComponentOps:
    def __init__(self, node: NodeService) -> None:
        self.node = node
        self._locks: dict[str, asyncio.Lock] = {}

    def table(self) -> dict[str, Any]:
        return {
            "task_start": self.op_task_start,
            "task_stop": self.op_task_stop,
            "set_attr": self.op_set_attr,
            "get_attr": self.op_get_attr,
            "measure": self.op_measure,
            "reset": self.op_reset,
            "register": self.op_register,
            "status": self.op_status,
            "replay": self.op_replay,
            "ack": self.op_ack,
        }

    def lock(self, hc: HostedComponent) -> asyncio.Lock:
        return self._locks.setdefault(hc.name, asyncio.Lock())

    async def _registered(self, hc: HostedComponent, wait: float) -> None:
        """A component being registered (its node just started, or reloaded it) is
        waited for, ``wait`` s at most: a driver's registration may take a while (an
        instrument to connect to). The ops then answer as before, registered or not."""
        if hc.runner is None and not hc.settled.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await wait_for(hc.settled.wait(), wait)

    def runner(self, hc: HostedComponent) -> ComponentRunner | UpstreamRunner:
        if hc.runner is None:
            why = f": {hc.error}" if hc.error else ""
            raise CommandError(f"component {hc.name} is not registered{why}")
        return hc.runner

    async def op_task_start(self, hc: HostedComponent, args: Mapping[str, JsonValue]) -> Result:
        task = TaskSpec.model_validate(args.get("task"))
        setting_up = self._being_set_up(hc, task)
        if setting_up is not None:  # asked again while its set-up runs (under the lock)
            lock = self.lock(hc)
            try:  # a short set-up: answered below as the start it made
                await wait_for(lock.acquire(), SETUP_WAIT)
            except asyncio.TimeoutError:
                return setting_up
            lock.release()
        # the scheduler took the component for ready from its meta of before, and a job
        # submitted as its node restarted ended ce "is not registered" a few ms before it
        # was (an outside fault run: 3 of 15); the scheduler waits 10 s for this answer
        await self._registered(hc, REGISTER_WAIT)
        async with self.lock(hc):
            runner = self.runner(hc)
            again = self._started_already(hc, task)
            if again is not None:
                return again
            want = args.get("epoch")
            if isinstance(want, int) and not isinstance(want, bool) and want != self.node.epoch:
                # asked of this node's run before (the requester's view): that run may have
                # started it, and died with it; this one does not run it a second time
                raise CommandError(
                    f"node {self.node.name} restarted (epoch {want} -> {self.node.epoch}) "
                    f"since task {task.index} of job {task.job} was asked for on {hc.name}: "
                    "not started here, as it may have run in part before",
                    code="conflict",
                )
            if runner.running:
                raise CommandError(f"component {hc.name} is busy with job {hc.job} task {hc.task}")
            await self.node.data.flush(hc)  # leftovers (idle points) go out under their own tags
            try:
                await off_loop(runner.start_task, task)
            except Exception as e:
                why = (
                    f"task rejected by {hc.name}: {e}"
                    if isinstance(e, TaskValidationError)
                    else f"task could not start on {hc.name}: {e}"
                )
                if not runner.running and task.job is not None:
                    # told as the task's end: its status said it accepted (job, task), and
                    # a scheduler that restarted meanwhile (and never got this answer)
                    # waited for it to end until its max_duration and more (a review)
                    now = time.time()
                    end = TaskEnd(task, "error", why, now, now, 0)
                    await self.node.data.tell_end(hc, end)
                raise CommandError(why) from None
            hc.begin(task)
        await self.node.publish_status(hc)
        return Result(
            f"task {task.index} of job {task.job} started on {hc.name}",
            {"started_at": hc.started_at, "epoch": self.node.epoch},
        )

    def _being_set_up(self, hc: HostedComponent, task: TaskSpec) -> Result | None:
        """The answer to a task_start of the task this node is setting up (the driver's
        preparation, under the component's lock), or None: a scheduler that restarted
        meanwhile asks for it again, and waited behind the lock for the set-up (the job
        ended ce "no node answered" when it took 10 s). After ``SETUP_WAIT`` s it hears
        that the task is accepted, not begun (``started_at`` null); its end (or failed
        start) is told in the component's status."""
        runner = hc.runner
        current = runner.current_task if runner is not None else None
        if task.job is None or current is None:
            return None
        if (current.job, current.index) != (task.job, task.index):
            return None
        if (hc.job, hc.task) == (task.job, task.index) and hc.started_at is not None:
            return None  # begun: _started_already answers it, with its start
        return Result(
            f"task {task.index} of job {task.job} is being set up on {hc.name}",
            {"started_at": None, "epoch": self.node.epoch, "accepted_at": time.time()},
        )

    def _started_already(self, hc: HostedComponent, task: TaskSpec) -> Result | None:
        """The answer to a task_start of a task this node started already in this epoch
        (running or ended), or None: a scheduler that restarted while it asked for the
        task asks again, and must hear what the first request started, not "busy" (the
        job would end ce) and not a second start (found by a review: the runner stores
        a task's start only with this answer)."""
        if task.job is None:
            return None
        last = hc.last_task or {}
        epoch = self.node.epoch
        runs = hc.job == task.job and hc.task == task.index and hc.started_at is not None
        ended = (last.get("job"), last.get("task"), last.get("epoch")) == (
            task.job,
            task.index,
            epoch,
        )
        if not (runs or ended):
            return None
        started = hc.started_at if runs else last.get("t_start")
        return Result(
            f"task {task.index} of job {task.job} was started on {hc.name} already",
            {"started_at": started, "epoch": epoch},
        )

    async def op_task_stop(self, hc: HostedComponent, args: Mapping[str, JsonValue]) -> Result:
        runner = self.runner(hc)
        job = args.get("job")
        if not runner.running:
            return Result(f"component {hc.name} has no running task", {"running": False})
        if job is not None and hc.job != job:
            raise CommandError(f"component {hc.name} runs job {hc.job}, not job {job}")
        runner.stop_task(str(args.get("reason") or "stopped"))
        return Result(f"task stopped on {hc.name}", {"running": True})

    def _refuse_while_running(
        self, hc: HostedComponent, what: str, args: Mapping[str, Any]
    ) -> None:
        if self.runner(hc).running and not args.get("force"):
            raise CommandError(
                f"cannot {what} {hc.name}: a task of job {hc.job} is running {FORCE_HINT}"
            )

    async def op_set_attr(self, hc: HostedComponent, args: Mapping[str, JsonValue]) -> Result:
        attr = str(args.get("attr"))
        if "val" not in args:
            raise CommandError("set_attr needs 'attr' and 'val'")
        await self._registered(hc, DEVICE_WAIT)
        self._refuse_while_running(hc, f"set {attr!r} on", args)
        dev = hc.device
        if dev is None:
            why = f": {hc.error}" if hc.error else ""
            raise CommandError(f"component {hc.name} is not registered{why}")
        known = dev.attrs()
        if attr not in known:
            raise CommandError(
                f"unknown attr {attr!r} on {hc.name} (known: {', '.join(sorted(known))})",
                code="not_found",
            )
        call = self.runner(hc).device_call  # one call into the driver at a time
        try:
            val = await off_loop(call, dev.set_attr, attr, args["val"], wait=DEVICE_WAIT)
        except DriverBusy as e:  # (not "no node answered … is it running?": a tour)
            raise CommandError(
                f"cannot set {attr!r} on {hc.name}: {e}", code="unavailable"
            ) from None
        except (ValueError, TypeError, AttributeError, KeyError) as e:
            raise CommandError(f"cannot set {attr!r} on {hc.name}: {e}") from None
        except Exception as e:
            raise CommandError(f"driver error setting {attr!r} on {hc.name}: {e}") from None
        await self.node.publish_status(hc)
        jv = to_jsonable(val)
        return Result(f"{attr} of {hc.name} set to {jv}", {attr: jv})

    async def op_get_attr(self, hc: HostedComponent, args: Mapping[str, JsonValue]) -> Result:
        # (a `passata get` just after its node restarted said "is not registered" while the
        # counter registered, a few ms: a CI run)
        await self._registered(hc, DEVICE_WAIT)
        dev = hc.device
        if dev is None:
            why = f": {hc.error}" if hc.error else ""
            raise CommandError(f"component {hc.name} is not registered{why}")
        raw = args.get("attrs") or ([args["attr"]] if args.get("attr") is not None else [])
        names = [str(a) for a in raw] if isinstance(raw, list) else [str(raw)]
        if not names:
            names = list(dev.attrs())
        known = dev.attrs()
        call = self.runner(hc).device_call  # one call into the driver at a time
        out: dict[str, JsonValue] = {}
        for a in names:
            if a not in known:
                raise CommandError(
                    f"unknown attr {a!r} on {hc.name} (known: {', '.join(sorted(known))})",
                    code="not_found",
                )
            try:
                got = await off_loop(call, dev.get_attr, a, wait=DEVICE_WAIT)
                out[a] = to_jsonable(got)
            except DriverBusy as e:  # a hung do_task: said, not left unanswered (the CLI
                # said "no node hosting … answered … is it running?" of a node online: a
                # driver author's tour)
                raise CommandError(
                    f"cannot read {a!r} on {hc.name}: {e}", code="unavailable"
                ) from None
            except Exception as e:
                raise CommandError(f"driver error reading {a!r} on {hc.name}: {e}") from None
        return Result(", ".join(f"{k}={v}" for k, v in out.items()), out)

    async def op_measure(self, hc: HostedComponent, args: Mapping[str, JsonValue]) -> Result:
        await self._registered(hc, DEVICE_WAIT)
        runner = self.runner(hc)
        try:
            point = await off_loop(runner.measure)
        except RuntimeError as e:
            raise CommandError(str(e)) from None
        await self.node.data.flush(hc)
        if point is None:
            return Result(f"{hc.name} returned no data")
        values: dict[str, JsonValue] = dict(point.values)
        units: dict[str, JsonValue] = dict(runner.units_of(values))
        return Result(f"measured on {hc.name}", {"uts": point.uts, "vars": values, "units": units})

    async def op_reset(self, hc: HostedComponent, args: Mapping[str, JsonValue]) -> Result:
        runner = self.runner(hc)
        only = args.get("job")
        accepted = runner.current_task  # (accepted, its start under way: not begun yet)
        # the job whose task it holds: the one accepted, once there is one (a reset of the
        # job before, sent late, stopped the next job's task still being set up: a review)
        holder = accepted.job if accepted is not None else hc.job
        if only is not None and holder != only:
            # the scheduler's reset after job `only`, which ended without its node: the
            # component has run another job's task since (a status of `only` came late)
            raise CommandError(
                f"not reset: {hc.name} has not run a task of job {only} since "
                + (f"job {holder}'s" if holder is not None else "its node started"),
                code="conflict",
            )
        if runner.running:
            if not args.get("force"):
                raise CommandError(
                    f"cannot reset {hc.name}: a task of job {holder} is running {FORCE_HINT}"
                )
            runner.stop_task("reset")
        else:  # an end never told (it failed) no longer holds the component "running"
            hc.ending = None
        try:
            await off_loop(runner.reset)
        except Exception as e:
            # shown on the component until a reset works (a reset that failed after a
            # job, its instrument maybe not in a safe state, was in a log only: a driver
            # author's tour); the runner's words name the component already
            hc.error = str(e) if str(e).startswith("reset of ") else f"reset failed: {e}"
            await self.node.publish_status(hc)
            raise CommandError(hc.error) from None
        hc.error = None
        await self.node.publish_status(hc)
        return Result(f"component {hc.name} reset")

    async def op_register(self, hc: HostedComponent, args: Mapping[str, JsonValue]) -> Result:
        if hc.busy:  # also while a task's end is told: its last batches name the stream
            if hc.runner is not None and hc.runner.running:  # (plain reset is refused then:
                # the hint named it, a side-by-side tour)
                raise CommandError(
                    f"cannot re-register {hc.name}: a task of job {hc.job} is running "
                    "(`passata reset --force` stops it and frees the component; a driver "
                    "call that never returns is let go by `tomato restart-node NODE "
                    "--force`)"
                )
            raise CommandError(
                f"cannot re-register {hc.name} while its task's end is told "
                "(`passata reset` frees a component whose task's end never comes)"
            )
        if hc.connecting:
            raise CommandError(
                f"cannot re-register {hc.name}: its registration is under way "
                f"({hc.error or 'the driver is connecting'})",
                code="conflict",
            )
        if hc.runner is not None:
            await self.node.data.flush(hc)  # idle points of the old stream go out first
            await self.node.close_runner(hc.runner)
        hc.runner = None
        hc.device = None
        try:
            await self.node.register(hc)
        except Exception as e:
            hc.error = f"registration failed: {e}"
            await self.node.publish_status(hc)
            raise CommandError(f"registration of {hc.name} failed: {e}") from None
        c = hc.config
        data = RegisteredData(
            name=c.name,
            device=c.device,
            driver=c.driver,
            address=c.address,
            channel=c.channel,
            capabilities=hc.meta().capabilities,
        )  # as tomato's register answers: the component (its data was null)
        return Result(f"component {hc.name} registered", data.model_dump(mode="json"))

    async def op_status(self, hc: HostedComponent, args: Mapping[str, JsonValue]) -> Result:
        st = hc.status(self.node.epoch)
        return Result(f"{hc.name} is {st.state}", st.model_dump(mode="json", by_alias=True))

    async def op_replay(self, hc: HostedComponent, args: Mapping[str, JsonValue]) -> Result:
        ra = ReplayArgs.model_validate(args)
        if self.node.spool is None or self.node.client is None:
            raise CommandError("spool not open")
        n = await self.node.data.replay(
            hc.name, self._stream(hc, ra.stream, ra.epoch), ra.first, ra.last
        )
        return Result(f"replayed {n} batch(es) of {hc.name}", {"replayed": n})

    async def op_ack(self, hc: HostedComponent, args: Mapping[str, JsonValue]) -> Result:
        aa = AckArgs.model_validate(args)
        spool = self.node.spool
        n = spool.ack(hc.name, self._stream(hc, aa.stream, aa.epoch), aa.upto) if spool else 0
        return Result(f"{n} batch(es) acknowledged", {"acked": n})

    def _stream(self, hc: HostedComponent, stream: str, epoch: int) -> str:
        """The stream a replay/ack means; an older requester names only the epoch: the
        component's current stream if it is this node's epoch."""
        if not stream and epoch == self.node.epoch and hc.stream:
            return hc.stream
        return stream_id(stream, epoch)
