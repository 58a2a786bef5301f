"""Hardware attestation: TPM 2.0 quotes over a challenge, in the manner of Keylime's push model.

The node creates an attestation key (AK) once (:func:`enroll`), under the endorsement key (EK) whose
certificate the manufacturer stored (:func:`read_ek_certificate`), and registers it with the verifier
through the EK certificate chain and credential activation (:func:`make_credential`,
:func:`activate_credential`; the exchange is :mod:`prsm_edge.io.tpm_registration`). For each challenge
it asks the TPM for a quote over the qualifying data ``SHA-256(nonce ‖ claim_hash)`` and the selected
PCRs (:func:`quote`). The verifier (:func:`verify_quote`) checks, without a TPM, that the quote is a
TPM-generated quote, that its qualifying data is exactly that hash, that it covers the PCRs asked for,
that the PCR values sent match the signed digest, and that the registered AK signed it.

Everything goes through tpm2-tools (``tpm2_createek``, ``tpm2_createak``, ``tpm2_load``,
``tpm2_quote``, ``tpm2_checkquote``) with ``TPM2TOOLS_TCTI`` naming the TPM: ``device:/dev/tpmrm0``
on real hardware, ``swtpm:host=127.0.0.1,port=P`` for a software TPM. Transient objects are flushed
after each step because a TPM without a resource manager has room for only a few.

What cannot be attested here (SGX, GPU) is reported as not supported, with the reason; nothing is faked.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import msgspec

from prsm_edge.errors import LocalError, RemoteError

__all__ = [
    "DEFAULT_PCRS",
    "EK_CERT_NV_INDEX",
    "AttestationError",
    "AttestationKey",
    "Availability",
    "PublicKeyNumbers",
    "Quote",
    "QuoteRejected",
    "activate_credential",
    "ak_name",
    "ek_algorithm",
    "enroll",
    "gpu_attestation_available",
    "load_key",
    "make_credential",
    "public_numbers",
    "qualifying_data",
    "quote",
    "read_ek_certificate",
    "read_ek_public",
    "resolve_tcti",
    "sgx_available",
    "tpm_available",
    "validate_ak",
    "verify_quote",
]

log = logging.getLogger(__name__)

DEFAULT_PCRS: Final = (0, 1, 2, 3, 4, 5, 6, 7)
HASH_ALG: Final = "sha256"
TOOLS: Final = (
    "tpm2_getcap",
    "tpm2_createek",
    "tpm2_createak",
    "tpm2_readpublic",
    "tpm2_startauthsession",
    "tpm2_policysecret",
    "tpm2_load",
    "tpm2_quote",
    "tpm2_flushcontext",
    "tpm2_activatecredential",
    "tpm2_nvread",
)
_TIMEOUT_S: Final = 30.0
_TPM_GENERATED: Final = 0xFF544347
_ST_ATTEST_QUOTE: Final = 0x8018
_TPM_ALG_SHA256: Final = 0x000B
_MAX_NONCE: Final = 32
_TPM_ALG_RSA: Final = 0x0001
_TPM_ALG_ECC: Final = 0x0023
_TPM_ALG_NULL: Final = 0x0010
_ECC_CURVES: Final = {0x0003: "secp256r1", 0x0004: "secp384r1", 0x0005: "secp521r1"}
# Where a TPM keeps the certificate of the EK made from each standard template (TCG EK Credential
# Profile 2.0, section 2.2.1.4): RSA 2048 (template L-1) and ECC NIST P-256 (template L-2).
EK_CERT_NV_INDEX: Final = {"rsa": 0x01C00002, "ecc": 0x01C0000A}
_MAX_EK_CERT: Final = 4096


class AttestationError(LocalError):
    """The local TPM or tpm2-tools could not do what was asked."""


class QuoteRejected(RemoteError):
    """A quote or key failed verification; ``reason`` names the check that failed.

    Reasons: ``malformed``, ``nonce``, ``pcrs``, ``signature``, ``ak`` (not a genuine AK public key),
    ``ek`` (not an RSA or ECC public key).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"quote rejected ({reason}): {detail}")
        self.reason = reason
        self.detail = detail


