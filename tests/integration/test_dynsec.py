"""Mosquitto's dynamic security driven by DynSec: the rules really hold on a real broker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiomqtt
import pytest

from prsm_edge.errors import BrokerError
from prsm_edge.io.broker import RunningBroker, start_broker
from prsm_edge.io.dynsec import (
    NODE_API_METHODS,
    ROLE_COORDINATOR,
    ROLE_VIEWER,
    DynSec,
    gateway_role,
    node_role,
    node_role_acls,
)
from tests.conftest import require_mosquitto

pytestmark = pytest.mark.integration

SITE, GROUP = "lab", "g1"
BASE = f"prsm/v1/{SITE}/{GROUP}"
V5 = aiomqtt.ProtocolVersion.V5
NOT_AUTHORIZED = 0x87


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[RunningBroker]:
    require_mosquitto()
    async with start_broker(tmp_path / "coord") as b:
        yield b


@pytest.fixture
async def ds(broker: RunningBroker) -> AsyncIterator[DynSec]:
    async with DynSec.for_broker(broker, timeout=3) as d:
        await d.setup_group(SITE, GROUP)
        await d.command(
            {"command": "createRole", "rolename": "spy", "acls": [_allow("subscribePattern", "#")]},
            {
                "command": "createClient",
                "username": "spy",
                "password": "spy-pw",
                "roles": [{"rolename": "spy"}],
            },
        )
        yield d


def _allow(acltype: str, topic: str) -> dict[str, object]:
    return {"acltype": acltype, "topic": topic, "allow": True}


def _client(
    b: RunningBroker, name: str, user: str | None = None, password: str | None = None, **kw: object
) -> aiomqtt.Client:
    return aiomqtt.Client(
        b.connect_host,
        b.port,
        identifier=name,
        username=user,
        password=password,
        protocol=V5,
        **kw,  # type: ignore[arg-type]
    )


@asynccontextmanager
async def spying(b: RunningBroker) -> AsyncIterator[aiomqtt.Client]:
    """A client that may read every topic: what it sees is what the broker let through."""
    async with _client(b, "spy", "spy", "spy-pw") as spy:
        await spy.subscribe("prsm/#", qos=1)
        yield spy


async def passed(spy: aiomqtt.Client, sender: aiomqtt.Client, attempts: list[str], marker: str) -> list[str]:
    """Publish ``attempts`` then an allowed ``marker`` from ``sender``; the topics the spy saw before it.

    One client's QoS 1 messages reach a subscriber in order, so anything the broker let through
    arrives before the marker: no sleeping and guessing.
    """
    for topic in attempts:
        await sender.publish(topic, b"attempt", qos=1)
    await sender.publish(marker, b"marker", qos=1)
    seen: list[str] = []
    async with asyncio.timeout(3):
        async for message in spy.messages:
            if str(message.topic) == marker and message.payload == b"marker":
                return seen
            seen.append(str(message.topic))
    raise AssertionError("the spy's stream ended")


async def granted(client: aiomqtt.Client, topic_filter: str) -> bool:
    (code,) = await client.subscribe(topic_filter, qos=1)
    value = code if isinstance(code, int) else code.value
    if value == NOT_AUTHORIZED:
        return False
    assert value in (0, 1), code
    return True


async def test_a_node_publishes_only_under_its_own_subtree(broker: RunningBroker, ds: DynSec) -> None:
    await ds.add_node("n1", "pw-n1")
    await ds.add_node("n2", "pw-n2")
    async with spying(broker) as spy, _client(broker, "n1", "n1", "pw-n1") as n1:
        own = [f"{BASE}/node/n1/birth", f"{BASE}/node/n1/telemetry", f"{BASE}/api/join/req/n1"]
        assert await passed(spy, n1, own, f"{BASE}/node/n1/state") == own
        forged = [
            f"{BASE}/node/n2/birth",  # another node's topic
            f"{BASE}/node/n1/cmd/rebirth",  # commands come from the coordinator only
            f"{BASE}/api/join/req/n2",  # a request in another node's name
            f"{BASE}/coord/state",
            f"{BASE}/summary",
            f"prsm/v1/{SITE}/g2/node/n1/birth",  # another group
        ]
        assert await passed(spy, n1, forged, f"{BASE}/node/n1/state") == []
        for allowed in (
            f"{BASE}/node/n1/cmd/#",
            f"{BASE}/coord/#",
            f"{BASE}/summary",
            f"{BASE}/node/+/birth",
            f"{BASE}/node/+/proof",
            f"{BASE}/api/+/resp/n1",
        ):
            assert await granted(n1, allowed), allowed
        for refused in (
            f"{BASE}/node/n2/cmd/#",
            f"{BASE}/#",
            f"{BASE}/node/+/telemetry",
            f"{BASE}/api/+/resp/n2",
        ):
            assert not await granted(n1, refused), refused


async def test_the_coordinator_reaches_a_node_and_the_node_sees_it(broker: RunningBroker, ds: DynSec) -> None:
    await ds.add_node("n1", "pw-n1")
    await ds.add_client("coord", "pw-coord", ROLE_COORDINATOR)
    async with (
        _client(broker, "coord", "coord", "pw-coord") as coord,
        _client(broker, "n1", "n1", "pw-n1") as n1,
    ):
        assert await granted(coord, f"{BASE}/#") and await granted(coord, f"prsm/v1/{SITE}/gw/#")
        assert await granted(n1, f"{BASE}/node/n1/cmd/#")
        await coord.publish(f"{BASE}/node/n1/cmd/challenge", b"nonce", qos=1)
        async with asyncio.timeout(3):
            async for message in n1.messages:
                assert str(message.topic) == f"{BASE}/node/n1/cmd/challenge"
                break
        await n1.publish(f"{BASE}/node/n1/proof", b"proof", qos=1)
        async with asyncio.timeout(3):
            async for message in coord.messages:
                if str(message.topic) == f"{BASE}/node/n1/proof":
                    break


async def test_an_anonymous_joiner_may_only_ask_to_join(broker: RunningBroker, ds: DynSec) -> None:
    async with spying(broker) as spy, _client(broker, "joiner-x") as anon:
        forged = [f"{BASE}/node/x/birth", f"{BASE}/coord/state", f"{BASE}/api/claim/req/x", "prsm/v1/other"]
        assert await passed(spy, anon, forged, f"{BASE}/api/join/req/x") == []
        assert await granted(anon, f"{BASE}/coord/state")
        assert await granted(anon, f"{BASE}/api/join/resp/joiner-x")
        for refused in (
            f"{BASE}/node/+/birth",
            f"{BASE}/#",
            f"{BASE}/summary",
            f"{BASE}/api/claim/resp/joiner-x",
        ):
            assert not await granted(anon, refused), refused


async def test_a_viewer_over_websockets_reads_but_cannot_publish(broker: RunningBroker, ds: DynSec) -> None:
    await ds.add_client("dash", "pw-dash", ROLE_VIEWER)
    await ds.add_client("coord", "pw-coord", ROLE_COORDINATOR)
    assert broker.ws_port is not None
    viewer = aiomqtt.Client(
        broker.connect_host,
        broker.ws_port,
        identifier="dash",
        username="dash",
        password="pw-dash",
        transport="websockets",
        websocket_path="/mqtt",
    )
    async with spying(broker) as spy, viewer, _client(broker, "coord", "coord", "pw-coord") as coord:
        assert await granted(viewer, f"{BASE}/#")
        await coord.publish(f"{BASE}/summary", b"summary", qos=1, retain=True)
        async with asyncio.timeout(3):
            async for message in viewer.messages:
                assert str(message.topic) == f"{BASE}/summary" and message.payload == b"summary"
                break
        for topic in (f"{BASE}/summary", f"{BASE}/node/dash/birth", f"{BASE}/api/join/req/dash"):
            await viewer.publish(topic, b"forged", qos=1)
        # The coordinator's marker after the viewer's attempts: the spy saw the summary once, then it.
        seen = await passed(spy, coord, [], f"{BASE}/coord/state")
        assert seen == [f"{BASE}/summary"]
        # Bandwidth-check chunks are the coordinator's alone: a viewer on '#' never receives them.
        await coord.publish(f"{BASE}/node/n1/bw", b"chunk" * 1000, qos=1)
        await coord.publish(f"{BASE}/coord/roster", b"marker", qos=1)
        async with asyncio.timeout(3):
            async for message in viewer.messages:
                assert not str(message.topic).endswith("/bw")
                if str(message.topic) == f"{BASE}/coord/roster":
                    break


async def test_removed_nodes_are_disconnected_and_refused(broker: RunningBroker, ds: DynSec) -> None:
    await ds.add_node("n1", "pw-n1")
    async with _client(broker, "n1", "n1", "pw-n1") as n1:
        await ds.remove_node("n1")
        with pytest.raises(aiomqtt.MqttError):
            async with asyncio.timeout(3):
                async for _ in n1.messages:
                    pass
    with pytest.raises(aiomqtt.MqttCodeError):
        async with _client(broker, "n1b", "n1", "pw-n1"):
            pass
    await ds.remove_node("n1")  # removing again is fine
    (reply,) = await ds.command({"command": "listRoles"})
    assert node_role("n1") not in reply["data"]["roles"]


async def test_setup_is_idempotent_and_survives_a_coordinator_restart(tmp_path: Path) -> None:
    require_mosquitto()
    work = tmp_path / "coord"
    async with start_broker(work, ws_port=None) as b:
        async with DynSec.for_broker(b) as d:
            await d.setup_group(SITE, GROUP)
            await d.setup_group(SITE, GROUP)  # a coordinator restart runs it again
            await d.add_node("n1", "old-pw")
            await d.add_node("n1", "new-pw")  # a rejoin replaces the password
            await d.add_client("coord", "pw-coord", ROLE_COORDINATOR)
            await d.add_client("coord", "pw-coord", ROLE_COORDINATOR)
            (reply,) = await d.command({"command": "getRole", "rolename": node_role("n1")})
            assert len(reply["data"]["role"]["acls"]) == len(node_role_acls(SITE, GROUP, "n1"))  # replaced
        first_admin = b.admin_password
    # A new broker process on the same working directory: credentials and roles persist.
    async with start_broker(work, ws_port=None) as b:
        assert b.admin_password != first_admin
        with pytest.raises(aiomqtt.MqttCodeError):
            async with _client(b, "n1", "n1", "old-pw"):
                pass
        async with _client(b, "n1", "n1", "new-pw") as n1:
            assert await granted(n1, f"{BASE}/node/n1/cmd/#")
        async with DynSec.for_broker(b) as d:
            await d.setup_group(SITE, GROUP)
            await d.add_node("n1", "newer-pw")


async def test_errors_are_broker_errors(broker: RunningBroker, ds: DynSec) -> None:
    with pytest.raises(BrokerError, match="Role not found"):
        await ds.add_client("x", "pw", "no-such-role")
    with pytest.raises(BrokerError, match="node id"):
        await ds.add_node("bad/id", "pw")
    with pytest.raises(BrokerError, match="Unknown command"):
        await ds.command({"command": "noSuchCommand"})


async def test_wrong_admin_password_and_missing_setup(broker: RunningBroker) -> None:
    with pytest.raises(BrokerError, match="cannot connect"):
        async with DynSec(broker.connect_host, broker.port, "prsm-admin", "wrong", timeout=2):
            pass
    async with DynSec.for_broker(broker) as d:
        with pytest.raises(BrokerError, match="setup_group"):
            await d.add_node("n1", "pw")


async def test_a_broker_without_the_plugin_times_out_and_the_embedded_one_is_refused(tmp_path: Path) -> None:
    require_mosquitto()
    async with start_broker(tmp_path / "open", acl=False, ws_port=None) as b:
        with pytest.raises(BrokerError, match="no dynamic security"):
            DynSec.for_broker(b)
        async with DynSec(b.connect_host, b.port, "anyone", "pw", timeout=0.5) as d:
            with pytest.raises(BrokerError, match="did not answer"):
                await d.setup_group(SITE, GROUP)


async def test_commands_reconnect_after_a_broker_restart(broker: RunningBroker, ds: DynSec) -> None:
    await ds.add_node("n1", "pw-n1")
    await broker.restart()
    await ds.add_node("n2", "pw-n2")  # the admin connection died with the old process
    async with _client(broker, "n1", "n1", "pw-n1") as n1, _client(broker, "n2", "n2", "pw-n2") as n2:
        assert await granted(n1, f"{BASE}/node/n1/cmd/#") and await granted(n2, f"{BASE}/node/n2/cmd/#")


async def stored(b: RunningBroker, topic_filter: str) -> list[str]:
    """The retained topics under ``topic_filter`` the broker holds, read by a fresh spy.

    Retained messages are sent right after the subscription is granted, before anything published
    later: a non-retained marker published after subscribing ends the list.
    """
    marker = f"{BASE}/node/zz-marker/state"
    found: list[str] = []
    async with _client(b, "spy-retained", "spy", "spy-pw") as spy, _client(b, "coord-m", "coord", "pw") as c:
        await spy.subscribe(topic_filter, qos=1)
        await spy.subscribe(marker, qos=1)
        await c.publish(marker, b"end", qos=1)
        async with asyncio.timeout(10):
            async for message in spy.messages:
                if str(message.topic) == marker:
                    return found
                if message.retain:
                    found.append(str(message.topic))
    raise AssertionError("the spy's stream ended")


async def test_a_member_cannot_grow_the_broker_with_retained_junk(broker: RunningBroker, ds: DynSec) -> None:
    """Issue 9 item 9: with its own login a member could publish retained messages at any depth under
    node/{id}/# (20,000 topics grew Mosquitto by 16.5 MiB). Now its ACL names its exact topics."""
    await ds.add_node("n1", "pw-n1")
    await ds.add_client("coord", "pw", ROLE_COORDINATOR)
    junk = [f"{BASE}/node/n1/junk/{i}/a/b/c" for i in range(500)]
    junk += [f"{BASE}/node/n1/telemetry/{i}" for i in range(250)]  # deeper than a real leaf
    junk += [f"{BASE}/api/junk{i}/req/n1" for i in range(250)]  # made-up API methods
    async with _client(broker, "n1", "n1", "pw-n1") as n1:
        for topic in junk:
            await n1.publish(topic, b"x" * 1024, qos=1, retain=True)
        for leaf in ("birth", "state"):
            await n1.publish(f"{BASE}/node/n1/{leaf}", b"legit", qos=1, retain=True)
    held = await stored(broker, "prsm/#")
    assert sorted(held) == [f"{BASE}/node/n1/birth", f"{BASE}/node/n1/state"], held[:5]


