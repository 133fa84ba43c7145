"""``ketchup``: submit payloads, follow, cancel, find jobs, and fetch snapshots.

A pure MQTT client of the scheduler (``scheduler/cmd/job_*``) and, for snapshots, of
the recorder (``recorder/cmd/fetch``), so it works from any PC that reaches the broker.
Only ``submit`` imports dgbowl-schemas and pint (to check the payload before it is
sent); every other command stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tomato_mqtt.cli import common, core, ketchup_core
from tomato_mqtt.cli.version import add_version

if TYPE_CHECKING:
    from tomato_mqtt.client.sync import Tomato
    from tomato_mqtt.transport import oneshot

__all__ = ["app", "main"]

app = typer.Typer(
    cls=common.CommandFirst,
    name="ketchup",
    help="Submit, inspect, cancel and snapshot tomato-mqtt jobs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
add_version(app)

PAGE_MAX = ketchup_core.PAGE_MAX


# -- submit ------------------------------------------------------------------------------
@app.command()
@common.options(common.CLIENT)
def submit(
    payload: Annotated[Path, typer.Argument(help="payload file (YAML or JSON), any version")],
    jobname: Annotated[
        str | None, typer.Option("-j", "--jobname", help="a name to find the job by")
    ] = None,
    *,
    opts: common.Opts,
) -> None:
    """Submit a payload; the output goes to the current directory unless it says otherwise."""
    ketchup_core.submit(opts, payload, jobname)


# -- status, search --------------------------------------------------------------------
@app.command()
@common.options(common.CLIENT)
def status(
    jobids: Annotated[
        list[int] | None, typer.Argument(help="job ids (default: a summary of all jobs)")
    ] = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            help="watch one job until it ends: a progress bar on a terminal, plain lines "
            "otherwise; exits 1 if it ends ce or cd",
        ),
    ] = False,
    all_: Annotated[
        bool,
        typer.Option("--all", "-a", help="every job as a table (paged: --limit, --offset)"),
    ] = False,
    summary: Annotated[
        bool,
        typer.Option("--summary", help="with -y/--json: the summary instead of the job list"),
    ] = False,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit",
            min=1,
            max=PAGE_MAX,
            help=f"jobs per page of the whole listing (default and most: {PAGE_MAX})",
        ),
    ] = None,
    offset: Annotated[
        int | None,
        typer.Option(
            "--offset", min=0, help="first job of the page, 0 = the oldest (default: the last page)"
        ),
    ] = None,
    *,
    opts: common.Opts,
) -> None:
    """Show a summary of the queue, every job (--all), or the jobs given.

    The summary groups the jobs by status as tomato does (ids cut to their ends when
    many), then the running jobs, the first and last queued, why the queue waits and
    the jobs per pipeline. -y/--json without ids print the job list (paged: the newest
    500 by default) as before, or the summary with --summary.

    Status codes as in tomato: q queued, qw waiting for a pipeline that can run it, r running,
    rd cancel requested, c completed, ce completed with error, cd cancelled.
    """
    if follow:
        if not jobids or len(jobids) != 1:
            common.fail("--follow watches one job: give exactly one job id")
        ketchup_core.status_args(opts, list(jobids), all_, summary, limit, offset)  # refuse
        _follow(opts.context(), jobids[0], opts)
    reply = ketchup_core.status(opts, list(jobids or []), all_, summary, limit, offset)
    final = reply.data[0] if reply.success and isinstance(reply.data, list) and reply.data else {}
    if follow and final.get("status") in ("ce", "cd"):
        raise typer.Exit(1)


def _say_the_connection(url: object) -> None:
    """The client's connection, lost and back, said as a follower reads it: it was
    "client-2572-8c30f9 lost the connection to … (Unspecified error)", then nothing while
    the stack restarted (a newcomer's tour)."""
    import logging
    import sys

    class Said(logging.Handler):
        lost = False

        def emit(self, record: logging.LogRecord) -> None:
            text = record.getMessage()
            if " lost the connection to " in text:
                self.lost = True
                line = (
                    f"lost the connection to the broker at {url}: following again once it"
                    " is back (Ctrl-C stops)"
                )
            elif " connected to " in text:  # (said once: the client's own lines too)
                if not self.lost:
                    return
                self.lost = False
                line = "connected again: following"
            elif record.levelno >= logging.WARNING:
                line = f"warning: {text}"
            else:
                return
            print(line, file=sys.stderr, flush=True)

    if logging.getLogger().handlers:  # -v/-vv: the log says it, as it is
        return
    log = logging.getLogger("tomato_mqtt.transport.client")
    log.addHandler(Said())
    log.setLevel(logging.DEBUG)  # (its "connected" is a debug record)
    log.propagate = False


def _follow(ctx: common.CallContext, jobid: int, opts: common.Opts) -> None:
    """Progress of one job until it ends (pushed by the stack, not polled)."""
    import sys

    from tomato_mqtt.client import ClientError

    # -y/--json keep stdout for the final Reply: progress goes to stderr then
    out = sys.stderr if (opts.yaml or opts.json) else sys.stdout
    tty = out.isatty()
    last = ""
    _say_the_connection(ctx.url)
    with common.client(ctx, timeout=opts.timeout) as t:
        try:
            for p in t.follow(jobid):
                # Ctrl-C from now on: said that the job goes on (only "interrupted" left a
                # newcomer unsure whether it was cancelled)
                core.interrupted_note = (
                    f"stopped following job {jobid}, which goes on (`ketchup cancel {jobid}` "
                    "stops it)"
                )
                if tty:
                    out.write("\r\x1b[2K" + p.bar()[:200])
                    out.flush()
                elif p.line() != last:
                    last = p.line()
                    out.write(last + "\n")
                    out.flush()
        except ClientError as e:
            common.fail(f"{e} ({ctx.where()})")
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        finally:
            if tty:
                out.write("\n")


@app.command()
@common.options(common.CLIENT)
def search(
    name: Annotated[str, typer.Argument(help="(part of) the job name")],
    complete: Annotated[
        bool,
        typer.Option(
            "-c", "--complete", help="accepted for tomato; ended jobs are always searched"
        ),
    ] = False,
    *,
    opts: common.Opts,
) -> None:
    """Find jobs by name, whatever their status (as tomato 2.2: also ended ones).

    No match is a failure (exit 1), as in tomato: "no job matching 'x' found".
    """
    ketchup_core.search(opts, name)


# -- cancel ------------------------------------------------------------------------------
@app.command()
@common.options(common.CLIENT)
def cancel(
    jobids: Annotated[list[int], typer.Argument(help="the ids of the jobs to cancel")],
    opts: common.Opts,
) -> None:
    """Cancel jobs: queued ones end at once (cd), running ones stop their tasks (rd -> cd)."""
    ketchup_core.cancel(opts, list(jobids))


# -- snapshot ----------------------------------------------------------------------------
@app.command()
@common.options(common.CLIENT, timeout=60.0)
def snapshot(
    jobids: Annotated[list[int], typer.Argument(help="the job(s) to snapshot")],
    opts: common.Opts,
) -> None:
    """Write an up-to-date snapshot.<jobid>.nc of each job into the current directory.

    The recorder writes the file; its content comes here over MQTT in chunks, so this
    works from any PC that reaches the broker. Several ids as in tomato; the first
    failure stops there (files already written stay).
    """
    from tomato_mqtt.transport import oneshot

    ctx = opts.context()
    done: list[Any] = []
    with common.client(ctx, timeout=opts.timeout) as t:
        for jobid in jobids:
            reply = _snapshot_one(t, ctx, jobid)
            if not reply.success:
                if done:
                    reply.msg += f" (written before: {', '.join(d['path'] for d in done)})"
                if len(jobids) > 1:  # what was written, for a script (it got null: a tour)
                    reply = oneshot.Reply(reply.id, False, reply.msg, done)
                break
            done.append(reply.data)
    if reply.success and len(jobids) > 1:
        paths = ", ".join(str(d["path"]) for d in done)
        reply = oneshot.Reply(reply.id, True, f"snapshots of jobs {jobids}: {paths}", done)
    opts.output().reply(reply, lambda _d: reply.msg)


def _snapshot_one(t: Tomato, ctx: common.CallContext, jobid: int) -> oneshot.Reply:
    """One job's snapshot into ./snapshot.<jobid>.nc: the recorder's file, in chunks."""
    from tomato_mqtt.client.aio import SNAPSHOT_ASKS, ClientError
    from tomato_mqtt.transport import oneshot
    from tomato_mqtt.wire.commands import FileData

    target = Path.cwd() / f"snapshot.{jobid}.nc"
    topic = ctx.topics.scheduler_cmd("job_snapshot")
    # a login that may not ask is told at once (one whoami), not after the snapshot's
    # whole timeout: the broker drops a forbidden request without a word (an admin's tour)
    why = common.denied(ctx, topic)
    if why is not None:
        common.fail(why)
    for again in reversed(range(SNAPSHOT_ASKS)):
        try:
            r = t.request(topic, {"jobid": jobid})
        except oneshot.OneShotError as e:  # a reader's request the broker dropped: said so
            common.oneshot_failed(ctx, e)
        if not r.success or not isinstance(r.data, dict):
            return r
        try:
            info = FileData.model_validate(r.data)
        except ValueError:
            return oneshot.Reply(r.id, False, f"snapshot reply without a file: {r.msg}")
        try:  # the recorder's file, in chunks over MQTT (works from any PC)
            got = t.fetch_file(info, target)
            break
        except ClientError as e:
            # a newer snapshot of the job took the file's name before this fetch began:
            # asked again, as the answer says and as the client library does (a recorder
            # killed and restarted wrote the snapshot twice, its request sent again: "…
            # has been replaced since the token was given … ask for it again", a test)
            if again and e.file_replaced:
                continue
            return oneshot.Reply(r.id, False, f"cannot write {target}: {e}")
        except OSError as e:
            return oneshot.Reply(r.id, False, f"cannot write {target}: {e}")
    data_out: dict[str, Any] = {
        "path": str(target),
        "size": got,
        "source": info.path,
        "points": info.points,
        "missing": info.missing,
    }
    msg = f"snapshot of job {jobid} written to {target}"
    if info.missing:
        msg += f" (still missing: {', '.join(str(m) for m in info.missing)})"
    if info.temporary and info.fallback:  # its datadir refused it: said, as the recorder did
        msg += f" ({info.fallback})"
    return oneshot.Reply(r.id, True, msg, data_out)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
