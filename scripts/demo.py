"""The README's main job, on the embedded broker: `make demo`.

Starts the stack in ./demo (its own settings, data and logs), loads a sample into a
pipeline, submits tomato's example counter payload, waits for the job to end, prints a
one-screen summary of ./demo/results.1.nc and stops the stack again. Every step is the
real CLI, as a lab user would type it. ``--dir`` runs it in another folder, ``--port``
on a given port (and the next, the broker's WebSocket listener).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEMO = REPO / "demo"
PAYLOAD = REPO / "config" / "counter_1_0.1.yml"
MARK = ".tomato-demo"  # a folder the demo made, which it may make anew


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(*cmd: str, check: bool = True, echo: bool = True) -> subprocess.CompletedProcess[str]:
    # the whole command, real paths included, so that pasting it (with the venv active)
    # does the same again
    if echo:
        print("$", shlex.join(cmd))
    res = subprocess.run([str(BIN / cmd[0]), *cmd[1:]], capture_output=True, text=True, cwd=DEMO)
    out = (res.stdout + res.stderr).strip()
    if out and "--json" not in cmd:
        print("  " + out.replace("\n", "\n  "))
    if check and res.returncode != 0:
        raise SystemExit(f"demo failed at: {' '.join(cmd)}")
    return res


def main(argv: list[str] | None = None) -> int:
    global DEMO
    ap = argparse.ArgumentParser(prog="scripts/dev.py demo", description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, help=f"the folder to run in, made anew (default {DEMO})")
    ap.add_argument("--port", type=int, default=0, help="the broker's port (default: a free one)")
    args = ap.parse_args(argv or [])
    if args.dir is not None:
        DEMO = args.dir.resolve()
    if DEMO.exists():
        if not _earlier_demo(DEMO):
            print(f"{DEMO} holds files the demo did not make: name another folder with --dir")
            return 2
        shutil.rmtree(DEMO)
    DEMO.mkdir(parents=True)
    (DEMO / MARK).write_text("made by scripts/demo.py, which empties it on its next run\n")
    port = str(args.port or free_port())
    dirs = ["-A", str(DEMO / "app"), "-D", str(DEMO / "data"), "-L", str(DEMO / "log")]
    run("tomato", "init", *dirs, "-p", port)
    t0 = time.monotonic()
    run("tomato", "start", *dirs, "-p", port)
    try:
        common = ["-A", str(DEMO / "app"), "-p", port]
        run("tomato", "status", "pipelines", *common)
        run("tomato", "pipeline", "load", "pip-counter", "counter_1_0.1", *common)
        run("tomato", "pipeline", "ready", "pip-counter", *common)
        t_submit = time.monotonic()
        run("ketchup", "submit", str(PAYLOAD), *common)
        job = {}
        deadline = time.monotonic() + 60
        polls = 0
        while time.monotonic() < deadline:
            # said once: the same line ten times over read as a hang (a newcomer's tour)
            res = run("ketchup", "status", "1", "--json", *common, echo=polls == 0)
            if polls == 0:
                print("  (asked again every 0.1 s until the job ends)")
            polls += 1
            job = json.loads(res.stdout)["data"][0]
            if job["status"] in ("c", "ce", "cd"):
                break
            time.sleep(0.1)
        t_done = time.monotonic()
        run("ketchup", "status", *common)
        if job.get("status") != "c":
            print(f"job 1 ended {job.get('status')}: {job.get('reason')}")
            return 1
        summarise(Path(job["respath"]), t_done - t_submit)
    finally:
        run("tomato", "stop", *dirs, "-p", port, check=False)
    print(f"demo finished in {time.monotonic() - t0:.1f} s")
    return 0


def _earlier_demo(folder: Path) -> bool:
    """An earlier demo's folder (its mark, or what an older demo left), never a user's."""
    if not folder.is_dir():
        return False
    names = {p.name for p in folder.iterdir()}
    return MARK in names or names <= {"app", "data", "log"} | {
        n for n in names if n.endswith(".nc")
    }


def summarise(path: Path, seconds: float) -> None:
    import xarray as xr

    tree = xr.open_datatree(path)
    job = json.loads(tree.attrs["tomato_Job"])
    print()
    print(f"results file : {path}")
    sample = job["payload"].get("sample") or {}
    name = sample.get("name") or sample.get("identifier") if isinstance(sample, dict) else sample
    print(f"job          : {job['id']} ({job['status']}), sample {name}")
    print(f"submit->file : {seconds:.2f} s")
    for name, node in tree.children.items():
        ds = node.to_dataset()
        uts = ds["uts"].values
        span = float(uts[-1] - uts[0]) if len(uts) else 0.0
        cols = ", ".join(f"{v} [{ds[v].attrs.get('units', '-')}]" for v in ds.data_vars)
        print(f"role {name:8}: {len(uts)} points over {span:.2f} s; {cols}")
    tree.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