class Availability(msgspec.Struct, frozen=True):
    """Whether one kind of attestation works on this device, and why (not)."""

    kind: str
    supported: bool
    reason: str
    tcti: str | None = None
    details: dict[str, str] = msgspec.field(default_factory=dict)


class AttestationKey(msgspec.Struct, frozen=True):
    """The node's AK: public parts to register with a verifier, and the TPM-wrapped private blob."""

    public_pem: bytes
    public_tpm2b: bytes
    private_blob: bytes
    name: bytes
    ek_public_tpm2b: bytes


class Quote(msgspec.Struct, frozen=True):
    """A TPM quote: the signed TPMS_ATTEST, its TPMT_SIGNATURE, and the PCR values it covers."""

    message: bytes
    signature: bytes
    pcrs: bytes
    pcr_selection: str


# ------------------------------------------------------------------------------------ running tools
def resolve_tcti(tcti: str | None) -> str | None:
    """The TCTI to use: the one given, else ``TPM2TOOLS_TCTI``, else the kernel's TPM device if any."""
    if tcti:
        return tcti
    env = os.environ.get("TPM2TOOLS_TCTI")
    if env:
        return env
    for dev in ("/dev/tpmrm0", "/dev/tpm0"):
        if Path(dev).exists():
            return f"device:{dev}"
    return None


def _run(args: Sequence[str], tcti: str | None, cwd: Path | None = None) -> str:
    env = dict(os.environ)
    if tcti is not None:
        env["TPM2TOOLS_TCTI"] = tcti
    log.debug("running %s", " ".join(args))
    try:
        proc = subprocess.run(
            list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False
        )
    except FileNotFoundError as exc:
        raise AttestationError(f"{args[0]} is not installed (apt-get install tpm2-tools)") from exc
    except subprocess.TimeoutExpired as exc:
        raise AttestationError(f"{args[0]} did not finish within {_TIMEOUT_S:.0f} s") from exc
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if line.strip()]
        tail = errors[-1] if errors else f"exit status {proc.returncode}"
        raise AttestationError(f"{args[0]} failed: {tail}")
    return proc.stdout


def _flush(tcti: str | None, cwd: Path) -> None:
    """Flush transient objects and sessions; a failure here only matters to the next command."""
    for kind in ("-t", "-l", "-s"):
        with contextlib.suppress(AttestationError):
            _run(["tpm2_flushcontext", kind], tcti, cwd)


