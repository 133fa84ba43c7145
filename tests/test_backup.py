"""docs/reliability.md's backup, run as written, and its restore: the jobs, pipelines and
samples come back, and job ids go on after the highest the stack had handed out."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.stack import BIN, cli_env, make_stack, stop_stack

pytestmark = pytest.mark.timeout(240)

DOC = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"


def test_the_documented_backup_and_restore(tmp_path: Path) -> None:
    m = re.search(r"<!-- backup -->\n```bash\n(.*?)\n```", DOC.read_text(), flags=re.S)
    assert m, "docs/reliability.md lost its backup example"
    st = make_stack(tmp_path / "lab")
    settings = st.appdir / "settings.toml"  # the port in the settings, as a lab has it
    settings.write_text(settings.read_text().replace("[mqtt]\n", f"[mqtt]\nport = {st.port}\n", 1))
    backup = tmp_path / "backup"
    backup.mkdir()
    env = cli_env(
        {
            "APPDIR": str(st.appdir),
            "DATADIR": str(st.datadir),
            "LOGDIR": str(st.logdir),
            "BACKUP": str(backup),
            "XDG_STATE_HOME": str(tmp_path / "xdg"),  # (the default log folder)
            "PATH": f"{BIN}:{cli_env()['PATH']}",
        },
        "tomato",
        "start",
    )

    def sh(script: str) -> None:
        res = subprocess.run(
            ["bash", "-euc", script], env=env, capture_output=True, text=True, timeout=120
        )
        assert res.returncode == 0, (script, res.stdout, res.stderr)

    try:
        sh('tomato start -A "$APPDIR" -D "$DATADIR"')
        st.load_ready("pip-counter-1", "counter_1_0.1")
        first = st.submit("counter_1_0.1.yml")
        assert st.wait_job(first, {"c", "ce", "cd"}, timeout=60)["status"] == "c"
        st.run("tomato", "pipeline", "load", "pip-counter-2", "kept-sample", check=True)
        sh(m.group(1))  # the backup, as written
        # its services log where they did before it (a start without -L logged elsewhere)
        assert st.json("tomato", "status")["data"]["logdir"] == str(st.logdir)
        assert {p.name for p in backup.iterdir()} == {"app.tgz", "data.tgz"}
        sh('tomato stop -A "$APPDIR" -D "$DATADIR"')
        shutil.rmtree(st.datadir)  # the disk is lost
        st.datadir.mkdir()
        sh(
            'tar -xzf "$BACKUP/app.tgz" -C "$APPDIR"; tar -xzf "$BACKUP/data.tgz" -C "$DATADIR";'
            ' tomato start -A "$APPDIR" -D "$DATADIR"'
        )
        assert st.job(first)["status"] == "c"
        pips = st.json("tomato", "status", "pipelines")["data"]
        assert pips["pip-counter-2"]["sampleid"] == "kept-sample", pips
        assert pips["pip-counter-1"]["sampleid"] == "counter_1_0.1", pips
        st.run("tomato", "pipeline", "ready", "pip-counter-1", check=True)
        second = st.submit("counter_1_0.1.yml")
        assert second == first + 1, (first, second)
        assert st.wait_job(second, {"c", "ce", "cd"}, timeout=60)["status"] == "c"
    finally:
        stop_stack(st)
