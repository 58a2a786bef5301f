"""QuietHeap: survivors move out of the collector's way each tick; a dropped cycle is still collected at
the full collection the policy schedules."""

from __future__ import annotations

import gc
import weakref

from prsm_edge.io.heap import QuietHeap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_tick_freezes_survivors_and_the_scheduled_full_collection_frees_frozen_cycles() -> None:
    heap = QuietHeap(full_every_s=3600)
    try:
        a, b = Node(), Node()
        a.other, b.other = b, a  # a reference cycle: only the collector can free it
        watch = weakref.ref(a)
        heap.tick()
        assert gc.get_freeze_count() > 0  # automatic collections no longer walk what survived
        del a, b
        gc.collect()
        assert watch() is not None  # frozen: not even a full collection sees it
        heap.full_every_s = 0  # the scheduled full collection is due
        heap.tick()
        assert watch() is None and heap.full_collections == 1
    finally:
        heap.close()
    assert gc.get_freeze_count() == 0