# ------------------------------------------------------------------------------------- availability
def tpm_available(tcti: str | None = None) -> Availability:
    """Whether a TPM 2.0 answers through tpm2-tools, with the reason when it does not."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return Availability(
            "tpm2",
            False,
            f"tpm2-tools not installed (missing {', '.join(missing)}; apt-get install tpm2-tools)",
        )
    chosen = resolve_tcti(tcti)
    if chosen is None:
        return Availability(
            "tpm2", False, "no TPM: /dev/tpmrm0 and /dev/tpm0 do not exist and TPM2TOOLS_TCTI is not set"
        )
    if chosen.startswith("device:"):
        dev = chosen.removeprefix("device:") or "/dev/tpmrm0"
        if not Path(dev).exists():
            return Availability("tpm2", False, f"no TPM device: {dev} does not exist", chosen)
        if not os.access(dev, os.R_OK | os.W_OK):
            return Availability("tpm2", False, f"no permission on {dev} (join the tss group)", chosen)
    try:
        out = _run(["tpm2_getcap", "properties-fixed"], chosen)
    except AttestationError as exc:
        return Availability("tpm2", False, f"the TPM at {chosen} does not answer: {exc}", chosen)
    details = _getcap_details(out)
    if details.get("family") != "2.0":
        return Availability("tpm2", False, f"the TPM at {chosen} is not a TPM 2.0", chosen, details)
    maker = details.get("manufacturer", "unknown manufacturer")
    return Availability("tpm2", True, f"TPM 2.0 ({maker}) at {chosen}", chosen, details)


def _getcap_details(out: str) -> dict[str, str]:
    wanted = {
        "TPM2_PT_FAMILY_INDICATOR": "family",
        "TPM2_PT_MANUFACTURER": "manufacturer",
        "TPM2_PT_VENDOR_STRING_1": "vendor1",
        "TPM2_PT_VENDOR_STRING_2": "vendor2",
    }
    details: dict[str, str] = {}
    current = None
    for line in out.splitlines():
        if not line.startswith(" ") and line.endswith(":"):
            current = wanted.get(line[:-1])
        elif current is not None and line.strip().startswith("value:"):
            details[current] = line.split(":", 1)[1].strip().strip('"')
    return details


def sgx_available() -> Availability:
    """Intel SGX attestation: never supported by prsm-edge; the reason says what this device has."""
    devices = [d for d in ("/dev/sgx_enclave", "/dev/sgx/enclave", "/dev/isgx") if Path(d).exists()]
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    if devices:
        reason = f"SGX device {devices[0]} present, but prsm-edge does not implement SGX (DCAP) quotes"
    elif "sgx" in flags:
        reason = (
            "the CPU reports SGX but no SGX device exists (driver not loaded or SGX disabled in firmware)"
        )
    else:
        reason = "not supported on this device: no SGX (no /dev/sgx_enclave, no sgx CPU flag)"
    return Availability("sgx", False, reason)


def gpu_attestation_available() -> Availability:
    """GPU (NVIDIA confidential computing) attestation: never supported by prsm-edge; says why."""
    try:
        nvml: Any = importlib.import_module("pynvml")
    except ImportError:
        return Availability("gpu", False, "not supported on this device: no NVML bindings to find a GPU")
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        return Availability("gpu", False, f"not supported on this device: no NVIDIA GPU ({exc})")
    try:
        count = int(nvml.nvmlDeviceGetCount())
    except nvml.NVMLError as exc:
        return Availability("gpu", False, f"not supported on this device: NVML failed ({exc})")
    finally:
        with contextlib.suppress(nvml.NVMLError):
            nvml.nvmlShutdown()
    if count == 0:
        return Availability("gpu", False, "not supported on this device: no NVIDIA GPU")
    return Availability(
        "gpu",
        False,
        f"{count} NVIDIA GPU(s) present, but prsm-edge does not implement GPU confidential-computing "
        "attestation (NVIDIA nvTrust)",
    )


# ----------------------------------------------------------------------------------- enroll / quote
_FILES: Final = {
    "public_pem": "ak.pem",
    "public_tpm2b": "ak.pub",
    "private_blob": "ak.priv",
    "name": "ak.name",
    "ek_public_tpm2b": "ek.pub",
}


def load_key(workdir: Path) -> AttestationKey | None:
    """The AK enrolled earlier in ``workdir``, or None if there is none."""
    paths = {field: workdir / name for field, name in _FILES.items()}
    if not all(p.exists() for p in paths.values()):
        return None
    try:
        return AttestationKey(**{field: p.read_bytes() for field, p in paths.items()})
    except OSError as exc:
        raise AttestationError(f"cannot read the attestation key in {workdir}: {exc}") from exc


@contextlib.contextmanager
def _scratch(tcti: str | None) -> Iterator[Path]:
    """A private folder for context files; transient TPM objects are flushed on the way out."""
    with tempfile.TemporaryDirectory(prefix="prsm-tpm-") as tmp:
        path = Path(tmp)
        try:
            yield path
        finally:
            _flush(tcti, path)


def enroll(workdir: Path, tcti: str | None = None) -> AttestationKey:
    """Create the AK under the EK once and keep it in ``workdir``; later calls return the same key."""
    existing = load_key(workdir)
    if existing is not None:
        return existing
    chosen = resolve_tcti(tcti)
    if chosen is None:
        raise AttestationError(tpm_available(tcti).reason)
    # Make the AK under the EK the manufacturer certified (RSA where there is an RSA EK certificate,
    # as on nearly every TPM), so the verifier can tie it to that certificate; else the ECC EK.
    algorithm = "rsa" if EK_CERT_NV_INDEX["rsa"] in _nv_indexes(chosen) else "ecc"
    with _scratch(chosen) as tmp:
        _run(["tpm2_createek", "-c", "ek.ctx", "-G", algorithm, "-u", "ek.pub"], chosen, tmp)
        _flush(chosen, tmp)
        _run(
            [
                "tpm2_createak",
                *("-C", "ek.ctx", "-c", "ak.ctx", "-G", "ecc", "-g", HASH_ALG, "-s", "ecdsa"),
                *("-u", "ak.pub", "-r", "ak.priv", "-n", "ak.name"),
            ],
            chosen,
            tmp,
        )
        _flush(chosen, tmp)
        _run(["tpm2_readpublic", "-c", "ak.ctx", "-f", "pem", "-o", "ak.pem"], chosen, tmp)
        key = AttestationKey(**{field: (tmp / name).read_bytes() for field, name in _FILES.items()})
    try:
        workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for field, name in _FILES.items():
            target = workdir / name
            partial = target.with_suffix(target.suffix + ".tmp")
            partial.write_bytes(getattr(key, field))
            partial.chmod(0o600)
            partial.replace(target)
    except OSError as exc:
        raise AttestationError(f"cannot store the attestation key in {workdir}: {exc}") from exc
    log.info("enrolled a TPM attestation key in %s", workdir)
    return key


def qualifying_data(nonce: bytes, claim_hash: bytes) -> bytes:
    """What the quote signs besides the PCRs: SHA-256(nonce ‖ claim_hash)."""
    if not 8 <= len(nonce) <= 64:
        raise AttestationError(f"the nonce must be 8–64 bytes, got {len(nonce)}")
    if len(claim_hash) != 32:
        raise AttestationError(f"the claim hash must be 32 bytes (SHA-256), got {len(claim_hash)}")
    return hashlib.sha256(nonce + claim_hash).digest()


def _selection(pcrs: Sequence[int]) -> str:
    if not pcrs or any(not 0 <= p <= 23 for p in pcrs):
        raise AttestationError(f"PCR indexes must be 0–23, got {list(pcrs)}")
    return f"{HASH_ALG}:{','.join(str(p) for p in sorted(set(pcrs)))}"


def _ek_session(tcti: str, tmp: Path) -> None:
    """Start a policy session satisfying the EK's policy, PolicySecret(endorsement), as session.ctx."""
    _run(["tpm2_startauthsession", "--policy-session", "-S", "session.ctx"], tcti, tmp)
    _run(["tpm2_policysecret", "-S", "session.ctx", "-c", "e"], tcti, tmp)


