"""Continuous verification of a live group, sans-IO: who is checked, by whom, and what follows.

Theory of operation. The verifier is the single owner of every member's trust state: its evidence,
kept per claim (the hash of the node id and its resources, :func:`claim_hash`) and per workload, and
the level that evidence supports, computed on demand (:meth:`Verifier.level`). The group reads levels
through that method; nothing else stores a level. Evidence, not the level, is what the shell persists
(:class:`RecordEvidence`), so a restart keeps what was proven and nothing more, and a node that changes
its claim holds nothing on the new one until it is checked.

Every ``round_ms`` the shell calls :meth:`Verifier.start_round` with the members. The round's beacon
secret was committed one round earlier together with the round's published inputs: the members
eligible to verify (those online in the published roster) and each member's chance of being checked
(the adaptive sampler's). The reveal is mixed with the digest of those inputs, so every draw depends
only on what was fixed before the coordinator could know it; the beacon (``coord/beacon``) also lists
the candidates, and :func:`~prsm_edge.protocol.peers.round_panels` recomputes every subject and panel
from the two beacons alone. Subjects' challenges are spread over ``spread`` × the round with jitter
(no thundering herd) and at most ``max_open_checks`` run at once; a member that is withholding its
capacity under its owner's limits (``offering`` false or a throttle) when its turn comes is not
challenged, and that does not count against it.

Each challenge (one per workload the claim can be checked with: :func:`claimed_rates`) goes to the
subject (``cmd/challenge``) and to its panel (``cmd/verify``). The subject commits to its segment
results (``BenchmarkProof``); the shell stamps its arrival when the bytes arrive, and that stamp on the
coordinator's clock is the only one that decides lateness. The coordinator reveals the opening salt
(``cmd/open``); the subject opens the selected segments (``ProofOpening``); the shell re-executes them
off the event loop (:class:`RunCheck`) and reports the verdict. Panel members re-execute the same
segments and sign votes that attest the segment results (one vote per panelist counts).

When the verdict is in and every panelist voted (or the time is up) the check is settled:

* the panel's ``2f+1`` quorum is the peer evidence (``peer_verified``); the coordinator's objective
  re-check decides the benchmark evidence (``benchmarked``, per workload);
* a commitment that came late, or a measured rate too low, slashes ``performance`` (10 %); any failure
  after an on-time commitment (a withheld opening, a bad Merkle path, a wrong result) is ``fraud``
  (50 %). The slash's evidence holds the node's own signed COSE proof and opening, so anyone can check
  it with a stock COSE library (:class:`RecordSlashEvidence`);
* with a registered attestation key the challenge asks for a TPM quote (:class:`VerifyQuote`);
* stake comes from the node's ledger balance through the ``stake`` API call.

Credit by measurement (:mod:`~prsm_edge.protocol.credit`): each settled check's rate, measured on the
coordinator's clock, goes into the claim's evidence. What the group counts and the economy pays is
:meth:`Verifier.credited` — per checked resource ``min(claimed, estimate)`` — not the raw claim, so an
overclaim inside the noise band gains nothing; a persistent one is also recorded as evidence (the
overclaim test), without a slash. The sampler's records are persisted too (:class:`RecordSampling`), so
a restart does not re-check every long-verified node.

A broker outage or a restart voids the open checks (:meth:`Verifier.void`): nobody is failed for the
coordinator's absence. Fraud flags expire after ``flag_ttl_ms``; detectors look at online members only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import random
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from prsm_edge.errors import LocalError
from prsm_edge.protocol import bandwidth, cbor, credit, fraud, peers, proofs, topics
from prsm_edge.protocol import stake as stake_mod
from prsm_edge.protocol.group import Member, Publish
from prsm_edge.protocol.ledger import Ledger, LedgerError
from prsm_edge.protocol.messages import (
    BandwidthChunk,
    Beacon,
    BenchmarkChallenge,
    BenchmarkProof,
    LedgerEntry,
    NodeCommand,
    ProofOpening,
    ResourceSpec,
    ResourceType,
    VerificationLevel,
    VerificationVote,
)
from prsm_edge.protocol.reputation import LevelPolicy, Reputation, TrustEvidence
from prsm_edge.protocol.sampling import AdaptiveSampler, NodeRecord

__all__ = [
    "CPU_RATE_KEY",
    "LevelChange",
    "RecordContainment",
    "RecordEvidence",
    "RecordLedger",
    "RecordSampling",
    "RecordSlashEvidence",
    "RunCheck",
    "Verifier",
    "VerifierConfig",
    "VerifyQuote",
    "claim_hash",
    "claimed_rates",
]

log = logging.getLogger(__name__)

CPU_RATE_KEY: Final = proofs.RATE_KEYS["cpu"]  # per-core rate a node claims in its CPU offer
MIN_COMMITMENT: Final = 0.5  # the published floor of an uptime commitment: 0 would mean "never slash"
_KEEP_CLAIMS: Final = 4  # evidence kept per node for its most recent claims


def claim_hash(node: str, resources: list[ResourceSpec]) -> bytes:
    """SHA-256 of the node id and its claim in deterministic CBOR: what evidence and quotes bind to.

    The node id is in it so a quote made for one node cannot be relayed as another's.
    """
    # capacity as float: a sender's int 2 and a receiver's decoded 2.0 must hash alike.
    canon = [
        {"type": r.type.value, "capacity": float(r.capacity), "unit": r.unit, "details": r.details}
        for r in resources
    ]
    return hashlib.sha256(cbor.dumps([node, canon])).digest()


def claimed_cpu_rate(resources: list[ResourceSpec]) -> float:
    """The single-core SHA-256 rate a node claims, or 0 if it claims none (or nothing valid)."""
    for spec in resources:
        if spec.type is ResourceType.COMPUTE_CPU:
            value = spec.details.get(CPU_RATE_KEY, 0)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                return max(0.0, float(value))
            return 0.0
    return 0.0


def claimed_rates(resources: list[ResourceSpec]) -> dict[str, float]:
    """Workload → claimed rate for every resource a workload can check (``proofs.claimed_rates``); the
    other resources earn no level above self-reported."""
    return {w: r for w, r in proofs.claimed_rates(resources).items() if math.isfinite(r) and r > 0}


def commitment_of(member: Member) -> float:
    """The member's uptime commitment, clamped to ``[MIN_COMMITMENT, 1]`` (not a number: the floor)."""
    value = member.uptime_commitment
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return MIN_COMMITMENT
    return min(1.0, max(MIN_COMMITMENT, float(value)))


