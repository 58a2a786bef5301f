"""The coordinator's trend rollups: sample the group, keep the rings, publish them retained, store them.

Every ``sample_s`` the group's own state (members, the verifier's levels, the market's leased shares, the
ledger's new credits) becomes one sample of :mod:`prsm_edge.protocol.rollups`; every ``publish_s`` the
rings go out as a signed retained ``coord/rollup`` (bounded: a week of hourly and six hours of minute
buckets, packed) and their exact state (sums and counts) is written to ``rollups.sqlite`` in the
coordinator's folder, from which a restarted coordinator carries on, so a restart leaves a gap in the
trend, never an empty chart. A crash loses at most the samples since the last write.

A regional coordinator keeps the same rings with :class:`RegionRollupPublisher`: its units are its
groups' verified summaries (:func:`~prsm_edge.protocol.rollups.region_sample`), published retained on
the region's own ``coord/rollup`` (``prsm/v1/{site}/{region}/coord/rollup``).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prsm_edge.errors import RejectedMessage, StorageError
from prsm_edge.io.store import connect
from prsm_edge.protocol import cbor, topics
from prsm_edge.protocol.group import Member, Publish
from prsm_edge.protocol.ledger import Ledger, LedgerKind
from prsm_edge.protocol.messages import GroupSummary, VerificationLevel
from prsm_edge.protocol.rollups import DEFAULT_RESOLUTIONS, Resolution, Rollups, region_sample, sample

__all__ = ["RegionRollupPublisher", "RollupOptions", "RollupPublisher", "RollupStore"]

log = logging.getLogger(__name__)

_STATE_LIMITS = cbor.Limits(max_bytes=4 * 1024 * 1024, max_depth=8, max_items=400_000)


@dataclass(frozen=True, slots=True)
class RollupOptions:
    """How often the group is sampled and its rollup published (and stored)."""

    sample_s: float = 10.0
    publish_s: float = 60.0
    resolutions: tuple[Resolution, ...] = DEFAULT_RESOLUTIONS


class RollupStore:
    """The rings' exact state, one row, rewritten at each publish."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = connect(path)
        try:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS rollup (id INTEGER PRIMARY KEY, state BLOB NOT NULL)"
            )
        except sqlite3.Error as exc:
            raise StorageError(f"database {path}: {exc}") from None

    def load(self) -> object:
        """The stored state, or None (none yet, or unreadable: then the trend starts afresh)."""
        row = self._db.execute("SELECT state FROM rollup WHERE id = 1").fetchone()
        if row is None:
            return None
        try:
            return cbor.loads(bytes(row[0]), _STATE_LIMITS)
        except RejectedMessage as exc:  # a damaged row must not stop the coordinator: start afresh
            log.warning("the stored trend rollup in %s is unreadable (%s); starting afresh", self.path, exc)
            return None

    def save(self, state: Any) -> None:
        """Replace the stored state."""
        data = cbor.dumps(state)
        try:
            self._db.execute("INSERT OR REPLACE INTO rollup (id, state) VALUES (1, ?)", (data,))
        except sqlite3.Error as exc:
            raise StorageError(f"database {self.path}: {exc}") from None

    def close(self) -> None:
        """Close the database."""
        self._db.close()


class RollupPublisher:
    """Samples the group and says when to publish its rollup; restores itself from the store."""

    def __init__(
        self, site: str, group: str, store: RollupStore, options: RollupOptions, ledger: Ledger
    ) -> None:
        self.site, self.group = site, group
        self.options = options
        self.store = store
        self.rollups = Rollups(options.resolutions)
        self.rollups.restore(store.load())
        self._ledger = ledger
        self._ledger_seen = len(ledger)  # credits before this run were counted by the run before
        self._next_sample_ms: int | None = None
        self._next_publish_ms: int | None = None

    def _earned(self) -> int:
        """µFTNS credited for work (``earn:`` credits) since the last sample."""
        new = self._ledger.since(self._ledger_seen)
        self._ledger_seen += len(new)
        return sum(
            e.amount_micro for e in new if e.kind == LedgerKind.CREDIT.value and e.key.startswith("earn:")
        )

    def tick(
        self,
        members: Mapping[str, Member],
        now_ms: int,
        *,
        level_of: Callable[[str], VerificationLevel],
        market: Callable[[Mapping[str, Member]], Mapping[str, Any]],
    ) -> list[Publish]:
        """Sample when due; when a publish is due, store the state and return the retained rollup."""
        o = self.options
        if self._next_sample_ms is None or now_ms >= self._next_sample_ms:
            self._next_sample_ms = now_ms + int(o.sample_s * 1000)
            resources = market(members).get("resources", {})
            utilization = {
                str(kind): float(info.get("utilization", 0.0))
                for kind, info in resources.items()
                if isinstance(info, dict) and float(info.get("supply", 0.0)) > 0
            }
            values = sample(list(members.values()), level_of, utilization, self._earned())
            self.rollups.add(now_ms // 1000, values)
        if self._next_publish_ms is not None and now_ms < self._next_publish_ms:
            return []
        self._next_publish_ms = now_ms + int(o.publish_s * 1000)
        try:
            self.store.save(self.rollups.to_state())
        except StorageError as exc:
            log.warning("could not store the trend rollup: %s", exc)
        message = self.rollups.message(self.site, self.group, now_ms)
        return [Publish(topics.coord_rollup(self.site, self.group), message, retain=True, qos=1)]


class RegionRollupPublisher:
    """Samples a region (its groups' summaries) and says when to publish its rollup; restores itself."""

    def __init__(self, site: str, region: str, store: RollupStore, options: RollupOptions) -> None:
        self.site, self.region = site, region
        self.options = options
        self.store = store
        self.rollups = Rollups(options.resolutions)
        self.rollups.restore(store.load())
        self._next_sample_ms: int | None = None
        self._next_publish_ms: int | None = None

    def tick(self, units: Callable[[], Iterable[tuple[GroupSummary, bool]]], now_ms: int) -> list[Publish]:
        """Sample when due (``units``: each group's last summary and whether it is alive); when a publish
        is due, store the state and return the retained rollup (unsigned: the caller seals it)."""
        o = self.options
        if self._next_sample_ms is None or now_ms >= self._next_sample_ms:
            self._next_sample_ms = now_ms + int(o.sample_s * 1000)
            self.rollups.add(now_ms // 1000, region_sample(units()))
        if self._next_publish_ms is not None and now_ms < self._next_publish_ms:
            return []
        self._next_publish_ms = now_ms + int(o.publish_s * 1000)
        try:
            self.store.save(self.rollups.to_state())
        except StorageError as exc:
            log.warning("could not store the region's trend rollup: %s", exc)
        message = self.rollups.message(self.site, self.region, now_ms)
        return [Publish(topics.coord_rollup(self.site, self.region), message, retain=True, qos=1)]
