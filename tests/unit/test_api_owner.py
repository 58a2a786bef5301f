"""Owner authorisation rules (protocol/api.py), the owner registry, and the bounded pending table."""

from __future__ import annotations

import stat
from pathlib import Path

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey

from prsm_edge.node.owners import OwnerRegistry
from prsm_edge.protocol.api import (
    OWNER_REQUEST_LIMIT,
    ApiError,
    ErrorCode,
    Pending,
    check_owner_request,
    seal_request,
)
from prsm_edge.protocol.envelope import Signer

NOW = 1_700_000_000_000
NODE = "nnodeaaaaaaaaaaaaa"


def _signer(seed: int) -> Signer:
    return Signer(SigningKey(bytes([seed]) * 32))


def _req(signer: Signer, method: str = "update", node: str = NODE, ts: int = NOW, **params: object) -> bytes:
    return seal_request(signer, method, {"node": node, **params}, txid="t1", now_ms=ts)


def _check(envelope: bytes, owners: dict[str, bytes], last: dict[str, int] | None = None, **kw: object):  # type: ignore[no-untyped-def]
    seen = last or {}
    return check_owner_request(
        envelope,
        node_id=NODE,
        owners=owners,
        last_seq=seen.get,
        now_ms=NOW,
        **kw,  # type: ignore[arg-type]
    )


def test_a_paired_owner_request_passes_and_names_its_sequence() -> None:
    owner = _signer(1)
    call = _check(_req(owner, settings={"cpu_allocation_percentage": 0.7}), {owner.node_id: owner.public_key})
    assert call.owner == owner.node_id
    assert call.request.params["settings"] == {"cpu_allocation_percentage": 0.7}
    assert call.seq == 1


def test_a_key_that_is_not_paired_is_refused_as_not_owner() -> None:
    owner, stranger = _signer(1), _signer(2)
    with pytest.raises(ApiError) as info:
        _check(_req(stranger), {owner.node_id: owner.public_key})
    assert info.value.code is ErrorCode.NOT_OWNER
    assert "only its owner" in info.value.message


def test_a_replayed_request_is_refused() -> None:
    owner = _signer(1)
    envelope = _req(owner)
    owners = {owner.node_id: owner.public_key}
    call = _check(envelope, owners)
    with pytest.raises(ApiError) as info:
        _check(envelope, owners, {owner.node_id: call.seq})
    assert info.value.code is ErrorCode.REPLAY


def test_an_old_request_is_refused_as_stale() -> None:
    owner = _signer(1)
    with pytest.raises(ApiError) as info:
        _check(_req(owner, ts=NOW - 600_000), {owner.node_id: owner.public_key})
    assert info.value.code is ErrorCode.STALE


def test_a_request_for_another_node_or_method_is_refused() -> None:
    owner = _signer(1)
    owners = {owner.node_id: owner.public_key}
    with pytest.raises(ApiError) as info:
        _check(_req(owner, node="nother"), owners)
    assert info.value.code is ErrorCode.UNKNOWN_NODE
    with pytest.raises(ApiError) as info:
        _check(_req(owner, method="pause"), owners, method_name="configure")
    assert info.value.code is ErrorCode.BAD_REQUEST
    with pytest.raises(ApiError) as info:
        _check(_req(owner, method="status"), owners)
    assert info.value.code is ErrorCode.BAD_REQUEST


def test_a_tampered_or_oversized_request_is_refused() -> None:
    owner = _signer(1)
    tag = cbor2.loads(_req(owner))
    protected, unprotected, payload, signature = tag.value
    forged = cbor2.dumps(
        cbor2.CBORTag(18, [protected, unprotected, payload.replace(b"t1", b"t2"), signature])
    )
    with pytest.raises(ApiError) as info:
        _check(forged, {owner.node_id: owner.public_key})
    assert info.value.code is ErrorCode.UNAUTHORIZED
    with pytest.raises(ApiError) as info:
        _check(_req(owner, blob="x" * OWNER_REQUEST_LIMIT), {owner.node_id: owner.public_key})
    assert info.value.code is ErrorCode.BAD_REQUEST


def test_a_requester_other_than_the_signer_is_refused() -> None:
    from prsm_edge.protocol.messages import ApiRequest

    owner, other = _signer(1), _signer(2)
    forged = owner.seal(
        ApiRequest(txid="t", method="update", requester=other.node_id, params={"node": NODE}), NOW
    )
    with pytest.raises(ApiError) as info:
        _check(forged, {owner.node_id: owner.public_key, other.node_id: other.public_key})
    assert info.value.code is ErrorCode.BAD_REQUEST


