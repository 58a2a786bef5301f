"""Earnings, sans-IO: the seed's formula with every factor defined, bounded and recorded.

For one node, one settlement period of ``hours`` and each resource type ``t`` it offers::

    amount_t = capacity_t × hours × base_rate_t × reputation × utilization_t × geographic × performance
               × micro_t
    amount   = floor(Σ_t amount_t)                                             (integer µFTNS)

=================  ==========================================================================  =============
factor             definition                                                                  bounds
=================  ==========================================================================  =============
capacity_t         units of ``t`` the node offers as credited: its claim, cut per checked       ≥ 0
                   resource to what the checks measured (``Verifier.credited``)
base_rate_t        µFTNS per unit-hour, from :class:`BaseRate` (damped supply/demand)           floor–ceiling
reputation         the trust score of the level the verifier gives the node                    0.6–0.95
utilization_t      verified unit-hours served under leases ÷ (capacity_t × hours); never        0–1
                   presence: an idle lease serves nothing
geographic         the group's region bonus (package data ``regions.toml``); verified only      1.0–1.5
performance        1 + 0.5 × (measured ÷ group median − 1) after ``streak`` consecutive         1.0–1.25
                   verified results; verified only
micro_t            1 + (2 − 1) × min(1, micro units_t ÷ the owner's whole capacity_t): the 2×   1.0–2.0
                   covers only the first units of each owner (grouped by owner or hardware
                   fingerprint, never by key); verified only
product            reputation × geographic × performance × micro_t                             ≤ 3.0
=================  ==========================================================================  =============

Self-reported nodes get no bonus (geographic, performance and micro are 1), so they earn at most the
base. Every input is kept in the entry's ``inputs`` (:meth:`Earning.inputs`), and :func:`recompute`
gives the amount back from them alone, so an owner can check any credit. Because the formula is linear
in what was served and the micro share is per owner, splitting one machine into ten keys earns exactly
what the whole would (less rounding).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from prsm_edge.errors import LocalError
from prsm_edge.protocol.messages import TRUST_SCORE, ResourceType, VerificationLevel

__all__ = [
    "DEFAULT_RATES",
    "BaseRate",
    "Earning",
    "EarningsPolicy",
    "GroupFacts",
    "NodeFacts",
    "RateChange",
    "RatePolicy",
    "ResourceUse",
    "earn",
    "owner_capacity",
    "recompute",
    "settle",
]

# Starting base rates, µFTNS per unit-hour (units: messages.RESOURCE_UNITS).
DEFAULT_RATES: Final[dict[ResourceType, int]] = {
    ResourceType.COMPUTE_CPU: 100_000,  # 0.1 FTNS per core-hour: one core meets the default minimum rate
    ResourceType.COMPUTE_GPU: 1_000_000,
    ResourceType.COMPUTE_TPU: 800_000,
    ResourceType.STORAGE_PERSISTENT: 200,
    ResourceType.STORAGE_MEMORY: 10_000,
    ResourceType.STORAGE_CACHE: 1_000,
    ResourceType.BANDWIDTH_INGRESS: 500,
    ResourceType.BANDWIDTH_EGRESS: 500,
    ResourceType.SPECIALIZED_QUANTUM: 200_000,
    ResourceType.SPECIALIZED_EDGE: 300_000,
}

# The first units of each owner that earn the micro-node multiplier.
DEFAULT_MICRO_UNITS: Final[dict[ResourceType, float]] = {
    ResourceType.COMPUTE_CPU: 4,
    ResourceType.COMPUTE_TPU: 1,
    ResourceType.STORAGE_PERSISTENT: 256,
    ResourceType.STORAGE_MEMORY: 8,
    ResourceType.STORAGE_CACHE: 16,
    ResourceType.BANDWIDTH_INGRESS: 100,
    ResourceType.BANDWIDTH_EGRESS: 100,
    ResourceType.SPECIALIZED_EDGE: 1,
}


@dataclass(frozen=True, slots=True)
class EarningsPolicy:
    """The published caps and constants of the formula."""

    reputation_min: float = 0.6
    reputation_max: float = 0.95
    geographic_max: float = 1.5
    performance_max: float = 1.25
    performance_slope: float = 0.5
    streak: int = 5  # consecutive verified results before any performance bonus
    micro_multiplier: float = 2.0
    micro_units: Mapping[ResourceType, float] = field(default_factory=lambda: dict(DEFAULT_MICRO_UNITS))
    product_max: float = 3.0


@dataclass(frozen=True, slots=True)
class ResourceUse:
    """What a node offered of one resource type in the period and how much verified work it served."""

    type: ResourceType
    capacity: float  # as credited (credit by measurement), never the raw claim of a checked resource
    served: float  # verified unit-hours served under leases


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """Everything about one node that the formula reads, for one period."""

    node: str
    owner: str  # the verified owner, else the hardware fingerprint, else the node id
    level: VerificationLevel
    resources: tuple[ResourceUse, ...]
    streak: int = 0  # consecutive verified results (the verifier's record)
    measured_rate: float = 0.0  # per-core CPU rate the verifier credits (measured, never above the claim)


@dataclass(frozen=True, slots=True)
class GroupFacts:
    """The group-wide inputs: base rates, region bonus, the members' median measured throughput."""

    rates: Mapping[ResourceType, int]
    geographic: float = 1.0
    median_rate: float = 0.0


