"""The benchmark suite a node runs on itself: CPU, memory, storage, network, GPU and TFLite inference.

CPU, memory and storage are measured with the proof workloads the group's verifier checks
(``protocol/proofs.py``), through the same calibration the agent runs at start to fill its claim
(``node/prover.py``: ``calibrate_cpu_rate``, ``calibrate_table_rate``): what an owner sees here is the
rate their node claims and is checked against. Other figures (sequential and random disk I/O) are
reported beside them for information; no check uses them.

Every benchmark returns a :class:`BenchResult` whose ``status`` is ``"measured"``, ``"absent"`` (the
hardware or runtime is not there) or ``"not measured: <why>"`` (it is there, or may be, but we could not
measure it). A figure is only ever a measurement taken here and now; nothing is estimated or invented.
Durations are bounded (about a second per step, much less with ``quick=True``) and so are the memory
and disk sizes used.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import platform
import random
import shutil
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec
import psutil

from prsm_edge.errors import LocalError, PrsmEdgeError
from prsm_edge.node.prover import calibrate_cpu_rate, calibrate_table_rate
from prsm_edge.protocol import proofs, topics

__all__ = [
    "ABSENT",
    "BENCHMARKS",
    "MEASURED",
    "BenchResult",
    "Figure",
    "MachineFacts",
    "Options",
    "SuiteResult",
    "UnknownBenchmark",
    "run_suite",
    "run_suite_async",
]

log = logging.getLogger(__name__)

MEASURED: Final = "measured"
ABSENT: Final = "absent"
MiB: Final = 1024 * 1024
_MAX_TABLE_BYTES: Final = 256 * MiB  # the largest table calibrate_table_rate builds

Progress = Callable[[str, float], None]


class UnknownBenchmark(LocalError):
    """A benchmark name that the suite does not have."""


class Figure(msgspec.Struct, frozen=True):
    """One measured number."""

    name: str
    value: float
    unit: str


class BenchResult(msgspec.Struct, frozen=True):
    """The outcome of one benchmark: its headline figure, every figure, and facts about the hardware."""

    name: str
    status: str
    value: float | None = None
    unit: str = ""
    figures: list[Figure] = msgspec.field(default_factory=list)
    facts: dict[str, str | int | float | bool] = msgspec.field(default_factory=dict)
    duration_s: float = 0.0

    @property
    def measured(self) -> bool:
        """True when the headline figure was measured."""
        return self.status == MEASURED

    def figure(self, name: str) -> float:
        """The value of the figure called ``name``."""
        for fig in self.figures:
            if fig.name == name:
                return fig.value
        raise KeyError(name)


class MachineFacts(msgspec.Struct, frozen=True):
    """What the suite ran on."""

    system: str
    release: str
    machine: str
    python: str
    logical_cpus: int
    physical_cpus: int | None
    memory_total_bytes: int


class SuiteResult(msgspec.Struct, frozen=True):
    """All results of one run of the suite."""

    started_unix: float
    duration_s: float
    quick: bool
    machine: MachineFacts
    results: list[BenchResult]

    def get(self, name: str) -> BenchResult:
        """The result of the benchmark called ``name``."""
        for res in self.results:
            if res.name == name:
                return res
        raise KeyError(name)

    def to_json(self) -> bytes:
        """The whole result as JSON."""
        return msgspec.json.encode(self)


@dataclass(frozen=True, slots=True)
class Options:
    """Bounds and parameters of the suite, beyond ``quick``."""

    duration_s: float = 1.0
    quick_duration_s: float = 0.1
    memory_claim_fraction: float = 0.25
    memory_check_limit_bytes: int = 256 * MiB
    storage_file_bytes: int = 64 * MiB
    quick_storage_file_bytes: int = 8 * MiB
    site: str = "local"
    group: str = "bench"
    node_id: str | None = None
    broker_timeout_s: float = 5.0


def _not_measured(why: str) -> str:
    return f"not measured: {why}"


class _Ctx:
    """What one benchmark needs: its name, bounds and the progress callback."""

    def __init__(self, name: str, quick: bool, options: Options, progress: Progress | None) -> None:
        self.name = name
        self.quick = quick
        self.options = options
        self._progress = progress

    @property
    def duration(self) -> float:
        return self.options.quick_duration_s if self.quick else self.options.duration_s

    def step(self, fraction: float) -> None:
        if self._progress is not None:
            self._progress(self.name, min(max(fraction, 0.0), 1.0))


# ---------------------------------------------------------------------------------------------- cpu
def _bench_cpu(ctx: _Ctx) -> BenchResult:
    """The ``cpu`` proof workload's rate, measured by the agent's own calibration (``node/prover.py``):
    PBKDF2-HMAC-SHA-256 iterations per second, one lane alone and one lane a core all at once."""
    lanes = max(1, min(os.cpu_count() or 1, proofs.MAX_LANES))
    ctx.step(0.0)
    single = calibrate_cpu_rate(ctx.duration, 1)
    ctx.step(0.5)
    per_core = calibrate_cpu_rate(ctx.duration, lanes)
    ctx.step(1.0)
    return BenchResult(
        "cpu",
        MEASURED,
        per_core,
        "iterations/s",
        [
            Figure("per_core", per_core, "iterations/s"),
            Figure("single_core", single, "iterations/s"),
            Figure("total", per_core * lanes, "iterations/s"),
            Figure("scaling", per_core * lanes / single, "×"),
        ],
        {
            "workload": "cpu: PBKDF2-HMAC-SHA-256 chains, one lane per core (the proof checks this)",
            "workers": lanes,
            "claim_key": proofs.RATE_KEYS["cpu"],
        },
    )


# ------------------------------------------------------------------------------------------- memory
def _bench_memory(ctx: _Ctx) -> BenchResult:
    vm = psutil.virtual_memory()
    ctx.step(0.0)
    # The ``memory`` proof workload: a table of dependent lines built in memory, timed as the agent
    # calibrates it (node/prover.py), so the figure is the fill rate the node claims and is checked on.
    fill_rate = calibrate_table_rate(ctx.duration)
    ctx.step(0.5)

    # Can the claimed fraction of memory really be allocated and touched? Bounded by the check limit.
    # Whole pages are touched, so the claim is rounded *up* to pages (a page-aligned check that rounds
    # down can never cover an unaligned claim); only the safety bounds round down.
    claim = int(vm.total * ctx.options.memory_claim_fraction)
    page = 4096
    bound = min(ctx.options.memory_check_limit_bytes, int(vm.available * 0.5))
    target = min(-(-claim // page) * page, bound - bound % page)
    try:
        t0 = time.monotonic()
        block = bytearray(target)
        block[::page] = b"\x01" * len(range(0, target, page))
        touched = sum(block[::page])
        touch_s = time.monotonic() - t0
    except MemoryError:
        return BenchResult(
            "memory",
            _not_measured(f"could not allocate {target} bytes"),
            facts={"total_bytes": vm.total, "available_bytes": vm.available},
        )
    del block
    ctx.step(1.0)
    return BenchResult(
        "memory",
        MEASURED,
        fill_rate,
        "B/s",
        [
            Figure("table_fill", fill_rate, "B/s"),
            Figure("allocated_and_touched", touched * page, "B"),
            Figure("touch_rate", touched * page / touch_s if touch_s > 0 else 0.0, "B/s"),
        ],
        {
            "total_bytes": vm.total,
            "available_bytes": vm.available,
            "claimed_fraction": ctx.options.memory_claim_fraction,
            "claimed_bytes": claim,
            "claim_fully_checked": touched * page >= claim,
            "workload": "memory: a table of dependent 1 KiB lines in memory (the proof checks this)",
            "claim_key": proofs.RATE_KEYS["memory"],
        },
    )


# ------------------------------------------------------------------------------------------ storage
def _drop_cache(fd: int) -> bool:
    """Ask the kernel to forget the file's cached pages; False where that is not possible."""
    if not hasattr(os, "posix_fadvise"):
        return False
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        return False
    return True


