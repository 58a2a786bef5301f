"""A group's (or a region's) trends for a terminal, from the coordinator's verified rollup: the last hour
and the last week.

Sans-IO: :func:`trends` takes a :class:`~prsm_edge.protocol.messages.GroupRollup` that the caller has
already verified under the pinned coordinator key (:class:`~prsm_edge.protocol.groupview.GroupView`
does) and returns plain JSON-ready data: for each window the finest series that reaches it (the last
hour from the finest resolution, the last week from the coarsest), cut to the window ending at the
rollup's own time, with three series per window, the ones the page charts:

- ``online``: nodes online (the bucket's mean);
- ``utilization``: mean CPU utilization of the online nodes, 0–1 (the summary's ``utilization``);
- ``earned_ftns``: FTNS credited for work in the bucket (a sum).

:func:`region_trends` does the same for a region's rollup (the region coordinator's
:func:`~prsm_edge.protocol.rollups.region_sample` columns, verified under the pinned region key by
:class:`~prsm_edge.protocol.regionview.RegionView`): ``online`` and ``utilization`` as above (summed and
weighted over the region's live groups), ``groups_alive`` and ``groups_dead`` (the bucket's means).

``None`` marks a bucket where the coordinator took no sample (it was down). Every number is checked:
a malformed column reads as no samples, shares are clamped to 0–1.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from prsm_edge.protocol.messages import MICRO, GroupRollup, RollupSeries
from prsm_edge.protocol.rollups import EARNED, decode_column

__all__ = ["GROUP_SERIES", "HOUR_S", "MAX_SLOTS", "REGION_SERIES", "WEEK_S", "region_trends", "trends"]

HOUR_S: Final = 3600
WEEK_S: Final = 7 * 24 * 3600
MAX_SLOTS: Final = 4096  # more than a published rollup carries (the envelope limits it well below)

Convert = Callable[[int], float | int]


def _count(v: int) -> int:
    return v


def _share(v: int) -> float:
    return min(1.0, v / 1000)  # ‰ on the wire, clamped to 0–1


def _ftns(v: int) -> float:
    return v / MICRO


# Output series name → (rollup column, conversion of a slot's value).
GROUP_SERIES: Final[Mapping[str, tuple[str, Convert]]] = {
    "online": ("online", _count),
    "utilization": ("cpu", _share),
    "earned_ftns": (EARNED, _ftns),
}
REGION_SERIES: Final[Mapping[str, tuple[str, Convert]]] = {
    "online": ("online", _count),
    "utilization": ("cpu", _share),
    "groups_alive": ("groups_alive", _count),
    "groups_dead": ("groups_dead", _count),
}


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


def _window(
    series: RollupSeries, at_s: int, span_s: int, wanted: Mapping[str, tuple[str, Convert]]
) -> dict[str, Any]:
    """The ``span_s // step`` slots of ``series`` up to the one holding ``at_s`` (fewer where it is short),
    one list per ``wanted`` series."""
    step = series.step_s
    last = max(0, min(series.count, (at_s - series.start_s) // step + 1))  # exclusive
    first = max(0, last - max(1, span_s // step))
    out: dict[str, Any] = {"step_s": step, "start_s": series.start_s + first * step}
    for name, (column, convert) in wanted.items():
        out[name] = [None if v is None else convert(v) for v in _column(series, column)[first:last]]
    return out


def _trends(rollup: GroupRollup, wanted: Mapping[str, tuple[str, Convert]]) -> dict[str, Any]:
    series = sorted((s for s in rollup.series if _usable(s)), key=lambda s: s.step_s)
    at_s = max(0, rollup.at_ms) // 1000
    return {
        "at_ms": rollup.at_ms,
        "hour": _window(series[0], at_s, HOUR_S, wanted) if series else None,
        "week": _window(series[-1], at_s, WEEK_S, wanted) if series else None,
    }


def trends(rollup: GroupRollup) -> dict[str, Any]:
    """The last hour and the last week of a group's verified rollup (``None`` for a window it cannot show)."""
    return _trends(rollup, GROUP_SERIES)


def region_trends(rollup: GroupRollup) -> dict[str, Any]:
    """The last hour and the last week of a region's verified rollup: nodes online, utilization, groups
    alive and dead (``None`` for a window it cannot show)."""
    return _trends(rollup, REGION_SERIES)
