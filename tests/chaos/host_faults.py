"""Faults of the host around a service: a network cut, a full disk, a skewed clock.

Each needs something of the machine (root and ``ip netns``, ``mount``, libfaketime);
without it the scenario raises :class:`~tests.chaos.harness.Unavailable` and its test
skips, saying why. Registered in tests/chaos/scenarios.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from tests.chaos.external import mosquitto_or_unavailable
from tests.chaos.harness import (
    GRACE,
    HEARTBEAT,
    JOB_S,
    LOST_AFTER,
    SHORT_GRACE,
    Params,
    Run,
    Unavailable,
    chaos_stack,
    count_file,
    fault_job,
    job_or_none,
    measure,
    scheduler_settings,
)
from tests.secure_stack import on_mosquitto
from tests.stack import BIN, CONFIG, Stack, free_port
from tests.test_netns import Link, Procs, netns_unavailable
from tomato_mqtt.config.users import UsersFile

__all__ = [
    "netns_cut",
    "netns_cut_mosquitto",
    "skew",
    "skew_shown",
    "store_full",
    "store_full_shown",
]


# -- a remote node cut off longer than lost_after + grace ----------------------------------
USER = "lab"
#: s after the link is back for the late points to reach the file. The node's TCP
#: connection outlives a 16 s cut (keepalive 30 s), so its queued data go out on TCP's
#: next retransmission, whose back-off doubles through the cut (0.2, 0.4 ... 6.4, 12.8 s):
#: up to ~13 s after the link is back. 8 s failed once in a loaded full run (96 of 120
#: points at the bound, 2026-12-01); every other run merged within ~1 s
LATE_BOUND = 20.0
RESET_WAIT = 10.0  # the scheduler's timeout for a component's reset after a job


def netns_cut(root: Path, p: Params) -> Run:
    return _netns_cut(root, p, mosquitto=None)


def netns_cut_mosquitto(root: Path, p: Params) -> Run:
    """netns-cut with Mosquitto as the broker, configured by ``tomato broker-config
    --mosquitto`` (listener on the link, logins, ACL), as docs/security.md sets it up."""
    return _netns_cut(root, p, mosquitto=mosquitto_or_unavailable())


def _netns_cut(root: Path, p: Params, mosquitto: str | None) -> Run:
    why = netns_unavailable()
    if why is not None:
        raise Unavailable(why)
    name = "netns-cut" + ("-mosquitto" if mosquitto else "")
    # the job ends ce only after lost_after + grace + the runner's reset of the component
    # (which waits RESET_WAIT for the unreachable node): cut longer than all of it
    cut = LOST_AFTER + SHORT_GRACE + RESET_WAIT + 1.0
    # most of the task in the cut, and room for a slow poll of the job before it
    p = dataclasses.replace(p, duration=max(p.duration, 2 * JOB_S))
    link = Link()
    st = Stack(root=root, port=free_port(), instance="ns" + os.urandom(4).hex())
    for d in (st.appdir, st.datadir, st.logdir, st.workdir):
        d.mkdir(parents=True, exist_ok=True)
    shutil.copy(CONFIG / "netns_devices.yml", st.appdir / "devices.yml")
    password = "chaos-" + os.urandom(6).hex()
    # the lab admin for the services and the CLI, the remote node its own login (roles)
    users = UsersFile(st.appdir / "passwd")
    users.add(USER, password, "admin")
    users.add("pc2", password, "node:pc2")
    users.save()
    procs = Procs(root)
    stack = contextlib.ExitStack()
    try:
        link.up()
        (st.appdir / "settings.toml").write_text(
            f'[mqtt]\nhost = "{link.host}"\nport = {st.port}\ninstance = "{st.instance}"\n'
            f'username = "{USER}"\npassword = "{password}"\n'
            f'[broker]\nhost = "{link.host}"\nws_port = 0\nallow_anonymous = false\n'
            f'password_file = "{st.appdir / "passwd"}"\n'
            f"[scheduler]\n{scheduler_settings(SHORT_GRACE)}"
        )
        tomato, dirs = str(BIN / "tomato"), [*st.dirs(), "-p", str(st.port)]
        if mosquitto is None:
            procs.start("broker", tomato, "broker", *dirs)
        else:
            stack.enter_context(on_mosquitto(st, mosquitto, host=link.host))
        for svc in ("scheduler", "recorder"):
            procs.start(svc, tomato, svc, *dirs)
        # the node's heartbeat comes from its own settings: the same short one
        (root / "node-app").mkdir()
        (root / "node-app" / "settings.toml").write_text(
            f"[scheduler]\n{scheduler_settings(SHORT_GRACE)}"
        )
        procs.start(
            "node",
            *("ip", "netns", "exec", link.ns, tomato, "node", "--name", "pc2"),
            *("--broker", f"mqtt://pc2:{password}@{link.host}:{st.port}"),
            *("--instance", st.instance, "-A", str(root / "node-app")),
            *("-D", str(root / "node-data"), "-L", str(st.logdir)),
        )
        _wait_registered(st, 40)
        timers: list[threading.Timer] = []

        def fault(_st: Stack, _job: int) -> None:
            link.set("down")
            timers.append(threading.Timer(cut, link.set, args=("up",)))
            timers[0].start()

        def deadline(_t_run: float, t_fault: float) -> float:
            return t_fault + cut + p.end_bound  # it should end ce during the cut

        try:
            run = fault_job(st, name, p, fault, "pip-remote", deadline)
        finally:
            for t in timers:
                t.join()  # the link is back
        # late data: the node's spool replays once the link is back; the file must get it all
        jobid, t_up, last = int(run.seen["job"]), time.monotonic(), run
        while time.monotonic() < t_up + LATE_BOUND:
            job = job_or_none(st, jobid)
            if job is not None:
                last = measure(name, p, job, 0.0, 0.0, nominal_if_unknown=True)
                if last.in_file is not None and last.in_file == last.expected:
                    break
            time.sleep(0.5)
        last.seconds = run.seconds
        last.seen.update(job=jobid, status_at_end=run.status, in_file_at_end=run.in_file)
        return last
    finally:
        procs.stop_all()
        stack.close()
        link.down()


def _wait_registered(st: Stack, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        res = st.run("tomato", "status", "components", "--json", timeout=10)
        if res.returncode == 0 and '"registered": true' in res.stdout:
            return
        time.sleep(0.2)
    raise AssertionError(f"the remote node did not register within {timeout:g} s\n{st.logs()}")


# -- the recorder's store on a tiny tmpfs that fills and frees ------------------------------
@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str = "2m") -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        raise Unavailable("mounting a tmpfs needs root and mount(8)")
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "chaos-store", str(path)],
        capture_output=True,
        text=True,
        timeout=10,
    )
    if res.returncode != 0:
        raise Unavailable(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, timeout=10).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=10)


def _fill(path: Path) -> Path:
    """Write a file until the filesystem is full; return it (delete it to free the space)."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (65536, 512, 1):  # unbuffered: ENOSPC shows here, not at close
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


