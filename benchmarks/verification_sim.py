"""Trust-but-verify simulator: a 200-node group of honest nodes, overclaimers, sybils and colluders.

Run: .venv/bin/python benchmarks/verification_sim.py [--seed 1] [--nodes 200] [--cycles 5]

Everything goes through prsm_edge.protocol: the beacon and panel choice (peers), adaptive sampling,
fraud detectors, real benchmark proofs (cpu workload, small sizes, real SHA-256, real Merkle trees and
openings, real re-execution by proofs.check), the 2f+1 tally with audit of split panels, reputation and
verification levels, stake and slashing into the hash-chained ledger. Only time is simulated: each proof
arrives at issue + latency + the time the node's real speed needs for the segments it chose to compute.

Population (default 200): honest nodes claim their real rate with benchmark noise ±15 %; overclaimers
claim 1.3–3× their real rate and, to meet the deadline and minimum measured rate, compute only the share
of segments that fits and fill the rest with junk; sybils are groups of nodes claiming one real device
(same hardware fingerprint) which, challenged in the same round, share its speed; colluders (all cheats,
up to 20 % of the group) vote accept for cheats and reject for honest nodes. Each node's run speed
jitters ±3 % per proof; network latency is 10–60 ms against a 2 s target.

Printed per cycle (cumulative over cycles): share of cheats caught (a final reject of their proof),
honest nodes wrongly penalised (a final reject or a slash), verifier CPU over prover CPU (process time of
proofs.check vs proofs.prove on ``--probes`` real honest challenges a cycle at 512 SHA-256 per segment:
one verifier, and all the re-executions of the cycle's panels and audits per proof), and verification
messages per node per hour for a 5-minute cycle.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

import msgspec

from prsm_edge.protocol import fraud, merkle, peers, proofs, stake
from prsm_edge.protocol.ledger import Ledger, verify_chain
from prsm_edge.protocol.messages import (
    MICRO,
    BenchmarkChallenge,
    ResourceSpec,
    ResourceType,
    VerificationVote,
)
from prsm_edge.protocol.reputation import Dimension, Reputation, TrustEvidence
from prsm_edge.protocol.sampling import AdaptiveSampler

CYCLE_MS = 5 * 60_000
T0 = 1_700_000_000_000
TARGET_MS = 2_000
MIN_RATE_RATIO = 0.8
SEGMENT_WORK = 16  # SHA-256 iterations per segment in the simulation (real ones, small)
PROBE_WORK = 512  # per segment in the cost probes, where the work, not the Merkle paths, dominates
PANEL = 5
DEVICE_CLASSES = {"raspberry_pi_4": 1.0e6, "jetson_orin": 2.5e6, "x86_desktop": 6.0e6, "x86_gpu_host": 9.0e6}


@dataclass
class Node:
    name: str
    kind: str  # honest | overclaimer | sybil
    device_class: str
    real_rate: float
    claimed_rate: float
    fingerprint: str
    colluder: bool = False
    rep: Reputation = field(default_factory=lambda: Reputation(T0))
    evidence: TrustEvidence = field(default_factory=TrustEvidence)
    rejected_at: int | None = None  # first cycle a final verdict rejected this node's proof
    slashed_micro: int = 0

    @property
    def cheat(self) -> bool:
        return self.kind != "honest"


def build_group(
    rng: random.Random, n: int, overclaim_share: float, sybil_share: float, span: tuple[float, float]
) -> list[Node]:
    nodes: list[Node] = []
    n_over = round(n * overclaim_share)
    n_sybil = round(n * sybil_share)
    classes = list(DEVICE_CLASSES)
    for i in range(n - n_over - n_sybil):
        dc = rng.choice(classes)
        real = DEVICE_CLASSES[dc] * rng.uniform(0.8, 1.2)
        claim = real * rng.uniform(0.85, 1.15)
        nodes.append(Node(f"h{i:03d}", "honest", dc, real, claim, f"hw-h{i}"))
    for i in range(n_over):
        dc = rng.choice(classes)
        real = DEVICE_CLASSES[dc] * rng.uniform(0.8, 1.2)
        nodes.append(Node(f"o{i:03d}", "overclaimer", dc, real, real * rng.uniform(*span), f"hw-o{i}"))
    i = 0
    while i < n_sybil:
        size = rng.choice((2, 3))
        if n_sybil - i - size < 2:  # no group of one: that would just be an honest node
            size = n_sybil - i
        real = DEVICE_CLASSES["x86_gpu_host"] * rng.uniform(0.8, 1.2)
        fingerprint = f"gpu-{rng.randbytes(4).hex()}"
        for _ in range(size):
            nodes.append(Node(f"s{i:03d}", "sybil", "x86_gpu_host", real, real, fingerprint))
            i += 1
    rng.shuffle(nodes)
    return nodes


@dataclass
class CycleStats:
    checked: int = 0
    messages: int = 0
    prove_s: float = 0.0
    check_s: float = 0.0
    reexec: int = 0
    probe_prove_s: float = 0.0
    probe_check_s: float = 0.0
    audits: int = 0
    flags_cheat: int = 0
    flags_honest: int = 0
    reasons: Counter[str] = field(default_factory=Counter)


def cheat_results(ch: BenchmarkChallenge, share: float, rng: random.Random) -> tuple[list[bytes], float]:
    """A cheater's results: the segments it computed and junk for the rest; its CPU seconds."""
    done = set(rng.sample(range(ch.segments), round(share * ch.segments)))
    t = time.process_time()
    results = [
        proofs.run_segment(ch.workload, ch.nonce, i, ch.segment_size) if i in done else rng.randbytes(32)
        for i in range(ch.segments)
    ]
    return results, time.process_time() - t


