"""Capped exponential backoff with full jitter, sans-IO (the caller passes the random draw)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    """Delays for reconnect attempts: ``initial·factor^n`` capped at ``cap``, scaled by a random draw.

    Authentication failures wait the full cap: retrying bad credentials quickly helps nobody.
    """

    initial: float = 0.5
    cap: float = 30.0
    factor: float = 2.0
    attempts: int = field(default=0)

    def next_delay(self, draw: float, *, auth_failure: bool = False) -> float:
        """The next delay in seconds; ``draw`` is uniform in [0, 1)."""
        ceiling = self.cap if auth_failure else min(self.cap, self.initial * self.factor**self.attempts)
        self.attempts += 1
        # Full jitter, but never less than a tenth of the initial delay (no hot loop).
        return max(self.initial / 10, ceiling * draw)

    def reset(self) -> None:
        """Forget past failures (after a connection that worked)."""
        self.attempts = 0
