"""Advice for an owner, sans-IO: suggestions from real demand and prices, auto-optimize, earnings reports.

Suggestions come from the group's market (:func:`prsm_edge.protocol.market.market_summary`: supply,
demand and base rate per resource type) and the node's own record (its level, its settings, what it
earned). Each one names a setting, the value now, the proposed value, the reason in numbers and the
expected change in FTNS per day at current prices. :func:`auto_optimize` applies suggestions only
within bounds the owner set, returns every change it made, and :func:`undo` puts them back.

The owner's standing bounds are a setting (``optimize_bounds``, e.g. ``cpu_allocation_percentage=0.2..0.6;
max_cpu_temperature=..75``, read by :func:`parse_bounds`); bounds a request names can only narrow them
(:func:`effective_bounds`), so no page or client can widen what the owner allowed.

An earnings report is gross (credits in the period), the owner's electricity cost (watts × hours × the
owner's price per kWh, a setting) and net, with a prediction for the next day and the method behind it.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from prsm_edge.protocol.messages import MICRO, ResourceType, VerificationLevel

__all__ = [
    "OPTIMIZABLE",
    "Bound",
    "Change",
    "EarningsReport",
    "NodeRecord",
    "Suggestion",
    "auto_optimize",
    "earnings_report",
    "effective_bounds",
    "parse_bounds",
    "suggest",
    "undo",
]

# Which owner setting controls each resource type.
SETTING_FOR: Final[dict[ResourceType, str]] = {
    ResourceType.COMPUTE_CPU: "cpu_allocation_percentage",
    ResourceType.COMPUTE_GPU: "gpu_allocation_percentage",
    ResourceType.COMPUTE_TPU: "gpu_allocation_percentage",
    ResourceType.SPECIALIZED_EDGE: "gpu_allocation_percentage",
    ResourceType.STORAGE_PERSISTENT: "storage_allocation_percentage",
    ResourceType.STORAGE_CACHE: "storage_allocation_percentage",
    ResourceType.STORAGE_MEMORY: "memory_allocation_percentage",
    ResourceType.BANDWIDTH_INGRESS: "bandwidth_allocation_percentage",
    ResourceType.BANDWIDTH_EGRESS: "bandwidth_allocation_percentage",
}
STEP: Final = 0.2  # how far one suggestion moves an allocation percentage
MAX_BOUNDS: Final = 32
# The numeric owner settings auto-optimize may ever change (the owner bounds any of them).
OPTIMIZABLE: Final[tuple[str, ...]] = (
    "cpu_allocation_percentage",
    "gpu_allocation_percentage",
    "storage_allocation_percentage",
    "memory_allocation_percentage",
    "bandwidth_allocation_percentage",
    "max_cpu_temperature",
    "max_gpu_temperature",
    "max_power_consumption",
    "minimum_hourly_rate",
    "uptime_commitment",
    "priority_level",
    "min_battery_percent",
)
Bound = tuple[float, float]  # [low, high]; -inf / inf where the owner set no limit on that side


def _limit(text: str, default: float, where: str) -> float:
    text = text.strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: {text!r} is not a finite number")
    return value


def parse_bounds(text: str, allowed: Collection[str]) -> dict[str, Bound]:
    """Read ``setting=low..high; …`` (either side may be left out); ValueError names what is wrong."""
    out: dict[str, Bound] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, eq, span = part.partition("=")
        name = name.strip()
        low_text, dots, high_text = span.partition("..")
        if not eq or not dots:
            raise ValueError(
                f"{part!r} should look like setting=low..high (e.g. cpu_allocation_percentage=..0.6)"
            )
        if name not in allowed:
            raise ValueError(
                f"{name!r} is not a setting auto-optimize may change; these are: {', '.join(allowed)}"
            )
        if name in out:
            raise ValueError(f"{name} is bounded twice")
        low = _limit(low_text, -math.inf, name)
        high = _limit(high_text, math.inf, name)
        if low > high:
            raise ValueError(f"{name}: the low bound {low:g} is above the high bound {high:g}")
        out[name] = (low, high)
        if len(out) > MAX_BOUNDS:
            raise ValueError(f"at most {MAX_BOUNDS} settings may be bounded")
    return out


def effective_bounds(stored: Mapping[str, Bound], requested: Mapping[str, Bound] | None) -> dict[str, Bound]:
    """What auto-optimize may do: the owner's standing bounds, narrowed (never widened) by a request's.

    Without requested bounds the standing ones decide which settings may move; with them, the request
    names the settings, each kept inside both. ValueError when a request's bound misses the owner's.
    """
    if requested is None:
        return dict(stored)
    out: dict[str, Bound] = {}
    for name, (low, high) in requested.items():
        own_low, own_high = stored.get(name, (-math.inf, math.inf))
        both = (max(low, own_low), min(high, own_high))
        if both[0] > both[1]:
            raise ValueError(
                f"{name}: the requested bounds [{low:g}, {high:g}] lie outside the owner's "
                f"[{own_low:g}, {own_high:g}] (the optimize_bounds setting)"
            )
        out[name] = both
    return out


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """What advice reads about one node."""

    level: VerificationLevel
    settings: Mapping[str, float]  # the owner's current settings (allocation percentages, min rate)
    detected: Mapping[ResourceType, float]  # detected capacity per type (before percentages)
    multiplier: float = 0.6  # reputation × bonuses of its last credit (its trust score if none yet)


@dataclass(frozen=True, slots=True)
class Suggestion:
    """One concrete change and why."""

    setting: str
    current: float
    proposed: float
    reason: str
    ftns_per_day: float


@dataclass(frozen=True, slots=True)
class Change:
    """One change auto-optimize made (enough to undo it)."""

    setting: str
    old: float
    new: float
    reason: str


def suggest(record: NodeRecord, market: Mapping[str, Any]) -> list[Suggestion]:
    """Suggestions from the group's demand and prices and the node's record, best first."""
    out: list[Suggestion] = []
    resources = market.get("resources", {})
    for t, setting in SETTING_FOR.items():
        info = resources.get(t.value)
        detected = record.detected.get(t, 0.0)
        current = float(record.settings.get(setting, 0.0))
        if not isinstance(info, dict) or detected <= 0 or not math.isfinite(current):
            continue
        supply, demand = float(info.get("supply", 0.0)), float(info.get("demand", 0.0))
        rate = int(info.get("base_rate_micro", 0))
        if supply <= 0 or demand <= supply * 1.05 or current >= 1.0:
            continue
        proposed = round(min(1.0, current + STEP), 2)
        extra_units = detected * (proposed - current)
        fill = min(1.0, (demand - supply) / max(extra_units, 1e-9))
        per_day = extra_units * fill * rate * record.multiplier * 24 / MICRO
        out.append(
            Suggestion(
                setting,
                current,
                proposed,
                f"raise {setting} to {proposed}: {t.value} demand exceeds supply by "
                f"{(demand / supply - 1) * 100:.0f} % ({demand:g} asked, {supply:g} offered)",
                round(per_day, 3),
            )
        )
    min_rate = record.settings.get("minimum_hourly_rate")
    if min_rate is not None and math.isfinite(min_rate) and min_rate > 0:
        worth = sum(
            record.detected.get(t, 0.0) * record.settings.get(s, 0.0) * int(info.get("base_rate_micro", 0))
            for t, s in SETTING_FOR.items()
            if isinstance(info := resources.get(t.value), dict)
        )
        if worth > 0 and min_rate * MICRO > worth:
            out.append(
                Suggestion(
                    "minimum_hourly_rate",
                    float(min_rate),
                    round(worth / MICRO, 6),
                    f"your minimum of {min_rate} FTNS/h is above what your whole offer pays at current "
                    f"rates ({worth / MICRO:.6f} FTNS/h), so no task can be placed on this node",
                    0.0,
                )
            )
    if record.level is VerificationLevel.SELF_REPORTED:
        out.append(
            Suggestion(
                "verification",
                0.0,
                1.0,
                "this node is self-reported: it earns the base at most; pass a verification round "
                "(stay online, answer challenges) to earn the reputation, region, performance and "
                "micro-node bonuses",
                0.0,
            )
        )
    return sorted(out, key=lambda s: -s.ftns_per_day)


def auto_optimize(
    settings: Mapping[str, float],
    suggestions: Sequence[Suggestion],
    bounds: Mapping[str, tuple[float, float]],
) -> tuple[dict[str, float], list[Change]]:
    """Apply suggestions only to settings the owner bounded, clamped into the bounds; the changes made."""
    new = dict(settings)
    changes: list[Change] = []
    for s in suggestions:
        if s.setting not in bounds or s.setting not in new:
            continue  # the owner did not allow this setting to be changed automatically
        low, high = bounds[s.setting]
        value = min(high, max(low, s.proposed))
        if not math.isfinite(value) or value == new[s.setting]:
            continue
        changes.append(Change(s.setting, new[s.setting], value, s.reason))
        new[s.setting] = value
    return new, changes


def undo(settings: Mapping[str, float], changes: Sequence[Change]) -> dict[str, float]:
    """Put back what :func:`auto_optimize` changed (only where the value is still the one it set)."""
    out = dict(settings)
    for c in reversed(changes):
        if out.get(c.setting) == c.new:
            out[c.setting] = c.old
    return out


@dataclass(frozen=True, slots=True)
class EarningsReport:
    """Gross, electricity cost and net over a span, with a prediction and how it was made."""

    hours: float
    gross_micro: int
    electricity_kwh: float
    electricity_micro: int
    net_micro: int
    predicted_next_day_micro: int
    method: str
    power_source: str


def earnings_report(
    credits: Sequence[tuple[int, int]],
    span_ms: tuple[int, int],
    watts: float | None,
    max_watts: float,
    price_per_kwh_micro: int,
) -> EarningsReport:
    """Report over ``span_ms`` from ``credits`` (at_ms, µFTNS): gross, electricity, net and a prediction.

    Watts are the node's measured average draw; without a power sensor the owner's power limit stands
    in (an upper bound) and ``power_source`` says so. The prediction is the mean net per hour over the
    span × 24 (``method``): simple, and stated, so the owner can judge it.
    """
    start, end = span_ms
    hours = max(0.0, (end - start) / 3_600_000)
    gross = sum(a for at, a in credits if start <= at < end)
    source = "measured"
    w = watts
    if w is None or not math.isfinite(w) or w < 0:
        w, source = max_watts, "owner power limit (no power sensor)"
    kwh = w * hours / 1000
    cost = round(kwh * price_per_kwh_micro)
    net = gross - cost
    predicted = round(net / hours * 24) if hours > 0 else 0
    method = f"mean net per hour over the last {hours:.2f} h × 24 (no trend assumed)"
    return EarningsReport(round(hours, 4), gross, round(kwh, 6), cost, net, predicted, method, source)
