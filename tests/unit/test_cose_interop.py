"""Interoperability with an independent COSE implementation (pycose), in both directions."""

from __future__ import annotations

import cbor2
from nacl.signing import SigningKey
from pycose.algorithms import EdDSA
from pycose.headers import KID, Algorithm
from pycose.keys import OKPKey
from pycose.keys.curves import Ed25519
from pycose.messages import Sign1Message

from prsm_edge.protocol import cbor
from prsm_edge.protocol import messages as m
from prsm_edge.protocol.envelope import Signer, open_envelope

KEY = SigningKey(bytes(range(1, 33)))


def _pycose_key() -> OKPKey:
    return OKPKey(crv=Ed25519, d=bytes(KEY), x=bytes(KEY.verify_key))


def test_pycose_verifies_our_messages() -> None:
    data = Signer(KEY).seal(m.Heartbeat(node="n1", cpu_util=0.5, mem_util=0.25), now_ms=42)
    # cbor2 >= 6 decodes inside a tag as tuples/immutable maps, which pycose's decode() rejects
    # (PLATFORM.md); hand pycose the four items ourselves.
    protected, unprotected, payload, signature = cbor2.loads(data).value
    msg = Sign1Message.from_cose_obj([protected, dict(unprotected), payload, signature], True)
    msg.key = _pycose_key()
    assert msg.verify_signature()
    assert msg.phdr[Algorithm] is EdDSA
    assert msg.phdr[KID] == bytes(KEY.verify_key)
    assert cbor2.loads(msg.payload)["t"] == "hb"


def test_pycose_rejects_a_tampered_message_of_ours() -> None:
    data = Signer(KEY).seal(m.Heartbeat(node="n1", cpu_util=0.5, mem_util=0.25), now_ms=42)
    protected, unprotected, payload, signature = cbor2.loads(data).value
    bad = bytes([signature[0] ^ 1]) + signature[1:]
    msg = Sign1Message.from_cose_obj([protected, dict(unprotected), payload, bad], True)
    msg.key = _pycose_key()
    assert not msg.verify_signature()


def test_we_verify_pycose_messages() -> None:
    body = m.to_wire(m.Heartbeat(node="n1", cpu_util=0.5, mem_util=0.25, seq=9, ts=42))
    msg = Sign1Message(phdr={Algorithm: EdDSA, KID: bytes(KEY.verify_key)}, payload=cbor.dumps(body))
    msg.key = _pycose_key()
    opened = open_envelope(msg.encode())
    assert isinstance(opened.message, m.Heartbeat)
    assert opened.message.seq == 9
    assert opened.signer == Signer(KEY).node_id
