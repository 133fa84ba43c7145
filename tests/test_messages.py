"""Wire messages: every model round-trips through JSON; bad payloads become DecodeError."""

from __future__ import annotations

import json

import pytest

from tomato_mqtt.wire import messages
from tomato_mqtt.wire.asyncapi import example_messages
from tomato_mqtt.wire.messages import (
    MESSAGES,
    SCHEMA,
    DataBatch,
    DecodeError,
    JobEvent,
    NodeStatus,
    Reply,
    Request,
    WireModel,
    decode,
    encode,
)
from tomato_mqtt.wire.topics import CHANNELS

EXAMPLES = example_messages()


def _wire_models() -> list[type[WireModel]]:
    found = {
        obj
        for obj in vars(messages).values()
        if isinstance(obj, type) and issubclass(obj, WireModel) and obj is not WireModel
    }
    return sorted(found, key=lambda m: m.__name__)


def test_every_wire_model_has_an_example() -> None:
    missing = {m.__name__ for m in _wire_models()} - set(EXAMPLES)
    assert not missing


def test_every_channel_has_its_message_models() -> None:
    assert set(MESSAGES) == {ch.kind for ch in CHANNELS}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_round_trip_through_json(name: str) -> None:
    msg = EXAMPLES[name]
    raw = encode(msg)
    assert isinstance(raw, bytes)
    doc = json.loads(raw)  # plain UTF-8 JSON
    if isinstance(msg, WireModel):
        assert doc["schema"] == SCHEMA  # the version travels on the wire under "schema"
        assert "schema_" not in doc
    back = decode(type(msg), raw)
    assert back == msg
    assert encode(back) == raw


@pytest.mark.parametrize("model", _wire_models(), ids=lambda m: m.__name__)
def test_every_model_declares_schema_version(model: type[WireModel]) -> None:
    schema = model.model_json_schema(by_alias=True)
    assert "schema" in schema["properties"]
    assert schema["properties"]["schema"]["enum"] == [1, 2]  # 2 written, 1 still read


def test_unknown_fields_are_ignored() -> None:
    """A newer publisher must not break an older reader."""
    raw = json.loads(encode(EXAMPLES["NodeStatus"]))
    raw["added_in_a_later_version"] = {"x": 1}
    assert decode(NodeStatus, json.dumps(raw)) == EXAMPLES["NodeStatus"]


BAD: list[tuple[str, bytes, str]] = [
    ("not-json", b"this is not json", "not valid JSON"),
    ("truncated", b'{"id": "1", "success": tr', "not valid JSON"),
    ("empty", b"", "not valid JSON"),
    # valid, and deeper than the parser goes: said so (it read "not valid JSON" alone)
    (
        "deep",
        b'{"id": "1", "success": true, "msg": "x", "data": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        "not valid JSON (nested too deeply: recursion limit exceeded at line 1",
    ),
    ("not-utf8", b"\xff\xfe\x00{", ""),
    ("array", b"[1, 2, 3]", ""),
    ("string", b'"hello"', ""),
    ("null", b"null", ""),
    ("missing-field", b'{"id": "1", "msg": "x"}', "success"),
    ("wrong-type", b'{"id": "1", "success": "perhaps", "msg": "x"}', "success"),
    ("wrong-version", b'{"schema": 3, "id": "1", "success": true, "msg": "x"}', "schema"),
    ("version-as-text", b'{"schema": "1", "id": "1", "success": true, "msg": "x"}', "schema"),
]


