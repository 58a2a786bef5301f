"""Typed message bodies of the prsm wire protocol.

Every message is a :class:`msgspec.Struct` tagged by ``t`` and carries the envelope header fields
``v`` (protocol version), ``seq`` (the signer's monotonically increasing sequence number) and ``ts``
(the signer's clock, Unix milliseconds). Unknown fields are ignored on decode, so a newer node can talk
to an older coordinator; a message whose ``v`` is newer than ours still decodes by the fields we know.

Amounts of FTNS are integers of micro-FTNS (1 FTNS = 1 000 000 µFTNS), so ledger arithmetic is exact and
the encoding is deterministic.
"""

from __future__ import annotations

import enum
from typing import Any, Final, Literal

import msgspec

PROTOCOL_VERSION: Final = 1
MICRO: Final = 1_000_000  # µFTNS per FTNS


class ResourceType(enum.StrEnum):
    """The ten kinds of resource the seed names."""

    COMPUTE_CPU = "compute_cpu"
    COMPUTE_GPU = "compute_gpu"
    COMPUTE_TPU = "compute_tpu"
    STORAGE_PERSISTENT = "storage_persistent"
    STORAGE_MEMORY = "storage_memory"
    STORAGE_CACHE = "storage_cache"
    BANDWIDTH_INGRESS = "bandwidth_ingress"
    BANDWIDTH_EGRESS = "bandwidth_egress"
    SPECIALIZED_QUANTUM = "specialized_quantum"
    SPECIALIZED_EDGE = "specialized_edge"


# The unit each resource type's capacity is counted in.
RESOURCE_UNITS: Final[dict[ResourceType, str]] = {
    ResourceType.COMPUTE_CPU: "cores",
    ResourceType.COMPUTE_GPU: "gpus",
    ResourceType.COMPUTE_TPU: "tpus",
    ResourceType.STORAGE_PERSISTENT: "GB",
    ResourceType.STORAGE_MEMORY: "GB",
    ResourceType.STORAGE_CACHE: "GB",
    ResourceType.BANDWIDTH_INGRESS: "Mbit/s",
    ResourceType.BANDWIDTH_EGRESS: "Mbit/s",
    ResourceType.SPECIALIZED_QUANTUM: "qubits",
    ResourceType.SPECIALIZED_EDGE: "accelerators",
}


class VerificationLevel(enum.StrEnum):
    """The seed's five verification levels, lowest trust first."""

    SELF_REPORTED = "self_reported"
    PEER_VERIFIED = "peer_verified"
    BENCHMARKED = "benchmarked"
    ECONOMICALLY_STAKED = "economically_staked"
    HARDWARE_ATTESTED = "hardware_attested"


TRUST_SCORE: Final[dict[VerificationLevel, float]] = {
    VerificationLevel.SELF_REPORTED: 0.6,
    VerificationLevel.PEER_VERIFIED: 0.8,
    VerificationLevel.BENCHMARKED: 0.85,
    VerificationLevel.ECONOMICALLY_STAKED: 0.9,
    VerificationLevel.HARDWARE_ATTESTED: 0.95,
}


