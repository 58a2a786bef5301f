"""Allocation, sans-IO: match a task's requirements to members under every owner constraint.

Every owner constraint is a *hard filter* with a name; a member that fails one is left out and the
answer says which (``filtered``). The survivors are scored by a strategy, an explicit weight vector over
four features in 0–1 (cost, performance, latency, reliability); the per-node scores come back with the
answer. Capacity is then filled greedily in score order (a task may span several members, each giving
part of what is asked, never more than it has free). Finally :func:`safety_check` re-checks the whole
placement against every constraint, independently of how it was built, and :func:`allocate` refuses
(:class:`AllocationRefused`, naming the constraint) rather than return anything that breaks one.

=====================  ============================================================================
constraint             a member passes when
=====================  ============================================================================
online                 its coordinator sees it online
offering               no owner guardrail (temperature, battery, power) holds its capacity back
temperature_limit      its last temperature is at most the owner's ``max_cpu_temperature``
power_limit            its last power draw is at most the owner's ``max_power_consumption``
trust_level            its verified level's trust score reaches the task's minimum level
security_level         the task runs at least at the security level the owner asks for
                       (standard < high < maximum)
priority               the task's priority is at most the owner's ``priority_level``
uptime_commitment      the owner's commitment reaches the task's minimum uptime
latency                its measured latency is within the task's maximum (unknown passes)
allocation_percentage  it has free capacity of a requested type within what the owner allowed
                       (its offer = detected × the owner's percentage, minus leases it holds)
minimum_hourly_rate    what its share pays per hour reaches the owner's minimum hourly rate
max_price              the whole placement costs at most the task's maximum price per hour
capacity               the members together cover every requested amount
=====================  ============================================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from prsm_edge.errors import LocalError, Reason, RejectedMessage
from prsm_edge.protocol.messages import RESOURCE_UNITS, TRUST_SCORE, ResourceType, VerificationLevel

__all__ = [
    "SECURITY_RANK",
    "STRATEGIES",
    "Allocation",
    "AllocationRefused",
    "Candidate",
    "Placement",
    "Score",
    "Task",
    "Violation",
    "Weights",
    "allocate",
    "check_owner_terms",
    "explain_shortfall",
    "hard_filter",
    "safety_check",
]

SECURITY_RANK: Final = {"standard": 0, "high": 1, "maximum": 2}
_EPS: Final = 1e-9


@dataclass(frozen=True, slots=True)
class Weights:
    """How much each feature (0–1, higher is better) counts in a strategy's score."""

    cost: float
    performance: float
    latency: float
    reliability: float


STRATEGIES: Final[dict[str, Weights]] = {
    "cost_optimal": Weights(cost=0.7, performance=0.1, latency=0.1, reliability=0.1),
    "performance_optimal": Weights(cost=0.1, performance=0.7, latency=0.1, reliability=0.1),
    "latency_optimal": Weights(cost=0.1, performance=0.1, latency=0.7, reliability=0.1),
    "reliability_optimal": Weights(cost=0.1, performance=0.1, latency=0.1, reliability=0.7),
    "hybrid_optimal": Weights(cost=0.25, performance=0.25, latency=0.25, reliability=0.25),
}


@dataclass(frozen=True, slots=True)
class Candidate:
    """One member as allocation sees it: its offer, what leases hold, its owner's terms, its readings."""

    node: str
    level: VerificationLevel
    offered: Mapping[ResourceType, float]  # the owner-allowed capacity (detected × percentage)
    held: Mapping[ResourceType, float] = field(default_factory=dict)  # leased (offered or active)
    online: bool = True
    offering: bool = True
    min_hourly_rate_micro: int = 0
    security_level: str = "standard"
    priority_level: int = 5
    uptime_commitment: float = 0.95
    temperature_c: float | None = None
    max_temperature_c: float = 80.0
    power_w: float | None = None
    max_power_w: float = 100.0
    latency_ms: float | None = None
    performance: float = 1.0  # measured throughput ÷ the group's median (1 when unknown)
    reliability: float = 0.0  # 0–1; trust score × uptime commitment when nothing better is known

    def free(self, rtype: ResourceType) -> float:
        """Capacity of ``rtype`` the owner allows that no lease holds."""
        return max(0.0, self.offered.get(rtype, 0.0) - self.held.get(rtype, 0.0))


