"""Benchmark proofs: a node proves each resource it claims by nonce-seeded work it cannot precompute.

Theory of operation.

1. The verifier draws a fresh 32-byte ``nonce`` and a secret ``salt`` and sends a
   :class:`~prsm_edge.protocol.messages.BenchmarkChallenge` (:func:`make_challenge`) for one workload,
   sized so that a node running at its claimed rate needs about ``target_ms``; the deadline is the issue
   time plus that expected time × ``slack`` plus a network allowance.
2. The node runs the work (:func:`prove`), builds a Merkle tree over the results and sends the root in a
   :class:`~prsm_edge.protocol.messages.BenchmarkProof` before the deadline.
3. Only then does the verifier reveal ``salt``. The segments to check are ``H(nonce ‖ root ‖ salt)`` →
   ``opens`` distinct indices (:func:`open_indices`): Fiat–Shamir over the committed root, salted by a
   value the prover learns only after committing, so it can neither know the indices in advance nor grind
   junk roots until they fall on segments it did compute. ``open_commit = H(salt)`` in the challenge lets
   anyone check afterwards that the verifier did not pick the indices by hand.
4. The node answers with a :class:`~prsm_edge.protocol.messages.ProofOpening`: each selected result, the
   results it was derived from (:func:`opening_indices`), and their Merkle paths. :func:`check`
   re-derives only the selected results from their opened inputs, so checking costs about
   ``opens / segments`` of proving.

A Python deadline measures whatever runs between the issue and the arrival; if that is an interpreter
loop, a prover with native code gets several times the claimed speed for free. So every workload here
spends its time inside large C calls (``hashlib.pbkdf2_hmac`` with an iteration count, or over
kilobyte inputs), which release the GIL and run at the same speed whoever calls them.

Workloads (the work unit in brackets; :data:`RATE_KEYS` names the ``ResourceSpec.details`` key where a
node claims its rate, filled by the agent's calibration):

* ``cpu`` [one PBKDF2-HMAC-SHA-256 iteration] — speed *and* cores. The segments form ``lanes`` chains,
  one per claimed core: segment ``i`` is in lane ``i % lanes`` and is
  ``PBKDF2(password = previous result of its lane (or H(nonce ‖ i) for a lane's first),
  salt = nonce ‖ i, iterations = segment_size)``. A chain is sequential, so a lane proves one core's
  speed, and ``lanes`` lanes in the time of one prove that many cores (or that much faster ones) ran in
  parallel. Opening a segment also opens its predecessor, so the verifier re-runs just that segment.
* ``memory`` [one byte of table] — capacity and fill bandwidth. The prover builds a table of
  ``segments`` lines of :data:`LINE_BYTES` bytes, each line the raw HMAC-SHA-256 blocks of
  ``PBKDF2(password = line[i-1] ‖ line[j], salt = nonce ‖ i, 1 iteration)``, where ``j`` is chosen by the
  content of ``line[i-1]`` (Argon2-style data-dependent reads). No line can be produced without the full
  content of two earlier lines, and which earlier line is needed is known only once its predecessor
  exists, so a prover that keeps less than the table must recompute evicted lines — recursively — while
  building, and misses its deadline; one that writes junk for a missing line commits an inconsistent line
  that an opened check exposes. The checked size is ``min(claimed capacity, rate × target, max_bytes)``:
  a level earned this way covers that many bytes, not a larger claim. The rate proven is the fill rate
  (hash-bound: two random 1 KiB reads and one write per line), a lower bound of the memory bandwidth,
  and only up to ``checked bytes / target`` (a smaller table is asked for in ``target_ms``, so that the
  network's delay stays a small share of what is timed). The deadline follows from the claimed fill
  rate, so a node that *under*-claims it buys time to recompute what it did not keep: keeping 3/4 of the
  lines costs ≈ 1.5× the work, 1/2 much more; a fill rate far below its cohort's is a fraud flag.
* ``storage`` [one byte of table] — the same table, written to the node's disk by the prover, with a
  second deadline: the opening must arrive within ``open_ms`` of the salt reveal. Holding is what that
  proves: a prover that deleted the table must rebuild it up to the highest selected line (≈ 8/9 of it
  for 8 opens) inside a window of a quarter of the build time. It does *not* prove the bytes are on a
  disk: a table smaller than the prover's memory can be held in RAM, or on another machine it can read
  from inside the window; and the random-read latency of the disk is hidden by the network's. The rate
  proven is the write throughput of the fill (hash-bound on fast disks).
* ``bandwidth`` [one byte sent] — egress through the broker. The node publishes ``segments`` chunks of
  ``segment_size`` bytes of ``SHAKE-256(nonce ‖ i)`` (:func:`bandwidth_chunk`; cheap to make on purpose:
  what is measured is moving the bytes) as signed ``BandwidthChunk`` messages; the coordinator's
  :class:`BandwidthMeter` counts the bytes that arrive, spot-checks ``opens`` chunks chosen by its
  secret salt, and times the last arrival on its own clock. The figure is a lower bound of the path
  node → broker → coordinator, so a claim above what the broker and the coordinator's own link carry
  can never be confirmed (say so to users, don't fail the node: :data:`PARAMS` caps the checked bytes,
  and the rate checked is then ``max_bytes / target``). A live group runs it through
  :class:`~prsm_edge.protocol.bandwidth.BandwidthDesk` (bounded checks at once, chunks admitted before
  decoding only while their check is open).

Not checked (:func:`claims` leaves them out, so they earn no level above self-reported): GPUs — there
is no CUDA runtime on the machines this was built on, and NVML strings are unauthenticated; TPUs,
quantum and edge accelerators likewise; ingress bandwidth and caches (not yet designed).
"""

