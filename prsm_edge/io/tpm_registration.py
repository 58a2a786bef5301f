"""Registering a node's TPM attestation key (AK) with its coordinator, in the manner of Keylime's registrar.

A quote only proves something if the key that signed it lives in a genuine TPM. Two checks establish
that before any quote counts, both at registration:

1. **EK certificate chain.** The node sends its endorsement key's certificate (read from the TPM's NV
   index), the EK public key and the AK public key (API method ``attest_register``). The coordinator checks
   that the certificate certifies that EK and chains to a manufacturer CA it was configured to accept
   (:mod:`prsm_edge.io.ek_certificate`); the AK must be a restricted signing key fixed to its TPM.
2. **Credential activation.** The coordinator wraps a fresh 32-byte secret with ``TPM2_MakeCredential``
   for that EK and the AK's name (no TPM needed: ``tpm2_makecredential -T none``). Only the TPM holding
   the EK's private key *and* a loaded object with exactly that AK name can unwrap it
   (``TPM2_ActivateCredential``). The node answers (``attest_activate``) with
   ``HMAC-SHA256(secret, node id ‖ challenge id)``, so the secret never travels and the proof is bound to
   this node and this exchange.

Only then is the AK registered for that node; the verifier asks that node for quotes and checks them
against the registered AK. One EK backs one node at a time: a later registration of the same EK by
another node moves it. Registrations persist (SQLite) and are checked again against the CA set each
time the coordinator starts, so removing a CA withdraws what it vouched for.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hashlib
import hmac
import logging
import secrets
import sqlite3
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import msgspec

from prsm_edge import paths
from prsm_edge.errors import LocalError, PrsmEdgeError, StorageError
from prsm_edge.io import attest
from prsm_edge.protocol.group import Member
from prsm_edge.protocol.messages import ApiResponse, CoordState

__all__ = [
    "ACTIVATE",
    "METHODS",
    "REGISTER",
    "ActivateParams",
    "RegisterParams",
    "Registrant",
    "Registration",
    "RegistrationRefused",
    "TpmRegistrar",
    "activation_proof",
    "default_ca_dir",
    "keep_registered",
    "register_with_coordinator",
]

log = logging.getLogger(__name__)

REGISTER: Final = "attest_register"
ACTIVATE: Final = "attest_activate"
METHODS: Final = (REGISTER, ACTIVATE)
_MAX_CERT: Final = 4096
_MAX_PUBLIC: Final = 1024
_PENDING_TTL_MS: Final = 60_000
_MAX_PENDING: Final = 256
_MIN_INTERVAL_MS: Final = 5_000  # one attempt per node per 5 s: each costs a tpm2_makecredential run


def default_ca_dir() -> Path:
    """Where an operator puts the TPM manufacturer CA certificates it accepts; prsm-edge ships none."""
    return paths.config_dir() / "tpm-ca"


class RegistrationRefused(LocalError):
    """The coordinator refused to register a node's AK; the message says which check failed."""


class RegisterParams(msgspec.Struct, frozen=True):
    """``attest_register``: the EK certificate (DER, may be empty), the EK and AK as TPM2B_PUBLIC."""

    ek_certificate: bytes
    ek_public: bytes
    ak_public: bytes


class ActivateParams(msgspec.Struct, frozen=True):
    """``attest_activate``: the challenge answered and HMAC(secret, node ‖ challenge), or the TPM's error."""

    challenge: str
    proof: bytes = b""
    error: str = ""


class Registration(msgspec.Struct, frozen=True):
    """An AK bound by credential activation to an EK certified by a configured CA."""

    node: str
    ak_public: bytes
    ek_public: bytes
    ek_certificate: bytes
    anchor: str
    registered_ms: int


@dataclass(slots=True)
class _Pending:
    challenge: str
    secret: bytes
    params: RegisterParams
    anchor: str
    expires_ms: int


def activation_proof(secret: bytes, node: str, challenge: str) -> bytes:
    """What the node returns: HMAC-SHA256 keyed by the activated secret over its id and the challenge."""
    return hmac.new(secret, f"prsm-edge activation\0{node}\0{challenge}".encode(), hashlib.sha256).digest()


