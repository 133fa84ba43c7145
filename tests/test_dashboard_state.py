"""The dashboard's pure parts: decimation (series.py), the lab state (state.py), roles."""

from __future__ import annotations

import pytest

from tomato_mqtt.model.jobs import Job
from tomato_mqtt.services.dashboard.series import Series
from tomato_mqtt.services.dashboard.sessions import controls_for
from tomato_mqtt.services.dashboard.state import LabState
from tomato_mqtt.wire.messages import (
    DataBatch,
    DecodeError,
    JobStatus,
    NodeStatus,
    PipelineStatus,
    encode,
)
from tomato_mqtt.wire.status import WhoamiData
from tomato_mqtt.wire.topics import Topics

T = Topics("lab")


def test_series_stays_bounded_and_keeps_extremes() -> None:
    s = Series(max_buckets=100)
    n = 100_000  # 100 s at 1 kHz
    uts = [1000.0 + i * 0.001 for i in range(n)]
    vals: list[float | int | bool | str | None] = [0.0] * n
    vals[54_321] = 99.0  # one spike
    vals[77_777] = -7.0
    s.add(uts, {"x": vals}, {"x": "V"})
    assert len(s.buckets) <= 100
    assert s.points == n
    cols = s.snapshot()
    assert max(v for v in cols["hi"]["x"] if v is not None) == 99.0
    assert min(v for v in cols["lo"]["x"] if v is not None) == -7.0
    assert sum(cols["n"]) == n
    assert cols["units"] == {"x": "V"} and cols["last"] == uts[-1]
    # each bucket spans its first to its last point, so the plotted line reaches the last
    # point (drawn at each bucket's first, it ended up to a bucket early: a user's tour)
    assert cols["t1"][-1] == uts[-1] and cols["t"][0] == uts[0]
    assert all(a <= b for a, b in zip(cols["t"], cols["t1"], strict=True))
    assert all(b1 < a2 for b1, a2 in zip(cols["t1"], cols["t"][1:], strict=False))


def test_series_updates_send_only_the_tail_until_a_merge() -> None:
    s = Series(max_buckets=1000, first_width=1.0)
    s.add([0.0, 1.0, 2.0], {"x": [1, 2, 3]}, {})
    first = s.take_update()
    assert first is not None and first["from"] == 0 and first["t"] == [0.0, 1.0, 2.0]
    assert s.take_update() is None
    s.add([2.5, 3.0], {"x": [9, 4]}, {})  # bucket 2 changes, bucket 3 is new
    upd = s.take_update()
    assert upd is not None and upd["from"] == 2
    assert upd["lo"]["x"] == [3.0, 4.0] and upd["hi"]["x"] == [9.0, 4.0]
    # strings, booleans and NaN are not plotted; they do not break the numbers
    s.add([4.0], {"x": [float("nan")], "y": ["text"], "z": [True]}, {})
    assert s.take_update() is not None


def test_series_merge_resends_everything() -> None:
    s = Series(max_buckets=4, first_width=1.0)
    s.add([0.0, 1.0, 2.0, 3.0], {"x": [0, 1, 2, 3]}, {})
    s.take_update()
    s.add([4.0], {"x": [4]}, {})  # a fifth bucket: widths double, pairs merge
    upd = s.take_update()
    assert upd is not None and upd["from"] == 0 and len(upd["t"]) == 3
    assert upd["hi"]["x"] == [1.0, 3.0, 4.0]


def _job(jobid: int, status: str = "q") -> Job:
    return Job(id=jobid, payload={"method": []}, status=status, submitted_at="2026-01-01T00:00:00")


def _apply(st: LabState, topic: str, payload: bytes) -> None:
    parsed = T.parse(topic)
    assert parsed is not None
    st.apply(parsed, topic, payload)


