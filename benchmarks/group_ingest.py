"""Coordinator ingest rate (sans-IO core) against the raw Ed25519 verify rate, and heartbeat wire size.

Run: .venv/bin/python benchmarks/group_ingest.py [--nodes 200] [--messages 20000]
Feeds pre-signed heartbeats of N members through Group.receive (envelope verify, owner check, replay
window, state update) and compares with bare PyNaCl verify calls on the same machine in the same run.
"""

from __future__ import annotations

import argparse
import time

from nacl.signing import SigningKey

from prsm_edge.protocol import messages as m
from prsm_edge.protocol import topics as t
from prsm_edge.protocol.envelope import Signer
from prsm_edge.protocol.group import Group, GroupConfig

SITE, GROUP = "bench", "g1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--messages", type=int, default=20_000)
    args = parser.parse_args()
    coord = Signer(SigningKey.generate())
    group = Group(
        GroupConfig(site=SITE, group=GROUP, coordinator=coord.node_id, public_key=coord.public_key, epoch=1)
    )
    now = 1_700_000_000_000
    nodes = [Signer(SigningKey.generate()) for _ in range(args.nodes)]
    for n in nodes:
        birth = m.NodeBirth(
            node=n.node_id,
            bdseq=1,
            public_key=n.public_key,
            device_class="generic",
            software="bench",
            hw_fingerprint=n.node_id,
            resources=[m.ResourceSpec(type=m.ResourceType.COMPUTE_CPU, capacity=4, unit="cores")],
        )
        group.receive(t.node(t.Kind.NODE_BIRTH, SITE, GROUP, n.node_id), n.seal(birth, now), now)
    per_node = args.messages // args.nodes
    stream = []
    for i in range(per_node):
        for n in nodes:
            hb = m.Heartbeat(
                node=n.node_id, cpu_util=0.4, mem_util=0.3, temperature_c=50.0, uptime_s=float(i)
            )
            stream.append((t.node(t.Kind.NODE_TELEMETRY, SITE, GROUP, n.node_id), n.seal(hb, now + i)))
    wire = len(stream[0][1])

    start = time.perf_counter()
    for topic, payload in stream:
        group.receive(topic, payload, now + per_node)
    ingest = len(stream) / (time.perf_counter() - start)
    assert group.accepted["heartbeat"] == len(stream), group.rejected

    key = SigningKey.generate()
    signed = key.sign(b"x" * wire)
    vk = key.verify_key
    start = time.perf_counter()
    for _ in range(len(stream)):
        vk.verify(signed)
    raw = len(stream) / (time.perf_counter() - start)

    print(f"members                          : {args.nodes}")
    print(f"signed heartbeat on the wire     : {wire} bytes (COSE_Sign1 + deterministic CBOR)")
    print(f"coordinator ingest (sans-IO core): {ingest:10.0f} heartbeats/s")
    print(f"raw Ed25519 verify, same size    : {raw:10.0f} /s")
    print(f"ingest / raw verify              : {ingest / raw:10.2f}")
    print(f"heartbeats/s a 200-node group needs at 10 s interval: {args.nodes / 10:.0f}")


if __name__ == "__main__":
    main()
