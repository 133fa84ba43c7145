"""Stalls at timing edges (a fault hunt): see tests/chaos/edges.py.

- ``ketchup snapshot`` while the recorder is stopped (SIGSTOP): the scheduler waited 60 s
  for the recorder, as long as the CLI's timeout, so the CLI said "no scheduler answered
  ... is it running?" of a scheduler that ran and knew the recorder was down;
- ``ketchup cancel`` while the scheduler is stopped: the CLI said the cancel went
  unanswered (exit 1) and the job was cancelled anyway once the scheduler ran again,
  without a word that it might be.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.edges import (
    cancel_stalled_scheduler,
    snapshot_killed_recorder,
    snapshot_stalled_recorder,
)
from tests.chaos.harness import Params

pytestmark = pytest.mark.timeout(150)


def test_a_snapshot_while_the_recorder_is_stopped_says_so(tmp_path: Path) -> None:
    run = snapshot_stalled_recorder(tmp_path, Params(duration=20))
    secs, rc, out = run.seen["snapshot"]
    assert rc != 0, out
    assert "recorder is not answering" in out, out
    assert "no scheduler answered" not in out, out
    assert secs < 8, (secs, out)  # said once the scheduler finds the recorder silent
    assert run.seen["snapshot_after"][1] == 0, run.seen["snapshot_after"]
    assert not run.problems, run.line()  # c, every point (as before)


def test_an_unanswered_cancel_says_it_may_still_take_effect(tmp_path: Path) -> None:
    run = cancel_stalled_scheduler(tmp_path, Params(duration=10))
    _secs, rc, out = run.seen["cancel"]
    assert rc != 0, out
    assert run.status == "cd", run.line()  # the scheduler, back, acted on it
    assert "may still take effect" in out, out
    assert not run.problems, run.line()


def test_a_snapshot_whose_recorder_is_killed_and_restarted_is_written(tmp_path: Path) -> None:
    """A review of the fix above: it failed the snapshot as soon as the recorder's last
    will came, though the supervisor restarts a killed recorder in well under a second
    and the request goes to it again; it is written."""
    run = snapshot_killed_recorder(tmp_path, Params(duration=20))
    secs, rc, out = run.seen["snapshot"]
    assert rc == 0 and "written to" in out, (secs, out)
    assert not run.problems, run.line()
