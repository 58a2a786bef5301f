"""Benchmark proofs: honest provers pass, overclaimers are late, junk fillers are caught at the rate the
hypergeometric sampling predicts, forged paths and wrong salts fail, and checking costs k/segments."""

from __future__ import annotations

import math
import random
import time

import msgspec
import pytest
from nacl.signing import SigningKey

from prsm_edge.protocol import merkle, proofs
from prsm_edge.protocol.envelope import Signer, open_envelope
from prsm_edge.protocol.messages import BenchmarkChallenge, SegmentOpening
from prsm_edge.protocol.proofs import Issued, VerdictReason

NOW = 1_700_000_000_000


def issue(rng: random.Random, *, workload: str = "cpu", rate: float = 2_000.0, segments: int = 32) -> Issued:
    # 2000 units/s for 200 ms over 32 segments: ~12 units a segment, fast in tests.
    return proofs.make_challenge(
        "nV", "nP", workload, rate, rng, NOW, segments=segments, target_ms=200, network_ms=50
    )


def answer(
    ch: BenchmarkChallenge, results: list[bytes], salt: bytes
) -> tuple[proofs.BenchmarkProof, proofs.ProofOpening]:
    root = merkle.root_of(results)
    proof = proofs.make_proof(ch, root, elapsed_ms=100)
    opening = proofs.open_segments(ch, results, proofs.open_indices(ch, root, salt), salt)
    return proof, opening


def test_challenge_sizing_and_deadline() -> None:
    ch, salt = proofs.make_challenge(
        "nV", "nP", "cpu", 1_000_000.0, random.Random(1), NOW, segments=256, target_ms=2_000
    )
    assert ch.segment_size == round(1_000_000 * 2 / 256)
    assert proofs.expected_ms(ch) == pytest.approx(2_000, rel=0.01)
    assert ch.deadline_ms == NOW + math.ceil(proofs.expected_ms(ch) * 1.5) + 250
    assert ch.open_commit == proofs.salt_commitment(salt) and ch.issued_ms == NOW
    other, _ = proofs.make_challenge("nV", "nP", "cpu", 1_000_000.0, random.Random(2), NOW)
    assert other.nonce != ch.nonce and other.challenge_id != ch.challenge_id
    with pytest.raises(proofs.ProofError):
        proofs.make_challenge("nV", "nP", "gpu-magic", 1.0, random.Random(1), NOW)
    with pytest.raises(proofs.ProofError):
        proofs.make_challenge("nV", "nP", "cpu", 0.0, random.Random(1), NOW)


@pytest.mark.parametrize("workload", ["cpu", "memory"])
def test_honest_prover_passes(workload: str) -> None:
    ch, salt = issue(random.Random(7), workload=workload, rate=20_000.0)
    _root, results = proofs.prove(ch)
    assert len(results) == ch.segments and len(set(results)) == ch.segments
    proof, opening = answer(ch, results, salt)
    verdict = proofs.check(ch, proof, opening, received_at_ms=NOW + 150)
    assert verdict.accepted, verdict
    assert verdict.reason is VerdictReason.OK and len(verdict.checked) == ch.opens
    assert verdict.measured_rate == pytest.approx(proofs.total_work(ch) * 1000 / 150)
    # The opening survives the wire (msgspec round trip) and still verifies.
    wire = msgspec.msgpack.decode(msgspec.msgpack.encode(opening), type=proofs.ProofOpening)
    assert proofs.check(ch, proof, wire, NOW + 150).accepted


def test_workloads_are_deterministic_and_nonce_bound() -> None:
    a = proofs.run_segment("memory", b"n" * 32, 3, 4096)
    assert a == proofs.run_segment("memory", b"n" * 32, 3, 4096)
    assert a != proofs.run_segment("memory", b"m" * 32, 3, 4096)
    assert a != proofs.run_segment("memory", b"n" * 32, 4, 4096)
    assert a != proofs.run_segment("memory", b"n" * 32, 3, 4160)
    assert proofs.run_segment("cpu", b"n" * 32, 0, 5) != proofs.run_segment("cpu", b"n" * 32, 0, 6)
    with pytest.raises(proofs.ProofError):
        proofs.run_segment("memory", b"n" * 32, 0, 16)


def test_overclaimer_misses_its_deadline() -> None:
    ch, salt = issue(random.Random(3), rate=2_000.0)
    _, results = proofs.prove(ch)
    proof, opening = answer(ch, results, salt)
    # The node really runs at 2000 / 2.5 units/s: it needs 2.5x the expected time.
    arrival = NOW + math.ceil(proofs.expected_ms(ch) * 2.5) + 50
    verdict = proofs.check(ch, proof, opening, arrival)
    assert not verdict.accepted and verdict.reason is VerdictReason.LATE
    assert verdict.measured_rate < ch.claimed_rate / 2
    # The same answer at the deadline passes, unless the measured rate is held against the claim.
    assert proofs.check(ch, proof, opening, ch.deadline_ms).accepted
    # A 1.3x overclaim fits inside the slack but not under a minimum measured rate.
    inside = NOW + math.ceil(proofs.expected_ms(ch) * 1.3)
    assert proofs.check(ch, proof, opening, inside).accepted
    slow = proofs.check(ch, proof, opening, inside, min_rate_ratio=0.8)
    assert not slow.accepted and slow.reason is VerdictReason.SLOW
    honest = NOW + math.ceil(proofs.expected_ms(ch) * 1.15)
    assert proofs.check(ch, proof, opening, honest, min_rate_ratio=0.8).accepted


