"""Where the time goes: profiles of tomato-mqtt's slow paths, for docs/performance.md.

``python -m bench.profile`` starts one tomato-mqtt stack (1 component, as the bench
does) and prints:

1. ``-X importtime`` of one ``tomato status`` call: the top-level imports by
   cumulative time, and the wall time of the call;
2. a py-spy profile (sampling at 1 kHz, ``--subprocesses``) of one ``ketchup submit``
   call and of the whole stack from submit until the job is ``r``;
3. a py-spy profile of the whole stack during a 1 kHz job;
4. the same ``-X importtime`` and wall time for tomato 2.2's ``tomato status``.

py-spy comes from the bench's tomato 2.2 environment (``bench/.tomato22``; installed
there on first use, never into the project's). Stacks are shown as the functions with
the most samples, inclusive (any frame) and exclusive (leaf frame).
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import harness
from bench.mqtt_side import TomatoMqtt
from bench.suite import payload, wait_done
from bench.tomato22 import BIN as BIN22
from bench.tomato22 import Tomato22, ensure_venv

PYSPY = BIN22 / "py-spy"


def ensure_pyspy() -> None:
    if not PYSPY.exists():
        subprocess.run(
            [str(BIN22 / "python"), "-m", "pip", "install", "--quiet", "py-spy"],
            check=True,
            capture_output=True,
        )


def importtime(cmd: list[str], env: dict[str, str], cwd: Path, top: int = 8) -> str:
    """Wall time of one call, its import time, and the packages that cost the most.

    A package's figure is the largest cumulative import time of any of its modules
    (``-X importtime``), so nested imports are not counted twice within one package.
    """
    t0 = time.perf_counter()
    res = subprocess.run(
        [cmd[0], "-X", "importtime", *cmd[1:]], capture_output=True, text=True, env=env, cwd=cwd
    )
    wall = time.perf_counter() - t0
    total = 0.0
    per_pkg: dict[str, float] = {}
    for line in res.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cum, name = line[len("import time:") :].split("|")
        if not cum.strip().isdigit():
            continue
        sec = int(cum) / 1e6
        if not name.startswith("  "):
            total += sec
        pkg = name.strip().split(".")[0]
        if pkg not in ("site", "encodings", "_frozen_importlib_external"):
            per_pkg[pkg] = max(per_pkg.get(pkg, 0.0), sec)
    rows = sorted(((v, k) for k, v in per_pkg.items()), reverse=True)
    out = [f"wall {wall:.3f} s, of it imports {total:.3f} s; packages by import time:"]
    out.append("  " + ", ".join(f"{k} {v * 1e3:.0f} ms" for v, k in rows[:top]))
    return "\n".join(out)


def summarise(raw: Path, top: int = 12, focus: str = "") -> str:
    """Functions with the most samples in a py-spy raw (collapsed) file."""
    incl: collections.Counter[str] = collections.Counter()
    excl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n_s = line.rpartition(" ")
        if not stack:
            continue
        n = int(n_s)
        total += n
        frames = stack.split(";")
        excl[_short(frames[-1])] += n
        for f in {_short(f) for f in frames}:
            if focus in f:
                incl[f] += n
    if not total:
        return "  (no samples)"
    out = [f"  {total} samples; inclusive{' (' + focus + ')' if focus else ''}:"]
    out += [f"    {100 * n / total:5.1f} %  {f}" for f, n in incl.most_common(top)]
    out.append("  exclusive (leaf):")
    out += [f"    {100 * n / total:5.1f} %  {f}" for f, n in excl.most_common(top)]
    return "\n".join(out)


def _short(frame: str) -> str:
    # "func (path/to/module.py:123)" -> "func (module.py)"; process roots kept as they are
    name, _, where = frame.partition(" (")
    if not where:
        return frame
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    mod = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({mod})"


def pyspy_record(
    out: Path,
    *,
    cmd: list[str] | None = None,
    pid: int | None = None,
    duration: float | None = None,
    gil: bool = False,
) -> subprocess.Popen[bytes]:
    args = [str(PYSPY), "record", "-r", "1000", "--format", "raw", "-o", str(out), "--nonblocking"]
    if gil:
        args.append("--gil")  # only the thread holding the GIL: where the CPU goes
    if pid is not None:
        args += ["--subprocesses", "-p", str(pid)]
        if duration is not None:
            args += ["-d", str(max(1, round(duration)))]
        return harness.spawn(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert cmd is not None
    return harness.spawn(
        [*args, "--subprocesses", "--", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def supervisor_pid(s: TomatoMqtt) -> int:
    import json

    f = s.root / f"tomato-mqtt.{s.port}.pid"
    return int(json.loads(f.read_text())["pid"])


def main() -> int:
    harness.become_subreaper()
    ensure_venv(lambda m: print(m, file=sys.stderr))
    ensure_pyspy()
    work = Path(tempfile.mkdtemp(prefix="tomato-profile-"))
    print("## 0. import cost of each service of `tomato start` (each is its own process)")
    for mod in (
        "tomato_mqtt.cli.serve",
        "tomato_mqtt_broker",
        "amqtt.broker",
        "tomato_mqtt.services.scheduler.service",
        "tomato_mqtt.services.recorder.service",
        "tomato_mqtt.services.recorder.netcdf",
        "tomato_mqtt.services.node.service",
    ):
        print(
            f"`import {mod}`: "
            + importtime([sys.executable, "-c", f"import {mod}"], dict(os.environ), work, top=4)
        )
    s = TomatoMqtt(work / "mqtt", 1)
    s.prepare()
    print(f"tomato-mqtt `tomato start` → ready: {s.start():.2f} s")
    try:
        s.load_ready("pip-counter-1", "bench")
        print("\n## 1. tomato-mqtt `tomato status`")
        cmd = [sys.executable, str(Path(sys.executable).parent / "tomato"), "status"]
        cmd += ["-p", str(s.port), "-A", str(s.root)]
        print(importtime(cmd, s.env, s.root))
        raw = work / "status.txt"
        p = pyspy_record(raw, cmd=cmd)
        harness.collect(p, 60)
        print("py-spy of the call:")
        print(summarise(raw))

        print("\n## 2. tomato-mqtt `ketchup submit` → `r` (whole stack + the CLI call)")
        pl = payload(s.root / "job_1s.yml", 1.0, 0.1)
        stack_raw = work / "stack_submit.txt"
        rec = pyspy_record(stack_raw, pid=supervisor_pid(s), duration=4)
        time.sleep(0.5)
        cli_raw = work / "submit.txt"
        t0 = time.time()
        sub = pyspy_record(
            cli_raw,
            cmd=[
                str(Path(sys.executable).parent / "ketchup"),
                "submit",
                str(pl),
                "-p",
                str(s.port),
                "-A",
                str(s.root),
            ],
        )
        harness.collect(sub, 60)
        jobid = max(s.jobs())
        jobs = wait_done(s, [jobid], s.root, 60)
        r = s.running_since(jobs.get(jobid, {}))
        print(f"submit → r: {'—' if r is None else f'{r - t0:.2f} s'} (under py-spy)")
        harness.collect(rec, 30)
        print("py-spy of `ketchup submit`:")
        print(summarise(cli_raw))
        print("py-spy of the stack (supervisor and its children) over the same 4 s:")
        print(summarise(stack_raw, focus="tomato_mqtt"))

        print("\n## 3. tomato-mqtt stack during a 1 kHz job (10 s; py-spy --gil: CPU only)")
        pl = payload(s.root / "job_1k.yml", 10.0, 0.001)
        raw = work / "stack_1k.txt"
        _, jobid = s.submit(pl, s.root)
        rec = pyspy_record(raw, pid=supervisor_pid(s), duration=8, gil=True)
        harness.collect(rec, 30)
        wait_done(s, [jobid], s.root, 120)
        print(summarise(raw, focus=""))
    finally:
        s.stop()

    print("\n## 4. tomato 2.2 `tomato status`")
    t = Tomato22(work / "t22", 1)
    t.prepare()
    print(f"tomato 2.2 `tomato start` → ready: {t.start():.2f} s")
    try:
        cmd = [str(BIN22 / "python"), str(BIN22 / "tomato"), "status", "-p", str(t.port)]
        print(importtime(cmd, t.env, t.root))
    finally:
        t.stop()
        harness.stop_descendants(5)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
