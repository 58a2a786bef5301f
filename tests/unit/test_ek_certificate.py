"""EK certificate chains and the registrar's refusals, with certificates made here (no TPM needed)."""

from __future__ import annotations

import datetime
import struct
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from prsm_edge.io import attest
from prsm_edge.io.ek_certificate import CaSet, check_ek_certificate, load_ca_set
from prsm_edge.io.tpm_registration import RegistrationRefused, TpmRegistrar
from prsm_edge.protocol.group import Member

NOW = datetime.datetime(2027, 6, 1, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)

Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    key: Key,
    issuer: str,
    signer: Key,
    *,
    ca: bool | None = True,
    start: datetime.datetime = NOW - 365 * DAY,
    end: datetime.datetime = NOW + 365 * DAY,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    return builder.sign(signer, hashes.SHA256())


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _rsa_tpm2b(key: rsa.RSAPrivateKey) -> bytes:
    """A TPM2B_PUBLIC as the standard RSA EK template makes it (exponent 0 meaning 65537)."""
    modulus = key.public_key().public_numbers().n.to_bytes(256)
    body = struct.pack(">HHIH", 0x0001, 0x000B, 0x000300B2, 0)  # type, nameAlg, attributes, no policy
    body += struct.pack(">HHHHHI", 0x0006, 128, 0x0043, 0x0010, 2048, 0)  # AES-128-CFB, no scheme
    body += struct.pack(">H", len(modulus)) + modulus
    return struct.pack(">H", len(body)) + body


def _ecc_tpm2b(key: ec.EllipticCurvePrivateKey) -> bytes:
    numbers = key.public_key().public_numbers()
    body = struct.pack(">HHIH", 0x0023, 0x000B, 0x000300B2, 0)
    body += struct.pack(">HHHHHH", 0x0006, 128, 0x0043, 0x0010, 0x0003, 0x0010)  # P-256, no KDF
    for coordinate in (numbers.x, numbers.y):
        body += struct.pack(">H", 32) + coordinate.to_bytes(32)
    return struct.pack(">H", len(body)) + body


class Maker:
    """A TPM maker: a root CA, an issuing CA under it, and an EK certificate it issued."""

    def __init__(self, name: str = "Maker") -> None:
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = _cert(f"{name} Root", self.root_key, f"{name} Root", self.root_key)
        self.issuing_key = ec.generate_private_key(ec.SECP256R1())
        self.issuing = _cert(f"{name} EK CA", self.issuing_key, f"{name} Root", self.root_key)
        self.ek = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ek_cert = _cert("ek", self.ek, f"{name} EK CA", self.issuing_key, ca=False)


@pytest.fixture(scope="module")
def maker() -> Maker:
    return Maker()


def test_the_ek_public_key_is_read_from_tpm2b_public() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    numbers = attest.public_numbers(_rsa_tpm2b(rsa_key))
    assert (numbers.algorithm, numbers.modulus, numbers.exponent) == (
        "rsa",
        rsa_key.public_key().public_numbers().n,
        65537,
    )
    ecc_key = ec.generate_private_key(ec.SECP256R1())
    point = attest.public_numbers(_ecc_tpm2b(ecc_key))
    assert (point.algorithm, point.curve, point.x) == (
        "ecc",
        "secp256r1",
        ecc_key.public_key().public_numbers().x,
    )
    for junk in (b"", b"\x00\x02ab", _rsa_tpm2b(rsa_key)[:100]):
        with pytest.raises(attest.QuoteRejected) as exc:
            attest.public_numbers(junk)
        assert exc.value.reason == "ek"


def test_an_ek_certificate_chains_through_configured_or_presented_intermediates(maker: Maker) -> None:
    ek = _rsa_tpm2b(maker.ek)
    both = CaSet((maker.root, maker.issuing))
    verdict = check_ek_certificate(_der(maker.ek_cert), ek, both, NOW)
    assert verdict.chained and verdict.anchor == "CN=Maker EK CA" and verdict.issuer == "CN=Maker EK CA"
    root_only = CaSet((maker.root,))
    verdict = check_ek_certificate(
        _der(maker.ek_cert), ek, root_only, NOW, intermediates=[_der(maker.issuing)]
    )
    assert verdict.chained and verdict.anchor == "CN=Maker Root"
    verdict = check_ek_certificate(_der(maker.ek_cert), ek, root_only, NOW)
    assert not verdict.chained and "CN=Maker EK CA is not a configured manufacturer CA" in verdict.reason


