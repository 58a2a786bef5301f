"""Benchmark proofs: a node proves the speed it claims by a nonce-seeded workload it cannot precompute.

Theory of operation.

1. The verifier draws a fresh 32-byte ``nonce`` and a secret ``salt`` and sends a
   :class:`~prsm_edge.protocol.messages.BenchmarkChallenge` (:func:`make_challenge`). The work is split in
   ``segments`` equal segments of ``segment_size`` work units, sized so that a node running at its
   ``claimed_rate`` (work units per second) needs about ``target_ms``; the deadline is the issue time plus
   that expected time × ``slack`` plus a network allowance.
2. The node runs every segment (:func:`run_segment`, a pure function of workload, nonce, index and size),
   builds a Merkle tree over the results and sends the root in a
   :class:`~prsm_edge.protocol.messages.BenchmarkProof` before the deadline (:func:`prove`).
3. Only then does the verifier reveal ``salt``. The segments to open are
   ``H(nonce ‖ root ‖ salt)`` → ``opens`` distinct indices (:func:`open_indices`): Fiat–Shamir over the
   committed root, salted by a value the prover learns only after committing, so it can neither know the
   indices in advance nor grind junk roots until they fall on segments it did compute. The challenge
   carries ``open_commit = H(salt)``, so anyone can check afterwards that the verifier did not pick the
   indices by hand.
4. The node answers with a :class:`~prsm_edge.protocol.messages.ProofOpening` (:func:`open_segments`):
   each opened result and its Merkle path. :func:`check` re-executes only those segments, so checking
   costs ``opens / segments`` of proving (4 of 256 ≈ 1.6 %).

A node that overclaims its speed by more than the slack misses its own deadline (``late``); one inside
the slack is caught by its measured rate (``slow``, with ``min_rate_ratio``). Keep ``target_ms`` well
above the network round trip, which the verifier's clock cannot tell from work. One that computes a
fraction ``f`` of the segments and fills the rest with junk passes only if every opened index falls on a
computed one, probability ``C(f·n, k) / C(n, k) ≤ f^k``.

Workloads (work unit in brackets):

* ``cpu`` [one SHA-256]: iterate SHA-256 ``segment_size`` times starting from ``H(nonce ‖ i)``.
* ``memory`` [one byte of buffer]: fill a ``segment_size``-byte buffer from SHAKE-256 of
  ``H(nonce ‖ i)``, then do ``segment_size / 64`` rounds of data-dependent 32-byte reads and writes over
  it (each position comes from the running hash, so none can be predicted), and hash the state and the
  whole buffer. SHAKE output has no random access, so a prover that does not keep the buffer must
  regenerate its prefix for every read.
"""

from __future__ import annotations

import enum
import hashlib
import math
import random
from dataclasses import dataclass
from typing import Final, NamedTuple

from prsm_edge.errors import LocalError
from prsm_edge.protocol import merkle
from prsm_edge.protocol.messages import BenchmarkChallenge, BenchmarkProof, ProofOpening, SegmentOpening

__all__ = [
    "MIN_SEGMENT_SIZE",
    "WORKLOADS",
    "Issued",
    "ProofError",
    "Verdict",
    "VerdictReason",
    "check",
    "expected_ms",
    "make_challenge",
    "make_proof",
    "measured_rate",
    "open_indices",
    "open_segments",
    "prove",
    "run_segment",
    "salt_commitment",
    "total_work",
]

WORKLOADS: Final = ("cpu", "memory")
MIN_SEGMENT_SIZE: Final[dict[str, int]] = {"cpu": 1, "memory": 64}
MAX_SEGMENTS: Final = 4096
MAX_SEGMENT_SIZE: Final = 1 << 30
_OPEN_DOMAIN: Final = b"prsm-open/v1"
_SALT_DOMAIN: Final = b"prsm-salt/v1"


class ProofError(LocalError):
    """A challenge or workload that cannot be run as asked (unknown workload, impossible sizes)."""


class VerdictReason(enum.StrEnum):
    """Why a proof was accepted or rejected."""

    OK = "ok"
    MISMATCH = "mismatch"  # the proof or opening is for another challenge or node
    LATE = "late"  # the commitment arrived after the deadline
    SLOW = "slow"  # on time, but the measured rate is below ``min_rate_ratio`` × the claimed rate
    BAD_SALT = "bad_salt"  # the opening names a salt the verifier did not commit to
    WRONG_SEGMENTS = "wrong_segments"  # not exactly the segments the root and salt select
    BAD_PATH = "bad_path"  # an opened result is not in the committed tree
    WRONG_RESULT = "wrong_result"  # an opened result is not what the workload gives


