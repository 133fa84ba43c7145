"""Driver discovery is scanned once per process, again after ``refresh`` (a reload) and
when a name is not found (a package installed since)."""

from __future__ import annotations

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
