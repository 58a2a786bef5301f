"""What installing a gateway's bridge costs a running group: one broker restart, and how long it lasts.

Run: .venv/bin/python benchmarks/bridge_install.py [--nodes 20] [--rounds 3]
Starts a region broker, and a group the way `prsm-edge coordinate` hosts it (Mosquitto with dynamic
security, the coordinator) with --nodes in-process agents; once all are online, runs the shipping
`restart_on_change` watcher and, per round, writes a changed bridge with `install_bridge` (what
`prsm-edge gateway` does). Times, from the write: the broker restarted (the watcher's callback), the
bridge's notification "1" at the region broker, and every member online again at the coordinator, with
the fewest members online seen meanwhile. The baseline, in the same run: a plain `RunningBroker.restart()`
with no bridge change, timed to every member online again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import aiomqtt

from prsm_edge.commands.demo import demo_agent, demo_join_policy, demo_verification, slices
from prsm_edge.coordinator.service import Coordinator
from prsm_edge.gateway.bridge import render_bridge
from prsm_edge.io.bridges import install_bridge, restart_on_change
from prsm_edge.io.broker import start_broker
from prsm_edge.localgroup import host_group
from prsm_edge.node.agent import Agent
from prsm_edge.protocol import topics

SITE, GROUP, GATEWAY = "bench", "g1", "nbenchgateway"


async def _until(predicate: object, limit_s: float) -> float:
    """Seconds until ``predicate()`` holds (polled; raises after ``limit_s``)."""
    t0 = time.perf_counter()
    async with asyncio.timeout(limit_s):
        while not predicate():  # type: ignore[operator]  # noqa: ASYNC110 (polling a plain attribute)
            await asyncio.sleep(0.02)
    return time.perf_counter() - t0


async def _members_back(coord: Coordinator, nodes: int, started: float, low: list[int]) -> float:
    """Seconds from ``started`` until every member is online again; the fewest online goes in ``low``."""
    fewest = nodes
    async with asyncio.timeout(60):
        while True:
            online = coord.group.online_count
            fewest = min(fewest, online)
            if fewest < nodes and online == nodes:
                break
            await asyncio.sleep(0.02)
    low.append(fewest)
    return time.perf_counter() - started


async def run(args: argparse.Namespace, work: Path) -> None:
    resources, fingerprint = await asyncio.to_thread(slices, args.nodes)
    async with (
        start_broker(work / "region", ws_port=None, acl=False) as region,
        host_group(
            work / "group",
            site=SITE,
            group=GROUP,
            ws_port=None,
            verification=demo_verification(SITE, GROUP, args.nodes),
            join_policy=demo_join_policy(args.nodes),
        ) as host,
    ):
        coord, broker = host.coordinator, host.broker
        assert broker.bridge_dir is not None and broker.acl_enforced
        agents = [
            Agent(demo_agent(SITE, GROUP, broker.url, work / f"a{i:03d}", resources, fingerprint, 2.0))
            for i in range(args.nodes)
        ]
        restarted: asyncio.Queue[float] = asyncio.Queue()

        async def on_restart(_carried: list[str]) -> None:
            restarted.put_nowait(time.perf_counter())

        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(coord.run())] + [tg.create_task(a.run()) for a in agents]
            joined = await _until(lambda: coord.group.online_count == args.nodes, 120)
            print(f"{args.nodes} members online after {joined:.1f} s (Mosquitto with dynamic security)")
            tasks.append(tg.create_task(restart_on_change(broker, poll_s=0.1, on_restart=on_restart)))
            base: list[float] = []
            base_low: list[int] = []
            rows: list[tuple[float, float, float]] = []
            low: list[int] = []
            async with aiomqtt.Client(region.connect_host, region.port) as watcher:
                await watcher.subscribe(topics.gateway_bridge(SITE, GATEWAY), qos=1)
                ups: list[float] = []  # arrival times of the bridge's "1" at the region broker
                reader = tg.create_task(_bridge_ups(watcher, ups))
                for r in range(args.rounds):
                    # Baseline: a restart with nothing new to carry.
                    await asyncio.sleep(2.0)
                    t0 = time.perf_counter()
                    await broker.restart()
                    base.append(await _members_back(coord, args.nodes, t0, base_low))
                    await asyncio.sleep(2.0)
                    # A changed bridge dropped into the folder, as `prsm-edge gateway` does.
                    text = render_bridge(
                        site=SITE,
                        group=GROUP,
                        gateway=GATEWAY,
                        region_site="eu",
                        region="r1",
                        uplinks=[region.url],
                        keepalive_s=30 + r,  # a different text each round
                    )
                    t0 = time.perf_counter()
                    install_bridge(broker.bridge_dir, "gateway-g1", text)
                    await _until(lambda t=t0: any(u > t for u in ups), 60)
                    up = min(u for u in ups if u > t0) - t0
                    back = await _members_back(coord, args.nodes, t0, low)
                    rows.append((await restarted.get() - t0, up, back))
                reader.cancel()
            for task in tasks:
                task.cancel()
    _report(args, base, base_low, rows, low)


async def _bridge_ups(watcher: aiomqtt.Client, ups: list[float]) -> None:
    async for message in watcher.messages:
        if message.payload == b"1":
            ups.append(time.perf_counter())


def _report(
    args: argparse.Namespace,
    base: list[float],
    base_low: list[int],
    rows: list[tuple[float, float, float]],
    low: list[int],
) -> None:
    def med(values: list[float]) -> float:
        return statistics.median(values)

    restart, up, back = (med([row[i] for row in rows]) for i in range(3))
    print(f"rounds: {args.rounds}, members: {args.nodes} (medians; seconds from the bridge file's write)")
    print(f"  broker restarted (watcher polls every 0.1 s) : {restart:.2f}")
    print(f"  bridge up at the region broker               : {up:.2f}")
    print(f"  every member online again                    : {back:.2f} (fewest online {min(low)})")
    print(f"baseline, plain restart, every member back     : {med(base):.2f} (fewest online {min(base_low)})")
    print(f"ratio, members back after a bridge install / baseline: {back / med(base):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="prsm-bridge-bench-") as tmp,
        contextlib.suppress(KeyboardInterrupt),
    ):
        asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
