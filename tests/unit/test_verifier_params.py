"""Each workload is challenged and judged with its own ``proofs.PARAMS`` unless the operator overrides a
value in ``VerifierConfig`` (then for every workload)."""

from __future__ import annotations

import random

import pytest

from prsm_edge.protocol import proofs
from prsm_edge.protocol.group import Member, Publish
from prsm_edge.protocol.ledger import Ledger
from prsm_edge.protocol.messages import NodeCommand, ResourceSpec, ResourceType
from prsm_edge.protocol.verifier import RunCheck, Verifier, VerifierConfig, VerifierEffect
from tests.unit.test_proofs import answer
from tests.unit.test_verifier import T0


def table(kind: str, rate: float) -> ResourceSpec:
    rtype = ResourceType.STORAGE_MEMORY if kind == "memory" else ResourceType.STORAGE_PERSISTENT
    return ResourceSpec(type=rtype, capacity=1, unit="GB", details={proofs.RATE_KEYS[kind]: rate})


def challenged(kind: str, cfg: VerifierConfig) -> tuple[Verifier, dict[str, Member], list[VerifierEffect]]:
    v = Verifier(cfg, Ledger(), secret=bytes(32))
    names = ["a", "p1", "p2", "p3"]
    members = {n: Member(n, b"", 0, "rpi4", f"fp-{n}", [table(kind, 1e6)], joined_ms=T0) for n in names}
    v.opening_beacon(members.values())
    effects = v.start_round(list(members.values()), T0, random.Random(3))
    return v, members, effects


def verbs(effects: list[VerifierEffect], verb: str) -> list[NodeCommand]:
    return [
        e.message
        for e in effects
        if isinstance(e, Publish) and isinstance(e.message, NodeCommand) and e.message.verb == verb
    ]


def test_a_live_defaults_storage_challenge_uses_storages_target() -> None:
    """Fails on the old code: the defaults were CPU's (3 s target) for every workload."""
    cfg = VerifierConfig(site="s", group="g", coordinator="coord", spread=0.0, panel=0, max_open_checks=1)
    v, _, _ = challenged("storage", cfg)
    [check] = v.checks.values()
    ch, p = check.challenge, proofs.PARAMS["storage"]
    assert ch.workload == "storage"
    assert p.target_ms != proofs.PARAMS["cpu"].target_ms  # the point of the test
    assert proofs.expected_ms(ch) == pytest.approx(p.target_ms, rel=0.01)
    assert ch.deadline_ms - ch.issued_ms == pytest.approx(p.target_ms * p.slack + p.network_ms, abs=50)


def test_a_memory_check_is_judged_with_memorys_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails on the old code: memory was judged with CPU's min_rate_ratio (by the coordinator's re-check
    and the panel) and its deadline set from CPU's slack."""
    mem = proofs.Params(
        opens=4, target_ms=2_000, slack=1.5, min_rate_ratio=0.5, network_ms=700, max_bytes=1 << 30
    )
    monkeypatch.setitem(proofs.PARAMS, "memory", mem)
    cfg = VerifierConfig(site="s", group="g", coordinator="coord", spread=0.0, panel=3, max_open_checks=1)
    v, members, effects = challenged("memory", cfg)
    [check] = v.checks.values()
    ch = check.challenge
    assert ch.opens == 4
    assert proofs.expected_ms(ch) == pytest.approx(2_000, rel=0.01)
    assert ch.deadline_ms - ch.issued_ms == pytest.approx(2_000 * 1.5 + 700, abs=50)
    panel = verbs(effects, "verify")
    assert panel and all(cmd.args["min_rate_ratio"] == 0.5 for cmd in panel)
    # The coordinator's re-check is run with memory's ratio too.
    _, results = proofs.prove(ch)
    proof, opening = answer(ch, results, check.salt)
    v.on_proof(members[ch.node], proof, T0 + 100)
    [run] = [e for e in v.on_opening(opening, T0 + 200) if isinstance(e, RunCheck)]
    assert run.min_rate_ratio == 0.5
    verdict = run.run()
    assert verdict.accepted, verdict


def test_an_operator_override_applies_to_every_workload() -> None:
    cfg = VerifierConfig(site="s", group="g", coordinator="c", target_ms=50, min_rate_ratio=0.0)
    for workload in ("cpu", "memory", "storage"):
        p = cfg.params(workload)
        assert (p.target_ms, p.min_rate_ratio) == (50, 0.0)
        assert p.slack == proofs.PARAMS[workload].slack and p.max_bytes == proofs.PARAMS[workload].max_bytes
