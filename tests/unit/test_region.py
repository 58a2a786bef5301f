"""The regional coordinator's rules, in memory: pinned keys, newest wins, death, the stream, routing."""

from __future__ import annotations

import random

import pytest
from nacl.signing import SigningKey

from prsm_edge.errors import Reason
from prsm_edge.protocol import topics as t
from prsm_edge.protocol.envelope import Signer
from prsm_edge.protocol.group import Publish, Rejection
from prsm_edge.protocol.messages import (
    ApiRequest,
    ApiResponse,
    GatewayState,
    GroupSummary,
    Lease,
    NodeCommand,
    ResourceSpec,
    ResourceType,
    UnitState,
    UplinkRecord,
    VerificationLevel,
)
from prsm_edge.protocol.placement import TaskSpec
from prsm_edge.protocol.region import (
    LeaseGranted,
    PinUnit,
    Region,
    RegionConfig,
    StreamItem,
    TaskPlaced,
    TaskRefused,
    UnitChange,
)

RS, R = "eu", "r1"
NOW = 1_800_000_000_000


class FakeGroup:
    """A group coordinator and its gateway, signing what a real one sends up."""

    def __init__(self, site: str, group: str, cpu: float = 8.0, level: str = "benchmarked") -> None:
        self.site, self.group = site, group
        self.coord = Signer(SigningKey.generate())
        self.gw = Signer(SigningKey.generate())
        self.cpu, self.level = cpu, level
        self.stream_seq = 0

    def summary(self, now: int, epoch: int = 1, **kw: object) -> tuple[str, bytes]:
        fields: dict[str, object] = {
            "site": self.site,
            "group": self.group,
            "epoch": epoch,
            "tier": 1,
            "members": 10,
            "online": 9,
            "capacity": {"compute_cpu": self.cpu},
            "trust": {self.level: 9},
            "utilization": 0.25,
        }
        fields.update(kw)
        msg = GroupSummary(**fields)  # type: ignore[arg-type]
        return t.unit(t.Kind.UNIT_SUMMARY, RS, R, self.site, self.group), self.coord.seal(msg, now)

    def record(
        self, now: int, item: bytes, *, seq: int | None = None, skipped: int = 0, ttl: int = 60_000
    ) -> tuple[str, bytes]:
        if seq is None:
            self.stream_seq += 1
            seq = self.stream_seq
        rec = UplinkRecord(
            site=self.site,
            group=self.group,
            gateway=self.gw.node_id,
            stream_seq=seq,
            kind="lease",
            expires_ms=now + ttl,
            item=item,
            skipped=skipped,
        )
        return t.unit(t.Kind.UNIT_STREAM, RS, R, self.site, self.group), self.gw.seal(rec, now)

    def lease(self, now: int, task_id: str = "t1", node: str = "nabc") -> bytes:
        lease = Lease(
            lease_id="l-" + task_id,
            task_id=task_id,
            node=node,
            resources=[ResourceSpec(type=ResourceType.COMPUTE_CPU, capacity=1, unit="cores")],
            start_ms=now,
            end_ms=now + 1000,
            rate_micro_per_hour=0,
        )
        return self.coord.seal(lease, now)

    def gateway_state(
        self, now: int, status: str, bdseq: int, coordinator: str = "online"
    ) -> tuple[str, bytes]:
        msg = GatewayState(
            site=self.site,
            group=self.group,
            gateway=self.gw.node_id,
            status=status,
            bdseq=bdseq,  # type: ignore[arg-type]
            coordinator=coordinator,
        )
        return t.gateway_state(self.site, self.gw.node_id), self.gw.seal(msg, now)


def region(**kw: object) -> Region:
    key = SigningKey.generate()
    base: dict[str, object] = {
        "site": RS,
        "region": R,
        "coordinator": Signer(key).node_id,
        "public_key": bytes(key.verify_key),
        "epoch": 1,
        "dead_after_ms": 25_000,
    }
    base.update(kw)
    return Region(RegionConfig(**base))  # type: ignore[arg-type]


def news(effects: list[object]) -> list[object]:
    """The effects less the region's retained per-unit standing (tested on its own below)."""
    return [e for e in effects if not (isinstance(e, Publish) and isinstance(e.message, UnitState))]


def reasons(effects: list[object]) -> list[Reason]:
    return [e.reason for e in effects if isinstance(e, Rejection)]


