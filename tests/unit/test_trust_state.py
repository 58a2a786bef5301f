"""One owner of trust state: the verifier's evidence decides every level, and survives a restart as
evidence (never as a copied level)."""

from __future__ import annotations

import random
from pathlib import Path

from nacl.signing import SigningKey

from prsm_edge.io.store import EvidenceStore, LedgerStore, RosterStore
from prsm_edge.node.prover import ProofWork
from prsm_edge.protocol import proofs
from prsm_edge.protocol.envelope import Signer
from prsm_edge.protocol.group import Group, GroupConfig, Member, Publish
from prsm_edge.protocol.ledger import Ledger
from prsm_edge.protocol.messages import (
    BenchmarkProof,
    NodeCommand,
    ProofOpening,
    ResourceSpec,
    ResourceType,
    VerificationLevel,
)
from prsm_edge.protocol.verifier import (
    CPU_RATE_KEY,
    LevelChange,
    RecordContainment,
    RecordEvidence,
    RecordLedger,
    RecordSampling,
    Verifier,
    VerifierConfig,
    VerifierEffect,
)
from tests.unit.test_verifier import (
    RATE,
    T0,
    Net,
    fund_and_stake,
    junk_prover,
    ledger_entries,
    levels,
    run_checks,
)

L = VerificationLevel
HOUR = 3_600_000


class Shell:
    """What the coordinator's shell does with the verifier's effects, on real SQLite."""

    def __init__(self, folder: Path) -> None:
        self.evidence = EvidenceStore(folder / "evidence.sqlite")
        self.ledger = LedgerStore(
            folder / "ledger.sqlite", Signer(SigningKey(bytes(32)))
        )  # entries are signed
        self.roster = RosterStore(folder / "roster.sqlite")

    def apply(self, effects: list[VerifierEffect]) -> None:
        for e in effects:
            if isinstance(e, RecordEvidence):
                self.evidence.save(e.node, e.claim, e.record)
            elif isinstance(e, RecordLedger):
                self.ledger.append(e.entries)
            elif isinstance(e, RecordSampling):
                self.evidence.save_sampling(e.node, e.record)
            elif isinstance(e, RecordContainment):
                self.evidence.save_containment(e.node, e.workloads)

    def close(self) -> None:
        self.evidence.close()
        self.ledger.close()
        self.roster.close()


def _group(v: Verifier) -> Group:
    cfg = GroupConfig(site="s", group="g", coordinator="coord", public_key=bytes(32), epoch=1)
    return Group(cfg, levels=v.level)


def _restart(net: Net, folder: Path, now: int) -> tuple[Verifier, Group, Shell]:
    """A new coordinator run over the same files: members, ledger and evidence reloaded."""
    shell = Shell(folder)
    v = Verifier(net.v.config, Ledger(shell.ledger.load()), secret=random.Random(1).randbytes(32))
    v.restore_evidence(shell.evidence.load(), now)
    group = _group(v)
    group.restore(shell.roster.load())
    return v, group, shell


