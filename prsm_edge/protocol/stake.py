"""Stake and slashing.

``required_stake = base_stake × capacity_multiplier × risk_factor``, where

* ``base_stake`` is what the smallest useful node stakes (10 FTNS by default);
* ``capacity_multiplier = clamp(Σ capacity_r / reference_r, 1, 100)``: the offer measured in *reference
  devices* (4 CPU cores, 1 GPU, 1 TPU, 8 GB memory, 16 GB cache, 100 GB storage, 100 Mbit/s each way,
  10 qubits, 1 edge accelerator), so a node that can do more damage by failing stakes more;
* ``risk_factor = min(5, 1 + 2 × (1 - reputation) + 0.5 × open_flags)``: a node with a perfect
  reputation and no fraud flags stakes the base amount per reference device; a new node (reputation 0.5)
  twice that; each open fraud flag adds half.

Slashing takes a share of the current stake, by violation:

* ``availability`` (observed uptime below the committed uptime over a period): 5 %;
* ``performance`` (a failed benchmark proof or a missed deadline): 10 %;
* ``fraud`` (a forged proof, a provably false claim, a duplicated hardware identity): 50 %.

Each slash is a :class:`SlashRecord` carrying the SHA-256 digest of its evidence and an idempotency key
derived from it, so the same evidence never slashes twice; :func:`apply_slash` writes it to the ledger.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from prsm_edge.errors import LocalError
from prsm_edge.protocol.fraud import evidence_digest
from prsm_edge.protocol.ledger import Ledger, LedgerKind
from prsm_edge.protocol.messages import MICRO, LedgerEntry, ResourceSpec, ResourceType

__all__ = [
    "REFERENCE_CAPACITY",
    "SLASH_PERCENT",
    "SlashKind",
    "SlashRecord",
    "StakePolicy",
    "StakeRequirement",
    "apply_slash",
    "availability_violated",
    "capacity_multiplier",
    "required_stake",
    "risk_factor",
    "slash",
]

REFERENCE_CAPACITY: Final[dict[ResourceType, float]] = {
    ResourceType.COMPUTE_CPU: 4.0,
    ResourceType.COMPUTE_GPU: 1.0,
    ResourceType.COMPUTE_TPU: 1.0,
    ResourceType.STORAGE_PERSISTENT: 100.0,
    ResourceType.STORAGE_MEMORY: 8.0,
    ResourceType.STORAGE_CACHE: 16.0,
    ResourceType.BANDWIDTH_INGRESS: 100.0,
    ResourceType.BANDWIDTH_EGRESS: 100.0,
    ResourceType.SPECIALIZED_QUANTUM: 10.0,
    ResourceType.SPECIALIZED_EDGE: 1.0,
}


class SlashKind(enum.StrEnum):
    """The three violations that cost stake."""

    AVAILABILITY = "availability"
    PERFORMANCE = "performance"
    FRAUD = "fraud"


SLASH_PERCENT: Final[dict[SlashKind, float]] = {
    SlashKind.AVAILABILITY: 5.0,
    SlashKind.PERFORMANCE: 10.0,
    SlashKind.FRAUD: 50.0,
}


@dataclass(frozen=True, slots=True)
class StakePolicy:
    """The factors of the stake formula."""

    base_stake_micro: int = 10 * MICRO
    reference: Mapping[ResourceType, float] = field(default_factory=lambda: dict(REFERENCE_CAPACITY))
    max_multiplier: float = 100.0
    reputation_risk: float = 2.0
    flag_risk: float = 0.5
    max_risk: float = 5.0
    slash_percent: Mapping[SlashKind, float] = field(default_factory=lambda: dict(SLASH_PERCENT))


@dataclass(frozen=True, slots=True)
class StakeRequirement:
    """The required stake and the factors it came from, to show the owner."""

    base_micro: int
    capacity_multiplier: float
    risk_factor: float
    required_micro: int


def capacity_multiplier(resources: Sequence[ResourceSpec], policy: StakePolicy = StakePolicy()) -> float:
    """The offer in reference devices, clamped to ``[1, max_multiplier]``."""
    total = 0.0
    for spec in resources:
        ref = policy.reference.get(spec.type, 0.0)
        if ref > 0 and math.isfinite(spec.capacity) and spec.capacity > 0:
            total += spec.capacity / ref
    return min(policy.max_multiplier, max(1.0, total))


def risk_factor(reputation: float, open_flags: int = 0, policy: StakePolicy = StakePolicy()) -> float:
    """``1 + 2 (1 - reputation) + 0.5 × open_flags``, at most ``max_risk``."""
    rep = min(1.0, max(0.0, reputation)) if math.isfinite(reputation) else 0.0
    raw = 1.0 + policy.reputation_risk * (1.0 - rep) + policy.flag_risk * max(0, open_flags)
    return min(policy.max_risk, raw)


def required_stake(
    resources: Sequence[ResourceSpec],
    reputation: float,
    open_flags: int = 0,
    policy: StakePolicy = StakePolicy(),
) -> StakeRequirement:
    """``base_stake × capacity_multiplier × risk_factor`` in µFTNS, rounded up."""
    cap = capacity_multiplier(resources, policy)
    risk = risk_factor(reputation, open_flags, policy)
    required = math.ceil(policy.base_stake_micro * cap * risk)
    return StakeRequirement(policy.base_stake_micro, cap, risk, required)


def availability_violated(observed_uptime: float, commitment: float) -> bool:
    """Whether uptime observed over a period fell below the uptime the node committed to."""
    return observed_uptime < commitment


@dataclass(frozen=True, slots=True)
class SlashRecord:
    """One slash: who, why, how much, and the digest of the evidence."""

    node: str
    kind: SlashKind
    percent: float
    stake_before_micro: int
    amount_micro: int
    evidence_digest: bytes
    key: str
    at_ms: int
    reason: str


def slash(
    node: str,
    kind: SlashKind,
    stake_micro: int,
    evidence: Mapping[str, Any],
    now_ms: int,
    *,
    reason: str = "",
    policy: StakePolicy = StakePolicy(),
) -> SlashRecord:
    """The slash ``kind`` costs a node holding ``stake_micro``, bound to ``evidence``."""
    if stake_micro < 0:
        raise LocalError(f"a stake cannot be negative ({stake_micro})")
    pct = policy.slash_percent[kind]
    amount = min(stake_micro, math.ceil(stake_micro * pct / 100.0))
    digest = evidence_digest({"node": node, "kind": kind.value, **evidence})
    key = f"slash:{kind.value}:{node}:{digest.hex()[:32]}"
    return SlashRecord(node, kind, pct, stake_micro, amount, digest, key, now_ms, reason or kind.value)


def apply_slash(ledger: Ledger, record: SlashRecord) -> LedgerEntry | None:
    """Write ``record`` to the ledger (idempotent by its key); ``None`` when there is nothing to take."""
    existing = ledger.get(record.key)
    if existing is not None:
        return existing
    amount = min(record.amount_micro, ledger.stake(record.node))
    if amount <= 0:
        return None
    return ledger.append(
        record.node,
        amount,
        LedgerKind.SLASH,
        record.key,
        record.at_ms,
        memo=f"{record.kind.value}: {record.reason}"[:200],
        evidence=record.evidence_digest,
    )
