"""The verification engine driven in memory against real ProofWork nodes, with explicit time."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from prsm_edge.node.prover import ProofWork, Prover
from prsm_edge.protocol import merkle, peers, proofs
from prsm_edge.protocol.envelope import Signer
from prsm_edge.protocol.group import Member, Publish
from prsm_edge.protocol.ledger import Ledger, LedgerKind, verify_chain
from prsm_edge.protocol.messages import (
    MICRO,
    Beacon,
    BenchmarkChallenge,
    BenchmarkProof,
    LedgerEntry,
    Message,
    NodeCommand,
    ProofOpening,
    ResourceSpec,
    ResourceType,
    VerificationLevel,
    VerificationVote,
)
from prsm_edge.protocol.reputation import Dimension
from prsm_edge.protocol.verifier import (
    CPU_RATE_KEY,
    LevelChange,
    RecordLedger,
    RunCheck,
    Verifier,
    VerifierConfig,
    VerifierEffect,
)

RATE = 1_000_000.0  # claimed SHA-256/s: with the config below a challenge is ~5k hashes
T0 = 1_700_000_000_000
ROUND = 300_000
L = VerificationLevel


def cpu(rate: float = RATE) -> list[ResourceSpec]:
    """A CPU offer claiming ``rate``."""
    return [
        ResourceSpec(type=ResourceType.COMPUTE_CPU, capacity=4, unit="cores", details={CPU_RATE_KEY: rate})
    ]


def junk_prover(ch: BenchmarkChallenge) -> tuple[bytes, list[bytes]]:
    """A filler that commits to results it never computed."""
    results = [bytes(32) for _ in range(ch.segments)]
    return merkle.root_of(results), results


Lie = Callable[[VerificationVote], VerificationVote]


@dataclass
class Net:
    """A coordinator's Verifier and its members' ProofWork, wired together in memory."""

    names: list[str]
    seed: int = 7
    provers: dict[str, Prover] = field(default_factory=dict)
    signers: dict[str, Signer] = field(default_factory=dict)  # nodes whose messages are really signed
    config: VerifierConfig | None = None
    resources: Callable[[], list[ResourceSpec]] = lambda: cpu()  # each member's claim
    members: dict[str, Member] = field(init=False)
    works: dict[str, ProofWork] = field(init=False)
    v: Verifier = field(init=False)
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        cfg = self.config or VerifierConfig(
            site="s", group="g", coordinator="coord", segments=32, opens=4, target_ms=5, spread=0.0
        )
        self.v = Verifier(cfg, Ledger(), secret=self.rng.randbytes(32))
        self.members = {}
        self.works = {}
        for i, n in enumerate(self.names):
            self.add(n, f"fp-{i}")
        # Round 1's inputs are committed with its secret, before anyone knows the draw.
        self.v.opening_beacon(self.members.values())

    def add(self, node: str, fingerprint: str) -> None:
        self.members[node] = Member(node, b"", 0, "rpi4", fingerprint, self.resources(), joined_ms=T0)
        self.works[node] = ProofWork(node, prover=self.provers.get(node, proofs.prove))

    def raw(self, node: str, msg: Message, at: int) -> bytes:
        """The COSE_Sign1 bytes ``node`` would send (empty for nodes without a signer)."""
        signer = self.signers.get(node)
        return signer.seal(msg, at) if signer is not None else b""

    async def round(
        self,
        now: int,
        *,
        delay: dict[str, int] | None = None,
        lie: Lie | None = None,
        silent: bool = False,
        settle_at: int = 1_000,
        before_settle: Callable[[], None] | None = None,
        tamper: Callable[[str, ProofOpening], ProofOpening | None] | None = None,
        trip: dict[str, int] | None = None,
    ) -> list[VerifierEffect]:
        """One full round: claims, beacon, challenges, proofs, openings, votes, settling. ``delay``: when
        a node's proof arrives after the issue; ``trip``: its opening after the salt reveal (1 ms)."""
        delay, trip = delay or {}, trip or {}
        effects = self.v.observe_claims(list(self.members.values()), now)
        effects += self.v.start_round(list(self.members.values()), now, self.rng)
        cmds = [e.message for e in effects if isinstance(e, Publish) and isinstance(e.message, NodeCommand)]
        panels: dict[str, list[str]] = {}
        for c in cmds:
            if c.verb == "verify":
                panels.setdefault(c.args["challenge"]["challenge_id"], []).append(c.node)
                if not silent:
                    self.works[c.node].sit(c.args)
        for c in cmds:
            if c.verb != "challenge":
                continue
            node, cid = c.node, c.args["challenge"]["challenge_id"]
            proof = await self.works[node].challenge(c.args, lambda: now)
            assert isinstance(proof, BenchmarkProof)
            at = now + delay.get(node, 2)
            for p in panels.get(cid, []):
                assert await self.works[p].observe(node, proof, at) is None
            opened = self.v.on_proof(self.members[node], proof, at, self.raw(node, proof, at))
            effects += opened
            (open_cmd,) = [e.message for e in opened if isinstance(e, Publish)]
            assert isinstance(open_cmd, NodeCommand) and open_cmd.verb == "open"
            opening = self.works[node].open(open_cmd.args)
            assert isinstance(opening, ProofOpening)
            if tamper is not None:
                changed = tamper(node, opening)
                if changed is None:
                    continue  # the node withholds its opening
                opening = changed
            back = at + trip.get(node, 1)
            effects += run_checks(self.v, self.v.on_opening(opening, back, self.raw(node, opening, back)))
            for p in panels.get(cid, []):
                vote = await self.works[p].observe(node, opening, back)
                if silent:
                    assert vote is None
                    continue
                assert isinstance(vote, VerificationVote)
                effects += self.v.on_vote(lie(vote) if lie else vote)
        if before_settle is not None:
            before_settle()
        effects += self.v.tick(self.members, now + settle_at)
        return effects


