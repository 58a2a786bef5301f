"""Logins are taken away again: `prsm-edge region remove-*` and `prsm-edge gateway remove-login`.

Real processes on real Mosquitto brokers with dynamic security: a removed login is disconnected at once
and refused from then on; removing what is not there says so (exit 1).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import aiomqtt
import pytest

from prsm_edge.errors import BrokerError
from prsm_edge.identity import load_or_create
from prsm_edge.io.brokerinfo import read_local_broker
from prsm_edge.io.dynsec import DynSec, gateway_role, gateway_username
from tests.conftest import free_port, wait_port
from tests.integration.test_federation_cli import Procs, cli, until
from tests.integration.test_federation_cli import procs as procs  # the fixture

pytestmark = pytest.mark.integration

DEADLINE_S = 60.0


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prsm_edge", *argv], capture_output=True, text=True, timeout=60, check=False
    )


async def _held(port: int, user: str, password: str, topic: str) -> aiomqtt.Client:
    client = aiomqtt.Client("127.0.0.1", port, identifier=f"{user}-1", username=user, password=password)
    await client.__aenter__()
    await client.subscribe(topic)
    return client


async def _dropped(client: aiomqtt.Client) -> bool:
    try:
        async with asyncio.timeout(5):
            async for _ in client.messages:
                pass
    except aiomqtt.MqttError:
        return True
    except TimeoutError:
        return False
    return True


async def _refused(port: int, user: str, password: str) -> bool:
    try:
        async with aiomqtt.Client(
            "127.0.0.1", port, identifier=f"{user}-2", username=user, password=password
        ):
            return False
    except aiomqtt.MqttCodeError:
        return True


async def test_region_logins_are_removed_disconnected_and_refused(tmp_path: Path, procs: Procs) -> None:
    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    region_dir, port = tmp_path / "region", free_port()
    procs.start(
        "region",
        "region",
        *("--site", "eu", "--region", "r1", "--host", "127.0.0.1", "--port", str(port)),
        *("--workdir", str(region_dir), "--ws-port", "0"),
    )
    secret = region_dir / "region" / "r1" / "broker" / "admin.secret"
    await until(secret.is_file, "the region's broker", procs, deadline)
    wait_port(port)
    admin = ("region", "--site", "eu", "--region", "r1", "--workdir", str(region_dir))
    group_out = cli(*admin, "add-group", "lab/g1")
    logins = {
        "client": ("region-client-c1", cli(*admin, "add-client", "c1").split()[-1], "c1"),
        "viewer": ("region-viewer-v1", cli(*admin, "add-viewer", "v1").split()[-1], "v1"),
        "group": ("unit-lab-g1", group_out.split("--uplink-password=")[1].split()[0], "lab/g1"),
    }
    for kind, (user, password, name) in logins.items():
        held = await _held(port, user, password, "prsm/v1/eu/r1/coord/state")
        done = run(*admin, f"remove-{kind}", name)
        assert done.returncode == 0 and f"removed login {user}" in done.stdout, done.stdout + done.stderr
        assert await _dropped(held), f"{user} stayed connected"
        assert await _refused(port, user, password), f"{user} could still log in"
        again = run(*admin, f"remove-{kind}", name)
        assert again.returncode == 1 and "nothing removed" in again.stdout
    bad = run(*admin, "remove-client", "Not A Name")
    assert bad.returncode != 0 and "1–40 characters" in bad.stderr


async def test_gateway_remove_login_deletes_its_login_and_bridge(tmp_path: Path, procs: Procs) -> None:
    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    home, port = tmp_path / "host", free_port()
    procs.start(
        "coord",
        "coordinate",
        *("--site", "lab", "--group", "g1", "--host", "127.0.0.1", "--port", str(port)),
        *("--ws-port", "0", "--no-advertise", "--workdir", str(home)),
    )
    broker_dir = home / "coordinator" / "g1" / "broker"
    await until((broker_dir / "admin.secret").is_file, "the group's broker", procs, deadline)
    wait_port(port)
    gw = ("gateway", "--site", "lab", "--group", "g1", "--workdir", str(home))
    # The gateway sets itself up (login, bridge) and runs a moment; the region it names is not there.
    set_up = run(*gw, "--uplink", f"mqtt://127.0.0.1:{free_port()}", "--seconds", "1")
    assert set_up.returncode == 0 and "installed the bridge" in set_up.stderr, set_up.stderr
    bridge = broker_dir / "bridges" / "gateway-g1.conf"
    gateway_id = load_or_create(home / "gateway" / "g1").node_id
    broker = read_local_broker(broker_dir)

    async def exists() -> bool:
        async with DynSec(broker.connect_host, port, broker.admin_username, broker.admin_password) as ds:
            try:
                await ds.command({"command": "getClient", "username": gateway_username(gateway_id)})
            except BrokerError:  # dynamic security answers "Client not found"
                return False
            (roles,) = await ds.command({"command": "listRoles"})
            assert gateway_role(gateway_id) in roles["data"]["roles"]
            return True

    assert bridge.is_file() and await exists()
    done = run(*gw, "remove-login")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"login {gateway_username(gateway_id)}" in done.stdout and "bridge gateway-g1.conf" in done.stdout
    assert not bridge.exists()
    # The coordinator restarts its broker without the bridge (maybe while we ask): ask until it answers.
    await until(lambda: "broker restarted after" in procs.log("coord"), "the broker restart", procs, deadline)
    answer: list[bool] = []

    async def answered() -> bool:
        try:
            answer.append(await exists())
        except (BrokerError, aiomqtt.MqttError):
            return False
        return True

    await until(answered, "the broker's answer after its restart", procs, deadline)
    assert answer == [False]  # the login is gone
    again = run(*gw, "remove-login")
    assert again.returncode == 1 and "nothing removed" in again.stdout
