"""Least privilege for federation logins, on Mosquitto as the package renders it (dynamic security).

A gateway's login on its group's broker reads the summary and its reports and writes its link state
and the requests coming down; it may neither speak as a member or the coordinator nor read the members'
topics. A group's login on the region's broker is confined to its own unit: it cannot write another
group's summary or stream, nor read another group's evidence.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from prsm_edge.io.broker import RunningBroker, start_broker
from prsm_edge.io.dynsec import ROLE_COORDINATOR, ROLE_REGION, ROLE_REGION_VIEWER, DynSec
from prsm_edge.protocol import topics as t
from tests.conftest import require_mosquitto

pytestmark = pytest.mark.integration

SITE, GROUP, GW = "lab", "g1", "ngateway1"
RSITE, REGION = "eu", "r1"
REFUSED = 0x80  # SUBACK failure under MQTT 3.1.1


@contextlib.asynccontextmanager
async def acl_broker(folder: Path) -> AsyncIterator[RunningBroker]:
    require_mosquitto()
    async with start_broker(folder, ws_port=None, prefer="mosquitto") as broker:
        assert broker.acl_enforced
        yield broker


async def _sees_only(watcher: aiomqtt.Client, control: str) -> list[str]:
    """Topics ``watcher`` receives up to and including ``control`` (sent last, on the same QoS 1 path)."""
    seen: list[str] = []
    async with asyncio.timeout(10):
        async for message in watcher.messages:
            seen.append(str(message.topic))
            if str(message.topic) == control:
                return seen
    raise AssertionError("unreachable")


async def test_gateway_login_cannot_act_as_a_member_or_read_members(tmp_path: Path) -> None:
    async with acl_broker(tmp_path / "group") as broker, DynSec.for_broker(broker) as ds:
        await ds.setup_group(SITE, GROUP)
        await ds.add_client("coord", "coord-pw", ROLE_COORDINATOR)
        username = await ds.add_gateway(SITE, GROUP, GW, "gw-pw")
        host, port = broker.connect_host, broker.port
        base = f"{t.ROOT}/{SITE}/{GROUP}"
        async with (
            aiomqtt.Client(host, port, username="coord", password="coord-pw") as coord,
            aiomqtt.Client(host, port, username=username, password="gw-pw") as gw,
        ):
            await coord.subscribe(f"{base}/#", qos=1)
            await coord.subscribe(f"{t.ROOT}/{SITE}/gw/#", qos=1)
            # What it needs: the summary, the reports, its bridge's state, the answers from the group.
            granted = await gw.subscribe(
                [(t.summary(SITE, GROUP), 1), (t.fed_report(SITE, GROUP), 1), (t.gateway_bridge(SITE, GW), 1)]
            )
            assert REFUSED not in list(granted)
            # What it must not read: members' topics, the whole group, another gateway's bridge.
            for pattern in (f"{base}/node/+/birth", f"{base}/#", f"{base}/api/join/req/+"):
                (code,) = await gw.subscribe(pattern, qos=1)
                assert code == REFUSED, pattern
            # What it must not write (QoS 1, published before the allowed control message).
            forged = [
                t.node(t.Kind.NODE_BIRTH, SITE, GROUP, "nmember1"),
                t.coord_state(SITE, GROUP),
                t.summary(SITE, GROUP),
                t.gateway_state(SITE, "nothergw"),
                t.api(t.Kind.API_REQ, SITE, GROUP, "join", "nmember1"),
            ]
            for topic in forged:
                await gw.publish(topic, b"forged", qos=1)
            down = t.api(t.Kind.API_REQ, SITE, GROUP, "region-task", "nregion")
            await gw.publish(down, b"a request from the region", qos=1)
            control = t.gateway_state(SITE, GW)
            await gw.publish(control, b"link state", qos=1)
            seen = await _sees_only(coord, control)
            assert seen == [down, control], seen


async def test_group_login_on_the_region_is_confined_to_its_unit(tmp_path: Path) -> None:
    async with acl_broker(tmp_path / "region") as broker, DynSec.for_broker(broker) as ds:
        await ds.setup_region(RSITE, REGION)
        await ds.add_client("region", "region-pw", ROLE_REGION)
        g1 = await ds.add_unit(RSITE, REGION, SITE, "g1", "g1-pw")
        g2 = await ds.add_unit(RSITE, REGION, SITE, "g2", "g2-pw")
        await ds.add_client("viewer", "viewer-pw", ROLE_REGION_VIEWER)
        host, port = broker.connect_host, broker.port

        def unit(kind: t.Kind, group: str) -> str:
            return t.unit(kind, RSITE, REGION, SITE, group)

        async with (
            aiomqtt.Client(host, port, username="region", password="region-pw") as region,
            aiomqtt.Client(host, port, username=g1, password="g1-pw") as one,
            aiomqtt.Client(host, port, username=g2, password="g2-pw") as two,
            aiomqtt.Client(host, port) as anonymous,
            aiomqtt.Client(host, port, username="viewer", password="viewer-pw") as viewer,
        ):
            await region.subscribe(f"{t.ROOT}/{RSITE}/{REGION}/#", qos=1)
            # g1 reads the region's state and its own rebirth requests, not g2's evidence or requests.
            ok = await one.subscribe(
                [(t.coord_state(RSITE, REGION), 1), (unit(t.Kind.UNIT_REBIRTH, "g1"), 1)]
            )
            assert REFUSED not in list(ok)
            for pattern in (
                unit(t.Kind.UNIT_STREAM, "g2"),
                t.unit_filter(RSITE, REGION, "stream"),
                unit(t.Kind.UNIT_REBIRTH, "g2"),
                t.unit_api(t.Kind.UNIT_API_REQ, RSITE, REGION, SITE, "g2", "region-task", "x"),
            ):
                (code,) = await one.subscribe(pattern, qos=1)
                assert code == REFUSED, pattern
            (code,) = await anonymous.subscribe("#", qos=1)
            assert code == REFUSED
            # g1 cannot write g2's summary or stream, nor answer for the region.
            for topic in (
                unit(t.Kind.UNIT_SUMMARY, "g2"),
                unit(t.Kind.UNIT_STREAM, "g2"),
                t.coord_state(RSITE, REGION),
                t.api(t.Kind.API_RESP, RSITE, REGION, "submit", "nclient"),
            ):
                await one.publish(topic, b"forged", qos=1)
            await anonymous.publish(unit(t.Kind.UNIT_SUMMARY, "g1"), b"forged", qos=1)
            await viewer.publish(unit(t.Kind.UNIT_SUMMARY, "g1"), b"forged", qos=1)  # read-only
            mine = unit(t.Kind.UNIT_STREAM, "g1")
            await one.publish(mine, b"evidence", qos=1)
            control = unit(t.Kind.UNIT_SUMMARY, "g2")
            await two.publish(control, b"g2's own summary", qos=1)
            seen = await _sees_only(region, control)
            assert seen == [mine, control], seen
