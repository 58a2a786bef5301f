"""The uplink's pieces: the pacer, the on-disk buffer (real SQLite), the drill-down commitment, the bridge."""

from __future__ import annotations

from pathlib import Path

import pytest
from nacl.signing import SigningKey

from prsm_edge.errors import ConfigError, Reason, RejectedMessage
from prsm_edge.gateway.bridge import render_bridge
from prsm_edge.io.stream_buffer import StreamBuffer
from prsm_edge.protocol.claims import ClaimSet, check_openings, openings_to_wire
from prsm_edge.protocol.envelope import Signer
from prsm_edge.protocol.messages import ResourceClaim, ResourceSpec, ResourceType
from prsm_edge.protocol.uplink import Pacer


def test_pacer_allows_a_burst_then_the_rate() -> None:
    p = Pacer(rate=10, burst=3)
    assert [p.delay_ms(0) for _ in range(3)] == [0, 0, 0]
    wait = p.delay_ms(0)
    assert 90 <= wait <= 110
    assert p.delay_ms(wait) == 0
    sent = sum(1 for now in range(wait, wait + 10_000, 10) if p.delay_ms(now) == 0)
    assert 99 <= sent <= 102  # ten seconds at 10/s


def test_buffer_is_ordered_bounded_durable_and_counts_what_it_drops(tmp_path: Path) -> None:
    buf = StreamBuffer(tmp_path / "up.sqlite", max_items=3)
    for i in range(5):
        assert buf.put("lease", f"item{i}".encode(), expires_ms=10_000, now_ms=i) == i + 1
    assert len(buf) == 3 and buf.dropped == 2
    head = buf.head()
    assert head is not None and (head.seq, head.item) == (3, b"item2")  # the oldest went first
    assert head.seq - buf.last_acked - 1 == 2  # the next record declares both drops
    buf.ack(3)
    buf.expire(4)
    buf.close()
    again = StreamBuffer(tmp_path / "up.sqlite", max_items=3)
    head = again.head()
    assert head is not None and head.seq == 5 and len(again) == 1
    assert (again.last_acked, again.expired, again.dropped) == (3, 1, 2)
    assert head.seq - again.last_acked - 1 == 1  # the expired one is declared too
    assert again.put("evidence", b"x", 1, 1) == 6  # numbering survives a restart


def _claims(n: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        s = Signer(SigningKey.generate())
        claim = ResourceClaim(
            node=s.node_id,
            resources=[ResourceSpec(type=ResourceType.COMPUTE_CPU, capacity=i + 1, unit="cores")],
        )
        out.append((s.node_id, s.seal(claim, 1)))
    return out


def test_drill_down_opens_signed_claims_against_the_root() -> None:
    cs = ClaimSet(_claims(5))
    result = openings_to_wire(cs.root, len(cs), cs.open([4, 1]))
    opened = check_openings(result, cs.root, 5, [4, 1])
    assert [o.signer for o in opened] == [cs.units[1], cs.units[4]]


def test_drill_down_refuses_tampered_or_missing_openings() -> None:
    cs = ClaimSet(_claims(4))
    good = openings_to_wire(cs.root, 4, cs.open([2]))
    other = ClaimSet(_claims(4))
    swapped = {**good, "openings": [{**good["openings"][0], "leaf": other.envelopes[2]}]}
    with pytest.raises(RejectedMessage) as exc:
        check_openings(swapped, cs.root, 4, [2])
    assert exc.value.reason is Reason.BAD_SIGNATURE
    with pytest.raises(RejectedMessage):
        check_openings(good, cs.root, 4, [2, 3])  # 3 was asked and not opened
    with pytest.raises(RejectedMessage):
        check_openings(good, cs.root, 5, [2])  # another tree size than the summary's


def test_bridge_relays_named_subtrees_one_way_each_on_mqtt_311() -> None:
    text = render_bridge(
        site="lab",
        group="g1",
        gateway="ngw",
        region_site="eu",
        region="r1",
        uplinks=["mqtt://10.0.0.1:1884", "mqtt://10.0.0.2:1884"],
        username="g1",
        password="pw",
    )
    lines = [line.split() for line in text.splitlines() if line and not line.startswith("#")]
    conf = {parts[0]: parts[1:] for parts in lines if parts[0] != "topic"}
    assert conf["address"] == ["10.0.0.1:1884", "10.0.0.2:1884"]
    assert conf["bridge_protocol_version"] == ["mqttv311"] and conf["cleansession"] == ["false"]
    assert conf["restart_timeout"] == ["2", "60"] and conf["notifications"] == ["true"]
    assert conf["remote_username"] == ["g1"]
    bridged = [parts[1:] for parts in lines if parts[0] == "topic"]
    assert all(b[1] in ("in", "out") and "#" not in b[0] for b in bridged)
    assert ["api/region-task/req/+", "in", "1", "prsm/v1/lab/g1/", "prsm/v1/eu/r1/unit/lab/g1/"] in bridged
    with pytest.raises(ConfigError):
        render_bridge(
            site="lab", group="g1", gateway="n", region_site="eu", region="r1", uplinks=["ws://x:1/m"]
        )
