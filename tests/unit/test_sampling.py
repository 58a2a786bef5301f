"""Adaptive sampling: always while the record is short, ~threshold/run after, reset by failure or flag."""

from __future__ import annotations

import random

import pytest

from prsm_edge.errors import LocalError
from prsm_edge.protocol.sampling import AdaptiveSampler


def test_new_nodes_are_always_checked_until_threshold() -> None:
    s = AdaptiveSampler(threshold=10, floor=0.05)
    rng = random.Random(1)
    for _ in range(10):
        assert s.probability("n1") == 1.0 and s.should_verify("n1", rng)
        s.record("n1", True)
    assert s.probability("n1") == pytest.approx(1.0)  # run 10: 10/10
    s.record("n1", True)
    assert s.probability("n1") == pytest.approx(10 / 11)
    for _ in range(189):
        s.record("n1", True)
    assert s.record_of("n1").run == 200
    assert s.probability("n1") == pytest.approx(0.05)
    for _ in range(300):
        s.record("n1", True)
    assert s.probability("n1") == pytest.approx(0.05)  # never below the floor


def test_failure_resets_and_flag_forces() -> None:
    s = AdaptiveSampler(threshold=10, floor=0.05, forced_checks=3)
    for _ in range(100):
        s.record("n1", True)
    assert s.probability("n1") == pytest.approx(0.1)
    s.record("n1", False)
    assert s.record_of("n1").run == 0 and s.record_of("n1").failures == 1
    assert s.probability("n1") == 1.0
    for _ in range(100):
        s.record("n2", True)
    s.flag("n2")
    assert s.record_of("n2").run == 0 and s.record_of("n2").forced == 3
    for _ in range(3):
        assert s.probability("n2") == 1.0
        s.record("n2", True)
    assert s.record_of("n2").forced == 0


def test_sampling_rate_matches_probability() -> None:
    s = AdaptiveSampler(threshold=10, floor=0.05)
    for _ in range(50):
        s.record("n1", True)
    rng = random.Random(42)
    hits = sum(s.should_verify("n1", rng) for _ in range(5000))
    assert 0.17 < hits / 5000 < 0.23  # p = 10/50
    s.forget("n1")
    assert s.record_of("n1").run == 0


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(LocalError):
        AdaptiveSampler(threshold=0)
    with pytest.raises(LocalError):
        AdaptiveSampler(floor=0.0)
