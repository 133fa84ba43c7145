"""Driver discovery is scanned once per process, again after ``refresh`` (a reload) and
when a name is not found (a package installed since)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from tomato_mqtt.driver import discovery


def test_scanned_once_rescanned_after_refresh_and_for_an_unknown_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    real = discovery.entry_points

    def counting(**kw: Any) -> Any:
        calls.append(kw["group"])
        return real(**kw)

    monkeypatch.setattr(discovery, "entry_points", counting)
    discovery.refresh()
    first = discovery.available_drivers()
    assert "example_counter" in first and "daq_sim" in first
    discovery.available_drivers()
    discovery.load_driver("example_counter")
    assert len(calls) == 1  # a node's every status used to rescan (~30 ms each)
    discovery.refresh()
    discovery.available_drivers()
    assert len(calls) == 2
    with pytest.raises(discovery.DriverNotFound):
        discovery.load_driver("no_such_driver")
    assert len(calls) == 3  # looked up once more before giving up


def test_versions_are_read_once_per_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node reports its drivers' versions in every heartbeat: each was read from its
    package's METADATA file every time (8 file opens a second on a plain node)."""
    reads: list[str] = []
    real = discovery._version

    def counting(ep: Any) -> str:
        reads.append(ep.name)
        return real(ep)

    monkeypatch.setattr(discovery, "_version", counting)
    discovery.refresh()
    first = discovery.available_drivers()
    n = len(reads)
    assert n == len(first) and first["example_counter"] != "unknown"
    first["example_counter"] = "changed by a caller"
    assert discovery.available_drivers()["example_counter"] != "changed by a caller"
    assert len(reads) == n
    discovery.refresh()
    discovery.available_drivers()
    assert len(reads) == 2 * n  # a reload reads them again (a package upgraded)


def test_a_driver_installed_editable_since_the_start_is_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``pip install -e`` of a driver while the node runs: its metadata is found, but its
    code is reachable only through a .pth file that Python reads at start, so `tomato
    reload` said "installed but cannot be imported: ModuleNotFoundError" (found by a
    newcomer). The node reads the site-packages' .pth files again and imports it. Built
    as pip builds it: a dist-info with the entry point, the source elsewhere, a .pth."""
    site_dir, src = tmp_path / "site-packages", tmp_path / "src"
    (src / "zz_editable_drv").mkdir(parents=True)
    (src / "zz_editable_drv" / "__init__.py").write_text(
        "from tomato_mqtt.driver import ModelInterface\n"
        "class DriverInterface(ModelInterface):\n    pass\n"
    )
    info = site_dir / "zz_editable_drv-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: zz-editable-drv\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[tomato_mqtt.drivers]\nzz_editable = zz_editable_drv:DriverInterface\n"
    )
    monkeypatch.syspath_prepend(str(site_dir))  # its metadata is there; its code is not
    monkeypatch.setattr(discovery.site, "getsitepackages", lambda: [str(site_dir)])
    monkeypatch.setattr(discovery.site, "getusersitepackages", lambda: str(site_dir))
    discovery.refresh()
    (site_dir / "__editable__.zz_editable_drv-0.1.pth").write_text(f"{src}\n")  # after start
    try:
        cls = discovery.load_driver("zz_editable")
        assert cls.__name__ == "DriverInterface" and cls.__module__ == "zz_editable_drv"
        # a dependency missing is said as it is, without reading .pth files again (which
        # added ~/.local to a venv's sys.path: a review)
        (src / "zz_editable_drv" / "needs.py").write_text("import zz_not_installed_dep\n")
        (info / "entry_points.txt").write_text(
            "[tomato_mqtt.drivers]\nzz_editable = zz_editable_drv:DriverInterface\n"
            "zz_needs = zz_editable_drv.needs:DriverInterface\n"
        )
        discovery.refresh()
        before = list(sys.path)
        with pytest.raises(discovery.DriverNotFound, match="zz_not_installed_dep"):
            discovery.load_driver("zz_needs")
        assert sys.path == before
    finally:
        sys.modules.pop("zz_editable_drv", None)
        if str(src) in sys.path:
            sys.path.remove(str(src))
        discovery.refresh()
