"""``prsm-edge attest``: what hardware attestation this device supports; enroll a TPM key; quote; verify."""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

import msgspec

from prsm_edge import paths
from prsm_edge.errors import ConfigError, PrsmEdgeError
from prsm_edge.io import attest
from prsm_edge.io.tpm_registration import default_ca_dir


def register(sub: Any) -> None:
    """Add the ``attest`` command."""
    parser = sub.add_parser("attest", help="hardware attestation (TPM 2.0 quotes)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tcti", default=None, help="TPM to use, e.g. device:/dev/tpmrm0 or swtpm:port=2321")
        p.add_argument("--dir", type=Path, default=None, help="key folder (default: DATA_DIR/attest)")

    status = actions.add_parser(
        "status",
        help="which attestation this device supports, and why not; whether its EK chains to a configured CA",
    )
    common(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--ca-dir",
        type=Path,
        default=None,
        help="TPM manufacturer CA certificates to check the EK certificate against "
        "(default: tpm-ca in the config dir, as a coordinator here would use)",
    )
    status.set_defaults(handler=_status)

    enroll = actions.add_parser("enroll", help="create the TPM attestation key once and show its public key")
    common(enroll)
    enroll.set_defaults(handler=_enroll)

    quote = actions.add_parser("quote", help="quote PCRs over SHA-256(nonce ‖ claim hash), print JSON")
    common(quote)
    quote.add_argument("--nonce", required=True, help="the verifier's nonce, hex (8–64 bytes)")
    quote.add_argument(
        "--claim-hash", default=None, help="SHA-256 of the claim, hex (default: 32 zero bytes)"
    )
    quote.add_argument("--pcrs", default=None, help="comma-separated PCR indexes (default: 0-7)")
    quote.set_defaults(handler=_quote)

    verify = actions.add_parser("verify", help="verify a quote (JSON from `attest quote`) against an AK")
    verify.add_argument("quote_file", type=Path, help="the JSON printed by `attest quote`")
    verify.add_argument("--ak", type=Path, required=True, help="the AK public key (PEM) registered earlier")
    verify.add_argument("--nonce", required=True, help="the nonce that was sent, hex")
    verify.add_argument("--claim-hash", default=None, help="SHA-256 of the claim, hex (default: zeros)")
    verify.add_argument("--pcrs", default=None, help="comma-separated PCR indexes expected (default: 0-7)")
    verify.set_defaults(handler=_verify)


def _dir(args: argparse.Namespace) -> Path:
    return args.dir if args.dir is not None else paths.data_dir() / "attest"


def _hex(value: str, what: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise ConfigError(f"{what} must be hexadecimal: {exc}") from exc


def _pcrs(value: str | None) -> tuple[int, ...]:
    if value is None:
        return attest.DEFAULT_PCRS
    try:
        return tuple(int(p) for p in value.split(",") if p.strip())
    except ValueError as exc:
        raise ConfigError(f"--pcrs must be comma-separated integers: {exc}") from exc


def _claim_hash(value: str | None) -> bytes:
    return bytes(32) if value is None else _hex(value, "--claim-hash")


def _ek_status(tpm: attest.Availability, key: attest.AttestationKey | None, ca_dir: Path) -> dict[str, Any]:
    """Whether this device's EK certificate chains to a CA in ``ca_dir`` (what a coordinator checks)."""
    if not tpm.supported:
        return {"chained": False, "reason": "no TPM"}
    try:
        from prsm_edge.io import ek_certificate
    except ImportError:
        return {
            "chained": False,
            "reason": "cannot check: python-cryptography is not installed (prsm-edge[attest])",
        }
    try:
        if key is not None:
            algorithm, ek_public = attest.ek_algorithm(key.ek_public_tpm2b), key.ek_public_tpm2b
        else:
            rsa = attest.read_ek_certificate("rsa", tpm.tcti) is not None
            algorithm = "rsa" if rsa else "ecc"
            ek_public = attest.read_ek_public(algorithm, tpm.tcti)
        cert = attest.read_ek_certificate(algorithm, tpm.tcti) or b""
        cas = ek_certificate.load_ca_set(ca_dir)
    except PrsmEdgeError as exc:
        return {"chained": False, "reason": f"cannot check: {exc}"}
    verdict = ek_certificate.check_ek_certificate(cert, ek_public, cas, datetime.datetime.now(datetime.UTC))
    return {
        "algorithm": algorithm,
        "certificate": bool(cert),
        "chained": verdict.chained,
        "reason": verdict.reason,
        "issuer": verdict.issuer,
        "ca_dir": str(ca_dir),
        "cas": cas.subjects,
    }


def _status(args: argparse.Namespace) -> int:
    found = [attest.tpm_available(args.tcti), attest.sgx_available(), attest.gpu_attestation_available()]
    key = attest.load_key(_dir(args))
    ek = _ek_status(found[0], key, args.ca_dir or default_ca_dir())
    if args.json:
        data = {"attestation": msgspec.to_builtins(found), "tpm_key_enrolled": key is not None, "ek": ek}
        print(json.dumps(data, indent=2))
        return 0
    for item in found:
        print(f"{item.kind:<5} {'supported' if item.supported else 'unsupported':<12} {item.reason}")
    if found[0].supported:
        verdict = "certified" if ek["chained"] else "uncertified"
        print(f"ek    {verdict:<12} {ek['reason']}")
        if not ek["chained"]:
            print("      (a coordinator with these CAs would not count this TPM toward hardware_attested)")
    if key is not None:
        fingerprint = hashlib.sha256(key.public_pem).hexdigest()[:16]
        print(f"tpm key enrolled in {_dir(args)} (AK PEM sha256 {fingerprint})")
    return 0


def _enroll(args: argparse.Namespace) -> int:
    key = attest.enroll(_dir(args), args.tcti)
    print(key.public_pem.decode(), end="")
    return 0


def _quote(args: argparse.Namespace) -> int:
    key = attest.load_key(_dir(args))
    if key is None:
        raise ConfigError(f"no attestation key in {_dir(args)}: run `prsm-edge attest enroll` first")
    nonce = _hex(args.nonce, "--nonce")
    q = attest.quote(key, nonce, _claim_hash(args.claim_hash), args.tcti, pcrs=_pcrs(args.pcrs))
    print(
        json.dumps(
            {
                "message": q.message.hex(),
                "signature": q.signature.hex(),
                "pcrs": q.pcrs.hex(),
                "pcr_selection": q.pcr_selection,
            },
            indent=2,
        )
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    try:
        data = json.loads(args.quote_file.read_text())
        q = attest.Quote(
            message=bytes.fromhex(data["message"]),
            signature=bytes.fromhex(data["signature"]),
            pcrs=bytes.fromhex(data["pcrs"]),
            pcr_selection=str(data["pcr_selection"]),
        )
        ak = args.ak.read_bytes()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read the quote or the key: {exc}") from exc
    values = attest.verify_quote(
        ak, q, _hex(args.nonce, "--nonce"), _claim_hash(args.claim_hash), pcrs=_pcrs(args.pcrs)
    )
    print("quote verified")
    for index, value in sorted(values.items()):
        print(f"pcr {index:>2} sha256 {value.hex()}")
    return 0
