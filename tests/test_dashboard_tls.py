"""The dashboard over HTTPS: ``[dashboard] certfile``/``keyfile`` (a real TLS server,
checked by a client that trusts only the test's CA)."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import pytest

from tests.browser import chromium_page, running_dashboard
from tests.conftest import RunningBroker
from tests.tls_ca import make_pki
from tomato_mqtt.config.settings import load_settings
from tomato_mqtt.errors import ConfigError


async def test_the_dashboard_serves_https_with_its_certificate(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    pki = make_pki(tmp_path / "pki")
    cfg = {"certfile": str(pki.server_cert), "keyfile": str(pki.server_key)}
    async with running_dashboard(broker.url, instance, **cfg) as svc:
        address = svc.address()
        assert address.startswith("https://127.0.0.1:"), address
        trust = ssl.create_default_context(cafile=str(pki.ca))
        async with aiohttp.ClientSession() as http:
            async with http.get(address, ssl=trust) as r:
                assert r.status == 200
                assert "<html" in (await r.text()).lower()
            # a client that does not trust the certificate is refused by its own TLS check
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with http.get(address, ssl=ssl.create_default_context()):
                    pass
            # nothing is served in clear on that port
            with pytest.raises(aiohttp.ClientError):
                async with http.get(address.replace("https://", "http://")) as r:
                    await r.read()
        # a real browser: the page, then its live updates over a WebSocket (wss://)
        async with chromium_page(ignore_https_errors=True) as (_, page):
            await page.goto(address)
            await page.wait_for_function("() => window.__dash.helloAt !== null", timeout=20_000)
            assert await page.evaluate("window.__dash.ws.url.startsWith('wss://')")


def test_https_settings_are_checked_and_resolved(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "settings.toml").write_text('[dashboard]\ncertfile = "dash.crt"\n')
    with pytest.raises(ConfigError, match="dashboard: both certfile and keyfile are needed"):
        load_settings(appdir=app, datadir=tmp_path, logdir=tmp_path)
    (app / "settings.toml").write_text(
        '[dashboard]\ncertfile = "dash.crt"\nkeyfile = "/etc/tomato/dash.key"\n'
    )
    s = load_settings(appdir=app, datadir=tmp_path, logdir=tmp_path)
    assert s.dashboard.certfile == str(app / "dash.crt")  # relative to the appdir
    assert s.dashboard.keyfile == "/etc/tomato/dash.key"