@dataclass(frozen=True, slots=True)
class Earning:
    """One node's amount for one period and every input that produced it."""

    node: str
    amount_micro: int
    inputs: dict[str, int | float | str]


def _clamp(value: float, low: float, high: float) -> float:
    return low if not math.isfinite(value) else min(high, max(low, value))


def _num(value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise LocalError(f"earnings inputs must be finite and non-negative, not {value}")
    return value


def owner_capacity(nodes: Iterable[NodeFacts]) -> dict[str, dict[ResourceType, float]]:
    """Each owner's whole capacity per resource type (the micro share is divided over it)."""
    out: dict[str, dict[ResourceType, float]] = {}
    for n in nodes:
        per = out.setdefault(n.owner, {})
        for r in n.resources:
            per[r.type] = per.get(r.type, 0.0) + _num(r.capacity)
    return out


def earn(
    node: NodeFacts,
    group: GroupFacts,
    owner_total: Mapping[ResourceType, float],
    hours: float,
    policy: EarningsPolicy = EarningsPolicy(),
) -> Earning:
    """The amount one node earned in one period, with its inputs."""
    p = policy
    verified = node.level is not VerificationLevel.SELF_REPORTED
    reputation = _clamp(TRUST_SCORE[node.level], p.reputation_min, p.reputation_max)
    geographic = _clamp(group.geographic, 1.0, p.geographic_max) if verified else 1.0
    measured = node.measured_rate if math.isfinite(node.measured_rate) and node.measured_rate > 0 else 0.0
    median = group.median_rate if math.isfinite(group.median_rate) and group.median_rate > 0 else 0.0
    performance = 1.0
    if verified and node.streak >= p.streak and median > 0 and measured > 0:
        ratio = measured / median
        performance = _clamp(1.0 + p.performance_slope * (ratio - 1.0), 1.0, p.performance_max)
    inputs: dict[str, int | float | str] = {
        "formula": "earnings/v1",
        "hours": _num(hours),
        "level": node.level.value,
        "reputation": reputation,
        "geographic": geographic,
        "performance": performance,
        "streak": node.streak,
        "measured_rate": measured,
        "median_rate": median,
        "owner": node.owner[:128],
        "product_max": p.product_max,
    }
    for use in sorted(node.resources, key=lambda r: r.type.value):
        rate = group.rates.get(use.type)
        if rate is None or use.capacity <= 0:
            continue
        micro = 1.0
        units = p.micro_units.get(use.type, 0.0)
        whole = owner_total.get(use.type, use.capacity)
        if verified and units > 0 and whole > 0:
            micro = 1.0 + (p.micro_multiplier - 1.0) * min(1.0, units / whole)
        t = use.type.value
        inputs[f"{t}.capacity"] = _num(use.capacity)
        inputs[f"{t}.served"] = _num(use.served)
        inputs[f"{t}.rate"] = int(rate)
        inputs[f"{t}.micro"] = micro
        inputs[f"{t}.owner_capacity"] = _num(whole)
    return Earning(node.node, recompute(inputs), inputs)


def recompute(inputs: Mapping[str, int | float | str]) -> int:
    """The amount in µFTNS from a credit's recorded inputs alone (what an owner runs to check it)."""
    if inputs.get("formula") != "earnings/v1":
        raise LocalError(f"unknown earnings formula {inputs.get('formula')!r}")

    def num(key: str) -> float:
        value = inputs[key]
        if isinstance(value, str) or not math.isfinite(value):
            raise LocalError(f"input {key} is not a finite number")
        return float(value)

    hours = num("hours")
    common = num("reputation") * num("geographic") * num("performance")
    total = 0.0
    for key in sorted(k for k in inputs if k.endswith(".capacity")):
        t = key.removesuffix(".capacity")
        capacity = num(key)
        if capacity <= 0 or hours <= 0:
            continue
        utilization = _clamp(num(f"{t}.served") / (capacity * hours), 0.0, 1.0)
        product = min(common * num(f"{t}.micro"), num("product_max"))
        total += capacity * hours * num(f"{t}.rate") * utilization * product
    return math.floor(total)


def settle(
    nodes: Iterable[NodeFacts],
    group: GroupFacts,
    hours: float,
    policy: EarningsPolicy = EarningsPolicy(),
) -> list[Earning]:
    """Every node's earning for one period (micro shares computed per owner); zero amounts left out."""
    facts = list(nodes)
    totals = owner_capacity(facts)
    out = [earn(n, group, totals[n.owner], hours, policy) for n in facts]
    return [e for e in out if e.amount_micro > 0]


# ---- the base rate ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RatePolicy:
    """Bounds of the base-rate controller of one resource type."""

    initial: int
    floor: int
    ceiling: int
    max_step_per_hour: float = 0.10  # at most ±10 % per hour
    gain: float = 0.5  # how strongly demand/supply moves the rate (an exponent)

    @classmethod
    def around(cls, initial: int) -> RatePolicy:
        """A policy that starts at ``initial`` with a floor a tenth of it and a ceiling ten times it."""
        return cls(initial=initial, floor=max(1, initial // 10), ceiling=initial * 10)


@dataclass(frozen=True, slots=True)
class RateChange:
    """One step of the controller: the new rate, the inputs it saw, and whether it kept the old one."""

    resource: ResourceType
    old: int
    new: int
    supply: float
    demand: float
    hours: float
    kept: str = ""  # why the last good value was kept (bad inputs), or empty


class BaseRate:
    """A damped supply/demand controller: bounded change per hour, a floor and a ceiling."""

    def __init__(self, resource: ResourceType, policy: RatePolicy, rate: int | None = None) -> None:
        if not 0 < policy.floor <= policy.initial <= policy.ceiling:
            raise LocalError("a base rate needs 0 < floor <= initial <= ceiling")
        self.resource = resource
        self.policy = policy
        self.rate = policy.initial if rate is None else int(_clamp(rate, policy.floor, policy.ceiling))

    def update(self, supply: float, demand: float, hours: float) -> RateChange:
        """Step the rate toward demand/supply over ``hours``; bad inputs keep the last good value."""
        p, old = self.policy, self.rate
        bad = ""
        if not all(math.isfinite(x) for x in (supply, demand, hours)):
            bad = "non-finite input"
        elif supply <= 0:
            bad = "no supply"
        elif demand < 0 or hours <= 0:
            bad = "negative demand or no time passed"
        if bad:
            return RateChange(self.resource, old, old, supply, demand, hours, kept=bad)
        ratio = _clamp(demand / supply, 0.01, 100.0)
        step = min(p.max_step_per_hour * hours, 0.5)
        factor = _clamp(ratio**p.gain, 1.0 - step, 1.0 + step)
        self.rate = int(_clamp(round(old * factor), p.floor, p.ceiling))
        return RateChange(self.resource, old, self.rate, supply, demand, hours)
