"""The node's side of verification: answer challenges, open segments, and sit on peers' panels.

The agent hands this object the commands and proof-topic messages it receives; it returns the messages
to publish. Proving runs in a worker thread (it is CPU work); everything else is quick.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from prsm_edge.errors import LocalError
from prsm_edge.io import attest, tpm_registration
from prsm_edge.protocol import cbor, proofs
from prsm_edge.protocol.messages import (
    BenchmarkChallenge,
    BenchmarkProof,
    Message,
    ProofOpening,
    VerificationVote,
)

__all__ = ["Attestor", "ProofWork", "TpmUnavailable", "calibrate_cpu_rate", "tpm_attestor"]

log = logging.getLogger(__name__)

_KEEP = 16  # proofs kept for opening, panels pending: both bounded

Prover = Callable[[BenchmarkChallenge], tuple[bytes, list[bytes]]]


@dataclass(frozen=True, slots=True)
class Attestor:
    """An attestation key and how to quote with it (``quote(nonce, claim_hash)``).

    ``registration`` (EK certificate, EK and AK) and ``activate`` (TPM2_ActivateCredential) let the agent
    register the key with its coordinator (:mod:`prsm_edge.io.tpm_registration`); without them the key is
    never registered, so its quotes are never asked for.
    """

    public_key: bytes
    quote: Callable[[bytes, bytes], bytes]
    registration: tpm_registration.RegisterParams | None = None
    activate: Callable[[bytes], bytes] | None = None


class TpmUnavailable(attest.AttestationError):
    """No TPM 2.0 answers here, so this node cannot attest; the message says why."""


def tpm_attestor(workdir: Path, tcti: str | None = None) -> Attestor:
    """Enroll (once) an attestation key with the TPM and quote with it; TpmUnavailable if there is none.

    The registered public key is the AK's TPM2B_PUBLIC, which the verifier also checks is a genuine
    AK (restricted signing key fixed to its TPM). Quotes are the CBOR of :class:`attest.Quote`.
    """
    found = attest.tpm_available(tcti)
    if not found.supported:
        raise TpmUnavailable(f"no TPM attestation on this node: {found.reason}")
    chosen = found.tcti
    key = attest.enroll(workdir, chosen)
    try:  # a key enrolled earlier with another TPM (or before a TPM clear) cannot be loaded: say so now
        attest.quote(key, bytes(32), bytes(32), chosen)
    except attest.AttestationError as exc:
        raise attest.AttestationError(
            f"the attestation key in {workdir} does not work with the TPM at {chosen} "
            f"(enrolled with another TPM, or the TPM was cleared? remove the folder to re-enroll): {exc}"
        ) from exc
    lock = threading.Lock()  # one TPM, no resource manager: one quote at a time

    def quote(nonce: bytes, claim_hash: bytes) -> bytes:
        with lock:
            q = attest.quote(key, nonce, claim_hash, chosen)
        return cbor.dumps(msgspec.to_builtins(q, builtin_types=(bytes,)))

    def activate(credential: bytes) -> bytes:
        with lock:
            return attest.activate_credential(key, credential, chosen)

    algorithm = attest.ek_algorithm(key.ek_public_tpm2b)
    ek_cert = attest.read_ek_certificate(algorithm, chosen)
    if ek_cert is None:
        other = "ecc" if algorithm == "rsa" else "rsa"
        hint = (
            f"; it has one for its {other.upper()} EK: remove {workdir} to enroll under that EK"
            if attest.read_ek_certificate(other, chosen) is not None
            else ""
        )
        log.warning("the TPM at %s has no certificate for its %s EK%s", chosen, algorithm.upper(), hint)
    registration = tpm_registration.RegisterParams(ek_cert or b"", key.ek_public_tpm2b, key.public_tpm2b)
    return Attestor(key.public_tpm2b, quote, registration, activate)


def calibrate_cpu_rate(seconds: float = 0.2) -> float:
    """This machine's single-core rate for the ``cpu`` workload (SHA-256 per second), measured now."""
    size, elapsed, n = 2_000, 0.0, 0
    start = time.perf_counter()
    while elapsed < seconds:
        proofs.run_segment("cpu", b"calibrate", n, size)
        n += 1
        elapsed = time.perf_counter() - start
    return n * size / elapsed


@dataclass
class _Panel:
    challenge: BenchmarkChallenge
    round: int
    min_rate_ratio: float
    proof: BenchmarkProof | None = None
    proof_at: int = 0


