"""Earnings: the docs' worked example, every cap, no bonus without verification, no gain from splitting."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from prsm_edge.protocol.earnings import (
    DEFAULT_RATES,
    BaseRate,
    EarningsPolicy,
    GroupFacts,
    NodeFacts,
    RatePolicy,
    ResourceUse,
    earn,
    recompute,
    settle,
)
from prsm_edge.protocol.messages import ResourceType, VerificationLevel

CPU, MEM = ResourceType.COMPUTE_CPU, ResourceType.STORAGE_MEMORY
L = VerificationLevel


def test_worked_example_of_the_docs() -> None:
    """docs/economy.md, "A worked example": a Raspberry Pi, peer-verified, in sub-Saharan Africa."""
    pi = NodeFacts(
        node="npi",
        owner="fp-pi",
        level=L.PEER_VERIFIED,
        resources=(ResourceUse(CPU, capacity=2, served=1.5),),
        streak=6,
        measured_rate=1_200_000,
    )
    group = GroupFacts(rates=dict(DEFAULT_RATES), geographic=1.5, median_rate=1_000_000)
    (credit,) = settle([pi], group, hours=1.0)
    inputs = credit.inputs
    assert inputs["reputation"] == 0.8
    assert inputs["geographic"] == 1.5
    assert inputs["performance"] == 1.1  # 1 + 0.5 × (1.2 − 1)
    assert inputs["compute_cpu.micro"] == 2.0  # the owner's 2 cores are within the first 4
    # 2 cores × 1 h × 100,000 µFTNS × 0.75 utilization × min(0.8 × 1.5 × 1.1 × 2.0 = 2.64, 3.0)
    assert inputs["compute_cpu.rate"] == 100_000
    assert credit.amount_micro == 396_000
    assert recompute(inputs) == credit.amount_micro


def test_self_reported_earns_the_base_at_most() -> None:
    group = GroupFacts(rates={CPU: 20_000}, geographic=1.5, median_rate=1.0)
    node = NodeFacts("n", "o", L.SELF_REPORTED, (ResourceUse(CPU, 2, 2),), streak=99, measured_rate=9.0)
    (credit,) = settle([node], group, hours=1.0)
    base = 2 * 1 * 20_000  # capacity × hours × base rate at full utilization
    assert credit.amount_micro <= base
    assert (
        credit.inputs["geographic"] == credit.inputs["performance"] == credit.inputs["compute_cpu.micro"] == 1
    )
    assert credit.amount_micro == 24_000  # reputation 0.6 only


def test_every_factor_and_the_product_are_capped() -> None:
    group = GroupFacts(rates={CPU: 20_000}, geographic=9.0, median_rate=1.0)
    node = NodeFacts("n", "o", L.HARDWARE_ATTESTED, (ResourceUse(CPU, 1, 5),), streak=99, measured_rate=1e9)
    credit = earn(node, group, {CPU: 1}, hours=1.0)
    p = EarningsPolicy()
    assert credit.inputs["geographic"] == p.geographic_max
    assert credit.inputs["performance"] == p.performance_max
    # utilization capped at 1 and the product at 3.0 (0.95 × 1.5 × 1.25 × 2 = 3.56 would exceed it)
    assert credit.amount_micro == 1 * 20_000 * 3
    assert recompute(credit.inputs) == credit.amount_micro


def test_performance_bonus_needs_a_run_of_verified_results() -> None:
    group = GroupFacts(rates={CPU: 20_000}, median_rate=1.0)
    short = NodeFacts("n", "o", L.BENCHMARKED, (ResourceUse(CPU, 4, 4),), streak=4, measured_rate=2.0)
    long = NodeFacts("n", "o", L.BENCHMARKED, (ResourceUse(CPU, 4, 4),), streak=5, measured_rate=2.0)
    assert earn(short, group, {CPU: 4}, 1.0).inputs["performance"] == 1.0
    assert earn(long, group, {CPU: 4}, 1.0).inputs["performance"] == 1.25


def test_idle_capacity_earns_nothing() -> None:
    """Utilization is verified work served: a node that holds a lease and serves nothing earns nothing."""
    group = GroupFacts(rates={CPU: 20_000})
    idle = NodeFacts("n", "o", L.BENCHMARKED, (ResourceUse(CPU, 8, 0.0),))
    assert settle([idle], group, hours=72.0) == []


def test_micro_bonus_covers_only_the_first_units() -> None:
    group = GroupFacts(rates={CPU: 20_000})
    small = NodeFacts("s", "a", L.PEER_VERIFIED, (ResourceUse(CPU, 2, 2),))
    big = NodeFacts("b", "b", L.PEER_VERIFIED, (ResourceUse(CPU, 16, 16),))
    credits = {c.node: c for c in settle([small, big], group, 1.0)}
    assert credits["s"].inputs["compute_cpu.micro"] == 2.0
    assert credits["b"].inputs["compute_cpu.micro"] == 1.25  # 4 of its 16 cores earn double


@settings(max_examples=150, deadline=None)
@given(
    cores=st.floats(0.5, 64),
    mem=st.floats(0.5, 256),
    util=st.floats(0.0, 1.0),
    keys=st.integers(2, 10),
    level=st.sampled_from(list(L)),
    data=st.data(),
)
def test_ten_keys_earn_no_more_than_the_whole(
    cores: float, mem: float, util: float, keys: int, level: L, data: st.DataObject
) -> None:
    """One machine split into several keys (same hardware fingerprint) earns no more than as one node."""
    group = GroupFacts(rates=dict(DEFAULT_RATES), geographic=1.3, median_rate=1.0)
    whole = NodeFacts(
        "w", "fp", level, (ResourceUse(CPU, cores, cores * util), ResourceUse(MEM, mem, mem * util)), 9, 1.0
    )
    weights = data.draw(st.lists(st.floats(0.05, 1.0), min_size=keys, max_size=keys))
    total = sum(weights)
    parts = [
        NodeFacts(
            f"k{i}",
            "fp",
            level,
            (
                ResourceUse(CPU, cores * w / total, cores * util * w / total),
                ResourceUse(MEM, mem * w / total, mem * util * w / total),
            ),
            9,
            1.0,
        )
        for i, w in enumerate(weights)
    ]
    one = sum(c.amount_micro for c in settle([whole], group, 1.0))
    split = sum(c.amount_micro for c in settle(parts, group, 1.0))
    assert split <= one + 1e-9 * one + 1  # float summation order may differ by one µFTNS at most


def test_base_rate_moves_bounded_within_floor_and_ceiling_and_keeps_last_good_value() -> None:
    policy = RatePolicy(initial=20_000, floor=2_000, ceiling=200_000, max_step_per_hour=0.1)
    rate = BaseRate(CPU, policy)
    up = rate.update(supply=10, demand=1000, hours=1.0)
    assert up.new == 22_000  # +10 % at most per hour, however large the demand
    down = rate.update(supply=1000, demand=1, hours=0.5)
    assert down.new == round(22_000 * 0.95)  # −5 % in half an hour
    for bad in ((math.nan, 5.0), (0.0, 5.0), (5.0, -1.0), (math.inf, 1.0)):
        kept = rate.update(*bad, hours=1.0)
        assert kept.kept and kept.new == kept.old == down.new
    for _ in range(200):
        rate.update(supply=1, demand=1000, hours=1.0)
    assert rate.rate == policy.ceiling
    for _ in range(400):
        rate.update(supply=1000, demand=0, hours=1.0)
    assert rate.rate == policy.floor


def test_inputs_are_recorded_and_bad_measurements_pay_no_bonus() -> None:
    group = GroupFacts(rates={CPU: 20_000}, median_rate=math.nan)
    node = NodeFacts("n", "fp", L.BENCHMARKED, (ResourceUse(CPU, 2, 1),), streak=9, measured_rate=math.inf)
    credit = earn(node, group, {CPU: 2}, 1.0)
    assert credit.inputs["performance"] == 1.0
    assert credit.inputs["measured_rate"] == credit.inputs["median_rate"] == 0.0
    assert credit.inputs["owner"] == "fp" and credit.inputs["compute_cpu.owner_capacity"] == 2
