"""Driver discovery on a running node: a driver package installed after start is found
by ``tomato reload`` (no restart), in-process against the embedded broker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import RunningBroker
from tests.inproc import inproc_stack
from tomato_mqtt.wire.messages import ComponentMeta

LATE = "late_counter:(late-addr,1)"


def _fake_dist(root: Path) -> None:
    """A distribution that registers a native driver under the entry-point group, as
    ``pip install`` would leave it (its code is the bundled counter's)."""
    info = root / "tomato_mqtt_late-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tomato-mqtt-late\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[tomato_mqtt.drivers]\nlate_counter = tomato_mqtt_example_counter:DriverInterface\n"
    )


def _add_device(devices: Path, name: str, driver: str, address: str) -> None:
    """A device of one channel and a pipeline of it (``pip-`` and the name after
    ``dev-``) added to a devices file: a component exists only for a channel some
    pipeline uses (as in tomato)."""
    text = devices.read_text().replace(
        "pipelines:",
        f"  - {{name: {name}, driver: {driver}, address: {address}, channels: ['1']}}\npipelines:",
    )
    text = text.rstrip("\n") + (
        f"\n  - name: pip-{name.removeprefix('dev-')}\n    devices:\n"
        f"      - {{role: counter, device: {name}, channel: '1'}}\n"
    )
    devices.write_text(text)


