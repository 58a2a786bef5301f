"""The local-group coordinator as a sans-IO state machine.

Theory of operation. The I/O shell hands every MQTT message of the group to :meth:`Group.receive`
(topic, payload bytes, the time now) and calls :meth:`Group.tick` periodically. Both return *effects*:
messages to sign and publish, member records to store, joins to grant. Nothing here touches a socket, a
clock or a file.

Rules enforced on every message from a node, in order (a failure is counted by reason, logged once per
reason per node by the shell, and never stops the loop):

1. the topic belongs to this group's tree (else ``malformed``);
2. the envelope verifies (bounded decode, Ed25519 over COSE_Sign1);
3. the signer owns the topic: the node id in the topic is the id derived from the signing key, and the
   body's ``node`` field says the same (``wrong_topic_owner``);
4. the message type is the one that topic carries (``malformed``);
5. the sequence number is fresh and the timestamp inside the window (``replay`` / ``stale``); a gap in a
   member's sequence makes the coordinator ask it to re-announce (``rebirth``), as in Sparkplug B;
6. births and claims are plausible (``implausible``) and the group has room (``group_full``);
7. only members may send telemetry, claims and proofs (``not_member``; the node is asked to rebirth).

A node's retained ``state`` topic carries its Last Will (``offline``, signed when it connected). A Will
is honoured only if its ``bdseq`` is the member's current session, so a late Will from an old connection
cannot take down a node that has already reconnected. Nodes that miss heartbeats for
``heartbeat_timeout_ms`` are marked offline by :meth:`tick`.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from prsm_edge.errors import Reason, RejectedMessage, TopicError
from prsm_edge.protocol import topics
from prsm_edge.protocol.allocation import check_owner_terms
from prsm_edge.protocol.claims import ClaimSet
from prsm_edge.protocol.envelope import Opened, open_envelope
from prsm_edge.protocol.messages import (
    TRUST_SCORE,
    ApiRequest,
    ApiResponse,
    BandwidthChunk,
    BenchmarkProof,
    CoordState,
    GroupSummary,
    Heartbeat,
    Message,
    NodeBirth,
    NodeCommand,
    NodeState,
    ProofOpening,
    ResourceClaim,
    ResourceSpec,
    ResourceType,
    Roster,
    RosterEntry,
    VerificationLevel,
    VerificationVote,
)
from prsm_edge.protocol.replay import ReplayGuard

__all__ = [
    "MAX_MEMBERS",
    "ApiCall",
    "ApiReply",
    "Effect",
    "Group",
    "GroupConfig",
    "Member",
    "Publish",
    "Rejection",
    "StoreMember",
    "plausible",
]

MAX_MEMBERS: Final = 200

# Upper bounds of what one device may plausibly offer, per resource type (in RESOURCE_UNITS).
_PLAUSIBLE_MAX: Final[dict[ResourceType, float]] = {
    ResourceType.COMPUTE_CPU: 4096,
    ResourceType.COMPUTE_GPU: 64,
    ResourceType.COMPUTE_TPU: 64,
    ResourceType.STORAGE_PERSISTENT: 10_000_000,
    ResourceType.STORAGE_MEMORY: 65_536,
    ResourceType.STORAGE_CACHE: 65_536,
    ResourceType.BANDWIDTH_INGRESS: 400_000,
    ResourceType.BANDWIDTH_EGRESS: 400_000,
    ResourceType.SPECIALIZED_QUANTUM: 10_000,
    ResourceType.SPECIALIZED_EDGE: 64,
}


def plausible(resources: list[ResourceSpec]) -> None:
    """Raise ``implausible`` unless every resource is finite, non-negative, below its cap, and listed once."""
    seen: set[ResourceType] = set()
    for spec in resources:
        if spec.type in seen:
            raise RejectedMessage(Reason.IMPLAUSIBLE, f"{spec.type} is listed twice")
        seen.add(spec.type)
        if not math.isfinite(spec.capacity) or spec.capacity < 0:
            raise RejectedMessage(Reason.IMPLAUSIBLE, f"{spec.type} capacity {spec.capacity} is not valid")
        if spec.capacity > _PLAUSIBLE_MAX[spec.type]:
            raise RejectedMessage(
                Reason.IMPLAUSIBLE,
                f"{spec.type} capacity {spec.capacity} exceeds {_PLAUSIBLE_MAX[spec.type]} for one device",
            )


@dataclass(slots=True)
class Member:
    """What the coordinator knows of one node; persisted so a restart keeps the roster."""

    node: str
    public_key: bytes
    bdseq: int
    device_class: str
    hw_fingerprint: str
    resources: list[ResourceSpec]
    online: bool = True
    joined_ms: int = 0
    last_seen_ms: int = 0
    cpu_util: float = 0.0
    mem_util: float = 0.0
    temperature_c: float | None = None
    power_w: float | None = None
    offering: bool = True
    throttle: str = ""
    can_coordinate: bool = False
    attestation_key: bytes = b""
    uptime_commitment: float = 0.95
    # The owner's terms from the birth, kept for allocation (hard filters) and the market listing.
    security_level: str = "standard"
    min_hourly_rate_micro: int = 0
    priority_level: int = 5
    max_temperature_c: float = 80.0
    max_power_w: float = 100.0
    claim_envelope: bytes = b""  # the signed birth/claim its resources came from (for drill-downs)
    ha_controls: bool = False  # its owner lets Home Assistant change allocations and pause (its birth)


@dataclass(frozen=True, slots=True)
class Publish:
    """Sign ``message`` with the coordinator key and publish it."""

    topic: str
    message: Message
    retain: bool = False
    qos: int = 1


@dataclass(frozen=True, slots=True)
class StoreMember:
    """Persist this member record."""

    member: Member


@dataclass(frozen=True, slots=True)
class GrantJoin:
    """Issue broker credentials to ``node`` and answer its join request ``txid``."""

    node: str
    public_key: bytes
    txid: str
    params: dict[str, Any] = field(default_factory=dict)  # the signed request's (an enrolment token)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A refused message, for the shell to log (once per reason per node) and count."""

    reason: Reason
    node: str
    detail: str


