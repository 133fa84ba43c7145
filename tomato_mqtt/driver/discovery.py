"""Finding driver plugins: packages that register under the entry-point group
``tomato_mqtt.drivers`` (name -> ``module:DriverInterface``)."""

from __future__ import annotations

import contextlib
import importlib
import os
import site
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, Literal

from tomato_mqtt.driver.base import ModelInterface
from tomato_mqtt.errors import nearest

__all__ = [
    "GROUP",
    "DriverListing",
    "DriverLoadError",
    "DriverNotFound",
    "all_drivers",
    "available_drivers",
    "load_driver",
    "refresh",
    "resolve_driver",
]

GROUP = "tomato_mqtt.drivers"


class DriverNotFound(LookupError):
    """No usable driver of that name on this node (retrying will not help)."""


class DriverLoadError(DriverNotFound):
    """The driver is installed but its package cannot be imported or is not a driver."""


_found: dict[str, EntryPoint] | None = None
_found_stamp: tuple[tuple[str, str, int], ...] = ()
_stale = False


#: what pip puts beside a package for its metadata (and an editable install's path)
_METADATA = (".dist-info", ".egg-info", ".egg-link", ".pth")


def _installed_stamp() -> tuple[tuple[str, str, int], ...]:
    """The installed packages' metadata on ``sys.path``: each ``.dist-info`` (…) entry
    of each folder, with its mtime. pip's install, upgrade and uninstall add or remove
    one (an upgrade changes its name; a reinstall makes it anew, a new mtime). Not the
    folders' own mtime: a source folder on the path (an editable install) changes with
    every file written into it (a test run's coverage files rescanned at each reload).
    ~0.7 ms, against a scan's 3-30 ms."""
    out = []
    for p in sys.path:
        try:
            names = sorted(os.listdir(p or "."))
        except OSError:  # not a folder (a zip), or gone
            continue
        for name in names:
            if name.endswith(_METADATA):
                with contextlib.suppress(OSError):
                    out.append((p, name, os.stat(os.path.join(p or ".", name)).st_mtime_ns))
    return tuple(out)


def _entry_points(refresh: bool = False) -> dict[str, EntryPoint]:
    """The installed drivers, scanned once: a scan reads every installed package's
    metadata (~3-30 ms), and a node reports its drivers in every status (100
    components: 100 scans at start). :func:`refresh` (``tomato reload``, every
    ``configure`` of the node) and a name not found (``refresh=True``) scan again, but
    only when the packages' metadata on ``sys.path`` changed since: a package installed,
    upgraded or removed."""
    global _found, _found_stamp, _stale
    if _found is not None and (refresh or _stale):
        _stale = False
        if _installed_stamp() != _found_stamp:
            _found = None
    if _found is None:
        importlib.invalidate_caches()  # a package pip-installed while the node runs
        _found_stamp = _installed_stamp()
        out: dict[str, EntryPoint] = {}
        for ep in entry_points(group=GROUP):
            out.setdefault(ep.name, ep)  # the first on sys.path wins, as for imports
        _found = out
    return _found


def refresh() -> None:
    """Scan the installed drivers again at the next use, if a package was installed or
    removed since the last scan (after a pip install)."""
    global _stale
    _stale = True


