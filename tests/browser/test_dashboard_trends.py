"""The dashboard's trend charts after a reload with localStorage cleared: the history comes from the
coordinator's signed, retained rollup (coord/rollup), not from the page's own buffer.

A real group (Mosquitto with dynamic security, a coordinator sampling every 0.2 s into 1-second
buckets, two agents) runs in a thread; the page is served by Mosquitto's WebSocket listener to a viewer
login, in headless Chromium.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from prsm_edge.commands.viewer import dashboard_url
from prsm_edge.coordinator.rollups import RollupOptions
from prsm_edge.io.dynsec import ROLE_VIEWER
from prsm_edge.localgroup import host_group
from prsm_edge.node.agent import Agent
from prsm_edge.protocol.rollups import Resolution
from tests.conftest import require_mosquitto
from tests.integration.groupkit import GROUP, SITE, agent_options, eventually, running

pytestmark = [pytest.mark.browser, pytest.mark.integration]

FAST = RollupOptions(sample_s=0.2, publish_s=0.5, resolutions=(Resolution(1, 900), Resolution(60, 60)))


class GroupThread(threading.Thread):
    """The group in its own event loop (Playwright's sync API holds the test's thread)."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(daemon=True)
        self.workdir = workdir
        self.url = ""
        self.ready = threading.Event()
        self.failed: BaseException | None = None
        self._done: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # handed to the test thread
            self.failed = exc
            self.ready.set()

    async def _main(self) -> None:
        self._loop, self._done = asyncio.get_running_loop(), asyncio.Event()
        async with host_group(
            self.workdir / "host", site=SITE, group=GROUP, verify=False, rollup=FAST
        ) as host:
            assert host.dynsec is not None and host.broker.ws_port is not None
            await host.dynsec.add_client("viewer-ops", "ops-secret", ROLE_VIEWER)
            agents = [Agent(agent_options(host.broker.url, self.workdir / f"a{i}")) for i in range(2)]
            async with running(host.coordinator, *agents):
                await eventually(lambda: host.coordinator.group.online_count == 2, 30, "two members")
                await asyncio.sleep(3.0)  # a few seconds of history in the rollup
                self.url = dashboard_url(
                    "127.0.0.1",
                    host.broker.ws_port,
                    site=SITE,
                    group=GROUP,
                    username="viewer-ops",
                    password="ops-secret",
                )
                self.ready.set()
                await self._done.wait()

    def stop(self) -> None:
        if self._loop is not None and self._done is not None:
            self._loop.call_soon_threadsafe(self._done.set)
        self.join(20)


def history_before(page: Any, before_s: float) -> int:
    """How many chart rows with both nodes online lie before ``before_s`` (Unix seconds)."""
    rows = page.evaluate("window.prsmTrendRows || []")
    return sum(1 for row in rows if row[0] < before_s and row[2] == 2)


def test_the_trend_charts_show_history_after_a_reload_with_storage_cleared(
    tmp_path: Path, browser: Any, artifacts: Path
) -> None:
    require_mosquitto()
    group = GroupThread(tmp_path)
    group.start()
    try:
        assert group.ready.wait(60), "the group did not start"
        if group.failed is not None:
            raise group.failed
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(group.url)
        page.wait_for_function("() => window.prsmModel && window.prsmModel.rollup !== null", timeout=20_000)

        # Forget everything the page kept, then reload: the history must come back from the rollup.
        page.evaluate("localStorage.clear()")
        loaded_s = time.time()
        page.reload()
        older = f"(window.prsmTrendRows || []).filter((r) => r[0] < {loaded_s - 1} && r[2] === 2)"
        page.wait_for_function(f"() => {older}.length >= 2", timeout=20_000)
        assert history_before(page, loaded_s - 1) >= 2
        # The rollup came from the pinned coordinator and nothing on the page failed to verify.
        assert page.locator('[data-test="unverified-count"]').inner_text() == "0"
        page.screenshot(path=str(artifacts / "dashboard-trends.png"), full_page=True)
        assert not errors, errors
        context.close()
    finally:
        group.stop()