@dataclass(frozen=True, slots=True)
class Task:
    """What a task needs, and the most it pays."""

    task_id: str
    amounts: Mapping[ResourceType, float]
    duration_ms: int
    max_price_micro_per_hour: int
    min_level: VerificationLevel = VerificationLevel.SELF_REPORTED
    max_latency_ms: float | None = None
    security_level: str = "standard"
    priority: int = 5
    min_uptime: float = 0.0

    def check(self) -> None:
        """Refuse a malformed task (what and why)."""
        if not self.amounts or any(not math.isfinite(v) or v <= 0 for v in self.amounts.values()):
            raise LocalError("a task needs at least one resource amount, each finite and above zero")
        if self.duration_ms <= 0 or self.max_price_micro_per_hour <= 0:
            raise LocalError("a task needs a duration and a maximum price above zero")
        if self.security_level not in SECURITY_RANK:
            raise LocalError(f"security_level must be one of {', '.join(SECURITY_RANK)}")


@dataclass(frozen=True, slots=True)
class Score:
    """One member's score under a strategy, and the features it came from."""

    total: float
    cost: float
    performance: float
    latency: float
    reliability: float


@dataclass(frozen=True, slots=True)
class Placement:
    """What one member gives the task, and what that pays per hour."""

    node: str
    amounts: Mapping[ResourceType, float]
    rate_micro_per_hour: int


@dataclass(frozen=True, slots=True)
class Allocation:
    """The answer: placements, every scored member's score, and why the others were left out."""

    task_id: str
    strategy: str
    placements: tuple[Placement, ...]
    scores: dict[str, Score]
    filtered: dict[str, str]

    @property
    def price_micro_per_hour(self) -> int:
        """What the whole placement costs per hour."""
        return sum(p.rate_micro_per_hour for p in self.placements)


@dataclass(frozen=True, slots=True)
class Violation:
    """A constraint a placement breaks."""

    constraint: str
    node: str
    detail: str


class AllocationRefused(LocalError):
    """No allocation was made: ``constraint`` names what would have been broken (or what is missing)."""

    def __init__(self, constraint: str, detail: str, filtered: Mapping[str, str] | None = None) -> None:
        super().__init__(f"allocation refused ({constraint}): {detail}")
        self.constraint = constraint
        self.detail = detail
        self.filtered = dict(filtered or {})


def check_owner_terms(
    security_level: str,
    min_hourly_rate_micro: int,
    priority_level: int,
    max_temp_c: float,
    max_power_w: float,
) -> None:
    """Refuse (``implausible``) owner terms from the network that allocation could not use safely."""
    problem = ""
    if security_level not in SECURITY_RANK:
        problem = f"security level {security_level!r} is not one of {', '.join(SECURITY_RANK)}"
    elif not 0 <= min_hourly_rate_micro <= 10**15:
        problem = f"minimum hourly rate {min_hourly_rate_micro} µFTNS is out of range"
    elif not 1 <= priority_level <= 10:
        problem = f"priority level {priority_level} is not 1–10"
    elif not (math.isfinite(max_temp_c) and 0.0 < max_temp_c <= 150.0):
        problem = f"temperature limit {max_temp_c} °C is not within 0–150"
    elif not (math.isfinite(max_power_w) and 0.0 < max_power_w <= 1_000_000.0):
        problem = f"power limit {max_power_w} W is not within 0–1,000,000"
    if problem:
        raise RejectedMessage(Reason.IMPLAUSIBLE, problem)


def _price(amounts: Mapping[ResourceType, float], rates: Mapping[ResourceType, int]) -> int:
    return math.ceil(sum(v * rates.get(t, 0) for t, v in amounts.items()) - _EPS)


def hard_filter(c: Candidate, task: Task) -> str:
    """The first owner (or task) constraint ``c`` fails, or ``""`` if it passes them all."""
    if not c.online:
        return "online"
    if not c.offering:
        return "offering"
    if c.temperature_c is not None and not c.temperature_c <= c.max_temperature_c:
        return "temperature_limit"
    if c.power_w is not None and not c.power_w <= c.max_power_w:
        return "power_limit"
    if TRUST_SCORE[c.level] < TRUST_SCORE[task.min_level]:
        return "trust_level"
    if SECURITY_RANK.get(task.security_level, -1) < SECURITY_RANK.get(c.security_level, 99):
        return "security_level"
    if task.priority > c.priority_level:
        return "priority"
    if not c.uptime_commitment >= task.min_uptime:
        return "uptime_commitment"
    if (
        task.max_latency_ms is not None
        and c.latency_ms is not None
        and not c.latency_ms <= task.max_latency_ms
    ):
        return "latency"
    if all(c.free(t) <= _EPS for t in task.amounts):
        return "allocation_percentage"
    return ""


