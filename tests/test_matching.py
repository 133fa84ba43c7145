"""Matching payloads to pipelines and choosing the jobs that launch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tomato_mqtt.config.devices import PipelineLayout
from tomato_mqtt.model.jobs import Job, PipelineState
from tomato_mqtt.model.matching import (
    ComponentView,
    MatchResult,
    match,
    next_launches,
    waiting_reason,
)

C1 = "example_counter:(example-addr,1)"
C2 = "example_counter:(example-addr,2)"
PS = "psutil:(psutil-addr,10)"

PIPELINES = {
    "pip-counter-1": PipelineLayout(name="pip-counter-1", roles={"counter": C1}),
    "pip-counter-2": PipelineLayout(name="pip-counter-2", roles={"counter": C2}),
    "pip-multidev": PipelineLayout(name="pip-multidev", roles={"counter": C2, "psutil": PS}),
}
COUNTER_ATTRS = {"param": {"min": 0.1, "type": "float"}, "min": {}, "max": {}}


def views(**overrides: ComponentView) -> dict[str, ComponentView]:
    out = {
        C1: ComponentView(C1, frozenset({"count", "random"}), COUNTER_ATTRS),
        C2: ComponentView(C2, frozenset({"count", "random"}), COUNTER_ATTRS),
        PS: ComponentView(PS, frozenset({"all_info"}), {}),
    }
    out.update({v.name: v for v in overrides.values()})
    return out


def validator(view: ComponentView, technique: str, params: Mapping[str, Any]) -> str | None:
    """A small stand-in for the driver validator: known attrs, float type, minimum."""
    for key, value in params.items():
        spec = view.attrs.get(key)
        if spec is None:
            return f"unknown parameter {key!r} (known: {', '.join(sorted(view.attrs))})"
        if "min" in spec:
            if not isinstance(value, (int, float)):
                return f"{key}: {value!r} is not a number"
            if value < spec["min"]:
                return f"{key}: {value} is below the minimum {spec['min']}"
    return None


def task(role: str = "counter", technique: str = "count", **params: Any) -> dict[str, Any]:
    return {
        "component_role": role,
        "technique_name": technique,
        "max_duration": 1.0,
        "sampling_interval": 0.1,
        "task_params": params,
    }


def test_roles_must_be_a_subset() -> None:
    r = match([task()], PIPELINES, views(), validator)
    assert r == MatchResult(["pip-counter-1", "pip-counter-2", "pip-multidev"], None)
    r = match([task("psutil", "all_info"), task()], PIPELINES, views(), validator)
    assert r.candidates == ["pip-multidev"]
    r = match([task("psutil", "all_info"), task("heater")], PIPELINES, views(), validator)
    assert r.candidates == []
    assert r.reason is not None
    assert r.reason.startswith("no pipeline has roles 'heater', 'psutil' (pipelines have: ")
    assert "'counter', 'psutil'" in r.reason
    assert "did you mean" not in r.reason  # `heater` is nobody's typo
    # a misspelt role is said as such (a driver author's tour: `mfcc`)
    r = match([task("counterr")], PIPELINES, views(), validator)
    assert r.reason is not None and r.reason.endswith("; did you mean 'counter' for 'counterr'?")


def test_technique_must_be_a_capability() -> None:
    pips = {"pip-counter": PipelineLayout(name="pip-counter", roles={"counter": C1})}
    r = match([task(technique="unknown")], pips, views(), validator)
    assert r.candidates == []
    assert r.reason == (
        "role 'counter': technique 'unknown' not supported by example_counter:(example-addr,1) "
        "on pip-counter (supports: count, random)"
    )


def test_only_pipelines_whose_components_can_do_it() -> None:
    only_c2_random = views(c2=ComponentView(C2, frozenset({"random"}), COUNTER_ATTRS))
    r = match([task(technique="count")], PIPELINES, only_c2_random, validator)
    assert r.candidates == ["pip-counter-1"]
    r = match([task(technique="random")], PIPELINES, only_c2_random, validator)
    assert r.candidates == ["pip-counter-1", "pip-counter-2", "pip-multidev"]


def test_validator_errors_become_the_reason() -> None:
    r = match([task(param=0.001)], PIPELINES, views(), validator)
    assert r.candidates == []
    assert r.reason is not None
    assert r.reason.startswith(
        "role 'counter', task 0 on pip-counter-1: param: 0.001 is below the minimum 0.1"
    )
    assert "2 more pipeline(s)" in r.reason
    r = match([task(), task(unknown="bla")], PIPELINES, views(), validator)
    assert (
        r.reason is not None and "task 1" in r.reason and "unknown parameter 'unknown'" in r.reason
    )
    r = match([task(param="wrong type")], PIPELINES, views(), validator)
    assert r.reason is not None and "'wrong type' is not a number" in r.reason


def test_a_crashing_validator_does_not_crash_matching() -> None:
    def broken(view: ComponentView, technique: str, params: Mapping[str, Any]) -> str | None:
        raise ZeroDivisionError("oops")

    r = match([task()], PIPELINES, views(), broken)
    assert r.candidates == []
    assert r.reason is not None and "validation failed: ZeroDivisionError: oops" in r.reason


def test_unregistered_or_offline_components_are_not_candidates_yet() -> None:
    unregistered = views(c1=ComponentView(C1, None, {}))
    r = match([task()], {"pip-counter-1": PIPELINES["pip-counter-1"]}, unregistered, validator)
    why = f"role 'counter': component {C1} on pip-counter-1 is not registered yet"
    assert r == MatchResult([], why, {"pip-counter-1": why})
    offline = views(c1=ComponentView(C1, frozenset({"count"}), {}, online=False))
    r = match([task()], PIPELINES, offline, validator)
    assert r.candidates == ["pip-counter-2", "pip-multidev"]
    r = match([task()], {"pip-counter-1": PIPELINES["pip-counter-1"]}, offline, validator)
    assert r.reason == f"role 'counter': component {C1} on pip-counter-1 is not online"
    r = match([task()], {"pip-counter-1": PIPELINES["pip-counter-1"]}, {}, validator)
    assert r.reason == f"role 'counter': component {C1} on pip-counter-1 is not online"


def test_the_reason_is_told_about_the_pipeline_that_holds_the_sample() -> None:
    """No pipeline can run it: the reason named the first pipeline with the roles, not
    the one the user loaded the sample into (found by a fault-injection run)."""
    offline = views(
        c1=ComponentView(C1, frozenset({"count"}), {}, online=False),
        c2=ComponentView(C2, frozenset({"count"}), {}, online=False),
    )
    two = {k: PIPELINES[k] for k in ("pip-counter-1", "pip-counter-2")}
    r = match([task()], two, offline, validator)
    first = f"role 'counter': component {C1} on pip-counter-1 is not online"
    assert r.reason == first + " (and 1 more pipeline(s) with roles 'counter')"
    mine = f"role 'counter': component {C2} on pip-counter-2 is not online"
    assert r.reason_for("pip-counter-2") == mine + " (and 1 more pipeline(s) with roles 'counter')"
    assert r.reason_for(None) == r.reason_for("elsewhere") == r.reason


def test_empty_cases() -> None:
    assert match([], PIPELINES, views(), validator).reason == "the payload has no tasks"
    assert match([task()], {}, views(), validator).reason == "no pipelines are configured"


def test_accepts_dgbowl_tasks() -> None:
    from dgbowl_schemas.tomato.payload import Task

    t = Task(component_role="counter", technique_name="count", max_duration=1, sampling_interval=1)
    assert match([t], PIPELINES, views(), validator).candidates == [
        "pip-counter-1",
        "pip-counter-2",
        "pip-multidev",
    ]


# -- launching ---------------------------------------------------------------------------


def job(id: int, sample: str = "s", status: str = "qw") -> Job:
    return Job(
        id=id,
        payload={"sample": {"identifier": sample}},
        status=status,
        submitted_at="2024-01-01T00:00:00+00:00",
    )


def sample_of(j: Job) -> str:
    return str(j.payload["sample"]["identifier"])


def pip(
    name: str, sample: str | None = "s", ready: bool = True, jobid: int | None = None
) -> PipelineState:
    return PipelineState(name=name, sampleid=sample, ready=ready, jobid=jobid)


def pips(*states: PipelineState) -> dict[str, PipelineState]:
    return {p.name: p for p in states}


ALL = MatchResult(["a", "b"])


def test_fifo_and_one_job_per_pipeline() -> None:
    queue = [job(3), job(1), job(2)]
    out = next_launches(queue, pips(pip("a")), {1: ALL, 2: ALL, 3: ALL}, sample_of)
    assert out == [(1, "a")]
    out = next_launches(queue, pips(pip("a"), pip("b")), {1: ALL, 2: ALL, 3: ALL}, sample_of)
    assert out == [(1, "a"), (2, "b")]


def test_sample_must_match() -> None:
    queue = [job(1, sample="x"), job(2, sample="s")]
    out = next_launches(queue, pips(pip("a")), {1: ALL, 2: ALL}, sample_of)
    assert out == [(2, "a")]  # job 1 waits for its sample; job 2 does not wait for job 1
    assert next_launches([job(1)], pips(pip("a", sample=None)), {1: ALL}, sample_of) == []


def test_not_ready_or_busy_pipelines_are_not_used() -> None:
    m = {1: ALL}
    assert next_launches([job(1)], pips(pip("a", ready=False)), m, sample_of) == []
    assert next_launches([job(1)], pips(pip("a", jobid=7)), m, sample_of) == []
    assert next_launches([job(1)], pips(pip("a", jobid=7), pip("b")), m, sample_of) == [(1, "b")]


def test_only_candidates_and_queued_jobs() -> None:
    m = {1: MatchResult(["b"]), 2: MatchResult([], "no"), 3: ALL}
    queue = [job(1), job(2), job(3, status="r"), job(4)]  # 4 has not been matched
    out = next_launches(queue, pips(pip("a"), pip("b")), m, sample_of)
    assert out == [(1, "b")]


def test_shared_components_are_not_used_twice() -> None:
    layouts = {
        "a": PipelineLayout(name="a", roles={"x": C1, "oven": PS}),
        "b": PipelineLayout(name="b", roles={"x": C2, "oven": PS}),
    }
    m = {1: ALL, 2: ALL}
    both = pips(pip("a"), pip("b"))
    assert next_launches([job(1), job(2)], both, m, sample_of) == [(1, "a"), (2, "b")]
    assert next_launches([job(1), job(2)], both, m, sample_of, layouts) == [(1, "a")]
    busy = pips(pip("a", jobid=9), pip("b"))
    assert next_launches([job(1)], busy, m, sample_of, layouts) == []


def test_a_component_still_running_a_task_is_not_launched_onto() -> None:
    """A task of a job that ended while its node was lost runs on once the node is
    back: no job launches onto its component until it is stopped, and the job says why
    it waits."""
    layouts = {
        "a": PipelineLayout(name="a", roles={"x": C1}),
        "b": PipelineLayout(name="b", roles={"x": C2}),
    }
    m = {1: ALL, 2: ALL}
    both = pips(pip("a"), pip("b"))
    got = next_launches([job(1), job(2)], both, m, sample_of, layouts, occupied={C1})
    assert got == [(1, "b")]
    assert next_launches([job(1)], both, m, sample_of, layouts, occupied={C1, C2}) == []
    held = {"a": f"component {C1} still runs task 0 of job 7"}
    reason = waiting_reason(["a"], pips(pip("a")), "s", held)
    assert reason == f"a waits: component {C1} still runs task 0 of job 7"
    assert waiting_reason(["a", "b"], both, "s", held) is None  # b is free: no word
    # a pipeline running a job: said (a job behind it had no reason: a dashboard tour)
    busy = waiting_reason(["a"], pips(pip("a", jobid=3)), "s", held)
    assert busy == (
        "sample 's' is in a, which runs another job now: this one can start once it has "
        "ended and the pipeline is made ready"
    ), busy


@st.composite
def scenarios(
    draw: st.DrawFn,
) -> tuple[list[Job], dict[str, PipelineState], dict[int, MatchResult]]:
    names = ["a", "b", "c", "d"]
    samples = ["s", "t"]
    states = {
        n: PipelineState(
            name=n,
            sample=draw(st.sampled_from([None, *samples])),
            ready=draw(st.booleans()),
            jobid=draw(st.sampled_from([None, None, 99])),
        )
        for n in names
    }
    ids = draw(st.lists(st.integers(1, 50), unique=True, max_size=10))
    queue = [
        job(i, draw(st.sampled_from(samples)), draw(st.sampled_from(["q", "qw", "r"]))) for i in ids
    ]
    matches = {i: MatchResult(draw(st.lists(st.sampled_from(names), unique=True))) for i in ids}
    return queue, states, matches


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_launch_invariants(
    s: tuple[list[Job], dict[str, PipelineState], dict[int, MatchResult]],
) -> None:
    queue, states, matches = s
    out = next_launches(queue, states, matches, sample_of)
    launched = dict(out)
    assert len(launched) == len(out)  # a job launches once
    assert len({p for _, p in out}) == len(out)  # a pipeline takes one job
    assert [j for j, _ in out] == sorted(j for j, _ in out)  # in FIFO order
    by_id = {j.id: j for j in queue}

    def eligible(j: Job, p: str) -> bool:
        st_ = states[p]
        return (
            j.status in ("q", "qw")
            and p in matches[j.id].candidates
            and st_.ready
            and st_.jobid is None
            and st_.sampleid == sample_of(j)
        )

    for jid, p in out:
        assert eligible(by_id[jid], p)
    # no earlier job was passed over for a pipeline it could have had
    taken_by = {p: j for j, p in out}
    for j in queue:
        if j.id in launched:
            continue
        for p in states:
            if eligible(j, p):
                assert p in taken_by and taken_by[p] < j.id


def test_a_matching_job_says_which_sample_it_waits_for() -> None:
    from tomato_mqtt.model.matching import waiting_reason

    pips = {
        "p1": pip("p1", sample=None),
        "p2": pip("p2", sample="other"),
        "p3": pip("p3", sample="s", ready=False),
    }
    pips["p4"] = pip("p4", sample=None)
    why = waiting_reason(["p1", "p2", "p4"], pips, "s")
    assert why is not None and why.startswith(
        "no pipeline holds sample 's': load it into one of p1, p4"
    )
    # only the empty ones are named: a load into one that holds a sample is refused
    # ("already holds sample …: eject it first": a newcomer's tour)
    why = waiting_reason(["p1", "p2"], pips, "s")
    assert why == "no pipeline holds sample 's': load it into p1 (tomato pipeline load p1 s)"
    pips["p5"] = pip("p5", sample="more")
    why = waiting_reason(["p2", "p5"], pips, "s")
    assert why == (
        "no pipeline holds sample 's', and p2, p5 each hold another: eject one that runs no "
        "job, then load it there (tomato pipeline eject <pipeline>, then tomato pipeline "
        "load <pipeline> s)"
    ), why
    why = waiting_reason(["p1", "p3"], pips, "s")
    assert why == "sample 's' is in p3, which is not ready (tomato pipeline ready p3)"
    # one candidate: the exact command to type
    why = waiting_reason(["p1"], pips, "s")
    assert why == "no pipeline holds sample 's': load it into p1 (tomato pipeline load p1 s)"
    pips["p3"] = pip("p3", sample="s", ready=False, jobid=7)  # a launch took `ready`
    why = waiting_reason(["p3"], pips, "s")  # it waits for job 7: said
    assert why is not None and why.startswith("sample 's' is in p3, which runs another job"), why
    # the one candidate holds another sample: eject it first (the advice alone failed,
    # "already holds sample …": a newcomer's tour)
    why = waiting_reason(["p2"], pips, "s")
    assert why == (
        "no pipeline holds sample 's': load it into p2 "
        "(tomato pipeline eject p2, then tomato pipeline load p2 s)"
    ), why
    # a near miss of a sample a pipeline holds: said as such
    pips["p2"] = pip("p2", sample="counter_1_0.1")
    why = waiting_reason(["p1", "p2"], pips, "counter_1_01")
    assert why == (
        "no pipeline holds sample 'counter_1_01'; p2 holds 'counter_1_0.1': did you mean "
        "it? (the payload's sample name; to load this one there, eject that first: tomato "
        "pipeline eject p2)"
    ), why
    # a near miss held by a pipeline that cannot run the job is none of its business
    # (it was named, with "tomato pipeline eject other": a review)
    pips["other"] = pip("other", sample="counter_1_0.1")
    pips["p2"] = pip("p2", sample=None)
    why = waiting_reason(["p1", "p2"], pips, "counter_1_01")
    assert why is not None and why.startswith("no pipeline holds sample 'counter_1_01': load")
    # not a sibling numbered otherwise: another sample, rightly waited for
    pips["p2"] = pip("p2", sample="sample-2")
    why = waiting_reason(["p1", "p2"], pips, "sample-1")
    assert why is not None and why.startswith("no pipeline holds sample 'sample-1': load"), why


def test_a_sample_in_a_pipeline_that_cannot_run_now_is_said_so() -> None:
    """A fault run: the job's sample was in pip-remote, whose node was lost (a network
    cut); other pipelines could run it, so the job waited `qw` saying "no pipeline holds
    sample …: load it into one of pip-counter-1, …" for the whole cut."""
    offline = views(c1=ComponentView(C1, frozenset({"count"}), {}, online=False))
    r = match([task()], PIPELINES, offline, validator)
    assert r.candidates == ["pip-counter-2", "pip-multidev"]
    pips = {
        "pip-counter-1": pip("pip-counter-1", sample="s"),
        "pip-counter-2": pip("pip-counter-2", sample=None),
    }
    why = waiting_reason(r.candidates, pips, "s", problems=r.problems)
    assert why == (
        "sample 's' is in pip-counter-1, which cannot run it now: "
        f"role 'counter': component {C1} on pip-counter-1 is not online"
    )
    # nowhere that cannot run it: as before
    pips["pip-counter-1"] = pip("pip-counter-1", sample=None)
    why = waiting_reason(r.candidates, pips, "s", problems=r.problems)
    assert why is not None and why.startswith("no pipeline holds sample 's'")


def test_a_job_runs_only_on_its_owner_s_sample_or_the_lab_s() -> None:
    """A hostile tour: olga's job ran on otto's sample (his pipeline, his `ready`)."""
    from tomato_mqtt.model.matching import next_launches

    theirs = PipelineState(name="a", sampleid="s", ready=True, owner="otto")
    olga = job(1).model_copy(update={"owner": "olga"})
    m = {1: MatchResult(["a"])}

    def sample_of(j: Job) -> str:
        return "s"

    assert next_launches([olga], {"a": theirs}, m, sample_of) == []
    otto = olga.model_copy(update={"owner": "otto"})
    assert next_launches([otto], {"a": theirs}, m, sample_of) == [(1, "a")]
    lab = theirs.model_copy(update={"owner": None})  # an admin's: every job's
    assert next_launches([olga], {"a": lab}, m, sample_of) == [(1, "a")]
    why = waiting_reason(["a"], {"a": theirs}, "s", owner="olga")
    assert why == (
        "sample 's' is in a, loaded by otto: a job runs only on a sample its owner or an "
        "admin loaded (load yours into a free pipeline)"
    ), why
