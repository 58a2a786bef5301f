"""A coordinator one tier up (a region), as a sans-IO state machine: its units are group summaries.

Why a sibling of :class:`~prsm_edge.protocol.group.Group` and not a generalised ``Group``: a group's
rules are about nodes (births with device claims, heartbeats, Wills tied to ``bdseq``, ACL'd joins,
verification), none of which exist one tier up, while a region's are about signed summaries (pinned
coordinator keys, newest-wins state, an ordered stream, routing tasks). What the tiers share is shared
code, not a flag-ridden class: the envelope (:func:`open_envelope`), freshness
(:class:`~prsm_edge.protocol.replay.ReplayGuard` and the same window), the topic tree
(:mod:`~prsm_edge.protocol.topics`), the effects (:class:`Publish`, :class:`Rejection`), the drill-down
commitment (:class:`~prsm_edge.protocol.claims.ClaimSet`) and the message a tier sends upward
(:class:`GroupSummary`): a region's summary has the same shape as a group's, so a region is a unit of
the tier above it with no new code, and this class serves tier 3 and beyond unchanged (``tier``).

Theory of operation. The shell hands every message of the region's tree to :meth:`Region.receive`
and calls :meth:`Region.tick` about once a second. Rules, in order, each refusal counted by reason:

1. A unit's summary (``unit/{site}/{group}/summary``, retained) must be a :class:`GroupSummary` of the
   tier below naming the unit of its topic, signed by the unit's pinned coordinator key (pinned from the
   operator's list, or at first sight), fresh (timestamp within the window) and newer than what is held:
   ``(epoch, seq)`` only rises, so the newest wins and a replayed old summary is refused (``replay``).
   A forged one (another key) is refused (``unknown_key``). Numbers are range-checked (``implausible``).
2. A unit silent for ``dead_after_ms`` is marked dead; so is one whose gateway reports its coordinator
   offline, or whose gateway's Will arrives. A new summary revives it. Each unit's standing (alive or
   dead and why, the coordinator key pinned for it, the gateway bound to it) is published retained and
   signed at ``unit/…/state`` whenever it changes, so viewers verify what the region verified.
3. The gateway's stream (``unit/…/stream``) is checked by :class:`~prsm_edge.protocol.uplink.StreamReceiver`
   (ordered, de-duplicated, expired items refused); the gateway's key is pinned per unit; each item
   inside must be signed by the unit's coordinator key. A loss in the stream, or a stream or link state
   from a unit with no summary yet, asks the gateway to send its birth again (``rebirth``, Sparkplug's
   rule; at most one request per unit per ``rebirth_gap_ms``).
4. Tasks (``api/submit`` on the region's tree, or :meth:`submit`) are routed by sampling a few units,
   own site first, keeping those whose free capacity and trust cover the task, ranked by headroom, trust
   and measured round-trip time. The region decides at once from its own picture: the best unit's
   capacity is reserved here (:class:`TaskPlaced`, answered to the requester as ``placed``) and the unit
   is asked to confirm (``region-task``). Its signed lease confirms the placement (the reservation then
   holds until the lease ends); a refusal or no answer within ``task_timeout_ms`` releases it and the
   next candidate is tried. A group is never waited on before the region has answered.
"""

from __future__ import annotations

import math
import random
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import msgspec

from prsm_edge.errors import Reason, RejectedMessage, TopicError
from prsm_edge.protocol import topics
from prsm_edge.protocol.claims import ClaimSet, check_openings
from prsm_edge.protocol.envelope import Opened, open_envelope
from prsm_edge.protocol.group import Publish, Rejection
from prsm_edge.protocol.messages import (
    ApiRequest,
    ApiResponse,
    CoordState,
    GatewayState,
    GroupSummary,
    Lease,
    NodeCommand,
    ResourceType,
    UnitState,
    UplinkRecord,
    VerificationLevel,
)
from prsm_edge.protocol.placement import LEVEL_ORDER, TaskSpec, parse_task
from prsm_edge.protocol.replay import ReplayGuard
from prsm_edge.protocol.uplink import StreamReceiver

__all__ = [
    "DrillVerdict",
    "LeaseGranted",
    "PinUnit",
    "Region",
    "RegionConfig",
    "RegionEffect",
    "StreamItem",
    "TaskPlaced",
    "TaskRefused",
    "Unit",
    "UnitChange",
]

UnitKey = tuple[str, str]
_MAX_COUNT: Final = 10**9  # nodes behind one unit, at any tier
_DEFAULT_RTT_MS: Final = 50.0
_MAX_HOLDS: Final = 4096  # reservations held on one unit; a unit holding this many takes no more tasks


@dataclass(frozen=True, slots=True)
class Hold:
    """Capacity of one unit reserved by this region for one task, until ``until_ms``.

    Unconfirmed (the group has not leased it yet) it lasts one confirmation timeout; confirmed, until the
    lease ends.
    """

    amounts: dict[str, float]
    until_ms: int
    confirmed: bool


