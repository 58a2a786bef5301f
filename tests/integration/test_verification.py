"""Trust but verify on a real broker: honest nodes climb the levels, cheats are caught and slashed."""

from __future__ import annotations

from pathlib import Path

import pytest

from prsm_edge.localgroup import host_group
from prsm_edge.node.agent import Agent
from prsm_edge.node.prover import calibrate_cpu_rate
from prsm_edge.protocol import proofs
from prsm_edge.protocol.messages import MICRO, BenchmarkChallenge, VerificationLevel
from tests.conftest import require_mosquitto
from tests.integration.groupkit import GROUP, SITE, agent_options, eventually, fast_rounds, running

pytestmark = pytest.mark.integration

L = VerificationLevel


def too_slow(ch: BenchmarkChallenge) -> tuple[bytes, list[bytes]]:
    """A device slower than it claims: it cannot finish before the deadline (modelled by waiting, so
    the test's shared CPU stays free for the honest nodes)."""
    import time

    time.sleep(max(0.0, (ch.deadline_ms - ch.issued_ms) / 1000) + 0.5)
    return (
        proofs.prove(ch) if ch.segment_size * ch.segments < 50_000 else (bytes(32), [bytes(32)] * ch.segments)
    )


def junk_after_half(ch: BenchmarkChallenge) -> tuple[bytes, list[bytes]]:
    """A cheat that computes half the segments and commits junk for the rest."""
    from prsm_edge.protocol import merkle

    half = ch.segments // 2
    results = [proofs.run_segment(ch.workload, ch.nonce, i, ch.segment_size) for i in range(half)]
    results += [bytes(32)] * (ch.segments - half)
    return merkle.root_of(results), results


async def test_levels_are_earned_by_honest_nodes_and_lost_by_cheats(tmp_path: Path) -> None:
    require_mosquitto()
    rate = calibrate_cpu_rate(0.1)
    async with host_group(
        tmp_path / "host", site=SITE, group=GROUP, heartbeat_timeout_s=10, verification=fast_rounds()
    ) as host:
        coord = host.coordinator
        url = host.broker.url
        honest = [Agent(agent_options(url, tmp_path / f"h{i}", cpu_rate=rate)) for i in range(3)]
        overclaimer = Agent(agent_options(url, tmp_path / "over", cpu_rate=rate * 20, prover=too_slow))
        faker = Agent(agent_options(url, tmp_path / "fake", cpu_rate=rate, prover=junk_after_half))
        g = coord.group
        async with running(coord, *honest, overclaimer, faker):
            await eventually(lambda: g.online_count == 5, timeout=15, what="all joined")
            # Money first, so stakes can be placed: an operator deposit of 100 FTNS each.
            for a in (*honest, overclaimer, faker):
                coord.deposit(a.node_id, 100 * MICRO, key=f"deposit:{a.node_id}")

            await eventually(
                lambda: all(g.level(a.node_id) is L.BENCHMARKED for a in honest),
                timeout=30,
                what="honest nodes benchmarked",
            )
            for a in honest:
                held = coord.verifier.nodes[a.node_id].evidence.held(_now())
                assert held[L.PEER_VERIFIED] and held[L.BENCHMARKED]  # the ladder: quorum and proof

            # Staking lifts an honest node to economically staked; the answer shows the stake formula.
            resp = await honest[0].call("stake", {"amount_micro": 60 * MICRO})
            assert resp.ok, resp.error
            assert resp.result["stake_micro"] == 60 * MICRO
            assert resp.result["required_stake_micro"] <= 60 * MICRO
            await eventually(lambda: g.level(honest[0].node_id) is L.ECONOMICALLY_STAKED, timeout=5)

            # The cheats stake too, then keep failing: never above self-reported, and slashed.
            for cheat in (overclaimer, faker):
                assert (await cheat.call("stake", {"amount_micro": 60 * MICRO})).ok
            await eventually(
                lambda: (
                    coord.ledger.stake(overclaimer.node_id) < 60 * MICRO
                    and coord.ledger.stake(faker.node_id) < 60 * MICRO
                ),
                timeout=30,
                what="cheats slashed",
            )
            for cheat in (overclaimer, faker):
                assert g.level(cheat.node_id) is L.SELF_REPORTED
            reasons = {node: v.reason for node, v in coord.verifier.verdicts if not v.accepted}
            assert reasons[overclaimer.node_id] in (proofs.VerdictReason.LATE, proofs.VerdictReason.SLOW)
            assert reasons[faker.node_id] in (
                proofs.VerdictReason.WRONG_RESULT,
                proofs.VerdictReason.BAD_PATH,
            )
            kinds = {e.memo for e in coord.ledger.entries if e.kind == "slash"}
            assert kinds, "slashes are recorded in the ledger with their evidence"
            assert all(e.evidence for e in coord.ledger.entries if e.kind == "slash")
            # No honest node was ever penalised, and panels voted.
            assert all(
                v.accepted for node, v in coord.verifier.verdicts if node in {a.node_id for a in honest}
            )
            assert sum(a.work.voted for a in (*honest, overclaimer, faker)) > 0

            # A node that held the top of its ladder and starts cheating loses it, and its stake pays.
            turncoat = honest[0]
            assert g.level(turncoat.node_id) is L.ECONOMICALLY_STAKED
            turncoat.work.prover = junk_after_half
            await eventually(
                lambda: g.level(turncoat.node_id) is L.SELF_REPORTED, timeout=20, what="level lost"
            )
            assert coord.ledger.stake(turncoat.node_id) < 60 * MICRO
        # The ledger is one hash chain, stored and reloaded intact.
        from prsm_edge.io.store import LedgerStore
        from prsm_edge.protocol.ledger import verify_chain

        stored = LedgerStore(tmp_path / "host" / "coordinator" / "ledger.sqlite")
        entries = stored.load()
        stored.close()
        assert len(entries) == len(coord.ledger)
        verify_chain(entries)


def _now() -> int:
    import time

    return time.time_ns() // 1_000_000