#: s a job must have run on with the store full for its reason to be judged: the
#: recorder finds the store full at its next round of acks (every ACK_EVERY, 5 s), the
#: scheduler hears it at the recorder's next status. A 3 s job whose store filled 1 s in
#: ended `c` (every point in the WAL) 30 ms after the recorder first said so: nothing to
#: see yet (CI8). The job here runs long enough (STORE_FULL_JOB_S) to be judged.
SHOWN_WITHIN = 7.0
STORE_FULL_JOB_S = 9.0


def store_full_shown(run: Run) -> str | None:
    """Issue 9: ``ketchup status`` shows why the job waits while the store is full."""
    if run.seen.get("reasons_while_full"):
        return None
    if float(run.seen.get("running_while_full", 0.0)) < SHOWN_WITHIN:
        return None  # it did not wait: ended (every point in the file) before it could
    return "no reason in `ketchup status` while the store was full"


def store_full(root: Path, p: Params) -> Run:
    """The recorder's store (datadir/recorder.sqlite, a link into a 2 MB tmpfs) full from
    before the job until ``p.down`` s after its task ended, then freed."""
    p = dataclasses.replace(p, duration=max(p.duration, STORE_FULL_JOB_S))
    with contextlib.ExitStack() as es:
        store = es.enter_context(tiny_tmpfs(root / "store"))

        def link_store(st: Stack) -> None:
            # SQLite follows the link: the database and its WAL live on the tmpfs
            (st.datadir / "recorder.sqlite").symlink_to(store / "recorder.sqlite")

        st = es.enter_context(chaos_stack(root / "stack", before_start=link_store))
        reasons: list[str] = []
        running = [0.0]  # s the job was seen running with the store full

        def fault(st: Stack, jobid: int) -> None:
            filler = _fill(store)
            full_at = time.monotonic()
            free_at = full_at + (p.duration - p.fault_at) + p.down
            while time.monotonic() < free_at:
                job = job_or_none(st, jobid) or {}
                if job.get("reason"):
                    reasons.append(str(job["reason"]))
                if job.get("status") in ("r", "rd"):
                    running[0] = time.monotonic() - full_at
                time.sleep(0.3)
            filler.unlink()

        def deadline(t_run: float, _t_fault: float) -> float:
            return t_run + p.duration + p.down + p.end_bound  # the bound counts from the free

        run = fault_job(st, "store-full", p, fault, deadline=deadline)
        run.seen["reasons_while_full"] = reasons
        run.seen["running_while_full"] = round(running[0], 1)
        run.seen["recorder_log"] = _grep(st.logdir / "recorder.log", "No space|full")
        return run


