"""Allocation: owner constraints are hard filters with names; strategies score; the safety check refuses."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prsm_edge.protocol.allocation import (
    STRATEGIES,
    Allocation,
    AllocationRefused,
    Candidate,
    Placement,
    Task,
    allocate,
    safety_check,
)
from prsm_edge.protocol.earnings import DEFAULT_RATES
from prsm_edge.protocol.leases import LeaseBook
from prsm_edge.protocol.messages import ResourceType, VerificationLevel

CPU, MEM = ResourceType.COMPUTE_CPU, ResourceType.STORAGE_MEMORY
L = VerificationLevel
RATES = dict(DEFAULT_RATES)


def cand(node: str, cores: float = 4.0, **kw: object) -> Candidate:
    base: dict[str, object] = {"node": node, "level": L.BENCHMARKED, "offered": {CPU: cores, MEM: 8.0}}
    base.update(kw)
    return Candidate(**base)  # type: ignore[arg-type]


def task(cores: float = 2.0, **kw: object) -> Task:
    base: dict[str, object] = {
        "task_id": "t1",
        "amounts": {CPU: cores},
        "duration_ms": 3_600_000,
        "max_price_micro_per_hour": 10**9,
    }
    base.update(kw)
    return Task(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("override", "task_kw", "constraint"),
    [
        ({"online": False}, {}, "online"),
        ({"offering": False}, {}, "offering"),
        ({"temperature_c": 85.0, "max_temperature_c": 80.0}, {}, "temperature_limit"),
        ({"power_w": 150.0, "max_power_w": 100.0}, {}, "power_limit"),
        ({"level": L.SELF_REPORTED}, {"min_level": L.PEER_VERIFIED}, "trust_level"),
        ({"security_level": "high"}, {"security_level": "standard"}, "security_level"),
        ({"priority_level": 3}, {"priority": 7}, "priority"),
        ({"uptime_commitment": 0.5}, {"min_uptime": 0.9}, "uptime_commitment"),
        ({"latency_ms": 90.0}, {"max_latency_ms": 20.0}, "latency"),
        ({"held": {CPU: 4.0}}, {}, "allocation_percentage"),
        ({"min_hourly_rate_micro": 10**8}, {}, "minimum_hourly_rate"),
        ({"temperature_c": float("nan")}, {}, "temperature_limit"),
    ],
)
def test_each_owner_constraint_is_a_named_hard_filter(
    override: dict[str, object], task_kw: dict[str, object], constraint: str
) -> None:
    bad = dataclasses.replace(cand("bad"), **override)  # type: ignore[arg-type]
    with pytest.raises(AllocationRefused) as exc:
        allocate(task(**task_kw), [bad], RATES)
    assert exc.value.filtered["bad"] == constraint
    assert f"1 filtered by {constraint.replace('_', ' ')}" in exc.value.detail  # named, with figures
    # and with a good member beside it, the task goes there, with the reason the other was left out
    alloc = allocate(task(**task_kw), [bad, cand("good", priority_level=10)], RATES)
    assert [p.node for p in alloc.placements] == ["good"]
    assert alloc.filtered == {"bad": constraint}


def test_max_price_refusal_names_the_constraint() -> None:
    with pytest.raises(AllocationRefused) as exc:
        allocate(task(2.0, max_price_micro_per_hour=1_000), [cand("a")], RATES)
    assert exc.value.constraint == "max_price"


def test_strategies_are_weight_vectors_with_per_node_scores() -> None:
    members = [
        cand("cheap", min_hourly_rate_micro=0, performance=0.5, latency_ms=50.0),
        cand("fast", min_hourly_rate_micro=20_000, performance=2.0, latency_ms=50.0),
        cand("near", min_hourly_rate_micro=20_000, performance=0.5, latency_ms=1.0),
    ]
    picks = {}
    for name in STRATEGIES:
        alloc = allocate(task(1.0), members, RATES, name)
        assert set(alloc.scores) == {"cheap", "fast", "near"}
        picks[name] = alloc.placements[0].node
    assert picks["cost_optimal"] == "cheap"
    assert picks["performance_optimal"] == "fast"
    assert picks["latency_optimal"] == "near"
    with pytest.raises(Exception, match="unknown strategy"):
        allocate(task(), members, RATES, "random")


def test_safety_check_refuses_a_placement_that_breaks_a_constraint() -> None:
    members = [cand("a", cores=2.0), cand("hot", temperature_c=99.0)]
    t = task(3.0)
    forged = Allocation("t1", "hybrid_optimal", (Placement("a", {CPU: 3.0}, 300_000),), {}, {})
    names = {v.constraint for v in safety_check(t, forged, members, RATES)}
    assert "allocation_percentage" in names  # 3 cores from a member that allows 2
    hot = Allocation("t1", "hybrid_optimal", (Placement("hot", {CPU: 3.0}, 300_000),), {}, {})
    assert [v.constraint for v in safety_check(t, hot, members, RATES)] == ["temperature_limit"]


owner = st.fixed_dictionaries(
    {
        "cores": st.floats(0.0, 16.0),
        "held": st.floats(0.0, 16.0),
        "online": st.booleans(),
        "offering": st.booleans(),
        "level": st.sampled_from(list(L)),
        "min_rate": st.integers(0, 200_000),
        "security": st.sampled_from(["standard", "high", "maximum"]),
        "priority": st.integers(1, 10),
        "uptime": st.floats(0.0, 1.0),
        "temp": st.one_of(st.none(), st.floats(20.0, 110.0)),
    }
)


@settings(max_examples=200, deadline=None)
@given(
    owners=st.lists(owner, min_size=1, max_size=12),
    need=st.floats(0.1, 40.0),
    min_level=st.sampled_from(list(L)),
    security=st.sampled_from(["standard", "high", "maximum"]),
    priority=st.integers(1, 10),
    min_uptime=st.floats(0.0, 1.0),
    strategy=st.sampled_from(list(STRATEGIES)),
)
def test_allocations_never_exceed_what_an_owner_allowed(
    owners: list[dict[str, object]],
    need: float,
    min_level: L,
    security: str,
    priority: int,
    min_uptime: float,
    strategy: str,
) -> None:
    members = [
        Candidate(
            node=f"n{i}",
            level=o["level"],  # type: ignore[arg-type]
            offered={CPU: o["cores"]},  # type: ignore[dict-item]
            held={CPU: min(o["held"], o["cores"])},  # type: ignore[type-var, dict-item]
            online=bool(o["online"]),
            offering=bool(o["offering"]),
            min_hourly_rate_micro=o["min_rate"],  # type: ignore[arg-type]
            security_level=o["security"],  # type: ignore[arg-type]
            priority_level=o["priority"],  # type: ignore[arg-type]
            uptime_commitment=o["uptime"],  # type: ignore[arg-type]
            temperature_c=o["temp"],  # type: ignore[arg-type]
        )
        for i, o in enumerate(owners)
    ]
    t = Task(
        task_id="t",
        amounts={CPU: need},
        duration_ms=60_000,
        max_price_micro_per_hour=10**9,
        min_level=min_level,
        security_level=security,
        priority=priority,
        min_uptime=min_uptime,
    )
    try:
        alloc = allocate(t, members, RATES, strategy)
    except AllocationRefused:
        return
    by = {m.node: m for m in members}
    assert safety_check(t, alloc, members, RATES) == []
    for p in alloc.placements:
        m = by[p.node]
        assert p.amounts[CPU] <= m.offered[CPU] - m.held.get(CPU, 0.0) + 1e-9  # within the owner's share
        assert m.online and m.offering
        assert p.rate_micro_per_hour >= m.min_hourly_rate_micro
        assert m.temperature_c is None or m.temperature_c <= m.max_temperature_c
        assert t.priority <= m.priority_level and m.uptime_commitment >= t.min_uptime
    # Leasing what was allocated never books more than an owner allowed, however often it is repeated.
    book = LeaseBook()
    offered = {m.node: {CPU: m.offered[CPU] - m.held.get(CPU, 0.0)} for m in members}
    book.offer(alloc, offered, 0, 60_000)
    for p in alloc.placements:
        assert book.held(p.node)[CPU] <= offered[p.node][CPU] + 1e-9


def test_owner_terms_from_the_network_are_kept_and_checked() -> None:
    """The roster keeps what allocation filters on (it used to drop security level and minimum rate),
    and refuses terms it could not use safely."""
    from nacl.signing import SigningKey

    from prsm_edge.errors import Reason
    from prsm_edge.protocol import messages as m
    from prsm_edge.protocol import topics as t
    from prsm_edge.protocol.envelope import Signer
    from prsm_edge.protocol.group import Group, GroupConfig, Rejection

    coord = Signer(SigningKey(b"\x01" * 32))
    g = Group(
        GroupConfig(site="s", group="g", coordinator=coord.node_id, public_key=coord.public_key, epoch=1)
    )

    def birth(key: bytes, **terms: object) -> list[object]:
        node = Signer(SigningKey(key))
        msg = m.NodeBirth(
            node=node.node_id,
            bdseq=1,
            public_key=node.public_key,
            device_class="generic",
            software="test",
            hw_fingerprint="fp",
            resources=[m.ResourceSpec(type=CPU, capacity=2.0, unit="cores")],
            **terms,  # type: ignore[arg-type]
        )
        return list(
            g.receive(t.node(t.Kind.NODE_BIRTH, "s", "g", node.node_id), node.seal(msg, 1_000), 1_000)
        )

    birth(b"\x02" * 32, security_level="high", min_hourly_rate_micro=250_000, priority_level=8)
    (member,) = g.members.values()
    assert (member.security_level, member.min_hourly_rate_micro, member.priority_level) == (
        "high",
        250_000,
        8,
    )
    for i, bad in enumerate(
        [
            {"security_level": "lol"},
            {"priority_level": 99},
            {"max_temperature_c": float("nan")},
            {"max_power_w": float("inf")},
            {"min_hourly_rate_micro": -1},
        ]
    ):
        effects = birth(bytes([3 + i]) * 32, **bad)
        assert [e.reason for e in effects if isinstance(e, Rejection)] == [Reason.IMPLAUSIBLE], bad
    assert len(g.members) == 1


def test_a_capacity_refusal_names_each_filter_with_its_figures() -> None:
    pricey = [cand(f"p{i}", min_hourly_rate_micro=1_000_000) for i in range(3)]
    with pytest.raises(AllocationRefused) as exc:
        allocate(task(2.0, max_price_micro_per_hour=500_000), pricey, RATES)
    assert exc.value.constraint == "capacity"
    assert exc.value.detail == (
        "no members offer 2 cores (compute_cpu) at ≤ 0.5 FTNS/h (2 cores (compute_cpu) short): "
        "3 filtered by minimum hourly rate (their share would pay ≤ 0.2 FTNS/h; they ask ≥ 1 FTNS/h)"
    )
    # Several filters, most common first, and what the usable members had free.
    mixed = [
        cand("busy", held={CPU: 4.0}),
        cand("paused", offering=False),
        cand("low", level=L.SELF_REPORTED),
        cand("low2", level=L.SELF_REPORTED),
        cand("small", cores=0.5),
    ]
    with pytest.raises(AllocationRefused) as exc:
        allocate(task(2.0, min_level=L.BENCHMARKED), mixed, RATES)
    assert exc.value.detail.endswith(
        "2 filtered by trust level (below the task's minimum level benchmarked); "
        "1 filtered by allocation percentage (no free capacity of the requested kinds within their owners' "
        "offer); 1 filtered by offering (holding capacity back: paused or over a guardrail); "
        "1 usable with 0.5 cores (compute_cpu) free in all"
    )
    with pytest.raises(AllocationRefused) as exc:
        allocate(task(1.0), [], RATES)
    assert exc.value.detail.endswith(": the group has no members")


def test_a_default_member_takes_an_ordinary_task_under_one_core() -> None:
    """The default owner's minimum rate must not refuse a small task (0.5 core, 1 GB) at starting rates."""
    from prsm_edge.node.agent import AgentOptions
    from prsm_edge.settings import Settings

    floor = Settings().min_hourly_rate_micro
    assert AgentOptions.__dataclass_fields__["min_hourly_rate_micro"].default == floor
    member = cand("default", min_hourly_rate_micro=floor)
    small = task(0.5, amounts={CPU: 0.5, MEM: 1.0})
    alloc = allocate(small, [member], RATES)
    assert [p.node for p in alloc.placements] == ["default"]