def test_first_summary_pins_the_key_and_a_forgery_is_refused() -> None:
    r, g = region(), FakeGroup("lab", "g1")
    effects = news(r.receive(*g.summary(NOW), NOW))
    assert effects == [UnitChange("lab", "g1", True, "birth"), PinUnit("lab", "g1", g.coord.public_key)]
    forger = FakeGroup("lab", "g1", cpu=4096)
    assert reasons(r.receive(*forger.summary(NOW + 10), NOW + 10)) == [Reason.UNKNOWN_KEY]
    assert r.units[("lab", "g1")].summary.capacity == {"compute_cpu": 8.0}


def test_pins_of_an_earlier_run_hold_after_a_restart() -> None:
    g, forger = FakeGroup("lab", "g1"), FakeGroup("lab", "g1", cpu=4096)
    first = region()
    pins = {(e.site, e.group): e.key for e in first.receive(*g.summary(NOW), NOW) if isinstance(e, PinUnit)}
    restarted = region(epoch=2)
    restarted.restore_pins(pins)
    # The forger's summary arrives first after the restart: the old pin still refuses it.
    assert reasons(restarted.receive(*forger.summary(NOW + 10), NOW + 10)) == [Reason.UNKNOWN_KEY]
    assert reasons(restarted.receive(*g.summary(NOW + 20), NOW + 20)) == []


def test_operator_pins_refuse_unlisted_groups_and_other_keys() -> None:
    g, stranger = FakeGroup("lab", "g1"), FakeGroup("lab", "g2")
    r = region(pinned={("lab", "g1"): g.coord.public_key})
    assert reasons(r.receive(*stranger.summary(NOW), NOW)) == [Reason.UNKNOWN_KEY]
    assert reasons(r.receive(*g.summary(NOW), NOW)) == []


def test_newest_summary_wins_and_a_replayed_one_is_refused() -> None:
    r, g = region(), FakeGroup("lab", "g1")
    old = g.summary(NOW)
    r.receive(*old, NOW)
    r.receive(*g.summary(NOW + 1000, online=5), NOW + 1000)
    assert reasons(r.receive(*old, NOW + 2000)) == [Reason.REPLAY]
    assert r.units[("lab", "g1")].summary.online == 5
    # The held summary sent again (a birth) is neither news nor a refusal.
    again = r.receive(
        t.unit(t.Kind.UNIT_SUMMARY, RS, R, "lab", "g1"), r.units[("lab", "g1")].envelope, NOW + 3000
    )
    assert again == []
    # A restarted coordinator (higher epoch) takes over even with a lower sequence number.
    restarted = Signer(SigningKey(bytes(g.coord._key)), lambda: 1)
    g.coord = restarted
    assert reasons(r.receive(*g.summary(NOW + 4000, epoch=2), NOW + 4000)) == []
    assert r.units[("lab", "g1")].summary.epoch == 2


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"utilization": float("nan")}, Reason.IMPLAUSIBLE),
        ({"capacity": {"compute_cpu": -1.0}}, Reason.IMPLAUSIBLE),
        ({"capacity": {"warp_drive": 1.0}}, Reason.IMPLAUSIBLE),
        ({"online": 11}, Reason.IMPLAUSIBLE),
        ({"tier": 2}, Reason.MALFORMED),
        ({"group": "g2"}, Reason.MALFORMED),
    ],
)
def test_implausible_or_misplaced_summaries_are_refused(fields: dict[str, object], reason: Reason) -> None:
    r, g = region(), FakeGroup("lab", "g1")
    assert reasons(r.receive(*g.summary(NOW, **fields), NOW)) == [reason]
    assert not r.units


def test_a_stale_summary_is_refused() -> None:
    r, g = region(), FakeGroup("lab", "g1")
    assert reasons(r.receive(*g.summary(NOW - 10 * 60_000), NOW)) == [Reason.STALE]


def test_silent_group_dies_and_a_new_summary_revives_it() -> None:
    r, g = region(), FakeGroup("lab", "g1")
    r.receive(*g.summary(NOW), NOW)
    assert not [e for e in r.tick(NOW + 25_000) if isinstance(e, UnitChange)]
    dead = [e for e in r.tick(NOW + 25_001) if isinstance(e, UnitChange)]
    assert dead == [UnitChange("lab", "g1", False, "silent")]
    assert r.summary().online == 0
    assert news(r.receive(*g.summary(NOW + 26_000), NOW + 26_000)) == [
        UnitChange("lab", "g1", True, "summary")
    ]


