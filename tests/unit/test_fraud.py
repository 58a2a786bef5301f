"""Fraud detectors flag with evidence, and a flag makes the sampler check the node at once."""

from __future__ import annotations

import random

from prsm_edge.protocol import fraud
from prsm_edge.protocol.fraud import FlagKind
from prsm_edge.protocol.sampling import AdaptiveSampler


def test_jump_against_own_history() -> None:
    assert fraud.jump("n1", [100, 104, 98, 101], 140) == []
    [flag] = fraud.jump("n1", [100, 104, 98, 101], 200)
    assert flag.kind is FlagKind.JUMP and flag.evidence["median"] == 100.5
    assert flag.score == 200 / 100.5
    assert fraud.jump("n1", [100, 100], 1000) == []  # too little history to judge


def test_cohort_robust_z_flags_only_overclaims() -> None:
    rng = random.Random(3)
    claims = {f"pi{i}": ("raspberry_pi_4", rng.uniform(85, 115)) for i in range(40)}
    claims["pi_fast"] = ("raspberry_pi_4", 260.0)
    claims["pi_slow"] = ("raspberry_pi_4", 20.0)  # under-claiming is not fraud
    claims["gpu0"] = ("x86_gpu", 5000.0)  # a cohort of one is not judged
    flags = fraud.cohort_outliers(claims)
    assert [(f.node, f.kind) for f in flags] == [("pi_fast", FlagKind.COHORT)]
    assert flags[0].score > 3.5 and flags[0].evidence["device_class"] == "raspberry_pi_4"
    # A cohort of identical devices does not flag a node that differs by noise.
    same = {f"n{i}": ("jetson", 100.0) for i in range(10)} | {"n_noise": ("jetson", 102.0)}
    assert fraud.cohort_outliers(same) == []
    assert fraud.robust_z(100.0, [100.0] * 5) == 0.0


def test_duplicate_fingerprints_flag_every_holder() -> None:
    prints = {"a": "gpu-123", "b": "gpu-123", "c": "gpu-123", "d": "gpu-999", "e": ""}
    flags = fraud.duplicate_fingerprints(prints)
    assert sorted(f.node for f in flags) == ["a", "b", "c"]
    by_node = {f.node: f for f in flags}
    assert by_node["a"].evidence == {"fingerprint": "gpu-123", "others": ["b", "c"]}
    assert all(f.kind is FlagKind.DUPLICATE_FINGERPRINT and f.score == 3.0 for f in flags)


def test_measured_below_claimed() -> None:
    assert fraud.measured_below_claimed("n1", 1000.0, 800.0) == []
    [flag] = fraud.measured_below_claimed("n1", 1000.0, 400.0, challenge_id="c9")
    assert flag.kind is FlagKind.MEASURED_BELOW_CLAIMED and flag.evidence["challenge_id"] == "c9"


def test_digest_binds_the_evidence_and_flags_raise_sampling() -> None:
    [a] = fraud.measured_below_claimed("n1", 1000.0, 400.0)
    [b] = fraud.measured_below_claimed("n1", 1000.0, 401.0)
    [c] = fraud.measured_below_claimed("n2", 1000.0, 400.0)
    assert len({a.digest, b.digest, c.digest}) == 3
    assert a.digest == fraud.measured_below_claimed("n1", 1000.0, 400.0)[0].digest
    sampler = AdaptiveSampler(threshold=10, floor=0.05)
    for _ in range(200):
        sampler.record("n1", True)
    assert sampler.probability("n1") == 0.05
    assert fraud.raise_sampling(sampler, [a]) == {"n1"}
    assert sampler.probability("n1") == 1.0