#: s the full disk holds the node's batches in memory (and its overflow file) before the
#: node is killed, and s after the kill until the disk is freed
FULL_BEFORE_KILL, KILL_BEFORE_FREE = 3.0, 2.0
#: points a killed node may lose by the book: its runner's buffer (one batch_interval,
#: 0.5 s) and a point in flight, at 20 Hz; the fault lost 3 s of them (60 points)
KILL_MAY_LOSE_S = 1.0
#: s the late points of such a run may take to reach the file after the job's end
LATE_MERGE_WAIT = 15.0


def full_kill_node(root: Path, p: Params) -> Run:
    """The recorder's store and the node's spool (links into a 2 MB tmpfs) full 1 s
    into the task; the node killed (SIGKILL) FULL_BEFORE_KILL s later, the disk freed
    KILL_BEFORE_FREE s after that. A fault run: the batches the node held in memory
    while its spool refused them were lost with it, and those its restart sent again
    into the still-full store were never asked for again (114 of 180 points)."""
    p = dataclasses.replace(p, duration=max(p.duration, 10.0))
    with contextlib.ExitStack() as es:
        store = es.enter_context(tiny_tmpfs(root / "store"))

        def link_stores(st: Stack) -> None:
            (st.datadir / "recorder.sqlite").symlink_to(store / "recorder.sqlite")
            (st.datadir / "spool").mkdir(parents=True, exist_ok=True)
            (st.datadir / "spool" / "local.sqlite").symlink_to(store / "local.sqlite")
            tmp = root / "tmp"  # the services' temporary folder (the overflow): this run's
            tmp.mkdir(parents=True, exist_ok=True)
            st.env["TMPDIR"] = str(tmp)

        st = es.enter_context(chaos_stack(root / "stack", before_start=link_stores))
        seen: dict[str, float] = {}

        def fault(st: Stack, _jobid: int) -> None:
            seen["task_began"] = time.time() - p.fault_at
            filler = _fill(store)
            time.sleep(FULL_BEFORE_KILL)
            pid = st.child_pid("node")
            seen["killed_at"] = time.time()
            os.kill(pid, signal.SIGKILL)
            time.sleep(KILL_BEFORE_FREE)
            filler.unlink()

        run = fault_job(st, "full-kill-node", p, fault)
        run.seen.update(seen)
        if "killed_at" not in seen:
            return run
        taken = round((seen["killed_at"] - seen["task_began"]) * p.hz)
        run.seen["taken_before_kill"] = taken
        # the job ends while the store is still full or just freed: what the restarted
        # node sends again comes as late data, merged into the file (within seconds)
        job = job_or_none(st, int(seen.get("job", run.seen.get("job", 0)))) or {}
        floor = taken - KILL_MAY_LOSE_S * p.hz
        run.seen["in_file_at_end"] = run.in_file
        until = time.monotonic() + LATE_MERGE_WAIT
        while (run.in_file or 0) < floor and time.monotonic() < until:
            time.sleep(0.5)
            counted = count_file(job.get("respath"), 1.0 / p.hz)
            if counted is not None:
                run.in_file = sum(counted.counts.values())
                run.dups, run.max_gap = counted.dups, counted.max_gap
        return run


