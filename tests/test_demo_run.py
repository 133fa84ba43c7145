"""The README's first quick-start command, ``python3 scripts/dev.py demo``, past its
install: ``scripts/demo.py`` runs tomato's example job on the embedded default and
prints the file's summary (it was run by no test: only its echo of each command was)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.stack import free_port
from tests.test_demo_echo import demo_module

pytestmark = pytest.mark.timeout(180)


def test_the_demo_runs_the_main_job_to_c_and_stops(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = demo_module()
    # not the checkout's ./demo; its port and the next, the WebSocket listener's, free and
    # kept from other workers
    rc = demo.main(["--dir", str(tmp_path / "demo"), "--port", str(free_port())])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert re.search(r"^job +: 1 \(c\), sample counter_1_0\.1$", out, re.M), out
    m = re.search(r"^role counter +: (\d+) points over", out, re.M)
    assert m and 1 <= int(m.group(1)) <= 10, out  # 1 s at 0.1 s (a missed deadline: fewer)
    results = tmp_path / "demo" / "results.1.nc"
    assert f"results file : {results}" in out, out
    assert results.exists()
    assert "stopped" in out, out  # `tomato stop` ran and said so
    assert demo._earlier_demo(tmp_path / "demo")  # its next run may empty it


def test_the_demo_empties_only_a_folder_it_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--dir`` names a folder the demo makes anew: one holding a user's files is refused,
    and they are kept."""
    demo = demo_module()
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("keep me")
    assert demo.main(["--dir", str(mine), "--port", "1"]) == 2
    out = capsys.readouterr().out
    assert f"{mine} holds files the demo did not make: name another folder with --dir" in out
    assert (mine / "chapter1.tex").read_text() == "keep me"
    assert not (mine / demo.MARK).exists()
