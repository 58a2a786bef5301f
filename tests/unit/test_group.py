"""The coordinator core, driven with signed bytes and time only (no broker)."""

from __future__ import annotations

import msgspec
from nacl.signing import SigningKey

from prsm_edge.errors import Reason
from prsm_edge.protocol import messages as m
from prsm_edge.protocol import topics as t
from prsm_edge.protocol.envelope import Signer
from prsm_edge.protocol.group import GrantJoin, Group, GroupConfig, Publish, Rejection, StoreMember

SITE, GROUP = "lab", "g1"
T0 = 1_700_000_000_000


class Node:
    """A node's signing side for tests."""

    def __init__(self, seed: int) -> None:
        self.signer = Signer(SigningKey(bytes([seed]) * 32))
        self.id = self.signer.node_id

    def topic(self, kind: t.Kind) -> str:
        return t.node(kind, SITE, GROUP, self.id)

    def birth(self, now: int, *, bdseq: int = 1, cores: float = 4.0) -> tuple[str, bytes]:
        msg = m.NodeBirth(
            node=self.id,
            bdseq=bdseq,
            public_key=self.signer.public_key,
            device_class="generic",
            software="test",
            hw_fingerprint=f"fp-{self.id}",
            resources=[m.ResourceSpec(type=m.ResourceType.COMPUTE_CPU, capacity=cores, unit="cores")],
        )
        return self.topic(t.Kind.NODE_BIRTH), self.signer.seal(msg, now)

    def heartbeat(self, now: int, **kw: object) -> tuple[str, bytes]:
        msg = m.Heartbeat(node=self.id, cpu_util=0.25, mem_util=0.5, **kw)  # type: ignore[arg-type]
        return self.topic(t.Kind.NODE_TELEMETRY), self.signer.seal(msg, now)

    def state(self, now: int, status: str, bdseq: int = 1) -> tuple[str, bytes]:
        msg = m.NodeState(node=self.id, status=status, bdseq=bdseq)  # type: ignore[arg-type]
        return self.topic(t.Kind.NODE_STATE), self.signer.seal(msg, now)


def group(max_members: int = 200) -> Group:
    coord = Signer(SigningKey(b"\xcc" * 32))
    return Group(
        GroupConfig(
            site=SITE,
            group=GROUP,
            coordinator=coord.node_id,
            public_key=coord.public_key,
            epoch=1,
            max_members=max_members,
            heartbeat_timeout_ms=30_000,
        )
    )


def reasons(effects: list[object]) -> list[Reason]:
    return [e.reason for e in effects if isinstance(e, Rejection)]


def commands(effects: list[object]) -> list[str]:
    return [
        e.message.verb for e in effects if isinstance(e, Publish) and isinstance(e.message, m.NodeCommand)
    ]


def test_birth_makes_a_self_reported_member_and_heartbeats_update_it() -> None:
    g, n = group(), Node(1)
    effects = g.receive(*n.birth(T0), T0)
    assert any(isinstance(e, StoreMember) for e in effects)
    member = g.members[n.id]
    assert g.level(n.id) is m.VerificationLevel.SELF_REPORTED and g.trust(n.id) == 0.6
    assert g.receive(*n.heartbeat(T0 + 1, temperature_c=55.0), T0 + 1) == []
    assert member.temperature_c == 55.0


def test_message_signed_by_another_key_on_a_nodes_topic_is_refused() -> None:
    g, a, b = group(), Node(1), Node(2)
    g.receive(*a.birth(T0), T0)
    _, forged = b.heartbeat(T0)
    assert reasons(g.receive(a.topic(t.Kind.NODE_TELEMETRY), forged, T0)) == [Reason.WRONG_TOPIC_OWNER]
    # A body that names another node, even signed by the topic's owner, is refused too.
    spoof = a.signer.seal(m.Heartbeat(node=b.id, cpu_util=0, mem_util=0), T0)
    assert reasons(g.receive(a.topic(t.Kind.NODE_TELEMETRY), spoof, T0)) == [Reason.WRONG_TOPIC_OWNER]
    assert g.rejected[Reason.WRONG_TOPIC_OWNER] == 2


