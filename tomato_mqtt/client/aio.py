"""The asyncio client of tomato-mqtt: jobs, pipelines and components from Python.

One connection (the transport's :class:`~tomato_mqtt.transport.client.AsyncClient`),
typed commands (``wire/commands.py``: args checked before sending, reply data parsed),
and subscriptions for what a script waits on: a job's retained status and events, the
recorder's point counts, the live data batches. Everything the CLI can do, a script can
do here without parsing CLI text::

    async with AsyncTomato.from_settings() as t:
        job = await t.submit("payload.yml")
        await job.wait(timeout=600)
        tree = await job.results()
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from tomato_mqtt.client import names
from tomato_mqtt.client.checks import seconds
from tomato_mqtt.client.local import payload_args, settings_of
from tomato_mqtt.client.progress import FINAL, Progress
from tomato_mqtt.config import roles
from tomato_mqtt.config.url import BrokerURL
from tomato_mqtt.model.jobs import Job as JobInfo
from tomato_mqtt.model.jobs import PipelineState
from tomato_mqtt.transport.client import (
    AsyncClient,
    Message,
    MqttError,
    MqttRefused,
    MqttTimeout,
    MqttUnreachable,
    MqttUntrusted,
    SubscriptionRefused,
)
from tomato_mqtt.transport.oneshot import payload_refused, refused_token
from tomato_mqtt.transport.rpc import NoResponder, ReplyError, Requester
from tomato_mqtt.waits import wait_for
from tomato_mqtt.wire.commands import JOB_PAGE_MAX, FileData, Responder, command, commands_of
from tomato_mqtt.wire.messages import DataBatch, DecodeError, Reply, decode
from tomato_mqtt.wire.names import did_you_mean
from tomato_mqtt.wire.status import JobSummary, PipelineInfo
from tomato_mqtt.wire.topics import Topics

__all__ = ["SNAPSHOT_ASKS", "AsyncTomato", "ClientError", "Job", "NoResponder", "ReplyError"]

T = TypeVar("T")

WHOAMI_BEFORE = 2.0
"""s before a login's request times out at which ``whoami`` is asked meanwhile (at most
half the request's timeout)."""


def _problems(e: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(x) for x in err['loc']) or 'args'}: {err['msg']}" for err in e.errors()
    )


class ClientError(Exception):
    """A request that failed: ``code`` is the reply's error code (``wire.messages``)."""

    def __init__(self, msg: str, code: str | None = None, *, unreachable: bool = False) -> None:
        super().__init__(msg)
        self.code = code
        #: the connection was refused: nothing listens on the broker's port (a broker that
        #: is down, or being restarted), as against one that refused the login
        self.unreachable = unreachable

    @property
    def file_replaced(self) -> bool:
        """A fetch refused because another snapshot of the job took its file's name
        before the fetch began ("… has been replaced … ask for it again"): asked again
        (:data:`SNAPSHOT_ASKS` times in all)."""
        return self.code == "conflict" and "has been replaced" in str(self)


#: how many times a snapshot is asked for while a newer one replaces its file first
SNAPSHOT_ASKS = 3


#: what a client closed meanwhile says to the calls that were waiting
CLOSED = "this client was closed while the call waited (close() ends what waits on it)"


def closed() -> ClientError:
    """What a call that waited on a client gets once the client is closed (:data:`CLOSED`)."""
    return ClientError(CLOSED, "closed")


