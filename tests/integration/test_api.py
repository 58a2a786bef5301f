"""The API end to end on a real Mosquitto: every method over MQTT, owner vs non-owner changes, replays,
the agent's local HTTP API (curl), pairing, the coordinator's read-only HTTP API, and the CLI."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from prsm_edge.coordinator.service import Coordinator
from prsm_edge.errors import Reason
from prsm_edge.io.api_client import ApiClient, connect
from prsm_edge.node.agent import Agent
from prsm_edge.node.owner_api import OwnerOptions
from prsm_edge.node.owners import OwnerRegistry
from prsm_edge.protocol.api import seal_request
from prsm_edge.protocol.envelope import Signer, open_envelope
from prsm_edge.protocol.messages import ApiResponse
from tests.conftest import Mosquitto
from tests.integration.groupkit import GROUP, SITE, agent_options, coordinator, eventually, running

pytestmark = pytest.mark.integration


def _ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Lab:
    coord: Coordinator
    agent: Agent
    owner: Signer
    stranger: Signer
    url: str

    @property
    def node(self) -> str:
        return self.agent.node_id

    def cpu_offered(self) -> float:
        member = self.coord.group.members[self.node]
        return sum(r.capacity for r in member.resources)

    @property
    def local(self) -> str:
        return self.agent.owner_api.local_url


@contextlib.asynccontextmanager
async def lab(mosquitto: Mosquitto, tmp_path: Path) -> AsyncIterator[Lab]:
    coord = coordinator(mosquitto.url, tmp_path / "coord", http_port=0)
    ui = tmp_path / "ui"
    ui.mkdir()
    (ui / "index.html").write_text("<!doctype html><title>owner</title>")
    (ui / "app.js").write_text("export const x = 1;")
    options = OwnerOptions(local_port=0, settings_path=tmp_path / "node-settings.toml", static_dir=ui)
    agent = Agent(agent_options(mosquitto.url, tmp_path / "a1", owner=options))
    owner, stranger = Signer(SigningKey.generate()), Signer(SigningKey.generate())
    OwnerRegistry(agent.options.workdir).add(owner.public_key, "test owner", _ms())
    async with running(coord, agent):
        await eventually(lambda: agent.born.is_set() and agent.node_id in coord.group.members, what="joined")
        await eventually(lambda: bool(agent.owner_api.local_url and coord.api.http_url), what="HTTP up")
        yield Lab(coord, agent, owner, stranger, mosquitto.url)


@contextlib.asynccontextmanager
async def client(url: str, signer: Signer) -> AsyncIterator[ApiClient]:
    async with connect(url, SITE, GROUP, signer) as c:
        yield c


async def curl(*args: str) -> tuple[int, dict[str, object]]:
    """Run curl; the HTTP status and the JSON body."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "-s", "-w", "\n%{http_code}", *args, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    body, _, status = out.decode().rpartition("\n")
    return int(status), json.loads(body) if body else {}


async def post_signed(url: str, envelope: bytes, method: str = "POST") -> tuple[int, dict[str, object]]:
    body = json.dumps({"signed": base64.b64encode(envelope).decode()})
    return await curl("-X", method, "-H", "Content-Type: application/json", "--data", body, url)


