"""Components named as ``passata`` names them, in the Python client (client/names.py):
the full name, ``device/channel``, the slug, a one-channel device; an unknown name is
refused at once (``not_found``, naming the known ones), not after the request timeout."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import RunningBroker
from tests.inproc import inproc_stack
from tomato_mqtt.client import AsyncTomato, ClientError, Tomato
from tomato_mqtt.wire.names import UnknownComponent, from_scheduler, known, pick
from tomato_mqtt.wire.topics import slug

FULL = "example_counter:(example-addr,1)"
COMPS = [
    {"name": FULL, "device": "dev-counter", "channel": "1"},
    {"name": "example_counter:(example-addr,2)", "device": "dev-counter", "channel": "2"},
    {"name": "psutil:(localhost,0)", "device": "dev-psutil", "channel": "0"},
]


@pytest.mark.parametrize(
    ("want", "full"),
    [
        (FULL, FULL),
        ("dev-counter/1", FULL),
        (slug(FULL), FULL),
        ("dev-psutil", "psutil:(localhost,0)"),  # a device of one channel
        ("dev-counter", None),  # two channels: which one?
        ("dev-counter/9", None),
    ],
)
def test_pick(want: str, full: str | None) -> None:
    assert pick(want, COMPS) == full


@pytest.mark.parametrize(
    ("want", "hint"),
    [
        ("dev-countr/1", ": did you mean 'dev-counter/1'?"),  # a typo in its device
        ("dev-countr", ": did you mean 'dev-counter'?"),
        ("dev-psutl/0", ": did you mean 'dev-psutil/0'?"),
        ("example_countr:(example-addr,1)", f": did you mean {FULL!r}?"),
        ("dev-counter/9", ""),  # a device it has, a channel it has not: the known ones say
        ("dev-nope/1", ""),  # nothing near
    ],
)
def test_an_unknown_name_a_typo_away_from_one_says_which(want: str, hint: str) -> None:
    """A mistyped component name is refused with the name it was likely meant to be (a
    newcomer's tour: the known names were listed, none suggested, unlike a payload's)."""
    reply = SimpleNamespace(success=True, data={c["name"]: c for c in COMPS})
    with pytest.raises(UnknownComponent) as e:
        from_scheduler(want, reply)
    assert str(e.value) == f"unknown component {want!r}{hint} (known: {known(COMPS)})"


def test_from_scheduler_refuses_an_unknown_name_naming_the_known_ones() -> None:
    reply = SimpleNamespace(success=True, data={c["name"]: c for c in COMPS})
    assert from_scheduler("dev-counter/2", reply) == "example_counter:(example-addr,2)"
    with pytest.raises(UnknownComponent) as e:
        from_scheduler("dev-counter/9", reply)
    assert str(e.value) == f"unknown component 'dev-counter/9' (known: {known(COMPS)})"
    assert f"dev-counter/1 = {FULL}" in str(e.value)
    # no scheduler: a full name is taken as is, anything else is looked up in the metas
    assert from_scheduler(FULL, None) == FULL
    assert from_scheduler("dev-counter/1", None) is None


async def test_client_takes_passata_names(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    url = f"mqtt://127.0.0.1:{broker.port}"
    async with (
        inproc_stack(broker.port, tmp_path, instance, components=4) as st,
        AsyncTomato(url, instance, timeout=10) as t,
    ):
        for name in ("dev-counter/1", FULL, slug(FULL)):
            got = await t.component_get(name, "max")
            assert set(got) == {"max"}, got
            assert await t.component_name(name) == FULL
        set_ = await t.component_set("dev-counter/2", "max", 7)
        assert set_, set_
        assert (await t.component_get("dev-counter/2", "max"))["max"] == 7

        # unknown: refused at once (not after the 10 s request timeout), naming the known
        t0 = time.monotonic()
        with pytest.raises(ClientError) as e:
            await t.component_get("dev-counter/9", "max")
        assert time.monotonic() - t0 < 3, "waited for an answer nobody gives"
        assert e.value.code == "not_found", e.value
        assert "unknown component 'dev-counter/9'" in str(e.value)
        assert f"dev-counter/1 = {FULL}" in str(e.value)

        # the synchronous client, the same way
        def sync() -> tuple[dict[str, object], ClientError]:
            with Tomato(url, instance) as s:
                got = s.component_get("dev-counter/3", "max")
                try:
                    s.component_set("nope/1", "max", 1)
                except ClientError as err:
                    return got, err
            raise AssertionError("an unknown component was not refused")

        got, err = await asyncio.to_thread(sync)
        assert set(got) == {"max"} and err.code == "not_found", (got, err)

        # without a scheduler: resolved through the metas the nodes announced
        st.scheduler.request_stop()
        await asyncio.sleep(0)
        for _ in range(100):
            if st.scheduler.client is None or not st.scheduler.client.is_connected:
                break
            await asyncio.sleep(0.05)
        assert await t.component_name("dev-counter/4") == "example_counter:(example-addr,4)"
        with pytest.raises(ClientError) as e:
            await t.component_name("dev-counter/9")
        assert e.value.code == "not_found" and "no scheduler answered" in str(e.value)
        # a wrong instance (nothing there) is not a wrong name: unavailable, saying so
        async with AsyncTomato(url, instance + "x", timeout=3) as other:
            with pytest.raises(ClientError) as e:
                await other.component_get("dev-counter/1", "max")
            assert e.value.code == "unavailable", e.value
            assert f"on instance '{instance}x'" in str(e.value), e.value
