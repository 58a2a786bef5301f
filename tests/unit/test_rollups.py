"""Trend rollups: ring bounds, exact merging, the packed wire form and its size, sampling the group."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from prsm_edge.protocol import cbor
from prsm_edge.protocol.envelope import PAYLOAD_LIMITS, Signer, open_envelope
from prsm_edge.protocol.group import Member
from prsm_edge.protocol.messages import GroupRollup, GroupSummary, ResourceType, VerificationLevel, to_wire
from prsm_edge.protocol.rollups import (
    DEFAULT_RESOLUTIONS,
    EARNED,
    Resolution,
    Ring,
    Rollups,
    decode_column,
    region_sample,
    sample,
)

RES = Resolution(step_s=60, slots=12)
T0 = 1_790_000_000
columns = st.sampled_from(["online", "cpu", "trust:peer_verified", EARNED, "util:compute_cpu"])
samples = st.lists(
    st.tuples(
        st.integers(T0, T0 + 60 * 40),
        st.dictionaries(columns, st.integers(0, 5000), min_size=1, max_size=4),
    ),
    max_size=60,
)


def ring_of(items: list[tuple[int, dict[str, int]]], resolution: Resolution = RES) -> Ring:
    ring = Ring(resolution)
    for at, values in items:
        ring.add(at, values)
    return ring


@given(samples)
def test_a_ring_holds_at_most_its_slots_the_newest(items: list[tuple[int, dict[str, int]]]) -> None:
    ring = ring_of(items)
    assert len(ring.buckets) <= RES.slots
    if ring.buckets:
        newest = max(ring.buckets)
        assert all(newest - RES.slots < index <= newest for index in ring.buckets)
        # The newest bucket is the newest sample's (a later sample is never dropped).
        assert newest == max(at for at, _ in items) // RES.step_s


@given(samples, samples)
def test_merging_two_rings_is_the_ring_of_all_their_samples(
    a: list[tuple[int, dict[str, int]]], b: list[tuple[int, dict[str, int]]]
) -> None:
    merged = ring_of(a)
    merged.merge(ring_of(b))
    together = ring_of(a + b)
    assert merged.buckets == together.buckets
    other_way = ring_of(b)
    other_way.merge(ring_of(a))
    assert other_way.buckets == together.buckets


@given(samples)
def test_the_wire_form_decodes_to_the_bucket_values(items: list[tuple[int, dict[str, int]]]) -> None:
    ring = ring_of(items)
    series = ring.series()
    if not ring.buckets:
        assert series.count == 0 and not series.columns
        return
    assert series.count <= RES.slots and series.start_s % RES.step_s == 0
    first = series.start_s // RES.step_s
    for name, packed in series.columns.items():
        values = decode_column(packed, series.count)
        assert values == [ring.value(first + i, name) for i in range(series.count)]
    # A mean is the rounded mean of what fell in the bucket; earned is the sum.
    index = max(at for at, _ in items) // RES.step_s
    for name in {n for t, v in items if t // RES.step_s == index for n in v}:
        fell = [v[name] for t, v in items if t // RES.step_s == index and name in v]
        want = sum(fell) if name == EARNED else int(sum(fell) / len(fell) + 0.5)
        assert ring.value(index, name) == want


@given(samples)
@settings(max_examples=50)
def test_the_stored_state_restores_exactly(items: list[tuple[int, dict[str, int]]]) -> None:
    rollups = Rollups((RES, Resolution(3600, 4)))
    for at, values in items:
        rollups.add(at, values)
    stored = cbor.loads(cbor.dumps(rollups.to_state()), cbor.Limits(max_bytes=1 << 22, max_items=1 << 20))
    again = Rollups((RES, Resolution(3600, 4)))
    again.restore(stored)
    assert [r.buckets for r in again.rings] == [r.buckets for r in rollups.rings]
    again.restore("junk")  # a damaged store is skipped, not fatal
    again.restore([{"step_s": 60, "buckets": {"x": 1, "5": {"cpu": [1, "a"]}}}])
    assert [r.buckets for r in again.rings] == [r.buckets for r in rollups.rings]


def test_a_full_week_with_every_column_fits_one_envelope() -> None:
    """The worst case (every resource type and level, every slot, maximal values) stays in bounds."""
    rollups = Rollups(DEFAULT_RESOLUTIONS)
    every = {f"util:{t.value}": 1000 for t in ResourceType}
    every |= {f"trust:{lvl.value}": 999 for lvl in VerificationLevel}
    every |= {"online": 1000, "members": 1000, "cpu": 1000, "mem": 1000, EARNED: 10**15}
    now = T0
    for minute in range(7 * 24 * 60 + 30):
        rollups.add(now + 60 * minute, every)
    message = rollups.message("home", "g1", (now + 7 * 24 * 3600) * 1000)
    assert [s.count for s in message.series] == [360, 168]
    sealed = Signer(SigningKey.generate()).seal(message, 1)
    payload = cbor.dumps(to_wire(message))
    cbor.check_bounds(payload, PAYLOAD_LIMITS)  # size and item count: what every receiver enforces
    assert len(sealed) < 48 * 1024
    opened = open_envelope(sealed)
    assert isinstance(opened.message, GroupRollup) and opened.message.series == message.series
    week = message.series[1]
    assert decode_column(week.columns[EARNED], week.count)[-2] == 10**15 * 60  # a full hour's sum
    assert decode_column(week.columns["cpu"], week.count) == [1000] * 168


def test_samples_outside_the_window_and_bad_columns_are_dropped() -> None:
    ring = Ring(RES)
    ring.add(T0 + 3600, {"cpu": 500})
    ring.add(T0, {"cpu": 100})  # an hour older than the newest: outside a 12-minute window
    ring.add(T0 + 3600, {"Bad Name": 1, "cpu": -5, "x" * 80: 1})
    assert list(ring.buckets) == [(T0 + 3600) // 60]
    assert ring.buckets[(T0 + 3600) // 60] == {"cpu": (500, 1)}


def member(node: str, online: bool, cpu: float) -> Member:
    return Member(
        node=node,
        public_key=b"k" * 32,
        bdseq=1,
        device_class="generic",
        hw_fingerprint="",
        resources=[],
        online=online,
        cpu_util=cpu,
        mem_util=0.5,
    )


def test_a_sample_of_the_group() -> None:
    members = [member("a", True, 0.2), member("b", True, 0.6), member("c", False, 0.9)]
    levels = {"a": VerificationLevel.PEER_VERIFIED}
    got = sample(
        members,
        lambda n: levels.get(n, VerificationLevel.SELF_REPORTED),
        {"compute_cpu": 0.25, "storage_memory": float("nan")},
        1234,
    )
    assert got["online"] == 2 and got["members"] == 3
    assert got["cpu"] == 400 and got["mem"] == 500  # the online members' mean, in ‰
    assert got["trust:peer_verified"] == 1 and got["trust:self_reported"] == 1
    assert got["trust:hardware_attested"] == 0
    assert got["util:compute_cpu"] == 250 and "util:storage_memory" not in got
    assert got[EARNED] == 1234
    assert "cpu" not in sample([member("c", False, 0.9)], lambda n: VerificationLevel.SELF_REPORTED, {}, 0)


def summary(
    group: str, online: int, util: float, trust: dict[str, int], market: dict[str, object]
) -> GroupSummary:
    return GroupSummary(
        site="lab", group=group, epoch=1, tier=1, members=online + 2, online=online,
        capacity={"compute_cpu": 4.0 * online}, trust=trust, utilization=util, market=market,
    )  # fmt: skip


def test_a_sample_of_the_region_sums_its_live_groups() -> None:
    cpu_market = {"resources": {"compute_cpu": {"supply": 40.0, "demand": 10.0}}}
    busy = {"resources": {"compute_cpu": {"supply": 60.0, "demand": 50.0}}}
    junk = {"resources": {"x": {"supply": "a"}}}
    units = [
        (summary("g1", 10, 0.2, {"benchmarked": 8, "self_reported": 2}, cpu_market), True),
        (summary("g2", 30, 0.6, {"benchmarked": 30}, busy), True),
        (summary("g3", 50, 1.0, {"benchmarked": 50}, cpu_market), False),  # dead: only its members count
        (summary("g4", 5, float("nan"), {"benchmarked": -3, "made_up": 7}, junk), True),
    ]
    got = region_sample(units)
    assert got["groups_alive"] == 3 and got["groups_dead"] == 1
    assert got["online"] == 45 and got["members"] == 12 + 32 + 52 + 7
    assert got["cpu"] == round(1000 * (0.2 * 10 + 0.6 * 30) / 45)  # weighted by online; NaN counts as 0
    assert got["trust:benchmarked"] == 38 and got["trust:self_reported"] == 2  # junk skipped
    assert got["trust:hardware_attested"] == 0 and "trust:made_up" not in got
    assert got["util:compute_cpu"] == 600  # (10 + 50) / (40 + 60), the dead group's market left out
    assert "util:x" not in got
    assert "cpu" not in region_sample([(summary("g3", 50, 1.0, {}, {}), False)])


def test_a_region_of_thousands_of_groups_keeps_its_counts_on_the_wire() -> None:
    """Node counts above 65,534 (a 5,000-group region) go out 8 bytes wide instead of being clipped;
    a small group's columns stay 2 bytes wide."""
    units = [(summary(f"g{i}", 100, 0.5, {"benchmarked": 100}, {}), True) for i in range(5000)]
    rollups = Rollups(DEFAULT_RESOLUTIONS)
    for minute in range(3):
        rollups.add(T0 + 60 * minute, region_sample(units))
    minutes = rollups.message("eu", "r1", T0 * 1000).series[0]
    assert decode_column(minutes.columns["online"], minutes.count) == [500_000] * 3
    assert len(minutes.columns["online"]) == 8 * 3 and len(minutes.columns["groups_alive"]) == 2 * 3
    assert decode_column(minutes.columns["trust:benchmarked"], minutes.count) == [500_000] * 3
    sealed = Signer(SigningKey.generate()).seal(rollups.message("eu", "r1", T0 * 1000), 1)
    assert isinstance(open_envelope(sealed).message, GroupRollup)