@dataclass(frozen=True, slots=True)
class Verification:
    """A proof, opening or vote from a member, for the verification engine: with the time its bytes
    arrived (the coordinator's clock) and the raw signed envelope, which slash evidence carries."""

    node: str
    message: BenchmarkProof | ProofOpening | VerificationVote | BandwidthChunk
    at_ms: int = 0
    raw: bytes = b""


@dataclass(frozen=True, slots=True)
class ApiCall:
    """A signed API request from a client (other than ``join``), for the shell to serve.

    ``envelope`` is the request exactly as signed, so it can be relayed to the node it concerns.
    """

    node: str
    request: ApiRequest
    envelope: bytes = b""


@dataclass(frozen=True, slots=True)
class ApiReply:
    """A member's signed answer (on its ``reply`` topic) to an API call relayed to it."""

    node: str
    response: ApiResponse
    envelope: bytes


Effect = Publish | StoreMember | GrantJoin | Rejection | Verification | ApiCall | ApiReply


@dataclass(frozen=True, slots=True)
class GroupConfig:
    """The fixed facts of one coordinator run."""

    site: str
    group: str
    coordinator: str
    public_key: bytes
    epoch: int
    max_members: int = MAX_MEMBERS
    heartbeat_timeout_ms: int = 35_000
    summary_interval_ms: int = 10_000
    replay_window_ms: int = 120_000
    acl: bool = False
    tier: int = 1
    dead_after_ms: int = 600_000  # an offline member silent this long no longer holds a seat
    join_policy: str = "open"  # announced in the state, so newcomers know to ask (and bring a token)


@dataclass(slots=True)
class _Dirty:
    roster: bool = True
    summary: bool = True
    last_summary_ms: int = field(default=-(10**15))


LevelView = Callable[[Member], VerificationLevel]
CreditView = Callable[[Member], list[ResourceSpec]]  # the resources as counted (credit by measurement)


def _self_reported(member: Member) -> VerificationLevel:
    return VerificationLevel.SELF_REPORTED


