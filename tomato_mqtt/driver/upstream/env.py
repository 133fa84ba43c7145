"""The environment for upstream tomato driver packages: a venv managed by tomato-mqtt.

Every upstream driver depends on ``tomato>=2.2``, whose wheel installs console scripts
named ``tomato``, ``ketchup`` and ``passata`` and whose ``tomato/__init__.py`` imports
pyzmq, appdirs and tomato's whole CLI. Installed next to tomato-mqtt it would clobber
our CLIs, so upstream drivers live in a venv of their own (by default
``<datadir>/upstream-drivers``) and each runs in a driver-host process started with
that venv's python (:mod:`.host`). Drivers are found as tomato finds them: a top-level
module ``tomato_<name>`` with a ``DriverInterface``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

__all__ = ["TOMATO_CONSTRAINT", "UpstreamDriverInfo", "UpstreamEnv"]

#: the tomato the upstream drivers run against. Drivers ask for e.g. ``tomato>=2.1rc3``,
#: a pre-release specifier that lets pip pick tomato 3.0 pre-releases, whose driver
#: interface differs: pin the 2.x line unless the lab asks for another.
TOMATO_CONSTRAINT = "tomato>=2.2,<3"


@dataclass(frozen=True)
class UpstreamDriverInfo:
    name: str
    """The driver name as devices.yml writes it (tomato's: the module without ``tomato_``)."""
    module: str
    package: str
    version: str


class UpstreamEnv:
    """The venv at ``path`` (it need not exist yet)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def python(self) -> Path:
        if os.name == "nt":
            return self.path / "Scripts" / "python.exe"
        return self.path / "bin" / "python"

    def exists(self) -> bool:
        return self.python.exists()

    def site_packages(self) -> list[Path]:
        if os.name == "nt":
            return [p for p in [self.path / "Lib" / "site-packages"] if p.is_dir()]
        return sorted(p for p in self.path.glob("lib/python*/site-packages") if p.is_dir())

    def create(self) -> None:
        """Create the venv (with pip) from the interpreter running tomato-mqtt."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _run([sys.executable, "-m", "venv", str(self.path)], "creating the venv failed")

    def install(self, requirements: list[str], *, upgrade: bool = False) -> float:
        """pip-install ``requirements`` (creating the venv if needed); returns seconds."""
        t0 = time.monotonic()
        if not self.exists():
            self.create()
        constraints = self.path / "tomato-constraint.txt"
        constraints.write_text(TOMATO_CONSTRAINT + "\n")
        cmd = [str(self.python), "-m", "pip", "install", "--quiet", "-c", str(constraints)]
        if upgrade:
            cmd.append("--upgrade")
        _run([*cmd, *requirements], f"pip install {' '.join(requirements)} failed")
        return time.monotonic() - t0

    def drivers(self) -> dict[str, UpstreamDriverInfo]:
        """The driver packages installed in the venv (nothing if it does not exist).

        Cached until a site-packages folder changes (pip installing or removing a
        package changes its mtime): the node asks at every status it publishes.
        """
        sps = self.site_packages()
        key = tuple((str(sp), sp.stat().st_mtime_ns) for sp in sps)
        hit = _CACHE.get(self.path)
        if hit is not None and hit[0] == key:
            return dict(hit[1])
        out: dict[str, UpstreamDriverInfo] = {}
        for sp in sps:
            for mod, dist in _driver_modules(sp).items():
                name = mod[len("tomato_") :]
                out.setdefault(
                    name,
                    UpstreamDriverInfo(
                        name=name,
                        module=mod,
                        package=str(dist.metadata["Name"]),
                        version=str(dist.version),
                    ),
                )
        found = dict(sorted(out.items()))
        _CACHE[self.path] = (key, found)
        return dict(found)


_CACHE: dict[Path, tuple[tuple[tuple[str, int], ...], dict[str, UpstreamDriverInfo]]] = {}


def _driver_modules(sp: Path) -> dict[str, metadata.Distribution]:
    """``tomato_<name>`` packages in ``sp`` and the distributions that installed them."""
    wanted = {
        p.name
        for p in sp.iterdir()
        if p.name.startswith("tomato_") and p.name != "tomato_mqtt" and (p / "__init__.py").exists()
    }
    found: dict[str, metadata.Distribution] = {}
    if not wanted:
        return found
    dists = list(metadata.distributions(path=[str(sp)]))
    for dist in dists:  # cheap first: top_level.txt, or the distribution's own name
        tops = set((dist.read_text("top_level.txt") or "").split())
        tops.add(str(dist.metadata["Name"] or "").lower().replace("-", "_"))
        for mod in wanted & tops:
            found.setdefault(mod, dist)
    for dist in dists:  # the rest: the files the distribution installed
        if wanted <= set(found):
            break
        for f in dist.files or []:
            parts = Path(str(f)).parts
            if len(parts) == 2 and parts[1] == "__init__.py" and parts[0] in wanted:
                found.setdefault(parts[0], dist)
    return found


def _run(cmd: list[str], what: str) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"{what} (exit {res.returncode}):\n{tail}")
