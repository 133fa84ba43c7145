"""One valid example of every message model: the AsyncAPI ``examples`` and docs/topics.md.

Checked by the test suite (each example validates against its model and appears in the
docs), so the examples cannot drift from the models.
"""

from __future__ import annotations

from pydantic import BaseModel

from tomato_mqtt.driver.spec import AttrSpec, TaskSpec
from tomato_mqtt.model.jobs import Job
from tomato_mqtt.wire.messages import (
    AckArgs,
    ComponentMeta,
    ComponentStatus,
    DataBatch,
    DriverInfo,
    JobEvent,
    JobProgress,
    JobStatus,
    LastPoint,
    NodeComponent,
    NodeConfigure,
    NodeStatus,
    PipelineStatus,
    RecorderStatus,
    ReplayArgs,
    Reply,
    Request,
    SchedulerStatus,
    TaskEndInfo,
    TaskStartArgs,
)

__all__ = ["example_messages"]


def example_messages() -> dict[str, BaseModel]:
    """One valid example of every message model (and request args), by model name.

    Used for the ``examples`` of the AsyncAPI document and the payloads in docs/topics.md.
    """
    t0 = 1_750_000_000.0
    cmp = "example_counter:(example-addr,1)"
    task_end = TaskEndInfo(
        job=7,
        task=0,
        task_name="count",
        reason="done",
        t_start=t0,
        t_end=t0 + 10,
        npoints=10,
        missed=0,
        epoch=3,
        stream="3-5d1c0b7e9a2f4c68",
        last_seq=9,
    )
    node_component = NodeComponent(
        name=cmp,
        device="dev-counter",
        driver="example_counter",
        address="example-addr",
        channel="1",
        pollrate=1.0,
    )
    driver = DriverInfo(version="1.0", loaded=True)
    progress = JobProgress(points={cmp: 10}, gaps=0, conflicts=0, merged=0)
    ex: list[BaseModel] = [
        node_component,
        driver,
        progress,
        task_end,
        Request(
            id="5f0c6a2e8d7b4c1e9a3f2b1c0d9e8f7a",
            reply_to="tomato/v2/lab1/reply/alice/ketchup-3b9f2a1c4d5e",
            args={"jobid": 7},
        ),
        Reply(
            id="5f0c6a2e8d7b4c1e9a3f2b1c0d9e8f7a",
            success=True,
            msg="found 1 job",
            data=[{"id": 7, "status": "r"}],
        ),
        SchedulerStatus(
            state="online",
            instance="lab1",
            epoch=3,
            heartbeat=t0 + 42,
            version="0.1.0",
            started_at=t0,
            broker="mqtt://127.0.0.1:1883",
            jobs_running=1,
            jobs_queued=2,
            heartbeat_interval=2.0,
            lost_after=10.0,
            broker_warnings=[],
        ),
        NodeStatus(
            state="online",
            node="local",
            epoch=3,
            heartbeat=t0 + 42,
            version="0.1.0",
            host="lab-pc-1",
            pid=4242,
            drivers={"example_counter": driver},
            components=[cmp],
            streams={cmp: 9},
            stream_ids={cmp: "3-5d1c0b7e9a2f4c68"},
        ),
        ComponentMeta(
            name=cmp,
            device="dev-counter",
            driver="example_counter",
            address="example-addr",
            channel="1",
            node="local",
            registered=True,
            attrs={"max": AttrSpec(type="float", rw=True, status=True)},
            capabilities=["count", "random"],
            constants={"vendor": "example"},
        ),
        ComponentStatus(
            name=cmp,
            node="local",
            state="running",
            time=t0 + 15,
            job=7,
            task=1,
            task_name="count-again",
            technique="count",
            started_at=t0 + 10,
            max_duration=20.0,
            attrs={"max": 10.0},
            epoch=3,
            stream="3-5d1c0b7e9a2f4c68",
            seq=4,
            last_task=task_end,
        ),
        DataBatch(
            component=cmp,
            job=7,
            task=0,
            epoch=3,
            stream="3-5d1c0b7e9a2f4c68",
            seq=4,
            uts=[t0 + 4, t0 + 5],
            vars={"val": [4, 5]},
            units={},
        ),
        LastPoint(component=cmp, uts=t0 + 5, values={"val": 5}, job=7, task=0),
        PipelineStatus(
            name="pip-counter",
            sample="counter_1_0.1",
            ready=False,  # a launch takes it (as in tomato)
            job=7,
            roles={"counter": cmp},
        ),
        JobStatus.of(
            Job(
                id=7,
                jobname="counter-demo",
                payload={
                    "version": "2.2",
                    "sample": {"name": "counter_1_0.1"},
                    "method": [
                        {"component_role": "counter", "technique_name": "count"},
                        {"component_role": "counter", "technique_name": "count"},
                    ],
                },
                status="r",
                submitted_at="2025-06-15T15:06:40+00:00",
                launched_at="2025-06-15T15:06:41+00:00",
                pipeline="pip-counter",
                owner="olga",
                respath="/home/olga/data/results.7.nc",
                progress={"roles": {"counter": cmp}},
            )
        ),
        JobEvent(
            job=7,
            event="task_ended",
            time=t0 + 10,
            role="counter",
            task=0,
            detail={"reason": "done", "npoints": 10},
        ),
        RecorderStatus(
            state="online",
            heartbeat=t0 + 42,
            version="0.1.0",
            jobs={"7": progress},
            highest_job=7,
        ),
        NodeConfigure(
            components=[node_component],
            driver_settings={"example_counter": {}},
        ),
        TaskStartArgs(
            task=TaskSpec(
                technique_name="count",
                max_duration=10.0,
                sampling_interval=1.0,
                task_name="count",
                job=7,
                index=0,
            )
        ),
        ReplayArgs(epoch=3, first=2, last=4, stream="3-5d1c0b7e9a2f4c68"),
        AckArgs(epoch=3, upto=9, stream="3-5d1c0b7e9a2f4c68"),
    ]
    return {type(m).__name__: m for m in ex}