@dataclass(frozen=True, slots=True)
class RegionConfig:
    """The fixed facts of one regional coordinator run."""

    site: str
    region: str
    coordinator: str
    public_key: bytes
    epoch: int
    tier: int = 2
    dead_after_ms: int = 25_000
    summary_interval_ms: int = 10_000
    replay_window_ms: int = 120_000
    max_units: int = 20_000
    pinned: dict[UnitKey, bytes] | None = None  # operator-given coordinator keys; None: pin at first sight
    sample: int = 8
    attempts: int = 3
    task_timeout_ms: int = 5_000
    max_pending: int = 10_000
    rebirth_gap_ms: int = 5_000


@dataclass(slots=True)
class Unit:
    """What the region knows of one group (or, a tier higher, one region)."""

    site: str
    group: str
    key: bytes
    summary: GroupSummary
    envelope: bytes
    last_seen_ms: int
    alive: bool = True
    why: str = ""
    gateway: str = ""
    gateway_key: bytes = b""
    gateway_bdseq: int = -1
    gateway_online: bool = False
    rtt_ms: float = _DEFAULT_RTT_MS
    holds: dict[str, Hold] = field(default_factory=dict)  # by task id
    leases: int = 0

    @property
    def key_id(self) -> UnitKey:
        """(site, group)."""
        return (self.site, self.group)

    @property
    def reserved(self) -> dict[str, float]:
        """Capacity held here by this region's placements, per kind (summed from the holds)."""
        total: dict[str, float] = {}
        for hold in self.holds.values():
            for kind, amount in hold.amounts.items():
                total[kind] = total.get(kind, 0.0) + amount
        return total

    def free(self, kind: str) -> float:
        """Capacity of ``kind`` not yet handed out through this region."""
        held = sum(h.amounts.get(kind, 0.0) for h in self.holds.values())
        return self.summary.capacity.get(kind, 0.0) - held

    def expire_holds(self, now_ms: int) -> None:
        """Drop reservations whose time is up (a lease that ended, a confirmation that never came)."""
        for task_id in [t for t, h in self.holds.items() if h.until_ms <= now_ms]:
            del self.holds[task_id]


@dataclass(frozen=True, slots=True)
class UnitChange:
    """A unit became alive or dead."""

    site: str
    group: str
    alive: bool
    why: str


@dataclass(frozen=True, slots=True)
class PinUnit:
    """A unit's coordinator key was pinned at first sight: persist it, so a restart keeps the pin."""

    site: str
    group: str
    key: bytes


@dataclass(frozen=True, slots=True)
class LeaseGranted:
    """A routed task got a lease in a group (reported by the group, signed by its coordinator)."""

    task_id: str
    site: str
    group: str
    lease: Lease
    via: Literal["response", "stream"]


@dataclass(frozen=True, slots=True)
class TaskPlaced:
    """The region's decision: the task goes to this unit, whose capacity is reserved here now.

    The unit confirms with its signed lease (:class:`LeaseGranted`) or refuses; on a refusal or no
    answer the region places the task again (another :class:`TaskPlaced`, ``attempt`` one higher) or
    gives up (:class:`TaskRefused`).
    """

    task_id: str
    site: str
    group: str
    attempt: int
    placed_ms: int


@dataclass(frozen=True, slots=True)
class TaskRefused:
    """No group took the task."""

    task_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class StreamItem:
    """One verified item of a unit's uplink stream."""

    site: str
    group: str
    kind: str
    item: Opened
    historical: bool


@dataclass(frozen=True, slots=True)
class DrillVerdict:
    """The answer to a drill-down: whether the opened claims check out against the summary."""

    site: str
    group: str
    ok: bool
    detail: str
    claims: tuple[Opened, ...] = ()


RegionEffect = (
    Publish
    | Rejection
    | UnitChange
    | PinUnit
    | TaskPlaced
    | LeaseGranted
    | TaskRefused
    | StreamItem
    | DrillVerdict
)


@dataclass(slots=True)
class _Pending:
    task: TaskSpec
    candidates: list[UnitKey]
    attempt: int
    sent_ms: int
    txid: str
    requester: str = ""
    request_txid: str = ""


@dataclass(slots=True)
class _Drill:
    unit: UnitKey
    indexes: list[int]
    root: bytes
    n: int
    sent_ms: int


