"""The operator dashboard against a real region in headless Chromium: three groups, each its own
Mosquitto (with the rendered bridge), coordinator, agent and gateway, reaching one regional Mosquitto and
regional coordinator (the federation test's rig); the page served by the regional Mosquitto's WebSocket
listener (http_dir).

What it proves: the page shows every group of the region with the region's signed word on it (alive, the
pinned key) and its gateway's link; a group whose coordinator stops is shown dead; a gateway going away
is shown as its link down; a forged group summary is flagged and not believed; and no request leaves
loopback. A screenshot of the region view is saved beside the group dashboard's.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import pytest
from nacl.signing import SigningKey

from prsm_edge.io.clock import now_ms
from prsm_edge.protocol import messages as m
from prsm_edge.protocol import topics as t
from prsm_edge.protocol.envelope import Signer
from prsm_edge.protocol.messages import GroupSummary
from prsm_edge.protocol.uplink import Pacer
from tests.browser.conftest import CHROMIUM_FLAGS, REPO, chromium_path
from tests.conftest import free_port, require_mosquitto
from tests.integration.groupkit import cpu, eventually
from tests.integration.test_federation import REGION, RSITE, region_of_three
from tests.integration.test_region_status import prsm

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.timeout(180)]

LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}
DIST = REPO / "gateway" / "dashboard" / "dist"


async def wait_for(page: Any, script: str, timeout_s: float) -> float:
    """Wait until ``script`` is true in the page; return how long it took (reported, not asserted)."""
    start = time.monotonic()
    await page.wait_for_function(f"() => {script}", timeout=timeout_s * 1000)
    return time.monotonic() - start


def row(group: str, attr: str) -> str:
    return f"document.querySelector('#region-groups tr[data-group=\"{group}\"]')?.dataset.{attr}"


async def forge_summary(port: int) -> str:
    """Another key's summary for lab/g1, retained on the region's broker (anonymous: anyone may publish)."""
    forged = GroupSummary(
        site="lab", group="g1", epoch=9, tier=1, members=500, online=500, capacity={"compute_cpu": 4096.0},
        trust={"hardware_attested": 500}, utilization=0.0,
    )  # fmt: skip
    topic = t.unit(t.Kind.UNIT_SUMMARY, RSITE, REGION, "lab", "g1")
    async with aiomqtt.Client("127.0.0.1", port, identifier="forger") as c:
        await c.publish(topic, Signer(SigningKey.generate()).seal(forged, now_ms()), qos=1, retain=True)
    return topic


async def forge_standing(port: int) -> tuple[str, str]:
    """On the (anonymous) regional broker: a standing for lab/g1 that pins a forger's key, signed by the
    forger, and a summary signed with that key. Neither may be believed: the standing is not the region's."""
    forger = Signer(SigningKey.generate())
    standing = m.UnitState(
        site="lab", group="g1", region=REGION, region_epoch=1, alive=True, public_key=forger.public_key
    )
    summary = GroupSummary(
        site="lab", group="g1", epoch=9, tier=1, members=7, online=7, capacity={"compute_cpu": 777.0},
        trust={}, utilization=0.0,
    )  # fmt: skip
    state_topic = t.unit(t.Kind.UNIT_STATE, RSITE, REGION, "lab", "g1")
    summary_topic = t.unit(t.Kind.UNIT_SUMMARY, RSITE, REGION, "lab", "g1")
    async with aiomqtt.Client("127.0.0.1", port, identifier="forger2") as c:
        await c.publish(state_topic, forger.seal(standing, now_ms()), qos=1, retain=True)
        await c.publish(summary_topic, forger.seal(summary, now_ms()), qos=1, retain=True)
    return state_topic, summary_topic


