"""`prsm-edge status` on a region: the region coordinator's verified rollup (nodes, utilization, groups
alive and dead) cut to the last hour and week, drawn as sparklines and carried in --json."""

from __future__ import annotations

from nacl.signing import SigningKey

from prsm_edge.commands.status import render_region
from prsm_edge.protocol import topics as t
from prsm_edge.protocol.envelope import Signer
from prsm_edge.protocol.messages import GroupRollup, GroupSummary
from prsm_edge.protocol.regionview import RegionView
from prsm_edge.protocol.rollups import Rollups, region_sample
from prsm_edge.protocol.trendview import region_trends
from tests.unit.test_region import NOW, RS, R
from tests.unit.test_regionview import Rig

START_S = NOW // 1000 // 3600 * 3600  # on an hour boundary
AT_S = START_S + 2 * 3600 + 30  # two hours and a half minute later


def summary(group: str, online: int, utilization: float = 0.25) -> GroupSummary:
    return GroupSummary(
        site="lab",
        group=group,
        epoch=1,
        tier=1,
        members=online + 1,
        online=online,
        capacity={"compute_cpu": 4.0},
        trust={"benchmarked": online},
        utilization=utilization,
    )


def history(online: int = 9) -> Rollups:
    """Two hours of minute samples from the shipping region sampler: three groups, g3 dead from minute
    90 on, minute 100 missing (the region's coordinator restarted)."""
    r = Rollups()
    for minute in range(121):
        if minute == 100:
            continue
        units = [(summary(g, online), g != "g3" or minute < 90) for g in ("g1", "g2", "g3")]
        r.add(START_S + 60 * minute, region_sample(units))
    return r


def rollup(online: int = 9, at_s: int = AT_S, region: str = R) -> GroupRollup:
    return history(online).message(RS, region, at_s * 1000)


def test_the_regions_last_hour_and_week_carry_nodes_utilization_and_groups() -> None:
    got = region_trends(rollup())
    hour, week = got["hour"], got["week"]
    assert set(hour) == {"step_s", "start_s", "online", "utilization", "groups_alive", "groups_dead"}
    assert hour["step_s"] == 60 and len(hour["online"]) == 60
    assert hour["online"][0] == 27 and hour["online"][-1] == 18  # g3's nine nodes gone with it
    assert hour["groups_alive"][0] == 3 and hour["groups_alive"][-1] == 2
    assert hour["groups_dead"][0] == 0 and hour["groups_dead"][-1] == 1
    assert hour["online"][100 - 61] is None and hour["groups_dead"][100 - 61] is None  # a gap, not a 0
    assert set(hour["utilization"]) == {0.25, None}
    assert week["step_s"] == 3600 and len(week["online"]) == 3  # only three hours exist yet
    # Hourly means, rounded: the second hour had 30 minutes of three alive and 19 of two (one missing).
    assert week["groups_alive"] == [3, 3, 2] and week["groups_dead"] == [0, 0, 1]


def test_node_counts_too_large_for_two_bytes_come_through() -> None:
    hour = region_trends(rollup(online=40_000))["hour"]  # 120 000 nodes: the column goes 8 bytes wide
    assert hour["online"][0] == 120_000 and hour["online"][-1] == 80_000


def test_a_region_shows_trends_only_from_a_rollup_its_pinned_key_signed() -> None:
    rig = Rig()
    rig.start()
    impostor = Signer(SigningKey.generate())
    view = RegionView(RS, R)
    now = AT_S * 1000
    view.receive(t.coord_rollup(RS, R), impostor.seal(rollup(), now), now)  # waits for the region's key
    for topic, payload in rig.wire.items():
        view.receive(topic, payload, now)
    snap = view.snapshot(now)
    assert snap["trends"] is None and view.rollup is None and view.unverified == 1
    assert any(f["topic"] == t.coord_rollup(RS, R) for f in snap["failures"])
    assert "trends: no rollup yet (the region's coordinator" in render_region(snap)

    # A rollup of another region, signed by the right key, is not this region's trend either.
    view.receive(t.coord_rollup(RS, R), rig.signer.seal(rollup(region="r9"), now), now)
    assert view.rollup is None and view.unverified == 2

    view.receive(t.coord_rollup(RS, R), rig.signer.seal(rollup(), now), now)
    snap = view.snapshot(now + 4000)
    trends = snap["trends"]
    assert trends["age_s"] == 4.0 and trends["hour"]["groups_dead"][-1] == 1
    text = render_region(snap)
    assert "no rollup yet" not in text and "trends from the region's coordinator's rollup, 4 s old" in text
    assert "one mark per 1 min" in text and "one mark per 1 h" in text
    lines = text.splitlines()
    online = next(line for line in lines if line.startswith("    online"))
    assert "█" in online and "now 18, max 27" in online
    assert any(line.startswith("    util") and "now 25 %, max 25 %" in line for line in lines)
    alive = [line for line in lines if line.startswith("    alive")]
    dead = [line for line in lines if line.startswith("    dead")]
    assert len(alive) == len(dead) == 2  # the hour and the week
    assert "groups now 2, max 3" in alive[0] and "groups now 1, max 1" in dead[0]

    # An older rollup (a replay) does not replace the newer one.
    view.receive(t.coord_rollup(RS, R), rig.signer.seal(rollup(at_s=AT_S - 600), now), now)
    assert view.rollup is not None and view.rollup.at_ms == now
