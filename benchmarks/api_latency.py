"""API round trips on a real local group: reads and owner changes, over MQTT and the agent's HTTP API.

Run: .venv/bin/python benchmarks/api_latency.py [--calls 200]
Starts Mosquitto (the shipping launcher, no ACLs), a coordinator and one agent with its local API, pairs
an owner key, then times, one call at a time: a read answered by the coordinator over MQTT (the
baseline), an owner change relayed by the coordinator to the node and acknowledged by it, a read from the
agent's local HTTP API (which asks the coordinator over MQTT), and a signed change over HTTP. Prints
p50/p99 per kind and each p50 as a ratio of the baseline's, measured in the same run. With --nagle it
first runs everything with Nagle's algorithm left on (what paho does by itself), for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from nacl.signing import SigningKey

from prsm_edge.coordinator.service import Coordinator, CoordinatorOptions
from prsm_edge.identity import load_or_create
from prsm_edge.io import api_client as api_client_mod
from prsm_edge.io import session as session_mod
from prsm_edge.io.api_client import connect
from prsm_edge.io.broker import start_broker
from prsm_edge.node.agent import Agent, AgentOptions, Sample
from prsm_edge.node.owner_api import OwnerOptions
from prsm_edge.node.owners import OwnerRegistry
from prsm_edge.protocol.api import seal_request
from prsm_edge.protocol.envelope import Signer
from prsm_edge.protocol.messages import ResourceSpec, ResourceType

SITE, GROUP = "bench", "g1"


def _ms() -> int:
    return int(time.time() * 1000)


async def _time(calls: int, one: Callable[[int], Awaitable[None]]) -> list[float]:
    out = []
    for i in range(calls):
        t0 = time.perf_counter()
        await one(i)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def run(calls: int, workdir: Path, external: str | None, title: str) -> None:
    async with contextlib.AsyncExitStack() as stack:
        if external is None:
            broker = await stack.enter_async_context(
                start_broker(workdir / "broker", ws_port=None, acl=False)
            )
            url, kind = broker.url, broker.kind
        else:
            url, kind = external, f"the broker at {external}"
        coord = Coordinator(
            load_or_create(workdir / "coord"),
            CoordinatorOptions(
                site=SITE, group=GROUP, broker_url=url, workdir=workdir / "coord", verify=False
            ),
        )
        agent = Agent(
            AgentOptions(
                site=SITE,
                group=GROUP,
                broker_url=url,
                workdir=workdir / "node",
                resources=[ResourceSpec(type=ResourceType.COMPUTE_CPU, capacity=2.0, unit="cores")],
                cpu_rate=1_000_000.0,
                sample=lambda: Sample(cpu_util=0.1, mem_util=0.1),
                owner=OwnerOptions(local_port=0),
            )
        )
        owner = Signer(SigningKey.generate())
        OwnerRegistry(agent.options.workdir).add(owner.public_key, "bench", _ms())
        tasks = [asyncio.create_task(coord.run()), asyncio.create_task(agent.run())]
        try:
            while not (  # noqa: ASYNC110  (three conditions in two objects: polling is simplest)
                agent.born.is_set() and agent.owner_api.local_url and agent.node_id in coord.group.members
            ):
                await asyncio.sleep(0.05)
            node = agent.node_id
            base = agent.owner_api.local_url
            async with connect(url, SITE, GROUP, owner) as client, aiohttp.ClientSession() as http:

                async def mqtt_read(_i: int) -> None:
                    assert (await client.call("status", {"node": node})).ok

                async def mqtt_change(i: int) -> None:
                    assert (await client.call("pause", {"node": node, "paused": i % 2 == 0})).ok

                async def http_read(_i: int) -> None:
                    async with http.get(f"{base}/api/v1/resources/status/{node}") as resp:
                        assert resp.status == 200

                async def http_change(i: int) -> None:
                    signed = seal_request(
                        owner, "pause", {"node": node, "paused": i % 2 == 0}, txid=f"h{i}", now_ms=_ms()
                    )
                    body = {"signed": base64.b64encode(signed).decode()}
                    async with http.post(f"{base}/api/v1/resources/pause/{node}", json=body) as resp:
                        assert resp.status == 200, await resp.text()

                kinds = {
                    "read over MQTT (coordinator answers)": mqtt_read,
                    "owner change over MQTT (relayed, node acknowledges)": mqtt_change,
                    "read over local HTTP (agent asks coordinator)": http_read,
                    "owner change over local HTTP (node acknowledges)": http_change,
                }
                figures = {name: await _time(calls, fn) for name, fn in kinds.items()}
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    baseline = statistics.median(figures["read over MQTT (coordinator answers)"])
    print(f"{title}: {calls} calls of each kind, one at a time, {kind}")
    print(f"{'kind':55} {'p50 ms':>8} {'p99 ms':>8} {'p50 / MQTT read':>16}")
    for name, values in figures.items():
        p50 = statistics.median(values)
        print(f"{name:55} {p50:8.2f} {_p(values, 99):8.2f} {p50 / baseline:16.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--broker", default=None, help="use this broker instead of starting Mosquitto")
    parser.add_argument("--nagle", action="store_true", help="first run with TCP_NODELAY off, to compare")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.nagle:
        shipping = session_mod.no_delay
        session_mod.no_delay = api_client_mod.no_delay = lambda _client: None
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(run(args.calls, Path(tmp), args.broker, "Nagle on (paho's default)"))
        session_mod.no_delay = api_client_mod.no_delay = shipping
        print()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args.calls, Path(tmp), args.broker, "TCP_NODELAY (shipping)"))


if __name__ == "__main__":
    main()
