"""The dashboard's overview as a lab user works with it, in a real headless Chromium: a
pipeline's own buttons, where a running job is (its task, of how many, and for how
long), the jobs list's sample column and filter, a node's drivers, and the browser tab
naming its page (found by a dashboard tour: a dropdown and three buttons above the table,
"running · 350 points", one list of every user's jobs, every installed driver "(not
loaded)", every tab "tomato-mqtt dashboard")."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from tests.browser import chromium_page, running_dashboard
from tests.conftest import RunningBroker
from tests.inproc import inproc_stack

# task 0 is over in a second; task 1 runs until the test cancels the job
TWO_TASKS = """\
version: "0.2"
sample:
    name: {sample}
method:
  - device: "counter"
    technique: "count"
    time: 1.0
    delay: 0.1
  - device: "counter"
    technique: "count"
    time: 90.0
    delay: 0.1
"""


async def _text(page: Any, selector: str) -> str:
    return str(await page.locator(selector).first.text_content())


@pytest.mark.timeout(180)
async def test_the_overview_acts_per_pipeline_and_shows_where_a_job_is(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    url = f"mqtt://127.0.0.1:{broker.port}"
    async with (
        inproc_stack(broker.port, tmp_path, instance) as st,
        running_dashboard(url, instance) as dash,
        chromium_page() as (_, page),
    ):
        await page.goto(dash.address())
        row = page.locator('#pipelines tr[data-key="pip-counter-1"]')
        await row.wait_for(timeout=10_000)
        # the browser's tab names the stack
        await page.wait_for_function(f"() => document.title === 'tomato-mqtt {instance}'")

        # its own buttons: load… asks for the sample; then eject and ready, not load
        asked: list[str] = []

        async def answer(dialog: Any) -> None:
            asked.append(dialog.message)
            await dialog.accept("s1")

        page.once("dialog", lambda d: asyncio.ensure_future(answer(d)))
        await row.locator('button.prow[data-op="pipeline_load"]').click()
        await row.locator("td.sample", has_text="s1").wait_for(timeout=10_000)
        assert asked == ["Sample to load into pip-counter-1:"]
        assert await row.locator('button.prow[data-op="pipeline_load"]').count() == 0
        assert await row.locator('button.prow[data-op="pipeline_eject"]').is_visible()
        await row.locator('button.prow[data-op="pipeline_ready"]').click()
        await row.locator("td.ready", has_text="ready").wait_for(timeout=10_000)
        await row.locator('button.prow[data-op="pipeline_ready"]').wait_for(state="detached")

        # a job of two tasks: the row says which runs, of how many, for how long of how long
        submit = "(text) => window.command('job_submit', {text, filename: 'two.yml'})"
        r = await page.evaluate(submit, TWO_TASKS.format(sample="s1"))
        assert r["success"], r
        jobid = r["data"]["id"]
        await page.goto(f"{dash.address()}#/")
        prog = row.locator("td.progress")
        # (not "· starting (1 min 30 s)": its node has not begun it yet)
        running = re.compile(r"counter: task #1 \(2 of 2\) · \d+ s of 1 min 30 s")
        await prog.filter(has_text=running).wait_for(timeout=20_000)
        first = await _text(page, '#pipelines tr[data-key="pip-counter-1"] td.progress')
        assert first.endswith(" of 1 min 30 s"), first
        # its age goes on by the page's clock, between the node's statuses
        await page.wait_for_function(
            '(t) => document.querySelector(\'#pipelines tr[data-key="pip-counter-1"] '
            "td.progress').textContent !== t",
            arg=first,
            timeout=5_000,
        )
        # a running job's pipeline offers no eject (the scheduler refuses it), and reads
        # "in use", not "not ready" (read as a fault: a dashboard tour)
        assert await row.locator('button.prow[data-op="pipeline_eject"]').count() == 0
        assert await row.locator("td.ready").text_content() == "in use"

        # the jobs list: the sample, and a filter over id, name, sample, user and status
        waits = await page.evaluate(submit, TWO_TASKS.format(sample="other-sample"))
        assert waits["success"], waits
        mine = page.locator(f'#jobs tr[data-key="{jobid}"]')
        theirs = page.locator(f'#jobs tr[data-key="{waits["data"]["id"]}"]')
        await theirs.wait_for(timeout=10_000)
        assert await mine.locator("td.sample").text_content() == "s1"
        await page.fill("#jobs-filter", "other")
        await mine.wait_for(state="detached", timeout=5_000)
        assert await theirs.is_visible()
        assert "1 of 2 match the filter" in await _text(page, "#jobs-count")
        await page.fill("#jobs-filter", "running s1")
        await mine.wait_for(timeout=5_000)
        await theirs.wait_for(state="detached", timeout=5_000)
        # a status code alone is the status ("r" matched every "pip-counter" job: a tour)
        for code, shown, gone in (("qw", theirs, mine), ("r", mine, theirs)):
            await page.fill("#jobs-filter", code)
            await shown.wait_for(timeout=5_000)
            await gone.wait_for(state="detached", timeout=5_000)
        await page.fill("#jobs-filter", "")
        await theirs.wait_for(timeout=5_000)

        # at a phone's width a row is a card of "heading: value" lines: no table wider
        # than the screen (cells of a word a line, pipelines' rows 150 px high: a tour)
        await page.set_viewport_size({"width": 390, "height": 844})
        wide = "(id) => document.getElementById(id).scrollWidth"
        for table in ("presence", "pipelines", "jobs"):
            assert await page.evaluate(wide, table) <= 390, table
        label = await mine.locator("td.sample").get_attribute("data-label")
        assert label == "sample", label
        await page.set_viewport_size({"width": 1280, "height": 900})

        # a node's drivers: those its components use, the others installed said apart
        # (every one read "(not loaded)")
        node = await _text(page, '#presence tr[data-key="node:local"]')
        assert "(not loaded)" not in node, node
        assert "example_counter" in node, node
        # (this venv installs more drivers than the stack uses: the bundled ones)
        told = await page.evaluate("() => Object.keys(window.S.nodes.local.drivers)")
        assert {"example_counter", "daq_sim"} <= set(told), told
        assert "also installed: " in node and "daq_sim" in node, node

        # the job page says the same, and its tab names the job
        await page.goto(f"{dash.address()}#/job/{jobid}")
        summary = page.locator("#jp-summary .progress", has_text="task #1 (2 of 2)")
        await summary.wait_for(timeout=10_000)
        await page.wait_for_function(
            f"() => document.title === 'job {jobid} r · tomato-mqtt {instance}'"
        )
        # the component page's tab: device/channel
        await page.goto(f"{dash.address()}#/component/dev-counter/1")
        await page.wait_for_function(
            f"() => document.title === 'dev-counter/1 · tomato-mqtt {instance}'", timeout=5_000
        )

        # a control while the page is not connected: said plainly, nothing sent ("the
        # dashboard did not answer: TypeError: Failed to fetch": a dashboard tour)
        said = await page.evaluate(
            "() => { window.__dash.ws.close(); return window.command('pipeline_ready',"
            " {pipeline: 'pip-counter-2'}).then(() =>"
            " document.getElementById('reply').textContent); }"
        )
        assert "the page is not connected to the dashboard" in said, said
        await page.wait_for_function(
            "() => window.__dash.ws && window.__dash.ws.readyState === 1", timeout=10_000
        )

        cancel = f"window.command('job_cancel', {{jobids: [{jobid}, {jobid + 1}]}})"
        assert (await page.evaluate(cancel))["success"]
        await st.wait_job(jobid, {"cd"}, timeout=20)
        # no task runs: the row says none
        await page.goto(f"{dash.address()}#/")
        await prog.filter(has_text="task #").wait_for(state="detached", timeout=10_000)


async def test_durations_read_as_a_person_reads_them() -> None:
    """The page's ``fmtDur``, taken from app.js and run in Chromium: its boundaries."""
    async with chromium_page() as (_, page):
        js = Path(__file__).resolve().parents[1] / "tomato_mqtt/services/dashboard/static"
        body = (js / "app.js").read_text()
        start = body.index("function fmtDur(s)")
        end = body.index("window.fmtDur = fmtDur;")
        await page.add_script_tag(content=body[start:end] + "window.fmtDur = fmtDur;")
        got = await page.evaluate("[0, 35.4, 59.6, 60, 61, 3599, 3600, 3660, 7325].map(fmtDur)")
        assert got == [
            "0 s",
            "35 s",
            "1 min",
            "1 min",
            "1 min 1 s",
            "59 min 59 s",
            "1 h",
            "1 h 1 min",
            "2 h 2 min",
        ]


