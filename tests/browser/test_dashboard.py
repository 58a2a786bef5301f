"""The operator dashboard in headless Chromium against a real group: `coordinate` and `join` processes on
Mosquitto, the page served by Mosquitto's own WebSocket listener (http_dir), a viewer login.

What it proves: the page loads with nothing but the broker; it shows the live roster; it follows a node
joining and a node killed (SIGKILL: the broker's Last Will); it flags a tampered retained message; its
trend buffers survive a reload; and no request leaves loopback (every request and WebSocket is recorded,
anything not to 127.0.0.1 is refused and fails the test).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import pytest

from tests.conftest import free_port, require_mosquitto
from tests.integration.test_cli_group import Cli, cli, wait_line
from tests.integration.test_viewer_status import prsm

pytestmark = [pytest.mark.browser, pytest.mark.integration]

SITE, GROUP = "lab", "web"
LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}


def start_node(run: Cli, port: int, workdir: Path) -> Any:
    return run.start(
        "join", "--broker", f"mqtt://127.0.0.1:{port}", "--group", GROUP, "--site", SITE, "--no-attest",
        "--workdir", str(workdir),
    )  # fmt: skip


def node_id(workdir: Path) -> str:
    from prsm_edge.identity import load_or_create

    return load_or_create(workdir / "identity").node_id


def credentials(workdir: Path) -> tuple[str, str]:
    (path,) = workdir.glob("groups/*/broker-credentials.json")
    data = json.loads(path.read_text())
    return str(data["username"]), str(data["password"])


async def tamper_birth(port: int, workdir: Path) -> str:
    """With a node's stolen broker login (not its key), republish its retained birth with one bit flipped."""
    username, password = credentials(workdir)
    topic = f"prsm/v1/{SITE}/{GROUP}/node/{username}/birth"
    async with aiomqtt.Client(
        "127.0.0.1", port, username=username, password=password, identifier="tamper"
    ) as c:
        await c.subscribe(topic)
        async with asyncio.timeout(10):
            async for message in c.messages:
                assert isinstance(message.payload, bytes)
                data = bytearray(message.payload)
                break
        data[-70] ^= 0x01  # inside the signed payload, before the signature
        await c.publish(topic, bytes(data), qos=1, retain=True)
    return topic


def rows(page: Any, state: str | None = None) -> int:
    selector = "#roster tr" + (f'[data-state="{state}"]' if state else "")
    return int(page.locator(selector).count())


def wait_for(page: Any, script: str, timeout_s: float) -> float:
    """Wait until ``script`` is true in the page; return how long it took (reported, not asserted)."""
    start = time.monotonic()
    # As a function, not a string: the page's CSP forbids eval, which a string predicate needs.
    page.wait_for_function(f"() => {script}", timeout=timeout_s * 1000)
    return time.monotonic() - start


def test_dashboard_follows_a_live_group_and_flags_forgeries(
    tmp_path: Path, browser: Any, artifacts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_mosquitto()
    home = tmp_path / "home"
    port, ws = free_port(), free_port()
    nodes = [tmp_path / f"n{i}" for i in range(3)]
    with cli(home) as run:
        coord = run.start(
            "coordinate", "--host", "127.0.0.1", "--port", str(port), "--ws-port", str(ws), "--no-advertise",
            "--group", GROUP, "--site", SITE, "--seconds", "110", "--workdir", str(tmp_path / "c"),
            watch=True,
        )  # fmt: skip
        wait_line(coord, "mosquitto broker at", 15)
        procs = [start_node(run, port, nodes[0]), start_node(run, port, nodes[1])]
        wait_line(coord, "2/2 online", 40)
        added = prsm(home, "viewer", "--workdir", str(tmp_path / "c"), "--group", GROUP, "--site", SITE,
                     "add", "ops")  # fmt: skip
        assert added.returncode == 0, added.stderr
        url = next(line.strip() for line in added.stdout.splitlines() if line.strip().startswith("http://"))

        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        requests: list[str] = []
        outside: list[str] = []

        def record(route: Any) -> None:
            target = route.request.url
            requests.append(target)
            host = urlsplit(target).hostname or ""
            if target.startswith(("blob:", "data:")) or host in LOOPBACK:
                route.continue_()
            else:
                outside.append(target)
                route.abort()

        context.route("**/*", record)
        page = context.new_page()
        page.on("websocket", lambda socket: requests.append(socket.url))
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)

        # The live roster, verified: two online nodes, the coordinator online, nothing unverified.
        wait_for(page, "document.querySelectorAll('#roster tr[data-state=\"online\"]').length === 2", 20)
        assert page.locator('[data-test="coord-status"]').inner_text() == "online"
        assert page.locator('[data-test="unverified-count"]').inner_text() == "0"
        assert "connected as viewer-ops" in page.locator("#conn").inner_text()

        # A node joins.
        procs.append(start_node(run, port, nodes[2]))  # a process start: Python, detection, join, birth
        joined_s = wait_for(
            page, "document.querySelectorAll('#roster tr[data-state=\"online\"]').length === 3", 40
        )
        page.wait_for_timeout(5500)  # one trend sample with three nodes
        gaps = page.evaluate(
            "[...document.querySelectorAll('#roster tr td:last-child')].map((td) => td.textContent)"
        )
        assert gaps == ["0", "0", "0"]  # every message of every node seen, in order (loopback, no loss)
        page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)

        # A node is killed: no goodbye, the broker publishes its Will.
        victim = node_id(nodes[0])
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(10)
        killed_s = wait_for(
            page, f"document.querySelector('tr[data-node=\"{victim}\"]').dataset.state === 'offline'", 20
        )
        assert rows(page, "online") == 2

        # A forged retained message (a stolen login cannot forge a signature) is flagged, not believed.
        with ThreadPoolExecutor(1) as pool:  # Playwright's sync API holds this thread's event loop
            topic = pool.submit(asyncio.run, tamper_birth(port, nodes[0])).result(30)
        flagged_s = wait_for(
            page, f"document.querySelector('tr[data-node=\"{victim}\"]').dataset.unverified === 'yes'", 15
        )
        assert topic in page.locator('[data-test="failures"]').inner_text()
        assert int(page.locator('[data-test="unverified-count"]').inner_text()) >= 1
        page.screenshot(path=str(artifacts / "dashboard-unverified.png"), full_page=True)

        # The trend charts survive a reload (ring buffers in localStorage), and the login is remembered.
        key = f"prsm-dash:{SITE}/{GROUP}:trends"
        before = page.evaluate(f"JSON.parse(localStorage.getItem('{key}') || '[]').length")
        assert before >= 1
        page.reload()
        wait_for(page, "document.querySelectorAll('#roster tr[data-state=\"online\"]').length === 2", 20)
        after = page.evaluate(f"JSON.parse(localStorage.getItem('{key}') || '[]').length")
        assert after >= before
        assert page.evaluate("document.querySelectorAll('#chart-util .u-over').length") == 1
        context.close()

    assert errors == []
    assert outside == [], f"requests left loopback: {outside}"
    assert requests and all(
        (urlsplit(r).hostname or "") in LOOPBACK or r.startswith("blob:") for r in requests
    )
    assert any(r.startswith("ws://127.0.0.1") for r in requests)
    figures = (
        f"dashboard: a joining node shown {joined_s:.1f} s after its process started, a kill shown in "
        f"{killed_s:.1f} s, forgery flagged in {flagged_s:.1f} s; screenshots in {artifacts}\n"
    )
    (artifacts / "timings.txt").write_text(figures)
    with capsys.disabled():
        sys.stdout.write("\n" + figures)
