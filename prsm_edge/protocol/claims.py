"""Drill-down: commit to the signed claims behind a summary, open some of them, check the openings.

A coordinator at any tier sums its units' signed claims (a node's birth or claim update, or a group's
summary one tier up) into its own summary. It also puts a Merkle root over those signed envelopes, one
leaf per unit in unit-id order, into the summary it signs. A tier above that doubts a figure asks for a
few leaves to be opened: each opening is the unit's own signed envelope and its inclusion path, so the
checker needs neither the coordinator's word nor our code beyond COSE and SHA-256 to trust it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from prsm_edge.errors import Reason, RejectedMessage
from prsm_edge.protocol import merkle
from prsm_edge.protocol.envelope import Opened, open_envelope

__all__ = ["MAX_OPENINGS", "ClaimSet", "Opening", "check_openings", "openings_to_wire"]

MAX_OPENINGS: Final = 16


@dataclass(frozen=True, slots=True)
class Opening:
    """One opened leaf: its index, the unit's signed envelope, and the path to the root."""

    index: int
    leaf: bytes
    path: list[bytes]


class ClaimSet:
    """The signed envelopes a summary was computed from, in unit-id order, and their Merkle tree."""

    __slots__ = ("_tree", "envelopes", "units")

    def __init__(self, claims: Sequence[tuple[str, bytes]]) -> None:
        ordered = sorted(claims)
        self.units = [unit for unit, _ in ordered]
        self.envelopes = [env for _, env in ordered]
        self._tree = merkle.MerkleTree(self.envelopes) if self.envelopes else None

    @property
    def root(self) -> bytes:
        """The root (empty when there are no claims)."""
        return self._tree.root if self._tree is not None else b""

    def __len__(self) -> int:
        return len(self.envelopes)

    def open(self, indexes: Sequence[int]) -> list[Opening]:
        """Open the leaves asked for (at most :data:`MAX_OPENINGS`; out-of-range ones are skipped)."""
        if self._tree is None:
            return []
        out = []
        for index in list(dict.fromkeys(indexes))[:MAX_OPENINGS]:
            if isinstance(index, int) and 0 <= index < len(self.envelopes):
                out.append(Opening(index, self.envelopes[index], self._tree.path(index)))
        return out


def openings_to_wire(root: bytes, n: int, openings: list[Opening]) -> dict[str, Any]:
    """An API result carrying openings."""
    return {
        "root": root,
        "n": n,
        "openings": [{"index": o.index, "leaf": o.leaf, "path": o.path} for o in openings],
    }


def check_openings(result: object, root: bytes, n: int, asked: Sequence[int]) -> list[Opened]:
    """Verify an answer to a drill-down against the summary's ``root`` and ``n``; return the opened claims.

    Every index asked for (within range) must be answered, every path must lead to ``root``, and every leaf
    must be a validly signed envelope. Raises :class:`RejectedMessage` otherwise.
    """
    if not isinstance(result, dict) or result.get("root") != root or result.get("n") != n:
        raise RejectedMessage(Reason.MALFORMED, "the opening is for another root or size than the summary's")
    raw = result.get("openings")
    if not isinstance(raw, (list, tuple)) or len(raw) > MAX_OPENINGS:
        raise RejectedMessage(Reason.MALFORMED, "openings must be a short list")
    opened: dict[int, Opened] = {}
    for item in raw:
        if not isinstance(item, dict):
            raise RejectedMessage(Reason.MALFORMED, "an opening must be a map")
        index, leaf, path = item.get("index"), item.get("leaf"), item.get("path")
        if not isinstance(index, int) or not isinstance(leaf, bytes) or not isinstance(path, (list, tuple)):
            raise RejectedMessage(Reason.MALFORMED, "an opening needs index, leaf and path")
        if not all(isinstance(p, bytes) for p in path) or not merkle.verify(root, index, leaf, list(path), n):
            raise RejectedMessage(Reason.BAD_SIGNATURE, f"leaf {index} does not lead to the summary's root")
        opened[index] = open_envelope(leaf)
    missing = [i for i in asked if 0 <= i < n and i not in opened]
    if missing:
        raise RejectedMessage(Reason.MALFORMED, f"leaves {missing[:5]} were asked for and not opened")
    return [opened[i] for i in sorted(opened)]
