"""The signed envelope: round trips, interoperability with pycose, and typed rejection of bad bytes."""

from __future__ import annotations

import cbor2
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from prsm_edge.errors import LocalError, Reason, RejectedMessage
from prsm_edge.protocol import cbor
from prsm_edge.protocol import messages as m
from prsm_edge.protocol.envelope import (
    ALG_ED25519,
    COSE_SIGN1_TAG,
    Signer,
    node_id_for,
    open_envelope,
)

KEY = SigningKey(bytes(range(32)))
SIGNER = Signer(KEY)

# Values the wire carries: 64-bit integers, finite or not floats (NaN included), any text and bytes.
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
st.register_type_strategy(int, int64)  # type: ignore[arg-type]


def any_message() -> st.SearchStrategy[m.Message]:
    return st.one_of(*(st.builds(cls) for cls in m.MESSAGE_TYPES))


def birth() -> m.NodeBirth:
    return m.NodeBirth(
        node=SIGNER.node_id,
        bdseq=1,
        public_key=SIGNER.public_key,
        device_class="generic",
        software="0.1.0",
        hw_fingerprint="abc",
        resources=[m.ResourceSpec(type=m.ResourceType.COMPUTE_CPU, capacity=2.0, unit="cores")],
    )


def test_seal_and_open_round_trip() -> None:
    data = Signer(KEY).seal(birth(), now_ms=1_700_000_000_000)
    opened = open_envelope(data)
    assert opened.signer == SIGNER.node_id == node_id_for(KEY.verify_key.encode())
    assert isinstance(opened.message, m.NodeBirth)
    assert opened.message.ts == 1_700_000_000_000
    assert opened.message.seq == 1
    assert opened.message.resources[0].type is m.ResourceType.COMPUTE_CPU


def test_wire_form_is_tagged_cose_sign1_with_eddsa_and_kid() -> None:
    tag = cbor2.loads(SIGNER.seal(birth(), now_ms=1))
    assert tag.tag == COSE_SIGN1_TAG
    protected, unprotected, payload, signature = tag.value
    assert cbor2.loads(protected) == {1: -8, 4: SIGNER.public_key}
    assert dict(unprotected) == {}
    assert len(signature) == 64
    # Deterministic: the payload is canonical CBOR, so re-encoding what was decoded gives the same bytes.
    assert cbor.dumps(cbor2.loads(payload)) == payload


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(msg=any_message(), now=st.integers(min_value=0, max_value=2**62))
def test_every_message_type_round_trips(msg: m.Message, now: int) -> None:
    try:
        data = SIGNER.seal(msg, now_ms=now)
    except LocalError:
        # Too large for the payload limits (long random lists): refused at the sender, never emitted.
        return
    opened = open_envelope(data)
    assert type(opened.message) is type(msg)
    assert opened.message.ts == now
    # Same bytes when the decoded message is encoded again (NaN-safe, unlike ==).
    assert cbor.dumps(m.to_wire(opened.message)) == opened.payload


def _mutations() -> st.SearchStrategy[bytes]:
    base = SIGNER.seal(birth(), now_ms=5)

    def flip(data: bytes, pos: int, value: int) -> bytes:
        pos %= len(data)
        return data[:pos] + bytes([value]) + data[pos + 1 :]

    def cut(data: bytes, pos: int) -> bytes:
        return data[: pos % len(data)]

    def insert(data: bytes, pos: int, extra: bytes) -> bytes:
        pos %= len(data) + 1
        return data[:pos] + extra + data[pos:]

    return st.one_of(
        st.binary(max_size=512),
        st.builds(flip, st.just(base), st.integers(0, 10_000), st.integers(0, 255)),
        st.builds(cut, st.just(base), st.integers(0, 10_000)),
        st.builds(insert, st.just(base), st.integers(0, 10_000), st.binary(min_size=1, max_size=16)),
    )


@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_mutations())
def test_random_and_mutated_bytes_raise_only_typed_rejections(data: bytes) -> None:
    try:
        opened = open_envelope(data)
    except RejectedMessage as exc:
        assert isinstance(exc.reason, Reason)
        return
    # A mutation that still verifies can only be one that left signed bytes intact.
    assert opened.signer == SIGNER.node_id


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", Reason.MALFORMED),
        (b"\xff", Reason.MALFORMED),
        (b"\x9f\x01\xff", Reason.MALFORMED),  # indefinite length is not deterministic CBOR
        (cbor2.dumps([1, 2, 3]), Reason.MALFORMED),
        (b"\x81" * 40 + b"\x00", Reason.SIZE),  # nesting too deep
        (b"\x00" * 70_000, Reason.SIZE),
    ],
)
def test_bad_input_reasons(data: bytes, reason: Reason) -> None:
    with pytest.raises(RejectedMessage) as info:
        open_envelope(data)
    assert info.value.reason is reason


def test_tampered_payload_fails_signature() -> None:
    tag = cbor2.loads(SIGNER.seal(birth(), now_ms=5))
    protected, _, payload, signature = tag.value
    other = cbor.dumps(m.to_wire(msgspec.structs.replace(birth(), device_class="jetson", ts=5, seq=1)))
    forged = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, other, signature]))
    with pytest.raises(RejectedMessage) as info:
        open_envelope(forged)
    assert info.value.reason is Reason.BAD_SIGNATURE
    assert payload != other


def test_unknown_key_when_resolver_does_not_know_the_kid() -> None:
    data = SIGNER.seal(birth(), now_ms=5)
    with pytest.raises(RejectedMessage) as info:
        open_envelope(data, resolve=lambda kid: None)
    assert info.value.reason is Reason.UNKNOWN_KEY


def test_unsupported_algorithm_is_refused_and_ed25519_accepted() -> None:
    payload = cbor.dumps(m.to_wire(msgspec.structs.replace(birth(), ts=5, seq=1)))
    for alg, ok in ((-7, False), (ALG_ED25519, True)):
        protected = cbor.dumps({1: alg, 4: SIGNER.public_key})
        sig = KEY.sign(cbor.dumps(["Signature1", protected, b"", payload])).signature
        data = cbor.dumps(cbor2.CBORTag(18, [protected, {}, payload, sig]))
        if ok:
            assert open_envelope(data).signer == SIGNER.node_id
        else:
            with pytest.raises(RejectedMessage) as info:
                open_envelope(data)
            assert info.value.reason is Reason.UNSUPPORTED


def test_newer_version_with_unknown_fields_still_decodes() -> None:
    wire = m.to_wire(msgspec.structs.replace(birth(), ts=5, seq=1, v=7))
    wire["future_field"] = {"x": [1, 2]}
    payload = cbor.dumps(wire)
    protected = cbor.dumps({1: -8, 4: SIGNER.public_key})
    sig = KEY.sign(cbor.dumps(["Signature1", protected, b"", payload])).signature
    opened = open_envelope(cbor.dumps(cbor2.CBORTag(18, [protected, {}, payload, sig])))
    assert isinstance(opened.message, m.NodeBirth)
    assert opened.message.v == 7


def test_sender_refuses_what_receivers_would_reject() -> None:
    too_big = m.ApiRequest(txid="t", method="x", requester="r", params={"n": 2**70})
    with pytest.raises(LocalError):
        SIGNER.seal(too_big, now_ms=1)
