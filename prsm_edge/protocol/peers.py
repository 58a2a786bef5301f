"""Peer verification: a public, unpredictable choice of verifiers and a Byzantine-tolerant tally.

Theory of operation.

* **Beacon.** Before round ``r`` the coordinator publishes ``commit = H(secret ‖ r)``; after the round's
  subjects are fixed it reveals ``secret``. Anyone checks the reveal (:func:`verify_reveal`) and derives the
  round's beacon ``H(secret ‖ r ‖ mix)`` (:func:`beacon_value`), where ``mix`` is data the coordinator did
  not control when it committed (e.g. the hash of the round's signed roster or of the previous round's
  votes). The coordinator cannot change the secret after committing, and nobody else can predict it
  before the reveal. A coordinator that withholds its reveal voids the round (and it shows).
* **Selection.** :func:`select_verifiers` ranks every eligible member by
  ``H(beacon ‖ subject ‖ round ‖ member)`` and takes the ``k`` lowest: deterministic, recomputable by
  anyone from public data, and a different panel for every subject and round.
* **Tally.** :func:`tally` counts one vote per selected verifier (others are ignored, a verifier that
  signed both verdicts is an *equivocator* and counts for neither). With ``n`` verifiers it tolerates
  ``f = (n - 1) // 3`` faulty ones: the outcome is ``accept`` or ``reject`` when at least ``2f + 1``
  agree, else ``inconclusive``. Those who voted against a decided outcome are returned as dissenters
  (they lose vote-honesty reputation); equivocators are returned apart (provable misbehaviour).
* **Audit.** A benchmark verdict is objective: every honest verifier re-executes the same opened segments
  and reaches the same verdict. So a panel that is not unanimous proves that someone on it lied, and a
  rejection costs the subject stake. :func:`needs_audit` therefore says the coordinator must re-run the
  check itself (one verifier's cost) and decide by that whenever the panel is split, inconclusive, has
  an equivocator, or rejects; only a unanimous accept stands on the votes alone. Colluders can then
  never get an honest node penalised, and can pass a cheat only when they fill the whole panel
  (``0.2^5`` ≈ 0.03 % with 20 % of the group colluding) instead of holding a majority of it (5.8 %).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from prsm_edge.protocol import cbor
from prsm_edge.protocol.messages import Beacon, VerificationVote

__all__ = [
    "BeaconError",
    "Outcome",
    "Tally",
    "beacon_commit",
    "beacon_value",
    "drawn",
    "eligibility_mix",
    "needs_audit",
    "quorum_size",
    "round_panels",
    "select_verifiers",
    "tally",
    "tolerated_faults",
    "verify_reveal",
]

_COMMIT: Final = b"prsm-beacon-commit/v1"
_VALUE: Final = b"prsm-beacon/v1"
_RANK: Final = b"prsm-select/v1"
_DRAW: Final = b"prsm-draw/v1"
_MIX: Final = b"prsm-eligible/v1"


def _lp(*parts: bytes) -> bytes:
    """Length-prefixed concatenation, so no two different part lists hash alike."""
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def beacon_commit(secret: bytes, round_: int) -> bytes:
    """The coordinator's commitment to ``secret`` for round ``round_``, published before the round."""
    return hashlib.sha256(_COMMIT + _lp(secret, round_.to_bytes(8, "big"))).digest()


def verify_reveal(commitment: bytes, secret: bytes, round_: int) -> bool:
    """Whether ``secret`` is what was committed for round ``round_``."""
    return beacon_commit(secret, round_) == commitment


def beacon_value(secret: bytes, round_: int, mix: bytes = b"") -> bytes:
    """The round's public randomness, from the revealed secret and data the coordinator did not choose."""
    return hashlib.sha256(_VALUE + _lp(secret, round_.to_bytes(8, "big"), mix)).digest()


def _rank(beacon: bytes, subject: str, round_: int, member: str) -> bytes:
    return hashlib.sha256(
        _RANK + _lp(beacon, subject.encode(), round_.to_bytes(8, "big"), member.encode())
    ).digest()


def select_verifiers(
    beacon: bytes,
    subject: str,
    round_: int,
    members: Iterable[str],
    k: int = 5,
    exclude: Iterable[str] = (),
) -> list[str]:
    """The ``k`` verifiers of ``subject`` in ``round_``: lowest ``H(beacon ‖ subject ‖ round ‖ member)``."""
    barred = {subject, *exclude}
    eligible = sorted({m for m in members if m not in barred})
    eligible.sort(key=lambda m: _rank(beacon, subject, round_, m))
    return eligible[:k]


def eligibility_mix(eligible: Iterable[str], sampling: dict[str, float]) -> bytes:
    """The digest of a round's published inputs (who may verify, each member's chance to be checked).

    It is published with the commitment one round ahead, so it is fixed before the round's reveal and
    becomes the beacon's ``mix``: the coordinator cannot change who may sit on a panel after it knows
    how the draw would fall.
    """
    body = {"eligible": sorted(set(eligible)), "sampling": {k: float(v) for k, v in sorted(sampling.items())}}
    return hashlib.sha256(_MIX + cbor.dumps(body)).digest()


