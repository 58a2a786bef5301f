"""Upgrading an existing group's broker: a coordinator start brings node roles made by an older release
to the current rules, on a real Mosquitto with dynamic security, with no rejoin.

The old roles are made as the release before Home Assistant controls made them (no ``controls``/``ack``
publish, no ``set/+`` subscription). One of them also carries a grant wider than any release gave (a
tampered or hand-edited role), and one belongs to another group on the same broker: the upgrade must
narrow the first to exactly the current rules and leave the second without any of this group's rights.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from prsm_edge.io.dynsec import NODE_API_METHODS, NODE_LEAVES, ROLE_NODE, DynSec, node_role, node_role_acls
from prsm_edge.localgroup import host_group
from prsm_edge.protocol.homeassistant import node_topics
from tests.conftest import require_mosquitto

pytestmark = pytest.mark.integration

SITE, GROUP = "lab", "g1"
BASE = f"prsm/v1/{SITE}/{GROUP}"
NOT_AUTHORIZED = 0x87
PREFIX = f"node roles of {SITE}/{GROUP}: "


def allow(acltype: str, topic: str) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "priority": 0, "allow": True}


def old_node_acls(node: str) -> list[dict[str, Any]]:
    """A node's role as the release before Home Assistant controls created it at admission."""
    own = [f"{BASE}/node/{node}/{leaf}" for leaf in NODE_LEAVES]
    api = [f"{BASE}/api/{method}/req/{node}" for method in NODE_API_METHODS]
    return [
        *(allow("publishClientSend", t) for t in own + api),
        allow("subscribePattern", f"{BASE}/node/{node}/cmd/#"),
        allow("subscribePattern", f"{BASE}/node/{node}/bench/#"),
        allow("subscribePattern", f"{BASE}/api/+/resp/{node}"),
    ]


def admitted(node: str, acls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The dynsec commands that made a node's role and login (as ``DynSec.add_node`` does)."""
    roles = [{"rolename": node_role(node), "priority": 10}, {"rolename": ROLE_NODE, "priority": 0}]
    return [
        {"command": "createRole", "rolename": node_role(node), "acls": acls},
        {"command": "createClient", "username": node, "password": f"pw-{node}", "roles": roles},
    ]


async def acls_of(ds: DynSec, role: str) -> list[tuple[str, str, int, bool]]:
    (reply,) = await ds.command({"command": "getRole", "rolename": role})
    acls = reply["data"]["role"]["acls"]
    return sorted((a["acltype"], a["topic"], a["priority"], a["allow"]) for a in acls)


def keys(acls: list[dict[str, Any]]) -> list[tuple[str, str, int, bool]]:
    return sorted((a["acltype"], a["topic"], a["priority"], a["allow"]) for a in acls)


def client(port: int, user: str) -> aiomqtt.Client:
    password = "spy-pw" if user == "spy" else f"pw-{user}"
    return aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=user,
        username=user,
        password=password,
        protocol=aiomqtt.ProtocolVersion.V5,
    )


async def delivered(port: int, sender: str, attempts: list[str], marker: str) -> list[str]:
    """Which of ``attempts`` (published by ``sender``) the broker let through to a read-all spy.

    ``marker`` is a topic the sender may surely publish; one client's QoS 1 messages arrive in order, so
    anything let through arrives before it."""
    async with client(port, "spy") as spy, client(port, sender) as c:
        await spy.subscribe("prsm/#", qos=1)
        await spy.subscribe("prsm-ha/#", qos=1)
        for topic in attempts:
            await c.publish(topic, b"attempt", qos=1)
        await c.publish(marker, b"marker", qos=1)
        seen: list[str] = []
        async with asyncio.timeout(5):
            async for message in spy.messages:
                if str(message.topic) == marker and message.payload == b"marker":
                    return seen
                seen.append(str(message.topic))
    raise AssertionError("the spy's stream ended")


async def may_subscribe(port: int, user: str, topic_filter: str) -> bool:
    async with client(port, user) as c:
        (code,) = await c.subscribe(topic_filter, qos=1)
        return (code if isinstance(code, int) else code.value) != NOT_AUTHORIZED


def upgrade_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.getMessage().startswith(f"node roles of {SITE}/{GROUP}")
    ]


async def test_a_coordinator_start_upgrades_old_node_roles_and_never_widens_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    require_mosquitto()
    caplog.set_level(logging.INFO, logger="prsm_edge.io.dynsec")
    work = tmp_path / "host"
    n1, n2, n3 = "n1", "n2", "n3"
    ha1 = node_topics(SITE, GROUP, n1)
    foreign = [allow("publishClientSend", f"prsm/v1/{SITE}/g2/node/{n3}/state")]
    widened = [
        *old_node_acls(n2),
        allow("publishClientSend", f"{BASE}/#"),  # a grant no release gave
        allow("publishClientSend", f"prsm-ha/{SITE}/{GROUP}/+/set/+"),  # Home Assistant's alone
    ]
    async with host_group(work, site=SITE, group=GROUP, ws_port=None, verify=False) as host:
        assert host.dynsec is not None
        port = host.broker.port
        await host.dynsec.command(
            *admitted(n1, old_node_acls(n1)),
            *admitted(n2, widened),
            {"command": "createRole", "rolename": node_role(n3), "acls": foreign},
            {"command": "createRole", "rolename": "spy", "acls": [allow("subscribePattern", "#")]},
            {
                "command": "createClient",
                "username": "spy",
                "password": "spy-pw",
                "roles": [{"rolename": "spy"}],
            },
        )
        # The old rules, as an upgrading deployment has them: the node's answer to Home Assistant is dropped.
        assert await delivered(port, n1, [ha1.ack], f"{BASE}/node/{n1}/state") == []
        assert not await may_subscribe(port, n1, ha1.commands)

    caplog.clear()
    async with host_group(work, site=SITE, group=GROUP, ws_port=None, verify=False) as host:
        assert host.dynsec is not None
        port = host.broker.port
        # n1 now answers Home Assistant and reads its commands, with no rejoin.
        assert await delivered(port, n1, [ha1.ack, ha1.controls], f"{BASE}/node/{n1}/state") == [
            ha1.ack,
            ha1.controls,
        ]
        assert await may_subscribe(port, n1, ha1.commands)
        # n2's role is exactly the current rules: its wider grants are gone.
        assert await acls_of(host.dynsec, node_role(n2)) == keys(node_role_acls(SITE, GROUP, n2))
        attempts = [f"{BASE}/node/{n1}/birth", ha1.command("pause"), f"{BASE}/summary"]
        assert await delivered(port, n2, attempts, f"{BASE}/node/{n2}/state") == []
        # Another group's role got none of this group's rights.
        assert await acls_of(host.dynsec, node_role(n3)) == keys(foreign)
        assert upgrade_logs(caplog) == [
            f"{PREFIX}2 brought up to the current rules, 0 already current, 1 left alone"
        ]
        after_first = {r: await acls_of(host.dynsec, node_role(r)) for r in (n1, n2, n3)}

    caplog.clear()
    async with host_group(work, site=SITE, group=GROUP, ws_port=None, verify=False) as host:
        assert host.dynsec is not None
        assert upgrade_logs(caplog) == [
            f"{PREFIX}0 brought up to the current rules, 2 already current, 1 left alone"
        ]
        assert {r: await acls_of(host.dynsec, node_role(r)) for r in (n1, n2, n3)} == after_first
