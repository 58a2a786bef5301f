"""The read-only region view (``prsm-edge status`` on a region, the dashboard's rules), fed with what the
real sans-IO :class:`Region` publishes (signed with its key) and what groups and gateways send it."""

from __future__ import annotations

from nacl.signing import SigningKey

from prsm_edge.commands.status import render_region
from prsm_edge.protocol import topics as t
from prsm_edge.protocol.envelope import Signer
from prsm_edge.protocol.group import Publish
from prsm_edge.protocol.messages import GatewayState, UnitState
from prsm_edge.protocol.region import Region, RegionConfig
from prsm_edge.protocol.regionview import RegionView
from tests.unit.test_region import NOW, RS, FakeGroup, R

GROUPS = (("lab", "g1"), ("lab", "g2"), ("far", "g3"))


def link(g: FakeGroup, now: int, status: str, bdseq: int, **kw: object) -> tuple[str, bytes]:
    """A gateway's signed link state as the real gateway publishes it on the region's broker."""
    fields: dict[str, object] = {"uplink": "up" if status == "online" else "down", "coordinator": "online"}
    fields.update(kw)
    msg = GatewayState(site=g.site, group=g.group, gateway=g.gw.node_id, status=status, bdseq=bdseq, **fields)  # type: ignore[arg-type]
    return t.gateway_state(g.site, g.gw.node_id), g.gw.seal(msg, now)


class Rig:
    """A region coordinator (the real rules) and its groups, with everything it publishes seen by a view."""

    def __init__(self, epoch: int = 1, key: SigningKey | None = None) -> None:
        self.key = key or SigningKey.generate()
        self.signer = Signer(self.key)
        self.region = Region(
            RegionConfig(
                site=RS,
                region=R,
                coordinator=self.signer.node_id,
                public_key=self.signer.public_key,
                epoch=epoch,
                summary_interval_ms=1000,
            )
        )
        self.groups = {g: FakeGroup(s, g) for s, g in GROUPS}
        self.view = RegionView(RS, R)
        self.wire: dict[str, bytes] = {}  # retained messages, as a broker keeps them

    def send(self, topic: str, payload: bytes, now: int) -> None:
        """A message on the region's broker: the region takes it, then the view sees it."""
        self.wire[topic] = payload
        self.publish(self.region.receive(topic, payload, now), now)
        self.view.receive(topic, payload, now)

    def publish(self, effects: list[object], now: int) -> None:
        for e in effects:
            if isinstance(e, Publish):
                payload = self.signer.seal(e.message, now)
                self.wire[e.topic] = payload
                self.view.receive(e.topic, payload, now)

    def start(self, now: int = NOW) -> None:
        self.publish([Publish(*self.region.state_message())], now)
        for g in self.groups.values():
            self.send(*g.summary(now), now)
            self.send(*link(g, now, "online", bdseq=1), now)
        self.publish(self.region.tick(now + 1000), now + 1000)

    def group(self, snap: dict[str, object], name: str) -> dict[str, object]:
        groups = snap["groups"]
        assert isinstance(groups, list)
        return next(g for g in groups if g["group"] == name)


def test_every_group_is_shown_with_the_regions_word_its_summary_and_its_link() -> None:
    rig = Rig()
    rig.start()
    snap = rig.view.snapshot(NOW + 1000)
    assert snap["kind"] == "region" and snap["alive"] == 3 and snap["unverified"] == 0
    g1 = rig.group(snap, "g1")
    assert g1["status"] == "alive" and g1["link"] == "up"
    assert g1["public_key"] == rig.groups["g1"].coord.public_key.hex()
    assert (g1["epoch"], g1["online"], g1["members"], g1["capacity"]) == (1, 9, 10, {"compute_cpu": 8.0})
    assert g1["gateway"]["id"] == rig.groups["g1"].gw.node_id  # type: ignore[index]
    # The region's own signed summary gives the totals.
    assert snap["summary"]["online"] == 27 and snap["summary"]["capacity"] == {"compute_cpu": 24.0}  # type: ignore[index]
    assert snap["coordinator"]["tier"] == 2  # type: ignore[index]
    text = render_region(snap)
    assert "3/3 groups alive" in text and "lab/g1" in text and "far/g3" in text


def test_messages_that_arrive_before_the_region_state_wait_for_it() -> None:
    rig = Rig()
    rig.start()
    late = RegionView(RS, R)
    # A broker hands retained messages over in any order: the region's own state last.
    state_topic = t.coord_state(RS, R)
    for topic, payload in sorted(rig.wire.items(), key=lambda kv: kv[0] == state_topic):
        late.receive(topic, payload, NOW + 2000)
    snap = late.snapshot(NOW + 2000)
    assert snap["alive"] == 3 and snap["unverified"] == 0
    assert all(g["link"] == "up" for g in snap["groups"])  # type: ignore[union-attr]


def test_a_forged_summary_is_flagged_and_not_believed() -> None:
    rig = Rig()
    rig.start()
    forger = FakeGroup("lab", "g2", cpu=4096)
    topic, forged = forger.summary(NOW + 2000)
    rig.send(topic, forged, NOW + 2000)
    snap = rig.view.snapshot(NOW + 2000)
    g2 = rig.group(snap, "g2")
    assert g2["capacity"] == {"compute_cpu": 8.0}  # the forgery changed nothing
    assert g2["unverified"] == 1 and g2["flagged"] == [topic]
    assert snap["failures"][0]["topic"] == topic  # type: ignore[index]
    assert "not by the key the region pinned" in snap["failures"][0]["reason"]  # type: ignore[index]
    # The genuine next summary clears the flag (the failure stays counted).
    rig.send(*rig.groups["g2"].summary(NOW + 3000, online=4), NOW + 3000)
    g2 = rig.group(rig.view.snapshot(NOW + 3000), "g2")
    assert g2["flagged"] == [] and g2["online"] == 4 and g2["unverified"] == 1