from __future__ import annotations

import enum
import hashlib
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple, Protocol, overload

from prsm_edge.errors import LocalError
from prsm_edge.protocol import merkle
from prsm_edge.protocol.messages import (
    BenchmarkChallenge,
    BenchmarkProof,
    ProofOpening,
    ResourceSpec,
    ResourceType,
    SegmentOpening,
)

__all__ = [
    "LINE_BYTES",
    "LIVE_WORKLOADS",
    "MIN_SEGMENT_SIZE",
    "PARAMS",
    "RATE_KEYS",
    "TABLE_WORKLOADS",
    "WORKLOADS",
    "BandwidthMeter",
    "Claim",
    "Committed",
    "Issued",
    "LineStore",
    "Params",
    "ProofError",
    "Verdict",
    "VerdictReason",
    "bandwidth_chunk",
    "build_table",
    "check",
    "claimed_rates",
    "claims",
    "dep_index",
    "expected_ms",
    "lane_results",
    "make_challenge",
    "make_proof",
    "measured_rate",
    "open_indices",
    "open_segments",
    "opening_indices",
    "prove",
    "run_segment",
    "salt_commitment",
    "table_line",
    "total_work",
]

WORKLOADS: Final = ("cpu", "memory", "storage", "bandwidth")
TABLE_WORKLOADS: Final = ("memory", "storage")
LIVE_WORKLOADS: Final = ("cpu", "memory", "storage", "bandwidth")  # what a live group checks
LINE_BYTES: Final = 1024  # one table line: 32 HMAC-SHA-256 blocks
MIN_SEGMENT_SIZE: Final[dict[str, int]] = {
    "cpu": 1,
    "memory": LINE_BYTES,
    "storage": LINE_BYTES,
    "bandwidth": 1,
}
MAX_SEGMENTS: Final = 4096  # cpu and bandwidth
MAX_LINES: Final = 1 << 20  # tables: 1 GiB
MAX_SEGMENT_SIZE: Final = 1 << 30
MAX_LANES: Final = 256
MAX_TABLE_OPENS: Final = 8  # each selected line opens up to three lines with paths: 8 fit in 64 KiB
MAX_CHUNK: Final = 48 * 1024  # a bandwidth chunk, well inside the 64 KiB payload limit
_OPEN_DOMAIN: Final = b"prsm-open/v1"
_SALT_DOMAIN: Final = b"prsm-salt/v1"
_CPU_DOMAIN: Final = b"prsm-cpu/v2"
_TABLE_DOMAIN: Final = b"prsm-table/v1"
_BW_DOMAIN: Final = b"prsm-bw/v1"
_LINE_MASK: Final = (1 << (8 * LINE_BYTES)) - 1

# Where a node claims the rate of each workload, in ``ResourceSpec.details`` of the resource it proves.
RATE_KEYS: Final[dict[str, str]] = {
    "cpu": "pbkdf2_per_s",  # PBKDF2-HMAC-SHA-256 iterations per second, per core
    "memory": "table_fill_bytes_per_s",  # table bytes built per second in memory
    "storage": "table_write_bytes_per_s",  # table bytes built and written per second to disk
}
# The resource each workload proves. Bandwidth needs no rate key: the claimed capacity is the rate.
RESOURCE_OF: Final[dict[str, ResourceType]] = {
    "cpu": ResourceType.COMPUTE_CPU,
    "memory": ResourceType.STORAGE_MEMORY,
    "storage": ResourceType.STORAGE_PERSISTENT,
    "bandwidth": ResourceType.BANDWIDTH_EGRESS,
}
_GB: Final = 1_000_000_000  # capacities are claimed in GB (RESOURCE_UNITS)
_MBIT: Final = 125_000  # one Mbit/s in bytes per second


