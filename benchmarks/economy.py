"""Allocation latency and placements/s on a 200-node group; signed, durable ledger appends with group commit.

Run: .venv/bin/python benchmarks/economy.py [--nodes 200] [--tasks 2000] [--appends 20000] [--producers 64]

Drives the shipping classes: :class:`prsm_edge.coordinator.economy.Economy` (candidates from the
members, the allocation strategies, the safety check, lease offers) and
:class:`prsm_edge.io.store.LedgerStore` (COSE_Sign1 per entry, SQLite WAL with ``synchronous=FULL``,
group commit). Baselines measured in the same run: the raw Ed25519 sign rate, and appends committed
one transaction each (no group commit).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path

from nacl.signing import SigningKey

from prsm_edge.coordinator.economy import Economy, EconomyConfig
from prsm_edge.io.store import LedgerStore
from prsm_edge.protocol.allocation import STRATEGIES, Task
from prsm_edge.protocol.envelope import Signer
from prsm_edge.protocol.group import Member
from prsm_edge.protocol.ledger import Ledger
from prsm_edge.protocol.messages import MICRO, ResourceSpec, ResourceType, VerificationLevel

CPU, MEM = ResourceType.COMPUTE_CPU, ResourceType.STORAGE_MEMORY
LEVELS = list(VerificationLevel)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def group(n: int, rng: random.Random) -> dict[str, Member]:
    out = {}
    for i in range(n):
        node = f"n{i:03d}"
        out[node] = Member(
            node=node,
            public_key=bytes(32),
            bdseq=1,
            device_class=rng.choice(["raspberry_pi", "jetson", "x86_gpu_host"]),
            hw_fingerprint=f"fp{i}",
            resources=[
                ResourceSpec(type=CPU, capacity=rng.choice([2.0, 4.0, 8.0, 16.0]), unit="cores"),
                ResourceSpec(type=MEM, capacity=rng.choice([2.0, 4.0, 16.0]), unit="GB"),
            ],
            temperature_c=rng.uniform(35, 90),
            min_hourly_rate_micro=rng.choice([0, 10_000, 50_000]),
            priority_level=rng.randint(3, 10),
            security_level=rng.choice(["standard", "standard", "high"]),
        )
    return out


def allocation(n_nodes: int, n_tasks: int) -> None:
    rng = random.Random(1)
    members = group(n_nodes, rng)
    levels = {node: rng.choice(LEVELS) for node in members}
    with tempfile.TemporaryDirectory() as tmp:
        store = LedgerStore(Path(tmp) / "l.sqlite", Signer(SigningKey.generate()))
        eco = Economy("b", "g1", Ledger(), store, level_of=levels.__getitem__, config=EconomyConfig())
        latencies, placed, refused = [], 0, 0
        strategies = list(STRATEGIES)
        start = time.perf_counter()
        for i in range(n_tasks):
            task = Task(
                task_id=f"t{i}",
                amounts={CPU: rng.choice([0.5, 1.0, 2.0]), MEM: 0.5},
                duration_ms=3_600_000,
                max_price_micro_per_hour=10**9,
                min_level=rng.choice(LEVELS[:3]),
                priority=rng.randint(1, 5),
            )
            t0 = time.perf_counter()
            try:
                alloc, _ = eco.submit(members, task, i, strategies[i % len(strategies)])
                placed += len(alloc.placements)
            except Exception:  # noqa: BLE001 - a refusal is an outcome here, counted
                refused += 1
            latencies.append((time.perf_counter() - t0) * 1000)
            if i % 50 == 49:  # leases end, so the group does not simply fill up
                for rec in eco.leases.open_leases()[: len(eco.leases.open_leases()) // 2]:
                    eco.leases.release_node(rec.lease.node, i)
        elapsed = time.perf_counter() - start
        store.close()
    print(
        f"allocation over {n_nodes} members, {n_tasks} tasks (all five strategies, safety check, lease offer)"
    )
    print(f"  latency per task p50 / p99        {pct(latencies, 0.5):.2f} ms / {pct(latencies, 0.99):.2f} ms")
    print(
        f"  tasks/s                           {n_tasks / elapsed:,.0f}  ({refused} refused by a constraint)"
    )
    print(f"  placements/s                      {placed / elapsed:,.0f}")


async def ledger(n_appends: int, producers: int) -> None:
    key = SigningKey.generate()
    body = b"x" * 200
    t0 = time.perf_counter()
    for _ in range(5_000):
        key.sign(body)
    sign_rate = 5_000 / (time.perf_counter() - t0)

    with tempfile.TemporaryDirectory() as tmp:
        # Baseline: one transaction (one fsync) per append.
        solo = LedgerStore(Path(tmp) / "solo.sqlite", Signer(key))
        led = Ledger()
        n_solo = max(200, n_appends // 50)
        t0 = time.perf_counter()
        for i in range(n_solo):
            solo.append([led.append(f"n{i % 200}", MICRO, "credit", f"s{i}", i, inputs={"hours": 1.0})])
        solo_rate = n_solo / (time.perf_counter() - t0)
        solo.close()

        store = LedgerStore(Path(tmp) / "group.sqlite", Signer(key))
        led = Ledger()
        latencies: list[float] = []
        per = n_appends // producers

        async def producer(p: int) -> None:
            for j in range(per):
                i = p * per + j
                entry = led.append(f"n{i % 200}", MICRO, "credit", f"g{i}", i, inputs={"hours": 1.0})
                t = time.perf_counter()
                await store.append_durable([entry])
                latencies.append((time.perf_counter() - t) * 1000)

        t0 = time.perf_counter()
        await asyncio.gather(*(producer(p) for p in range(producers)))
        elapsed = time.perf_counter() - t0
        commits = store.commits
        store.close()
    total = per * producers
    print(f"signed ledger appends (COSE_Sign1 each, SQLite WAL synchronous=FULL), {total} appends")
    print(f"  raw Ed25519 sign, 200 B           {sign_rate:,.0f} /s")
    print(f"  one transaction per append        {solo_rate:,.0f} /s (baseline)")
    print(
        f"  group commit, {producers} producers       {total / elapsed:,.0f} /s  "
        f"({total / commits:.0f} entries per commit, {total / elapsed / solo_rate:.1f}× the baseline)"
    )
    p50, p99 = statistics.median(latencies), pct(latencies, 0.99)
    print(f"  append → durable p50 / p99        {p50:.1f} ms / {p99:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--tasks", type=int, default=2_000)
    parser.add_argument("--appends", type=int, default=20_000)
    parser.add_argument("--producers", type=int, default=64)
    args = parser.parse_args()
    allocation(args.nodes, args.tasks)
    asyncio.run(ledger(args.appends, args.producers))


if __name__ == "__main__":
    main()
