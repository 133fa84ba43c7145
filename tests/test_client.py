"""The Python client against a live in-process stack, and docs/client.md's script."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import RunningBroker
from tests.inproc import CONFIG, inproc_stack
from tomato_mqtt.client import AsyncTomato, ClientError, Tomato

ROOT = Path(__file__).resolve().parents[1]


def _doc_text() -> str:
    return (ROOT / "docs" / "client.md").read_text()


def _doc_script() -> str:
    text = _doc_text()
    m = re.search(r"<!-- client-example -->\n```python\n(.*?)\n```", text, flags=re.S)
    assert m, "docs/client.md lost its example"
    return m.group(1)


async def test_docs_client_script_runs(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """As the README sets a stack up (``tomato init``'s devices file: ``pip-counter``), and
    with the usage line's payload: once on an empty pipeline, once after the README's
    steps (the sample loaded, the pipeline ready); each time the pipeline is left as the
    script found it."""
    script = tmp_path / "script.py"
    script.write_text(_doc_script())
    usage = re.search(r"(?i)run it as\s+`python script.py (\S+) (\S+) (\S+)`", _doc_text())
    assert usage, "docs/client.md lost its usage line"
    payload = ROOT / usage.group(3)
    assert payload.is_file(), f"the usage line names {usage.group(3)}, which does not exist"
    async with inproc_stack(broker.port, tmp_path, instance, devices="devices_default.yml") as st:
        work = st.settings.datadir / "work"  # where the recorder may write the file
        work.mkdir(parents=True)

        async def run(given: Path = payload) -> str:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(script),
                f"mqtt://127.0.0.1:{broker.port}",
                instance,
                str(given),
                cwd=work,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            out, _ = await asyncio.wait_for(proc.communicate(), 120)
            text = out.decode()
            assert proc.returncode == 0, text
            assert "ended c" in text, text
            m = re.search(r"^(\d+) points of \[.*'val'", text, flags=re.M)
            assert m, text
            assert 9 <= int(m.group(1)) <= 11, text  # 1 s at 0.1 s
            assert re.search(r"job \d+: r .*point", text), text  # progress while it ran
            assert "could not be written" not in text, text
            return text

        async def pip() -> tuple[str | None, bool]:
            p = (await st.call("status", {"what": "pipelines"}))["pip-counter"]
            return p.sampleid, p.ready

        await run()  # an empty pipeline: loaded, run, ejected again
        assert await pip() == (None, False)
        # the README's steps: the sample loaded, the pipeline ready
        await st.call("pipeline_load", {"pipeline": "pip-counter", "sampleid": "counter_1_0.1"})
        await st.call("pipeline_ready", {"pipeline": "pip-counter"})
        await run()
        assert await pip() == ("counter_1_0.1", True)
        # a payload of version 2.2 (its sample's `identifier`: the script read `name` and
        # failed with a KeyError, a newcomer's tour), on the emptied pipeline
        await st.call("pipeline_eject", {"pipeline": "pip-counter"})
        await run(CONFIG / "counter_v2.2.yml")
        assert await pip() == (None, False)


async def test_async_client_jobs_stream_snapshot_and_components(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    payload = yaml.safe_load((CONFIG / "counter_1_0.1.yml").read_text())
    payload["method"][0]["time"] = 3.0
    async with inproc_stack(broker.port, tmp_path, instance) as st:
        url = f"mqtt://127.0.0.1:{broker.port}"
        async with AsyncTomato(url, instance) as t:
            pip = await t.pipeline_load("pip-counter-2", "counter_1_0.1")
            assert pip.sampleid == "counter_1_0.1"
            await t.pipeline_ready("pip-counter-2")
            job = await t.submit(payload, jobname="aio")
            seen = []
            async for batch in job.stream():
                seen.append(batch)
                if len(seen) == 2:
                    break
            assert all(b.job == job.id and "val" in b.vars for b in seen)
            snap = await job.snapshot(tmp_path / "snap.nc")
            assert snap.is_file() and (snap.stat().st_mode & 0o777) == 0o644 & ~_umask()
            # a folder: the file goes into it under its own name, as with cp (it failed
            # naming a `.part` file: an integrator's tour); a missing folder is said
            (tmp_path / "into").mkdir()
            into = await job.snapshot(tmp_path / "into")
            assert into == tmp_path / "into" / f"snapshot.{job.id}.nc" and into.is_file(), into
            with pytest.raises(ClientError, match="there is no folder .*nowhere") as e:
                await job.snapshot(tmp_path / "nowhere" / "snap.nc")
            assert e.value.code == "bad_request" and ".part" not in str(e.value)
            ended = await job.wait(timeout=60)
            assert ended.status == "c"
            assert Path(str(ended.respath)).stat().st_mode & 0o044  # readable by the group
            tree = await job.results()
            assert tree["counter"].to_dataset().sizes["uts"] > 20
            copy = await job.results(tmp_path / "into")
            assert copy == tmp_path / "into" / Path(str(ended.respath)).name, copy
            assert copy.read_bytes() == Path(str(ended.respath)).read_bytes()
            # asked for into its own folder: the file itself (it failed "… are the same
            # file", a Python repr in the message: a newcomer's tour)
            for where in (Path(str(ended.respath)).parent, Path(str(ended.respath))):
                assert await job.results(where) == Path(str(ended.respath))
            cmp = st.scheduler.layout.pipelines["pip-counter-2"].roles["counter"]
            got = await t.component_get(cmp)
            assert got, got
            with pytest.raises(ClientError) as e:
                await t.status(99999)
            assert e.value.code == "not_found"
            await t.pipeline_eject("pip-counter-2")


async def test_calls_watching_jobs_side_by_side_on_one_connection_each_get_their_messages(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """An integrator's run: two `wait()`s of one job on one client (two users of a
    dashboard backend viewing it) - the older timed out though the job had ended: a
    second subscription to a filter replaced the first, and the first call's unsubscribe
    ended the other's. Streams of two jobs on one `AsyncTomato` got no points."""
    payload = yaml.safe_load((CONFIG / "counter_1_0.1.yml").read_text())
    payload["method"][0]["time"] = 2.0
    async with inproc_stack(broker.port, tmp_path, instance, components=2) as st:
        url = f"mqtt://127.0.0.1:{broker.port}"
        async with AsyncTomato(url, instance) as t:
            jobs = []
            for pip in ("pip-counter-1", "pip-counter-2"):
                await t.pipeline_load(pip, "counter_1_0.1")
                await t.pipeline_ready(pip)
                jobs.append(await t.submit(payload))
            a, b = jobs

            async def count(job: object) -> int:
                n = 0
                async for batch in job.stream(timeout=30):  # type: ignore[attr-defined]
                    n += len(batch.uts)
                return n

            async def wait_later(job: object) -> str:
                await asyncio.sleep(0.5)  # (subscribes after the first wait did)
                return str((await job.wait(timeout=30)).status)  # type: ignore[attr-defined]

            got = await asyncio.gather(
                a.wait(timeout=30), wait_later(a), count(a), count(b), b.wait(timeout=30)
            )
            assert got[0].status == "c" and got[1] == "c" and got[4].status == "c", got
            assert got[2] > 5 and got[3] > 5, got  # each stream saw its job's points
        assert not st.scheduler.runners


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m


