"""``ketchup status``: the jobs given, a page of the whole listing, or a summary.

Every reply is bounded, however deep the queue: jobs by id are the ones asked for, the
listing is paged (at most ``JOB_PAGE_MAX`` jobs a reply, the newest page by default),
and the summary is counts from the store's indexes plus a few jobs (the running ones,
the first and last queued). tomato 2.2 answered with every job ever run; its reply
texts are kept ("found 2 jobs with status 'qw': [1, 2]"), with long id lists cut in
the middle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import JsonValue

from tomato_mqtt.model.jobs import STATUS_CODES, Job
from tomato_mqtt.transport.rpc import CommandError, Result
from tomato_mqtt.wire.commands import JOB_PAGE_MAX, JobStatusArgs

if TYPE_CHECKING:
    from tomato_mqtt.services.scheduler.store import StateStore

__all__ = ["ENDS", "budget_of", "cut_ids", "job_status", "summary_text", "within_budget"]

#: how many ids (and queued jobs) a summary shows at each end of a long list
ENDS = 5
#: bytes of jobs one reply may hold (a reply carries at most rpc.MAX_REPLY, ~8 MB): sized
#: from the store before any job is built. A reader's `job_status` of one big job's id
#: 1,000 times built a reply of 991 MB (2 GB of the scheduler's memory, 11 s) before it
#: was refused as too large (a hostile tour)
REPLY_BUDGET = 6 * 1024 * 1024
#: bytes a job's JSON holds beside its payload and progress (ids, times, names, paths)
JOB_FIELDS = 2048
# tomato's order of the status lines
_ORDER = ("q", "qw", "r", "rd", "c", "cd", "ce")


def job_status(store: StateStore, a: JobStatusArgs, budget: int = REPLY_BUDGET) -> Result:
    """``budget``: the bytes of jobs one reply may hold (see :func:`budget_of`)."""
    if a.jobids:
        if a.summary or a.limit is not None or a.offset is not None:
            raise CommandError(
                "summary, limit and offset are for the whole listing: not with job ids",
                code="bad_request",
            )
        return _by_id(store, a.jobids, budget)
    if a.summary:
        if a.limit is not None or a.offset is not None:
            raise CommandError(
                "limit and offset page the listing, not the summary", code="bad_request"
            )
        return _summary(store)
    return _page(store, a.limit or JOB_PAGE_MAX, a.offset, budget)


def budget_of(max_reply: int) -> int:
    """The bytes of jobs one reply may hold when a reply carries ``max_reply`` (the
    broker's max_packet_bytes, less a margin): 3/4 of it, at most REPLY_BUDGET."""
    return min(REPLY_BUDGET, max_reply * 3 // 4)


def _by_id(store: StateStore, ids: list[int], budget: int = REPLY_BUDGET) -> Result:
    ids = list(dict.fromkeys(ids))  # each job once (one id 1,000 times: 1,000 copies)
    sizes = store.job_sizes(ids)
    total = sum(n + JOB_FIELDS for n in sizes.values())
    if total > budget:
        raise CommandError(
            f"the {len(ids)} jobs asked for would make an answer of about {total:,} bytes, "
            f"more than one reply carries ({budget:,}): ask for fewer at a time",
            code="bad_request",
        )
    found = {j.id: j for j in store.jobs(ids=ids)}
    missing = [i for i in ids if i not in found]
    if missing:
        raise CommandError(f"no job with id {missing[0]}", code="not_found")
    jobs = [found[i] for i in ids]
    return Result(_found(jobs), [j.model_dump(mode="json") for j in jobs])


def within_budget(store: StateStore, ids: list[int], budget: int = REPLY_BUDGET) -> list[int]:
    """The newest of ``ids`` (in id order) whose jobs one reply carries."""
    sizes = store.job_sizes(ids)
    kept: list[int] = []
    total = 0
    for i in sorted(ids, reverse=True):
        total += sizes.get(i, 0) + JOB_FIELDS
        if kept and total > budget:
            break
        kept.append(i)
    return sorted(kept)


def _page(store: StateStore, limit: int, offset: int | None, budget: int = REPLY_BUDGET) -> Result:
    total = sum(store.status_counts().values())
    start = max(0, total - limit) if offset is None else offset
    # a page holds what one reply carries: fewer jobs when their payloads are big (nine
    # jobs of 1 MB payloads made every `ketchup status --all` fail "too large": a hostile
    # tour); the newest page keeps its newest jobs, a page from an offset its first
    sizes = [n + JOB_FIELDS for n in store.page_sizes(start, limit)]
    while len(sizes) > 1 and sum(sizes) > budget:
        if offset is None:
            sizes.pop(0)
            start += 1
        else:
            sizes.pop()
    jobs = store.jobs_page(start, len(sizes)) if sizes else []
    if not jobs and total:
        return Result(f"no jobs from offset {start}: the listing has {total}", [])
    msg = _found(jobs)
    if start > 0 or start + len(jobs) < total:
        # first, and the counts said to be the page's: below it they read as the whole
        # listing's ("found 1 job with status 'c'" of 5: a newcomer's tour)
        msg = (
            f"(listing page: jobs {start + 1}-{start + len(jobs)} of {total}, oldest first; "
            "others with --offset N --limit M; the counts are this page's)\n" + msg
        )
    return Result(msg, [j.model_dump(mode="json") for j in jobs])


def _found(jobs: list[Job]) -> str:
    """tomato's text: ``found 1 job with status ['r']``, or a line per status."""
    if not jobs:
        return "job queue is empty"
    if len(jobs) == 1:
        return f"found 1 job with status {[jobs[0].status]}"
    by: dict[str, list[int]] = {}
    for j in jobs:
        by.setdefault(j.status, []).append(j.id)
    return "\n".join(_line(st, len(by[st]), by[st], []) for st in _ORDER if st in by)


def cut_ids(ids: list[int]) -> str:
    """A long id list as its ends: ``[1, 2, 3, 4, 5, …, 96, 97, 98, 99, 100]``."""
    if len(ids) <= 2 * ENDS:
        return str(ids)
    return f"[{', '.join(map(str, ids[:ENDS]))}, …, {', '.join(map(str, ids[-ENDS:]))}]"


def _line(status: str, count: int, head: list[int], tail: list[int]) -> str:
    what = "job" if count == 1 else "jobs"
    ids = ", ".join(map(str, head))
    if tail:  # a gap between head and tail is shown as "…"
        sep = ", " if len(head) + len(tail) == count else ", …, "
        ids += sep + ", ".join(map(str, tail))
    return f"found {count} {what} with status {status!r:4s}: [{ids}]"


def summary_text(statuses: dict[str, dict[str, JsonValue]]) -> str:
    """The summary's msg: tomato's lines, each id list cut to its ends."""
    lines = []
    for st in _ORDER:
        s = statuses.get(st)
        if s is None:
            continue
        head = [int(str(i)) for i in s["head"]] if isinstance(s["head"], list) else []
        tail = [int(str(i)) for i in s["tail"]] if isinstance(s["tail"], list) else []
        lines.append(_line(st, int(str(s["count"])), head, tail))
    return "\n".join(lines) or "job queue is empty"


def _light(job: Job) -> JsonValue:
    """A job of the summary with its payload cut to its sample and the number of its
    tasks: a payload can be megabytes (found by a user: 10 queued jobs of 5,000 tasks
    made the summary 13 MB, and ``ketchup status`` took a second); the whole one is in
    ``ketchup status <id>``."""
    payload = job.payload or {}
    method = payload.get("method")
    tasks = len(method) if isinstance(method, list) else 0
    light = {"sample": payload.get("sample"), "tasks": tasks}
    dumped: JsonValue = job.model_copy(update={"payload": light}).model_dump(mode="json")
    return dumped


def _summary(store: StateStore) -> Result:
    counts = store.status_counts()
    statuses: dict[str, dict[str, JsonValue]] = {}
    for st in STATUS_CODES:
        n = counts.get(st, 0)
        if not n:
            continue
        head = store.status_ids(st, ENDS)
        tail = [i for i in store.status_ids(st, ENDS, last=True) if i not in head]
        statuses[st] = {"count": n, "head": list[JsonValue](head), "tail": list[JsonValue](tail)}
    queued, qhead, qtail = store.queue_ends(ENDS)
    running = store.jobs(statuses=["r", "rd"])
    data: dict[str, JsonValue] = {
        "total": sum(counts.values()),
        "statuses": dict[str, JsonValue](statuses),
        "pipelines": {p: dict[str, JsonValue](c) for p, c in store.pipeline_counts().items()},
        "running": [_light(j) for j in running],
        "queued": queued,
        "queued_head": [_light(j) for j in qhead],
        "queued_tail": [_light(j) for j in qtail],
        "waiting": [[r, n] for r, n in store.reason_counts(["q", "qw"])],
    }
    return Result(summary_text(statuses), data)
