"""Reputation decays toward its prior; levels are held only on current evidence, as a ladder."""

from __future__ import annotations

import pytest

from prsm_edge.errors import LocalError
from prsm_edge.protocol.messages import TRUST_SCORE, VerificationLevel
from prsm_edge.protocol.reputation import DAY_MS, Dimension, LevelPolicy, Reputation, TrustEvidence

T0 = 1_700_000_000_000
HOUR = 3_600_000


def test_observations_move_scores_and_decay_halves_the_distance() -> None:
    rep = Reputation(T0, half_life_ms=7 * DAY_MS, alpha=0.5)
    assert rep.score(T0) == pytest.approx(0.5)
    rep.observe(Dimension.VERIFICATION, 1.0, T0)
    assert rep.value(Dimension.VERIFICATION, T0) == pytest.approx(0.75)
    assert rep.value(Dimension.VERIFICATION, T0 + 7 * DAY_MS) == pytest.approx(0.625)
    assert rep.value(Dimension.VERIFICATION, T0 + 70 * DAY_MS) == pytest.approx(0.5, abs=1e-3)
    assert rep.score(T0) == pytest.approx(0.5 + 0.4 * 0.25)


def test_failures_weigh_more_and_all_dimensions_count() -> None:
    good, bad = Reputation(T0), Reputation(T0)
    for i in range(20):
        now = T0 + i * HOUR
        good.observe_check(True, now)
        good.observe_uptime(0.99, 0.95, now)
        good.observe_vote(True, now)
        good.observe_response(True, now)
        bad.observe_check(i % 2 == 0, now)
        bad.observe_uptime(0.5, 0.95, now)
        bad.observe_vote(False, now)
        bad.observe_response(False, now)
    now = T0 + 20 * HOUR
    assert good.score(now) > 0.9
    assert bad.score(now) < 0.3
    assert bad.value(Dimension.VERIFICATION, now) < 0.5  # half failed, but failures weigh twice
    assert set(good.breakdown(now)) == {d.value for d in Dimension}
    with pytest.raises(LocalError):
        good.observe(Dimension.UPTIME, float("nan"), now)


def test_level_ladder_requires_current_evidence() -> None:
    ev = TrustEvidence()
    assert ev.level(T0) is VerificationLevel.SELF_REPORTED and ev.trust_score(T0) == 0.6
    ev.record_proof(True, T0)  # a proof without a quorum does not skip peer verification
    assert ev.level(T0) is VerificationLevel.SELF_REPORTED
    ev.record_quorum(True, T0)
    assert ev.level(T0) is VerificationLevel.BENCHMARKED
    ev.record_attestation(True, T0)  # attestation without stake does not skip the stake rung
    assert ev.level(T0) is VerificationLevel.BENCHMARKED
    ev.record_stake(100, 100)
    assert ev.level(T0) is VerificationLevel.HARDWARE_ATTESTED
    assert ev.trust_score(T0) == TRUST_SCORE[VerificationLevel.HARDWARE_ATTESTED] == 0.95
    ev.record_stake(99, 100)
    assert ev.level(T0) is VerificationLevel.BENCHMARKED


def test_levels_expire_and_are_lost_on_failure() -> None:
    ev = TrustEvidence()
    ev.record_quorum(True, T0)
    ev.record_proof(True, T0)
    ev.record_stake(10, 5)
    policy = LevelPolicy(peer_validity_ms=24 * HOUR, proof_validity_ms=6 * HOUR)
    assert ev.level(T0 + 6 * HOUR, policy) is VerificationLevel.ECONOMICALLY_STAKED
    assert ev.level(T0 + 6 * HOUR + 1, policy) is VerificationLevel.PEER_VERIFIED
    assert ev.level(T0 + 24 * HOUR + 1, policy) is VerificationLevel.SELF_REPORTED
    ev.record_proof(False, T0 + HOUR)
    # The quorum is still fresh, but the resource's latest check failed: no peer_verified for it.
    assert ev.level(T0 + HOUR, policy) is VerificationLevel.SELF_REPORTED
    ev.record_proof(True, T0 + HOUR + 1)
    assert ev.level(T0 + HOUR + 1, policy) is VerificationLevel.ECONOMICALLY_STAKED
    ev.record_quorum(False, T0 + 2 * HOUR)
    assert ev.level(T0 + 2 * HOUR, policy) is VerificationLevel.SELF_REPORTED
    assert [what for _, what in ev.history][-3:] == ["proof failed", "proof passed", "quorum rejected"]
