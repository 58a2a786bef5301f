"""The economy on a real Mosquitto: leases offered and answered by agents, credits settled every period,
the signed chain head and the listings retained, the market in the group summary."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import pytest

from prsm_edge.coordinator.economy import EconomyConfig
from prsm_edge.errors import RejectedMessage
from prsm_edge.node.agent import Agent
from prsm_edge.protocol import topics
from prsm_edge.protocol.allocation import AllocationRefused, Task
from prsm_edge.protocol.envelope import open_envelope
from prsm_edge.protocol.leases import LeaseState
from prsm_edge.protocol.ledger import LedgerKind, open_own_entries, open_signed_chain
from prsm_edge.protocol.messages import (
    GroupSummary,
    LedgerHead,
    MarketListing,
    ResourceType,
)
from tests.conftest import Mosquitto
from tests.integration.groupkit import GROUP, SITE, agent_options, coordinator, cpu, eventually, running

pytestmark = pytest.mark.integration
CPU = ResourceType.COMPUTE_CPU


async def retained(url: str, topic: str) -> bytes:
    host, port = url.removeprefix("mqtt://").split(":")
    async with aiomqtt.Client(host, int(port), identifier=f"reader-{topic[-12:]}") as client:
        await client.subscribe(topic, qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                assert message.retain
                return bytes(message.payload)  # type: ignore[arg-type]
    raise AssertionError("unreachable")


async def test_leases_settlement_head_and_listings_on_a_real_broker(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    coord = coordinator(mosquitto.url, tmp_path / "coord", economy=EconomyConfig(period_ms=1_000))
    worker = Agent(
        agent_options(mosquitto.url, tmp_path / "worker", resources=cpu(4.0), min_hourly_rate_micro=0)
    )
    # This owner allows 2 cores, but its agent will have been told (by the coordinator's push) to offer 1:
    # it must decline anything above what it offers now.
    careful = Agent(
        agent_options(mosquitto.url, tmp_path / "careful", resources=cpu(2.0), min_hourly_rate_micro=0)
    )
    eco = coord.economy
    members = coord.group.members
    async with running(coord, worker, careful):
        await eventually(lambda: coord.group.online_count == 2, what="both online")

        # A task for all 6 cores spans both; each agent answers its lease with a signed request.
        alloc, effects = eco.submit(members, Task("t1", {CPU: 6.0}, 60_000, 10**9), _now())
        assert {p.node for p in alloc.placements} == {worker.node_id, careful.node_id}
        assert set(alloc.scores) == {worker.node_id, careful.node_id}
        careful.resources = cpu(0.5)  # the owner lowered the offer since the coordinator last heard
        await coord._apply(list(effects))
        await eventually(
            lambda: all(r.state is not LeaseState.OFFERED for r in eco.leases.leases.values()), what="answers"
        )
        states = {r.lease.node: r.state for r in eco.leases.leases.values()}
        assert states == {worker.node_id: LeaseState.ACTIVE, careful.node_id: LeaseState.RELEASED}
        assert "declined" in next(
            r.why for r in eco.leases.leases.values() if r.lease.node == careful.node_id
        )
        assert eco.status(worker.node_id)["leases"][0]["state"] == "active"

        # Never double-booked: the worker's 4 cores are all leased, so a second task cannot have them.
        with pytest.raises(AllocationRefused) as exc:
            eco.submit(members, Task("t2", {CPU: 3.0}, 60_000, 10**9), _now())
        assert exc.value.filtered.get(worker.node_id) == "allocation_percentage"

        # A short lease on the careful node: accepted (0.4 fits its 0.5), then released at its end, and
        # the agent hears it so the capacity is free on its side too.
        _, effects = eco.submit(members, Task("t3", {CPU: 0.4}, 1_500, 10**9), _now())
        await coord._apply(list(effects))
        await eventually(lambda: len(careful.leases.accepted) == 1, what="careful accepted t3")
        await eventually(lambda: not careful.leases.accepted, timeout=5, what="lease_end reached the agent")

        # Verified work under the lease is credited at the next settlement, with no action by the owner.
        lease = next(r for r in eco.leases.leases.values() if r.lease.node == worker.node_id)
        await asyncio.sleep(0.2)
        now = _now()
        counted = eco.record_work(lease.lease.lease_id, worker.node_id, {CPU: 1.0}, now)
        assert lease.active_ms is not None
        assert 0 < counted[CPU] <= 4.0 * (now - lease.active_ms) / 3_600_000 + 1e-12  # capped by the lease
        await eventually(lambda: coord.ledger.balance(worker.node_id) > 0, timeout=5, what="credited")
        credit = next(
            e for e in coord.ledger.entries if e.account == worker.node_id and e.kind == LedgerKind.CREDIT
        )
        assert credit.inputs["level"] == "self_reported" and credit.inputs["geographic"] == 1.0  # no bonuses
        assert coord.ledger.balance(careful.node_id) == 0  # it served nothing

        # The chain head is published retained and matches the durable, signed ledger.
        await eventually(lambda: coord.economy._head_published == coord.ledger.head, what="head published")
        head = open_envelope(await retained(mosquitto.url, topics.coord_ledger(SITE, GROUP))).message
        assert isinstance(head, LedgerHead)
        durable = coord.ledger_store.signed()
        assert len(durable) >= head.count > 0  # nothing is announced before it is on disk
        assert open_signed_chain(durable[: head.count], coord.identity.public_key).head == head.head

        # A member checks its own history with the coordinator's key it pinned, against the head.
        answer = await worker.call("ledger", {})
        assert answer.ok, answer.error
        mine = open_own_entries(answer.result["entries"], coord.identity.public_key, worker.node_id)
        assert [e.key for e in mine] == [
            e.key
            for e in coord.ledger.entries
            if e.account == worker.node_id and e.index < answer.result["count"]
        ]
        assert any(e.kind == LedgerKind.CREDIT for e in mine)
        with pytest.raises(RejectedMessage):  # another member cannot pass them off as its own
            open_own_entries(answer.result["entries"], coord.identity.public_key, careful.node_id)

        listing = open_envelope(
            await retained(mosquitto.url, topics.market_listing(SITE, GROUP, worker.node_id))
        )
        assert isinstance(listing.message, MarketListing) and listing.signer == coord.identity.node_id
        # The summary is republished periodically: one taken while t3 was still held says 4.4 cores.
        for _ in range(50):
            summary = open_envelope(await retained(mosquitto.url, topics.summary(SITE, GROUP))).message
            assert isinstance(summary, GroupSummary)
            if summary.market["resources"]["compute_cpu"]["demand"] == 4.0:
                break
            await asyncio.sleep(0.2)
        assert summary.market["resources"]["compute_cpu"]["demand"] == 4.0
        assert summary.market["resources"]["compute_cpu"]["base_rate_micro"] > 0


def _now() -> int:
    from prsm_edge.io.clock import now_ms

    return now_ms()