def _ek_identity(ek_public: bytes) -> bytes:
    """One TPM's EK whatever attribute bits a TPM2B_PUBLIC carries: a hash of its key numbers."""
    k = attest.public_numbers(ek_public)
    return hashlib.sha256(f"{k.algorithm}:{k.modulus}:{k.exponent}:{k.curve}:{k.x}:{k.y}".encode()).digest()


class TpmRegistrar:
    """The coordinator's side: verify, challenge, register; owns every node's registered AK."""

    def __init__(self, path: Path, ca_dir: Path | None, *, max_entries: int = 1024) -> None:
        self.path = path
        self.max_entries = max_entries
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._refused: OrderedDict[str, str] = OrderedDict()
        self._revoked: list[str] = []
        self._attempts: OrderedDict[str, int] = OrderedDict()
        self.registrations: dict[str, Registration] = {}
        try:
            from prsm_edge.io import ek_certificate
        except ImportError:  # the optional `attest` extra (python-cryptography) is missing
            self._unavailable = "python-cryptography is not installed (pip install 'prsm-edge[attest]')"
            self._cas: Any = None
        else:
            self._unavailable = ""
            self._cas = ek_certificate.load_ca_set(ca_dir)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute("CREATE TABLE IF NOT EXISTS registrations (node TEXT PRIMARY KEY, record BLOB)")
            rows = self._db.execute("SELECT record FROM registrations").fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the TPM registrations {path}: {exc}") from None
        now = datetime.datetime.now(datetime.UTC)
        for (record,) in rows:
            reg = msgspec.msgpack.decode(record, type=Registration)
            reason = self._chain(reg.ek_certificate, reg.ek_public, now)[1]
            if reason:
                log.warning("dropping the TPM registration of %s: %s", reg.node, reason)
                self._delete(reg.node)
                self._refused[reg.node] = f"registration withdrawn: {reason}"
            else:
                self.registrations[reg.node] = reg

    @property
    def ca_subjects(self) -> list[str]:
        """The manufacturer CAs this registrar accepts."""
        return list(self._cas.subjects) if self._cas is not None else []

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    # ---- what the verifier sees ----------------------------------------------------------------
    def attestation_key(self, member: Member) -> bytes:
        """The AK to ask this member's quotes from: its registered AK, if its birth still names it."""
        reg = self.registrations.get(member.node)
        if reg is None or reg.ak_public != member.attestation_key:
            return b""
        return reg.ak_public

    def view(self, member: Member) -> Member:
        """``member`` as the verifier should see it: only a registered AK counts as its attestation key."""
        key = self.attestation_key(member)
        return member if key == member.attestation_key else dataclasses.replace(member, attestation_key=key)

    def status(self, member: Member) -> dict[str, object]:
        """Whether this member's quotes can count toward hardware_attested, and why (not)."""
        reg = self.registrations.get(member.node)
        if self.attestation_key(member):
            assert reg is not None
            return {"registered": True, "reason": f"AK registered; EK certificate chains to {reg.anchor}"}
        if reg is not None:
            why = "the attestation key in the node's birth is not the one registered; it must register again"
        elif member.node in self._refused:
            why = self._refused[member.node]
        elif member.attestation_key:
            why = "the node has an attestation key but has not completed registration"
        else:
            why = "the node offers no TPM attestation key"
        return {"registered": False, "reason": why}

    def drain_revoked(self) -> list[str]:
        """Nodes whose registration another node's activation of the same EK took over since last asked."""
        revoked, self._revoked = self._revoked, []
        return revoked

    # ---- the exchange ------------------------------------------------------------------------
    async def serve(
        self, member: Member, method: str, params: dict[str, Any], now_ms: int
    ) -> dict[str, object]:
        """Answer ``attest_register`` / ``attest_activate``; RegistrationRefused says why not."""
        try:
            if method == REGISTER:
                return await self._register(member, msgspec.convert(params, RegisterParams), now_ms)
            return self._activate(member, msgspec.convert(params, ActivateParams), now_ms)
        except msgspec.ValidationError as exc:
            raise self._refuse(member.node, f"malformed {method} request: {exc}") from None

    def _refuse(self, node: str, reason: str) -> RegistrationRefused:
        log.warning("TPM registration of %s refused: %s", node, reason)
        self._refused[node] = reason
        self._refused.move_to_end(node)
        while len(self._refused) > self.max_entries:
            self._refused.popitem(last=False)
        return RegistrationRefused(reason)

    def _chain(self, cert: bytes, ek_public: bytes, now: datetime.datetime) -> tuple[str, str]:
        """(anchor, "") when the EK certificate chains to a configured CA, else ("", why not)."""
        if self._unavailable:
            return "", self._unavailable
        from prsm_edge.io import ek_certificate

        verdict = ek_certificate.check_ek_certificate(cert, ek_public, self._cas, now)
        return (verdict.anchor, "") if verdict.chained else ("", verdict.reason)

    async def _register(self, member: Member, p: RegisterParams, now_ms: int) -> dict[str, object]:
        node = member.node
        last = self._attempts.get(node)
        if last is not None and 0 <= now_ms - last < _MIN_INTERVAL_MS:
            raise RegistrationRefused("registering again too soon; wait a few seconds")
        self._attempts[node] = now_ms
        self._attempts.move_to_end(node)
        while len(self._attempts) > self.max_entries:
            self._attempts.popitem(last=False)
        if len(p.ek_certificate) > _MAX_CERT or max(len(p.ek_public), len(p.ak_public)) > _MAX_PUBLIC:
            raise self._refuse(node, "EK certificate or public keys larger than allowed")
        try:
            attest.validate_ak(p.ak_public)
            attest.public_numbers(p.ek_public)
        except attest.QuoteRejected as exc:
            raise self._refuse(node, str(exc)) from None
        if p.ak_public != member.attestation_key:
            raise self._refuse(node, "the AK to register is not the attestation key in this node's birth")
        now = datetime.datetime.fromtimestamp(now_ms / 1000, datetime.UTC)
        anchor, problem = self._chain(p.ek_certificate, p.ek_public, now)
        if problem:
            raise self._refuse(node, problem)
        secret = secrets.token_bytes(32)
        try:
            credential = await asyncio.to_thread(attest.make_credential, p.ek_public, p.ak_public, secret)
        except PrsmEdgeError as exc:
            raise self._refuse(node, f"cannot make the credential: {exc}") from None
        challenge = secrets.token_hex(16)
        self._pending[node] = _Pending(challenge, secret, p, anchor, now_ms + _PENDING_TTL_MS)
        self._pending.move_to_end(node)
        while len(self._pending) > _MAX_PENDING:
            self._pending.popitem(last=False)
        return {"challenge": challenge, "credential": credential}

    def _activate(self, member: Member, p: ActivateParams, now_ms: int) -> dict[str, object]:
        node = member.node
        pending = self._pending.get(node)
        if pending is None or not hmac.compare_digest(pending.challenge.encode(), p.challenge.encode()):
            raise self._refuse(node, "no credential is outstanding for this challenge")
        del self._pending[node]
        if now_ms > pending.expires_ms:
            raise self._refuse(node, "the credential was activated too late; register again")
        if p.error:
            raise self._refuse(node, f"credential activation failed on the node's TPM: {p.error[:200]}")
        if not hmac.compare_digest(p.proof, activation_proof(pending.secret, node, pending.challenge)):
            raise self._refuse(node, "credential activation failed: the returned proof is wrong")
        reg = Registration(
            node=node,
            ak_public=pending.params.ak_public,
            ek_public=pending.params.ek_public,
            ek_certificate=pending.params.ek_certificate,
            anchor=pending.anchor,
            registered_ms=now_ms,
        )
        ek = _ek_identity(reg.ek_public)
        for other in [
            n for n, r in self.registrations.items() if n != node and _ek_identity(r.ek_public) == ek
        ]:
            log.warning("TPM of %s is now registered by %s; %s loses its registration", other, node, other)
            self._remove(other, f"the same TPM was registered by {node}")
            self._revoked.append(other)
        self._store(reg)
        self._refused.pop(node, None)
        log.info("registered the TPM attestation key of %s (EK chains to %s)", node, reg.anchor)
        return {"registered": True, "anchor": reg.anchor}

    # ---- storage -----------------------------------------------------------------------------
    def _store(self, reg: Registration) -> None:
        self.registrations[reg.node] = reg
        try:
            self._db.execute(
                "INSERT OR REPLACE INTO registrations VALUES (?, ?)", (reg.node, msgspec.msgpack.encode(reg))
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot store the TPM registration in {self.path}: {exc}") from None
        while len(self.registrations) > self.max_entries:
            oldest = min(self.registrations.values(), key=lambda r: r.registered_ms)
            self._remove(oldest.node, "evicted: too many registrations")

    def _remove(self, node: str, why: str) -> None:
        self.registrations.pop(node, None)
        self._refused[node] = f"registration withdrawn: {why}"
        self._delete(node)

    def _delete(self, node: str) -> None:
        try:
            self._db.execute("DELETE FROM registrations WHERE node = ?", (node,))
        except sqlite3.Error as exc:
            raise StorageError(f"cannot update the TPM registrations in {self.path}: {exc}") from None


# ------------------------------------------------------------------------------------ node's side
Call = Callable[[str, dict[str, object]], Awaitable[ApiResponse]]


async def register_with_coordinator(
    call: Call, node: str, params: RegisterParams, activate: Callable[[bytes], bytes]
) -> str:
    """Register this node's AK: send the EK certificate, activate the credential, return the proof.

    Returns the CA the coordinator says the EK chains to; raises :class:`RegistrationRefused` with the
    coordinator's reason when it refuses (the node stays below hardware_attested).
    """
    resp = await call(REGISTER, msgspec.to_builtins(params, builtin_types=(bytes,)))
    if not resp.ok:
        raise RegistrationRefused(resp.error)
    challenge, credential = resp.result.get("challenge"), resp.result.get("credential")
    if not isinstance(challenge, str) or not isinstance(credential, bytes):
        raise RegistrationRefused("the coordinator's answer carries no credential")
    answer: dict[str, object] = {"challenge": challenge}
    try:
        secret = await asyncio.to_thread(activate, credential)
        answer["proof"] = activation_proof(secret, node, challenge)
    except attest.AttestationError as exc:
        answer["error"] = str(exc)
    resp = await call(ACTIVATE, answer)
    if not resp.ok:
        raise RegistrationRefused(resp.error)
    return str(resp.result.get("anchor", ""))


class Registrant(Protocol):
    """What :func:`keep_registered` needs of an agent."""

    node_id: str
    born: asyncio.Event
    coordinator: CoordState | None

    async def call(self, method: str, params: dict[str, object], wait_s: float = ...) -> ApiResponse: ...


async def keep_registered(
    agent: Registrant, params: RegisterParams, activate: Callable[[bytes], bytes], *, poll_s: float = 1.0
) -> None:
    """Register with every coordinator run the agent is born into (once each); runs until cancelled."""
    done: tuple[str, int] | None = None
    while True:
        await agent.born.wait()
        coord = agent.coordinator
        run = (coord.coordinator, coord.epoch) if coord is not None else None
        if run is None or run == done:
            await asyncio.sleep(poll_s)
            continue
        try:
            anchor = await register_with_coordinator(agent.call, agent.node_id, params, activate)
        except RegistrationRefused as exc:
            log.warning("%s: TPM attestation key not registered: %s", agent.node_id, exc)
            done = run
        except TimeoutError:
            log.info("%s: no answer to the TPM registration; trying again", agent.node_id)
            await asyncio.sleep(5 * poll_s)
        else:
            log.info("%s: TPM attestation key registered (EK chains to %s)", agent.node_id, anchor)
            done = run