def cheat_results(ch: BenchmarkChallenge, fraction: float, rng: random.Random) -> list[bytes]:
    done = set(rng.sample(range(ch.segments), round(fraction * ch.segments)))
    return [
        proofs.run_segment(ch.workload, ch.nonce, i, ch.segment_size) if i in done else rng.randbytes(32)
        for i in range(ch.segments)
    ]


def test_junk_filler_is_caught_at_the_predicted_rate() -> None:
    rng = random.Random(2024)
    trials, fraction = 300, 0.5
    caught = 0
    for _ in range(trials):
        ch, salt = issue(rng, rate=500.0, segments=32)
        proof, opening = answer(ch, cheat_results(ch, fraction, rng), salt)
        verdict = proofs.check(ch, proof, opening, NOW + 10)
        if not verdict.accepted:
            assert verdict.reason is VerdictReason.WRONG_RESULT
            caught += 1
    n, k, good = 32, 4, 16
    p_pass = math.comb(good, k) / math.comb(n, k)  # 0.0519..., below f^k = 0.0625
    expected = trials * (1 - p_pass)
    sd = math.sqrt(trials * p_pass * (1 - p_pass))
    assert abs(caught - expected) <= 4 * sd, (caught, expected)
    assert caught / trials >= 1 - fraction**k - 0.03


def test_forged_path_and_tampering_are_rejected() -> None:
    ch, salt = issue(random.Random(11))
    _, results = proofs.prove(ch)
    proof, opening = answer(ch, results, salt)
    first = opening.openings[0]
    forged_path = [bytes(32), *first.path[1:]]
    forged = msgspec.structs.replace(
        opening,
        openings=[
            SegmentOpening(index=first.index, result=first.result, path=forged_path),
            *opening.openings[1:],
        ],
    )
    assert proofs.check(ch, proof, forged, NOW + 10).reason is VerdictReason.BAD_PATH
    # A wrong result with a path that fits it (the prover committed to junk) fails re-execution.
    junk = list(results)
    junk[first.index] = b"\x00" * 32
    junk_proof = proofs.make_proof(ch, merkle.root_of(junk), 1)
    junk_open = proofs.open_segments(ch, junk, proofs.open_indices(ch, junk_proof.root, salt), salt)
    v = proofs.check(ch, junk_proof, junk_open, NOW + 10)
    assert (not v.accepted) == (first.index in proofs.open_indices(ch, junk_proof.root, salt))
    # Opening other segments than the root and salt select.
    others = [i for i in range(ch.segments) if i not in proofs.open_indices(ch, proof.root, salt)][: ch.opens]
    wrong_set = proofs.open_segments(ch, results, others, salt)
    assert proofs.check(ch, proof, wrong_set, NOW + 10).reason is VerdictReason.WRONG_SEGMENTS
    # A salt the verifier did not commit to (the prover choosing its own indices).
    own = proofs.open_segments(ch, results, proofs.open_indices(ch, proof.root, b"mine"), b"mine")
    assert proofs.check(ch, proof, own, NOW + 10).reason is VerdictReason.BAD_SALT
    # A proof for another node.
    stolen = msgspec.structs.replace(proof, node="nX")
    assert proofs.check(ch, stolen, opening, NOW + 10).reason is VerdictReason.MISMATCH


def test_open_indices_are_distinct_and_bound_to_root_and_salt() -> None:
    ch, salt = issue(random.Random(5), segments=64)
    root = bytes(range(32))
    idx = proofs.open_indices(ch, root, salt)
    assert len(idx) == len(set(idx)) == ch.opens and all(0 <= i < 64 for i in idx)
    assert idx == proofs.open_indices(ch, root, salt)
    by_root = {tuple(proofs.open_indices(ch, bytes([i]) * 32, salt)) for i in range(8)}
    by_salt = {tuple(proofs.open_indices(ch, root, bytes([i]))) for i in range(8)}
    assert len(by_root) == len(by_salt) == 8
    tiny = msgspec.structs.replace(ch, segments=2, opens=4)
    assert proofs.open_indices(tiny, root, salt) == [0, 1]


def test_verifier_cost_is_a_small_share_of_prover_cost() -> None:
    ch, salt = proofs.make_challenge(
        "nV", "nP", "cpu", 3_000_000.0, random.Random(9), NOW, segments=256, target_ms=300
    )
    t0 = time.process_time()
    root, results = proofs.prove(ch)
    prover = time.process_time() - t0
    proof = proofs.make_proof(ch, root, 1)
    opening = proofs.open_segments(ch, results, proofs.open_indices(ch, root, salt), salt)
    t0 = time.process_time()
    assert proofs.check(ch, proof, opening, NOW + 10).accepted
    verifier = time.process_time() - t0
    assert verifier / prover < 0.05, (verifier, prover)  # 4/256 = 1.6 % plus paths; loose for noise


def test_a_large_opening_fits_the_signed_envelope() -> None:
    ch, salt = proofs.make_challenge(
        "nV", "nP", "cpu", 2048.0, random.Random(4), NOW, segments=2048, opens=32, target_ms=1_000
    )
    assert ch.segment_size == 1
    root, results = proofs.prove(ch)
    opening = proofs.open_segments(ch, results, proofs.open_indices(ch, root, salt), salt)
    signer = Signer(SigningKey(bytes(32)))
    for msg in (ch, proofs.make_proof(ch, root, 5), opening):
        got = open_envelope(signer.seal(msg, NOW)).message
        assert got == msgspec.structs.replace(msg, seq=got.seq, ts=NOW)
    assert isinstance(got, proofs.ProofOpening) and len(got.openings) == 32
    assert proofs.check(ch, proofs.make_proof(ch, root, 5), got, NOW + 10).accepted
