"""What a read-only observer (``prsm-edge status``, the dashboard) knows of one region, verified.

Sans-IO, the sibling of :class:`~prsm_edge.protocol.groupview.GroupView` one tier up: the caller hands
over every message of the region's broker it subscribed to (the region's tree and ``prsm/v1/+/gw/+/state``)
with the time now, and reads :meth:`RegionView.snapshot`. The rules (the browser's ``src/region.js``
applies the same ones):

1. every payload is opened with :func:`~prsm_edge.protocol.envelope.open_envelope`;
2. ``coord/state`` must be a :class:`CoordState` signed by the key it names, for the coordinator id
   derived from it; that key is pinned (given by the caller, else the first seen); a tier-1 state is a
   group's (the broker is not a region's) and is left alone;
3. the region's summary, its trend rollup (``coord/rollup``: it must name this region, and an older one
   than the rollup held is not taken) and each unit's standing (``unit/{site}/{group}/state``: alive or
   dead, the coordinator key the region pinned for the group, the gateway it bound) must be signed by
   the pinned region key; they wait (bounded) until the region's state has arrived;
4. a group's summary must name its unit and be signed by the key the region pinned for that group; a
   gateway's link state must be signed by the gateway it names and, once the region bound a gateway to
   the group, by that one; a gateway's stream record likewise. What comes before the group's standing
   waits (bounded, the newest per topic);
5. a standing from another region epoch, or while the region's coordinator is offline, is shown as
   unconfirmed, never as alive; one older than the standing held (region epoch, then sequence number)
   is a replay and refused.

Whatever fails is counted (per group where it names one) and listed, never folded into the view.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Final

from prsm_edge.errors import RejectedMessage, TopicError
from prsm_edge.protocol import topics
from prsm_edge.protocol.envelope import Opened, open_envelope
from prsm_edge.protocol.groupview import Unverified
from prsm_edge.protocol.messages import (
    CoordState,
    GatewayState,
    GroupRollup,
    GroupSummary,
    UnitState,
    UplinkRecord,
)
from prsm_edge.protocol.trendview import region_trends

__all__ = ["MAX_UNITS", "RegionView", "UnitView"]

MAX_UNITS: Final = 20_000
MAX_PENDING: Final = 2_000
MAX_FAILURES: Final = 100

UnitKey = tuple[str, str]


@dataclass(slots=True)
class UnitView:
    """One group as the region's word, its own summary and its gateway's signed state describe it."""

    site: str
    group: str
    standing: UnitState | None = None
    summary: GroupSummary | None = None
    summary_ms: int | None = None
    gateway: GatewayState | None = None
    gateway_ms: int | None = None
    records: int = 0
    historical: int = 0
    unverified: int = 0
    bad_topics: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class RegionView:
    """The verified picture of one region and its groups."""

    site: str
    region: str
    pinned_key: bytes | None = None
    coord: CoordState | None = None
    summary: GroupSummary | None = None
    rollup: GroupRollup | None = None
    units: dict[UnitKey, UnitView] = field(default_factory=dict)
    failures: deque[Unverified] = field(default_factory=lambda: deque(maxlen=MAX_FAILURES))
    verified: int = 0
    unverified: int = 0
    _waiting_region: OrderedDict[str, bytes] = field(default_factory=OrderedDict)
    _waiting_unit: OrderedDict[str, tuple[UnitKey, bytes]] = field(default_factory=OrderedDict)

    # ---- input -------------------------------------------------------------------------------
    def receive(self, topic: str, payload: bytes, now_ms: int) -> None:
        """Fold one message into the view (or record why it was refused)."""
        try:
            where = topics.parse(topic)
        except TopicError:
            return
        kind = where.kind
        ours = where.site == self.site and where.group == self.region
        if not payload or not (ours or kind is topics.Kind.GATEWAY_STATE):
            return
        unit_key = (where.unit_site, where.unit_group) if where.unit_site else None
        try:
            opened = open_envelope(payload)
        except RejectedMessage as exc:
            self._fail(topic, str(exc), now_ms, unit_key)
            return
        match kind:
            case topics.Kind.COORD_STATE:
                self._coord_state(topic, opened, now_ms)
            case topics.Kind.SUMMARY | topics.Kind.UNIT_STATE | topics.Kind.COORD_ROLLUP:
                self._from_region(topic, payload, opened, now_ms)
            case topics.Kind.UNIT_SUMMARY if unit_key is not None:
                self._unit_summary(topic, unit_key, payload, opened, now_ms)
            case topics.Kind.UNIT_STREAM if unit_key is not None:
                self._stream(topic, unit_key, payload, opened, now_ms)
            case topics.Kind.GATEWAY_STATE:
                self._gateway(topic, where.gateway, payload, opened, now_ms)

    def _fail(self, topic: str, reason: str, now_ms: int, key: UnitKey | None = None) -> None:
        self.unverified += 1
        self.failures.appendleft(Unverified(now_ms, topic, reason))
        unit = self._unit(key) if key is not None else None
        if unit is not None:
            unit.unverified += 1
            unit.bad_topics[topic] = reason
            while len(unit.bad_topics) > 16:
                unit.bad_topics.pop(next(iter(unit.bad_topics)))

    def _unit(self, key: UnitKey) -> UnitView | None:
        unit = self.units.get(key)
        if unit is None and len(self.units) < MAX_UNITS:
            unit = self.units[key] = UnitView(*key)
        return unit

    def _coord_state(self, topic: str, opened: Opened, now_ms: int) -> None:
        msg = opened.message
        if (
            not isinstance(msg, CoordState)
            or msg.coordinator != opened.signer
            or msg.public_key != opened.kid
        ):
            self._fail(topic, "coordinator state not signed by the key it names", now_ms)
            return
        if msg.tier < 2:
            return  # a group's coordinator: this broker is a group's (GroupView's business)
        if self.pinned_key is not None and opened.kid != self.pinned_key:
            self._fail(topic, f"region key {opened.kid.hex()[:16]}… is not the pinned key", now_ms)
            return
        self.pinned_key = opened.kid
        self.coord = msg
        self.verified += 1
        waiting = list(self._waiting_region.items())
        self._waiting_region.clear()
        for waiting_topic, payload in waiting:
            self.receive(waiting_topic, payload, now_ms)

    def _from_region(self, topic: str, payload: bytes, opened: Opened, now_ms: int) -> None:
        if self.coord is None:
            self._waiting_region[topic] = payload
            self._waiting_region.move_to_end(topic)
            while len(self._waiting_region) > MAX_PENDING:
                self._waiting_region.popitem(last=False)
            return
        msg = opened.message
        key = (msg.site, msg.group) if isinstance(msg, UnitState) else None
        if opened.kid != self.coord.public_key:
            self._fail(topic, f"signed by {opened.signer}, not by the region's coordinator", now_ms, key)
            return
        if isinstance(msg, GroupSummary) and topics.summary(self.site, self.region) == topic:
            self.verified += 1
            self.summary = msg
        elif isinstance(msg, GroupRollup) and topics.coord_rollup(self.site, self.region) == topic:
            if (msg.site, msg.group) != (self.site, self.region):
                self._fail(topic, f"a rollup of {msg.site}/{msg.group}, not of this region", now_ms)
                return
            self.verified += 1
            if self.rollup is None or msg.at_ms >= self.rollup.at_ms:
                self.rollup = msg
        elif isinstance(msg, UnitState) and msg.region == self.region and key is not None:
            if topic != topics.unit(topics.Kind.UNIT_STATE, self.site, self.region, *key):
                self._fail(topic, "a group's standing on another group's topic", now_ms)
                return
            unit = self._unit(key)
            if unit is None:
                return
            old = unit.standing
            if old is not None and (msg.region_epoch, msg.seq) < (old.region_epoch, old.seq):
                self._fail(topic, "an older standing of the region's, replayed", now_ms, key)
                return
            self.verified += 1
            unit.standing = msg
            unit.bad_topics.pop(topic, None)
            for waiting_topic, (waiting_key, data) in list(self._waiting_unit.items()):
                if waiting_key == key:
                    del self._waiting_unit[waiting_topic]
                    self.receive(waiting_topic, data, now_ms)
        else:
            self._fail(topic, "not the message this topic carries", now_ms, key)

    def _wait_for_unit(self, topic: str, key: UnitKey, payload: bytes) -> None:
        self._waiting_unit[topic] = (key, payload)
        self._waiting_unit.move_to_end(topic)
        while len(self._waiting_unit) > MAX_PENDING:
            self._waiting_unit.popitem(last=False)

    def _unit_summary(self, topic: str, key: UnitKey, payload: bytes, opened: Opened, now_ms: int) -> None:
        unit = self.units.get(key)
        if unit is None or unit.standing is None:
            self._wait_for_unit(topic, key, payload)
            return
        msg = opened.message
        if opened.kid != unit.standing.public_key:
            self._fail(topic, f"signed by {opened.signer}, not by the key the region pinned", now_ms, key)
            return
        if not isinstance(msg, GroupSummary) or (msg.site, msg.group) != key:
            self._fail(topic, "not this group's summary", now_ms, key)
            return
        self.verified += 1
        unit.summary, unit.summary_ms = msg, now_ms
        unit.bad_topics.pop(topic, None)

    def _gateway_bound(self, unit: UnitView, opened: Opened) -> bool:
        bound = unit.standing.gateway_key if unit.standing is not None else b""
        return not bound or bound == opened.kid

    def _gateway(self, topic: str, gateway: str, payload: bytes, opened: Opened, now_ms: int) -> None:
        msg = opened.message
        if not isinstance(msg, GatewayState) or opened.signer != gateway or msg.gateway != gateway:
            self._fail(topic, f"gateway state signed by {opened.signer}, not by {gateway}", now_ms)
            return
        key = (msg.site, msg.group)
        unit = self.units.get(key)
        if unit is None or unit.standing is None:
            self._wait_for_unit(topic, key, payload)  # perhaps not one of this region's groups at all
            return
        if not self._gateway_bound(unit, opened):
            self._fail(topic, f"{gateway} is not the gateway the region bound to this group", now_ms, key)
            return
        self.verified += 1
        unit.bad_topics.pop(topic, None)
        if unit.gateway is None or unit.gateway.gateway != msg.gateway or msg.bdseq >= unit.gateway.bdseq:
            unit.gateway, unit.gateway_ms = msg, now_ms

    def _stream(self, topic: str, key: UnitKey, payload: bytes, opened: Opened, now_ms: int) -> None:
        unit = self.units.get(key)
        rec = opened.message
        if unit is None or unit.standing is None:
            return  # live records only: nothing to hold on to
        if not isinstance(rec, UplinkRecord) or rec.gateway != opened.signer or (rec.site, rec.group) != key:
            self._fail(topic, "a stream record must be signed by the gateway it names", now_ms, key)
            return
        if not self._gateway_bound(unit, opened):
            self._fail(topic, f"{rec.gateway} is not the gateway the region bound", now_ms, key)
            return
        try:
            item = open_envelope(rec.item)
        except RejectedMessage as exc:
            self._fail(topic, f"the record's item: {exc}", now_ms, key)
            return
        if item.kid != unit.standing.public_key:
            self._fail(topic, "the record's item is not signed by the group's coordinator", now_ms, key)
            return
        self.verified += 1
        unit.records += 1
        unit.historical += rec.historical

    # ---- output ------------------------------------------------------------------------------
    def status(self, unit: UnitView) -> str:
        """``alive``, ``dead`` (the region said so, this epoch) or ``unconfirmed``."""
        s, c = unit.standing, self.coord
        if s is None or c is None or c.status != "online" or s.region_epoch != c.epoch:
            return "unconfirmed"
        return "alive" if s.alive else "dead"

    @staticmethod
    def link(unit: UnitView) -> str:
        """The gateway link as one word: ``up``, ``replaying``, ``down`` or ``unknown``."""
        g = unit.gateway
        if g is None:
            return "unknown"
        if g.status != "online" or g.uplink != "up":
            return "down"
        return "replaying" if g.buffered > 0 else "up"

    def snapshot(self, now_ms: int) -> dict[str, Any]:
        """Everything known, as plain JSON-ready data."""
        c, s = self.coord, self.summary
        groups = []
        for unit in sorted(self.units.values(), key=lambda u: (u.site, u.group)):
            if unit.standing is None and unit.summary is None:
                continue  # only ever named by a failure: listed there
            st, sm, gw = unit.standing, unit.summary, unit.gateway
            groups.append(
                {
                    "site": unit.site,
                    "group": unit.group,
                    "status": self.status(unit),
                    "why": st.why if st is not None else "",
                    "public_key": st.public_key.hex() if st is not None else None,
                    "epoch": sm.epoch if sm else None,
                    "members": sm.members if sm else None,
                    "online": sm.online if sm else None,
                    "utilization": sm.utilization if sm else None,
                    "capacity": dict(sm.capacity) if sm else {},
                    "trust": dict(sm.trust) if sm else {},
                    "summary_age_s": None if unit.summary_ms is None else (now_ms - unit.summary_ms) / 1000,
                    "link": self.link(unit),
                    "gateway": None
                    if gw is None
                    else {
                        "id": gw.gateway,
                        "status": gw.status,
                        "uplink": gw.uplink,
                        "coordinator": gw.coordinator,
                        "bridge": gw.bridge,
                        "buffered": gw.buffered,
                        "dropped": gw.dropped,
                        "expired": gw.expired,
                        "replayed": gw.replayed,
                        "age_s": None if unit.gateway_ms is None else (now_ms - unit.gateway_ms) / 1000,
                    },
                    "stream": {"records": unit.records, "historical": unit.historical},
                    "unverified": unit.unverified,
                    "flagged": sorted(unit.bad_topics),
                }
            )
        return {
            "kind": "region",
            "site": self.site,
            "region": self.region,
            "coordinator": None
            if c is None
            else {
                "node": c.coordinator,
                "status": c.status,
                "epoch": c.epoch,
                "tier": c.tier,
                "public_key": c.public_key.hex(),
                "groups": c.members,
            },
            "summary": None
            if s is None
            else {
                "members": s.members,
                "online": s.online,
                "capacity": s.capacity,
                "trust": s.trust,
                "utilization": s.utilization,
            },
            "groups": groups,
            # The region's trend rollup, cut to the last hour and week (None: no rollup yet).
            "trends": None
            if self.rollup is None
            else {**region_trends(self.rollup), "age_s": (now_ms - self.rollup.at_ms) / 1000},
            "alive": sum(1 for g in groups if g["status"] == "alive"),
            "verified": self.verified,
            "unverified": self.unverified,
            "failures": [{"topic": f.topic, "reason": f.reason} for f in list(self.failures)[:20]],
        }
