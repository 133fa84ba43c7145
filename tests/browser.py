"""Debian's Chromium, headless, driven by Playwright for Python (no browser download).

``scripts/ensure-chromium`` (run by ``scripts/dev.py pytest``) installs ``chromium``;
without it these tests skip locally and fail under CI. Each browser gets a fresh
profile directory and every background feature that would reach the network is off.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import mosquitto_required

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

__all__ = ["CHROMIUM", "chromium_page", "running_dashboard"]


def _require() -> None:
    reason = ""
    if not os.access(CHROMIUM, os.X_OK):
        reason = f"{CHROMIUM} is not installed (run scripts/ensure-chromium)"
    else:
        try:
            import playwright  # noqa: F401
        except ImportError:
            reason = "playwright is not installed (pip install -e .[dev])"
    if reason:
        if mosquitto_required():  # CI and the test command: the browser tests must run
            pytest.fail(f"{reason}, but CI/TOMATO_REQUIRE_MOSQUITTO requires the browser tests")
        pytest.skip(reason)


@contextlib.asynccontextmanager
async def chromium_page(
    width: int = 1280, height: int = 900, ignore_https_errors: bool = False
) -> AsyncIterator[Any]:
    """A new page in a fresh headless Chromium; yields ``(browser, page)``
    (``ignore_https_errors``: accept a certificate of the test's own CA)."""
    _require()
    from playwright.async_api import async_playwright

    with tempfile.TemporaryDirectory(prefix="tomato-chromium-") as profile:
        async with async_playwright() as pw:
            ctx = await pw.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=FLAGS,
                viewport={"width": width, "height": height},
                ignore_https_errors=ignore_https_errors,
            )
            try:
                page = ctx.pages[0] if ctx.pages else await ctx.new_page()
                yield ctx, page
            finally:
                await ctx.close()


@contextlib.asynccontextmanager
async def running_dashboard(url: str, instance: str, **config: Any) -> AsyncIterator[Any]:
    """``tomato dashboard`` in the test's event loop on a free port; yields the service."""
    import asyncio

    from tomato_mqtt.config.url import BrokerURL
    from tomato_mqtt.services.dashboard.service import DashboardConfig, DashboardService

    svc = DashboardService(
        DashboardConfig(url=BrokerURL.parse(url), instance=instance, port=0, **config)
    )
    task = asyncio.ensure_future(svc.run())
    ready = asyncio.ensure_future(svc.ready.wait())
    try:
        await asyncio.wait([task, ready], timeout=20, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raises what stopped it
        if not svc.ready.is_set():
            raise TimeoutError("the dashboard did not come up within 20 s")
        yield svc
    finally:
        ready.cancel()
        svc.request_stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 15)
