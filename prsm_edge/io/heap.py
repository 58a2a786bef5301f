"""Keep Python's cyclic garbage collector from stalling a busy coordinator's event loop.

A regional coordinator holds tens of thousands of long-lived objects (one summary, its dicts and its unit
per group) and replaces thousands of them every few seconds. CPython then runs full (generation 2)
collections every half minute or so, each walking every tracked object: 50–200 ms during which no message
is read, no task placed. Almost all of this data is freed by reference counting as soon as it is
replaced; the collector is only needed for reference cycles, which the coordinator hardly makes.

:class:`QuietHeap` moves what has survived so far into the collector's permanent generation at every
:meth:`QuietHeap.tick` (``gc.freeze``: cheap, it splices lists), so automatic collections only walk what
is newer; objects frozen and later dropped are still freed by reference counting. Cycles that become
garbage after being frozen would stay, so once per ``full_every_s`` the permanent generation is released
and one full collection runs, at a moment the caller chooses (its tick), not in the middle of a burst.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Final

__all__ = ["QuietHeap"]

log = logging.getLogger(__name__)

_FULL_EVERY_S: Final = 3600.0


class QuietHeap:
    """Freeze survivors on every tick; one full collection per ``full_every_s`` (seconds)."""

    def __init__(self, full_every_s: float = _FULL_EVERY_S) -> None:
        self.full_every_s = full_every_s
        self._last_full = time.monotonic()
        self.full_collections = 0

    def tick(self) -> None:
        """Call about once a second from the event loop."""
        now = time.monotonic()
        if now - self._last_full >= self.full_every_s:
            self._last_full = now
            gc.unfreeze()
            started = time.perf_counter()
            found = gc.collect()
            self.full_collections += 1
            took_ms = 1000 * (time.perf_counter() - started)
            log.debug("full garbage collection: %d unreachable, %.0f ms", found, took_ms)
        gc.freeze()

    def close(self) -> None:
        """Give the frozen objects back to the collector (the process goes on without this policy)."""
        gc.unfreeze()
