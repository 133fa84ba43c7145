"""What ``ketchup submit``, ``status``, ``search`` and ``cancel`` do, without typer
(:mod:`tomato_mqtt.cli.fast` runs them; ketchup.py declares them; jobview.py shows jobs).

``submit`` only reads the payload file (YAML or JSON, tomato's ``samplefile`` /
``methodfile`` references resolved): the scheduler validates it, and its refusal comes
back with this file's name.
"""

from __future__ import annotations

import os

from tomato_mqtt.cli import jobview
from tomato_mqtt.cli.core import Opts, fail, run_request
from tomato_mqtt.transport.oneshot import payload_refused, refused_token

TYPE_CHECKING = False  # typing is ~2 ms of a one-request call: for the type checker only
if TYPE_CHECKING:
    from typing import Any

    #: the payload file as given (typer: a Path; the fast path: the argument)
    File = str | os.PathLike[str]

__all__ = ["PAGE_MAX", "cancel", "search", "status", "status_args", "submit"]

#: wire.commands.JOB_PAGE_MAX (not imported: it would bring pydantic into every call)
PAGE_MAX = 500


#: a payload text longer than this is parsed here and sent as JSON (the scheduler takes
#: at most wire.commands.PAYLOAD_TEXT_MAX; a payload of tomato is a few kB)
TEXT_MAX = 256_000


