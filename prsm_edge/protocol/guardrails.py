"""Guardrails that don't flap: when a node withdraws its offer and when it restores it (sans-IO).

Theory of operation. :func:`~prsm_edge.protocol.offer.guardrail` says whether one set of readings
breaks an owner limit. Acting on that alone makes a device whose temperature hovers around its limit
withdraw and restore its capacity every heartbeat, and every change is a claim, a re-verification and a
lease upset. The :class:`Governor` adds the two usual cures:

* **hysteresis**: a limit *trips* at the owner's value but *clears* only past it by a margin
  (``temperature_margin_c`` below the temperature limit, ``power_margin`` × the power limit below it,
  ``battery_margin_percent`` above the battery floor, or back on mains);
* **a minimum hold**: once withdrawn, the offer comes back only after the readings have stayed clear for
  ``hold_ms`` without a break. Withdrawal itself is immediate (a hot device must not keep working), so
  under any feed there is at most one withdraw and one restore per ``hold_ms``.

The owner's weekly :class:`Schedule` (``Mon-Fri 18:00-08:00; Sat,Sun``) and the profile's
``offer_on_battery`` rule are limits of the same kind: outside the schedule, or on battery where the
owner does not allow it, the node holds back and says why. Time comes in as arguments: ``now_ms`` for
the hold, and the local weekday and minute for the schedule.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Final

from prsm_edge.errors import ConfigError
from prsm_edge.protocol.offer import Guardrails, Readings, guardrail

__all__ = ["Decision", "Governor", "Hysteresis", "Schedule", "parse_schedule"]

DAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW: Final = re.compile(
    r"^\s*(?P<days>[a-z]{3}(?:\s*-\s*[a-z]{3})?(?:\s*,\s*[a-z]{3}(?:\s*-\s*[a-z]{3})?)*)"
    r"(?:\s+(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2}))?\s*$"
)
_WEEK_MIN: Final = 7 * 24 * 60


@dataclass(frozen=True, slots=True)
class Hysteresis:
    """How far past a limit a reading must come back, and for how long, before the offer returns."""

    temperature_margin_c: float = 5.0
    power_margin: float = 0.1  # a fraction of the power limit
    battery_margin_percent: float = 5.0
    hold_ms: int = 120_000

    @classmethod
    def for_limits(cls, limits: Guardrails) -> Hysteresis:
        """Default margins with the owner's hold time."""
        return cls(hold_ms=round(limits.hold_s * 1000))


@dataclass(frozen=True, slots=True)
class Schedule:
    """Weekly windows in which the owner lets the node contribute; empty means always."""

    windows: tuple[tuple[int, int], ...] = ()  # [start, end) in minutes from Monday 00:00
    text: str = ""

    def allows(self, weekday: int, minute: int) -> bool:
        """Whether the schedule allows contributing at ``weekday`` (0 = Monday) and minute of the day."""
        if not self.windows:
            return True
        t = weekday * 24 * 60 + minute
        return any(start <= t < end or start <= t + _WEEK_MIN < end for start, end in self.windows)


def _minute(text: str, spec: str) -> int:
    hours, minutes = (int(p) for p in text.split(":"))
    if hours > 24 or minutes > 59 or (hours == 24 and minutes):
        raise ConfigError(f"schedule {spec!r}: {text} is not a time of day (00:00–24:00)")
    return hours * 60 + minutes


