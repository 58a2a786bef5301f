"""What the coordinator's economy answers the API: earnings (gross, electricity, net), analytics, advice."""

from __future__ import annotations

from pathlib import Path

import pytest
from nacl.signing import SigningKey

from prsm_edge.coordinator.economy import Economy, EconomyConfig
from prsm_edge.errors import LocalError
from prsm_edge.io.store import LedgerStore
from prsm_edge.protocol.allocation import Task
from prsm_edge.protocol.envelope import Signer
from prsm_edge.protocol.group import Member
from prsm_edge.protocol.ledger import Ledger
from prsm_edge.protocol.messages import ResourceSpec, ResourceType, VerificationLevel

CPU = ResourceType.COMPUTE_CPU
HOUR = 3_600_000


def member(node: str, cores: float) -> Member:
    return Member(
        node=node,
        public_key=bytes(32),
        bdseq=1,
        device_class="raspberry_pi",
        hw_fingerprint=f"fp-{node}",
        resources=[ResourceSpec(type=CPU, capacity=cores, unit="cores")],
        power_w=10.0,
    )


async def test_readers_answer_from_the_ledger_and_the_market(tmp_path: Path) -> None:
    store = LedgerStore(tmp_path / "l.sqlite", Signer(SigningKey(bytes(32))))
    eco = Economy(
        "lab",
        "g1",
        Ledger(),
        store,
        level_of=lambda _n: VerificationLevel.BENCHMARKED,
        config=EconomyConfig(period_ms=HOUR),
    )
    members = {"a": member("a", 2.0), "b": member("b", 2.0)}
    eco.submit(members, Task("t", {CPU: 4.0}, 2 * HOUR, 10**9), 0)
    for rec in eco.leases.open_leases():
        eco.leases.answer(rec.lease.lease_id, rec.lease.node, True, 0)
        eco.record_work(rec.lease.lease_id, rec.lease.node, {CPU: 2.0}, HOUR)
    for m in members.values():
        m.last_seen_ms = HOUR  # heartbeats renew the leases
    await eco.tick(members, HOUR + 1)
    eco.market(members)

    report = eco.earnings(members["a"], 2 * HOUR, {"span_ms": 2 * HOUR, "electricity_price_per_kwh": 0.5})
    assert report["gross_micro"] == eco.ledger.balance("a") > 0
    assert report["electricity_kwh"] == 0.02 and report["electricity_micro"] == 10_000  # 10 W × 2 h × 0.5
    assert report["net_micro"] == report["gross_micro"] - 10_000
    assert report["leases"][0]["state"] == "active"
    with pytest.raises(LocalError):
        eco.earnings(members["a"], 2 * HOUR, {"span_ms": float("nan")})

    series = eco.analytics(members["a"], 2 * HOUR, {})
    assert series["credits"][0]["inputs"]["formula"] == "earnings/v1"

    advice = eco.advice(
        members["a"],
        2 * HOUR,
        {"settings": {"cpu_allocation_percentage": 0.5}, "detected": {"compute_cpu": 4.0, "bogus": 1}},
    )
    assert all({"setting", "value", "reason", "ftns_per_day"} <= set(s) for s in advice["suggestions"])
    assert advice["market"]["resources"]["compute_cpu"]["supply"] == 4.0

    # A correction is a durable reversal entry; the credit stays in the history.
    credit = next(e for e in eco.ledger.entries if e.account == "a" and e.kind == "credit")
    reversal = await eco.correct(credit.key, 3 * HOUR, "work found invalid on re-check")
    assert eco.ledger.balance("a") == 0 and reversal.inputs == {"reverses": credit.index}
    assert len(store.signed("a")) == 2
    with pytest.raises(LocalError):
        await eco.correct("earn:none", 3 * HOUR, "no such credit")
    store.close()