def run_checks(v: Verifier, effects: list[VerifierEffect]) -> list[VerifierEffect]:
    """Do what the shell does with RunCheck effects (here inline, there in a worker thread)."""
    out: list[VerifierEffect] = []
    for e in effects:
        if isinstance(e, RunCheck):
            out += v.check_result(e.challenge_id, e.run())
        else:
            out.append(e)
    return out


def levels(effects: list[VerifierEffect]) -> list[tuple[str, VerificationLevel]]:
    return [(e.node, e.level) for e in effects if isinstance(e, LevelChange)]


def ledger_entries(effects: list[VerifierEffect]) -> list[LedgerEntry]:
    return [entry for e in effects if isinstance(e, RecordLedger) for entry in e.entries]


def fund_and_stake(net: Net, node: str, now: int, fraction: float = 2.0) -> tuple[int, list[VerifierEffect]]:
    """Deposit and stake ``fraction`` × what the member must stake now."""
    member = net.members[node]
    amount = int(net.v.required_stake(member, now).required_micro * fraction)
    effects = net.v.deposit(node, amount, f"dep:{node}", now, memo="operator deposit")
    effects += net.v.stake(member, amount, f"stake:{node}", now)
    return amount, effects


async def test_honest_member_is_benchmarked_then_staked() -> None:
    net = Net([f"n{i}" for i in range(7)])
    effects = await net.round(T0)
    # Every member was a subject (all new) and every one passed: one change each, to BENCHMARKED.
    assert sorted(levels(effects)) == [(n, L.BENCHMARKED) for n in net.names]
    assert all(verdict.accepted for _, verdict in net.v.verdicts) and len(net.v.verdicts) == 7
    held = net.v.nodes["n0"].evidence.held(T0 + 1_000)
    assert held[L.PEER_VERIFIED] and held[L.BENCHMARKED] and not held[L.ECONOMICALLY_STAKED]
    assert net.v.level_of("n0") is L.BENCHMARKED
    # Nothing changed: no LevelChange.
    assert levels(net.v.tick(net.members, T0 + 2_000)) == []

    now = T0 + 3_000
    amount, effects = fund_and_stake(net, "n0", now, fraction=1.0)
    assert levels(effects) == [("n0", L.ECONOMICALLY_STAKED)]
    entries = ledger_entries(effects)
    assert [e.kind for e in entries] == [LedgerKind.CREDIT, LedgerKind.STAKE]
    assert net.v.ledger.stake("n0") == amount
    verify_chain(entries)
    assert levels(net.v.tick(net.members, now + 1)) == []
    # Evidence expires: the proof's 6 h validity lapses (the quorum's 24 h does not) and the level
    # falls to what is left (and says so).
    late = T0 + 7 * 3_600_000
    assert levels(net.v.tick(net.members, late)) == [(n, L.PEER_VERIFIED) for n in net.names]