def _as_text(payload: File) -> str | None:
    """The payload file's text to send as it is (the scheduler parses it: this process
    need not load a YAML parser, ~9 ms), or None to parse it here: a JSON file (cheap to
    parse), a file naming other files (``samplefile``, ``methodfile``: they are on this
    PC), a long one, or one that cannot be read (the reader below says why)."""
    if os.fspath(payload).lower().endswith(".json"):
        return None
    try:
        with open(payload, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return None
    if len(text) > TEXT_MAX or "samplefile" in text or "methodfile" in text:
        return None
    return text


def _parsed(payload: File) -> dict[str, Any]:
    import json
    from pathlib import Path

    from tomato_mqtt.config.payloads import PayloadError, read_payload_file

    try:
        # only read here: the scheduler validates (dgbowl-schemas would add ~0.5 s to
        # every submit), and its refusal is given back with this file's name below
        doc = read_payload_file(Path(payload))
    except PayloadError as e:
        if e.file is None:
            e = PayloadError(e.location, e.reason, Path(payload))
        fail(f"payload refused: {e}")
    # YAML may hold dates and the like: send what JSON can carry
    out: dict[str, Any] = json.loads(json.dumps(doc, default=str))
    return out


def submit(opts: Opts, payload: File, jobname: str | None) -> None:
    from tomato_mqtt.config.login import login_name

    suffix = os.path.splitext(os.fspath(payload))[1].lower()
    if suffix not in (".yml", ".yaml", ".json"):
        # as tomato ("payload must be a yaml or a json file"): another file (a script, a
        # system file) was read and sent to the scheduler (a newcomer's tour)
        fail(f"payload refused: {payload}: a payload is a YAML (.yml, .yaml) or JSON (.json) file")
    user = login_name()
    text = _as_text(payload)
    ctx = opts.context()
    args: dict[str, Any] = {
        "jobname": jobname,
        "submit_dir": os.path.realpath(os.getcwd()),
        "user": user,
        # the request is sent again while no answer comes (a scheduler restarting): with
        # this, a scheduler that queued it already answers with that job
        "token": os.urandom(16).hex(),
    }
    topic = ctx.topics.scheduler_cmd("job_submit")
    # a scheduler that is busy or paused may still take the job once it answers (found
    # by a user: submitted again after the error, the job ran twice)
    later = (
        "; the job may still be queued if a scheduler got the request and answers later: "
        "look for it with `ketchup status` or `ketchup search` before submitting it again"
    )

    def ask(what: dict[str, Any]) -> Any:
        reply = run_request(ctx, topic, args | what, timeout=opts.timeout, unanswered=later)
        if not reply.success and refused_token(reply.code, reply.msg):
            del args["token"]  # a scheduler older than the token: without it, as before
            reply = run_request(ctx, topic, args | what, timeout=opts.timeout, unanswered=later)
        return reply

    if text is not None:
        reply = ask({"payload_text": text})
        if not reply.success and "payload_text" in (reply.msg or ""):
            text = None  # a scheduler older than payload_text: send it parsed
    if text is None:
        reply = ask({"payload": _parsed(payload)})
    if not reply.success:  # the scheduler cannot know the file: "payload refused: …" gets it
        # (also a refusal of its settings, answered bad_request: it named no file, though
        # cli.md says every one does, a tomato 2.2 user's tour)
        reply.msg = payload_refused(os.fspath(payload), reply.msg)
    if reply.success and not (opts.json or opts.yaml):
        # stdout: one line, as tomato 2.2's (`jobid=$(ketchup submit p.yml | awk '{print
        # $NF}')` took three words of three lines: a side-by-side tour); the notes and
        # where the file goes on stderr, on the console as before
        from tomato_mqtt.cli.output import echo

        head, *notes = _submitted(reply.msg, reply.data).splitlines()
        echo(head)
        for line in notes:
            echo(line, err=True)
        return
    opts.output().reply(reply)


def status_args(
    opts: Opts,
    jobids: list[int],
    all_: bool = False,
    summary: bool = False,
    limit: int | None = None,
    offset: int | None = None,
) -> dict[str, Any]:
    """The ``job_status`` args of ``ketchup status``; contradictory options refused."""
    paging = limit is not None or offset is not None
    if jobids and (all_ or summary or paging):
        fail("--all, --summary, --limit and --offset are for the whole listing: not with job ids")
    if summary and (all_ or paging):
        fail("--summary counts every job: not with --all, --limit or --offset")
    # by id, each once, as tomato lists them (`ketchup status 3 1 1` gave 3, 1, 1)
    args: dict[str, Any] = {"jobids": sorted(set(jobids)) if jobids else None}
    as_doc = opts.yaml or opts.json
    if not jobids and (summary or not (as_doc or all_ or paging)):
        args["summary"] = True
    if limit is not None:
        args["limit"] = limit
    if offset is not None:
        args["offset"] = offset
    return args


def status(
    opts: Opts,
    jobids: list[int],
    all_: bool = False,
    summary: bool = False,
    limit: int | None = None,
    offset: int | None = None,
) -> Any:
    """``ketchup status``: the summary, a page of every job, or the jobs given; printed.
    Returns the Reply (``--follow`` looks at the job's final status)."""
    args = status_args(opts, jobids, all_, summary, limit, offset)
    ctx = opts.context()
    reply = run_request(ctx, ctx.topics.scheduler_cmd("job_status"), args, timeout=opts.timeout)
    if args.get("summary"):
        opts.output().reply(reply, lambda s: jobview.summary(reply.msg, s))
        return reply
    show = jobview.job_detail if len(args["jobids"] or ()) == 1 else jobview.job_table
    # tomato's summary line ("found 1 job with status ['r']") above the table
    opts.output().reply(reply, lambda jobs: f"{reply.msg}\n{show(jobs)}" if jobs else reply.msg)
    return reply


def search(opts: Opts, name: str) -> None:
    """Jobs by (part of) their name, ended ones too (as tomato 2.2); none found: exit 1."""
    ctx = opts.context()
    reply = run_request(
        ctx,
        ctx.topics.scheduler_cmd("job_search"),
        {"name": name, "complete": True},
        timeout=opts.timeout,
    )
    opts.output().reply(reply, jobview.job_table)


def cancel(opts: Opts, jobids: list[int]) -> None:
    ctx = opts.context()
    # a scheduler that is stopped or busy takes the request once it runs again: the job
    # then ends cd although this said the cancel was unanswered (a stall hunt, session 49)
    later = (
        "; the cancel may still take effect if a scheduler got the request and answers "
        "later: look with `ketchup status` before cancelling again"
    )
    reply = run_request(
        ctx,
        ctx.topics.scheduler_cmd("job_cancel"),
        {"jobids": jobids},
        timeout=opts.timeout,
        unanswered=later,
    )
    opts.output().reply(reply, lambda _jobs: reply.msg)


def _submitted(msg: str, job: Any) -> str:
    """What ``ketchup submit`` prints: a first line that ends with the job's id (and
    name), as tomato 2.2's, then notes and where the file goes."""
    lines = [msg]
    if isinstance(job, dict) and "id" in job:  # the scheduler's words, as it builds them
        named = f" and jobname {job['jobname']!r}" if job.get("jobname") else ""
        head = f"job submitted successfully with jobid {job['id']}{named}"
        if msg.startswith(head + "; "):
            lines = [head, f"note: {msg[len(head) + 2 :]}"]
    if isinstance(job, dict):
        if job.get("reason") and job.get("status") == "q":
            lines.append(f"note: no pipeline can run it yet: {job['reason']}")
        elif job.get("reason"):
            lines.append(f"note: {job['reason']}")
        respath = job.get("respath")
        if respath and any(f"{respath} {w}" in msg for w in ("exists", "is a symbolic link")):
            # the scheduler said a file is there and where the job's goes instead: the bare
            # path read as where it will write (a newcomer's tour)
            lines.append(f"output: {respath}, if the file there now is moved away in time")
        elif respath:
            lines.append(f"output: {respath}")
    return "\n".join(lines)
