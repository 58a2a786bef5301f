"""Bandwidth checks of a live group, sans-IO: the coordinator's desk of open transfers.

Theory of operation. A node that claims egress bandwidth (``bandwidth_egress``, Mbit/s) is challenged
like the other workloads, but nothing is computed: the node publishes the challenge's chunks
(:func:`~prsm_edge.protocol.proofs.bandwidth_chunk`, ``SHAKE-256(nonce ‖ i)``: a fresh nonce, so no
chunk can be sent before the challenge or taken from another node's transfer) as signed
``BandwidthChunk`` messages on its ``node/{id}/bw`` topic, paced at its claimed rate. The coordinator
stamps each chunk when its bytes arrive and feeds it to the challenge's
:class:`~prsm_edge.protocol.proofs.BandwidthMeter`, which spot-checks ``opens`` chunks chosen by a salt
only the coordinator knows, counts the bytes and times the last arrival on the coordinator's clock.

What bounds the cost (a 200-node group shares one broker; the caps were halved from 8 MiB a check when
two full-size checks failed honest nodes on a loaded 2-core machine, ``benchmarks/README.md``):

* a check moves at most ``PARAMS["bandwidth"].max_bytes`` (4 MiB) in ``target_ms`` (2 s), so the rate a
  check can confirm is at most 2 MiB/s ≈ 16.8 Mbit/s; a larger claim is confirmed up to that figure
  (the verdict's ``measured_rate``), never failed for the broker's limit;
* the checks running at once in a group move at most :data:`MAX_RATE` together (4 MiB/s: two checks at
  the cap, or more smaller ones, never more than :data:`MAX_OPEN`); the others wait their turn, so the
  broker carries at most 4 MiB/s of check traffic at any moment, whatever the group's size;
* chunks are at most :data:`~prsm_edge.protocol.proofs.MAX_CHUNK` (48 KiB), inside the 64 KiB message
  limit;
* :meth:`BandwidthDesk.admits` is asked *before* a chunk is decoded: a node with no open bandwidth check,
  or one sending more than its check's bytes, is dropped unread, so a node flooding its ``bw`` topic costs
  the coordinator a topic split per message, not a signature check.

A node that claims 100 MB/s but has 1 MB/s is checked at the cap and delivers under 80 % of its 4 MiB
by the deadline (``late``); one with 1/1.6 of its claim delivers all of them too slowly (``slow``); one
that sends someone else's (or made-up) bytes fails a spot check (``wrong_result``, fraud) unless it
guesses which four chunks are checked; junk of the right size costs the same bandwidth as the real
payload, so sending it gains nothing.

The figure is a lower bound of the path node → broker → coordinator (the broker and the coordinator's
own link included): it says what the node can move through its group's broker, not its WAN uplink.
"""

from __future__ import annotations

import random
from typing import Final

from prsm_edge.protocol import proofs
from prsm_edge.protocol.messages import BandwidthChunk, ResourceSpec

__all__ = ["ENVELOPE_ALLOWANCE", "MAX_OPEN", "MAX_RATE", "BandwidthDesk", "checked_rate", "first_workloads"]

_P: Final = proofs.PARAMS["bandwidth"]
MAX_RATE: Final = 2 * _P.max_bytes * 1000 / _P.target_ms  # bytes/s of all open checks together
MAX_OPEN: Final = 16  # bandwidth checks in flight at once in a group, however small
ENVELOPE_ALLOWANCE: Final = 1024  # bytes of CBOR and COSE around one chunk's data


def first_workloads(todo: list[str], room: bool) -> list[str] | None:
    """The order to challenge ``todo`` in: bandwidth last (it waits for the broker, the rest do not), and
    None when bandwidth is all that is left and no bandwidth check may start now (ask again later)."""
    rest = [w for w in todo if w != "bandwidth"]
    if len(rest) == len(todo):
        return todo
    if rest:
        return [*rest, "bandwidth"]
    return ["bandwidth"] if room else None


def checked_rate(resources: list[ResourceSpec]) -> float:
    """The rate a bandwidth check of this claim runs at (bytes/s): the claim, at most the cap; 0: none."""
    claim = proofs.claims(resources, ("bandwidth",)).get("bandwidth")
    return 0.0 if claim is None else min(claim.rate, _P.max_bytes * 1000 / _P.target_ms)