def test_gateway_will_kills_only_its_own_session() -> None:
    r, g = region(), FakeGroup("lab", "g1")
    r.receive(*g.summary(NOW), NOW)
    r.receive(*g.gateway_state(NOW, "online", bdseq=4), NOW)
    assert r.receive(*g.gateway_state(NOW, "offline", bdseq=3), NOW + 1) == []  # a late Will
    assert news(r.receive(*g.gateway_state(NOW, "offline", bdseq=4), NOW + 2)) == [
        UnitChange("lab", "g1", False, "gateway offline")
    ]


def test_coordinator_offline_reported_by_the_gateway_kills_the_group() -> None:
    r, g = region(), FakeGroup("lab", "g1")
    r.receive(*g.summary(NOW), NOW)
    effects = news(r.receive(*g.gateway_state(NOW, "online", bdseq=1, coordinator="offline"), NOW))
    assert effects == [UnitChange("lab", "g1", False, "coordinator offline")]


def test_stream_before_any_summary_asks_for_a_rebirth_once() -> None:
    r, g = region(), FakeGroup("lab", "g1")
    effects = r.receive(*g.record(NOW, g.lease(NOW)), NOW)
    (pub,) = effects
    assert isinstance(pub, Publish) and isinstance(pub.message, NodeCommand)
    assert pub.topic == t.unit(t.Kind.UNIT_REBIRTH, RS, R, "lab", "g1") and pub.message.verb == "rebirth"
    assert r.receive(*g.record(NOW + 1, g.lease(NOW)), NOW + 1) == []  # not again within the gap


def test_stream_is_ordered_deduplicated_and_a_loss_asks_for_rebirth() -> None:
    r, g = region(), FakeGroup("lab", "g1")
    r.receive(*g.summary(NOW), NOW)
    first = g.record(NOW, g.lease(NOW, "a"))
    assert [type(e) for e in news(r.receive(*first, NOW))] == [StreamItem]
    # The same record again (a redelivery, re-signed by the gateway): dropped.
    again = g.record(NOW + 1, g.lease(NOW, "a"), seq=1)
    assert r.receive(*again, NOW + 1) == []
    # Two dropped on purpose by the gateway (declared): no loss.
    assert [type(e) for e in r.receive(*g.record(NOW + 2, g.lease(NOW, "b"), seq=4, skipped=2), NOW + 2)] == [
        StreamItem
    ]
    # One lost on the way (undeclared): counted, and the gateway is asked to rebirth.
    effects = r.receive(*g.record(NOW + 3, g.lease(NOW, "c"), seq=6), NOW + 3)
    assert isinstance(effects[0], Publish) and isinstance(effects[1], StreamItem)
    stats = r.stream.stats(g.gw.node_id)
    assert (stats.accepted, stats.duplicates, stats.skipped, stats.lost) == (3, 1, 2, 1)
    # An expired record is not delivered.
    late = g.record(NOW + 4, g.lease(NOW, "d"), seq=7, ttl=-1)
    assert reasons(r.receive(*late, NOW + 4)) == [Reason.STALE]


def test_stream_item_must_be_signed_by_the_groups_coordinator() -> None:
    r, g = region(), FakeGroup("lab", "g1")
    r.receive(*g.summary(NOW), NOW)
    other = Signer(SigningKey.generate())
    forged = other.seal(
        Lease(lease_id="x", task_id="x", node="n", resources=[], start_ms=0, end_ms=1, rate_micro_per_hour=0),
        NOW,
    )
    assert reasons(r.receive(*g.record(NOW, forged), NOW)) == [Reason.UNKNOWN_KEY]
    # And a second gateway key for the same group is not accepted.
    g.gw = Signer(SigningKey.generate())
    assert reasons(r.receive(*g.record(NOW, g.lease(NOW)), NOW)) == [Reason.UNKNOWN_KEY]


def _answer(r: Region, g: FakeGroup, pub: Publish, now: int, ok: bool = True) -> list[object]:
    assert isinstance(pub.message, ApiRequest)
    parsed = t.parse(pub.topic)
    assert (parsed.unit_site, parsed.unit_group) == (g.site, g.group)
    result = {"lease": g.lease(now, pub.message.params["task_id"])} if ok else {}
    resp = ApiResponse(
        txid=pub.message.txid, method="region-task", ok=ok, result=result, error="" if ok else "full"
    )
    topic = t.unit_api(t.Kind.UNIT_API_RESP, RS, R, g.site, g.group, "region-task", r.config.coordinator)
    return list(r.receive(topic, g.coord.seal(resp, now), now))