async def test_a_member_still_reaches_every_topic_it_needs(broker: RunningBroker, ds: DynSec) -> None:
    await ds.add_node("n1", "pw-n1")
    async with spying(broker) as spy, _client(broker, "n1", "n1", "pw-n1") as n1:
        own = (
            [f"{BASE}/node/n1/{leaf}" for leaf in ("birth", "claim", "proof", "telemetry")]
            + [f"{BASE}/node/n1/bench/echo"]
            + [f"{BASE}/api/{m}/req/n1" for m in NODE_API_METHODS]
        )
        assert await passed(spy, n1, own, f"{BASE}/node/n1/state") == own


async def test_a_removed_gateway_login_is_disconnected_refused_and_its_role_gone(
    broker: RunningBroker, ds: DynSec
) -> None:
    username = await ds.add_gateway("lab", "g1", "gwx", "pw-gateway-x")
    async with _client(broker, "gwx", username, "pw-gateway-x") as gw:
        assert await ds.remove_login(username, gateway_role("gwx")) is True
        with pytest.raises(aiomqtt.MqttError):
            async with asyncio.timeout(3):
                async for _ in gw.messages:
                    pass
    with pytest.raises(aiomqtt.MqttCodeError):
        async with _client(broker, "gwx2", username, "pw-gateway-x"):
            pass
    assert await ds.remove_login(username, gateway_role("gwx")) is False  # not there: says so
    (reply,) = await ds.command({"command": "listRoles"})
    assert gateway_role("gwx") not in reply["data"]["roles"]