def _days(text: str, spec: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        ends = [p.strip() for p in part.split("-")]
        for name in ends:
            if name not in DAYS:
                raise ConfigError(f"schedule {spec!r}: {name!r} is not a day ({', '.join(DAYS)})")
        first, last = DAYS.index(ends[0]), DAYS.index(ends[-1])
        span = (last - first) % 7
        out += [(first + i) % 7 for i in range(span + 1)]
    return out


def parse_schedule(spec: str) -> Schedule:
    """Parse ``"Mon-Fri 18:00-08:00; Sat,Sun"``: days with an optional time span, ``;`` between windows.

    A span that ends before it starts runs past midnight into the next day; a day with no span is the
    whole day. Raises :class:`ConfigError` saying which part is wrong.
    """
    windows: list[tuple[int, int]] = []
    for raw in spec.lower().split(";"):
        if not raw.strip():
            continue
        m = _WINDOW.match(raw)
        if m is None:
            raise ConfigError(
                f"schedule {spec!r}: cannot read {raw.strip()!r}; write e.g. 'Mon-Fri 18:00-08:00; Sat,Sun'"
            )
        start, end = 0, 24 * 60
        if m["start"] is not None:
            start, end = _minute(m["start"], spec), _minute(m["end"], spec)
            if start == end:
                raise ConfigError(f"schedule {spec!r}: {raw.strip()!r} is an empty span")
            if end < start:
                end += 24 * 60
        for day in _days(m["days"], spec):
            windows.append((day * 24 * 60 + start, day * 24 * 60 + end))
    return Schedule(tuple(sorted(windows)), spec.strip())


@dataclass(frozen=True, slots=True)
class Decision:
    """What the node does now: offer or hold back (and why), and whether that just changed."""

    offering: bool
    reason: str
    changed: bool


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


@dataclass(slots=True)
class Governor:
    """Decides, reading by reading, whether the node offers capacity."""

    limits: Guardrails
    hysteresis: Hysteresis
    schedule: Schedule
    offering: bool = True
    reason: str = ""
    clear_since_ms: int | None = None
    changes: int = 0

    def _breach(self, r: Readings, weekday: int, minute: int, *, clearing: bool) -> str:
        if not self.schedule.allows(weekday, minute):
            return f"outside the owner's schedule ({self.schedule.text})"
        if r.on_battery and not self.limits.offer_on_battery:
            return "on battery (this device contributes only on mains power)"
        limits = self.limits
        if clearing:
            h = self.hysteresis
            limits = dataclasses.replace(
                limits,
                max_cpu_temperature=limits.max_cpu_temperature - h.temperature_margin_c,
                max_gpu_temperature=limits.max_gpu_temperature - h.temperature_margin_c,
                max_power_consumption=limits.max_power_consumption * (1.0 - h.power_margin),
                min_battery_percent=limits.min_battery_percent + h.battery_margin_percent,
            )
        return guardrail(r, limits)

    @classmethod
    def for_limits(cls, limits: Guardrails) -> Governor:
        """A governor for the owner's limits (raises ConfigError if the schedule cannot be read)."""
        return cls(limits, Hysteresis.for_limits(limits), parse_schedule(limits.schedule))

    def update(self, readings: Readings, now_ms: int, weekday: int = 0, minute: int = 0) -> Decision:
        """Feed one set of readings; sensors that return NaN or infinity count as absent."""
        r = Readings(
            temperature_c=_finite(readings.temperature_c),
            gpu_temperature_c=_finite(readings.gpu_temperature_c),
            power_w=_finite(readings.power_w),
            on_battery=readings.on_battery,
            battery_pct=_finite(readings.battery_pct),
        )
        if self.offering:
            reason = self._breach(r, weekday, minute, clearing=False)
            if not reason:
                return Decision(True, "", False)
            self.offering, self.reason, self.clear_since_ms = False, reason, None
            self.changes += 1
            return Decision(False, reason, True)
        still = self._breach(r, weekday, minute, clearing=True)
        if still:
            self.clear_since_ms = None
            if still != self.reason and self._breach(r, weekday, minute, clearing=False):
                self.reason = still  # the cause moved on (say why now), but the node stays withdrawn
            return Decision(False, self.reason, False)
        if self.clear_since_ms is None:
            self.clear_since_ms = now_ms
        if now_ms - self.clear_since_ms < self.hysteresis.hold_ms:
            return Decision(False, self.reason, False)
        self.offering, self.reason, self.clear_since_ms = True, "", None
        self.changes += 1
        return Decision(True, "", True)