def full_kill_kept(run: Run) -> str | None:
    """Every point the node took before the kill is in the file, but what its runner
    held unspooled (KILL_MAY_LOSE_S)."""
    taken = run.seen.get("taken_before_kill")
    if taken is None or run.in_file is None:
        return "the node was not killed, or no file was written"
    floor = taken - KILL_MAY_LOSE_S * run.hz
    if run.in_file >= floor:
        return None
    return (
        f"{run.in_file} points in the file, of ~{taken} taken before the kill (at most "
        f"{KILL_MAY_LOSE_S:g} s of them may go): those held while the disk was full were lost"
    )


def _grep(path: Path, what: str) -> int:
    try:
        return len(re.findall(what, path.read_text(errors="replace")))
    except OSError:
        return 0


# -- a node under a skewed clock (libfaketime) ---------------------------------------------
REMOTE_DEVICES = {
    "devices": [
        {
            "name": "dev-pc2",
            "driver": "example_counter",
            "address": "pc2-addr",
            "channels": ["1"],
            "node": "pc2",
        }
    ],
    "pipelines": [
        {"name": "pip-pc2", "devices": [{"role": "counter", "device": "dev-pc2", "channel": "1"}]}
    ],
}


LOST_RE = r"node pc2: .*counted as lost"


def libfaketime() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    found += glob.glob("/usr/lib/faketime/libfaketime.so.1")
    if not found:
        raise Unavailable("libfaketime is not installed (run scripts/ensure-faketime)")
    return found[0]


def skew_shown(run: Run) -> str | None:
    """Issue 9: staleness judged on receipt (never counted lost), the offset flagged."""
    missing = []
    if run.seen.get("node_states") != ["online"] or run.seen.get("lost_logged"):
        missing.append(f"the node counted lost {run.seen.get('lost_logged')} time(s)")
    status = str(run.seen.get("node_status", "")).lower()
    if not any(w in status for w in ("skew", "clock", "offset")):
        missing.append("no clock offset in `tomato status nodes`")
    return "; ".join(missing) or None


def skew(offset: str) -> Callable[[Path, Params], Run]:
    def scenario(root: Path, p: Params) -> Run:
        lib = libfaketime()
        devices = root / "devices-remote.yml"
        devices.write_text(yaml.safe_dump(REMOTE_DEVICES))
        procs = Procs(root)

        def start_node(st: Stack) -> None:
            # the node runs before the stack: it connects once the broker is up, so that
            # `tomato start` sees its component ready
            env = {"LD_PRELOAD": lib, "FAKETIME": offset, "DONT_FAKE_MONOTONIC": "1"}
            cmd = [str(BIN / "tomato"), "node", "--name", "pc2", "-A", str(st.appdir)]
            cmd += ["-D", str(root / "node-data"), "-L", str(st.logdir), "-p", str(st.port)]
            with open(root / "node.out", "ab") as log:
                procs.procs["node"] = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **env},
                )

        states: list[str] = []
        text: list[str] = []

        def fault(st: Stack, jobid: int) -> None:
            # the fault is there from the start; watch the node's presence until the job
            # ends, at least once (a short job may end before a busy machine polls), and
            # ask again after a status query that fails
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                out = st.json("tomato", "status", "nodes")
                for n in (out.get("data") or {}).values():  # node -> status
                    if n.get("node") == "pc2":
                        states.append(str(n.get("state")))
                        text.append(str(n))
                job = job_or_none(st, jobid)
                if states and job is not None and job.get("status") not in ("q", "qw", "r", "rd"):
                    break
                time.sleep(0.2)

        try:
            # lost_after well above the heartbeat: the check is that a 60 s skew never
            # makes the node lost, not that a loaded CI machine delivers every beat in 2 s
            relaxed = f"heartbeat = {HEARTBEAT}\nlost_after = 6\nnode_grace_period = {GRACE}\n"
            with chaos_stack(
                root / "stack", devices, before_start=start_node, scheduler=relaxed
            ) as st:
                run = fault_job(st, f"skew{offset}", p, fault, "pip-pc2", guard=False)
        finally:
            procs.stop_all()
        run.seen["node_states"] = sorted(set(states))
        run.seen["node_status"] = text[-1] if text else ""
        # the scheduler's own view of the node's presence is in its log only
        run.seen["lost_logged"] = _grep(root / "stack" / "log" / "scheduler.log", LOST_RE)
        return run

    return scenario