async def test_driver_installed_after_start_is_found_by_reload(
    broker: RunningBroker, tmp_path: Path, instance: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with inproc_stack(broker.port, tmp_path / "st", instance, components=4) as st:
        _add_device(st.settings.devices_file, "dev-late", "late_counter", "late-addr")
        first = await st.raw(st.topics.scheduler_cmd("reload"))
        # its answer says the driver is missing (a misspelt one was "reload done", exit 0,
        # the jobs left queued: a newcomer's tour)
        assert first.success and (
            f"warning: component {LATE} cannot register: driver 'late_counter' is not "
            "installed" in first.msg
        ), first

        async def meta_says(pred: Callable[[ComponentMeta], bool]) -> None:
            async with st.changed:
                await st.changed.wait_for(lambda: LATE in st.metas and pred(st.metas[LATE]))

        await asyncio.wait_for(meta_says(lambda m: bool(m.error)), 20)
        err = st.metas[LATE].error or ""
        assert "late_counter" in err and "not installed" in err, err
        assert "tomato drivers install" in err  # says how

        _fake_dist(tmp_path / "site")
        monkeypatch.syspath_prepend(str(tmp_path / "site"))
        said = await st.raw(st.topics.scheduler_cmd("reload"))
        # said (it was "reload done: no changes" as it registered them: a driver author)
        assert said.success and "the nodes look again for the drivers of 1 component(s)" in (
            said.msg
        ), said
        assert "no changes" not in said.msg, said
        await asyncio.wait_for(meta_says(lambda m: m.registered), 20)
        assert sorted(st.metas[LATE].capabilities) == ["count", "random"]


async def test_a_reload_says_which_added_components_are_not_registered_yet(
    broker: RunningBroker, tmp_path: Path, instance: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A driver author's tour: a component whose driver takes 15 s to connect, added by
    `tomato reload`, was not mentioned (the reload waited its 5 s and said nothing of
    it). A component with no last word within the wait is named."""
    from tomato_mqtt.services.scheduler import reload as reload_mod

    monkeypatch.setattr(reload_mod, "RELOAD_WAIT", 0.0)  # as a driver slower than the wait
    async with inproc_stack(broker.port, tmp_path / "st", instance, components=2) as st:
        _add_device(st.settings.devices_file, "dev-new", "example_counter", "new-addr")
        said = await st.raw(st.topics.scheduler_cmd("reload"))
        new = "example_counter:(new-addr,1)"
        assert said.success and (
            f"component(s) {new} not registered yet after 0 s (a driver still connecting?)"
            in said.msg
        ), said.msg


async def test_a_reload_names_the_online_node_that_has_the_driver_this_one_lacks(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """A newcomer's tour: a device of a driver installed on a second PC's node, added
    without `node:`, was refused with "driver 'wave' is not installed on this node" (which
    node?) and advice to install packages that exist nowhere. The warning names the node
    that lacks it and the online node that has it."""
    import os
    import subprocess

    from tests.stack import BIN, end_process

    async with inproc_stack(broker.port, tmp_path / "st", instance, components=4) as st:
        _fake_dist(tmp_path / "site")  # installed on pc2 only (its own Python path)
        env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
        argv = [BIN / "tomato", "node", "--name", "pc2", "-p", str(broker.port)]
        with (tmp_path / "pc2.log").open("w") as log:
            pc2 = subprocess.Popen(
                [*argv, "-A", str(st.settings.appdir)], stdout=log, stderr=log, env=env
            )
        try:

            async def pc2_has_it() -> None:
                while True:
                    n = st.scheduler.nodes.get("pc2")
                    if n is not None and n.state == "online" and "late_counter" in n.drivers:
                        return
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(pc2_has_it(), 30)
            _add_device(st.settings.devices_file, "dev-late", "late_counter", "late-addr")
            said = await st.raw(st.topics.scheduler_cmd("reload"))
            assert said.success, said
            assert "driver 'late_counter' is not installed on node 'local'" in said.msg, said
            assert "pip install -e ITS_FOLDER" in said.msg, said.msg
            assert (
                "(node(s) 'pc2' have driver 'late_counter': give the device `node: pc2` "
                "in the devices file, then reload)" in said.msg
            ), said.msg
        finally:
            end_process(pc2)


async def test_a_missing_driver_no_device_names_any_more_leaves_the_node_s_status(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """A newcomer's tour: after the device of a driver not installed was removed again,
    the node's status still listed that driver, "not installed" (the dashboard showed it
    under the node, `tomato status nodes --json` too)."""
    async with inproc_stack(broker.port, tmp_path / "st", instance, components=4) as st:
        devices = st.settings.devices_file
        before = devices.read_text()

        async def node_lists(want: bool) -> None:
            while True:
                n = st.scheduler.nodes.get("local")
                if n is not None and ("no_such_drv" in n.drivers) == want:
                    return
                await asyncio.sleep(0.05)

        _add_device(devices, "dev-gone", "no_such_drv", "gone-addr")
        said = await st.raw(st.topics.scheduler_cmd("reload"))
        assert said.success and "'no_such_drv' is not installed on node 'local'" in said.msg
        await asyncio.wait_for(node_lists(True), 20)
        assert "not installed" in (st.scheduler.nodes["local"].drivers["no_such_drv"].error or "")
        devices.write_text(before)
        said = await st.raw(st.topics.scheduler_cmd("reload"))
        assert said.success, said
        await asyncio.wait_for(node_lists(False), 20)


def test_a_driver_name_a_letter_off_gets_did_you_mean_not_a_package_to_install() -> None:
    """A driver author's tour: `mcf` for an installed `mfc` (two letters swapped) and
    `Mfc` got advice to install `tomato-mcf` (difflib's ratio of short names is low)."""
    from tomato_mqtt.driver.discovery import DriverNotFound, resolve_driver
    from tomato_mqtt.errors import nearest

    for typo in ("Psutil", "pustil", "psutl", "psutils", "example_coutner"):
        with pytest.raises(DriverNotFound, match="did you mean '(psutil|example_counter)'") as e:
            resolve_driver(typo)
        assert "drivers install" not in str(e.value), e.value
    assert nearest("mcf", ["mfc", "fastpot"]) == "mfc"
    assert nearest("mfcc", ["mfc"]) == "mfc" and nearest("Mfc", ["mfc"]) == "mfc"
    assert nearest("abc", ["xyz", "abd"]) == "abd" and nearest("ab", ["xb"]) is None
    assert nearest("heater", ["counter", "psutil"]) is None