def test_task_goes_to_own_site_first_then_the_next_candidate_on_refusal() -> None:
    r = region()
    near, near2, far = FakeGroup("lab", "g1"), FakeGroup("lab", "g2", cpu=16), FakeGroup("far", "g3", cpu=64)
    for g in (near, near2, far):
        r.receive(*g.summary(NOW), NOW)
    task = TaskSpec(task_id="t1", resources={ResourceType.COMPUTE_CPU: 6.0}, origin_site="lab")
    placed, ask = r.submit(task, NOW, random.Random(1))
    assert isinstance(ask, Publish) and isinstance(placed, TaskPlaced)
    first = t.parse(ask.topic).unit_group
    assert first in ("g1", "g2")  # own site, though far has more capacity
    assert (placed.group, placed.attempt) == (first, 0)
    group = near if first == "g1" else near2
    assert r.units[(group.site, group.group)].reserved == {"compute_cpu": 6.0}  # reserved at once
    placed2, ask2 = _answer(r, group, ask, NOW + 5, ok=False)
    assert isinstance(ask2, Publish) and t.parse(ask2.topic).unit_group not in (first,)
    assert isinstance(placed2, TaskPlaced) and placed2.attempt == 1
    assert r.units[(group.site, group.group)].reserved == {}  # the refusal released it
    other = {"g1": near, "g2": near2, "g3": far}[t.parse(ask2.topic).unit_group]
    (granted,) = _answer(r, other, ask2, NOW + 10)
    assert isinstance(granted, LeaseGranted) and granted.task_id == "t1" and granted.via == "response"
    assert r.units[(other.site, other.group)].reserved == {"compute_cpu": 6.0}
    assert r.pending_tasks() == 0


def test_task_needing_more_trust_or_capacity_than_any_group_is_refused() -> None:
    r = region()
    g = FakeGroup("lab", "g1", level="self_reported")
    r.receive(*g.summary(NOW), NOW)
    trusted = TaskSpec(
        task_id="t", resources={ResourceType.COMPUTE_CPU: 1}, min_level=VerificationLevel.BENCHMARKED
    )
    (refused,) = r.submit(trusted, NOW, random.Random(0))
    assert isinstance(refused, TaskRefused)
    assert refused.reason == (
        "no group offers 1 compute_cpu with a member at benchmarked or above: "
        "of 1 sampled (of 1 groups), 1 no member at benchmarked or above"
    )
    r.receive(*FakeGroup("lab", "g2", cpu=4.0).summary(NOW), NOW)
    big = TaskSpec(task_id="u", resources={ResourceType.COMPUTE_CPU: 100})
    (refused,) = r.submit(big, NOW, random.Random(0))
    assert isinstance(refused, TaskRefused)
    assert refused.reason.endswith("of 2 sampled (of 2 groups), 2 short of compute_cpu")


def test_unanswered_task_moves_on_after_the_timeout_and_a_stream_lease_settles_it() -> None:
    r = region(task_timeout_ms=1000)
    a, b = FakeGroup("lab", "g1"), FakeGroup("lab", "g2")
    r.receive(*a.summary(NOW), NOW)
    r.receive(*b.summary(NOW), NOW)
    _, ask = r.submit(TaskSpec(task_id="t9", resources={ResourceType.COMPUTE_CPU: 1}), NOW, random.Random(3))
    asks = [e for e in r.tick(NOW + 1001) if isinstance(e, Publish) and isinstance(e.message, ApiRequest)]
    assert len(asks) == 1 and t.parse(asks[0].topic).unit_group != t.parse(ask.topic).unit_group
    second = a if t.parse(asks[0].topic).unit_group == "g1" else b
    effects = r.receive(*second.record(NOW + 1100, second.lease(NOW + 1100, "t9")), NOW + 1100)
    granted = [e for e in effects if isinstance(e, LeaseGranted)]
    assert granted and granted[0].via == "stream"


