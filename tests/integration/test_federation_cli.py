"""Federation from the plain commands: every piece a separate ``prsm-edge`` process on ACL'd brokers.

One ``prsm-edge region`` (its own Mosquitto, with dynamic security), three groups each run as
``prsm-edge coordinate`` (its own Mosquitto, with dynamic security) + ``prsm-edge join`` +
``prsm-edge gateway`` — no ``--external``, no hand-written broker configuration: the gateway gives itself
a login on the coordinate-managed broker and installs its bridge there, ``coordinate`` restarts its
broker to carry it, and ``prsm-edge region add-group`` makes each group's login on the region's broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import msgspec
import pytest

from prsm_edge.identity import load_or_create
from prsm_edge.io.clock import now_ms
from prsm_edge.io.dynsec import unit_username
from prsm_edge.protocol import messages as m
from prsm_edge.protocol import topics as t
from prsm_edge.protocol.envelope import open_envelope
from prsm_edge.protocol.placement import TaskSpec
from tests.conftest import free_port, require_mosquitto, wait_port

pytestmark = pytest.mark.integration

RSITE, REGION = "eu", "r1"
GROUPS = {"g1": "lab", "g2": "lab", "g3": "far"}
# A bound for a starved machine, not the expected time: alone on 2 cores the test takes ≈ 25 s; with two
# copies of it and other engineers' work running, ≈ 50 s.
DEADLINE_S = 100.0


class Procs:
    """The processes a test starts; all stopped (SIGTERM, then SIGKILL) at the end, logs kept."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *argv: str) -> subprocess.Popen[bytes]:
        log = (self.folder / f"{name}.log").open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "prsm_edge", *argv], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        log.close()
        self.running[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def logs(self) -> str:
        return "\n".join(f"--- {n} ---\n{self.log(n)[-1500:]}" for n in self.running)

    def stop(self) -> None:
        for proc in self.running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.running.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    require_mosquitto()
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.stop()


def cli(*argv: str) -> str:
    """Run one ``prsm-edge`` command to completion; its output."""
    done = subprocess.run(
        [sys.executable, "-m", "prsm_edge", *argv], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


async def until(predicate: object, what: str, procs: Procs, deadline: float) -> None:
    """Poll ``predicate`` (sync or async) until it holds or the deadline passes (then show the logs)."""
    loop = asyncio.get_running_loop()
    while True:
        result = predicate()  # type: ignore[operator]
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{procs.logs()}")
        await asyncio.sleep(0.2)


def _login(output: str) -> tuple[str, str]:
    found = re.search(r"--uplink-username (\S+) --uplink-password=(\S+)", output)
    assert found, output
    return found[1], found[2]


async def test_three_coordinate_groups_federate_through_gateways_with_acls(
    tmp_path: Path, procs: Procs
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    region_dir = tmp_path / "region"
    rport = free_port()
    procs.start(
        "region",
        "region",
        *("--site", RSITE, "--region", REGION, "--host", "127.0.0.1", "--port", str(rport)),
        *("--workdir", str(region_dir), "--dead-after-s", "60", "--ws-port", "0"),
    )
    secret = region_dir / "region" / REGION / "broker" / "admin.secret"
    await until(secret.is_file, "the region's broker", procs, deadline)
    wait_port(rport)
    region_args = ("region", "--site", RSITE, "--region", REGION, "--workdir", str(region_dir))
    logins = {g: _login(cli(*region_args, "add-group", f"{site}/{g}")) for g, site in GROUPS.items()}
    # Renewing a login with a given password (as on a standby region broker) takes that password.
    chosen = "a-chosen-password-0123"
    logins["g3"] = _login(cli(*region_args, "add-group", "far/g3", "--password", chosen))
    assert logins["g3"] == (unit_username("far", "g3"), chosen)
    assert logins["g1"][0] == unit_username("lab", "g1")
    client_out = cli(*region_args, "add-client", "tester")
    client_password = client_out.split()[-1]

    for group, site in GROUPS.items():
        home, port = tmp_path / group, free_port()
        procs.start(
            f"{group}-coord",
            "coordinate",
            *("--site", site, "--group", group, "--host", "127.0.0.1", "--port", str(port)),
            *("--ws-port", "0", "--no-advertise", "--workdir", str(home)),
        )
        procs.start(
            f"{group}-agent",
            "join",
            *("--site", site, "--group", group, "--broker", f"mqtt://127.0.0.1:{port}"),
            *("--no-attest", "--workdir", str(tmp_path / f"{group}-agent")),
        )
    for group, site in GROUPS.items():
        home = tmp_path / group
        await until(
            (home / "coordinator" / group / "broker" / "admin.secret").is_file,
            f"{group}'s broker",
            procs,
            deadline,
        )
        username, password = logins[group]
        pw_args: tuple[str, ...] = (f"--uplink-password={password}",)  # as add-group prints it
        if group == "g2":  # the password from a file, out of `ps`
            (home / "uplink.secret").write_text(password + "\n")
            pw_args = ("--uplink-password-file", str(home / "uplink.secret"))
        procs.start(
            f"{group}-gateway",
            "gateway",
            *("--site", site, "--group", group, "--workdir", str(home)),
            *("--uplink", f"mqtt://127.0.0.1:{rport}", "--region-site", RSITE, "--region", REGION),
            *("--uplink-username", username, *pw_args),
        )

    # The region's own signed summary, read with a task-submitter login: three groups' claims, each
    # with its member online.
    me = load_or_create(tmp_path / "client")
    signer = me.signer()
    summaries: list[m.GroupSummary] = []
    answers: list[m.ApiResponse] = []
    async with aiomqtt.Client(
        "127.0.0.1", rport, username="region-client-tester", password=client_password
    ) as client:
        await client.subscribe(t.summary(RSITE, REGION), qos=1)
        await client.subscribe(t.api(t.Kind.API_RESP, RSITE, REGION, "submit", me.node_id), qos=1)

        async def read() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                msg = open_envelope(message.payload).message
                if isinstance(msg, m.GroupSummary):
                    summaries.append(msg)
                elif isinstance(msg, m.ApiResponse):
                    answers.append(msg)

        reader = asyncio.create_task(read())
        try:
            await until(
                lambda: bool(summaries) and summaries[-1].claims == 3 and summaries[-1].online == 3,
                "a summary from each of the three groups at the region",
                procs,
                deadline,
            )
            # Each group's broker was restarted by its coordinator to carry the gateway's bridge.
            # (The summaries ride the gateway's own session, so they may arrive before that is logged.)
            for group in GROUPS:
                await until(
                    lambda g=group: "broker restarted to carry the bridge" in procs.log(f"{g}-coord"),
                    f"{group}'s broker restarted with the bridge",
                    procs,
                    deadline,
                )
            # A task submitted at the region, from site "far": routed down g3's bridge, leased there.
            # A task submitted at the region from site "far" (one core: a CLI member's default minimum
            # rate refuses less), routed down g3's bridge to its coordinator and leased on its member.
            # The region routes on the group's last summary; the group allocates on its live view, which
            # right after a join or the broker's restart may briefly hold the member back: a refusal is
            # answered, and the task submitted again (a new id) until the deadline.
            # The region answers each submit twice: "placed" at once (its decision), then "leased" when the
            # group confirms, or a refusal.
            topic = t.api(t.Kind.API_REQ, RSITE, REGION, "submit", me.node_id)
            tries = 0

            def final(a: m.ApiResponse) -> bool:
                return not a.ok or a.result.get("status") == "leased"

            async def leased() -> bool:
                nonlocal tries
                if any(a.ok and final(a) for a in answers):
                    return True
                if sum(map(final, answers)) == tries:  # the last one was answered (refused): try again
                    tries += 1
                    task = TaskSpec(
                        task_id=f"t-cli-{tries}",
                        resources={m.ResourceType.COMPUTE_CPU: 1.0},
                        origin_site="far",
                    )
                    params = msgspec.to_builtins(task)
                    request = m.ApiRequest(
                        txid=f"tx-{tries}", method="submit", requester=me.node_id, params=params
                    )
                    await client.publish(topic, signer.seal(request, now_ms()), qos=1)
                await asyncio.sleep(0.5)
                return False

            await until(leased, "a lease for a task submitted at the region", procs, deadline)
            (answer,) = [a for a in answers if a.ok and final(a)]
            placed = [a for a in answers if a.txid == answer.txid and a.result.get("status") == "placed"]
            assert placed and (placed[-1].result["site"], placed[-1].result["group"]) == ("far", "g3")
            assert (answer.result["site"], answer.result["group"]) == ("far", "g3"), answers
            assert f"node {answer.result['node']} " in procs.log("g3-agent")  # g3's own member
            # The dashboard URL the region printed carries a read-only login that reads what the page
            # subscribes to: the region's tree and the gateways' states (test_federation_acl: no writes).
            found = re.search(r"dashboard: http://\S+/#(\S+)", procs.log("region"))
            assert found, procs.log("region")
            page = dict(urllib.parse.parse_qsl(found[1]))
            assert page["user"] == "region-viewer"
            async with aiomqtt.Client(
                "127.0.0.1", rport, username=page["user"], password=page["pass"]
            ) as view:
                filters = [
                    f"{t.ROOT}/{RSITE}/{REGION}/#",
                    f"{t.ROOT}/{RSITE}/gw/+/state",
                    "prsm/v1/+/gw/+/state",
                ]
                granted = await view.subscribe([(f, 0) for f in filters])
                assert 0x80 not in list(granted), granted
                async with asyncio.timeout(10):
                    async for message in view.messages:
                        if str(message.topic) == t.summary(RSITE, REGION):
                            break  # the region's retained summary: the viewer reads the region
            # Every process's subscriptions were granted: the roles cover what each one reads.
            refused = [n for n in procs.running if "refused the subscription" in procs.log(n)]
            assert not refused, procs.logs()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await reader

    # `prsm-edge status` on the region, with a viewer login from `region add-viewer`: all three groups.
    viewer_password = cli(*region_args, "add-viewer", "ops").split()[-1]
    status = await asyncio.to_thread(
        cli,
        *("status", "--broker", f"mqtt://127.0.0.1:{rport}", "--site", RSITE, "--group", REGION),
        *("--username", "region-viewer-ops", "--password", viewer_password, "--json"),
    )
    snapshot = json.loads(status.splitlines()[-1])
    assert snapshot["kind"] == "region"
    assert sorted((g["site"], g["group"]) for g in snapshot["groups"]) == [
        ("far", "g3"),
        ("lab", "g1"),
        ("lab", "g2"),
    ]
