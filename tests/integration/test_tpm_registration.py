"""Registering a TPM attestation key: EK certificate chain and credential activation, on real swtpms.

The software TPMs are made by swtpm_setup with EK certificates from a local CA of their own (their
'manufacturer'); the registrar trusts that CA only where a test says so.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from prsm_edge.cli import main
from prsm_edge.io import attest
from prsm_edge.io.tpm_registration import (
    RegisterParams,
    RegistrationRefused,
    TpmRegistrar,
    default_ca_dir,
    register_with_coordinator,
)
from prsm_edge.node.prover import Attestor, tpm_attestor
from prsm_edge.protocol.group import Member
from prsm_edge.protocol.messages import ApiResponse
from tests.integration.test_attest import LocalCa, SoftTpm, _require


@pytest.fixture
def maker(tmp_path: Path) -> LocalCa:
    """The CA that makes the honest software TPMs."""
    for tool in ("swtpm", "swtpm_setup", "tpm2_quote", "tpm2_makecredential"):
        _require(tool)
    return LocalCa(tmp_path / "maker")


@pytest.fixture
def tpms(tmp_path: Path) -> Iterator[Callable[..., SoftTpm]]:
    """Start software TPMs (optionally made by a CA); all stopped afterwards."""
    started: list[SoftTpm] = []

    def start(name: str, ca: LocalCa | None = None) -> SoftTpm:
        tpm = SoftTpm(tmp_path / f"swtpm-{name}", ca)
        started.append(tpm)
        return tpm

    try:
        yield start
    finally:
        for tpm in started:
            tpm.stop()


def _member(node: str, ak: bytes) -> Member:
    return Member(
        node=node,
        public_key=b"",
        bdseq=1,
        device_class="test",
        hw_fingerprint="",
        resources=[],
        attestation_key=ak,
    )


_CLOCK = itertools.count(int(time.time() * 1000) + 3_600_000, 10_000)  # 10 s apart, after the CAs were made


async def _register(
    registrar: TpmRegistrar, member: Member, params: RegisterParams, activate: Callable[[bytes], bytes]
) -> str:
    """The node's side of the exchange against the registrar, with the API's answers in between."""
    now = next(_CLOCK)

    async def call(method: str, p: dict[str, object]) -> ApiResponse:
        try:
            result = await registrar.serve(member, method, p, now)
        except RegistrationRefused as exc:
            return ApiResponse(txid="t", method=method, ok=False, error=str(exc))
        return ApiResponse(txid="t", method=method, ok=True, result=result)

    return await register_with_coordinator(call, member.node, params, activate)


def _params(a: Attestor) -> tuple[RegisterParams, Callable[[bytes], bytes]]:
    assert a.registration is not None and a.activate is not None
    return a.registration, a.activate


async def test_certified_tpm_registers_and_only_then_the_verifier_sees_its_ak(
    maker: LocalCa, tpms: Callable[..., SoftTpm], tmp_path: Path
) -> None:
    tpm = tpms("a", maker)
    node = tpm_attestor(tmp_path / "ak", tpm.tcti)
    params, activate = _params(node)
    assert params.ek_certificate.startswith(b"\x30"), "the EK certificate read from NV index 0x01c00002"
    assert attest.ek_algorithm(params.ek_public) == "rsa", "the AK is made under the certified (RSA) EK"
    member = _member("node-a", node.public_key)

    db = tmp_path / "coord" / "tpm.sqlite"
    registrar = TpmRegistrar(db, maker.trusted())
    assert sorted(registrar.ca_subjects) == ["CN=swtpm-localca", "CN=swtpm-localca-rootca"]
    # A birth's key alone is not registered: the verifier would not ask this node for quotes.
    assert registrar.view(member).attestation_key == b""
    assert registrar.status(member) == {
        "registered": False,
        "reason": "the node has an attestation key but has not completed registration",
    }

    anchor = await _register(registrar, member, params, activate)
    assert anchor.startswith("CN=swtpm-localca")
    assert registrar.view(member).attestation_key == node.public_key
    assert registrar.status(member)["registered"] is True
    # A birth that names another AK (re-enrolled) is not covered by the registration.
    other_birth = _member("node-a", b"another key")
    assert registrar.view(other_birth).attestation_key == b""
    assert "must register again" in str(registrar.status(other_birth)["reason"])

    # Registrations survive a restart, and are checked again against the CAs configured then.
    registrar.close()
    again = TpmRegistrar(db, maker.trusted())
    assert again.view(member).attestation_key == node.public_key
    again.close()
    without_ca = TpmRegistrar(db, default_ca_dir())
    assert without_ca.view(member).attestation_key == b""
    assert "registration withdrawn" in str(without_ca.status(member)["reason"])
    without_ca.close()


async def test_default_ca_set_refuses_a_software_tpm(
    maker: LocalCa, tpms: Callable[..., SoftTpm], tmp_path: Path
) -> None:
    assert not default_ca_dir().exists(), "prsm-edge ships no manufacturer CA"
    registrar = TpmRegistrar(tmp_path / "coord" / "tpm.sqlite", default_ca_dir())
    node = tpm_attestor(tmp_path / "ak", tpms("a", maker).tcti)
    member = _member("node-a", node.public_key)
    with pytest.raises(RegistrationRefused, match="no TPM manufacturer CA is configured"):
        await _register(registrar, member, *_params(node))
    assert registrar.view(member).attestation_key == b""
    status = registrar.status(member)
    assert status["registered"] is False and "no TPM manufacturer CA is configured" in str(status["reason"])

    # A TPM without any EK certificate (a bare swtpm) is refused even where the maker's CA is trusted.
    trusting = TpmRegistrar(tmp_path / "coord2" / "tpm.sqlite", maker.trusted())
    bare = tpm_attestor(tmp_path / "bare-ak", tpms("bare").tcti)
    assert bare.registration is not None and bare.registration.ek_certificate == b""
    with pytest.raises(RegistrationRefused, match="no EK certificate"):
        await _register(trusting, _member("node-b", bare.public_key), *_params(bare))


async def test_an_ak_not_resident_in_the_certified_tpm_fails_activation(
    maker: LocalCa, tpms: Callable[..., SoftTpm], tmp_path: Path
) -> None:
    certified = tpm_attestor(tmp_path / "ak-a", tpms("a", maker).tcti)
    other = tpm_attestor(tmp_path / "ak-b", tpms("b", maker).tcti)
    registrar = TpmRegistrar(tmp_path / "coord" / "tpm.sqlite", maker.trusted())
    genuine, activate_a = _params(certified)
    _, activate_b = _params(other)
    # The forger presents a genuine, certified EK (A's) with an AK that lives in another TPM (B).
    forged = RegisterParams(genuine.ek_certificate, genuine.ek_public, other.public_key)
    member = _member("forger", other.public_key)
    for activate in (activate_a, activate_b):  # neither TPM holds both that EK and that AK
        with pytest.raises(RegistrationRefused, match="activation failed on the node's TPM"):
            await _register(registrar, member, forged, activate)
    with pytest.raises(RegistrationRefused, match="the returned proof is wrong"):
        await _register(registrar, member, forged, lambda _credential: os.urandom(32))
    # Each attempt costs the coordinator a MakeCredential: at most one per node per few seconds.
    now = next(_CLOCK)
    await registrar.serve(member, "attest_register", msgspec.to_builtins(forged), now)
    with pytest.raises(RegistrationRefused, match="too soon"):
        await registrar.serve(member, "attest_register", msgspec.to_builtins(forged), now + 1000)
    assert registrar.view(member).attestation_key == b""
    assert "activation failed" in str(registrar.status(member)["reason"])

    # A's certificate with B's EK: the certificate certifies another key.
    mixed = RegisterParams(genuine.ek_certificate, other.registration.ek_public, other.public_key)  # type: ignore[union-attr]
    with pytest.raises(RegistrationRefused, match="certifies another key"):
        await _register(registrar, member, mixed, activate_b)


async def test_a_forged_ek_certificate_fails_the_chain(
    maker: LocalCa, tpms: Callable[..., SoftTpm], tmp_path: Path
) -> None:
    # Another CA with the very same names signs this TPM's EK certificate: to the verifier, a forgery.
    impostor = LocalCa(tmp_path / "impostor")
    node = tpm_attestor(tmp_path / "ak", tpms("forged", impostor).tcti)
    tpms("honest", maker)
    registrar = TpmRegistrar(tmp_path / "coord" / "tpm.sqlite", maker.trusted())
    member = _member("node-f", node.public_key)
    with pytest.raises(RegistrationRefused, match="signature does not verify against the configured CA"):
        await _register(registrar, member, *_params(node))
    assert registrar.view(member).attestation_key == b""


async def test_one_tpm_backs_one_node_at_a_time(
    maker: LocalCa, tpms: Callable[..., SoftTpm], tmp_path: Path
) -> None:
    tpm = tpms("shared", maker)
    first = tpm_attestor(tmp_path / "ak-1", tpm.tcti)
    second = tpm_attestor(tmp_path / "ak-2", tpm.tcti)
    registrar = TpmRegistrar(tmp_path / "coord" / "tpm.sqlite", maker.trusted())
    assert first.public_key != second.public_key
    m1, m2 = _member("node-1", first.public_key), _member("node-2", second.public_key)
    await _register(registrar, m1, *_params(first))
    assert registrar.drain_revoked() == []
    await _register(registrar, m2, *_params(second))
    assert registrar.view(m2).attestation_key == second.public_key
    assert registrar.view(m1).attestation_key == b"", "the same TPM cannot vouch for two nodes"
    assert registrar.drain_revoked() == ["node-1"]
    assert "registered by node-2" in str(registrar.status(m1)["reason"])


def test_attest_status_says_whether_the_ek_chains_to_a_configured_ca(
    maker: LocalCa, tpms: Callable[..., SoftTpm], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tpm = tpms("a", maker)
    common = ["attest", "status", "--tcti", tpm.tcti, "--dir", str(tmp_path / "ak")]
    assert main(common) == 0
    out = capsys.readouterr().out
    assert "ek    uncertified  no TPM manufacturer CA is configured" in out, out
    assert "would not count this TPM toward hardware_attested" in out

    assert main([*common, "--ca-dir", str(maker.trusted()), "--json"]) == 0
    ek = json.loads(capsys.readouterr().out)["ek"]
    assert ek["chained"] is True and ek["algorithm"] == "rsa" and ek["certificate"] is True
    assert ek["reason"].startswith("EK certificate chains to CN=swtpm-localca")

    # A software TPM without certificates, even with the CA configured: uncertified, and why.
    bare = tpms("bare")
    assert main(["attest", "status", "--tcti", bare.tcti, "--ca-dir", str(maker.trusted())]) == 0
    assert "ek    uncertified  the TPM has no EK certificate" in capsys.readouterr().out