@dataclass(frozen=True, slots=True)
class VerifierConfig:
    """How verification runs in one group."""

    site: str
    group: str
    coordinator: str
    round_ms: int = 300_000
    vote_timeout_ms: int = 15_000
    panel: int = 5
    # Challenge sizing and thresholds: each workload's own proofs.PARAMS (chosen from its measured noise)
    # unless set here; a value set here overrides it for every workload (:meth:`params`).
    segments: int | None = None
    opens: int | None = None
    target_ms: int | None = None
    slack: float | None = None
    network_ms: int | None = None
    min_rate_ratio: float | None = None
    policy: LevelPolicy = field(default_factory=LevelPolicy)
    stake_policy: stake_mod.StakePolicy = field(default_factory=stake_mod.StakePolicy)
    availability_window_ms: int = 3_600_000  # uptime is judged against the commitment per window
    max_tick_gap_ms: int = 10_000  # a longer pause between ticks (the coordinator was down) is not counted
    spread: float = 0.6  # challenges are spread over this share of the round, with jitter
    max_open_checks: int = 24  # checks in flight at once; the rest wait their turn
    flag_ttl_ms: int = 24 * 3_600_000  # a fraud flag not raised again within this expires
    overclaim: credit.OverclaimTest = field(default_factory=credit.OverclaimTest)
    # Credit the rate over the proving time (the interval less the coordinator-observed round trip,
    # credit.RoundTrips) instead of the whole interval. Off: with the lower-quartile estimate it lets an
    # in-band overclaimer's lucky runs be credited above its true rate several times as often
    # (docs/verification.md, "Credit by measurement"); it wants an estimator with a tighter margin first.
    credit_net_of_network: bool = False
    # How the credited rate is estimated from the recent measurements (credit.ESTIMATORS): "quartile",
    # the lower quartile; "mean", the mean less credit.MARGIN_Z standard errors (spread floored at the
    # noise model's, credit.PROOF_SPREAD). Figures: benchmarks/README.md, "credit_margin".
    credit_estimator: str = "quartile"

    def params(self, workload: str) -> proofs.Params:
        """How ``workload`` is challenged and judged here: its ``proofs.PARAMS``, with the operator's
        overrides (the fields set here) applied."""
        p = proofs.PARAMS[workload]
        return dataclasses.replace(
            p,
            segments=p.segments if self.segments is None else self.segments,
            opens=p.opens if self.opens is None else self.opens,
            target_ms=p.target_ms if self.target_ms is None else self.target_ms,
            slack=p.slack if self.slack is None else self.slack,
            network_ms=p.network_ms if self.network_ms is None else self.network_ms,
            min_rate_ratio=p.min_rate_ratio if self.min_rate_ratio is None else self.min_rate_ratio,
        )


@dataclass(frozen=True, slots=True)
class LevelChange:
    """A member's verification level changed (the group republishes its roster)."""

    node: str
    level: VerificationLevel


@dataclass(frozen=True, slots=True)
class RecordLedger:
    """Persist these new ledger entries."""

    entries: tuple[LedgerEntry, ...]


@dataclass(frozen=True, slots=True)
class RecordEvidence:
    """Persist what ``node`` has proven for the claim ``claim`` (replaces the earlier record)."""

    node: str
    claim: bytes
    record: dict[str, object]


@dataclass(frozen=True, slots=True)
class RecordSampling:
    """Persist ``node``'s sampling record (its run of verified results), so a restart keeps it."""

    node: str
    record: dict[str, int]


@dataclass(frozen=True, slots=True)
class RecordContainment:
    """Persist the workloads of ``node`` whose first late or slow result awaits its re-check (empty:
    none), so a restart does not give the next late or slow result a second first chance."""

    node: str
    workloads: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RecordSlashEvidence:
    """Persist a slash's evidence under its digest (the one the ledger entry cites)."""

    digest: bytes
    node: str
    evidence: dict[str, object]


@dataclass(frozen=True, slots=True)
class VerifyQuote:
    """Check a TPM quote (I/O: tpm2-tools) and report with :meth:`Verifier.attestation_result`."""

    node: str
    challenge_id: str
    attestation_key: bytes
    quote: bytes
    nonce: bytes
    claim_hash: bytes


@dataclass(frozen=True, slots=True)
class RunCheck:
    """Re-execute the opened segments (CPU work: off the event loop) and report with
    :meth:`Verifier.check_result`."""

    challenge_id: str
    challenge: BenchmarkChallenge
    proof: BenchmarkProof
    opening: ProofOpening
    received_at_ms: int
    min_rate_ratio: float
    revealed_at_ms: int | None = None  # the salt reveal and the opening's arrival (storage's window)
    opened_at_ms: int | None = None

    def run(self) -> proofs.Verdict:
        """The verdict (pure; safe to call from a worker thread)."""
        return proofs.check(
            self.challenge,
            self.proof,
            self.opening,
            self.received_at_ms,
            min_rate_ratio=self.min_rate_ratio,
            revealed_at_ms=self.revealed_at_ms,
            opened_at_ms=self.opened_at_ms,
        )


VerifierEffect = (
    Publish
    | LevelChange
    | RecordLedger
    | RecordEvidence
    | RecordSampling
    | RecordContainment
    | RecordSlashEvidence
    | VerifyQuote
    | RunCheck
)


@dataclass(slots=True)
class _Check:
    challenge: BenchmarkChallenge
    salt: bytes
    round: int
    panel: tuple[str, ...]
    issued_ms: int
    claim: bytes  # the claim this check was issued against: its evidence is recorded there
    proof: BenchmarkProof | None = None
    proof_at: int = 0
    proof_raw: bytes = b""
    opening: ProofOpening | None = None
    opening_raw: bytes = b""
    verdict: proofs.Verdict | None = None
    checking: bool = False
    revealed_at: int = 0  # when the salt was sent, and when the opening arrived (storage: timed)
    opened_at: int = 0
    votes: dict[str, VerificationVote] = field(default_factory=dict)  # one per panelist
    conflicting: list[VerificationVote] = field(default_factory=list)  # a panelist's other verdict


@dataclass(slots=True)
class _Pending:
    due_ms: int
    node: str
    round: int
    panel: tuple[str, ...]
    workloads: tuple[str, ...] | None = None  # still to challenge (None: every one the claim has)


