"""The node's paired owner keys and its one-time pairing code, kept in one owner-only file.

``owners.json`` in the agent's state folder (mode 0600) holds every owner key paired with this node (its
id, raw public key, a label, when it was paired, and the highest request sequence number accepted from
it, so a replayed request stays refused across restarts) and at most one pending pairing offer (the
SHA-256 of a one-time code, its expiry and the wrong guesses left). The running agent and the
``prsm-edge owner`` command both change it, each change under an exclusive lock on ``owners.lock`` and
written atomically, so neither loses the other's update.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from prsm_edge.errors import StorageError
from prsm_edge.identity import Identity, SeqStore, load_or_create
from prsm_edge.protocol.api import ApiError, ErrorCode
from prsm_edge.protocol.envelope import Signer, node_id_for

__all__ = ["OwnerKey", "OwnerRegistry", "cli_owner", "new_code"]

OWNERS_FILE: Final = "owners.json"
PAIRING_TTL_MS: Final = 10 * 60 * 1000
PAIRING_GUESSES: Final = 5
MAX_OWNERS: Final = 16
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class OwnerKey:
    """One owner key paired with this node."""

    owner: str
    public_key: bytes
    label: str
    paired_ms: int
    last_seq: int = 0


def new_code() -> str:
    """A one-time pairing code: 80 random bits as 16 base32 letters in groups of four."""
    raw = base64.b32encode(secrets.token_bytes(10)).decode("ascii")
    return "-".join(raw[i : i + 4] for i in range(0, 16, 4))


def _code_hash(code: str) -> str:
    normal = code.replace("-", "").replace(" ", "").upper()
    return hashlib.sha256(normal.encode("ascii", "replace")).hexdigest()


class OwnerRegistry:
    """The owner keys of the node whose state folder is ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.path = workdir / OWNERS_FILE
        self._lock_path = workdir / "owners.lock"

    # ---- reading -----------------------------------------------------------------------------
    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"owners": {}, "pairing": None}
        except (OSError, ValueError) as exc:
            raise StorageError(
                f"the owner file {self.path} is unreadable ({exc}); move it away and pair again"
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("owners"), dict):
            raise StorageError(f"the owner file {self.path} is damaged; move it away and pair again")
        return data

    def owners(self) -> dict[str, OwnerKey]:
        """Every paired owner key, by owner id."""
        out: dict[str, OwnerKey] = {}
        for owner, rec in self._read()["owners"].items():
            out[owner] = OwnerKey(
                owner=owner,
                public_key=bytes.fromhex(rec["public_key"]),
                label=str(rec.get("label", "")),
                paired_ms=int(rec.get("paired_ms", 0)),
                last_seq=int(rec.get("last_seq", 0)),
            )
        return out

    def keys(self) -> dict[str, bytes]:
        """Owner id → public key, as :func:`~prsm_edge.protocol.api.check_owner_request` takes them."""
        return {o.owner: o.public_key for o in self.owners().values()}

    def last_seq(self, owner: str) -> int | None:
        """The highest request sequence number accepted from ``owner`` (None: never seen)."""
        rec = self._read()["owners"].get(owner)
        return None if rec is None else int(rec.get("last_seq", 0))

    # ---- changing ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot lock {self._lock_path}: {exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, data: dict[str, Any]) -> None:
        tmp = self.path.with_name(f".{OWNERS_FILE}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(self.path)
        except OSError as exc:
            raise StorageError(f"cannot write the owner file {self.path}: {exc}") from None
        finally:
            tmp.unlink(missing_ok=True)

    def _change(self, change: Callable[[dict[str, Any]], T]) -> T:
        with self._locked():
            data = self._read()
            result = change(data)
            self._write(data)
            return result

    def offer_pairing(self, now_ms: int, ttl_ms: int = PAIRING_TTL_MS) -> str:
        """Start pairing: a new one-time code (replacing any earlier one), valid for ``ttl_ms``."""
        code = new_code()

        def change(data: dict[str, Any]) -> None:
            data["pairing"] = {
                "code_sha256": _code_hash(code),
                "expires_ms": now_ms + ttl_ms,
                "guesses_left": PAIRING_GUESSES,
            }

        self._change(change)
        return code

    def pair(self, code: str, public_key: bytes, label: str, now_ms: int) -> OwnerKey:
        """Bind ``public_key`` to this node if ``code`` is the pending one; the code is then spent."""

        def change(data: dict[str, Any]) -> OwnerKey | ApiError:
            offer = data.get("pairing")
            if not isinstance(offer, dict) or int(offer.get("expires_ms", 0)) < now_ms:
                data["pairing"] = None
                return ApiError(
                    ErrorCode.NOT_OWNER,
                    "no pairing code is pending (or it expired): run `prsm-edge owner pair` on the node",
                )
            if not hmac.compare_digest(str(offer.get("code_sha256", "")), _code_hash(code)):
                left = int(offer.get("guesses_left", 0)) - 1
                offer["guesses_left"] = left
                if left <= 0:
                    data["pairing"] = None
                return ApiError(
                    ErrorCode.NOT_OWNER,
                    "wrong pairing code"
                    + ("; the code is now spent: run `prsm-edge owner pair` again" if left <= 0 else ""),
                )
            data["pairing"] = None
            return self._add(data, public_key, label, now_ms)

        result = self._change(change)
        if isinstance(result, ApiError):
            raise result
        return result

    def add(self, public_key: bytes, label: str, now_ms: int) -> OwnerKey:
        """Bind ``public_key`` directly (the caller proved it may: it writes this node's files)."""
        return self._change(lambda data: self._add(data, public_key, label, now_ms))

    @staticmethod
    def _add(data: dict[str, Any], public_key: bytes, label: str, now_ms: int) -> OwnerKey:
        if len(public_key) != 32:
            raise ApiError(ErrorCode.BAD_REQUEST, "an owner key is a 32-byte Ed25519 public key")
        owner = node_id_for(public_key)
        owners: dict[str, Any] = data["owners"]
        if owner not in owners and len(owners) >= MAX_OWNERS:
            raise ApiError(ErrorCode.BUSY, f"{MAX_OWNERS} owner keys are paired already; revoke one first")
        previous = owners.get(owner, {})
        key = OwnerKey(owner, public_key, label[:64], now_ms, int(previous.get("last_seq", 0)))
        rec = asdict(key)
        rec.pop("owner")
        rec["public_key"] = public_key.hex()
        owners[owner] = rec
        return key

    def revoke(self, owner: str) -> bool:
        """Unpair ``owner``; False if it was not paired."""
        return self._change(lambda data: data["owners"].pop(owner, None) is not None)

    def accept_seq(self, owner: str, seq: int) -> None:
        """Record that request ``seq`` from ``owner`` is being applied; ``replay`` if it is not new.

        The check and the record happen under the lock, so one request is applied once even when
        the same bytes arrive over HTTP and MQTT at the same moment.
        """

        def change(data: dict[str, Any]) -> ApiError | None:
            rec = data["owners"].get(owner)
            if rec is None:
                return ApiError(ErrorCode.NOT_OWNER, f"key {owner} was unpaired")
            last = int(rec.get("last_seq", 0))
            if seq <= last:
                return ApiError(ErrorCode.REPLAY, f"sequence {seq} is not after {last}, the last accepted")
            rec["last_seq"] = seq
            return None

        error = self._change(change)
        if error is not None:
            raise error


def cli_owner(folder: Path) -> tuple[Identity, Signer]:
    """This user's owner key for the CLI (created on first use, owner-only) and a signer for it."""
    identity = load_or_create(folder)
    return identity, identity.signer(SeqStore(folder / "node.seq"))
