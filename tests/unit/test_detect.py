"""Resource detection: parsing recorded readings of real device kinds, and the real machine we run on."""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any

import msgspec
import psutil
import pytest

from prsm_edge import cli
from prsm_edge.node import detect
from prsm_edge.node.detect import Detected, Raw
from prsm_edge.protocol.messages import ResourceSpec, ResourceType
from prsm_edge.protocol.offer import Guardrails, guardrail

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "detect"
NAMES = sorted(p.stem for p in FIXTURES.glob("*.json"))


def load_raw(name: str) -> Raw:
    """A recorded device's raw readings."""
    return msgspec.json.decode((FIXTURES / f"{name}.json").read_bytes(), type=Raw)


def parsed(name: str) -> Detected:
    """A recorded device, parsed."""
    return detect.parse(load_raw(name))


def specs_by_type(d: Detected) -> dict[ResourceType, list[ResourceSpec]]:
    out: dict[ResourceType, list[ResourceSpec]] = {}
    for spec in d.resource_specs():
        out.setdefault(spec.type, []).append(spec)
    return out


def test_every_fixture_parses_and_round_trips_as_json() -> None:
    assert len(NAMES) >= 7
    for name in NAMES:
        d = parsed(name)
        again = msgspec.json.decode(msgspec.json.encode(d), type=Detected)
        assert again == d, name
        json.dumps(d.to_json())  # plain JSON, no custom types


# --- NVIDIA GPUs -------------------------------------------------------------------------------------


def test_h100_server_gpus_from_nvml_readings() -> None:
    d = parsed("h100_server")
    assert d.gpu_status.status == "present"
    assert d.gpu_driver == "535.161.08"
    assert [g.name for g in d.gpus] == ["NVIDIA H100 80GB HBM3"] * 2
    g = d.gpus[0]
    assert (g.sm_count, g.compute_capability, g.sm_clock_max_mhz, g.mem_clock_max_mhz) == (
        132,
        "9.0",
        1980,
        2619,
    )
    assert g.memory_total_bytes == 85520809984
    assert g.power_limit_w == 700.0
    assert g.uuid == "GPU-3a9e5c8b-1d2f-4e6a-9b7c-0f1e2d3c4b5a"
    assert not g.integrated
    (gpu_spec,) = specs_by_type(d)[ResourceType.COMPUTE_GPU]
    assert gpu_spec.capacity == 2.0 and gpu_spec.unit == "gpus"
    assert gpu_spec.details["memory_gb"] == 85.521
    assert gpu_spec.details["sm_count"] == 132
    assert gpu_spec.details["compute_capability"] == "9.0"


def test_a100_workstation() -> None:
    d = parsed("a100_workstation")
    (g,) = d.gpus
    assert (g.name, g.sm_count, g.compute_capability, g.power_limit_w) == (
        "NVIDIA A100-PCIE-40GB",
        108,
        "8.0",
        250.0,
    )
    assert g.memory_total_bytes == 40 * 2**30
    kinds = {disk.mountpoint: disk.kind for disk in d.storage}
    assert kinds == {"/": "ssd", "/data": "hdd"}
    assert detect.hottest_cpu(d.temperatures) == 52.75  # k10temp's Tctl, not the NVMe's


def test_gpu_fields_nvml_did_not_answer_stay_unknown() -> None:
    nvml = detect.RawNvml(
        driver_version="550.54.15",
        gpus=[
            detect.RawNvmlGpu(
                index=0,
                name="NVIDIA GeForce RTX 3060 Laptop GPU",
                uuid="GPU-00000000-1111-2222-3333-444444444444",
                memory_total=6442450944,
                power_limit_mw=None,
                errors={"power_limit": "Not Supported"},
            )
        ],
    )
    gpus, presence, _ = detect.parse_nvml(nvml)
    assert presence.status == "present"
    assert gpus[0].power_limit_w is None and gpus[0].sm_count is None


def test_nvml_error_means_absent_with_reason() -> None:
    gpus, presence, driver = detect.parse_nvml(detect.RawNvml(error="NVML unavailable: Driver Not Loaded"))
    assert gpus == [] and driver is None
    assert presence.status == "absent" and "Driver Not Loaded" in presence.reason


