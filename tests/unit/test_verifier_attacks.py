"""Attacks from inside the group on the verifier: duplicate votes, dodged fraud slashes, NaN and zero
commitments, sticky or copied fraud flags, and a coordinator that must be accountable."""

from __future__ import annotations

import math

import cbor2
import msgspec
import pytest
from nacl.signing import SigningKey
from pycose.keys import OKPKey
from pycose.keys.curves import Ed25519
from pycose.messages import Sign1Message

from prsm_edge.errors import Reason
from prsm_edge.protocol import fraud, peers, proofs
from prsm_edge.protocol import messages as m
from prsm_edge.protocol.envelope import Signer
from prsm_edge.protocol.group import Member, Publish, Rejection
from prsm_edge.protocol.ledger import Ledger, LedgerKind
from prsm_edge.protocol.messages import (
    MICRO,
    Beacon,
    NodeCommand,
    ProofOpening,
    SegmentOpening,
    VerificationLevel,
    VerificationVote,
)
from prsm_edge.protocol.reputation import Dimension
from prsm_edge.protocol.verifier import RecordSlashEvidence, Verifier, VerifierConfig, VerifierEffect
from tests.unit.test_group import Node, group
from tests.unit.test_verifier import (
    RATE,
    ROUND,
    T0,
    Net,
    cpu,
    fund_and_stake,
    junk_prover,
    ledger_entries,
)

L = VerificationLevel


# ---- item 3: one panelist, one vote ------------------------------------------------------------
async def test_duplicate_votes_cannot_settle_or_void_a_panel() -> None:
    net = Net([f"n{i}" for i in range(7)])
    await net.round(T0, silent=True, settle_at=1_000)  # the panel sat out: every check is still open
    cid, check = next((c, ch) for c, ch in net.v.checks.items() if ch.challenge.node == "n0")
    assert len(check.panel) == 5

    def vote(voter: str, accept: bool = True) -> VerificationVote:
        return VerificationVote(round=check.round, subject="n0", voter=voter, challenge_id=cid, accept=accept)

    first = check.panel[0]
    for _ in range(5):  # one panelist votes five times
        net.v.on_vote(vote(first))
    net.v.tick(net.members, T0 + 1_000)
    assert cid in net.v.checks, "five copies of one vote must not settle a panel of five"
    for voter in check.panel[1:]:
        net.v.on_vote(vote(voter))
    net.v.tick(net.members, T0 + 1_100)
    assert cid not in net.v.checks  # settled once every distinct panelist voted
    assert net.v.nodes["n0"].evidence.held(T0 + 1_100)[L.PEER_VERIFIED]
    for voter in check.panel:  # nobody honest was recorded as unresponsive
        rep = net.v.nodes[voter].reputation
        assert rep.value(Dimension.RESPONSIVENESS, T0 + 1_100) > rep.prior


async def test_an_equivocating_panelist_counts_for_neither_side() -> None:
    net = Net([f"n{i}" for i in range(7)])
    await net.round(T0, silent=True, settle_at=1_000)
    cid, check = next((c, ch) for c, ch in net.v.checks.items() if ch.challenge.node == "n0")
    liar = check.panel[0]
    for accept in (True, False, False):
        net.v.on_vote(
            VerificationVote(round=check.round, subject="n0", voter=liar, challenge_id=cid, accept=accept)
        )
    for voter in check.panel[1:]:
        net.v.on_vote(
            VerificationVote(round=check.round, subject="n0", voter=voter, challenge_id=cid, accept=True)
        )
    net.v.tick(net.members, T0 + 1_100)
    honesty = net.v.nodes[liar].reputation.value(Dimension.VOTE_HONESTY, T0 + 1_100)
    assert honesty < net.v.nodes[check.panel[1]].reputation.value(Dimension.VOTE_HONESTY, T0 + 1_100)