@pytest.mark.timeout(180)
async def test_pipelines_in_number_order_and_a_keyboard_user_s_focus_kept(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """An integrator's tour: 24 pipelines read pip-1, pip-10 … pip-19, pip-2; a row's
    button pressed with Enter sent the focus to the page's start (the row is redrawn);
    Enter in the sample field did nothing; a keyboard user could not close the reply."""
    channels = ", ".join(f'"{i}"' for i in range(1, 13))
    devices = tmp_path / "twelve.yml"
    devices.write_text(
        "devices:\n"
        "  - {name: dev-counter, driver: example_counter, address: example-addr, "
        f"channels: [{channels}], pollrate: 1}}\n"
        "pipelines:\n"
        "  - name: pip-*\n"
        "    devices: [{role: counter, device: dev-counter, channel: each}]\n"
    )
    url = f"mqtt://127.0.0.1:{broker.port}"
    async with (
        inproc_stack(broker.port, tmp_path / "st", instance, devices=str(devices), components=12),
        running_dashboard(url, instance) as dash,
        chromium_page() as (_, page),
    ):
        await page.goto(dash.address())
        await page.locator('#pipelines tr[data-key="pip-12"]').wait_for(timeout=10_000)
        keys = await page.evaluate(
            "() => [...document.querySelectorAll('#pipelines tbody tr')].map(r => r.dataset.key)"
        )
        assert keys == [f"pip-{i}" for i in range(1, 13)], keys
        picks = await page.evaluate(
            "() => [...document.getElementById('pc-pipeline').options].map(o => o.value)"
        )
        assert picks == keys, picks

        # Enter in the sample field loads it
        await page.select_option("#pc-pipeline", "pip-2")
        await page.fill("#pc-sample", "s2")
        await page.press("#pc-sample", "Enter")
        row = page.locator('#pipelines tr[data-key="pip-2"]')
        await row.locator("td.sample", has_text="s2").wait_for(timeout=10_000)
        # Escape closes the reply
        await page.locator("#reply", has_text="loaded").wait_for(timeout=5_000)
        await page.keyboard.press("Escape")
        await page.locator("#reply").wait_for(state="hidden", timeout=5_000)

        # the row's `ready`, pressed with Enter: the focus stays in the row once the row
        # is redrawn (on the row itself: `ready` is gone, and no other control takes it,
        # `eject` least of all)
        ready = row.locator('button.prow[data-op="pipeline_ready"]')
        await ready.focus()
        await page.keyboard.press("Enter")
        await row.locator("td.ready", has_text="ready").wait_for(timeout=10_000)
        await ready.wait_for(state="detached", timeout=5_000)
        focused = await page.evaluate(
            "() => [document.activeElement.tagName, document.activeElement.dataset.key]"
        )
        assert focused == ["TR", "pip-2"], focused
        # a link redrawn with its row keeps the focus, which no button of the row takes
        # (a review: a job's link redrawn put it on the row's cancel; here the row's
        # component link, the row redrawn by an eject that adds `load…`)
        link = row.locator("a.cmp").first
        href = await link.get_attribute("href")
        await link.focus()
        await page.evaluate("() => window.command('pipeline_eject', {pipeline: 'pip-2'})")
        await row.locator('button.prow[data-op="pipeline_load"]').wait_for(timeout=10_000)
        focused = await page.evaluate(
            "() => [document.activeElement.tagName, document.activeElement.getAttribute('href')]"
        )
        assert focused == ["A", href], focused