def test_ek_certificate_refusals(maker: Maker) -> None:
    ek = _rsa_tpm2b(maker.ek)
    cas = CaSet((maker.root, maker.issuing))
    nothing = check_ek_certificate(_der(maker.ek_cert), ek, CaSet(), NOW)
    assert not nothing.chained and "no TPM manufacturer CA is configured" in nothing.reason

    other_key = _rsa_tpm2b(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    assert "certifies another key" in check_ek_certificate(_der(maker.ek_cert), other_key, cas, NOW).reason

    later = check_ek_certificate(_der(maker.ek_cert), ek, cas, NOW + 400 * DAY)
    assert not later.chained and "outside its validity period" in later.reason

    # A maker of the same names with its own keys: its certificates are forgeries to this CA set.
    impostor = Maker()
    forged = check_ek_certificate(_der(impostor.ek_cert), _rsa_tpm2b(impostor.ek), cas, NOW)
    assert not forged.chained and "signature does not verify against the configured CA" in forged.reason

    # An intermediate that is not a CA cannot extend a chain.
    leaf_signer = ec.generate_private_key(ec.SECP256R1())
    not_ca = _cert("Maker EK CA 2", leaf_signer, "Maker Root", maker.root_key, ca=False)
    ek_cert = _cert("ek", maker.ek, "Maker EK CA 2", leaf_signer, ca=False)
    verdict = check_ek_certificate(_der(ek_cert), ek, CaSet((maker.root,)), NOW, intermediates=[_der(not_ca)])
    assert not verdict.chained and "is not a CA" in verdict.reason

    garbage = check_ek_certificate(b"\x30\x03\x02\x01\x00", ek, cas, NOW)
    assert not garbage.chained and "malformed" in garbage.reason
    assert "no EK certificate" in check_ek_certificate(b"", ek, cas, NOW).reason


def test_ca_folder_loading(maker: Maker, tmp_path: Path) -> None:
    folder = tmp_path / "tpm-ca"
    assert load_ca_set(folder).certificates == () and "absent" in load_ca_set(folder).source
    folder.mkdir()
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (maker.root, maker.issuing))
    (folder / "bundle.pem").write_bytes(pem)
    (folder / "root-again.der").write_bytes(_der(maker.root))
    (folder / "junk.crt").write_bytes(b"not a certificate")
    (folder / "notes.txt").write_text("ignored: not a certificate file name")
    cas = load_ca_set(folder)
    assert sorted(cas.subjects) == ["CN=Maker EK CA", "CN=Maker Root"], "duplicates counted once"
    assert len(cas.skipped) == 1 and cas.skipped[0].startswith("junk.crt")


def _member(ak: bytes = b"") -> Member:
    return Member(
        node="n1",
        public_key=b"",
        bdseq=1,
        device_class="t",
        hw_fingerprint="",
        resources=[],
        attestation_key=ak,
    )


async def test_registrar_refuses_malformed_and_unsolicited_requests(tmp_path: Path) -> None:
    registrar = TpmRegistrar(tmp_path / "tpm.sqlite", None)
    member = _member(b"\x00\x01")
    assert registrar.status(_member()) == {
        "registered": False,
        "reason": "the node offers no TPM attestation key",
    }
    with pytest.raises(RegistrationRefused, match="malformed attest_register"):
        await registrar.serve(member, "attest_register", {"ek_certificate": 5}, 0)
    with pytest.raises(RegistrationRefused, match="no credential is outstanding"):
        await registrar.serve(member, "attest_activate", {"challenge": "é" * 8, "proof": b"x"}, 10_000)
    with pytest.raises(RegistrationRefused, match="quote rejected \\(ak\\)"):
        params = {"ek_certificate": b"", "ek_public": b"", "ak_public": b"\x00\x01"}
        await registrar.serve(member, "attest_register", params, 20_000)
    with pytest.raises(RegistrationRefused, match="larger than allowed"):
        params = {"ek_certificate": bytes(5000), "ek_public": b"", "ak_public": b""}
        await registrar.serve(member, "attest_register", params, 30_000)
    assert "larger than allowed" in str(registrar.status(member)["reason"])
    registrar.close()