def test_replayed_and_stale_messages_are_refused_and_counted() -> None:
    g, n = group(), Node(1)
    g.receive(*n.birth(T0), T0)
    hb = n.heartbeat(T0 + 1)
    g.receive(*hb, T0 + 1)
    assert reasons(g.receive(*hb, T0 + 2)) == [Reason.REPLAY]
    assert reasons(g.receive(*n.heartbeat(T0 - 500_000), T0 + 3)) == [Reason.STALE]
    assert g.rejected == {Reason.REPLAY: 1, Reason.STALE: 1}


def test_the_brokers_retained_copy_again_is_not_a_replay_but_an_older_retained_message_is() -> None:
    g, n = group(), Node(1)
    first_birth = n.birth(T0)
    g.receive(*first_birth, T0)
    online = n.state(T0 + 1, "online")
    g.receive(*online, T0 + 1)
    g.receive(*n.heartbeat(T0 + 2), T0 + 2)
    # A broker restart: on re-subscription the broker hands out its retained birth and state again.
    assert g.receive(*first_birth, T0 + 3) == [] and g.receive(*online, T0 + 3) == []
    assert g.rejected == {} and g.accepted["retained_again"] == 2
    # The member re-announces (new session); its old birth and state are now plain replays.
    g.receive(*n.birth(T0 + 4, bdseq=2), T0 + 4)
    assert reasons(g.receive(*first_birth, T0 + 5)) == [Reason.REPLAY]
    assert g.members[n.id].bdseq == 2
    assert g.receive(*online, T0 + 5) == []  # a state of an older session: ignored, as before


def test_sequence_gap_asks_for_rebirth() -> None:
    g, n = group(), Node(1)
    g.receive(*n.birth(T0), T0)
    n.signer.seal(m.Heartbeat(node=n.id, cpu_util=0, mem_util=0), T0)  # lost on the way
    assert commands(g.receive(*n.heartbeat(T0 + 2), T0 + 2)) == ["rebirth"]


def test_telemetry_from_a_stranger_is_refused_and_it_is_asked_to_rebirth() -> None:
    g, n = group(), Node(1)
    effects = g.receive(*n.heartbeat(T0), T0)
    assert reasons(effects) == [Reason.NOT_MEMBER]
    assert commands(effects) == ["rebirth"]


def test_will_of_the_live_session_marks_offline_but_a_late_will_is_ignored() -> None:
    g, n = group(), Node(1)
    old_will = n.state(T0, "offline", bdseq=1)  # signed at connect time, delivered much later
    g.receive(*n.birth(T0, bdseq=1), T0)
    g.receive(*n.birth(T0 + 10, bdseq=2), T0 + 10)  # reconnected: new session
    g.receive(*old_will, T0 + 1_000_000)
    assert g.members[n.id].online
    will = n.state(T0 + 10, "offline", bdseq=2)
    g.receive(*will, T0 + 1_000_000)
    assert not g.members[n.id].online


def test_missed_heartbeats_mark_offline_on_tick() -> None:
    g, n = group(), Node(1)
    g.receive(*n.birth(T0), T0)
    g.tick(T0 + 29_000)
    assert g.members[n.id].online
    g.tick(T0 + 31_000)
    assert not g.members[n.id].online
    g.receive(*n.heartbeat(T0 + 32_000), T0 + 32_000)
    assert g.members[n.id].online


def test_implausible_claims_are_refused() -> None:
    g, n = group(), Node(1)
    for cores in (-1.0, float("inf"), 1e9):
        assert reasons(g.receive(*n.birth(T0, cores=cores), T0)) == [Reason.IMPLAUSIBLE]
    assert n.id not in g.members


def test_full_group_refuses_birth_and_join_and_redirects() -> None:
    g = group(max_members=2)
    for i in (1, 2):
        g.receive(*Node(i).birth(T0), T0)
    late = Node(3)
    effects = g.receive(*late.birth(T0), T0)
    assert reasons(effects) == [Reason.GROUP_FULL]
    assert commands(effects) == ["redirect"]
    req = m.ApiRequest(txid="x1", method="join", requester=late.id)
    topic = t.api(t.Kind.API_REQ, SITE, GROUP, "join", late.id)
    effects = g.receive(topic, late.signer.seal(req, T0 + 1), T0 + 1)
    resp = [e.message for e in effects if isinstance(e, Publish)]
    assert isinstance(resp[0], m.ApiResponse) and not resp[0].ok and resp[0].error == "group_full"
    # An existing member may always re-announce.
    assert reasons(g.receive(*Node(1).birth(T0 + 5, bdseq=2), T0 + 5)) == []


