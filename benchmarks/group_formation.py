"""Local-group figures on a real Mosquitto: formation time, crash detection, idle agent cost, ingest.

Run: .venv/bin/python benchmarks/group_formation.py [--nodes 200] [--keepalive 2]

Prints, in one run on this machine:
* time for N in-process agents to connect, join (with ACL credentials), be born and reach level 1
  (self-reported, accepted by the coordinator);
* crash detection: time from killing an agent process (socket closed) and from freezing one (SIGSTOP:
  silent, so only the keepalive can tell) until the coordinator marks it offline, against the keepalive;
* an idle agent's RSS and CPU share (separate process, heartbeat every 10 s);
* the size of a signed heartbeat and the coordinator's end-to-end ingest rate through the broker,
  against the raw Ed25519 verify rate measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import psutil
from nacl.signing import SigningKey

from prsm_edge.io.discovery import Advertiser, Browser
from prsm_edge.localgroup import host_group
from prsm_edge.node.agent import Agent, AgentOptions, Sample
from prsm_edge.protocol import messages as m
from prsm_edge.protocol import topics as t
from prsm_edge.protocol.envelope import Signer
from prsm_edge.protocol.formation import GroupAdvert
from prsm_edge.protocol.membership import JoinPolicy
from prsm_edge.protocol.messages import PROTOCOL_VERSION

SITE, GROUP = "bench", "g1"
CPU = [m.ResourceSpec(type=m.ResourceType.COMPUTE_CPU, capacity=1.0, unit="cores")]


def _sample() -> Sample:
    return Sample(cpu_util=0.1, mem_util=0.2)


def _options(url: str, workdir: Path, **kw: object) -> AgentOptions:
    base: dict[str, object] = {
        "site": SITE,
        "group": GROUP,
        "broker_url": url,
        "workdir": workdir,
        "resources": CPU,
        "hw_fingerprint": workdir.name,
        "heartbeat_interval_s": 10.0,
        "sample": _sample,
    }
    base.update(kw)
    return AgentOptions(**base)  # type: ignore[arg-type]


_CHILD = """
import asyncio, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from benchmarks.group_formation import _options
from prsm_edge.node.agent import Agent
a = Agent(_options({url!r}, Path({work!r}), keepalive_s={keepalive}, cpu_rate=1e6))
print(a.node_id, flush=True)
asyncio.run(a.run())
"""


def _child(url: str, work: Path, keepalive: int) -> tuple[subprocess.Popen[str], str]:
    root = str(Path(__file__).resolve().parent.parent)
    code = _CHILD.format(root=root, url=url, work=str(work), keepalive=keepalive)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


async def _wait(pred: Callable[[], bool], limit: float = 60.0) -> float:
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > limit:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def run(args: argparse.Namespace, work: Path) -> None:
    async with host_group(
        work / "host",
        site=SITE,
        group=GROUP,
        heartbeat_timeout_s=60,
        max_members=args.nodes + 100,
        verify=False,  # verification costs are measured by verification_sim.py, not mixed in here
        join_policy=JoinPolicy(rate_per_min=60.0 * args.nodes, burst=args.nodes, max_pending=args.nodes),
    ) as host:
        coord = host.coordinator
        g = coord.group
        url = host.broker.url
        print(
            f"broker                           : {host.broker.kind}, ACL enforced: {host.broker.acl_enforced}"
        )
        async with asyncio.TaskGroup() as tg:
            tg.create_task(coord.run())
            await coord.ready.wait()
            # Discovery: the group's mDNS advert (loopback only: benchmarks never touch the LAN) and the
            # time a node's browser needs to find it. Agents on a LAN browse in parallel, so formation
            # time is about this plus the join time below.
            advert = GroupAdvert(
                site=SITE,
                group=GROUP,
                coordinator=coord.identity.node_id,
                epoch=coord.epoch,
                version=PROTOCOL_VERSION,
                members=0,
                port=host.broker.port,
                hosts=("127.0.0.1",),
            )
            t0 = time.monotonic()
            async with Advertiser(advert, ["127.0.0.1"], key=coord.identity.signing_key):
                registered = time.monotonic() - t0
                t1 = time.monotonic()
                async with Browser(["127.0.0.1"]) as browser:
                    found = await browser.wait_for(lambda a: a.group == GROUP, 10)
                    browse = time.monotonic() - t1
            assert found, "the advert was not discovered"
            print(f"mDNS: register / browse-to-found : {registered:.2f} s / {browse:.2f} s")

            agents = [Agent(_options(url, work / f"a{i:03d}", cpu_rate=1e6)) for i in range(args.nodes)]
            start = time.monotonic()
            tasks = [tg.create_task(a.run()) for a in agents]
            formed = await _wait(lambda: g.online_count >= args.nodes, limit=120)
            print(f"{args.nodes} agents joined, level 1        : {formed:.2f} s (mDNS not included)")
            assert time.monotonic() - start >= formed

            for how in ("kill", "freeze"):
                proc, crashed = _child(url, work / f"crash-{how}", args.keepalive)
                await _wait(lambda n=crashed: n in g.members and g.members[n].online)  # type: ignore[misc]
                os.kill(proc.pid, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
                detected = await _wait(lambda n=crashed: not g.members[n].online, limit=10 * args.keepalive)  # type: ignore[misc]
                print(
                    f"crash detection ({how:<6})          : {detected:.2f} s "
                    f"(keepalive {args.keepalive} s; broker allows 1.5x = {1.5 * args.keepalive:.1f} s)"
                )
                if how == "freeze":
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                assert proc.stdout is not None
                proc.stdout.close()

            proc, node = _child(url, work / "idle", 10)
            await _wait(lambda: node in g.members and g.members[node].online)
            ps = psutil.Process(proc.pid)
            await asyncio.sleep(2)
            cpu0, w0 = sum(ps.cpu_times()[:2]), time.monotonic()
            await asyncio.sleep(args.idle_seconds)
            cpu1, w1 = sum(ps.cpu_times()[:2]), time.monotonic()
            rss = ps.memory_info().rss / 2**20
            print(f"idle agent RSS                   : {rss:.1f} MiB")
            print(f"idle agent CPU                   : {100 * (cpu1 - cpu0) / (w1 - w0):.2f} % of one core")
            proc.kill()
            proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()

            # End-to-end ingest: pre-signed heartbeats of the members, replayed in order by one publisher
            # with the members' keys, through the broker to the coordinator.
            signers = [Signer(SigningKey.generate()) for _ in range(50)]
            now = time.time_ns() // 1_000_000
            for s in signers:
                birth = m.NodeBirth(
                    node=s.node_id,
                    bdseq=1,
                    public_key=s.public_key,
                    device_class="bench",
                    software="bench",
                    hw_fingerprint=s.node_id,
                    resources=CPU,
                )
                g.receive(t.node(t.Kind.NODE_BIRTH, SITE, GROUP, s.node_id), s.seal(birth, now), now)
            stream = []
            for i in range(args.messages // len(signers)):
                for s in signers:
                    hb = m.Heartbeat(node=s.node_id, cpu_util=0.3, mem_util=0.2, uptime_s=float(i))
                    stream.append((t.node(t.Kind.NODE_TELEMETRY, SITE, GROUP, s.node_id), s.seal(hb, now)))
            size = len(stream[0][1])
            before = g.accepted["heartbeat"]
            async with aiomqtt.Client(
                host.broker.connect_host,
                host.broker.port,
                identifier="bench-publisher",
                username=coord.options.username,
                password=coord.options.password,
                max_queued_outgoing_messages=0,
            ) as client:
                t0 = time.monotonic()
                for topic, payload in stream:
                    await client.publish(topic, payload, qos=0)
                await _wait(lambda: g.accepted["heartbeat"] - before >= len(stream), limit=120)
                ingest = len(stream) / (time.monotonic() - t0)
            key = SigningKey.generate()
            signed = key.sign(b"x" * size)
            t0 = time.perf_counter()
            for _ in range(len(stream)):
                key.verify_key.verify(signed)
            raw = len(stream) / (time.perf_counter() - t0)
            print(f"signed heartbeat on the wire     : {size} bytes")
            print(f"coordinator ingest via broker    : {ingest:.0f} heartbeats/s ({len(stream)} messages)")
            print(f"raw Ed25519 verify, same size    : {raw:.0f} /s")
            print(f"ingest / raw verify              : {ingest / raw:.2f}")
            for task in tasks:
                task.cancel()
            raise asyncio.CancelledError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--keepalive", type=int, default=2)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--messages", type=int, default=10_000)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="prsm-bench-") as tmp,
        contextlib.suppress(asyncio.CancelledError),
    ):
        asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