class Group:
    """The coordinator's view of its group, fed with messages and time.

    Verification levels are not kept here: ``levels`` reads them from their one owner (the verifier),
    so the roster and summary always show what current evidence supports. Likewise ``credited`` gives
    the resources the summary counts: what the verifier measured, not the raw claim.
    """

    def __init__(
        self,
        config: GroupConfig,
        levels: LevelView = _self_reported,
        guard: ReplayGuard | None = None,
        credited: CreditView | None = None,
    ) -> None:
        self.config = config
        self.levels = levels
        self.credited: CreditView = credited or (lambda m: m.resources)
        self._clock_warned: dict[str, int] = {}
        self.members: dict[str, Member] = {}
        self.rejected: Counter[Reason] = Counter()
        self.accepted: Counter[str] = Counter()
        self._guard = guard or ReplayGuard(
            window_ms=config.replay_window_ms, max_signers=config.max_members * 4
        )
        self._dirty = _Dirty()
        self.claims = ClaimSet([])  # what the last summary's claims_root commits to
        # Digest of the last accepted message on each member's retained topics (birth, state): the
        # broker hands these copies out again on every re-subscription (after a broker restart).
        self._retained: dict[tuple[str, topics.Kind], bytes] = {}
        # The join policy's gate for births of nodes the group does not know (None: anyone may birth).
        self.admit: Callable[[str], bool] | None = None

    # ---- state -------------------------------------------------------------------------------
    def level(self, node: str) -> VerificationLevel:
        """The level ``node`` holds now, as its owner (the verifier) says."""
        member = self.members.get(node)
        return VerificationLevel.SELF_REPORTED if member is None else self.levels(member)

    def trust(self, node: str) -> float:
        """The trust score of the level ``node`` holds now."""
        return TRUST_SCORE[self.level(node)]

    def restore(self, members: list[Member]) -> None:
        """Load members persisted by an earlier run; they count as offline until they speak again.

        No level is restored: levels follow from the verifier's persisted evidence.
        """
        for member in members:
            member.online = False
            self.members[member.node] = member
        self._dirty.roster = self._dirty.summary = True

    @property
    def online_count(self) -> int:
        """Members online now."""
        return sum(1 for m in self.members.values() if m.online)

    def state_message(self, status: str = "online") -> tuple[str, CoordState]:
        """The coordinator's retained state (its Will is the same with ``offline``)."""
        c = self.config
        msg = CoordState(
            site=c.site,
            group=c.group,
            status="online" if status == "online" else "offline",
            epoch=c.epoch,
            coordinator=c.coordinator,
            public_key=c.public_key,
            tier=c.tier,
            members=len(self.members),
            capacity_left=max(0, c.max_members - len(self.members)),
            acl=c.acl,
            join_policy=c.join_policy,
        )
        return topics.coord_state(c.site, c.group), msg

    # ---- input -------------------------------------------------------------------------------
    def receive(self, topic: str, payload: bytes, now_ms: int) -> list[Effect]:
        """Handle one MQTT message of the group (``now_ms``: when its bytes arrived)."""
        try:
            return self._receive(topic, payload, now_ms)
        except RejectedMessage as exc:
            self.rejected[exc.reason] += 1
            node = _topic_node(topic)
            effects: list[Effect] = [Rejection(exc.reason, node, exc.detail)]
            if exc.reason is Reason.NOT_MEMBER and node:
                effects.append(self._command(node, "rebirth", {"why": "not a member"}))
            elif exc.reason is Reason.STALE and node:
                effects += self._clock_off(node, now_ms, exc.detail)
            return effects

    def _clock_off(self, node: str, now_ms: int, detail: str) -> list[Effect]:
        """Tell a node (at most once a minute) that its clock is outside the replay window."""
        last = self._clock_warned.get(node)
        if last is not None and now_ms - last < 60_000:
            return []
        if len(self._clock_warned) >= 4 * self.config.max_members:
            self._clock_warned.pop(next(iter(self._clock_warned)))
        self._clock_warned[node] = now_ms
        return [
            self._command(node, "clock", {"detail": detail, "window_ms": str(self.config.replay_window_ms)})
        ]

    def _receive(self, topic: str, payload: bytes, now_ms: int) -> list[Effect]:
        c = self.config
        try:
            parsed = topics.parse(topic)
        except TopicError as exc:
            raise RejectedMessage(Reason.MALFORMED, str(exc)) from None
        if parsed.site != c.site or parsed.group != c.group:
            return []
        kind = parsed.kind
        if kind in (
            topics.Kind.COORD_STATE,
            topics.Kind.COORD_ROSTER,
            topics.Kind.COORD_BEACON,
            topics.Kind.COORD_LEDGER,
            topics.Kind.COORD_ROLLUP,
            topics.Kind.MARKET_LISTING,
            topics.Kind.SUMMARY,
        ):
            return []  # our own retained output, or a rival coordinator's (election is elsewhere)
        if kind in (
            topics.Kind.NODE_CMD,
            topics.Kind.NODE_BENCH,
            topics.Kind.API_RESP,
            topics.Kind.GATEWAY_STATE,
            topics.Kind.GATEWAY_BRIDGE,
            topics.Kind.FED_REPORT,
        ) or kind.value.startswith("unit/"):
            return []  # federation traffic: the gateway's and the region's business
        if not payload:
            return []  # a cleared retained message
        retained_key = (parsed.node, kind) if kind in _RETAINED_KINDS else None
        if retained_key is not None and self._retained.get(retained_key) == _digest(payload):
            # The very bytes we accepted last on this topic, delivered again (the broker's retained copy
            # on re-subscription): not news, so neither applied again nor an honest member's "replay".
            # Any other old message on the topic still meets the replay check below.
            self.accepted["retained_again"] += 1
            return []
        opened = open_envelope(payload)
        owner = parsed.client if kind is topics.Kind.API_REQ else parsed.node
        if opened.signer != owner:
            raise RejectedMessage(
                Reason.WRONG_TOPIC_OWNER, f"{opened.signer} signed a message on {owner}'s topic"
            )
        msg = opened.message
        if kind is topics.Kind.API_REQ:
            return self._api(parsed.method, opened, now_ms, payload)
        if kind is topics.Kind.NODE_REPLY:
            if not isinstance(msg, ApiResponse):
                raise RejectedMessage(Reason.MALFORMED, "a node's reply topic carries API responses only")
            member = self._member(owner)
            self._fresh(member.node, msg, now_ms)
            return [ApiReply(member.node, msg, payload)]
        body_node = msg.voter if isinstance(msg, VerificationVote) else getattr(msg, "node", None)
        if body_node != owner:
            raise RejectedMessage(Reason.WRONG_TOPIC_OWNER, f"message names {body_node}, topic {owner}")
        match kind, msg:
            case topics.Kind.NODE_STATE, NodeState():
                return self._remember(retained_key, payload, self._state(msg, now_ms))
            case topics.Kind.NODE_BIRTH, NodeBirth():
                return self._remember(retained_key, payload, self._birth(msg, opened, now_ms, payload))
            case topics.Kind.NODE_TELEMETRY, Heartbeat():
                return self._heartbeat(msg, now_ms)
            case topics.Kind.NODE_CLAIM, ResourceClaim():
                return self._claim(msg, now_ms, payload)
            case topics.Kind.NODE_PROOF, BenchmarkProof() | ProofOpening() | VerificationVote():
                member = self._member(owner)
                self._fresh(member.node, msg, now_ms)
                member.last_seen_ms = now_ms
                return [Verification(member.node, msg, now_ms, payload)]
            case topics.Kind.NODE_BANDWIDTH, BandwidthChunk():
                # No replay check: chunks go out directly while older messages may still wait in the
                # node's outbox, so their sequence numbers must not advance the guard; a replayed chunk
                # is a duplicate index, which the bandwidth meter ignores.
                return [Verification(self._member(owner).node, msg, now_ms)]
        raise RejectedMessage(Reason.MALFORMED, f"a {type(msg).__name__} does not belong on {kind.value}")

    def _remember(
        self, key: tuple[str, topics.Kind] | None, payload: bytes, effects: list[Effect]
    ) -> list[Effect]:
        """Note the retained message just handled (unless it was refused), to know its copies later."""
        if key is not None and not any(isinstance(e, Rejection) for e in effects):
            self._retained.pop(key, None)
            self._retained[key] = _digest(payload)
            while len(self._retained) > 2 * len(_RETAINED_KINDS) * self.config.max_members:
                self._retained.pop(next(iter(self._retained)))
        return effects

    def _fresh(self, node: str, msg: Message, now_ms: int, *, birth: bool = False) -> int:
        return self._guard.check(node, msg.seq, msg.ts, now_ms, allow_reset=birth)

    def _member(self, node: str) -> Member:
        member = self.members.get(node)
        if member is None:
            raise RejectedMessage(Reason.NOT_MEMBER, f"{node} has not announced itself (no birth)")
        return member

    def live_count(self, now_ms: int) -> int:
        """Members holding a seat: online, or offline for less than ``dead_after_ms``."""
        dead = self.config.dead_after_ms
        return sum(1 for m in self.members.values() if m.online or now_ms - m.last_seen_ms <= dead)

    def _full_for(self, node: str, now_ms: int) -> bool:
        return node not in self.members and self.live_count(now_ms) >= self.config.max_members

    def remove(self, node: str) -> bool:
        """Forget an evicted member (the shell deletes its record and broker credentials)."""
        if self.members.pop(node, None) is None:
            return False
        self._guard.forget(node)
        for kind in _RETAINED_KINDS:
            self._retained.pop((node, kind), None)
        self._dirty.roster = self._dirty.summary = True
        return True

    def _api(self, method: str, opened: Opened, now_ms: int, envelope: bytes) -> list[Effect]:
        msg = opened.message
        if not isinstance(msg, ApiRequest) or msg.method != method or msg.requester != opened.signer:
            raise RejectedMessage(Reason.MALFORMED, "API request does not match its topic")
        self._fresh(opened.signer, msg, now_ms, birth=True)
        if method != "join":
            return [ApiCall(opened.signer, msg, envelope)]
        if self._full_for(opened.signer, now_ms):
            self.rejected[Reason.GROUP_FULL] += 1
            resp = ApiResponse(
                txid=msg.txid, method="join", ok=False, error="group_full", result=self._redirect_hint()
            )
            c = self.config
            return [
                Rejection(Reason.GROUP_FULL, opened.signer, "join refused: the group is full"),
                Publish(topics.api(topics.Kind.API_RESP, c.site, c.group, "join", opened.signer), resp),
            ]
        return [GrantJoin(opened.signer, opened.kid, msg.txid, dict(msg.params))]

    def _redirect_hint(self) -> dict[str, str]:
        return {"reason": f"group {self.config.group} has {self.config.max_members} members"}

    def _state(self, msg: NodeState, now_ms: int) -> list[Effect]:
        member = self._member(msg.node)
        if msg.bdseq != member.bdseq:
            return []  # a late Will (or state) of an older session: ignore
        if msg.status == "offline":
            # A Will was signed when the node connected, so it is older than the window; the bdseq
            # match above is what ties it to the live session.
            if not member.online:
                return []
            member.online = False
        else:
            self._fresh(msg.node, msg, now_ms)
            member.online = True
            member.last_seen_ms = now_ms
        self.accepted["state"] += 1
        self._dirty.roster = self._dirty.summary = True
        return [StoreMember(member)]

    def _birth(self, msg: NodeBirth, opened: Opened, now_ms: int, envelope: bytes = b"") -> list[Effect]:
        if msg.public_key != opened.kid:
            raise RejectedMessage(Reason.WRONG_TOPIC_OWNER, "birth names a public key it was not signed with")
        if msg.node not in self.members and self.admit is not None and not self.admit(msg.node):
            raise RejectedMessage(Reason.NOT_ADMITTED, "birth of a node the join policy has not admitted")
        if self._full_for(msg.node, now_ms):
            self.rejected[Reason.GROUP_FULL] += 1
            return [
                Rejection(Reason.GROUP_FULL, msg.node, "birth refused: the group is full"),
                self._command(msg.node, "redirect", self._redirect_hint()),
            ]
        plausible(msg.resources)
        if not (math.isfinite(msg.uptime_commitment) and 0.0 <= msg.uptime_commitment <= 1.0):
            raise RejectedMessage(
                Reason.IMPLAUSIBLE, f"uptime commitment {msg.uptime_commitment} is not a fraction 0–1"
            )
        check_owner_terms(
            msg.security_level,
            msg.min_hourly_rate_micro,
            msg.priority_level,
            msg.max_temperature_c,
            msg.max_power_w,
        )
        self._fresh(msg.node, msg, now_ms, birth=True)
        old = self.members.get(msg.node)
        member = Member(
            node=msg.node,
            public_key=msg.public_key,
            bdseq=msg.bdseq,
            device_class=msg.device_class,
            hw_fingerprint=msg.hw_fingerprint,
            resources=list(msg.resources),
            joined_ms=old.joined_ms if old else now_ms,
            last_seen_ms=now_ms,
            can_coordinate=msg.can_coordinate,
            attestation_key=msg.attestation_key,
            uptime_commitment=msg.uptime_commitment,
            claim_envelope=envelope,
            security_level=msg.security_level,
            min_hourly_rate_micro=msg.min_hourly_rate_micro,
            priority_level=msg.priority_level,
            max_temperature_c=msg.max_temperature_c,
            max_power_w=msg.max_power_w,
            ha_controls=msg.ha_controls,
        )
        self.members[msg.node] = member
        self.accepted["birth"] += 1
        self._dirty.roster = self._dirty.summary = True
        return [StoreMember(member)]

    def _heartbeat(self, msg: Heartbeat, now_ms: int) -> list[Effect]:
        member = self._member(msg.node)
        numbers = (msg.cpu_util, msg.mem_util, msg.temperature_c, msg.power_w, msg.uptime_s)
        if not all(x is None or math.isfinite(x) for x in numbers) or not (
            0.0 <= msg.cpu_util <= 1.0 and 0.0 <= msg.mem_util <= 1.0
        ):
            raise RejectedMessage(Reason.IMPLAUSIBLE, "heartbeat values must be finite, utilisation 0–1")
        gap = self._fresh(msg.node, msg, now_ms)
        member.last_seen_ms = now_ms
        member.cpu_util, member.mem_util = msg.cpu_util, msg.mem_util
        member.temperature_c, member.power_w = msg.temperature_c, msg.power_w
        if member.offering != msg.offering:
            self._dirty.summary = True
        member.offering, member.throttle = msg.offering, msg.throttle
        self.accepted["heartbeat"] += 1
        effects: list[Effect] = []
        if not member.online:
            member.online = True
            self._dirty.roster = self._dirty.summary = True
            effects.append(StoreMember(member))
        if gap:
            effects.append(self._command(member.node, "rebirth", {"why": f"{gap} messages missing"}))
        return effects

    def _claim(self, msg: ResourceClaim, now_ms: int, envelope: bytes = b"") -> list[Effect]:
        member = self._member(msg.node)
        plausible(msg.resources)
        gap = self._fresh(msg.node, msg, now_ms)
        member.last_seen_ms = now_ms
        if msg.resources != member.resources:
            member.resources = list(msg.resources)  # the verifier holds nothing on it until checked
        member.claim_envelope = envelope
        self.accepted["claim"] += 1
        self._dirty.roster = self._dirty.summary = True
        effects: list[Effect] = [StoreMember(member)]
        if gap:
            effects.append(self._command(member.node, "rebirth", {"why": f"{gap} messages missing"}))
        return effects

    def _command(self, node: str, verb: str, args: dict[str, str]) -> Publish:
        c = self.config
        return Publish(
            topics.node_cmd(c.site, c.group, node, verb), NodeCommand(verb=verb, node=node, args=args)
        )

    def level_changed(self, node: str) -> None:
        """The verifier says ``node``'s level changed: republish the roster and summary."""
        if node in self.members:
            self._dirty.roster = self._dirty.summary = True

    # ---- time --------------------------------------------------------------------------------
    def tick(self, now_ms: int) -> list[Effect]:
        """Expire silent members and publish the roster and summary when they changed."""
        effects: list[Effect] = []
        timeout = self.config.heartbeat_timeout_ms
        for member in self.members.values():
            if member.online and now_ms - member.last_seen_ms > timeout:
                member.online = False
                self._dirty.roster = self._dirty.summary = True
                effects.append(StoreMember(member))
        c = self.config
        if self._dirty.roster:
            self._dirty.roster = False
            effects.append(Publish(topics.coord_roster(c.site, c.group), self.roster(), retain=True))
        if self._dirty.summary or now_ms - self._dirty.last_summary_ms >= c.summary_interval_ms:
            self._dirty.summary = False
            self._dirty.last_summary_ms = now_ms
            effects.append(Publish(topics.summary(c.site, c.group), self.summary(), retain=True))
            effects.append(Publish(*self.state_message(), retain=True))
        return effects

    def roster(self) -> Roster:
        """The signed member list of this epoch."""
        entries = [
            RosterEntry(node=m.node, level=self.levels(m), online=m.online, public_key=m.public_key)
            for m in sorted(self.members.values(), key=lambda m: m.node)
        ]
        return Roster(group=self.config.group, epoch=self.config.epoch, members=entries)

    def summary(self) -> GroupSummary:
        """Capacity on offer per resource type, trust distribution and utilisation of online members."""
        capacity: dict[str, float] = {}
        trust: Counter[str] = Counter()
        online = [m for m in self.members.values() if m.online]
        for m in online:
            trust[self.levels(m).value] += 1
            if not m.offering:
                continue
            for spec in self.credited(m):
                capacity[spec.type.value] = capacity.get(spec.type.value, 0.0) + spec.capacity
        util = sum(m.cpu_util for m in online) / len(online) if online else 0.0
        offered = [(m.node, m.claim_envelope) for m in online if m.offering and m.claim_envelope]
        self.claims = ClaimSet(offered)
        c = self.config
        return GroupSummary(
            site=c.site,
            group=c.group,
            epoch=c.epoch,
            tier=c.tier,
            members=len(self.members),
            online=len(online),
            capacity={k: round(v, 3) for k, v in sorted(capacity.items())},
            trust=dict(sorted(trust.items())),
            utilization=round(util, 4),
            claims_root=self.claims.root,
            claims=len(self.claims),
        )