@dataclass(slots=True)
class _Node:
    reputation: Reputation
    evidence_by_claim: OrderedDict[bytes, TrustEvidence] = field(default_factory=OrderedDict)
    claim: bytes = b""  # the claim last seen for this node
    workloads: tuple[str, ...] = ()  # the workloads that claim can be checked with
    claim_of: list[ResourceSpec] | None = None  # the resources list ``claim`` was computed from
    claims: list[float] = field(default_factory=list)  # recent claimed CPU rates, for the jump detector
    flags: dict[fraud.FlagKind, int] = field(default_factory=dict)  # kind -> when last raised
    fingerprint: str = ""
    fingerprint_since_ms: int = 0
    reported: VerificationLevel = VerificationLevel.SELF_REPORTED  # last LevelChange sent
    # Workloads whose last check was late or slow: the next check of the same workload decides (a pass
    # of another workload does not clear it, or a node late on one resource every round never counts).
    contained: set[str] = field(default_factory=set)
    window_start_ms: int = 0
    observed_ms: int = 0
    online_ms: int = 0
    last_tick_ms: int | None = None

    def evidence_for(self, claim: bytes) -> TrustEvidence:
        ev = self.evidence_by_claim.get(claim)
        if ev is None:
            ev = self.evidence_by_claim[claim] = TrustEvidence()
            while len(self.evidence_by_claim) > _KEEP_CLAIMS:
                self.evidence_by_claim.popitem(last=False)
        else:
            self.evidence_by_claim.move_to_end(claim)
        return ev

    @property
    def evidence(self) -> TrustEvidence:
        """The evidence of the claim last seen."""
        return self.evidence_for(self.claim)

    def open_flags(self, now_ms: int, ttl_ms: int) -> int:
        for kind, at in list(self.flags.items()):
            if now_ms - at > ttl_ms:
                del self.flags[kind]
        return len(self.flags)


