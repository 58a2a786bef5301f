"""The observer's view (`prsm-edge status`): only verified messages count, and the rest is listed."""

from __future__ import annotations

from nacl.signing import SigningKey

from prsm_edge.protocol import messages as m
from prsm_edge.protocol import topics as t
from prsm_edge.protocol.envelope import Signer
from prsm_edge.protocol.groupview import GroupView
from tests.unit.test_group import GROUP, SITE, T0, Node

COORD = Signer(SigningKey(b"\xcc" * 32))
IMPOSTOR = Signer(SigningKey(b"\xdd" * 32))


def coord_state(signer: Signer = COORD, status: str = "online") -> tuple[str, bytes]:
    msg = m.CoordState(
        site=SITE,
        group=GROUP,
        status=status,  # type: ignore[arg-type]
        epoch=3,
        coordinator=signer.node_id,
        public_key=signer.public_key,
    )
    return t.coord_state(SITE, GROUP), signer.seal(msg, T0)


def roster(*nodes: Node, signer: Signer = COORD) -> tuple[str, bytes]:
    entries = [
        m.RosterEntry(
            node=n.id, level=m.VerificationLevel.PEER_VERIFIED, online=True, public_key=n.signer.public_key
        )
        for n in nodes
    ]
    return t.coord_roster(SITE, GROUP), signer.seal(m.Roster(group=GROUP, epoch=3, members=entries), T0)


def tamper(payload: bytes) -> bytes:
    """Flip one bit in the signed payload (the last byte before the 64-byte signature's header)."""
    data = bytearray(payload)
    data[-70] ^= 0x01
    return bytes(data)


def test_verified_messages_make_the_view() -> None:
    a, b = Node(1), Node(2)
    view = GroupView(SITE, GROUP)
    for topic, payload in (coord_state(), roster(a, b), a.birth(T0), b.birth(T0), a.heartbeat(T0)):
        view.receive(topic, payload, T0)
    snap = view.snapshot(T0 + 2000)
    assert snap["coordinator"]["node"] == COORD.node_id
    assert [n["node"] for n in snap["nodes"]] == sorted([a.id, b.id])
    first = next(n for n in snap["nodes"] if n["node"] == a.id)
    assert first["level"] == "peer_verified" and first["resources"] == {"compute_cpu": 4.0}
    assert first["cpu_util"] == 0.25 and first["last_seen_s"] == 2.0
    assert view.verified == 5 and view.unverified == 0


def test_roster_before_the_coordinator_state_waits_for_its_key() -> None:
    a = Node(1)
    view = GroupView(SITE, GROUP)
    view.receive(*roster(a), T0)
    assert view.roster is None
    view.receive(*coord_state(), T0)
    assert view.roster is not None and view.roster.members[0].node == a.id


def test_a_tampered_birth_is_flagged_and_not_shown() -> None:
    a = Node(1)
    view = GroupView(SITE, GROUP)
    view.receive(*coord_state(), T0)
    topic, payload = a.birth(T0)
    view.receive(topic, tamper(payload), T0)
    assert view.unverified == 1 and view.failures[0].topic == topic
    assert "signature" in view.failures[0].reason or "malformed" in view.failures[0].reason
    assert view.nodes[a.id].birth is None and view.nodes[a.id].unverified == 1


def test_a_node_topic_signed_by_another_key_is_refused() -> None:
    a, b = Node(1), Node(2)
    view = GroupView(SITE, GROUP)
    _, payload = b.birth(T0)  # b's valid message, published on a's topic
    view.receive(a.topic(t.Kind.NODE_BIRTH), payload, T0)
    assert view.unverified == 1 and "not by the topic's node" in view.failures[0].reason
    assert view.nodes[a.id].birth is None


def test_only_the_pinned_coordinator_speaks_for_the_group() -> None:
    a = Node(1)
    view = GroupView(SITE, GROUP, pinned_key=COORD.public_key)
    view.receive(*coord_state(IMPOSTOR), T0)
    assert view.coord is None and "pinned" in view.failures[0].reason
    view.receive(*coord_state(), T0)
    view.receive(*roster(a, signer=IMPOSTOR), T0)
    assert view.roster is None and "not by the coordinator" in view.failures[0].reason


def test_first_coordinator_key_is_pinned_when_none_is_given() -> None:
    view = GroupView(SITE, GROUP)
    view.receive(*coord_state(), T0)
    view.receive(*coord_state(IMPOSTOR), T0)
    assert view.coord is not None and view.coord.coordinator == COORD.node_id
    assert view.unverified == 1


def test_a_late_will_of_an_old_session_does_not_take_the_node_down() -> None:
    a = Node(1)
    view = GroupView(SITE, GROUP)
    view.receive(*a.state(T0, "online", bdseq=2), T0)
    view.receive(*a.state(T0, "offline", bdseq=1), T0)
    assert view.online(view.nodes[a.id])
    view.receive(*a.state(T0, "offline", bdseq=2), T0)
    assert not view.online(view.nodes[a.id])


def test_a_cleared_birth_removes_the_node() -> None:
    a = Node(1)
    view = GroupView(SITE, GROUP)
    view.receive(*a.birth(T0), T0)
    view.receive(a.topic(t.Kind.NODE_BIRTH), b"", T0)
    assert a.id not in view.nodes


def test_an_owner_keys_api_request_is_checked_but_is_no_node() -> None:
    owner, node = Node(7), Node(8)
    view = GroupView(SITE, GROUP)
    request = m.ApiRequest(txid="01", method="status", requester=owner.id, params={"node": node.id})
    view.receive(t.api(t.Kind.API_REQ, SITE, GROUP, "status", owner.id), owner.signer.seal(request, T0), T0)
    assert view.verified == 1 and owner.id not in view.nodes
    forged = node.signer.seal(request, T0)  # another key on the owner's topic
    view.receive(t.api(t.Kind.API_REQ, SITE, GROUP, "status", owner.id), forged, T0)
    assert view.unverified == 1 and "not by the topic's client" in view.failures[0].reason


def test_a_market_listing_names_a_node_but_is_the_coordinators_word() -> None:
    a = Node(1)
    view = GroupView(SITE, GROUP)
    view.receive(*coord_state(), T0)
    listing = m.MarketListing(
        node=a.id,
        device_class="generic",
        level=m.VerificationLevel.SELF_REPORTED,
        resources=[],
        free={},
        min_hourly_rate_micro=0,
        online=True,
    )
    view.receive(t.market_listing(SITE, GROUP, a.id), COORD.seal(listing, T0), T0)
    assert view.unverified == 0 and view.verified == 2
    view.receive(t.market_listing(SITE, GROUP, a.id), a.signer.seal(listing, T0), T0)  # the node's own word
    assert view.unverified == 1 and "not by the coordinator" in view.failures[0].reason


def test_bandwidth_chunks_are_not_the_groups_state() -> None:
    """A viewer without the broker's ACL (the embedded broker) sees bandwidth-check chunks: skipped
    unread, neither shown nor counted as forged."""
    view = GroupView(SITE, GROUP)
    topic = t.node(t.Kind.NODE_BANDWIDTH, SITE, GROUP, "n1")
    view.receive(topic, b"\x00" * 40_000, T0)
    assert not view.failures and not view.nodes and view.verified == 0