def test_region_summary_nests_one_tier_up() -> None:
    r = region()
    groups = [FakeGroup("lab", f"g{i}") for i in range(3)]
    for g in groups:
        r.receive(*g.summary(NOW), NOW)
    pubs = [e for e in r.tick(NOW + 1000) if isinstance(e, Publish) and isinstance(e.message, GroupSummary)]
    (pub,) = pubs
    s = pub.message
    assert isinstance(s, GroupSummary)
    assert (s.tier, s.members, s.online, s.claims) == (2, 30, 27, 3)
    assert s.capacity == {"compute_cpu": 24.0} and s.trust == {"benchmarked": 27}
    # A tier-3 coordinator takes the region's summary as its unit, with the same code.
    top = region(site="world", region="w", tier=3)
    signer = Signer(SigningKey.generate())
    topic = t.unit(t.Kind.UNIT_SUMMARY, "world", "w", RS, R)
    births = top.receive(topic, signer.seal(s, NOW + 1000), NOW + 1000)
    assert births[0] == UnitChange(RS, R, True, "birth")
    assert top.summary().online == 27


def test_placement_reserves_at_once_so_a_burst_is_spread_and_a_confirmed_lease_holds_until_it_ends() -> None:
    r = region()
    a, b = FakeGroup("lab", "g1", cpu=8), FakeGroup("lab", "g2", cpu=8)
    for g in (a, b):
        r.receive(*g.summary(NOW), NOW)
    # Two tasks of 6 cores each, decided before any group answered: the second cannot go where the
    # first was reserved (8 - 6 < 6), so it goes to the other group.
    first = r.submit(TaskSpec(task_id="t1", resources={ResourceType.COMPUTE_CPU: 6.0}), NOW, random.Random(1))
    second = r.submit(
        TaskSpec(task_id="t2", resources={ResourceType.COMPUTE_CPU: 6.0}), NOW, random.Random(1)
    )
    p1, p2 = first[0], second[0]
    assert isinstance(p1, TaskPlaced) and isinstance(p2, TaskPlaced) and p1.group != p2.group
    # A third finds no room anywhere: refused at once, without asking a group.
    third = r.submit(TaskSpec(task_id="t3", resources={ResourceType.COMPUTE_CPU: 6.0}), NOW, random.Random(1))
    assert [type(e) for e in third] == [TaskRefused]
    # The group confirms: the reservation now lasts as long as the lease, then frees the capacity.
    g1 = a if p1.group == "g1" else b
    ask = first[1]
    assert isinstance(ask, Publish)
    (granted,) = _answer(r, g1, ask, NOW + 10)
    assert isinstance(granted, LeaseGranted)
    unit = r.units[(g1.site, g1.group)]
    assert unit.holds["t1"].confirmed and unit.holds["t1"].until_ms == granted.lease.end_ms
    r.tick(granted.lease.end_ms)
    assert unit.reserved == {}


def test_a_placement_the_group_never_confirms_is_released_and_placed_again() -> None:
    r = region(task_timeout_ms=1000)
    a, b = FakeGroup("lab", "g1", cpu=8), FakeGroup("lab", "g2", cpu=8)
    for g in (a, b):
        r.receive(*g.summary(NOW), NOW)
    placed, _ = r.submit(
        TaskSpec(task_id="t", resources={ResourceType.COMPUTE_CPU: 6.0}), NOW, random.Random(2)
    )
    assert isinstance(placed, TaskPlaced)
    again = [e for e in r.tick(NOW + 1001) if isinstance(e, TaskPlaced)]
    assert len(again) == 1 and again[0].group != placed.group and again[0].attempt == 1
    assert r.units[(placed.site, placed.group)].reserved == {}
    assert r.units[(again[0].site, again[0].group)].reserved == {"compute_cpu": 6.0}


def test_a_submit_over_mqtt_is_answered_placed_at_once_then_leased() -> None:
    r = region()
    g = FakeGroup("lab", "g1")
    r.receive(*g.summary(NOW), NOW)
    client = Signer(SigningKey.generate())
    params = {"task_id": "t", "resources": {"compute_cpu": 1.0}}
    req = ApiRequest(txid="q1", method="submit", requester=client.node_id, params=params)
    topic = t.api(t.Kind.API_REQ, RS, R, "submit", client.node_id)
    effects = r.receive(topic, client.seal(req, NOW), NOW)
    answers = [e for e in effects if isinstance(e, Publish) and isinstance(e.message, ApiResponse)]
    (placed,) = answers
    assert isinstance(placed.message, ApiResponse) and placed.message.ok
    assert placed.message.result["status"] == "placed" and placed.message.result["group"] == "g1"
    ask = next(e for e in effects if isinstance(e, Publish) and isinstance(e.message, ApiRequest))
    confirmed = [e for e in _answer(r, g, ask, NOW + 5) if isinstance(e, Publish)]
    (leased,) = confirmed
    assert isinstance(leased.message, ApiResponse) and leased.message.txid == "q1"
    assert leased.message.result["status"] == "leased"


