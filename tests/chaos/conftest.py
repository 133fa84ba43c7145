"""The chaos suite's table: every run of the session, printed after the test summary."""

from __future__ import annotations

import pytest

from tests.chaos.harness import RUNS, format_table


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RUNS:
        return
    terminalreporter.section("chaos runs (issue 9)")
    terminalreporter.write_line(format_table(RUNS))