async def test_overclaimer_and_junk_filler_are_rejected_and_slashed() -> None:
    net = Net([f"n{i}" for i in range(6)], provers={"junk": junk_prover})
    net.add("late", "fp-late")
    net.add("junk", "fp-junk")
    stakes: dict[str, int] = {}
    chain: list[LedgerEntry] = []
    for node in ("late", "junk"):
        stakes[node], effects = fund_and_stake(net, node, T0 - 1)
        chain += ledger_entries(effects)
    first = await net.round(T0, delay={"late": 10_000})
    # A first late result is re-checked before it counts (containment): nothing is slashed yet.
    assert [e.account for e in ledger_entries(first) if e.kind == LedgerKind.SLASH] == ["junk"]
    assert any("checked again" in what for _, what in net.v.nodes["late"].evidence.history)
    effects = first + await net.round(T0 + ROUND, delay={"late": 10_000})
    verdicts = dict(net.v.verdicts)
    assert verdicts["late"].reason is proofs.VerdictReason.LATE
    assert verdicts["junk"].reason is proofs.VerdictReason.WRONG_RESULT
    assert all(verdicts[n].accepted for n in net.names)
    changed = dict(levels(effects))
    assert "late" not in changed and "junk" not in changed  # never rose
    for node in ("late", "junk"):
        assert net.v.level_of(node) is L.SELF_REPORTED
        held = net.v.nodes[node].evidence.held(T0 + 1_000)
        assert not held[L.BENCHMARKED] and not held[L.PEER_VERIFIED]
    slashes: dict[str, LedgerEntry] = {}
    for e in ledger_entries(effects):
        if e.kind == LedgerKind.SLASH:
            slashes.setdefault(e.account, e)  # each one's first slash, on its full stake
    assert set(slashes) == {"late", "junk"}
    assert slashes["late"].amount_micro == -(-stakes["late"] * 10 // 100)
    assert slashes["junk"].amount_micro == -(-stakes["junk"] * 50 // 100)
    assert slashes["late"].key.startswith("slash:performance:late:")
    assert slashes["junk"].key.startswith("slash:fraud:junk:")
    assert all(len(e.evidence) == 32 for e in slashes.values())
    assert net.v.ledger.stake("late") == stakes["late"] - slashes["late"].amount_micro
    chain += ledger_entries(effects)
    assert verify_chain(chain) == net.v.ledger.head
    # Even staked, a node without proof evidence stays SELF_REPORTED.
    assert levels(net.v.tick(net.members, T0 + ROUND + 2_000)) == []


async def test_colluding_panel_cannot_penalise_an_honest_node() -> None:
    names = [f"n{i}" for i in range(8)]

    async def run(lying: bool) -> tuple[Net, list[VerifierEffect], set[str]]:
        net = Net(names, seed=11)
        fund_and_stake(net, "n0", T0 - 1)
        liars: set[str] = set()

        def lie(vote: VerificationVote) -> VerificationVote:
            if vote.subject != "n0":
                return vote
            liars.add(vote.voter)
            return msgspec.structs.replace(vote, accept=False, reason="wrong_result")

        return net, await net.round(T0, lie=lie if lying else None), liars

    honest_net, _, _ = await run(False)
    net, effects, liars = await run(True)
    assert len(liars) == 5  # the whole panel voted to reject
    assert dict(net.v.verdicts)["n0"].accepted
    assert ("n0", L.ECONOMICALLY_STAKED) in levels(effects)  # staked beforehand, and not slashed
    assert net.v.ledger.stake("n0") == honest_net.v.ledger.stake("n0") > 0
    assert net.v.nodes["n0"].evidence.held(T0 + 1_000)[L.PEER_VERIFIED]
    assert not [e for e in ledger_entries(effects) if e.kind == LedgerKind.SLASH]
    for liar in liars:
        lied = net.v.nodes[liar].reputation.value(Dimension.VOTE_HONESTY, T0 + 1_000)
        honest = honest_net.v.nodes[liar].reputation.value(Dimension.VOTE_HONESTY, T0 + 1_000)
        assert lied < honest


async def test_silent_panel_leaves_only_proof_evidence() -> None:
    net = Net([f"n{i}" for i in range(6)])
    assert levels(await net.round(T0, silent=True, settle_at=1_000)) == []
    assert net.v.checks  # not complete, not expired yet
    effects = net.v.tick(net.members, T0 + 20_000)
    assert not net.v.checks
    assert levels(effects) == []  # the ladder needs PEER_VERIFIED first
    held = net.v.nodes["n0"].evidence.held(T0 + 20_000)
    assert held[L.BENCHMARKED] and not held[L.PEER_VERIFIED]
    assert all(verdict.accepted for _, verdict in net.v.verdicts)
    rep = net.v.nodes["n0"].reputation
    assert rep.value(Dimension.RESPONSIVENESS, T0 + 20_000) < rep.prior


async def test_beacon_reveals_commitment_and_panels_are_recomputable() -> None:
    net = Net([f"n{i}" for i in range(9)])
    assert net.v.beacon is not None and isinstance(net.v.beacon.message, Beacon)
    previous = net.v.beacon.message
    for r in range(1, 4):
        now = T0 + r * ROUND
        effects = net.v.start_round(list(net.members.values()), now, net.rng)
        (beacon,) = [e.message for e in effects if isinstance(e, Publish) and isinstance(e.message, Beacon)]
        assert beacon.round == r
        assert peers.verify_reveal(previous.commit_next, beacon.reveal, r)
        assert not peers.verify_reveal(previous.commit_next, beacon.reveal, r + 1)
        cmds = [e.message for e in effects if isinstance(e, Publish) and isinstance(e.message, NodeCommand)]
        issued: dict[str, list[str]] = {}
        for c in cmds:
            if c.verb == "challenge":
                cid = c.args["challenge"]["challenge_id"]
                issued[c.node] = [
                    v.node for v in cmds if v.verb == "verify" and v.args["challenge"]["challenge_id"] == cid
                ]
        # Anyone recomputes every subject and panel from the two published beacons alone.
        assert peers.round_panels(previous, beacon) == issued and issued
        # Panels come from the eligible list committed a round ahead, not from private scores.
        assert all(set(p) <= set(previous.eligible_next) for p in issued.values())
        previous = beacon
        net.v.checks.clear()  # let every member be a subject again next round


def test_duplicate_fingerprints_and_cohort_outliers_raise_sampling() -> None:
    net = Net([f"n{i}" for i in range(7)])
    for n in net.names:
        for _ in range(40):
            net.v.sampler.record(n, True)
    assert all(net.v.sampler.probability(n) < 1.0 for n in net.names)
    before = {n: net.v.required_stake(net.members[n], T0).required_micro for n in net.names}
    net.v.observe_claims(list(net.members.values()), T0)  # n1 holds "fp-1" from here on
    net.members["n2"].hw_fingerprint = "fp-1"  # a later node copies n1's (public) fingerprint
    net.members["n5"].resources = cpu(RATE * 20)  # one rpi4 claiming twenty times its cohort
    net.v.observe_claims(list(net.members.values()), T0 + 1)
    flagged = {"n2", "n5"}  # the copy, not the incumbent it copied
    for n in net.names:
        assert (net.v.sampler.probability(n) == 1.0) is (n in flagged)
    assert net.v.required_stake(net.members["n2"], T0).required_micro > before["n2"]
    assert net.v.required_stake(net.members["n1"], T0).required_micro == before["n1"]
    assert net.v.required_stake(net.members["n0"], T0).required_micro == before["n0"]


async def test_long_clean_record_is_sampled_less_than_a_new_node() -> None:
    net = Net([f"n{i}" for i in range(6)])
    for r in range(12):
        await net.round(T0 + r * ROUND)
    assert net.v.sampler.record_of("n0").run == 12
    net.add("fresh", "fp-fresh")
    assert net.v.sampler.probability("fresh") == 1.0
    assert net.v.sampler.probability("n0") < 1.0
    rng = random.Random(3)
    old = sum(net.v.sampler.should_verify("n0", rng) for _ in range(2_000))
    new = sum(net.v.sampler.should_verify("fresh", rng) for _ in range(2_000))
    assert new == 2_000 and old < 1_900
    effects = net.v.start_round(list(net.members.values()), T0 + 12 * ROUND, net.rng)
    assert any(
        isinstance(e, Publish)
        and isinstance(e.message, NodeCommand)
        and e.message.verb == "challenge"
        and e.message.node == "fresh"
        for e in effects
    )


async def test_changed_claim_drops_evidence_of_the_old_claim() -> None:
    net = Net([f"n{i}" for i in range(6)])
    await net.round(T0)
    fund_and_stake(net, "n0", T0 + 2_000)
    assert net.v.level_of("n0") is L.ECONOMICALLY_STAKED
    now = T0 + 3_000
    assert levels(net.v.observe_claims(list(net.members.values()), now)) == []  # same claim: kept
    net.members["n0"].resources = cpu(RATE * 1.2)  # a faster claim nobody has checked
    effects = net.v.observe_claims(list(net.members.values()), now)
    assert levels(effects) == [("n0", L.SELF_REPORTED)]
    held = net.v.nodes["n0"].evidence.held(now)
    assert not held[L.PEER_VERIFIED] and not held[L.BENCHMARKED]
    assert net.v.sampler.probability("n0") == 1.0
    assert net.v.level_of("n1") is L.BENCHMARKED
    # Checked again on the new claim, it earns its levels back.
    effects = await net.round(now + ROUND)
    assert ("n0", L.ECONOMICALLY_STAKED) in levels(effects)


def test_stake_below_requirement_does_not_count() -> None:
    net = Net(["a", "b"])
    amount, _ = fund_and_stake(net, "a", T0, fraction=0.5)
    assert net.v.ledger.stake("a") == amount > MICRO
    assert not net.v.nodes["a"].evidence.held(T0)[L.ECONOMICALLY_STAKED]


def test_uptime_below_the_commitment_is_slashed_once_per_window() -> None:
    cfg = VerifierConfig(site="s", group="g", coordinator="coord", availability_window_ms=60_000)
    v = Verifier(cfg, Ledger(), secret=bytes(32))
    steady = Member("steady", b"", 0, "rpi4", "fp-1", cpu(), joined_ms=T0, uptime_commitment=0.95)
    flaky = Member("flaky", b"", 0, "rpi4", "fp-2", cpu(), joined_ms=T0, uptime_commitment=0.95)
    for m in (steady, flaky):
        v.deposit(m.node, 100 * MICRO, f"dep-{m.node}", T0)
        v.stake(m, 50 * MICRO, f"stake-{m.node}", T0)
    members = {"steady": steady, "flaky": flaky}
    effects: list[VerifierEffect] = []
    for second in range(0, 61):
        flaky.online = second < 30  # online for half the window: 50 % against a 95 % commitment
        effects += v.tick(members, T0 + second * 1000)
    slashes = [e for r in effects if isinstance(r, RecordLedger) for e in r.entries if e.kind == "slash"]
    assert [e.account for e in slashes] == ["flaky"]
    assert slashes[0].key.startswith("slash:availability:flaky:")
    assert slashes[0].evidence and "uptime 48.3%" in slashes[0].memo  # 29 of the 60 s counted
    assert v.ledger.stake("flaky") == 50 * MICRO - slashes[0].amount_micro == 47_500_000  # 5 %
    assert v.ledger.stake("steady") == 50 * MICRO
    assert v.nodes["flaky"].reputation.value(Dimension.UPTIME, T0 + 60_000) < v.nodes[
        "steady"
    ].reputation.value(Dimension.UPTIME, T0 + 60_000)
    # A coordinator outage (no ticks) is not counted against anyone.
    more = v.tick(members, T0 + 10 * 60_000)
    assert not [r for r in more if isinstance(r, RecordLedger)]


async def test_a_pass_of_a_claim_changed_mid_check_earns_nothing() -> None:
    net = Net(["a", "b", "c", "d", "e", "f"])

    def raise_claim() -> None:
        net.members["a"].resources = cpu(RATE * 3)

    effects = await net.round(T0, before_settle=raise_claim)
    assert ("a", L.BENCHMARKED) not in levels(effects)
    assert net.v.level_of("a") is L.SELF_REPORTED
    assert ("b", L.BENCHMARKED) in levels(effects)