def _load_ak(ak: AttestationKey, tcti: str, tmp: Path) -> None:
    """Recreate the EK (ek.ctx) and load the AK under it (ak.ctx); transient objects flushed after."""
    (tmp / "ak.pub").write_bytes(ak.public_tpm2b)
    (tmp / "ak.priv").write_bytes(ak.private_blob)
    _run(["tpm2_createek", "-c", "ek.ctx", "-G", ek_algorithm(ak.ek_public_tpm2b)], tcti, tmp)
    _flush(tcti, tmp)
    _ek_session(tcti, tmp)
    load = ["tpm2_load", "-C", "ek.ctx", "-u", "ak.pub", "-r", "ak.priv", "-c", "ak.ctx"]
    _run([*load, "-P", "session:session.ctx"], tcti, tmp)
    _flush(tcti, tmp)


def quote(
    ak: AttestationKey,
    nonce: bytes,
    claim_hash: bytes,
    tcti: str | None = None,
    *,
    pcrs: Sequence[int] = DEFAULT_PCRS,
) -> Quote:
    """Have the TPM quote the selected PCRs over SHA-256(nonce ‖ claim_hash), signed by the AK."""
    extra = qualifying_data(nonce, claim_hash)
    selection = _selection(pcrs)
    chosen = resolve_tcti(tcti)
    if chosen is None:
        raise AttestationError(tpm_available(tcti).reason)
    with _scratch(chosen) as tmp:
        _load_ak(ak, chosen, tmp)
        _run(
            [
                "tpm2_quote",
                *("-c", "ak.ctx", "-l", selection, "-q", extra.hex(), "-g", HASH_ALG),
                *("-m", "quote.msg", "-s", "quote.sig", "-o", "quote.pcrs"),
            ],
            chosen,
            tmp,
        )
        return Quote(
            message=(tmp / "quote.msg").read_bytes(),
            signature=(tmp / "quote.sig").read_bytes(),
            pcrs=(tmp / "quote.pcrs").read_bytes(),
            pcr_selection=selection,
        )


