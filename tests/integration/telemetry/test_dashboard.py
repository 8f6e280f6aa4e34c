"""The dashboard in headless Chromium: it loads with no external asset, goes live over SSE, and its numbers change
while traffic flows, without a reload. A screenshot is saved under the test's tmp_path."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.harness import http
from tests.integration.telemetry.cdp import CHROMIUM, Browser, Page
from tests.integration.telemetry.conftest import Pair

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is absent (Debian packages chromium)")

ROWS = """JSON.stringify([...document.querySelectorAll('#traffic tbody tr')].map(
  tr => [...tr.children].map(td => td.textContent)))"""


def traffic(rows_json: str) -> dict[tuple[str, str], list[str]]:
    return {(r[0], r[1]): r for r in json.loads(rows_json) if len(r) == 8}


def test_dashboard_is_live_and_self_contained(pair: Pair, tmp_path: Path) -> None:
    page_html = http("GET", pair.a.admin + "/")
    assert page_html.status == 200 and page_html.headers["content-type"].startswith("text/html")
    text = page_html.body.decode()
    assert "<script src" not in text and "<link" not in text and "http://" not in text and "https://" not in text

    def burst(n: int) -> None:
        for _ in range(n):
            assert http("GET", f"http://127.0.0.1:{pair.a.node.outbound}/headers/d", headers={"Host": "inventory"}
                        ).status == 200

    shots: list[bytes] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        browser = Browser(tmp_path / "profile")
        try:
            async with Page(browser) as page:
                await loop.run_in_executor(None, burst, 5)
                await page.navigate(pair.a.admin + "/")
                await page.wait_for("document.getElementById('live').className === 'on'", what="the SSE stream")
                first = traffic(await page.wait_for(
                    f"(() => {{ const r = {ROWS}; return r.includes('inventory') ? r : null; }})()",
                    what="the inventory row"))
                before = int(first["outbound", "inventory"][4])
                assert before >= 5
                sequence = await page.evaluate("document.getElementById('node').textContent")
                await loop.run_in_executor(None, burst, 20)
                # the page updates itself: no reload, the count grows by what was sent
                grown = (f"(() => {{ const r = JSON.parse({ROWS}); const row = r.find(x => x[0] === 'outbound' "
                         f"&& x[1] === 'inventory'); return row && +row[4] >= {before + 20}; }})()")
                await page.wait_for(grown, what="the request count to grow by 20")
                rate = float(await page.evaluate("document.getElementById('c-rate').textContent"))
                assert rate > 0
                assert await page.evaluate("document.getElementById('node').textContent") != sequence
                members = await page.evaluate("document.querySelector('#members tbody').textContent")
                assert "node-a" in members and "node-b" in members
                catalog = await page.evaluate("document.querySelector('#catalog tbody').textContent")
                assert "inventory" in catalog and "healthy" in catalog
                clusters = await page.wait_for("document.querySelector('#clusters tbody').textContent"
                                               ".includes('inventory') && "
                                               "document.querySelector('#clusters tbody').textContent",
                                               what="the clusters panel")
                assert "closed" in clusters
                shots.append(await page.screenshot())
        finally:
            browser.close()

    asyncio.run(scenario())
    [png] = shots
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    (tmp_path / "dashboard.png").write_bytes(png)


def test_snapshot_json(pair: Pair) -> None:
    snapshot = http("GET", pair.a.admin + "/dashboard/snapshot").json()
    assert snapshot["node"] == "node-a"
    assert {"members", "catalog", "traffic", "clusters", "deadLetters", "telemetry"} <= set(snapshot)
    assert snapshot["telemetry"]["tracing"]["ratio"] == 1.0
