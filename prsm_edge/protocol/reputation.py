"""Reputation and verification level: what a node has shown, weighted, and how much of it is current.

**Reputation** has four dimensions, each an estimate in ``[0, 1]``:

* ``verification``: share of passed checks (benchmark proofs, quorums) — weight 0.4;
* ``uptime``: observed uptime over the uptime the node committed to, capped at 1 — weight 0.25;
* ``vote_honesty``: share of the node's votes as a verifier that agreed with the decided outcome — 0.2;
* ``responsiveness``: share of challenges and requests answered in time — weight 0.15.

Each observation moves its dimension by ``alpha`` towards the observed value (an exponential moving
average); between observations every dimension decays towards the ``prior`` (0.5) with a half-life
(7 days by default), so old merit and old blame both fade. The overall score is the weighted sum.

**Verification level** is held only on *current* evidence; the levels form a ladder and a node holds the
highest level whose evidence, and the evidence of every level below it, is current:

* ``self_reported`` (0.6): always;
* ``peer_verified`` (0.8): a peer quorum accepted its claim within ``peer_validity_ms`` (24 h), and no
  workload's latest check failed;
* ``benchmarked`` (0.85): and a benchmark proof passed within ``proof_validity_ms`` (6 h);
* ``economically_staked`` (0.9): and its stake is at least the required stake;
* ``hardware_attested`` (0.95): and a hardware attestation verified within ``attestation_validity_ms``.

So attestation does not skip stake: an attested node without stake is ``benchmarked``. Stake is what
makes availability and fraud violations cost something; attestation proves the hardware, not that the
node will keep its promises. A failure (rejected quorum, failed proof, failed attestation) clears that
evidence at once, and so every level above it. A failed proof also takes ``peer_verified`` away until
that workload passes again: a panel's quorum on one check does not vouch for a resource whose latest
check failed.

The evidence also keeps what the checks measured (:class:`~prsm_edge.protocol.credit.Measured`, per
workload): the rates that decide what the node is credited with, and the overclaim test.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from prsm_edge.errors import LocalError
from prsm_edge.protocol.credit import Measured
from prsm_edge.protocol.messages import TRUST_SCORE, VerificationLevel

__all__ = [
    "DAY_MS",
    "UNPANELLED",
    "WEIGHTS",
    "Dimension",
    "LevelPolicy",
    "Reputation",
    "TrustEvidence",
]

DAY_MS: Final = 86_400_000
# Workloads no peer panel can re-check (peers see none of a bandwidth check's bytes): a claim made only of
# these has no peer rung, and the coordinator's own current pass of all of it stands in for the quorum.
UNPANELLED: Final = frozenset({"bandwidth"})
HOUR_MS: Final = 3_600_000


class Dimension(enum.StrEnum):
    """The four things reputation measures."""

    VERIFICATION = "verification"
    UPTIME = "uptime"
    VOTE_HONESTY = "vote_honesty"
    RESPONSIVENESS = "responsiveness"


WEIGHTS: Final[dict[Dimension, float]] = {
    Dimension.VERIFICATION: 0.4,
    Dimension.UPTIME: 0.25,
    Dimension.VOTE_HONESTY: 0.2,
    Dimension.RESPONSIVENESS: 0.15,
}


@dataclass(slots=True)
class _Estimate:
    value: float
    at_ms: int


class Reputation:
    """One node's reputation, decaying towards ``prior`` with ``half_life_ms`` between observations."""

    def __init__(
        self,
        now_ms: int,
        *,
        prior: float = 0.5,
        half_life_ms: int = 7 * DAY_MS,
        alpha: float = 0.2,
        weights: dict[Dimension, float] | None = None,
    ) -> None:
        if not 0.0 <= prior <= 1.0 or half_life_ms <= 0 or not 0.0 < alpha <= 1.0:
            raise LocalError("need 0 <= prior <= 1, half_life_ms > 0 and 0 < alpha <= 1")
        self.prior = prior
        self.half_life_ms = half_life_ms
        self.alpha = alpha
        w = dict(WEIGHTS if weights is None else weights)
        total = sum(w.get(d, 0.0) for d in Dimension)
        if total <= 0:
            raise LocalError("reputation weights must sum to a positive number")
        self.weights = {d: w.get(d, 0.0) / total for d in Dimension}
        self._dims = {d: _Estimate(prior, now_ms) for d in Dimension}

    def value(self, dim: Dimension, now_ms: int) -> float:
        """The dimension's estimate as of ``now_ms``, decayed towards the prior."""
        est = self._dims[dim]
        age = max(0, now_ms - est.at_ms)
        return self.prior + (est.value - self.prior) * math.pow(0.5, age / self.half_life_ms)

    def observe(self, dim: Dimension, observed: float, now_ms: int, weight: float = 1.0) -> None:
        """Move ``dim`` towards ``observed`` (clamped to [0, 1]) by ``alpha × weight``."""
        if not math.isfinite(observed):
            raise LocalError(f"an observation must be finite, not {observed!r}")
        x = min(1.0, max(0.0, observed))
        current = self.value(dim, now_ms)
        step = min(1.0, self.alpha * max(0.0, weight))
        self._dims[dim] = _Estimate(current + (x - current) * step, max(now_ms, self._dims[dim].at_ms))

    def observe_check(self, passed: bool, now_ms: int) -> None:
        """A benchmark proof or quorum passed or failed; a failure weighs twice a pass."""
        self.observe(Dimension.VERIFICATION, 1.0 if passed else 0.0, now_ms, 1.0 if passed else 2.0)

    def observe_uptime(self, observed: float, commitment: float, now_ms: int) -> None:
        """Observed uptime (0..1) over a period against the uptime the node committed to."""
        ratio = 1.0 if not commitment > 0 else observed / commitment
        if not (math.isfinite(observed) and math.isfinite(commitment)):
            return  # a value from the network that is not a number teaches nothing
        self.observe(Dimension.UPTIME, ratio, now_ms)

    def observe_vote(self, agreed: bool, now_ms: int) -> None:
        """As a verifier, the node voted with (or against) the decided outcome."""
        self.observe(Dimension.VOTE_HONESTY, 1.0 if agreed else 0.0, now_ms, 1.0 if agreed else 2.0)

    def observe_response(self, in_time: bool, now_ms: int) -> None:
        """The node answered a challenge or request in time, or not."""
        self.observe(Dimension.RESPONSIVENESS, 1.0 if in_time else 0.0, now_ms)

    def score(self, now_ms: int) -> float:
        """The weighted reputation in [0, 1]."""
        return sum(self.weights[d] * self.value(d, now_ms) for d in Dimension)

    def breakdown(self, now_ms: int) -> dict[str, float]:
        """Every dimension's current value, for the owner and the dashboard."""
        return {d.value: self.value(d, now_ms) for d in Dimension}