async def test_region_dashboard_shows_every_group_their_links_deaths_and_forgeries(
    tmp_path: Path, artifacts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_mosquitto()
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    if not (DIST / "index.html").is_file():
        pytest.fail("gateway/dashboard/dist/index.html is missing: run scripts/build-dashboard")
    ws = free_port()
    web = f"listener {ws} 127.0.0.1\nprotocol websockets\nhttp_dir {DIST}\n"
    requests: list[str] = []
    outside: list[str] = []
    errors: list[str] = []
    async with region_of_three(tmp_path, region_broker_extra=web) as rig, async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS, headless=True)
        context = await browser.new_context(viewport={"width": 1500, "height": 1000})

        async def record(route: Any) -> None:
            target = route.request.url
            requests.append(target)
            if target.startswith(("blob:", "data:")) or (urlsplit(target).hostname or "") in LOOPBACK:
                await route.continue_()
            else:
                outside.append(target)
                await route.abort()

        await context.route("**/*", record)
        page = await context.new_page()
        page.on("websocket", lambda socket: requests.append(socket.url))
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        key = rig.region.identity.public_key.hex()
        await page.goto(f"http://127.0.0.1:{ws}/#site={RSITE}&group={REGION}&key={key}")

        # Every group, alive by the region's signed word, its link up, nothing unverified.
        shown_s = await wait_for(
            page, "document.querySelectorAll('#region-groups tr[data-status=\"alive\"]').length === 3", 30
        )
        await wait_for(
            page, "document.querySelectorAll('#region-groups tr[data-link=\"up\"]').length === 3", 15
        )
        assert await page.locator('[data-test="region-unverified"]').inner_text() == "0"
        assert await page.locator('[data-test="region-alive"]').inner_text() == "3/3"
        g1_key = rig.groups["g1"].coordinator.identity.public_key.hex()
        assert await page.evaluate("window.prsmRegion.units.get('lab/g1').standing.public_key.length") == 32
        assert g1_key[:12] in await page.locator('#region-groups tr[data-group="lab/g1"]').inner_text()
        assert not await page.locator("#roster").is_visible()  # the group-only cards are hidden
        # The region's totals: three groups of one 4-core member each.
        await wait_for(page, "window.prsmRegion.summary?.online === 3", 10)
        # Drill-down: a click shows the group's details and where to open its roster, key included.
        await page.locator('#region-groups tr[data-group="far/g3"]').click()
        await wait_for(page, "!!document.querySelector('[data-test=\"drill-fragment\"]')", 5)
        fragment = await page.locator('[data-test="drill-fragment"]').inner_text()
        assert fragment == f"#site=far&group=g3&key={rig.groups['g3'].coordinator.identity.public_key.hex()}"
        await page.screenshot(path=str(artifacts / "dashboard-region.png"), full_page=True)

        # A forged summary for lab/g1 (another key): flagged and counted, the capacity unchanged.
        topic = await forge_summary(rig.broker.port)
        flagged_s = await wait_for(page, f"Number({row('lab/g1', 'unverifiedCount')}) >= 1", 15)
        assert topic in await page.locator('[data-test="region-failures"]').inner_text()
        g1_cpu = "window.prsmRegion.units.get('lab/g1').summary.capacity.compute_cpu"
        assert await page.evaluate(g1_cpu) == 4.0
        # A forged standing that would pin the forger's key for lab/g1, then a summary under that key.
        state_topic, _ = await forge_standing(rig.broker.port)
        await wait_for(page, f"Number({row('lab/g1', 'unverifiedCount')}) >= 3", 15)
        failures = await page.locator('[data-test="region-failures"]').inner_text()
        assert state_topic in failures and "not by the region's coordinator" in failures
        g1_pin = "window.prsmRegion.units.get('lab/g1').standing.public_key"
        assert (
            await page.evaluate(f"Array.from({g1_pin}, (b) => b.toString(16).padStart(2, '0')).join('')")
            == g1_key
        )
        assert await page.evaluate(g1_cpu) == 4.0
        assert await page.evaluate(row("lab/g1", "status")) == "alive"

        # lab/g2's coordinator (and member) stop; its gateway stays and reports it: the group is dead.
        for task in rig.groups["g2"].tasks[:2]:
            task.cancel()
        dead_s = await wait_for(page, f"{row('lab/g2', 'status')} === 'dead'", 20)
        assert await page.evaluate(row("lab/g2", "link")) == "up"

        # far/g3's gateway goes away: its link is shown down (and the region calls the group dead).
        rig.groups["g3"].tasks[2].cancel()
        down_s = await wait_for(page, f"{row('far/g3', 'link')} === 'down'", 20)
        await wait_for(page, f"{row('far/g3', 'status')} === 'dead'", 10)
        assert await page.evaluate(row("lab/g1", "status")) == "alive"
        await page.screenshot(path=str(artifacts / "dashboard-region-down.png"), full_page=True)
        # The terminal's view (Python, PyNaCl) and the page's (JavaScript) agree on every group.
        code, out, err = await prsm(
            tmp_path / "cli", "status", "--broker", rig.broker.url, "--site", RSITE, "--group", REGION,
            "--key", key, "--json",
        )  # fmt: skip
        assert code == 0, err
        terminal = {f"{g['site']}/{g['group']}": (g["status"], g["link"]) for g in json.loads(out)["groups"]}
        page_view = await page.evaluate(
            "Object.fromEntries([...document.querySelectorAll('#region-groups tr')]"
            ".map((r) => [r.dataset.group, [r.dataset.status, r.dataset.link]]))"
        )
        assert terminal == {k: tuple(v) for k, v in page_view.items()}, json.loads(out)["failures"]
        assert terminal == {"lab/g1": ("alive", "up"), "lab/g2": ("dead", "up"), "far/g3": ("dead", "down")}
        await context.close()
        await browser.close()

    assert errors == []
    assert outside == [], f"requests left loopback: {outside}"
    assert requests and all(
        (urlsplit(r).hostname or "") in LOOPBACK or r.startswith("blob:") for r in requests
    )
    assert any(r.startswith(f"ws://127.0.0.1:{ws}") for r in requests)
    figures = (
        f"region dashboard: 3 groups shown {shown_s:.1f} s after load, forged summary flagged in "
        f"{flagged_s:.1f} s, a stopped group shown dead in {dead_s:.1f} s, a gateway's link down in "
        f"{down_s:.1f} s\n"
    )
    (artifacts / "timings-region.txt").write_text(figures)
    with capsys.disabled():
        sys.stdout.write("\n" + figures)