@dataclass(frozen=True, slots=True)
class Verdict:
    """The verifier's decision on one proof, with the rate it measured from its own clock."""

    accepted: bool
    reason: VerdictReason
    detail: str = ""
    measured_rate: float = 0.0
    checked: tuple[int, ...] = ()


class Issued(NamedTuple):
    """A challenge to send now, and the salt to reveal once its root has arrived."""

    challenge: BenchmarkChallenge
    salt: bytes


def _seed(nonce: bytes, index: int) -> bytes:
    return hashlib.sha256(nonce + index.to_bytes(4, "big")).digest()


def _cpu(seed: bytes, size: int) -> bytes:
    sha = hashlib.sha256
    h = seed
    for _ in range(size):
        h = sha(h).digest()
    return h


def _memory(seed: bytes, size: int) -> bytes:
    sha = hashlib.sha256
    buf = bytearray(hashlib.shake_256(seed).digest(size))
    span = size - 31
    h = seed
    for _ in range(max(1, size // 64)):
        p = int.from_bytes(h[:8], "big") % span
        h = sha(h + buf[p : p + 32]).digest()
        q = int.from_bytes(h[8:16], "big") % span
        buf[q : q + 32] = h
    return sha(h + sha(buf).digest()).digest()


def run_segment(workload: str, nonce: bytes, index: int, size: int) -> bytes:
    """The result of segment ``index`` of ``workload`` seeded by ``nonce`` (pure, deterministic)."""
    if workload not in MIN_SEGMENT_SIZE:
        raise ProofError(f"unknown workload {workload!r}; known: {', '.join(WORKLOADS)}")
    if not MIN_SEGMENT_SIZE[workload] <= size <= MAX_SEGMENT_SIZE:
        raise ProofError(f"segment size {size} is outside what workload {workload!r} allows")
    if not 0 <= index < 2**32:
        raise ProofError(f"segment index {index} out of range")
    seed = _seed(nonce, index)
    return _cpu(seed, size) if workload == "cpu" else _memory(seed, size)


def total_work(challenge: BenchmarkChallenge) -> int:
    """Work units the whole challenge costs an honest prover."""
    return challenge.segments * challenge.segment_size


def expected_ms(challenge: BenchmarkChallenge) -> float:
    """How long a node running at exactly its claimed rate needs for the whole challenge."""
    return total_work(challenge) * 1000.0 / challenge.claimed_rate


def salt_commitment(salt: bytes) -> bytes:
    """``H(salt)``, carried in the challenge so the opened indices can be checked by anyone."""
    return hashlib.sha256(_SALT_DOMAIN + salt).digest()


def make_challenge(
    verifier: str,
    node: str,
    workload: str,
    claimed_rate: float,
    rng: random.Random,
    now_ms: int,
    *,
    segments: int = 256,
    target_ms: int = 2_000,
    opens: int = 4,
    slack: float = 1.5,
    network_ms: int = 250,
) -> Issued:
    """A fresh challenge sized for ``target_ms`` at ``claimed_rate`` work units per second."""
    if workload not in MIN_SEGMENT_SIZE:
        raise ProofError(f"unknown workload {workload!r}; known: {', '.join(WORKLOADS)}")
    if not (math.isfinite(claimed_rate) and claimed_rate > 0):
        raise ProofError(f"claimed rate must be a positive number, not {claimed_rate!r}")
    if not 1 <= segments <= MAX_SEGMENTS or not 1 <= opens <= segments:
        raise ProofError(f"need 1 <= opens ({opens}) <= segments ({segments}) <= {MAX_SEGMENTS}")
    if target_ms <= 0 or slack < 1.0 or network_ms < 0:
        raise ProofError("target_ms must be positive, slack at least 1 and network_ms not negative")
    size = round(claimed_rate * target_ms / 1000.0 / segments)
    size = min(MAX_SEGMENT_SIZE, max(MIN_SEGMENT_SIZE[workload], size))
    nonce = rng.randbytes(32)
    salt = rng.randbytes(32)
    expected = segments * size * 1000.0 / claimed_rate
    challenge = BenchmarkChallenge(
        challenge_id=hashlib.sha256(nonce).hexdigest()[:16],
        node=node,
        verifier=verifier,
        workload=workload,
        nonce=nonce,
        segments=segments,
        segment_size=size,
        claimed_rate=float(claimed_rate),
        deadline_ms=now_ms + math.ceil(expected * slack) + network_ms,
        issued_ms=now_ms,
        opens=opens,
        open_commit=salt_commitment(salt),
    )
    return Issued(challenge, salt)


def prove(challenge: BenchmarkChallenge) -> tuple[bytes, list[bytes]]:
    """Run every segment; the Merkle root to commit and the results to keep for the opening."""
    results = [
        run_segment(challenge.workload, challenge.nonce, i, challenge.segment_size)
        for i in range(challenge.segments)
    ]
    return merkle.root_of(results), results


def make_proof(challenge: BenchmarkChallenge, root: bytes, elapsed_ms: int) -> BenchmarkProof:
    """The commitment message for ``challenge``."""
    return BenchmarkProof(
        challenge_id=challenge.challenge_id, node=challenge.node, root=root, elapsed_ms=elapsed_ms
    )


def open_indices(challenge: BenchmarkChallenge, root: bytes, salt: bytes) -> list[int]:
    """The ``opens`` distinct segment indices selected by ``H(nonce ‖ root ‖ salt)``, ascending."""
    n = challenge.segments
    k = min(challenge.opens, n)
    if n < 1 or k < 1:
        return []
    seed = hashlib.sha256(_OPEN_DOMAIN + challenge.nonce + root + salt).digest()
    chosen: set[int] = set()
    counter = 0
    while len(chosen) < k:
        block = hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
        for j in range(0, 32, 8):
            # 64-bit draws: the modulo bias (n / 2^64) is negligible.
            chosen.add(int.from_bytes(block[j : j + 8], "big") % n)
            if len(chosen) == k:
                break
    return sorted(chosen)


def open_segments(
    challenge: BenchmarkChallenge, results: list[bytes], indices: list[int], salt: bytes = b""
) -> ProofOpening:
    """The prover's opening of ``indices``: each result with its Merkle path."""
    tree = merkle.MerkleTree(results)
    openings = [SegmentOpening(index=i, result=results[i], path=tree.path(i)) for i in indices]
    return ProofOpening(
        challenge_id=challenge.challenge_id, node=challenge.node, openings=openings, salt=salt
    )


def measured_rate(challenge: BenchmarkChallenge, received_at_ms: int) -> float:
    """Work units per second as the verifier's clock saw it (issue to arrival: a lower bound)."""
    elapsed = max(1, received_at_ms - challenge.issued_ms)
    return total_work(challenge) * 1000.0 / elapsed


def check(
    challenge: BenchmarkChallenge,
    proof: BenchmarkProof,
    opening: ProofOpening,
    received_at_ms: int,
    *,
    min_rate_ratio: float = 0.0,
) -> Verdict:
    """Accept or reject ``proof`` (which arrived at ``received_at_ms``), re-running only opened segments.

    ``min_rate_ratio`` > 0 also rejects a proof whose measured rate (issue to arrival, network included)
    is below that share of the claimed rate: the deadline's slack tolerates noise, this catches the
    overclaims that fit inside it.
    """

    def reject(reason: VerdictReason, detail: str) -> Verdict:
        return Verdict(False, reason, detail, rate)

    rate = measured_rate(challenge, received_at_ms)
    if (proof.challenge_id, proof.node) != (challenge.challenge_id, challenge.node) or (
        opening.challenge_id,
        opening.node,
    ) != (challenge.challenge_id, challenge.node):
        return reject(VerdictReason.MISMATCH, "proof or opening belongs to another challenge or node")
    if received_at_ms > challenge.deadline_ms:
        late = received_at_ms - challenge.deadline_ms
        return reject(VerdictReason.LATE, f"commitment arrived {late} ms after the deadline")
    if challenge.open_commit and salt_commitment(opening.salt) != challenge.open_commit:
        return reject(VerdictReason.BAD_SALT, "the opening's salt does not match the challenge's commitment")
    wanted = open_indices(challenge, proof.root, opening.salt)
    got = [o.index for o in opening.openings]
    if sorted(got) != wanted or len(set(got)) != len(got):
        return reject(VerdictReason.WRONG_SEGMENTS, f"opened {sorted(got)}, the root selects {wanted}")
    for o in opening.openings:
        if not merkle.verify(proof.root, o.index, o.result, o.path, challenge.segments):
            return reject(VerdictReason.BAD_PATH, f"segment {o.index} is not in the committed tree")
    for o in opening.openings:
        if run_segment(challenge.workload, challenge.nonce, o.index, challenge.segment_size) != o.result:
            return reject(VerdictReason.WRONG_RESULT, f"segment {o.index} does not match re-execution")
    if rate < min_rate_ratio * challenge.claimed_rate:
        return Verdict(
            False,
            VerdictReason.SLOW,
            f"measured {rate:.4g}/s is below {min_rate_ratio:g} × the claimed {challenge.claimed_rate:.4g}/s",
            rate,
            tuple(wanted),
        )
    return Verdict(True, VerdictReason.OK, "", rate, tuple(wanted))
