"""Who may be in a group: join policies, tokens, rate limits, eviction, seats, and the replay guards."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from prsm_edge.coordinator.membership import Admissions, MembershipStore
from prsm_edge.errors import LocalError, Reason, RejectedMessage
from prsm_edge.io.replaystore import PersistentReplayGuard
from prsm_edge.protocol import messages as m
from prsm_edge.protocol import topics as t
from prsm_edge.protocol.envelope import Signer
from prsm_edge.protocol.group import GrantJoin, Group, GroupConfig, Rejection
from prsm_edge.protocol.membership import (
    JoinPolicy,
    TokenBucket,
    evictable,
    parse_token,
    token_proof,
    verify_token_proof,
)
from prsm_edge.protocol.replay import CommandGuard

SITE, GROUP = "lab", "g1"
T0 = 1_700_000_000_000
MIN = 60_000


def _birth(signer: Signer, now: int) -> tuple[str, bytes]:
    cpu = [m.ResourceSpec(type=m.ResourceType.COMPUTE_CPU, capacity=1, unit="cores")]
    msg = m.NodeBirth(
        node=signer.node_id, bdseq=1, public_key=signer.public_key, device_class="generic", software="t",
        hw_fingerprint="", resources=cpu,
    )  # fmt: skip
    return t.node(t.Kind.NODE_BIRTH, SITE, GROUP, signer.node_id), signer.seal(msg, now)


def _group(max_members: int = 200, dead_after_ms: int = 10 * MIN) -> Group:
    coord = Signer(SigningKey(b"\xcc" * 32))
    return Group(
        GroupConfig(
            site=SITE, group=GROUP, coordinator=coord.node_id, public_key=coord.public_key, epoch=1,
            max_members=max_members, heartbeat_timeout_ms=30_000, dead_after_ms=dead_after_ms,
        )
    )  # fmt: skip


def test_one_client_minting_200_keys_does_not_fill_the_group_for_good() -> None:
    """Issue 9 item 2: dead members counted toward the 200 forever. Now a seat is held only by members
    online or recently seen; the minted keys fall silent and honest nodes find room again."""
    g = _group()
    minted = [Signer(SigningKey.generate()) for _ in range(200)]
    for s in minted:
        g.receive(*_birth(s, T0), T0)
    assert g.live_count(T0) == 200
    honest = Signer(SigningKey.generate())
    refused = g.receive(*_birth(honest, T0 + 1), T0 + 1)
    assert any(isinstance(e, Rejection) and e.reason is Reason.GROUP_FULL for e in refused)
    later = T0 + 11 * MIN  # the attacker's keys never spoke again
    g.tick(later)
    assert g.live_count(later) == 0
    g.receive(*_birth(honest, later), later)
    assert honest.node_id in g.members and g.members[honest.node_id].online
    # and after the eviction period they are gone from the roster altogether
    week = T0 + 8 * 24 * 60 * MIN
    g.tick(week)
    seen = [(x.node, x.online, x.last_seen_ms) for x in g.members.values()]
    gone = evictable(seen, week, JoinPolicy().evict_after_ms)
    assert set(gone) == {s.node_id for s in minted} | {honest.node_id}
    for node in gone:
        assert g.remove(node)
    assert g.members == {} and len(g.roster().members) == 0


def test_a_join_policy_gate_refuses_births_of_unadmitted_nodes() -> None:
    g = _group()
    admitted: set[str] = set()
    g.admit = admitted.__contains__
    stranger = Signer(SigningKey.generate())
    effects = g.receive(*_birth(stranger, T0), T0)
    assert [e.reason for e in effects if isinstance(e, Rejection)] == [Reason.NOT_ADMITTED]
    assert stranger.node_id not in g.members
    admitted.add(stranger.node_id)
    g.receive(*_birth(stranger, T0 + 1000), T0 + 1000)
    assert stranger.node_id in g.members


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate_per_min=6, burst=3)
    assert [bucket.take(T0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(T0 + 5_000)
    assert bucket.take(T0 + 10_000)  # one every ten seconds


def test_a_token_proof_binds_the_node_and_the_request() -> None:
    token = parse_token(str(parse_token("abcdef0123456789." + "A" * 32)))
    proof = token_proof(token, "n1", "tx1")
    assert verify_token_proof(token.secret, "n1", "tx1", dict(proof))
    assert not verify_token_proof(token.secret, "n2", "tx1", dict(proof))  # stolen by another node
    assert not verify_token_proof(token.secret, "n1", "tx2", dict(proof))  # replayed in a new request
    assert not verify_token_proof(b"other" * 5, "n1", "tx1", dict(proof))
    for bad in ("", "nodot", "UPPER.AAAAAAAAAAAAAAAAAAAAAAAA", "abcdef01.short"):
        with pytest.raises(LocalError, match="group token create"):
            parse_token(bad)


def test_tokens_are_spent_and_expire(tmp_path: Path) -> None:
    store = MembershipStore(tmp_path / "membership.sqlite")
    token = store.create_token(T0, uses=1, ttl_s=60)
    assert not store.redeem("n1", "tx", {"token_id": token.token_id, "token_mac": "0" * 64}, T0)
    assert store.redeem("n1", "tx", dict(token_proof(token, "n1", "tx")), T0)
    assert not store.redeem("n2", "tx", dict(token_proof(token, "n2", "tx")), T0)  # used up
    late = store.create_token(T0, uses=5, ttl_s=60)
    assert not store.redeem("n3", "tx", dict(token_proof(late, "n3", "tx")), T0 + 61_000)
    assert (tmp_path / "membership.sqlite").stat().st_mode & 0o077 == 0


def _grant(node: str) -> GrantJoin:
    return GrantJoin(node, secrets.token_bytes(32), secrets.token_hex(4))


class Answers:
    def __init__(self) -> None:
        self.got: list[tuple[str, bool, str]] = []

    async def __call__(self, grant: GrantJoin, ok: bool, error: str) -> None:
        self.got.append((grant.node, ok, error.split(":")[0]))


async def _drain(adm: Admissions) -> None:
    for _ in range(100):
        await asyncio.sleep(0.01)
        if adm.queue.empty():
            await asyncio.sleep(0.05)
            return


async def test_open_joins_are_rate_limited_and_pending_joins_capped(tmp_path: Path) -> None:
    answers = Answers()
    policy = JoinPolicy(rate_per_min=1, burst=3, max_pending=2)
    adm = Admissions(
        policy, MembershipStore(tmp_path / "m.sqlite"), None, answers, known=lambda _: False, clock=lambda: T0
    )
    refusals = [adm.submit(_grant(f"n{i}")) for i in range(5)]  # no worker yet: nothing is served
    for r in refusals:
        if r is not None:
            await r
    # 3 fit the burst; of those, 2 fit the queue; the rest are refused at once
    assert sorted(e for _, _, e in answers.got) == ["busy", "rate_limited", "rate_limited"]
    task = asyncio.create_task(adm.run())
    await _drain(adm)
    task.cancel()
    assert [(n, ok) for n, ok, _ in answers.got if ok] == [("n0", True), ("n1", True)]


async def test_token_and_approval_policies(tmp_path: Path) -> None:
    store = MembershipStore(tmp_path / "m.sqlite")
    answers = Answers()
    adm = Admissions(JoinPolicy(name="token"), store, None, answers, known=lambda n: n == "old")
    task = asyncio.create_task(adm.run())
    token = store.create_token(int(__import__("time").time() * 1000), uses=1)
    good = GrantJoin("n1", b"k" * 32, "tx1", dict(token_proof(token, "n1", "tx1")))
    for grant in (_grant("n0"), good, _grant("old")):
        adm.submit(grant)
    await _drain(adm)
    assert answers.got == [("n0", False, "token_required"), ("n1", True, ""), ("old", True, "")]
    assert adm.admitted("n1") and not adm.admitted("n0")
    task.cancel()

    answers.got.clear()
    adm = Admissions(JoinPolicy(name="approval"), store, None, answers, known=lambda _: False)
    task = asyncio.create_task(adm.run())
    adm.submit(_grant("n5"))
    await _drain(adm)
    assert answers.got == [("n5", False, "pending_approval")]
    assert [p.node for p in store.pending()] == ["n5"]
    assert store.approve("n5") and not store.approve("nobody")
    for _ in range(40):
        await asyncio.sleep(0.1)
        if len(answers.got) == 2:
            break
    assert answers.got[1] == ("n5", True, "")
    assert store.pending() == []
    task.cancel()


def test_the_agent_side_command_guard_accepts_each_command_once_and_fresh() -> None:
    guard = CommandGuard(window_ms=120_000, max_entries=8)
    guard.check("c", 5, T0, T0)
    with pytest.raises(RejectedMessage, match="replay"):
        guard.check("c", 5, T0, T0 + 1)
    guard.check("c", 4, T0, T0 + 2)  # out of order, but new: accepted
    with pytest.raises(RejectedMessage, match="stale"):
        guard.check("c", 99, T0 - 121_000, T0)
    for seq in range(10, 30):  # overflow: the forgotten ones raise the floor, so none reopens
        guard.check("c", seq, T0, T0 + 3)
    assert len(guard) <= 8
    for old in (4, 5, 10, 15):
        with pytest.raises(RejectedMessage, match="replay"):
            guard.check("c", old, T0, T0 + 4)


def test_the_coordinators_replay_guard_survives_a_restart(tmp_path: Path) -> None:
    """Issue 9 item 9: the guard lived in memory, so after a restart anything signed in the last 120 s
    could be replayed once. Now it is written through to SQLite and read back."""
    path = tmp_path / "replay.sqlite"
    guard = PersistentReplayGuard(path, T0)
    guard.check("n1", 7, T0, T0)
    guard.close()
    again = PersistentReplayGuard(path, T0 + 1000)
    with pytest.raises(RejectedMessage, match="replay"):
        again.check("n1", 7, T0, T0 + 1000)
    assert again.check("n1", 8, T0 + 500, T0 + 1000) == 0
    again.close()
    # rows older than the window are pruned on start (their messages fail the time check anyway)
    late = PersistentReplayGuard(path, T0 + 10 * MIN)
    assert late.entry("n1") is None
    late.close()
