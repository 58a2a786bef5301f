"""A broker that `prsm-edge coordinate` runs carries a bridge dropped into its folder, safely.

Mosquitto 2.0.11 cannot add a bridge while running, so the owner of the broker restarts it when the
folder changes; a file Mosquitto refuses is set aside and the broker comes back without it.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiomqtt
import pytest

from prsm_edge.gateway.bridge import render_bridge
from prsm_edge.io.bridges import install_bridge, restart_on_change
from prsm_edge.io.broker import start_broker
from tests.conftest import require_mosquitto
from tests.integration.groupkit import eventually

pytestmark = pytest.mark.integration


async def test_a_bridge_installed_in_the_folder_is_carried_after_one_restart(tmp_path: Path) -> None:
    require_mosquitto()
    async with (
        start_broker(tmp_path / "region", ws_port=None, acl=False) as region,
        start_broker(tmp_path / "group", ws_port=None) as group,
    ):
        assert group.bridge_dir is not None and group.bridge_dir.is_dir()
        assert group.loaded_bridges == {}
        restarts: list[list[str]] = []

        async def restarted(changed: list[str]) -> None:
            restarts.append(changed)

        watch = asyncio.create_task(restart_on_change(group, poll_s=0.1, on_restart=restarted))
        try:
            text = render_bridge(
                site="lab", group="g1", gateway="ngw", region_site="eu", region="r1", uplinks=[region.url]
            )
            first_pid = group.pid
            assert install_bridge(group.bridge_dir, "gateway-g1", text)
            await eventually(lambda: restarts == [["gateway-g1.conf"]], timeout=15, what="one restart")
            assert group.pid != first_pid and "gateway-g1.conf" in group.loaded_bridges
            # The bridge is up: its notification reaches the region's broker.
            async with aiomqtt.Client(region.connect_host, region.port) as client:
                await client.subscribe("prsm/v1/lab/gw/ngw/bridge", qos=1)
                async with asyncio.timeout(10):
                    async for message in client.messages:
                        if message.payload == b"1":
                            break
            # The same text again changes nothing, so no second restart.
            assert not install_bridge(group.bridge_dir, "gateway-g1", text)
            # A file Mosquitto refuses is set aside; the broker comes back with the good bridge.
            (group.bridge_dir / "broken.conf").write_text("connection x\nno_such_option 1\n")
            await eventually(lambda: len(restarts) == 2, timeout=20, what="a restart without the bad file")
            assert restarts[1] == []  # nothing new carried
            assert (group.bridge_dir / "broken.conf.rejected").is_file()
            assert list(group.loaded_bridges) == ["gateway-g1.conf"]
            assert group.running and group.pid is not None
            assert not watch.done()
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
