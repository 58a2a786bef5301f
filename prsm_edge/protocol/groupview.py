"""What a read-only observer (``prsm-edge status``, a viewer) knows of one group, from verified messages.

Sans-IO: the caller hands over every message of the group's tree (topic, payload bytes, the time now)
and reads :meth:`GroupView.snapshot`. The rules are the coordinator's own, seen from outside, and the
same the browser dashboard applies:

1. every payload is opened with :func:`~prsm_edge.protocol.envelope.open_envelope` (bounded decode,
   Ed25519 over COSE_Sign1);
2. ``coord/state`` must be signed by the key it names, for the coordinator id derived from it; that key
   is pinned (given by the caller, else the first seen) and another key later is refused;
3. roster, summary, trend rollup, beacon and commands must be signed by the pinned coordinator key;
   those that arrive before the coordinator's state wait in a bounded queue (a rollup naming another
   group, or older than the one held, is not taken);
4. a node's topics must be signed by the key its node id derives from (and the roster's key for it),
   and the body's ``node`` must name the topic's node.

Whatever fails is counted and listed (bounded), never folded into the view.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from prsm_edge.errors import RejectedMessage, TopicError
from prsm_edge.protocol import topics
from prsm_edge.protocol.envelope import Opened, open_envelope
from prsm_edge.protocol.messages import (
    CoordState,
    GroupRollup,
    GroupSummary,
    Heartbeat,
    NodeBirth,
    NodeState,
    ResourceClaim,
    Roster,
    RosterEntry,
)
from prsm_edge.protocol.trendview import trends

__all__ = ["GroupView", "NodeView", "Unverified"]

MAX_NODES: Final = 1000
MAX_PENDING: Final = 500
MAX_FAILURES: Final = 100
# Topics that name a node but carry the coordinator's signature: its commands and the node's market listing.
_COORDINATOR_SPEAKS_FOR_NODE: Final = frozenset({topics.Kind.NODE_CMD, topics.Kind.MARKET_LISTING})


@dataclass(frozen=True, slots=True)
class Unverified:
    """A message that did not verify, and why."""

    at_ms: int
    topic: str
    reason: str


@dataclass(slots=True)
class NodeView:
    """One node as its own verified messages and the roster describe it."""

    node: str
    birth: NodeBirth | None = None
    state: NodeState | None = None
    heartbeat: Heartbeat | None = None
    last_seen_ms: int | None = None
    unverified: int = 0


@dataclass(slots=True)
class GroupView:
    """The verified picture of one group."""

    site: str
    group: str
    pinned_key: bytes | None = None
    coord: CoordState | None = None
    coord_seen_ms: int | None = None
    roster: Roster | None = None
    summary: GroupSummary | None = None
    rollup: GroupRollup | None = None
    nodes: dict[str, NodeView] = field(default_factory=dict)
    failures: deque[Unverified] = field(default_factory=lambda: deque(maxlen=MAX_FAILURES))
    verified: int = 0
    unverified: int = 0
    _pending: deque[tuple[str, bytes]] = field(default_factory=lambda: deque(maxlen=MAX_PENDING))

    def _fail(self, topic: str, reason: str, now_ms: int, node: str = "") -> None:
        self.unverified += 1
        self.failures.appendleft(Unverified(now_ms, topic, reason))
        view = self._node(node) if node else None
        if view is not None:
            view.unverified += 1

    def _node(self, node: str) -> NodeView | None:
        view = self.nodes.get(node)
        if view is None and len(self.nodes) < MAX_NODES:
            view = self.nodes[node] = NodeView(node)
        return view

    def receive(self, topic: str, payload: bytes, now_ms: int) -> None:
        """Fold one message of the group's tree into the view (or record why it was refused)."""
        try:
            where = topics.parse(topic)
        except TopicError:
            return
        if where.site != self.site or where.group != self.group:
            return
        if where.kind in (topics.Kind.NODE_BENCH, topics.Kind.NODE_BANDWIDTH):
            return  # a benchmark's echo, a bandwidth check's chunks: not the group's state
        if not payload:
            if where.kind is topics.Kind.NODE_BIRTH:
                self.nodes.pop(where.node, None)  # a cleared retained birth: the node left
            return
        try:
            opened = open_envelope(payload)
        except RejectedMessage as exc:
            self._fail(topic, str(exc), now_ms, where.node)
            return
        if where.kind is topics.Kind.COORD_STATE:
            self._coord_state(topic, opened, now_ms)
        elif where.node and where.kind not in _COORDINATOR_SPEAKS_FOR_NODE:
            self._from_node(topic, where.node, opened, now_ms)
        elif where.kind is topics.Kind.API_REQ:
            # Signed by its client (a node or an owner key): checked and counted, never a row of its own.
            if opened.signer != where.client:
                self._fail(topic, f"signed by {opened.signer}, not by the topic's client", now_ms)
            else:
                self.verified += 1
        elif self.coord is None:
            self._pending.append((topic, payload))
        elif opened.kid != self.coord.public_key:
            self._fail(topic, f"signed by {opened.signer}, not by the coordinator", now_ms, where.node)
        else:
            self.verified += 1
            match opened.message:
                case Roster() as roster:
                    self.roster = roster
                    for entry in roster.members:
                        self._node(entry.node)
                case GroupSummary() as summary:
                    self.summary = summary
                case GroupRollup() as rollup if (rollup.site, rollup.group) == (self.site, self.group):
                    if self.rollup is None or rollup.at_ms >= self.rollup.at_ms:
                        self.rollup = rollup

    def _coord_state(self, topic: str, opened: Opened, now_ms: int) -> None:
        msg = opened.message
        if (
            not isinstance(msg, CoordState)
            or msg.coordinator != opened.signer
            or msg.public_key != opened.kid
        ):
            self._fail(topic, "coordinator state not signed by the key it names", now_ms)
            return
        if self.pinned_key is not None and opened.kid != self.pinned_key:
            self._fail(topic, f"coordinator key {opened.kid.hex()[:16]}… is not the pinned key", now_ms)
            return
        self.pinned_key = opened.kid
        self.coord, self.coord_seen_ms = msg, now_ms
        self.verified += 1
        pending = list(self._pending)
        self._pending.clear()
        for pending_topic, payload in pending:
            self.receive(pending_topic, payload, now_ms)

    def _roster_entry(self, node: str) -> RosterEntry | None:
        if self.roster is None:
            return None
        return next((e for e in self.roster.members if e.node == node), None)

    def _from_node(self, topic: str, node: str, opened: Opened, now_ms: int) -> None:
        if opened.signer != node:
            self._fail(topic, f"signed by {opened.signer}, not by the topic's node", now_ms, node)
            return
        entry = self._roster_entry(node)
        if entry is not None and entry.public_key and entry.public_key != opened.kid:
            self._fail(topic, "signed by another key than the roster names", now_ms, node)
            return
        message = opened.message
        named = getattr(message, "node", getattr(message, "voter", getattr(message, "requester", node)))
        if named != node:
            self._fail(topic, f"the body names {named}, the topic {node}", now_ms, node)
            return
        view = self._node(node)
        if view is None:
            return
        self.verified += 1
        view.last_seen_ms = now_ms
        match opened.message:
            case NodeBirth() as birth:
                view.birth = birth
            case NodeState() as state:
                if view.state is None or state.bdseq >= view.state.bdseq:
                    view.state = state
            case Heartbeat() as hb:
                view.heartbeat = hb
            case ResourceClaim() as claim if view.birth is not None:
                view.birth = _with_resources(view.birth, claim)

    def online(self, view: NodeView) -> bool:
        """The node's own signed state when known, else the roster's word."""
        if view.state is not None:
            return view.state.status == "online"
        entry = self._roster_entry(view.node)
        return entry is not None and entry.online

    def snapshot(self, now_ms: int) -> dict[str, Any]:
        """Everything known, as plain JSON-ready data."""
        coord = self.coord
        nodes = []
        for view in sorted(self.nodes.values(), key=lambda v: v.node):
            entry = self._roster_entry(view.node)
            hb = view.heartbeat
            nodes.append(
                {
                    "node": view.node,
                    "online": self.online(view),
                    "in_roster": entry is not None,
                    "level": entry.level.value if entry is not None else None,
                    "device_class": view.birth.device_class if view.birth else None,
                    "resources": {r.type.value: r.capacity for r in view.birth.resources}
                    if view.birth
                    else {},
                    "cpu_util": hb.cpu_util if hb else None,
                    "temperature_c": hb.temperature_c if hb else None,
                    "power_w": hb.power_w if hb else None,
                    "offering": hb.offering if hb else None,
                    "throttle": hb.throttle if hb else "",
                    "last_seen_s": None if view.last_seen_ms is None else (now_ms - view.last_seen_ms) / 1000,
                    "unverified": view.unverified,
                }
            )
        s = self.summary
        return {
            "site": self.site,
            "group": self.group,
            "coordinator": None
            if coord is None
            else {
                "node": coord.coordinator,
                "status": coord.status,
                "epoch": coord.epoch,
                "public_key": coord.public_key.hex(),
                "members": coord.members,
                "acl": coord.acl,
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
            "nodes": nodes,
            # The coordinator's trend rollup, cut to the last hour and week (None: no rollup yet).
            "trends": None
            if self.rollup is None
            else {**trends(self.rollup), "age_s": (now_ms - self.rollup.at_ms) / 1000},
            "verified": self.verified,
            "unverified": self.unverified,
            "failures": [{"topic": f.topic, "reason": f.reason} for f in list(self.failures)[:20]],
        }


def _with_resources(birth: NodeBirth, claim: ResourceClaim) -> NodeBirth:
    return msgspec.structs.replace(birth, resources=claim.resources)