@pytest.mark.parametrize(("payload", "reason"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_payloads_give_decode_error(payload: bytes, reason: str) -> None:
    topic = "tomato/v2/lab1/reply/x"
    with pytest.raises(DecodeError) as err:
        decode(Reply, payload, topic)
    e = err.value
    assert isinstance(e, ValueError)  # one typed error, catchable as ValueError too
    assert e.model is Reply
    assert e.topic == topic
    assert topic in str(e)
    assert "Reply" in str(e)
    assert reason in e.reason


def test_decode_error_from_str_payload_and_many_errors() -> None:
    with pytest.raises(DecodeError, match=r"\(\+\d+ more\)"):
        decode(DataBatch, "{}")


def test_request_args_default_and_json_only() -> None:
    r = Request(id="1", reply_to="tomato/v2/lab1/reply/x")
    assert r.args == {}
    assert decode(Request, encode(r)) == r
    with pytest.raises(DecodeError):
        decode(Request, b'{"id": "1", "reply_to": "r", "args": [1]}')


def test_nan_and_infinity_are_refused_as_json_has_them_not() -> None:
    """A hostile tour: pydantic read a retained point's ``NaN``/``Infinity`` (into fields
    of any type), the dashboard passed it on as such, and no page could parse its
    updates until the message was gone. The letters inside a string are text."""
    from tomato_mqtt.wire.data import LastPoint

    good = '{"schema":2,"component":"c","uts":1.5,"vars":{"v":%s},"units":{}}'
    for bad in ("NaN", "Infinity", "-Infinity", "[1, NaN]"):
        with pytest.raises(DecodeError, match="NaN and Infinity are not JSON"):
            decode(LastPoint, (good % bad).encode(), "t")
    text = decode(LastPoint, good % '"NaN or -Infinity"', "t")
    assert text.values == {"v": "NaN or -Infinity"}
    with pytest.raises(DecodeError, match="NaN and Infinity are not JSON"):
        decode(JobEvent, '{"jobid":1,"event":"queued","time":NaN}', "t")


def test_a_number_beyond_a_double_s_range_is_refused_as_an_infinity_would_be() -> None:
    """A review: ``1e999`` is valid JSON that reads as an infinity, and was taken into every
    field (a scheduler's ``lost_after`` of inf: no peer would ever be lost; a component's
    attrs passed on as null). Refused in typed floats and in free JSON alike, saying where."""
    from tomato_mqtt.wire.data import LastPoint
    from tomato_mqtt.wire.messages import ComponentStatus, SchedulerStatus

    st = '{"name":"c","node":"n","state":"idle","time":%s,"attrs":%s}'
    with pytest.raises(DecodeError, match=r"time: a number beyond a double's range"):
        decode(ComponentStatus, st % ("1e999", "{}"), "t")
    with pytest.raises(DecodeError, match=r"attrs\.x\.y: a number beyond a double's range"):
        decode(ComponentStatus, st % ("1", '{"x": [{"y": -1e999}]}'), "t")
    with pytest.raises(DecodeError, match=r"lost_after: a number beyond"):
        decode(SchedulerStatus, '{"state":"online","instance":"i","lost_after":1e999}', "t")
    with pytest.raises(DecodeError, match=r"vars\.v: a number beyond"):
        decode(LastPoint, '{"component":"c","uts":1.5,"vars":{"v":2e308}}', "t")
    # the largest doubles and the smallest (which underflow to 0) are numbers like any
    ok = decode(ComponentStatus, st % ("1", '{"x": [1.7e308, -1e-999]}'), "t")
    assert ok.attrs == {"x": [1.7e308, -0.0]}
    # a message padded past any size (a second review: beyond 256 kB, lists and dicts
    # were not looked into)
    pad = '"pad": "%s", ' % ("x" * 300_000)
    with pytest.raises(DecodeError, match=r"attrs\.x: a number beyond"):
        decode(ComponentStatus, "{" + pad + (st % ("1", '{"x": [1, 2, 1e999]}'))[1:], "t")
    # an integer no float holds beside a float is a number (its sum raised
    # OverflowError: a review), and an infinity beside it is found
    big = "1" + "0" * 400
    ok = decode(ComponentStatus, st % ("1", '{"x": [' + big + ", 1.5]}"), "t")
    assert ok.attrs["x"] == [10**400, 1.5]
    with pytest.raises(DecodeError, match=r"attrs\.x: a number beyond"):
        decode(ComponentStatus, st % ("1", '{"x": [' + big + ", 1e999]}"), "t")
    # in a nested message too
    end = '{"jobid":1,"task":0,"reason":"done","t_start":1e999,"t_end":2}'
    nested = st % ("1", "{}")
    with pytest.raises(DecodeError, match=r"last_task\.t_start: a number beyond"):
        decode(ComponentStatus, nested[:-1] + f',"last_task":{end}}}', "t")
    # on decode only: a message built here with NaN or inf sends null, as before (a
    # review: a driver's NaN reading made every `passata measure` reply refused)
    from tomato_mqtt.wire.messages import Reply, encode

    built = Reply(id="1", success=True, msg="", data={"x": float("nan"), "y": float("inf")})
    assert decode(Reply, encode(built), "t").data == {"x": None, "y": None}
    ComponentStatus(name="c", node="n", state="idle", time=1.0, started_at=float("nan"))


def test_a_recorder_s_replay_and_ack_args_are_as_strict_as_every_request_s() -> None:
    """A hostile tour: ``true`` for an epoch and unknown keys were taken, and a seq of
    2**70 failed in the node's spool as an internal error."""
    from pydantic import ValidationError

    from tomato_mqtt.wire.data import AckArgs, ReplayArgs

    ok = ReplayArgs.model_validate({"schema": 2, "epoch": 1, "first": 0, "last": 3, "stream": "s"})
    assert (ok.first, ok.last) == (0, 3)
    for bad in (
        {"epoch": True, "first": 0, "last": 1},
        {"epoch": 1, "first": 2**70, "last": 0},
        {"epoch": 1, "first": "0", "last": 1},
    ):
        with pytest.raises(ValidationError):
            ReplayArgs.model_validate(bad)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        AckArgs.model_validate({"epoch": 1, "upto": 0, "zzz": 1})


def test_a_node_status_lists_a_bounded_number_of_components() -> None:
    """A security round: a node's login listed 200,000 made-up components in its status
    (6.96 MB): every dashboard page got 6 MB per status, and `tomato status nodes` a
    reply past its bound. A status beyond the bound is refused as malformed."""
    from tomato_mqtt.wire.messages import NODE_COMPONENTS_MAX, NodeStatus

    names = [f"c{i}" for i in range(NODE_COMPONENTS_MAX)]
    ok = {"schema": 2, "state": "online", "node": "pc2", "components": names}
    assert len(decode(NodeStatus, json.dumps(ok).encode(), "t").components) == len(names)
    for field, value in (
        ("components", [*names, "one-more"]),
        ("streams", {n: 0 for n in [*names, "one-more"]}),
    ):
        with pytest.raises(DecodeError) as err:
            decode(NodeStatus, json.dumps(ok | {field: value}).encode(), "t")
        assert field in err.value.reason, err.value.reason
