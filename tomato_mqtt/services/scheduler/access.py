"""Who may do what at the scheduler: the service-side half of the role model (issue 10).

The broker's ACL already keeps a reader's ``job_cancel`` or an operator's ``stop`` from
ever arriving; these checks are the second line (and the only one on a broker configured
by hand): the requester is the ``{user}`` segment of the request topic
(:func:`~tomato_mqtt.transport.rpc.requester`), which the ACL pins to the login, and its
role comes from the users file. Job ownership is per login: an operator cancels and
snapshots their own jobs, an admin any. Payload bounds keep a job of 10¹⁸ points out of
the queue.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from tomato_mqtt.config.roles import ADMIN_OPS, OPERATOR_OPS, READ_OPS, is_admin
from tomato_mqtt.config.settings import Settings
from tomato_mqtt.config.users import RoleBook
from tomato_mqtt.model.jobs import Job, PipelineState
from tomato_mqtt.transport.rpc import CommandError, requester

__all__ = ["Access"]


class Access:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.roles = RoleBook(settings.users_file)

    def who(self) -> tuple[str | None, str | None]:
        """(login, role) of the request being handled; (None, 'admin') for internal calls."""
        user = requester()
        if user is None:
            return None, "admin"
        return user, self.roles.role_of(user)

    def require(self, op: str) -> None:
        """Refuse ``op`` unless the requester's role lists it."""
        user, role = self.who()
        if op not in self.whoami()["ops"]:
            raise CommandError(
                f"not allowed: user {user!r} (role {role or 'none'}) may not {op}"
                + ("; it needs the admin role" if op in ADMIN_OPS[len(OPERATOR_OPS) :] else ""),
                code="not_allowed",
            )

    def owner(self) -> str | None:
        return self.who()[0]

    def sample_owner(self) -> str | None:
        """Whose a sample loaded now is: an operator's own on a secured stack; None (the
        lab's, for every job) when an admin loads it, or on an open stack."""
        user, role = self.who()
        return None if self.roles.open or is_admin(role) else user

    def require_pipeline(self, p: PipelineState, what: str) -> None:
        """An operator's sample is theirs: another operator may not eject it or mark its
        pipeline ready (one marked another's ready and ran a job on their sample: a
        hostile tour); an admin may."""
        user, role = self.who()
        if p.owner is None or p.owner == user or is_admin(role):
            return
        raise CommandError(
            f"not allowed: {p.name} holds the sample {p.sampleid!r} of {p.owner}; user "
            f"{user!r} (role {role or 'none'}) may {what} only pipelines holding their own "
            "sample or the lab's",
            code="not_allowed",
        )

    def require_job(self, job: Job, what: str) -> None:
        """An operator acts on their own jobs only; an admin on any."""
        user, role = self.who()
        if is_admin(role):
            return
        if job.owner is None or job.owner != user:
            raise CommandError(
                f"not allowed: job {job.id} belongs to {job.owner or 'nobody'}; user {user!r} "
                f"(role {role or 'none'}) may {what} only their own jobs",
                code="not_allowed",
            )

    def whoami(self) -> dict[str, Any]:
        user, role = self.who()
        ops: tuple[str, ...] = ()
        if is_admin(role):
            ops = ADMIN_OPS
        elif role == "operator":
            ops = OPERATOR_OPS
        elif role == "reader":
            ops = READ_OPS
        return {"user": user, "role": role, "ops": list(ops), "open": self.roles.open}

    def check_task_count(self, n: int) -> None:
        """Refuse a payload of more than ``[jobs] max_tasks`` tasks (also before its tasks
        are validated: 200,000 of them took seconds)."""
        most = self.settings.jobs.max_tasks
        if n > most:
            raise CommandError(
                f"payload refused: {n:,} tasks, more than the {most:,} a job may hold "
                "([jobs] max_tasks): split it into several jobs"
            )

    def check_bounds(
        self,
        method: list[Mapping[str, Any]],
        bulk: frozenset[str] = frozenset(),
        written: Mapping[str, Any] | None = None,
    ) -> None:
        """``method``: the payload's tasks as version 2.2 names their fields; ``written``:
        the payload as the user wrote it (a refusal names its fields as written there)."""
        self._check_waits(method)
        self._check_each(method, bulk, written or {})

    @staticmethod
    def _check_waits(method: list[Mapping[str, Any]]) -> None:
        """Refuse tasks whose ``start_with_task_name`` can never be met: a wait that
        leads back to itself through a role's order (a task waits for one queued behind
        it on its own role, or for one that waits for such a task). Tasks that start with
        each other in a ring of waits alone start together (runner._may_start). Both
        queued such payloads and waited for ever, the job `r` with no reason (tomato 2.2
        too; found side by side and by a review)."""
        waits = [
            (i, t.get("start_with_task_name"))
            for i, t in enumerate(method)
            if t.get("start_with_task_name") is not None
        ]
        if not waits:
            return
        named = {t.get("task_name"): i for i, t in enumerate(method) if t.get("task_name")}
        last: dict[Any, int] = {}
        after: dict[int, int] = {}  # task -> the task before it on its role
        for i, t in enumerate(method):
            role = t.get("component_role")
            if role in last:
                after[i] = last[role]
            last[role] = i
        edges: dict[int, list[tuple[int, bool]]] = {}  # i -> [(j, through a role's order)]
        for i, j in after.items():
            edges.setdefault(i, []).append((j, True))
        for i, name in waits:
            if name in named:
                edges.setdefault(i, []).append((named[name], False))
        for comp in _cycles(len(method), edges):
            if any(j in comp and by_role for i in comp for j, by_role in edges.get(i, ())):
                first = min(i for i, _ in waits if i in comp)
                t = method[first]
                name = t.get("task_name") or t.get("technique_name") or f"#{first}"
                raise CommandError(
                    f"payload refused: task {name} (method[{first}]) starts with "
                    f"{t.get('start_with_task_name')!r}, which can only start after a task "
                    f"queued behind it on a role has ended (tasks {sorted(comp)} wait for "
                    "each other through their roles' order): it would wait for ever"
                )

    def _check_each(
        self,
        method: list[Mapping[str, Any]],
        bulk: frozenset[str],
        written: Mapping[str, Any],
    ) -> None:
        """Refuse a payload whose tasks would take too many points or sample too fast.

        ``bulk``: techniques a bulk component offers (its driver samples on its own
        clock and hands over blocks): the floor on ``sampling_interval`` is for
        one-point drivers, which are called once per point."""
        from tomato_mqtt.config.payloads import field_as_written

        lim = self.settings.jobs
        self.check_task_count(len(method))
        for i, task in enumerate(method):
            dt = task.get("sampling_interval")
            dur = task.get("max_duration")
            name = task.get("task_name") or task.get("technique_name") or f"#{i}"
            # as the payload spells them (0.1 and 0.2: time, delay)
            dt_name = field_as_written(written, i, "sampling_interval")
            dur_name = field_as_written(written, i, "max_duration")
            if not isinstance(dt, (int, float)) or not math.isfinite(dt) or dt <= 0:
                raise CommandError(
                    f"payload refused: method[{i}].{dt_name}: must be "
                    f"a finite number of seconds > 0 (got {dt!r}; task {name})"
                )
            if dt < lim.min_sampling_interval and task.get("technique_name") not in bulk:
                raise CommandError(
                    f"payload refused: method[{i}].{dt_name}: {dt:g} s is below the "
                    f"floor of {lim.min_sampling_interval:g} s ([jobs] min_sampling_interval; "
                    f"task {name})"
                )
            if not isinstance(dur, (int, float)) or not math.isfinite(dur) or dur < 0:
                raise CommandError(
                    f"payload refused: method[{i}].{dur_name}: must be "
                    f"a finite number of seconds >= 0 (got {dur!r}; task {name})"
                )
            points = dur / dt
            if points > lim.max_points_per_task:
                raise CommandError(
                    f"payload refused: method[{i}].{dur_name}: task {name} would take "
                    f"{points:.3g} points ({dur_name} {dur:g} s / {dt_name} {dt:g} "
                    f"s), more than the limit of {lim.max_points_per_task} ([jobs] "
                    "max_points_per_task)"
                )


def _cycles(n: int, edges: Mapping[int, list[tuple[int, bool]]]) -> list[set[int]]:
    """The strongly connected groups of more than one task (Tarjan, without recursion:
    a payload may hold 10,000 tasks)."""
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    on: set[int] = set()
    stack: list[int] = []
    out: list[set[int]] = []
    counter = 0
    for root in range(n):
        if root in index:
            continue
        work: list[tuple[int, int]] = [(root, 0)]
        while work:
            v, k = work.pop()
            if k == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on.add(v)
            succ = edges.get(v, [])
            if k < len(succ):
                work.append((v, k + 1))
                w = succ[k][0]
                if w not in index:
                    work.append((w, 0))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            if low[v] == index[v]:
                comp: set[int] = set()
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.add(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(comp)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return out
