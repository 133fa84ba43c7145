"""A job page opened by its address, on a machine so busy that the page's second script
(pages.js, which holds the job page) arrives after the WebSocket is open.

Found by a CI run: the late dashboard's page in tests/test_dashboard.py held no job (its
id None, its WebSocket open, the dashboard holding 1,011 points for it) for 45 s. The
WebSocket's open handler routed the page before pages.js had defined the job page, and
nothing routed it again.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from tests.browser import chromium_page, running_dashboard
from tests.conftest import RunningBroker
from tests.inproc import inproc_stack


async def test_a_job_page_opened_while_its_script_is_slow_shows_the_job(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    async with (
        inproc_stack(broker.port, tmp_path, instance) as st,
        running_dashboard(broker.url, instance) as dash,
        chromium_page() as (_, page),
    ):
        job = await st.short_job()

        opened = asyncio.Event()

        async def slow_pages_js(route: Any) -> None:
            # held until the WebSocket is open (the order a busy machine gives), or for
            # 3 s if the page opens its WebSocket only once it has all its scripts
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(opened.wait(), 3)
            await route.continue_()

        await page.route("**/static/pages.js", slow_pages_js)
        page.on("websocket", lambda ws: opened.set())
        await page.goto(f"{dash.address()}#/job/{job.id}", wait_until="commit")
        status = page.locator('#jp-status[data-status="c"]')
        await status.wait_for(timeout=15_000)
        assert await page.evaluate("window.__dash.job.id") == job.id
        assert await page.locator("#jobpage").is_visible()
