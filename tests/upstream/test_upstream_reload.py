"""Upstream tomato 2.2's ``test_04_tomato_reload``, ported to ``tomato reload`` (scenarios,
not code): one in-process stack, the devices file and settings.toml edited between
reloads as upstream's test does, the counts read from ``tomato status <section>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import RunningBroker
from tests.inproc import inproc_stack
from tests.upstream.cli import CONFIG, Cli, payload

pytestmark = pytest.mark.timeout(120)


def devices(
    *extra: dict[str, Any],
    driver: str = "example_counter",
    address: str = "example-addr",
    channels: tuple[str, ...] = ("1",),
    pipeline: str = "pip-counter",
    channel: str = "1",
    roles: tuple[tuple[str, str, str], ...] = (),
) -> dict[str, Any]:
    """A devices file like tomato's default, with one thing changed."""
    dev = {
        "name": "dev-counter",
        "driver": driver,
        "address": address,
        "channels": list(channels),
        "pollrate": 1,
    }
    entries = [{"role": "counter", "device": "dev-counter", "channel": channel}]
    entries += [{"role": r, "device": d, "channel": c} for r, d, c in roles]
    return {"devices": [dev, *extra], "pipelines": [{"name": pipeline, "devices": entries}]}


async def counts(cli: Cli) -> tuple[int, int, int, int]:
    """(drivers, devices, pipelines, components), as upstream counts drvs/devs/pips/cmps."""
    out = []
    for section in ("drivers", "devices", "pipelines", "components"):
        r = await cli.json("tomato", "status", section)
        assert r["success"], r
        out.append(len(r["data"]))
    return out[0], out[1], out[2], out[3]


async def test_04_tomato_reload(
    broker: RunningBroker, tmp_path: Path, instance: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "data" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    # the file ends with [drivers], as `tomato init` writes it
    async with inproc_stack(
        broker.port, tmp_path, instance, devices="devices_default.yml", settings="[drivers]"
    ) as st:
        cli = Cli(st.settings.appdir, broker.port)
        devfile = st.settings.devices_file
        settings = st.settings.appdir / "settings.toml"
        original = settings.read_text()

        async def reload_with(doc: dict[str, Any] | Path) -> dict[str, Any]:
            text = doc.read_text() if isinstance(doc, Path) else yaml.safe_dump(doc)
            devfile.write_text(text)
            return await cli.json("tomato", "reload")

        # upstream: test_reload_noop
        r = await cli.json("tomato", "reload")
        assert r["success"] and "no changes" in r["msg"], r
        assert await counts(cli) == (1, 1, 1, 1)

        # upstream: test_reload_settings -- appended the upstream way, it lands in
        # [drivers]; the reply says what changed (not "no changes")
        settings.write_text(original + "example_counter.testparb = 1")
        r = await cli.json("tomato", "reload")
        assert r["success"] and "settings of driver(s): example_counter" in r["msg"], r
        drvs = (await cli.json("tomato", "status", "drivers"))["data"]
        drv = drvs["example_counter"] if isinstance(drvs, dict) else drvs[0]
        assert drv["settings"]["testparb"] == 1
        assert await counts(cli) == (1, 1, 1, 1)
        settings.write_text(original)
        assert (await cli.json("tomato", "reload"))["success"]

        # a device no pipeline uses: listed (as tomato's devs), without components
        spare = {"name": "spare", "driver": "example_counter", "address": "x", "channels": ["1"]}
        r = await reload_with(devices(spare))
        assert r["success"], r
        assert await counts(cli) == (1, 2, 1, 1)

        # upstream: test_reload_cmps_pips
        r = await reload_with(CONFIG / "devices_counter.yml")
        assert r["success"], r
        assert await counts(cli) == (1, 1, 4, 4)

        # upstream: test_reload_devs -- 3 components, not 8: only channels in pipelines
        r = await reload_with(CONFIG / "devices_multidev.yml")
        assert r["success"], r
        assert await counts(cli) == (1, 2, 2, 3)

        # upstream: test_reload_drvs -- a second driver, then back
        r = await reload_with(CONFIG / "devices_psutil.yml")
        assert r["success"], r
        assert await counts(cli) == (2, 2, 1, 2)
        r = await reload_with(CONFIG / "devices_counter.yml")
        assert r["success"], r
        assert await counts(cli) == (1, 1, 4, 4)

        # upstream: test_reload_running -- nothing of a running job may change
        r = await reload_with(devices())
        assert r["success"], r
        await st.wait_registered(1)
        jobid = await cli.run_case(payload("counter_60_0.1"), "pip-counter")
        await cli.wait_job(jobid, {"r"})
        settings.write_text(original + "example_counter.testparb = 1")
        r = await cli.json("tomato", "reload")
        assert not r["success"] and "settings of driver example_counter" in r["msg"], r
        settings.write_text(original)
        assert (await cli.json("tomato", "reload"))["success"]
        other = {"name": "new-counter", "driver": "example_counter", "address": "new-addr"}
        for what, doc in (
            ("driver", devices(driver="psutil", channels=("2",), channel="2")),
            ("channel", devices(channels=("2",), channel="2")),
            ("address", devices(address="example-addr-new")),
            ("deleted pipeline", devices(pipeline="pip-counter-new")),
            (
                "modified pipeline",
                devices(
                    {**other, "channels": ["1"], "pollrate": 1},
                    roles=(("other", "new-counter", "1"),),
                ),
            ),
        ):
            r = await reload_with(doc)
            assert not r["success"], (what, r)
            assert "reload refused, nothing changed" in r["msg"] and "running job" in r["msg"]
        devfile.write_text(yaml.safe_dump(devices()))
        r = await cli.json("ketchup", "cancel", str(jobid))
        assert r["success"]
        await cli.wait_job(jobid, {"cd"})
