"""The regional coordinator's trend rollup: sampled from its groups' summaries on a cadence, published
retained on the region's coord/rollup, stored in SQLite so a restarted coordinator carries on."""

from __future__ import annotations

from pathlib import Path

from prsm_edge.coordinator.rollups import RegionRollupPublisher, RollupOptions, RollupStore
from prsm_edge.protocol import topics
from prsm_edge.protocol.messages import GroupRollup, GroupSummary
from prsm_edge.protocol.rollups import decode_column

T0_MS = 1_790_000_040_000  # on a minute


def units(alive: int, dead: int) -> list[tuple[GroupSummary, bool]]:
    out = []
    for i in range(alive + dead):
        s = GroupSummary(
            site="lab", group=f"g{i}", epoch=1, tier=1, members=4, online=3, capacity={},
            trust={"benchmarked": 3}, utilization=0.5,
        )  # fmt: skip
        out.append((s, i < alive))
    return out


def test_the_region_rollup_is_sampled_published_and_survives_a_restart(tmp_path: Path) -> None:
    options = RollupOptions(sample_s=30, publish_s=60)
    store = RollupStore(tmp_path / "rollups.sqlite")
    publisher = RegionRollupPublisher("eu", "r1", store, options)
    first = publisher.tick(lambda: units(1, 2), T0_MS)  # the first tick samples and publishes
    assert [p.topic for p in first] == [topics.coord_rollup("eu", "r1")] and first[0].retain
    calls = 0

    def counted() -> list[tuple[GroupSummary, bool]]:
        nonlocal calls
        calls += 1
        return units(3, 0)

    for s in range(1, 60):
        assert publisher.tick(counted, T0_MS + 1000 * s) == []  # nothing due until a minute has passed
    assert calls == 1  # one sample every 30 s (at 30 s)
    out = publisher.tick(counted, T0_MS + 120_000)
    message = out[0].message
    assert isinstance(message, GroupRollup) and (message.site, message.group) == ("eu", "r1")
    minutes = message.series[0]
    alive = decode_column(minutes.columns["groups_alive"], minutes.count)
    assert alive == [2, None, 3]  # the first minute: mean of 1 and 3, no sample, three live groups
    assert decode_column(minutes.columns["online"], minutes.count)[-1] == 9
    store.close()

    # A restarted coordinator restores the stored rings: its first publish still carries the history.
    again = RegionRollupPublisher("eu", "r1", RollupStore(tmp_path / "rollups.sqlite"), options)
    restored = again.tick(lambda: units(1, 2), T0_MS + 600_000).pop().message
    assert isinstance(restored, GroupRollup)
    series = restored.series[0]
    alive = decode_column(series.columns["groups_alive"], series.count)
    assert alive[0] == 2 and alive[-1] == 1 and None in alive  # the old minutes, a gap, the new sample
    again.store.close()
