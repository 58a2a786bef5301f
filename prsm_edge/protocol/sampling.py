"""Adaptive sampling of verification, after BOINC's adaptive replication.

Each node has a *run*: the number of consecutive checks it passed. While the run is below ``threshold``
every opportunity is checked; past it the probability falls as ``threshold / run`` down to ``floor``, so
a node with a long clean record is checked rarely but never left unchecked. Any failed check resets the run to
zero. A fraud flag (:meth:`AdaptiveSampler.flag`) also resets the run and forces the next
``forced_checks`` opportunities to be checked, whatever the record.

The records are the coordinator's to keep across restarts: every change is noted in ``changed`` (the
verifier drains it into effects the shell persists), and :meth:`AdaptiveSampler.restore` loads them back,
so a restart does not send every long-verified node back to being checked every round.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from prsm_edge.errors import LocalError

__all__ = ["AdaptiveSampler", "NodeRecord"]


@dataclass(slots=True)
class NodeRecord:
    """One node's verification record as the sampler keeps it."""

    run: int = 0
    forced: int = 0
    checks: int = 0
    failures: int = 0

    def to_record(self) -> dict[str, int]:
        """Plain data to persist."""
        return {"run": self.run, "forced": self.forced, "checks": self.checks, "failures": self.failures}

    @classmethod
    def from_record(cls, data: object) -> NodeRecord:
        """Rebuild from :meth:`to_record`; a malformed or out-of-range field counts as 0."""
        rec = cls()
        if isinstance(data, dict):
            for name in ("run", "forced", "checks", "failures"):
                v = data.get(name)
                if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 40:
                    setattr(rec, name, v)
        return rec


class AdaptiveSampler:
    """Decides whether to verify a node now, from its run of consecutive valid checks."""

    def __init__(self, threshold: int = 10, floor: float = 0.05, forced_checks: int = 3) -> None:
        if threshold < 1 or not 0.0 < floor <= 1.0 or forced_checks < 0:
            raise LocalError("need threshold >= 1, 0 < floor <= 1 and forced_checks >= 0")
        self.threshold = threshold
        self.floor = floor
        self.forced_checks = forced_checks
        self._nodes: dict[str, NodeRecord] = {}
        self.changed: set[str] = set()  # nodes whose record changed since the owner last drained this

    def record_of(self, node: str) -> NodeRecord:
        """The node's record (a fresh one for a node never seen)."""
        return self._nodes.setdefault(node, NodeRecord())

    def probability(self, node: str) -> float:
        """The chance that the node's next opportunity is checked."""
        rec = self.record_of(node)
        if rec.forced > 0 or rec.run < self.threshold:
            return 1.0
        return max(self.floor, self.threshold / rec.run)

    def should_verify(self, node: str, rng: random.Random) -> bool:
        """Draw whether to verify the node now."""
        p = self.probability(node)
        return p >= 1.0 or rng.random() < p

    def record(self, node: str, passed: bool) -> None:
        """Record the outcome of a check: a pass extends the run, a failure resets it."""
        rec = self.record_of(node)
        self.changed.add(node)
        rec.checks += 1
        rec.forced = max(0, rec.forced - 1)
        if passed:
            rec.run += 1
        else:
            rec.run = 0
            rec.failures += 1

    def flag(self, node: str, checks: int | None = None) -> None:
        """A fraud detector suspects the node: reset its run and force its next checks."""
        rec = self.record_of(node)
        self.changed.add(node)
        rec.run = 0
        rec.forced = max(rec.forced, self.forced_checks if checks is None else checks)

    def forget(self, node: str) -> None:
        """Drop the node's record (it left the group)."""
        self._nodes.pop(node, None)
        self.changed.discard(node)

    def restore(self, node: str, record: NodeRecord) -> None:
        """Load a record persisted by an earlier run."""
        self._nodes[node] = record
