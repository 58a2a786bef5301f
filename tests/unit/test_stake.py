"""Required stake from its three factors; slashing by kind, bound to evidence, written once to the ledger."""

from __future__ import annotations

import pytest

from prsm_edge.errors import LocalError
from prsm_edge.protocol import stake
from prsm_edge.protocol.ledger import Ledger
from prsm_edge.protocol.messages import MICRO, ResourceSpec, ResourceType
from prsm_edge.protocol.stake import SlashKind

T = 1_700_000_000_000


def spec(kind: ResourceType, capacity: float, unit: str) -> ResourceSpec:
    return ResourceSpec(type=kind, capacity=capacity, unit=unit)


def test_capacity_multiplier_counts_reference_devices() -> None:
    pi = [spec(ResourceType.COMPUTE_CPU, 2, "cores"), spec(ResourceType.STORAGE_MEMORY, 2, "GB")]
    assert stake.capacity_multiplier(pi) == 1.0  # 0.5 + 0.25, floored at one reference device
    gpu_host = [
        spec(ResourceType.COMPUTE_CPU, 16, "cores"),
        spec(ResourceType.COMPUTE_GPU, 2, "gpus"),
        spec(ResourceType.STORAGE_MEMORY, 64, "GB"),
    ]
    assert stake.capacity_multiplier(gpu_host) == pytest.approx(4 + 2 + 8)
    assert stake.capacity_multiplier([spec(ResourceType.COMPUTE_GPU, 1e9, "gpus")]) == 100.0
    assert stake.capacity_multiplier([spec(ResourceType.COMPUTE_CPU, float("nan"), "cores")]) == 1.0


def test_risk_factor_and_required_stake() -> None:
    assert stake.risk_factor(1.0) == 1.0
    assert stake.risk_factor(0.5) == 2.0
    assert stake.risk_factor(0.5, open_flags=2) == 3.0
    assert stake.risk_factor(0.0, open_flags=10) == 5.0
    req = stake.required_stake([spec(ResourceType.COMPUTE_GPU, 3, "gpus")], reputation=0.75)
    assert (req.capacity_multiplier, req.risk_factor) == (3.0, 1.5)
    assert req.required_micro == 10 * MICRO * 3 * 1.5 == req.base_micro * 4.5


def test_slash_percentages_and_evidence() -> None:
    s = 1000 * MICRO
    a = stake.slash("n1", SlashKind.AVAILABILITY, s, {"uptime": 0.80, "commitment": 0.95}, T)
    p = stake.slash("n1", SlashKind.PERFORMANCE, s, {"challenge_id": "c1", "reason": "late"}, T)
    f = stake.slash("n1", SlashKind.FRAUD, s, {"fingerprint": "gpu-1", "others": ["n2"]}, T)
    assert (a.amount_micro, p.amount_micro, f.amount_micro) == (50 * MICRO, 100 * MICRO, 500 * MICRO)
    assert len({a.evidence_digest, p.evidence_digest, f.evidence_digest}) == 3
    assert a.key.startswith("slash:availability:n1:")
    again = stake.slash("n1", SlashKind.PERFORMANCE, s, {"challenge_id": "c1", "reason": "late"}, T + 5)
    assert again.key == p.key  # the same evidence is the same slash
    assert stake.availability_violated(0.90, 0.95) and not stake.availability_violated(0.96, 0.95)
    with pytest.raises(LocalError):
        stake.slash("n1", SlashKind.FRAUD, -1, {}, T)


def test_apply_slash_is_idempotent_and_bounded_by_stake() -> None:
    led = Ledger()
    led.append("n1", 100 * MICRO, "credit", "earn:1", T)
    led.append("n1", 40 * MICRO, "stake", "stake:1", T)
    rec = stake.slash("n1", SlashKind.FRAUD, led.stake("n1"), {"challenge_id": "c7"}, T)
    entry = stake.apply_slash(led, rec)
    assert entry is not None and entry.kind == "slash" and entry.evidence == rec.evidence_digest
    assert led.stake("n1") == 20 * MICRO and led.balance("n1") == 60 * MICRO
    assert stake.apply_slash(led, rec) == entry and led.stake("n1") == 20 * MICRO
    assert stake.apply_slash(Ledger(), rec) is None  # nothing staked, nothing to take
