"""Verification simulator that runs the shipping code: a group of nodes, cheats among them, simulated time.

Run: .venv/bin/python benchmarks/verification_sim.py [--nodes 200] [--cycles 6] [--seed 1]

What is real. The coordinator is the sans-IO ``Group`` and ``Verifier`` (``prsm_edge.protocol``) fed
with real COSE-signed envelopes; every node is a real ``ProofWork`` (``node/prover.py``) that sits on
panels, proves (the real workload code: PBKDF2 lanes, tables built line by line), opens and votes;
``proofs.check`` re-executes what the verifier asks. The simulator is only the shell around them, as
``coordinator/service.py`` and ``node/agent.py`` are in a live group: an in-memory broker (per-message
latency, every subscriber of ``node/+/proof`` receives every proof, opening and vote), a clock, and
stores (members, ledger, evidence) that survive a coordinator restart.

What is modelled. Proving at full size for 200 nodes would take hours, so each workload's rates are
divided by a fixed scale in every claim (the verifier then issues challenges of 1/scale the work; the
deadline and every ratio stay those of the full-size challenge) and the time a proof takes is computed
from the node's real device: the work it chose to do, its per-thread speed (with ±15 % noise a proof for
honest nodes), and its cores shared among the threads running on the device at that moment (so lanes
beyond the real cores, workloads proven at once, and sybils on one device slow each other down). CPU
cost is counted in CPU-seconds of this machine at full size, from rates measured here at start with the
node's own calibration functions; signature checks at the measured cost of ``open_envelope``.

Population (fractions of ``--nodes``): honest 70 % (claims from calibration, ±15 % noise per proof,
clock skew ±5 s), overclaimers 15 % (1.1–3× on the CPU rate, the CPU cores, the memory fill rate or the
storage write rate; the rational cheat proves honestly when the overclaim fits inside the threshold and
otherwise computes only the share of the work that meets the rate and fills the rest with junk, and holds
every opening back by the most network allowance credit could take out, 5 % of the expected time), sybils
5 % (groups of 2–3 identities on one device, one fingerprint), withholders 3 % (commit, never open),
plus 7 % honest nodes that join the 15 % + 5 % cheats as colluding verifiers (20 % in all: they vote
accept for cheats and reject for everyone else). A coordinator restart (``--restart-cycle``) and a
broker outage (``--outage-cycle``) happen mid-round.

Printed per cycle (cumulative where it says so): checks and failed verdicts (a first late or slow
result, re-checked before it counts, is a failed verdict here); then the cheats, in three columns:

* ``failed``: (a) a check failed and it counted (a slash: every node stakes);
* ``neutral``: (b) of the overclaimers, those whose overclaimed resource is credited
  (``Verifier.credited_rates``, credit by measurement) at most their device's true figure × (1 + g),
  where ``g`` (printed) is the p99.5 over honest nodes' resources of credited / true − 1: the most that
  noise gives an honest node. "Caught" in this sense means the cheat gains no more than that;
* ``caught``: (a) or (b), by band (overclaims inside / outside the noise band, sybils, withholders);

honest nodes that ever had a failed verdict (contained ones included) or were slashed; and the
verification cost: CPU of the coordinator and all panel members (re-execution and signature checks of
every verification message every agent receives) over the provers' CPU, and bytes and messages per node
per hour that every agent and the coordinator receive. The summary gives the share caught within 3
cycles, honest nodes' credited / true distribution (what credit by measurement pays them: they must not
be penalised), what overclaimers that never failed are credited, and the overclaim test's records.
The sampler's records are persisted with the evidence, so the restart does not re-check everyone.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import logging
import math
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from nacl.signing import SigningKey

from prsm_edge.node.agent import SEAT_WATCH_S
from prsm_edge.node.prover import ProofWork, calibrate_cpu_rate, calibrate_table_rate
from prsm_edge.protocol import credit, proofs, topics
from prsm_edge.protocol.envelope import Signer, open_envelope
from prsm_edge.protocol.group import (
    Group,
    GroupConfig,
    Member,
    Publish,
    StoreMember,
    Verification,
)
from prsm_edge.protocol.ledger import Ledger, LedgerKind
from prsm_edge.protocol.messages import (
    BenchmarkChallenge,
    BenchmarkProof,
    Heartbeat,
    LedgerEntry,
    Message,
    NodeBirth,
    NodeCommand,
    NodeState,
    ProofOpening,
    ResourceSpec,
    ResourceType,
    VerificationVote,
)
from prsm_edge.protocol.verifier import (
    LevelChange,
    RecordContainment,
    RecordEvidence,
    RecordLedger,
    RecordSampling,
    RunCheck,
    Verifier,
    VerifierConfig,
    VerifierEffect,
)

SITE, GROUP = "sim", "g1"
T0 = 1_700_000_000_000
ROUND_MS = 300_000
TICK_MS = 1_000
HEARTBEAT_MS = 20_000
# Rates in claims are divided by these (see the module docstring): challenges stay small enough to run.
SCALE: dict[str, float] = {"cpu": 3_000.0, "memory": 300.0, "storage": 300.0}
NOISE = 0.15
SKEW_MS = 5_000
LATENCY_MS = (5, 150)
BAND = 1 / proofs.PARAMS["cpu"].min_rate_ratio  # overclaims below this are inside the honest noise band


@dataclass(frozen=True)
class DeviceClass:
    cores: int
    cpu: float  # PBKDF2 iterations per second per core
    memory: float  # table fill bytes per second
    storage: float  # table write bytes per second
    mem_gb: float
    disk_gb: float


CLASSES: dict[str, DeviceClass] = {
    "raspberry_pi_4": DeviceClass(4, 0.35e6, 15e6, 8e6, 4, 32),
    "jetson_orin": DeviceClass(6, 1.0e6, 40e6, 30e6, 16, 128),
    "x86_desktop": DeviceClass(8, 2.3e6, 90e6, 80e6, 32, 512),
    "x86_server": DeviceClass(16, 2.0e6, 80e6, 150e6, 64, 2000),
}


@dataclass
class Job:
    """Work running on a device: what is left of it, on how many threads, at what speed a thread."""

    remaining: float  # work units
    threads: int
    speed: float  # units per ms per thread on a core of its own
    done: Callable[[], Awaitable[None]]


@dataclass
class Device:
    """One physical machine: its real speeds, and the work running on it, which shares its cores
    (processor sharing: with more threads than cores every thread slows down alike)."""

    cls: DeviceClass
    speed: float  # this unit's speed relative to its class
    jobs: dict[int, Job] = field(default_factory=dict)
    last: int = 0
    version: int = 0

    def rate(self, job: Job) -> float:
        threads = sum(j.threads for j in self.jobs.values())
        return job.threads * job.speed * min(1.0, self.cls.cores / max(1, threads))

    def advance(self, now: int) -> None:
        for job in self.jobs.values():
            job.remaining -= self.rate(job) * (now - self.last)
        self.last = now


@dataclass
class SimNode:
    name: str
    kind: str  # honest | overclaim | sybil | withhold
    device: Device
    signer: Signer
    skew: int
    resources: list[ResourceSpec]
    work: ProofWork
    over: str = ""  # overclaimed: cpu_rate | cpu_cores | memory | storage
    factor: float = 1.0
    colluder: bool = False
    bdseq: int = 1
    fingerprint: str = ""
    pending: dict[str, float] = field(default_factory=dict)  # challenge id → share of the work done

    @property
    def cheat(self) -> bool:
        return self.kind != "honest"

    @property
    def node_id(self) -> str:
        return self.signer.node_id


@dataclass
class Stats:
    proofs_sent: int = 0
    prover_cpu: float = 0.0
    verify_cpu: float = 0.0  # re-execution by the coordinator and by panel members
    sig_cpu: float = 0.0  # signature checks and seals of verification messages, everyone
    msgs: int = 0
    bytes: int = 0
    panel_msgs: int = 0  # what they would be if proof-topic messages reached only the panel and coordinator
    panel_bytes: int = 0
    checks: Counter[str] = field(default_factory=Counter)


class Sim:
    def __init__(
        self, args: argparse.Namespace, rates_here: dict[str, float], sig_cost: dict[str, float]
    ) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.now = T0
        self.rates_here = rates_here  # this machine's per-core rates: the CPU-second unit of the costs
        self.sig_cost = sig_cost  # seconds to open one envelope, per message kind
        self._events: list[tuple[int, int, Callable[[], Awaitable[None]]]] = []
        self._seq = itertools.count()
        self.tmp = Path(tempfile.mkdtemp(prefix="prsm-sim-"))
        self.nodes: dict[str, SimNode] = {}
        self.stats = Stats()
        self.outage: tuple[int, int] | None = None
        self.panels: dict[str, set[str]] = {}  # challenge id → panel (as the verify commands said)
        # subject node id → {seated agent: until}: an agent watches its subject's proof topic while seated
        # (node/agent.py Agent._watch_subject, for SEAT_WATCH_S after each seat)
        self.watching: dict[str, dict[str, int]] = {}
        self.challenges: dict[str, BenchmarkChallenge] = {}
        # What survives a coordinator restart.
        self.store_members: dict[str, Member] = {}
        self.store_ledger: list[LedgerEntry] = []
        self.store_evidence: dict[tuple[str, bytes], dict[str, object]] = {}
        self.store_sampling: dict[str, dict[str, int]] = {}
        self.store_containment: dict[str, tuple[str, ...]] = {}  # pending re-checks, as the shell keeps them
        self.neutralised: dict[int, set[str]] = {}  # cycle → overclaimers neutralised at its end
        self.gain: dict[int, float] = {}  # cycle → g, the p99.5 of honest nodes' credited/true − 1
        self.epoch = 0
        self.coord_signer = Signer(SigningKey(self.rng.randbytes(32)))
        self.verdicts_seen = 0
        self.failed: dict[str, list[str]] = {}  # node → reasons of its failed checks
        self.first_caught: dict[str, int] = {}  # cheat → cycle of its first failed check that counted
        self.slashed: set[str] = set()
        self.cycle = 0
        self.voided_outage = 0
        self.classes: dict[str, str] = {}
        self._channels: dict[
            tuple[str, str], int
        ] = {}  # (sender, receiver) → last delivery: MQTT keeps order
        self.tick_at = self.now
        self._start_coordinator()
        self._populate()

    # ---- the coordinator's shell (what coordinator/service.py does, in memory) --------------------
    def _start_coordinator(self) -> None:
        self.epoch += 1
        c = self.coord_signer
        self.group = Group(
            GroupConfig(
                site=SITE,
                group=GROUP,
                coordinator=c.node_id,
                public_key=c.public_key,
                epoch=self.epoch,
                heartbeat_timeout_ms=3 * HEARTBEAT_MS,
            ),
            levels=lambda m: self.verifier.level(m),
            credited=lambda m: self.verifier.credited(m),
        )
        self.group.restore(list(self.store_members.values()))
        cfg = VerifierConfig(
            site=SITE,
            group=GROUP,
            coordinator=c.node_id,
            round_ms=ROUND_MS,
            credit_net_of_network=self.args.credit_net,
            credit_estimator=self.args.credit_estimator,
        )
        self.verifier = Verifier(cfg, Ledger(list(self.store_ledger)), secret=self.rng.randbytes(32))
        self.verifier.restore_evidence(
            [(n, claim, rec) for (n, claim), rec in self.store_evidence.items()], self.now
        )
        self.verifier.restore_sampling(list(self.store_sampling.items()))
        self.verifier.restore_containment(list(self.store_containment.items()), self.now)
        self.verdicts_seen = 0
        self.next_round = self.now + 10_000  # warm-up: members re-announce before round 1

    async def coordinator_receive(self, topic: str, payload: bytes) -> None:
        for e in self.group.receive(topic, payload, self.now):
            match e:
                case Publish():
                    self.publish_coord(e)
                case StoreMember(member=member):
                    self.store_members[member.node] = member
                case Verification(node=node, message=message, at_ms=at, raw=raw):
                    member = self.group.members.get(node)
                    if member is None:
                        continue
                    match message:
                        case BenchmarkProof():
                            await self.apply(self.verifier.on_proof(member, message, at, raw))
                        case ProofOpening():
                            await self.apply(self.verifier.on_opening(message, at, raw))
                        case VerificationVote():
                            await self.apply(self.verifier.on_vote(message))

    async def apply(self, effects: Sequence[VerifierEffect]) -> None:
        for e in effects:
            match e:
                case Publish():
                    self.publish_coord(e)
                case LevelChange(node=node):
                    self.group.level_changed(node)
                case RecordLedger(entries=entries):
                    self.store_ledger.extend(entries)
                    for entry in entries:
                        if entry.kind == LedgerKind.SLASH:
                            self.slashed.add(entry.account)
                            # A slash is a failed check that counted (every node stakes; a first late
                            # or slow result is re-checked before it counts, and is not one).
                            node = self.by_id.get(entry.account)
                            if node is not None and node.cheat:
                                self.first_caught.setdefault(node.name, self.cycle)
                case RecordEvidence(node=node, claim=claim, record=record):
                    self.store_evidence[(node, claim)] = record
                case RecordSampling(node=node, record=sampling):
                    self.store_sampling[node] = sampling
                case RecordContainment(node=node, workloads=workloads):
                    self.store_containment[node] = workloads
                case RunCheck():
                    self.stats.verify_cpu += self.check_cost(e.challenge)
                    await self.apply(self.verifier.check_result(e.challenge_id, e.run()))

    async def coordinator_tick(self) -> None:
        if self.down(self.now):
            return  # like the shell's ticker: nothing is issued or settled while the broker is away
        for e in self.group.tick(self.now):
            if isinstance(e, Publish):
                self.publish_coord(e)
            elif isinstance(e, StoreMember):
                self.store_members[e.member.node] = e.member
        members = self.group.members
        await self.apply(self.verifier.tick(members, self.now, self.rng))
        if self.verifier.beacon is None:
            if self.now >= self.next_round:
                self.publish_coord(self.verifier.opening_beacon(members.values()))
                self.next_round = self.now + 10_000
        elif self.now >= self.next_round:
            self.next_round = self.now + ROUND_MS
            current = list(members.values())
            await self.apply(self.verifier.observe_claims(current, self.now))
            await self.apply(self.verifier.start_round(current, self.now, self.rng))
        self._collect_verdicts()

    def _collect_verdicts(self) -> None:
        new = self.verifier.settled - self.verdicts_seen
        if new <= 0:
            return
        self.verdicts_seen = self.verifier.settled
        by_id = {n.node_id: n for n in self.nodes.values()}
        for node_id, verdict in list(self.verifier.verdicts)[-new:]:
            node = by_id.get(node_id)
            if node is None:
                continue
            self.stats.checks["pass" if verdict.accepted else "fail"] += 1
            if not verdict.accepted:
                self.failed.setdefault(node.name, []).append(verdict.reason.value)

    def coord_state(self) -> tuple[str, bytes]:
        topic, msg = self.group.state_message("online")
        return topic, self.coord_signer.seal(msg, self.now)

    # ---- the broker --------------------------------------------------------------------------
    def at(self, t: int, fn: Callable[[], Awaitable[None]]) -> None:
        heapq.heappush(self._events, (t, next(self._seq), fn))

    def deliver_at(self, sender: str, receiver: str) -> int:
        """When a message sent now arrives: random latency, but never before the sender's earlier ones."""
        t = max(self.now + self.rng.randint(*LATENCY_MS), self._channels.get((sender, receiver), 0))
        self._channels[(sender, receiver)] = t
        return t

    def down(self, t: int) -> bool:
        return self.outage is not None and self.outage[0] <= t < self.outage[1]

    def publish_coord(self, p: Publish) -> None:
        """The coordinator publishes: commands reach their node; a new state reaches every node."""
        payload = self.coord_signer.seal(p.message, self.now)
        parsed = topics.parse(p.topic)
        if self.down(self.now):
            return
        if parsed.kind is topics.Kind.NODE_CMD and isinstance(p.message, NodeCommand):
            node = self.by_id.get(parsed.node)
            if node is not None:
                if p.message.verb in ("challenge", "verify", "open"):
                    self.count(payload, "cmd", 1)
                cmd = p.message
                self.at(self.deliver_at("coord", node.name), lambda: self.node_command(node, cmd))

    def count(self, payload: bytes, kind: str, receivers: int, needed: int | None = None) -> None:
        """``receivers`` got the message; ``needed`` of them had a use for it (all, if None)."""
        self.stats.msgs += receivers
        self.stats.bytes += len(payload) * receivers
        self.stats.sig_cpu += self.sig_cost.get(kind, self.sig_cost["vote"]) * receivers
        self.stats.panel_msgs += receivers if needed is None else needed
        self.stats.panel_bytes += len(payload) * (receivers if needed is None else needed)

    def node_publish(self, node: SimNode, kind: topics.Kind, msg: Message, extra_bytes: int = 0) -> None:
        """A node publishes on its own topic: the coordinator gets it; watchers get its proof topic."""
        payload = node.signer.seal(msg, self.now + node.skew)
        if self.down(self.now):
            return
        topic = topics.node(kind, SITE, GROUP, node.node_id)
        self.at(self.deliver_at(node.name, "coord"), lambda: self.coordinator_receive(topic, payload))
        if kind is topics.Kind.NODE_PROOF:
            name = type(msg).__name__
            sig = {"BenchmarkProof": "proof", "ProofOpening": "opening"}.get(name, "vote")
            cid = getattr(msg, "challenge_id", "")
            # The coordinator subscribes to node/+/proof; agents watch this node's topic while seated for it.
            watchers = self.watching.get(node.node_id, {})
            receivers = 1 + sum(
                1 for seat, until in watchers.items() if until > self.now and seat != node.name
            )
            self.count(payload + bytes(extra_bytes), sig, receivers, len(self.panels.get(cid, ())) + 1)
            for seat in self.panels.get(cid, ()):
                if seat != node.name:
                    peer = self.nodes[seat]
                    at = self.deliver_at(node.name, peer.name)
                    self.at(at, lambda peer=peer: self.panel_receive(peer, node, msg))

    # ---- the nodes (what node/agent.py does, in memory) -----------------------------------------
    @property
    def by_id(self) -> dict[str, SimNode]:
        return self._by_id

    def _populate(self) -> None:
        n = self.args.nodes
        rng = self.rng
        kinds = ["overclaim"] * round(0.15 * n) + ["sybil"] * round(0.05 * n) + ["withhold"] * round(0.03 * n)
        kinds += ["honest"] * (n - len(kinds))
        overs = itertools.cycle(["cpu_rate", "cpu_cores", "memory", "storage"])
        sybil_device: Device | None = None
        sybil_left = 0
        for i, kind in enumerate(kinds):
            cls_name = rng.choice(list(CLASSES))
            device = Device(CLASSES[cls_name], rng.uniform(0.8, 1.2))
            fingerprint = f"hw-{i}"
            if kind == "sybil":
                if sybil_left == 0 or sybil_device is None:
                    sybil_device, sybil_left = device, rng.choice((2, 3))
                    sybil_fp = f"hw-{i}"
                device, fingerprint = sybil_device, sybil_fp
                cls_name = next(k for k, v in CLASSES.items() if v is device.cls)
                sybil_left -= 1
            signer = Signer(SigningKey(rng.randbytes(32)))
            node = SimNode(
                name=f"{kind[0]}{i:03d}",
                kind=kind,
                device=device,
                signer=signer,
                skew=rng.randint(-SKEW_MS, SKEW_MS),
                resources=[],
                work=ProofWork(signer.node_id, workdir=self.tmp / f"n{i}"),
                fingerprint=fingerprint,
            )
            if kind == "overclaim":
                node.over, node.factor = next(overs), rng.uniform(1.1, 3.0)
            node.resources = self._claims(node, cls_name)
            self.classes[node.name] = cls_name
            node.work.prover = self._prover(node)
            self.nodes[node.name] = node
        cheats = [x for x in self.nodes.values() if x.kind in ("overclaim", "sybil")]
        honest = [x for x in self.nodes.values() if x.kind == "honest"]
        for x in cheats + rng.sample(honest, max(0, round(self.args.colluders * n) - len(cheats))):
            x.colluder = True
        self._by_id = {x.node_id: x for x in self.nodes.values()}

    def _claims(self, node: SimNode, cls_name: str) -> list[ResourceSpec]:
        d, k = node.device, node.factor
        cores = d.cls.cores * (k if node.over == "cpu_cores" else 1)
        cpu = d.cls.cpu * d.speed * (k if node.over == "cpu_rate" else 1)
        mem = d.cls.memory * d.speed * (k if node.over == "memory" else 1)
        disk = d.cls.storage * d.speed * (k if node.over == "storage" else 1)
        keys = proofs.RATE_KEYS
        return [
            ResourceSpec(
                type=ResourceType.COMPUTE_CPU,
                capacity=round(cores),
                unit="cores",
                details={keys["cpu"]: round(cpu / SCALE["cpu"])},
            ),
            ResourceSpec(
                type=ResourceType.STORAGE_MEMORY,
                capacity=d.cls.mem_gb / 2,
                unit="GB",
                details={keys["memory"]: round(mem / SCALE["memory"])},
            ),
            ResourceSpec(
                type=ResourceType.STORAGE_PERSISTENT,
                capacity=d.cls.disk_gb / 2,
                unit="GB",
                details={keys["storage"]: round(disk / SCALE["storage"])},
            ),
        ]

    def _prover(self, node: SimNode) -> Callable[[BenchmarkChallenge], tuple[bytes, Sequence[bytes]]]:
        """The node's real proving code, or its cheat: computes a share of the work, junk for the rest."""

        def prove(ch: BenchmarkChallenge) -> tuple[bytes, Sequence[bytes]]:
            share = self._cheat_share(node, ch)
            node.pending[ch.challenge_id] = share
            if share >= 1.0:
                return proofs.prove(ch)
            rng = random.Random(ch.nonce)
            junk = set(rng.sample(range(ch.segments), round((1 - share) * ch.segments)))
            out: list[bytes] = []
            for i in range(ch.segments):
                if i in junk:
                    out.append(rng.randbytes(32 if ch.workload == "cpu" else proofs.LINE_BYTES))
                elif ch.workload == "cpu":
                    prev = out[i - ch.lanes] if i >= ch.lanes else None
                    out.append(proofs.run_segment("cpu", ch.nonce, i, ch.segment_size, prev))
                elif i == 0:
                    out.append(proofs.table_line(ch.nonce, 0))
                else:
                    prev = out[i - 1]
                    out.append(proofs.table_line(ch.nonce, i, prev, out[proofs.dep_index(i, prev)]))
            done = proofs.Committed(out)
            return done.root, done

        return prove

    def _cheat_share(self, node: SimNode, ch: BenchmarkChallenge) -> float:
        """The share of the work a node computes: all of it unless it overclaimed this workload so far
        that honest work would fail the rate; then just what meets the rate (the rest is junk)."""
        over = {"cpu_rate": "cpu", "cpu_cores": "cpu"}.get(node.over, node.over)
        if node.kind != "overclaim" or over != ch.workload:
            return 1.0
        ratio = proofs.PARAMS[ch.workload].min_rate_ratio
        if node.factor * ratio <= 0.95:
            return 1.0  # honest work passes often enough: no junk to be caught with
        return min(1.0, 0.95 / (node.factor * ratio))

    def run_job(
        self, node: SimNode, ch: BenchmarkChallenge, share: float, done: Callable[[], Awaitable[None]]
    ) -> None:
        """Run ``share`` of ``ch`` on the node's device (noise, shared cores); ``done`` once finished."""
        d = node.device
        noise = self.rng.uniform(1 - NOISE, 1 + NOISE)
        threads = ch.lanes if ch.workload == "cpu" else 1
        per_thread = {"cpu": d.cls.cpu, "memory": d.cls.memory, "storage": d.cls.storage}[ch.workload]
        per_thread *= d.speed * noise / SCALE[ch.workload] / 1000
        d.advance(self.now)
        d.jobs[next(self._seq)] = Job(proofs.total_work(ch) * share, threads, per_thread, done)
        self._reschedule(d)
        # The provers' CPU, in this machine's CPU-seconds at full size.
        full = proofs.total_work(ch) * share * SCALE[ch.workload]
        self.stats.prover_cpu += full / self.rates_here[ch.workload]

    def _reschedule(self, d: Device) -> None:
        d.version += 1
        if d.jobs:
            version = d.version
            wait = min(j.remaining / d.rate(j) for j in d.jobs.values())
            self.at(self.now + max(1, math.ceil(wait)), lambda: self._device_event(d, version))

    async def _device_event(self, d: Device, version: int) -> None:
        if version != d.version:
            return
        d.advance(self.now)
        finished = [k for k, j in d.jobs.items() if j.remaining <= d.rate(j)]  # within a millisecond
        jobs = [d.jobs.pop(k) for k in finished]
        self._reschedule(d)
        for job in jobs:
            await job.done()

    def check_cost(self, ch: BenchmarkChallenge) -> float:
        """One re-check of ``ch`` at full size, in this machine's CPU-seconds (plus its Merkle paths)."""
        paths = 3 * ch.opens * math.ceil(math.log2(max(2, self._full_segments(ch)))) * 0.6e-6
        if ch.workload == "cpu":
            return ch.opens * ch.segment_size * SCALE["cpu"] / self.rates_here["cpu"] + paths
        return ch.opens * proofs.LINE_BYTES / self.rates_here[ch.workload] + paths

    def _full_segments(self, ch: BenchmarkChallenge) -> int:
        return ch.segments if ch.workload == "cpu" else int(ch.segments * SCALE[ch.workload])

    async def node_command(self, node: SimNode, cmd: NodeCommand) -> None:
        if cmd.verb == "challenge":
            ch = msgspec.convert(cmd.args["challenge"], BenchmarkChallenge)
            self.challenges[ch.challenge_id] = ch
            proof = await node.work.challenge(cmd.args, lambda: self.now + node.skew)
            if not isinstance(proof, BenchmarkProof):
                return
            share = node.pending.pop(ch.challenge_id, 1.0)
            self.stats.proofs_sent += 1
            self.run_job(node, ch, share, lambda: self._send(node, topics.Kind.NODE_PROOF, proof))
        elif cmd.verb == "verify":
            ch = msgspec.convert(cmd.args["challenge"], BenchmarkChallenge)
            self.panels.setdefault(ch.challenge_id, set()).add(node.name)
            self.watching.setdefault(ch.node, {})[node.name] = self.now + int(SEAT_WATCH_S * 1000)
            node.work.sit(cmd.args)
        elif cmd.verb == "open":
            if node.kind == "withhold":
                return
            opening = node.work.open(cmd.args)
            if isinstance(opening, ProofOpening):
                ch = self.challenges.get(opening.challenge_id)
                extra = 0
                if ch is not None and ch.workload != "cpu":  # full-size tables have longer paths
                    extra = len(opening.openings) * 32 * math.ceil(math.log2(SCALE[ch.workload]))
                hold = 5
                if ch is not None and node.kind == "overclaim":
                    # The rational cheat holds its opening back by the most network allowance credit
                    # could take out of the timed interval (credit.allowance_ms), to look faster; the
                    # group's median round trip (credit.RoundTrips) is what bounds it.
                    hold += math.ceil(credit.ALLOWANCE_SHARE * proofs.expected_ms(ch))
                self.at(self.now + hold, lambda: self._send(node, topics.Kind.NODE_PROOF, opening, extra))
        elif cmd.verb == "rebirth":
            self.birth(node)

    async def _send(self, node: SimNode, kind: topics.Kind, msg: Message, extra: int = 0) -> None:
        self.node_publish(node, kind, msg, extra)

    async def panel_receive(self, peer: SimNode, subject: SimNode, msg: Message) -> None:
        vote = await peer.work.observe(subject.node_id, msg, self.now + peer.skew)
        if isinstance(msg, ProofOpening) and isinstance(vote, VerificationVote):
            ch = self.challenges.get(msg.challenge_id)
            if ch is not None:
                self.stats.verify_cpu += self.check_cost(ch)
            if peer.colluder:
                vote = msgspec.structs.replace(vote, accept=subject.cheat)
            self.node_publish(peer, topics.Kind.NODE_PROOF, vote)

    def birth(self, node: SimNode) -> None:
        msg = NodeBirth(
            node=node.node_id,
            bdseq=node.bdseq,
            public_key=node.signer.public_key,
            device_class=self.classes[node.name],
            software="sim",
            hw_fingerprint=node.fingerprint,
            resources=node.resources,
        )
        self.node_publish(node, topics.Kind.NODE_BIRTH, msg)
        self.node_publish(
            node, topics.Kind.NODE_STATE, NodeState(node=node.node_id, status="online", bdseq=node.bdseq)
        )

    async def heartbeat(self, node: SimNode) -> None:
        hb = Heartbeat(node=node.node_id, cpu_util=0.1, mem_util=0.2, uptime_s=1.0)
        self.node_publish(node, topics.Kind.NODE_TELEMETRY, hb)
        self.at(self.now + HEARTBEAT_MS, lambda: self.heartbeat(node))

    # ---- running -----------------------------------------------------------------------------
    async def run(self) -> None:
        a = self.args
        for node in self.nodes.values():
            self.birth(node)
            self.at(self.now + self.rng.randint(1, HEARTBEAT_MS), lambda node=node: self.heartbeat(node))
        await self._run_until(self.now + 2_000)
        for node in self.nodes.values():  # every node stakes twice what it must (so slashes are real)
            member = self.group.members.get(node.node_id)
            if member is None:
                continue
            need = self.verifier.required_stake(member, self.now).required_micro * 2
            await self.apply(self.verifier.deposit(node.node_id, need, f"dep:{node.name}", self.now))
            await self.apply(self.verifier.stake(member, need, f"stake:{node.name}", self.now))
        print(self.header(), flush=True)
        start = self.now
        for cycle in range(1, a.cycles + 1):
            self.cycle = cycle
            before = self._snapshot()
            end = start + cycle * ROUND_MS
            if cycle == a.restart_cycle:
                await self._run_until(end - ROUND_MS + int(0.4 * ROUND_MS))
                self._start_coordinator()  # the process died: only the stores are left
                for node in self.nodes.values():
                    node.bdseq += 1
                    self.birth(node)
            if cycle == a.outage_cycle:
                await self._run_until(end - ROUND_MS + int(0.1 * ROUND_MS))
                while len(self.verifier.checks) < 5 and self.now < end - 30_000:  # mid-round: checks open
                    await self._run_until(self.now + TICK_MS)
                self.outage = (self.now, self.now + 20_000)
                await self._run_until(self.outage[1] - 1)  # reconnected: the shell voids before it ticks
                self.voided_outage = self.verifier.void(
                    self.now, "broker outage"
                )  # as the shell on reconnect
                if self.verifier.beacon is not None:
                    self.publish_coord(self.verifier.beacon)
            await self._run_until(end)
            print(self.row(cycle, before), flush=True)
        self.summary()

    async def _run_until(self, t_end: int) -> None:
        """Process events and the coordinator's 1 s ticks in time order up to ``t_end``."""
        while True:
            next_tick = self.tick_at + TICK_MS
            next_event = self._events[0][0] if self._events else next_tick
            t = min(next_tick, next_event)
            if t > t_end:
                self.now = t_end
                return
            self.now = t
            if next_tick <= next_event:
                self.tick_at = next_tick
                await self.coordinator_tick()
            else:
                _, _, fn = heapq.heappop(self._events)
                await fn()

    # ---- reporting ---------------------------------------------------------------------------
    def _snapshot(self) -> tuple[float, float, float, int, int]:
        s = self.stats
        return s.prover_cpu, s.verify_cpu, s.sig_cpu, s.msgs, s.bytes

    def header(self) -> str:
        return (
            "cycle  checks  fail  failed  neutral  "
            f"caught (<{BAND:.2f}x / >={BAND:.2f}x / sybil / withhold)      g"
            "   honest failed  slashed  verify+sig CPU / prover CPU   msgs/node/h  KB/node/h"
        )

    # ---- credit by measurement, judged against what each device really does ------------------------
    def true_rates(self, node: SimNode) -> dict[str, float]:
        """What the node's device really delivers per workload, in the (scaled) units of its claims."""
        d = node.device
        shape = proofs.claims(node.resources).get("cpu")
        lanes = shape.lanes if shape is not None else d.cls.cores
        return {
            "cpu": min(lanes, d.cls.cores) * d.cls.cpu * d.speed / SCALE["cpu"],
            "memory": d.cls.memory * d.speed / SCALE["memory"],
            "storage": d.cls.storage * d.speed / SCALE["storage"],
        }

    def credit_ratios(self, node: SimNode) -> dict[str, float]:
        """Workload → credited / true for the node now (the verifier's credited figure)."""
        member = self.group.members.get(node.node_id)
        if member is None:
            return {}
        true = self.true_rates(node)
        return {w: r / true[w] for w, r in self.verifier.credited_rates(member).items() if w in true}

    @staticmethod
    def overclaimed(node: SimNode) -> str:
        return {"cpu_rate": "cpu", "cpu_cores": "cpu"}.get(node.over, node.over)

    def honest_ratios(self) -> list[float]:
        return [r for n in self.nodes.values() if not n.cheat for r in self.credit_ratios(n).values()]

    def judge_credit(self) -> tuple[float, set[str]]:
        """g (the p99.5 of what noise gives honest nodes: credited / true − 1) and the overclaimers whose
        overclaimed resource is credited at most true × (1 + g) now."""
        honest = sorted(self.honest_ratios())
        g = honest[min(len(honest) - 1, math.ceil(0.995 * len(honest)) - 1)] - 1 if honest else 0.0
        neutral = set()
        for n in self.nodes.values():
            if n.kind == "overclaim":
                ratio = self.credit_ratios(n).get(self.overclaimed(n))
                if ratio is not None and ratio <= 1 + g + 1e-12:
                    neutral.add(n.name)
        return g, neutral

    def _caught(self, kinds: Callable[[SimNode], bool], neutral: set[str]) -> str:
        group = [n for n in self.nodes.values() if kinds(n)]
        if not group:
            return "   -  "
        got = sum(1 for n in group if n.name in self.first_caught or n.name in neutral)
        return f"{100 * got / len(group):5.1f}%"

    def row(self, cycle: int, before: tuple[float, float, float, int, int]) -> str:
        s = self.stats
        p, v, g, m, b = (x - y for x, y in zip(self._snapshot(), before, strict=True))
        n = len(self.nodes)
        hours = ROUND_MS / 3_600_000
        honest = [x for x in self.nodes.values() if not x.cheat]
        honest_failed = sum(1 for x in honest if x.name in self.failed)
        honest_slashed = sum(1 for x in honest if x.node_id in self.slashed)
        cheats = [x for x in self.nodes.values() if x.cheat]
        over = [x for x in cheats if x.kind == "overclaim"]
        gain, neutral = self.judge_credit()
        self.gain[cycle], self.neutralised[cycle] = gain, neutral
        failed = sum(1 for x in cheats if x.name in self.first_caught)
        caught = sum(1 for x in cheats if x.name in self.first_caught or x.name in neutral)
        bands = " / ".join(
            (
                self._caught(lambda x: x.kind == "overclaim" and x.factor < BAND, neutral),
                self._caught(lambda x: x.kind == "overclaim" and x.factor >= BAND, neutral),
                self._caught(lambda x: x.kind == "sybil", neutral),
                self._caught(lambda x: x.kind == "withhold", neutral),
            )
        )
        return (
            f"{cycle:5d} {s.checks['pass'] + s.checks['fail']:7d} {s.checks['fail']:5d}"
            f"  {100 * failed / max(1, len(cheats)):5.1f}%  {100 * len(neutral) / max(1, len(over)):5.1f}%"
            f"  {100 * caught / max(1, len(cheats)):5.1f}% ({bands})  {gain:+.3f}"
            f"  {100 * honest_failed / max(1, len(honest)):6.2f}%  {honest_slashed:4d}"
            f"  {100 * (v + g) / max(1e-9, p):8.2f}% ({100 * v / max(1e-9, p):.2f}% re-exec)"
            f"  {m / n / hours:11.0f}  {b / n / hours / 1024:9.0f}"
        )

    def summary(self) -> None:
        reasons: Counter[str] = Counter()
        honest_reasons: Counter[str] = Counter()
        for name, rs in self.failed.items():
            (reasons if self.nodes[name].cheat else honest_reasons).update(rs)
        by = min(3, self.args.cycles)
        neutral = self.neutralised.get(by, set())
        cheats = [n for n in self.nodes.values() if n.cheat]

        def within(n: SimNode) -> bool:
            return self.first_caught.get(n.name, 99) <= by or n.name in neutral

        def share(group: list[SimNode], test: Callable[[SimNode], bool]) -> str:
            return f"{sum(1 for n in group if test(n))}/{len(group)}"

        in_band = [n for n in cheats if n.kind == "overclaim" and n.factor < BAND]
        out_band = [n for n in cheats if n.kind == "overclaim" and n.factor >= BAND]
        others = [n for n in cheats if n.kind != "overclaim"]
        print(
            f"caught within {by} cycles: {100 * sum(map(within, cheats)) / max(1, len(cheats)):.1f}% of all "
            f"cheats ({share(cheats, within)}): overclaims <{BAND:.2f}x {share(in_band, within)} "
            f"(failed a check {share(in_band, lambda n: self.first_caught.get(n.name, 99) <= by)}, "
            f"neutralised {share(in_band, lambda n: n.name in neutral)}), >={BAND:.2f}x "
            f"{share(out_band, within)}, sybils and withholders {share(others, within)}; "
            f"g = {self.gain.get(by, 0.0):+.4f}"
        )
        ratios = sorted(self.honest_ratios())
        if ratios:

            def q(x: float) -> float:
                return ratios[min(len(ratios) - 1, max(0, math.ceil(x * len(ratios)) - 1))]

            print(
                f"honest nodes' credited / true ({len(ratios)} node-resources): min {ratios[0]:.3f}, "
                f"p5 {q(0.05):.3f}, median {q(0.5):.3f}, p99.5 {q(0.995):.3f}, max {ratios[-1]:.3f}"
            )
        gains = [
            (n, self.credit_ratios(n).get(self.overclaimed(n), 0.0))
            for n in cheats
            if n.kind == "overclaim" and n.name not in self.first_caught
        ]
        if gains:
            print(
                "overclaimers never failed, credited / true of the overclaimed resource now: "
                + ", ".join(f"{n.name} {n.over} x{n.factor:.2f}: {r:.3f}" for n, r in gains)
            )
        flagged = Counter(
            ("cheat" if n.cheat else "honest")
            for n in self.nodes.values()
            if n.node_id in self.group.members and self.verifier.overclaims(self.group.members[n.node_id])
        )
        print(f"overclaim test records (claim corrected): {dict(flagged) or 'none'}")
        print(f"cheats' failed checks by reason: {dict(reasons)}")
        print(f"honest nodes' failed checks by reason: {dict(honest_reasons)}")
        missed = [n for n in cheats if n.name not in self.first_caught]
        print(
            "cheats that never failed a check: "
            + ", ".join(f"{n.name} {n.over or n.kind} x{n.factor:.2f}" for n in missed)
        )

        def levels(group: list[SimNode]) -> dict[str, int]:
            got = Counter(
                self.verifier.level(self.group.members[n.node_id]).value
                for n in group
                if n.node_id in self.group.members
            )
            return dict(got)

        failed = [n for n in cheats if n.name in self.first_caught]
        print(
            f"levels now: {levels(list(self.nodes.values()))}; honest: "
            f"{levels([n for n in self.nodes.values() if not n.cheat])}; cheats that failed a check: "
            f"{levels(failed)}"
        )
        s, n, hours = self.stats, len(self.nodes), self.args.cycles * ROUND_MS / 3_600_000
        print(
            f"traffic over the run: {s.msgs / n / hours:.0f} msgs and {s.bytes / n / hours / 1024:.0f} KB "
            f"per node per hour received; the part the check's own panel and coordinator needed: "
            f"{s.panel_msgs / n / hours:.0f} msgs and {s.panel_bytes / n / hours / 1024:.0f} KB"
        )
        print(
            f"checks voided by the broker outage: {self.voided_outage}; since the restart "
            f"(outage, withheld capacity): {self.verifier.voided}"
        )