async def test_restart_keeps_only_what_persisted_evidence_supports(tmp_path: Path) -> None:
    net = Net([f"n{i}" for i in range(7)])
    shell = Shell(tmp_path)
    group = _group(net.v)
    group.members.update(net.members)
    shell.apply(await net.round(T0))
    _, effects = fund_and_stake(net, "n0", T0 + 2_000)
    shell.apply(effects)
    shell.apply(net.v.attestation_result("n0", True, T0 + 2_000))  # its quote was verified
    assert group.level("n0") is L.HARDWARE_ATTESTED
    assert group.roster().members[0].level is L.HARDWARE_ATTESTED
    for member in net.members.values():
        shell.roster.save(member)
    shell.close()

    # Restarted an hour later: everything proven is still current, so the node holds it again.
    v, group, shell = _restart(net, tmp_path, T0 + HOUR)
    assert group.level("n0") is L.HARDWARE_ATTESTED
    assert group.level("n1") is L.BENCHMARKED  # no stake, no quote: benchmarked, as before
    shell.close()

    # Restarted seven hours later: the 6 h proof has lapsed, the 24 h quorum has not. The roster says
    # what the evidence supports, not the level stored before.
    v, group, shell = _restart(net, tmp_path, T0 + 7 * HOUR)
    entries = {e.node: e.level for e in group.roster().members}
    assert entries["n0"] is L.PEER_VERIFIED
    assert set(entries.values()) == {L.PEER_VERIFIED}
    shell.close()

    # Restarted after an hour again, and then n0 fails a check: it loses its levels at once.
    v, group, shell = _restart(net, tmp_path, T0 + HOUR)
    assert group.level("n0") is L.HARDWARE_ATTESTED
    for member in group.members.values():
        member.online = True
    net.v, net.members = v, group.members
    net.v.opening_beacon(group.members.values())
    net.works["n0"].prover = junk_prover
    effects = await net.round(T0 + HOUR)
    shell.apply(effects)
    assert ("n0", L.SELF_REPORTED) in levels(effects)
    assert group.level("n0") is L.SELF_REPORTED
    assert {e.node: e.level for e in group.roster().members}["n0"] is L.SELF_REPORTED
    shell.close()

    # And that failure is what the next restart finds.
    v, group, shell = _restart(net, tmp_path, T0 + HOUR + 5_000)
    assert group.level("n0") is L.SELF_REPORTED
    assert group.level("n1") is L.BENCHMARKED
    shell.close()


def _cores(cores: float, rate: float = RATE) -> list[ResourceSpec]:
    return [
        ResourceSpec(
            type=ResourceType.COMPUTE_CPU, capacity=cores, unit="cores", details={CPU_RATE_KEY: rate}
        )
    ]


async def test_a_new_claim_staked_in_the_same_round_is_not_staked_on_trust() -> None:
    net = Net([f"n{i}" for i in range(6)])
    for member in net.members.values():
        member.resources = _cores(1)
    net.v.opening_beacon(net.members.values())
    await net.round(T0)
    assert net.v.level(net.members["n0"], T0 + 1_000) is L.BENCHMARKED
    # n0 now claims 64 cores (a claim nobody has checked) and stakes what 64 cores require, all before
    # the next round's claim observation.
    net.members["n0"].resources = _cores(64)
    _, effects = fund_and_stake(net, "n0", T0 + 2_000)
    assert net.v.level(net.members["n0"], T0 + 2_000) is L.SELF_REPORTED
    assert ("n0", L.ECONOMICALLY_STAKED) not in levels(effects)
    assert net.v.level_of("n0") is L.SELF_REPORTED
    # Going back to the claim it proved restores what it proved there (the evidence is per claim).
    net.members["n0"].resources = _cores(1)
    assert net.v.level(net.members["n0"], T0 + 3_000) is L.ECONOMICALLY_STAKED
    # Checked on the 64-core claim, it earns the levels there.
    net.members["n0"].resources = _cores(64)
    effects = await net.round(T0 + 300_000)
    assert ("n0", L.ECONOMICALLY_STAKED) in levels(effects)


async def test_the_level_says_which_resources_it_covers() -> None:
    net = Net([f"n{i}" for i in range(6)])
    await net.round(T0)
    member = net.members["n0"]
    assert net.v.covers(member, T0 + 1_000) == ("cpu",)
    # A claim with nothing a workload can check (no rate) earns no level above self-reported.
    member.resources = [ResourceSpec(type=ResourceType.STORAGE_MEMORY, capacity=8, unit="GB")]
    assert net.v.covers(member, T0 + 1_000) == ()
    assert net.v.level(member, T0 + 1_000) is L.SELF_REPORTED