@dataclass(frozen=True, slots=True)
class Params:
    """How one workload is challenged and judged.

    Chosen for the ±15 % noise an honest prover shows against its own calibration
    (``benchmarks/proof_noise.py``; figures in ``benchmarks/README.md``). Both ends of that noise must
    be judged right: an honest node 15 % slower than calibrated, with 0.5 s of network and scheduling
    delay on a 3 s challenge, measures ``3 / (3 / 0.85 + 0.5) = 0.745`` of its claim and passes
    ``min_rate_ratio`` 0.74; a node claiming 1.6× its real rate measures ``1.15 / 1.6 = 0.72`` on a run
    15 % faster than usual and fails. Overclaims up to ``1 / 0.74 ≈ 1.35×`` are inside the noise band
    (timing cannot tell them from noise). The measured rate includes the network (the verifier cannot
    tell it from work), which is why ``target_ms`` is seconds: the longer the work, the smaller the
    network's share. ``slack = 1 / min_rate_ratio``: the deadline is where the rate check would fail
    anyway, plus ``network_ms``.
    """

    segments: int = 0  # cpu only: tables have one segment a line, bandwidth one a chunk
    opens: int = 8
    target_ms: int = 3_000
    slack: float = 1.35
    min_rate_ratio: float = 0.74
    network_ms: int = 500
    max_bytes: int = 0  # tables and bandwidth: the most bytes one challenge checks


PARAMS: Final[dict[str, Params]] = {
    "cpu": Params(segments=1024, opens=16),
    "memory": Params(max_bytes=1 << 30),
    "storage": Params(target_ms=4_000, max_bytes=1 << 30),
    # Bandwidth: 4 MiB in 2 s at most (≤ 16.8 Mbit/s confirmed per check; protocol/bandwidth.py says why),
    # judged by the noise of paced transfers through a loopback Mosquitto (benchmarks/bandwidth_noise.py).
    "bandwidth": Params(opens=4, target_ms=2_000, max_bytes=4 << 20),
}


class ProofError(LocalError):
    """A challenge or workload that cannot be run as asked (unknown workload, impossible sizes)."""


class VerdictReason(enum.StrEnum):
    """Why a proof was accepted or rejected."""

    OK = "ok"
    MISMATCH = "mismatch"  # the proof or opening is for another challenge or node
    LATE = "late"  # the commitment arrived after the deadline
    LATE_OPENING = "late_opening"  # the opening arrived more than ``open_ms`` after the salt reveal
    SLOW = "slow"  # on time, but the measured rate is below ``min_rate_ratio`` × the claimed rate
    BAD_SALT = "bad_salt"  # the opening names a salt the verifier did not commit to
    WRONG_SEGMENTS = "wrong_segments"  # not exactly the segments the root and salt select (and their inputs)
    BAD_PATH = "bad_path"  # an opened result is not in the committed tree
    WRONG_RESULT = "wrong_result"  # an opened result is not what the workload gives


@dataclass(frozen=True, slots=True)
class Verdict:
    """The verifier's decision on one proof, with the rate it measured from its own clock."""

    accepted: bool
    reason: VerdictReason
    detail: str = ""
    measured_rate: float = 0.0
    checked: tuple[int, ...] = ()


class Issued(NamedTuple):
    """A challenge to send now, and the salt to reveal once its root has arrived."""

    challenge: BenchmarkChallenge
    salt: bytes


class Claim(NamedTuple):
    """What a node claims for one workload: the rate, and the shape of the challenge that checks it."""

    rate: float  # work units per second, all lanes together
    lanes: int = 1
    capacity_bytes: int = 0


