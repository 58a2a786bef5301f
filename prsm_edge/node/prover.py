"""The node's side of verification: answer challenges, open segments, and sit on peers' panels.

The agent hands this object the commands and proof-topic messages it receives; it returns the messages
to publish. Proving runs in a worker thread (it is CPU work); everything else is quick.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import overload

import msgspec

from prsm_edge.errors import LocalError
from prsm_edge.io import attest, tpm_registration
from prsm_edge.protocol import cbor, proofs
from prsm_edge.protocol.messages import (
    BandwidthChunk,
    BenchmarkChallenge,
    BenchmarkProof,
    Message,
    ProofOpening,
    VerificationVote,
)

__all__ = [
    "Attestor",
    "FileLines",
    "ProofWork",
    "TpmUnavailable",
    "calibrate_cpu_rate",
    "calibrate_table_rate",
    "machine_rates",
    "prove_lanes",
    "prove_storage",
    "tpm_attestor",
]

log = logging.getLogger(__name__)

_KEEP = 16  # proofs kept for opening, panels pending: both bounded
_KEEP_TABLES = 1  # tables kept for opening per table workload (each is the size of its challenge)

Prover = Callable[[BenchmarkChallenge], tuple[bytes, Sequence[bytes]]]


@dataclass(frozen=True, slots=True)
class Attestor:
    """An attestation key and how to quote with it (``quote(nonce, claim_hash)``).

    ``registration`` (EK certificate, EK and AK) and ``activate`` (TPM2_ActivateCredential) let the agent
    register the key with its coordinator (:mod:`prsm_edge.io.tpm_registration`); without them the key is
    never registered, so its quotes are never asked for.
    """

    public_key: bytes
    quote: Callable[[bytes, bytes], bytes]
    registration: tpm_registration.RegisterParams | None = None
    activate: Callable[[bytes], bytes] | None = None


class TpmUnavailable(attest.AttestationError):
    """No TPM 2.0 answers here, so this node cannot attest; the message says why."""


def tpm_attestor(workdir: Path, tcti: str | None = None) -> Attestor:
    """Enroll (once) an attestation key with the TPM and quote with it; TpmUnavailable if there is none.

    The registered public key is the AK's TPM2B_PUBLIC, which the verifier also checks is a genuine
    AK (restricted signing key fixed to its TPM). Quotes are the CBOR of :class:`attest.Quote`.
    """
    found = attest.tpm_available(tcti)
    if not found.supported:
        raise TpmUnavailable(f"no TPM attestation on this node: {found.reason}")
    chosen = found.tcti
    key = attest.enroll(workdir, chosen)
    try:  # a key enrolled earlier with another TPM (or before a TPM clear) cannot be loaded: say so now
        attest.quote(key, bytes(32), bytes(32), chosen)
    except attest.AttestationError as exc:
        raise attest.AttestationError(
            f"the attestation key in {workdir} does not work with the TPM at {chosen} "
            f"(enrolled with another TPM, or the TPM was cleared? remove the folder to re-enroll): {exc}"
        ) from exc
    lock = threading.Lock()  # one TPM, no resource manager: one quote at a time

    def quote(nonce: bytes, claim_hash: bytes) -> bytes:
        with lock:
            q = attest.quote(key, nonce, claim_hash, chosen)
        return cbor.dumps(msgspec.to_builtins(q, builtin_types=(bytes,)))

    def activate(credential: bytes) -> bytes:
        with lock:
            return attest.activate_credential(key, credential, chosen)

    algorithm = attest.ek_algorithm(key.ek_public_tpm2b)
    ek_cert = attest.read_ek_certificate(algorithm, chosen)
    if ek_cert is None:
        other = "ecc" if algorithm == "rsa" else "rsa"
        hint = (
            f"; it has one for its {other.upper()} EK: remove {workdir} to enroll under that EK"
            if attest.read_ek_certificate(other, chosen) is not None
            else ""
        )
        log.warning("the TPM at %s has no certificate for its %s EK%s", chosen, algorithm.upper(), hint)
    registration = tpm_registration.RegisterParams(ek_cert or b"", key.ek_public_tpm2b, key.public_tpm2b)
    return Attestor(key.public_tpm2b, quote, registration, activate)


def prove_lanes(challenge: BenchmarkChallenge) -> tuple[bytes, proofs.Committed]:
    """Run a ``cpu`` challenge with one thread a lane (PBKDF2 releases the GIL): the parallel prover."""
    lanes = challenge.lanes
    if lanes == 1:
        return proofs.prove(challenge)
    with ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="lane") as pool:
        chains = list(pool.map(lambda lane: proofs.lane_results(challenge, lane), range(lanes)))
    done = proofs.Committed([chains[i % lanes][i // lanes] for i in range(challenge.segments)])
    return done.root, done


class FileLines(Sequence[bytes]):
    """A table's lines in a file under ``folder`` (the ``storage`` workload): appended, read by index.

    The file is removed by :meth:`close`, or when the object is collected. Writes go straight to the
    file (``os.write``), reads through the page cache (``os.pread``); :meth:`sync` flushes to the disk.
    """

    def __init__(self, folder: Path, name: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"proof-table-{name}.bin"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._n = 0

    def append(self, line: bytes, /) -> None:
        if os.write(self._fd, line) != proofs.LINE_BYTES:
            raise proofs.ProofError(f"short write to {self.path} (disk full?)")
        self._n += 1

    @overload
    def __getitem__(self, index: int, /) -> bytes: ...
    @overload
    def __getitem__(self, index: slice, /) -> Sequence[bytes]: ...
    def __getitem__(self, index: int | slice, /) -> bytes | Sequence[bytes]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._n))]
        if not -self._n <= index < self._n:
            raise IndexError(index)
        return os.pread(self._fd, proofs.LINE_BYTES, (index % self._n) * proofs.LINE_BYTES)

    def __len__(self) -> int:
        return self._n

    def sync(self) -> None:
        """Flush the table to the disk."""
        os.fdatasync(self._fd)

    def close(self) -> None:
        """Remove the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self.path.unlink(missing_ok=True)

    def __del__(self) -> None:
        self.close()


