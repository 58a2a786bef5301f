"""The node's self-benchmark suite, in quick mode: real measurements, honest absences."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import struct
import sys
from pathlib import Path

import msgspec
import psutil
import pytest

from prsm_edge.cli import main
from prsm_edge.node import bench
from prsm_edge.node.bench import ABSENT, MEASURED, Options, SuiteResult, run_suite
from prsm_edge.node.prover import calibrate_table_rate
from prsm_edge.node.tflite_model import build_model
from prsm_edge.protocol import proofs
from tests.conftest import Mosquitto

MiB = 1024 * 1024
OPTIONS = Options(memory_check_limit_bytes=32 * MiB, quick_storage_file_bytes=4 * MiB)


def _tflite_runtime() -> str | None:
    for module in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        return module.split(".")[0]
    return None


def _nvml_works() -> bool:
    try:
        nvml = importlib.import_module("pynvml")
    except ImportError:
        return False
    try:
        nvml.nvmlInit()
    except nvml.NVMLError:
        return False
    nvml.nvmlShutdown()
    return True


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[SuiteResult, dict[str, list[float]], Path]:
    """One quick run of every benchmark (no broker), with the progress it reported."""
    workdir = tmp_path_factory.mktemp("bench")
    seen: dict[str, list[float]] = {}
    result = run_suite(
        bench.BENCHMARKS,
        quick=True,
        workdir=workdir,
        options=OPTIONS,
        progress=lambda name, fraction: seen.setdefault(name, []).append(fraction),
    )
    return result, seen, workdir


def test_every_benchmark_reports_once_in_order(
    suite: tuple[SuiteResult, dict[str, list[float]], Path],
) -> None:
    result, seen, _ = suite
    assert [r.name for r in result.results] == list(bench.BENCHMARKS)
    for res in result.results:
        assert res.status in (MEASURED, ABSENT) or res.status.startswith("not measured: "), res
        if res.measured:
            assert res.value is not None and res.value > 0 and res.unit
        else:
            assert res.value is None and not res.figures
    assert set(seen) == set(bench.BENCHMARKS)
    for name, fractions in seen.items():
        assert fractions == sorted(fractions), name
        assert fractions[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in fractions)
    assert result.machine.logical_cpus == os.cpu_count()
    assert result.quick and result.duration_s < 10


def test_cpu_is_plausible(suite: tuple[SuiteResult, dict[str, list[float]], Path]) -> None:
    cpu = suite[0].get("cpu")
    assert cpu.status == MEASURED
    single, per_core, total = cpu.figure("single_core"), cpu.figure("per_core"), cpu.figure("total")
    # PBKDF2-HMAC-SHA-256 iterations: a Raspberry Pi Zero manages ~1e5/s, a fast x86 core ~1e7/s.
    assert 1e3 < single < 1e8
    # The headline is the per-core rate of the proof workload with one lane a core: what the agent
    # claims under the cpu rate key and what a check's deadline is computed from.
    assert cpu.value == per_core and cpu.unit == "iterations/s"
    assert cpu.facts["claim_key"] == proofs.RATE_KEYS["cpu"] == "pbkdf2_per_s"
    assert total == pytest.approx(per_core * cpu.facts["workers"])
    assert cpu.facts["workers"] == os.cpu_count()
    # All cores together are never slower than a tenth of one core, nor faster than workers × 3 cores.
    assert single / 10 < total < single * 3 * (os.cpu_count() or 1)


def test_memory_bandwidth_and_allocation_check(
    suite: tuple[SuiteResult, dict[str, list[float]], Path],
) -> None:
    mem = suite[0].get("memory")
    assert mem.status == MEASURED
    # The proof's table fill rate (hash-bound: tens of MB/s here), not a memcpy (GB/s).
    assert mem.value == mem.figure("table_fill") and 1e5 < mem.value < 1e10
    assert mem.facts["claim_key"] == proofs.RATE_KEYS["memory"]
    # The claimed 25 % of RAM is larger than the 32 MiB test bound here, so exactly the bound is checked.
    assert mem.figure("allocated_and_touched") == 32 * MiB
    assert mem.facts["claimed_bytes"] > 32 * MiB
    assert mem.facts["claim_fully_checked"] is False
    assert mem.facts["total_bytes"] == suite[0].machine.memory_total_bytes


@pytest.mark.parametrize("total", [25_275_990_016, 24 * 1024**3, 8_000_000_001])
def test_memory_claim_fully_checked_when_small(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, total: int
) -> None:
    # The machine's exact byte count decides whether total × fraction lands on a page boundary; CI's
    # 25,275,990,016 bytes made a 4 MiB claim one byte over, which a page-rounded-down check never covers.
    real = psutil.virtual_memory()
    fake = real._replace(total=total, available=min(real.available, total))
    monkeypatch.setattr(psutil, "virtual_memory", lambda: fake)
    fraction = (4 * MiB) / total
    res = run_suite(
        ["memory"],
        quick=True,
        workdir=tmp_path,
        options=Options(memory_claim_fraction=fraction, memory_check_limit_bytes=32 * MiB),
    ).get("memory")
    claimed = res.facts["claimed_bytes"]
    assert abs(claimed - 4 * MiB) <= 1
    assert res.facts["claim_fully_checked"] is True
    assert claimed <= res.figure("allocated_and_touched") < claimed + 4096


def test_bench_shows_the_rates_the_checks_use(
    suite: tuple[SuiteResult, dict[str, list[float]], Path], tmp_path: Path
) -> None:
    """The memory and storage figures are the proof tables' rates, which the agent calibrates its claim
    with; the old figures (memcpy, raw sequential writes) were hundreds of times higher, so a claim read
    off the bench would have been a 100× overclaim."""
    result = suite[0]
    for name, folder in (("memory", None), ("storage", tmp_path)):
        claimed = calibrate_table_rate(0.1, folder)  # what the agent puts in its claim
        shown = result.get(name).value
        assert shown is not None and claimed / 5 < shown < claimed * 5, (name, shown, claimed)
    assert list(tmp_path.iterdir()) == []


def test_storage_measures_and_cleans_up(suite: tuple[SuiteResult, dict[str, list[float]], Path]) -> None:
    result, _, workdir = suite
    st = result.get("storage")
    assert st.status == MEASURED
    # The headline is the proof table's write rate (what a storage check times), not a raw file write.
    assert st.value == st.figure("table_write") and 1e4 < st.value < 1e10
    assert st.facts["claim_key"] == proofs.RATE_KEYS["storage"]
    assert st.facts["test_file_bytes"] == 4 * MiB
    assert 1e5 < st.figure("sequential_write") < 1e11
    assert 1e5 < st.figure("sequential_read") < 1e12
    assert 10 < st.figure("random_read_4k") < 1e8
    free_now = shutil.disk_usage(workdir).free
    assert abs(st.figure("free") - free_now) < 0.05 * shutil.disk_usage(workdir).total
    assert list(workdir.iterdir()) == []


def test_network_without_broker_is_not_measured(
    suite: tuple[SuiteResult, dict[str, list[float]], Path],
) -> None:
    assert suite[0].get("network").status == "not measured: no broker"


def test_gpu_is_absent_or_real(suite: tuple[SuiteResult, dict[str, list[float]], Path]) -> None:
    gpu = suite[0].get("gpu")
    if _nvml_works():
        assert gpu.status != ABSENT
        assert int(gpu.facts["count"]) >= 1
    else:
        assert gpu.status == ABSENT
        assert "NVML" in str(gpu.facts["reason"]) or "no NVML bindings" in str(gpu.facts["reason"])
        assert gpu.value is None


def test_tflite_inference(suite: tuple[SuiteResult, dict[str, list[float]], Path]) -> None:
    tfl = suite[0].get("tflite")
    runtime = _tflite_runtime()
    if runtime is None:
        assert tfl.status == ABSENT and "no TFLite runtime" in str(tfl.facts["reason"])
        return
    assert tfl.status == MEASURED, tfl
    assert tfl.facts["runtime"] == runtime
    assert 100 < tfl.figure("inferences") < 1e8
    assert float(tfl.facts["max_abs_error"]) < 1e-3


def test_tflite_absent_without_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (
        "ai_edge_litert",
        "ai_edge_litert.interpreter",
        "tflite_runtime",
        "tflite_runtime.interpreter",
    ):
        monkeypatch.setitem(sys.modules, module, None)
    res = run_suite(["tflite"], quick=True, workdir=tmp_path).get("tflite")
    assert res.status == ABSENT
    assert "no TFLite runtime" in str(res.facts["reason"])


def test_tiny_model_is_valid_tflite() -> None:
    model = build_model(8, 4, seed=3)
    assert model.content[4:8] == b"TFL3"
    assert build_model(8, 4, seed=3).content == model.content
    schema = pytest.importorskip("tflite")
    parsed = schema.Model.GetRootAs(model.content)
    assert parsed.Buffers(0).DataLength() == 0
    codes = [parsed.OperatorCodes(i) for i in range(parsed.OperatorCodesLength())]
    assert [(c.BuiltinCode(), c.DeprecatedBuiltinCode()) for c in codes] == [(9, 9), (0, 0)]
    weights = parsed.Buffers(1).DataAsNumpy().tobytes()
    assert struct.unpack("<32f", weights) == model.weights


def test_tiny_model_runs_in_runtime() -> None:
    if _tflite_runtime() is None:
        pytest.skip("no TFLite runtime installed (pip install ai-edge-litert)")
    np = pytest.importorskip("numpy")
    found = bench._tflite_interpreter()
    assert not isinstance(found, str)
    model = build_model(16, 8, seed=7)
    interp = found[0](model_content=model.content)
    interp.allocate_tensors()
    x = [i / 16 - 0.5 for i in range(16)]
    interp.set_tensor(interp.get_input_details()[0]["index"], np.array([x], dtype=np.float32))
    interp.invoke()
    got = interp.get_tensor(interp.get_output_details()[0]["index"])[0]
    assert list(got) == pytest.approx(model.reference(x), abs=1e-4)


def test_result_round_trips_json(suite: tuple[SuiteResult, dict[str, list[float]], Path]) -> None:
    result = suite[0]
    assert msgspec.json.decode(result.to_json(), type=SuiteResult) == result


def test_unknown_benchmark_is_refused(tmp_path: Path) -> None:
    with pytest.raises(bench.UnknownBenchmark, match="nope"):
        run_suite(["cpu", "nope"], workdir=tmp_path)


@pytest.mark.integration
def test_network_through_real_broker(mosquitto: Mosquitto, tmp_path: Path) -> None:
    opts = Options(site="s1", group="g1", node_id="n1")
    res = run_suite(["network"], quick=True, workdir=tmp_path, broker_url=mosquitto.url, options=opts)
    net = res.get("network")
    assert net.status == MEASURED, net
    assert 0 < net.figure("round_trip_median") <= net.figure("round_trip_p95") < 1.0
    assert net.figure("throughput") > 1e5
    assert net.facts["echo_topic"] == "prsm/v1/s1/g1/node/n1/bench/echo"


def test_network_unreachable_broker_is_not_measured(tmp_path: Path) -> None:
    from tests.conftest import free_port

    url = f"mqtt://127.0.0.1:{free_port()}"
    res = run_suite(
        ["network"], quick=True, workdir=tmp_path, broker_url=url, options=Options(broker_timeout_s=2)
    )
    status = res.get("network").status
    assert status.startswith(f"not measured: broker {url} unreachable"), status


def test_cli_json_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--only", "memory,network", "--quick", "--json", "--workdir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert [r["name"] for r in data["results"]] == ["memory", "network"]
    assert data["results"][0]["status"] == MEASURED
    assert "bench memory   100%" in err
    assert main(["bench", "--only", "network", "--quick", "--workdir", str(tmp_path)]) == 0
    out, _ = capsys.readouterr()
    assert "not measured: no broker" in out
    assert list(tmp_path.iterdir()) == []
