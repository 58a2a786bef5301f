"""Auto-formation on loopback mDNS: two would-be coordinators converge to one; a full group refuses."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from pathlib import Path

import pytest
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from prsm_edge.autoform import AutoNode, FormationOptions
from prsm_edge.errors import Reason
from prsm_edge.io.pins import PinStore
from prsm_edge.node.agent import Agent, AgentOptions, Redirected
from prsm_edge.protocol.formation import SERVICE_TYPE, LeaderPolicy
from tests.conftest import free_port, require_mosquitto
from tests.integration.groupkit import agent_options, cpu, eventually, quiet_sample

pytestmark = pytest.mark.integration

LOOPBACK = ["127.0.0.1"]


def node(tmp: Path, name: str, site: str, **kw: object) -> AutoNode:
    agent = AgentOptions(
        site=site,
        group="placeholder",
        broker_url="mqtt://127.0.0.1:1",
        workdir=tmp / name,
        resources=cpu(2.0),
        heartbeat_interval_s=0.5,
        keepalive_s=2,
        sample=quiet_sample,
        cpu_rate=1_000_000.0,
        hw_fingerprint=name,
    )
    opts: dict[str, object] = {
        "site": site,
        "workdir": tmp / name,
        "agent": agent,
        "interfaces": LOOPBACK,
        "discover_s": 1.5,
        "watch_s": 0.5,
        "heartbeat_timeout_s": 5.0,
    }
    opts.update(kw)
    return AutoNode(FormationOptions(**opts))  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def started(*nodes: AutoNode):  # type: ignore[no-untyped-def]
    tasks = [asyncio.create_task(n.run()) for n in nodes]
    try:
        yield tasks
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t


async def test_two_coordinators_started_together_converge_to_one(tmp_path: Path) -> None:
    """With the operator's explicit ``verified`` policy, rivals whose brokers confirm them converge."""
    require_mosquitto()
    verified = LeaderPolicy(mode="verified")
    a, b = node(tmp_path, "a", "conv", leader=verified), node(tmp_path, "b", "conv", leader=verified)
    async with started(a, b):
        # Both find nothing, both found group "g", both announce; then exactly one yields, and both
        # agents end up online members of the one left.
        def converged() -> bool:
            hosts = [n for n in (a, b) if n.hosting is not None]
            if len(hosts) != 1:
                return False
            assert hosts[0].hosting is not None
            online = {n for n, m in hosts[0].hosting.coordinator.group.members.items() if m.online}
            return {a.node_id, b.node_id} <= online

        await eventually(converged, timeout=60, what="one coordinator, both agents its members")
        host = a if a.hosting is not None else b
        other = b if host is a else a
        assert host.hosting is not None
        group = host.hosting.coordinator.group
        assert other.hosting is None
        assert host.hosting.coordinator.identity.node_id not in other.excluded
        # the loser's redirect, signed by the key its agent had pinned, handed the pin on to the winner
        pinned = PinStore(other.pins_path).get("conv", group.config.group)
        assert pinned == host.hosting.coordinator.identity.public_key


def _fake_txt(site: str, group: str) -> dict[str, str]:
    """A stranger's advert as today's TXT keys spell it, unsigned, claiming a huge busy group."""
    return {
        "site": site, "grp": group, "coord": "nstranger0000000", "ep": "0", "v": "1", "n": "199",
        "max": "1000000", "cap": "9999", "fp": "00112233445566aa",
    }  # fmt: skip


async def test_an_unsigned_advert_for_the_same_group_takes_nothing_over(tmp_path: Path) -> None:
    """Issue 9 item 1: one mDNS advert claiming 199 members used to make the real coordinator redirect
    its members and stop. Now an advert its coordinator's key did not sign never reaches the rules."""
    require_mosquitto()
    host = node(tmp_path, "host", "fake", leader=LeaderPolicy(mode="verified"))  # the most permissive
    async with started(host):
        await eventually(
            lambda: host.hosting is not None and host.hosting.coordinator.group.online_count == 1,
            timeout=30,
        )
        assert host.hosting is not None
        group = host.hosting.coordinator.group.config.group
        zc = AsyncZeroconf(interfaces=LOOPBACK)
        fake = AsyncServiceInfo(
            SERVICE_TYPE, f"{group}@nstranger0000000.{SERVICE_TYPE}", port=free_port(),
            properties=_fake_txt("fake", group), server="stranger.local.", parsed_addresses=["127.0.0.1"],
        )  # fmt: skip
        try:
            await (await zc.async_register_service(fake))
            await asyncio.sleep(6 * 0.5 + 2)  # several watch cycles after the stranger's announcement
            assert host.hosting is not None, "the coordinator stepped down for an unsigned advert"
            assert host.hosting.coordinator.group.online_count == 1
        finally:
            await zc.async_close()


