"""The gateway's ordered, de-duplicated uplink stream with a TTL, both ends, sans-IO.

Theory of operation. What a group must report upward *as history* (lease reports, evidence) cannot ride
on Mosquitto 2.0.11's bridge queue, which drops the newest when full, loses messages after outages and
keeps them in RAM between autosaves. So the gateway numbers each item as it takes it from its group
(``stream_seq``, without gaps, persisted), keeps it on disk until the tier above acknowledges it, and sends
it in order, one at a time. Each item carries its expiry (``expires_ms``) inside the signed record; an
expired item is never sent and never accepted. Items the gateway drops on purpose (its buffer full: the
oldest go first; or expired) are declared in the next record's ``skipped``, so the receiver tells a
deliberate, counted drop from a loss. After an outage the backlog is replayed paced (:class:`Pacer`) and
flagged ``historical``.

The receiver (:class:`StreamReceiver`) keeps the last sequence number per gateway: a number at or below it
is a duplicate (redelivery after a lost acknowledgement) and is dropped; a number beyond the next expected
one, minus what was declared skipped, is a loss, counted, and answered with a rebirth request.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final, Literal

from prsm_edge.protocol.messages import UplinkRecord

__all__ = [
    "DEFAULT_TTL_MS",
    "STREAM_KINDS",
    "Pacer",
    "StreamReceiver",
    "StreamStats",
    "Verdict",
]

DEFAULT_TTL_MS: Final = 24 * 3600 * 1000
STREAM_KINDS: Final = frozenset({"lease", "evidence"})


class Pacer:
    """A token bucket: at most ``rate`` items per second, bursts of ``burst``; time passed in."""

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last_ms: int | None = None

    def delay_ms(self, now_ms: int) -> int:
        """How long to wait before the next item may go (0: now); takes the token when it returns 0."""
        if self._last_ms is not None:
            self._tokens = min(self.burst, self._tokens + (now_ms - self._last_ms) * self.rate / 1000)
        self._last_ms = now_ms
        if self._tokens >= 1:
            self._tokens -= 1
            return 0
        return max(1, int((1 - self._tokens) * 1000 / self.rate) + 1)


Verdict = Literal["new", "duplicate", "expired"]


@dataclass(slots=True)
class StreamStats:
    """What one stream delivered."""

    accepted: int = 0
    duplicates: int = 0
    expired: int = 0
    skipped: int = 0  # declared by the gateway (dropped on purpose, counted there)
    lost: int = 0  # undeclared gaps
    historical: int = 0


@dataclass(slots=True)
class _Stream:
    last: int
    stats: StreamStats = field(default_factory=StreamStats)


class StreamReceiver:
    """Per-gateway ordering and de-duplication at the tier above; bounded in the number of streams."""

    def __init__(self, max_streams: int = 50_000) -> None:
        self.max_streams = max_streams
        self._streams: OrderedDict[str, _Stream] = OrderedDict()

    def accept(self, record: UplinkRecord, now_ms: int) -> tuple[Verdict, int]:
        """Judge one record (``new``, ``duplicate``, ``expired``); and how many were lost before it."""
        stream = self._streams.get(record.gateway)
        if stream is None:
            # First contact (or a restarted receiver): take this record as the base, nothing is known lost.
            stream = _Stream(last=record.stream_seq - 1 - record.skipped)
            self._streams[record.gateway] = stream
            if len(self._streams) > self.max_streams:
                self._streams.popitem(last=False)
        else:
            self._streams.move_to_end(record.gateway)
        stats = stream.stats
        if record.stream_seq <= stream.last:
            stats.duplicates += 1
            return "duplicate", 0
        lost = max(0, record.stream_seq - stream.last - 1 - record.skipped)
        stats.lost += lost
        stats.skipped += min(record.skipped, record.stream_seq - stream.last - 1)
        stream.last = record.stream_seq
        if now_ms > record.expires_ms:
            stats.expired += 1
            return "expired", lost
        stats.accepted += 1
        if record.historical:
            stats.historical += 1
        return "new", lost

    def stats(self, gateway: str) -> StreamStats:
        """What the stream from ``gateway`` has delivered so far (zeros if unknown)."""
        stream = self._streams.get(gateway)
        return stream.stats if stream is not None else StreamStats()

    def last(self, gateway: str) -> int | None:
        """The last sequence number taken from ``gateway``."""
        stream = self._streams.get(gateway)
        return None if stream is None else stream.last