def test_state_trusts_topics_and_coalesces_changes() -> None:
    st = LabState()
    for i in range(5):  # five statuses of one node between two flushes: one change
        msg = NodeStatus(state="online", node="pc1", heartbeat=float(i))
        _apply(st, T.node_status("pc1"), encode(msg))
    changes = st.take_changes()
    assert [c["k"] for c in changes] == ["node"] and changes[0]["v"]["state"] == "online"
    assert st.take_changes() == []
    # a job status whose id disagrees with its topic is dropped
    _apply(st, T.job_status(7), encode(JobStatus.of(_job(8))))
    assert 8 not in st.jobs and 7 not in st.jobs
    _apply(st, T.job_status(7), encode(JobStatus.of(_job(7, "qw"))))
    view = st.view("job", "7")["v"]
    assert view["status"] == "qw" and view["meaning"].startswith("queued")
    with pytest.raises(DecodeError):
        _apply(st, T.node_status("pc1"), b'{"state": "sideways"}')


def test_state_keeps_series_per_job_with_roles_and_task_marks() -> None:
    st = LabState()
    cmp = "example_counter:(addr,1)"
    pip = PipelineStatus(name="p1", roles={"counter": cmp}, job=3, ready=True, sample="s")
    _apply(st, T.pipeline_status("p1"), encode(pip))
    job = _job(3, "r").model_copy(update={"pipeline": "p1"})
    _apply(st, T.job_status(3), encode(JobStatus.of(job)))
    for seq, task in enumerate([0, 0, 1]):
        b = DataBatch(
            component=cmp, job=3, task=task, epoch=1, seq=seq, uts=[float(seq)], vars={"v": [seq]}
        )
        _apply(st, T.component_data(cmp), encode(b))
    detail = st.job_detail(3)
    slugged = T.component_data(cmp).split("/")[-2]
    assert detail["roles"] == {slugged: "counter"}
    assert detail["series"][slugged]["points"] == 3
    assert [m["task"] for m in detail["marks"]] == [0, 1]  # where each task's data begins
    assert st.take_series_changed() == {3}


def test_stored_points_loaded_after_a_restart_mark_no_task_twice() -> None:
    """A dashboard tour: a dashboard restarted mid-task drew a second "task 0" marker
    where its live data began; the stored points loaded before them go on with task 0."""
    st = LabState()
    cmp = "example_counter:(addr,1)"
    job = _job(3, "r")
    _apply(st, T.job_status(3), encode(JobStatus.of(job)))
    for seq in range(2):  # live, after the restart: task 0 goes on
        b = DataBatch(
            component=cmp, job=3, task=0, epoch=1, seq=10 + seq, uts=[10.0 + seq], vars={"v": [1]}
        )
        _apply(st, T.component_data(cmp), encode(b))
    slugged = T.component_data(cmp).split("/")[-2]
    # the stored points from before: task 0 from t=0
    n = st.backfill(3, slugged, "counter", [0.0, 1.0, 2.0], {"v": [0, 0, 0]}, {}, [0, 0, 0])
    assert n == 3
    marks = st.job_detail(3)["marks"]
    assert [(m["t"], m["task"]) for m in marks] == [(0.0, 0)], marks
    # a new task after them is marked, as ever
    b = DataBatch(component=cmp, job=3, task=1, epoch=1, seq=12, uts=[12.0], vars={"v": [1]})
    _apply(st, T.component_data(cmp), encode(b))
    marks = st.job_detail(3)["marks"]
    assert [(m["t"], m["task"]) for m in marks] == [(0.0, 0), (12.0, 1)], marks


def test_a_job_s_events_before_the_dashboard_come_from_its_record() -> None:
    """A dashboard tour: restarted during a job, the dashboard's event list held only the
    events after its start (queued, launched, task 0's start missing, for good); events
    are not retained. The whole job fetched for the page tells them."""
    from tomato_mqtt.wire.messages import JobEvent

    st = LabState()
    payload = {"method": [{"component_role": "counter"}, {"component_role": "counter"}]}
    t0 = 1_800_000_000.0
    end = {"reason": "done", "npoints": 200, "t_start": t0 + 2, "t_end": t0 + 22}
    progress = {
        "tasks": {
            "0": {"state": "ended", "end": end, "started_at": t0 + 2},
            "1": {"state": "running", "end": None, "started_at": t0 + 23},
        }
    }
    whole = Job(
        id=3,
        payload=payload,
        status="r",
        submitted_at="2027-01-15T08:00:00+00:00",
        launched_at="2027-01-15T08:00:01+00:00",
        progress=progress,
    )
    live = JobEvent(job=3, event="task_started", time=t0 + 23, role="counter", task=1)
    _apply(st, T.job_event(3), encode(live))
    assert [e["event"] for e in st.job_events(3)] == ["task_started"]  # (not fetched yet)
    st.job_fetched(whole)
    seen = [(e["event"], e["task"]) for e in st.job_events(3)]
    assert seen == [
        ("queued", None),
        ("launched", None),
        ("task_started", 0),
        ("task_ended", 0),
        ("task_started", 1),
    ], seen
    told = st.job_events(3)
    assert "from the job's record" in told[3]["detail"]["message"], told
    assert told[4]["detail"] == {}, told  # the live one, as it came
    assert st.job_detail(3)["events"] == told


