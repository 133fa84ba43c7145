"""Random and malformed messages on every command topic family (tests and bench share it).

:func:`messages` yields ``(topic, payload)`` pairs from a seeded generator: request
envelopes with random args (keys drawn from the real argument names, values of every
JSON type), broken envelopes, non-JSON bytes, huge and deeply nested documents, forged
identities and forged node/component/job topics. ``stop``, ``reload`` and ``shutdown``
always get arguments a strict parser must refuse, so a well-behaved stack survives all
of them even when no ACL stands in front (an open stack).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

from tomato_mqtt.config.roles import ADMIN_OPS
from tomato_mqtt.wire.topics import Topics

__all__ = ["messages"]

KEYS = (
    "jobids", "jobid", "pipeline", "sample", "payload", "what", "token", "index", "force",
    "name", "complete", "jobname", "submit_dir", "user", "job", "roles", "path", "epoch",
    "upto", "task", "components", "attr", "value", "snapshot", "wait", "fallback_dir",
)  # fmt: skip
DESTRUCTIVE = ("stop", "reload", "shutdown")


def _value(r: random.Random, depth: int = 0) -> object:
    kind = r.randrange(9 if depth < 4 else 6)
    match kind:
        case 0:
            return None
        case 1:
            return r.choice([True, False])
        case 2:
            return r.choice([0, -1, 1, 2**63, -(2**70), r.randrange(-1000, 1000)])
        case 3:
            return r.choice([0.0, -0.5, 1e308, 1e-320, r.random() * 1e6])
        case 4:
            return "".join(r.choice('ab/+#\\"\x00é../') for _ in range(r.randrange(12)))
        case 5:
            return r.choice(["pip-counter-1", "../../etc/passwd", "/tmp/x.nc", "", "*", "%u"])
        case 6:
            return [_value(r, depth + 1) for _ in range(r.randrange(4))]
        case _:
            return {r.choice(KEYS): _value(r, depth + 1) for _ in range(r.randrange(4))}


def _args(r: random.Random, destructive: bool) -> object:
    if r.random() < 0.1 and not destructive:
        return _value(r)  # not even an object (or a random one)
    args = {r.choice(KEYS): _value(r) for _ in range(r.randrange(5))}
    if destructive:
        # never a well-formed stop/reload/shutdown: those must be refused, not defaulted
        args.setdefault("force", r.choice(["yes", 1, "true", None, [True]]))
        args["junk"] = _value(r)
    if destructive and r.random() < 0.2:
        return r.choice([[], "stop", 1, None, [{}]])  # args that are no object at all
    return args


def _payload(r: random.Random, t: Topics, user: str, op: str) -> bytes:
    kind = r.randrange(100)
    if kind < 5:
        return bytes(r.randrange(256) for _ in range(r.randrange(200)))
    if kind < 10:
        return r.choice([b"", b"{", b"null", b"[]", b'"x"', b"{}", b'{"id": 1}', b"\xff\xfe"])
    if kind < 11:
        return json.dumps(
            {"schema": 1, "id": "big", "reply_to": "x", "args": "x" * 100_000}
        ).encode()
    if kind < 12:
        return b'{"a":' * 300 + b"1" + b"}" * 300
    reply_to = t.reply(f"fz{r.randrange(10)}", user)
    if kind < 20:
        reply_to = r.choice([t.reply("x", "ada"), "elsewhere/reply", t.root + "/reply/../x", ""])
    doc: dict[str, object] = {
        "schema": r.choice([2, 2, 1, 3, "1", None]),
        "id": r.choice([f"fz-{r.randrange(10**9)}", "", 5, None]),
        "reply_to": reply_to,
        "args": _args(r, op in DESTRUCTIVE),
    }
    if r.random() < 0.1:
        # (a destructive request without args would be a well-formed one: keep them)
        del doc[r.choice(["schema", "id", "reply_to"] if op in DESTRUCTIVE else list(doc))]
    return json.dumps(doc).encode()


def messages(
    t: Topics, user: str, components: list[str], node: str, n: int, seed: int = 10
) -> Iterator[tuple[str, bytes]]:
    r = random.Random(seed)
    ops = [*ADMIN_OPS, "whoami", "finalize", "fetch", "nope", "x-y"]
    cmp_ops = ["task_start", "task_stop", "set_attr", "get_attr", "measure", "reset",
               "register", "status", "replay", "ack", "nope"]  # fmt: skip
    for _ in range(n):
        family = r.randrange(100)
        c = r.choice(components)
        if family < 45:
            op = r.choice(ops)
            yield t.scheduler_cmd(op, user), _payload(r, t, user, op)
        elif family < 50:
            op = r.choice(ops)
            yield t.scheduler_cmd(op, "ada"), _payload(r, t, user, op)  # a forged identity
        elif family < 58:
            op = r.choice(["finalize", "fetch", "status", "nope"])
            yield t.recorder_cmd(op, user), _payload(r, t, user, op)
        elif family < 68:
            op = r.choice(["shutdown", "configure", "rebirth", "nope"])
            yield t.node_cmd(node, op), _payload(r, t, user, op)
        elif family < 85:
            op = r.choice(cmp_ops)
            yield t.component_cmd(c, op), _payload(r, t, user, op)
        else:
            topic = r.choice(
                [t.component_data(c), t.component_meta(c), t.component_status(c),
                 t.node_status(node), t.job_status(1), t.pipeline_status("pip-counter-1")]
            )  # fmt: skip
            yield topic, _payload(r, t, user, "data")