def simulate(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    nodes = build_group(rng, args.nodes, args.overclaimers, args.sybils, tuple(args.overclaim))
    by_name = {n.name: n for n in nodes}
    cheats = [n for n in nodes if n.cheat]
    honest = [n for n in nodes if not n.cheat]
    # Colluders: the cheats first, up to the colluding share of the group.
    for n in cheats[: round(args.colluders * len(nodes))]:
        n.colluder = True
    sampler = AdaptiveSampler(threshold=10, floor=0.05)
    ledger = Ledger()
    for n in nodes:
        spec = [ResourceSpec(type=ResourceType.COMPUTE_CPU, capacity=n.claimed_rate / 1.5e6, unit="cores")]
        req = stake.required_stake(spec, n.rep.score(T0)).required_micro
        ledger.append(n.name, req + 100 * MICRO, "credit", f"fund:{n.name}", T0)
        ledger.append(n.name, req, "stake", f"stake:{n.name}:0", T0)
        n.evidence.record_stake(req, req)
    print(
        f"group: {len(nodes)} nodes: {len(honest)} honest, "
        f"{sum(n.kind == 'overclaimer' for n in nodes)} overclaimers "
        f"({args.overclaim[0]:g}-{args.overclaim[1]:g}x), "
        f"{sum(n.kind == 'sybil' for n in nodes)} sybils on "
        f"{len({n.fingerprint for n in nodes if n.kind == 'sybil'})} devices, "
        f"{sum(n.colluder for n in nodes)} colluding verifiers; seed {args.seed}"
    )
    print(
        f"proof: cpu workload, {args.segments} segments, {args.opens} opened, target {TARGET_MS} ms, "
        f"slack 1.5, "
        f"min measured rate {MIN_RATE_RATIO:.0%} of claim; panel {PANEL}, quorum "
        f"{peers.quorum_size(PANEL)}; cycle {CYCLE_MS // 60_000} min"
    )
    print(
        f"{'cycle':>5} {'checked':>7} {'cheats caught':>13} {'honest penalised':>16} "
        f"{'verifier/prover CPU':>19} {'panel+audit/prover':>18} {'msgs/node/h':>11} {'audits':>6}"
    )
    wall = time.perf_counter()
    bands: dict[str, list[int]] = {}  # per-proof [caught, proofs] by kind of cheat
    history: dict[str, list[float]] = {n.name: [] for n in nodes}
    for cycle in range(1, args.cycles + 1):
        now = T0 + cycle * CYCLE_MS
        st = CycleStats()
        # Beacon: committed last round, revealed now, mixed with this round's roster.
        secret = rng.randbytes(32)
        commitment = peers.beacon_commit(secret, cycle)
        assert peers.verify_reveal(commitment, secret, cycle)
        roster_hash = hashlib.sha256("".join(sorted(by_name)).encode()).digest()
        beacon = peers.beacon_value(secret, cycle, roster_hash)
        st.messages += 3  # commit, reveal, roster
        # Fraud detectors raise sampling before the round's draw.
        flags = fraud.duplicate_fingerprints({n.name: n.fingerprint for n in nodes})
        flags += fraud.cohort_outliers({n.name: (n.device_class, n.claimed_rate) for n in nodes})
        for n in nodes:
            flags += fraud.jump(n.name, history[n.name], n.claimed_rate)
            history[n.name].append(n.claimed_rate)
        fraud.raise_sampling(sampler, flags)
        flagged = {f.node for f in flags}
        st.flags_cheat = sum(by_name[x].cheat for x in flagged)
        st.flags_honest = len(flagged) - st.flags_cheat
        subjects = [n for n in nodes if sampler.should_verify(n.name, rng)]
        # Devices behind several sybils are shared by those challenged in the same round.
        load = Counter(n.fingerprint for n in subjects)
        eligible = [
            n.name
            for n in nodes
            if n.rep.value(Dimension.VOTE_HONESTY, now) >= 0.35 and sampler.record_of(n.name).failures == 0
        ]
        for subject in subjects:
            st.checked += 1
            ch, salt = proofs.make_challenge(
                "coord",
                subject.name,
                "cpu",
                subject.claimed_rate,
                rng,
                now,
                segments=args.segments,
                target_ms=TARGET_MS,
                opens=args.opens,
            )
            # Simulation shortcut: run small real segments, the claimed rate scaled alike, so deadline,
            # expected time and the minimum measured rate are those of the full-size challenge.
            scale = SEGMENT_WORK / ch.segment_size
            ch_small = msgspec.structs.replace(
                ch, segment_size=SEGMENT_WORK, claimed_rate=ch.claimed_rate * scale
            )
            speed = subject.real_rate / load[subject.fingerprint] * rng.uniform(0.97, 1.03)
            latency = rng.uniform(10, 60)
            work = proofs.total_work(ch)
            prove_s = 0.0
            if subject.cheat:
                allowed = min(ch.deadline_ms - now, work * 1000 / (MIN_RATE_RATIO * ch.claimed_rate))
                share = min(1.0, max(0.0, (allowed - latency - 1) * speed / 1000 / work))
                results, _ = cheat_results(ch_small, share, rng)
                root = merkle.root_of(results)
            else:
                share = 1.0
                t = time.process_time()
                root, results = proofs.prove(ch_small)
                prove_s = time.process_time() - t
            arrival = now + math.ceil(latency + share * work * 1000 / speed)
            proof = proofs.make_proof(ch_small, root, arrival - now)
            opening = proofs.open_segments(ch_small, results, proofs.open_indices(ch_small, root, salt), salt)
            t = time.process_time()
            verdict = proofs.check(ch_small, proof, opening, arrival, min_rate_ratio=MIN_RATE_RATIO)
            check_s = time.process_time() - t
            if not subject.cheat:
                st.prove_s += prove_s
                st.check_s += check_s
            panel = peers.select_verifiers(beacon, subject.name, cycle, eligible, k=PANEL)
            votes = []
            for v in panel:
                voter = by_name[v]
                if voter.colluder:
                    accept = subject.cheat  # vouch for cheats, frame honest nodes, never re-execute
                else:
                    accept = verdict.accepted
                    st.reexec += 1
                votes.append(
                    VerificationVote(
                        round=cycle,
                        subject=subject.name,
                        voter=v,
                        challenge_id=ch.challenge_id,
                        accept=accept,
                        measured_rate=verdict.measured_rate / scale,
                        reason=verdict.reason.value,
                    )
                )
            st.messages += 4 + len(votes)  # challenge, proof, salt reveal, opening, votes
            result = peers.tally(votes, panel, subject=subject.name, round_=cycle)
            if peers.needs_audit(result):
                st.audits += 1
                st.messages += 1
                st.reexec += 1
                accepted = verdict.accepted
            else:
                accepted = result.outcome is peers.Outcome.ACCEPT
            for v in panel:
                voted = next(x.accept for x in votes if x.voter == v)
                by_name[v].rep.observe_vote(voted == accepted, now)
            st.reasons[verdict.reason.value] += 1
            if subject.cheat:
                band = _band(subject, load[subject.fingerprint])
                tally_band = bands.setdefault(band, [0, 0])
                tally_band[0] += not accepted
                tally_band[1] += 1
            sampler.record(subject.name, accepted)
            subject.rep.observe_check(accepted, now)
            subject.evidence.record_quorum(accepted, now)
            subject.evidence.record_proof(accepted, now)
            if not accepted:
                if subject.rejected_at is None:
                    subject.rejected_at = cycle
                kind = (
                    stake.SlashKind.FRAUD
                    if verdict.reason is proofs.VerdictReason.WRONG_RESULT
                    else stake.SlashKind.PERFORMANCE
                )
                rec = stake.slash(
                    subject.name,
                    kind,
                    ledger.stake(subject.name),
                    {"challenge_id": ch.challenge_id, "reason": verdict.reason.value},
                    now,
                )
                entry = stake.apply_slash(ledger, rec)
                if entry is not None:
                    subject.slashed_micro += entry.amount_micro
        caught = sum(n.rejected_at is not None for n in cheats) / max(1, len(cheats))
        wronged = sum(n.rejected_at is not None or n.slashed_micro > 0 for n in honest) / max(1, len(honest))
        for subject in rng.sample(honest, args.probes):
            ch, salt = proofs.make_challenge(
                "coord",
                subject.name,
                "cpu",
                PROBE_WORK * args.segments / 2.0,
                rng,
                now,
                segments=args.segments,
                opens=args.opens,
            )
            t = time.process_time()
            root, results = proofs.prove(ch)
            st.probe_prove_s += time.process_time() - t
            proof = proofs.make_proof(ch, root, 1_000)
            opening = proofs.open_segments(ch, results, proofs.open_indices(ch, root, salt), salt)
            t = time.process_time()
            ok = proofs.check(ch, proof, opening, now + 1_000, min_rate_ratio=MIN_RATE_RATIO).accepted
            st.probe_check_s += time.process_time() - t
            assert ok
        ratio = st.probe_check_s / st.probe_prove_s if st.probe_prove_s else 0.0
        panel_ratio = ratio * st.reexec / max(1, st.checked)
        small_ratio = st.check_s / st.prove_s if st.prove_s else 0.0
        per_hour = st.messages / len(nodes) * (3_600_000 / CYCLE_MS)
        print(
            f"{cycle:>5} {st.checked:>7} {caught:>13.1%} {wronged:>16.2%} {ratio:>19.2%} "
            f"{panel_ratio:>18.2%} {per_hour:>11.1f} {st.audits:>6}"
        )
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(st.reasons.items()))
        print(
            f"      verdicts: {reasons}; flags: {st.flags_cheat} on cheats, {st.flags_honest} on honest; "
            f"check/prove at {SEGMENT_WORK} hashes/segment (paths dominate) {small_ratio:.2%}"
        )
    end = T0 + args.cycles * CYCLE_MS
    levels_h = Counter(n.evidence.level(end).value for n in honest)
    levels_c = Counter(n.evidence.level(end).value for n in cheats)
    missed = [n for n in cheats if n.rejected_at is None]
    print(f"levels held, honest: {dict(levels_h)}; cheats: {dict(levels_c)}")
    vote_honesty = [n.rep.value(Dimension.VOTE_HONESTY, end) for n in nodes if n.colluder]
    print(
        f"reputation median: honest {statistics.median(n.rep.score(end) for n in honest):.3f}, "
        f"cheats {statistics.median(n.rep.score(end) for n in cheats):.3f}; colluders' vote honesty "
        f"{statistics.median(vote_honesty) if vote_honesty else float('nan'):.3f}"
    )
    per_proof = ", ".join(f"{b} {c / n:.1%} of {n}" for b, (c, n) in sorted(bands.items()))
    print(f"per-proof catch rate: {per_proof}")
    if missed:
        desc = ", ".join(f"{n.kind} {n.claimed_rate / n.real_rate:.2f}x" for n in missed)
        print(f"cheats never caught: {desc}")
    caught_by_3 = sum(n.rejected_at is not None and n.rejected_at <= 3 for n in cheats) / max(1, len(cheats))
    slashed = sum(n.slashed_micro for n in nodes) / MICRO
    verify_chain(ledger.entries)
    print(
        f"caught within 3 cycles: {caught_by_3:.1%}; slashed {slashed:.1f} FTNS in "
        f"{sum(e.kind == 'slash' for e in ledger.entries)} ledger entries; ledger chain of "
        f"{len(ledger)} entries verifies (hardware_attested needs a TPM quote: not simulated)"
    )
    print(f"wall time {time.perf_counter() - wall:.1f} s")


def _band(node: Node, sharing: int) -> str:
    if node.kind == "sybil":
        return f"sybil x{sharing}"
    ratio = node.claimed_rate / node.real_rate
    return next(f"over <{hi}x" for hi in (1.4, 1.6, 2.0, 3.01) if ratio < hi)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--overclaimers", type=float, default=0.15, help="share of nodes that overclaim")
    parser.add_argument(
        "--overclaim", type=float, nargs=2, default=[1.3, 3.0], metavar=("LOW", "HIGH"), help="claim/real"
    )
    parser.add_argument("--sybils", type=float, default=0.05, help="share of nodes that are sybils")
    parser.add_argument("--segments", type=int, default=2048, help="segments per benchmark proof")
    parser.add_argument("--opens", type=int, default=32, help="segments each proof opens")
    parser.add_argument("--probes", type=int, default=2, help="cost probes per cycle")
    parser.add_argument("--colluders", type=float, default=0.20, help="share of nodes voting dishonestly")
    simulate(parser.parse_args())


if __name__ == "__main__":
    main()
