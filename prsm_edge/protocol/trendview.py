"""A group's trends for a terminal, from the coordinator's verified rollup: the last hour and the last week.

Sans-IO: :func:`trends` takes a :class:`~prsm_edge.protocol.messages.GroupRollup` that the caller has
already verified under the pinned coordinator key (:class:`~prsm_edge.protocol.groupview.GroupView`
does) and returns plain JSON-ready data: for each window the finest series that reaches it (the last
hour from the finest resolution, the last week from the coarsest), cut to the window ending at the
rollup's own time, with three series per window, the ones the page charts:

- ``online``: nodes online (the bucket's mean);
- ``utilization``: mean CPU utilization of the online nodes, 0–1 (the summary's ``utilization``);
- ``earned_ftns``: FTNS credited for work in the bucket (a sum).

``None`` marks a bucket where the coordinator took no sample (it was down). Every number is checked:
a malformed column reads as no samples, shares are clamped to 0–1.
"""

from __future__ import annotations

from typing import Any, Final

from prsm_edge.protocol.messages import MICRO, GroupRollup, RollupSeries
from prsm_edge.protocol.rollups import EARNED, decode_column

__all__ = ["HOUR_S", "MAX_SLOTS", "WEEK_S", "trends"]

HOUR_S: Final = 3600
WEEK_S: Final = 7 * 24 * 3600
MAX_SLOTS: Final = 4096  # more than a published rollup carries (the envelope limits it well below)


def _column(series: RollupSeries, name: str) -> list[int | None]:
    data = series.columns.get(name)
    if data is None:
        return [None] * series.count
    try:
        return decode_column(data, series.count)
    except ValueError:
        return [None] * series.count


def _usable(series: RollupSeries) -> bool:
    return 0 < series.step_s <= WEEK_S and 0 < series.count <= MAX_SLOTS and series.start_s >= 0


def _window(series: RollupSeries, at_s: int, span_s: int) -> dict[str, Any]:
    """The ``span_s // step`` slots of ``series`` up to the one holding ``at_s`` (fewer where it is short)."""
    step = series.step_s
    last = max(0, min(series.count, (at_s - series.start_s) // step + 1))  # exclusive
    first = max(0, last - max(1, span_s // step))
    online, cpu, earned = (_column(series, name)[first:last] for name in ("online", "cpu", EARNED))
    return {
        "step_s": step,
        "start_s": series.start_s + first * step,
        "online": online,
        "utilization": [None if v is None else min(1.0, v / 1000) for v in cpu],
        "earned_ftns": [None if v is None else v / MICRO for v in earned],
    }


def trends(rollup: GroupRollup) -> dict[str, Any]:
    """The last hour and the last week of a verified rollup (``None`` for a window it cannot show)."""
    series = sorted((s for s in rollup.series if _usable(s)), key=lambda s: s.step_s)
    at_s = max(0, rollup.at_ms) // 1000
    return {
        "at_ms": rollup.at_ms,
        "hour": _window(series[0], at_s, HOUR_S) if series else None,
        "week": _window(series[-1], at_s, WEEK_S) if series else None,
    }
