"""How much an honest node's proving speed varies against its own calibration: the noise the thresholds
in ``proofs.PARAMS`` must tolerate.

For each workload this calibrates the rate the way the agent does at start (``node/prover.py``), then
runs ``--runs`` full challenges sized for ``--target-ms`` at that rate with the node's own prover (cpu
lanes in threads, memory tables in memory, storage tables on disk under a temporary folder), and prints
the spread of ``measured rate / calibrated rate`` (work over wall time, no network). It then says which
``min_rate_ratio`` an honest node at the worst observed ratio would pass with ``--network-ms`` of
network delay, and what a node claiming 1.6× its real (median) rate measures on its luckiest run.

    .venv/bin/python benchmarks/proof_noise.py --runs 8
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from prsm_edge.node.prover import machine_rates, prove_lanes, prove_storage
from prsm_edge.protocol import proofs


def run(workload: str, lanes: int, args: argparse.Namespace, folder: Path) -> tuple[list[float], list[float]]:
    """(wall-clock ratios, CPU-time ratios) of measured to calibrated rate over the runs."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    rate = machine_rates(workload, lanes, folder) * (lanes if workload == "cpu" else 1)  # as the agent does
    # The same calibration per second of CPU this process got (the machine is shared: wall time is not).
    cpu_rate = rate * (time.perf_counter() - wall0) / max(1e-9, time.process_time() - cpu0) * lanes
    ratios: list[float] = []
    cpu_ratios: list[float] = []
    rng = random.Random(1)
    for _ in range(args.runs):
        ch, _ = proofs.make_challenge(
            "v", "n", workload, rate, rng, 0, target_ms=args.target_ms, lanes=lanes, capacity_bytes=1 << 40
        )
        start, cpu_start = time.perf_counter(), time.process_time()
        if workload == "cpu":
            prove_lanes(ch)
        elif workload == "memory":
            proofs.prove(ch)
        else:
            _, done = prove_storage(ch, folder)
            if hasattr(done.items, "close"):
                done.items.close()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        ratios.append(proofs.total_work(ch) / elapsed / ch.claimed_rate)
        cpu_ratios.append(proofs.total_work(ch) / max(1e-9, cpu) / cpu_rate * lanes)
        load = os.getloadavg()[0]
        print(
            f"  {workload:8} lanes {lanes}: {ratios[-1]:.3f} (load {load:.1f})", file=sys.stderr, flush=True
        )
    return ratios, cpu_ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=8, help="challenges per workload (default 8)")
    ap.add_argument("--target-ms", type=int, default=1_500, help="size of each challenge (default 1500)")
    ap.add_argument("--network-ms", type=int, default=400, help="network delay an honest node may have")
    ap.add_argument("--lanes", type=int, default=2, help="cpu lanes for the multi-lane run (default 2)")
    args = ap.parse_args()
    rows: list[tuple[str, str, list[float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for workload, lanes in (("cpu", 1), ("cpu", args.lanes), ("memory", 1), ("storage", 1)):
            name = f"{workload} x{lanes}" if workload == "cpu" else workload
            wall, cpu = run(workload, lanes, args, Path(tmp))
            rows += [(name, "wall", wall), (name, "cpu", cpu)]
    print(f"measured / calibrated rate over {args.runs} runs of {args.target_ms} ms (no network);")
    print(f"load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs ('cpu' rows: per CPU-second)")
    head = f"{'workload':10} {'clock':5} {'min':>6} {'median':>7} {'max':>6} {'stdev':>6}"
    print(f"{head}  honest worst + {args.network_ms} ms  1.6x overclaimer, luckiest run")
    for name, clock, r in rows:
        p = proofs.PARAMS[name.split()[0]]
        r.sort()
        # The rate the verifier measures for the worst honest run over a real challenge (target_ms of
        # work at the claimed rate) with network delay, and for a node claiming 1.6x its real rate.
        worst = p.target_ms / (p.target_ms / r[0] + args.network_ms)
        # A node claiming 1.6x its real (median) rate, on its luckiest run.
        over = r[-1] / statistics.median(r) / 1.6
        verdict = "pass" if worst >= p.min_rate_ratio else "FAIL"
        caught = "caught" if over < p.min_rate_ratio else "MISSED"
        spread = f"{r[0]:6.3f} {statistics.median(r):7.3f} {r[-1]:6.3f} {statistics.pstdev(r):6.3f}"
        print(
            f"{name:10} {clock:5} {spread}  {worst:.3f} {verdict} (≥ {p.min_rate_ratio})  {over:.3f} {caught}"
        )


if __name__ == "__main__":
    main()
