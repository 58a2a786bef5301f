"""The group's market, sans-IO: members' listings and the market part of the group summary.

A listing is one member's offer (resources, what is free of leases, its owner's price floor, the level
the verifier gives it), published retained by the coordinator on ``market/{node}``. The summary's
``market`` map carries, per resource type, supply (capacity on offer by online members), demand
(capacity held by open leases) and utilization (demand ÷ supply), the base rates, and, per device
class, the 25th/50th/75th percentile of the hourly earnings of the last settlement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prsm_edge.protocol.group import Member
from prsm_edge.protocol.messages import MarketListing, ResourceType, VerificationLevel

__all__ = ["listing", "market_summary", "percentile"]


def listing(member: Member, level: VerificationLevel, held: Mapping[ResourceType, float]) -> MarketListing:
    """One member's retained listing."""
    free = {r.type.value: round(max(0.0, r.capacity - held.get(r.type, 0.0)), 6) for r in member.resources}
    return MarketListing(
        node=member.node,
        device_class=member.device_class,
        level=level,
        resources=list(member.resources),
        free=free,
        min_hourly_rate_micro=member.min_hourly_rate_micro,
        online=member.online,
    )


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0–1) by linear interpolation; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def market_summary(
    members: Sequence[Member],
    demand: Mapping[ResourceType, float],
    rates: Mapping[ResourceType, int],
    hourly_earnings: Mapping[str, float],
) -> dict[str, Any]:
    """Supply, demand, utilization and base rate per type; hourly-earnings quartiles per device class."""
    supply: dict[ResourceType, float] = {}
    for m in members:
        if m.online and m.offering:
            for r in m.resources:
                supply[r.type] = supply.get(r.type, 0.0) + r.capacity
    resources: dict[str, Any] = {}
    for t in sorted(set(supply) | set(demand), key=lambda t: t.value):
        s, d = supply.get(t, 0.0), demand.get(t, 0.0)
        resources[t.value] = {
            "supply": round(s, 3),
            "demand": round(d, 3),
            "utilization": round(d / s, 4) if s > 0 else 0.0,
            "base_rate_micro": int(rates.get(t, 0)),
        }
    by_class: dict[str, list[float]] = {}
    classes = {m.node: m.device_class for m in members}
    for node, value in hourly_earnings.items():
        by_class.setdefault(classes.get(node, "unknown"), []).append(value)
    earnings = {
        cls: {
            "p25": round(percentile(v, 0.25), 1),
            "p50": round(percentile(v, 0.5), 1),
            "p75": round(percentile(v, 0.75), 1),
            "nodes": len(v),
        }
        for cls, v in sorted(by_class.items())
    }
    return {"resources": resources, "hourly_earnings_micro": earnings}