# ---- claims ------------------------------------------------------------------------------------------
def _positive(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    v = float(value)
    return v if math.isfinite(v) and 0 < v < 1e18 else 0.0


def claims(resources: Sequence[ResourceSpec], workloads: Sequence[str] = LIVE_WORKLOADS) -> dict[str, Claim]:
    """Workload → what the node claims, for each claimed resource that one of ``workloads`` verifies.

    CPU: the per-core rate (``details["pbkdf2_per_s"]``) × the offered cores, one lane a core. Memory and
    storage: the fill rate in their details and the capacity in GB. Egress bandwidth: its capacity in
    Mbit/s (checked through the group's broker: ``protocol/bandwidth.py``). A resource without a valid
    rate is left out (it stays self-reported), as are GPUs and the rest (see the module docstring).
    """
    out: dict[str, Claim] = {}
    for spec in resources:
        capacity = _positive(spec.capacity)
        for workload, rtype in RESOURCE_OF.items():
            if spec.type is not rtype or workload in out or capacity <= 0 or workload not in workloads:
                continue
            if workload == "bandwidth":
                out[workload] = Claim(capacity * _MBIT)
                continue
            rate = _positive(spec.details.get(RATE_KEYS[workload]))
            if rate <= 0:
                continue
            if workload == "cpu":
                lanes = max(1, min(MAX_LANES, int(capacity)))
                out[workload] = Claim(rate * lanes, lanes=lanes)
            else:
                out[workload] = Claim(rate, capacity_bytes=int(min(capacity * _GB, 1 << 60)))
    return out


def claimed_rates(resources: Sequence[ResourceSpec]) -> dict[str, float]:
    """Workload name → claimed rate (work units per second), for each claimed resource a live group checks."""
    return {w: c.rate for w, c in claims(resources).items()}


# ---- the work ------------------------------------------------------------------------------------------
def _cpu_segment(nonce: bytes, index: int, size: int, prev: bytes | None) -> bytes:
    password = (
        prev if prev is not None else hashlib.sha256(_CPU_DOMAIN + nonce + index.to_bytes(4, "big")).digest()
    )
    return hashlib.pbkdf2_hmac("sha256", password, _CPU_DOMAIN + nonce + index.to_bytes(4, "big"), size, 32)


def run_segment(workload: str, nonce: bytes, index: int, size: int, prev: bytes | None = None) -> bytes:
    """Segment ``index`` of the ``cpu`` workload: ``prev`` is the previous result of its lane (None: the
    lane's first segment). Pure and deterministic."""
    if workload != "cpu":
        raise ProofError(f"run_segment runs the cpu workload only, not {workload!r}")
    if not MIN_SEGMENT_SIZE[workload] <= size <= MAX_SEGMENT_SIZE:
        raise ProofError(f"segment size {size} is outside what workload {workload!r} allows")
    if not 0 <= index < 2**32:
        raise ProofError(f"segment index {index} out of range")
    return _cpu_segment(nonce, index, size, prev)


def lane_results(challenge: BenchmarkChallenge, lane: int) -> list[bytes]:
    """The results of one lane of a ``cpu`` challenge, in order (segments lane, lane + lanes, ...)."""
    prev: bytes | None = None
    out: list[bytes] = []
    for i in range(lane, challenge.segments, challenge.lanes):
        prev = _cpu_segment(challenge.nonce, i, challenge.segment_size, prev)
        out.append(prev)
    return out


def dep_index(index: int, prev_line: bytes) -> int:
    """Which earlier line line ``index`` (≥ 1) reads besides its predecessor, chosen by that predecessor."""
    return int.from_bytes(prev_line[:8], "big") % index


def table_line(nonce: bytes, index: int, prev_line: bytes = b"", dep_line: bytes = b"") -> bytes:
    """Line ``index`` of a table: ``E ⊕ (line[i-1] + line[j] mod 2^8192)``.

    ``E`` is 32 raw HMAC-SHA-256 blocks keyed by the full content of both earlier lines (PBKDF2 with one
    iteration). ``E`` alone could be regenerated from its 32-byte key, so a prover could keep keys
    instead of lines; adding the earlier lines' raw content back makes a line need both parents'
    content, and each of those its own two parents: a prover that keeps a share ``s`` of the lines
    pays ``1 / (1 - 2(1 - s))`` line computations for each missing one (unbounded below ``s = ½``).
    """
    salt = _TABLE_DOMAIN + nonce + index.to_bytes(8, "big")
    expand = hashlib.pbkdf2_hmac("sha256", prev_line + dep_line + salt, salt, 1, LINE_BYTES)
    if not prev_line:
        return expand
    mixed = (int.from_bytes(prev_line, "big") + int.from_bytes(dep_line, "big")) & _LINE_MASK
    return (int.from_bytes(expand, "big") ^ mixed).to_bytes(LINE_BYTES, "big")


class LineStore(Protocol):
    """Where a table's lines are kept while it is built: a list in memory, a file on disk."""

    def append(self, line: bytes, /) -> None: ...

    def __getitem__(self, index: int, /) -> bytes: ...

    def __len__(self) -> int: ...


def build_table(nonce: bytes, lines: int, store: LineStore) -> None:
    """Append ``lines`` table lines to the empty ``store`` (each reads two earlier lines from it)."""
    if len(store):
        raise ProofError("a table is built into an empty store")
    prev = table_line(nonce, 0)
    store.append(prev)
    for i in range(1, lines):
        prev = table_line(nonce, i, prev, store[dep_index(i, prev)])
        store.append(prev)


class Committed(Sequence[bytes]):
    """A proof's results with the Merkle tree over them, kept so that opening needs no re-hashing."""

    __slots__ = ("items", "tree")

    def __init__(self, items: Sequence[bytes], tree: merkle.MerkleTree | None = None) -> None:
        self.items = items
        self.tree = tree if tree is not None else merkle.MerkleTree(items)

    @property
    def root(self) -> bytes:
        """The root the proof commits to."""
        return self.tree.root

    def __len__(self) -> int:
        return len(self.items)

    @overload
    def __getitem__(self, index: int) -> bytes: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[bytes]: ...
    def __getitem__(self, index: int | slice) -> bytes | Sequence[bytes]:
        return self.items[index]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.items)