def _version(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return str(dist.version) if dist is not None else "unknown"


_versions: tuple[dict[str, EntryPoint], dict[str, str]] | None = None


def available_drivers() -> dict[str, str]:
    """Installed drivers: name -> version of the package that provides it. Kept with
    the scan: a version is read from the package's metadata file, and a node reports
    its drivers in every heartbeat."""
    global _versions
    found = _entry_points()
    if _versions is None or _versions[0] is not found:
        _versions = (found, {name: _version(ep) for name, ep in sorted(found.items())})
    return dict(_versions[1])


def _read_new_pth_files() -> None:
    """Process the site-packages' ``.pth`` files again (an editable install made since
    this process started); paths already on ``sys.path`` are not added twice."""
    dirs = set(site.getsitepackages())
    if site.ENABLE_USER_SITE:  # never the user's own packages into a venv that excludes them
        dirs.add(site.getusersitepackages())
    for d in dirs:
        if os.path.isdir(d):
            site.addsitedir(d)
    importlib.invalidate_caches()


def load_driver(name: str) -> type[ModelInterface]:
    """The driver class registered as ``name``; raises :class:`DriverNotFound`."""
    eps = _entry_points()
    ep = eps.get(name)
    if ep is None:
        eps = _entry_points(refresh=True)
        ep = eps.get(name)
    if ep is None:
        have = ", ".join(sorted(eps)) or "nothing"
        pkg = "tomato-mqtt-" + name.replace("_", "-")
        raise DriverNotFound(
            f"driver {name!r} is not installed on this node (entry-point group {GROUP} has:"
            f" {have}); install its package, e.g. pip install {pkg}"
        )
    try:
        try:
            obj = ep.load()
        except ModuleNotFoundError as e:
            # its own package not found: installed with `pip install -e` since this
            # process started, its path finder comes from a .pth file, which Python reads
            # only at start (a newcomer: `tomato reload` said "cannot be imported"); read
            # them again. A missing dependency is not looked for that way (a review)
            if (e.name or "").split(".")[0] != ep.value.split(":")[0].split(".")[0]:
                raise
            _read_new_pth_files()
            obj = ep.load()
    except Exception as e:
        raise DriverLoadError(
            f"driver {name!r} ({ep.value}, version {_version(ep)}) is installed but cannot be"
            f" imported: {type(e).__name__}: {e}"
        ) from e
    if not (isinstance(obj, type) and issubclass(obj, ModelInterface)):
        raise DriverLoadError(
            f"driver {name!r} ({ep.value}) is not a subclass of tomato_mqtt.driver.ModelInterface"
        )
    return obj


Source = Literal["auto", "native", "upstream"]


@dataclass(frozen=True)
class DriverListing:
    """One installed driver, for ``tomato drivers list`` and the node's status."""

    name: str
    source: Literal["native", "upstream"]
    package: str
    version: str
    used: bool
    """Whether ``driver: <name>`` in devices.yml resolves to this one."""


def _source(settings: Mapping[str, Any] | None) -> Source:
    raw = (settings or {}).get("source", "auto")
    if raw not in ("auto", "native", "upstream"):
        raise DriverNotFound(
            f"[drivers.<name>] source must be 'auto', 'native' or 'upstream', not {raw!r}"
        )
    return raw  # type: ignore[no-any-return]


def resolve_driver(
    name: str,
    settings: Mapping[str, Any] | None = None,
    upstream_env: Path | None = None,
    node: str | None = None,
) -> type[ModelInterface]:
    """The driver class ``driver: <name>`` means on this node (``node``: its name, for
    the messages).

    A native driver (entry point) wins; a name only an upstream tomato driver package in
    ``upstream_env`` provides resolves to it. ``source = "upstream"`` (or ``"native"``)
    in the driver's ``[drivers.<name>]`` settings picks one side when both have it.
    """
    from tomato_mqtt.driver.upstream.env import UpstreamEnv

    source = _source(settings)
    env = UpstreamEnv(upstream_env) if upstream_env is not None else None
    ups = env.drivers() if env is not None else {}
    native = _entry_points()
    if name not in native:
        native = _entry_points(refresh=True)  # installed since the last scan?
    if source == "upstream" or (source == "auto" and name not in native and name in ups):
        if env is None or name not in ups:
            where = f" in {env.path}" if env is not None else ""
            have = ", ".join(ups) or "nothing"
            raise DriverNotFound(
                f"upstream tomato driver {name!r} is not installed{where} (it has: {have});"
                f" install it with: tomato drivers install tomato-{name.replace('_', '-')}"
            )
        from tomato_mqtt.driver.upstream.adapter import upstream_driver_class

        return upstream_driver_class(ups[name], env.python)
    here = f"node {node!r}" if node else "this node"  # (a reload's warning named no node)
    if name not in native:
        have = ", ".join(sorted(native)) or "nothing"
        up = f"; upstream tomato drivers: {', '.join(ups)}" if ups else ""
        like = nearest(name, [*native, *ups])
        if like:  # a misspelt name: no advice to install a package of that name (one
            # typo away from a package anybody may publish: a newcomer's tour)
            raise DriverNotFound(
                f"driver {name!r} is not installed on {here} (native drivers: {have}{up});"
                f" did you mean {like!r}? (the driver name in the devices file)"
            )
        raise DriverNotFound(
            f"driver {name!r} is not installed on {here} (native drivers: {have}{up});"
            f" install a tomato driver package with: tomato drivers install"
            f" tomato-{name.replace('_', '-')}, or a native one with:"
            f" pip install tomato-mqtt-{name.replace('_', '-')} (a driver of your own: pip"
            " install -e ITS_FOLDER), into the Python this node runs in"
        )
    return load_driver(name)


def all_drivers(
    settings: Mapping[str, Mapping[str, Any]] | None = None, upstream_env: Path | None = None
) -> list[DriverListing]:
    """Every installed driver, native and upstream, and which one each name resolves to."""
    from tomato_mqtt.driver.upstream.env import UpstreamEnv

    ups = UpstreamEnv(upstream_env).drivers() if upstream_env is not None else {}
    native = _entry_points()
    out: list[DriverListing] = []
    for name in sorted(set(native) | set(ups)):
        try:
            source = _source((settings or {}).get(name))
        except DriverNotFound:
            source = "auto"
        want_up = source == "upstream" or (source == "auto" and name not in native)
        if name in native:
            ep = native[name]
            dist = getattr(ep, "dist", None)
            pkg = str(dist.metadata["Name"]) if dist is not None else ep.value
            out.append(DriverListing(name, "native", pkg, _version(ep), not want_up))
        if name in ups:
            u = ups[name]
            out.append(DriverListing(name, "upstream", u.package, u.version, want_up))
    return out
