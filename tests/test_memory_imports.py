"""What a service holds in memory, checked by what it imports (issue 15, memory).

An RSS bound would be flaky on a shared machine; the big libraries are not. Each check
runs in a fresh interpreter (``python -c``) and reads ``sys.modules``: xarray + pandas
are ~60 MB of RSS in the recorder, pint + numpy ~22 MB in the scheduler.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path


def _modules_after(code: str, tmp_path: Path) -> set[str]:
    """The top-level modules a fresh interpreter holds after running ``code``."""
    script = textwrap.dedent(code) + textwrap.dedent(
        """
        import json, sys
        print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_recorder_writes_a_file_without_xarray_or_pandas(tmp_path: Path) -> None:
    mods = _modules_after(
        """
        import json
        from pathlib import Path
        import tomato_mqtt.services.recorder.service
        from tomato_mqtt.services.recorder.files import warm_up_writer
        from tomato_mqtt.services.recorder.netcdf import RoleInput, write_job_file
        warm_up_writer()
        batch = {"schema": 1, "component": "c", "job": 1, "task": 0, "epoch": 1, "seq": 0,
                 "uts": [1.0, 2.0], "vars": {"v": [1, 2], "s": ["a", "b"]},
                 "units": {"v": "s"}}
        write_job_file(Path("r.nc"), [RoleInput("r", "{}", [json.dumps(batch).encode()])],
                       {"tomato_version": "x"})
        assert Path("r.nc").stat().st_size > 0
        """,
        tmp_path,
    )
    assert "netCDF4" in mods  # the check can fail: the writer did run
    assert not mods & {"xarray", "pandas"}


def test_scheduler_parses_payloads_without_pint_or_numpy(tmp_path: Path) -> None:
    mods = _modules_after(
        """
        import sys
        import tomato_mqtt.services.scheduler.service
        import tomato_mqtt.services.scheduler.warmup as s
        from tomato_mqtt.config.payloads import parse_payload
        s.warm_up_payloads()
        task = {"component_role": "a", "technique_name": "t", "max_duration": 10.0,
                "sampling_interval": 0.1}
        parse_payload({"version": "2.2", "user": {"username": "u", "identifier": "u"},
                       "sample": {"name": "x", "identifier": "x"}, "method": [task]})
        assert "dgbowl_schemas.tomato.payload_2_2" in sys.modules
        """,
        tmp_path,
    )
    assert not mods & {"pint", "numpy", "xarray", "pandas"}


def test_a_duration_as_text_still_loads_pint(tmp_path: Path) -> None:
    """The deferred pint is the real one as soon as a payload needs units (a duration
    only pint reads: "2 min" is read without it, tests/test_payloads.py), and every other
    import of pint (and of its submodules) gets the real module."""
    mods = _modules_after(
        """
        from tomato_mqtt.config.payloads import parse_payload
        task = {"component_role": "a", "technique_name": "t", "max_duration": "0.5 week",
                "sampling_interval": 0.1}
        p = parse_payload({"version": "2.2", "user": {"username": "u", "identifier": "u"},
                           "sample": {"name": "x", "identifier": "x"}, "method": [task]})
        assert p.method[0].max_duration == 302400.0, p.method[0].max_duration
        import sys
        assert "numpy" in sys.modules  # (before anything below asks pint for more)
        import dgbowl_schemas.tomato.payload_2_2.task as t
        assert t.pint.Quantity("3 s").to("ms").m == 3000.0
        import pint
        import pint.facets.plain
        assert type(pint).__name__ == "module" and pint.Quantity is t.pint.Quantity
        assert issubclass(pint.Quantity, pint.facets.plain.PlainQuantity)
        """,
        tmp_path,
    )
    assert {"pint", "numpy"} <= mods
