"""Forged data, spool commands, retained meta/status: no effect on data or scheduling.

On a secured stack the broker drops them (only a component's node publishes its data,
meta and status; only the recorder sends ack/replay); on an open stack the scheduler
still trusts topics over payloads, so retained junk whose names disagree with its topic
is dropped and logged.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest
import xarray as xr

from tests.counts import taken
from tests.secure_stack import LAB_USERS, as_user, secure_stack
from tests.stack import Stack, running_stack
from tests.test_security_stack import payload
from tomato_mqtt.transport.client import AsyncClient
from tomato_mqtt.wire.messages import (
    AckArgs,
    ComponentMeta,
    ComponentStatus,
    DataBatch,
    NodeStatus,
    ReplayArgs,
    Request,
    encode,
)
from tomato_mqtt.wire.topics import Topics

pytestmark = pytest.mark.timeout(240)

CMP = "example_counter:(example-addr,1)"
OTHER = "example_counter:(example-addr,2)"
FAKE = 999_999.0


def forgeries(
    t: Topics, user: str, jobid: int, epoch: int, seq0: int
) -> list[tuple[str, bytes, bool]]:
    """(topic, payload, retain) of every forgery the issue lists."""

    def batch(component: str, seq: int, ep: int = epoch) -> bytes:
        return encode(
            DataBatch(component=component, job=jobid, task=0, epoch=ep, seq=seq,
                      uts=[time.time()], vars={"val": [FAKE]})
        )  # fmt: skip

    def req(args: object) -> bytes:
        if isinstance(args, ReplayArgs):
            args = args.model_dump()
        return encode(Request(id=f"forged-{time.time_ns()}", reply_to=t.reply("x", user),
                              args=args))  # type: ignore[arg-type]  # fmt: skip

    meta = ComponentMeta(name=CMP, device="x", driver="x", address="x", channel="1",
                         node="local", registered=True, capabilities=[])  # fmt: skip
    status = ComponentStatus(name=CMP, node="local", state="error", time=time.time(),
                             error="forged")  # fmt: skip
    lost = NodeStatus(state="lost", node="local", epoch=epoch + 1)
    return [
        (t.component_data(CMP), batch(CMP, seq0 + 1), False),  # seq-hijack of the real stream
        (t.component_data(CMP), batch(CMP, 0, epoch + 7), False),  # a new epoch
        (t.component_data(OTHER), batch(CMP, seq0 + 2), False),  # another component's topic
        (t.component_cmd(CMP, "ack"), req(AckArgs(epoch=epoch, upto=10**6).model_dump()), False),
        (
            t.component_cmd(CMP, "replay"),
            req(ReplayArgs(epoch=epoch, first=0, last=5).model_dump()),
            False,
        ),
        (t.component_meta(CMP), encode(meta), True),
        (t.component_status(CMP), encode(status), True),
        (t.node_status("local"), encode(lost), True),
    ]


async def forge(st: Stack, user: str, jobid: int) -> int:
    t = Topics(st.instance, user)
    url = f"mqtt://{user}:{LAB_USERS[user][0]}@127.0.0.1:{st.port}"
    nodes = list(st.json("tomato", "status", "nodes")["data"].values())
    epoch = int(nodes[0]["epoch"])
    n = 0
    async with AsyncClient(url) as c:
        for seq0 in range(0, 40, 4):
            for topic, body, retain in forgeries(t, user, jobid, epoch, seq0):
                await c.publish(topic, body, retain=retain)
                n += 1
    return n


def points(path: str) -> list[float]:
    tree = xr.open_datatree(path)
    tree.load()
    tree.close()
    return [float(v) for v in tree["counter"].to_dataset()["val"].values]


def test_forged_messages_have_no_effect_on_a_secured_stack(tmp_path: Path) -> None:
    extra = f'[recorder]\noutput_roots = ["{tmp_path}"]\n'
    with secure_stack(tmp_path, extra=extra) as st:
        st.load_ready("pip-counter-1", "counter_1_0.1")
        jobid = st.submit(payload(tmp_path, sampling_interval=0.1, max_duration=3.0))
        st.wait_job(jobid, {"r"}, timeout=30)
        sent = 0
        for user in ("olga", "rita", "pc2"):  # an operator, a reader, another node
            sent += asyncio.run(forge(st, user, jobid))
        job = st.wait_job(jobid, {"c", "ce", "cd"}, timeout=60)
        assert job["status"] == "c", (job, st.logs())
        values = points(job["respath"])
        # exactly the real points: what the runner took (a deadline a loaded machine could
        # not meet is skipped and counted), none of the forged ones
        n, missed = taken(job)
        assert n + missed == 30 and len(values) == n and FAKE not in values, (n, missed, values)
        comps = st.json("tomato", "status", "components")["data"]
        assert comps[CMP]["registered"] and comps[CMP]["error"] is None, comps[CMP]
        assert [n["state"] for n in st.json("tomato", "status", "nodes")["data"].values()] == [
            "online"
        ]
        # the broker logged the refused publishes of each login: its first in a second
        # as it is, the rest counted on the next line (one line each let a reader's
        # flood rotate the log away: a security tour)
        broker_log = (st.logdir / "broker.log").read_text()
        for user in ("olga", "rita", "pc2"):
            assert f"ACL: {user} may not publish" in broker_log, user
            # its first a warning (a node whose role changed under it was refused at INFO
            # only: an admin's tour), the rest of that minute INFO
            said = re.findall(rf"(WARNING|INFO) \S+: ACL: {user} may not", broker_log)
            assert said[0] == "WARNING" and said.count("WARNING") <= 2, (user, said)
        lines = broker_log.count("may not publish")
        more = sum(int(m) for m in re.findall(r"\(and (\d+) more refusals of", broker_log))
        assert 3 <= lines + more <= sent and lines < sent, (lines, more, sent)
        # and the next job still runs
        st.run("tomato", "pipeline", "ready", "pip-counter-1", check=True)
        jobid = st.submit(payload(tmp_path, sampling_interval=0.1, max_duration=0.5))
        assert st.wait_job(jobid, {"c", "ce", "cd"}, timeout=60)["status"] == "c"
        res = st.run("ketchup", "status", str(jobid), *as_user(st, "rita"))
        assert res.returncode == 0


def test_retained_junk_does_not_change_scheduling_on_an_open_stack(tmp_path: Path) -> None:
    with running_stack(tmp_path) as st:
        t = Topics(st.instance)

        async def junk() -> None:
            meta = ComponentMeta(name="bogus", device="x", driver="x", address="x",
                                 channel="1", node="local", registered=False)  # fmt: skip
            async with AsyncClient(f"mqtt://127.0.0.1:{st.port}") as c:
                # names that disagree with their topics: dropped and logged
                await c.publish(t.component_meta(CMP), encode(meta), retain=True)
                for i in range(19):
                    phantom = NodeStatus(state="online", node=f"ghost-{i}", epoch=1)
                    await c.publish(t.node_status(f"pc-{i}"), encode(phantom), retain=True)

        asyncio.run(junk())
        st.load_ready("pip-counter-1", "counter_1_0.1")
        jobid = st.submit("counter_1_0.1.yml")
        assert st.wait_job(jobid, {"c", "ce", "cd"}, timeout=60)["status"] == "c"
        nodes = list(st.json("tomato", "status", "nodes")["data"])
        assert nodes == ["local"], nodes
        assert "disagrees with the topic" in (st.logdir / "scheduler.log").read_text()


async def _reply_hijack(st: Stack) -> tuple[list[str], list[str]]:
    """olga (operator) asks CMP's node for its status three ways, naming ada's reply
    topic or her own; returns (ids ada received, ids olga received)."""
    url = "mqtt://{}:{}@127.0.0.1:" + str(st.port)
    ada_t, olga_t = Topics(st.instance, "ada"), Topics(st.instance, "olga")
    got: dict[str, list[str]] = {"ada": [], "olga": []}
    async with (
        AsyncClient(url.format("ada", LAB_USERS["ada"][0])) as ada,
        AsyncClient(url.format("olga", LAB_USERS["olga"][0])) as olga,
    ):
        for who, c, t in (("ada", ada, ada_t), ("olga", olga, olga_t)):
            await c.subscribe(
                t.reply(c.client_id),
                handler=lambda m, who=who: got[who].append(m.payload.decode()),
            )

        def ask(rid: str, reply_to: str) -> bytes:
            return encode(Request(id=rid, reply_to=reply_to, args={}))

        into_ada = ada_t.reply(ada.client_id)
        # the services' form (no login): the broker drops it for a user
        await olga.publish(olga_t.component_cmd(CMP, "status"), ask("h-bare", into_ada))
        # her own login, ada's replies: the node does not answer
        await olga.publish(olga_t.component_user_cmd(CMP, "status"), ask("h-user", into_ada))
        # her own login and replies: answered
        mine = olga_t.reply(olga.client_id)
        await olga.publish(olga_t.component_user_cmd(CMP, "status"), ask("h-own", mine))
        deadline = time.monotonic() + 10
        while not got["olga"] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # time for any answer into ada's topic to arrive too
    return got["ada"], got["olga"]


def test_a_node_answers_a_users_command_only_on_that_users_replies(tmp_path: Path) -> None:
    """An operator could make a node answer ``status`` or ``get_attr`` into another
    user's reply topic: component commands carried no login (found by a review). A user's
    command now carries it (``component/<c>/cmd/<op>/<user>``, pinned by the ACL), the
    node answers only on that user's replies, and the form without a login is the
    services' alone."""
    with secure_stack(tmp_path) as st:
        into_ada, into_olga = asyncio.run(_reply_hijack(st))
        assert into_ada == [], into_ada
        assert (
            len(into_olga) == 1
            and '"h-own"' in into_olga[0]
            and '"success":true' in (into_olga[0].replace(" ", ""))
        ), into_olga
        assert "h-user" in (st.logdir / "node-local.log").read_text()  # the node said why not
        # passata as the operator: the form with her login, end to end
        res = st.run("passata", "status", CMP, *as_user(st, "olga"))
        assert res.returncode == 0 and "idle" in res.stdout, (res.stdout, res.stderr)