# ------------------------------------------------------------------------------------- registration
# Object attributes a genuine AK must have (TPM 2.0 Part 2, TPMA_OBJECT).
_FIXED_TPM: Final = 1 << 1
_FIXED_PARENT: Final = 1 << 4
_SENSITIVE_DATA_ORIGIN: Final = 1 << 5
_RESTRICTED: Final = 1 << 16
_SIGN: Final = 1 << 18
_AK_ATTRIBUTES: Final = _FIXED_TPM | _FIXED_PARENT | _SENSITIVE_DATA_ORIGIN | _RESTRICTED | _SIGN


def ak_name(public_tpm2b: bytes) -> bytes:
    """The TPM name of a key: its name algorithm (SHA-256) followed by SHA-256 of its TPMT_PUBLIC."""
    validate_ak(public_tpm2b)
    return struct.pack(">H", _TPM_ALG_SHA256) + hashlib.sha256(public_tpm2b[2:]).digest()


def validate_ak(public_tpm2b: bytes) -> None:
    """Refuse a public key that is not a restricted signing key fixed to its TPM (what an AK must be)."""
    try:
        (size,) = struct.unpack_from(">H", public_tpm2b, 0)
        _kind, name_alg, attributes = struct.unpack_from(">HHI", public_tpm2b, 2)
    except struct.error as exc:
        raise QuoteRejected("ak", f"not a TPM2B_PUBLIC: {exc}") from exc
    if size != len(public_tpm2b) - 2:
        raise QuoteRejected("ak", "TPM2B_PUBLIC size does not match its length")
    if name_alg != _TPM_ALG_SHA256:
        raise QuoteRejected("ak", f"name algorithm {name_alg:#06x} is not SHA-256")
    if attributes & _AK_ATTRIBUTES != _AK_ATTRIBUTES:
        raise QuoteRejected(
            "ak",
            f"attributes {attributes:#010x} lack fixedTPM/fixedParent/sensitiveDataOrigin/restricted/sign",
        )


class PublicKeyNumbers(msgspec.Struct, frozen=True):
    """The key inside a TPM2B_PUBLIC: RSA modulus and exponent, or an ECC curve and point."""

    algorithm: str  # "rsa" or "ecc"
    modulus: int = 0
    exponent: int = 0
    curve: str = ""
    x: int = 0
    y: int = 0


