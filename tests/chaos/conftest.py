"""The chaos suite's table: every run of the session, printed after the test summary."""

from __future__ import annotations

import pytest

from tests.chaos.harness import RUNS, format_table


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups (see tests/conftest.py)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """One xdist group per scenario (the tests that look at the same run share it), so a
    parallel run spreads the scenarios over the workers instead of queueing them."""
    for item in items:
        if "tests/chaos/" not in item.nodeid:
            continue
        callspec = getattr(item, "callspec", None)
        name = callspec.params.get("name") if callspec is not None else None
        if name is None and "store_full" in item.nodeid:
            name = "store-full"
        if name is not None:
            item.add_marker(pytest.mark.xdist_group(f"chaos-{name}"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RUNS:
        return
    terminalreporter.section("chaos runs (issue 9)")
    terminalreporter.write_line(format_table(RUNS))
