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

__all__ = ["CommandGuard", "ReplayGuard"]


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

    def entry(self, signer: str) -> tuple[int, int] | None:
        """The (sequence number, timestamp) remembered for ``signer``, for a shell that persists them."""
        seen = self._seen.get(signer)
        return None if seen is None else (seen.seq, seen.ts)

    def restore(self, signer: str, seq: int, ts: int) -> None:
        """Remember what an earlier run accepted from ``signer`` (oldest first, bounded)."""
        self._seen[signer] = _Seen(seq, ts)
        self._seen.move_to_end(signer)
        if len(self._seen) > self.max_signers:
            self._seen.popitem(last=False)

    def last_seq(self, signer: str) -> int | None:
        """The highest sequence number accepted from ``signer``, if it is remembered."""
        seen = self._seen.get(signer)
        return None if seen is None else seen.seq

    def forget(self, signer: str) -> None:
        """Drop what is known of ``signer``."""
        self._seen.pop(signer, None)

    def __len__(self) -> int:
        return len(self._seen)


class CommandGuard:
    """Accept each signed command once, and only while fresh: a bounded set of (signer, seq) seen.

    Commands reach a node over several topics and QoS levels, so their order is not guaranteed and a
    strict "higher than the last" rule would drop real ones; instead every (signer, seq) inside the window
    is remembered. When the set is full the oldest entry is dropped and its sequence number becomes that
    signer's floor: nothing at or below it is accepted again, so forgetting never reopens a replay.
    """

    def __init__(self, window_ms: int = 120_000, max_entries: int = 4096, max_signers: int = 64) -> None:
        if window_ms <= 0 or max_entries <= 0 or max_signers <= 0:
            raise ValueError("window_ms, max_entries and max_signers must be positive")
        self.window_ms = window_ms
        self.max_entries = max_entries
        self.max_signers = max_signers
        self._seen: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._floor: OrderedDict[str, int] = OrderedDict()

    def check(self, signer: str, seq: int, ts: int, now_ms: int) -> None:
        """Record the command or raise :class:`RejectedMessage` (``stale`` or ``replay``)."""
        if abs(now_ms - ts) > self.window_ms:
            raise RejectedMessage(
                Reason.STALE, f"command timestamp {ts} is {now_ms - ts} ms from now (window {self.window_ms})"
            )
        if (signer, seq) in self._seen or seq <= self._floor.get(signer, -1):
            raise RejectedMessage(Reason.REPLAY, f"command {seq} from {signer} was seen already")
        # Entries older than the window can go: their timestamps fail the check above anyway.
        while self._seen:
            (old_signer, old_seq), old_ts = next(iter(self._seen.items()))
            stale = abs(now_ms - old_ts) > self.window_ms
            if not stale and len(self._seen) < self.max_entries:
                break
            self._seen.popitem(last=False)
            if not stale:
                self._raise_floor(old_signer, old_seq)
        self._seen[(signer, seq)] = ts

    def _raise_floor(self, signer: str, seq: int) -> None:
        self._floor[signer] = max(seq, self._floor.get(signer, -1))
        self._floor.move_to_end(signer)
        while len(self._floor) > self.max_signers:
            self._floor.popitem(last=False)

    def __len__(self) -> int:
        return len(self._seen)
