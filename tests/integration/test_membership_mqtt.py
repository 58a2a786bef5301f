"""Who may be in and who may lead a group, on real brokers: join policies, eviction, pins, dedupe."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import msgspec
import pytest

from prsm_edge import cli
from prsm_edge.coordinator.service import Coordinator
from prsm_edge.identity import load_or_create
from prsm_edge.io.broker import start_broker
from prsm_edge.localgroup import GroupHost, host_group
from prsm_edge.node.agent import Agent, Redirected
from prsm_edge.protocol import proofs, topics
from prsm_edge.protocol.group import GrantJoin
from prsm_edge.protocol.membership import JoinPolicy
from prsm_edge.protocol.messages import CoordState, NodeCommand
from tests.conftest import Mosquitto, require_mosquitto
from tests.integration.groupkit import GROUP, SITE, agent_options, coordinator, eventually, running

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def hosted(tmp: Path, **kw: object) -> AsyncIterator[GroupHost]:
    """A Mosquitto with dynamic security and a running coordinator (verification off)."""
    require_mosquitto()
    async with host_group(tmp, site=SITE, group=GROUP, verify=False, summary_interval_s=0.5, **kw) as h:  # type: ignore[arg-type]
        task = asyncio.create_task(h.coordinator.run())
        try:
            await asyncio.wait_for(h.coordinator.ready.wait(), 15)
            yield h
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _online(coord: Coordinator, agent: Agent) -> bool:
    m = coord.group.members.get(agent.node_id)
    return m is not None and m.online


async def _refused(agent: Agent, match: str) -> None:
    with pytest.raises(Redirected, match=match):
        async with asyncio.timeout(20):
            await agent.run()


async def test_token_policy_admits_only_holders_of_a_live_token(tmp_path: Path) -> None:
    async with hosted(tmp_path / "host", join_policy=JoinPolicy(name="token")) as h:
        coord = h.coordinator
        await _refused(Agent(agent_options(h.broker.url, tmp_path / "stranger")), "token_required")
        token = str(coord.membership.create_token(int(time.time() * 1000), uses=1))
        member = Agent(agent_options(h.broker.url, tmp_path / "member", join_token=token))
        async with running(member):
            await eventually(lambda: _online(coord, member), timeout=20, what="token holder admitted")
        # the token was for one join: a second node holding it is refused
        await _refused(
            Agent(agent_options(h.broker.url, tmp_path / "copy", join_token=token)), "token_required"
        )
        assert set(coord.group.members) == {member.node_id}


async def test_approval_policy_waits_for_the_host(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "data"
    async with hosted(home / "coordinator" / GROUP, join_policy=JoinPolicy(name="approval")) as h:
        coord = h.coordinator
        agent = Agent(agent_options(h.broker.url, tmp_path / "a"))
        async with running(agent):
            await eventually(lambda: coord.membership.pending() != [], timeout=20, what="join pending")
            assert agent.node_id not in coord.group.members
            # the host approves with the CLI, from another "process" sharing the database
            assert cli.main(["group", "--workdir", str(home), "pending"]) == 0
            assert agent.node_id in capsys.readouterr().out
            assert cli.main(["group", "--workdir", str(home), "approve", agent.node_id]) == 0
            await eventually(lambda: _online(coord, agent), timeout=20, what="approved node online")
        assert cli.main(["group", "--workdir", str(home), "token", "create", "--uses", "2"]) == 0
        assert "." in capsys.readouterr().out


async def test_absent_members_are_evicted_and_lose_their_login(tmp_path: Path) -> None:
    policy = JoinPolicy(evict_after_ms=1_500)
    async with hosted(tmp_path / "host", join_policy=policy, heartbeat_timeout_s=1.0) as h:
        coord = h.coordinator
        agent = Agent(agent_options(h.broker.url, tmp_path / "a"))
        async with running(agent):
            await eventually(lambda: _online(coord, agent), timeout=20)
        username, password = agent._credentials()
        assert username == agent.node_id and password
        await eventually(lambda: agent.node_id not in coord.group.members, timeout=15, what="evicted")
        assert coord.store.load() == []

        async def login_refused() -> bool:
            try:
                async with aiomqtt.Client(
                    h.broker.connect_host, h.broker.port, identifier="evicted", username=username,
                    password=password, timeout=3,
                ):  # fmt: skip
                    return False
            except aiomqtt.MqttError:
                return True

        for _ in range(50):
            if await login_refused():
                break
            await asyncio.sleep(0.1)
        assert await login_refused()


class _SlowIssuer:
    def __init__(self) -> None:
        self.added: list[str] = []

    async def add_node(self, node_id: str, password: str) -> None:
        await asyncio.sleep(3)
        self.added.append(node_id)

    async def remove_node(self, node_id: str) -> None:
        pass


async def test_credentials_are_issued_off_the_read_loop(tmp_path: Path) -> None:
    """Issue 9 item 2: the broker call that issues credentials ran inside the MQTT read loop, so a
    slow or flooded issuer stalled every message of the group. Now the loop only queues the join."""
    issuer = _SlowIssuer()
    coord = coordinator("mqtt://127.0.0.1:1", tmp_path / "coord", issuer=issuer)
    grant = GrantJoin("nslowjoiner00000", b"\x01" * 32, "tx")
    async with asyncio.timeout(1):
        await coord._apply([grant])  # returns at once: nothing awaited the issuer
    worker = asyncio.create_task(coord.admissions.run())
    await eventually(lambda: issuer.added == ["nslowjoiner00000"], timeout=10)
    worker.cancel()


async def test_an_agent_follows_only_its_pinned_coordinator(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """Issue 9 item 1: agents accepted any coordinator state that named its own signer. Now the key
    seen at the first join is pinned; an impostor's state and commands on the same topics are ignored."""
    real = coordinator(mosquitto.url, tmp_path / "real")
    agent = Agent(agent_options(mosquitto.url, tmp_path / "a"))
    async with running(agent):
        async with running(real):
            await eventually(lambda: _online(real, agent), what="joined the real group")
        assert agent.pins.get(SITE, GROUP) == real.identity.public_key
        births = agent.births
        impostor = coordinator(mosquitto.url, tmp_path / "impostor")
        async with running(impostor):
            await eventually(lambda: agent.refused_coordinators > 0, what="impostor's state refused")
            # the impostor also commands the agent to leave: ignored, the agent stays
            await impostor.redirect_all("come to me", to_key=impostor.identity.public_key, to_group=GROUP)
            await asyncio.sleep(0.5)
            assert agent.redirect is None and agent.births == births  # no birth for the impostor
            assert agent.pins.get(SITE, GROUP) == real.identity.public_key
        real2 = coordinator(mosquitto.url, tmp_path / "real")
        async with running(real2):
            await eventually(lambda: _online(real2, agent), what="back with the pinned coordinator")


