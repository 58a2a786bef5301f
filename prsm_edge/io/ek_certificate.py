"""Endorsement-key certificates: does this EK belong to a TPM a configured manufacturer CA vouches for?

A TPM maker burns into every TPM an EK certificate it signed (NV index 0x01C00002 for the RSA EK,
0x01C0000A for the ECC one). A verifier that holds the maker's CA certificates can tell a genuine TPM's
EK from any other key. Which makers to trust is the operator's choice: a folder of PEM (or DER)
certificates, roots and intermediates alike, in the manner of Keylime's ``tpm_cert_store``. prsm-edge
ships none, so by default no EK is certified and nothing reaches ``hardware_attested``; a test (or a lab)
that wants its software TPM accepted names the software TPM's own CA explicitly.

:func:`check_ek_certificate` answers with an :class:`EkVerdict` (never raises for a bad certificate):
the certificate parses, certifies exactly the EK public key presented, is within its validity period,
and chains, signature by signature, to one of the configured certificates (intermediates must be CAs).
What it does not check: revocation (makers publish no CRLs that a LAN coordinator could fetch), the
TPM model/firmware attributes in the certificate, and certificates python-cryptography cannot parse
(some field TPMs carry malformed ones; Keylime re-encodes those with pyasn1).
"""

from __future__ import annotations

import datetime
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import msgspec
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from prsm_edge.errors import ConfigError
from prsm_edge.io import attest

__all__ = [
    "INSTALL_HINT",
    "CaSet",
    "EkVerdict",
    "check_ek_certificate",
    "load_ca_set",
]

log = logging.getLogger(__name__)

_MAX_CA_FILES: Final = 256
_MAX_CA_FILE_BYTES: Final = 256 * 1024
_MAX_DEPTH: Final = 5
INSTALL_HINT: Final = "the python package `cryptography` is not installed (pip install 'prsm-edge[attest]')"


@dataclass(frozen=True)
class CaSet:
    """The manufacturer CA certificates a verifier accepts, where they came from, and files skipped."""

    certificates: tuple[x509.Certificate, ...] = ()
    source: str = "none configured"
    skipped: tuple[str, ...] = field(default_factory=tuple)

    @property
    def subjects(self) -> list[str]:
        """The CAs' subject names, for status output."""
        return [c.subject.rfc4514_string() for c in self.certificates]


class EkVerdict(msgspec.Struct, frozen=True):
    """Whether an EK certificate chains to a configured CA; ``reason`` says why not (or which CA)."""

    chained: bool
    reason: str
    issuer: str = ""
    anchor: str = ""
    fingerprint: str = ""  # SHA-256 of the DER certificate, hex


def load_ca_set(directory: Path | None) -> CaSet:
    """Every certificate in ``directory`` (``*.pem``, ``*.crt``, ``*.cer``, ``*.der``); empty if absent."""
    if directory is None:
        return CaSet()
    if not directory.exists():
        return CaSet(source=f"{directory} (absent)")
    if not directory.is_dir():
        raise ConfigError(f"the TPM CA folder {directory} is not a folder")
    found: list[x509.Certificate] = []
    skipped: list[str] = []
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in (".pem", ".crt", ".cer", ".der"))
    for path in files[:_MAX_CA_FILES]:
        try:
            data = path.read_bytes()[: _MAX_CA_FILE_BYTES + 1]
            if len(data) > _MAX_CA_FILE_BYTES:
                raise ValueError("larger than 256 KiB")
            if b"-----BEGIN CERTIFICATE-----" in data:
                found += x509.load_pem_x509_certificates(data)
            else:
                found.append(x509.load_der_x509_certificate(data))
        except (OSError, ValueError) as exc:
            skipped.append(f"{path.name}: {exc}")
    if len(files) > _MAX_CA_FILES:
        skipped.append(f"{len(files) - _MAX_CA_FILES} files beyond the first {_MAX_CA_FILES}")
    for problem in skipped:
        log.warning("TPM CA folder %s: skipped %s", directory, problem)
    unique = {c.fingerprint(hashes.SHA256()): c for c in found}
    return CaSet(tuple(unique.values()), str(directory), tuple(skipped))