@dataclass
class ProofWork:
    """One node's proofs and panel seats."""

    node_id: str
    prover: Prover = proofs.prove
    attestor: Attestor | None = None
    claim_hash: Callable[[], bytes] = lambda: b""
    _proofs: OrderedDict[str, tuple[BenchmarkChallenge, list[bytes]]] = field(default_factory=OrderedDict)
    _panels: OrderedDict[str, _Panel] = field(default_factory=OrderedDict)
    # Proofs seen before our seat on their panel arrived (delivery across topics is not ordered).
    _early: OrderedDict[str, tuple[str, BenchmarkProof, int]] = field(default_factory=OrderedDict)
    proved: int = 0
    voted: int = 0

    async def challenge(self, args: dict[str, object], now_ms: Callable[[], int]) -> Message | None:
        """Run a challenge addressed to us and commit to its results."""
        try:
            ch = msgspec.convert(args.get("challenge"), BenchmarkChallenge)
        except msgspec.ValidationError as exc:
            log.warning("ignoring a malformed challenge: %s", exc)
            return None
        if ch.node != self.node_id:
            return None
        # The quote binds the nonce and our claim, not the results: have the TPM sign while we prove.
        quoting = asyncio.create_task(self._quote(ch)) if ch.attest and self.attestor is not None else None
        start = time.monotonic()
        try:
            root, results = await asyncio.to_thread(self.prover, ch)
        except BaseException as exc:
            if quoting is not None:
                quoting.cancel()
            if not isinstance(exc, proofs.ProofError):
                raise
            log.warning("cannot run challenge %s: %s", ch.challenge_id, exc)
            return None
        elapsed = int((time.monotonic() - start) * 1000)
        self._proofs[ch.challenge_id] = (ch, results)
        while len(self._proofs) > _KEEP:
            self._proofs.popitem(last=False)
        proof = proofs.make_proof(ch, root, elapsed)
        if quoting is not None:
            quote = await quoting
            if quote:
                proof = msgspec.structs.replace(proof, quote=quote)
        self.proved += 1
        log.debug("%s proved %s in %d ms", self.node_id, ch.challenge_id, elapsed)
        return proof

    async def _quote(self, ch: BenchmarkChallenge) -> bytes:
        """A quote for this challenge, or empty (the verifier then records a failed attestation)."""
        assert self.attestor is not None
        try:
            return await asyncio.to_thread(self.attestor.quote, ch.nonce, self.claim_hash())
        except LocalError as exc:
            log.warning("cannot attest for challenge %s: %s", ch.challenge_id, exc)
            return b""

    def open(self, args: dict[str, object]) -> Message | None:
        """Open the segments the revealed salt selects."""
        cid, salt, root = args.get("challenge_id"), args.get("salt"), args.get("root")
        kept = self._proofs.get(cid) if isinstance(cid, str) else None
        if kept is None or not isinstance(salt, bytes) or not isinstance(root, bytes):
            return None
        ch, results = kept
        indices = proofs.open_indices(ch, root, salt)
        return proofs.open_segments(ch, results, indices, salt)

    def sit(self, args: dict[str, object]) -> None:
        """Take a seat on the panel that checks someone else's challenge."""
        try:
            ch = msgspec.convert(args.get("challenge"), BenchmarkChallenge)
        except msgspec.ValidationError as exc:
            log.warning("ignoring a malformed panel seat: %s", exc)
            return
        round_ = args.get("round")
        ratio = args.get("min_rate_ratio", 0.0)
        if ch.node == self.node_id or not isinstance(round_, int) or not isinstance(ratio, (int, float)):
            return
        panel = self._panels[ch.challenge_id] = _Panel(ch, round_, float(ratio))
        early = self._early.pop(ch.challenge_id, None)
        if early is not None and early[0] == ch.node:
            panel.proof, panel.proof_at = early[1], early[2]
        while len(self._panels) > _KEEP:
            self._panels.popitem(last=False)

    async def observe(self, signer: str, msg: Message, now_ms: int) -> Message | None:
        """A message on a peer's proof topic (signed by ``signer``): record it, vote when complete."""
        match msg:
            case BenchmarkProof():
                panel = self._panels.get(msg.challenge_id)
                if panel is None:
                    self._early[msg.challenge_id] = (signer, msg, now_ms)
                    while len(self._early) > 4 * _KEEP:
                        self._early.popitem(last=False)
                elif panel.proof is None and signer == panel.challenge.node:
                    panel.proof, panel.proof_at = msg, now_ms
            case ProofOpening():
                panel = self._panels.get(msg.challenge_id)
                if panel is None or panel.proof is None or signer != panel.challenge.node:
                    return None
                del self._panels[msg.challenge_id]
                verdict = await asyncio.to_thread(
                    proofs.check,
                    panel.challenge,
                    panel.proof,
                    msg,
                    panel.proof_at,
                    min_rate_ratio=panel.min_rate_ratio,
                )
                self.voted += 1
                return VerificationVote(
                    round=panel.round,
                    subject=panel.challenge.node,
                    voter=self.node_id,
                    challenge_id=msg.challenge_id,
                    accept=verdict.accepted,
                    measured_rate=verdict.measured_rate,
                    reason=verdict.reason.value,
                )
        return None
