"""The synchronous client: the same operations as :class:`~tomato_mqtt.client.aio.AsyncTomato`
for scripts and the CLI, without asyncio in sight.

Light to import (the CLI's fast path, issue 3): a plain request goes over the transport's
one-shot path (paho's blocking API, no asyncio, no pydantic); the first call that needs
more (waiting, following, streaming, files) starts an asyncio client on a background
thread and keeps it for the life of this object (``close()`` or ``with`` ends it).
"""

from __future__ import annotations

import os
import queue
import threading
import weakref
from collections.abc import Coroutine, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from tomato_mqtt.config.url import BrokerURL
from tomato_mqtt.transport import oneshot
from tomato_mqtt.wire.topics import Topics

if TYPE_CHECKING:  # asyncio (~25 ms) only when a call needs it: the CLI's fast path
    import asyncio

    from tomato_mqtt.client.aio import AsyncTomato
    from tomato_mqtt.client.progress import Progress
    from tomato_mqtt.model.jobs import Job as JobInfo
    from tomato_mqtt.model.jobs import PipelineState
    from tomato_mqtt.wire.commands import FileData
    from tomato_mqtt.wire.messages import DataBatch
    from tomato_mqtt.wire.status import JobSummary, PipelineInfo

__all__ = ["Job", "Tomato"]

T = TypeVar("T")
_END = object()


class Job:
    """A submitted job (see :class:`tomato_mqtt.client.aio.Job`), synchronously."""

    def __init__(self, client: Tomato, info: JobInfo) -> None:
        self.client = client
        self.info = info

    @property
    def id(self) -> int:
        return self.info.id

    def __repr__(self) -> str:
        from tomato_mqtt.client.aio import _job_repr

        return _job_repr(self.info)

    def status(self) -> JobInfo:
        self.info = self.client.status(self.id)
        return self.info

    def wait(self, timeout: float | None = None) -> JobInfo:
        self.info = self.client.wait(self.id, timeout=timeout)
        return self.info

    def cancel(self) -> JobInfo:
        self.info = self.client.cancel(self.id)
        return self.info

    def snapshot(self, path: str | os.PathLike[str] | None = None) -> Any:
        return self.client.snapshot(self.id, path)

    def results(self, path: str | os.PathLike[str] | None = None) -> Any:
        return self.client.results(self.id, path)

    def stream(self, timeout: float | None = None) -> Iterator[DataBatch]:
        return self.client.stream(self.id, timeout=timeout)

    def follow(self, timeout: float | None = None) -> Iterator[Progress]:
        return self.client.follow(self.id, timeout=timeout)


