"""The signed envelope: COSE_Sign1 (RFC 9052) with EdDSA over a deterministic-CBOR payload.

Wire form: ``#6.18([protected, {}, payload, signature])`` where ``protected`` is the bstr-wrapped map
``{1: -8, 4: kid}`` (alg EdDSA, key id), ``payload`` is the deterministic CBOR of a typed message, and
the signature is Ed25519 over the COSE ``Sig_structure`` ``["Signature1", protected, h'', payload]``.
Any standard COSE library verifies it. The key id is the signer's raw 32-byte Ed25519 public key, so a
message is self-certifying and the node id (derived from that key) cannot be claimed by another key.

Opening untrusted bytes goes: size → bounded structure scan → header checks → key lookup → signature →
bounded payload decode → typed message. Every refusal is a :class:`RejectedMessage` with a reason.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import cbor2
import msgspec
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import SigningKey, VerifyKey

from prsm_edge.errors import LocalError, Reason, RejectedMessage
from prsm_edge.protocol import cbor
from prsm_edge.protocol.messages import AnyMessage, Message, from_wire, to_wire

__all__ = [
    "ALG_ED25519",
    "ALG_EDDSA",
    "COSE_SIGN1_TAG",
    "ENVELOPE_LIMITS",
    "PAYLOAD_LIMITS",
    "Opened",
    "Signer",
    "node_id_for",
    "open_envelope",
    "self_certifying",
]

COSE_SIGN1_TAG: Final = 18
ALG_EDDSA: Final = -8  # what deployed COSE libraries verify
ALG_ED25519: Final = -19  # RFC 9864 fully specified algorithm; accepted on input
_HDR_ALG: Final = 1
_HDR_KID: Final = 4
_ACCEPTED_ALGS: Final = frozenset({ALG_EDDSA, ALG_ED25519})

ENVELOPE_LIMITS: Final = cbor.Limits(
    max_bytes=64 * 1024, max_depth=3, max_items=16, allowed_tags=frozenset({COSE_SIGN1_TAG})
)
PAYLOAD_LIMITS: Final = cbor.Limits(max_bytes=64 * 1024, max_depth=8, max_items=4096)
_HEADER_LIMITS: Final = cbor.Limits(max_bytes=256, max_depth=1, max_items=16)


@functools.lru_cache(maxsize=4096)
def node_id_for(public_key: bytes) -> str:
    """The node id belonging to an Ed25519 public key: ``n`` + 80 bits of its SHA-256 in base32."""
    digest = hashlib.sha256(public_key).digest()[:10]
    return "n" + base64.b32encode(digest).decode("ascii").lower()


def _sig_structure(protected: bytes, payload: bytes) -> bytes:
    return cbor.dumps(["Signature1", protected, b"", payload])


class Signer:
    """Seals messages with one Ed25519 key, stamping each with the next sequence number and a time."""

    def __init__(self, key: SigningKey, next_seq: Callable[[], int] | None = None) -> None:
        self._key = key
        self.public_key: bytes = bytes(key.verify_key)
        self.node_id = node_id_for(self.public_key)
        self._protected = cbor.dumps({_HDR_ALG: ALG_EDDSA, _HDR_KID: self.public_key})
        self._counter = 0
        self._next_seq = next_seq if next_seq is not None else self._count

    def _count(self) -> int:
        self._counter += 1
        return self._counter

    def seal(self, msg: Message, now_ms: int, *, seq: int | None = None) -> bytes:
        """Sign ``msg`` as of ``now_ms`` with the next sequence number (or ``seq``) and encode it."""
        stamped = msgspec.structs.replace(msg, seq=self._next_seq() if seq is None else seq, ts=now_ms)
        payload = cbor.dumps(to_wire(stamped))
        try:
            # Never emit what a receiver must refuse (a bignum, an oversized list, ...).
            cbor.check_bounds(payload, PAYLOAD_LIMITS)
        except RejectedMessage as exc:
            raise LocalError(f"cannot send {type(msg).__name__}: {exc.detail}") from None
        signature = self._key.sign(_sig_structure(self._protected, payload)).signature
        return cbor.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [self._protected, {}, payload, signature]))


@dataclass(frozen=True, slots=True)
class Opened:
    """A message whose envelope verified: the signer, the typed body and the payload bytes as signed."""

    kid: bytes
    signer: str
    message: AnyMessage
    payload: bytes


KeyResolver = Callable[[bytes], VerifyKey | None]


@functools.lru_cache(maxsize=4096)
def self_certifying(kid: bytes) -> VerifyKey | None:
    """Resolve a key id that is itself a 32-byte Ed25519 public key."""
    if len(kid) != 32:
        return None
    try:
        return VerifyKey(kid)
    except (CryptoError, ValueError, TypeError):
        return None


def open_envelope(
    data: bytes,
    resolve: KeyResolver = self_certifying,
    *,
    limits: cbor.Limits = ENVELOPE_LIMITS,
    payload_limits: cbor.Limits = PAYLOAD_LIMITS,
) -> Opened:
    """Verify and decode one envelope from the network; raise :class:`RejectedMessage` on any fault."""
    outer = cbor.loads(data, limits)
    items = outer.value if isinstance(outer, cbor2.CBORTag) else outer
    if isinstance(outer, cbor2.CBORTag) and outer.tag != COSE_SIGN1_TAG:
        raise RejectedMessage(Reason.MALFORMED, f"CBOR tag {outer.tag} is not COSE_Sign1")
    if not isinstance(items, (list, tuple)) or len(items) != 4:
        raise RejectedMessage(Reason.MALFORMED, "COSE_Sign1 must be an array of four items")
    protected, unprotected, payload, signature = items
    if not isinstance(protected, bytes) or not isinstance(payload, bytes):
        raise RejectedMessage(Reason.MALFORMED, "protected header and payload must be byte strings")
    if not isinstance(signature, bytes) or len(signature) != 64:
        raise RejectedMessage(Reason.MALFORMED, "an Ed25519 signature is 64 bytes")
    if not hasattr(unprotected, "keys"):
        raise RejectedMessage(Reason.MALFORMED, "unprotected header must be a map")
    header = cbor.loads(protected, _HEADER_LIMITS) if protected else {}
    if not hasattr(header, "get"):
        raise RejectedMessage(Reason.MALFORMED, "protected header must be a map")
    alg = header.get(_HDR_ALG)
    if alg not in _ACCEPTED_ALGS:
        raise RejectedMessage(Reason.UNSUPPORTED, f"algorithm {alg!r} is not EdDSA/Ed25519")
    kid = header.get(_HDR_KID)
    if not isinstance(kid, bytes):
        raise RejectedMessage(Reason.MALFORMED, "protected header has no key id")
    cbor.check_bounds(payload, payload_limits)
    key = resolve(kid)
    if key is None:
        raise RejectedMessage(Reason.UNKNOWN_KEY, f"no key known for kid {kid[:8].hex()}…")
    try:
        key.verify(_sig_structure(protected, payload), signature)
    except BadSignatureError:
        raise RejectedMessage(Reason.BAD_SIGNATURE, "signature does not verify") from None
    body = cbor.loads_checked(payload)
    if not isinstance(body, dict):
        raise RejectedMessage(Reason.MALFORMED, "payload must be a CBOR map")
    try:
        message = from_wire(body)
    except msgspec.ValidationError as exc:
        raise RejectedMessage(Reason.MALFORMED, f"payload does not fit the schema: {exc}") from None
    if message.v < 1:
        raise RejectedMessage(Reason.UNSUPPORTED, f"protocol version {message.v}")
    return Opened(kid=kid, signer=node_id_for(bytes(key)), message=message, payload=payload)