def public_numbers(public_tpm2b: bytes) -> PublicKeyNumbers:
    """The RSA or ECC key in a TPM2B_PUBLIC (TPM 2.0 Part 2, TPMT_PUBLIC); QuoteRejected("ek") if not one."""
    try:
        (size,) = struct.unpack_from(">H", public_tpm2b, 0)
        if size != len(public_tpm2b) - 2:
            raise QuoteRejected("ek", "TPM2B_PUBLIC size does not match its length")
        kind, _name_alg, _attributes, policy_len = struct.unpack_from(">HHIH", public_tpm2b, 2)
        off = 12 + policy_len
        (sym,) = struct.unpack_from(">H", public_tpm2b, off)
        off += 2 if sym == _TPM_ALG_NULL else 6
        (scheme,) = struct.unpack_from(">H", public_tpm2b, off)
        off += 2 if scheme == _TPM_ALG_NULL else 4 + (2 if scheme == 0x001A else 0)  # ECDAA has a count
        if kind == _TPM_ALG_RSA:
            _bits, exponent, mod_len = struct.unpack_from(">HIH", public_tpm2b, off)
            modulus = public_tpm2b[off + 8 : off + 8 + mod_len]
            if len(modulus) != mod_len or not modulus:
                raise QuoteRejected("ek", "truncated RSA modulus")
            return PublicKeyNumbers("rsa", int.from_bytes(modulus), exponent or 65537)
        if kind == _TPM_ALG_ECC:
            curve_id, kdf = struct.unpack_from(">HH", public_tpm2b, off)
            off += 4 if kdf == _TPM_ALG_NULL else 6
            (x_len,) = struct.unpack_from(">H", public_tpm2b, off)
            x = public_tpm2b[off + 2 : off + 2 + x_len]
            off += 2 + x_len
            (y_len,) = struct.unpack_from(">H", public_tpm2b, off)
            y = public_tpm2b[off + 2 : off + 2 + y_len]
            if len(x) != x_len or len(y) != y_len or not x or not y:
                raise QuoteRejected("ek", "truncated ECC point")
            if curve_id not in _ECC_CURVES:
                raise QuoteRejected("ek", f"unsupported ECC curve {curve_id:#06x}")
            return PublicKeyNumbers(
                "ecc", curve=_ECC_CURVES[curve_id], x=int.from_bytes(x), y=int.from_bytes(y)
            )
    except struct.error as exc:
        raise QuoteRejected("ek", f"not a TPM2B_PUBLIC: {exc}") from exc
    raise QuoteRejected("ek", f"key type {kind:#06x} is neither RSA nor ECC")


def ek_algorithm(ek_public_tpm2b: bytes) -> str:
    """``"rsa"`` or ``"ecc"``: which standard EK template the key was made from (by its type)."""
    return public_numbers(ek_public_tpm2b).algorithm


def _nv_indexes(tcti: str) -> set[int]:
    """The NV indexes defined in the TPM."""
    out = _run(["tpm2_getcap", "handles-nv-index"], tcti)
    found: set[int] = set()
    for line in out.splitlines():
        value = line.strip().removeprefix("-").strip()
        with contextlib.suppress(ValueError):
            found.add(int(value, 16))
    return found


def _der_length(data: bytes) -> int:
    """The length of the DER SEQUENCE at the start of ``data`` (NV areas may be padded after it)."""
    if len(data) < 2 or data[0] != 0x30:
        raise AttestationError("the EK certificate in the TPM is not DER (no SEQUENCE)")
    first = data[1]
    if first < 0x80:
        return 2 + first
    count = first & 0x7F
    if not 1 <= count <= 3 or len(data) < 2 + count:
        raise AttestationError("the EK certificate in the TPM has a malformed DER length")
    return 2 + count + int.from_bytes(data[2 : 2 + count])


def read_ek_public(algorithm: str, tcti: str | None = None) -> bytes:
    """The TPM2B_PUBLIC of the TPM's EK made from the standard ``rsa`` or ``ecc`` template."""
    chosen = resolve_tcti(tcti)
    if chosen is None:
        raise AttestationError(tpm_available(tcti).reason)
    with _scratch(chosen) as tmp:
        _run(["tpm2_createek", "-c", "ek.ctx", "-G", algorithm, "-u", "ek.pub"], chosen, tmp)
        return (tmp / "ek.pub").read_bytes()


