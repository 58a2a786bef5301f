"""The region view's trend charts in headless Chromium, on the federation test's region of three groups:
the history comes from the region coordinator's signed, retained rollup (its coord/rollup), so it is
there after a reload with localStorage cleared; the group page's own sampler records nothing while the
page shows a region; and the page says which Ed25519 verifier it uses (WebCrypto on 127.0.0.1, the
bundled JavaScript one in Web Workers when asked), both showing every group.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from prsm_edge.coordinator.rollups import RegionRollupPublisher, RollupOptions
from prsm_edge.protocol.rollups import Resolution
from tests.browser.conftest import CHROMIUM_FLAGS, chromium_path
from tests.browser.test_region_dashboard import DIST, wait_for
from tests.conftest import free_port, require_mosquitto
from tests.integration.test_federation import REGION, RSITE, region_of_three

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.timeout(180)]

FAST = RollupOptions(sample_s=0.2, publish_s=0.5, resolutions=(Resolution(1, 900), Resolution(60, 60)))
ALL_ALIVE = "document.querySelector('[data-test=\"region-alive\"]')?.textContent === '3/3'"


async def test_region_trends_survive_a_reload_with_storage_cleared(tmp_path: Path, artifacts: Path) -> None:
    require_mosquitto()
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    if not (DIST / "index.html").is_file():
        pytest.fail("gateway/dashboard/dist/index.html is missing: run scripts/build-dashboard")
    ws = free_port()
    web = f"listener {ws} 127.0.0.1\nprotocol websockets\nhttp_dir {DIST}\n"
    errors: list[str] = []
    async with region_of_three(tmp_path, region_broker_extra=web) as rig, async_playwright() as p:
        # The same store, a faster cadence: a few seconds of history instead of minutes.
        old = rig.region.rollups
        rig.region.rollups = RegionRollupPublisher(RSITE, REGION, old.store, FAST)
        await asyncio.sleep(3.0)
        browser = await p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS, headless=True)
        page = await browser.new_page(viewport={"width": 1500, "height": 1000})
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        key = rig.region.identity.public_key.hex()
        url = f"http://127.0.0.1:{ws}/#site={RSITE}&group={REGION}&key={key}"
        await page.goto(url)
        await wait_for(page, ALL_ALIVE, 30)
        # 127.0.0.1 is a secure context and Debian's Chromium has Ed25519 in WebCrypto.
        assert "WebCrypto" in await page.locator('[data-test="verifier"]').inner_text()
        assert await page.evaluate("window.prsmPipeline.kind") == "webcrypto"
        both = "(window.prsmRegionTrendRows || []).filter((r) => r[2] === 3 && r[4] === 3)"
        await wait_for(page, f"{both}.length >= 2", 20)  # three nodes online, three groups alive
        await asyncio.sleep(6.0)  # more than one period of the group page's sampler (5 s)
        trends_key = f"prsm-dash:{RSITE}/{REGION}:trends"
        assert await page.evaluate(f"localStorage.getItem('{trends_key}')") is None  # no zero samples

        # Forget everything the page kept, reload: the history comes back from the region's rollup.
        await page.evaluate("localStorage.clear()")
        loaded_s = time.time()
        await page.reload()
        older = f"(window.prsmRegionTrendRows || []).filter((r) => r[0] < {loaded_s - 1} && r[2] === 3)"
        await wait_for(page, f"{older}.length >= 3", 20)
        rows = await page.evaluate("window.prsmRegionTrendRows")
        assert all(r[5] in (0, None) for r in rows)  # no group was dead
        assert await page.evaluate("window.prsmRegion.counts.unverified") == 0
        # The table's filter: every group is well, so none needs attention; all three again after.
        await page.locator("input[data-attention]").click()
        listed = "document.querySelector('[data-test=\"region-listed\"]')?.textContent"
        await wait_for(page, f"{listed} === '0'", 5)
        assert await page.locator("#region-groups tr").count() == 0
        await page.locator("input[data-attention]").click()
        await wait_for(page, "document.querySelectorAll('#region-groups tr').length === 3", 5)
        await page.screenshot(path=str(artifacts / "dashboard-region-trends.png"), full_page=True)

        # The JavaScript verifier, asked for in the URL: said on the page, every group still shown.
        js = await browser.new_page(viewport={"width": 1500, "height": 1000})
        js.on("pageerror", lambda exc: errors.append(str(exc)))
        await js.goto(url + "&verifier=js")
        await wait_for(js, ALL_ALIVE, 30)
        assert "JavaScript" in await js.locator('[data-test="verifier"]').inner_text()
        assert await js.evaluate("window.prsmPipeline.kind") == "javascript"
        assert await js.evaluate("window.prsmPipeline.threads") >= 2  # in Web Workers, off the page's thread
        assert await js.evaluate("window.prsmRegion.counts.unverified") == 0
        await browser.close()
    assert errors == []
