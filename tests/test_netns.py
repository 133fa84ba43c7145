"""A driver node in its own network namespace, reaching the broker over a veth pair.

The instrument PC is simulated by a network namespace: the broker (bound to the root end
of the veth pair only, with a password file, as the design requires off loopback), the
scheduler and the recorder run in the root namespace, the node ``pc2`` in the namespace.
The link is cut for ~3 s while a task runs; the job must still end ``c`` with every
point in the file, none duplicated.

Needs root and ``ip netns``; skipped otherwise (with the reason).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import xarray as xr

from tests.stack import BIN, CONFIG, Stack, free_port
from tomato_mqtt.config.users import UsersFile

pytestmark = pytest.mark.timeout(120)

USER, PASSWORD = "lab", "netns-" + os.urandom(6).hex()


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if check and res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {res.stderr.strip()}")
    return res


def netns_unavailable() -> str | None:
    """Why this machine cannot run the test, or None."""
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"tprobe{os.getpid()}"
    res = ip("netns", "add", probe, check=False)
    if res.returncode != 0:
        return f"'ip netns add' is not allowed here: {res.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


class Link:
    """A namespace and a veth pair: ``host`` in the root namespace, ``peer`` inside."""

    def __init__(self) -> None:
        tag = os.urandom(3).hex()
        self.ns = f"tns{tag}"
        self.veth = f"vh{tag}"  # root end
        self.peer = f"vn{tag}"  # namespace end
        x = random.randint(1, 254)
        self.host = f"10.213.{x}.1"
        self.addr = f"10.213.{x}.2"
        self.made: list[str] = []

    def up(self) -> None:
        ip("netns", "add", self.ns)
        self.made.append("ns")
        ip("link", "add", self.veth, "type", "veth", "peer", "name", self.peer)
        self.made.append("veth")
        ip("link", "set", self.peer, "netns", self.ns)
        ip("addr", "add", f"{self.host}/24", "dev", self.veth)
        ip("link", "set", self.veth, "up")
        ip("netns", "exec", self.ns, "ip", "addr", "add", f"{self.addr}/24", "dev", self.peer)
        ip("netns", "exec", self.ns, "ip", "link", "set", self.peer, "up")
        ip("netns", "exec", self.ns, "ip", "link", "set", "lo", "up")

    def set(self, state: str) -> None:
        ip("link", "set", self.veth, state)

    def down(self) -> None:
        # deleting one end of a veth pair deletes both; deleting the namespace would too
        if "veth" in self.made:
            ip("link", "del", self.veth, check=False)
        if "ns" in self.made:
            ip("netns", "del", self.ns, check=False)
        self.made.clear()


@pytest.fixture
def link() -> Iterator[Link]:
    why = netns_unavailable()
    if why is not None:
        pytest.skip(why)
    lk = Link()
    try:
        lk.up()
        yield lk
    finally:
        lk.down()
        assert ip("netns", "list").stdout.find(lk.ns) < 0, "namespace left behind"


class Procs:
    """Services started by this test, each killed by its own PID at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, key: str, *cmd: str) -> subprocess.Popen[bytes]:
        with open(self.root / f"{key}.out", "ab") as log:
            p = subprocess.Popen(
                list(cmd), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self.procs[key] = p
        return p

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def output(self) -> str:
        return "\n".join(
            f"=== {f.name}\n{f.read_text(errors='replace')[-3000:]}"
            for f in sorted([*self.root.glob("*.out"), *self.root.glob("log/*.log")])
        )


def wait_for(pred: Callable[[], bool], what: str, timeout: float, why: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"not {what} after {timeout} s\n{why()}")


def listening(pid: int) -> list[str]:
    return [
        c.laddr.ip
        for c in psutil.Process(pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]


def test_node_in_a_namespace_loses_nothing_when_the_link_is_cut(link: Link, tmp_path: Path) -> None:
    st = Stack(root=tmp_path, port=free_port(), instance="ns" + os.urandom(4).hex())
    for d in (st.appdir, st.datadir, st.logdir, st.workdir):
        d.mkdir(parents=True, exist_ok=True)
    shutil.copy(CONFIG / "netns_devices.yml", st.appdir / "devices.yml")
    passwd = st.appdir / "passwd"
    # the lab admin for the CLI, and the remote node's own login (issue 10: roles)
    users = UsersFile(passwd)
    users.add(USER, PASSWORD, "admin")
    users.add("pc2", PASSWORD, "node:pc2")
    users.save()
    (st.appdir / "settings.toml").write_text(
        f'[mqtt]\nhost = "{link.host}"\nport = {st.port}\ninstance = "{st.instance}"\n'
        f'username = "{USER}"\npassword = "{PASSWORD}"\n'
        f'[broker]\nhost = "{link.host}"\nws_port = 0\nallow_anonymous = false\n'
        f'password_file = "{passwd}"\n'
        "[scheduler]\nnode_grace_period = 30.0\nlost_after = 10.0\n"
    )
    procs = Procs(tmp_path)
    tomato = str(BIN / "tomato")
    try:
        dirs = [*st.dirs(), "-p", str(st.port)]
        broker = procs.start("broker", tomato, "broker", *dirs)
        procs.start("scheduler", tomato, "scheduler", *dirs)
        procs.start("recorder", tomato, "recorder", *dirs)
        url = f"mqtt://pc2:{PASSWORD}@{link.host}:{st.port}"
        node_dirs = ["-D", str(tmp_path / "node-data"), "-L", str(st.logdir)]
        node = procs.start(
            "node",
            *("ip", "netns", "exec", link.ns, tomato, "node", "--name", "pc2"),
            *("--broker", url, "--instance", st.instance, "-A", str(tmp_path / "node-app")),
            *node_dirs,
        )

        def registered() -> bool:
            res = st.run("tomato", "status", "components", "--json", timeout=10)
            return res.returncode == 0 and '"registered": true' in res.stdout

        wait_for(registered, "registered from the namespace", 40, procs.output)
        # the broker listens on the address this test made and on loopback, where a
        # stack's own services connect by default, nowhere else (no 0.0.0.0, no ws)
        addrs = listening(broker.pid)
        assert addrs and set(addrs) == {link.host, "127.0.0.1"}, addrs
        # anonymous clients are refused on a network address
        anon = subprocess.run(
            [tomato, "status", "-b", f"mqtt://{link.host}:{st.port}"],
            capture_output=True,
            text=True,
            timeout=20,
            cwd=st.workdir,
        )
        assert anon.returncode == 1, (anon.stdout, anon.stderr)
        assert f"{link.host}:{st.port}" in anon.stderr, anon.stderr

        st.load_ready("pip-remote", "netns")
        jobid = st.submit("netns_counter_6_0.1.yml")
        job = st.wait_job(jobid, {"r"}, timeout=20)
        time.sleep(1.5)  # let the task measure before the cut
        link.set("down")
        try:
            time.sleep(3.0)  # the cut
            assert node.poll() is None, procs.output()
        finally:
            link.set("up")
        job = st.wait_job(jobid, {"c", "ce", "cd"}, timeout=60)
        assert job["status"] == "c", (job, procs.output())
        tree = xr.open_datatree(job["respath"])
        tree.load()
        tree.close()
        ds = tree["counter"].to_dataset()
        uts = ds["uts"].values
        # every point the runner took (a deadline it missed on a loaded PC is counted, not
        # taken late: issue 9)
        end = job["progress"]["tasks"]["0"]["end"]
        n, missed = end["npoints"], end["missed"]
        # a runner that waited on the cut would miss its ~30 deadlines; a loaded 2-core PC
        # misses a few (7 seen with a second test run beside this one)
        assert n + missed == 60 and missed <= 10, end
        assert uts.size == n, (uts.size, procs.output())
        assert np.unique(uts).size == n and np.all(np.diff(uts) > 0)
        # no gap: a lost point would show as a step of ~0.2 s (jitter of a busy PC aside)
        assert float(np.max(np.diff(uts))) < 0.16 + 0.1 * missed, np.diff(uts)
        assert ds["task"].values.tolist() == [0] * n
        assert node.poll() is None, procs.output()
        _a_cut_across_a_task_s_end(st, link, procs)
    finally:
        procs.stop_all()
        with contextlib.suppress(Exception):
            link.set("up")


def _a_cut_across_a_task_s_end(st: Stack, link: Link, procs: Procs) -> None:
    """A randomized fault run: the node's link cut for 16 s from 1.5 s before its task
    0's end. Back, the node's statuses (task 0's end) passed at once, while what went to
    it waited on TCP's back-off 13 s more: task 1's start was unanswered for 10 s, and
    the job ended ce "no node … answered … is it running?" as the node got it (4 of 6
    such cuts). A node that speaks again after a silence is asked again."""
    import yaml

    st.run("tomato", "pipeline", "ready", "pip-remote", check=True)
    doc = yaml.safe_load((CONFIG / "netns_counter_6_0.1.yml").read_text())
    doc["method"] = [doc["method"][0]] * 2
    two = st.workdir / "two_tasks.yml"
    two.write_text(yaml.safe_dump(doc))
    jobid = st.submit(two)
    time.sleep(4.5)  # (as the run: submitted, then the cut 1.5-2 s before task 0's end)
    link.set("down")
    try:
        time.sleep(16.0)
    finally:
        link.set("up")
    job = st.wait_job(jobid, {"c", "ce", "cd"}, timeout=90)
    assert job["status"] == "c", (job["status"], job["reason"], procs.output())
    told = [job["progress"]["tasks"][str(i)]["end"]["npoints"] for i in (0, 1)]
    tree = xr.open_datatree(job["respath"])
    tree.load()
    tree.close()
    tasks = tree["counter"].to_dataset()["task"].values.tolist()
    assert [tasks.count(0), tasks.count(1)] == told and told[1] > 0, (told, procs.output())
