"""Continuous verification of a live group, sans-IO: who is checked, by whom, and what follows.

Theory of operation. Every ``round_ms`` the coordinator's shell calls :meth:`Verifier.start_round`
with the members online. The round's beacon secret was committed one round earlier, so it was fixed
before anyone knew this round's subjects; it is revealed now, mixed with the list of subjects, and
published (``coord/beacon``). For each subject the adaptive sampler picks (new or flagged nodes always,
long clean records rarely) the coordinator issues one benchmark challenge sized from the speed the
subject claims (``details["sha256_per_s"]`` of its CPU offer) and sends it to the subject
(``cmd/challenge``) and to a panel of up to five peers chosen by the public rule
:func:`~prsm_edge.protocol.peers.select_verifiers` (``cmd/verify``). The subject commits to its
segment results (``BenchmarkProof`` on its ``proof`` topic); the coordinator then reveals the opening
salt (``cmd/open``); the subject opens the selected segments (``ProofOpening``). Every panel member
re-executes those segments and signs a ``VerificationVote``; so does the coordinator's own check.

When the votes are in (or ``vote_timeout_ms`` passed) the round of that subject is settled:

* the panel's ``2f+1`` quorum is the peer evidence (``peer_verified``); voters against the decided
  outcome lose vote-honesty reputation;
* the coordinator's own check of the proof is the benchmark evidence (``benchmarked``) — it re-executes
  only the opened segments, so it costs ``opens / segments`` of the prover's work; where the panel is
  split or rejects, this objective re-check is what decides (peers can never get an honest node
  penalised);
* a failed proof slashes ``performance`` (10 % of stake), a wrong committed result slashes ``fraud``
  (50 %), each with its evidence digest, through the hash-chained ledger;
* with a registered attestation key the challenge asks for a TPM quote over
  ``SHA-256(nonce ‖ claim hash)``; the shell verifies it (``VerifyQuote``) and reports back;
* stake comes from the node's ledger balance through the ``stake`` API call.

The level a node holds is :meth:`~prsm_edge.protocol.reputation.TrustEvidence.level`: a ladder in which
each level needs its own current evidence and that of every level below.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from prsm_edge.errors import LocalError
from prsm_edge.protocol import cbor, fraud, peers, proofs, topics
from prsm_edge.protocol import stake as stake_mod
from prsm_edge.protocol.group import Member, Publish
from prsm_edge.protocol.ledger import Ledger, LedgerError
from prsm_edge.protocol.messages import (
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
from prsm_edge.protocol.reputation import Dimension, LevelPolicy, Reputation, TrustEvidence
from prsm_edge.protocol.sampling import AdaptiveSampler

__all__ = [
    "CPU_RATE_KEY",
    "LevelChange",
    "RecordLedger",
    "Verifier",
    "VerifierConfig",
    "VerifyQuote",
    "claim_hash",
]

log = logging.getLogger(__name__)

CPU_RATE_KEY: Final = proofs.RATE_KEYS["cpu"]  # per-core rate a node claims in its CPU offer


def claim_hash(node: str, resources: list[ResourceSpec]) -> bytes:
    """SHA-256 of the node id and its claim in deterministic CBOR: what an attestation quote binds to.

    The node id is in it so a quote made for one node cannot be relayed as another's.
    """
    # capacity as float: a sender's int 2 and a receiver's decoded 2.0 must hash alike.
    canon = [
        {"type": r.type.value, "capacity": float(r.capacity), "unit": r.unit, "details": r.details}
        for r in resources
    ]
    return hashlib.sha256(cbor.dumps([node, canon])).digest()


def claimed_cpu_rate(resources: list[ResourceSpec]) -> float:
    """The single-core SHA-256 rate a node claims, or 0 if it claims none."""
    for spec in resources:
        if spec.type is ResourceType.COMPUTE_CPU:
            value = spec.details.get(CPU_RATE_KEY, 0)
            return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0
    return 0.0


@dataclass(frozen=True, slots=True)
class VerifierConfig:
    """How verification runs in one group."""

    site: str
    group: str
    coordinator: str
    round_ms: int = 300_000
    vote_timeout_ms: int = 15_000
    panel: int = 5
    segments: int = 1024
    opens: int = 16
    target_ms: int = 1_500
    slack: float = 1.5
    network_ms: int = 500
    min_rate_ratio: float = 0.6
    policy: LevelPolicy = field(default_factory=LevelPolicy)
    stake_policy: stake_mod.StakePolicy = field(default_factory=stake_mod.StakePolicy)
    availability_window_ms: int = 3_600_000  # uptime is judged against the commitment per window
    max_tick_gap_ms: int = 10_000  # a longer pause between ticks (the coordinator was down) is not counted


@dataclass(frozen=True, slots=True)
class LevelChange:
    """A member's verification level changed."""

    node: str
    level: VerificationLevel


