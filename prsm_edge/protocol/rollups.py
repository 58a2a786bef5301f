"""Trend rollups of a group, sans-IO: bounded ring buffers of samples at two resolutions.

The coordinator samples its own state every few seconds (:func:`sample`: online nodes, members, mean
CPU and memory utilization, leased share of each resource type, nodes per trust level, FTNS credited)
and folds each sample into one :class:`Ring` per resolution (by default 1-minute buckets for the last
6 hours and 1-hour buckets for the last week). A bucket keeps, per column, an integer sum and a count,
so merging two rings (a restored snapshot and the new run's samples, or a page's rollup and its live
buffer) is exact, and a bucket's value is the mean (gauges) or the sum (``earned``) of what fell in it.

A ring never holds more than ``slots`` buckets, the newest ones: a bucket older than the newest minus
``slots`` steps is dropped, and a sample that would land there is ignored. Columns are named from
fixed sets (resource types, trust levels) and capped, so the published rollup is bounded in size.

On the wire (:class:`~prsm_edge.protocol.messages.GroupRollup`) each resolution is a
:class:`~prsm_edge.protocol.messages.RollupSeries`: ``count`` slots from ``start_s``, one byte string per
column holding a big-endian unsigned integer per slot (2 bytes for gauges, 8 for ``earned`` and for a
column whose values outgrow 2 bytes, such as a region's node counts), all ones where no sample fell (the
coordinator was down). Packed columns keep a week of history within the
envelope's item limit (4096 CBOR items) and well under its 64 KiB size limit.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from prsm_edge.protocol.group import Member
from prsm_edge.protocol.messages import GroupRollup, GroupSummary, RollupSeries, VerificationLevel

__all__ = [
    "DEFAULT_RESOLUTIONS",
    "EARNED",
    "Resolution",
    "Ring",
    "Rollups",
    "decode_column",
    "region_sample",
    "sample",
    "width_of",
]

EARNED: Final = "earned"  # µFTNS credited for work in the bucket (a sum; every other column is a mean)
GAUGE_WIDTH: Final = 2
COUNTER_WIDTH: Final = 8
MAX_COLUMNS: Final = 32
_COLUMN = re.compile(r"[a-z][a-z0-9_]{0,23}(:[a-z0-9_]{1,32})?")


@dataclass(frozen=True, slots=True)
class Resolution:
    """Buckets of ``step_s`` seconds, the newest ``slots`` of them."""

    step_s: int
    slots: int


DEFAULT_RESOLUTIONS: Final = (Resolution(60, 360), Resolution(3600, 168))  # 6 hours, one week


def width_of(column: str, largest: int = 0) -> int:
    """Bytes per slot of a column on the wire: 8 for ``earned`` or where a value needs more than 2."""
    return COUNTER_WIDTH if column == EARNED or largest >= _missing(GAUGE_WIDTH) else GAUGE_WIDTH


def _missing(width: int) -> int:
    return (1 << (8 * width)) - 1


def decode_column(data: bytes, count: int) -> list[int | None]:
    """A packed column back to its values (None where no sample fell); raises ValueError if malformed."""
    if count <= 0 or len(data) % count:
        raise ValueError(f"a column of {len(data)} bytes does not hold {count} slots")
    width = len(data) // count
    if width not in (GAUGE_WIDTH, COUNTER_WIDTH):
        raise ValueError(f"{width} bytes per slot is not a rollup column width")
    out: list[int | None] = []
    for i in range(count):
        value = int.from_bytes(data[i * width : (i + 1) * width], "big")
        out.append(None if value == _missing(width) else value)
    return out


class Ring:
    """One resolution's buckets: bucket index (time // step) → column → (sum, count)."""

    def __init__(self, resolution: Resolution) -> None:
        if resolution.step_s <= 0 or resolution.slots <= 0:
            raise ValueError("a ring needs a positive step and at least one slot")
        self.resolution = resolution
        self.buckets: dict[int, dict[str, tuple[int, int]]] = {}
        self._columns: set[str] = set()

    @property
    def newest(self) -> int | None:
        """The newest bucket's index, or None while empty."""
        return max(self.buckets) if self.buckets else None

    def _fits(self, index: int) -> bool:
        newest = self.newest
        return newest is None or index > newest - self.resolution.slots

    def _column_ok(self, name: str) -> bool:
        if name in self._columns:
            return True
        if len(self._columns) >= MAX_COLUMNS or _COLUMN.fullmatch(name) is None:
            return False
        self._columns.add(name)
        return True

    def _fold(self, index: int, name: str, total: int, count: int) -> None:
        if total < 0 or count <= 0 or not self._column_ok(name):
            return
        bucket = self.buckets.setdefault(index, {})
        old_total, old_count = bucket.get(name, (0, 0))
        bucket[name] = (old_total + total, old_count + count)

    def _trim(self) -> None:
        newest = self.newest
        if newest is None:
            return
        for index in [i for i in self.buckets if i <= newest - self.resolution.slots]:
            del self.buckets[index]

    def add(self, at_s: int, values: Mapping[str, int]) -> None:
        """Fold one sample taken at ``at_s`` (Unix seconds) into its bucket."""
        index = at_s // self.resolution.step_s
        if not self._fits(index):
            return  # older than the window: dropped
        for name, value in values.items():
            self._fold(index, name, int(value), 1)
        self._trim()

    def merge(self, other: Ring) -> None:
        """Fold another ring of the same resolution into this one (bucket by bucket, exact)."""
        if other.resolution != self.resolution:
            raise ValueError("only rings of the same resolution merge")
        for index, bucket in sorted(other.buckets.items()):
            if self._fits(index):
                for name, (total, count) in bucket.items():
                    self._fold(index, name, total, count)
                self._trim()

    def value(self, index: int, name: str) -> int | None:
        """A bucket's value of one column: the sum for ``earned``, the rounded mean otherwise."""
        total, count = self.buckets.get(index, {}).get(name, (0, 0))
        if count == 0:
            return None
        return total if name == EARNED else (2 * total + count) // (2 * count)  # round half up

    def series(self) -> RollupSeries:
        """The ring as it goes on the wire: every slot of the window up to the newest bucket."""
        step, slots = self.resolution.step_s, self.resolution.slots
        newest = self.newest
        if newest is None:
            return RollupSeries(step_s=step, start_s=0, count=0)
        first = max(min(self.buckets), newest - slots + 1)
        count = newest - first + 1
        columns: dict[str, bytes] = {}
        for name in sorted({n for b in self.buckets.values() for n in b}):
            values = [self.value(index, name) for index in range(first, newest + 1)]
            width = width_of(name, max((v for v in values if v is not None), default=0))
            top = _missing(width)
            out = bytearray()
            for value in values:
                out += (top if value is None else min(value, top - 1)).to_bytes(width, "big")
            columns[name] = bytes(out)
        return RollupSeries(step_s=step, start_s=first * step, count=count, columns=columns)

    def to_state(self) -> dict[str, Any]:
        """The exact state (sums and counts) for the coordinator's store."""
        return {
            "step_s": self.resolution.step_s,
            "buckets": {str(i): {n: [t, c] for n, (t, c) in b.items()} for i, b in self.buckets.items()},
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Merge a stored state (from :meth:`to_state`) into this ring; what does not fit is skipped."""
        if state.get("step_s") != self.resolution.step_s:
            return
        stored = Ring(self.resolution)
        buckets = state.get("buckets")
        for key, bucket in buckets.items() if isinstance(buckets, Mapping) else []:
            if not isinstance(bucket, Mapping) or not str(key).lstrip("-").isdigit():
                continue
            for name, pair in bucket.items():
                if isinstance(pair, list | tuple) and len(pair) == 2 and all(type(v) is int for v in pair):
                    stored._fold(int(key), str(name), pair[0], pair[1])
        stored._trim()
        self.merge(stored)


class Rollups:
    """The group's rings, one per resolution, and the retained message they make."""

    def __init__(self, resolutions: Iterable[Resolution] = DEFAULT_RESOLUTIONS) -> None:
        self.rings = tuple(Ring(r) for r in resolutions)

    def add(self, at_s: int, values: Mapping[str, int]) -> None:
        """Fold one sample into every resolution."""
        for ring in self.rings:
            ring.add(at_s, values)

    def message(self, site: str, group: str, at_ms: int) -> GroupRollup:
        """The rollup to publish (retained, signed by the coordinator)."""
        return GroupRollup(site=site, group=group, at_ms=at_ms, series=[r.series() for r in self.rings])

    def to_state(self) -> list[dict[str, Any]]:
        """Every ring's exact state, for the coordinator's store."""
        return [ring.to_state() for ring in self.rings]

    def restore(self, state: object) -> None:
        """Merge a stored state in (rings of another resolution, or junk, are skipped)."""
        for item in state if isinstance(state, list) else []:
            if isinstance(item, Mapping):
                for ring in self.rings:
                    ring.restore(item)


def sample(
    members: Sequence[Member],
    level_of: Callable[[str], VerificationLevel],
    utilization: Mapping[str, float],
    earned_micro: int,
) -> dict[str, int]:
    """One sample of the group: integer values (‰ for shares) by column name.

    ``utilization``: leased share of each resource type's offered capacity (the market's demand ÷
    supply); ``earned_micro``: µFTNS credited for work since the previous sample.
    """
    online = [m for m in members if m.online]
    out: dict[str, int] = {"online": len(online), "members": len(members), EARNED: max(0, earned_micro)}
    if online:
        out["cpu"] = round(1000 * sum(min(1.0, max(0.0, m.cpu_util)) for m in online) / len(online))
        out["mem"] = round(1000 * sum(min(1.0, max(0.0, m.mem_util)) for m in online) / len(online))
    levels = dict.fromkeys(VerificationLevel, 0)
    for m in online:
        levels[level_of(m.node)] += 1
    out |= {f"trust:{level.value}": n for level, n in levels.items()}
    for kind, share in sorted(utilization.items()):
        if share == share and share >= 0:  # finite and not negative (NaN fails the first test)
            out[f"util:{kind}"] = round(1000 * min(share, 1.0))
    return out


def _finite(x: object, high: float) -> float | None:
    """A number from a summary, if it is one and within [0, high]."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    v = float(x)
    return v if 0.0 <= v <= high else None  # NaN fails both comparisons


def region_sample(units: Iterable[tuple[GroupSummary, bool]]) -> dict[str, int]:
    """One sample of a region from its groups' last verified summaries and whether each is alive.

    The columns are the group sample's where they apply, summed over the live groups: ``online`` and
    ``members`` nodes, ``cpu`` (the groups' utilization weighted by their online nodes, ‰),
    ``trust:<level>`` (nodes per level), ``util:<type>`` (leased share of each resource type: the
    groups' demand ÷ supply from their market summaries, ‰), plus ``groups_alive`` and ``groups_dead``.
    Values that are not finite or out of range are skipped (they come from the network).
    """
    out: dict[str, int] = {"groups_alive": 0, "groups_dead": 0, "online": 0, "members": 0}
    weighted = 0.0
    trust: dict[str, int] = {}
    supply: dict[str, float] = {}
    demand: dict[str, float] = {}
    known = {level.value for level in VerificationLevel}
    for summary, alive in units:
        members = _finite(summary.members, 1e9)
        out["members"] += int(members or 0)
        if not alive:
            out["groups_dead"] += 1
            continue
        out["groups_alive"] += 1
        online = int(_finite(summary.online, 1e9) or 0)
        out["online"] += online
        weighted += (_finite(summary.utilization, 1.0) or 0.0) * online
        for level, n in summary.trust.items():
            count = _finite(n, 1e9)
            if level in known and count is not None:
                trust[level] = trust.get(level, 0) + int(count)
        resources = summary.market.get("resources") if isinstance(summary.market, dict) else None
        for kind, info in resources.items() if isinstance(resources, dict) else []:
            if not isinstance(info, dict) or not isinstance(kind, str):
                continue
            s, d = _finite(info.get("supply"), 1e12), _finite(info.get("demand"), 1e12)
            if s is not None and d is not None and s > 0:
                supply[kind] = supply.get(kind, 0.0) + s
                demand[kind] = demand.get(kind, 0.0) + d
    if out["online"]:
        out["cpu"] = round(1000 * weighted / out["online"])
    out |= {f"trust:{level.value}": trust.get(level.value, 0) for level in VerificationLevel}
    for kind in sorted(supply):
        out[f"util:{kind}"] = round(1000 * min(1.0, demand[kind] / supply[kind]))
    return out
