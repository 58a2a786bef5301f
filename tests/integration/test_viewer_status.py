"""Read-only viewer logins and `prsm-edge status`, against a real `coordinate` process on Mosquitto."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiomqtt
import pytest

from tests.conftest import free_port, require_mosquitto
from tests.integration.test_cli_group import cli, wait_line

pytestmark = pytest.mark.integration


def prsm(home: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {"PRSM_EDGE_HOME": str(home), "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}
    return subprocess.run(
        [sys.executable, "-m", "prsm_edge", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def status_json(home: Path, port: str, *login: str) -> dict[str, object]:
    result = prsm(home, "status", "--broker", f"mqtt://127.0.0.1:{port}", "--site", "lab", "--group", "vw",
                  "--json", *login)  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    snap: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    return snap


async def try_to_publish(port: int, username: str, password: str, topic: str) -> None:
    async with aiomqtt.Client(
        "127.0.0.1", port, username=username, password=password, identifier="viewer-pub"
    ) as c:
        await c.publish(topic, b"\xa0", qos=1, retain=True)  # 3.1.1: a denied publish is dropped silently


def test_viewer_reads_the_group_verifies_it_and_cannot_write(tmp_path: Path) -> None:
    require_mosquitto()
    home = tmp_path / "home"
    port, ws = free_port(), free_port()
    with cli(home) as run:
        coord = run.start(
            "coordinate", "--host", "127.0.0.1", "--port", str(port), "--ws-port", str(ws), "--no-advertise",
            "--group", "vw", "--site", "lab", "--seconds", "60", "--workdir", str(tmp_path / "c"),
            watch=True,
        )  # fmt: skip
        wait_line(coord, "mosquitto broker at", 15)
        run.start(
            "join", "--broker", f"mqtt://127.0.0.1:{port}", "--group", "vw", "--site", "lab", "--no-attest",
            "--workdir", str(tmp_path / "n"),
        )  # fmt: skip
        wait_line(coord, "1/1 online", 30)

        added = prsm(home, "viewer", "--workdir", str(tmp_path / "c"), "--group", "vw", "--site", "lab",
                     "add", "ops")  # fmt: skip
        assert added.returncode == 0, added.stderr
        url = next(line.strip() for line in added.stdout.splitlines() if line.strip().startswith("http://"))
        parts = urlsplit(url)
        assert parts.port == ws and parts.path == "/"
        fragment = {k: v[0] for k, v in parse_qs(parts.fragment).items()}
        assert fragment["site"] == "lab" and fragment["group"] == "vw" and fragment["user"] == "viewer-ops"
        assert len(bytes.fromhex(fragment["key"])) == 32  # the coordinator's key, pinned by the page

        login = ("--username", "viewer-ops", "--password", fragment["pass"])
        snap = status_json(home, str(port), *login, "--key", fragment["key"])
        coordinator = snap["coordinator"]
        assert isinstance(coordinator, dict) and coordinator["status"] == "online"
        assert coordinator["public_key"] == fragment["key"]
        nodes = snap["nodes"]
        assert isinstance(nodes, list) and len(nodes) == 1 and nodes[0]["online"] is True
        assert snap["unverified"] == 0

        # --watch keeps reading and prints a fresh verified picture each interval (one JSON object a line).
        env = {"PRSM_EDGE_HOME": str(home), "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}
        watch = subprocess.Popen(
            [sys.executable, "-m", "prsm_edge", "status", "--broker", f"mqtt://127.0.0.1:{port}",
             "--site", "lab", "--group", "vw", "--json", "--watch", "--interval", "0.5", *login],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
        )  # fmt: skip
        try:
            assert watch.stdout is not None
            frames = [json.loads(watch.stdout.readline()) for _ in range(3)]
        finally:
            watch.kill()
            watch.wait(10)
            if watch.stdout is not None:
                watch.stdout.close()
        assert all(f["coordinator"]["status"] == "online" and len(f["nodes"]) == 1 for f in frames)
        assert frames[-1]["verified"] >= frames[0]["verified"]

        # The node's own login reads the roster too (no --username: its stored credentials).
        own = status_json(home, str(port), "--workdir", str(tmp_path / "n"))
        assert [n["node"] for n in own["nodes"]] == [nodes[0]["node"]]  # type: ignore[index]

        # A viewer may not write: its retained publish on the node's birth topic never lands.
        birth = f"prsm/v1/lab/vw/node/{nodes[0]['node']}/birth"
        asyncio.run(try_to_publish(port, "viewer-ops", fragment["pass"], birth))
        time.sleep(0.5)
        assert status_json(home, str(port), *login)["unverified"] == 0

        listed = prsm(home, "viewer", "--workdir", str(tmp_path / "c"), "--group", "vw", "list")
        assert listed.stdout.split() == ["viewer-ops"]
        removed = prsm(home, "viewer", "--workdir", str(tmp_path / "c"), "--group", "vw", "remove", "ops")
        assert removed.returncode == 0
        broker = f"mqtt://127.0.0.1:{port}"
        refused = prsm(home, "status", "--broker", broker, "--site", "lab", "--group", "vw", *login)
        assert refused.returncode == 1 and "cannot read" in refused.stderr


def test_viewer_without_a_coordinator_here_says_what_to_do(tmp_path: Path) -> None:
    result = prsm(tmp_path / "home", "viewer", "--workdir", str(tmp_path / "none"), "add", "ops")
    assert result.returncode == 1
    assert "no broker configuration" in result.stderr and "prsm-edge coordinate" in result.stderr


def test_the_demo_prints_a_working_dashboard_link(tmp_path: Path) -> None:
    require_mosquitto()
    result = prsm(tmp_path / "home", "demo", "--nodes", "1", "--seconds", "4", "--no-table", "--broker",
                  "mosquitto", "--no-verify", timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stderr.splitlines() if x.startswith("dashboard (read-only login"))
    url = line.split(": ", 1)[1]
    fragment = {k: v[0] for k, v in parse_qs(urlsplit(url).fragment).items()}
    assert fragment["user"] == "viewer-demo" and fragment["site"] == "demo" and len(fragment["key"]) == 64
