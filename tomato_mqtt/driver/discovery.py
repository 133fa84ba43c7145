"""Finding driver plugins: packages that register under the entry-point group
``tomato_mqtt.drivers`` (name -> ``module:DriverInterface``)."""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from tomato_mqtt.driver.base import ModelInterface

__all__ = [
    "GROUP",
    "DriverLoadError",
    "DriverNotFound",
    "available_drivers",
    "load_driver",
    "refresh",
]

GROUP = "tomato_mqtt.drivers"


class DriverNotFound(LookupError):
    """No usable driver of that name on this node (retrying will not help)."""


class DriverLoadError(DriverNotFound):
    """The driver is installed but its package cannot be imported or is not a driver."""


_found: dict[str, EntryPoint] | None = None


def _entry_points(refresh: bool = False) -> dict[str, EntryPoint]:
    """The installed drivers, scanned once: a scan reads every installed package's
    metadata (~30 ms), and a node reports its drivers in every status (100 components:
    100 scans at start). :func:`refresh` forgets them (``tomato reload``), and a name
    not found is looked up once more, so a package installed later is found."""
    global _found
    if _found is None or refresh:
        out: dict[str, EntryPoint] = {}
        for ep in entry_points(group=GROUP):
            out.setdefault(ep.name, ep)  # the first on sys.path wins, as for imports
        _found = out
    return _found


def refresh() -> None:
    """Scan the installed drivers again at the next use (after a pip install)."""
    global _found
    _found = None


def _version(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return str(dist.version) if dist is not None else "unknown"


def available_drivers() -> dict[str, str]:
    """Installed drivers: name -> version of the package that provides it."""
    return {name: _version(ep) for name, ep in sorted(_entry_points().items())}


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
