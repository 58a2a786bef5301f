"""Replay and reorder protection, sans-IO: per-signer sequence numbers and a timestamp window.

The receiver keeps the highest sequence number and timestamp seen from each signer. A message is
accepted when its sequence number is higher than the last one and its timestamp lies within ``window_ms``
of the receiver's clock (passed in as ``now_ms``). A signer that lost its counter (a reinstalled node)
may start again from a lower number only with a message marked ``allow_reset`` (a birth) whose timestamp
is later than anything seen from it, so an old birth replayed later cannot roll a signer back.
The table of signers is bounded; the least recently seen signer is forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from prsm_edge.errors import Reason, RejectedMessage

__all__ = ["ReplayGuard"]


@dataclass(slots=True)
class _Seen:
    seq: int
    ts: int


class ReplayGuard:
    """Accept each signer's messages once, in order, and only while fresh."""

    def __init__(self, window_ms: int = 120_000, max_signers: int = 10_000) -> None:
        if window_ms <= 0 or max_signers <= 0:
            raise ValueError("window_ms and max_signers must be positive")
        self.window_ms = window_ms
        self.max_signers = max_signers
        self._seen: OrderedDict[str, _Seen] = OrderedDict()

    def check(self, signer: str, seq: int, ts: int, now_ms: int, *, allow_reset: bool = False) -> int:
        """Record the message or raise; return how many sequence numbers were skipped (0 if none)."""
        if abs(now_ms - ts) > self.window_ms:
            raise RejectedMessage(
                Reason.STALE,
                f"timestamp {ts} is {now_ms - ts} ms from now (window {self.window_ms})",
            )
        seen = self._seen.get(signer)
        gap = 0
        if seen is not None:
            if seq <= seen.seq:
                if not (allow_reset and ts > seen.ts):
                    raise RejectedMessage(
                        Reason.REPLAY, f"sequence {seq} is not after {seen.seq} from {signer}"
                    )
            else:
                gap = seq - seen.seq - 1
            seen.seq, seen.ts = seq, max(ts, seen.ts)
            self._seen.move_to_end(signer)
        else:
            self._seen[signer] = _Seen(seq, ts)
            if len(self._seen) > self.max_signers:
                self._seen.popitem(last=False)
        return gap

    def last_seq(self, signer: str) -> int | None:
        """The highest sequence number accepted from ``signer``, if it is remembered."""
        seen = self._seen.get(signer)
        return None if seen is None else seen.seq

    def forget(self, signer: str) -> None:
        """Drop what is known of ``signer``."""
        self._seen.pop(signer, None)

    def __len__(self) -> int:
        return len(self._seen)