def _fake_pynvml(fail_init: bool) -> Any:
    """An H100-answering stand-in for pynvml (this machine has no NVIDIA GPU)."""
    nv: Any = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    nv.NVMLError = NVMLError
    nv.NVML_CLOCK_SM, nv.NVML_CLOCK_MEM = 1, 2
    nv.shutdowns = 0

    def init() -> None:
        if fail_init:
            raise NVMLError("NVML Shared Library Not Found")

    def shutdown() -> None:
        nv.shutdowns += 1

    def not_supported(handle: int) -> int:
        raise NVMLError("Not Supported")

    nv.nvmlInit, nv.nvmlShutdown = init, shutdown
    nv.nvmlSystemGetDriverVersion = lambda: "535.161.08"
    nv.nvmlSystemGetCudaDriverVersion = lambda: 12020
    nv.nvmlDeviceGetCount = lambda: 1
    nv.nvmlDeviceGetHandleByIndex = lambda i: 1000 + i
    nv.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"  # older bindings return bytes
    nv.nvmlDeviceGetUUID = lambda h: "GPU-3a9e5c8b-1d2f-4e6a-9b7c-0f1e2d3c4b5a"
    nv.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=85520809984, free=1, used=2)
    nv.nvmlDeviceGetAttributes = lambda h: types.SimpleNamespace(multiprocessorCount=132)
    nv.nvmlDeviceGetCudaComputeCapability = lambda h: (9, 0)
    nv.nvmlDeviceGetMaxClockInfo = lambda h, clock: {1: 1980, 2: 2619}[clock]
    nv.nvmlDeviceGetEnforcedPowerLimit = not_supported
    nv.nvmlDeviceGetPciInfo = lambda h: types.SimpleNamespace(busId=b"00000000:18:00.0")
    return nv


def test_read_nvml_reads_every_field_and_records_unsupported_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_pynvml(fail_init=False)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    raw = detect.read_nvml()
    assert raw.error is None and raw.driver_version == "535.161.08" and raw.cuda_driver_version == 12020
    (g,) = raw.gpus
    assert g.name == "NVIDIA H100 80GB HBM3" and g.pci_bus_id == "00000000:18:00.0"
    assert (g.multiprocessor_count, g.cuda_compute_capability, g.max_clock_sm, g.max_clock_mem) == (
        132,
        (9, 0),
        1980,
        2619,
    )
    assert g.power_limit_mw is None and g.errors == {"power_limit": "Not Supported"}
    assert fake.shutdowns == 1


def test_read_nvml_init_failure_is_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(fail_init=True))
    raw = detect.read_nvml()
    assert raw.error == "NVML unavailable: NVML Shared Library Not Found" and raw.gpus == []


def test_read_nvml_without_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    assert "nvidia-ml-py is not installed" in (detect.read_nvml().error or "")


# --- Jetson, Coral, Cloud TPU, Android ------------------------------------------------------------------


def test_jetson_integrated_gpu_without_nvml() -> None:
    d = parsed("jetson_orin_nano")
    assert d.cpu.model == "ARM Cortex-A78AE"
    assert d.gpu_status.status == "present"
    (g,) = d.gpus
    assert g.integrated and g.vendor == "nvidia" and g.name == "NVIDIA Jetson Orin Nano Developer Kit"
    assert g.memory_total_bytes is None and g.sm_count is None  # shared RAM: nothing invented
    assert d.nvidia_gpus == []
    assert detect.hottest_cpu(d.temperatures) == 47.968  # cpu-thermal, not the hotter tj-thermal
    (spec,) = specs_by_type(d)[ResourceType.COMPUTE_GPU]
    assert spec.details["integrated"] is True and "memory_gb" not in spec.details


def test_raspberry_pi_with_coral_usb() -> None:
    d = parsed("rpi4_coral_usb")
    assert d.cpu.model == "ARM Cortex-A72"
    assert d.device_model == "Raspberry Pi 4 Model B Rev 1.4"
    acc = d.accelerators
    assert acc.status.status == "present"
    assert acc.edge_tpus == [detect.EdgeTpu(kind="usb", path="2-2", state="ready")]
    assert acc.runtime == "tflite_runtime" and acc.delegate_loadable
    (tpu,) = specs_by_type(d)[ResourceType.COMPUTE_TPU]
    assert tpu.capacity == 1.0 and tpu.details["kind"] == "edge_tpu" and tpu.details["usable"] is True
    assert all(disk.kind == "ssd" for disk in d.storage)  # SD card: non-rotational, as the kernel says


