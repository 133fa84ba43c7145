"""pint's unit registry for the driver API, parsed once per machine, not once per start.

Building pint's default registry parses its definition files: ~0.15 CPU-s on a quiet PC,
0.3 to 0.45 s while a whole stack starts at once, and a node cannot register a component
before it is done (the drivers declare their attributes in pint units). pint can keep
the parsed definitions in a folder (``cache_folder``): the next build takes ~0.02 s.

pint writes that folder file by file, with no care for a second process reading it
meanwhile (two nodes, or a node and a scheduler, starting at once). So the folder is
built under a private name and renamed into place whole; a folder that is in place is
complete. One that cannot be read for any reason is not trusted: the registry is then
parsed from pint's own files, as without a cache, the log says why, and the broken
folder is removed so that the next start builds it anew.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

__all__ = ["cache_dir", "load_registry"]

log = logging.getLogger(__name__)
_lock = threading.Lock()
_loaded: list[Any] = []


def cache_dir() -> Path:
    """Where the parsed definitions are kept: the user's cache folder (platformdirs),
    one sub-folder per pint version; ``TOMATO_MQTT_CACHE`` overrides the root."""
    root = os.environ.get("TOMATO_MQTT_CACHE")
    if root:
        return Path(root)
    import platformdirs

    return Path(platformdirs.user_cache_dir("tomato-mqtt", appauthor=False))


def _cached(pint: Any, root: Path) -> Any:
    target = root / f"pint-{pint.__version__}"
    if not target.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".pint-", dir=root))
        try:
            pint.UnitRegistry(cache_folder=tmp)  # parses and writes the cache
            os.rename(tmp, target)  # whole or not at all
        except OSError:  # another process renamed its copy first: use that one
            pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return pint.UnitRegistry(cache_folder=target)


def _discard(folder: Path) -> None:
    """Move a broken cache out of the way at once (a rename), then delete it."""
    gone = folder.with_name(f".broken-{os.getpid()}-{folder.name}")
    try:
        os.rename(folder, gone)
    except OSError:
        return
    shutil.rmtree(gone, ignore_errors=True)


def load_registry(root: Path | None = None) -> Any:
    """Make pint's application registry one built from the cache (once per process).

    Call before any driver declares a unit: quantities of one registry do not mix with
    another's. Returns the registry.
    """
    with _lock:
        if _loaded:
            return _loaded[0]
        import pint

        root = root or cache_dir()
        try:
            reg = _cached(pint, root)
        except Exception as e:  # a cache we cannot read is never worth a failed start
            log.warning("pint's definitions cache is not usable (%s): parsing them", e)
            _discard(root / f"pint-{pint.__version__}")  # the next start builds it anew
            reg = pint.UnitRegistry()
        pint.set_application_registry(reg)  # type: ignore[no-untyped-call]
        reg.Quantity(1, "s")  # fills the registry's lazy parts now, in this thread
        _loaded.append(reg)
        return reg