def _bench_storage(ctx: _Ctx, workdir: Path) -> BenchResult:
    size = ctx.options.quick_storage_file_bytes if ctx.quick else ctx.options.storage_file_bytes
    chunk = 1 * MiB
    size = max(chunk, size - size % chunk)
    workdir.mkdir(parents=True, exist_ok=True)
    usage = shutil.disk_usage(workdir)
    facts: dict[str, str | int | float | bool] = {
        "free_bytes": usage.free,
        "total_bytes": usage.total,
        "test_file_bytes": size,
    }
    if usage.free < size * 2 + _MAX_TABLE_BYTES:
        return BenchResult("storage", _not_measured("too little free space for the test files"), facts=facts)
    ctx.step(0.0)
    # The ``storage`` proof workload: the same table written to a file here and synced, timed as the
    # agent calibrates it; the headline figure is the write rate the node claims and is checked on.
    try:
        table_rate = calibrate_table_rate(ctx.duration, workdir)
    except (OSError, proofs.ProofError) as exc:
        log.warning("storage benchmark failed: %s", exc)
        return BenchResult("storage", _not_measured(f"table write failed: {exc}"), facts=facts)
    ctx.step(0.2)
    path = workdir / f".prsm-bench-{uuid.uuid4().hex}.tmp"
    data = os.urandom(chunk)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            t0 = time.monotonic()
            for i in range(size // chunk):
                os.write(fd, data)
                ctx.step(0.2 + 0.3 * i / (size // chunk))
            os.fsync(fd)
            write_s = time.monotonic() - t0
            uncached = _drop_cache(fd)
            ctx.step(0.5)

            t0 = time.monotonic()
            read = 0
            os.lseek(fd, 0, os.SEEK_SET)
            while block := os.read(fd, chunk):
                read += len(block)
            read_s = time.monotonic() - t0
            if read != size:
                return BenchResult("storage", _not_measured(f"read back {read} of {size} bytes"), facts=facts)
            uncached = _drop_cache(fd) and uncached
            ctx.step(0.6)

            rng = random.Random(size)
            pages = size // 4096
            ops = 0
            t0 = time.monotonic()
            deadline = t0 + ctx.duration
            while True:
                for _ in range(64):
                    os.pread(fd, 4096, rng.randrange(pages) * 4096)
                ops += 64
                now = time.monotonic()
                if now >= deadline or ops >= pages:
                    break
            iops = ops / (now - t0)
        finally:
            os.close(fd)
            path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("storage benchmark failed: %s", exc)
        return BenchResult("storage", _not_measured(f"{exc.strerror or exc}"), facts=facts)
    ctx.step(1.0)
    facts["page_cache_dropped"] = uncached
    facts["workload"] = "storage: the memory table written to a file and synced (the proof checks this)"
    facts["claim_key"] = proofs.RATE_KEYS["storage"]
    return BenchResult(
        "storage",
        MEASURED,
        table_rate,
        "B/s",
        [
            Figure("table_write", table_rate, "B/s"),
            Figure("sequential_write", size / write_s, "B/s"),
            Figure("sequential_read", size / read_s, "B/s"),
            Figure("random_read_4k", iops, "IOPS"),
            Figure("free", float(usage.free), "B"),
        ],
        facts,
    )


# ------------------------------------------------------------------------------------------ network
async def _measure_network(ctx: _Ctx, broker_url: str) -> BenchResult:
    import aiomqtt

    from prsm_edge.io.session import parse_url

    addr = parse_url(broker_url)
    node_id = ctx.options.node_id or f"bench-{uuid.uuid4().hex[:12]}"
    base = topics.node_subtree(ctx.options.site, ctx.options.group, node_id)[: -len("#")]
    echo = f"{base}bench/echo"
    pings = 10 if ctx.quick else 50
    burst = 20 if ctx.quick else 200
    payload_size = 16 * 1024
    timeout = ctx.options.broker_timeout_s
    ctx.step(0.0)
    async with aiomqtt.Client(
        addr.host,
        addr.port,
        identifier=f"{node_id}-bench-{uuid.uuid4().hex[:8]}",
        transport="websockets" if addr.transport == "websockets" else "tcp",
        websocket_path=addr.path,
        timeout=timeout,
    ) as client:
        await client.subscribe(echo, qos=0)
        messages = client.messages
        rtts: list[float] = []
        async with asyncio.timeout(timeout * 4):
            for i in range(pings):
                marker = f"ping-{i}".encode()
                t0 = time.perf_counter()
                await client.publish(echo, marker, qos=0)
                async for msg in messages:
                    if msg.payload == marker:
                        break
                rtts.append(time.perf_counter() - t0)
                ctx.step(0.5 * (i + 1) / pings)
            body = os.urandom(payload_size)
            received = 0
            t0 = time.perf_counter()
            for _ in range(burst):
                await client.publish(echo, body, qos=0)
            async for msg in messages:
                if msg.payload == body:
                    received += 1
                    if received == burst:
                        break
            burst_s = time.perf_counter() - t0
    ctx.step(1.0)
    latency = statistics.median(rtts)
    rtts.sort()
    p95 = rtts[min(len(rtts) - 1, round(0.95 * (len(rtts) - 1)))]
    throughput = burst * payload_size / burst_s
    return BenchResult(
        "network",
        MEASURED,
        latency,
        "s",
        [
            Figure("round_trip_median", latency, "s"),
            Figure("round_trip_p95", p95, "s"),
            Figure("throughput", throughput, "B/s"),
        ],
        {"broker": broker_url, "echo_topic": echo, "pings": pings, "burst_messages": burst},
    )


def _bench_network(ctx: _Ctx, broker_url: str | None) -> BenchResult:
    if broker_url is None:
        return BenchResult("network", _not_measured("no broker"))
    import aiomqtt

    try:
        return asyncio.run(_measure_network(ctx, broker_url))
    except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
        log.warning("network benchmark against %s failed: %s", broker_url, exc)
        return BenchResult("network", _not_measured(f"broker {broker_url} unreachable: {exc}"))


# ---------------------------------------------------------------------------------------------- gpu
def _gpu_facts() -> tuple[str | None, dict[str, str | int | float | bool]]:
    """NVML facts, or the reason there are none."""
    try:
        nvml: Any = importlib.import_module("pynvml")
    except ImportError:
        return "no NVML bindings (pip install prsm-edge[gpu])", {}
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        return f"no NVIDIA GPU or driver (NVML: {exc})", {}
    try:
        count = int(nvml.nvmlDeviceGetCount())
        if count == 0:
            return "NVML found no GPU", {}
        facts: dict[str, str | int | float | bool] = {
            "count": count,
            "driver": str(nvml.nvmlSystemGetDriverVersion()),
        }
        for i in range(count):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            facts[f"gpu{i}_name"] = str(nvml.nvmlDeviceGetName(handle))
            facts[f"gpu{i}_memory_total_bytes"] = int(mem.total)
            facts[f"gpu{i}_memory_free_bytes"] = int(mem.free)
            with contextlib.suppress(nvml.NVMLError):
                facts[f"gpu{i}_temperature_c"] = int(nvml.nvmlDeviceGetTemperature(handle, 0))
        return None, facts
    except nvml.NVMLError as exc:
        return f"NVML failed: {exc}", {}
    finally:
        with contextlib.suppress(nvml.NVMLError):
            nvml.nvmlShutdown()


def _matmul_rate(duration: float, n: int) -> tuple[float, str] | None:
    """FP32 matrix-multiply FLOP/s on GPU 0 through torch or cupy, or None if neither has CUDA."""
    try:
        torch: Any = importlib.import_module("torch")
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        a = torch.rand((n, n), device="cuda", dtype=torch.float32)
        b = torch.rand((n, n), device="cuda", dtype=torch.float32)
        torch.matmul(a, b)
        torch.cuda.synchronize()
        runs, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < duration:
            torch.matmul(a, b)
            torch.cuda.synchronize()
            runs += 1
        return 2 * n**3 * runs / (time.perf_counter() - t0), "torch"
    try:
        cupy: Any = importlib.import_module("cupy")
    except ImportError:
        return None
    if cupy.cuda.runtime.getDeviceCount() < 1:
        return None
    a = cupy.random.rand(n, n, dtype=cupy.float32)
    b = cupy.random.rand(n, n, dtype=cupy.float32)
    cupy.matmul(a, b)
    cupy.cuda.Device().synchronize()
    runs, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < duration:
        cupy.matmul(a, b)
        cupy.cuda.Device().synchronize()
        runs += 1
    return 2 * n**3 * runs / (time.perf_counter() - t0), "cupy"


def _bench_gpu(ctx: _Ctx) -> BenchResult:
    ctx.step(0.0)
    reason, facts = _gpu_facts()
    if reason is not None:
        return BenchResult("gpu", ABSENT, facts={"reason": reason})
    ctx.step(0.3)
    rate = _matmul_rate(ctx.duration, 1024 if ctx.quick else 4096)
    ctx.step(1.0)
    if rate is None:
        return BenchResult("gpu", _not_measured("no CUDA runtime (torch or cupy) importable"), facts=facts)
    flops, runtime = rate
    facts["runtime"] = runtime
    return BenchResult("gpu", MEASURED, flops, "FLOP/s", [Figure("fp32_matmul", flops, "FLOP/s")], facts)


# ------------------------------------------------------------------------------------------- tflite
def _tflite_interpreter() -> tuple[Any, str] | str:
    """The first usable TFLite ``Interpreter`` class and its package, or why there is none."""
    reasons = []
    for module in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            reasons.append(f"{module.split('.')[0]}: {exc}")
            continue
        return mod.Interpreter, module.split(".")[0]
    return "no TFLite runtime (pip install prsm-edge[tflite]); " + "; ".join(reasons)


def _bench_tflite(ctx: _Ctx) -> BenchResult:
    ctx.step(0.0)
    found = _tflite_interpreter()
    if isinstance(found, str):
        return BenchResult("tflite", ABSENT, facts={"reason": found})
    interpreter_cls, runtime = found
    from prsm_edge.node.tflite_model import build_model

    try:
        np: Any = importlib.import_module("numpy")
    except ImportError:
        return BenchResult("tflite", _not_measured("numpy is not installed"), facts={"runtime": runtime})
    try:
        model = build_model(64, 64) if ctx.quick else build_model(256, 256)
    except LocalError as exc:
        return BenchResult("tflite", _not_measured(str(exc)), facts={"runtime": runtime})
    interp = interpreter_cls(model_content=model.content, num_threads=1)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]["index"]
    out = interp.get_output_details()[0]["index"]
    x = [((i * 37) % 101) / 101.0 for i in range(model.inputs)]
    interp.set_tensor(inp, np.array([x], dtype=np.float32))
    interp.invoke()
    got = [float(v) for v in interp.get_tensor(out)[0]]
    want = model.reference(x)
    error = max(abs(g - w) for g, w in zip(got, want, strict=True))
    if error > 1e-3 * model.inputs:
        return BenchResult(
            "tflite", _not_measured(f"runtime output differs from the reference by {error}"), facts={}
        )
    ctx.step(0.2)
    runs, t0 = 0, time.perf_counter()
    while True:
        for _ in range(32):
            interp.invoke()
        runs += 32
        elapsed = time.perf_counter() - t0
        if elapsed >= ctx.duration:
            break
    ctx.step(1.0)
    rate = runs / elapsed
    return BenchResult(
        "tflite",
        MEASURED,
        rate,
        "inferences/s",
        [Figure("inferences", rate, "inferences/s"), Figure("macs", rate * model.macs, "MAC/s")],
        {
            "runtime": runtime,
            "model": f"fully_connected {model.inputs}x{model.outputs} + add, float32",
            "threads": 1,
            "max_abs_error": error,
        },
    )


# ------------------------------------------------------------------------------------------- suite
BENCHMARKS: Final = ("cpu", "memory", "storage", "network", "gpu", "tflite")


def _machine() -> MachineFacts:
    uname = platform.uname()
    return MachineFacts(
        system=uname.system,
        release=uname.release,
        machine=uname.machine,
        python=platform.python_version(),
        logical_cpus=os.cpu_count() or 1,
        physical_cpus=psutil.cpu_count(logical=False),
        memory_total_bytes=psutil.virtual_memory().total,
    )


def run_suite(
    names: Sequence[str] = BENCHMARKS,
    *,
    progress: Progress | None = None,
    quick: bool = False,
    workdir: Path,
    broker_url: str | None = None,
    options: Options | None = None,
) -> SuiteResult:
    """Run the named benchmarks in order (blocking); ``progress(name, fraction)`` is called as they go."""
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise UnknownBenchmark(
            f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}"
        )
    opts = options or Options()
    started = time.time()
    t_start = time.monotonic()
    results = []
    for name in dict.fromkeys(names):
        ctx = _Ctx(name, quick, opts, progress)
        t0 = time.monotonic()
        try:
            match name:
                case "cpu":
                    res = _bench_cpu(ctx)
                case "memory":
                    res = _bench_memory(ctx)
                case "storage":
                    res = _bench_storage(ctx, workdir)
                case "network":
                    res = _bench_network(ctx, broker_url)
                case "gpu":
                    res = _bench_gpu(ctx)
                case _:
                    res = _bench_tflite(ctx)
        except PrsmEdgeError as exc:
            res = BenchResult(name, _not_measured(str(exc)))
        ctx.step(1.0)
        res = msgspec.structs.replace(res, duration_s=time.monotonic() - t0)
        log.info("benchmark %s: %s %s %s", name, res.status, res.value, res.unit)
        results.append(res)
    return SuiteResult(started, time.monotonic() - t_start, quick, _machine(), results)


async def run_suite_async(
    names: Sequence[str] = BENCHMARKS,
    *,
    progress: Progress | None = None,
    quick: bool = False,
    workdir: Path,
    broker_url: str | None = None,
    options: Options | None = None,
) -> SuiteResult:
    """:func:`run_suite` in a worker thread, for callers inside an event loop (progress runs there too)."""
    return await asyncio.to_thread(
        run_suite,
        names,
        progress=progress,
        quick=quick,
        workdir=workdir,
        broker_url=broker_url,
        options=options,
    )
