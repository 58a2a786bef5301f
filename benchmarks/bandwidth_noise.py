"""How a bandwidth check through the broker measures an honest node, an overclaimer, and what it costs.

Runs a real Mosquitto on loopback (``io/broker.start_broker``) and drives the shipping code on both
ends: the coordinator's :class:`~prsm_edge.protocol.bandwidth.BandwidthDesk` issues each challenge and
meters the arrivals (stamped when each message is handed over by the MQTT client, before it is
opened), the node's :meth:`~prsm_edge.node.prover.ProofWork.send_bandwidth` paces the chunks at the
claimed rate × ``pace`` and every chunk is sealed (COSE_Sign1) and opened as in a live group.

For each claim it prints ``measured / claimed`` (min, median, max) over ``--runs`` checks, with
``--parallel`` checks at once (2: the most full-size checks a group runs together), how many honest
checks passed
(``min_rate_ratio``, deadline) and how many of the overclaimers (a link carrying ``1/overclaim`` of the
claim) were caught; then the most an unpaced sender moves through this broker, and the traffic a
bandwidth check costs per node per hour.

This measures the broker path on *this* machine (loopback, 2 shared vCPUs), not a WAN: on a LAN the
network adds its own delay, which the 500 ms allowance and the 2 s transfer absorb.

    .venv/bin/python benchmarks/bandwidth_noise.py --runs 6
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt
import msgspec
from nacl.signing import SigningKey

from prsm_edge.io.broker import start_broker
from prsm_edge.io.clock import now_ms
from prsm_edge.node.prover import ProofWork
from prsm_edge.protocol import bandwidth, proofs, topics
from prsm_edge.protocol.envelope import Signer, node_id_for, open_envelope
from prsm_edge.protocol.messages import BandwidthChunk, ResourceSpec, ResourceType
from prsm_edge.protocol.sampling import AdaptiveSampler
from prsm_edge.protocol.verifier import VerifierConfig

SITE, GROUP = "bench", "bw"


def offer(mbit: float) -> list[ResourceSpec]:
    return [ResourceSpec(type=ResourceType.BANDWIDTH_EGRESS, capacity=mbit, unit="Mbit/s")]


async def check(
    desk: bandwidth.BandwidthDesk,
    sender: aiomqtt.Client,
    nodes: list[tuple[str, Signer]],
    mbit: float,
    pace: float,
    rng: random.Random,
) -> list[proofs.Verdict]:
    """One round of ``len(nodes)`` checks at once; the verdicts."""
    start = now_ms()
    args: list[tuple[str, Signer, dict[str, object]]] = []
    for node, signer in nodes:
        issued = desk.issue("coord", node, offer(mbit), rng, start)
        assert issued is not None
        args.append(
            (node, signer, {"challenge": msgspec.to_builtins(issued.challenge, builtin_types=(bytes,))})
        )

    async def send_all(node: str, signer: Signer, a: dict[str, object]) -> None:
        topic = topics.node(topics.Kind.NODE_BANDWIDTH, SITE, GROUP, node)
        work = ProofWork(node, pace=pace)

        async def send(chunk: BandwidthChunk) -> bool:
            await sender.publish(topic, signer.seal(chunk, now_ms()))
            return True

        await work.send_bandwidth(a, send)

    await asyncio.gather(*(send_all(*a) for a in args))
    verdicts: list[proofs.Verdict] = []
    deadline = start + 60_000
    while len(verdicts) < len(nodes) and now_ms() < deadline:
        await asyncio.sleep(0.02)
        verdicts += [v for _, v in desk.due(now_ms())]
    return verdicts


async def receive(client: aiomqtt.Client, desk: bandwidth.BandwidthDesk) -> None:
    async for message in client.messages:
        arrived = now_ms()  # stamped before anything else, as the coordinator does
        payload = bytes(message.payload)  # type: ignore[arg-type]
        node = message.topic.value.split("/")[5]
        if not desk.admits(node, len(payload)):
            continue
        opened = open_envelope(payload)
        if isinstance(opened.message, BandwidthChunk) and opened.signer == node:
            desk.receive(opened.message, arrived)


async def measure(args: argparse.Namespace) -> None:
    p = proofs.PARAMS["bandwidth"]
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp:
        async with start_broker(Path(tmp), ws_port=None, prefer="mosquitto", acl=False) as broker:
            keys = [SigningKey(bytes([i + 1]) * 32) for i in range(args.parallel)]
            signers = [Signer(k) for k in keys]
            nodes = [(node_id_for(bytes(k.verify_key)), s) for k, s in zip(keys, signers, strict=True)]
            async with (
                aiomqtt.Client(broker.host, broker.port, identifier="coord") as coord,
                aiomqtt.Client(broker.host, broker.port, identifier="node") as node,
            ):
                await coord.subscribe(topics.node_filter(SITE, GROUP, "bw"), qos=1)
                desk = bandwidth.BandwidthDesk(max_rate=float("inf"))  # --parallel decides
                reader = asyncio.create_task(receive(coord, desk))
                print(
                    f"{args.runs} rounds of {args.parallel} check(s) at once per row; min_rate_ratio "
                    f"{p.min_rate_ratio}, deadline {p.target_ms} ms × {p.slack} + {p.network_ms} ms; "
                    f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, {args.busy} spinning",
                )
                print(f"{'claim':>10} {'link':>6}  {'min':>6} {'median':>7} {'max':>6}  verdicts")
                for mbit in args.claims:
                    for pace in (1.0, 1 / args.overclaim):
                        ratios: list[float] = []
                        outcome: dict[str, int] = {}
                        for _ in range(args.runs):
                            for v in await check(desk, node, nodes[: args.parallel], mbit, pace, rng):
                                ch_rate = min(mbit * 125_000, p.max_bytes * 1000 / p.target_ms)
                                ratios.append(v.measured_rate / ch_rate)
                                outcome[v.reason.value] = outcome.get(v.reason.value, 0) + 1
                            print(f"  {mbit} Mbit/s pace {pace:.2f}: {ratios[-1]:.3f}", file=sys.stderr)
                        link = "claim" if pace == 1.0 else f"1/{args.overclaim:g}"
                        counts = ", ".join(f"{k} {n}" for k, n in sorted(outcome.items()))
                        spread = f"{min(ratios):6.3f} {statistics.median(ratios):7.3f} {max(ratios):6.3f}"
                        print(f"{mbit:>5g} Mbit/s {link:>6}  {spread}  {counts}")
                # The most this broker path carries: one transfer at the cap, unpaced.
                t0 = time.perf_counter()
                [v] = await check(desk, node, nodes[:1], 10_000.0, 1e6, rng)
                print(
                    f"unpaced {p.max_bytes >> 20} MiB transfer: {v.measured_rate / 1e6:.1f} MB/s "
                    "through this broker "
                    f"({time.perf_counter() - t0:.2f} s)"
                )
                reader.cancel()


def cost(p: proofs.Params) -> None:
    """Bytes a bandwidth check moves per node per hour, from the shipping defaults."""
    cfg = VerifierConfig(site="s", group="g", coordinator="c")
    per_check = p.max_bytes * (1 + bandwidth.ENVELOPE_ALLOWANCE / proofs.MAX_CHUNK)
    rounds = 3_600_000 / cfg.round_ms
    sampler = AdaptiveSampler()
    first_day = 0.0
    for _ in range(int(24 * rounds)):
        first_day += sampler.probability("n")
        sampler.record("n", True)
    steady = sampler.probability("n")
    mib = 1 << 20
    print(
        f"traffic per node claiming ≥ {p.max_bytes * 8 / p.target_ms / 1000:.1f} Mbit/s "
        "(smaller claims pro rata): "
        f"≤ {per_check / mib:.2f} MiB a check; {rounds:.0f} rounds/h; "
        f"new or flagged (every round): {rounds * per_check / mib:.0f} MiB/h; "
        f"first day of passes: {first_day * per_check / mib / 24:.1f} MiB/h on average; "
        f"afterwards (sampling floor {steady:.2f}): {rounds * steady * per_check / mib:.1f} MiB/h"
    )
    print(
        f"broker load from checks: ≤ {bandwidth.MAX_RATE / mib:.0f} MiB/s together "
        f"(two checks at the {p.max_bytes / mib * 1000 / p.target_ms:.0f} MiB/s cap, or up to "
        f"{bandwidth.MAX_OPEN} smaller ones), "
        "whatever the group size"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=6, help="rounds per claim (default 6)")
    ap.add_argument(
        "--parallel", type=int, default=2, help="checks at once (default 2, as many as fit at the cap)"
    )
    ap.add_argument(
        "--claims", type=float, nargs="+", default=[8.0, 16.8], help="claims in Mbit/s (default 8 16.8)"
    )
    ap.add_argument("--busy", type=int, default=0, help="CPU-spinning processes alongside (default 0)")
    ap.add_argument("--overclaim", type=float, default=1.6, help="the overclaimer's claim / its link (1.6)")
    args = ap.parse_args()
    # Other work on the machine (a busy coordinator or node): processes that only spin.
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        asyncio.run(measure(args))
    finally:
        for proc in spinners:
            proc.kill()
            proc.wait()
    cost(proofs.PARAMS["bandwidth"])


if __name__ == "__main__":
    main()
