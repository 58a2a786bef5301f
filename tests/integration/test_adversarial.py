"""A joined member with its own credentials attacks a live group on a real Mosquitto; the group holds.

One scenario runs once for the module (it takes a minute of verification rounds); each test then
checks one thing the attacker tried. The verifier's defences (one vote per panelist, a withheld opening
slashed as fraud, NaN refused, copied fingerprints flagging the copy) are the ``trust`` engineer's;
``tests/integration/test_hostile_member.py`` is their own test of them, this one adds the broker, LAN and
membership attacks around them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from nacl.signing import SigningKey

from prsm_edge.io.rival import verify_rival
from prsm_edge.localgroup import host_group
from prsm_edge.node.agent import Agent
from prsm_edge.node.prover import calibrate_cpu_rate
from prsm_edge.protocol import topics
from prsm_edge.protocol.envelope import node_id_for
from prsm_edge.protocol.formation import (
    BadAdvert,
    GroupAdvert,
    LeaderPolicy,
    should_yield,
    sign_advert,
    verify_advert,
)
from prsm_edge.protocol.messages import (
    MICRO,
    CoordState,
    Heartbeat,
    Message,
    NodeBirth,
    NodeCommand,
    VerificationLevel,
    VerificationVote,
)
from prsm_edge.protocol.stake import StakePolicy
from tests.conftest import require_mosquitto
from tests.integration.groupkit import GROUP, SITE, agent_options, eventually, fast_rounds, running

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

L = VerificationLevel
BASE = f"{topics.ROOT}/{SITE}/{GROUP}"
NOT_AUTHORIZED = 0x87


class Mallory(Agent):
    """A member that votes five times per seat and withholds the openings of its own proofs."""

    def _send(self, kind: topics.Kind, msg: Message, *, retain: bool = False) -> None:
        copies = 5 if isinstance(msg, VerificationVote) else 1
        for _ in range(copies):
            super()._send(kind, msg, retain=retain)


@dataclass
class Seen:
    """What the scenario observed, for the checks below."""

    facts: dict[str, Any] = field(default_factory=dict)


def _ms() -> int:
    return time.time_ns() // 1_000_000


async def _retained(host: Any, topic_filter: str) -> list[str]:
    """The retained topics the broker holds under ``topic_filter`` (read by a viewer)."""
    marker = f"{BASE}/summary"
    found: list[str] = []
    async with aiomqtt.Client(
        host.broker.connect_host, host.broker.port, identifier="adv-viewer", username="viewer",
        password="viewer-pw", protocol=aiomqtt.ProtocolVersion.V5,
    ) as viewer:  # fmt: skip
        await viewer.subscribe(topic_filter, qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3):
                async for message in viewer.messages:
                    if message.retain and str(message.topic) != marker:
                        found.append(str(message.topic))
    return found


async def _scenario(tmp: Path) -> Seen:
    seen = Seen()
    f = seen.facts
    rate = calibrate_cpu_rate(0.1)
    async with host_group(
        tmp / "host", site=SITE, group=GROUP, heartbeat_timeout_s=10, verification=fast_rounds()
    ) as host:
        coord = host.coordinator
        g = coord.group
        assert host.dynsec is not None
        from prsm_edge.io.dynsec import ROLE_VIEWER

        await host.dynsec.add_client("viewer", "viewer-pw", ROLE_VIEWER)
        url = host.broker.url
        honest = [Agent(agent_options(url, tmp / f"h{i}", cpu_rate=rate)) for i in range(4)]
        victim_fp = honest[0].options.hw_fingerprint
        mallory = Mallory(agent_options(url, tmp / "mallory", cpu_rate=rate, hw_fingerprint=victim_fp))
        mallory.work.open = lambda args: None  # type: ignore[method-assign]  # withhold every opening
        # Watch what the verifier keeps of each vote: one per panelist, or every copy?
        duplicates: list[str] = []
        on_vote = coord.verifier.on_vote

        def counting(vote: VerificationVote) -> Any:
            out = on_vote(vote)
            check = coord.verifier.checks.get(vote.challenge_id)
            kept = list(check.votes.values()) if check is not None else []
            if sum(v.voter == vote.voter for v in kept) > 1:
                duplicates.append(vote.challenge_id)
            return out

        coord.verifier.on_vote = counting  # type: ignore[method-assign]
        coord_task = asyncio.create_task(coord.run())
        async with running(*honest, mallory):
            await eventually(lambda: g.online_count == 5, timeout=30, what="all joined")
            for a in (*honest, mallory):
                coord.deposit(a.node_id, 100 * MICRO, key=f"deposit:{a.node_id}")
            assert (await mallory.call("stake", {"amount_micro": 60 * MICRO})).ok
            with contextlib.suppress(TimeoutError):
                await eventually(
                    lambda: all(g.level(a.node_id) is L.BENCHMARKED for a in honest),
                    timeout=60,
                    what="honest nodes benchmarked",
                )
            f["honest_before"] = {a.node_id: g.level(a.node_id) for a in honest}

            # --- with her own login: junk, forgery, eavesdropping, fake coordinator messages
            user, password = mallory._credentials()
            assert user == mallory.node_id and password
            victim = honest[0].node_id
            async with aiomqtt.Client(
                host.broker.connect_host, host.broker.port, identifier=f"{user}-raw", username=user,
                password=password, protocol=aiomqtt.ProtocolVersion.V5,
            ) as raw:  # fmt: skip
                for i in range(1000):
                    await raw.publish(f"{BASE}/node/{user}/junk/{i}/a/b", b"x" * 1024, qos=1, retain=True)
                forged_birth = mallory.signer.seal(
                    NodeBirth(node=victim, bdseq=99, public_key=mallory.identity.public_key,
                              device_class="x", software="x", hw_fingerprint="", resources=[]),
                    _ms(),
                )  # fmt: skip
                await raw.publish(f"{BASE}/node/{victim}/birth", forged_birth, qos=1, retain=True)
                fake_state = CoordState(
                    site=SITE, group=GROUP, status="online", epoch=99, coordinator=mallory.node_id,
                    public_key=mallory.identity.public_key,
                )  # fmt: skip
                await raw.publish(
                    topics.coord_state(SITE, GROUP),
                    mallory.signer.seal(fake_state, _ms()),
                    qos=1,
                    retain=True,
                )
                redirect = NodeCommand(verb="redirect", node=victim, args={"reason": "go"})
                await raw.publish(
                    topics.node_cmd(SITE, GROUP, victim, "redirect"),
                    mallory.signer.seal(redirect, _ms()),
                    qos=1,
                )
                (code,) = await raw.subscribe(f"{BASE}/node/{victim}/cmd/#", qos=1)
                f["victim_cmd_subscription"] = code if isinstance(code, int) else code.value
            held = await _retained(host, f"{BASE}/node/#")
            f["junk_stored"] = [t for t in held if "/junk/" in t]
            f["victim_birth_key"] = g.members[victim].public_key == honest[0].identity.public_key
            f["victim_redirected"] = honest[0].redirect is not None

            # --- a stranger's flood of retained join requests
            async with aiomqtt.Client(host.broker.connect_host, host.broker.port, identifier="flood") as anon:
                for i in range(500):
                    await anon.publish(f"{BASE}/api/join/req/flood{i}", b"x" * 256, qos=1, retain=True)
            for _ in range(40):
                f["join_requests_stored"] = await _retained(host, f"{BASE}/api/join/req/+")
                if not f["join_requests_stored"]:
                    break

            # --- NaN in a heartbeat and in a birth, signed by her own key
            mallory.born.clear()  # her own heartbeats stop, so the poisoned one is the last word
            nan_birth = NodeBirth(
                node=mallory.node_id, bdseq=mallory.bdseq, public_key=mallory.identity.public_key,
                device_class="generic", software="x", hw_fingerprint=victim_fp, resources=mallory.resources,
                uptime_commitment=math.nan,
            )  # fmt: skip
            await mallory.session.publish(
                topics.node(topics.Kind.NODE_BIRTH, SITE, GROUP, mallory.node_id),
                mallory.signer.seal(nan_birth, _ms()),
                qos=1,
                retain=True,
            )
            nan_hb = Heartbeat(node=mallory.node_id, cpu_util=math.nan, mem_util=math.inf)
            await mallory.session.publish(
                topics.node(topics.Kind.NODE_TELEMETRY, SITE, GROUP, mallory.node_id),
                mallory.signer.seal(nan_hb, _ms()),
            )
            await asyncio.sleep(1)  # (a birth resets the telemetry: the heartbeat goes second)
            f["summary_utilization"] = g.summary().utilization
            f["mallory_commitment"] = g.members[mallory.node_id].uptime_commitment
            mallory.born.set()

            # --- a fake advert and a rival coordinator on her own broker
            key = SigningKey.generate()
            stranger = GroupAdvert(
                site=SITE, group=GROUP, coordinator=node_id_for(bytes(key.verify_key)), epoch=1, version=1,
                members=199, max_members=10**6, port=1, hosts=("127.0.0.1",),
            )  # fmt: skip
            try:
                verify_advert(stranger, time.time())
                f["unsigned_advert_accepted"] = True
            except BadAdvert:
                f["unsigned_advert_accepted"] = False
            async with host_group(tmp / "rival", site=SITE, group=GROUP, verify=False) as rival_host:
                rival = rival_host.coordinator
                rival_task = asyncio.create_task(rival.run())
                await asyncio.wait_for(rival.ready.wait(), 15)
                await asyncio.sleep(1)
                claim = sign_advert(
                    dataclasses.replace(
                        stranger, coordinator=rival.identity.node_id, epoch=rival.epoch,
                        port=rival_host.broker.port,
                    ),
                    rival.identity.signing_key,
                    int(time.time()),
                )  # fmt: skip
                verify_advert(claim, time.time())  # a well-signed advert: the LAN cannot tell
                checked = await verify_rival(claim)
                rival_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await rival_task
            mine = GroupAdvert(
                site=SITE, group=GROUP, coordinator=coord.identity.node_id, epoch=coord.epoch, version=1,
                members=len(g.members), port=host.broker.port,
            )  # fmt: skip
            f["rival_allowed_by_default"] = LeaderPolicy().allows(claim)
            f["rival_checked_members"] = None if checked is None else checked.members
            f["yield_to_checked_rival"] = checked is not None and should_yield(mine, [checked])

            # --- more rounds: mallory is challenged, votes five times a seat, withholds her openings
            with contextlib.suppress(TimeoutError):
                await eventually(
                    lambda: any(
                        e.kind == "slash" and e.account == mallory.node_id for e in coord.ledger.entries
                    ),
                    timeout=60,
                    what="mallory slashed",
                )
            f["mallory_slashes"] = [
                e.memo for e in coord.ledger.entries if e.kind == "slash" and e.account == mallory.node_id
            ]
            f["mallory_voted"] = mallory.work.voted
            f["duplicate_votes_kept"] = len(duplicates)
            honest_ids = {a.node_id for a in honest}
            f["honest_after"] = {a.node_id: g.level(a.node_id) for a in honest}
            f["honest_rejected_verdicts"] = [
                (node, v.reason)
                for node, v in coord.verifier.verdicts
                if node in honest_ids and not v.accepted
            ]
            now = _ms()
            f["risk"] = {
                a.node_id: coord.verifier.required_stake(g.members[a.node_id], now).risk_factor
                for a in honest
            }
            f["victim"] = victim
            f["flags"] = {a.node_id: coord.verifier.open_flags(a.node_id, now) for a in (*honest, mallory)}

            # --- and the coordinator still serves: a newcomer joins and comes online
            late = Agent(agent_options(url, tmp / "late", cpu_rate=rate))
            async with running(late):
                with contextlib.suppress(TimeoutError):
                    await eventually(
                        lambda: late.node_id in g.members and g.members[late.node_id].online, timeout=30
                    )
                f["late_online"] = late.node_id in g.members and g.members[late.node_id].online
            f["coordinator_alive"] = not coord_task.done()
        coord_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await coord_task
    return seen


@pytest.fixture(scope="module")
def attack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    require_mosquitto()
    seen = asyncio.run(_scenario(tmp_path_factory.mktemp("adversarial")))
    yield seen.facts


GOOD = (L.PEER_VERIFIED, L.BENCHMARKED, L.ECONOMICALLY_STAKED, L.HARDWARE_ATTESTED)


def test_honest_members_reach_and_keep_their_levels(attack: dict[str, Any]) -> None:
    assert all(level in GOOD for level in attack["honest_before"].values()), attack["honest_before"]
    assert all(level in GOOD for level in attack["honest_after"].values()), attack["honest_after"]


def test_the_coordinator_keeps_serving(attack: dict[str, Any]) -> None:
    assert attack["coordinator_alive"] and attack["late_online"]


def test_retained_junk_at_depth_is_not_stored(attack: dict[str, Any]) -> None:
    assert attack["junk_stored"] == []


def test_anonymous_retained_join_requests_are_not_kept(attack: dict[str, Any]) -> None:
    assert attack["join_requests_stored"] == []


def test_a_member_cannot_forge_another_member_nor_the_coordinator(attack: dict[str, Any]) -> None:
    assert attack["victim_birth_key"], "the victim's record was replaced by a forged birth"
    assert not attack["victim_redirected"], "a member redirected another member"
    assert attack["victim_cmd_subscription"] == NOT_AUTHORIZED


def test_a_fake_advert_and_an_unverified_rival_move_nobody(attack: dict[str, Any]) -> None:
    assert not attack["unsigned_advert_accepted"]
    assert not attack["rival_allowed_by_default"]  # pinned policy: a stranger's key may not lead
    assert attack["rival_checked_members"] == 0  # its broker's signed roster shows none of the 199
    assert not attack["yield_to_checked_rival"]


def test_nan_heartbeat_does_not_poison_the_summary(attack: dict[str, Any]) -> None:
    assert math.isfinite(attack["summary_utilization"])


def test_nan_birth_is_not_stored(attack: dict[str, Any]) -> None:
    assert math.isfinite(attack["mallory_commitment"])


def test_duplicate_votes_do_not_fail_honest_subjects(attack: dict[str, Any]) -> None:
    assert attack["mallory_voted"] > 0  # she did sit on panels
    assert attack["honest_rejected_verdicts"] == []


def test_duplicate_votes_are_counted_once(attack: dict[str, Any]) -> None:
    assert attack["duplicate_votes_kept"] == 0


def test_a_withheld_opening_is_slashed_as_fraud(attack: dict[str, Any]) -> None:
    assert any(memo.startswith("fraud") for memo in attack["mallory_slashes"]), attack["mallory_slashes"]


def test_a_copied_fingerprint_does_not_raise_the_victims_risk(attack: dict[str, Any]) -> None:
    risk, victim = attack["risk"], attack["victim"]
    others = [r for node, r in risk.items() if node != victim]
    # Risk also follows each node's reputation, which differs by a few hundredths between honest nodes;
    # a fraud flag would add a whole flag_risk (0.5) on top.
    assert risk[victim] < min(others) + StakePolicy().flag_risk / 2, risk
    assert attack["flags"][victim] == 0
    assert max(attack["flags"].values()) >= 1  # the copy is flagged