@dataclass(frozen=True, slots=True)
class RecordLedger:
    """Persist these new ledger entries."""

    entries: tuple[LedgerEntry, ...]


@dataclass(frozen=True, slots=True)
class VerifyQuote:
    """Check a TPM quote (I/O: tpm2-tools) and report with :meth:`Verifier.attestation_result`."""

    node: str
    challenge_id: str
    attestation_key: bytes
    quote: bytes
    nonce: bytes
    claim_hash: bytes


VerifierEffect = Publish | LevelChange | RecordLedger | VerifyQuote


@dataclass(slots=True)
class _Check:
    challenge: BenchmarkChallenge
    salt: bytes
    round: int
    panel: tuple[str, ...]
    issued_ms: int
    proof: BenchmarkProof | None = None
    proof_at: int = 0
    opening: ProofOpening | None = None
    verdict: proofs.Verdict | None = None
    votes: list[VerificationVote] = field(default_factory=list)
    claim: bytes = b""  # the claim this check was issued against


@dataclass(slots=True)
class _Node:
    reputation: Reputation
    evidence: TrustEvidence = field(default_factory=TrustEvidence)
    claims: list[float] = field(default_factory=list)
    claim: bytes = b""  # claim_hash of the resources the current evidence was gathered on
    open_flags: int = 0
    level: VerificationLevel = VerificationLevel.SELF_REPORTED
    window_start_ms: int = 0
    observed_ms: int = 0
    online_ms: int = 0
    last_tick_ms: int | None = None