def test_group_holds_no_level_of_its_own() -> None:
    net = Net(["a", "b"])
    group = _group(net.v)
    group.members.update(net.members)
    assert not hasattr(net.members["a"], "level")
    assert group.level("a") is L.SELF_REPORTED
    assert group.level("nobody") is L.SELF_REPORTED
    assert [e for e in net.v.tick(net.members, T0) if isinstance(e, LevelChange)] == []


async def test_a_failed_check_is_not_outlived_by_the_panel_evidence(tmp_path: Path) -> None:
    # A node that failed its latest check of a resource must not sit at peer_verified for it, even
    # when the panel of the failed check said nothing (so the earlier quorum is still fresh).
    net = Net([f"n{i}" for i in range(6)])
    shell = Shell(tmp_path)
    shell.apply(await net.round(T0))
    assert net.v.level(net.members["n0"]) is L.BENCHMARKED
    net.works["n0"].prover = junk_prover
    effects = await net.round(T0 + 300_000, silent=True, settle_at=20_000)  # no votes: inconclusive
    shell.apply(effects)
    assert any(n == "n0" and not v.accepted for n, v in net.v.verdicts)
    assert net.v.nodes["n0"].evidence.quorum_ms is not None  # round 1's quorum, still within 24 h
    assert ("n0", L.SELF_REPORTED) in levels(effects)
    assert net.v.level(net.members["n0"]) is L.SELF_REPORTED
    assert net.v.level(net.members["n1"]) is L.BENCHMARKED
    shell.close()
    # The failure is evidence: a restart does not bring peer_verified back.
    v, group, shell = _restart(net, tmp_path, T0 + 301_000)
    group.members.update(net.members)
    assert v.level(net.members["n0"], T0 + 301_000) is L.SELF_REPORTED
    shell.close()
    # Passing that workload again restores the levels.
    net.works["n0"].prover = proofs.prove
    effects = await net.round(T0 + 600_000)
    assert ("n0", L.BENCHMARKED) in levels(effects)


async def _rounds_with_a_late_workload(rounds: int) -> tuple[Verifier, list[VerifierEffect]]:
    """Six nodes claiming CPU and memory; "s" never answers its CPU challenges (as sybils sharing one
    device are late), while its memory checks pass. No panel: only the coordinator's checks count."""
    cfg = VerifierConfig(
        site="s", group="g", coordinator="coord", segments=32, opens=4, target_ms=5, spread=0.0, panel=0
    )
    v = Verifier(cfg, Ledger(), secret=bytes(32))
    offer = [
        *_cores(1),
        ResourceSpec(
            type=ResourceType.STORAGE_MEMORY,
            capacity=1,
            unit="GB",
            details={proofs.RATE_KEYS["memory"]: 1_000_000},
        ),
    ]
    names = ["s", *(f"n{i}" for i in range(5))]
    members = {n: Member(n, b"", 0, "rpi4", f"fp-{n}", list(offer), joined_ms=T0) for n in names}
    works = {n: ProofWork(n) for n in names}
    v.opening_beacon(members.values())
    need = v.required_stake(members["s"], T0).required_micro * 2
    effects = v.deposit("s", need, "dep", T0) + v.stake(members["s"], need, "stake", T0)
    rng = random.Random(4)
    for r in range(rounds):
        t = T0 + r * 300_000
        pending = v.observe_claims(list(members.values()), t) + v.start_round(list(members.values()), t, rng)
        for _ in range(20):
            effects += pending
            for e in list(pending):
                if not (isinstance(e, Publish) and isinstance(e.message, NodeCommand)):
                    continue
                cmd = e.message
                if cmd.verb != "challenge" or (cmd.node, cmd.args["challenge"]["workload"]) == ("s", "cpu"):
                    continue
                proof = await works[cmd.node].challenge(cmd.args, lambda t=t: t)
                assert isinstance(proof, BenchmarkProof)
                opened = v.on_proof(members[cmd.node], proof, t + 2)
                (open_cmd,) = [o.message for o in opened if isinstance(o, Publish)]
                assert isinstance(open_cmd, NodeCommand)
                opening = works[cmd.node].open(open_cmd.args)
                assert isinstance(opening, ProofOpening)
                effects += run_checks(v, v.on_opening(opening, t + 3))
            t += 20_000  # every answered check is complete; an unanswered one is past its time
            pending = v.tick(members, t, rng)
            if not v.checks and not pending:
                break
        effects += pending
    return v, effects