def test_a_silent_group_is_shown_dead_and_a_gateway_going_down_is_shown() -> None:
    rig = Rig()
    rig.start()
    # g1 and g3 keep talking; g2 stops.
    for at in (NOW + 10_000, NOW + 20_000):
        for name in ("g1", "g3"):
            rig.send(*rig.groups[name].summary(at), at)
    rig.publish(rig.region.tick(NOW + 26_000), NOW + 26_000)
    snap = rig.view.snapshot(NOW + 26_000)
    g2 = rig.group(snap, "g2")
    assert (g2["status"], g2["why"]) == ("dead", "silent")
    assert snap["alive"] == 2
    # g3's gateway goes away: its Will (same bdseq) on the region's broker.
    rig.send(*link(rig.groups["g3"], NOW, "offline", bdseq=1), NOW + 27_000)
    g3 = rig.group(rig.view.snapshot(NOW + 27_000), "g3")
    assert g3["link"] == "down" and g3["gateway"]["status"] == "offline"  # type: ignore[index]
    assert (g3["status"], g3["why"]) == ("dead", "gateway offline")
    assert "gateway offline" in render_region(rig.view.snapshot(NOW + 27_000))


def test_a_gateway_with_a_backlog_is_replaying_and_its_counts_are_shown() -> None:
    rig = Rig()
    rig.start()
    g = rig.groups["g1"]
    rig.send(*link(g, NOW + 2000, "online", 2, buffered=40, dropped=3, expired=1, replayed=12), NOW + 2000)
    rig.send(*g.record(NOW + 2000, g.lease(NOW + 2000)), NOW + 2000)
    g1 = rig.group(rig.view.snapshot(NOW + 2000), "g1")
    assert g1["link"] == "replaying"
    gw = g1["gateway"]
    assert (gw["buffered"], gw["dropped"], gw["expired"], gw["replayed"]) == (40, 3, 1, 12)  # type: ignore[index]
    assert g1["stream"] == {"records": 1, "historical": 0}


def test_a_gateway_other_than_the_bound_one_is_flagged() -> None:
    rig = Rig()
    rig.start()
    impostor = FakeGroup("lab", "g1")  # its own gateway key, naming g1
    topic, payload = link(impostor, NOW + 2000, "offline", bdseq=9)
    rig.send(topic, payload, NOW + 2000)
    g1 = rig.group(rig.view.snapshot(NOW + 2000), "g1")
    assert g1["link"] == "up" and g1["unverified"] == 1


def test_the_region_key_is_pinned_and_another_region_speaking_is_refused() -> None:
    rig = Rig()
    rig.start()
    pinned = RegionView(RS, R, pinned_key=rig.signer.public_key)
    other = Rig()  # another coordinator claiming the same region
    other.start()
    for topic, payload in other.wire.items():
        pinned.receive(topic, payload, NOW + 2000)
    snap = pinned.snapshot(NOW + 2000)
    assert snap["coordinator"] is None and snap["groups"] == [] and snap["unverified"] >= 1
    # A group's standing signed by anyone but the pinned region key is refused too.
    for topic, payload in rig.wire.items():
        pinned.receive(topic, payload, NOW + 2000)
    standing = UnitState(site="lab", group="g1", region=R, region_epoch=1, alive=False, why="forged")
    topic = t.unit(t.Kind.UNIT_STATE, RS, R, "lab", "g1")
    pinned.receive(topic, other.signer.seal(standing, NOW + 2000), NOW + 2000)
    assert rig.group(pinned.snapshot(NOW + 2000), "g1")["status"] == "alive"


def test_standing_from_an_earlier_region_run_is_unconfirmed() -> None:
    rig = Rig(epoch=1)
    rig.start()
    restarted = Rig(epoch=2, key=rig.key)
    restarted.groups = rig.groups
    view = RegionView(RS, R)
    for topic, payload in rig.wire.items():
        view.receive(topic, payload, NOW + 2000)
    # The region restarted (epoch 2) and has not heard from any group yet: the old standing is not news.
    restarted.view = view
    restarted.publish([Publish(*restarted.region.state_message())], NOW + 3000)
    snap = view.snapshot(NOW + 3000)
    assert {g["status"] for g in snap["groups"]} == {"unconfirmed"}  # type: ignore[union-attr]
    restarted.send(*rig.groups["g1"].summary(NOW + 4000, epoch=1, online=3), NOW + 4000)
    assert rig.group(view.snapshot(NOW + 4000), "g1")["status"] == "alive"


def test_an_older_standing_replayed_is_refused() -> None:
    rig = Rig()
    rig.start()
    topic = t.unit(t.Kind.UNIT_STATE, RS, R, "lab", "g2")
    old = rig.wire[topic]  # the region's first word on g2: alive
    for at in (NOW + 10_000, NOW + 20_000):
        for name in ("g1", "g3"):
            rig.send(*rig.groups[name].summary(at), at)
    rig.publish(rig.region.tick(NOW + 26_000), NOW + 26_000)  # g2 silent: dead
    rig.view.receive(topic, old, NOW + 27_000)  # an attacker replays the old, validly signed standing
    snap = rig.view.snapshot(NOW + 27_000)
    g2 = rig.group(snap, "g2")
    assert g2["status"] == "dead" and g2["unverified"] == 1
    assert "replayed" in snap["failures"][0]["reason"]  # type: ignore[index]