def prove_storage(challenge: BenchmarkChallenge, folder: Path) -> tuple[bytes, proofs.Committed]:
    """Build a ``storage`` challenge's table into a file under ``folder``, synced to the disk."""
    lines = FileLines(folder, challenge.challenge_id)
    try:
        root, done = proofs.prove(challenge, lines)
        lines.sync()
    except BaseException:
        lines.close()
        raise
    return root, done


_calibration_lock = threading.Lock()
_calibrated: dict[tuple[str, int], float] = {}


def machine_rates(workload: str, lanes: int = 1, folder: Path | None = None) -> float:
    """This machine's rate for ``workload`` (per core for ``cpu``), measured once per process.

    The rate belongs to the machine, not to an agent: agents sharing a process (the demo runs hundreds)
    share one measurement instead of each building tables and contending with the others.
    """
    key = (workload, lanes if workload == "cpu" else (folder.stat().st_dev if folder is not None else 0))
    with _calibration_lock:
        if key not in _calibrated:
            match workload:
                case "cpu":
                    _calibrated[key] = calibrate_cpu_rate(0.3, lanes)
                case "memory":
                    _calibrated[key] = calibrate_table_rate(0.4)
                case _:
                    _calibrated[key] = calibrate_table_rate(0.4, folder)
        return _calibrated[key]


def calibrate_cpu_rate(seconds: float = 0.3, lanes: int = 1) -> float:
    """This machine's per-core rate for the ``cpu`` workload (PBKDF2 iterations per second), measured
    now with ``lanes`` lanes running at once (the claimed cores: they share caches, power and heat).

    The median of three windows, so one burst of other load does not set the claim.
    """
    chunk = 10_000
    window = seconds / 3

    def lane(n: int) -> int:
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < window:
            proofs.run_segment("cpu", b"calibrate", n, chunk)
            done += chunk
        return done

    rates: list[float] = []
    with ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="calibrate") as pool:
        for _ in range(3):
            start = time.perf_counter()
            total = sum(pool.map(lane, range(lanes)))
            rates.append(total / (time.perf_counter() - start) / lanes)
    return sorted(rates)[1]


def calibrate_table_rate(seconds: float = 1.0, folder: Path | None = None) -> float:
    """Bytes per second this machine builds a table (tree included) in memory, or on disk under ``folder``.

    A 2 MiB table gives an estimate; the figure is a table of about ``seconds`` at that estimate (at most
    256 MiB), because small tables are not built at the speed of the large ones a challenge asks for.
    """
    estimate = _table_rate(2 << 20, folder)
    return _table_rate(int(min(256 << 20, max(2 << 20, estimate * seconds))), folder)