def read_ek_certificate(algorithm: str, tcti: str | None = None) -> bytes | None:
    """The DER EK certificate the manufacturer stored in the TPM for that EK type; None if it has none."""
    if algorithm not in EK_CERT_NV_INDEX:
        raise AttestationError(f"EK algorithm must be one of {sorted(EK_CERT_NV_INDEX)}, got {algorithm!r}")
    chosen = resolve_tcti(tcti)
    if chosen is None:
        raise AttestationError(tpm_available(tcti).reason)
    index = EK_CERT_NV_INDEX[algorithm]
    if index not in _nv_indexes(chosen):
        return None
    with _scratch(chosen) as tmp:
        _run(["tpm2_nvread", f"{index:#x}", "-o", "ek.crt"], chosen, tmp)
        data = (tmp / "ek.crt").read_bytes()
    length = _der_length(data)
    if length > min(len(data), _MAX_EK_CERT):
        raise AttestationError(f"the EK certificate in NV index {index:#x} is truncated or too large")
    return data[:length]


def make_credential(ek_public_tpm2b: bytes, ak_public_tpm2b: bytes, secret: bytes) -> bytes:
    """Verifier side (no TPM needed): wrap ``secret`` so only the TPM holding that EK *and* AK can open it."""
    if not 16 <= len(secret) <= 32:
        raise AttestationError(f"the credential secret must be 16–32 bytes, got {len(secret)}")
    name = ak_name(ak_public_tpm2b)
    with tempfile.TemporaryDirectory(prefix="prsm-makecred-") as tmp:
        folder = Path(tmp)
        (folder / "ek.pub").write_bytes(ek_public_tpm2b)
        (folder / "secret").write_bytes(secret)
        args = ["tpm2_makecredential", "-T", "none", "-e", "ek.pub", "-s", "secret", "-n", name.hex()]
        _run([*args, "-o", "cred"], None, folder)
        return (folder / "cred").read_bytes()


def activate_credential(ak: AttestationKey, credential: bytes, tcti: str | None = None) -> bytes:
    """Node side: have the TPM unwrap a credential made for its EK and AK; returns the secret."""
    chosen = resolve_tcti(tcti)
    if chosen is None:
        raise AttestationError(tpm_available(tcti).reason)
    with _scratch(chosen) as tmp:
        _load_ak(ak, chosen, tmp)
        (tmp / "cred").write_bytes(credential)
        _ek_session(chosen, tmp)
        args = ["tpm2_activatecredential", "-c", "ak.ctx", "-C", "ek.ctx", "-i", "cred", "-o", "secret"]
        _run([*args, "-P", "session:session.ctx"], chosen, tmp)
        return (tmp / "secret").read_bytes()


# ------------------------------------------------------------------------------------------- verify
def _parse_attest(message: bytes) -> tuple[bytes, list[int]]:
    """The extraData and the SHA-256 PCR indexes of a TPMS_ATTEST quote; QuoteRejected if malformed."""
    try:
        magic, kind = struct.unpack_from(">IH", message, 0)
        if magic != _TPM_GENERATED:
            raise QuoteRejected("malformed", "not a TPM-generated structure (magic)")
        if kind != _ST_ATTEST_QUOTE:
            raise QuoteRejected("malformed", f"attestation type {kind:#x} is not a quote")
        off = 6
        (name_len,) = struct.unpack_from(">H", message, off)
        off += 2 + name_len
        (extra_len,) = struct.unpack_from(">H", message, off)
        extra = message[off + 2 : off + 2 + extra_len]
        off += 2 + extra_len + 17 + 8  # clockInfo, firmwareVersion
        (count,) = struct.unpack_from(">I", message, off)
        off += 4
        indexes: list[int] = []
        for _ in range(count):
            alg, size = struct.unpack_from(">HB", message, off)
            bitmap = message[off + 3 : off + 3 + size]
            off += 3 + size
            if alg == _TPM_ALG_SHA256:
                indexes += [
                    8 * i + bit for i, byte in enumerate(bitmap) for bit in range(8) if byte >> bit & 1
                ]
    except struct.error as exc:
        raise QuoteRejected("malformed", f"truncated TPMS_ATTEST: {exc}") from exc
    if len(extra) != extra_len:
        raise QuoteRejected("malformed", "truncated qualifying data")
    return extra, indexes