def test_import_is_light() -> None:
    """The CLI's requests go through the client: importing it must stay cheap."""
    import subprocess

    code = (
        "import sys, tomato_mqtt.client; "
        "print([m for m in ('pydantic', 'asyncio', 'xarray', 'amqtt') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


async def test_stream_times_out_as_follow_and_wait_do(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """A job that waits for its sample: ``stream(timeout)`` raises ``TimeoutError``, as
    ``follow`` and ``wait`` do, instead of waiting for ever (sync and asyncio)."""
    payload = yaml.safe_load((CONFIG / "counter_1_0.1.yml").read_text())
    async with inproc_stack(broker.port, tmp_path, instance):
        url = f"mqtt://127.0.0.1:{broker.port}"
        async with AsyncTomato(url, instance) as t:
            job = await t.submit(payload, jobname="waits")  # no pipeline holds its sample
            assert (await job.status()).status in ("q", "qw")
            t0 = asyncio.get_running_loop().time()
            with pytest.raises(TimeoutError, match=rf"job {job.id} still qw? after 0.5 s"):
                async for _ in job.stream(timeout=0.5):
                    pass
            assert asyncio.get_running_loop().time() - t0 < 5
            with pytest.raises(TimeoutError):
                async for _ in job.follow(timeout=0.5):
                    pass

            def sync() -> None:
                with Tomato(url, instance) as s, pytest.raises(TimeoutError, match="after 0.5 s"):
                    for _ in s.job(job.id).stream(timeout=0.5):
                        pass

            await asyncio.wait_for(asyncio.to_thread(sync), 20)
            await job.cancel()


async def test_a_close_ends_the_calls_that_wait_on_the_client(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """An integrator's tour: ``close()`` while a thread's ``wait(timeout=3)`` (or a
    ``follow``, a ``stream``) waited on a job left it waiting for ever, its own timeout
    too, and the script never exited; a task's ``wait()`` after the async client's close
    the same. Each ends with ``ClientError`` "closed" at once."""
    import threading

    from tomato_mqtt.client import ClientError

    payload = yaml.safe_load((CONFIG / "counter_1_0.1.yml").read_text())
    async with inproc_stack(broker.port, tmp_path, instance):
        url = f"mqtt://127.0.0.1:{broker.port}"
        t = AsyncTomato(url, instance)
        await t.connect()
        job = await t.submit(payload, jobname="waits")  # no pipeline holds its sample
        waiting = [
            asyncio.ensure_future(job.wait()),
            asyncio.ensure_future(_drain(job.follow())),
            asyncio.ensure_future(_drain(job.stream())),
        ]
        for _ in range(200):  # each waits on its subscriptions (not on a request)
            if len(t._inboxes) == 3 and all(not w.done() for w in waiting):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # (past the first status each asks)
        await t.close()
        for w in waiting:
            with pytest.raises(ClientError, match="this client was closed") as e:
                await asyncio.wait_for(w, 5)
            assert e.value.code == "closed"

        def sync() -> list[str]:
            s = Tomato(url, instance)
            ended: list[str] = []
            sjob = s.job(job.id)
            calls = (
                lambda: sjob.wait(timeout=30),
                lambda: list(sjob.follow(timeout=30)),
                lambda: list(sjob.stream(timeout=30)),
            )

            def run(call: object) -> None:
                try:
                    call()  # type: ignore[operator]
                except ClientError as err:
                    ended.append(str(err.code))

            threads = [threading.Thread(target=run, args=(c,)) for c in calls]
            for th in threads:
                th.start()
            import time

            for _ in range(200):  # each waits on its subscriptions (not on a request)
                if s._aio is not None and len(s._aio._inboxes) == 3:
                    break
                time.sleep(0.05)
            time.sleep(0.2)  # (past the first status each asks)
            t0 = time.monotonic()
            s.close()
            for th in threads:
                th.join(10)
            assert not any(th.is_alive() for th in threads), "a call still waits"
            assert time.monotonic() - t0 < 5
            return ended

        assert sorted(await asyncio.wait_for(asyncio.to_thread(sync), 30)) == ["closed"] * 3
        # used after its close, or never connected: said at once, typed (it waited its
        # timeout and said "lost its connection … connects again by itself", or raised
        # the transport's untyped MqttError: an integrator's tour)
        for unconnected in (t, AsyncTomato(url, instance)):
            t0 = asyncio.get_running_loop().time()
            with pytest.raises(ClientError, match="this client is not connected") as e:
                await unconnected.summary()
            assert e.value.code == "closed"
            assert asyncio.get_running_loop().time() - t0 < 1
        async with AsyncTomato(url, instance) as again:
            await again.cancel(job.id)


async def test_a_call_with_a_timeout_of_its_own_waits_for_a_stack_that_is_away(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """An integrator's tour: ``wait(timeout=3)`` of a client of 5 s raised
    ``unavailable`` after 5 s (no ``TimeoutError`` after 3); ``wait(timeout=60)``
    raised ``unavailable`` at the client's 10 s while the stack came back at 13 s. A
    call's own timeout bounds it, and the stack is asked again within it."""
    url = f"mqtt://127.0.0.1:{broker.port}"
    loop = asyncio.get_running_loop()
    async with AsyncTomato(url, instance, timeout=5.0) as t:  # nothing behind the broker
        t0 = loop.time()
        with pytest.raises(TimeoutError, match="the stack did not answer within 1.5 s"):
            await t.wait(1, timeout=1.5)
        assert loop.time() - t0 < 3.5
    async with AsyncTomato(url, instance, timeout=1.0) as t:

        async def late_stack() -> None:
            await asyncio.sleep(2.0)  # past the client's 1 s: the stack comes up
            async with inproc_stack(broker.port, tmp_path, instance):
                await asyncio.sleep(10)

        up = asyncio.ensure_future(late_stack())
        try:
            t0 = loop.time()
            from tomato_mqtt.client import ClientError

            with pytest.raises(ClientError) as e:  # answered, once it is up: no job 1
                await t.wait(1, timeout=20)
            assert e.value.code == "not_found" and loop.time() - t0 > 1.5, (e.value, t0)
        finally:
            up.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await up


async def test_a_sync_call_with_a_timeout_of_its_own_waits_for_a_broker_that_is_away(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """An integrator's tour: a sync client's first ``wait(4)``, ``follow(timeout=4)`` or
    ``stream(timeout=4)`` with the stack stopped (its broker too) raised ``unavailable``
    in 0.2 s, where client.md promises a wait for a stack that is away."""
    url = f"mqtt://127.0.0.1:{broker.port}"
    await broker.stop()
    t = Tomato(url, instance, timeout=1.0)
    up: asyncio.Future[None] | None = None
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(TimeoutError, match=r"job 1: the stack did not answer within 1.5 s \("):
            await asyncio.to_thread(t.wait, 1, 1.5)
        assert 1.0 < loop.time() - t0 < 3.5
        with pytest.raises(TimeoutError, match="is tomato-mqtt running"):
            await asyncio.to_thread(lambda: next(iter(t.follow(1, timeout=1.0))))

        async def late_stack() -> None:
            await asyncio.sleep(1.5)
            await broker.start()
            async with inproc_stack(broker.port, tmp_path, instance):
                await asyncio.sleep(20)

        up = asyncio.ensure_future(late_stack())
        with pytest.raises(ClientError) as e:  # answered once it is up: there is no job 1
            await asyncio.to_thread(t.wait, 1, 20)
        assert e.value.code == "not_found" and loop.time() - t0 > 1.5, e.value
    finally:
        await asyncio.to_thread(t.close)
        if up is not None:
            up.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await up


async def _drain(agen: Any) -> None:
    async for _ in agen:
        pass


async def test_every_failure_is_a_client_error_with_a_code(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """Found by an integrator's audit: client.md says failures raise ClientError with a
    code to branch on; an unknown op raised KeyError, bad args a pydantic
    ValidationError, ``pipelines()`` with no scheduler NoResponder, and an unknown
    attribute was ``refused`` where topics.md says ``not_found``."""
    url = f"mqtt://127.0.0.1:{broker.port}"
    async with AsyncTomato(url, instance, timeout=1.0) as t:  # nothing behind the broker
        with pytest.raises(ClientError) as e:
            await t.pipelines()
        assert e.value.code == "unavailable" and "is it running" in str(e.value)
        assert "may still be carried out" not in str(e.value)  # (a read: nothing to fear)
        # an op that changes something: a slow scheduler may carry it out later (an
        # integrator's run: a submit sent again after `unavailable` was a second job)
        with pytest.raises(ClientError) as e:
            await t.call("pipeline_ready", {"pipeline": "pip-counter-1"})
        assert e.value.code == "unavailable", e.value
        assert "may still be carried out when the scheduler gets to it" in str(e.value)
        # the broker gone: said so, not "no scheduler answered" only (an integrator's run)
        await broker.stop()
        with pytest.raises(ClientError) as e:
            await t.pipelines()
        assert e.value.code == "unavailable", e.value
        assert "this client has lost its connection to the broker" in str(e.value), e.value
        await broker.start()
    async with inproc_stack(broker.port, tmp_path, instance) as st, AsyncTomato(url, instance) as t:
        cases = [
            (t.call("nosuchop"), "unknown_op", "known: "),
            (t.call("status", {"what": "bogus"}), "bad_request", "bad args for 'status': what"),
            (t.call("job_status", {"jobids": "x"}), "bad_request", "jobids"),
            (t.component_get("dev-counter/1", "nope"), "not_found", "known: choice, max"),
            (t.component_set("dev-counter/1", "nope", 1), "not_found", "unknown attr 'nope'"),
        ]
        for coro, code, words in cases:
            with pytest.raises(ClientError) as e:
                await coro
            assert e.value.code == code and words in str(e.value), e.value
        # a user's unknown op on a component names the component and the ops a user may
        # send (it named the node and offered task_start, ack, replay: an integrator's tour)
        cmp = "example_counter:(example-addr,1)"
        rep = await t.request(t.topics.component_user_cmd(cmp, "frob"), {}, timeout=5)
        assert rep.code == "unknown_op", rep
        assert rep.msg == (
            f"unknown operation 'frob' on component {cmp} (node local) (known: get_attr,"
            " measure, register, reset, set_attr, status)"
        ), rep.msg
        assert st.scheduler is not None
        # keywords are args too: they were ignored (a newcomer got the scheduler section
        # for what="nodes", and bogus=1 succeeded)
        nodes = await t.call("status", what="nodes", timeout=5)
        assert set(nodes) == {"local"}, nodes
        with pytest.raises(ClientError) as e:
            await t.call("status", bogus=1)
        assert e.value.code == "bad_request", e.value
        # a handle on an existing job says it has not asked yet (it showed `q`)
        assert repr(t.job(7)) == "<Job 7 (status not asked yet: .status())>"
        # a job cancelled while queued has no file: results() says so (it spoke of a
        # snapshot, an integrator's audit)
        queued = await t.submit(
            {"version": "0.2", "sample": {"name": "nobody-holds-it"},
             "method": [{"device": "counter", "technique": "count", "time": 1.0, "delay": 0.1}]},
        )  # fmt: skip
        await queued.cancel()
        assert (await queued.wait(10)).status == "cd"
        with pytest.raises(ClientError) as e:
            await queued.results()
        assert e.value.code == "conflict", e.value
        assert "never started (it ended cd while queued): it has no data" in str(e.value)
        # a file the scheduler refuses is named, as ketchup names it (a newcomer's tour)
        bad = tmp_path / "too-fast.yml"
        bad.write_text(
            "version: '0.2'\nsample: {name: s}\n"
            "method: [{device: counter, technique: count, time: 1.0, delay: 1.0e-9}]\n"
        )
        with pytest.raises(ClientError) as e:
            await t.submit(bad)
        assert e.value.code == "refused", e.value
        assert str(e.value).startswith(f"payload refused: {bad}: method[0].delay: "), e.value


async def test_a_submit_sent_again_with_its_token_is_one_job(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """client.md told a script whose submit got `unavailable` (a slow scheduler may
    still queue it) to look before sending it again, with no way to send it again
    safely: `submit(token=...)` is one job however often it is sent, and the
    `unavailable` message names the token the unanswered submit carried."""
    url = f"mqtt://127.0.0.1:{broker.port}"
    payload = yaml.safe_load((CONFIG / "counter_1_0.1.yml").read_text())
    async with AsyncTomato(url, instance, timeout=1.0) as t:  # nothing behind the broker
        with pytest.raises(ClientError) as e:
            await t.submit(payload, jobname="once")
        assert e.value.code == "unavailable", e.value
        said = re.search(r"submit\(\.\.\., token='([0-9a-f]{32})'\)", str(e.value))
        assert said, e.value
    token = said.group(1)
    async with inproc_stack(broker.port, tmp_path, instance), AsyncTomato(url, instance) as t:
        first = await t.submit(payload, jobname="once", token=token)
        again = await t.submit(payload, jobname="once", token=token)
        assert again.id == first.id, (first, again)
        other = await t.submit(payload, jobname="once")  # no token given: a job of its own
        assert other.id != first.id
        with pytest.raises(ClientError) as e:  # the token of another payload or name
            await t.submit(payload, jobname="another", token=token)
        assert e.value.code == "conflict" and "give a new token" in str(e.value), e.value

        def sync() -> int:
            with Tomato(url, instance) as s:
                return s.submit(payload, jobname="once", token=token).id

        assert await asyncio.wait_for(asyncio.to_thread(sync), 20) == first.id
        assert len(await t.jobs()) == 2
        for job in (first, other):
            await job.cancel()


def test_the_documented_payload_error_and_a_missing_appdir(tmp_path: Path) -> None:
    """client.md says submit() raises PayloadError: it could not be imported from the
    client; from_settings(appdir=<a typo>) connected to the default broker."""
    from tomato_mqtt.client import PayloadError
    from tomato_mqtt.config.payloads import PayloadError as Real

    assert PayloadError is Real and issubclass(PayloadError, ValueError)
    for cls in (Tomato, AsyncTomato):
        with pytest.raises(FileNotFoundError, match="no settings.toml in"):
            cls.from_settings(appdir=tmp_path / "typo")
        # a timeout that is no number is said where it is given (it failed at the first
        # call with "unsupported operand type(s) for +"), as is a payload of no known kind
        with pytest.raises(ValueError, match="timeout must be a positive number of seconds"):
            cls("mqtt://127.0.0.1:1", "lab", timeout="abc")  # type: ignore[arg-type]
    from tomato_mqtt.client.local import payload_args

    with pytest.raises(TypeError, match="a payload is a file's path or a dict, not int"):
        payload_args(42)  # type: ignore[arg-type]


async def test_one_tomato_may_be_shared_by_threads(broker: RunningBroker) -> None:
    """Found by an integrator's audit: calls from several threads at once on one Tomato
    failed at once (AssertionError, 'future belongs to a different loop'): each started
    a client of its own. Now the first starts it and the others wait for it."""
    t = Tomato(f"mqtt://127.0.0.1:{broker.port}", "nobody", timeout=1.0)

    def one() -> str:
        try:
            t.summary()
        except ClientError as e:
            return str(e.code)
        return "answered"

    try:  # threads: the broker runs on this test's loop
        got = await asyncio.gather(*(asyncio.to_thread(one) for _ in range(8)))
    finally:
        await asyncio.to_thread(t.close)
    assert got == ["unavailable"] * 8, got  # no scheduler of that instance: each says so


async def test_a_client_dropped_without_close_ends_its_thread_and_connection(
    broker: RunningBroker,
) -> None:
    """An integrator's tour: a ``Tomato`` dropped without ``close()`` kept its loop's
    thread and its broker connection for the life of the process (a script making one a
    loop round held them all). Collected, it ends both."""
    import gc

    def drop_one() -> threading.Thread:
        t = Tomato(f"mqtt://127.0.0.1:{broker.port}", "nobody", timeout=1.0)
        t.aio  # noqa: B018  # starts its loop and connects, as a wait or a stream does
        assert t._thread is not None and t._thread.is_alive()
        return t._thread

    thread = await asyncio.to_thread(drop_one)
    gc.collect()
    for _ in range(100):
        if not thread.is_alive():
            break
        await asyncio.sleep(0.05)
    assert not thread.is_alive()


async def test_a_reply_this_client_cannot_read_is_bad_reply_not_bad_request(
    broker: RunningBroker, instance: str
) -> None:
    """Found by a review: a reply whose data did not fit the contract (another version of
    the scheduler) was reported as ``bad_request`` "bad args", though the op had run: a
    script would submit again and queue the job twice."""
    from tomato_mqtt.transport.client import AsyncClient
    from tomato_mqtt.wire.messages import Reply, Request, decode, encode
    from tomato_mqtt.wire.topics import Topics

    url = f"mqtt://127.0.0.1:{broker.port}"
    ran: list[str] = []
    fake = AsyncClient(url, client_id="fake-scheduler")
    await fake.connect(timeout=5)

    async def answer(topic: str) -> None:
        await fake.subscribe(topic)
        while True:
            m = await fake.next_message(30)
            req = decode(Request, m.payload, m.topic)
            ran.append(m.topic)
            data = {"id": 99, "payload": {}, "status": "q"}  # no submitted_at
            await fake.publish(
                req.reply_to, encode(Reply(id=req.id, success=True, msg="ok", data=data))
            )

    task = asyncio.ensure_future(answer(Topics(instance).scheduler_cmds()))
    try:
        async with AsyncTomato(url, instance, timeout=3.0) as t:
            with pytest.raises(ClientError) as e:
                await t.submit({"version": "2.2", "sample": {"identifier": "s"}, "method": []})
            assert e.value.code == "bad_reply", e.value
            assert "another version of tomato-mqtt" in str(e.value), e.value
            assert len(ran) == 1  # it was sent once, and ran
            with pytest.raises(ClientError) as e:  # what is checked before sending
                await t.call("job_status", {"jobids": "x"})
            assert e.value.code == "bad_request" and len(ran) == 1, e.value
    finally:
        task.cancel()
        await fake.disconnect()


async def test_a_snapshot_whose_file_another_replaced_first_is_asked_for_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A review: the recorder holds a snapshot's file from its fetch's first chunk on;
    one whose name another snapshot of the job took before that is refused "has been
    replaced … ask for it again": the client asks again (twice at most), as it says."""
    from tomato_mqtt.client.aio import AsyncTomato, ClientError

    t = AsyncTomato("mqtt://127.0.0.1:1")
    asked: list[int] = []
    fails = ["x has been replaced since the token was given: ask for it again"] * 2

    async def call(op: str, args: Any, timeout: float = 0) -> Any:
        asked.append(args["jobid"])
        return {"token": str(len(asked))}

    async def deliver(info: Any, path: Any) -> Any:
        if fails:
            raise ClientError(f"fetching chunk 0 failed: {fails.pop()}", "conflict")
        return info["token"]

    monkeypatch.setattr(t, "call", call)
    monkeypatch.setattr(t, "_deliver", deliver)
    assert await t.snapshot(7) == "3" and asked == [7, 7, 7]
    fails[:] = ["x has been replaced"] * 3
    with pytest.raises(ClientError, match="has been replaced"):
        await t.snapshot(7)
    fails[:] = ["x no such chunk"]  # another refusal: said at once
    asked.clear()
    with pytest.raises(ClientError, match="no such chunk"):
        await t.snapshot(7)
    assert asked == [7]


def test_ketchup_snapshot_whose_file_another_replaced_first_asks_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ketchup snapshot` fetched the file itself and did not ask again, as the client
    library does: a recorder killed and restarted wrote the snapshot twice (the request
    sent again), and the command failed "… has been replaced since the token was given
    … ask for it again" (tests/chaos/test_edges.py, once). Twice at most, as the
    library."""
    from tomato_mqtt.cli import common, ketchup
    from tomato_mqtt.client.aio import ClientError
    from tomato_mqtt.config.url import BrokerURL
    from tomato_mqtt.transport.oneshot import Reply

    monkeypatch.chdir(tmp_path)
    ctx = common.CallContext(BrokerURL(port=1), "default")
    fails = ["x has been replaced since the token was given: ask for it again"] * 2
    asked: list[int] = []

    class Tomato:  # the two calls _snapshot_one makes of the client
        def request(self, topic: str, args: dict[str, Any]) -> Reply:
            asked.append(args["jobid"])
            data = {"path": "/d/snapshot.7.nc", "size": 1, "token": "t", "chunks": 1, "points": {}}
            return Reply(id=str(len(asked)), success=True, msg="", data=data)

        def fetch_file(self, info: Any, target: Path) -> int:
            if fails:
                raise ClientError(f"fetching chunk 0 failed: {fails.pop()}", "conflict")
            Path(target).write_bytes(b"x")
            return 1

    r = ketchup._snapshot_one(Tomato(), ctx, 7)  # type: ignore[arg-type]
    assert r.success and asked == [7, 7, 7], (r, asked)
    assert (tmp_path / "snapshot.7.nc").read_bytes() == b"x"
    fails[:] = ["x has been replaced"] * 3
    r = ketchup._snapshot_one(Tomato(), ctx, 7)  # type: ignore[arg-type]
    assert not r.success and "has been replaced" in r.msg, r
    asked.clear()
    fails[:] = ["x no such chunk"]  # another refusal: said at once
    r = ketchup._snapshot_one(Tomato(), ctx, 7)  # type: ignore[arg-type]
    assert not r.success and "no such chunk" in r.msg and asked == [7], (r, asked)