def _scores(cands: Sequence[Candidate], weights: Weights, task: Task) -> dict[str, Score]:
    top_rate = max((c.min_hourly_rate_micro for c in cands), default=0)
    top_perf = max((c.performance for c in cands if math.isfinite(c.performance)), default=0.0)
    worst = max((c.latency_ms for c in cands if c.latency_ms is not None), default=0.0)
    out = {}
    for c in cands:
        cost = 1.0 - c.min_hourly_rate_micro / top_rate if top_rate > 0 else 1.0
        perf = c.performance / top_perf if top_perf > 0 and math.isfinite(c.performance) else 0.0
        if c.latency_ms is None:
            lat = 0.5
        else:
            bound = task.max_latency_ms or worst or 1.0
            lat = max(0.0, 1.0 - c.latency_ms / bound) if bound > 0 else 0.0
        rel = c.reliability or TRUST_SCORE[c.level] * max(0.0, min(1.0, c.uptime_commitment))
        total = (
            weights.cost * cost
            + weights.performance * perf
            + weights.latency * lat
            + weights.reliability * rel
        )
        out[c.node] = Score(total, cost, perf, lat, rel)
    return out


def allocate(
    task: Task,
    candidates: Sequence[Candidate],
    rates: Mapping[ResourceType, int],
    strategy: str = "hybrid_optimal",
) -> Allocation:
    """Place ``task`` on members, or raise :class:`AllocationRefused` naming the constraint."""
    task.check()
    weights = STRATEGIES.get(strategy)
    if weights is None:
        raise LocalError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    filtered: dict[str, str] = {}
    fit = []
    for c in candidates:
        why = hard_filter(c, task)
        if not why and c.min_hourly_rate_micro > 0:
            largest = {t: min(c.free(t), v) for t, v in task.amounts.items()}
            if _price(largest, rates) < c.min_hourly_rate_micro:
                why = "minimum_hourly_rate"  # even the largest share it could take pays less than its minimum
        if why:
            filtered[c.node] = why
        else:
            fit.append(c)
    scores = _scores(fit, weights, task)
    order = sorted(fit, key=lambda c: (-scores[c.node].total, c.node))
    remaining = dict(task.amounts)
    placements = []
    for c in order:
        if all(v <= _EPS for v in remaining.values()):
            break
        share = {t: min(c.free(t), v) for t, v in remaining.items() if v > _EPS and c.free(t) > _EPS}
        if not share:
            continue
        rate = _price(share, rates)
        if rate < c.min_hourly_rate_micro:
            filtered[c.node] = "minimum_hourly_rate"
            continue
        placements.append(Placement(c.node, share, rate))
        for t, v in share.items():
            remaining[t] -= v
    short = {t.value: round(v, 6) for t, v in remaining.items() if v > 1e-6}
    if short:
        detail = explain_shortfall(task, remaining, filtered, candidates, rates)
        raise AllocationRefused("capacity", detail, filtered)
    alloc = Allocation(task.task_id, strategy, tuple(placements), scores, filtered)
    violations = safety_check(task, alloc, candidates, rates)
    if violations:
        first = violations[0]
        raise AllocationRefused(first.constraint, f"{first.node}: {first.detail}", filtered)
    return alloc


def _amounts(amounts: Mapping[ResourceType, float]) -> str:
    return " + ".join(f"{v:g} {RESOURCE_UNITS.get(t, t.value)} ({t.value})" for t, v in amounts.items())


def _ftns(micro: float) -> str:
    return f"{micro / 1_000_000:g} FTNS/h"


