"""The README's two commands, needing nothing but Python >= 3.10:

    python3 scripts/dev.py demo   # venv + install everything + run the main job
    python3 scripts/dev.py test   # venv + install everything + lint, types, tests

Also: `install`, `check` (lint + types only), `pytest [args]`, `bench [args]`;
`test --coverage` (or `pytest --coverage`) also measures coverage, the services included.
The virtual environment is ./.venv; installs are redone when a pyproject changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("TOMATO_VENV", REPO / ".venv"))
PY = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
PROJECTS = [
    ".",
    "broker",
    "drivers/example_counter",
    "drivers/psutil",
    "drivers/daq_sim",
    "tests/drivers/faulty",
]
LINT_PATHS = ["tomato_mqtt", "broker", "drivers", "tests", "bench", "scripts"]


def sh(*cmd: str | Path) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    res = subprocess.run([str(c) for c in cmd], cwd=REPO)
    if res.returncode != 0:
        sys.exit(res.returncode)


def install() -> None:
    if sys.version_info < (3, 10):  # noqa: UP036 - run by any python3 a user has
        sys.exit(f"tomato-mqtt needs Python >= 3.10 (this is {sys.version.split()[0]})")
    other = other_python()
    if not PY.exists() or other:
        # (`python3.13 scripts/dev.py test` in a checkout whose .venv 3.11 made ran
        # everything on 3.11, and said nothing)
        print(f"{other}: making it again" if other else f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=bool(other)).create(VENV)
        sh(PY, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    digest = hashlib.sha256()
    for p in PROJECTS:
        digest.update((REPO / p / "pyproject.toml").read_bytes())
    stamp = VENV / ".installed"
    if not (stamp.exists() and stamp.read_text() == digest.hexdigest()):
        args = ["-e", ".[server,dashboard,dev]"]
        for p in PROJECTS[1:]:
            args += ["-e", p]
        sh(PY, "-m", "pip", "install", "--quiet", *args)
        stamp.write_text(digest.hexdigest())
    compile_sources()


def other_python() -> str | None:
    """What is wrong when the virtual environment was made by another Python version than
    the one running this script (None: the same, or no environment yet)."""
    try:
        cfg = (VENV / "pyvenv.cfg").read_text()
    except OSError:
        return None
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for line in cfg.splitlines():
        key, _, value = line.partition("=")
        if key.strip() in ("version", "version_info"):  # (uv writes the latter)
            made = ".".join(value.strip().split(".")[:2])
            if made != here:
                return f"{VENV} was made by Python {made}, this is Python {here}"
    return None


def compile_sources() -> None:
    """Byte-compile the project's own modules (a no-op for those already compiled).

    pip compiles what it installs, but an editable install leaves our sources to be
    compiled on import, and where ``PYTHONDONTWRITEBYTECODE`` is set (this CI machine
    sets it) that happens again in every process: ~40 ms of each CLI call, more for
    every service started. ``compileall`` writes the caches regardless of that setting.
    """
    paths = [p for p in ["tomato_mqtt", *PROJECTS[1:], "tests", "bench"] if (REPO / p).exists()]
    res = subprocess.run(
        [str(PY), "-m", "compileall", "-q", "-j", "0", *paths],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
    if res.returncode != 0:
        sys.exit(res.returncode)


def check() -> None:
    sh(PY, "-m", "ruff", "check", *LINT_PATHS)
    sh(PY, "-m", "ruff", "format", "--check", *LINT_PATHS)
    if sys.version_info >= (3, 11):
        sh(PY, "-m", "mypy")
    else:
        # pip gives Python 3.10 older releases of the libraries (pint 0.24, whose
        # Quantity takes no type argument): the types are checked against the ones
        # 3.11+ gets, as CI runs them; the tests run on 3.10 all the same
        print("mypy: skipped on Python 3.10 (its older pint has other types); CI checks them")
    sh(VENV / ("Scripts" if os.name == "nt" else "bin") / "lint-imports")  # the layers


#: whether `test` and `pytest` measure coverage unless told (--coverage / --no-coverage):
#: not by default, since tracing every service the tests start made the run ~2.5 minutes
#: longer (843 s with it, 698 s without, 4 workers on 2 cores), over the ~12 minutes
#: CI allows the default run
COVERAGE = False


def pytest(extra: list[str]) -> None:
    coverage = COVERAGE
    if "--coverage" in extra or "--no-coverage" in extra:
        coverage = "--coverage" in extra
        extra = [a for a in extra if a not in ("--coverage", "--no-coverage")]
    sh("bash", REPO / "scripts" / "ensure-mosquitto")
    # RabbitMQ: a broker that sends no retained message to a wildcard subscription
    sh("bash", REPO / "scripts" / "ensure-rabbitmq")
    # libfaketime: the chaos suite's clock-skew scenarios (they skip, saying why, without it)
    sh("bash", REPO / "scripts" / "ensure-faketime")
    # Debian's chromium: the dashboard's browser tests drive it through Playwright
    sh("bash", REPO / "scripts" / "ensure-chromium")
    # the test command installs Mosquitto: its compatibility tests must run, not skip
    os.environ.setdefault("TOMATO_REQUIRE_MOSQUITTO", "1")
    # tomato 2.2's own models read our files, from a venv of their own (never ours)
    sh(sys.executable, REPO / "scripts" / "ensure-tomato22.py")
    os.environ.setdefault("TOMATO_REQUIRE_TOMATO22", "1")
    # coverage of tomato_mqtt, including the services the tests start as subprocesses
    for old in REPO.glob(".coverage*"):
        old.unlink()
    if coverage:
        os.environ["COVERAGE_RCFILE"] = str(REPO / "pyproject.toml")
    # most tests wait on real services, not on the CPU (the suite uses ~45 % of 2 cores):
    # 4 workers on a 2-core machine; loadgroup keeps the tests of a module-scoped stack on
    # one worker and spreads the rest, long files first (tests/conftest.py)
    workers = os.environ.get("TOMATO_TEST_WORKERS", "4")
    # a worker that crashes (a segfault) fails the run at once and is named: replaced,
    # it left xdist's loadgroup scheduler waiting for good (pytest-xdist #1323/#1327)
    par = (
        []
        if workers in ("0", "1")
        else ["-n", workers, "--dist", "loadgroup", "--max-worker-restart", "0"]
    )
    if not coverage:
        sh(PY, "-m", "pytest", "-q", *par, *extra)
        return
    sh(PY, "-m", "coverage", "run", "-m", "pytest", "-q", *par, *extra)
    sh(PY, "-m", "coverage", "combine", "--quiet")
    sh(PY, "-m", "coverage", "report")


def main(argv: list[str]) -> None:
    cmd = argv[0] if argv else "test"
    if cmd not in ("install", "demo", "check", "pytest", "test", "bench"):
        # said before anything is installed (a mistyped `--help` installed everything first)
        sys.exit(f"unknown command {cmd!r}: use demo, test, install, check, pytest or bench")
    install()
    if cmd == "install":
        return
    if cmd == "demo":
        sh(PY, REPO / "scripts" / "demo.py", *argv[1:])
    elif cmd == "check":
        check()
    elif cmd == "pytest":
        pytest(argv[1:])
    elif cmd == "test":
        check()
        pytest(argv[1:])
    elif cmd == "bench":
        sh(PY, "-m", "bench", *argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