def test_controls_follow_the_role() -> None:
    def me(role: str | None, ops: list[str]) -> WhoamiData:
        return WhoamiData(user="u", role=role, ops=ops, open=False)

    reader = me("reader", ["status", "job_status", "job_search", "whoami"])
    assert controls_for(reader, read_only=False) == []
    operator = me("operator", ["whoami", "job_submit", "job_cancel", "pipeline_load"])
    assert controls_for(operator, False) == [
        "pipeline_load",
        "job_submit",
        "job_cancel",
        "get_attr",
    ]
    admin = me("admin", ["job_cancel"])
    assert "set_attr" in controls_for(admin, False)
    assert controls_for(admin, read_only=True) == []
    assert controls_for(None, False) == []


def test_an_unsigned_page_gets_controls_only_on_an_open_loopback_stack() -> None:
    from tomato_mqtt.services.dashboard.sessions import Session

    def page(role: str, open_: bool, exposed: bool) -> list[str]:
        me = WhoamiData(user="x", role=role, ops=["job_cancel"], open=open_)
        return Session("", None, None, T, me, exposed=exposed).controls  # type: ignore[arg-type]

    assert page("admin", open_=True, exposed=False) == ["job_cancel", "get_attr", "set_attr"]
    assert page("admin", open_=True, exposed=True) == []  # an open stack on the network
    assert page("admin", open_=False, exposed=False) == []  # secured: a person signs in


def test_the_state_of_jobs_without_plotted_data_stays_bounded() -> None:
    """Found by a soak run: the events, task marks and roles of every job that never had
    plotted data (cancelled while queued, say) were kept for good, ~2 KB a job."""
    from tomato_mqtt.services.dashboard.state import KEEP_JOB_STATE
    from tomato_mqtt.wire.messages import JobEvent

    st = LabState()
    pip = PipelineStatus(name="p1", roles={"counter": "cmp"}, job=None, ready=True, sample="s")
    _apply(st, T.pipeline_status("p1"), encode(pip))
    n = KEEP_JOB_STATE * 3
    for jid in range(1, n + 1):
        job = _job(jid, "r").model_copy(update={"pipeline": "p1"})
        _apply(st, T.job_status(jid), encode(JobStatus.of(job)))
        ev = JobEvent(jobid=jid, event="task_started", time=float(jid), role="counter", task=0)
        _apply(st, T.job_event(jid), encode(ev))
    assert len(st.events) <= KEEP_JOB_STATE and len(st.marks) <= KEEP_JOB_STATE
    assert len(st.roles) <= KEEP_JOB_STATE
    assert n in st.events and n in st.roles  # the newest kept
    assert st.job_detail(n)["marks"] and st.job_detail(n)["roles"] == {"cmp": "counter"}


def test_a_batch_received_again_is_plotted_once_and_what_is_remembered_is_bounded() -> None:
    """A node sends again what its spool holds (after a restart, or for the recorder),
    QoS 1 may deliver twice: each batch counts once, per stream; a restarted node's new
    stream counts anew. The batch numbers remembered stay bounded on a long job."""
    from tomato_mqtt.services.dashboard.state import SEEN_WINDOW

    st = LabState()
    cmp = "example_counter:(addr,1)"

    def send(stream: str, seq: int) -> None:
        b = DataBatch(
            component=cmp, job=3, task=0, epoch=1, stream=stream, seq=seq, uts=[float(seq)],
            vars={"v": [seq]},
        )  # fmt: skip
        _apply(st, T.component_data(cmp), encode(b))

    for seq in [0, 1, 2, 3, 4, 3, 4, 4]:
        send("s-a", seq)
    for seq in [0, 1, 1]:  # the node restarted: a new stream
        send("s-b", seq)
    assert st.held(3) == 7 and st.repeats == 4
    for seq in range(5, 3 * SEEN_WINDOW):
        send("s-a", seq)
    assert st.held(3) == 7 - 5 + 3 * SEEN_WINDOW
    seen = st._seen[3][(T.component_data(cmp).split("/")[-2], "s-a")]
    assert len(seen.seqs) <= 2 * SEEN_WINDOW
    send("s-a", 10)  # far behind the newest: taken for a repeat
    send("s-a", 3 * SEEN_WINDOW - 2)  # recent: remembered
    assert st.held(3) == 7 - 5 + 3 * SEEN_WINDOW and st.repeats == 6