class _Unanswered(Exception):
    """A request nobody answered (``error``), and the login's ``whoami`` reply (``me``),
    if it was asked and came."""

    def __init__(self, error: NoResponder, me: Reply | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.me = me


class _Inbox:
    """Messages of some subscriptions, handed from paho's thread to this loop; a client
    that is closed puts None in, which ends what waits on it (:meth:`get`)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Message | ClientError | None] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()

    def __call__(self, msg: Message) -> None:  # paho's thread: hand over only
        self._loop.call_soon_threadsafe(self.queue.put_nowait, msg)

    async def get(self, timeout: float | None) -> Message:
        """The next message; ``asyncio.TimeoutError``; ``ClientError`` once the client
        is closed (a follow, a stream or a wait of another task or thread waited for
        ever after it, its own timeout too: an integrator's tour)."""
        msg = await wait_for(self.queue.get(), timeout)
        if msg is None:
            self.queue.put_nowait(None)  # (said to whatever else waits on it)
            raise closed()
        if isinstance(msg, ClientError):  # the broker refuses the login (_login_refused)
            raise msg
        return msg

    def take(self) -> Message | None:
        """The next message if one is there (None: none, closed, or refused)."""
        if self.queue.empty():
            return None
        msg = self.queue.get_nowait()
        if msg is None or isinstance(msg, ClientError):
            self.queue.put_nowait(msg)  # (for :meth:`get` to say)
            return None
        return msg


def _job_repr(info: JobInfo) -> str:
    """``<Job 3 r>``; a handle made by ``job(id)`` has not asked yet (it showed ``q`` for
    a completed job)."""
    if not info.submitted_at:
        return f"<Job {info.id} (status not asked yet: .status())>"
    return f"<Job {info.id} {info.status}>"


class Job:
    """A submitted job: a handle with the id; every method asks the stack afresh."""

    def __init__(self, client: AsyncTomato, info: JobInfo) -> None:
        self.client = client
        self.info = info  # as last seen

    @property
    def id(self) -> int:
        return self.info.id

    def __repr__(self) -> str:
        return _job_repr(self.info)

    async def status(self) -> JobInfo:
        self.info = await self.client.status(self.id)
        return self.info

    async def wait(self, timeout: float | None = None, final: frozenset[str] = FINAL) -> JobInfo:
        self.info = await self.client.wait(self.id, timeout=timeout, final=final)
        return self.info

    async def cancel(self) -> JobInfo:
        self.info = await self.client.cancel(self.id)
        return self.info

    async def snapshot(self, path: str | os.PathLike[str] | None = None) -> Any:
        return await self.client.snapshot(self.id, path)

    async def results(self, path: str | os.PathLike[str] | None = None) -> Any:
        return await self.client.results(self.id, path)

    def stream(self, timeout: float | None = None) -> AsyncIterator[DataBatch]:
        return self.client.stream(self.id, timeout=timeout)

    def follow(
        self, timeout: float | None = None, final: frozenset[str] = FINAL
    ) -> AsyncIterator[Progress]:
        return self.client.follow(self.id, final=final, timeout=timeout)


class AsyncTomato:
    """A connection to one tomato-mqtt instance (see the module docstring)."""

    def __init__(
        self,
        url: str | BrokerURL = "mqtt://127.0.0.1:1883",
        instance: str = "default",
        *,
        timeout: float = 10.0,
        max_request: int | None = None,
    ) -> None:
        self.url = url if isinstance(url, BrokerURL) else BrokerURL.parse(url)
        self.topics = Topics(instance, self.url.username)
        self.timeout = seconds(timeout)
        cid = f"client-{os.getpid()}-{os.urandom(3).hex()}"
        self.mqtt = AsyncClient(self.url, client_id=cid)
        # larger requests are refused here: the broker would close the connection, and
        # paho sent them again at each reconnect (a review: "no scheduler answered")
        self.requester = Requester(self.mqtt, self.topics, max_request)
        self._inboxes: set[_Inbox] = set()  # of the follows and streams under way
        self.mqtt.on_refused = self._login_refused
        #: why the broker no longer takes this login back, while it is not connected
        self._login_gone: ClientError | None = None

    @classmethod
    def from_settings(
        cls, appdir: str | os.PathLike[str] | None = None, *, timeout: float = 10.0
    ) -> AsyncTomato:
        """Broker and instance from ``settings.toml`` (the default appdir, or ``appdir``),
        and the largest request its broker takes (``[broker] max_packet_bytes``)."""
        url, instance, max_request = settings_of(appdir)
        return cls(url, instance, timeout=timeout, max_request=max_request)

    async def connect(self) -> AsyncTomato:
        try:
            await self.mqtt.connect(timeout=self.timeout)
        except MqttRefused as e:  # it is running, and does not take this login
            raise ClientError(str(e), "not_allowed" if e.final else "unavailable") from None
        except MqttUntrusted as e:  # it is running, and its certificate is not trusted
            raise ClientError(str(e), "not_allowed") from None
        except MqttError as e:
            refused = isinstance(e, MqttUnreachable)
            msg = f"{e} — is tomato-mqtt running?"
            raise ClientError(msg, "unavailable", unreachable=refused) from None
        await self.requester.start()
        return self

    def _login_refused(self, e: MqttRefused) -> None:
        """The broker refuses this client's login for good since the connection was lost
        (a password changed, the user removed): a follow, a stream or a wait ends with it
        (`ketchup status --follow` said "trying again every 2 s" for ever: an admin's
        tour). The client goes on trying: a later call works once the login is back."""
        err = ClientError(
            f"the broker at {self.url} no longer takes this client's login: {e} (was its"
            " password changed or the user removed? connect again with the new one)",
            "not_allowed",
        )
        self._login_gone = err
        for inbox in self._inboxes:
            inbox.queue.put_nowait(err)

    def _check_refused(self) -> None:
        """A follow or stream started after the refusal is told at once (it waited for
        its subscription's answer, then said `unavailable`: a review)."""
        if self._login_gone is not None:
            if self.mqtt.is_connected:  # taken back meanwhile
                self._login_gone = None
            else:
                raise self._login_gone

    async def close(self) -> None:
        for inbox in self._inboxes:  # what waits on them ends: ClientError "closed"
            inbox.queue.put_nowait(None)
        self.requester.fail_all(closed())  # and the requests too
        await self.mqtt.disconnect()

    async def __aenter__(self) -> AsyncTomato:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- requests ----------------------------------------------------------------------
    async def request(
        self, topic: str, args: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> Reply:
        """A raw request on ``topic``: the :class:`Reply`, whatever it says."""
        self._require_started()
        who = "recorder" if "/recorder/" in topic else "responder"
        if "/scheduler/" in topic:
            who = "scheduler"
        t = timeout or self.timeout
        try:
            return await self._awaited(
                self.requester.request(topic, dict(args or {}), timeout=t, who=who), topic, t
            )
        except _Unanswered as u:
            raise self._unanswered(u.error, u.me) from None

    async def _awaited(self, request: Awaitable[T], topic: str, timeout: float) -> T:
        """``request``'s answer, within its ``timeout``; :class:`_Unanswered` (with the
        login's role, if ``whoami`` said it) when no answer came.

        MQTT 3.1.1 has no negative PUBACK: a request the broker's rules drop is only ever
        unanswered, and ``whoami`` says why. A login's request still unanswered after
        ``WHOAMI_BEFORE`` s (at most half the timeout) asks it meanwhile, and a role that
        may not send the request is said then, not at the timeout's end (a reader's
        snapshot waited 60 s for what was known after 2). A broker
        that closes the connection for a forbidden publish (Aedes) closes it again at
        each reconnect while the request is in flight: whoami can only go once the
        request is forgotten, after the timeout (for at most ``WHOAMI_BEFORE`` s)."""
        if not self.mqtt.started:
            if asyncio.iscoroutine(request):
                request.close()  # (never awaited: no warning of it)
            self._require_started()
        parsed = self.topics.parse(topic)
        ask = bool(self.url.username) and parsed is not None and parsed.op not in (None, "whoami")
        answer = asyncio.ensure_future(request)
        me: asyncio.Future[Reply | None] | None = None
        try:
            lost = False
            if ask:
                loop = asyncio.get_running_loop()
                end = loop.time() + timeout
                at = loop.time() + min(WHOAMI_BEFORE, timeout / 2)
                connects = self.mqtt.connects
                while not answer.done() and loop.time() < at:
                    await asyncio.wait({answer}, timeout=min(0.1, at - loop.time()))
                    lost = lost or not self.mqtt.is_connected or self.mqtt.connects != connects
                if not answer.done() and not lost:
                    me = asyncio.ensure_future(self._whoami(max(0.0, end - loop.time())))
                    await asyncio.wait({answer, me}, return_when=asyncio.FIRST_COMPLETED)
                    if not answer.done() and self._refused(topic, me.result()):
                        # the broker dropped it: waiting out the timeout tells nothing more
                        raise _Unanswered(NoResponder(f"no answer on {topic}", topic), me.result())
            try:
                return await answer
            except NoResponder as e:
                said = None
                if me is not None:
                    said = await me
                elif lost:  # the request is forgotten now (by the requester): asked now
                    said = await self._whoami(min(WHOAMI_BEFORE, timeout))
                raise _Unanswered(e, said) from None
        finally:
            for f in (answer, me):
                if f is not None and not f.done():
                    f.cancel()

    async def _whoami(self, within: float) -> Reply | None:
        """The scheduler's ``whoami`` reply within ``within`` s, or None."""
        loop = asyncio.get_running_loop()
        end = loop.time() + within
        if not self.mqtt.is_connected:  # closed for the request (Aedes): back first
            with contextlib.suppress(MqttError, asyncio.TimeoutError):
                await self.mqtt.wait_connected(within)
        left = end - loop.time()
        if left <= 0:
            return None
        with contextlib.suppress(MqttError):  # (its copies forgotten by the requester)
            return await self.requester.request(
                self.topics.scheduler_cmd("whoami"), {}, timeout=left, who="scheduler"
            )
        return None

    def _refused(self, topic: str, me: Reply | None) -> str | None:
        """Why the broker drops a request on ``topic`` of this login, given its ``whoami``
        reply (``me``); None when its role may send it or ``whoami`` did not say."""
        parsed = self.topics.parse(topic) if topic else None
        if (
            not self.url.username
            or parsed is None
            or parsed.op in (None, "whoami")
            or me is None
            or not me.success
            or not isinstance(me.data, dict)
        ):
            return None
        return roles.refusal(parsed.kind, parsed.op, self.url.username, me.data)

    def _unanswered(self, e: NoResponder, me: Reply | None) -> ClientError:
        """A request nobody answered: ``unavailable``, or ``not_allowed`` when the broker's
        ACL dropped it or closed the connection for it (Aedes), as ``whoami`` (``me``,
        asked meanwhile by :meth:`_awaited`) says of the login's role, as the CLI says it."""
        parsed = self.topics.parse(e.topic) if e.topic else None
        why = self._refused(e.topic, me)
        if why is not None:
            return ClientError(why, "not_allowed")
        hint = ""
        if (
            self.url.username
            and parsed is not None
            and parsed.kind == "scheduler_cmd"
            and me is None
        ):
            # whoami went unanswered too: a login that may not ask the scheduler (a node's)
            # read as a scheduler that is down; said as the CLI says it (an admin's tour)
            hint = (
                f"; if the scheduler runs, the login {self.url.username!r} may not ask it "
                "(a node's login may not: check the URL's user)"
            )
        if not self.mqtt.is_connected:  # not the scheduler's silence: the broker's (or
            # Aedes, which closes the connection of a publish its rules forbid)
            return ClientError(
                f"{e} (this client has lost its connection to the broker at {self.url}; "
                f"it connects again by itself once the broker answers){hint}",
                "unavailable",
            )
        return ClientError(f"{e}{hint}", "unavailable")

    async def _typed(
        self,
        responder: Responder,
        op: str,
        topic: str,
        args: Any,
        who: str,
        timeout: float | None = None,
    ) -> Any:
        """A typed command: its reply data, or :class:`ClientError` for every failure."""
        try:
            cmd = command(responder, op)
        except KeyError:
            known = ", ".join(sorted(commands_of(responder)))
            raise ClientError(
                f"no operation {op!r} of the {responder} (known: {known})", "unknown_op"
            ) from None
        try:  # the args, checked before anything is sent
            checked = cmd.parse_args(dict(args or {}))
        except ValidationError as e:
            raise ClientError(f"bad args for {op!r}: {_problems(e)}", "bad_request") from None
        t = timeout or self.timeout
        try:
            return await self._awaited(
                self.requester.call(
                    topic,
                    cmd,
                    checked,
                    timeout=t,
                    who=who,
                    resend=responder == "scheduler",  # it may be restarting (RESEND_AFTER)
                ),
                topic,
                t,
            )
        except ValidationError as e:  # the reply's data: the op ran, its answer is odd
            raise ClientError(
                f"the {who} answered {op!r} with data this client cannot read (is it "
                f"another version of tomato-mqtt?): {_problems(e)}",
                "bad_reply",
            ) from None
        except ReplyError as e:
            raise ClientError(str(e), e.code) from None
        except _Unanswered as u:
            err = self._unanswered(u.error, u.me)
            if err.code == "unavailable" and not cmd.reads:
                # a slow scheduler (stopped, swapped out) carries it out when it gets to
                # it: a script that sent it again got a second job (an integrator's run)
                token = getattr(checked, "token", None)
                again = (
                    f"submit(..., token={token!r}) is answered with its job, if it was queued"
                    if token
                    else "a submit: `search` its job name"
                )
                err = ClientError(
                    f"{err}; it may still be carried out when the {who} gets to it: look "
                    f"before sending it again ({again})",
                    "unavailable",
                )
            raise err from None

    async def call(self, op: str, args: Mapping[str, Any] | None = None, **kw: Any) -> Any:
        """A scheduler operation: typed reply data, or :class:`ClientError`."""
        topic = self.topics.scheduler_cmd(op)
        timeout = kw.pop("timeout", None)
        if kw:  # call("status", what="nodes"): keywords are args too (they were ignored)
            args = {**(args or {}), **kw}
        return await self._typed("scheduler", op, topic, args, "scheduler", timeout)

    async def component_name(self, component: str) -> str:
        """The full name of a component named as ``passata`` takes it: the full name
        ``driver:(address,channel)``, ``device/channel``, its slug, or a device of one
        channel; ``ClientError`` (code ``not_found``, naming the known ones) at once when
        no component has that name."""
        try:
            return await names.resolve(self.requester, component, self.timeout)
        except names.UnknownComponent as e:
            raise ClientError(str(e), "not_found") from None
        except MqttError as e:
            raise self._failed(e) from None

    def _failed(self, e: MqttError) -> ClientError:
        """An MQTT operation that failed: ``not_allowed`` when the broker refused this
        login a subscription (an answer: it was ``unavailable``, as if the broker were
        down: an admin's tour with a node's login), else ``unavailable``."""
        if isinstance(e, SubscriptionRefused):
            who = f"the login {self.url.username!r}" if self.url.username else "an anonymous login"
            return ClientError(
                f"not allowed: {e}: {who} may not read it (see the role table in docs/security.md)",
                "not_allowed",
            )
        if isinstance(e, MqttTimeout) and self.url.username:
            # nothing came: Mosquitto takes a wildcard subscription its rules forbid and
            # then sends none of its messages; Aedes closes the connection of a request
            # the rules forbid (a subscription sent as it closed is never answered)
            return ClientError(
                f"{e}; if it runs, the login {self.url.username!r} may not read it (a "
                "node's login may not: check the URL's user)",
                "unavailable",
            )
        return ClientError(str(e), "unavailable")

    def _require_started(self) -> None:
        """A client used before ``connect()`` (or after ``close()``) says so: it raised
        the transport's own untyped MqttError, "not connected: call connect() first",
        with a traceback through its modules (an integrator's tour)."""
        if not self.mqtt.started:
            raise ClientError(
                "this client is not connected: use `async with AsyncTomato(...) as t`, or "
                "`await t.connect()` first (again after close())",
                "closed",
            )

    async def _subscribe(self, filter_: str, handler: Callable[[Message], None]) -> None:
        self._require_started()
        try:
            await self.mqtt.subscribe(filter_, handler=handler)
        except MqttError as e:
            raise self._failed(e) from None

    async def _component(self, component: str, op: str, args: Mapping[str, Any]) -> Any:
        name = await self.component_name(component)
        topic = self.topics.component_user_cmd(name, op)
        return await self._typed("component", op, topic, args, f"component {name}")

    # -- jobs --------------------------------------------------------------------------
    async def submit(
        self,
        payload: str | os.PathLike[str] | Mapping[str, Any],
        jobname: str | None = None,
        *,
        token: str | None = None,
    ) -> Job:
        """Queue a payload (a file of any tomato version, or a dict); output goes to the
        current directory unless the payload says otherwise.

        ``token`` (8-64 characters, one per job the caller means to queue): a submit
        made again with it, by this login, is answered with the job the first made, so
        a script may send it again after ``unavailable`` without queueing a second job.
        Without one, a random token covers this call's own resends only."""
        from tomato_mqtt.config.login import login_name

        args = {
            "payload": payload_args(payload),
            "jobname": jobname,
            "submit_dir": os.getcwd(),
            "user": login_name(),  # as ketchup gives it (a payload older than 2.2 has none)
            "token": token or os.urandom(16).hex(),  # sent again, it is still one job
        }
        try:
            try:
                return Job(self, await self.call("job_submit", args))
            except ClientError as e:
                if not refused_token(e.code, str(e)):
                    raise
                del args["token"]  # a scheduler older than the token: as before
                return Job(self, await self.call("job_submit", args))
        except ClientError as e:
            if e.code != "refused" or isinstance(payload, Mapping):
                raise
            # the scheduler cannot know the file: named as ketchup names it (it was left
            # out: a newcomer's tour)
            raise ClientError(payload_refused(os.fspath(payload), str(e)), e.code) from None

    def job(self, jobid: int) -> Job:
        """A handle on an existing job (nothing is asked until a method is called)."""
        return Job(self, JobInfo(id=jobid, payload={}, submitted_at=""))

    async def status(self, jobid: int) -> JobInfo:
        jobs: list[JobInfo] = await self.call("job_status", {"jobids": [jobid]})
        return jobs[0]

    async def _status_by(
        self, jobid: int, deadline: float | None, timeout: float | None
    ) -> JobInfo:
        """The job's status for a call with a timeout of its own (``deadline``, on this
        loop's clock; None: none, the client's timeout then): asked within it, and again
        while the stack does not answer (stopped, restarting) until it is over, then
        ``TimeoutError``. A
        ``wait(timeout=60)`` raised ``unavailable`` at the client's 10 s, the stack back
        at 13 s, and ``wait(timeout=3)`` of a client of 5 s only after 5 s (an
        integrator's tour)."""
        if deadline is None:  # no timeout of its own: the client's, once (a stack that
            # is down is said: `ketchup status --follow` would wait for ever)
            return await self.status(jobid)
        loop = asyncio.get_running_loop()
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"job {jobid}: the stack did not answer within {timeout:g} s")
            ask = max(0.1, min(self.timeout, left))
            try:
                jobs: list[JobInfo] = await self.call(
                    "job_status", {"jobids": [jobid]}, timeout=ask
                )
                return jobs[0]
            except ClientError as e:
                if e.code != "unavailable":
                    raise
                if loop.time() >= deadline:
                    raise TimeoutError(
                        f"job {jobid}: the stack did not answer within {timeout:g} s ({e})"
                    ) from None
                await asyncio.sleep(0.5)

    async def jobs(self, *jobids: int) -> list[JobInfo]:
        """The jobs given, or every job (asked page by page: a reply holds at most
        ``JOB_PAGE_MAX``)."""
        if jobids:
            return await self.call("job_status", {"jobids": list(jobids)})  # type: ignore[no-any-return]
        out: list[JobInfo] = []
        throttled = 0
        while True:
            try:
                page = await self.call("job_status", {"offset": len(out), "limit": JOB_PAGE_MAX})
            except ClientError as e:
                # a secured scheduler counts a large answer as many requests: pages asked
                # for in a row are throttled ("conflict"); asked again a second later (a
                # listing of 30 MB failed half-way: a review)
                if e.code != "conflict" or "a second of one login" not in str(e):
                    raise
                throttled += 1
                if throttled > 60:
                    raise
                await asyncio.sleep(1.0)
                continue
            out += page
            if not page:  # (a page of big jobs holds fewer than JOB_PAGE_MAX: not the end)
                return out

    async def summary(self) -> JobSummary:
        """Counts per status and pipeline, the running jobs, the first and last queued:
        one small reply however deep the queue (``ketchup status``)."""
        return await self.call("job_status", {"summary": True})  # type: ignore[no-any-return]

    async def search(self, name: str, complete: bool = True) -> list[JobInfo]:
        return await self.call("job_search", {"name": name, "complete": complete})  # type: ignore[no-any-return]

    async def cancel(self, jobid: int) -> JobInfo:
        await self.call("job_cancel", {"jobids": [jobid]})
        return await self.status(jobid)

    async def wait(
        self, jobid: int, *, timeout: float | None = None, final: frozenset[str] = FINAL
    ) -> JobInfo:
        """Until the job's status is in ``final`` (pushed, not polled); TimeoutError."""
        async for p in self.follow(jobid, final=final, timeout=timeout):
            if p.status in final:
                break
        return await self.status(jobid)

    async def follow(
        self, jobid: int, *, final: frozenset[str] = FINAL, timeout: float | None = None
    ) -> AsyncIterator[Progress]:
        """A :class:`Progress` at every change of the job, up to a status in ``final``.

        From the job's retained status and its events, and the recorder's point counts
        (refreshed with its heartbeat). Subscribes first, then asks, so nothing between
        the two is missed.
        """
        self._check_refused()
        inbox = _Inbox()
        self._inboxes.add(inbox)
        filters = (
            self.topics.job_status(jobid),
            self.topics.job_event(jobid),
            self.topics.recorder_status(),
        )
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        p = Progress(jobid)

        async def take(msg: Message) -> bool:
            """``msg`` into ``p``; whether it was one of ours."""
            try:
                doc = json.loads(msg.payload) if msg.payload else None
            except ValueError:
                doc = None
            if not isinstance(doc, dict):
                return False
            if msg.topic == filters[0]:
                p.job(doc)
            elif msg.topic == filters[1]:
                p.event(doc)
                if doc.get("event") == "completed":
                    p.job((await self.status(jobid)).model_dump(mode="json"))
            else:
                prog = (doc.get("jobs") or {}).get(str(jobid))
                if not isinstance(prog, dict):
                    return False
                p.recorder(prog.get("points") or {})
            return True

        try:  # (subscribed in it: one that failed left the others for the client's life)
            for f in filters:
                await self._subscribe(f, inbox)
            job = await self._status_by(jobid, deadline, timeout)
            p.job(job.model_dump(mode="json"))
            # what came meanwhile, the recorder's retained count among it: the first
            # line of a job followed mid-run said "0 point(s)" (a newcomer's tour)
            while (came := inbox.take()) is not None:
                await take(came)
            shown = p.line()
            yield p
            while p.status not in final:
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    raise TimeoutError(f"job {jobid} still {p.status} after {timeout:g} s")
                try:
                    msg = await inbox.get(left)
                except asyncio.TimeoutError:
                    continue
                if not await take(msg):
                    continue
                if p.line() == shown and p.status not in final:
                    continue  # a heartbeat with the same counts: no change to show
                shown = p.line()
                yield p
        finally:
            self._inboxes.discard(inbox)
            for f in filters:
                with contextlib.suppress(Exception):
                    await self.mqtt.unsubscribe(f, handler=inbox)

    async def stream(self, jobid: int, *, timeout: float | None = None) -> AsyncIterator[DataBatch]:
        """The job's data batches as its components publish them, until it ends.

        Live only (what is published after the call); the stored data of a job is in
        :meth:`snapshot` / :meth:`results`. A batch may come twice (QoS 1): its identity
        is ``(component, stream, seq)``. As :meth:`follow`: ``TimeoutError`` when the job
        has not ended ``timeout`` s after the call (a job that waits for its sample
        would otherwise keep the loop waiting for ever).
        """
        self._check_refused()
        inbox = _Inbox()
        self._inboxes.add(inbox)
        data, status = self.topics.all_component_data(), self.topics.job_status(jobid)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:  # (subscribed in it, as follow)
            await self._subscribe(data, inbox)
            await self._subscribe(status, inbox)
            now = (await self._status_by(jobid, deadline, timeout)).status
            if now in FINAL:
                return
            while True:
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    raise TimeoutError(f"job {jobid} still {now} after {timeout:g} s")
                try:
                    msg = await inbox.get(left)
                except asyncio.TimeoutError:
                    continue
                if msg.topic == status:
                    try:
                        doc = json.loads(msg.payload) if msg.payload else None
                    except ValueError:
                        doc = None
                    if isinstance(doc, dict) and isinstance(doc.get("status"), str):
                        now = doc["status"]
                        if now in FINAL:
                            return
                    continue
                try:
                    batch = decode(DataBatch, msg.payload, msg.topic)
                except DecodeError:  # not ours to judge: the recorder logs bad batches
                    continue
                if batch.job == jobid:
                    yield batch
        finally:
            self._inboxes.discard(inbox)
            for f in (data, status):
                with contextlib.suppress(Exception):
                    await self.mqtt.unsubscribe(f, handler=inbox)

    async def snapshot(self, jobid: int, path: str | os.PathLike[str] | None = None) -> Any:
        """An up-to-date file of the job: written to ``path`` (returns the Path), or
        opened as an ``xarray.DataTree`` (loaded into memory) without one."""
        for again in reversed(range(SNAPSHOT_ASKS)):
            info: FileData = await self.call("job_snapshot", {"jobid": jobid}, timeout=60)
            try:
                return await self._deliver(info, path)
            except ClientError as e:
                # another's snapshot of the job took its file's name before this fetch
                # began (the recorder holds a file from a fetch's first chunk on): asked
                # again, as the answer says (a review)
                if not again or not e.file_replaced:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def results(self, jobid: int, path: str | os.PathLike[str] | None = None) -> Any:
        """The job's data: its results file when it has ended and the file is readable
        here, else an up-to-date snapshot fetched over MQTT (as :meth:`snapshot`)."""
        job = await self.status(jobid)
        if job.status in FINAL and job.launched_at is None:
            # it ended while queued: no data, and no file at its respath (an
            # integrator's audit: the answer spoke of a snapshot never asked for)
            raise ClientError(
                f"job {jobid} never started (it ended {job.status} while queued): it has no "
                "data and no results file",
                "conflict",
            )
        if job.status in FINAL and job.respath and Path(job.respath).is_file():
            if path is None:
                # in a thread: the lock may be held by a recorder in this process
                return await asyncio.to_thread(_open_tree, Path(job.respath))
            import shutil

            target = _target(path, Path(job.respath).name)
            with contextlib.suppress(OSError):
                if target.samefile(job.respath):  # asked for where it is: no copy to make
                    return target  # (it failed "… are the same file": a newcomer's tour)
            try:
                return Path(shutil.copyfile(job.respath, target))
            except OSError as e:
                raise ClientError(f"cannot write {target}: {e.strerror or e}", "bad_request") from e
        return await self.snapshot(jobid, path)

    async def fetch_file(self, info: FileData, target: Path) -> int:
        """The bytes of a file the recorder wrote, in chunks over MQTT, to ``target``."""
        part = target.with_name(target.name + ".part")
        try:
            try:
                f = part.open("wb")
            except OSError as e:  # (it named the .part file: an integrator's tour)
                raise ClientError(f"cannot write {target}: {e.strerror or e}", "bad_request") from e
            with f:
                for index in range(info.chunks):
                    r = await self.request(
                        self.topics.recorder_cmd("fetch"), {"token": info.token, "index": index}
                    )
                    chunk = r.data.get("data") if isinstance(r.data, dict) else None
                    if not r.success or not isinstance(chunk, str):
                        raise ClientError(f"fetching chunk {index} failed: {r.msg}", r.code)
                    f.write(base64.b64decode(chunk))
            got = part.stat().st_size
            if got != info.size:
                raise ClientError(f"transfer incomplete: {got} of {info.size} bytes")
            os.replace(part, target)
            return got
        finally:
            part.unlink(missing_ok=True)

    async def _deliver(self, info: FileData, path: str | os.PathLike[str] | None) -> Any:
        if path is not None:
            target = _target(path, Path(info.path).name)
            await self.fetch_file(info, target)
            return target
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / Path(info.path).name
            await self.fetch_file(info, target)
            return await asyncio.to_thread(_open_tree, target)

    # -- pipelines and components ----------------------------------------------------
    async def pipeline_load(self, pipeline: str, sampleid: str) -> PipelineState:
        return await self.call("pipeline_load", {"pipeline": pipeline, "sampleid": sampleid})  # type: ignore[no-any-return]

    async def pipeline_eject(self, pipeline: str) -> PipelineState:
        return await self.call("pipeline_eject", {"pipeline": pipeline})  # type: ignore[no-any-return]

    async def pipeline_ready(self, pipeline: str) -> PipelineState:
        return await self.call("pipeline_ready", {"pipeline": pipeline})  # type: ignore[no-any-return]

    async def pipelines(self) -> dict[str, PipelineInfo]:
        """Every pipeline by name: its sample, whether it is ready, its job, its roles."""
        r = await self.request(self.topics.scheduler_cmd("status"), {"what": "pipelines"})
        if not r.success or not isinstance(r.data, dict):
            raise ClientError(r.msg, r.code)
        return {name: PipelineInfo.model_validate(p) for name, p in r.data.items()}

    async def pipeline(self, name: str) -> PipelineInfo:
        """One pipeline (as :meth:`pipelines`); ``ClientError`` ``not_found`` naming the
        known ones when there is none of that name."""
        pips = await self.pipelines()
        if name not in pips:
            raise ClientError(
                f"no pipeline named {name!r}{did_you_mean(name, list(pips))} (known:"
                f" {', '.join(sorted(pips)) or 'none'})",
                "not_found",
            )
        return pips[name]

    async def component_get(self, component: str, *attrs: str) -> dict[str, Any]:
        """Attribute values of a component (all of them without names); the component
        named as :meth:`component_name` takes it."""
        return await self._component(component, "get_attr", {"attrs": list(attrs) or None})  # type: ignore[no-any-return]

    async def component_set(
        self, component: str, attr: str, val: Any, force: bool = False
    ) -> dict[str, Any]:
        """Set an attribute (needs the admin role on a secured stack); the component
        named as :meth:`component_name` takes it."""
        return await self._component(  # type: ignore[no-any-return]
            component, "set_attr", {"attr": attr, "val": val, "force": force}
        )


def _open_tree(path: Path) -> Any:
    """The file as an ``xarray.DataTree``, read into memory (the file may go away); under
    the process's netCDF lock (netCDF4 is not thread-safe: tomato_mqtt/nclock.py)."""
    import xarray as xr

    from tomato_mqtt.nclock import NC_LOCK

    with NC_LOCK, xr.open_datatree(path, engine="netcdf4") as tree:
        return tree.load()


def _target(path: str | os.PathLike[str], name: str) -> Path:
    """Where a file asked for at ``path`` goes: into it under the file's own ``name``
    when it is a folder (as ``cp``; it failed naming a ``.part`` file: an integrator's
    tour), else ``path`` itself, whose folder must exist."""
    p = Path(path).expanduser()
    if p.is_dir():
        return p / name
    if not p.parent.is_dir():
        raise ClientError(f"cannot write {p}: there is no folder {p.parent}", "bad_request")
    return p
