"""The wall clock, read in one place: the protocol's timestamps are Unix milliseconds."""

from __future__ import annotations

import time


def now_ms() -> int:
    """Wall-clock Unix milliseconds."""
    return time.time_ns() // 1_000_000