class BandwidthDesk:
    """The open bandwidth checks of one group, by challenge id (at most ``max_open``, ``max_rate`` bytes/s
    together)."""

    def __init__(
        self, max_open: int = MAX_OPEN, min_rate_ratio: float | None = None, max_rate: float = MAX_RATE
    ) -> None:
        self.max_open = max(1, max_open)
        self.max_rate = max_rate
        p = proofs.PARAMS["bandwidth"]
        self.min_rate_ratio = p.min_rate_ratio if min_rate_ratio is None else min_rate_ratio
        self._meters: dict[str, proofs.BandwidthMeter] = {}
        self._node: dict[str, str] = {}  # node -> its open challenge id
        self._admitted: dict[str, int] = {}  # challenge id -> payload bytes let through
        self.dropped = 0  # chunks dropped unread (no open check, or past the check's bytes)

    @property
    def rate(self) -> float:
        """Bytes/s the open checks move together (at their checked rates)."""
        return sum(m.challenge.claimed_rate for m in self._meters.values())

    def room_for(self, resources: list[ResourceSpec]) -> bool:
        """Whether a bandwidth check of this claim may start now (the first one always may)."""
        if len(self._meters) >= self.max_open:
            return False
        return not self._meters or self.rate + checked_rate(resources) <= self.max_rate * (1 + 1e-9)

    def __len__(self) -> int:
        return len(self._meters)

    def issue(
        self, coordinator: str, node: str, resources: list[ResourceSpec], rng: random.Random, now_ms: int
    ) -> proofs.Issued | None:
        """A bandwidth challenge for ``node``'s claim, its meter opened; None if it claims no bandwidth,
        has a bandwidth check open already, or no check may start now."""
        claim = proofs.claims(resources, ("bandwidth",)).get("bandwidth")
        if claim is None or not self.room_for(resources) or node in self._node:
            return None
        issued = proofs.make_challenge(coordinator, node, "bandwidth", claim.rate, rng, now_ms)
        cid = issued.challenge.challenge_id
        self._meters[cid] = proofs.BandwidthMeter(issued.challenge, issued.salt)
        self._node[node] = cid
        self._admitted[cid] = 0
        return issued

    def admits(self, node: str, size: int) -> bool:
        """Whether a ``size``-byte message on ``node``'s bandwidth topic is worth decoding (asked before
        anything else is done with it; a yes counts its bytes against the check's allowance)."""
        cid = self._node.get(node)
        if cid is None:
            self.dropped += 1
            return False
        c = self._meters[cid].challenge
        allowance = c.segments * (c.segment_size + ENVELOPE_ALLOWANCE)
        if self._admitted[cid] + size > allowance:
            self.dropped += 1
            return False
        self._admitted[cid] += size
        return True

    def receive(self, chunk: BandwidthChunk, now_ms: int) -> None:
        """A chunk ``chunk.node`` signed, whose bytes arrived at ``now_ms`` (the coordinator's clock)."""
        meter = self._meters.get(chunk.challenge_id)
        if meter is not None and meter.challenge.node == chunk.node:
            meter.receive(chunk.index, chunk.data, now_ms)

    def due(self, now_ms: int) -> list[tuple[str, proofs.Verdict]]:
        """Verdicts of the checks now decided (every chunk in, or the deadline passed); their meters close."""
        out: list[tuple[str, proofs.Verdict]] = []
        for cid, meter in list(self._meters.items()):
            if meter.complete or now_ms > meter.challenge.deadline_ms:
                out.append((cid, meter.verdict(min_rate_ratio=self.min_rate_ratio)))
                self.close(cid)
        return out

    def close(self, cid: str) -> None:
        """Forget one check (settled elsewhere, or voided)."""
        meter = self._meters.pop(cid, None)
        if meter is not None:
            self._node.pop(meter.challenge.node, None)
            self._admitted.pop(cid, None)

    def clear(self) -> None:
        """Forget every open check (a broker outage or restart voids them)."""
        self._meters.clear()
        self._node.clear()
        self._admitted.clear()
