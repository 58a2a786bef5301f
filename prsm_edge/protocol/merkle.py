"""A binary Merkle tree over segment results, with domain-separated SHA-256.

Leaves hash as ``H(0x00 ‖ leaf)`` and inner nodes as ``H(0x01 ‖ left ‖ right)``, so a leaf can never be
passed off as an inner node (second-preimage attacks). A level with an odd number of nodes carries its last
node up unchanged, which gives the same root as RFC 9162's ``MTH`` (split at the largest power of two).
An inclusion path lists the sibling hashes from the leaf upwards; :func:`verify` replays it knowing the
leaf count ``n`` and the index, so a path cannot be reused for another index or another tree size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final

from prsm_edge.errors import LocalError

__all__ = ["HASH_SIZE", "MerkleError", "MerkleTree", "leaf_hash", "node_hash", "root_of", "verify"]

HASH_SIZE: Final = 32
_LEAF: Final = b"\x00"
_NODE: Final = b"\x01"


class MerkleError(LocalError):
    """A tree was asked for something it cannot give (no leaves, an index out of range)."""


def leaf_hash(leaf: bytes) -> bytes:
    """The hash of one leaf: ``SHA-256(0x00 ‖ leaf)``."""
    return hashlib.sha256(_LEAF + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an inner node: ``SHA-256(0x01 ‖ left ‖ right)``."""
    return hashlib.sha256(_NODE + left + right).digest()


class MerkleTree:
    """All levels of the tree over ``leaves``, kept so that paths cost no hashing."""

    __slots__ = ("_levels",)

    def __init__(self, leaves: Sequence[bytes]) -> None:
        if not leaves:
            raise MerkleError("a Merkle tree needs at least one leaf")
        level = [leaf_hash(leaf) for leaf in leaves]
        self._levels: list[list[bytes]] = [level]
        while len(level) > 1:
            nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                nxt.append(level[-1])
            level = nxt
            self._levels.append(level)

    @property
    def size(self) -> int:
        """The number of leaves."""
        return len(self._levels[0])

    @property
    def root(self) -> bytes:
        """The root hash."""
        return self._levels[-1][0]

    def path(self, index: int) -> list[bytes]:
        """The sibling hashes from leaf ``index`` up to the root."""
        if not 0 <= index < self.size:
            raise MerkleError(f"leaf index {index} is outside 0..{self.size - 1}")
        path: list[bytes] = []
        for level in self._levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                path.append(level[sibling])
            index //= 2
        return path


def root_of(leaves: Sequence[bytes]) -> bytes:
    """The root of the tree over ``leaves``."""
    return MerkleTree(leaves).root


def verify(root: bytes, index: int, leaf: bytes, path: Sequence[bytes], n: int) -> bool:
    """Whether ``leaf`` is leaf ``index`` of an ``n``-leaf tree with this ``root``, by ``path``."""
    if n < 1 or not 0 <= index < n or len(root) != HASH_SIZE:
        return False
    digest = leaf_hash(leaf)
    used = 0
    size = n
    while size > 1:
        if index % 2 == 1 or index + 1 < size:
            if used >= len(path) or len(path[used]) != HASH_SIZE:
                return False
            sibling = path[used]
            used += 1
            digest = node_hash(sibling, digest) if index % 2 == 1 else node_hash(digest, sibling)
        index //= 2
        size = (size + 1) // 2
    return used == len(path) and digest == root
