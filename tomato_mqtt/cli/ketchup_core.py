"""What ``ketchup submit`` and ``cancel`` do, without typer (:mod:`tomato_mqtt.cli.fast`
runs them; ketchup.py declares them).

``submit`` only reads the payload file (YAML or JSON, tomato's ``samplefile`` /
``methodfile`` references resolved): the scheduler validates it, and its refusal comes
back with this file's name.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tomato_mqtt.cli.core import Opts, fail, run_request

__all__ = ["cancel", "submit"]


def submit(opts: Opts, payload: Path, jobname: str | None) -> None:
    from tomato_mqtt.config.payloads import PayloadError, read_payload_file

    user = _username()
    try:
        # only read here: the scheduler validates (dgbowl-schemas would add ~0.5 s to
        # every submit), and its refusal is given back with this file's name below
        doc = read_payload_file(payload)
    except PayloadError as e:
        if e.file is None:
            e = PayloadError(e.location, e.reason, payload)
        fail(f"payload refused: {e}")
    ctx = opts.context()
    args = {
        # YAML may hold dates and the like: send what JSON can carry
        "payload": json.loads(json.dumps(doc, default=str)),
        "jobname": jobname,
        "submit_dir": str(Path.cwd().resolve()),
        "user": user,
    }
    reply = run_request(ctx, ctx.topics.scheduler_cmd("job_submit"), args, timeout=opts.timeout)
    if not reply.success and reply.code == "refused":
        reply.msg = f"{payload}: {reply.msg}"  # the scheduler cannot know the file's name
    opts.output().reply(reply, lambda job: _submitted(reply.msg, job))


def cancel(opts: Opts, jobids: list[int]) -> None:
    ctx = opts.context()
    reply = run_request(
        ctx, ctx.topics.scheduler_cmd("job_cancel"), {"jobids": jobids}, timeout=opts.timeout
    )
    opts.output().reply(reply, lambda _jobs: reply.msg)


def _submitted(msg: str, job: Any) -> str:
    lines = [msg]
    if isinstance(job, Mapping):
        if job.get("reason") and job.get("status") == "q":
            lines.append(f"note: no pipeline can run it yet: {job['reason']}")
        elif job.get("reason"):
            lines.append(f"note: {job['reason']}")
        if job.get("respath"):
            lines.append(f"output: {job['respath']}")
    return "\n".join(lines)


def _username() -> str:
    try:
        return getpass.getuser()
    except Exception:  # neither a login name in the environment nor a passwd entry
        return "unknown"
