"""A coordinator's settlement loop in its own process, for the kill -9 test (shipping classes only).

Usage: ``python -m tests.integration.ledger_writer DB PERIODS [--replay-last]``. Each period: one task
is allocated across 40 members, every lease accepted and its verified work recorded, then the period
is settled (credits and base-rate steps signed and made durable with group commit) and ``settled N``
is printed. A restarted writer resumes after the last period its ledger holds; with ``--replay-last``
it first settles that period again with the same work (a redelivered settlement).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from nacl.signing import SigningKey

from prsm_edge.coordinator.economy import Economy, EconomyConfig
from prsm_edge.io.store import LedgerStore
from prsm_edge.protocol.allocation import Task
from prsm_edge.protocol.envelope import Signer
from prsm_edge.protocol.group import Member
from prsm_edge.protocol.ledger import open_signed_chain
from prsm_edge.protocol.messages import ResourceSpec, ResourceType, VerificationLevel

KEY = SigningKey(bytes(range(100, 132)))
HOUR = 3_600_000
CPU = ResourceType.COMPUTE_CPU


def members() -> dict[str, Member]:
    out = {}
    for i in range(40):
        node = f"n{i:02d}"
        out[node] = Member(
            node=node,
            public_key=bytes(32),
            bdseq=1,
            device_class="raspberry_pi" if i % 2 else "x86_gpu_host",
            hw_fingerprint=f"fp{i}",
            resources=[ResourceSpec(type=CPU, capacity=2.0 + i % 3, unit="cores")],
        )
    return out


def run_period(eco: Economy, group: dict[str, Member], p: int) -> None:
    """Allocate period ``p``'s task, accept every lease and record its verified work."""
    start = p * HOUR
    for m in group.values():
        m.last_seen_ms = start
    task = Task(task_id=f"t{p}", amounts={CPU: 80.0}, duration_ms=HOUR, max_price_micro_per_hour=10**12)
    eco.submit(group, task, start)
    for rec in eco.leases.open_leases():
        eco.leases.answer(rec.lease.lease_id, rec.lease.node, True, start)
        eco.record_work(rec.lease.lease_id, rec.lease.node, {CPU: rec.amounts[CPU]}, start + HOUR)


async def main(db: Path, periods: int, replay_last: bool) -> None:
    store = LedgerStore(db, Signer(KEY))
    ledger = open_signed_chain(store.signed(), bytes(KEY.verify_key))
    group = members()
    eco = Economy(
        "lab",
        "g1",
        ledger,
        store,
        level_of=lambda n: VerificationLevel.PEER_VERIFIED,
        config=EconomyConfig(period_ms=HOUR, region="sub-saharan-africa"),
    )
    first = eco.settled_through // HOUR + 1
    if replay_last and first > 0:
        run_period(eco, group, first - 1)
        again = eco.settle_entries(group, (first - 1) * HOUR)
        await store.append_durable(again)
        credited = sum(1 for e in again if e.kind == "credit")
        sys.stdout.write(f"replayed {first - 1}: {credited} new credits\n")
        sys.stdout.flush()
        eco.leases.expire(first * HOUR + 1, [])
    for p in range(first, periods):
        run_period(eco, group, p)
        for m in group.values():
            m.last_seen_ms = (p + 1) * HOUR
        await eco.tick(group, (p + 1) * HOUR + 1)  # settles [p·HOUR, (p+1)·HOUR), durable on return
        sys.stdout.write(f"settled {p}\n")
        sys.stdout.flush()
    store.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]), "--replay-last" in sys.argv))
