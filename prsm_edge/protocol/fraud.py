"""Fraud detectors: claims compared with the node's own history, its device cohort, other nodes'
hardware fingerprints, and what proofs measured.

Every detector is a pure function returning :class:`FraudFlag` s, each with its evidence (plain data, so
it encodes to deterministic CBOR) and the evidence's SHA-256 digest, which a slashing record and a ledger
entry can cite. A flag is a suspicion, not a verdict: :func:`raise_sampling` makes the sampler check the
node at once and repeatedly; only a failed proof or a provably false claim is slashed.

* **jump**: a claim above ``max_ratio`` × the median of the node's own recent claims (default 1.5).
* **cohort**: within one device class, a claim whose robust z-score ``0.6745 (x - median) / MAD`` exceeds
  ``z_max`` (3.5, Iglewicz and Hoaglin); only overclaims are flagged, and only in cohorts of at least
  ``min_cohort`` nodes. The MAD is floored at 1 % of the median so a cohort of identical devices does not
  flag a node that differs by noise.
* **duplicate fingerprint**: the same hardware fingerprint claimed by more than one node (one GPU behind
  many identities); every node in the set is flagged, with the others named.
* **measured below claimed**: a proof's verifier-measured rate below ``tolerance`` × the claimed rate.
"""

from __future__ import annotations

import enum
import hashlib
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from prsm_edge.protocol import cbor
from prsm_edge.protocol.sampling import AdaptiveSampler

__all__ = [
    "FlagKind",
    "FraudFlag",
    "cohort_outliers",
    "duplicate_fingerprints",
    "evidence_digest",
    "jump",
    "measured_below_claimed",
    "raise_sampling",
    "robust_z",
]

_MAD_SCALE: Final = 0.6745


class FlagKind(enum.StrEnum):
    """Which detector raised a flag."""

    JUMP = "jump"
    COHORT = "cohort"
    DUPLICATE_FINGERPRINT = "duplicate_fingerprint"
    MEASURED_BELOW_CLAIMED = "measured_below_claimed"


def evidence_digest(evidence: Mapping[str, Any]) -> bytes:
    """SHA-256 of the evidence in deterministic CBOR."""
    return hashlib.sha256(cbor.dumps(dict(evidence))).digest()


@dataclass(frozen=True, slots=True)
class FraudFlag:
    """One suspicion about one node, with the evidence that raised it."""

    node: str
    kind: FlagKind
    score: float
    evidence: Mapping[str, Any]

    @property
    def digest(self) -> bytes:
        """The evidence digest that slashing records and ledger entries cite."""
        return evidence_digest({"node": self.node, "kind": self.kind.value, **self.evidence})


def jump(
    node: str, history: Sequence[float], claim: float, *, max_ratio: float = 1.5, min_history: int = 3
) -> list[FraudFlag]:
    """Flag a claim above ``max_ratio`` × the median of the node's own last claims."""
    if len(history) < min_history:
        return []
    med = statistics.median(history)
    if med <= 0 or claim <= med * max_ratio:
        return []
    ratio = claim / med
    return [FraudFlag(node, FlagKind.JUMP, ratio, {"claim": claim, "median": med, "ratio": ratio})]


def robust_z(value: float, values: Sequence[float], *, mad_floor: float = 0.01) -> float:
    """``0.6745 (x - median) / MAD`` over ``values``, the MAD floored at ``mad_floor`` × |median|."""
    med = statistics.median(values)
    mad = statistics.median(abs(v - med) for v in values)
    mad = max(mad, mad_floor * abs(med), 1e-12)
    return _MAD_SCALE * (value - med) / mad


def cohort_outliers(
    claims: Mapping[str, tuple[str, float]], *, z_max: float = 3.5, min_cohort: int = 5
) -> list[FraudFlag]:
    """Flag overclaims within each device class; ``claims`` maps node to (device class, claimed value)."""
    cohorts: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for node, (device_class, value) in claims.items():
        cohorts[device_class].append((node, value))
    flags: list[FraudFlag] = []
    for device_class, members in sorted(cohorts.items()):
        if len(members) < min_cohort:
            continue
        values = [v for _, v in members]
        med = statistics.median(values)
        for node, value in sorted(members):
            z = robust_z(value, values)
            if z > z_max:
                evidence = {"device_class": device_class, "claim": value, "cohort_median": med, "z": z}
                flags.append(FraudFlag(node, FlagKind.COHORT, z, evidence))
    return flags


def duplicate_fingerprints(
    fingerprints: Mapping[str, str], precedence: Mapping[str, tuple[Any, ...]] | None = None
) -> list[FraudFlag]:
    """Flag nodes whose hardware fingerprint another node also claims.

    Fingerprints are public, so anyone can copy one. With ``precedence`` (node → sort key, lowest
    first: e.g. verified before unverified, then who held the fingerprint first) the first node of
    each set is the incumbent and is not flagged: only the copies are. Without it every node is.
    """
    by_print: dict[str, list[str]] = defaultdict(list)
    for node, fingerprint in fingerprints.items():
        if fingerprint:
            by_print[fingerprint].append(node)
    flags: list[FraudFlag] = []
    for fingerprint, nodes in sorted(by_print.items()):
        if len(nodes) < 2:
            continue
        ordered = sorted(nodes)
        suspects = ordered
        if precedence is not None:
            incumbent = min(ordered, key=lambda n: (precedence.get(n, (float("inf"),)), n))
            suspects = [n for n in ordered if n != incumbent]
        for node in suspects:
            others = [n for n in ordered if n != node]
            evidence = {"fingerprint": fingerprint, "others": others}
            flags.append(FraudFlag(node, FlagKind.DUPLICATE_FINGERPRINT, float(len(nodes)), evidence))
    return flags


def measured_below_claimed(
    node: str, claimed: float, measured: float, *, tolerance: float = 0.7, challenge_id: str = ""
) -> list[FraudFlag]:
    """Flag a proof whose measured rate is below ``tolerance`` × the claimed rate."""
    if claimed <= 0 or measured >= claimed * tolerance:
        return []
    ratio = measured / claimed
    evidence = {"claimed": claimed, "measured": measured, "ratio": ratio, "challenge_id": challenge_id}
    return [FraudFlag(node, FlagKind.MEASURED_BELOW_CLAIMED, 1.0 - ratio, evidence)]


def raise_sampling(sampler: AdaptiveSampler, flags: Iterable[FraudFlag]) -> set[str]:
    """Make ``sampler`` check every flagged node at once and repeatedly; the nodes flagged."""
    nodes = {flag.node for flag in flags}
    for node in sorted(nodes):
        sampler.flag(node)
    return nodes
