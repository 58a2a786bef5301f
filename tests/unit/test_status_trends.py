"""`prsm-edge status` trends: the verified rollup cut to the last hour and week, drawn as sparklines."""

from __future__ import annotations

from prsm_edge.commands.status import render, sparkline
from prsm_edge.protocol import topics as t
from prsm_edge.protocol.groupview import GroupView
from prsm_edge.protocol.messages import MICRO
from prsm_edge.protocol.rollups import EARNED, Rollups
from prsm_edge.protocol.trendview import trends
from tests.unit.test_group import GROUP, SITE
from tests.unit.test_groupview import COORD, IMPOSTOR, coord_state

START_S = 1_800_000_000 // 3600 * 3600  # on an hour boundary
AT_S = START_S + 2 * 3600 + 30  # two hours and a half minute later


def history() -> Rollups:
    """Two hours of minute samples from the shipping rollup code, with minute 100 missing (a restart)."""
    r = Rollups()
    for minute in range(121):
        if minute == 100:
            continue
        online = 3 if minute >= 90 else 2
        r.add(START_S + 60 * minute, {"online": online, "cpu": 500, EARNED: MICRO // 4})
    return r


def test_the_last_hour_and_week_come_from_the_right_series() -> None:
    got = trends(history().message(SITE, GROUP, AT_S * 1000))
    hour, week = got["hour"], got["week"]
    assert hour["step_s"] == 60 and len(hour["online"]) == 60
    assert hour["start_s"] == AT_S // 60 * 60 - 59 * 60  # the 60 minutes up to the one holding AT_S
    assert hour["online"][-1] == 3 and hour["online"][0] == 2
    assert hour["online"][100 - 61] is None  # the missing minute stays a gap, not a zero
    assert set(hour["utilization"]) == {0.5, None} and hour["earned_ftns"][-1] == 0.25
    assert week["step_s"] == 3600 and len(week["online"]) == 3  # only three hours exist yet
    assert week["earned_ftns"] == [15.0, 14.75, 0.25]  # hourly sums of 0.25 a minute


def test_sparklines_scale_merge_and_show_gaps() -> None:
    assert sparkline([0.0, 0.5, 1.0, None], top=1.0) == "▁▅█ "
    assert sparkline([2.0, 4.0]) == "▅█"  # scaled to the largest when no top is given
    week = [1.0] * 168
    assert len(sparkline(week)) == 56  # three hours per mark fit in 60 characters
    assert sparkline([1.0, 1.0, 3.0, None], width=2, total=True) == "▆█"  # sums per mark (2 of 3, 3 of 3)
    assert sparkline([None, None]) == "  " and sparkline([]) == ""


def test_the_table_shows_trends_only_from_a_rollup_the_pinned_coordinator_signed() -> None:
    rollup = history().message(SITE, GROUP, AT_S * 1000)
    view = GroupView(SITE, GROUP)
    view.receive(t.coord_rollup(SITE, GROUP), IMPOSTOR.seal(rollup, AT_S * 1000), AT_S * 1000)
    view.receive(*coord_state(), AT_S * 1000)  # the impostor's rollup waited for the key: now refused
    snap = {"kind": "group", **view.snapshot(AT_S * 1000)}
    assert snap["trends"] is None and view.unverified == 1
    assert "trends: no rollup yet" in render(snap)

    view.receive(t.coord_rollup(SITE, GROUP), COORD.seal(rollup, AT_S * 1000), AT_S * 1000)
    snap = {"kind": "group", **view.snapshot(AT_S * 1000 + 5000)}
    assert snap["trends"]["age_s"] == 5.0 and snap["trends"]["hour"]["online"][-1] == 3
    text = render(snap)
    assert "no rollup yet" not in text
    hour_line = next(line for line in text.splitlines() if line.startswith("    online"))
    assert "█" in hour_line and "now 3, max 3" in hour_line
    assert "one mark per 1 min" in text and "one mark per 1 h" in text
    assert "14.750000 FTNS in all" in text  # the hour: 59 sampled minutes of a quarter FTNS
    assert "30.000000 FTNS in all" in text  # the week (so far): 119 of them

    # An older rollup (a replay) does not replace the newer one; one naming another group is not taken.
    older = history().message(SITE, GROUP, (AT_S - 600) * 1000)
    view.receive(t.coord_rollup(SITE, GROUP), COORD.seal(older, AT_S * 1000), AT_S * 1000)
    assert view.rollup is not None and view.rollup.at_ms == AT_S * 1000
    elsewhere = history().message(SITE, "g-other", (AT_S + 60) * 1000)
    view.receive(t.coord_rollup(SITE, GROUP), COORD.seal(elsewhere, AT_S * 1000), AT_S * 1000)
    assert view.rollup.group == GROUP