def _table_rate(size: int, folder: Path | None) -> float:
    ch = BenchmarkChallenge(
        challenge_id="calibrate",
        node="",
        verifier="",
        workload="memory" if folder is None else "storage",
        nonce=b"calibrate",
        segments=max(2, size // proofs.LINE_BYTES),
        segment_size=proofs.LINE_BYTES,
        claimed_rate=1.0,
        deadline_ms=0,
    )
    start = time.perf_counter()
    if folder is None:
        proofs.prove(ch)
    else:
        _, done = prove_storage(ch, folder)
        if isinstance(done.items, FileLines):
            done.items.close()
    return proofs.total_work(ch) / (time.perf_counter() - start)


@dataclass
class _Panel:
    challenge: BenchmarkChallenge
    round: int
    min_rate_ratio: float
    proof: BenchmarkProof | None = None
    proof_at: int = 0


@dataclass
class ProofWork:
    """One node's proofs and panel seats."""

    node_id: str
    prover: Prover | None = None  # None: this node's own (parallel lanes, storage tables on disk)
    attestor: Attestor | None = None
    claim_hash: Callable[[], bytes] = lambda: b""
    workdir: Path | None = None  # where storage tables go (None: kept in memory)
    _proofs: OrderedDict[str, tuple[BenchmarkChallenge, Sequence[bytes]]] = field(default_factory=OrderedDict)
    _panels: OrderedDict[str, _Panel] = field(default_factory=OrderedDict)
    # Proofs seen before our seat on their panel arrived (delivery across topics is not ordered).
    _early: OrderedDict[str, tuple[str, BenchmarkProof, int]] = field(default_factory=OrderedDict)
    proved: int = 0
    voted: int = 0
    chunks_sent: int = 0
    pace: float = 1.0  # bandwidth chunks go at this share of the claimed rate (tests model a slow link)

    async def challenge(self, args: dict[str, object], now_ms: Callable[[], int]) -> Message | None:
        """Run a challenge addressed to us and commit to its results."""
        try:
            ch = msgspec.convert(args.get("challenge"), BenchmarkChallenge)
        except msgspec.ValidationError as exc:
            log.warning("ignoring a malformed challenge: %s", exc)
            return None
        if ch.node != self.node_id:
            return None
        # The quote binds the nonce and our claim, not the results: have the TPM sign while we prove.
        quoting = asyncio.create_task(self._quote(ch)) if ch.attest and self.attestor is not None else None
        start = time.monotonic()
        try:
            root, results = await asyncio.to_thread(self.prover or self._prove, ch)
        except BaseException as exc:
            if quoting is not None:
                quoting.cancel()
            if not isinstance(exc, proofs.ProofError):
                raise
            log.warning("cannot run challenge %s: %s", ch.challenge_id, exc)
            return None
        elapsed = int((time.monotonic() - start) * 1000)
        self._keep(ch, results)
        proof = proofs.make_proof(ch, root, elapsed)
        if quoting is not None:
            quote = await quoting
            if quote:
                proof = msgspec.structs.replace(proof, quote=quote)
        self.proved += 1
        log.debug("%s proved %s in %d ms", self.node_id, ch.challenge_id, elapsed)
        return proof

    def _prove(self, ch: BenchmarkChallenge) -> tuple[bytes, Sequence[bytes]]:
        if ch.workload == "cpu":
            return prove_lanes(ch)
        if ch.workload == "storage" and self.workdir is not None:
            return prove_storage(ch, self.workdir / "proofs")
        return proofs.prove(ch)

    def _keep(self, ch: BenchmarkChallenge, results: Sequence[bytes]) -> None:
        """Keep results for the opening: a bounded number, and only the latest table of each workload."""
        if ch.workload in proofs.TABLE_WORKLOADS:
            tables = [cid for cid, (c, _) in self._proofs.items() if c.workload == ch.workload]
            for cid in tables[: max(0, len(tables) - _KEEP_TABLES + 1)]:
                self._drop(cid)
        self._proofs[ch.challenge_id] = (ch, results)
        while len(self._proofs) > _KEEP:
            self._drop(next(iter(self._proofs)))

    def _drop(self, cid: str) -> None:
        _, results = self._proofs.pop(cid)
        items = results.items if isinstance(results, proofs.Committed) else results
        if isinstance(items, FileLines):
            items.close()

    def bandwidth(self, args: dict[str, object]) -> Iterator[BandwidthChunk]:
        """The chunks to publish, as fast as the link takes them, for a bandwidth challenge to us."""
        try:
            ch = msgspec.convert(args.get("challenge"), BenchmarkChallenge)
        except msgspec.ValidationError as exc:
            log.warning("ignoring a malformed bandwidth challenge: %s", exc)
            return
        if ch.node != self.node_id or ch.workload != "bandwidth":
            return
        for i in range(ch.segments):
            data = proofs.bandwidth_chunk(ch.nonce, i, ch.segment_size)
            yield BandwidthChunk(challenge_id=ch.challenge_id, node=self.node_id, index=i, data=data)

    async def send_bandwidth(
        self, args: dict[str, object], send: Callable[[BandwidthChunk], Awaitable[bool]]
    ) -> None:
        """Publish a bandwidth challenge's chunks with ``send``, paced at the claimed rate × :attr:`pace`.

        Chunk ``i`` leaves no earlier than ``i × chunk / rate`` after the challenge arrived (a late chunk
        goes at once), so an honest node moves about its claim and no more: the group's broker is not
        flooded by a node with a faster link than it offers. Stops when ``send`` fails (disconnected) or
        once the transfer has run for the challenge's whole allowance. Counts in :attr:`chunks_sent`.
        """
        chunks = self.bandwidth(args)  # made one at a time: a transfer is never held whole
        first = next(chunks, None)
        if first is None:
            return
        ch = msgspec.convert(args["challenge"], BenchmarkChallenge)
        rate = ch.claimed_rate * self.pace
        allowed = max(0, ch.deadline_ms - ch.issued_ms) / 1000.0
        start = time.monotonic()
        sent = 0
        for chunk in itertools.chain((first,), chunks):
            wait = start + chunk.index * ch.segment_size / rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if time.monotonic() - start > allowed or not await send(chunk):
                break
            sent += 1
            self.chunks_sent += 1
        log.debug("%s sent %d of %d bandwidth chunks of %s", self.node_id, sent, ch.segments, ch.challenge_id)

    async def _quote(self, ch: BenchmarkChallenge) -> bytes:
        """A quote for this challenge, or empty (the verifier then records a failed attestation)."""
        assert self.attestor is not None
        try:
            return await asyncio.to_thread(self.attestor.quote, ch.nonce, self.claim_hash())
        except LocalError as exc:
            log.warning("cannot attest for challenge %s: %s", ch.challenge_id, exc)
            return b""

    def open(self, args: dict[str, object]) -> Message | None:
        """Open the segments the revealed salt selects."""
        cid, salt, root = args.get("challenge_id"), args.get("salt"), args.get("root")
        kept = self._proofs.get(cid) if isinstance(cid, str) else None
        if kept is None or not isinstance(salt, bytes) or not isinstance(root, bytes):
            return None
        ch, results = kept
        indices = proofs.opening_indices(ch, root, salt, results)
        opening = proofs.open_segments(ch, results, indices, salt)
        if ch.workload in proofs.TABLE_WORKLOADS:
            self._drop(ch.challenge_id)  # opened once: a table is too large to keep for a second ask
        return opening

    def sit(self, args: dict[str, object]) -> str | None:
        """Take a seat on the panel that checks someone else's challenge; returns the subject's node id."""
        try:
            ch = msgspec.convert(args.get("challenge"), BenchmarkChallenge)
        except msgspec.ValidationError as exc:
            log.warning("ignoring a malformed panel seat: %s", exc)
            return None
        round_ = args.get("round")
        ratio = args.get("min_rate_ratio", 0.0)
        if ch.node == self.node_id or not isinstance(round_, int) or not isinstance(ratio, (int, float)):
            return None
        panel = self._panels[ch.challenge_id] = _Panel(ch, round_, float(ratio))
        early = self._early.pop(ch.challenge_id, None)
        if early is not None and early[0] == ch.node:
            panel.proof, panel.proof_at = early[1], early[2]
        while len(self._panels) > _KEEP:
            self._panels.popitem(last=False)
        return ch.node

    async def observe(self, signer: str, msg: Message, now_ms: int) -> Message | None:
        """A message on a peer's proof topic (signed by ``signer``): record it, vote when complete."""
        match msg:
            case BenchmarkProof():
                panel = self._panels.get(msg.challenge_id)
                if panel is None:
                    self._early[msg.challenge_id] = (signer, msg, now_ms)
                    while len(self._early) > 4 * _KEEP:
                        self._early.popitem(last=False)
                elif panel.proof is None and signer == panel.challenge.node:
                    panel.proof, panel.proof_at = msg, now_ms
            case ProofOpening():
                panel = self._panels.get(msg.challenge_id)
                if panel is None or panel.proof is None or signer != panel.challenge.node:
                    return None
                del self._panels[msg.challenge_id]
                # A panel vote attests the re-executed segments only: lateness and speed are judged on
                # the coordinator's clock alone, never on a panelist's (so the arrival time given here
                # is the issue time, which can be neither late nor slow).
                verdict = await asyncio.to_thread(
                    proofs.check, panel.challenge, panel.proof, msg, panel.challenge.issued_ms
                )
                self.voted += 1
                return VerificationVote(
                    round=panel.round,
                    subject=panel.challenge.node,
                    voter=self.node_id,
                    challenge_id=msg.challenge_id,
                    accept=verdict.accepted,
                    reason=verdict.reason.value,
                )
        return None