def _check_summary(msg: GroupSummary) -> None:
    counts_ok = 0 <= msg.online <= msg.members <= _MAX_COUNT and 0 <= msg.claims <= _MAX_COUNT
    if not counts_ok or msg.epoch < 0:
        raise RejectedMessage(Reason.IMPLAUSIBLE, "member counts are out of range")
    if not (math.isfinite(msg.utilization) and 0.0 <= msg.utilization <= 1.0):
        raise RejectedMessage(Reason.IMPLAUSIBLE, f"utilization {msg.utilization} is not within 0–1")
    for kind, value in msg.capacity.items():
        if kind not in ResourceType.__members__.values() or not math.isfinite(value) or value < 0:
            raise RejectedMessage(Reason.IMPLAUSIBLE, f"capacity {kind}={value} is not valid")
    for level, count in msg.trust.items():
        if level not in VerificationLevel.__members__.values() or not 0 <= count <= _MAX_COUNT:
            raise RejectedMessage(Reason.IMPLAUSIBLE, f"trust {level}={count} is not valid")
    if msg.claims_root and len(msg.claims_root) != 32:
        raise RejectedMessage(Reason.MALFORMED, "claims_root must be a SHA-256 hash")


class Region:
    """The regional coordinator's view of its groups, fed with messages and time."""

    def __init__(self, config: RegionConfig) -> None:
        self.config = config
        self.units: dict[UnitKey, Unit] = {}
        self.rejected: Counter[Reason] = Counter()
        self.accepted: Counter[str] = Counter()
        self.stream = StreamReceiver(max_streams=config.max_units)
        self.claims = ClaimSet([])
        self.known_keys: dict[UnitKey, bytes] = {}  # pins of earlier runs (see restore_pins)
        self._gateways = ReplayGuard(window_ms=config.replay_window_ms, max_signers=config.max_units * 2)
        self._clients = ReplayGuard(window_ms=config.replay_window_ms, max_signers=10_000)
        self._order: list[UnitKey] = []
        self._by_site: dict[str, list[UnitKey]] = {}
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._drills: OrderedDict[str, _Drill] = OrderedDict()
        self._rebirths: OrderedDict[UnitKey, int] = OrderedDict()
        self._restated: OrderedDict[UnitKey, int] = OrderedDict()
        self._txn = 0
        self._touched: dict[UnitKey, None] = {}  # units whose retained UnitState is due
        self._dirty = True
        self._last_summary_ms = -(10**15)

    # ---- state -------------------------------------------------------------------------------
    @property
    def alive_count(self) -> int:
        """Units alive now."""
        return sum(1 for u in self.units.values() if u.alive)

    def state_message(self, status: str = "online") -> tuple[str, CoordState]:
        """The region coordinator's retained state (its Will is the same with ``offline``)."""
        c = self.config
        msg = CoordState(
            site=c.site,
            group=c.region,
            status="online" if status == "online" else "offline",
            epoch=c.epoch,
            coordinator=c.coordinator,
            public_key=c.public_key,
            tier=c.tier,
            members=len(self.units),
            capacity_left=max(0, c.max_units - len(self.units)),
        )
        return topics.coord_state(c.site, c.region), msg

    def pending_tasks(self) -> int:
        """Tasks routed and not yet answered."""
        return len(self._pending)

    # ---- input -------------------------------------------------------------------------------
    def receive(self, topic: str, payload: bytes, now_ms: int) -> list[RegionEffect]:
        """Handle one MQTT message of the region's tree."""
        try:
            effects = self._receive(topic, payload, now_ms)
        except RejectedMessage as exc:
            self.rejected[exc.reason] += 1
            effects = [Rejection(exc.reason, _topic_unit(topic), exc.detail)]
        return effects + self._unit_states()

    def _receive(self, topic: str, payload: bytes, now_ms: int) -> list[RegionEffect]:
        c = self.config
        try:
            parsed = topics.parse(topic)
        except TopicError as exc:
            raise RejectedMessage(Reason.MALFORMED, str(exc)) from None
        if not payload:
            return []
        kind = parsed.kind
        if kind is topics.Kind.GATEWAY_STATE:
            return self._gateway_state(parsed, open_envelope(payload), now_ms)
        if parsed.site != c.site or parsed.group != c.region:
            return []
        key = (parsed.unit_site, parsed.unit_group)
        match kind:
            case topics.Kind.UNIT_SUMMARY:
                return self._summary(key, payload, now_ms)
            case topics.Kind.UNIT_STREAM:
                return self._stream(key, open_envelope(payload), now_ms)
            case topics.Kind.UNIT_STATE:
                return self._standing_seen(key, payload, now_ms)
            case topics.Kind.UNIT_API_RESP if parsed.client == c.coordinator:
                return self._response(key, parsed.method, open_envelope(payload), now_ms)
            case topics.Kind.API_REQ if parsed.method == "submit":
                return self._submit_request(parsed.client, open_envelope(payload), now_ms)
        return []

    def restore_pins(self, pins: dict[UnitKey, bytes]) -> None:
        """Keys pinned at first sight by an earlier run (persisted by the shell): they hold again."""
        for key, value in list(pins.items())[: self.config.max_units]:
            self.known_keys[key] = value

    def _pinned_key(self, key: UnitKey) -> bytes | None:
        unit = self.units.get(key)
        if unit is not None:
            return unit.key
        known = self.known_keys.get(key)
        if known is not None:
            return known
        if self.config.pinned is not None:
            return self.config.pinned.get(key, b"\x00")
        return None

    def _summary(self, key: UnitKey, payload: bytes, now_ms: int) -> list[RegionEffect]:
        unit = self.units.get(key)
        if unit is not None and payload == unit.envelope:
            # The state we hold, sent again (a birth after our restart, a retained copy): not news, and
            # not a sign of life either, so a replay of the last summary cannot keep a dead group alive.
            self.accepted["summary_again"] += 1
            return []
        opened = open_envelope(payload)
        msg = opened.message
        if not isinstance(msg, GroupSummary) or (msg.site, msg.group) != key:
            raise RejectedMessage(Reason.MALFORMED, "a unit's summary topic must carry that unit's summary")
        if msg.tier != self.config.tier - 1:
            raise RejectedMessage(Reason.MALFORMED, f"a tier-{msg.tier} summary at a tier-{self.config.tier}")
        pinned = self._pinned_key(key)
        if pinned is not None and pinned != opened.kid:
            raise RejectedMessage(Reason.UNKNOWN_KEY, f"{key[0]}/{key[1]} is not signed by its pinned key")
        if abs(now_ms - msg.ts) > self.config.replay_window_ms:
            raise RejectedMessage(Reason.STALE, f"summary timestamp is {now_ms - msg.ts} ms from now")
        if unit is not None and (msg.epoch, msg.seq) <= (unit.summary.epoch, unit.summary.seq):
            raise RejectedMessage(
                Reason.REPLAY, f"summary {msg.epoch}/{msg.seq} is not newer than {unit.summary.seq}"
            )
        _check_summary(msg)
        effects: list[RegionEffect] = []
        self.accepted["summary"] += 1
        if unit is None:
            self._dirty = True  # a unit joined: the tier above hears of it at the next tick
            if len(self.units) >= self.config.max_units:
                raise RejectedMessage(Reason.GROUP_FULL, f"region holds {self.config.max_units} units")
            unit = Unit(key[0], key[1], opened.kid, msg, payload, now_ms)
            self.units[key] = unit
            self._order.append(key)
            self._by_site.setdefault(key[0], []).append(key)
            effects.append(UnitChange(key[0], key[1], True, "birth"))
            self._touched[key] = None
            if self.known_keys.get(key) != opened.kid:
                self.known_keys[key] = opened.kid
                effects.append(PinUnit(key[0], key[1], opened.kid))
            return effects
        if msg.epoch != unit.summary.epoch:
            # A new coordinator epoch: its summary is the truth again for what it leased; placements
            # still waiting for its confirmation keep their reservation.
            unit.holds = {t: h for t, h in unit.holds.items() if not h.confirmed}
        unit.summary, unit.envelope, unit.last_seen_ms = msg, payload, now_ms
        if not unit.alive:
            self._dirty = True
            unit.alive, unit.why = True, ""
            self._touched[key] = None
            effects.append(UnitChange(key[0], key[1], True, "summary"))
        return effects

    def _gateway_state(self, parsed: topics.Topic, opened: Opened, now_ms: int) -> list[RegionEffect]:
        msg = opened.message
        if not isinstance(msg, GatewayState) or msg.gateway != parsed.gateway or msg.site != parsed.site:
            raise RejectedMessage(Reason.MALFORMED, "gateway state does not match its topic")
        if opened.signer != msg.gateway:
            raise RejectedMessage(Reason.WRONG_TOPIC_OWNER, "a gateway's state must be signed by it")
        key = (msg.site, msg.group)
        unit = self.units.get(key)
        if unit is None:
            return self._rebirth(key, msg.gateway, "link state before any summary", now_ms)
        if not self._bind_gateway(unit, opened):
            raise RejectedMessage(Reason.UNKNOWN_KEY, f"{msg.gateway} is not {key[0]}/{key[1]}'s gateway")
        effects: list[RegionEffect] = []
        if msg.status == "offline":
            if msg.bdseq != unit.gateway_bdseq or not unit.gateway_online:
                return []  # a late Will of an older connection
            unit.gateway_online = False
            if unit.alive:
                effects.append(self._kill(unit, "gateway offline"))
            return effects
        if abs(now_ms - msg.ts) > self.config.replay_window_ms:
            raise RejectedMessage(Reason.STALE, "gateway state is outside the window")
        unit.gateway_online, unit.gateway_bdseq = True, msg.bdseq
        if msg.coordinator == "offline" and unit.alive:
            effects.append(self._kill(unit, "coordinator offline"))
        return effects

    def _bind_gateway(self, unit: Unit, opened: Opened) -> bool:
        if not unit.gateway_key:
            unit.gateway_key, unit.gateway = opened.kid, opened.signer
            self._touched[unit.key_id] = None
        return unit.gateway_key == opened.kid

    def _kill(self, unit: Unit, why: str) -> UnitChange:
        unit.alive, unit.why = False, why
        self._dirty = True
        self._touched[unit.key_id] = None
        return UnitChange(unit.site, unit.group, False, why)

    def unit_state(self, unit: Unit) -> Publish:
        """The region's retained word on ``unit`` (alive or dead, the keys it pinned), for viewers."""
        c = self.config
        msg = UnitState(
            site=unit.site,
            group=unit.group,
            region=c.region,
            region_epoch=c.epoch,
            alive=unit.alive,
            why=unit.why,
            public_key=unit.key,
            gateway=unit.gateway,
            gateway_key=unit.gateway_key,
        )
        topic = topics.unit(topics.Kind.UNIT_STATE, c.site, c.region, unit.site, unit.group)
        return Publish(topic, msg, retain=True)

    def _standing_seen(self, key: UnitKey, payload: bytes, now_ms: int) -> list[RegionEffect]:
        """A unit's retained standing as the broker holds it. If it is not what this region says now (on
        an open broker anyone may overwrite it, or replay an old one of ours: older than
        ``rebirth_gap_ms``, unlike the echo of our own last-but-one), say it again, at most once per
        ``rebirth_gap_ms`` per unit, so viewers that connect later read the truth."""
        unit = self.units.get(key)
        if unit is None:
            return []
        current = self.unit_state(unit)
        try:
            opened: Opened | None = open_envelope(payload)
        except RejectedMessage:
            opened = None
        if opened is not None and opened.kid == self.config.public_key:
            said = opened.message
            if _standing(said) == _standing(current.message) or now_ms - said.ts < self.config.rebirth_gap_ms:
                return []  # what we say now, or the echo of what we said a moment ago
        last = self._restated.get(key)
        if last is not None and now_ms - last < self.config.rebirth_gap_ms:
            return []
        self._restated[key] = now_ms
        self._restated.move_to_end(key)
        while len(self._restated) > self.config.max_units:
            self._restated.popitem(last=False)
        self.accepted["standing_restated"] += 1
        return [current]

    def _unit_states(self) -> list[RegionEffect]:
        if not self._touched:
            return []
        due = [self.unit_state(self.units[key]) for key in self._touched if key in self.units]
        self._touched.clear()
        return list(due)

    def _stream(self, key: UnitKey, opened: Opened, now_ms: int) -> list[RegionEffect]:
        rec = opened.message
        if not isinstance(rec, UplinkRecord) or (rec.site, rec.group) != key or rec.gateway != opened.signer:
            raise RejectedMessage(Reason.MALFORMED, "a stream record must name its unit and gateway")
        unit = self.units.get(key)
        if unit is None:
            return self._rebirth(key, rec.gateway, "stream before any summary", now_ms)
        if not self._bind_gateway(unit, opened):
            raise RejectedMessage(Reason.UNKNOWN_KEY, f"{rec.gateway} is not {key[0]}/{key[1]}'s gateway")
        self._gateways.check(opened.signer, rec.seq, rec.ts, now_ms, allow_reset=True)
        verdict, lost = self.stream.accept(rec, now_ms)
        effects: list[RegionEffect] = []
        if lost:
            effects.extend(self._rebirth(key, rec.gateway, f"{lost} stream records lost", now_ms))
        if verdict == "duplicate":
            self.accepted["duplicate"] += 1
            return effects
        if verdict == "expired":
            self.rejected[Reason.STALE] += 1
            effects.append(Rejection(Reason.STALE, rec.gateway, f"record {rec.stream_seq} expired"))
            return effects
        item = open_envelope(rec.item)
        if item.kid != unit.key:
            raise RejectedMessage(
                Reason.UNKNOWN_KEY, "a stream item must be signed by the group's coordinator"
            )
        self.accepted["stream"] += 1
        effects.append(StreamItem(key[0], key[1], rec.kind, item, rec.historical))
        if rec.kind == "lease" and isinstance(item.message, Lease):
            effects.extend(self._lease(unit, item.message, "stream"))
        return effects

    def _rebirth(self, key: UnitKey, gateway: str, why: str, now_ms: int) -> list[RegionEffect]:
        last = self._rebirths.get(key)
        if last is not None and now_ms - last < self.config.rebirth_gap_ms:
            return []
        self._rebirths[key] = now_ms
        self._rebirths.move_to_end(key)
        while len(self._rebirths) > self.config.max_units:
            self._rebirths.popitem(last=False)
        self.accepted["rebirth_request"] += 1
        cmd = NodeCommand(verb="rebirth", node=gateway, args={"why": why})
        return [Publish(topics.unit(topics.Kind.UNIT_REBIRTH, *self._tree, *key), cmd)]

    @property
    def _tree(self) -> tuple[str, str]:
        return (self.config.site, self.config.region)

    # ---- tasks -------------------------------------------------------------------------------
    def _submit_request(self, client: str, opened: Opened, now_ms: int) -> list[RegionEffect]:
        msg = opened.message
        if not isinstance(msg, ApiRequest) or msg.requester != opened.signer or opened.signer != client:
            raise RejectedMessage(Reason.WRONG_TOPIC_OWNER, "a submit must be signed by its requester")
        self._clients.check(opened.signer, msg.seq, msg.ts, now_ms, allow_reset=True)
        task = parse_task(msg.params)
        return self._route(task, now_ms, random.Random(f"{task.task_id}/{now_ms}"), client, msg.txid)

    def submit(self, task: TaskSpec, now_ms: int, rng: random.Random) -> list[RegionEffect]:
        """Route a task from this process (the shell's API); the answer comes as an effect later."""
        return self._route(task, now_ms, rng, "", "")

    def candidates(
        self, task: TaskSpec, rng: random.Random, unfit: Counter[str] | None = None
    ) -> list[UnitKey]:
        """A few units that can take ``task``: sampled, own site first, best first; never a full scan.

        ``unfit`` (if given) counts why sampled units were passed over, for a refusal to name.
        """
        k = self.config.sample
        picked: list[Unit] = []
        pools = [self._by_site.get(task.origin_site, []), self._order] if task.origin_site else [self._order]
        checked: set[UnitKey] = set()
        for pool in pools:
            sample = list(pool) if len(pool) <= k else [pool[rng.randrange(len(pool))] for _ in range(k)]
            for u in (self.units[s] for s in dict.fromkeys(sample)):
                if u.key_id in checked:
                    continue
                checked.add(u.key_id)
                why = self._unfit(u, task)
                if not why:
                    picked.append(u)
                elif unfit is not None:
                    unfit[why] += 1
            if picked:
                break
        own = task.origin_site
        picked.sort(key=lambda u: (u.site != own, -self._score(u, task)))
        return [u.key_id for u in picked[: self.config.attempts]]

    def _unfit(self, unit: Unit, task: TaskSpec) -> str:
        """Why ``unit`` cannot take ``task`` (``""``: it can), in words a refusal can count."""
        if not unit.alive:
            return "dead"
        if len(unit.holds) >= _MAX_HOLDS:
            return "holding too many reservations"
        for kind, amount in task.resources.items():
            if unit.free(kind.value) < amount:
                return f"short of {kind.value}"
        need = LEVEL_ORDER[task.min_level]
        trusted = any(
            LEVEL_ORDER.get(VerificationLevel(level), 0) >= need and n > 0
            for level, n in unit.summary.trust.items()
        )
        return "" if trusted else f"no member at {task.min_level.value} or above"

    def _score(self, unit: Unit, task: TaskSpec) -> float:
        headroom = min(
            unit.free(kind.value) / max(unit.summary.capacity.get(kind.value, 1.0), 1e-9)
            for kind in task.resources
        )
        return headroom * (1.0 - unit.summary.utilization) / (1.0 + unit.rtt_ms / 100.0)

    def _route(
        self, task: TaskSpec, now_ms: int, rng: random.Random, requester: str, request_txid: str
    ) -> list[RegionEffect]:
        if task.task_id in self._pending:
            return []  # already being placed
        if len(self._pending) >= self.config.max_pending:
            return self._refuse(
                task.task_id, "the region has too many tasks in flight", requester, request_txid
            )
        unfit: Counter[str] = Counter()
        found = self.candidates(task, rng, unfit)
        if not found:
            why = _no_group(task, unfit, len(self.units))
            return self._refuse(task.task_id, why, requester, request_txid)
        pending = _Pending(task, found, 0, now_ms, "", requester, request_txid)
        self._pending[task.task_id] = pending
        return self._place(pending, now_ms)

    def _place(self, pending: _Pending, now_ms: int) -> list[RegionEffect]:
        """Reserve the current candidate's capacity, say so, and ask the unit to confirm with a lease."""
        key = pending.candidates[pending.attempt]
        unit = self.units[key]
        task = pending.task
        amounts = {kind.value: amount for kind, amount in task.resources.items()}
        # Released when the unit refuses or the confirmation times out; the expiry is only a backstop.
        until = now_ms + 2 * self.config.task_timeout_ms
        unit.holds[task.task_id] = Hold(amounts, until, confirmed=False)
        self.accepted["task_placed"] += 1
        effects: list[RegionEffect] = [TaskPlaced(task.task_id, key[0], key[1], pending.attempt, now_ms)]
        if pending.requester:
            result = {"status": "placed", "site": key[0], "group": key[1], "attempt": pending.attempt}
            effects.append(self._answer(pending.requester, pending.request_txid, ok=True, result=result))
        effects.append(self._ask(pending, now_ms))
        return effects

    def _release(self, pending: _Pending) -> None:
        unit = self.units.get(pending.candidates[pending.attempt])
        if unit is not None:
            hold = unit.holds.get(pending.task.task_id)
            if hold is not None and not hold.confirmed:
                del unit.holds[pending.task.task_id]

    def _ask(self, pending: _Pending, now_ms: int) -> Publish:
        key = pending.candidates[pending.attempt]
        self._txn += 1
        pending.txid = f"{pending.task.task_id}.{pending.attempt}"
        pending.sent_ms = now_ms
        params: dict[str, Any] = msgspec.to_builtins(pending.task)
        req = ApiRequest(
            txid=pending.txid, method="region-task", requester=self.config.coordinator, params=params
        )
        topic = topics.unit_api(
            topics.Kind.UNIT_API_REQ, *self._tree, *key, "region-task", self.config.coordinator
        )
        return Publish(topic, req)

    def _refuse(self, task_id: str, reason: str, requester: str, request_txid: str) -> list[RegionEffect]:
        self.accepted["task_refused"] += 1
        effects: list[RegionEffect] = [TaskRefused(task_id, reason)]
        if requester:
            effects.append(self._answer(requester, request_txid, ok=False, error=reason))
        return effects

    def _answer(
        self, requester: str, txid: str, *, ok: bool, error: str = "", result: dict[str, Any] | None = None
    ) -> Publish:
        resp = ApiResponse(txid=txid, method="submit", ok=ok, error=error, result=result or {})
        return Publish(topics.api(topics.Kind.API_RESP, *self._tree, "submit", requester), resp)

    def _response(self, key: UnitKey, method: str, opened: Opened, now_ms: int) -> list[RegionEffect]:
        unit = self.units.get(key)
        if unit is None or opened.kid != unit.key:
            raise RejectedMessage(Reason.UNKNOWN_KEY, "a response must be signed by the unit's coordinator")
        msg = opened.message
        if not isinstance(msg, ApiResponse) or msg.method != method:
            raise RejectedMessage(Reason.MALFORMED, "response does not match its topic")
        if method == "region-drill":
            return self._drill_answer(key, unit, msg)
        task_id = msg.txid.rsplit(".", 1)[0]
        pending = self._pending.get(task_id)
        if pending is None or pending.txid != msg.txid or pending.candidates[pending.attempt] != key:
            return []  # late, or answered already
        unit.rtt_ms = 0.8 * unit.rtt_ms + 0.2 * max(0, now_ms - pending.sent_ms)
        if msg.ok:
            raw = msg.result.get("lease")
            lease_env = open_envelope(raw) if isinstance(raw, bytes) else None
            if lease_env is None or lease_env.kid != unit.key or not isinstance(lease_env.message, Lease):
                raise RejectedMessage(Reason.MALFORMED, "an accepted task must carry the signed lease")
            return self._lease(unit, lease_env.message, "response")
        return self._next(pending, now_ms, f"{key[0]}/{key[1]}: {msg.error}")

    def _next(self, pending: _Pending, now_ms: int, why: str) -> list[RegionEffect]:
        self._release(pending)
        pending.attempt += 1
        while pending.attempt < len(pending.candidates):
            unit = self.units.get(pending.candidates[pending.attempt])
            if unit is not None and not self._unfit(unit, pending.task):  # others may have taken it since
                return self._place(pending, now_ms)
            pending.attempt += 1
        del self._pending[pending.task.task_id]
        return self._refuse(
            pending.task.task_id,
            f"every candidate refused (last: {why})",
            pending.requester,
            pending.request_txid,
        )

    def _lease(self, unit: Unit, lease: Lease, via: Literal["response", "stream"]) -> list[RegionEffect]:
        pending = self._pending.pop(lease.task_id, None)
        if pending is None:
            return []  # the other path reported it first, or not one of ours
        if pending.candidates[pending.attempt] != unit.key_id:
            self._release(pending)  # a late lease from a unit asked before: that one holds it now
        unit.leases += 1
        amounts = {kind.value: amount for kind, amount in pending.task.resources.items()}
        if len(unit.holds) < _MAX_HOLDS or lease.task_id in unit.holds:
            unit.holds[lease.task_id] = Hold(amounts, lease.end_ms, confirmed=True)
        self.accepted["lease"] += 1
        effects: list[RegionEffect] = [LeaseGranted(lease.task_id, unit.site, unit.group, lease, via)]
        if pending.requester:
            result = {
                "status": "leased",
                "site": unit.site,
                "group": unit.group,
                "node": lease.node,
                "lease_id": lease.lease_id,
            }
            effects.append(self._answer(pending.requester, pending.request_txid, ok=True, result=result))
        return effects

    # ---- drill-down --------------------------------------------------------------------------
    def drill(self, site: str, group: str, indexes: list[int], now_ms: int) -> list[RegionEffect]:
        """Ask a unit to open these leaves of its summary's claims root."""
        unit = self.units.get((site, group))
        if unit is None or not unit.summary.claims_root:
            return [DrillVerdict(site, group, False, "no summary with a claims root to drill into")]
        self._txn += 1
        txid = f"drill.{self.config.epoch}.{self._txn}"
        self._drills[txid] = _Drill(
            unit.key_id, indexes, unit.summary.claims_root, unit.summary.claims, now_ms
        )
        while len(self._drills) > 1000:
            self._drills.popitem(last=False)
        req = ApiRequest(
            txid=txid,
            method="region-drill",
            requester=self.config.coordinator,
            params={"indexes": indexes, "root": unit.summary.claims_root},
        )
        topic = topics.unit_api(
            topics.Kind.UNIT_API_REQ, *self._tree, site, group, "region-drill", self.config.coordinator
        )
        return [Publish(topic, req)]

    def _drill_answer(self, key: UnitKey, unit: Unit, msg: ApiResponse) -> list[RegionEffect]:
        drill = self._drills.pop(msg.txid, None)
        if drill is None or drill.unit != key:
            return []
        if not msg.ok:
            return [DrillVerdict(key[0], key[1], False, f"the group refused: {msg.error}")]
        try:
            claims = check_openings(msg.result, drill.root, drill.n, drill.indexes)
        except RejectedMessage as exc:
            self.rejected[exc.reason] += 1
            return [DrillVerdict(key[0], key[1], False, exc.detail)]
        return [
            DrillVerdict(key[0], key[1], True, f"{len(claims)} claims opened and verified", tuple(claims))
        ]

    # ---- time --------------------------------------------------------------------------------
    def tick(self, now_ms: int) -> list[RegionEffect]:
        """Mark silent units dead, time out task requests, publish the region's summary when due."""
        effects: list[RegionEffect] = []
        limit = now_ms - self.config.dead_after_ms
        for unit in self.units.values():
            if unit.alive and unit.last_seen_ms < limit:
                effects.append(self._kill(unit, "silent"))
            if unit.holds:
                unit.expire_holds(now_ms)
        timeout = self.config.task_timeout_ms
        for pending in [p for p in self._pending.values() if now_ms - p.sent_ms > timeout]:
            key = pending.candidates[pending.attempt]
            effects.extend(self._next(pending, now_ms, f"{key[0]}/{key[1]} did not answer"))
        effects.extend(self._unit_states())
        c = self.config
        since = now_ms - self._last_summary_ms
        if since >= c.summary_interval_ms or (self._dirty and since >= 1000):
            self._dirty = False
            self._last_summary_ms = now_ms
            effects.append(Publish(topics.summary(c.site, c.region), self.summary(), retain=True))
            effects.append(Publish(*self.state_message(), retain=True))
        return effects

    def summary(self) -> GroupSummary:
        """The region as one unit of the tier above: the same message a group sends."""
        capacity: dict[str, float] = {}
        trust: Counter[str] = Counter()
        members = online = 0
        util = 0.0
        leaves: list[tuple[str, bytes]] = []
        for unit in self.units.values():
            s = unit.summary
            members += s.members
            if not unit.alive:
                continue
            online += s.online
            util += s.utilization * s.online
            trust.update(s.trust)
            for kind, value in s.capacity.items():
                capacity[kind] = capacity.get(kind, 0.0) + value
            leaves.append((f"{unit.site}/{unit.group}", unit.envelope))
        self.claims = ClaimSet(leaves)
        c = self.config
        return GroupSummary(
            site=c.site,
            group=c.region,
            epoch=c.epoch,
            tier=c.tier,
            members=members,
            online=online,
            capacity={k: round(v, 3) for k, v in sorted(capacity.items())},
            trust=dict(sorted(trust.items())),
            utilization=round(util / online, 4) if online else 0.0,
            claims_root=self.claims.root,
            claims=len(self.claims),
        )


def _standing(msg: object) -> tuple[object, ...] | None:
    """What a UnitState says, without its sequence number and timestamp."""
    if not isinstance(msg, UnitState):
        return None
    return (
        msg.site, msg.group, msg.region, msg.region_epoch, msg.alive, msg.why, msg.public_key, msg.gateway,
        msg.gateway_key,
    )  # fmt: skip


def _topic_unit(topic: str) -> str:
    try:
        parsed = topics.parse(topic)
    except TopicError:
        return ""
    if parsed.unit_site:
        return f"{parsed.unit_site}/{parsed.unit_group}"
    return parsed.gateway or parsed.client


def _no_group(task: TaskSpec, unfit: Counter[str], units: int) -> str:
    """A refusal naming what the sampled groups lacked, so an operator knows what to change."""
    wanted = ", ".join(f"{amount:g} {kind.value}" for kind, amount in task.resources.items())
    head = f"no group offers {wanted} with a member at {task.min_level.value} or above"
    if not unfit:
        return f"{head}: the region has no groups" if not units else head
    counts = "; ".join(f"{n} {why}" for why, n in unfit.most_common())
    return f"{head}: of {sum(unfit.values())} sampled (of {units} groups), {counts}"