async def test_a_node_late_on_one_resource_every_round_is_counted_not_contained_forever() -> None:
    # Containment re-checks a first late result before it counts. A pass of *another* workload in
    # between used to clear it, so a node late on CPU every round (its memory passing) never counted.
    v, effects = await _rounds_with_a_late_workload(3)
    assert v.sampler.record_of("s").failures >= 1
    slashes = [e for e in ledger_entries(effects) if e.account == "s" and e.kind == "slash"]
    assert slashes, "the second late CPU check in a row counts (a performance slash)"
    assert v.nodes["s"].evidence.failed.keys() == {"cpu"}
    assert all(v.sampler.record_of(n).failures == 0 for n in ("n0", "n1", "n2", "n3", "n4"))


async def test_a_pending_recheck_survives_a_restart(tmp_path: Path) -> None:
    """Fails on the old code: the re-check pending after a first late result lived only in memory, so
    after a coordinator restart the next late result was "first" again (a free pass a restart)."""
    net = Net([f"n{i}" for i in range(6)])
    shell = Shell(tmp_path)
    _, effects = fund_and_stake(net, "n0", T0)
    shell.apply(effects)
    shell.apply(await net.round(T0, delay={"n0": 60_000}, settle_at=70_000))  # n0 late: contained
    assert net.v.contained == 1 and net.v.nodes["n0"].contained == {"cpu"}
    assert shell.evidence.load_containment() == [("n0", ["cpu"])]
    staked = net.v.ledger.stake("n0")
    shell.close()

    # The coordinator restarts; the evidence store (real SQLite) is all the new run has.
    shell = Shell(tmp_path)
    v = Verifier(net.v.config, Ledger(shell.ledger.load()), secret=random.Random(2).randbytes(32))
    v.restore_evidence(shell.evidence.load(), T0 + 300_000)
    v.restore_sampling(shell.evidence.load_sampling())
    v.restore_containment(shell.evidence.load_containment(), T0 + 300_000)
    v.opening_beacon(net.members.values())
    net.v = v
    shell.apply(await net.round(T0 + 300_000, delay={"n0": 60_000}, settle_at=70_000))  # late again
    assert v.contained == 0  # this one counts
    assert v.sampler.record_of("n0").failures == 1
    assert v.ledger.stake("n0") < staked  # slashed for performance
    assert ("n0", ["cpu"]) in shell.evidence.load_containment()  # still awaiting a passing check

    # A passing check of the workload clears it, and the store with it.
    shell.apply(await net.round(T0 + 600_000, settle_at=70_000))
    assert not v.nodes["n0"].contained
    assert shell.evidence.load_containment() == []
    shell.close()


def test_the_containment_table_drops_what_is_not_a_workload(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path / "e.sqlite", max_rows=2)
    for node in ("a", "b", "c"):
        store.save_containment(node, ("cpu",))
    assert sorted(n for n, _ in store.load_containment()) == ["b", "c"]  # bounded
    store.save_containment("b", ())
    assert store.load_containment() == [("c", ["cpu"])]
    store.close()
    v = Verifier(VerifierConfig(site="s", group="g", coordinator="c"), Ledger(), secret=bytes(32))
    v.restore_containment([("x", ["cpu", "warp-drive", 7]), ("y", "cpu"), ("z", [])], T0)
    assert v.nodes["x"].contained == {"cpu"} and "y" not in v.nodes and "z" not in v.nodes