class Verifier:
    """The coordinator's verification engine and the one owner of trust state."""

    def __init__(self, config: VerifierConfig, ledger: Ledger, *, secret: bytes) -> None:
        self.config = config
        self.ledger = ledger
        self.sampler = AdaptiveSampler()
        self.nodes: dict[str, _Node] = {}
        self.checks: dict[str, _Check] = {}  # by challenge id
        self.round = 0
        self._secret = secret  # committed for the next round
        self._commit = peers.beacon_commit(secret, 1)
        self._eligible: list[str] = []  # committed for the next round with the secret
        self._sampling: dict[str, float] = {}
        self._queue: deque[_Pending] = deque()
        self._dirty: set[tuple[str, bytes]] = set()
        self._contained_dirty: set[str] = set()  # nodes whose pending re-checks changed
        self._trips: dict[str, credit.RoundTrips] = {}  # workload → recent reveal-to-opening round trips
        self._clock = 0
        self.verdicts: deque[tuple[str, proofs.Verdict]] = deque(maxlen=1024)  # recent, for inspection
        self.voided = 0
        self.settled = 0  # checks settled with a verdict (the newest are in ``verdicts``)
        self.contained = 0  # first late/slow results re-checked before counting
        self.beacon: Publish | None = None  # the latest beacon published (republished on reconnect)
        self.bandwidth = bandwidth.BandwidthDesk()  # open bandwidth checks (protocol/bandwidth.py)

    # ---- trust state -------------------------------------------------------------------------
    def _tick_clock(self, now_ms: int) -> None:
        self._clock = max(self._clock, now_ms)

    def _node(self, node: str, now_ms: int) -> _Node:
        state = self.nodes.get(node)
        if state is None:
            state = self.nodes[node] = _Node(Reputation(now_ms))
        return state

    def _see(self, member: Member, now_ms: int) -> tuple[_Node, TrustEvidence]:
        """The member's state with its current claim noted, and that claim's evidence."""
        state = self._node(member.node, now_ms)
        if state.claim_of is not member.resources:  # the group replaces the list when the claim changes
            state.claim = claim_hash(member.node, member.resources)
            state.workloads = tuple(sorted(claimed_rates(member.resources)))
            state.claim_of = member.resources
        ev = state.evidence_for(state.claim)
        required = stake_mod.required_stake(
            member.resources,
            state.reputation.score(now_ms),
            state.open_flags(now_ms, self.config.flag_ttl_ms),
            self.config.stake_policy,
        )
        ev.record_stake(self.ledger.stake(member.node), required.required_micro)
        return state, ev

    def level(self, member: Member, now_ms: int | None = None) -> VerificationLevel:
        """The level ``member`` holds now on its current claim: what the roster and summary show."""
        now = self._clock if now_ms is None else now_ms
        state, ev = self._see(member, now)
        return ev.level(now, self.config.policy, state.workloads)

    def covers(self, member: Member, now_ms: int | None = None) -> tuple[str, ...]:
        """The workloads (resources) the member's benchmark evidence covers now."""
        now = self._clock if now_ms is None else now_ms
        _, ev = self._see(member, now)
        return ev.covers(now, self.config.policy)

    # ---- credit by measurement ---------------------------------------------------------------
    def estimates(self, member: Member) -> dict[str, float]:
        """Workload → the rate the member's recent verified checks support: on its current claim, or,
        for a workload not yet measured there, on its most recent earlier claim that was (a new claim
        does not wipe what was measured, or changing a claim would reset its credit to the claim)."""
        state, ev = self._see(member, self._clock)
        return self._estimates(state, ev)

    def _estimates(self, state: _Node, ev: TrustEvidence) -> dict[str, float]:
        how = self.config.credit_estimator
        out = {w: e for w, m in ev.measured.items() if (e := m.estimate(how)) > 0}
        for older in reversed(state.evidence_by_claim.values()):
            for w, m in older.measured.items():
                if w not in out and (e := m.estimate(how)) > 0:
                    out[w] = e
        return out

    def credited_rates(self, member: Member) -> dict[str, float]:
        """Workload → ``min(claimed, estimate)`` for every resource the claim can be checked on."""
        return credit.credited_rates(member.resources, self.estimates(member))

    def credited(self, member: Member) -> list[ResourceSpec]:
        """The member's resources as counted and paid: each checked one at most what was measured."""
        return credit.credited_resources(member.resources, self.estimates(member))

    def overclaims(self, member: Member) -> dict[str, int]:
        """Workload → when the overclaim test recorded a persistent overclaim on the current claim."""
        _, ev = self._see(member, self._clock)
        return {w: m.flagged_ms for w, m in sorted(ev.measured.items()) if m.flagged_ms is not None}

    def measured_per_lane(self, node: str, workload: str = "cpu") -> float:
        """The credited rate of ``workload`` per lane (per core for CPU) on the claim last seen (0: none)."""
        state = self.nodes.get(node)
        if state is None or state.claim_of is None:
            return 0.0
        claim = proofs.claims(state.claim_of).get(workload)
        ev = state.evidence_by_claim.get(state.claim)
        est = 0.0 if claim is None or ev is None else self._estimates(state, ev).get(workload, 0.0)
        return min(claim.rate, est) / claim.lanes if claim is not None and est > 0 else 0.0

    def _measure(
        self, ev: TrustEvidence, check: _Check, verdict: proofs.Verdict, node: str, now_ms: int
    ) -> None:
        """Keep the rate a settled check measured; run the overclaim test on it.

        Only checks whose work was verified count: accepted, or rejected as slow (``check`` judges the
        rate last, after the content). Slow ones count too: kept out, a node near the threshold would
        be credited from its lucky runs only.
        """
        rate, ch = verdict.measured_rate, check.challenge
        timed = verdict.reason in (proofs.VerdictReason.OK, proofs.VerdictReason.SLOW)
        if not (timed and math.isfinite(rate) and rate > 0 and ch.claimed_rate > 0):
            return
        measured = ev.measured.setdefault(ch.workload, credit.Measured())
        state = self._node(node, now_ms)
        claimed = ch.claimed_rate  # the whole claim's rate, where the check asked for less (a cap)
        if state.claim == check.claim and state.claim_of is not None:
            claimed = claimed_rates(state.claim_of).get(ch.workload, claimed)
        # With credit_net_of_network: credited over the proving time, the interval less the round trip
        # the coordinator saw between its salt reveal and the opening (at most the group's median, and
        # capped: credit.RoundTrips, credit.allowance_ms), so an honest node's figure is centred on its
        # real rate. The overclaim test keeps the whole interval (its null allows for the network).
        network_ms = self.config.params(ch.workload).network_ms
        trip = (
            check.opened_at - check.revealed_at if check.opening is not None and check.revealed_at else None
        )
        trips = self._trips.setdefault(ch.workload, credit.RoundTrips())
        allowance = trips.allowance(trip, proofs.expected_ms(ch), network_ms)
        if not self.config.credit_net_of_network:
            allowance = 0.0
        if trip is not None:
            trips.add(trip)
        net = (
            credit.net_rate(proofs.total_work(ch), check.proof_at - ch.issued_ms, allowance)
            if allowance
            else rate
        )
        measured.add(credit.implied_rate(max(rate, net), ch.claimed_rate, claimed))
        null = credit.null_ratio(proofs.expected_ms(ch), network_ms)
        if measured.observe(rate / ch.claimed_rate, null, now_ms, self.config.overclaim):
            est = measured.estimate(self.config.credit_estimator)
            share = f"{est / ch.claimed_rate:.0%}" if est > 0 else "less"
            ev.history.append(
                (
                    now_ms,
                    f"claim corrected: {ch.workload} measures {share} of the claim; credited as measured",
                )
            )
            log.info("%s overclaims %s: credited as measured, not as claimed", node, ch.workload)

    def restore_sampling(self, records: Iterable[tuple[str, object]]) -> None:
        """Load sampling records persisted by an earlier run."""
        for node, record in records:
            self.sampler.restore(node, NodeRecord.from_record(record))
        self.sampler.changed.clear()

    def restore_containment(self, records: Iterable[tuple[str, object]], now_ms: int) -> None:
        """Load the pending re-checks persisted by an earlier run (:class:`RecordContainment`): each
        node's workloads whose first late or slow result awaits its re-check. Unknown names are dropped."""
        for node, workloads in records:
            if not isinstance(workloads, (list, tuple)):
                continue
            known = {w for w in workloads if isinstance(w, str) and w in proofs.WORKLOADS}
            if known:
                self._node(node, now_ms).contained |= known

    def level_of(self, node: str) -> VerificationLevel:
        """The level last reported for ``node`` (on the claim last seen)."""
        state = self.nodes.get(node)
        return VerificationLevel.SELF_REPORTED if state is None else state.reported

    def restore_evidence(self, records: Iterable[tuple[str, bytes, object]], now_ms: int) -> None:
        """Load evidence persisted by an earlier run (levels follow from it; nothing else is restored)."""
        for node, claim, record in records:
            state = self._node(node, now_ms)
            state.evidence_by_claim[claim] = TrustEvidence.from_record(record)
            while len(state.evidence_by_claim) > _KEEP_CLAIMS:
                state.evidence_by_claim.popitem(last=False)
        self._tick_clock(now_ms)

    def _touch(self, node: str, claim: bytes) -> None:
        self._dirty.add((node, claim))

    def _flush(self) -> list[VerifierEffect]:
        effects: list[VerifierEffect] = []
        for node, claim in sorted(self._dirty):
            state = self.nodes.get(node)
            if state is not None and claim in state.evidence_by_claim:
                effects.append(RecordEvidence(node, claim, state.evidence_by_claim[claim].to_record()))
        self._dirty.clear()
        for node in sorted(self.sampler.changed):
            effects.append(RecordSampling(node, self.sampler.record_of(node).to_record()))
        self.sampler.changed.clear()
        for node in sorted(self._contained_dirty):
            state = self.nodes.get(node)
            effects.append(RecordContainment(node, tuple(sorted(state.contained)) if state else ()))
        self._contained_dirty.clear()
        return effects

    def _level(self, member: Member, now_ms: int) -> list[VerifierEffect]:
        state = self._node(member.node, now_ms)
        level = self.level(member, now_ms)
        if level is state.reported:
            return []
        state.reported = level
        return [LevelChange(member.node, level)]

    # ---- members -----------------------------------------------------------------------------
    def observe_claims(self, members: list[Member], now_ms: int) -> list[VerifierEffect]:
        """Run the fraud detectors over the online members' current claims; flags raise sampling."""
        self._tick_clock(now_ms)
        online = [m for m in members if m.online]
        flags: list[fraud.FraudFlag] = []
        for m in online:
            state = self._node(m.node, now_ms)
            if state.fingerprint != m.hw_fingerprint:
                state.fingerprint, state.fingerprint_since_ms = m.hw_fingerprint, now_ms
        fingerprints = {m.node: m.hw_fingerprint for m in online if m.hw_fingerprint}
        verified = {m.node: self._verified(m, now_ms) for m in online}
        precedence = {m.node: (not verified[m.node], self.nodes[m.node].fingerprint_since_ms) for m in online}
        flags += fraud.duplicate_fingerprints(fingerprints, precedence)
        cohort: dict[str, tuple[str, float]] = {}
        for m in online:
            rate = claimed_cpu_rate(m.resources)
            state = self._node(m.node, now_ms)
            digest = claim_hash(m.node, m.resources)
            if state.claim and state.claim != digest:
                state.evidence_for(digest).history.append((now_ms, "claim changed: nothing proven on it yet"))
                self.sampler.flag(m.node, checks=1)
            if rate > 0:
                cohort[m.node] = (m.device_class, rate)
                if not verified[m.node]:  # a claim a proof holds up is no longer a suspicion
                    flags += fraud.jump(m.node, state.claims, rate)
                if not state.claims or state.claims[-1] != rate:
                    state.claims = [*state.claims[-15:], rate]
        flags += [f for f in fraud.cohort_outliers(cohort) if not verified[f.node]]
        fraud.raise_sampling(self.sampler, flags)
        # Flags about the present (a shared fingerprint, an outlying claim) hold while it lasts;
        # a jump is an event, and stays until it expires or the new claim is verified.
        current = {(f.node, f.kind) for f in flags}
        for m in online:
            held = self._node(m.node, now_ms).flags
            for kind in (fraud.FlagKind.DUPLICATE_FINGERPRINT, fraud.FlagKind.COHORT):
                if kind in held and (m.node, kind) not in current:
                    del held[kind]
            if verified[m.node]:
                held.pop(fraud.FlagKind.JUMP, None)
        for f in flags:
            self._node(f.node, now_ms).flags[f.kind] = now_ms
            log.info("fraud flag on %s: %s", f.node, f.kind)
        return self._flush() + self._refresh(members, now_ms)

    def _verified(self, member: Member, now_ms: int) -> bool:
        state = self.nodes.get(member.node)
        if state is None:
            return False
        ev = state.evidence_by_claim.get(claim_hash(member.node, member.resources))
        return ev is not None and bool(ev.covers(now_ms, self.config.policy))

    def open_flags(self, node: str, now_ms: int) -> int:
        """Fraud flags on ``node`` still current."""
        state = self.nodes.get(node)
        return 0 if state is None else state.open_flags(now_ms, self.config.flag_ttl_ms)

    # ---- rounds ------------------------------------------------------------------------------
    def _commitment(self, members: Iterable[Member]) -> tuple[list[str], dict[str, float]]:
        """The next round's published inputs: who may verify (online now), each one's sampling chance."""
        online = sorted({m.node for m in members if m.online})
        return online, {n: round(self.sampler.probability(n), 6) for n in online}

    def opening_beacon(self, members: Iterable[Member] = ()) -> Publish:
        """Round 0's beacon: no reveal yet, only the commitment to round 1 and its inputs.

        Made once per run; later calls (a reconnect) return the latest beacon, never a new commitment.
        """
        if self.beacon is not None:
            return self.beacon
        c = self.config
        self._eligible, self._sampling = self._commitment(members)
        msg = Beacon(
            group=c.group,
            round=self.round,
            reveal=b"",
            mix=b"",
            commit_next=self._commit,
            eligible_next=self._eligible,
            sampling_next=self._sampling,
        )
        self.beacon = Publish(topics.coord_beacon(c.site, c.group), msg, retain=True)
        return self.beacon

    def _candidate(self, m: Member) -> bool:
        return m.online and m.offering and not m.throttle and bool(claimed_rates(m.resources))

    def start_round(self, members: list[Member], now_ms: int, rng: random.Random) -> list[VerifierEffect]:
        """Reveal this round's beacon, draw subjects and panels, and schedule the challenges."""
        c = self.config
        self._tick_clock(now_ms)
        self.round += 1
        reveal, commit = self._secret, self._commit
        eligible, sampling = self._eligible, self._sampling
        mix = peers.eligibility_mix(eligible, sampling)
        beacon = peers.beacon_value(reveal, self.round, mix)
        if not peers.verify_reveal(commit, reveal, self.round):
            raise LocalError("the beacon secret does not match its commitment")
        busy = {ch.challenge.node for ch in self.checks.values()} | {p.node for p in self._queue}
        candidates = sorted(m.node for m in members if self._candidate(m) and m.node not in busy)
        subjects = [s for s in candidates if peers.drawn(beacon, s, self.round, sampling.get(s, 1.0))]
        # Commit to the next round only now, with the inputs as they stand.
        self._secret = rng.randbytes(32)
        self._commit = peers.beacon_commit(self._secret, self.round + 1)
        self._eligible, self._sampling = self._commitment(members)
        self.beacon = Publish(
            topics.coord_beacon(c.site, c.group),
            Beacon(
                group=c.group,
                round=self.round,
                reveal=reveal,
                mix=mix,
                commit_next=self._commit,
                eligible_next=self._eligible,
                sampling_next=self._sampling,
                candidates=candidates,
            ),
            retain=True,
        )
        effects: list[VerifierEffect] = [self.beacon]
        window = int(c.round_ms * max(0.0, min(1.0, c.spread)))
        order = list(subjects)
        rng.shuffle(order)
        step = window / max(1, len(order))
        fingerprint = {m.node: m.hw_fingerprint for m in members}
        first_due: dict[str, int] = {}
        for i, node in enumerate(order):
            due = now_ms + int(i * step + rng.random() * step)
            # Identities that share hardware are challenged at the same moment: sybils on one device
            # then share its speed, instead of each proving the whole device in turn.
            fp = fingerprint.get(node, "")
            if fp:
                due = first_due.setdefault(fp, due)
            panel = tuple(peers.select_verifiers(beacon, node, self.round, eligible, k=c.panel))
            self._queue.append(_Pending(due, node, self.round, panel))
        by_node = {m.node: m for m in members}
        effects += self._issue_due(by_node, now_ms, rng)
        return effects

    def _issue_due(
        self, members: Mapping[str, Member], now_ms: int, rng: random.Random
    ) -> list[VerifierEffect]:
        effects: list[VerifierEffect] = []
        limit = max(1, self.config.max_open_checks)
        busy = {ch.challenge.node for ch in self.checks.values()}
        for slot in sorted(self._queue, key=lambda p: p.due_ms):
            if slot.due_ms > now_ms or len(self.checks) >= limit:
                break
            if slot.node in busy:
                continue  # one check at a time per node: its workloads go one after another
            self._queue.remove(slot)
            member = members.get(slot.node)
            if member is None or not self._candidate(member):
                # Offline, or withholding capacity under its owner's limits: not challenged, not counted.
                if member is not None:
                    self._node(member.node, now_ms).evidence.history.append(
                        (now_ms, "not challenged: withholding")
                    )
                continue
            rates = claimed_rates(member.resources)
            todo = [
                w for w in (slot.workloads if slot.workloads is not None else sorted(rates)) if w in rates
            ]
            order = bandwidth.first_workloads(todo, self.bandwidth.room_for(member.resources))
            if order is None:  # only bandwidth left, and the broker's share is taken: wait a tick
                self._queue.append(_Pending(slot.due_ms, slot.node, slot.round, slot.panel, ("bandwidth",)))
                continue
            todo = order
            if not todo:
                continue
            effects += self._issue(member, todo[0], rates[todo[0]], slot, now_ms, rng)
            busy.add(slot.node)
            if todo[1:]:
                self._queue.append(_Pending(now_ms, slot.node, slot.round, slot.panel, tuple(todo[1:])))
        return effects

    def _issue(
        self, member: Member, workload: str, rate: float, slot: _Pending, now_ms: int, rng: random.Random
    ) -> list[VerifierEffect]:
        c = self.config
        if workload == "bandwidth":
            return self._issue_bandwidth(member, slot, now_ms, rng)
        p = c.params(workload)
        shape = proofs.claims(member.resources).get(workload, proofs.Claim(rate))  # lanes, capacity
        issued = proofs.make_challenge(
            c.coordinator,
            member.node,
            workload,
            rate,
            rng,
            now_ms,
            segments=p.segments,
            target_ms=p.target_ms,
            opens=p.opens,
            slack=p.slack,
            network_ms=p.network_ms,
            lanes=shape.lanes,
            capacity_bytes=shape.capacity_bytes,
        )
        challenge = issued.challenge
        if member.attestation_key:
            challenge = msgspec.structs.replace(challenge, attest=True)
        self.checks[challenge.challenge_id] = _Check(
            challenge,
            issued.salt,
            slot.round,
            slot.panel,
            now_ms,
            claim=claim_hash(member.node, member.resources),
        )
        wire = msgspec.to_builtins(challenge, builtin_types=(bytes,))
        # Seat the panel before the subject hears of the challenge, so its proof finds them waiting.
        effects: list[VerifierEffect] = []
        for verifier in slot.panel:
            args = {"challenge": wire, "round": slot.round, "min_rate_ratio": p.min_rate_ratio}
            effects.append(self._cmd(verifier, "verify", args))
        effects.append(self._cmd(member.node, "challenge", {"challenge": wire}))
        return effects

    def _issue_bandwidth(
        self, member: Member, slot: _Pending, now_ms: int, rng: random.Random
    ) -> list[VerifierEffect]:
        """A bandwidth check: the coordinator alone measures it (no panel: peers see none of the bytes)."""
        issued = self.bandwidth.issue(self.config.coordinator, member.node, member.resources, rng, now_ms)
        if issued is None:
            return []
        challenge = issued.challenge
        claim = claim_hash(member.node, member.resources)
        self.checks[challenge.challenge_id] = _Check(challenge, issued.salt, slot.round, (), now_ms, claim)
        wire = msgspec.to_builtins(challenge, builtin_types=(bytes,))
        return [self._cmd(member.node, "bandwidth", {"challenge": wire})]

    def on_chunk(self, chunk: BandwidthChunk, now_ms: int) -> list[VerifierEffect]:
        """A bandwidth chunk the node signed, whose bytes arrived at ``now_ms``; settled at the next tick."""
        self.bandwidth.receive(chunk, now_ms)
        return []

    def _cmd(self, node: str, verb: str, args: dict[str, Any]) -> Publish:
        c = self.config
        return Publish(
            topics.node_cmd(c.site, c.group, node, verb), NodeCommand(verb=verb, node=node, args=args)
        )

    def void(self, now_ms: int, why: str) -> int:
        """Void every open and scheduled check (a broker outage, a restart): nobody is failed for it."""
        voided = len(self.checks) + len(self._queue)
        for check in self.checks.values():
            self._node(check.challenge.node, now_ms).evidence.history.append((now_ms, f"check voided: {why}"))
        self.checks.clear()
        self._queue.clear()
        self.bandwidth.clear()
        self.voided += voided
        if voided:
            log.info("voided %d open checks: %s", voided, why)
        return voided

    # ---- messages ----------------------------------------------------------------------------
    def on_proof(
        self, member: Member, proof: BenchmarkProof, now_ms: int, raw: bytes = b""
    ) -> list[VerifierEffect]:
        """The subject committed (``now_ms``: when its bytes arrived): reveal the salt, check its quote."""
        check = self.checks.get(proof.challenge_id)
        if check is None or check.proof is not None or proof.node != check.challenge.node:
            return []
        check.proof, check.proof_at, check.proof_raw, check.revealed_at = proof, now_ms, raw, now_ms
        effects: list[VerifierEffect] = [
            self._cmd(
                proof.node,
                "open",
                {"challenge_id": proof.challenge_id, "salt": check.salt, "root": proof.root},
            )
        ]
        if check.challenge.attest:
            if proof.quote and member.attestation_key:
                effects.append(
                    VerifyQuote(
                        proof.node,
                        proof.challenge_id,
                        member.attestation_key,
                        proof.quote,
                        check.challenge.nonce,
                        check.claim,
                    )
                )
            else:
                self._node(proof.node, now_ms).evidence_for(check.claim).record_attestation(False, now_ms)
                self._touch(proof.node, check.claim)
                effects += self._flush()
        return effects

    def on_opening(self, opening: ProofOpening, now_ms: int, raw: bytes = b"") -> list[VerifierEffect]:
        """The subject opened its segments: have the coordinator's own, objective check run."""
        check = self.checks.get(opening.challenge_id)
        if (
            check is None
            or check.proof is None
            or check.opening is not None
            or opening.node != check.challenge.node
        ):
            return []
        check.opening, check.opening_raw, check.checking, check.opened_at = opening, raw, True, now_ms
        return [
            RunCheck(
                opening.challenge_id,
                check.challenge,
                check.proof,
                opening,
                check.proof_at,
                self.config.params(check.challenge.workload).min_rate_ratio,
                check.revealed_at,
                check.opened_at,
            )
        ]

    def check_result(self, challenge_id: str, verdict: proofs.Verdict) -> list[VerifierEffect]:
        """The shell's verdict of a :class:`RunCheck`."""
        check = self.checks.get(challenge_id)
        if check is not None:
            check.verdict, check.checking = verdict, False
        return []

    def on_vote(self, vote: VerificationVote) -> list[VerifierEffect]:
        """A panel member's signed verdict; one per panelist counts (a contrary second one is kept as
        proof of equivocation, copies are dropped)."""
        check = self.checks.get(vote.challenge_id)
        if (
            check is None
            or vote.voter not in check.panel
            or vote.subject != check.challenge.node
            or vote.round != check.round
        ):
            return []
        first = check.votes.get(vote.voter)
        if first is None:
            check.votes[vote.voter] = vote
        elif first.accept != vote.accept and not any(v.voter == vote.voter for v in check.conflicting):
            check.conflicting.append(vote)
        return []

    def attestation_result(
        self, node: str, verified: bool, now_ms: int, claim: bytes | None = None
    ) -> list[VerifierEffect]:
        """The shell's verdict on a quote (bound to ``claim``, the claim the challenge was issued on)."""
        state = self._node(node, now_ms)
        digest = state.claim if claim is None else claim
        state.evidence_for(digest).record_attestation(verified, now_ms)
        self._touch(node, digest)
        return self._flush()

    # ---- settling ----------------------------------------------------------------------------
    def tick(
        self, members: dict[str, Member], now_ms: int, rng: random.Random | None = None
    ) -> list[VerifierEffect]:
        """Issue the challenges now due, settle checks that are complete or out of time, report levels."""
        self._tick_clock(now_ms)
        effects: list[VerifierEffect] = []
        for cid, verdict in self.bandwidth.due(now_ms):
            if cid in self.checks:
                self.checks[cid].verdict = verdict
        for cid, check in list(self.checks.items()):
            complete = check.verdict is not None and set(check.panel) <= set(check.votes)
            expired = now_ms - check.issued_ms > self.config.vote_timeout_ms + self._proof_time(check)
            if (
                check.checking
                and now_ms - check.issued_ms <= 2 * self.config.vote_timeout_ms + self._proof_time(check)
            ):
                expired = False  # its re-execution is still running: wait for the verdict
            if complete or expired:
                del self.checks[cid]
                self.bandwidth.close(cid)
                effects += self._settle(check, members.get(check.challenge.node), now_ms)
        if self._queue:
            effects += self._issue_due(members, now_ms, rng or random.Random(now_ms))
        for member in members.values():
            effects += self._availability(member, now_ms)
        effects += self._refresh(list(members.values()), now_ms)
        return effects

    def _availability(self, member: Member, now_ms: int) -> list[VerifierEffect]:
        """Account uptime; at the end of each window compare it with the commitment and slash a shortfall."""
        c = self.config
        state = self._node(member.node, now_ms)
        if state.last_tick_ms is None:
            state.last_tick_ms = state.window_start_ms = now_ms
            return []
        gap = now_ms - state.last_tick_ms
        state.last_tick_ms = now_ms
        if 0 < gap <= c.max_tick_gap_ms:
            state.observed_ms += gap
            if member.online:
                state.online_ms += gap
        if now_ms - state.window_start_ms < c.availability_window_ms or state.observed_ms <= 0:
            return []
        uptime = state.online_ms / state.observed_ms
        commitment = commitment_of(member)
        evidence = {
            "window_start_ms": state.window_start_ms,
            "observed_ms": state.observed_ms,
            "online_ms": state.online_ms,
            "commitment": commitment,
        }
        state.window_start_ms, state.observed_ms, state.online_ms = now_ms, 0, 0
        state.reputation.observe_uptime(uptime, commitment, now_ms)
        if not stake_mod.availability_violated(uptime, commitment):
            return []
        held = self.ledger.stake(member.node)
        if held <= 0:
            return []
        reason = f"uptime {uptime:.1%} below the committed {commitment:.1%}"
        log.warning("%s: %s", member.node, reason)
        record = stake_mod.slash(
            member.node,
            stake_mod.SlashKind.AVAILABILITY,
            held,
            evidence,
            now_ms,
            reason=reason,
            policy=c.stake_policy,
        )
        before = len(self.ledger)
        stake_mod.apply_slash(self.ledger, record)
        return [RecordLedger(tuple(self.ledger.since(before)))] if len(self.ledger) > before else []

    @staticmethod
    def _proof_time(check: _Check) -> int:
        return max(0, check.challenge.deadline_ms - check.issued_ms)

    def _settle(self, check: _Check, member: Member | None, now_ms: int) -> list[VerifierEffect]:
        node = check.challenge.node
        state = self._node(node, now_ms)
        ev = state.evidence_for(check.claim)
        verdict = check.verdict
        on_time = check.proof is not None and check.proof_at <= check.challenge.deadline_ms
        if verdict is None:
            if check.proof is None:
                verdict = proofs.Verdict(
                    False, proofs.VerdictReason.LATE, "no commitment before the deadline"
                )
            elif not on_time:
                late = check.proof_at - check.challenge.deadline_ms
                verdict = proofs.Verdict(
                    False, proofs.VerdictReason.LATE, f"commitment arrived {late} ms after the deadline"
                )
            else:
                verdict = proofs.Verdict(
                    False, proofs.VerdictReason.WRONG_SEGMENTS, "withheld its opening after committing"
                )
        if check.challenge.workload == "bandwidth":  # no commitment: the meter says if it was in time
            on_time = verdict.reason is not proofs.VerdictReason.LATE
        withholding = member is not None and (not member.offering or bool(member.throttle))
        if not verdict.accepted and check.proof is None and withholding:
            # Its owner's limits (heat, battery, power) took the capacity back mid-check: not counted.
            ev.history.append((now_ms, "check voided: capacity withheld under the owner's limits"))
            self.voided += 1
            return []
        self.verdicts.append((node, verdict))
        self.settled += 1
        self._measure(ev, check, verdict, node, now_ms)  # a first slow result is a measurement too
        performance = not on_time or verdict.reason in (proofs.VerdictReason.LATE, proofs.VerdictReason.SLOW)
        workload = check.challenge.workload
        if not verdict.accepted and performance and workload not in state.contained:
            # Containment (as Storj audits): a first late or slow result may be a busy moment on an
            # honest device, so it is checked again before it counts. A second one in a row counts.
            state.contained.add(workload)
            self._contained_dirty.add(node)
            self.sampler.flag(node, checks=1)
            ev.history.append((now_ms, f"{verdict.reason.value}: checked again before it counts"))
            self.contained += 1
            return self._flush() + (self._level(member, now_ms) if member is not None else [])
        if verdict.accepted and workload in state.contained:
            state.contained.discard(workload)
            self._contained_dirty.add(node)
        result = peers.tally(
            [*check.votes.values(), *check.conflicting], check.panel, subject=node, round_=check.round
        )
        if check.panel:
            # A panel that lost its quorum to silence or a split counts for nothing. A decided panel
            # attests the segment results; the coordinator's clock and re-check decide the rest, so a
            # quorum counts for the claim only with an accepting verdict (and colluders who reject an
            # honest node cannot take its peer evidence away).
            if result.outcome is not peers.Outcome.INCONCLUSIVE:
                ev.record_quorum(verdict.accepted, now_ms)
            for voter in check.panel:
                vote = check.votes.get(voter)
                voter_state = self._node(voter, now_ms)
                if vote is None:
                    voter_state.reputation.observe_response(False, now_ms)
                else:
                    voter_state.reputation.observe_response(True, now_ms)
                    honest = vote.accept == verdict.accepted and voter not in result.equivocators
                    voter_state.reputation.observe_vote(honest, now_ms)
        ev.record_proof(verdict.accepted, now_ms, check.challenge.workload)
        self._touch(node, check.claim)
        state.reputation.observe_check(verdict.accepted, now_ms)
        self.sampler.record(node, verdict.accepted)
        effects: list[VerifierEffect] = []
        current = member is not None and claim_hash(node, member.resources) == check.claim
        suspicions = (fraud.FlagKind.JUMP, fraud.FlagKind.COHORT)
        if verdict.accepted and current and any(k in state.flags for k in suspicions):
            # The new, higher claim was checked and holds: a legitimate upgrade, not a fraud signal.
            for flag in suspicions:
                state.flags.pop(flag, None)
            state.claims = state.claims[-1:]
            ev.history.append((now_ms, "claim flags cleared: the new claim was verified"))
        if not verdict.accepted:
            log.warning("verification of %s failed: %s %s", node, verdict.reason, verdict.detail)
            # Any failure after an on-time commitment is fraud; lateness and slowness are performance.
            kind = stake_mod.SlashKind.PERFORMANCE if performance else stake_mod.SlashKind.FRAUD
            effects += self._slash(node, kind, check, verdict, now_ms)
        effects += self._flush()
        if member is not None:
            effects += self._level(member, now_ms)
        return effects

    def _slash(
        self,
        node: str,
        kind: stake_mod.SlashKind,
        check: _Check,
        verdict: proofs.Verdict,
        now_ms: int,
    ) -> list[VerifierEffect]:
        held = self.ledger.stake(node)
        if held <= 0:
            return []
        # The node's own signed artifacts (raw COSE_Sign1 bytes, as it sent them) and the challenge:
        # anyone can verify the signatures with a stock COSE library and re-run the opened segments.
        evidence: dict[str, object] = {
            "challenge": msgspec.to_builtins(check.challenge, builtin_types=(bytes,)),
            "challenge_id": check.challenge.challenge_id,
            "reason": verdict.reason.value,
            "detail": verdict.detail,
            "root": check.proof.root if check.proof else b"",
            "proof_cose": check.proof_raw,
            "opening_cose": check.opening_raw,
            "salt": check.salt if check.proof is not None else b"",
            "deadline_ms": check.challenge.deadline_ms,
            "arrived_ms": check.proof_at,
        }
        record = stake_mod.slash(
            node,
            kind,
            held,
            evidence,
            now_ms,
            reason=verdict.detail or verdict.reason.value,
            policy=self.config.stake_policy,
        )
        before = len(self.ledger)
        stake_mod.apply_slash(self.ledger, record)
        effects: list[VerifierEffect] = [
            RecordSlashEvidence(record.evidence_digest, node, {"node": node, "kind": kind.value, **evidence})
        ]
        if len(self.ledger) > before:
            effects.append(RecordLedger(tuple(self.ledger.since(before))))
        return effects

    def _refresh(self, members: list[Member], now_ms: int) -> list[VerifierEffect]:
        effects: list[VerifierEffect] = []
        for m in members:
            effects += self._level(m, now_ms)
        return effects

    # ---- the economy side ---------------------------------------------------------------------
    def required_stake(self, member: Member, now_ms: int) -> stake_mod.StakeRequirement:
        """What this member must stake now, with the factors."""
        state = self._node(member.node, now_ms)
        return stake_mod.required_stake(
            member.resources,
            state.reputation.score(now_ms),
            state.open_flags(now_ms, self.config.flag_ttl_ms),
            self.config.stake_policy,
        )

    def deposit(
        self, account: str, amount_micro: int, key: str, now_ms: int, memo: str = ""
    ) -> list[VerifierEffect]:
        """Credit an account (an operator deposit or earnings); idempotent by ``key``."""
        before = len(self.ledger)
        self.ledger.append(account, amount_micro, "credit", key, now_ms, memo=memo)
        return [RecordLedger(tuple(self.ledger.since(before)))] if len(self.ledger) > before else []

    def stake(self, member: Member, amount_micro: int, key: str, now_ms: int) -> list[VerifierEffect]:
        """Move ``amount_micro`` of the member's balance into stake; raises LocalError if it cannot."""
        self._tick_clock(now_ms)
        before = len(self.ledger)
        try:
            self.ledger.append(member.node, amount_micro, "stake", key, now_ms, memo="stake for verification")
        except LedgerError as exc:
            raise LocalError(str(exc)) from None
        effects: list[VerifierEffect] = []
        if len(self.ledger) > before:
            effects.append(RecordLedger(tuple(self.ledger.since(before))))
        effects += self._level(member, now_ms)
        return effects