@dataclass(frozen=True, slots=True)
class LevelPolicy:
    """How long each kind of evidence stays current."""

    peer_validity_ms: int = 24 * HOUR_MS
    proof_validity_ms: int = 6 * HOUR_MS
    attestation_validity_ms: int = 24 * HOUR_MS


@dataclass(slots=True)
class TrustEvidence:
    """The evidence one node holds for one claim; each ``*_ms`` is when it last passed (``None``: none).

    Benchmark proofs are kept per workload (``"cpu"``, ``"memory"``, …): a level covers exactly the
    resources whose workloads have a current pass (:meth:`covers`). The stake figures are not evidence
    of the claim: the verifier refreshes them from the ledger each time it computes the level.
    """

    quorum_ms: int | None = None
    attestation_ms: int | None = None
    proofs: dict[str, int] = field(default_factory=dict)  # workload -> when it last passed
    failed: dict[str, int] = field(default_factory=dict)  # workload -> when its latest check failed
    measured: dict[str, Measured] = field(default_factory=dict)  # workload -> what its checks measured
    stake_micro: int = 0
    required_stake_micro: int = 0
    history: deque[tuple[int, str]] = field(default_factory=lambda: deque(maxlen=32))

    @property
    def proof_ms(self) -> int | None:
        """The oldest current pass among the workloads (``None`` if none passed)."""
        return min(self.proofs.values()) if self.proofs else None

    def record_quorum(self, accepted: bool, now_ms: int) -> None:
        """A peer panel decided on the node's claim (an inconclusive panel is not recorded)."""
        self.quorum_ms = now_ms if accepted else None
        self.history.append((now_ms, "quorum passed" if accepted else "quorum rejected"))

    def record_proof(self, passed: bool, now_ms: int, workload: str = "cpu") -> None:
        """A benchmark proof of ``workload`` was checked."""
        if passed:
            self.proofs[workload] = now_ms
            self.failed.pop(workload, None)
        else:
            self.proofs.pop(workload, None)
            self.failed[workload] = now_ms
        self.history.append((now_ms, "proof passed" if passed else "proof failed"))

    def record_attestation(self, verified: bool, now_ms: int) -> None:
        """A hardware attestation quote was checked against the registered attestation key."""
        self.attestation_ms = now_ms if verified else None
        self.history.append((now_ms, "attestation verified" if verified else "attestation failed"))

    def record_stake(self, stake_micro: int, required_micro: int) -> None:
        """The node's current stake and what its offer requires."""
        self.stake_micro = stake_micro
        self.required_stake_micro = required_micro

    def covers(self, now_ms: int, policy: LevelPolicy = LevelPolicy()) -> tuple[str, ...]:
        """The workloads (so the resources) with a current passed proof."""
        return tuple(
            sorted(w for w, at in self.proofs.items() if 0 <= now_ms - at <= policy.proof_validity_ms)
        )

    def held(
        self,
        now_ms: int,
        policy: LevelPolicy = LevelPolicy(),
        workloads: Iterable[str] | None = None,
    ) -> dict[VerificationLevel, bool]:
        """Which levels' own evidence is current, each on its own (not yet the ladder).

        ``workloads`` are those the claim can be checked with: ``benchmarked`` needs a current pass of
        every one of them (``None``: of at least one workload). A claim whose workloads are all
        :data:`UNPANELLED` (bandwidth only) never gets a panel, so its ``peer_verified`` rests on the
        coordinator's current pass of all of them instead of a quorum (and it then holds ``benchmarked``).
        """

        def fresh(at: int | None, validity: int) -> bool:
            return at is not None and 0 <= now_ms - at <= validity

        covered = set(self.covers(now_ms, policy))
        if workloads is None:
            benchmarked = bool(covered)
            unpanelled = False
        else:
            wanted = set(workloads)
            benchmarked = bool(wanted) and wanted <= covered
            unpanelled = bool(wanted) and wanted <= UNPANELLED  # nothing a panel could have voted on
        return {
            VerificationLevel.SELF_REPORTED: True,
            VerificationLevel.PEER_VERIFIED: (
                fresh(self.quorum_ms, policy.peer_validity_ms) or (unpanelled and benchmarked)
            )
            and not self.failed,
            VerificationLevel.BENCHMARKED: benchmarked,
            VerificationLevel.ECONOMICALLY_STAKED: self.required_stake_micro > 0
            and self.stake_micro >= self.required_stake_micro,
            VerificationLevel.HARDWARE_ATTESTED: fresh(self.attestation_ms, policy.attestation_validity_ms),
        }

    def level(
        self,
        now_ms: int,
        policy: LevelPolicy = LevelPolicy(),
        workloads: Iterable[str] | None = None,
    ) -> VerificationLevel:
        """The highest level whose evidence and the evidence of every level below it is current."""
        held = self.held(now_ms, policy, workloads)
        level = VerificationLevel.SELF_REPORTED
        for candidate in VerificationLevel:
            if not held[candidate]:
                break
            level = candidate
        return level

    def trust_score(self, now_ms: int, policy: LevelPolicy = LevelPolicy()) -> float:
        """The seed's trust score of the level held now."""
        return TRUST_SCORE[self.level(now_ms, policy)]

    def to_record(self) -> dict[str, object]:
        """What was proven, as plain data to persist (not the stake, not the level)."""
        return {
            "quorum_ms": self.quorum_ms,
            "attestation_ms": self.attestation_ms,
            "proofs": dict(self.proofs),
            "failed": dict(self.failed),
            "measured": {w: m.to_record() for w, m in self.measured.items()},
        }

    @classmethod
    def from_record(cls, data: object) -> TrustEvidence:
        """Rebuild evidence persisted by :meth:`to_record`; anything malformed counts as no evidence."""
        ev = cls()
        if not isinstance(data, dict):
            return ev

        def when(value: object) -> int | None:
            return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None

        ev.quorum_ms = when(data.get("quorum_ms"))
        ev.attestation_ms = when(data.get("attestation_ms"))
        for name, into in (("proofs", ev.proofs), ("failed", ev.failed)):
            raw = data.get(name)
            if isinstance(raw, dict):
                for workload, at in list(raw.items())[:16]:
                    stamp = when(at)
                    if isinstance(workload, str) and stamp is not None:
                        into[workload] = stamp
        measured = data.get("measured")
        if isinstance(measured, dict):
            for workload, rec in list(measured.items())[:16]:
                if isinstance(workload, str):
                    ev.measured[workload] = Measured.from_record(rec)
        return ev