# ---- the registry ------------------------------------------------------------------------------
def test_pairing_binds_a_key_once_with_the_code_and_keeps_the_file_private(tmp_path: Path) -> None:
    reg = OwnerRegistry(tmp_path)
    key = _signer(1).public_key
    code = reg.offer_pairing(NOW)
    owner = reg.pair(code.lower(), key, "laptop", NOW + 1000)
    assert reg.keys() == {owner.owner: key}
    assert stat.S_IMODE(reg.path.stat().st_mode) == 0o600
    with pytest.raises(ApiError) as info:  # the code is spent
        reg.pair(code, _signer(2).public_key, "", NOW + 2000)
    assert info.value.code is ErrorCode.NOT_OWNER
    assert len(reg.keys()) == 1


def test_wrong_codes_spend_the_offer_and_an_expired_code_fails(tmp_path: Path) -> None:
    reg = OwnerRegistry(tmp_path)
    code = reg.offer_pairing(NOW)
    for _ in range(5):
        with pytest.raises(ApiError):
            reg.pair("AAAA-BBBB-CCCC-DDDD", _signer(2).public_key, "", NOW)
    with pytest.raises(ApiError):  # five wrong guesses spent it, so the right code is now refused too
        reg.pair(code, _signer(2).public_key, "", NOW)
    code = reg.offer_pairing(NOW)
    with pytest.raises(ApiError) as info:
        reg.pair(code, _signer(2).public_key, "", NOW + 11 * 60 * 1000)
    assert "expired" in info.value.message
    assert reg.keys() == {}


def test_accepted_sequence_numbers_survive_a_new_registry_and_revoke_unpairs(tmp_path: Path) -> None:
    owner = _signer(1)
    OwnerRegistry(tmp_path).add(owner.public_key, "cli", NOW)
    OwnerRegistry(tmp_path).accept_seq(owner.node_id, 42)
    reg = OwnerRegistry(tmp_path)
    assert reg.last_seq(owner.node_id) == 42
    with pytest.raises(ApiError) as info:  # checked again under the lock: a concurrent duplicate loses
        reg.accept_seq(owner.node_id, 42)
    assert info.value.code is ErrorCode.REPLAY
    assert reg.revoke(owner.node_id)
    assert not reg.revoke(owner.node_id)
    assert reg.keys() == {}


# ---- pending calls -----------------------------------------------------------------------------
def test_pending_calls_are_bounded_and_expire() -> None:
    table: Pending[str, int] = Pending(limit=2)
    table.add("a", 1, deadline_ms=100)
    table.add("b", 2, deadline_ms=200)
    with pytest.raises(ApiError) as info:
        table.add("c", 3, deadline_ms=300)
    assert info.value.code is ErrorCode.BUSY
    assert table.pop("b") == 2
    assert table.expired(150) == [("a", 1)]
    assert table.expired(1000) == []
    assert table.pop("a") is None
    assert len(table) == 0


def test_the_documented_test_vector_is_what_the_code_signs_and_accepts() -> None:
    owner = Signer(SigningKey(bytes([1]) * 32), lambda: 7)
    envelope = seal_request(
        owner,
        "pause",
        {"node": "nexamplenode00000", "paused": True},
        txid="0011223344556677",
        now_ms=1767225600000,
    )
    _, _, payload, signature = cbor2.loads(envelope).value
    doc = (Path(__file__).parents[2] / "docs" / "api.md").read_text()
    flat = "".join(doc.split())
    assert owner.node_id == "ngr2q7gf5lh6pzfdn" and owner.node_id in doc
    assert payload.hex() in flat and signature.hex() in flat
    call = check_owner_request(
        envelope,
        node_id="nexamplenode00000",
        owners={owner.node_id: owner.public_key},
        last_seq=lambda _o: None,
        now_ms=1767225600000,
    )
    assert call.request.params["paused"] is True


@given(position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_no_single_byte_change_to_a_signed_request_is_accepted(position: int, flip: int) -> None:
    owner = _signer(1)
    envelope = bytearray(_req(owner, settings={"cpu_allocation_percentage": 0.7}))
    envelope[position % len(envelope)] ^= flip
    # Flipping a byte of the key id makes another (unpaired or invalid) key: refused too.
    with pytest.raises(ApiError) as info:
        _check(bytes(envelope), {owner.node_id: owner.public_key})
    assert info.value.code in (ErrorCode.UNAUTHORIZED, ErrorCode.BAD_REQUEST, ErrorCode.NOT_OWNER)


def test_answers_carry_no_value_json_cannot_hold() -> None:
    from prsm_edge.protocol.api import to_json_safe

    data = {"t": float("nan"), "x": [float("inf"), 1.5], "b": b"\x01", "n": {"k": -float("inf")}}
    assert to_json_safe(data) == {"t": None, "x": [None, 1.5], "b": "AQ==", "n": {"k": None}}
