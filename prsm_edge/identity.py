"""A node's identity: its Ed25519 key, created on first start and kept with owner-only permissions.

The node id is derived from the public key (:func:`prsm_edge.protocol.envelope.node_id_for`), so no other
key can claim it. The key file holds the 32-byte seed in hex. A key file that anyone but the owner can
read is refused, with the command that fixes it. The sequence counter that stamps every message lives
beside the key and is reserved in blocks, so numbers keep rising across restarts without a disk write
per message.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey

from prsm_edge import paths
from prsm_edge.errors import IdentityError
from prsm_edge.protocol.envelope import Signer, node_id_for

__all__ = ["Identity", "SeqStore", "load_or_create"]

log = logging.getLogger(__name__)

KEY_FILE = "node.key"
SEQ_FILE = "node.seq"


@dataclass(frozen=True, slots=True)
class Identity:
    """The node's key pair and the id derived from it."""

    signing_key: SigningKey
    path: Path

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        return bytes(self.signing_key.verify_key)

    @property
    def node_id(self) -> str:
        """The node id derived from the public key."""
        return node_id_for(self.public_key)

    @property
    def fingerprint(self) -> str:
        """A short human-comparable form of the public key."""
        return self.public_key.hex()[:16]

    def signer(self, seq: SeqStore | None = None) -> Signer:
        """A :class:`Signer` for this key, numbering messages from ``seq`` when given."""
        return Signer(self.signing_key, seq.next if seq is not None else None)


def _check_private(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(
            f"the key file {path} can be read by others (mode {stat.S_IMODE(mode):o}); "
            f"run `chmod 600 {path}` and start again"
        )


def load_or_create(directory: Path | None = None) -> Identity:
    """Load the node key from ``directory`` (default: the data dir), creating it on first start."""
    folder = directory if directory is not None else paths.data_dir()
    path = folder / KEY_FILE
    if path.exists():
        _check_private(path)
        try:
            seed = bytes.fromhex(path.read_text(encoding="ascii").strip())
            key = SigningKey(seed)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise IdentityError(
                f"the key file {path} is unreadable or damaged ({exc}); move it away to create a "
                "new identity (the node will get a new id)"
            ) from None
        return Identity(key, path)
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = SigningKey.generate()
        # O_EXCL: two processes starting at once must not both write a key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_or_create(folder)
    except OSError as exc:
        raise IdentityError(f"cannot create the key file {path}: {exc}") from None
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(bytes(key).hex() + "\n")
    log.info("created a new node identity %s in %s", node_id_for(bytes(key.verify_key)), path)
    return Identity(key, path)


class SeqStore:
    """A sequence counter that only rises, persisted by reserving ``block`` numbers at a time."""

    def __init__(self, path: Path, block: int = 1024) -> None:
        self.path = path
        self.block = block
        start = 0
        try:
            start = int(path.read_text(encoding="ascii").strip() or "0")
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            raise IdentityError(f"the sequence file {path} is damaged ({exc}); delete it") from None
        self._next = start + 1
        self._reserved = start
        self._reserve()

    def _reserve(self) -> None:
        self._reserved = self._next + self.block
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(str(self._reserved), encoding="ascii")
        tmp.replace(self.path)

    def next(self) -> int:
        """The next sequence number."""
        if self._next > self._reserved:
            self._reserve()
        value = self._next
        self._next += 1
        return value