def explain_shortfall(
    task: Task,
    remaining: Mapping[ResourceType, float],
    filtered: Mapping[str, str],
    candidates: Sequence[Candidate],
    rates: Mapping[ResourceType, int],
) -> str:
    """Say why members could not cover ``task``: how much is short, and each filter with its figures.

    An operator reads this to act (lower a minimum rate, raise a percentage, wait for a member), so
    every filter that left members out is named with how many it left out and the numbers it compared.
    """
    short = {t: v for t, v in remaining.items() if v > 1e-6}
    head = (
        f"no members offer {_amounts(task.amounts)} at ≤ {_ftns(task.max_price_micro_per_hour)}"
        f" ({_amounts(short)} short)"
    )
    if not candidates:
        return f"{head}: the group has no members"
    by_node = {c.node: c for c in candidates}
    groups: dict[str, list[Candidate]] = {}
    for node, why in filtered.items():
        if node in by_node:
            groups.setdefault(why, []).append(by_node[node])
    parts = [
        f"{len(members)} filtered by {why.replace('_', ' ')}{_figures(why, members, task, rates)}"
        for why, members in sorted(groups.items(), key=lambda kv: -len(kv[1]))
    ]
    placed = len(candidates) - sum(len(m) for m in groups.values())
    free = {t: sum(c.free(t) for c in candidates if c.node not in filtered) for t in task.amounts}
    if placed:
        parts.append(f"{placed} usable with {_amounts(free)} free in all")
    return f"{head}: " + "; ".join(parts)


def _figures(why: str, members: list[Candidate], task: Task, rates: Mapping[ResourceType, int]) -> str:
    """The numbers behind one filter's verdict on ``members`` (all failed it)."""
    match why:
        case "minimum_hourly_rate":
            shares = ({t: min(c.free(t), v) for t, v in task.amounts.items()} for c in members)
            pays = max(_price(share, rates) for share in shares)
            asks = min(c.min_hourly_rate_micro for c in members)
            return f" (their share would pay ≤ {_ftns(pays)}; they ask ≥ {_ftns(asks)})"
        case "trust_level":
            return f" (below the task's minimum level {task.min_level.value})"
        case "security_level":
            level = max(members, key=lambda c: SECURITY_RANK.get(c.security_level, 99)).security_level
            return f" (owners ask up to {level}; the task runs at {task.security_level})"
        case "priority":
            top = max(c.priority_level for c in members)
            return f" (task priority {task.priority}; owners allow ≤ {top})"
        case "uptime_commitment":
            most = max(c.uptime_commitment for c in members)
            return f" (they commit ≤ {most:g}; the task needs {task.min_uptime:g})"
        case "latency":
            best = min(c.latency_ms for c in members if c.latency_ms is not None)
            return f" (best {best:g} ms; the task allows {task.max_latency_ms or 0:g} ms)"
        case "allocation_percentage":
            return " (no free capacity of the requested kinds within their owners' offer)"
        case "offering":
            return " (holding capacity back: paused or over a guardrail)"
        case "temperature_limit" | "power_limit":
            return " (over their owners' limit now)"
    return ""


def safety_check(
    task: Task,
    alloc: Allocation,
    candidates: Sequence[Candidate],
    rates: Mapping[ResourceType, int],
) -> list[Violation]:
    """Every constraint the placement breaks (empty when it is safe); independent of :func:`allocate`."""
    by_node = {c.node: c for c in candidates}
    out: list[Violation] = []
    given: dict[ResourceType, float] = {}
    seen: set[str] = set()
    for p in alloc.placements:
        c = by_node.get(p.node)
        if c is None:
            out.append(Violation("online", p.node, "not a member"))
            continue
        if p.node in seen:
            out.append(Violation("allocation_percentage", p.node, "placed twice in one allocation"))
        seen.add(p.node)
        why = hard_filter(c, task)
        if why:
            out.append(Violation(why, p.node, "fails the owner's constraint"))
        for t, v in p.amounts.items():
            if not math.isfinite(v) or v <= 0 or v > c.free(t) + _EPS:
                out.append(
                    Violation("allocation_percentage", p.node, f"{t.value} {v} exceeds the free {c.free(t)}")
                )
            given[t] = given.get(t, 0.0) + v
        if p.rate_micro_per_hour < c.min_hourly_rate_micro:
            out.append(Violation("minimum_hourly_rate", p.node, f"pays {p.rate_micro_per_hour} µFTNS/h"))
        if p.rate_micro_per_hour < _price(p.amounts, rates):
            out.append(Violation("max_price", p.node, "paid below the market rate of its share"))
    if alloc.price_micro_per_hour > task.max_price_micro_per_hour:
        out.append(
            Violation(
                "max_price",
                "*",
                f"costs {alloc.price_micro_per_hour} µFTNS/h, above {task.max_price_micro_per_hour}",
            )
        )
    for t, v in task.amounts.items():
        if abs(given.get(t, 0.0) - v) > 1e-6:
            out.append(Violation("capacity", "*", f"{t.value}: placed {given.get(t, 0.0)} of {v}"))
    return out