class ResourceSpec(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    """One resource on offer: its type, how much, and facts that describe it."""

    type: ResourceType
    capacity: float
    unit: str
    details: dict[str, str | int | float | bool] = {}


class Message(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True, tag_field="t"):
    """Fields common to every message; the signer sets ``seq`` and ``ts`` when sealing."""

    v: int = PROTOCOL_VERSION
    seq: int = 0
    ts: int = 0


class NodeBirth(Message, frozen=True, tag="nbirth"):
    """A node's retained announcement: who it is, what it is, what it offers."""

    node: str
    bdseq: int
    public_key: bytes
    device_class: str
    software: str
    hw_fingerprint: str
    resources: list[ResourceSpec]
    security_level: str = "standard"
    min_hourly_rate_micro: int = 0
    uptime_commitment: float = 0.95
    can_coordinate: bool = False
    attestation_key: bytes = b""
    priority_level: int = 5
    max_temperature_c: float = 80.0
    max_power_w: float = 100.0
    ha_controls: bool = False  # the owner lets Home Assistant change allocations and pause


class NodeState(Message, frozen=True, tag="nstate"):
    """Retained availability; ``offline`` with the session's ``bdseq`` is the node's Last Will (death)."""

    node: str
    status: Literal["online", "offline"]
    bdseq: int


class ResourceClaim(Message, frozen=True, tag="claim"):
    """An update of what a node offers, signed by the node."""

    node: str
    resources: list[ResourceSpec]
    level: VerificationLevel = VerificationLevel.SELF_REPORTED
    reason: str = ""


class Heartbeat(Message, frozen=True, tag="hb"):
    """Periodic telemetry; ``offering`` is false while an owner limit holds capacity back."""

    node: str
    cpu_util: float
    mem_util: float
    temperature_c: float | None = None
    power_w: float | None = None
    on_battery: bool | None = None
    battery_pct: float | None = None
    offering: bool = True
    throttle: str = ""
    uptime_s: float = 0.0


class BenchmarkChallenge(Message, frozen=True, tag="bchal"):
    """A verifier's fresh challenge: run ``workload`` seeded by ``nonce`` and commit before the deadline.

    ``opens`` segments are opened after the commitment, chosen by ``H(nonce ‖ root ‖ salt)`` where the
    verifier reveals ``salt`` only after the root arrives (``open_commit`` = ``H(salt)``), so the prover
    can neither know nor grind the choice. ``issued_ms`` is the verifier's clock when it sent this.
    """

    challenge_id: str
    node: str
    verifier: str
    workload: str
    nonce: bytes
    segments: int
    segment_size: int
    claimed_rate: float
    deadline_ms: int
    issued_ms: int = 0
    opens: int = 4
    open_commit: bytes = b""
    attest: bool = False
    lanes: int = 1  # parallel chains, one per claimed core (``cpu``); segment i is in lane i % lanes
    open_ms: int = 0  # > 0: the opening must arrive within this long of the salt reveal (``storage``)


class BenchmarkProof(Message, frozen=True, tag="bproof"):
    """A node's commitment to every segment's result (a Merkle root), made before its deadline."""

    challenge_id: str
    node: str
    root: bytes
    elapsed_ms: int
    quote: bytes = b""
    quote_sig: bytes = b""


class SegmentOpening(msgspec.Struct, frozen=True, kw_only=True):
    """One opened segment: its result and the Merkle path from it to the committed root."""

    index: int
    result: bytes
    path: list[bytes]


class ProofOpening(Message, frozen=True, tag="bopen"):
    """The node's opening of the segments its root and the verifier's revealed ``salt`` select."""

    challenge_id: str
    node: str
    openings: list[SegmentOpening]
    salt: bytes = b""


class BandwidthChunk(Message, frozen=True, tag="bwchunk"):
    """One chunk of a bandwidth challenge's nonce-derived payload, sent by the node being measured."""

    challenge_id: str
    node: str
    index: int
    data: bytes


class VerificationVote(Message, frozen=True, tag="vote"):
    """A verifier's signed verdict on one node's claim in one round."""

    round: int
    subject: str
    voter: str
    challenge_id: str
    accept: bool
    measured_rate: float = 0.0
    reason: str = ""


class NodeCommand(Message, frozen=True, tag="cmd"):
    """Coordinator to node: ``rebirth``, ``settings``, ``challenge``, ``lease`` or ``redirect``."""

    verb: str
    node: str
    args: dict[str, Any] = {}


class CoordState(Message, frozen=True, tag="cstate"):
    """A coordinator's retained state; ``offline`` is its Last Will."""

    site: str
    group: str
    status: Literal["online", "offline"]
    epoch: int
    coordinator: str
    public_key: bytes
    tier: int = 1
    members: int = 0
    capacity_left: int = 0
    acl: bool = False
    join_policy: str = "open"  # open, token or approval: not open means every newcomer asks to join


class Beacon(Message, frozen=True, tag="beacon"):
    """A verification round's public randomness: the revealed secret of ``round``, the mix it is
    combined with (the digest of the inputs committed a round ahead), and the next round's commitment."""

    group: str
    round: int
    reveal: bytes
    mix: bytes
    commit_next: bytes
    # Published inputs, so anyone can recompute the panels (peers.round_panels): committed one round
    # ahead (eligible verifiers and each member's sampling chance), and this round's candidates.
    eligible_next: list[str] = []
    sampling_next: dict[str, float] = {}
    candidates: list[str] = []


class RosterEntry(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    """One member as the coordinator sees it."""

    node: str
    level: VerificationLevel
    online: bool
    public_key: bytes = b""


class Roster(Message, frozen=True, tag="roster"):
    """The signed member list of one coordinator epoch."""

    group: str
    epoch: int
    members: list[RosterEntry]


class GroupSummary(Message, frozen=True, tag="summary"):
    """What a group (or, recursively, a region) looks like from above; carried upward by gateways."""

    site: str
    group: str
    epoch: int
    tier: int
    members: int
    online: int
    capacity: dict[str, float]
    trust: dict[str, int]
    utilization: float
    market: dict[str, Any] = {}  # supply, demand, utilization, hourly earnings p25/p50/p75 per class
    # Drill-down: a Merkle root over the signed claims the capacity was summed from (one leaf per unit,
    # in unit-id order) and how many leaves it has; a tier above may ask for any leaf to be opened.
    claims_root: bytes = b""
    claims: int = 0


class UplinkRecord(Message, frozen=True, tag="uprec"):
    """One item of a gateway's ordered uplink stream (lease reports, evidence), signed by the gateway.

    ``stream_seq`` numbers the stream without gaps; ``skipped`` says how many numbers just before this
    one the gateway dropped on purpose (buffer full, expired), so the receiver can tell a loss from a
    drop. ``item`` is the original signed envelope (the group coordinator's); ``expires_ms`` is its TTL.
    ``historical`` marks items that waited out an outage in the gateway's buffer.
    """

    site: str
    group: str
    gateway: str
    stream_seq: int
    kind: str
    expires_ms: int
    item: bytes
    historical: bool = False
    skipped: int = 0


class GatewayState(Message, frozen=True, tag="gwstate"):
    """A gateway's retained link state; ``offline`` with the connection's ``bdseq`` is its Last Will."""

    site: str
    group: str
    gateway: str
    status: Literal["online", "offline"]
    bdseq: int
    uplink: str = "down"
    coordinator: str = "unknown"
    bridge: str = "unknown"
    buffered: int = 0
    dropped: int = 0
    expired: int = 0
    replayed: int = 0


class UnitState(Message, frozen=True, tag="ustate"):
    """A region's retained word on one of its units: alive or dead (and why), the coordinator key it
    pinned for the unit and the gateway it bound, in the region's epoch ``region_epoch``."""

    site: str
    group: str
    region: str
    region_epoch: int
    alive: bool
    why: str = ""
    public_key: bytes = b""
    gateway: str = ""
    gateway_key: bytes = b""


class Lease(Message, frozen=True, tag="lease"):
    """Resources of one node granted to one task for a time, at a rate."""

    lease_id: str
    task_id: str
    node: str
    resources: list[ResourceSpec]
    start_ms: int
    end_ms: int
    rate_micro_per_hour: int


class LedgerEntry(Message, frozen=True, tag="ledger"):
    """One append-only, hash-chained FTNS ledger record; ``key`` makes crediting idempotent.

    ``at_ms`` is when it was appended; the chain hash covers the ledger fields, not ``v``/``seq``/``ts``.
    """

    index: int
    prev_hash: bytes
    account: str
    amount_micro: int
    kind: str
    key: str
    at_ms: int = 0
    memo: str = ""
    evidence: bytes = b""
    inputs: dict[str, int | float | str] = {}  # every input of the formula that produced the amount


class LedgerHead(Message, frozen=True, tag="lhead"):
    """The coordinator's retained ledger chain head: how many entries, and the last one's hash."""

    group: str
    count: int
    head: bytes


class MarketListing(Message, frozen=True, tag="listing"):
    """One member's offer on the group's market, as the coordinator sees it (retained)."""

    node: str
    device_class: str
    level: VerificationLevel
    resources: list[ResourceSpec]
    free: dict[str, float]
    min_hourly_rate_micro: int
    online: bool


class ApiRequest(Message, frozen=True, tag="apireq"):
    """A request/response API call over MQTT 3.1.1: the reply names the same ``txid``."""

    txid: str
    method: str
    requester: str
    params: dict[str, Any] = {}


class ApiResponse(Message, frozen=True, tag="apiresp"):
    """The answer to one :class:`ApiRequest`; ``code`` names the kind of failure (``protocol/api.py``)."""

    txid: str
    method: str
    ok: bool
    result: dict[str, Any] = {}
    error: str = ""
    code: str = ""


class RollupSeries(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    """One resolution of a group rollup: ``count`` slots of ``step_s`` seconds from ``start_s``; each
    column packs one big-endian unsigned integer per slot (all ones: no sample), see protocol/rollups.py."""

    step_s: int
    start_s: int
    count: int
    columns: dict[str, bytes] = {}


class GroupRollup(Message, frozen=True, tag="rollup"):
    """The coordinator's retained trend rollup of its group (utilization, earnings, trust, nodes)."""

    site: str
    group: str
    at_ms: int
    series: list[RollupSeries] = []


AnyMessage = (
    NodeBirth
    | NodeState
    | ResourceClaim
    | Heartbeat
    | BenchmarkChallenge
    | BenchmarkProof
    | ProofOpening
    | BandwidthChunk
    | VerificationVote
    | NodeCommand
    | CoordState
    | Roster
    | Beacon
    | GroupSummary
    | UplinkRecord
    | GatewayState
    | UnitState
    | Lease
    | LedgerEntry
    | LedgerHead
    | MarketListing
    | ApiRequest
    | ApiResponse
    | GroupRollup
)

MESSAGE_TYPES: Final[tuple[type[Message], ...]] = (
    NodeBirth,
    NodeState,
    ResourceClaim,
    Heartbeat,
    BenchmarkChallenge,
    BenchmarkProof,
    ProofOpening,
    BandwidthChunk,
    VerificationVote,
    NodeCommand,
    CoordState,
    Roster,
    Beacon,
    GroupSummary,
    UplinkRecord,
    GatewayState,
    UnitState,
    Lease,
    LedgerEntry,
    LedgerHead,
    MarketListing,
    ApiRequest,
    ApiResponse,
    GroupRollup,
)


def to_wire(msg: Message) -> dict[str, Any]:
    """The message as plain CBOR-encodable data (bytes kept as bytes, enums as their values)."""
    data: dict[str, Any] = msgspec.to_builtins(msg, builtin_types=(bytes,))
    return data


_BY_TAG: Final[dict[object, type[Message]]] = {cls.__struct_config__.tag: cls for cls in MESSAGE_TYPES}


def from_wire(obj: Any) -> AnyMessage:
    """Build a typed message from decoded CBOR; raises :class:`msgspec.ValidationError` if it does not fit."""
    # Dispatch on the tag ourselves: converting to the Union type costs ~40x more per message.
    cls = _BY_TAG.get(obj.get("t")) if isinstance(obj, dict) else None
    if cls is None:
        raise msgspec.ValidationError("not a known message type (field `t`)")
    message: AnyMessage = msgspec.convert(obj, cls)  # type: ignore[assignment]
    return message
