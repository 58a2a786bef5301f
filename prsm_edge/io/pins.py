"""The coordinator keys a node has pinned: a group's identity is its coordinator's key.

On its first join of a (site, group) a node records the coordinator's Ed25519 public key here, under the
node's home; from then on it accepts a coordinator state, a command or a redirect for that group only from
that key, and joins no other coordinator announcing that group (see docs/discovery.md). A redirect signed
by the pinned key may hand the pin on to the coordinator it names. The file is small JSON, written
atomically with owner-only permissions, and bounded.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Final

from prsm_edge.errors import StorageError

__all__ = ["MAX_PINS", "PinStore"]

log = logging.getLogger(__name__)

MAX_PINS: Final = 256


class PinStore:
    """(site, group) → pinned coordinator public key, persisted in one JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pins: dict[str, bytes] = {}
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise StorageError(
                f"the pinned coordinators file {path} is unreadable ({exc}); fix or delete it "
                "(the node will trust the next coordinator it joins)"
            ) from None
        if isinstance(raw, dict):
            for k, v in list(raw.items())[:MAX_PINS]:
                try:
                    key = bytes.fromhex(v)
                except (TypeError, ValueError):
                    continue
                if isinstance(k, str) and len(key) == 32:
                    self._pins[k] = key

    @staticmethod
    def _name(site: str, group: str) -> str:
        return f"{site}/{group}"

    def get(self, site: str, group: str) -> bytes | None:
        """The key pinned for this group, if any."""
        return self._pins.get(self._name(site, group))

    def all(self) -> dict[tuple[str, str], bytes]:
        """Every pin, by (site, group)."""
        out: dict[tuple[str, str], bytes] = {}
        for name, key in self._pins.items():
            site, _, group = name.partition("/")
            out[(site, group)] = key
        return out

    def pin(self, site: str, group: str, key: bytes) -> None:
        """Pin ``key`` for this group (replacing an older pin) and save."""
        if len(key) != 32:
            raise StorageError("a coordinator key is 32 bytes")
        name = self._name(site, group)
        if self._pins.get(name) == key:
            return
        self._pins.pop(name, None)
        self._pins[name] = key
        while len(self._pins) > MAX_PINS:
            self._pins.pop(next(iter(self._pins)))
        self._save()
        log.info("pinned coordinator key %s… for %s", key.hex()[:16], name)

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({k: v.hex() for k, v in self._pins.items()}, fh)
            tmp.replace(self.path)
        except OSError as exc:
            raise StorageError(f"cannot save pinned coordinators to {self.path}: {exc}") from None