async def test_a_site_pin_in_settings_decides_who_leads(mosquitto: Mosquitto, tmp_path: Path) -> None:
    site_coord = load_or_create(tmp_path / "site-key")
    real = coordinator(mosquitto.url, tmp_path / "other")  # a coordinator the site did not list
    opts = agent_options(
        mosquitto.url, tmp_path / "a", trusted_coordinators=frozenset({site_coord.public_key})
    )
    agent = Agent(opts)
    async with running(real, agent):
        await eventually(lambda: agent.refused_coordinators > 0, what="unlisted coordinator refused")
        assert agent.births == 0


def _challenge(agent: Agent, now: int, seed: int = 1) -> NodeCommand:
    issued = proofs.make_challenge(
        "nverifier0000000", agent.node_id, "cpu", 1e6, random.Random(seed), now, segments=4, target_ms=10
    )
    wire = msgspec.to_builtins(issued.challenge, builtin_types=(bytes,))
    return NodeCommand(verb="challenge", node=agent.node_id, args={"challenge": wire})


async def test_commands_are_deduplicated_and_deadlines_checked(tmp_path: Path) -> None:
    """Issue 9 item 9: every copy of a cmd/challenge started a proving task. Now each command is
    accepted once (by its signed sequence number), each challenge once (by id), and none after its
    deadline."""
    coord_id = load_or_create(tmp_path / "coord")
    signer = coord_id.signer()
    agent = Agent(agent_options("mqtt://127.0.0.1:1", tmp_path / "a"))
    agent.coordinator = CoordState(
        site=SITE, group=GROUP, status="online", epoch=1, coordinator=coord_id.node_id,
        public_key=coord_id.public_key,
    )  # fmt: skip
    topic = topics.node_cmd(SITE, GROUP, agent.node_id, "challenge")
    now = int(time.time() * 1000)
    cmd = _challenge(agent, now)
    sealed = signer.seal(cmd, now)
    started: list[object] = []
    real_create = asyncio.create_task

    def counting(coro, **kw):  # type: ignore[no-untyped-def]
        started.append(coro)
        return real_create(coro, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(asyncio, "create_task", counting)
        for _ in range(50):
            await agent._on_message(topic, sealed)  # the same bytes again and again
        await agent._on_message(topic, signer.seal(cmd, now))  # re-signed: same challenge id
        late = _challenge(agent, now - 60_000, seed=2)  # issued a minute ago: its deadline has passed
        await agent._on_message(topic, signer.seal(late, now))
    assert len(started) == 1
    for task in list(agent._tasks):
        task.cancel()
    agent.outbox.close()


async def test_the_embedded_broker_listens_on_loopback_unless_asked(tmp_path: Path) -> None:
    """Issue 9 item 1: without Mosquitto the fallback (no ACLs) listened on every interface."""
    async with start_broker(tmp_path / "e1", host="0.0.0.0", prefer="embedded", ws_port=None) as b:
        assert b.host == "127.0.0.1"
    async with start_broker(
        tmp_path / "e2", host="0.0.0.0", prefer="embedded", ws_port=None, expose_embedded=True
    ) as b:
        assert b.host == "0.0.0.0"


def test_dataclass_defaults_stay_usable() -> None:
    assert dataclasses.replace(JoinPolicy(), name="token").name == "token"
