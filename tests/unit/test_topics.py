"""The topic tree: every built topic parses back; anything else is a typed error."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prsm_edge.errors import TopicError
from prsm_edge.protocol import topics as t

seg = st.from_regex(r"[a-z0-9_-]{1,64}", fullmatch=True)


@given(site=seg, group=seg, node=seg, verb=seg, method=seg, client=seg, gw=seg)
def test_built_topics_parse_back(
    site: str, group: str, node: str, verb: str, method: str, client: str, gw: str
) -> None:
    built = [
        t.Topic(t.Kind.COORD_STATE, site, group),
        t.Topic(t.Kind.COORD_ROSTER, site, group),
        t.Topic(t.Kind.COORD_BEACON, site, group),
        t.Topic(t.Kind.SUMMARY, site, group),
        t.Topic(t.Kind.NODE_CMD, site, group, node=node, verb=verb),
        t.Topic(t.Kind.NODE_BENCH, site, group, node=node, verb=verb),
        t.Topic(t.Kind.API_REQ, site, group, method=method, client=client),
        t.Topic(t.Kind.API_RESP, site, group, method=method, client=client),
        t.Topic(t.Kind.GATEWAY_STATE, site, gateway=gw),
        *(
            t.Topic(k, site, group, node=node)
            for k in (
                t.Kind.NODE_STATE,
                t.Kind.NODE_BIRTH,
                t.Kind.NODE_CLAIM,
                t.Kind.NODE_PROOF,
                t.Kind.NODE_TELEMETRY,
            )
        ),
    ]
    for topic in built:
        assert t.parse(str(topic)) == topic


def test_examples_and_retained_flags() -> None:
    assert t.coord_state("home", "g1") == "prsm/v1/home/g1/coord/state"
    assert t.node(t.Kind.NODE_BIRTH, "home", "g1", "nabc") == "prsm/v1/home/g1/node/nabc/birth"
    assert t.node_cmd("home", "g1", "nabc", "rebirth") == "prsm/v1/home/g1/node/nabc/cmd/rebirth"
    assert t.api(t.Kind.API_REQ, "home", "g1", "join", "nabc") == "prsm/v1/home/g1/api/join/req/nabc"
    assert t.gateway_state("home", "gw1") == "prsm/v1/home/gw/gw1/state"
    assert t.parse("prsm/v1/home/g1/node/nabc/birth").retained
    assert not t.parse("prsm/v1/home/g1/node/nabc/telemetry").retained


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "prsm/v2/home/g1/summary",
        "other/v1/home/g1/summary",
        "prsm/v1/home/g1/node/nabc/unknown",
        "prsm/v1/home/g1/node/+/birth",
        "prsm/v1/home/g1/node/#",
        "prsm/v1/Home/g1/summary",
        "prsm/v1/home/g1/node/nabc/cmd",
        "prsm/v1/home/g1/api/join/req",
        "prsm/v1/home//summary",
    ],
)
def test_foreign_topics_are_typed_errors(topic: str) -> None:
    with pytest.raises(TopicError):
        t.parse(topic)


@given(st.text(max_size=80))
def test_parse_never_raises_anything_else(topic: str) -> None:
    with contextlib.suppress(TopicError):
        t.parse(topic)


def test_building_with_an_unsafe_segment_is_refused() -> None:
    for bad in ("+", "#", "a/b", "", "x" * 65, "UPPER"):
        with pytest.raises(TopicError):
            t.node(t.Kind.NODE_STATE, "home", "g1", bad)
