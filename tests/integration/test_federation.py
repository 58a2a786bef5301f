"""A region of three groups on real brokers: each group its own Mosquitto (with the rendered bridge),
coordinator, agent and gateway; one regional Mosquitto and regional coordinator."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import pytest
from nacl.signing import SigningKey

from prsm_edge.coordinator.region import RegionCoordinator, RegionOptions
from prsm_edge.coordinator.rollups import RollupOptions
from prsm_edge.coordinator.service import Coordinator
from prsm_edge.errors import Reason
from prsm_edge.gateway.bridge import render_bridge
from prsm_edge.gateway.service import Gateway, GatewayOptions
from prsm_edge.identity import load_or_create
from prsm_edge.io.clock import now_ms
from prsm_edge.node.agent import Agent
from prsm_edge.protocol import messages as m
from prsm_edge.protocol import topics as t
from prsm_edge.protocol.envelope import Signer
from prsm_edge.protocol.placement import TaskSpec
from prsm_edge.protocol.region import LeaseGranted, RegionEffect, StreamItem, UnitChange
from tests.conftest import Mosquitto, free_port, start_mosquitto
from tests.integration.groupkit import agent_options, coordinator, cpu, eventually

pytestmark = pytest.mark.integration

RSITE, REGION = "eu", "r1"
SITES = {"g1": "lab", "g2": "lab", "g3": "far"}


@dataclass
class GroupRig:
    name: str
    site: str
    broker: Mosquitto
    coordinator: Coordinator
    agent: Agent
    gateway: Gateway
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def stop(self) -> None:
        for task in reversed(self.tasks):
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.tasks.clear()


@dataclass
class RegionRig:
    broker: Mosquitto
    region: RegionCoordinator
    groups: dict[str, GroupRig]
    effects: list[RegionEffect]


def _group(
    stack: contextlib.AsyncExitStack,
    tmp: Path,
    name: str,
    site: str,
    region_url: str,
    uplinks: tuple[str, ...] = (),
) -> GroupRig:
    """One group's broker, coordinator, agent and gateway; its broker is stopped when ``stack`` closes,
    whatever fails after it started (then its tasks first: the stack unwinds last-in first-out)."""
    gw_ident = load_or_create(tmp / name / "gateway")
    bridge = render_bridge(
        site=site,
        group=name,
        gateway=gw_ident.node_id,
        region_site=RSITE,
        region=REGION,
        uplinks=[region_url],
        restart_base_s=1,
        restart_cap_s=2,
    )
    broker = start_mosquitto(tmp / name / "broker", extra=bridge)
    stack.callback(broker.stop)
    coord = coordinator(broker.url, tmp / name / "coord", site=site, group=name)
    agent = Agent(agent_options(broker.url, tmp / name / "agent", site=site, group=name, resources=cpu(4.0)))
    gateway = Gateway(
        gw_ident,
        GatewayOptions(
            site=site,
            group=name,
            local_url=broker.url,
            uplink_urls=uplinks or (region_url,),
            region_site=RSITE,
            region=REGION,
            workdir=tmp / name / "gateway",
            replay_rate=20.0,
            replay_burst=2,
            state_interval_s=1.0,
            keepalive_s=2,
            coordinator_grace_s=1.0,
        ),
    )
    rig = GroupRig(name, site, broker, coord, agent, gateway)
    stack.push_async_callback(rig.stop)
    return rig


async def _cancel(*tasks: asyncio.Task[None]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


@contextlib.asynccontextmanager
async def region_of_three(
    tmp: Path, region_broker_extra: str = "", rollup: RollupOptions | None = None
) -> AsyncIterator[RegionRig]:
    """The region and its three groups; everything started is stopped, also when a part fails to start."""
    async with contextlib.AsyncExitStack() as stack:
        rbroker = start_mosquitto(tmp / "region-broker", extra=region_broker_extra)
        stack.callback(rbroker.stop)
        yield await _start_region(stack, tmp, rbroker, rollup)


async def _start_region(
    stack: contextlib.AsyncExitStack, tmp: Path, rbroker: Mosquitto, rollup: RollupOptions | None
) -> RegionRig:
    region = RegionCoordinator(
        load_or_create(tmp / "region"),
        RegionOptions(
            site=RSITE,
            region=REGION,
            broker_url=rbroker.url,
            workdir=tmp / "region",
            dead_after_s=3.0,
            summary_interval_s=1.0,
            tick_s=0.2,
            task_timeout_s=3.0,
            rollup=rollup or RollupOptions(),
        ),
    )
    effects: list[RegionEffect] = []
    region.listeners.append(effects.append)
    groups = {name: _group(stack, tmp, name, site, rbroker.url) for name, site in SITES.items()}
    region_task = asyncio.create_task(region.run())
    stack.push_async_callback(_cancel, region_task)  # after the groups' tasks, before the brokers
    for g in groups.values():
        g.tasks = [asyncio.create_task(r.run()) for r in (g.coordinator, g.agent, g.gateway)]
    await eventually(
        lambda: (
            region.region.alive_count == 3
            and all(u.summary.online == 1 for u in region.region.units.values())
        ),
        timeout=20,
        what="three groups alive at the region, each with its member",
    )
    return RegionRig(rbroker, region, groups, effects)


async def test_region_sees_three_groups_routes_a_task_and_drills_down(tmp_path: Path) -> None:
    async with region_of_three(tmp_path) as rig:
        r = rig.region.region
        assert r.summary().capacity == {"compute_cpu": 12.0}
        assert r.summary().online == 3 and r.summary().claims == 3
        # A task submitted at the region, from site "far": its own site's group takes it.
        task = TaskSpec(task_id="t1", resources={m.ResourceType.COMPUTE_CPU: 2.0}, origin_site="far")
        granted = await rig.region.submit(task)
        assert isinstance(granted, LeaseGranted), granted
        assert (granted.site, granted.group) == ("far", "g3")
        assert granted.lease.node == rig.groups["g3"].agent.node_id
        # The lease report also arrives through the gateway's ordered stream.
        await eventually(
            lambda: any(isinstance(e, StreamItem) and e.kind == "lease" for e in rig.effects),
            what="lease report in the stream",
        )
        # A task no group can hold is refused, not left hanging.
        huge = TaskSpec(task_id="t2", resources={m.ResourceType.COMPUTE_CPU: 64.0})
        refused = await rig.region.submit(huge)
        assert not isinstance(refused, LeaseGranted)
        # Drill-down: the group opens its claim and the region checks it against the signed root.
        verdict = await rig.region.drill("lab", "g1", [0])
        assert verdict.ok, verdict.detail
        (claim,) = verdict.claims
        assert claim.signer == rig.groups["g1"].agent.node_id
        assert isinstance(claim.message, m.NodeBirth)
        assert claim.message.resources[0].capacity == 4.0
        # Evidence: a slash recorded in a group's ledger goes up the ordered stream.
        slash = m.LedgerEntry(
            index=0,
            prev_hash=b"\0" * 32,
            account=claim.signer,
            amount_micro=5,
            kind="slash",
            key="slash:test",
        )
        await rig.groups["g1"].coordinator.federation.report_evidence([slash])
        await eventually(
            lambda: any(isinstance(e, StreamItem) and e.kind == "evidence" for e in rig.effects),
            what="slash in the stream",
        )
        # The region's own summary is published upward in the same shape (tiers nest).
        await eventually(lambda: r.summary().online == 3, what="region summary")
        assert sum(r.rejected.values()) == 0


async def test_dead_group_shows_dead_at_the_region(tmp_path: Path) -> None:
    async with region_of_three(tmp_path) as rig:
        r = rig.region.region
        g2 = rig.groups["g2"]
        await g2.stop()  # coordinator, agent and gateway gone; its broker stays up
        await eventually(lambda: not r.units[("lab", "g2")].alive, timeout=10, what="g2 dead")
        assert r.units[("lab", "g1")].alive and r.units[("far", "g3")].alive
        assert r.summary().online == 2


async def test_forged_and_replayed_summaries_are_refused(tmp_path: Path) -> None:
    async with region_of_three(tmp_path) as rig:
        r = rig.region.region
        g1 = rig.groups["g1"]
        held = r.units[("lab", "g1")]
        old_envelope = held.envelope
        topic = t.unit(t.Kind.UNIT_SUMMARY, RSITE, REGION, "lab", "g1")
        forger = Signer(SigningKey.generate())
        fake = m.GroupSummary(
            site="lab",
            group="g1",
            epoch=99,
            tier=1,
            members=200,
            online=200,
            capacity={"compute_cpu": 9999.0},
            trust={},
            utilization=0.0,
        )
        async with aiomqtt.Client("127.0.0.1", rig.broker.port, identifier="attacker") as client:
            await client.publish(topic, forger.seal(fake, now_ms()), qos=1)
            await eventually(lambda: r.rejected[Reason.UNKNOWN_KEY] >= 1, what="forgery refused")
            # Wait for a newer genuine summary, then replay the old one.
            first_seq = r.units[("lab", "g1")].summary.seq
            await eventually(lambda: r.units[("lab", "g1")].summary.seq > first_seq, what="fresh summary")
            await client.publish(topic, old_envelope, qos=1)
            await eventually(lambda: r.rejected[Reason.REPLAY] >= 1, what="replay refused")
        unit = r.units[("lab", "g1")]
        assert unit.summary.capacity == {"compute_cpu": 4.0}
        assert unit.key == g1.coordinator.identity.public_key


async def test_uplink_cut_and_restored_loses_nothing_duplicates_nothing(tmp_path: Path) -> None:
    async with region_of_three(tmp_path) as rig:
        r = rig.region.region
        g1 = rig.groups["g1"]
        coord = g1.coordinator
        gw = g1.gateway.gateway_id
        items: list[StreamItem] = []
        rig.region.listeners.append(lambda e: items.append(e) if isinstance(e, StreamItem) else None)

        async def report(i: int, ttl_ms: int = 3_600_000) -> None:
            lease = m.Lease(
                lease_id=f"l{i}",
                task_id=f"task{i}",
                node=g1.agent.node_id,
                resources=cpu(1.0),
                start_ms=now_ms(),
                end_ms=now_ms() + ttl_ms,
                rate_micro_per_hour=0,
            )
            await coord.session.publish(t.fed_report("lab", "g1"), coord.signer.seal(lease, now_ms()), qos=1)

        for i in range(5):  # live, before the cut
            await report(i)
        await eventually(lambda: len(items) == 5, what="live reports arrive")
        rig.broker.stop()  # the uplink is cut: the regional broker is gone
        await eventually(lambda: not g1.gateway.uplink.connected.is_set(), what="gateway sees the cut")
        for i in range(5, 25):
            await report(i)
        await eventually(lambda: len(g1.gateway.buffer) == 20, what="20 items buffered on disk")
        # Two items whose TTL ends during the outage must never be delivered: age them on disk.
        g1.gateway.buffer._db.execute("UPDATE stream SET expires_ms = 1 WHERE seq IN (11, 12)")
        await asyncio.sleep(1.0)
        rig.broker.restart()
        await eventually(lambda: len(items) >= 23, timeout=30, what="backlog replayed")
        await asyncio.sleep(1.0)
        seqs = [e.item.message.lease_id for e in items if isinstance(e.item.message, m.Lease)]
        expected = [f"l{i}" for i in range(25) if i not in (10, 11)]
        assert seqs == expected  # in order, nothing lost, nothing twice, expired ones not delivered
        assert [e.historical for e in items[5:]] == [True] * 18
        stats = r.stream.stats(gw)
        assert stats.lost == 0 and stats.duplicates == 0
        assert stats.skipped == 2 and stats.accepted == 23
        assert g1.gateway.buffer.expired == 2 and len(g1.gateway.buffer) == 0
        await eventually(lambda: r.alive_count == 3, timeout=15, what="all groups alive again")


async def test_gateway_fails_over_to_its_second_uplink_address(tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        rbroker = start_mosquitto(tmp_path / "region-broker")
        stack.callback(rbroker.stop)
        dead = f"mqtt://127.0.0.1:{free_port()}"  # the primary is down
        region = RegionCoordinator(
            load_or_create(tmp_path / "region"),
            RegionOptions(
                site=RSITE, region=REGION, broker_url=rbroker.url, workdir=tmp_path / "region", tick_s=0.2
            ),
        )
        g = _group(stack, tmp_path, "g1", "lab", rbroker.url, uplinks=(dead, rbroker.url))
        g.tasks = [asyncio.create_task(x.run()) for x in (region, g.coordinator, g.gateway)]
        await eventually(
            lambda: region.region.alive_count == 1, timeout=20, what="the group reached the region"
        )
        assert g.gateway.uplink.address.port == rbroker.port


async def test_gateway_holds_its_birth_until_the_region_is_online(tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        rbroker = start_mosquitto(tmp_path / "region-broker")
        stack.callback(rbroker.stop)
        g = _group(stack, tmp_path, "g1", "lab", rbroker.url)
        seen: list[str] = []
        g.tasks = [asyncio.create_task(x.run()) for x in (g.coordinator, g.gateway)]
        async with aiomqtt.Client("127.0.0.1", rbroker.port, identifier="watcher") as watcher:
            await watcher.subscribe(f"{t.ROOT}/{RSITE}/{REGION}/unit/#", qos=1)
            await watcher.subscribe(t.gateway_state("lab", g.gateway.gateway_id), qos=1)

            async def watch() -> None:
                async for message in watcher.messages:
                    seen.append(message.topic.value)

            watching = asyncio.create_task(watch())
            await eventually(lambda: g.gateway.uplink.connected.is_set(), what="gateway connected upward")
            await eventually(lambda: g.gateway.link.summary is not None, what="gateway holds a summary")
            await asyncio.sleep(1.5)
            assert seen == []  # no region coordinator yet: nothing goes up
            region = RegionCoordinator(
                load_or_create(tmp_path / "region"),
                RegionOptions(
                    site=RSITE, region=REGION, broker_url=rbroker.url, workdir=tmp_path / "region", tick_s=0.2
                ),
            )
            stack.push_async_callback(_cancel, asyncio.create_task(region.run()))
            summary_topic = t.unit(t.Kind.UNIT_SUMMARY, RSITE, REGION, "lab", "g1")
            await eventually(lambda: summary_topic in seen, what="birth after the region came online")
            await eventually(lambda: region.region.alive_count == 1, what="the region knows the group")
            watching.cancel()


async def test_a_region_that_fails_to_start_partway_leaves_no_broker_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[Mosquitto] = []
    real_start, real_coordinator = start_mosquitto, coordinator

    def recording(tmp: Path, extra: str = "") -> Mosquitto:
        started.append(real_start(tmp, extra))
        return started[-1]

    def failing(url: str, workdir: Path, **kw: object) -> Coordinator:
        if kw.get("group") == "g2":
            raise RuntimeError("g2's coordinator cannot start")
        return real_coordinator(url, workdir, **kw)

    monkeypatch.setattr(sys.modules[__name__], "start_mosquitto", recording)
    monkeypatch.setattr(sys.modules[__name__], "coordinator", failing)
    try:
        with pytest.raises(RuntimeError, match="g2's coordinator"):
            async with region_of_three(tmp_path):
                pytest.fail("the region started although g2 could not")
        assert len(started) == 3  # the region's broker, g1's and g2's
        assert [b.port for b in started if b.process.poll() is None] == []  # none left running
    finally:
        for broker in started:
            broker.stop()


async def test_a_group_broker_restart_is_not_reported_as_the_coordinator_going_offline(
    tmp_path: Path,
) -> None:
    """The broker hands out the coordinator's Will after a restart of its own (the coordinator only lost
    its connection); the gateway must not report the group's coordinator offline to the region for it."""
    async with region_of_three(tmp_path) as rig:
        g1 = rig.groups["g1"]
        reconnects = g1.coordinator.session.connections
        await asyncio.to_thread(g1.broker.restart)
        await eventually(lambda: g1.coordinator.session.connections > reconnects, timeout=20)
        await eventually(lambda: g1.gateway.local.connected.is_set(), timeout=20, what="gateway back")
        await asyncio.sleep(3 * 1.0)  # a few of the gateway's state intervals
        kills = [e for e in rig.effects if isinstance(e, UnitChange) and not e.alive]
        assert [k.why for k in kills if k.why == "coordinator offline"] == []


