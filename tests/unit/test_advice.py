"""Advice from real demand and prices; auto-optimize within the owner's bounds, recorded and undoable."""

from __future__ import annotations

from prsm_edge.protocol.advice import NodeRecord, auto_optimize, earnings_report, suggest, undo
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