async def test_a_signed_rival_is_followed_only_if_its_broker_confirms_it(tmp_path: Path) -> None:
    """A stranger may sign adverts with its own key; under ``verified`` its claims are then checked on
    its own broker, and an advert with no broker (or numbers the broker does not show) moves nobody."""
    require_mosquitto()
    from nacl.signing import SigningKey

    from prsm_edge.io.discovery import Advertiser
    from prsm_edge.protocol.envelope import node_id_for
    from prsm_edge.protocol.formation import GroupAdvert

    events: list[str] = []
    host = node(tmp_path, "host", "sig", leader=LeaderPolicy(mode="verified"))
    host.on_event = events.append
    async with started(host):
        await eventually(lambda: host.hosting is not None, timeout=30)
        assert host.hosting is not None
        group = host.hosting.coordinator.group.config.group
        key = SigningKey.generate()
        stranger = GroupAdvert(
            site="sig", group=group, coordinator=node_id_for(bytes(key.verify_key)), epoch=0, version=1,
            members=199, max_members=200, port=free_port(), hosts=("127.0.0.1",),
        )  # fmt: skip
        async with Advertiser(stranger, LOOPBACK, key=key):
            await eventually(
                lambda: any("not following" in e and stranger.coordinator in e for e in events),
                timeout=20,
                what="the host checked the stranger on its broker",
            )
        assert host.hosting is not None


async def test_by_default_a_real_rival_does_not_take_a_group_over(tmp_path: Path) -> None:
    """Default policy (pinned, no keys pinned by the site): no rival may lead this group, even a real one."""
    require_mosquitto()
    from prsm_edge.io.discovery import Advertiser
    from prsm_edge.localgroup import host_group
    from prsm_edge.protocol.formation import GroupAdvert

    events: list[str] = []
    a = node(tmp_path, "a", "pin")
    a.on_event = events.append
    async with started(a):
        await eventually(lambda: a.hosting is not None, timeout=30)
        assert a.hosting is not None
        group = a.hosting.coordinator.group.config.group
        async with host_group(tmp_path / "rival", site="pin", group=group, verify=False) as rival:
            coord = rival.coordinator
            task = asyncio.create_task(coord.run())
            advert = GroupAdvert(
                site="pin", group=group, coordinator=coord.identity.node_id, epoch=coord.epoch, version=1,
                members=150, port=rival.broker.port, hosts=("127.0.0.1",),
            )  # fmt: skip
            try:
                async with Advertiser(advert, LOOPBACK, key=coord.identity.signing_key):
                    await eventually(
                        lambda: any("ignoring rival coordinator" in e for e in events), timeout=20
                    )
                    assert a.hosting is not None
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def test_a_full_group_refuses_and_a_newcomer_founds_the_next_group(tmp_path: Path) -> None:
    require_mosquitto()
    first = node(tmp_path, "first", "full", max_members=1)
    async with started(first):
        await eventually(
            lambda: first.hosting is not None and first.hosting.coordinator.group.online_count == 1
        )
        assert first.hosting is not None
        coord = first.hosting.coordinator
        # A node sent straight to the full group's broker is refused at join and told so.
        stray = Agent(agent_options(first.hosting.broker.url, tmp_path / "stray"))
        stray = Agent(dataclasses.replace(stray.options, site="full", group=coord.group.config.group))
        with pytest.raises(Redirected, match="group_full"):
            async with asyncio.timeout(15):
                await stray.run()
        assert coord.group.rejected[Reason.GROUP_FULL] == 1
        # A newcomer that discovers the group sees from its advert that it is full, and founds g-2.
        late = node(tmp_path, "late", "full")
        async with started(late):
            await eventually(lambda: late.hosting is not None, timeout=30, what="the newcomer founds a group")
            assert late.hosting is not None
            assert late.hosting.coordinator.group.config.group == "g-2"


def test_the_exclusion_list_is_bounded(tmp_path: Path) -> None:
    """Issue 9 item 9: ``AutoNode.excluded`` only grew; now the oldest exclusion is forgotten first."""
    from prsm_edge.autoform import MAX_EXCLUDED

    n = node(tmp_path, "x", "lab")
    for i in range(MAX_EXCLUDED * 3):
        n.exclude(f"c{i}")
    assert len(n.excluded) == MAX_EXCLUDED
    assert f"c{MAX_EXCLUDED * 3 - 1}" in n.excluded and "c0" not in n.excluded
