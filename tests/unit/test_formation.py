"""Group formation rules: TXT round trip and refusals, choice, election, full groups and merging."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from prsm_edge.errors import LocalError, RemoteError
from prsm_edge.protocol.envelope import node_id_for
from prsm_edge.protocol.formation import (
    ADVERT_MAX_AGE_S,
    MAX_TXT_VALUE,
    BadAdvert,
    FullGroupPlan,
    GroupAdvert,
    LeaderPolicy,
    choose_group,
    elect,
    instance_name,
    next_group_name,
    plan_for_full_group,
    should_merge,
    should_yield,
    sign_advert,
    verify_advert,
)
from prsm_edge.protocol.topics import valid_segment

segments = st.from_regex(r"[a-z0-9_-]{1,64}", fullmatch=True)
node_ids = st.from_regex(r"[a-z0-9]{4,40}", fullmatch=True)
ipv4 = st.ip_addresses(v=4).map(str)


@st.composite
def adverts(draw: st.DrawFn, /, **fixed: object) -> GroupAdvert:
    fields: dict[str, object] = {
        "site": draw(st.sampled_from(["lab", "home"])),
        "group": draw(st.sampled_from(["g", "g-2", "h"])),
        "coordinator": draw(st.sampled_from(["c1", "c2", "c3", "c4", "c5"])),
        "epoch": draw(st.integers(0, 4)),
        "version": draw(st.sampled_from([1, 1, 1, 2])),
        "members": draw(st.integers(0, 220)),
        "max_members": draw(st.sampled_from([50, 200])),
        "port": 1883,
    }
    fields.update(fixed)
    return GroupAdvert(**fields)  # type: ignore[arg-type]


def _wire(ad: GroupAdvert) -> dict[bytes, bytes | None]:
    return {k.encode(): v.encode() for k, v in ad.to_txt().items()}


def _ad(**kw: object) -> GroupAdvert:
    base: dict[str, object] = dict(
        site="lab", group="g", coordinator="c1", epoch=1, version=1, members=10, port=1883
    )
    base.update(kw)
    return GroupAdvert(**base)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ TXT


@given(
    site=segments,
    group=segments,
    coordinator=node_ids,
    epoch=st.integers(0, 10**9),
    version=st.integers(0, 10**9),
    members=st.integers(0, 10**9),
    max_members=st.integers(1, 10**9),
    capacity=st.integers(0, 10**9),
    fp=st.from_regex(r"[0-9a-f]{0,64}", fullmatch=True),
    hosts=st.lists(ipv4, min_size=0, max_size=8, unique=True),
    port=st.integers(1, 65535),
    ws=st.none() | st.integers(1, 65535),
)
def test_txt_round_trip(
    site: str,
    group: str,
    coordinator: str,
    epoch: int,
    version: int,
    members: int,
    max_members: int,
    capacity: int,
    fp: str,
    hosts: list[str],
    port: int,
    ws: int | None,
) -> None:
    ad = GroupAdvert(
        site=site, group=group, coordinator=coordinator, epoch=epoch, version=version, members=members,
        max_members=max_members, capacity=capacity, key_fingerprint=fp, hosts=tuple(hosts), port=port,
        ws_port=ws,
    )  # fmt: skip
    txt = ad.to_txt()
    assert all(len(k) <= 5 and len(v.encode()) <= MAX_TXT_VALUE for k, v in txt.items())
    assert GroupAdvert.from_txt("x", hosts, port, _wire(ad)) == ad


def test_unknown_keys_and_non_ascii_keys_are_ignored() -> None:
    ad = _ad()
    props = _wire(ad) | {b"future": b"1", "ключ".encode(): b"v", b"flag": None}
    assert GroupAdvert.from_txt("x", [], 1883, props) == ad


@pytest.mark.parametrize("key", ["site", "grp", "coord", "ep", "v", "n", "max"])
def test_each_required_key_is_required(key: str) -> None:
    props = _wire(_ad())
    del props[key.encode()]
    with pytest.raises(BadAdvert, match=f"'{key}' is missing"):
        GroupAdvert.from_txt("x", [], 1883, props)
    props[key.encode()] = None  # a boolean attribute (key without '=') is no value either
    with pytest.raises(BadAdvert, match="missing"):
        GroupAdvert.from_txt("x", [], 1883, props)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("n", b"-1", "non-negative integer"),
        ("n", b"1e3", "non-negative integer"),
        ("n", b"\xd9\xa3", "non-negative integer"),  # Arabic-Indic digit: isdigit() but not ASCII
        ("ep", b"99999999999", "non-negative integer"),
        ("max", b"0", "outside"),
        ("ws", b"70000", "outside"),
        ("grp", b"Bad/Group", "topic segment"),
        ("site", b"", "topic segment"),
        ("coord", b"a b", "malformed"),
        ("fp", b"zz zz", "malformed"),
        ("cap", b"x", "non-negative integer"),
        ("site", b"\xff", "UTF-8"),
        ("fp", b"a" * (MAX_TXT_VALUE + 1), "longer than"),
    ],
)
def test_bad_values_are_refused(key: str, value: bytes, match: str) -> None:
    props = _wire(_ad()) | {key.encode(): value}
    with pytest.raises(BadAdvert, match=match) as info:
        GroupAdvert.from_txt("svc", [], 1883, props)
    assert isinstance(info.value, RemoteError)


def test_bad_addresses_ports_and_floods_are_refused() -> None:
    props = _wire(_ad())
    with pytest.raises(BadAdvert, match="not an IP address"):
        GroupAdvert.from_txt("x", ["host.local"], 1883, props)
    with pytest.raises(BadAdvert, match="more than 8"):
        GroupAdvert.from_txt("x", [f"10.0.0.{i}" for i in range(9)], 1883, props)
    with pytest.raises(BadAdvert, match="port"):
        GroupAdvert.from_txt("x", [], 0, props)
    with pytest.raises(BadAdvert, match="TXT properties"):
        GroupAdvert.from_txt("x", [], 1883, props | {f"k{i}".encode(): b"" for i in range(40)})
    assert GroupAdvert.from_txt("x", ["10.0.0.1", "10.0.0.1"], 1883, props).hosts == ("10.0.0.1",)


def test_to_txt_refuses_oversize_values() -> None:
    with pytest.raises(BadAdvert):
        _ad(key_fingerprint="f" * 65).to_txt()


@given(group=segments, coordinator=node_ids)
def test_instance_name_fits_a_dns_label(group: str, coordinator: str) -> None:
    name = instance_name(_ad(group=group, coordinator=coordinator))
    assert len(name.encode()) <= 63
    assert name != instance_name(_ad(group=group, coordinator=coordinator + "x"))
    assert name != instance_name(
        _ad(group=group + "x" if len(group) < 64 else group[:-1], coordinator=coordinator)
    )


def test_instance_name_is_readable_when_it_fits() -> None:
    assert instance_name(_ad(group="g-2", coordinator="nabc")) == "g-2@nabc"


# ------------------------------------------------------------------------------------------------ choice


@given(st.lists(adverts(), max_size=12), st.randoms(use_true_random=False))
def test_choose_group_is_order_independent_and_valid(pool: list[GroupAdvert], rnd: random.Random) -> None:
    choice = choose_group(pool, site="lab", version=1)
    shuffled = list(pool)
    rnd.shuffle(shuffled)
    assert choose_group(shuffled, site="lab", version=1) == choice
    same_version = [a for a in pool if a.version == 1]
    winners = {a.key: elect([b for b in same_version if b.key == a.key]) for a in same_version}
    eligible = [a for a in winners.values() if a.has_room]
    if not eligible:
        assert choice is None
        return
    assert choice in eligible
    if any(a.site == "lab" for a in eligible):
        assert choice.site == "lab"
        assert choice.members == min(a.members for a in eligible if a.site == "lab")


def test_choose_group_prefers_site_then_load_then_name_and_honours_exclude() -> None:
    far = _ad(site="home", group="a", members=1)
    busy = _ad(group="b", members=100, coordinator="c9")
    quiet_z = _ad(group="z", members=20, coordinator="c8")
    quiet_y = _ad(group="y", members=20, coordinator="c7")
    full = _ad(group="f", members=200, coordinator="c6")
    newer = _ad(group="n", members=0, version=2, coordinator="c5")
    pool = [far, busy, quiet_z, quiet_y, full, newer]
    assert choose_group(pool, site="lab", version=1) == quiet_y
    assert choose_group(pool, site="lab", version=1, exclude={"y"}) == quiet_z
    assert choose_group(pool, site="lab", version=1, exclude={"c7", "c8"}) == busy
    assert choose_group(pool, site="lab", version=1, exclude={"y", "z", "b"}) == far
    assert choose_group(pool, site="lab", version=2) == newer
    assert choose_group([full], site="lab", version=1) is None


# ------------------------------------------------------------------------------------------------ election


@given(st.lists(adverts(site="lab", group="g"), min_size=1, max_size=6, unique_by=lambda a: a.coordinator))
def test_exactly_one_coordinator_stays(rivals: list[GroupAdvert]) -> None:
    winner = elect(rivals)
    assert elect(reversed(rivals)) == winner
    stayers = [me for me in rivals if not should_yield(me, rivals)]
    assert stayers == [winner]


def test_election_order_members_then_epoch_then_id() -> None:
    a = _ad(coordinator="aa", members=5, epoch=1)
    b = _ad(coordinator="bb", members=6, epoch=9)
    assert elect([a, b]) == b  # more members
    c = _ad(coordinator="cc", members=6, epoch=2)
    assert elect([a, b, c]) == c  # same members: lower epoch, established longer
    d = _ad(coordinator="ab", members=6, epoch=2)
    assert elect([c, d]) == d  # all else equal: lowest id
    assert not should_yield(a, [_ad(group="other", coordinator="zz", members=99)])  # other group: no rival
    with pytest.raises(LocalError):
        elect([])


# ------------------------------------------------------------------------------------------------ full groups


def test_full_group_redirects_to_a_group_with_room() -> None:
    me = _ad(group="g", members=200)
    other = _ad(group="h", coordinator="c2", members=150)
    far = _ad(site="home", group="a", coordinator="c3", members=1)
    assert plan_for_full_group(_ad(members=199), [other]) is None
    assert plan_for_full_group(me, [me, other, far]) == FullGroupPlan(redirect_to=other)
    assert plan_for_full_group(me, [me, far]) == FullGroupPlan(redirect_to=far)


def test_full_group_without_alternatives_names_a_founder_and_a_fresh_name() -> None:
    me = _ad(group="g", members=200, coordinator="c1")
    taken = _ad(group="g-2", coordinator="c2", members=200)
    plan = plan_for_full_group(me, [me, taken], capable_members=["n9", "c1", "n3"])
    assert plan == FullGroupPlan(founder="n3", new_group="g-3")
    assert plan_for_full_group(me, [me], capable_members=["c1"]) == FullGroupPlan()


@given(
    existing=st.sets(st.sampled_from(["g", "g-2", "g-3", "g-5", "h"])),
    base=st.sampled_from(["g", "g-2", "h"]),
)
def test_next_group_name_is_free_and_valid(existing: set[str], base: str) -> None:
    name = next_group_name(existing, base)
    assert name not in existing
    assert valid_segment(name)
    assert name.startswith(base.split("-")[0])


def test_next_group_name_examples() -> None:
    assert next_group_name(set()) == "g"
    assert next_group_name({"g"}) == "g-2"
    assert next_group_name({"g", "g-2"}, base="g-2") == "g-3"
    assert valid_segment(next_group_name({"x" * 64}, base="x" * 64))
    with pytest.raises(LocalError):
        next_group_name(set(), base="Bad Name")


# ------------------------------------------------------------------------------------------------ merging


def test_small_group_merges_into_largest_neighbour_with_room() -> None:
    me = _ad(group="s", members=10)
    big = _ad(group="b", coordinator="c2", members=150)
    bigger_full = _ad(group="f", coordinator="c3", members=195)  # no room for our 10
    far = _ad(site="home", group="x", coordinator="c4", members=100)
    assert should_merge(me, [me, big, bigger_full, far]) == big
    assert should_merge(dataclasses.replace(me, members=50), [big]) is None
    assert should_merge(me, [me, far]) is None
    rival = _ad(group="s", coordinator="c0", members=30)  # outranks me in my own group: I yield, not merge
    assert should_merge(me, [me, rival, big]) is None
    assert should_merge(rival, [me, rival, big]) == big


@settings(max_examples=200)
@given(st.lists(adverts(site="lab", version=1), max_size=8, unique_by=lambda a: (a.group, a.coordinator)))
def test_merging_never_forms_a_cycle(pool: list[GroupAdvert]) -> None:
    for me in pool:
        target = should_merge(me, pool)
        if target is None:
            continue
        assert target.group != me.group
        assert target.members + me.members <= target.max_members
        back = should_merge(target, [*pool, me])
        assert back is None or back.group != me.group


# ---------------------------------------------------------------------------------- signed adverts, pins


def _key(name: str) -> SigningKey:
    return SigningKey(name.encode().ljust(32, b"."))


def _signed(name: str, now: int = 1_000_000, **kw: object) -> GroupAdvert:
    k = _key(name)
    return sign_advert(_ad(coordinator=node_id_for(bytes(k.verify_key)), **kw), k, now)


def test_a_signed_advert_survives_the_txt_round_trip_and_verifies() -> None:
    ad = _signed("c1", hosts=("10.0.0.1",))
    back = GroupAdvert.from_txt("x", ["10.0.0.1"], ad.port, _wire(ad))
    assert back == ad
    verify_advert(back, now_s=1_000_010)
    assert all(len(v.encode()) <= MAX_TXT_VALUE for v in ad.to_txt().values())


@pytest.mark.parametrize(
    "change",
    [
        {"members": 199},
        {"max_members": 10**6},
        {"epoch": 0},
        {"port": 1},
        {"group": "other"},
        {"signed_at": 1_000_500},
    ],
)
def test_any_claim_changed_after_signing_is_refused(change: dict[str, object]) -> None:
    forged = dataclasses.replace(_signed("c1"), **change)  # type: ignore[arg-type]
    with pytest.raises(BadAdvert, match="does not verify"):
        verify_advert(forged, now_s=1_000_010)


def test_unsigned_stale_future_and_borrowed_key_adverts_are_refused() -> None:
    with pytest.raises(BadAdvert, match="not signed"):
        verify_advert(_ad(), now_s=0)
    with pytest.raises(BadAdvert, match="stale"):
        verify_advert(_signed("c1"), now_s=1_000_000 + ADVERT_MAX_AGE_S + 1)
    with pytest.raises(BadAdvert, match="future"):
        verify_advert(_signed("c1"), now_s=1_000_000 - 3600)
    # signed by its own key, but naming another coordinator: the id is derived from the key
    victim = _signed("victim")
    borrowed = dataclasses.replace(victim, public_key=bytes(_key("mallory").verify_key))
    with pytest.raises(BadAdvert, match="not that coordinator's"):
        verify_advert(borrowed, now_s=1_000_010)
    with pytest.raises(LocalError):
        sign_advert(_ad(coordinator="c1"), _key("c1"), 0)  # "c1" is not the key's id


def test_leader_policy_allows_only_pinned_keys_unless_the_operator_says_verified() -> None:
    friend, stranger = _signed("friend"), _signed("stranger")
    pinned = LeaderPolicy(trusted=frozenset({friend.public_key}))
    assert pinned.allows(friend) and not pinned.allows(stranger)
    assert not LeaderPolicy().allows(friend)  # nothing pinned: nobody may take over
    assert LeaderPolicy(mode="verified").allows(stranger)
    assert not LeaderPolicy(mode="never", trusted=frozenset({friend.public_key})).allows(friend)
    assert not LeaderPolicy(mode="verified").allows(_ad())  # unsigned: never


def test_a_newcomer_with_a_pin_never_joins_an_impostor_of_its_group() -> None:
    mine = _signed("mine", members=120)
    impostor = _signed("impostor", members=199, max_members=10**6)  # outranks mine without a pin
    assert choose_group([mine, impostor], site="lab", version=1) == impostor
    pins = {("lab", "g"): mine.public_key}
    assert choose_group([mine, impostor], site="lab", version=1, pins=pins) == mine
    assert choose_group([impostor], site="lab", version=1, pins=pins) is None
    # the site's settings list the only coordinators a node joins at all
    other = _signed("other", group="h", members=1)
    trusted = frozenset({mine.public_key})
    assert choose_group([mine, impostor, other], site="lab", version=1, trusted=trusted) == mine