async def test_every_method_over_mqtt(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with lab(mosquitto, tmp_path) as g, client(g.url, g.owner) as c:
        node = {"node": g.node}
        health = await c.call("health")
        assert health.ok and health.result["role"] == "coordinator" and health.result["members"] == 1
        status = await c.call("status", node)
        assert status.ok and status.result["level"] == "self_reported" and status.result["online"]
        summary = await c.call("network-summary")
        assert summary.ok and summary.result["capacity"] == {"compute_cpu": 2.0}
        # The economy (coordinator/economy.py) answers from the ledger and the market; no settlement has
        # run yet in this short test, so the figures are zero, not made up.
        earnings = await c.call("earnings", node)
        assert earnings.ok, earnings.error
        assert earnings.result["gross_micro"] == 0 and earnings.result["balance_micro"] == 0
        assert "prediction_method" in earnings.result
        analytics = await c.call("analytics", node)
        assert analytics.ok and analytics.result["credits"] == []
        optimize = await c.call("optimize", node)
        assert optimize.ok and isinstance(optimize.result["suggestions"], list)

        # Changes: relayed to the node, checked there, acknowledged with the node's own signature.
        update, signer = await c.call_signed(
            "update", {**node, "settings": {"cpu_allocation_percentage": 0.25}}
        )
        assert update.ok, update.error
        assert signer == g.node
        assert update.result["changed"] == {"cpu_allocation_percentage": 0.25}
        await eventually(lambda: g.cpu_offered() == 1.0, what="the new offer reached the coordinator")
        assert "cpu_allocation_percentage = 0.25" in (tmp_path / "node-settings.toml").read_text()

        paused = await c.call("pause", {**node, "paused": True})
        assert paused.ok and g.agent.paused
        await eventually(
            lambda: not g.coord.group.members[g.node].offering, what="paused node stops offering"
        )
        assert (await c.call("pause", {**node, "paused": False})).ok
        await eventually(lambda: g.coord.group.members[g.node].offering, what="resumed")

        configure = await c.call("configure", {**node, "settings": {"max_cpu_temperature": 70}})
        assert configure.ok, configure.error
        assert configure.result["settings"]["cpu_allocation_percentage"] == 0.5  # unnamed: back to default
        await eventually(lambda: g.cpu_offered() == 2.0, what="configure reset the offer")
        assert g.agent.options.guardrails.max_cpu_temperature == 70

        bad = await c.call("update", {**node, "settings": {"cpu_allocation_percentage": 3}})
        assert not bad.ok and bad.code == "bad_request" and "cpu_allocation_percentage" in bad.error
        locked = await c.call("update", {**node, "settings": {"broker_url": "mqtt://elsewhere:1883"}})
        assert not locked.ok and "cannot be changed over the API" in locked.error

        verify = await c.call("verify", node)
        assert verify.ok and verify.result["level"] == "self_reported"
        bench = await c.call("benchmark", node, timeout_s=60)
        assert bench.ok, bench.error
        assert {r["name"] for r in bench.result["results"]} == {"cpu", "memory"}
        auto = await c.call("auto-optimize", {**node, "dry_run": True})
        assert auto.ok and auto.result["applied"] is False  # nothing bounded by the owner: nothing changes
        bad_bounds = await c.call("auto-optimize", {**node, "bounds": {"broker_url": [0, 1]}})
        assert not bad_bounds.ok and bad_bounds.code == "bad_request"


async def test_a_non_owner_change_is_refused_over_mqtt_and_http(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with lab(mosquitto, tmp_path) as g, client(g.url, g.stranger) as c:
        answer, signer = await c.call_signed(
            "update", {"node": g.node, "settings": {"cpu_allocation_percentage": 1}}
        )
        assert not answer.ok and answer.code == "not_owner"
        assert "only its owner" in answer.error and signer == g.node
        envelope = seal_request(
            g.stranger, "pause", {"node": g.node, "paused": True}, txid="s1", now_ms=_ms()
        )
        status, body = await post_signed(f"{g.local}/api/v1/resources/pause/{g.node}", envelope)
        assert status == 403 and body["code"] == "not_owner"
        unsigned_status, unsigned = await curl("-X", "POST", f"{g.local}/api/v1/resources/pause/{g.node}")
        assert unsigned_status == 400 and unsigned["ok"] is False
        await asyncio.sleep(0.5)
        assert g.cpu_offered() == 2.0 and not g.agent.paused


async def test_a_replayed_owner_request_is_refused(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with lab(mosquitto, tmp_path) as g:
        url = f"{g.local}/api/v1/resources/update/{g.node}"
        first = seal_request(
            g.owner,
            "update",
            {"node": g.node, "settings": {"cpu_allocation_percentage": 0.25}},
            txid="r1",
            now_ms=_ms(),
        )
        status, body = await post_signed(url, first, "PUT")
        assert status == 200 and body["ok"], body
        ack = open_envelope(base64.b64decode(str(body["ack"])))
        assert ack.signer == g.node and isinstance(ack.message, ApiResponse) and ack.message.txid == "r1"
        status, body = await post_signed(url, first, "PUT")
        assert status == 409 and body["code"] == "replay"

        # A request already applied over MQTT cannot be replayed over HTTP either (one record per owner).
        second = seal_request(
            g.owner,
            "update",
            {"node": g.node, "settings": {"cpu_allocation_percentage": 0.75}},
            txid="r2",
            now_ms=_ms(),
        )
        await g.coord.session.publish(
            f"prsm/v1/{SITE}/{GROUP}/api/update/req/{g.owner.node_id}", second, qos=1
        )
        await eventually(lambda: g.cpu_offered() == 3.0, what="the MQTT change applied")
        replays = g.coord.group.rejected[Reason.REPLAY]
        await g.coord.session.publish(
            f"prsm/v1/{SITE}/{GROUP}/api/update/req/{g.owner.node_id}", second, qos=1
        )
        await eventually(
            lambda: g.coord.group.rejected[Reason.REPLAY] == replays + 1, what="MQTT replay refused"
        )
        g.agent.update_resources([])  # make a repeated application visible
        status, body = await post_signed(url, second, "PUT")
        assert status == 409 and body["code"] == "replay"
        assert g.agent.resources == []


async def test_curl_reads_status_and_earnings_from_the_local_api(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with lab(mosquitto, tmp_path) as g:
        status, body = await curl(f"{g.local}/api/v1/resources/status/{g.node}")
        assert status == 200 and body["ok"]
        result = body["result"]
        assert isinstance(result, dict)
        assert result["node"] == g.node and result["in_group"] and result["owners"] == 1
        assert result["trust"]["level"] == "self_reported"  # asked of the coordinator
        status, body = await curl(f"{g.local}/api/v1/resources/earnings/{g.node}")
        assert status == 200 and body["ok"], body
        earned = body["result"]
        assert isinstance(earned, dict)
        assert {"gross_micro", "electricity_micro", "net_micro", "balance_micro"} <= set(earned)
        status, body = await curl(f"{g.local}/api/v1/resources/status/nsomeoneelse")
        assert status == 404
        status, body = await curl("-H", "Host: attacker.example", f"{g.local}/api/v1/resources/health")
        assert status == 401  # DNS rebinding: only loopback names are answered
        status, doc = await curl(f"{g.local}/api/v1/openapi.json")
        assert status == 200 and doc["openapi"] == "3.1.0"
        # The dashboard hook: static files with their MIME types (module scripts need a JavaScript type).
        for name, kind in (("app.js", "javascript"), ("index.html", "text/html"), ("", "text/html")):
            proc = await asyncio.create_subprocess_exec(
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{content_type}",
                f"{g.local}/ui/{name}",
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await proc.communicate()
            assert kind in out.decode(), (name, out)


async def test_pairing_over_http_with_the_one_time_code(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with lab(mosquitto, tmp_path) as g:
        browser = Signer(SigningKey.generate())
        code = OwnerRegistry(g.agent.options.workdir).offer_pairing(_ms())
        pair_url = f"{g.local}/api/v1/owner/pair"
        wrong = seal_request(
            browser, "pair", {"node": g.node, "code": "AAAA-AAAA-AAAA-AAAA"}, txid="p0", now_ms=_ms()
        )
        status, body = await post_signed(pair_url, wrong)
        assert status == 403 and body["code"] == "not_owner"
        good = seal_request(
            browser, "pair", {"node": g.node, "code": code, "label": "browser"}, txid="p1", now_ms=_ms()
        )
        status, body = await post_signed(pair_url, good)
        assert status == 200 and body["result"]["owner"] == browser.node_id  # type: ignore[index]
        change = seal_request(browser, "pause", {"node": g.node, "paused": True}, txid="p2", now_ms=_ms())
        status, body = await post_signed(f"{g.local}/api/v1/resources/pause/{g.node}", change)
        assert status == 200 and g.agent.paused
        replayed_pairing = await post_signed(pair_url, good)
        assert replayed_pairing[0] == 403  # the code is spent


async def test_the_coordinator_http_api_is_read_only(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with lab(mosquitto, tmp_path) as g:
        base = g.coord.api.http_url
        status, body = await curl(f"{base}/api/v1/resources/network/summary")
        assert status == 200 and body["result"]["members"] == 1  # type: ignore[index]
        status, body = await curl(f"{base}/api/v1/resources/status/{g.node}")
        assert status == 200 and body["result"]["level"] == "self_reported"  # type: ignore[index]
        envelope = seal_request(g.owner, "update", {"node": g.node, "settings": {}}, txid="c1", now_ms=_ms())
        status, body = await post_signed(f"{base}/api/v1/resources/update/{g.node}", envelope, "PUT")
        assert status == 405 and body["code"] == "read_only"


async def test_schemathesis_finds_no_server_error(mosquitto: Mosquitto, tmp_path: Path) -> None:
    tool = Path(sys.executable).with_name("schemathesis")
    if not tool.exists():
        pytest.skip("schemathesis is not installed (a dev dependency)")
    async with lab(mosquitto, tmp_path) as g:
        config = tmp_path / "schemathesis.toml"
        # The real node id, so the generated calls reach the handlers instead of stopping at 404.
        config.write_text(f'[parameters]\n"path.user_id" = "{g.node}"\n')
        for base in (g.local, g.coord.api.http_url):
            proc = await asyncio.create_subprocess_exec(
                str(tool),
                "--config-file",
                str(config),
                "run",
                f"{base}/api/v1/openapi.json",
                "--checks",
                "not_a_server_error,response_schema_conformance",
                "--max-examples",
                "25",
                "--seed",
                "1",
                "--request-timeout",
                "20",
                "--no-color",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                cwd=tmp_path,  # its cache folder lands there, not in the repository
            )
            out, _ = await proc.communicate()
            text = out.decode()
            assert proc.returncode == 0, text[-4000:]
            assert "Missing test data" not in text, text[-4000:]


def test_cli_api_and_owner_commands(mosquitto: Mosquitto, tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "PRSM_EDGE_HOME": str(home), "PYTHONUNBUFFERED": "1"}

    def prsm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "prsm_edge", *args], env=env, text=True, capture_output=True, timeout=60
        )

    async def group() -> None:
        coord = coordinator(mosquitto.url, tmp_path / "coord")
        agent = Agent(agent_options(mosquitto.url, home, owner=OwnerOptions(local_port=0)))
        async with running(coord, agent):
            await eventually(lambda: agent.node_id in coord.group.members, what="joined")
            await eventually(lambda: bool(agent.owner_api.local_url), what="local API up")
            where = ["--broker", mosquitto.url, "--site", SITE, "--group", GROUP]
            status = await asyncio.to_thread(prsm, "api", "status", "--json", *where)
            assert status.returncode == 0, status.stderr
            assert json.loads(status.stdout)["node"] == agent.node_id
            refused = await asyncio.to_thread(
                prsm, "api", "update", "--param", "cpu_allocation_percentage=0.25", *where
            )
            assert refused.returncode == 1 and "not_owner" in refused.stderr
            paired = await asyncio.to_thread(prsm, "owner", "pair", "--cli")
            assert paired.returncode == 0 and "paired" in paired.stdout
            listed = await asyncio.to_thread(prsm, "owner", "list", "--json")
            assert len(json.loads(listed.stdout)) == 1
            update = await asyncio.to_thread(
                prsm, "api", "update", "--param", "cpu_allocation_percentage=0.25", "--json", *where
            )
            assert update.returncode == 0, update.stderr
            assert json.loads(update.stdout)["changed"] == {"cpu_allocation_percentage": 0.25}
            code = await asyncio.to_thread(prsm, "owner", "pair")
            assert "pairing code" in code.stdout and f"{agent.owner_api.local_url}/ui/#pair=" in code.stdout
            local = await asyncio.to_thread(prsm, "api", "status", "--json")  # the agent here answers
            assert local.returncode == 0, local.stderr
            assert json.loads(local.stdout)["settings"]["cpu_allocation_percentage"] == 0.25
            paused = await asyncio.to_thread(prsm, "api", "pause", "--local", "--param", "paused=true")
            assert paused.returncode == 0 and agent.paused
            owner = json.loads(listed.stdout)[0]["owner"]
            assert (await asyncio.to_thread(prsm, "owner", "revoke", owner)).returncode == 0
            again = await asyncio.to_thread(
                prsm, "api", "update", "--param", "cpu_allocation_percentage=0.5", *where
            )
            assert again.returncode == 1 and "not_owner" in again.stderr

    asyncio.run(group())


async def test_mqtt_clients_send_small_packets_at_once(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """TCP_NODELAY on every session: with Nagle on, each request/response paid a ~40 ms delayed ACK."""
    import socket

    async with lab(mosquitto, tmp_path) as g, client(g.url, g.owner) as c:
        sessions = [g.coord.session._client, g.agent.session._client, c._client]
        for mqtt in sessions:
            assert mqtt is not None
            sock = mqtt._client.socket()
            assert isinstance(sock, socket.socket)
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


async def test_auto_optimize_applies_advice_only_inside_the_owner_bounds_and_undoes(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with lab(mosquitto, tmp_path) as g, client(g.url, g.owner) as c:
        # The market the coordinator last published: CPU demand twice the supply (set directly: a real
        # shortage needs tasks beyond this one node's capacity).
        market = {"resources": {"compute_cpu": {"supply": 2.0, "demand": 4.0, "base_rate_micro": 50_000}}}
        g.coord.economy._last_market = market
        node = {"node": g.node}
        advice, signer = await c.call_signed("optimize", node)  # relayed: only the node knows its settings
        assert signer == g.node
        assert advice.ok, advice.error
        [cpu] = [s for s in advice.result["suggestions"] if s["setting"] == "cpu_allocation_percentage"]
        assert cpu["current"] == 0.5 and cpu["value"] == 0.7 and cpu["ftns_per_day"] > 0
        unbounded = await c.call("auto-optimize", node)
        assert unbounded.ok and unbounded.result["applied"] is False  # the owner bounded nothing
        preview = await c.call(
            "auto-optimize", {**node, "dry_run": True, "bounds": {"cpu_allocation_percentage": [0.3, 0.6]}}
        )
        assert preview.ok and preview.result["changes"][0]["new"] == 0.6 and g.cpu_offered() == 2.0
        applied = await c.call("auto-optimize", {**node, "bounds": {"cpu_allocation_percentage": [0.3, 0.6]}})
        assert applied.ok and applied.result["applied"] is True
        assert applied.result["changed"] == {"cpu_allocation_percentage": 0.6}  # clamped into the bounds
        await eventually(lambda: g.cpu_offered() == 2.4, what="the optimised offer reached the coordinator")
        undone = await c.call("auto-optimize", {**node, "undo": True})
        assert undone.ok and undone.result["changed"] == {"cpu_allocation_percentage": 0.5}
        await eventually(lambda: g.cpu_offered() == 2.0, what="undo restored the offer")


async def test_the_owners_standing_bounds_hold_whatever_a_request_asks(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """optimize_bounds is enforced by the agent: a request cannot widen it; the preview shows it."""
    async with lab(mosquitto, tmp_path) as g, client(g.url, g.owner) as c:
        market = {"resources": {"compute_cpu": {"supply": 2.0, "demand": 8.0, "base_rate_micro": 50_000}}}
        g.coord.economy._last_market = market
        node = {"node": g.node}
        # The owner sets the bounds (a signed change, written to the settings file like any other).
        set_bounds = await c.call(
            "update", {**node, "settings": {"optimize_bounds": "cpu_allocation_percentage=0.2..0.6"}}
        )
        assert set_bounds.ok, set_bounds.error
        assert "optimize_bounds" in (tmp_path / "node-settings.toml").read_text()
        bad = await c.call(
            "update", {**node, "settings": {"optimize_bounds": "cpu_allocation_percentage=..60"}}
        )
        assert not bad.ok and bad.code == "bad_request" and "between 0 and 1" in bad.error
        # No bounds in the request: the owner's decide. The preview shows them and the clamped change.
        preview = await c.call("auto-optimize", {**node, "dry_run": True})
        assert preview.ok and preview.result["bounds"] == {"cpu_allocation_percentage": [0.2, 0.6]}
        assert [(ch["setting"], ch["new"]) for ch in preview.result["changes"]] == [
            ("cpu_allocation_percentage", 0.6)
        ]
        # A request asking for the whole range (what a page might send) gets the owner's ceiling, no more.
        wide = await c.call("auto-optimize", {**node, "bounds": {"cpu_allocation_percentage": [0.0, 1.0]}})
        assert wide.ok and wide.result["applied"] is True
        assert wide.result["changed"] == {"cpu_allocation_percentage": 0.6}
        assert g.agent.owner_api.settings.cpu_allocation_percentage == 0.6
        # A request entirely outside the owner's bounds is refused, and says why.
        outside = await c.call("auto-optimize", {**node, "bounds": {"cpu_allocation_percentage": [0.7, 1.0]}})
        assert not outside.ok and outside.code == "bad_request" and "optimize_bounds" in outside.error