def drawn(beacon: bytes, node: str, round_: int, probability: float) -> bool:
    """Whether ``node`` is a subject of ``round_``: ``H(beacon ‖ node ‖ round) / 2^64 < probability``."""
    if probability >= 1.0:
        return True
    digest = hashlib.sha256(_DRAW + _lp(beacon, node.encode(), round_.to_bytes(8, "big"))).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < probability


class BeaconError(ValueError):
    """A published beacon does not follow from the one before it."""


def round_panels(previous: Beacon, current: Beacon, k: int = 5) -> dict[str, list[str]]:
    """Recompute a round's subjects and their panels from the two published beacons alone.

    ``previous`` committed the secret, the eligible verifiers and the sampling chances; ``current``
    reveals the secret and lists the candidates (members online with something to check). Anyone can
    run this; a coordinator that challenged or seated anyone else is caught by it.
    """
    if current.round != previous.round + 1:
        raise BeaconError(f"round {current.round} does not follow round {previous.round}")
    if not verify_reveal(previous.commit_next, current.reveal, current.round):
        raise BeaconError(f"round {current.round}'s reveal does not match the commitment")
    mix = eligibility_mix(previous.eligible_next, dict(previous.sampling_next))
    if mix != current.mix:
        raise BeaconError(f"round {current.round}'s mix is not the digest of the committed inputs")
    value = beacon_value(current.reveal, current.round, mix)
    sampling = dict(previous.sampling_next)
    subjects = [
        c for c in sorted(set(current.candidates)) if drawn(value, c, current.round, sampling.get(c, 1.0))
    ]
    return {s: select_verifiers(value, s, current.round, previous.eligible_next, k=k) for s in subjects}


def tolerated_faults(n: int) -> int:
    """How many faulty verifiers a panel of ``n`` tolerates: ``(n - 1) // 3``."""
    return max(0, (n - 1) // 3)


def quorum_size(n: int) -> int:
    """Agreeing votes needed to decide with ``n`` verifiers: ``2f + 1``."""
    return 2 * tolerated_faults(n) + 1


class Outcome(enum.StrEnum):
    """What a panel decided."""

    ACCEPT = "accept"
    REJECT = "reject"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True, slots=True)
class Tally:
    """The result of one panel's votes."""

    outcome: Outcome
    accepts: int
    rejects: int
    quorum: int
    dissenters: tuple[str, ...]
    equivocators: tuple[str, ...]
    missing: tuple[str, ...]
    ignored: int
    measured_rate: float = 0.0  # median rate among the votes on the winning side


def tally(
    votes: Iterable[VerificationVote],
    verifiers: Sequence[str],
    *,
    subject: str | None = None,
    round_: int | None = None,
) -> Tally:
    """Count the selected verifiers' votes (one each) and decide by a ``2f + 1`` quorum."""
    panel = set(verifiers)
    seen: dict[str, VerificationVote] = {}
    equivocators: set[str] = set()
    ignored = 0
    for vote in votes:
        if vote.voter not in panel or (subject is not None and vote.subject != subject):
            ignored += 1
            continue
        if round_ is not None and vote.round != round_:
            ignored += 1
            continue
        first = seen.get(vote.voter)
        if first is None:
            seen[vote.voter] = vote
        elif first.accept != vote.accept:
            equivocators.add(vote.voter)
        else:
            ignored += 1  # a duplicate of the same verdict
    counted = {v: vote for v, vote in seen.items() if v not in equivocators}
    accepts = sum(1 for vote in counted.values() if vote.accept)
    rejects = len(counted) - accepts
    quorum = quorum_size(len(panel))
    if accepts >= quorum:
        outcome = Outcome.ACCEPT
    elif rejects >= quorum:
        outcome = Outcome.REJECT
    else:
        outcome = Outcome.INCONCLUSIVE
    dissenters: list[str] = []
    rates: list[float] = []
    if outcome is not Outcome.INCONCLUSIVE:
        winning = outcome is Outcome.ACCEPT
        dissenters = sorted(v for v, vote in counted.items() if vote.accept != winning)
        rates = sorted(vote.measured_rate for vote in counted.values() if vote.accept == winning)
    return Tally(
        outcome=outcome,
        accepts=accepts,
        rejects=rejects,
        quorum=quorum,
        dissenters=tuple(dissenters),
        equivocators=tuple(sorted(equivocators)),
        missing=tuple(sorted(panel - seen.keys())),
        ignored=ignored,
        measured_rate=rates[len(rates) // 2] if rates else 0.0,
    )


def needs_audit(result: Tally) -> bool:
    """Whether only an objective re-check may settle this panel: anything but a unanimous accept."""
    return result.outcome is not Outcome.ACCEPT or bool(result.dissenters) or bool(result.equivocators)