async def test_the_coordinators_will_goes_up_only_if_the_coordinator_stays_offline(tmp_path: Path) -> None:
    async with region_of_three(tmp_path) as rig:
        g1 = rig.groups["g1"]
        coord = g1.coordinator
        topic = t.coord_state("lab", "g1")

        def sealed(status: str) -> bytes:
            return coord.signer.seal(coord.group.state_message(status)[1], now_ms())

        def reported_offline() -> bool:
            return any(
                isinstance(e, UnitChange) and e.group == "g1" and e.why == "coordinator offline"
                for e in rig.effects
            )

        async with aiomqtt.Client("127.0.0.1", g1.broker.port, identifier="as-the-broker") as c:
            # What a restarted broker hands out: the Will of the coordinator's lost connection, and then
            # the coordinator's own online state once it has reconnected.
            await c.publish(topic, sealed("offline"), qos=1, retain=True)
            await eventually(lambda: g1.gateway.local.connected.is_set())
            await asyncio.sleep(0.3)
            await c.publish(topic, sealed("online"), qos=1, retain=True)
            await asyncio.sleep(2 * 1.0)  # twice the gateway's grace
            assert g1.gateway.link.coordinator == "online" and not reported_offline()
            # A coordinator that stays offline is reported once the grace has passed.
            await _cancel(g1.tasks[0])
            await c.publish(topic, sealed("offline"), qos=1, retain=True)
            await eventually(reported_offline, what="the group's coordinator reported offline")
            assert g1.gateway.link.coordinator == "offline"