# ---- item 4: any failure after a commitment is fraud -------------------------------------------
def _bad_path(node: str, opening: ProofOpening) -> ProofOpening:
    first = opening.openings[0]
    broken = SegmentOpening(index=first.index, result=first.result, path=[bytes(32)] * len(first.path))
    return msgspec.structs.replace(opening, openings=[broken, *opening.openings[1:]])


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda node, opening: None if node == "cheat" else opening, "withheld"),
        (lambda node, opening: _bad_path(node, opening) if node == "cheat" else opening, "bad_path"),
    ],
)
async def test_failures_after_a_commitment_are_slashed_as_fraud(tamper: object, reason: str) -> None:
    net = Net([f"n{i}" for i in range(6)])
    net.add("cheat", "fp-cheat")
    staked, _ = fund_and_stake(net, "cheat", T0 - 1)
    effects = await net.round(T0, tamper=tamper, settle_at=1_000)  # type: ignore[arg-type]
    effects += net.v.tick(net.members, T0 + 60_000)  # the withheld opening's time runs out
    slashes = [e for e in ledger_entries(effects) if e.kind == LedgerKind.SLASH]
    assert [e.account for e in slashes] == ["cheat"]
    assert slashes[0].key.startswith("slash:fraud:cheat:"), reason
    assert slashes[0].amount_micro == -(-staked * 50 // 100)


async def test_lateness_stays_a_performance_failure_and_is_checked_twice() -> None:
    net = Net([f"n{i}" for i in range(6)])
    net.add("slow", "fp-slow")
    fund_and_stake(net, "slow", T0 - 1)
    effects = await net.round(T0, delay={"slow": 10_000})
    assert not [e for e in ledger_entries(effects) if e.kind == LedgerKind.SLASH]  # re-checked first
    effects = await net.round(T0 + ROUND, delay={"slow": 10_000})
    (slash,) = [e for e in ledger_entries(effects) if e.kind == LedgerKind.SLASH]
    assert slash.key.startswith("slash:performance:slow:")
    # A late result followed by a pass is forgiven: containment is per run of failures.
    net.add("busy", "fp-busy")
    fund_and_stake(net, "busy", T0 + 2 * ROUND - 1)
    effects = await net.round(T0 + 2 * ROUND, delay={"busy": 10_000})
    effects += await net.round(T0 + 3 * ROUND)
    assert not [e for e in ledger_entries(effects) if e.kind == LedgerKind.SLASH and e.account == "busy"]
    assert net.v.level(net.members["busy"], T0 + 3 * ROUND + 1_000) is L.ECONOMICALLY_STAKED


# ---- item 6: NaN, infinity and zero ------------------------------------------------------------
@pytest.mark.parametrize("value", [math.nan, math.inf, -0.5, 1.5])
def test_a_birth_with_an_unusable_uptime_commitment_is_refused(value: float) -> None:
    g, n = group(), Node(3)
    birth = m.NodeBirth(
        node=n.id,
        bdseq=1,
        public_key=n.signer.public_key,
        device_class="generic",
        software="test",
        hw_fingerprint="fp",
        resources=[],
        uptime_commitment=value,
    )
    effects = g.receive(n.birth(T0)[0], n.signer.seal(birth, T0), T0)
    assert [e.reason for e in effects if isinstance(e, Rejection)] == [Reason.IMPLAUSIBLE]
    assert n.id not in g.members


def test_nan_heartbeats_do_not_reach_the_summary() -> None:
    g, n = group(), Node(4)
    g.receive(*n.birth(T0), T0)
    topic, _ = n.heartbeat(T0 + 1)
    bad = m.Heartbeat(node=n.id, cpu_util=math.nan, mem_util=0.5)
    effects = g.receive(topic, n.signer.seal(bad, T0 + 1), T0 + 1)
    assert [e.reason for e in effects if isinstance(e, Rejection)] == [Reason.IMPLAUSIBLE]
    assert math.isfinite(g.summary().utilization)


def test_a_stored_nan_commitment_cannot_crash_the_tick_and_zero_gets_no_discount() -> None:
    cfg = VerifierConfig(site="s", group="g", coordinator="coord", availability_window_ms=60_000)
    v = Verifier(cfg, Ledger(), secret=bytes(32))
    poisoned = Member("nan", b"", 0, "rpi4", "fp-1", cpu(), joined_ms=T0, uptime_commitment=math.nan)
    zero = Member("zero", b"", 0, "rpi4", "fp-2", cpu(), joined_ms=T0, uptime_commitment=0.0)
    for member in (poisoned, zero):
        v.deposit(member.node, 100 * MICRO, f"dep-{member.node}", T0)
        v.stake(member, 50 * MICRO, f"stake-{member.node}", T0)
    members = {"nan": poisoned, "zero": zero}
    effects: list[VerifierEffect] = []
    for second in range(0, 61):
        poisoned.online = zero.online = second < 18  # 30 % uptime
        effects += v.tick(members, T0 + second * 1000)  # never raises
    slashed = {e.account for e in ledger_entries(effects) if e.kind == LedgerKind.SLASH}
    # A commitment of 0 (or not a number) counts as the published minimum, 50 %: 30 % falls short.
    assert slashed == {"nan", "zero"}


# ---- item 7: fraud flags that decay, and cannot be pinned on a victim --------------------------
def test_fraud_flags_expire() -> None:
    net = Net([f"n{i}" for i in range(6)])
    base = net.v.required_stake(net.members["n2"], T0).required_micro
    net.members["n2"].hw_fingerprint = "fp-1"  # copies n1's
    net.v.observe_claims(list(net.members.values()), T0)
    assert net.v.required_stake(net.members["n2"], T0).required_micro > base
    net.members["n2"].hw_fingerprint = "fp-2"  # fixed
    later = T0 + net.v.config.flag_ttl_ms + 1
    net.v.observe_claims(list(net.members.values()), later)
    assert net.v.open_flags("n2", later) == 0
    assert net.v.required_stake(net.members["n2"], later).required_micro <= base


def test_detectors_look_at_online_members_only() -> None:
    net = Net([f"n{i}" for i in range(6)])
    net.members["n5"].hw_fingerprint = "fp-0"
    net.members["n5"].online = False  # a long-gone member that once used the same fingerprint
    net.v.observe_claims(list(net.members.values()), T0)
    assert net.v.open_flags("n0", T0) == 0 and net.v.open_flags("n5", T0) == 0


async def test_a_verified_upgrade_clears_the_jump_flag() -> None:
    net = Net([f"n{i}" for i in range(6)])
    base = net.v.required_stake(net.members["n0"], T0).required_micro
    for i, rate in enumerate((RATE, RATE * 1.01, RATE * 0.99)):
        net.members["n0"].resources = cpu(rate)
        net.v.observe_claims(list(net.members.values()), T0 + i)
    net.members["n0"].resources = cpu(RATE * 3)  # new hardware: three times the speed
    net.v.observe_claims(list(net.members.values()), T0 + 10)
    assert fraud.FlagKind.JUMP in net.v.nodes["n0"].flags
    # Checked on the new claim, and it holds.
    await net.round(T0 + ROUND)
    assert fraud.FlagKind.JUMP not in net.v.nodes["n0"].flags
    assert net.v.open_flags("n0", T0 + ROUND + 1_000) == 0
    net.v.observe_claims(list(net.members.values()), T0 + 2 * ROUND)
    assert net.v.open_flags("n0", T0 + 2 * ROUND) == 0  # and the detector does not raise it again
    assert net.v.required_stake(net.members["n0"], T0 + 2 * ROUND).required_micro <= base


async def test_a_copycat_cannot_pin_its_victims_risk() -> None:
    net = Net([f"n{i}" for i in range(6)])
    await net.round(T0)  # the victim n1 is verified on its own hardware
    victim_stake = net.v.required_stake(net.members["n1"], T0 + 2_000).required_micro
    net.add("copycat", "fp-1")  # births later with the victim's public fingerprint
    for r in range(3):
        net.v.observe_claims(list(net.members.values()), T0 + 2_000 + r)
    assert net.v.open_flags("n1", T0 + 2_010) == 0
    assert net.v.required_stake(net.members["n1"], T0 + 2_010).required_micro == victim_stake
    assert net.v.open_flags("copycat", T0 + 2_010) == 1
    # Even a copycat that got there first does not outrank a verified victim.
    early = Net(["a", "b", "c", "d", "e"])
    early.members["a"].hw_fingerprint = "shared"
    early.v.observe_claims(list(early.members.values()), T0)
    early.members["b"].hw_fingerprint = "shared"
    early.works["a"].prover = junk_prover  # "a" cannot prove anything
    await early.round(T0 + 1_000)
    early.v.observe_claims(list(early.members.values()), T0 + 5_000)
    assert early.v.open_flags("b", T0 + 5_000) == 0
    assert early.v.open_flags("a", T0 + 5_000) == 1


# ---- item 8: an accountable coordinator --------------------------------------------------------
async def test_panels_follow_from_published_inputs_not_private_scores() -> None:
    net = Net([f"n{i}" for i in range(9)])
    for _ in range(20):  # n3 has a poor (private) vote-honesty record
        net.v._node("n3", T0).reputation.observe_vote(False, T0)
    assert net.v.beacon is not None and isinstance(net.v.beacon.message, Beacon)
    previous = net.v.beacon.message
    effects = net.v.start_round(list(net.members.values()), T0, net.rng)
    (beacon,) = [e.message for e in effects if isinstance(e, Publish) and isinstance(e.message, Beacon)]
    cmds = [e.message for e in effects if isinstance(e, Publish) and isinstance(e.message, NodeCommand)]
    seated = {c.node for c in cmds if c.verb == "verify"}
    recomputed = peers.round_panels(previous, beacon)
    assert {v for panel in recomputed.values() for v in panel} == seated
    assert "n3" in previous.eligible_next
    # A beacon that does not follow its commitment is caught.
    forged = msgspec.structs.replace(beacon, reveal=bytes(32))
    with pytest.raises(peers.BeaconError):
        peers.round_panels(previous, forged)


async def test_slash_evidence_carries_the_nodes_own_signed_proof_and_opening() -> None:
    key = SigningKey(bytes(range(7, 39)))
    signer = Signer(key)
    cheat = signer.node_id
    net = Net([f"n{i}" for i in range(6)], provers={cheat: junk_prover}, signers={cheat: signer})
    net.add(cheat, "fp-cheat")
    fund_and_stake(net, cheat, T0 - 1)
    effects = await net.round(T0)
    (slash,) = [e for e in ledger_entries(effects) if e.kind == LedgerKind.SLASH]
    (record,) = [e for e in effects if isinstance(e, RecordSlashEvidence)]
    assert record.digest == slash.evidence  # the ledger entry cites exactly this evidence
    assert fraud.evidence_digest(record.evidence) == slash.evidence
    ev = record.evidence
    cose_key = OKPKey(crv=Ed25519, x=bytes(key.verify_key))
    opened: dict[str, dict[str, object]] = {}
    for name in ("proof_cose", "opening_cose"):
        protected, unprotected, payload, signature = cbor2.loads(ev[name]).value  # type: ignore[arg-type]
        msg = Sign1Message.from_cose_obj([protected, dict(unprotected), payload, signature], True)
        msg.key = cose_key
        assert msg.verify_signature(), "a stock COSE library verifies the node's own signature"
        opened[name] = cbor2.loads(msg.payload)
    assert opened["proof_cose"]["root"] == ev["root"] and opened["proof_cose"]["node"] == cheat
    # Anyone re-runs an opened segment and sees the committed result is wrong.
    challenge = msgspec.convert(ev["challenge"], m.BenchmarkChallenge)
    segment = opened["opening_cose"]["openings"][0]
    assert isinstance(segment, dict)
    expected = proofs.run_segment(
        challenge.workload, challenge.nonce, segment["index"], challenge.segment_size
    )
    assert segment["result"] != expected
