"""How long the dashboard takes to show a region of N groups, from nothing but the broker.

Builds a region's retained state with the shipping code: the sans-IO :class:`Region` takes N groups'
signed summaries and gateway states and says what it publishes (its state, its summary, each group's
``UnitState``), sealed with its key; the groups' summaries and gateways' link states are sealed with
their own keys. All 3N + 2 messages go retained into a real Mosquitto whose WebSocket listener serves
the built page (``http_dir``); headless Chromium opens the page and the script times how long until
every group's row is shown (every message verified in the page: Ed25519 in JavaScript), and compares it
with Python opening the same messages (``open_envelope``, PyNaCl) in the same run.

    .venv/bin/python benchmarks/dashboard_region.py --groups 200 --groups 1000
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import aiomqtt
from nacl.signing import SigningKey

from prsm_edge.io.brokerinfo import dashboard_dir
from prsm_edge.protocol import topics
from prsm_edge.protocol.envelope import Signer, open_envelope
from prsm_edge.protocol.group import Publish
from prsm_edge.protocol.messages import GatewayState, GroupSummary
from prsm_edge.protocol.region import Region, RegionConfig

SITE, REGION = "eu", "r1"


def region_messages(groups: int, now: int) -> tuple[dict[str, bytes], str]:
    """Every retained message a region of ``groups`` groups leaves on its broker, and the region's key."""
    rkey = Signer(SigningKey.generate())
    region = Region(
        RegionConfig(
            site=SITE, region=REGION, coordinator=rkey.node_id, public_key=rkey.public_key, epoch=1,
            max_units=max(20_000, groups),
        )
    )  # fmt: skip
    wire: dict[str, bytes] = {}

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
    publish(region.tick(now + 1000))
    return wire, rkey.public_key.hex()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def fill(port: int, wire: dict[str, bytes]) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-fill", max_inflight_messages=100) as c:
        for topic, payload in wire.items():
            await c.publish(topic, payload, qos=1, retain=True)


def measure(groups: int, chromium: str, dist: Path) -> None:
    from playwright.sync_api import sync_playwright

    now = int(time.time() * 1000)
    wire, key = region_messages(groups, now)
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
                page.goto(f"http://127.0.0.1:{ws}/#site={SITE}&group={REGION}&key={key}")
                alive = "document.querySelectorAll('#region-groups tr[data-status=\"alive\"]').length"
                page.wait_for_function(f"() => {alive} === {groups}", timeout=600_000, polling=200)
                page_s = time.perf_counter() - t0
                unverified = page.evaluate("window.prsmRegion.counts.unverified")
                browser.close()
        finally:
            broker.terminate()
            broker.wait()
    print(
        f"{groups} groups, {len(wire)} retained messages: the page shows every group after {page_s:.1f} s "
        f"({len(wire) / page_s:.0f} messages/s, unverified {unverified}); Python opens them in "
        f"{python_s:.2f} s ({len(wire) / python_s:.0f}/s); page/Python rate {python_s / page_s:.3f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, action="append", help="region sizes to time (repeatable)")
    args = parser.parse_args()
    dist, chromium = dashboard_dir(), shutil.which("chromium")
    if dist is None or chromium is None or shutil.which("mosquitto") is None:
        raise SystemExit("needs the built dashboard, Debian's chromium and mosquitto")
    for groups in args.groups or [200]:
        measure(groups, chromium, dist)


if __name__ == "__main__":
    main()
