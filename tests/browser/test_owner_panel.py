"""The owner panel in headless Chromium, served by a real `join` agent's local API under /ui/.

What it proves: the link `prsm-edge owner pair` prints pairs a non-extractable WebCrypto Ed25519 key made
in the page; a slider change is a signed request that reaches the agent (its status shows the new value)
and is acknowledged by a response the page verified as signed by the node; the same change from a
browser whose key is not paired is refused (`not_owner`) and changes nothing; no request leaves loopback.
"""

from __future__ import annotations

import json
import re
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import free_port, require_mosquitto
from tests.integration.test_cli_group import cli, wait_line
from tests.integration.test_viewer_status import prsm

pytestmark = [pytest.mark.browser, pytest.mark.integration]

SITE, GROUP = "lab", "own"


def status(api: str, node: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{api}/api/v1/resources/status/{node}", timeout=10) as res:
        answer: dict[str, Any] = json.loads(res.read())
    return answer["result"]


def local_api(workdir: Path, timeout_s: float = 30.0) -> dict[str, str]:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for path in workdir.glob("groups/*/local-api.json"):
            try:
                data: dict[str, str] = json.loads(path.read_text())
                return data
            except ValueError:
                pass
        time.sleep(0.2)
    raise AssertionError(f"the agent's local API did not start under {workdir}")


def test_a_paired_owner_changes_a_setting_and_an_unpaired_browser_cannot(
    tmp_path: Path, browser: Any, artifacts: Path
) -> None:
    require_mosquitto()
    home = tmp_path / "home"
    port, ws, api_port = free_port(), free_port(), free_port()
    node_dir = tmp_path / "n"
    with cli(home) as run:
        coord = run.start(
            "coordinate", "--host", "127.0.0.1", "--port", str(port), "--ws-port", str(ws), "--no-advertise",
            "--group", GROUP, "--site", SITE, "--seconds", "90", "--workdir", str(tmp_path / "c"),
            watch=True,
        )  # fmt: skip
        wait_line(coord, "mosquitto broker at", 15)
        run.start(
            "join", "--broker", f"mqtt://127.0.0.1:{port}", "--group", GROUP, "--site", SITE, "--no-attest",
            "--local-api-port", str(api_port), "--workdir", str(node_dir),
        )  # fmt: skip
        wait_line(coord, "1/1 online", 40)
        agent = local_api(node_dir)
        node, api = agent["node"], agent["url"]
        before = status(api, node)["settings"]["cpu_allocation_percentage"]
        wanted = 0.35 if before != 0.35 else 0.45

        paired = prsm(home, "owner", "--workdir", str(node_dir), "pair")
        assert paired.returncode == 0, paired.stderr
        match = re.search(r"(http://\S+/ui/#pair=\S+)", paired.stdout)
        assert match is not None, paired.stdout
        link = match.group(1)
        assert f"node={node}" in link and urlsplit(link).port == api_port

        requests: list[str] = []

        def loopback_only(route: Any) -> None:
            requests.append(route.request.url)
            if (urlsplit(route.request.url).hostname or "") in ("127.0.0.1", "localhost"):
                route.continue_()
            else:
                route.abort()

        # The owner's browser: pair, then move the CPU slider and apply.
        owner = browser.new_context(viewport={"width": 1300, "height": 900})
        owner.route("**/*", loopback_only)
        page = owner.new_page()
        page.goto(link)
        page.wait_for_function(
            "() => document.getElementById('mode').textContent.includes('paired;')", timeout=20_000
        )
        extractable = page.evaluate(
            """() => new Promise((resolve) => {
                 const open = indexedDB.open('prsm-owner', 1)
                 open.onsuccess = () => {
                   const get = open.result.transaction('keys').objectStore('keys').get('owner')
                   get.onsuccess = () => resolve(get.result.privateKey.extractable)
                 }
               })"""
        )
        assert extractable is False
        page.wait_for_selector('input[data-setting="cpu_allocation_percentage"]', timeout=15_000)
        page.locator('input[data-setting="cpu_allocation_percentage"]').fill(str(wanted))
        page.locator('input[data-setting="schedule"]').fill("Mon-Sun 00:00-24:00")  # the weekly schedule
        page.locator('input[data-setting="optimize_bounds"]').fill("cpu_allocation_percentage=0.2..0.6")
        page.click("#apply")
        page.wait_for_function("() => document.getElementById('result').dataset.code !== ''", timeout=15_000)
        assert page.locator("#result").get_attribute("data-code") == "ok", page.locator(
            "#result"
        ).inner_text()
        assert page.locator("#result").get_attribute("data-acked") == "true"
        assert "acknowledged (signed by the node)" in page.locator("#result").inner_text()
        settings = status(api, node)["settings"]
        assert settings["cpu_allocation_percentage"] == wanted  # it reached the agent
        assert settings["schedule"] == "Mon-Sun 00:00-24:00"
        assert settings["optimize_bounds"] == "cpu_allocation_percentage=0.2..0.6"  # stored by the agent
        # Advice: a signed dry run of auto-optimize inside the sliders' bounds, shown before anything changes.
        page.evaluate("document.getElementById('result').dataset.code = ''")
        page.click("#advise")
        page.wait_for_function("() => document.getElementById('result').dataset.code !== ''", timeout=30_000)
        assert page.locator("#result").get_attribute("data-code") == "ok", page.locator(
            "#result"
        ).inner_text()
        page.wait_for_function("() => document.getElementById('advice').textContent.trim() !== ''")
        # The preview names the owner's standing bounds the node applied (not only the sliders' ranges).
        shown = page.locator('[data-test="optimize-bounds"]').inner_text()
        assert "cpu_allocation_percentage 0.2–0.6" in shown, shown
        assert (
            status(api, node)["settings"]["cpu_allocation_percentage"] == wanted
        )  # a dry run changes nothing
        page.wait_for_timeout(500)
        page.screenshot(path=str(artifacts / "owner-panel.png"), full_page=True)
        owner.close()

        # Another browser (no paired key) opens the panel: its change is signed but refused.
        stranger = browser.new_context()
        stranger.route("**/*", loopback_only)
        page = stranger.new_page()
        page.goto(f"{api}/ui/index.html#node={node}")
        page.wait_for_function(
            "() => document.getElementById('mode').textContent.includes('no paired')", timeout=15_000
        )
        page.wait_for_selector('input[data-setting="cpu_allocation_percentage"]', timeout=15_000)
        page.locator('input[data-setting="cpu_allocation_percentage"]').fill("0.9")
        page.click("#apply")
        page.wait_for_function("() => document.getElementById('result').dataset.code !== ''", timeout=15_000)
        assert page.locator("#result").get_attribute("data-code") == "not_owner"
        assert (
            "refused by the node" in page.locator("#result").inner_text()
        )  # the refusal, signed by the node
        assert status(api, node)["settings"]["cpu_allocation_percentage"] == wanted
        stranger.close()

    assert requests and all((urlsplit(r).hostname or "") == "127.0.0.1" for r in requests), requests


def test_the_panel_from_another_host_is_read_only_and_says_why(browser: Any, tmp_path: Path) -> None:
    """Opened as http://owner.test (not this machine's loopback name), the page is not a secure context:
    no WebCrypto, so no owner key; it must say so and offer no change. (A name mapped to 127.0.0.1 in the
    browser stands in for a LAN address, and a plain file server for the agent, which refuses other Host
    names.)"""
    import http.server
    import shutil
    import threading

    from prsm_edge.io.brokerinfo import owner_panel_dir

    panel = owner_panel_dir()
    assert panel is not None
    shutil.copy(panel / "index.html", tmp_path / "index.html")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    context = None
    try:
        port = server.server_address[1]
        context = browser.new_context()
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{port}/index.html#node=nexamplenode00000")
        assert page.evaluate("window.isSecureContext") is True  # loopback is secure: the control case
        page.wait_for_function("() => document.getElementById('mode').textContent !== ''")
        assert "Read-only" not in page.locator("#mode").inner_text()
        context.close()
        context = browser.new_context()
        page = context.new_page()
        page.goto(f"http://owner.test:{port}/index.html#node=nexamplenode00000")
        assert page.evaluate("window.isSecureContext") is False
        page.wait_for_function("() => document.getElementById('mode').textContent.includes('Read-only')")
        assert "WebCrypto" in page.locator("#mode").inner_text()
        assert page.locator("#apply").is_disabled() and page.locator("#pause").is_disabled()
    finally:
        if context is not None:
            context.close()
        server.shutdown()
        server.server_close()
