"""docs/drivers.md's two runnable examples run as written: the driver test it offers
as a model (it expected exactly 10 points of a 1 s task at 0.1 s, which a loaded
machine does not give: deadlines missed are counted, never taken late) and the check
of example payloads with ``validate_task``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_docs_examples import block

ROOT = Path(__file__).resolve().parents[1]
DRIVERS = ROOT / "docs" / "drivers.md"


def test_the_driver_test_example_passes() -> None:
    ns: dict[str, object] = {}
    exec(compile(block(DRIVERS, "driver-test-example"), "drivers.md", "exec"), ns)
    tests = [f for name, f in ns.items() if name.startswith("test_") and callable(f)]
    assert len(tests) == 1
    tests[0]()


def test_the_validate_task_example_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # its payload path is the repository's config/
    ns: dict[str, object] = {}
    exec(compile(block(DRIVERS, "validate-example"), "drivers.md", "exec"), ns)
    assert len(ns["payload"].method) > 0  # type: ignore[attr-defined]