class Verifier:
    """The coordinator's verification engine, fed with members, messages and time."""

    def __init__(self, config: VerifierConfig, ledger: Ledger, *, secret: bytes) -> None:
        self.config = config
        self.ledger = ledger
        self.sampler = AdaptiveSampler()
        self.nodes: dict[str, _Node] = {}
        self.checks: dict[str, _Check] = {}  # by challenge id
        self.round = 0
        self._secret = secret  # committed for the next round
        self._commit = peers.beacon_commit(secret, 1)
        self.verdicts: deque[tuple[str, proofs.Verdict]] = deque(maxlen=1024)  # recent, for inspection

    # ---- members -----------------------------------------------------------------------------
    def _node(self, node: str, now_ms: int) -> _Node:
        state = self.nodes.get(node)
        if state is None:
            state = self.nodes[node] = _Node(Reputation(now_ms))
        return state

    def observe_claims(self, members: list[Member], now_ms: int) -> list[VerifierEffect]:
        """Run the fraud detectors over the members' current claims; flags raise sampling."""
        flags: list[fraud.FraudFlag] = []
        fingerprints = {m.node: m.hw_fingerprint for m in members if m.hw_fingerprint}
        flags += fraud.duplicate_fingerprints(fingerprints)
        cohort: dict[str, tuple[str, float]] = {}
        for m in members:
            rate = claimed_cpu_rate(m.resources)
            state = self._node(m.node, now_ms)
            digest = claim_hash(m.node, m.resources)
            if state.claim and state.claim != digest:
                # Evidence was for the old claim: the new one holds nothing until it is checked.
                state.evidence.quorum_ms = state.evidence.proof_ms = state.evidence.attestation_ms = None
                state.evidence.history.append((now_ms, "claim changed"))
                self.sampler.flag(m.node, checks=1)
            state.claim = digest
            if rate > 0:
                cohort[m.node] = (m.device_class, rate)
                flags += fraud.jump(m.node, state.claims, rate)
                if not state.claims or state.claims[-1] != rate:
                    state.claims = [*state.claims[-15:], rate]
        flags += fraud.cohort_outliers(cohort)
        for flagged in fraud.raise_sampling(self.sampler, flags):
            self._node(flagged, now_ms).open_flags += 1
        for f in flags:
            log.info("fraud flag on %s: %s", f.node, f.kind)
        return self._refresh_stakes(members, now_ms)

    # ---- rounds ------------------------------------------------------------------------------
    def opening_beacon(self) -> Publish:
        """Round 0's beacon: no reveal yet, only the commitment to round 1's secret (publish at start)."""
        c = self.config
        msg = Beacon(group=c.group, round=self.round, reveal=b"", mix=b"", commit_next=self._commit)
        return Publish(topics.coord_beacon(c.site, c.group), msg, retain=True)

    def start_round(self, members: list[Member], now_ms: int, rng: random.Random) -> list[VerifierEffect]:
        """Reveal this round's beacon, choose subjects and panels, and issue the challenges."""
        c = self.config
        self.round += 1
        reveal, commit = self._secret, self._commit
        self._secret = rng.randbytes(32)
        next_commit = peers.beacon_commit(self._secret, self.round + 1)
        self._commit = next_commit
        online = sorted((m for m in members if m.online), key=lambda m: m.node)
        busy = {ch.challenge.node for ch in self.checks.values()}
        subjects = [
            m
            for m in online
            if m.node not in busy
            and claimed_cpu_rate(m.resources) > 0
            and self.sampler.should_verify(m.node, rng)
        ]
        mix = hashlib.sha256("\n".join(m.node for m in subjects).encode()).digest()
        beacon = peers.beacon_value(reveal, self.round, mix)
        assert peers.verify_reveal(commit, reveal, self.round)
        effects: list[VerifierEffect] = [
            Publish(
                topics.coord_beacon(c.site, c.group),
                Beacon(group=c.group, round=self.round, reveal=reveal, mix=mix, commit_next=next_commit),
                retain=True,
            )
        ]
        eligible = [m.node for m in online if self._eligible(m.node, now_ms)]
        for m in subjects:
            effects += self._issue(m, beacon, eligible, now_ms, rng)
        return effects

    def _eligible(self, node: str, now_ms: int) -> bool:
        state = self.nodes.get(node)
        return state is None or state.reputation.value(Dimension.VOTE_HONESTY, now_ms) >= 0.35

    def _issue(
        self, member: Member, beacon: bytes, eligible: list[str], now_ms: int, rng: random.Random
    ) -> list[VerifierEffect]:
        c = self.config
        issued = proofs.make_challenge(
            c.coordinator,
            member.node,
            "cpu",
            claimed_cpu_rate(member.resources),
            rng,
            now_ms,
            segments=c.segments,
            target_ms=c.target_ms,
            opens=c.opens,
            slack=c.slack,
            network_ms=c.network_ms,
        )
        challenge = issued.challenge
        if member.attestation_key:
            challenge = msgspec.structs.replace(challenge, attest=True)
        panel = tuple(peers.select_verifiers(beacon, member.node, self.round, eligible, k=c.panel))
        self.checks[challenge.challenge_id] = _Check(
            challenge, issued.salt, self.round, panel, now_ms, claim=claim_hash(member.node, member.resources)
        )
        wire = msgspec.to_builtins(challenge, builtin_types=(bytes,))
        # Seat the panel before the subject hears of the challenge, so its proof finds them waiting.
        effects: list[VerifierEffect] = []
        for verifier in panel:
            args = {"challenge": wire, "round": self.round, "min_rate_ratio": c.min_rate_ratio}
            effects.append(self._cmd(verifier, "verify", args))
        effects.append(self._cmd(member.node, "challenge", {"challenge": wire}))
        return effects

    def _cmd(self, node: str, verb: str, args: dict[str, Any]) -> Publish:
        c = self.config
        return Publish(
            topics.node_cmd(c.site, c.group, node, verb), NodeCommand(verb=verb, node=node, args=args)
        )

    # ---- messages ----------------------------------------------------------------------------
    def on_proof(self, member: Member, proof: BenchmarkProof, now_ms: int) -> list[VerifierEffect]:
        """The subject committed: reveal the salt (and have its quote checked)."""
        check = self.checks.get(proof.challenge_id)
        if check is None or check.proof is not None or proof.node != check.challenge.node:
            return []
        check.proof, check.proof_at = proof, now_ms
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
                        claim_hash(member.node, member.resources),
                    )
                )
            else:
                self._node(proof.node, now_ms).evidence.record_attestation(False, now_ms)
        return effects

    def on_opening(self, opening: ProofOpening, now_ms: int) -> list[VerifierEffect]:
        """The subject opened its segments: the coordinator's own, objective check."""
        check = self.checks.get(opening.challenge_id)
        if check is None or check.proof is None or check.opening is not None:
            return []
        check.opening = opening
        check.verdict = proofs.check(
            check.challenge, check.proof, opening, check.proof_at, min_rate_ratio=self.config.min_rate_ratio
        )
        return []

    def on_vote(self, vote: VerificationVote) -> list[VerifierEffect]:
        """A panel member's signed verdict."""
        check = self.checks.get(vote.challenge_id)
        if (
            check is not None
            and vote.voter in check.panel
            and vote.subject == check.challenge.node
            and vote.round == check.round
        ):
            check.votes.append(vote)
        return []

    def attestation_result(self, node: str, verified: bool, now_ms: int) -> list[VerifierEffect]:
        """The shell's verdict on a quote."""
        self._node(node, now_ms).evidence.record_attestation(verified, now_ms)
        return self._level(node, now_ms)

    # ---- settling ----------------------------------------------------------------------------
    def tick(self, members: dict[str, Member], now_ms: int) -> list[VerifierEffect]:
        """Settle checks whose votes are all in or whose time is up; report level changes."""
        effects: list[VerifierEffect] = []
        for cid, check in list(self.checks.items()):
            complete = check.verdict is not None and len(check.votes) >= len(check.panel)
            expired = now_ms - check.issued_ms > self.config.vote_timeout_ms + self._proof_time(check)
            if complete or expired:
                del self.checks[cid]
                effects += self._settle(check, members.get(check.challenge.node), now_ms)
        for member in members.values():
            effects += self._availability(member, now_ms)
        effects += self._refresh_stakes(list(members.values()), now_ms)
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
        evidence = {
            "window_start_ms": state.window_start_ms,
            "observed_ms": state.observed_ms,
            "online_ms": state.online_ms,
            "commitment": member.uptime_commitment,
        }
        state.window_start_ms, state.observed_ms, state.online_ms = now_ms, 0, 0
        state.reputation.observe_uptime(uptime, member.uptime_commitment, now_ms)
        if not stake_mod.availability_violated(uptime, member.uptime_commitment):
            return []
        held = self.ledger.stake(member.node)
        if held <= 0:
            return []
        reason = f"uptime {uptime:.1%} below the committed {member.uptime_commitment:.1%}"
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
        verdict = check.verdict
        if verdict is None:
            reason = "no commitment before the deadline" if check.proof is None else "no opening"
            verdict = proofs.Verdict(False, proofs.VerdictReason.LATE, reason)
        self.verdicts.append((node, verdict))
        if verdict.accepted and member is not None and claim_hash(node, member.resources) != check.claim:
            # The node changed its claim while this check ran: a pass proves the old claim only.
            state.evidence.history.append((now_ms, "pass of a superseded claim not counted"))
            return []
        result = peers.tally(check.votes, check.panel, subject=node, round_=check.round)
        if check.panel:
            # A panel that lost its quorum to silence or a split counts for nothing; the objective
            # re-check (the verdict) is what decides the benchmark evidence either way.
            if result.outcome is peers.Outcome.ACCEPT:
                state.evidence.record_quorum(verdict.accepted or not peers.needs_audit(result), now_ms)
            elif result.outcome is peers.Outcome.REJECT:
                state.evidence.record_quorum(verdict.accepted, now_ms)
            for voter in check.panel:
                vote = next((v for v in check.votes if v.voter == voter), None)
                voter_state = self._node(voter, now_ms)
                if vote is None:
                    voter_state.reputation.observe_response(False, now_ms)
                else:
                    voter_state.reputation.observe_response(True, now_ms)
                    voter_state.reputation.observe_vote(vote.accept == verdict.accepted, now_ms)
        state.evidence.record_proof(verdict.accepted, now_ms)
        state.reputation.observe_check(verdict.accepted, now_ms)
        self.sampler.record(node, verdict.accepted)
        effects: list[VerifierEffect] = []
        if not verdict.accepted:
            log.warning("verification of %s failed: %s %s", node, verdict.reason, verdict.detail)
            kind = (
                stake_mod.SlashKind.FRAUD
                if verdict.reason is proofs.VerdictReason.WRONG_RESULT
                else stake_mod.SlashKind.PERFORMANCE
            )
            effects += self._slash(node, kind, check, verdict, now_ms)
        if member is not None:
            effects += self._level(node, now_ms)
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
        evidence = {
            "challenge_id": check.challenge.challenge_id,
            "reason": verdict.reason.value,
            "detail": verdict.detail,
            "root": check.proof.root if check.proof else b"",
        }
        record = stake_mod.slash(
            node, kind, held, evidence, now_ms, reason=verdict.detail or verdict.reason.value
        )
        before = len(self.ledger)
        stake_mod.apply_slash(self.ledger, record)
        return [RecordLedger(tuple(self.ledger.since(before)))] if len(self.ledger) > before else []

    def _refresh_stakes(self, members: list[Member], now_ms: int) -> list[VerifierEffect]:
        effects: list[VerifierEffect] = []
        for m in members:
            state = self._node(m.node, now_ms)
            required = stake_mod.required_stake(
                m.resources, state.reputation.score(now_ms), state.open_flags, self.config.stake_policy
            )
            state.evidence.record_stake(self.ledger.stake(m.node), required.required_micro)
            effects += self._level(m.node, now_ms)
        return effects

    def _level(self, node: str, now_ms: int) -> list[VerifierEffect]:
        state = self._node(node, now_ms)
        level = state.evidence.level(now_ms, self.config.policy)
        if level is state.level:
            return []
        state.level = level
        return [LevelChange(node, level)]

    # ---- the economy side ---------------------------------------------------------------------
    def required_stake(self, member: Member, now_ms: int) -> stake_mod.StakeRequirement:
        """What this member must stake now, with the factors."""
        state = self._node(member.node, now_ms)
        return stake_mod.required_stake(
            member.resources, state.reputation.score(now_ms), state.open_flags, self.config.stake_policy
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
        before = len(self.ledger)
        try:
            self.ledger.append(member.node, amount_micro, "stake", key, now_ms, memo="stake for verification")
        except LedgerError as exc:
            raise LocalError(str(exc)) from None
        effects: list[VerifierEffect] = []
        if len(self.ledger) > before:
            effects.append(RecordLedger(tuple(self.ledger.since(before))))
        effects += self._refresh_stakes([member], now_ms)
        return effects

    def level_of(self, node: str) -> VerificationLevel:
        """The level last reported for ``node``."""
        state = self.nodes.get(node)
        return VerificationLevel.SELF_REPORTED if state is None else state.level
