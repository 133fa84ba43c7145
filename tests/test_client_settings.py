"""``Tomato.from_settings`` / ``AsyncTomato.from_settings`` (docs/client.md): the broker
and instance of this PC's settings.toml."""

from __future__ import annotations

from pathlib import Path

from tomato_mqtt.client.aio import AsyncTomato
from tomato_mqtt.client.sync import Tomato


def test_both_clients_take_broker_and_instance_from_the_settings(tmp_path: Path) -> None:
    (tmp_path / "settings.toml").write_text(
        '[mqtt]\nhost = "lab-pc"\nport = 1999\ninstance = "lab1"\nusername = "olga"\n'
    )
    for cls in (Tomato, AsyncTomato):
        t = cls.from_settings(tmp_path, timeout=3.0)
        assert (t.url.host, t.url.port, t.url.username) == ("lab-pc", 1999, "olga"), cls
        assert t.topics.root == "tomato/v2/lab1", cls
        assert t.timeout == 3.0
