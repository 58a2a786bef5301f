"""TPM 2.0 attestation against a real software TPM (swtpm): enroll, quote, verify, and every refusal."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from prsm_edge.cli import main
from prsm_edge.io import attest
from prsm_edge.io.attest import AttestationError, QuoteRejected
from tests.conftest import free_port, wait_port

NONCE = bytes.fromhex("0011223344556677889900aabbccddee")
CLAIM = hashlib.sha256(b'{"cpu": 4, "memory": 8}').digest()


def _require(tool: str) -> None:
    if shutil.which(tool) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is not installed; .ci/run installs swtpm, swtpm-tools and tpm2-tools")
        pytest.skip(f"{tool} is not installed (apt-get install swtpm swtpm-tools tpm2-tools)")


def _port_pair() -> int:
    """A free port P whose neighbour P+1 (the swtpm control port the swtpm TCTI assumes) is free too."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two adjacent free ports")


class LocalCa:
    """A swtpm-localca certificate authority of its own: the 'manufacturer' of the software TPMs it makes.

    Every LocalCa names its CAs alike (``CN=swtpm-localca``, ``CN=swtpm-localca-rootca``) with keys of its
    own, so a certificate from one is a forgery to a verifier that trusts another.
    """

    def __init__(self, folder: Path) -> None:
        _require("swtpm_setup")
        folder.mkdir(parents=True)
        self.folder = folder
        (folder / "localca.conf").write_text(
            f"statedir = {folder}/state\nsigningkey = {folder}/state/signkey.pem\n"
            f"issuercert = {folder}/state/issuercert.pem\ncertserial = {folder}/state/certserial\n"
        )
        (folder / "localca.options").write_text("--platform-manufacturer prsm-test\n--platform-model swtpm\n")
        self.setup_conf = folder / "swtpm_setup.conf"
        self.setup_conf.write_text(
            "create_certs_tool = swtpm_localca\n"
            f"create_certs_tool_config = {folder}/localca.conf\n"
            f"create_certs_tool_options = {folder}/localca.options\n"
            "active_pcr_banks = sha256\n"
        )

    def manufacture(self, state: Path) -> None:
        """Make a TPM state with EKs and their certificates in NV, signed by this CA (swtpm_setup)."""
        state.mkdir(parents=True)
        subprocess.run(
            [
                *("swtpm_setup", "--tpm2", "--tpmstate", str(state), "--create-ek-cert", "--overwrite"),
                *("--config", str(self.setup_conf), "--logfile", str(self.folder / "setup.log")),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def trusted(self) -> Path:
        """A CA folder as an operator would configure it: this CA's root and issuing certificates only."""
        assert (self.folder / "state").exists(), "the CA is created with the first TPM it makes"
        folder = self.folder / "trusted"
        folder.mkdir(exist_ok=True)
        for name in ("issuercert.pem", "swtpm-localca-rootca-cert.pem"):
            shutil.copy(self.folder / "state" / name, folder / name)
        return folder


class SoftTpm:
    """A running swtpm with its own state folder; made by ``ca`` (with EK certificates) when given."""

    def __init__(self, state: Path, ca: LocalCa | None = None) -> None:
        if ca is None:
            state.mkdir(parents=True)
        else:
            ca.manufacture(state)
        self.port = _port_pair()
        self.process = subprocess.Popen(
            [
                *("swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}"),
                *("--server", f"type=tcp,port={self.port},bindaddr=127.0.0.1"),
                *("--ctrl", f"type=tcp,port={self.port + 1},bindaddr=127.0.0.1"),
                *("--flags", "not-need-init,startup-clear"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)
        self.tcti = f"swtpm:host=127.0.0.1,port={self.port}"

    def extend(self, pcr: int, digest: bytes) -> None:
        env = dict(os.environ, TPM2TOOLS_TCTI=self.tcti)
        subprocess.run(["tpm2_pcrextend", f"{pcr}:sha256={digest.hex()}"], env=env, check=True)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def swtpm(tmp_path: Path) -> Iterator[SoftTpm]:
    """A fresh software TPM on free ports; stopped afterwards."""
    for tool in ("swtpm", "tpm2_quote", "tpm2_checkquote"):
        _require(tool)
    tpm = SoftTpm(tmp_path / "swtpm")
    try:
        yield tpm
    finally:
        tpm.stop()


def test_available_reports_the_software_tpm(swtpm: SoftTpm) -> None:
    found = attest.tpm_available(swtpm.tcti)
    assert found.supported, found.reason
    assert found.tcti == swtpm.tcti
    assert found.details["family"] == "2.0"


def test_enroll_quote_verify_and_refusals(swtpm: SoftTpm, tmp_path: Path) -> None:
    started = time.monotonic()
    keydir = tmp_path / "ak"
    key = attest.enroll(keydir, swtpm.tcti)
    assert key.public_pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert attest.enroll(keydir, swtpm.tcti) == key, "enrolling twice must keep the registered key"
    assert attest.load_key(keydir) == key
    assert (keydir / "ak.priv").stat().st_mode & 0o077 == 0

    # A measured boot step: PCR 7 moves from zeros to SHA-256(zeros ‖ event digest).
    event = hashlib.sha256(b"secure boot policy").digest()
    swtpm.extend(7, event)
    q = attest.quote(key, NONCE, CLAIM, swtpm.tcti)
    values = attest.verify_quote(key.public_pem, q, NONCE, CLAIM)
    assert sorted(values) == list(attest.DEFAULT_PCRS)
    assert values[7] == hashlib.sha256(bytes(32) + event).digest()
    assert values[0] == bytes(32)
    # The TPM2B_PUBLIC form of the AK verifies too, and golden values are compared.
    attest.verify_quote(key.public_tpm2b, q, NONCE, CLAIM, expected_pcrs={7: values[7]})
    with pytest.raises(QuoteRejected) as exc:
        attest.verify_quote(key.public_pem, q, NONCE, CLAIM, expected_pcrs={7: bytes(32)})
    assert exc.value.reason == "pcrs"

    # The EK's public key in place of the registered AK: refused before any signature check.
    with pytest.raises(QuoteRejected) as exc:
        attest.verify_quote(key.ek_public_tpm2b, q, NONCE, CLAIM)
    assert exc.value.reason == "ak"

    # Another nonce or another claim hash: refused.
    with pytest.raises(QuoteRejected) as exc:
        attest.verify_quote(key.public_pem, q, bytes(16), CLAIM)
    assert exc.value.reason == "nonce"
    with pytest.raises(QuoteRejected) as exc:
        attest.verify_quote(key.public_pem, q, NONCE, hashlib.sha256(b"more").digest())
    assert exc.value.reason == "nonce"

    # PCR values that do not match the signed digest (first byte of the first value), a bit flipped in
    # the signature, a different PCR selection than asked for, garbage: refused.
    pcrs = bytearray(q.pcrs)
    pcrs[132 + 4 + 4 + 2] ^= 1  # TPML_PCR_SELECTION (132 B), count, TPML_DIGEST count, TPM2B size
    with pytest.raises(QuoteRejected) as exc:
        attest.verify_quote(key.public_pem, msgspec.structs.replace(q, pcrs=bytes(pcrs)), NONCE, CLAIM)
    assert exc.value.reason == "pcrs"
    sig = bytearray(q.signature)
    sig[-1] ^= 1
    with pytest.raises(QuoteRejected) as exc:
        attest.verify_quote(key.public_pem, msgspec.structs.replace(q, signature=bytes(sig)), NONCE, CLAIM)
    assert exc.value.reason == "signature"
    with pytest.raises(QuoteRejected) as exc:
        attest.verify_quote(key.public_pem, q, NONCE, CLAIM, pcrs=[0, 1])
    assert exc.value.reason == "pcrs"
    with pytest.raises(QuoteRejected) as exc:
        attest.verify_quote(key.public_pem, msgspec.structs.replace(q, message=q.message[:20]), NONCE, CLAIM)
    assert exc.value.reason == "malformed"

    # A quote signed by another AK (another TPM) does not verify with the registered key.
    other = SoftTpm(tmp_path / "other-swtpm")
    try:
        other_key = attest.enroll(tmp_path / "other-ak", other.tcti)
        assert other_key.public_pem != key.public_pem
        forged = attest.quote(other_key, NONCE, CLAIM, other.tcti)
        attest.verify_quote(other_key.public_pem, forged, NONCE, CLAIM)
        with pytest.raises(QuoteRejected) as exc:
            attest.verify_quote(key.public_pem, forged, NONCE, CLAIM)
        assert exc.value.reason == "signature"
    finally:
        other.stop()
    assert time.monotonic() - started < 20


def test_credential_activation_binds_ak_to_ek(swtpm: SoftTpm, tmp_path: Path) -> None:
    key = attest.enroll(tmp_path / "ak", swtpm.tcti)
    assert attest.ak_name(key.public_tpm2b) == key.name, "the name tpm2_createak reported"
    secret = os.urandom(32)
    credential = attest.make_credential(key.ek_public_tpm2b, key.public_tpm2b, secret)
    assert secret not in credential
    assert attest.activate_credential(key, credential, swtpm.tcti) == secret

    # The EK is a decryption key, not a restricted signing key: never accepted as an AK.
    with pytest.raises(QuoteRejected) as exc:
        attest.validate_ak(key.ek_public_tpm2b)
    assert exc.value.reason == "ak"

    other = SoftTpm(tmp_path / "other-swtpm")
    try:
        other_key = attest.enroll(tmp_path / "other-ak", other.tcti)
        # A credential for the other TPM's EK, or naming another AK, cannot be opened here.
        for_other_ek = attest.make_credential(other_key.ek_public_tpm2b, key.public_tpm2b, secret)
        with pytest.raises(AttestationError, match="tpm2_activatecredential failed"):
            attest.activate_credential(key, for_other_ek, swtpm.tcti)
        for_other_ak = attest.make_credential(key.ek_public_tpm2b, other_key.public_tpm2b, secret)
        with pytest.raises(AttestationError, match="tpm2_activatecredential failed"):
            attest.activate_credential(key, for_other_ak, swtpm.tcti)
    finally:
        other.stop()


def test_quote_rejects_bad_inputs_locally(swtpm: SoftTpm, tmp_path: Path) -> None:
    key = attest.enroll(tmp_path / "ak", swtpm.tcti)
    with pytest.raises(AttestationError, match="nonce"):
        attest.quote(key, b"short", CLAIM, swtpm.tcti)
    with pytest.raises(AttestationError, match="claim hash"):
        attest.quote(key, NONCE, b"not a hash", swtpm.tcti)
    with pytest.raises(AttestationError, match="PCR"):
        attest.quote(key, NONCE, CLAIM, swtpm.tcti, pcrs=[24])


def test_absent_without_a_tpm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _require("tpm2_getcap")
    if Path("/dev/tpmrm0").exists() or Path("/dev/tpm0").exists():
        pytest.skip("this machine has a TPM device")
    monkeypatch.delenv("TPM2TOOLS_TCTI", raising=False)
    found = attest.tpm_available(None)
    assert not found.supported
    assert "/dev/tpmrm0" in found.reason
    nothing = attest.tpm_available(f"swtpm:host=127.0.0.1,port={free_port()}")
    assert not nothing.supported and "does not answer" in nothing.reason
    missing = attest.tpm_available("device:/dev/no-such-tpm")
    assert not missing.supported and "/dev/no-such-tpm does not exist" in missing.reason
    with pytest.raises(AttestationError, match="no TPM"):
        attest.enroll(tmp_path / "ak", None)
    sgx, gpu = attest.sgx_available(), attest.gpu_attestation_available()
    assert not sgx.supported and sgx.reason
    assert not gpu.supported and gpu.reason


def test_tools_missing_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    found = attest.tpm_available("swtpm:port=1")
    assert not found.supported and "tpm2-tools not installed" in found.reason


def test_cli_enroll_quote_verify(swtpm: SoftTpm, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keydir = tmp_path / "cli-ak"
    common = ["--tcti", swtpm.tcti, "--dir", str(keydir)]
    assert main(["attest", "status", *common]) == 0
    out = capsys.readouterr().out
    assert "tpm2  supported" in out and "sgx   unsupported" in out

    assert main(["attest", "enroll", *common]) == 0
    pem = capsys.readouterr().out
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    (tmp_path / "ak.pem").write_text(pem)

    claim = CLAIM.hex()
    assert main(["attest", "quote", *common, "--nonce", NONCE.hex(), "--claim-hash", claim]) == 0
    quote_json = capsys.readouterr().out
    assert set(json.loads(quote_json)) == {"message", "signature", "pcrs", "pcr_selection"}
    (tmp_path / "quote.json").write_text(quote_json)

    verify = ["attest", "verify", str(tmp_path / "quote.json"), "--ak", str(tmp_path / "ak.pem")]
    assert main([*verify, "--nonce", NONCE.hex(), "--claim-hash", claim]) == 0
    assert "quote verified" in capsys.readouterr().out
    assert main([*verify, "--nonce", "ff" * 16, "--claim-hash", claim]) == 2
    assert "quote rejected (nonce)" in capsys.readouterr().err