def measure_here(quick: bool) -> tuple[dict[str, float], dict[str, float]]:
    """This machine's per-core rates (the CPU-second unit) and the cost of opening each kind of envelope."""
    print("measuring this machine's rates and signature cost ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        rates = {
            "cpu": calibrate_cpu_rate(0.3 if not quick else 0.1),
            "memory": calibrate_table_rate(1.0 if not quick else 0.2),
            "storage": calibrate_table_rate(1.0 if not quick else 0.2, Path(tmp)),
        }
    signer = Signer(SigningKey(bytes(32)))
    rng = random.Random(0)
    ch, salt = proofs.make_challenge("c", signer.node_id, "cpu", 20_000.0, rng, T0, target_ms=100)
    root, results = proofs.prove(ch)
    samples: dict[str, Message] = {
        "cmd": NodeCommand(
            verb="challenge",
            node=signer.node_id,
            args={"challenge": msgspec.to_builtins(ch, builtin_types=(bytes,))},
        ),
        "proof": proofs.make_proof(ch, root, 100),
        "opening": proofs.open_segments(ch, results, proofs.opening_indices(ch, root, salt, results), salt),
        "vote": VerificationVote(round=1, subject="x", voter=signer.node_id, challenge_id="c", accept=True),
    }
    cost: dict[str, float] = {}
    for kind, msg in samples.items():
        payload = signer.seal(msg, T0)
        start = time.process_time()
        for _ in range(200):
            open_envelope(payload)
        cost[kind] = (time.process_time() - start) / 200
    return rates, cost


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=200, help="group size (default 200)")
    ap.add_argument("--cycles", type=int, default=6, help="verification rounds of 5 minutes (default 6)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--colluders", type=float, default=0.2, help="share of colluding verifiers (default 0.2)")
    ap.add_argument(
        "--restart-cycle", type=int, default=3, help="coordinator restart in this cycle (0: none)"
    )
    ap.add_argument("--outage-cycle", type=int, default=4, help="20 s broker outage in this cycle (0: none)")
    ap.add_argument(
        "--credit-net",
        action="store_true",
        help="credit rates net of the coordinator-observed round trip (VerifierConfig.credit_net_of_network)",
    )
    ap.add_argument(
        "--credit-estimator",
        choices=credit.ESTIMATORS,
        default=VerifierConfig.credit_estimator,
        help=f"how credit is estimated from measurements (VerifierConfig.credit_estimator; default "
        f"{VerifierConfig.credit_estimator})",
    )
    ap.add_argument("--quick", action="store_true", help="shorter calibration at start")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the verifier logs every failed check: the table says it
    rates, sig = measure_here(args.quick)
    opens = f"{1e6 * sig['vote']:.0f}-{1e6 * sig['opening']:.0f} us"
    print(
        f"this machine: {rates['cpu']:.3g} PBKDF2 it/s/core, memory fill {rates['memory'] / 1e6:.0f} MB/s, "
        f"storage {rates['storage'] / 1e6:.0f} MB/s; open_envelope {opens}",
        flush=True,
    )
    started = time.perf_counter()
    sim = Sim(args, rates, sig)
    asyncio.run(sim.run())
    print(f"({time.perf_counter() - started:.0f} s wall)", file=sys.stderr)


if __name__ == "__main__":
    main()