def test_each_units_standing_is_published_signed_and_retained_when_it_changes() -> None:
    r, g = region(), FakeGroup("lab", "g1")
    topic = t.unit(t.Kind.UNIT_STATE, RS, R, "lab", "g1")

    def states(effects: list[object]) -> list[UnitState]:
        found = [e for e in effects if isinstance(e, Publish) and isinstance(e.message, UnitState)]
        assert all(e.topic == topic and e.retain for e in found)
        return [e.message for e in found]  # type: ignore[misc]

    (born,) = states(r.receive(*g.summary(NOW), NOW))
    assert (born.alive, born.public_key, born.gateway, born.region_epoch) == (True, g.coord.public_key, "", 1)
    assert states(r.receive(*g.summary(NOW + 1000, online=5), NOW + 1000)) == []  # no change, no news
    (bound,) = states(r.receive(*g.gateway_state(NOW + 1000, "online", bdseq=1), NOW + 1000))
    assert (bound.gateway, bound.gateway_key) == (g.gw.node_id, g.gw.public_key)
    (dead,) = states(r.tick(NOW + 27_000))
    assert (dead.alive, dead.why) == (False, "silent")
    (alive,) = states(r.receive(*g.summary(NOW + 28_000), NOW + 28_000))
    assert alive.alive and alive.why == ""


def test_an_overwritten_or_replayed_standing_is_restated() -> None:
    g, signer = FakeGroup("lab", "g1"), Signer(SigningKey.generate())  # signer: the region's key
    r = region(coordinator=signer.node_id, public_key=signer.public_key)
    (born,) = [e for e in r.receive(*g.summary(NOW), NOW) if isinstance(e, Publish)]
    topic = born.topic
    # Our own current standing coming back from the broker: nothing to do.
    assert r.receive(topic, signer.seal(born.message, NOW), NOW + 1) == []
    # Someone else's in its place (an open broker): said again, at most once per gap.
    stranger = Signer(SigningKey.generate())
    forged = UnitState(site="lab", group="g1", region=R, region_epoch=1, alive=False, why="forged")
    (again,) = r.receive(topic, stranger.seal(forged, NOW + 2), NOW + 2)
    assert isinstance(again, Publish) and again.retain and again.message == born.message
    assert r.receive(topic, stranger.seal(forged, NOW + 3), NOW + 3) == []
    # The echo of a standing we published a moment ago, since superseded (the gateway got bound): no news.
    bound = [
        e for e in r.receive(*g.gateway_state(NOW + 4, "online", bdseq=1), NOW + 4) if isinstance(e, Publish)
    ]
    assert len(bound) == 1
    assert r.receive(topic, signer.seal(born.message, NOW + 4), NOW + 5) == []
    # An old standing of ours replayed after the unit changed (its timestamp gives it away): said again.
    r.tick(NOW + 30_000)  # silent: dead
    (restated,) = r.receive(topic, signer.seal(born.message, NOW), NOW + 31_000)
    assert isinstance(restated.message, UnitState) and not restated.message.alive


def test_region_summary_goes_out_at_once_for_a_birth_and_on_the_interval_for_newer_figures() -> None:
    r = region(summary_interval_ms=10_000)

    def summaries(effects: list[object]) -> int:
        return sum(isinstance(e, Publish) and isinstance(e.message, GroupSummary) for e in effects)

    a, b = FakeGroup("lab", "g1"), FakeGroup("lab", "g2")
    r.receive(*a.summary(NOW), NOW)
    assert summaries(r.tick(NOW)) == 1  # the first
    r.receive(*a.summary(NOW + 500, online=5), NOW + 500)  # newer figures of a known unit
    assert summaries(r.tick(NOW + 1_000)) == 0
    r.receive(*b.summary(NOW + 1_500), NOW + 1_500)  # a birth
    assert summaries(r.tick(NOW + 2_000)) == 1
    r.receive(*a.summary(NOW + 3_000, online=6), NOW + 3_000)
    assert summaries(r.tick(NOW + 4_000)) == 0
    assert summaries(r.tick(NOW + 12_000)) == 1  # the interval
