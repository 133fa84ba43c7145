"""Driver discovery is scanned once per process, and again after ``refresh`` (a reload,
a node's ``configure``) or for a name not found, when a package was installed, upgraded
or removed since (the packages' metadata on ``sys.path`` changed)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from tomato_mqtt.driver import discovery


def _install(site_dir: Path, name: str, version: str = "0.1") -> None:
    """A driver package's metadata as pip writes it (a new ``.dist-info`` folder)."""
    info = site_dir / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(
        f"[tomato_mqtt.drivers]\n{name} = {name}:DriverInterface\n"
    )


def test_scanned_once_rescanned_when_a_package_was_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = discovery.entry_points

    def counting(**kw: Any) -> Any:
        calls.append(kw["group"])
        return real(**kw)

    monkeypatch.setattr(discovery, "entry_points", counting)
    site_dir = tmp_path / "site-packages"
    site_dir.mkdir()
    monkeypatch.syspath_prepend(str(site_dir))
    discovery._found = None  # (a scan of this process, not of an earlier test)
    first = discovery.available_drivers()
    assert "example_counter" in first and "daq_sim" in first
    discovery.available_drivers()
    discovery.load_driver("example_counter")
    assert len(calls) == 1  # a node's every status used to rescan (~30 ms each)
    # a reload, or a node configured again (5 times in a node's first second), with
    # nothing installed since: the scan stands (3-16 ms each on the node's start); also
    # when other files come and go in a folder on the path (a source folder of an
    # editable install: a CI run's coverage files there rescanned at each reload)
    (site_dir / ".coverage.host.123.xyz").write_text("x")
    (site_dir / "zz_module.py").write_text("")
    discovery.refresh()
    discovery.available_drivers()
    with pytest.raises(discovery.DriverNotFound):
        discovery.load_driver("no_such_driver")
    assert len(calls) == 1
    _install(site_dir, "zz_new_drv")  # pip install while the node runs
    discovery.refresh()
    assert "zz_new_drv" in discovery.available_drivers()
    assert len(calls) == 2
    _install(site_dir, "zz_other_drv")  # installed since: a name not found looks again
    with pytest.raises(discovery.DriverLoadError, match="zz_other_drv"):
        discovery.load_driver("zz_other_drv")  # (found; its code is not there)
    assert len(calls) == 3
    shutil.rmtree(site_dir / "zz_new_drv-0.1.dist-info")  # pip uninstall
    discovery.refresh()
    assert "zz_new_drv" not in discovery.available_drivers()
    assert len(calls) == 4


def test_versions_are_read_once_per_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A node reports its drivers' versions in every heartbeat: each was read from its
    package's METADATA file every time (8 file opens a second on a plain node)."""
    reads: list[str] = []
    real = discovery._version

    def counting(ep: Any) -> str:
        reads.append(ep.name)
        return real(ep)

    monkeypatch.setattr(discovery, "_version", counting)
    discovery._found = None
    first = discovery.available_drivers()
    n = len(reads)
    assert n == len(first) and first["example_counter"] != "unknown"
    first["example_counter"] = "changed by a caller"
    assert discovery.available_drivers()["example_counter"] != "changed by a caller"
    assert len(reads) == n
    discovery.refresh()
    discovery.available_drivers()
    assert len(reads) == n  # a reload with nothing installed since reads none
    site_dir = tmp_path / "site-packages"
    _install(site_dir, "zz_upgraded_drv")
    monkeypatch.syspath_prepend(str(site_dir))
    discovery.refresh()
    discovery.available_drivers()
    assert len(reads) == 2 * n + 1  # a reload reads them again (a package upgraded)


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
        info = info.rename(site_dir / "zz_editable_drv-0.2.dist-info")  # as pip reinstalls
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


def test_a_misspelt_driver_name_is_said_without_advice_to_install_it() -> None:
    """A newcomer's tour: ``driver: exmple_counter`` was answered with "install ... with:
    pip install tomato-mqtt-exmple-counter": advice to install a package one typo away
    from the real one, which anybody may publish. A name nothing resembles keeps it."""
    with pytest.raises(discovery.DriverNotFound) as e:
        discovery.resolve_driver("exmple_counter")
    said = str(e.value)
    assert "did you mean 'example_counter'?" in said, said
    assert "install" not in said.split(";", 1)[1], said
    with pytest.raises(discovery.DriverNotFound, match="pip install tomato-mqtt-spectrometer"):
        discovery.resolve_driver("spectrometer")