def test_finished_jobs_stay_listed_after_their_retained_status_goes() -> None:
    """An integrator's review: the overview's jobs were the retained statuses, which the
    scheduler clears ([jobs] retain_finished, 20; retain_finished_age, an hour): finished
    jobs went from the page while docs/dashboard.md promised the newest 100. A finished
    job's status cleared stays listed (the newest KEEP_FINISHED); a queued job's goes."""
    from tomato_mqtt.services.dashboard import state as state_mod

    st = LabState()
    n = state_mod.KEEP_FINISHED + 5
    for jid in range(1, n + 1):
        _apply(st, T.job_status(jid), encode(JobStatus.of(_job(jid, "c"))))
    _apply(st, T.job_status(n + 1), encode(JobStatus.of(_job(n + 1, "q"))))
    st.take_changes()
    for jid in range(1, n + 2):
        parsed = T.parse(T.job_status(jid))
        assert parsed is not None
        st.forget(parsed)
    assert n + 1 not in st.jobs  # a queued job's status cleared: gone
    finished = sorted(st.jobs)
    assert finished == list(range(6, n + 1)), finished  # the newest 100 finished
    gone = {c["id"] for c in st.take_changes()}
    assert {"1", "5", str(n + 1)} <= gone and "6" not in gone, gone


def test_a_running_task_s_age_is_true_for_a_status_received_late() -> None:
    """A component's status is sent when its task starts and retained: a dashboard
    started 30 min into the task got it then, and showed the task "0 s" old (a review).
    Its age comes from its start, on the node's clock, and the node's offset, from its
    heartbeats (here a node whose clock is 100 s behind)."""
    import time

    from tomato_mqtt.wire.messages import ComponentStatus

    st = LabState()
    node_now = time.time() - 100.0
    beat = NodeStatus(state="online", node="pc2", heartbeat=node_now)
    st.apply(T.parse(T.node_status("pc2")), T.node_status("pc2"), encode(beat))
    cmp = "example_counter:(a,1)"
    status = ComponentStatus(
        name=cmp, node="pc2", state="running", time=node_now - 1800, job=7, task=1,
        started_at=node_now - 1800, max_duration=3600.0,
    )  # fmt: skip
    topic = T.component_status(cmp)
    st.apply(T.parse(topic), topic, encode(status))
    parsed = T.parse(topic)
    assert parsed is not None and parsed.name is not None
    view = st.view("component", parsed.name)["v"]["status"]
    offset = st.view("node", "pc2")["v"]["offset"]
    assert offset == pytest.approx(100.0, abs=1.0)
    age = time.time() - (view["started_at"] + offset)  # as the page reckons it (app.js)
    assert age == pytest.approx(1800.0, abs=2.0), view
    assert view["max_duration"] == 3600.0
    # by the status alone (no node heard yet), it read "0 s": the reason for the offset
    assert view["elapsed"] == pytest.approx(0.0)


def test_a_page_update_never_carries_nan_which_the_page_cannot_parse() -> None:
    """A hostile tour: a NaN reached the page's JSON as ``NaN``, which ``JSON.parse``
    refuses: the page showed nothing. Whatever still holds one goes as null."""
    from tomato_mqtt.services.dashboard.service import page_json

    msg = {"a": float("nan"), "b": [1.5, float("inf"), {"c": -float("inf")}], "d": "NaN"}
    assert page_json(msg) == '{"a":null,"b":[1.5,null,{"c":null}],"d":"NaN"}'
    assert page_json({"a": 1.0}) == '{"a":1.0}'