async def test_region_dashboard_shows_a_gateway_replaying_its_backlog_after_an_outage(
    tmp_path: Path, artifacts: Path
) -> None:
    """The regional broker goes away and comes back: the page reconnects and shows g1's gateway replaying
    what it buffered meanwhile (buffered count falling), then the replayed records flagged historical."""
    require_mosquitto()
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    ws = free_port()
    web = f"listener {ws} 127.0.0.1\nprotocol websockets\nhttp_dir {DIST}\n"
    errors: list[str] = []
    async with region_of_three(tmp_path, region_broker_extra=web) as rig, async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS, headless=True)
        page = await browser.new_page(viewport={"width": 1500, "height": 1000})
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        key = rig.region.identity.public_key.hex()
        await page.goto(f"http://127.0.0.1:{ws}/#site={RSITE}&group={REGION}&key={key}")
        await wait_for(
            page, "document.querySelectorAll('#region-groups tr[data-link=\"up\"]').length === 3", 30
        )

        g1 = rig.groups["g1"]
        g1.gateway.pacer = Pacer(2.0, 1)  # replay slowly enough to watch
        rig.broker.stop()  # the uplink is cut (and the page's broker is gone too)
        await eventually(lambda: not g1.gateway.uplink.connected.is_set(), what="gateway sees the cut")
        coord = g1.coordinator
        for i in range(15):  # lease reports the gateway must buffer on disk meanwhile
            lease = m.Lease(
                lease_id=f"l{i}", task_id=f"task{i}", node=g1.agent.node_id, resources=cpu(1.0),
                start_ms=now_ms(), end_ms=now_ms() + 3_600_000, rate_micro_per_hour=0,
            )  # fmt: skip
            await coord.session.publish(t.fed_report("lab", "g1"), coord.signer.seal(lease, now_ms()), qos=1)
        await eventually(lambda: len(g1.gateway.buffer) == 15, what="15 items buffered on disk")
        rig.broker.restart()

        await wait_for(page, f"{row('lab/g1', 'link')} === 'replaying'", 30)
        cell = "document.querySelector('#region-groups tr[data-group=\"lab/g1\"] td:nth-child(10)')"
        assert (
            int(await page.evaluate(f"{cell}.textContent")) > 0
        )  # the buffered count, from the signed state
        await page.locator('#region-groups tr[data-group="lab/g1"]').click()
        await wait_for(page, "!!document.querySelector('#region-detail h3')", 5)
        await page.screenshot(path=str(artifacts / "dashboard-region-replay.png"), full_page=True)
        await wait_for(page, f"{row('lab/g1', 'link')} === 'up'", 30)
        # The replayed records the page saw (the first may go by before its own reconnect) are historical.
        seen = await page.evaluate(
            "((u) => [u.records, u.historical])(window.prsmRegion.units.get('lab/g1'))"
        )
        assert seen[0] >= 5 and seen[1] == seen[0], seen
        assert await page.evaluate("window.prsmRegion.counts.unverified") == 0
        await browser.close()
    assert errors == []