def test_coral_usb_before_firmware_load_and_pcie() -> None:
    acc = detect.parse_accelerators(
        detect.RawAccel(
            usb_devices=[detect.RawUsbDevice(path="1-1.2", vendor="1a6e", product="089a")],
            apex_devices=["/dev/apex_0"],
        )
    )
    assert [(t.kind, t.state) for t in acc.edge_tpus] == [("pcie", "ready"), ("usb", "needs_firmware")]
    assert not acc.delegate_loadable and acc.runtime is None


def test_coral_pcie_runtime_preference() -> None:
    d = parsed("x86_coral_pcie")
    assert [t.path for t in d.accelerators.edge_tpus] == ["/dev/apex_0"]
    assert d.accelerators.runtime == "ai_edge_litert"
    both = detect.parse_accelerators(
        detect.RawAccel(runtimes={"ai_edge_litert": "1.2.0", "tflite_runtime": "2.14"})
    )
    assert both.runtime == "ai_edge_litert"


def test_cloud_tpu_vm_and_unknown_link_speed() -> None:
    d = parsed("tpu_v4_vm")
    specs = specs_by_type(d)
    (tpu,) = specs[ResourceType.COMPUTE_TPU]
    assert tpu.capacity == 4.0 and tpu.details == {"kind": "cloud_tpu", "libtpu": "0.0.8"}
    # GCE's NIC tells no speed: no bandwidth is claimed rather than a guess.
    assert ResourceType.BANDWIDTH_INGRESS not in specs and ResourceType.BANDWIDTH_EGRESS not in specs
    assert d.cpu.freq_max_mhz is None and d.cpu.freq_current_mhz is None
    assert d.temperatures_status.status == "absent"


def test_android_battery_and_missing_sysfs() -> None:
    d = parsed("android_termux")
    assert d.battery == detect.Battery(percent=81.0, power_plugged=True, seconds_left=None)
    assert d.battery_status.status == "present"
    assert d.temperatures == [] and d.temperatures_status.status == "absent"
    assert [disk.kind for disk in d.storage] == ["unknown"]  # no /sys/block access
    assert d.cpu.physical_cores is None
    assert d.machine_id_hash is None


# --- storage, network, resource specs, fingerprints -----------------------------------------------------


def test_storage_skips_snaps_and_reports_kinds() -> None:
    d = parsed("h100_server")
    assert [disk.mountpoint for disk in d.storage] == ["/", "/boot/efi", "/raid"]
    assert {disk.kind for disk in d.storage} == {"ssd"}


def test_rotational_values() -> None:
    assert detect.parse_rotational(detect.RawBlock(disk="sda", rotational="1\n")) == "hdd"
    assert detect.parse_rotational(detect.RawBlock(disk="nvme0n1", rotational="0")) == "ssd"
    assert detect.parse_rotational(detect.RawBlock(disk="x", rotational=None)) == "unknown"
    assert detect.parse_rotational(None) == "unknown"


def test_resource_specs_h100_server() -> None:
    specs = specs_by_type(parsed("h100_server"))
    (cpu,) = specs[ResourceType.COMPUTE_CPU]
    assert cpu.capacity == 224.0 and cpu.unit == "cores"
    assert cpu.details == {
        "model": "Intel(R) Xeon(R) Platinum 8480+",
        "arch": "x86_64",
        "physical_cores": 112,
        "freq_max_mhz": 3800.0,
    }
    (persistent,) = specs[ResourceType.STORAGE_PERSISTENT]
    assert persistent.capacity == 1407.335 and persistent.details["kind"] == "ssd"
    (memory,) = specs[ResourceType.STORAGE_MEMORY]
    assert memory.capacity == 2163.909
    (cache,) = specs[ResourceType.STORAGE_CACHE]  # the cache dir is on /raid, another filesystem
    assert cache.capacity == 27890.549 and cache.details["path"] == "/raid/prsm-edge-cache"
    (ingress,) = specs[ResourceType.BANDWIDTH_INGRESS]
    assert ingress.capacity == 100000.0 and ingress.details["interface"] == "enp170s0f0np0"


def test_cache_on_the_data_filesystem_is_not_counted_twice() -> None:
    specs = specs_by_type(parsed("a100_workstation"))
    assert ResourceType.STORAGE_CACHE not in specs
    assert ResourceType.COMPUTE_TPU not in specs


def test_nic_parsing() -> None:
    nics = {n.name: n for n in parsed("h100_server").network}
    assert nics["lo"].loopback and nics["lo"].mac is None
    assert nics["docker0"].physical is False and nics["docker0"].is_up is False
    assert nics["eno3"].addresses == ["10.0.3.21"] and nics["eno3"].speed_mbit == 10000