_RETAINED_KINDS: Final = (topics.Kind.NODE_BIRTH, topics.Kind.NODE_STATE)


def _digest(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=16).digest()


def _topic_node(topic: str) -> str:
    try:
        parsed = topics.parse(topic)
    except TopicError:
        return ""
    return parsed.node or parsed.client


def member_to_dict(member: Member) -> dict[str, object]:
    """A member as plain data (for storage and the API)."""
    data: dict[str, object] = msgspec.to_builtins(member_struct(member), builtin_types=(bytes,))
    return data


class _MemberRecord(msgspec.Struct, kw_only=True):
    node: str
    public_key: bytes
    bdseq: int
    device_class: str
    hw_fingerprint: str
    resources: list[ResourceSpec]
    joined_ms: int
    last_seen_ms: int
    can_coordinate: bool = False
    attestation_key: bytes = b""
    uptime_commitment: float = 0.95
    security_level: str = "standard"
    min_hourly_rate_micro: int = 0
    priority_level: int = 5
    max_temperature_c: float = 80.0
    max_power_w: float = 100.0
    ha_controls: bool = False  # absent in records stored before Home Assistant controls: off


def member_struct(member: Member) -> _MemberRecord:
    """The persistent part of a member."""
    return _MemberRecord(
        node=member.node,
        public_key=member.public_key,
        bdseq=member.bdseq,
        device_class=member.device_class,
        hw_fingerprint=member.hw_fingerprint,
        resources=member.resources,
        joined_ms=member.joined_ms,
        last_seen_ms=member.last_seen_ms,
        can_coordinate=member.can_coordinate,
        attestation_key=member.attestation_key,
        uptime_commitment=member.uptime_commitment,
        security_level=member.security_level,
        min_hourly_rate_micro=member.min_hourly_rate_micro,
        priority_level=member.priority_level,
        max_temperature_c=member.max_temperature_c,
        max_power_w=member.max_power_w,
        ha_controls=member.ha_controls,
    )


def member_from_record(data: object) -> Member:
    """Rebuild a member from what :func:`member_to_dict` produced."""
    rec = msgspec.convert(data, _MemberRecord)
    return Member(
        node=rec.node,
        public_key=rec.public_key,
        bdseq=rec.bdseq,
        device_class=rec.device_class,
        hw_fingerprint=rec.hw_fingerprint,
        resources=rec.resources,
        joined_ms=rec.joined_ms,
        last_seen_ms=rec.last_seen_ms,
        online=False,
        can_coordinate=rec.can_coordinate,
        attestation_key=rec.attestation_key,
        uptime_commitment=rec.uptime_commitment,
        security_level=rec.security_level,
        min_hourly_rate_micro=rec.min_hourly_rate_micro,
        priority_level=rec.priority_level,
        max_temperature_c=rec.max_temperature_c,
        max_power_w=rec.max_power_w,
        ha_controls=rec.ha_controls,
    )