def prove(challenge: BenchmarkChallenge, store: LineStore | None = None) -> tuple[bytes, Committed]:
    """Run the whole challenge (lanes one after another); the Merkle root and the results to open.

    Table workloads build into ``store`` (a list when None: memory). The node's prover runs ``cpu`` lanes
    in parallel threads instead (``node/prover.py``); the results are the same.
    """
    match challenge.workload:
        case "cpu":
            lanes = [lane_results(challenge, lane) for lane in range(challenge.lanes)]
            results = [lanes[i % challenge.lanes][i // challenge.lanes] for i in range(challenge.segments)]
            done = Committed(results)
        case "memory" | "storage":
            lines: LineStore = store if store is not None else []
            build_table(challenge.nonce, challenge.segments, lines)
            done = Committed(_as_sequence(lines))
        case _:
            raise ProofError(
                f"workload {challenge.workload!r} is not proved by computing (see BandwidthMeter)"
            )
    return done.root, done


def _as_sequence(store: LineStore) -> Sequence[bytes]:
    return store if isinstance(store, Sequence) else _StoreView(store)


class _StoreView(Sequence[bytes]):
    __slots__ = ("_store",)

    def __init__(self, store: LineStore) -> None:
        self._store = store

    def __len__(self) -> int:
        return len(self._store)

    @overload
    def __getitem__(self, index: int) -> bytes: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[bytes]: ...
    def __getitem__(self, index: int | slice) -> bytes | Sequence[bytes]:
        if isinstance(index, slice):
            return [self._store[i] for i in range(*index.indices(len(self._store)))]
        if not -len(self._store) <= index < len(self._store):
            raise IndexError(index)
        return self._store[index % len(self._store)]


def bandwidth_chunk(nonce: bytes, index: int, size: int) -> bytes:
    """Chunk ``index`` of a bandwidth challenge's payload (cheap by design: moving it is the work)."""
    return hashlib.shake_256(_BW_DOMAIN + nonce + index.to_bytes(4, "big")).digest(size)


# ---- challenges ------------------------------------------------------------------------------------------
def total_work(challenge: BenchmarkChallenge) -> int:
    """Work units the whole challenge costs an honest prover."""
    return challenge.segments * challenge.segment_size


def expected_ms(challenge: BenchmarkChallenge) -> float:
    """How long a node running at exactly its claimed rate needs for the whole challenge."""
    return total_work(challenge) * 1000.0 / challenge.claimed_rate


def salt_commitment(salt: bytes) -> bytes:
    """``H(salt)``, carried in the challenge so the opened indices can be checked by anyone."""
    return hashlib.sha256(_SALT_DOMAIN + salt).digest()


def _shape(
    workload: str, rate: float, target_ms: int, segments: int, lanes: int, capacity_bytes: int, max_bytes: int
) -> tuple[int, int]:
    """(segments, segment_size) for a challenge of ``workload``."""
    budget = rate * target_ms / 1000.0
    if workload == "cpu":
        segments = max(lanes, segments - segments % lanes)
        return segments, min(MAX_SEGMENT_SIZE, max(1, round(budget / segments)))
    if workload in TABLE_WORKLOADS:
        size = min(budget, max_bytes or math.inf, capacity_bytes or math.inf)
        return max(2, min(MAX_LINES, int(size // LINE_BYTES))), LINE_BYTES
    size = min(budget, max_bytes or math.inf)  # bandwidth
    chunk = max(1, min(MAX_CHUNK, math.ceil(size / 16)))
    return max(1, min(MAX_SEGMENTS, int(size // chunk))), chunk  # whole chunks, never past max_bytes


def make_challenge(
    verifier: str,
    node: str,
    workload: str,
    claimed_rate: float,
    rng: random.Random,
    now_ms: int,
    *,
    segments: int | None = None,
    target_ms: int | None = None,
    opens: int | None = None,
    slack: float | None = None,
    network_ms: int | None = None,
    lanes: int = 1,
    capacity_bytes: int = 0,
    max_bytes: int | None = None,
) -> Issued:
    """A fresh challenge sized for ``target_ms`` at ``claimed_rate`` work units per second.

    Parameters left None take the workload's :data:`PARAMS`. ``lanes`` (``cpu``) is the number of claimed
    cores, ``claimed_rate`` their rate together; ``capacity_bytes`` (tables) the claimed capacity, of
    which at most ``max_bytes`` are checked. ``segments`` applies to ``cpu`` (rounded down to a multiple
    of ``lanes``, and at least one a lane); tables have one segment a line, bandwidth one a chunk.
    """
    if workload not in MIN_SEGMENT_SIZE:
        raise ProofError(f"unknown workload {workload!r}; known: {', '.join(WORKLOADS)}")
    p = PARAMS[workload]
    segments = p.segments if segments is None else segments
    target_ms = p.target_ms if target_ms is None else target_ms
    opens = p.opens if opens is None else opens
    slack = p.slack if slack is None else slack
    network_ms = p.network_ms if network_ms is None else network_ms
    max_bytes = p.max_bytes if max_bytes is None else max_bytes
    if not (math.isfinite(claimed_rate) and claimed_rate > 0):
        raise ProofError(f"claimed rate must be a positive number, not {claimed_rate!r}")
    if not 1 <= lanes <= MAX_LANES or capacity_bytes < 0 or max_bytes < 0:
        raise ProofError(f"need 1 <= lanes ({lanes}) <= {MAX_LANES} and capacities not negative")
    if workload == "cpu" and not 1 <= segments <= MAX_SEGMENTS:
        raise ProofError(f"need 1 <= segments ({segments}) <= {MAX_SEGMENTS}")
    if opens < 1:
        raise ProofError(f"need at least one segment opened, not {opens}")
    if target_ms <= 0 or slack < 1.0 or network_ms < 0:
        raise ProofError("target_ms must be positive, slack at least 1 and network_ms not negative")
    segments, size = _shape(
        workload,
        claimed_rate,
        target_ms,
        segments,
        lanes if workload == "cpu" else 1,
        capacity_bytes,
        max_bytes,
    )
    if workload in TABLE_WORKLOADS:
        opens = min(opens, MAX_TABLE_OPENS)
    opens = min(opens, segments)
    if workload != "cpu":
        # A table or transfer cut short by the capacity or max_bytes would be over before the network's
        # share stops mattering: ask for the smaller amount in target_ms instead (the rate checked is
        # then min(claimed, checked bytes / target), the capacity the checked bytes).
        claimed_rate = min(claimed_rate, segments * size * 1000.0 / target_ms)
    nonce = rng.randbytes(32)
    salt = rng.randbytes(32)
    expected = segments * size * 1000.0 / claimed_rate
    open_ms = network_ms + max(1_000, math.ceil(expected / 4)) if workload == "storage" else 0
    challenge = BenchmarkChallenge(
        challenge_id=hashlib.sha256(nonce).hexdigest()[:16],
        node=node,
        verifier=verifier,
        workload=workload,
        nonce=nonce,
        segments=segments,
        segment_size=size,
        claimed_rate=float(claimed_rate),
        deadline_ms=now_ms + math.ceil(expected * slack) + network_ms,
        issued_ms=now_ms,
        opens=opens,
        open_commit=salt_commitment(salt),
        lanes=lanes if workload == "cpu" else 1,
        open_ms=open_ms,
    )
    return Issued(challenge, salt)


def make_proof(challenge: BenchmarkChallenge, root: bytes, elapsed_ms: int) -> BenchmarkProof:
    """The commitment message for ``challenge``."""
    return BenchmarkProof(
        challenge_id=challenge.challenge_id, node=challenge.node, root=root, elapsed_ms=elapsed_ms
    )


# ---- opening ------------------------------------------------------------------------------------------
def open_indices(challenge: BenchmarkChallenge, root: bytes, salt: bytes) -> list[int]:
    """The ``opens`` distinct segment indices selected by ``H(nonce ‖ root ‖ salt)``, ascending."""
    n = challenge.segments
    k = min(challenge.opens, n)
    if n < 1 or k < 1:
        return []
    seed = hashlib.sha256(_OPEN_DOMAIN + challenge.nonce + root + salt).digest()
    chosen: set[int] = set()
    counter = 0
    while len(chosen) < k:
        block = hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
        for j in range(0, 32, 8):
            # 64-bit draws: the modulo bias (n / 2^64) is negligible.
            chosen.add(int.from_bytes(block[j : j + 8], "big") % n)
            if len(chosen) == k:
                break
    return sorted(chosen)


def _inputs(
    challenge: BenchmarkChallenge, selected: Sequence[int], lookup: Callable[[int], bytes | None]
) -> set[int]:
    """The selected indices and the inputs each is derived from (what an opening must contain)."""
    need = set(selected)
    for i in selected:
        if challenge.workload == "cpu":
            if i >= challenge.lanes:
                need.add(i - challenge.lanes)
        elif i >= 1:
            need.add(i - 1)
            prev = lookup(i - 1)
            if prev is not None:
                need.add(dep_index(i, prev))
    return need


def opening_indices(
    challenge: BenchmarkChallenge, root: bytes, salt: bytes, results: Sequence[bytes]
) -> list[int]:
    """Every index the prover opens: those the root and salt select and the inputs they derive from."""
    return sorted(_inputs(challenge, open_indices(challenge, root, salt), results.__getitem__))


def open_segments(
    challenge: BenchmarkChallenge, results: Sequence[bytes], indices: Sequence[int], salt: bytes = b""
) -> ProofOpening:
    """The prover's opening of ``indices``: each result with its Merkle path."""
    tree = results.tree if isinstance(results, Committed) else merkle.MerkleTree(results)
    openings = [SegmentOpening(index=i, result=results[i], path=tree.path(i)) for i in indices]
    return ProofOpening(
        challenge_id=challenge.challenge_id, node=challenge.node, openings=openings, salt=salt
    )


# ---- checking ------------------------------------------------------------------------------------------
def measured_rate(challenge: BenchmarkChallenge, received_at_ms: int) -> float:
    """Work units per second as the verifier's clock saw it (issue to arrival: a lower bound)."""
    elapsed = max(1, received_at_ms - challenge.issued_ms)
    return total_work(challenge) * 1000.0 / elapsed


def _rederive(challenge: BenchmarkChallenge, i: int, opened: dict[int, bytes]) -> bytes:
    if challenge.workload == "cpu":
        prev = opened[i - challenge.lanes] if i >= challenge.lanes else None
        return _cpu_segment(challenge.nonce, i, challenge.segment_size, prev)
    if i == 0:
        return table_line(challenge.nonce, 0)
    prev = opened[i - 1]
    return table_line(challenge.nonce, i, prev, opened[dep_index(i, prev)])


def check(
    challenge: BenchmarkChallenge,
    proof: BenchmarkProof,
    opening: ProofOpening,
    received_at_ms: int,
    *,
    min_rate_ratio: float = 0.0,
    revealed_at_ms: int | None = None,
    opened_at_ms: int | None = None,
) -> Verdict:
    """Accept or reject ``proof`` (which arrived at ``received_at_ms``), re-deriving only opened segments.

    ``min_rate_ratio`` > 0 also rejects a proof whose measured rate (issue to arrival, network included)
    is below that share of the claimed rate: the deadline's slack tolerates noise, this catches the
    overclaims that fit inside it. For challenges with ``open_ms`` (storage), pass when the salt was
    revealed and when the opening arrived, both on the verifier's clock: an opening slower than
    ``open_ms`` is rejected (the table was not held). ``bandwidth`` is judged by :class:`BandwidthMeter`.
    """

    def reject(reason: VerdictReason, detail: str) -> Verdict:
        return Verdict(False, reason, detail, rate)

    rate = measured_rate(challenge, received_at_ms)
    if challenge.workload not in ("cpu", *TABLE_WORKLOADS):
        return reject(VerdictReason.MISMATCH, f"workload {challenge.workload!r} is not judged by check()")
    if (proof.challenge_id, proof.node) != (challenge.challenge_id, challenge.node) or (
        opening.challenge_id,
        opening.node,
    ) != (challenge.challenge_id, challenge.node):
        return reject(VerdictReason.MISMATCH, "proof or opening belongs to another challenge or node")
    if received_at_ms > challenge.deadline_ms:
        late = received_at_ms - challenge.deadline_ms
        return reject(VerdictReason.LATE, f"commitment arrived {late} ms after the deadline")
    if challenge.open_ms and revealed_at_ms is not None and opened_at_ms is not None:
        took = opened_at_ms - revealed_at_ms
        if took > challenge.open_ms:
            return reject(
                VerdictReason.LATE_OPENING,
                f"opening took {took} ms after the reveal, allowed {challenge.open_ms}",
            )
    if challenge.open_commit and salt_commitment(opening.salt) != challenge.open_commit:
        return reject(VerdictReason.BAD_SALT, "the opening's salt does not match the challenge's commitment")
    wanted = open_indices(challenge, proof.root, opening.salt)
    opened: dict[int, bytes] = {}
    for o in opening.openings:
        if o.index in opened:
            return reject(VerdictReason.WRONG_SEGMENTS, f"segment {o.index} opened twice")
        if not merkle.verify(proof.root, o.index, o.result, o.path, challenge.segments):
            return reject(VerdictReason.BAD_PATH, f"segment {o.index} is not in the committed tree")
        opened[o.index] = o.result
    need = _inputs(challenge, wanted, opened.get)
    if set(opened) != need:
        return reject(
            VerdictReason.WRONG_SEGMENTS, f"opened {sorted(opened)}, the root selects {sorted(need)}"
        )
    for i in wanted:
        if _rederive(challenge, i, opened) != opened[i]:
            return reject(VerdictReason.WRONG_RESULT, f"segment {i} does not match re-execution")
    if rate < min_rate_ratio * challenge.claimed_rate:
        return Verdict(
            False,
            VerdictReason.SLOW,
            f"measured {rate:.4g}/s is below {min_rate_ratio:g} × the claimed {challenge.claimed_rate:.4g}/s",
            rate,
            tuple(wanted),
        )
    return Verdict(True, VerdictReason.OK, "", rate, tuple(wanted))


class BandwidthMeter:
    """The coordinator's count of one bandwidth challenge: bytes that arrived, and when the last did.

    Feed it every ``BandwidthChunk`` the subject signed (:meth:`receive`, stamped when the bytes
    arrived), then ask for the :meth:`verdict` once all chunks are in or the deadline passed. ``opens``
    chunks, chosen from the secret salt so the node cannot know which, are compared byte for byte with
    :func:`bandwidth_chunk`; the rest are counted by size (sending junk of the right size costs the same
    bandwidth). Memory: one bit a chunk.
    """

    def __init__(self, challenge: BenchmarkChallenge, salt: bytes) -> None:
        if challenge.workload != "bandwidth":
            raise ProofError(f"a bandwidth meter measures bandwidth challenges, not {challenge.workload!r}")
        self.challenge = challenge
        self._spot = set(open_indices(challenge, b"", salt))
        self._seen = bytearray(challenge.segments)
        self.received = 0
        self.bytes = 0
        self.last_ms = challenge.issued_ms
        self.bad = ""

    @property
    def complete(self) -> bool:
        """Every chunk arrived."""
        return self.received == self.challenge.segments

    def receive(self, index: int, data: bytes, now_ms: int) -> None:
        """One chunk arrived at ``now_ms`` (duplicates and stray indices are ignored)."""
        c = self.challenge
        if not 0 <= index < c.segments or self._seen[index] or len(data) != c.segment_size:
            return
        if index in self._spot and data != bandwidth_chunk(c.nonce, index, c.segment_size):
            self.bad = self.bad or f"chunk {index} is not the challenge's payload"
        self._seen[index] = 1
        self.received += 1
        self.bytes += len(data)
        self.last_ms = max(self.last_ms, now_ms)

    def verdict(self, *, min_rate_ratio: float = 0.0) -> Verdict:
        """The decision: every chunk on time, the spot-checked ones right, at the claimed rate or near it."""
        c = self.challenge
        rate = self.bytes * 1000.0 / max(1, self.last_ms - c.issued_ms)
        if self.bad:
            return Verdict(False, VerdictReason.WRONG_RESULT, self.bad, rate)
        if not self.complete or self.last_ms > c.deadline_ms:
            detail = f"{self.received} of {c.segments} chunks by the deadline"
            return Verdict(False, VerdictReason.LATE, detail, rate)
        if rate < min_rate_ratio * c.claimed_rate:
            detail = (
                f"measured {rate:.4g} B/s is below {min_rate_ratio:g} × the claimed {c.claimed_rate:.4g} B/s"
            )
            return Verdict(False, VerdictReason.SLOW, detail, rate)
        return Verdict(True, VerdictReason.OK, "", rate, tuple(sorted(self._spot)))