def test_hw_fingerprint_is_stable_and_tracks_hardware() -> None:
    a = parsed("h100_server")
    assert a.hw_fingerprint() == parsed("h100_server").hw_fingerprint()
    assert len(a.hw_fingerprint()) == 64
    raw = load_raw("h100_server")
    # A virtual interface's random MAC changes at every boot: it must not move the fingerprint.
    raw.nic_addrs["docker0"] = [detect.RawAddr(family="AF_PACKET", address="02:42:aa:bb:cc:dd")]
    assert detect.parse(raw).hw_fingerprint() == a.hw_fingerprint()
    raw.nvml = msgspec.structs.replace(
        raw.nvml, gpus=[msgspec.structs.replace(raw.nvml.gpus[0], uuid="GPU-other"), raw.nvml.gpus[1]]
    )
    assert detect.parse(raw).hw_fingerprint() != a.hw_fingerprint()
    fingerprints = {parsed(n).hw_fingerprint() for n in NAMES}
    assert len(fingerprints) == len(NAMES)


def test_gpu_fingerprints_reveal_a_shared_gpu() -> None:
    a = parsed("h100_server")
    raw = load_raw("a100_workstation")
    raw.nvml = msgspec.structs.replace(raw.nvml, gpus=[load_raw("h100_server").nvml.gpus[0]])
    b = detect.parse(raw)
    assert a.hw_fingerprint() != b.hw_fingerprint()
    assert set(a.gpu_fingerprints()) & set(b.gpu_fingerprints())
    assert parsed("jetson_orin_nano").gpu_fingerprints() == []


def test_machine_id_is_hashed_not_exposed() -> None:
    d = parsed("h100_server")
    assert d.machine_id_hash is not None
    assert "b3c1e6a2f9d84c7e8a1b2c3d4e5f6a7b" not in json.dumps(d.to_json())


def test_cpu_model_parsing() -> None:
    assert (
        detect.parse_cpu_model("model name\t: ARMv7 Processor rev 4 (v7l)\n") == "ARMv7 Processor rev 4 (v7l)"
    )
    assert detect.parse_cpu_model("CPU implementer\t: 0x41\nCPU part\t: 0xfff\n") == (
        "ARM implementer 0x41 part 0xfff"
    )
    assert detect.parse_cpu_model("processor\t: 0\nHardware\t: Qualcomm Technologies, Inc SM8250\n") == (
        "Qualcomm Technologies, Inc SM8250"
    )
    assert detect.parse_cpu_model(None) is None
    assert detect.parse_cpu_model("processor\t: 0\n") is None


# --- this machine, for real ------------------------------------------------------------------------------


def _nvml_works() -> bool:
    try:
        import pynvml
    except ImportError:
        return False
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


def test_this_machine_gpus_as_nvml_says(tmp_path: Path) -> None:
    d = detect.detect(tmp_path / "data")
    if _nvml_works():
        assert d.gpu_status.status == "present" and d.nvidia_gpus
        assert all(g.uuid and g.memory_total_bytes for g in d.nvidia_gpus)
    else:
        assert d.nvidia_gpus == []
        assert d.gpu_status.status == "absent" or any(g.integrated for g in d.gpus)
        assert d.gpu_status.reason
        assert ResourceType.COMPUTE_GPU not in specs_by_type(d) or any(g.integrated for g in d.gpus)


def test_this_machine_sensors_and_battery_match_psutil(tmp_path: Path) -> None:
    d = detect.detect(tmp_path)
    battery = psutil.sensors_battery()
    if battery is None:
        assert d.battery is None and d.battery_status.status == "absent" and d.battery_status.reason
    else:
        assert d.battery is not None and d.battery.percent == pytest.approx(battery.percent, abs=2)
    temps = psutil.sensors_temperatures()
    assert (d.temperatures_status.status == "present") == any(temps.values())
    if not any(temps.values()):
        assert d.temperatures == [] and detect.read_sensors().temperature_c is None


