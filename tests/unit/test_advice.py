"""Advice from real demand and prices; auto-optimize within the owner's bounds, recorded and undoable."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prsm_edge.protocol.advice import (
    NodeRecord,
    Suggestion,
    auto_optimize,
    earnings_report,
    effective_bounds,
    parse_bounds,
    suggest,
    undo,
)
from prsm_edge.protocol.messages import MICRO, ResourceType, VerificationLevel

GPU, CPU = ResourceType.COMPUTE_GPU, ResourceType.COMPUTE_CPU
MARKET = {
    "resources": {
        "compute_gpu": {"supply": 10.0, "demand": 14.0, "base_rate_micro": 400_000},
        "compute_cpu": {"supply": 100.0, "demand": 40.0, "base_rate_micro": 20_000},
    }
}
SETTINGS = {"gpu_allocation_percentage": 0.5, "cpu_allocation_percentage": 0.5, "minimum_hourly_rate": 0.1}


def record(level: VerificationLevel = VerificationLevel.BENCHMARKED) -> NodeRecord:
    return NodeRecord(level=level, settings=SETTINGS, detected={GPU: 2.0, CPU: 8.0}, multiplier=0.85)


def test_suggests_raising_what_is_in_demand_with_the_numbers_behind_it() -> None:
    (gpu,) = [s for s in suggest(record(), MARKET) if s.setting == "gpu_allocation_percentage"]
    assert gpu.current == 0.5 and gpu.proposed == 0.7
    assert "exceeds supply by 40 %" in gpu.reason
    # 0.4 more GPUs × 400,000 µFTNS/GPU-hour × 0.85 × 24 h, all of it wanted (demand − supply = 4)
    assert gpu.ftns_per_day == round(0.4 * 400_000 * 0.85 * 24 / MICRO, 3)
    assert not [s for s in suggest(record(), MARKET) if s.setting == "cpu_allocation_percentage"]  # no demand


def test_unverified_nodes_are_told_how_to_earn_the_bonuses() -> None:
    assert any(s.setting == "verification" for s in suggest(record(VerificationLevel.SELF_REPORTED), MARKET))


def test_a_minimum_rate_above_what_the_offer_can_pay_is_flagged() -> None:
    expensive = NodeRecord(
        VerificationLevel.BENCHMARKED, {**SETTINGS, "minimum_hourly_rate": 50.0}, {CPU: 8.0}
    )
    (s,) = [s for s in suggest(expensive, MARKET) if s.setting == "minimum_hourly_rate"]
    assert s.proposed < 50.0 and "no task can be placed" in s.reason


def test_auto_optimize_stays_inside_the_owner_bounds_records_and_undoes() -> None:
    suggestions = suggest(record(), MARKET)
    new, changes = auto_optimize(SETTINGS, suggestions, {"gpu_allocation_percentage": (0.2, 0.6)})
    assert new["gpu_allocation_percentage"] == 0.6  # proposed 0.7, the owner's ceiling is 0.6
    assert [(c.setting, c.old, c.new) for c in changes] == [("gpu_allocation_percentage", 0.5, 0.6)]
    assert new["minimum_hourly_rate"] == SETTINGS["minimum_hourly_rate"]  # not bounded: not touched
    assert undo(new, changes) == SETTINGS
    unbounded, none = auto_optimize(SETTINGS, suggestions, {})
    assert unbounded == SETTINGS and none == []


def test_earnings_report_is_gross_minus_electricity_with_a_stated_prediction() -> None:
    hour = 3_600_000
    credits = [(hour * i, 100_000) for i in range(1, 25)]  # 0.1 FTNS an hour for a day
    report = earnings_report(
        credits, (0, 24 * hour), watts=50.0, max_watts=100.0, price_per_kwh_micro=200_000
    )
    assert report.gross_micro == 2_300_000  # the credit at exactly 24 h falls in the next span
    assert report.electricity_kwh == 1.2 and report.electricity_micro == 240_000  # 50 W × 24 h × 0.2 FTNS
    assert report.net_micro == 2_060_000 and report.predicted_next_day_micro == 2_060_000
    assert "mean net per hour" in report.method and report.power_source == "measured"
    no_sensor = earnings_report(credits, (0, 24 * hour), None, max_watts=100.0, price_per_kwh_micro=200_000)
    assert no_sensor.electricity_micro == 480_000 and "no power sensor" in no_sensor.power_source


# ---- the owner's standing bounds (the optimize_bounds setting) ------------------------------------
_finite = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
_bound = st.tuples(_finite, _finite).map(lambda p: (min(p), max(p)))
_names = st.sampled_from(["cpu_allocation_percentage", "gpu_allocation_percentage", "minimum_hourly_rate"])


@given(
    st.dictionaries(_names, _finite, min_size=3, max_size=3),
    st.lists(st.tuples(_names, st.floats(min_value=-5, max_value=5, allow_nan=False)), max_size=6),
    st.dictionaries(_names, _bound),
    st.one_of(st.none(), st.dictionaries(_names, _bound)),
)
def test_what_auto_optimize_recommends_stays_inside_the_owner_bounds(
    settings: dict[str, float],
    proposals: list[tuple[str, float]],
    stored: dict[str, tuple[float, float]],
    requested: dict[str, tuple[float, float]] | None,
) -> None:
    suggestions = [Suggestion(name, settings[name], value, "test", 0.0) for name, value in proposals]
    try:
        bounds = effective_bounds(stored, requested)
    except ValueError:
        # Refused only when a requested bound misses the owner's entirely.
        assert requested is not None
        assert any(
            max(lo, stored.get(n, (-1, 2))[0]) > min(hi, stored.get(n, (-1, 2))[1])
            for n, (lo, hi) in requested.items()
        )
        return
    new, changes = auto_optimize(settings, suggestions, bounds)
    for change in changes:
        low, high = stored.get(change.setting, (-math.inf, math.inf))
        assert low <= change.new <= high  # never past what the owner stored ...
        if requested is not None:
            assert change.setting in requested  # ... and only what the request named, inside it too
            assert requested[change.setting][0] <= change.new <= requested[change.setting][1]
        else:
            assert change.setting in stored
    for name, value in new.items():
        if value != settings[name]:
            assert any(c.setting == name for c in changes)


def test_standing_bounds_are_read_from_the_setting_and_errors_say_what_is_wrong() -> None:
    allowed = ("cpu_allocation_percentage", "max_cpu_temperature")
    got = parse_bounds("cpu_allocation_percentage=0.2..0.6; max_cpu_temperature=..75 ;", allowed)
    assert got == {"cpu_allocation_percentage": (0.2, 0.6), "max_cpu_temperature": (-math.inf, 75.0)}
    assert parse_bounds("", allowed) == {}
    for text, why in [
        ("cpu_allocation_percentage=0.6", "setting=low..high"),
        ("broker_url=0..1", "not a setting auto-optimize may change"),
        ("cpu_allocation_percentage=0.7..0.2", "above the high bound"),
        ("cpu_allocation_percentage=a..1", "not a number"),
        ("cpu_allocation_percentage=..inf", "not a finite number"),
        ("cpu_allocation_percentage=..1; cpu_allocation_percentage=..1", "bounded twice"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_bounds(text, allowed)
    # A request narrows the owner's bounds and cannot widen them; one that misses them is refused.
    stored = {"cpu_allocation_percentage": (0.2, 0.6)}
    assert effective_bounds(stored, {"cpu_allocation_percentage": (0.0, 1.0)}) == stored
    assert effective_bounds(stored, None) == stored
    with pytest.raises(ValueError, match="outside the owner's"):
        effective_bounds(stored, {"cpu_allocation_percentage": (0.7, 1.0)})