class Tomato:
    """A synchronous connection to one tomato-mqtt instance."""

    def __init__(
        self,
        url: str | BrokerURL = "mqtt://127.0.0.1:1883",
        instance: str = "default",
        *,
        timeout: float = 10.0,
        max_request: int | None = None,
    ) -> None:
        self.url = url if isinstance(url, BrokerURL) else BrokerURL.parse(url)
        self.instance = instance
        self.max_request = max_request
        self.topics = Topics(instance, self.url.username)
        from tomato_mqtt.client.checks import seconds

        self.timeout = seconds(timeout)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._aio: AsyncTomato | None = None
        self._starting = threading.Lock()
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @classmethod
    def from_settings(
        cls, appdir: str | os.PathLike[str] | None = None, *, timeout: float = 10.0
    ) -> Tomato:
        """Broker and instance from ``settings.toml`` (the default appdir, or ``appdir``),
        and the largest request its broker takes (``[broker] max_packet_bytes``)."""
        from tomato_mqtt.client.local import settings_of

        url, instance, max_request = settings_of(appdir)
        return cls(url, instance, timeout=timeout, max_request=max_request)

    def __enter__(self) -> Tomato:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop is None:
            return
        import asyncio

        if self._aio is not None:
            aio = self._aio

            async def close_and_end_calls() -> None:
                # the calls other threads wait on (wait, follow, stream) end with
                # ClientError "closed"; any still running is cancelled: it waited for
                # ever once the loop stopped, its own timeout too (an integrator's tour)
                await aio.close()
                others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                if others:
                    _done, pending = await asyncio.wait(others, timeout=1.0)
                    for t in pending:
                        t.cancel()
                    if pending:
                        await asyncio.wait(pending, timeout=1.0)

            asyncio.run_coroutine_threadsafe(close_and_end_calls(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop.close()
        self._loop = self._thread = self._aio = None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    # -- the fast path: one request, one reply ----------------------------------------
    def request(
        self,
        topic: str,
        args: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        who: str = "scheduler",
    ) -> oneshot.Reply:
        """A raw request (plain dicts in and out); raises ``oneshot.OneShotError``s. One
        to the scheduler is sent again while no answer comes (a scheduler restarting:
        ``ketchup snapshot`` waited out its 60 s and failed, found by fault injection)."""
        return oneshot.request(
            self.url,
            topic,
            self.topics.reply,
            args,
            timeout=timeout or self.timeout,
            who=who,
            resend=who == "scheduler",
        )

    # -- the rest runs on an asyncio client in a background thread --------------------
    def connect(self) -> Tomato:
        """Connect now (else the first call that needs the connection does); raises
        :class:`ClientError` (``unreachable`` when nothing listens on the broker's port)."""
        self._start()
        return self

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        import asyncio
        import concurrent.futures

        try:
            return asyncio.run_coroutine_threadsafe(coro, self._start()).result()
        except concurrent.futures.CancelledError:  # close() ended it
            from tomato_mqtt.client.aio import closed

            raise closed() from None

    def _start(self) -> asyncio.AbstractEventLoop:
        # threads may share one Tomato: the first call starts the client, once, and the
        # others wait for it (each call then runs on its loop: run_coroutine_threadsafe)
        with self._starting:
            if self._loop is None:
                import asyncio

                from tomato_mqtt.client.aio import AsyncTomato

                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=_serve, args=(loop,), daemon=True)
                thread.start()
                aio = AsyncTomato(
                    self.url, self.instance, timeout=self.timeout, max_request=self.max_request
                )
                try:
                    asyncio.run_coroutine_threadsafe(aio.connect(), loop).result()
                except BaseException:
                    loop.call_soon_threadsafe(loop.stop)
                    thread.join(10)
                    loop.close()
                    raise
                self._thread, self._aio, self._loop = thread, aio, loop
                # a client dropped without close() ends its connection and thread when
                # it is collected (each kept both for the life of the process: a script
                # making one a loop round held 200 threads and connections)
                self._finalizer = weakref.finalize(self, _abandoned, loop, aio)
            return self._loop

    @property
    def aio(self) -> AsyncTomato:
        self._start()
        assert self._aio is not None
        return self._aio

    def call(self, op: str, args: Mapping[str, Any] | None = None, **kw: Any) -> Any:
        """A scheduler operation: typed reply data, or ``ClientError``."""
        return self._run(self.aio.call(op, args, **kw))

    def _iterate(self, agen: Any) -> Iterator[Any]:
        import asyncio

        q: queue.Queue[Any] = queue.Queue()

        async def pump() -> None:
            try:
                async for item in agen:
                    q.put(item)
            except BaseException as e:  # handed to the consumer's thread
                q.put(e)
            finally:
                q.put(_END)

        fut = asyncio.run_coroutine_threadsafe(pump(), self._start())
        try:
            while (item := q.get()) is not _END:
                if isinstance(item, asyncio.CancelledError):  # close() ended it
                    from tomato_mqtt.client.aio import closed

                    raise closed()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            fut.cancel()

    def submit(
        self,
        payload: str | os.PathLike[str] | Mapping[str, Any],
        jobname: str | None = None,
        *,
        token: str | None = None,
    ) -> Job:
        return Job(self, self._run(self.aio.submit(payload, jobname, token=token)).info)

    def job(self, jobid: int) -> Job:
        return Job(self, self.aio.job(jobid).info)

    def status(self, jobid: int) -> JobInfo:
        return self._run(self.aio.status(jobid))

    def jobs(self, *jobids: int) -> list[JobInfo]:
        return self._run(self.aio.jobs(*jobids))

    def summary(self) -> JobSummary:
        return self._run(self.aio.summary())

    def search(self, name: str, complete: bool = True) -> list[JobInfo]:
        return self._run(self.aio.search(name, complete))

    def cancel(self, jobid: int) -> JobInfo:
        return self._run(self.aio.cancel(jobid))

    def wait(self, jobid: int, timeout: float | None = None) -> JobInfo:
        aio, left = self._waiting(jobid, timeout)
        return self._run(aio.wait(jobid, timeout=left))

    def follow(self, jobid: int, timeout: float | None = None) -> Iterator[Progress]:
        aio, left = self._waiting(jobid, timeout)
        return self._iterate(aio.follow(jobid, timeout=left))

    def stream(self, jobid: int, timeout: float | None = None) -> Iterator[DataBatch]:
        aio, left = self._waiting(jobid, timeout)
        return self._iterate(aio.stream(jobid, timeout=left))

    def _waiting(self, jobid: int, timeout: float | None) -> tuple[AsyncTomato, float | None]:
        """The connected client for a call with a timeout of its own, and what is left of
        it: such a call waits for a stack that is away as long as it allows, and the
        broker of a stopped or restarting ``tomato start`` stack refuses the connection,
        tried again each 0.5 s (the first call failed at once, "unavailable", where the
        docs promise a wait: an integrator's tour)."""
        if timeout is None:
            return self.aio, None
        import time

        from tomato_mqtt.client.aio import ClientError

        end = time.monotonic() + timeout
        waited = False
        while True:
            try:  # (the timeout as given, said in its TimeoutError, unless it waited)
                return self.aio, max(0.0, end - time.monotonic()) if waited else timeout
            except ClientError as e:
                if e.code != "unavailable":
                    raise
                if time.monotonic() + 0.5 >= end:
                    raise TimeoutError(
                        f"job {jobid}: the stack did not answer within {timeout:g} s ({e})"
                    ) from None
                time.sleep(0.5)
                waited = True

    def snapshot(self, jobid: int, path: str | os.PathLike[str] | None = None) -> Any:
        return self._run(self.aio.snapshot(jobid, path))

    def results(self, jobid: int, path: str | os.PathLike[str] | None = None) -> Any:
        return self._run(self.aio.results(jobid, path))

    def fetch_file(self, info: FileData, target: str | os.PathLike[str]) -> int:
        """The bytes of a file the recorder wrote (``FileData`` of a reply) to ``target``."""
        from pathlib import Path

        return self._run(self.aio.fetch_file(info, Path(target)))

    def pipeline_load(self, pipeline: str, sampleid: str) -> PipelineState:
        return self._run(self.aio.pipeline_load(pipeline, sampleid))

    def pipeline_eject(self, pipeline: str) -> PipelineState:
        return self._run(self.aio.pipeline_eject(pipeline))

    def pipeline_ready(self, pipeline: str) -> PipelineState:
        return self._run(self.aio.pipeline_ready(pipeline))

    def pipelines(self) -> dict[str, PipelineInfo]:
        return self._run(self.aio.pipelines())

    def pipeline(self, name: str) -> PipelineInfo:
        return self._run(self.aio.pipeline(name))

    def component_name(self, component: str) -> str:
        return self._run(self.aio.component_name(component))

    def component_get(self, component: str, *attrs: str) -> dict[str, Any]:
        return self._run(self.aio.component_get(component, *attrs))

    def component_set(
        self, component: str, attr: str, val: Any, force: bool = False
    ) -> dict[str, Any]:
        return self._run(self.aio.component_set(component, attr, val, force))


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    """The client's loop thread: runs the loop until it is stopped (``close()``, or
    :func:`_abandoned`), then closes it (a no-op for ``close()``, which closes it too)."""
    loop.run_forever()
    loop.close()


def _abandoned(loop: asyncio.AbstractEventLoop, aio: AsyncTomato) -> None:
    """What a collected :class:`Tomato` that was not closed leaves behind: its connection
    closed and its loop stopped, without waiting (this runs in the garbage collector, or
    at exit: the loop's thread is a daemon)."""
    import asyncio

    if loop.is_closed():
        return
    try:
        fut = asyncio.run_coroutine_threadsafe(aio.close(), loop)
        fut.add_done_callback(lambda _f: loop.call_soon_threadsafe(loop.stop))
    except RuntimeError:  # the loop is gone already
        pass
