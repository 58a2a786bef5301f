"""Merkle tree: every index of every size verifies, and any change to leaf, path, index or size fails."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prsm_edge.protocol.merkle import MerkleError, MerkleTree, leaf_hash, node_hash, root_of, verify

leaves_st = st.lists(st.binary(max_size=40), min_size=1, max_size=70)


def rfc9162_root(leaves: list[bytes]) -> bytes:
    """RFC 9162's recursive MTH, written independently of the level-by-level tree."""
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + rfc9162_root(leaves[:k]) + rfc9162_root(leaves[k:])).digest()


@given(leaves_st, st.data())
@settings(max_examples=200, deadline=None)
def test_every_leaf_verifies_and_matches_rfc9162(leaves: list[bytes], data: st.DataObject) -> None:
    tree = MerkleTree(leaves)
    assert tree.root == rfc9162_root(leaves) == root_of(leaves)
    i = data.draw(st.integers(0, len(leaves) - 1))
    assert verify(tree.root, i, leaves[i], tree.path(i), len(leaves))


@given(leaves_st, st.data())
@settings(max_examples=200, deadline=None)
def test_changed_leaf_path_index_or_size_fails(leaves: list[bytes], data: st.DataObject) -> None:
    tree = MerkleTree(leaves)
    n = len(leaves)
    i = data.draw(st.integers(0, n - 1))
    path = tree.path(i)
    other = data.draw(st.binary(max_size=40).filter(lambda b: b != leaves[i]))
    assert not verify(tree.root, i, other, path, n)
    if n > 1:
        j = data.draw(st.integers(0, n - 1).filter(lambda j: j != i and leaves[j] != leaves[i]))
        assert not verify(tree.root, j, leaves[i], path, n)
    if path:
        k = data.draw(st.integers(0, len(path) - 1))
        bit = data.draw(st.integers(0, 255))
        bad = [*path]
        bad[k] = bytes([path[k][0] ^ (1 << (bit % 8))]) + path[k][1:]
        assert not verify(tree.root, i, leaves[i], bad, n)
        assert not verify(tree.root, i, leaves[i], path[:-1], n)
    assert not verify(tree.root, i, leaves[i], [*path, bytes(32)], n)
    assert not verify(tree.root, i, leaves[i], path, n + data.draw(st.integers(1, n)) * 2 ** len(path))


def test_domain_separation_keeps_inner_nodes_from_posing_as_leaves() -> None:
    leaves = [b"a", b"b", b"c", b"d"]
    tree = MerkleTree(leaves)
    inner = node_hash(leaf_hash(b"a"), leaf_hash(b"b"))
    # The two-leaf tree of inner nodes has the same shape but must not share the root.
    assert root_of([inner, node_hash(leaf_hash(b"c"), leaf_hash(b"d"))]) != tree.root
    assert not verify(tree.root, 0, inner, tree.path(0)[1:], 2)


def test_single_leaf_and_bounds() -> None:
    tree = MerkleTree([b"only"])
    assert tree.path(0) == []
    assert verify(tree.root, 0, b"only", [], 1)
    assert not verify(tree.root, 1, b"only", [], 1)
    assert not verify(tree.root, 0, b"only", [], 0)
    with pytest.raises(MerkleError):
        MerkleTree([])
    with pytest.raises(MerkleError):
        tree.path(1)