_PCR_LINE: Final = re.compile(r"^\s+(\d+)\s*:\s*0x([0-9A-Fa-f]+)\s*$")


def verify_quote(
    ak_public: bytes,
    quote: Quote,
    nonce: bytes,
    claim_hash: bytes,
    *,
    pcrs: Sequence[int] = DEFAULT_PCRS,
    expected_pcrs: Mapping[int, bytes] | None = None,
) -> dict[int, bytes]:
    """Check a quote against the registered AK public key (PEM or TPM2B_PUBLIC); QuoteRejected if bad.

    Returns the verified SHA-256 PCR values. ``expected_pcrs`` (golden values) are compared too.
    """
    try:
        extra = qualifying_data(nonce, claim_hash)
    except AttestationError as exc:
        raise QuoteRejected("malformed", str(exc)) from exc
    got_extra, indexes = _parse_attest(quote.message)
    if got_extra != extra:
        raise QuoteRejected("nonce", "the quote's qualifying data is not SHA-256(nonce ‖ claim hash)")
    selection = _selection(pcrs)
    if sorted(indexes) != sorted(set(pcrs)) or quote.pcr_selection != selection:
        raise QuoteRejected("pcrs", f"the quote covers sha256 PCRs {sorted(indexes)}, not {selection}")
    if not ak_public.startswith(b"-----BEGIN"):
        validate_ak(ak_public)
    if shutil.which("tpm2_checkquote") is None:
        raise AttestationError("tpm2_checkquote is not installed (apt-get install tpm2-tools)")
    with tempfile.TemporaryDirectory(prefix="prsm-checkquote-") as tmp:
        folder = Path(tmp)
        files = {"ak": ak_public, "msg": quote.message, "sig": quote.signature, "pcrs": quote.pcrs}
        for name, data in files.items():
            (folder / name).write_bytes(data)
        args = ["tpm2_checkquote", "-u", "ak", "-m", "msg", "-s", "sig", "-f", "pcrs", "-g", HASH_ALG]
        args += ["-q", extra.hex()]  # -l is not given: tpm2-tools 5.4 fails with it; selection checked above
        try:
            proc = subprocess.run(
                args, cwd=folder, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise AttestationError("tpm2_checkquote did not finish in time") from exc
    if proc.returncode != 0:
        errors = [line.removeprefix("ERROR: ") for line in proc.stderr.splitlines() if line.strip()]
        detail = "; ".join(errors[:2]) or f"exit status {proc.returncode}"
        reason = "pcrs" if "PCR" in detail else "signature"
        raise QuoteRejected(reason, detail)
    values: dict[int, bytes] = {}
    in_sha256 = False
    for line in proc.stdout.splitlines():
        if line.strip().endswith(":") and not _PCR_LINE.match(line):
            in_sha256 = line.strip() == f"{HASH_ALG}:"
            continue
        match = _PCR_LINE.match(line)
        if in_sha256 and match:
            values[int(match.group(1))] = bytes.fromhex(match.group(2))
    if sorted(values) != sorted(set(pcrs)):
        raise QuoteRejected("pcrs", f"tpm2_checkquote reported PCRs {sorted(values)}, expected {selection}")
    for index, want in (expected_pcrs or {}).items():
        if values.get(index) != want:
            raise QuoteRejected(
                "pcrs", f"PCR {index} is {values.get(index, b'').hex()}, expected {want.hex()}"
            )
    return values
