"""How long the dashboard takes to show a region of N groups, from nothing but the broker, and whether
it keeps up with (and stays usable under) the region's live traffic.

Builds a region's retained state with the shipping code: the sans-IO :class:`Region` takes N groups'
signed summaries and gateway states and says what it publishes (its state, its summary, each group's
``UnitState``), sealed with its key; the groups' summaries and gateways' link states are sealed with
their own keys. All 3N + 2 messages go retained into a real Mosquitto whose WebSocket listener serves
the built page (``http_dir``); headless Chromium opens the page and the script times how long until
the page shows every group alive (every message verified in the page: WebCrypto's Ed25519 on
127.0.0.1, or the bundled JavaScript one with ``--verifier js``), and compares it with Python opening
the same messages (``open_envelope``, PyNaCl) in the same run.

Then the flood: fresh signed summaries and gateway states at ``--flood-rate`` messages/s (default: what
N groups send with 10 s summaries, 1.5 messages per group per 10 s) for ``--flood-s`` seconds, while
the script clicks a group's row every second and times until its details are drawn (against the same
click with no flood, measured first). It prints how many of the flood's messages the page verified
and what was still waiting at the end.

    .venv/bin/python benchmarks/dashboard_region.py --groups 1000 --groups 5000
    .venv/bin/python benchmarks/dashboard_region.py --groups 1000 --verifier js
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiomqtt
import msgspec
from nacl.signing import SigningKey

from prsm_edge.io.brokerinfo import dashboard_dir
from prsm_edge.protocol import topics
from prsm_edge.protocol.envelope import Signer, open_envelope
from prsm_edge.protocol.group import Publish
from prsm_edge.protocol.messages import GatewayState, GroupSummary
from prsm_edge.protocol.region import Region, RegionConfig

SITE, REGION = "eu", "r1"


Flood = list[tuple[str, bytes]]


def region_messages(groups: int, now: int, flood: int) -> tuple[dict[str, bytes], str, Flood]:
    """Every retained message a region of ``groups`` groups leaves on its broker, the region's key, and
    ``flood`` fresh messages the groups and gateways would send next (summaries and link states)."""
    rkey = Signer(SigningKey.generate())
    region = Region(
        RegionConfig(
            site=SITE, region=REGION, coordinator=rkey.node_id, public_key=rkey.public_key, epoch=1,
            max_units=max(20_000, groups),
        )
    )  # fmt: skip
    wire: dict[str, bytes] = {}
    later: list[tuple[str, Signer, GroupSummary | GatewayState]] = []

    def publish(effects: list[object]) -> None:
        for e in effects:
            if isinstance(e, Publish):
                wire[e.topic] = rkey.seal(e.message, now)

    publish([Publish(*region.state_message())])
    for i in range(groups):
        site, group = f"s{i % 20}", f"g{i}"
        coord, gw = Signer(SigningKey.generate()), Signer(SigningKey.generate())
        summary = GroupSummary(
            site=site, group=group, epoch=1, tier=1, members=120, online=100 + i % 20,
            capacity={"compute_cpu": 400.0, "storage_memory": 800.0},
            trust={"benchmarked": 90, "self_reported": 10}, utilization=0.4,
        )  # fmt: skip
        topic = topics.unit(topics.Kind.UNIT_SUMMARY, SITE, REGION, site, group)
        wire[topic] = coord.seal(summary, now)
        publish(region.receive(topic, wire[topic], now))
        link = GatewayState(
            site=site, group=group, gateway=gw.node_id, status="online", bdseq=1, uplink="up", buffered=i % 3
        )
        gw_topic = topics.gateway_state(site, gw.node_id)
        wire[gw_topic] = gw.seal(link, now)
        publish(region.receive(gw_topic, wire[gw_topic], now))
        later += [(topic, coord, summary), (gw_topic, gw, link)]
    publish(region.tick(now + 1000))
    fresh: Flood = []
    for n in range(flood):  # two summaries for each link state, round the groups
        i = (n * 2 // 3) % groups
        topic, signer, message = later[2 * i + (1 if n % 3 == 2 else 0)]
        if isinstance(message, GroupSummary):
            message = msgspec.structs.replace(message, online=100 + (i + n) % 20)
        fresh.append((topic, signer.seal(message, now + 1000 + n)))
    return wire, rkey.public_key.hex(), fresh


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def fill(port: int, wire: dict[str, bytes]) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-fill", max_inflight_messages=100) as c:
        for topic, payload in wire.items():
            await c.publish(topic, payload, qos=1, retain=True)


def send_flood(port: int, messages: Flood, rate: float, sent: list[float]) -> None:
    """Publish ``messages`` retained at ``rate`` per second; ``sent`` gets [count, seconds]."""

    async def run() -> None:
        async with aiomqtt.Client("127.0.0.1", port, identifier="bench-flood") as c:
            start = time.monotonic()
            for n, (topic, payload) in enumerate(messages):
                delay = start + n / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await c.publish(topic, payload, qos=0, retain=True)
            sent[:] = [len(messages), time.monotonic() - start]

    asyncio.run(run())


# The page's thread during the flood: its longest task and longest gap between two animation frames.
JANK = """() => {
  const j = window.benchJank = { longest: 0, tasks: 0, gap: 0 }
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) { j.tasks++; j.longest = Math.max(j.longest, e.duration) }
  }).observe({ type: 'longtask' })
  let last = performance.now()
  const frame = (t) => { j.gap = Math.max(j.gap, t - last); last = t; requestAnimationFrame(frame) }
  requestAnimationFrame(frame)
}"""
DETAIL = "(k) => document.querySelector('#region-detail h3')?.textContent.startsWith(k)"


def click_ms(page: Any, key: str) -> tuple[float, float]:
    """Click a group's row as a user would: (ms until Playwright sees its details drawn, ms in the page
    from the input event to the details drawn: the wait for a busy page plus the drawing)."""
    t0 = time.perf_counter()
    page.click(f'#region-groups tr[data-group="{key}"] td')
    page.wait_for_function(DETAIL, arg=key, polling="raf", timeout=60_000)
    seen = 1000 * (time.perf_counter() - t0)
    inside = page.evaluate("((c) => c.waitedMs + c.drawMs)(window.prsmRegion.lastClick)")
    return seen, float(inside)


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2] if xs else float("nan")


def measure(groups: int, chromium: str, dist: Path, verifier: str, flood_s: float, rate: float) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    now = int(time.time() * 1000)
    rate = rate or groups * 1.5 / 10
    wire, key, flood = region_messages(groups, now, int(rate * flood_s))
    start = time.perf_counter()
    for payload in wire.values():
        open_envelope(payload)
    python_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        port, ws = free_port(), free_port()
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\nlistener {ws} 127.0.0.1\nprotocol websockets\n"
            f"http_dir {dist}\nlog_dest none\nuser root\nmax_queued_messages 100000\n"
        )
        broker = subprocess.Popen(["mosquitto", "-c", str(conf)])
        try:
            time.sleep(0.5)
            asyncio.run(fill(port, wire))
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
                page = browser.new_page(viewport={"width": 1500, "height": 1000})
                t0 = time.perf_counter()
                extra = "&verifier=js" if verifier == "js" else ""
                page.goto(f"http://127.0.0.1:{ws}/#site={SITE}&group={REGION}&key={key}{extra}")
                alive = "document.querySelector('[data-test=\"region-alive\"]')?.textContent"
                page.wait_for_function(f"() => {alive} === '{groups}/{groups}'", timeout=900_000, polling=200)
                page_s = time.perf_counter() - t0
                every = f"() => prsmRegion.counts.verified >= {len(wire)} && !prsmPipeline.backlog.length"
                page.wait_for_function(every, timeout=900_000, polling=200)
                all_s = time.perf_counter() - t0
                used = page.evaluate(
                    "((p) => p.kind + (p.threads ? ` in ${p.threads} workers` : ''))(window.prsmPipeline)"
                )
                unverified = page.evaluate("window.prsmRegion.counts.unverified")
                rows = page.evaluate(
                    "[...document.querySelectorAll('#region-groups tr')].map((r) => r.dataset.group)"
                )
                idle = [click_ms(page, rows[i % 10]) for i in range(6)]
                page.evaluate(JANK)
                verified0 = page.evaluate("window.prsmRegion.counts.verified")
                sent: list[float] = []
                sender = threading.Thread(target=send_flood, args=(port, flood, rate, sent))
                sender.start()
                busy: list[tuple[float, float]] = []
                while sender.is_alive():
                    busy.append(click_ms(page, rows[(len(busy) + 10) % len(rows)]))
                    time.sleep(1.0)
                sender.join()
                verified1 = page.evaluate("window.prsmRegion.counts.verified")
                jank = page.evaluate("window.benchJank")
                waiting = page.evaluate("window.prsmPipeline.backlog.length")
                dropped = page.evaluate("window.prsmPipeline.dropped")
                settle = time.perf_counter()
                # Every flood message verified (those still on their way from the broker included); if
                # some never arrive, the figure below says how many were.
                with contextlib.suppress(PlaywrightTimeout):
                    page.wait_for_function(
                        f"() => prsmRegion.counts.verified >= {verified0 + len(flood)}", timeout=120_000
                    )
                settle_s = time.perf_counter() - settle
                verified2 = page.evaluate("window.prsmRegion.counts.verified")
                browser.close()
        finally:
            broker.terminate()
            broker.wait()
    count, secs = sent
    print(
        f"{groups} groups, {used} verifier, {len(wire)} retained messages: the page shows every group after "
        f"{page_s:.1f} s ({len(wire) / page_s:.0f} messages/s, unverified {unverified}); Python opens them "
        f"in {python_s:.2f} s ({len(wire) / python_s:.0f}/s); page/Python rate {python_s / page_s:.3f}; "
        f"every retained message verified after {all_s:.1f} s ({len(wire) / all_s:.0f}/s)\n"
        f"  flood: {count:.0f} messages in {secs:.1f} s ({count / secs:.0f}/s sent); the page verified "
        f"{verified1 - verified0} of them meanwhile ({(verified1 - verified0) / secs:.0f}/s), {waiting} "
        f"waiting and {dropped} dropped at the end; {verified2 - verified0} of {count:.0f} verified "
        f"{settle_s:.1f} s later\n"
        f"  click to details, Playwright's view (in the page: input event to drawn): median "
        f"{median([c[0] for c in idle]):.0f} ms ({median([c[1] for c in idle]):.0f} ms) idle, "
        f"{median([c[0] for c in busy]):.0f} ms ({median([c[1] for c in busy]):.0f} ms) during the flood, "
        f"max {max([c[0] for c in busy], default=0):.0f} ms ({max([c[1] for c in busy], default=0):.0f} ms), "
        f"{len(busy)} clicks; the page's thread meanwhile: {jank['tasks']} tasks over 50 ms, longest "
        f"{jank['longest']:.0f} ms, longest gap between frames {jank['gap']:.0f} ms",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, action="append", help="region sizes to time (repeatable)")
    parser.add_argument(
        "--verifier", choices=["webcrypto", "js"], default="webcrypto",
        help="the page's Ed25519 verifier (default: WebCrypto, what 127.0.0.1 gets)",
    )  # fmt: skip
    parser.add_argument("--flood-s", type=float, default=20.0, help="seconds of live traffic (default 20)")
    parser.add_argument(
        "--flood-rate", type=float, default=0.0,
        help="live messages per second (default: 1.5 per group per 10 s)",
    )  # fmt: skip
    args = parser.parse_args()
    dist, chromium = dashboard_dir(), shutil.which("chromium")
    if dist is None or chromium is None or shutil.which("mosquitto") is None:
        raise SystemExit("needs the built dashboard, Debian's chromium and mosquitto")
    for groups in args.groups or [200]:
        measure(groups, chromium, dist, args.verifier, args.flood_s, args.flood_rate)


if __name__ == "__main__":
    main()