def _valid_at(cert: x509.Certificate, now: datetime.datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return constraints.ca


def _key_matches(cert: x509.Certificate, ek: attest.PublicKeyNumbers) -> bool:
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        return ek.algorithm == "rsa" and (numbers.n, numbers.e) == (ek.modulus, ek.exponent)
    if isinstance(key, ec.EllipticCurvePublicKey):
        point = key.public_numbers()
        return ek.algorithm == "ecc" and (key.curve.name, point.x, point.y) == (ek.curve, ek.x, ek.y)
    return False


def check_ek_certificate(
    cert_der: bytes,
    ek_public_tpm2b: bytes,
    cas: CaSet,
    now: datetime.datetime,
    intermediates: Sequence[bytes] = (),
) -> EkVerdict:
    """Whether ``cert_der`` certifies this EK and chains to a CA in ``cas`` at time ``now`` (UTC)."""
    fingerprint = hashlib.sha256(cert_der).hexdigest()
    if not cert_der:
        return EkVerdict(False, "the TPM has no EK certificate (nothing to chain to a manufacturer CA)")
    try:
        leaf = x509.load_der_x509_certificate(cert_der)
        ek = attest.public_numbers(ek_public_tpm2b)
        matches = _key_matches(leaf, ek)
    except (ValueError, UnsupportedAlgorithm, attest.QuoteRejected) as exc:
        return EkVerdict(False, f"the EK certificate or EK is malformed: {exc}", fingerprint=fingerprint)
    issuer = leaf.issuer.rfc4514_string()
    if not matches:
        return EkVerdict(
            False, "the EK certificate certifies another key than the EK", issuer, "", fingerprint
        )
    if not _valid_at(leaf, now):
        return EkVerdict(False, "the EK certificate is outside its validity period", issuer, "", fingerprint)
    if not cas.certificates:
        reason = (
            f"no TPM manufacturer CA is configured ({cas.source}), so no EK certificate is trusted; "
            f"this one is issued by {issuer}"
        )
        return EkVerdict(False, reason, issuer, "", fingerprint)
    anchors = {c.fingerprint(hashes.SHA256()) for c in cas.certificates}
    pool: list[x509.Certificate] = list(cas.certificates)
    for der in intermediates[:4]:
        try:
            pool.append(x509.load_der_x509_certificate(der))
        except ValueError:
            continue
    current, problem = leaf, ""
    for _depth in range(_MAX_DEPTH):
        named = [c for c in pool if c.subject == current.issuer]
        if not named:
            problem = f"{current.issuer.rfc4514_string()} is not a configured manufacturer CA"
            break
        parent = None
        for candidate in named:
            try:
                current.verify_directly_issued_by(candidate)
            except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
                continue
            parent = candidate
            break
        if parent is None:
            problem = (
                f"the signature does not verify against the configured CA named "
                f"{current.issuer.rfc4514_string()} (forged, or from another CA of that name)"
            )
            break
        if not _valid_at(parent, now):
            problem = f"CA {parent.subject.rfc4514_string()} is outside its validity period"
            break
        if parent.fingerprint(hashes.SHA256()) in anchors:
            anchor = parent.subject.rfc4514_string()
            return EkVerdict(True, f"EK certificate chains to {anchor}", issuer, anchor, fingerprint)
        if not _is_ca(parent):
            problem = f"{parent.subject.rfc4514_string()} signed a certificate but is not a CA"
            break
        current = parent
    else:
        problem = f"no configured CA within {_MAX_DEPTH} certificates"
    return EkVerdict(False, f"the EK certificate does not chain: {problem}", issuer, "", fingerprint)