def test_this_machine_basics(tmp_path: Path) -> None:
    d = detect.detect(tmp_path)
    assert d.cpu.logical_cores == psutil.cpu_count()
    assert d.memory.total_bytes == psutil.virtual_memory().total
    assert d.data_dir is not None and d.data_dir.path == str(tmp_path)
    specs = specs_by_type(d)
    assert specs[ResourceType.COMPUTE_CPU][0].capacity == psutil.cpu_count()
    # Bandwidth only when some up interface tells its link speed.
    speeds = [s.speed for name, s in psutil.net_if_stats().items() if s.isup and s.speed > 0 and name != "lo"]
    assert (ResourceType.BANDWIDTH_INGRESS in specs) == bool(speeds)
    acc = d.accelerators
    for module in ("ai_edge_litert", "tflite_runtime"):
        assert (acc.runtimes[module] is not None) == (importlib.util.find_spec(module) is not None)
    if not Path("/dev/apex_0").exists() and not acc.edge_tpus:
        assert acc.status.status == "absent" or acc.cloud_tpu_devices
    assert d.hw_fingerprint() == detect.detect(tmp_path).hw_fingerprint()


def test_raw_readings_record_and_replay(tmp_path: Path) -> None:
    raw = detect.read_raw(tmp_path)
    replayed = msgspec.json.decode(msgspec.json.encode(raw), type=Raw)
    assert detect.parse(replayed) == detect.parse(raw)


def test_read_sensors_is_fast_and_sane() -> None:
    detect.read_sensors()  # first call primes cpu_percent and the NVML handle cache
    times = []
    for _ in range(30):
        start = time.perf_counter()
        s = detect.read_sensors()
        times.append(time.perf_counter() - start)
    assert statistics.median(times) < 0.005
    assert 0.0 <= s.cpu_util <= 1.0 and 0.0 < s.mem_util <= 1.0
    if psutil.sensors_battery() is None:
        assert s.on_battery is None and s.battery_pct is None
    readings = s.readings()
    assert readings.temperature_c == s.temperature_c and readings.power_w == s.power_w


# --- CLI -------------------------------------------------------------------------------------------------


def test_cli_detect_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["detect", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["detected"]["cpu"]["logical_cores"] == psutil.cpu_count()
    assert len(out["hw_fingerprint"]) == 64
    assert any(r["type"] == "compute_cpu" for r in out["resources"])
    assert out["profile"]


def test_cli_detect_table_says_absent(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["detect"]) == 0
    out = capsys.readouterr().out
    assert "cpu " in out and "memory " in out
    if not _nvml_works():
        assert "gpu          absent: " in out


def test_cli_detect_raw_is_a_fixture(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["detect", "--raw"]) == 0
    raw = msgspec.json.decode(capsys.readouterr().out.encode(), type=Raw)
    assert raw.cpu_logical == psutil.cpu_count()


def test_trim_cpuinfo_keeps_the_first_core_and_the_board() -> None:
    text = (
        "processor\t: 0\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n\n"
        "processor\t: 1\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n\n"
        "Hardware\t: BCM2835\nRevision\t: d03114\nSerial\t\t: 10000000a1b2c3d4\n"
        "Model\t\t: Raspberry Pi 4 Model B\n"
    )
    trimmed = detect.trim_cpuinfo(text)
    assert trimmed is not None
    assert trimmed.count("processor") == 1 and "Model\t\t: Raspberry Pi 4 Model B" in trimmed
    assert "Serial" not in trimmed  # a board serial is not needed and not recorded
    assert detect.parse_cpu_model(trimmed) == "ARM Cortex-A72"
    assert detect.trim_cpuinfo(None) is None


def test_heartbeat_sensors_read_gpu_power_and_heat_for_the_guardrails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A stand-in for NVML on an H100 at 91 °C drawing 350 W (this machine has no NVIDIA GPU).
    fake = _fake_pynvml(fail_init=False)
    fake.NVML_TEMPERATURE_GPU = 0
    fake.nvmlDeviceGetPowerUsage = lambda h: 350_000
    fake.nvmlDeviceGetTemperature = lambda h, sensor: 91
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(detect, "_gpu_sensors", detect._NvmlSensors())
    s = detect.read_sensors()
    assert (s.power_w, s.gpu_temperature_c) == (350.0, 91.0)
    reason = guardrail(s.readings(), Guardrails(max_power_consumption=1000.0))
    assert reason.startswith("GPU temperature 91.0 °C above the limit 87")


def test_gpu_sensors_absent_without_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(fail_init=True))
    monkeypatch.setattr(detect, "_gpu_sensors", detect._NvmlSensors())
    s = detect.read_sensors()
    assert (s.power_w, s.gpu_temperature_c) == (None, None)
