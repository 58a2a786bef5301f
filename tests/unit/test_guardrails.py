"""Guardrails with hysteresis and a minimum hold: oscillating sensor feeds must not make the offer flap."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prsm_edge.errors import ConfigError
from prsm_edge.protocol.guardrails import Governor, parse_schedule
from prsm_edge.protocol.offer import Guardrails, Readings, guardrail

HOLD_S = 60.0
STEP_MS = 5_000  # one reading per heartbeat
LIMITS = Guardrails(
    max_cpu_temperature=80.0, max_power_consumption=50.0, min_battery_percent=30.0, hold_s=HOLD_S
)


def _feeds(amplitude: float, period_s: float, seconds: int = 3600) -> dict[str, list[Readings]]:
    """A reading per heartbeat oscillating around each limit."""
    out: dict[str, list[Readings]] = {"temperature": [], "gpu": [], "power": [], "battery": []}
    for i in range(seconds * 1000 // STEP_MS):
        wave = math.sin(2 * math.pi * i * STEP_MS / 1000 / period_s)
        out["temperature"].append(Readings(temperature_c=80.0 + amplitude * wave))
        out["gpu"].append(Readings(gpu_temperature_c=87.0 + amplitude * wave))
        out["power"].append(Readings(power_w=50.0 + amplitude * wave))
        out["battery"].append(Readings(on_battery=True, battery_pct=30.0 + amplitude * wave))
    return out


def _run(feed: list[Readings]) -> list[tuple[int, bool]]:
    """Changes (time, offering) the governor makes over a feed."""
    gov = Governor.for_limits(LIMITS)
    changes = []
    for i, r in enumerate(feed):
        d = gov.update(r, i * STEP_MS)
        if d.changed:
            changes.append((i * STEP_MS, d.offering))
    return changes


def _naive_changes(feed: list[Readings]) -> int:
    """How often the instantaneous rule alone would change the offer (what the agent did before)."""
    held = [bool(guardrail(r, LIMITS)) for r in feed]
    return sum(a != b for a, b in itertools.pairwise(held))


def _assert_no_flap(changes: list[tuple[int, bool]]) -> None:
    hold_ms = HOLD_S * 1000
    for (t0, offering0), (t1, offering1) in itertools.pairwise(changes):
        assert offering0 != offering1
        if not offering0:  # withdrawn at t0, restored at t1
            assert t1 - t0 >= hold_ms
    # At most one withdraw and one restore per hold time over the whole run.
    duration = max((t for t, _ in changes), default=0)
    assert sum(1 for _, o in changes if o) <= duration / hold_ms + 1


@pytest.mark.parametrize("kind", ["temperature", "gpu", "power", "battery"])
@pytest.mark.parametrize(("amplitude", "period_s"), [(2.0, 20.0), (3.0, 45.0), (10.0, 30.0), (10.0, 400.0)])
def test_oscillating_feed_does_not_flap(kind: str, amplitude: float, period_s: float) -> None:
    feed = _feeds(amplitude, period_s)[kind]
    assert _naive_changes(feed) >= 16  # the feed really does cross the limit back and forth
    changes = _run(feed)
    assert changes and changes[0][1] is False  # it did withdraw
    _assert_no_flap(changes)
    if amplitude < 5.0:  # inside the hysteresis band: withdrawn once and never restored
        assert len(changes) == 1


def test_restores_after_readings_stay_clear_for_the_hold() -> None:
    gov = Governor.for_limits(LIMITS)
    assert gov.update(Readings(temperature_c=85.0), 0).changed
    # Below the limit but inside the margin: still withdrawn, and it says why.
    d = gov.update(Readings(temperature_c=77.0), 10_000)
    assert (d.offering, d.changed) == (False, False)
    assert "temperature 85.0" in d.reason
    assert not gov.update(Readings(temperature_c=70.0), 20_000).offering
    assert not gov.update(Readings(temperature_c=70.0), 79_999).offering
    assert gov.update(Readings(temperature_c=70.0), 80_000) == type(d)(True, "", True)


def test_a_break_in_the_clear_readings_restarts_the_hold() -> None:
    gov = Governor.for_limits(LIMITS)
    gov.update(Readings(power_w=60.0), 0)
    gov.update(Readings(power_w=10.0), 1_000)
    gov.update(Readings(power_w=47.0), 50_000)  # under the limit, not under limit − 10 %
    assert not gov.update(Readings(power_w=10.0), 70_000).offering
    assert not gov.update(Readings(power_w=10.0), 129_000).offering
    assert gov.update(Readings(power_w=10.0), 130_000).offering


def test_nan_and_infinite_sensor_values_count_as_absent() -> None:
    gov = Governor.for_limits(LIMITS)
    assert gov.update(Readings(temperature_c=math.nan, power_w=math.inf), 0).offering
    assert gov.changes == 0


def test_phone_profile_rule_never_on_battery() -> None:
    gov = Governor.for_limits(Guardrails(offer_on_battery=False, hold_s=0))
    d = gov.update(Readings(on_battery=True, battery_pct=100.0), 0)
    assert not d.offering and "on battery" in d.reason
    assert gov.update(Readings(on_battery=False, battery_pct=100.0), 1).offering


def test_schedule_withdraws_outside_the_owner_windows() -> None:
    gov = Governor.for_limits(Guardrails(schedule="Mon-Fri 18:00-08:00; Sat,Sun", hold_s=0))
    assert gov.update(Readings(), 0, weekday=0, minute=19 * 60).offering  # Monday evening
    assert gov.update(Readings(), 1, weekday=1, minute=7 * 60 + 59).offering  # Tuesday early (from Monday)
    d = gov.update(Readings(), 2, weekday=1, minute=12 * 60)  # Tuesday noon
    assert not d.offering and "schedule" in d.reason
    assert gov.update(Readings(), 3, weekday=5, minute=12 * 60).offering  # Saturday
    # Friday's evening span runs into Saturday; Sunday's whole day ends at Monday 00:00, and Monday's
    # span starts only at 18:00.
    s = parse_schedule("Mon-Fri 18:00-08:00; Sat,Sun")
    assert s.allows(6, 23 * 60 + 59) and s.allows(5, 7 * 60) and not s.allows(0, 7 * 60)


def test_schedule_wraps_from_sunday_to_monday() -> None:
    s = parse_schedule("Sun 22:00-06:00")
    assert s.allows(6, 23 * 60) and s.allows(0, 5 * 60) and not s.allows(0, 6 * 60)
    assert parse_schedule("Fri-Mon").allows(6, 0) and not parse_schedule("Fri-Mon").allows(2, 0)


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("Funday", "cannot read"),
        ("Mon,Fun", "'fun' is not a day"),
        ("Mon 25:00-26:00", "not a time of day"),
        ("Mon 10:00-10:00", "empty"),
        ("Mon 10-12", "cannot read"),
    ],
)
def test_bad_schedules_say_what_is_wrong(spec: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_schedule(spec)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(min_value=20.0, max_value=100.0, allow_nan=False), min_size=2, max_size=400),
)
def test_any_temperature_feed_respects_the_hold(temps: list[float]) -> None:
    _assert_no_flap(_run([Readings(temperature_c=t) for t in temps]))
