"""Panelists receive the proofs of the subjects they sit for, not every peer's proofs all the time."""

from __future__ import annotations

from pathlib import Path

import pytest

from prsm_edge.localgroup import host_group
from prsm_edge.node.agent import Agent
from prsm_edge.node.prover import calibrate_cpu_rate
from prsm_edge.protocol import topics
from prsm_edge.protocol.messages import TRUST_SCORE, VerificationLevel
from tests.conftest import require_mosquitto
from tests.integration.groupkit import GROUP, SITE, agent_options, eventually, fast_rounds, running

pytestmark = pytest.mark.integration


async def test_agents_watch_only_their_panel_subjects(tmp_path: Path) -> None:
    require_mosquitto()
    rate = calibrate_cpu_rate(0.1)
    async with host_group(
        tmp_path / "host", site=SITE, group=GROUP, heartbeat_timeout_s=10, verification=fast_rounds()
    ) as host:
        agents = [Agent(agent_options(host.broker.url, tmp_path / f"a{i}", cpu_rate=rate)) for i in range(7)]
        seated: dict[str, set[str]] = {a.node_id: set() for a in agents}
        heard: dict[str, set[str]] = {a.node_id: set() for a in agents}
        for a in agents:
            sit, receive = a.work.sit, a._on_message

            def sit_and_note(args: dict[str, object], a: Agent = a, sit=sit) -> str | None:  # type: ignore[no-untyped-def]
                subject = sit(args)
                if subject is not None:
                    seated[a.node_id].add(subject)
                return subject

            async def receive_and_note(topic: str, payload: bytes, a: Agent = a, receive=receive) -> None:  # type: ignore[no-untyped-def]
                parsed = topics.parse(topic)
                if parsed.kind is topics.Kind.NODE_PROOF and parsed.node != a.node_id:
                    heard[a.node_id].add(parsed.node or "")
                await receive(topic, payload)

            a.work.sit = sit_and_note  # type: ignore[method-assign]
            a._on_message = receive_and_note  # type: ignore[method-assign]
            a.session.handler = receive_and_note
        coord = host.coordinator
        async with running(coord, *agents):
            # Peer-verified needs panel votes, so panelists did receive their subjects' proofs.
            g = coord.group

            def all_peer_verified() -> bool:
                ids = [a.node_id for a in agents]
                return all(n in g.members for n in ids) and all(
                    TRUST_SCORE[g.level(n)] >= TRUST_SCORE[VerificationLevel.PEER_VERIFIED] for n in ids
                )

            await eventually(all_peer_verified, timeout=90, what="every agent peer-verified")
        wildcard = topics.node_filter(SITE, GROUP, "proof")
        for a in agents:
            assert all(t != wildcard for t, _ in a.session.subscriptions)
            assert heard[a.node_id] <= seated[a.node_id], (a.node_id, heard[a.node_id] - seated[a.node_id])
            assert seated[a.node_id], a.node_id
