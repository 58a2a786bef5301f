"""Envelope cost: raw Ed25519 verify/s against our full open (bounds + COSE + verify + typed decode)/s.

Run: .venv/bin/python benchmarks/envelope_throughput.py [--seconds 2]
Both are measured in this run on this machine; the ratio is the figure to compare across machines.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from nacl.signing import SigningKey

from prsm_edge.protocol import messages as m
from prsm_edge.protocol.envelope import Signer, open_envelope


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds``."""
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(100):
            fn()
        n += 100
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = parser.parse_args()
    key = SigningKey.generate()
    signer = Signer(key)
    hb = m.Heartbeat(node=signer.node_id, cpu_util=0.42, mem_util=0.31, temperature_c=51.5, uptime_s=3600.0)
    data = signer.seal(hb, now_ms=1_700_000_000_000)
    signed = key.sign(data[:200])
    vk = key.verify_key

    raw = rate(lambda: vk.verify(signed), args.seconds)
    full = rate(lambda: open_envelope(data), args.seconds)
    seal = rate(lambda: signer.seal(hb, now_ms=1_700_000_000_000), args.seconds)
    print(f"signed heartbeat size           : {len(data)} bytes")
    print(f"raw Ed25519 verify (200 B)      : {raw:10.0f} /s")
    print(f"envelope open (full path)       : {full:10.0f} /s")
    print(f"envelope seal (encode + sign)   : {seal:10.0f} /s")
    print(f"open / raw verify ratio         : {full / raw:10.2f}")


if __name__ == "__main__":
    main()