def test_join_request_is_granted_to_its_signer() -> None:
    g, n = group(), Node(1)
    req = m.ApiRequest(txid="x1", method="join", requester=n.id)
    topic = t.api(t.Kind.API_REQ, SITE, GROUP, "join", n.id)
    assert g.receive(topic, n.signer.seal(req, T0), T0) == [GrantJoin(n.id, n.signer.public_key, "x1")]
    other = Node(2)
    forged = other.signer.seal(msgspec.structs.replace(req, requester=other.id), T0)
    assert reasons(g.receive(topic, forged, T0)) == [Reason.WRONG_TOPIC_OWNER]


def test_summary_and_roster_reflect_online_offering_members() -> None:
    g = group()
    a, b = Node(1), Node(2)
    g.receive(*a.birth(T0, cores=4), T0)
    g.receive(*b.birth(T0, cores=2), T0)
    g.receive(*b.heartbeat(T0 + 1, offering=False, throttle="temperature"), T0 + 1)
    published = {e.topic: e.message for e in g.tick(T0 + 2) if isinstance(e, Publish)}
    summary = published[t.summary(SITE, GROUP)]
    assert isinstance(summary, m.GroupSummary)
    assert summary.members == 2 and summary.online == 2
    assert summary.capacity == {"compute_cpu": 4.0}  # b holds its capacity back
    assert summary.trust == {"self_reported": 2}
    roster = published[t.coord_roster(SITE, GROUP)]
    assert isinstance(roster, m.Roster) and {e.node for e in roster.members} == {a.id, b.id}
    assert g.tick(T0 + 3) == []  # nothing changed, summary interval not yet due


def test_garbage_never_breaks_the_loop() -> None:
    g, n = group(), Node(1)
    for topic, payload in [
        ("prsm/v1/lab/g1/node/x/telemetry", b"\x00\x01"),
        ("not/ours", b""),
        (n.topic(t.Kind.NODE_TELEMETRY), b"\xd2" * 100_000),
    ]:
        g.receive(topic, payload, T0)
    assert g.rejected[Reason.SIZE] == 1 and g.rejected[Reason.MALFORMED] == 2
    g.receive(*n.birth(T0), T0)
    assert n.id in g.members


def test_summary_commits_to_the_signed_claims_it_sums_and_opens_them() -> None:
    from prsm_edge.protocol.claims import check_openings, openings_to_wire

    g = group()
    a, b = Node(1), Node(2)
    births = {a.id: a.birth(T0, cores=4), b.id: b.birth(T0, cores=2)}
    for topic, payload in births.values():
        g.receive(topic, payload, T0)
    summary = g.summary()
    assert summary.claims == 2 and len(summary.claims_root) == 32
    opened = check_openings(
        openings_to_wire(g.claims.root, 2, g.claims.open([0, 1])), summary.claims_root, 2, [0, 1]
    )
    assert set(g.claims.envelopes) == {payload for _, payload in births.values()}  # the nodes' own bytes
    assert sorted(o.signer for o in opened) == sorted([a.id, b.id])
    # A member that holds its capacity back is not in the commitment, as it is not in the capacity.
    g.receive(*b.heartbeat(T0 + 1, offering=False), T0 + 1)
    assert g.summary().claims == 1


def test_federation_traffic_in_the_groups_tree_is_not_a_fault() -> None:
    g = group()
    for topic in (t.fed_report(SITE, GROUP), t.gateway_bridge(SITE, "gw1")):
        assert g.receive(topic, b"\x01", T0) == []
    assert sum(g.rejected.values()) == 0


def test_new_federation_topics_parse_back_to_themselves() -> None:
    for topic in (
        t.unit(t.Kind.UNIT_SUMMARY, "eu", "r1", SITE, GROUP),
        t.unit(t.Kind.UNIT_STREAM, "eu", "r1", SITE, GROUP),
        t.unit(t.Kind.UNIT_REBIRTH, "eu", "r1", SITE, GROUP),
        t.unit_api(t.Kind.UNIT_API_RESP, "eu", "r1", SITE, GROUP, "region-task", "nabc"),
        t.fed_report(SITE, GROUP),
        t.gateway_bridge(SITE, "gw1"),
    ):
        assert str(t.parse(topic)) == topic
    assert t.unit_prefix("eu", "r1", SITE, GROUP) + "summary" == t.unit(
        t.Kind.UNIT_SUMMARY, "eu", "r1", SITE, GROUP
    )
