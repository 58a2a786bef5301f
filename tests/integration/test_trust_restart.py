"""A coordinator restart on a real broker keeps what was proven and nothing more."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest

from prsm_edge.node.agent import Agent
from prsm_edge.node.prover import calibrate_cpu_rate
from prsm_edge.protocol.messages import VerificationLevel
from prsm_edge.protocol.reputation import LevelPolicy
from prsm_edge.protocol.verifier import claimed_rates
from tests.conftest import Mosquitto
from tests.integration.groupkit import agent_options, coordinator, eventually, fast_rounds, running
from tests.integration.test_verification import junk_after_half

pytestmark = pytest.mark.integration

L = VerificationLevel
PROOF_VALID_MS = 6_000


def _roster_levels(coord: object) -> dict[str, VerificationLevel]:
    roster = coord.group.roster()  # type: ignore[attr-defined]
    return {e.node: e.level for e in roster.members}


async def test_restart_keeps_only_evidence_backed_levels(mosquitto: Mosquitto, tmp_path: Path) -> None:
    rate = calibrate_cpu_rate(0.1)
    config = dataclasses.replace(fast_rounds(), policy=LevelPolicy(proof_validity_ms=PROOF_VALID_MS))
    agents = [Agent(agent_options(mosquitto.url, tmp_path / f"a{i}", cpu_rate=rate)) for i in range(5)]
    ids = [a.node_id for a in agents]
    first = coordinator(mosquitto.url, tmp_path / "coord", verify=True, verification=config)
    async with running(*agents):
        async with running(first):
            await eventually(
                lambda: all(_roster_levels(first).get(n) is L.BENCHMARKED for n in ids),
                timeout=40,
                what="every honest agent benchmarked",
            )
        # The coordinator is down long enough for the benchmark proofs (6 s here) to lapse; the
        # quorums (24 h) have not.
        await asyncio.sleep(PROOF_VALID_MS / 1000 + 0.5)
        second = coordinator(mosquitto.url, tmp_path / "coord", verify=True, verification=config)
        levels = _roster_levels(second)
        assert {levels[n] for n in ids} == {L.PEER_VERIFIED}, levels  # not the BENCHMARKED stored before
        async with running(second):
            await eventually(
                lambda: all(_roster_levels(second).get(n) is L.BENCHMARKED for n in ids),
                timeout=40,
                what="checked again after the restart",
            )
            turncoat = agents[0]
            turncoat.work.prover = junk_after_half
            started = time.monotonic()
            await eventually(
                lambda: _roster_levels(second).get(turncoat.node_id) is L.SELF_REPORTED,
                timeout=30,
                what="a failed check after the restart drops the level",
            )
            assert time.monotonic() - started < 30
            assert all(_roster_levels(second)[n] is L.BENCHMARKED for n in ids[1:])


async def test_a_restart_keeps_each_nodes_run_of_verified_results(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    rate = calibrate_cpu_rate(0.1)
    agents = [Agent(agent_options(mosquitto.url, tmp_path / f"a{i}", cpu_rate=rate)) for i in range(3)]
    ids = [a.node_id for a in agents]
    first = coordinator(mosquitto.url, tmp_path / "coord", verify=True, verification=fast_rounds())
    threshold = first.verifier.sampler.threshold
    async with running(*agents):
        async with running(first):
            # Past the sampler's threshold every node is checked less often than every round.
            await eventually(
                lambda: all(first.verifier.sampler.record_of(n).run > threshold for n in ids),
                timeout=90,
                what="a long run of verified results",
            )
            before = {n: first.verifier.sampler.probability(n) for n in ids}
        assert all(p < 1.0 for p in before.values()), before
        second = coordinator(mosquitto.url, tmp_path / "coord", verify=True, verification=fast_rounds())
        # The new run reads the records back from evidence.sqlite: nobody is back at "check every round".
        after = {n: second.verifier.sampler.probability(n) for n in ids}
        assert all(after[n] <= before[n] + 1e-9 for n in ids), (before, after)
        assert all(second.verifier.sampler.record_of(n).run > threshold for n in ids)
        # What the API's status says a node is credited with comes from the restored measurements.
        member = second.group.members[ids[0]]
        measured = second.verifier.estimates(member)["cpu"]
        status = second._trust_status(member)
        assert status["credited"]["cpu"] == round(min(measured, claimed_rates(member.resources)["cpu"]), 3)
        assert status["overclaims"] == {}
        second.evidence_store.close()


async def test_a_restarted_coordinator_reads_the_pending_rechecks_back(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Fails on the old code: the coordinator's verifier started with no pending re-check, so a node's
    first late result before a restart was forgotten and its next one contained again."""
    first = coordinator(mosquitto.url, tmp_path / "coord", verify=True, verification=fast_rounds())
    first.evidence_store.save_containment("node-a", ("cpu", "storage"))
    first.evidence_store.close()
    second = coordinator(mosquitto.url, tmp_path / "coord", verify=True, verification=fast_rounds())
    assert second.verifier.nodes["node-a"].contained == {"cpu", "storage"}
    second.evidence_store.close()
