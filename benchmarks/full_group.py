"""The README's full-size group with verification on: do honest agents pass their first check?

Run: .venv/bin/python benchmarks/full_group.py [--nodes 200] [--seconds 240] [--processes]

In-process mode (default) runs exactly what ``prsm-edge demo`` runs: the broker (Mosquitto when installed,
with per-node ACLs), the coordinator with the demo's verification settings and N agents offering equal
slices of this machine, all in this process. ``--processes`` instead starts N separate
``prsm-edge join --broker …`` processes against a coordinator here running the default verification
settings (its round length set by ``--round-seconds``).

Every agent is honest. Prints, at the end: the share of agents whose first settled check passed, the
share that reached ``benchmarked`` (or above), the failures by reason, the time from start to
``benchmarked``, and (with ``--processes``) the coordinator's CPU time against all agents' CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil

from prsm_edge.commands.demo import demo_agent, demo_verification, slices
from prsm_edge.coordinator.service import Coordinator
from prsm_edge.localgroup import host_group
from prsm_edge.node.agent import Agent
from prsm_edge.protocol.messages import VerificationLevel
from prsm_edge.protocol.verifier import VerifierConfig

SITE, GROUP = "bench", "g1"
ORDER = list(VerificationLevel)
L = VerificationLevel


@dataclasses.dataclass
class Tally:
    """What happened to each agent, as the coordinator saw it."""

    first: dict[str, tuple[bool, str]] = dataclasses.field(default_factory=dict)  # node -> first verdict
    benchmarked_at: dict[str, float] = dataclasses.field(default_factory=dict)
    reasons: Counter[str] = dataclasses.field(default_factory=Counter)
    failed: int = 0
    seen: int = 0  # verdicts read so far


def _observe(coord: Coordinator, tally: Tally, started: float) -> None:
    v = coord.verifier
    new = v.settled - tally.seen
    tally.seen = v.settled
    recent = list(v.verdicts)[-new:] if new > 0 else []
    for node, verdict in recent:
        tally.first.setdefault(node, (verdict.accepted, verdict.reason.value))
        if not verdict.accepted:
            tally.failed += 1
            tally.reasons[f"{verdict.reason.value}: {verdict.detail.split(' ')[0]}"] += 1
    g = coord.group
    for node, member in g.members.items():
        rank = ORDER.index(g.level(node))
        if member.online and node not in tally.benchmarked_at and rank >= ORDER.index(L.BENCHMARKED):
            tally.benchmarked_at[node] = time.monotonic() - started


async def _watch(coord: Coordinator, tally: Tally, args: argparse.Namespace, started: float) -> None:
    last = 0.0
    while time.monotonic() - started < args.seconds:
        await asyncio.sleep(0.5)
        _observe(coord, tally, started)
        if time.monotonic() - last >= 10:
            last = time.monotonic()
            g, v = coord.group, coord.verifier
            print(
                f"[{time.monotonic() - started:5.0f} s] online {g.online_count}/{args.nodes}, "
                f"checks settled {v.settled} (failed {tally.failed}, voided {v.voided}), "
                f"benchmarked {len(tally.benchmarked_at)}; levels {dict(sorted(g.summary().trust.items()))}",
                flush=True,
            )


def _report(coord: Coordinator, tally: Tally, args: argparse.Namespace) -> None:
    n, v = args.nodes, coord.verifier
    passed = sum(1 for ok, _ in tally.first.values() if ok)
    reached = len(tally.benchmarked_at)
    how = "separate processes" if args.processes else "in-process"
    print()
    print(f"agents                              : {n} ({how})")
    print(f"agents with a settled first check   : {len(tally.first)}")
    print(f"passed their first check            : {passed}/{n} = {100 * passed / n:.1f} %")
    print(f"reached benchmarked (or above)      : {reached}/{n} = {100 * reached / n:.1f} %")
    if tally.benchmarked_at:
        times = sorted(tally.benchmarked_at.values())
        p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
        print(f"time to benchmarked, median / p95   : {statistics.median(times):.0f} s / {p95:.0f} s")
    print(f"checks settled / failed / voided    : {v.settled} / {tally.failed} / {v.voided}")
    print(f"late/slow results re-checked first  : {v.contained}")
    slashed = {e.account for e in coord.ledger.entries if e.kind == "slash"}
    print(f"agents slashed                      : {len(slashed)}")
    for reason, count in tally.reasons.most_common():
        print(f"  failed: {reason:<30} {count}")
    print(f"final levels                        : {dict(sorted(coord.group.summary().trust.items()))}")


def _broker_line(kind: str, acl: bool, verification: VerifierConfig) -> None:
    print(f"broker: {kind}, ACL enforced: {acl}; verification round {verification.round_ms / 1000:g} s")


async def in_process(args: argparse.Namespace, work: Path) -> None:
    resources, fingerprint = await asyncio.to_thread(slices, args.nodes)
    verification = demo_verification(SITE, GROUP, args.nodes)
    tally = Tally()
    async with host_group(
        work, site=SITE, group=GROUP, heartbeat_timeout_s=args.heartbeat * 3.5, verification=verification
    ) as host:
        _broker_line(host.broker.kind, host.broker.acl_enforced, verification)
        coord, url = host.coordinator, host.broker.url
        agents = [
            Agent(demo_agent(SITE, GROUP, url, work / f"a{i:03d}", resources, fingerprint, args.heartbeat))
            for i in range(args.nodes)
        ]
        started = time.monotonic()
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(coord.run())] + [tg.create_task(a.run()) for a in agents]
            await _watch(coord, tally, args, started)
            _report(coord, tally, args)
            for task in tasks:
                task.cancel()


def _join(url: str, folder: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """One ``prsm-edge join`` process; its output goes to ``folder``.log."""
    cmd = [sys.executable, "-m", "prsm_edge", "join", "--broker", url, "--site", SITE, "--group", GROUP]
    cmd += ["--workdir", str(folder), "--no-attest", "--no-coordinate"]
    with folder.with_suffix(".log").open("wb") as log:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def _cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            total += sum(psutil.Process(pid).cpu_times()[:2])
    return total


async def processes(args: argparse.Namespace, work: Path) -> None:
    round_ms = int(args.round_seconds * 1000)
    verification = VerifierConfig(site=SITE, group=GROUP, coordinator="", round_ms=round_ms)
    tally = Tally()
    async with host_group(work / "host", site=SITE, group=GROUP, verification=verification) as host:
        _broker_line(host.broker.kind, host.broker.acl_enforced, verification)
        coord = host.coordinator
        env = {**os.environ, "PRSM_EDGE_HOME": str(work / "home")}
        started = time.monotonic()
        procs = [_join(host.broker.url, work / f"agent{i:03d}", env) for i in range(args.nodes)]
        try:
            async with asyncio.TaskGroup() as tg:
                task = tg.create_task(coord.run())
                await _watch(coord, tally, args, started)
                _report(coord, tally, args)
                own = _cpu_seconds([os.getpid()])
                agents = _cpu_seconds([p.pid for p in procs])
                ratio = own / max(agents, 1e-9)
                print(f"CPU s, coordinator process / agents : {own:.1f} / {agents:.1f} (ratio {ratio:.3f})")
                task.cancel()
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)
                if p.poll() is None:
                    p.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=240.0, help="how long to watch (default 240)")
    parser.add_argument("--heartbeat", type=float, default=2.0, help="agents' heartbeat (the demo's default)")
    parser.add_argument(
        "--processes", action="store_true", help="agents as separate `prsm-edge join` processes"
    )
    parser.add_argument(
        "--round-seconds", type=float, default=60.0, help="with --processes: the round length"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="prsm-full-") as tmp, contextlib.suppress(asyncio.CancelledError):
        asyncio.run(processes(args, Path(tmp)) if args.processes else in_process(args, Path(tmp)))


if __name__ == "__main__":
    main()
