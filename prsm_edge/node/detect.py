"""What this device has: CPU, memory, storage, network, sensors, battery, NVIDIA GPUs, Edge/Cloud TPUs.

Reading and parsing are apart. :func:`read_raw` gathers the OS's answers as they come (psutil tuples
turned into plain fields, /sys file contents, pynvml results) into a :class:`Raw`, which serialises to
JSON, so a real machine's readings can be recorded as a fixture. :func:`parse` turns a :class:`Raw` into
:class:`Detected` without touching the machine. What a device lacks is reported ``absent`` with the
reason, never as an invented number.
"""

from __future__ import annotations

import ctypes
import hashlib
import hmac
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any, Final, Literal

import msgspec
import psutil

from prsm_edge import paths
from prsm_edge.protocol.messages import RESOURCE_UNITS, ResourceSpec, ResourceType
from prsm_edge.protocol.offer import Readings

__all__ = [
    "CORAL_USB_IDS",
    "Detected",
    "Raw",
    "Sensors",
    "detect",
    "parse",
    "read_raw",
    "read_sensors",
]

log = logging.getLogger(__name__)

GB: Final = 1_000_000_000
# Coral USB Accelerator: 1a6e:089a before its firmware is loaded, 18d1:9302 after.
CORAL_USB_IDS: Final = {("1a6e", "089a"): "needs_firmware", ("18d1", "9302"): "ready"}
EDGETPU_LIBRARY: Final = "libedgetpu.so.1"
TFLITE_RUNTIMES: Final = ("ai_edge_litert", "tflite_runtime")
_APP_ID: Final = b"prsm-edge hw fingerprint v1"
# Temperature chips that measure the CPU (psutil names them after the hwmon/thermal-zone driver).
_CPU_CHIPS: Final = frozenset(
    {"coretemp", "k10temp", "zenpower", "cpu_thermal", "cpu-thermal", "soc_thermal", "x86_pkg_temp", "cpu"}
)


# ---------------------------------------------------------------------------------------------------
# Raw readings: what the OS answered, as plain data (recordable as JSON fixtures).


class RawCpuFreq(msgspec.Struct, frozen=True):
    """``psutil.cpu_freq()``: MHz, 0 where the OS does not say."""

    current: float
    min: float
    max: float


class RawPartition(msgspec.Struct, frozen=True):
    """One ``psutil.disk_partitions()`` entry."""

    device: str
    mountpoint: str
    fstype: str
    opts: str = ""


class RawUsage(msgspec.Struct, frozen=True):
    """``psutil.disk_usage(mountpoint)`` in bytes."""

    total: int
    used: int
    free: int


class RawBlock(msgspec.Struct, frozen=True):
    """The whole disk behind a partition and its ``/sys/block/<disk>/queue/rotational`` content."""

    disk: str
    rotational: str | None = None


class RawAddr(msgspec.Struct, frozen=True):
    """One ``psutil.net_if_addrs()`` address; ``family`` is the socket family's name."""

    family: str
    address: str
    netmask: str | None = None


class RawNicStats(msgspec.Struct, frozen=True):
    """One ``psutil.net_if_stats()`` entry; speed in Mbit/s, 0 = unknown."""

    isup: bool
    speed: int
    mtu: int = 0
    flags: str = ""


class RawTemp(msgspec.Struct, frozen=True):
    """One ``psutil.sensors_temperatures()`` reading, °C."""

    label: str
    current: float
    high: float | None = None
    critical: float | None = None


class RawBattery(msgspec.Struct, frozen=True):
    """``psutil.sensors_battery()``; ``secsleft`` -1 = unlimited (plugged), -2 = unknown."""

    percent: float
    secsleft: int
    power_plugged: bool | None


class RawNvmlGpu(msgspec.Struct, frozen=True):
    """What pynvml answered for one GPU (``None`` where the call is not supported)."""

    index: int
    name: str
    uuid: str
    memory_total: int | None = None
    multiprocessor_count: int | None = None
    cuda_compute_capability: tuple[int, int] | None = None
    max_clock_sm: int | None = None
    max_clock_mem: int | None = None
    power_limit_mw: int | None = None
    pci_bus_id: str | None = None
    errors: dict[str, str] = {}


class RawNvml(msgspec.Struct, frozen=True):
    """The result of asking NVML; ``error`` set when it could not be asked at all."""

    error: str | None = None
    driver_version: str | None = None
    cuda_driver_version: int | None = None
    gpus: list[RawNvmlGpu] = []


class RawUsbDevice(msgspec.Struct, frozen=True):
    """``/sys/bus/usb/devices/<path>/idVendor`` and ``idProduct``."""

    path: str
    vendor: str
    product: str


class RawAccel(msgspec.Struct, frozen=True):
    """Edge-AI runtimes and accelerator devices as found."""

    runtimes: dict[str, str | None] = {}  # module -> version, None = not importable
    delegate_library: str = EDGETPU_LIBRARY
    delegate_error: str | None = "not checked"  # None = the library loaded
    apex_devices: list[str] = []
    usb_devices: list[RawUsbDevice] = []
    accel_devices: list[str] = []


class RawDirSpace(msgspec.Struct, frozen=True):
    """Free space of the filesystem holding one of our folders."""

    path: str
    device_id: int
    total: int
    free: int


class Raw(msgspec.Struct, kw_only=True):
    """Every reading :func:`parse` needs, as the OS gave it."""

    system: str
    machine: str
    release: str = ""
    cpuinfo: str | None = None
    device_tree_model: str | None = None
    device_tree_compatible: str | None = None
    tegra_release: str | None = None
    machine_id: str | None = None
    cpu_logical: int | None = None
    cpu_physical: int | None = None
    cpu_freq: RawCpuFreq | None = None
    mem_total: int
    mem_available: int
    partitions: list[RawPartition] = []
    usage: dict[str, RawUsage] = {}
    blocks: dict[str, RawBlock] = {}
    nic_addrs: dict[str, list[RawAddr]] = {}
    nic_stats: dict[str, RawNicStats] = {}
    physical_nics: list[str] = []
    temperatures: dict[str, list[RawTemp]] | None = None
    temperatures_error: str | None = None
    battery: RawBattery | None = None
    battery_error: str | None = None
    nvml: RawNvml = RawNvml(error="not read")
    accel: RawAccel = RawAccel()
    data_dir: RawDirSpace | None = None
    cache_dir: RawDirSpace | None = None


# ---------------------------------------------------------------------------------------------------
# Parsed result.

Status = Literal["present", "absent"]


class Presence(msgspec.Struct, frozen=True):
    """Whether something is there and, if absent, why we think so."""

    status: Status
    reason: str = ""


class Cpu(msgspec.Struct, frozen=True):
    """The processor."""

    logical_cores: int
    physical_cores: int | None
    freq_current_mhz: float | None
    freq_max_mhz: float | None
    architecture: str
    model: str | None


class Memory(msgspec.Struct, frozen=True):
    """RAM in bytes."""

    total_bytes: int
    available_bytes: int


class Disk(msgspec.Struct, frozen=True):
    """One mounted real filesystem."""

    mountpoint: str
    device: str
    fstype: str
    total_bytes: int
    free_bytes: int
    kind: Literal["ssd", "hdd", "unknown"]


class Nic(msgspec.Struct, frozen=True):
    """One network interface; ``speed_mbit`` 0 = unknown."""

    name: str
    addresses: list[str]
    mac: str | None
    is_up: bool
    speed_mbit: int
    loopback: bool
    physical: bool


class TempSensor(msgspec.Struct, frozen=True):
    """One temperature sensor, °C."""

    chip: str
    label: str
    current_c: float
    high_c: float | None
    critical_c: float | None


class Battery(msgspec.Struct, frozen=True):
    """The battery; ``seconds_left`` None when plugged in or unknown."""

    percent: float
    power_plugged: bool | None
    seconds_left: int | None


class Gpu(msgspec.Struct, frozen=True):
    """One GPU; fields the driver did not report are ``None``."""

    name: str
    vendor: str
    index: int | None = None
    uuid: str | None = None
    memory_total_bytes: int | None = None
    sm_count: int | None = None
    compute_capability: str | None = None
    sm_clock_max_mhz: int | None = None
    mem_clock_max_mhz: int | None = None
    power_limit_w: float | None = None
    pci_bus_id: str | None = None
    integrated: bool = False


class EdgeTpu(msgspec.Struct, frozen=True):
    """One Coral Edge TPU (PCIe/M.2 through /dev/apex_N, or the USB Accelerator)."""

    kind: Literal["pcie", "usb"]
    path: str
    state: Literal["ready", "needs_firmware"] = "ready"


class Accelerators(msgspec.Struct, frozen=True):
    """Edge TPUs, Cloud TPU chips and the TFLite runtimes that could drive them."""

    status: Presence
    runtime: str | None  # the TFLite runtime we would use: ai_edge_litert preferred
    runtimes: dict[str, str | None]
    delegate_library: str
    delegate_loadable: bool
    delegate_error: str
    edge_tpus: list[EdgeTpu]
    cloud_tpu_devices: list[str]


class DirSpace(msgspec.Struct, frozen=True):
    """Free space of the filesystem holding one of our folders."""

    path: str
    device_id: int
    total_bytes: int
    free_bytes: int


class Detected(msgspec.Struct, frozen=True, kw_only=True):
    """Everything detected on this device; serialisable with ``msgspec.json.encode``."""

    system: str
    release: str
    device_model: str | None
    device_tree_compatible: str | None
    tegra_release: str | None
    machine_id_hash: str | None
    cpu: Cpu
    memory: Memory
    storage: list[Disk]
    network: list[Nic]
    temperatures: list[TempSensor]
    temperatures_status: Presence
    battery: Battery | None
    battery_status: Presence
    gpus: list[Gpu]
    gpu_status: Presence
    gpu_driver: str | None
    accelerators: Accelerators
    data_dir: DirSpace | None
    cache_dir: DirSpace | None

    @property
    def nvidia_gpus(self) -> list[Gpu]:
        """Discrete NVIDIA GPUs reported by NVML."""
        return [g for g in self.gpus if g.vendor == "nvidia" and not g.integrated]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        data: dict[str, Any] = msgspec.to_builtins(self)
        return data

    def resource_specs(self) -> list[ResourceSpec]:
        """What this device has, as resource specs (before the owner's percentages); nothing invented."""
        specs: list[ResourceSpec] = []

        def add(rtype: ResourceType, capacity: float, details: dict[str, str | int | float | bool]) -> None:
            clean = {k: v for k, v in details.items() if v is not None}
            specs.append(
                ResourceSpec(type=rtype, capacity=capacity, unit=RESOURCE_UNITS[rtype], details=clean)
            )

        cpu = self.cpu
        add(
            ResourceType.COMPUTE_CPU,
            float(cpu.logical_cores),
            _details(
                model=cpu.model,
                arch=cpu.architecture,
                physical_cores=cpu.physical_cores,
                freq_max_mhz=cpu.freq_max_mhz,
            ),
        )
        by_model: dict[tuple[str, bool], list[Gpu]] = {}
        for gpu in self.gpus:
            by_model.setdefault((gpu.name, gpu.integrated), []).append(gpu)
        for (name, integrated), gpus in by_model.items():
            g = gpus[0]
            add(
                ResourceType.COMPUTE_GPU,
                float(len(gpus)),
                _details(
                    name=name,
                    vendor=g.vendor,
                    integrated=integrated,
                    memory_gb=None if g.memory_total_bytes is None else round(g.memory_total_bytes / GB, 3),
                    sm_count=g.sm_count,
                    compute_capability=g.compute_capability,
                    sm_clock_max_mhz=g.sm_clock_max_mhz,
                    mem_clock_max_mhz=g.mem_clock_max_mhz,
                    power_limit_w=g.power_limit_w,
                    driver=self.gpu_driver,
                ),
            )
        acc = self.accelerators
        if acc.edge_tpus:
            add(
                ResourceType.COMPUTE_TPU,
                float(len(acc.edge_tpus)),
                _details(
                    kind="edge_tpu",
                    usb=sum(t.kind == "usb" for t in acc.edge_tpus),
                    pcie=sum(t.kind == "pcie" for t in acc.edge_tpus),
                    runtime=acc.runtime,
                    delegate_loadable=acc.delegate_loadable,
                    usable=acc.delegate_loadable and acc.runtime is not None,
                ),
            )
        if acc.cloud_tpu_devices:
            add(
                ResourceType.COMPUTE_TPU,
                float(len(acc.cloud_tpu_devices)),
                _details(kind="cloud_tpu", libtpu=acc.runtimes.get("libtpu")),
            )
        if self.data_dir is not None:
            disk = self._disk_of(self.data_dir)
            add(
                ResourceType.STORAGE_PERSISTENT,
                round(self.data_dir.free_bytes / GB, 3),
                _details(path=self.data_dir.path, kind=None if disk is None else disk.kind),
            )
        add(ResourceType.STORAGE_MEMORY, round(self.memory.total_bytes / GB, 3), {})
        cache = self.cache_dir
        if cache is not None and (self.data_dir is None or cache.device_id != self.data_dir.device_id):
            disk = self._disk_of(cache)
            add(
                ResourceType.STORAGE_CACHE,
                round(cache.free_bytes / GB, 3),
                _details(path=cache.path, kind=None if disk is None else disk.kind),
            )
        nic = self.fastest_nic()
        if nic is not None:
            for rtype in (ResourceType.BANDWIDTH_INGRESS, ResourceType.BANDWIDTH_EGRESS):
                add(rtype, float(nic.speed_mbit), {"interface": nic.name, "source": "link_speed"})
        return specs

    def fastest_nic(self) -> Nic | None:
        """The up, non-loopback interface with the highest known link speed, if any speed is known."""
        known = [n for n in self.network if n.is_up and not n.loopback and n.speed_mbit > 0]
        return max(known, key=lambda n: (n.speed_mbit, n.name)) if known else None

    def _disk_of(self, space: DirSpace) -> Disk | None:
        """The mounted filesystem holding ``space.path`` (longest mountpoint prefix)."""
        best: Disk | None = None
        for disk in self.storage:
            mp = disk.mountpoint.rstrip("/") + "/"
            if (space.path.rstrip("/") + "/").startswith(mp) and (
                best is None or len(disk.mountpoint) > len(best.mountpoint)
            ):
                best = disk
        return best

    def hw_fingerprint(self) -> str:
        """A stable hash of the machine id, CPU model, GPU UUIDs and physical NICs' MACs (hex, 64 chars)."""
        parts = {
            "machine": self.machine_id_hash,
            "cpu": self.cpu.model,
            "arch": self.cpu.architecture,
            "gpus": sorted(g.uuid for g in self.gpus if g.uuid),
            "macs": sorted(n.mac for n in self.network if n.physical and n.mac),
        }
        blob = json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(b"prsm-edge-hw-v1\0" + blob).hexdigest()

    def gpu_fingerprints(self) -> list[str]:
        """One hash per GPU UUID, so the same GPU claimed by two nodes shows up (sorted hex)."""
        return sorted(
            hashlib.sha256(b"prsm-edge-gpu-v1\0" + g.uuid.encode()).hexdigest() for g in self.gpus if g.uuid
        )


def _details(**items: str | int | float | bool | None) -> dict[str, str | int | float | bool]:
    return {k: v for k, v in items.items() if v is not None}


# ---------------------------------------------------------------------------------------------------
# Parsing (pure: no reads).


# ARM's /proc/cpuinfo names no model; the (implementer, part) pair does.
_ARM_PARTS: Final = {
    ("0x41", "0xd03"): "ARM Cortex-A53",
    ("0x41", "0xd04"): "ARM Cortex-A35",
    ("0x41", "0xd05"): "ARM Cortex-A55",
    ("0x41", "0xd07"): "ARM Cortex-A57",
    ("0x41", "0xd08"): "ARM Cortex-A72",
    ("0x41", "0xd09"): "ARM Cortex-A73",
    ("0x41", "0xd0a"): "ARM Cortex-A75",
    ("0x41", "0xd0b"): "ARM Cortex-A76",
    ("0x41", "0xd0d"): "ARM Cortex-A77",
    ("0x41", "0xd41"): "ARM Cortex-A78",
    ("0x41", "0xd42"): "ARM Cortex-A78AE",
    ("0x41", "0xd0c"): "ARM Neoverse-N1",
    ("0x41", "0xd40"): "ARM Neoverse-V1",
    ("0x41", "0xd4f"): "ARM Neoverse-V2",
    ("0x4e", "0x004"): "NVIDIA Carmel",
}


def parse_cpu_model(cpuinfo: str | None) -> str | None:
    """The CPU's name from /proc/cpuinfo: ``model name`` (x86, ARMv7), else ARM's implementer/part."""
    if not cpuinfo:
        return None
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if sep and value and key not in fields:
            fields[key] = value
    if "model name" in fields:
        return fields["model name"]
    implementer, part = fields.get("cpu implementer", "").lower(), fields.get("cpu part", "").lower()
    if implementer and part:
        return _ARM_PARTS.get((implementer, part), f"ARM implementer {implementer} part {part}")
    return fields.get("hardware") or fields.get("cpu model")


def parse_rotational(block: RawBlock | None) -> Literal["ssd", "hdd", "unknown"]:
    """``/sys/block/<dev>/queue/rotational``: 0 → ssd, 1 → hdd, else unknown."""
    value = None if block is None or block.rotational is None else block.rotational.strip()
    return {"0": "ssd", "1": "hdd"}.get(value or "", "unknown")  # type: ignore[return-value]


def parse_storage(raw: Raw) -> list[Disk]:
    """Real mounted filesystems with their size and kind (squashfs snaps, loops and repeats left out)."""
    disks: list[Disk] = []
    seen: set[str] = set()
    for part in raw.partitions:
        usage = raw.usage.get(part.mountpoint)
        if usage is None or part.fstype in ("squashfs", "") or part.device.startswith("/dev/loop"):
            continue
        if part.device in seen:
            continue
        seen.add(part.device)
        disks.append(
            Disk(
                mountpoint=part.mountpoint,
                device=part.device,
                fstype=part.fstype,
                total_bytes=usage.total,
                free_bytes=usage.free,
                kind=parse_rotational(raw.blocks.get(part.device)),
            )
        )
    return disks


def parse_network(raw: Raw) -> list[Nic]:
    """Network interfaces with their addresses, MAC, state and link speed."""
    nics: list[Nic] = []
    for name in sorted(set(raw.nic_addrs) | set(raw.nic_stats)):
        addrs = raw.nic_addrs.get(name, [])
        stats = raw.nic_stats.get(name)
        macs = [a.address for a in addrs if a.family in ("AF_PACKET", "AF_LINK")]
        mac = next((m.lower() for m in macs if m and m.strip("0:") != ""), None)
        flags = stats.flags.split(",") if stats else []
        nics.append(
            Nic(
                name=name,
                addresses=[a.address for a in addrs if a.family in ("AF_INET", "AF_INET6")],
                mac=mac,
                is_up=bool(stats and stats.isup),
                speed_mbit=max(0, stats.speed) if stats else 0,
                loopback="loopback" in flags or name == "lo",
                physical=name in raw.physical_nics,
            )
        )
    return nics


def parse_temperatures(raw: Raw) -> tuple[list[TempSensor], Presence]:
    """Temperature sensors, or why there are none."""
    if raw.temperatures is None:
        return [], Presence("absent", raw.temperatures_error or "this platform reports no temperatures")
    sensors = [
        TempSensor(chip=chip, label=t.label, current_c=t.current, high_c=t.high, critical_c=t.critical)
        for chip, readings in sorted(raw.temperatures.items())
        for t in readings
    ]
    if not sensors:
        return [], Presence("absent", "no temperature sensors found (psutil.sensors_temperatures is empty)")
    return sensors, Presence("present")


def hottest_cpu(sensors: Iterable[TempSensor]) -> float | None:
    """The hottest CPU sensor (°C); every sensor counts when none is known to be the CPU's."""
    sensors = [s for s in sensors if s.current_c > -273.0]
    cpu = [s for s in sensors if s.chip.lower() in _CPU_CHIPS or "cpu" in s.chip.lower()]
    pool = cpu or sensors
    return max(s.current_c for s in pool) if pool else None


def parse_battery(raw: Raw) -> tuple[Battery | None, Presence]:
    """The battery, or why there is none."""
    if raw.battery is None:
        return None, Presence("absent", raw.battery_error or "no battery (psutil.sensors_battery is None)")
    b = raw.battery
    seconds = b.secsleft if b.secsleft >= 0 else None
    return Battery(percent=b.percent, power_plugged=b.power_plugged, seconds_left=seconds), Presence(
        "present"
    )


def parse_nvml(nvml: RawNvml) -> tuple[list[Gpu], Presence, str | None]:
    """NVIDIA GPUs from pynvml's answers (or absent, with NVML's own reason)."""
    if nvml.error is not None:
        return [], Presence("absent", nvml.error), None
    gpus = [
        Gpu(
            name=g.name,
            vendor="nvidia",
            index=g.index,
            uuid=g.uuid,
            memory_total_bytes=g.memory_total,
            sm_count=g.multiprocessor_count,
            compute_capability=None
            if g.cuda_compute_capability is None
            else f"{g.cuda_compute_capability[0]}.{g.cuda_compute_capability[1]}",
            sm_clock_max_mhz=g.max_clock_sm,
            mem_clock_max_mhz=g.max_clock_mem,
            power_limit_w=None if g.power_limit_mw is None else g.power_limit_mw / 1000.0,
            pci_bus_id=g.pci_bus_id,
        )
        for g in nvml.gpus
    ]
    if not gpus:
        return [], Presence("absent", "NVML is loaded but reports no GPU"), nvml.driver_version
    return gpus, Presence("present"), nvml.driver_version


def parse_tegra(raw: Raw) -> Gpu | None:
    """The integrated GPU of an NVIDIA Jetson (Tegra), which NVML does not report."""
    compatible = (raw.device_tree_compatible or "").lower()
    if raw.tegra_release is None and "nvidia,tegra" not in compatible:
        return None
    return Gpu(name=raw.device_tree_model or "NVIDIA Tegra integrated GPU", vendor="nvidia", integrated=True)


def parse_accelerators(acc: RawAccel) -> Accelerators:
    """Edge TPUs (PCIe and USB), Cloud TPU chips and TFLite runtimes."""
    tpus = [EdgeTpu(kind="pcie", path=p) for p in sorted(acc.apex_devices)]
    for dev in sorted(acc.usb_devices, key=lambda d: d.path):
        state = CORAL_USB_IDS.get((dev.vendor.strip().lower(), dev.product.strip().lower()))
        if state is not None:
            tpus.append(EdgeTpu(kind="usb", path=dev.path, state=state))  # type: ignore[arg-type]
    runtime = next((name for name in TFLITE_RUNTIMES if acc.runtimes.get(name) is not None), None)
    found = bool(tpus or acc.accel_devices)
    if found:
        presence = Presence("present")
    else:
        presence = Presence(
            "absent", "no /dev/apex_*, no Coral USB id (1a6e:089a, 18d1:9302), no /dev/accel*"
        )
    return Accelerators(
        status=presence,
        runtime=runtime,
        runtimes=dict(acc.runtimes),
        delegate_library=acc.delegate_library,
        delegate_loadable=acc.delegate_error is None,
        delegate_error=acc.delegate_error or "",
        edge_tpus=tpus,
        cloud_tpu_devices=sorted(acc.accel_devices),
    )


def machine_id_hash(machine_id: str | None) -> str | None:
    """An application-specific hash of /etc/machine-id (the raw id is never shown or sent)."""
    if not machine_id or not machine_id.strip():
        return None
    return hmac.new(machine_id.strip().encode(), _APP_ID, hashlib.sha256).hexdigest()


def parse(raw: Raw) -> Detected:
    """Turn raw readings into :class:`Detected`; reads nothing."""
    freq = raw.cpu_freq
    cpu = Cpu(
        logical_cores=raw.cpu_logical or 1,
        physical_cores=raw.cpu_physical,
        freq_current_mhz=freq.current if freq and freq.current > 0 else None,
        freq_max_mhz=freq.max if freq and freq.max > 0 else None,
        architecture=raw.machine,
        model=parse_cpu_model(raw.cpuinfo),
    )
    temps, temp_status = parse_temperatures(raw)
    battery, battery_status = parse_battery(raw)
    gpus, gpu_status, driver = parse_nvml(raw.nvml)
    tegra = parse_tegra(raw)
    if tegra is not None:
        gpus.append(tegra)
        gpu_status = Presence("present")

    def space(d: RawDirSpace | None) -> DirSpace | None:
        return None if d is None else DirSpace(d.path, d.device_id, d.total, d.free)

    return Detected(
        system=raw.system,
        release=raw.release,
        device_model=raw.device_tree_model,
        device_tree_compatible=raw.device_tree_compatible,
        tegra_release=raw.tegra_release,
        machine_id_hash=machine_id_hash(raw.machine_id),
        cpu=cpu,
        memory=Memory(total_bytes=raw.mem_total, available_bytes=raw.mem_available),
        storage=parse_storage(raw),
        network=parse_network(raw),
        temperatures=temps,
        temperatures_status=temp_status,
        battery=battery,
        battery_status=battery_status,
        gpus=gpus,
        gpu_status=gpu_status,
        gpu_driver=driver,
        accelerators=parse_accelerators(raw.accel),
        data_dir=space(raw.data_dir),
        cache_dir=space(raw.cache_dir),
    )


# ---------------------------------------------------------------------------------------------------
# Reading (touches the machine).


def _read_text(path: str | Path, limit: int = 65536) -> str | None:
    try:
        with Path(path).open("rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


def trim_cpuinfo(text: str | None) -> str | None:
    """The first processor's block and the board lines after the last one (``Hardware``, ``Model``)."""
    if text is None:
        return None
    blocks = text.strip().split("\n\n")
    board = [
        line
        for line in blocks[-1].splitlines()
        if line.split(":", 1)[0].strip() in ("Hardware", "Revision", "Model")
    ]
    first = blocks[0] if blocks[0].lstrip().startswith("processor") or not board else ""
    return "\n".join(part for part in (first, "\n".join(board)) if part) + "\n"


def _import_pynvml() -> ModuleType | None:
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        return None


def read_nvml() -> RawNvml:
    """Ask NVML (through nvidia-ml-py) about every NVIDIA GPU; NVMLError means absent, with its reason."""
    nv = _import_pynvml()
    if nv is None:
        return RawNvml(error="nvidia-ml-py is not installed (pip install 'prsm-edge[gpu]')")
    try:
        nv.nvmlInit()
    except nv.NVMLError as exc:
        return RawNvml(error=f"NVML unavailable: {exc}")
    try:
        driver = _text(nv.nvmlSystemGetDriverVersion())
        try:
            cuda: int | None = int(nv.nvmlSystemGetCudaDriverVersion())
        except nv.NVMLError:
            cuda = None
        gpus = [_read_nvml_gpu(nv, i) for i in range(int(nv.nvmlDeviceGetCount()))]
        return RawNvml(driver_version=driver, cuda_driver_version=cuda, gpus=gpus)
    except nv.NVMLError as exc:
        return RawNvml(error=f"NVML failed: {exc}")
    finally:
        try:
            nv.nvmlShutdown()
        except nv.NVMLError as exc:
            log.debug("nvmlShutdown: %s", exc)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _read_nvml_gpu(nv: Any, index: int) -> RawNvmlGpu:
    handle = nv.nvmlDeviceGetHandleByIndex(index)
    errors: dict[str, str] = {}

    def ask(what: str, call: Any, *args: Any) -> Any:
        try:
            return call(handle, *args)
        except nv.NVMLError as exc:
            errors[what] = str(exc)
            return None

    memory = ask("memory", nv.nvmlDeviceGetMemoryInfo)
    attrs = ask("attributes", nv.nvmlDeviceGetAttributes)
    cc = ask("compute_capability", nv.nvmlDeviceGetCudaComputeCapability)
    pci = ask("pci", nv.nvmlDeviceGetPciInfo)
    return RawNvmlGpu(
        index=index,
        name=_text(nv.nvmlDeviceGetName(handle)),
        uuid=_text(nv.nvmlDeviceGetUUID(handle)),
        memory_total=None if memory is None else int(memory.total),
        multiprocessor_count=None if attrs is None else int(attrs.multiprocessorCount),
        cuda_compute_capability=None if cc is None else (int(cc[0]), int(cc[1])),
        max_clock_sm=ask("max_clock_sm", nv.nvmlDeviceGetMaxClockInfo, nv.NVML_CLOCK_SM),
        max_clock_mem=ask("max_clock_mem", nv.nvmlDeviceGetMaxClockInfo, nv.NVML_CLOCK_MEM),
        power_limit_mw=ask("power_limit", nv.nvmlDeviceGetEnforcedPowerLimit),
        pci_bus_id=None if pci is None else _text(pci.busId),
        errors=errors,
    )


def read_accel() -> RawAccel:
    """TFLite runtimes (importable?), the Edge TPU delegate library (loadable?) and accelerator devices."""
    runtimes: dict[str, str | None] = {}
    for module in (*TFLITE_RUNTIMES, "libtpu"):
        if importlib.util.find_spec(module) is None:
            runtimes[module] = None
            continue
        dist = module.replace("_", "-")
        try:
            runtimes[module] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            runtimes[module] = "unknown"
    try:
        ctypes.CDLL(EDGETPU_LIBRARY)
        delegate_error: str | None = None
    except OSError as exc:
        delegate_error = str(exc)
    usb = []
    for dev in sorted(str(d) for d in Path("/sys/bus/usb/devices").glob("*")):
        vendor, product = _read_text(f"{dev}/idVendor"), _read_text(f"{dev}/idProduct")
        if vendor and product:
            usb.append(RawUsbDevice(path=Path(dev).name, vendor=vendor.strip(), product=product.strip()))
    return RawAccel(
        runtimes=runtimes,
        delegate_error=delegate_error,
        apex_devices=sorted(str(d) for d in Path("/dev").glob("apex_*")),
        usb_devices=usb,
        # Cloud TPU VMs expose /dev/accel0..N (Intel NPUs live under /dev/accel/, a folder: not matched).
        accel_devices=sorted(str(d) for d in Path("/dev").glob("accel[0-9]*") if not d.is_dir()),
    )


def _block_of(device: str) -> RawBlock | None:
    """The disk behind a partition's device node and its rotational flag."""
    if not device.startswith("/dev/"):
        return None
    name = Path(os.path.realpath(device)).name
    sys_dev = Path("/sys/class/block") / name
    if not sys_dev.exists():
        return None
    disk = sys_dev.resolve().parent.name if (sys_dev / "partition").exists() else name
    return RawBlock(disk=disk, rotational=_read_text(f"/sys/block/{disk}/queue/rotational"))


def _dir_space(path: Path) -> RawDirSpace | None:
    """Free space where ``path`` is (or would be created: its nearest existing parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        usage = psutil.disk_usage(str(probe))
        return RawDirSpace(path=str(path), device_id=probe.stat().st_dev, total=usage.total, free=usage.free)
    except OSError as exc:
        log.debug("no disk usage for %s: %s", path, exc)
        return None


def cache_dir() -> Path:
    """Where a node keeps cache data it offers as ``storage_cache``."""
    home = os.environ.get("PRSM_EDGE_HOME")
    if home:
        return Path(home).expanduser() / "cache"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "prsm-edge"


def read_raw(data_dir: Path | None = None) -> Raw:
    """Read everything :func:`parse` needs from this machine."""
    uname = platform.uname()
    partitions, usage, blocks = [], {}, {}
    for p in psutil.disk_partitions(all=False):
        partitions.append(
            RawPartition(device=p.device, mountpoint=p.mountpoint, fstype=p.fstype, opts=p.opts)
        )
        try:
            u = psutil.disk_usage(p.mountpoint)
            usage[p.mountpoint] = RawUsage(total=u.total, used=u.used, free=u.free)
        except OSError as exc:
            log.debug("no disk usage for %s: %s", p.mountpoint, exc)
        block = _block_of(p.device)
        if block is not None:
            blocks[p.device] = block
    nic_addrs = {
        name: [RawAddr(family=a.family.name, address=a.address, netmask=a.netmask) for a in addrs]
        for name, addrs in psutil.net_if_addrs().items()
    }
    nic_stats = {
        name: RawNicStats(isup=s.isup, speed=s.speed, mtu=s.mtu, flags=getattr(s, "flags", ""))
        for name, s in psutil.net_if_stats().items()
    }
    # A NIC backed by hardware has a `device` link in sysfs; bridges, veths, tunnels and ifb do not.
    physical = [name for name in nic_addrs if Path(f"/sys/class/net/{name}/device").exists()]
    temps, temps_error = _read_temperatures()
    battery, battery_error = _read_battery()
    freq = _read_freq()
    vm = psutil.virtual_memory()
    model = _read_text("/proc/device-tree/model")
    compatible = _read_text("/proc/device-tree/compatible")
    return Raw(
        system=uname.system,
        machine=uname.machine,
        release=uname.release,
        cpuinfo=trim_cpuinfo(_read_text("/proc/cpuinfo", 1 << 20)),
        device_tree_model=model.rstrip("\x00").strip() if model else None,
        device_tree_compatible=",".join(compatible.split("\x00")).strip(",") if compatible else None,
        tegra_release=_read_text("/etc/nv_tegra_release"),
        machine_id=_read_text("/etc/machine-id") or _read_text("/var/lib/dbus/machine-id"),
        cpu_logical=psutil.cpu_count(logical=True),
        cpu_physical=psutil.cpu_count(logical=False),
        cpu_freq=freq,
        mem_total=vm.total,
        mem_available=vm.available,
        partitions=partitions,
        usage=usage,
        blocks=blocks,
        nic_addrs=nic_addrs,
        nic_stats=nic_stats,
        physical_nics=sorted(physical),
        temperatures=temps,
        temperatures_error=temps_error,
        battery=battery,
        battery_error=battery_error,
        nvml=read_nvml(),
        accel=read_accel(),
        data_dir=_dir_space(paths.data_dir() if data_dir is None else data_dir),
        cache_dir=_dir_space(cache_dir()),
    )


def _read_freq() -> RawCpuFreq | None:
    reader = getattr(psutil, "cpu_freq", None)
    if reader is None:
        return None
    try:
        f = reader()
    except (OSError, NotImplementedError) as exc:
        log.debug("cpu_freq: %s", exc)
        return None
    return None if f is None else RawCpuFreq(current=f.current, min=f.min, max=f.max)


def _read_temperatures() -> tuple[dict[str, list[RawTemp]] | None, str | None]:
    reader = getattr(psutil, "sensors_temperatures", None)
    if reader is None:
        return None, f"psutil has no temperature sensors on {platform.system()}"
    try:
        found = reader()
    except OSError as exc:
        return None, f"temperature sensors unreadable: {exc}"
    return {
        chip: [RawTemp(label=t.label, current=t.current, high=t.high, critical=t.critical) for t in temps]
        for chip, temps in found.items()
    }, None


def _read_battery() -> tuple[RawBattery | None, str | None]:
    reader = getattr(psutil, "sensors_battery", None)
    if reader is None:
        return None, f"psutil has no battery reading on {platform.system()}"
    try:
        b = reader()
    except OSError as exc:
        return None, f"battery unreadable: {exc}"
    if b is None:
        return None, "no battery (psutil.sensors_battery is None)"
    return RawBattery(percent=float(b.percent), secsleft=int(b.secsleft), power_plugged=b.power_plugged), None


def detect(data_dir: Path | None = None) -> Detected:
    """Detect this device's resources (reads sysfs, psutil and NVML; takes tens of milliseconds)."""
    return parse(read_raw(data_dir))


# ---------------------------------------------------------------------------------------------------
# Fast sensor readings for heartbeats.


class Sensors(msgspec.Struct, frozen=True):
    """One heartbeat's readings: utilisation as 0–1 fractions; ``None`` where the device has no sensor."""

    cpu_util: float
    mem_util: float
    temperature_c: float | None
    on_battery: bool | None
    battery_pct: float | None
    power_w: float | None
    gpu_temperature_c: float | None = None

    def readings(self) -> Readings:
        """The readings the owner's guardrails are checked against."""
        return Readings(
            temperature_c=self.temperature_c,
            gpu_temperature_c=self.gpu_temperature_c,
            power_w=self.power_w,
            on_battery=self.on_battery,
            battery_pct=self.battery_pct,
        )


class _NvmlSensors:
    """GPU power draw and temperature through NVML, initialised once; a failed init is not retried."""

    def __init__(self) -> None:
        self._handles: list[Any] | None = None
        self._nv: Any = None

    def read(self) -> tuple[float | None, float | None]:
        """Total power draw of all GPUs in W, and the hottest GPU's temperature in °C (None: no reading)."""
        if self._handles is None:
            self._handles = []
            nv = _import_pynvml()
            if nv is None:
                return None, None
            try:
                nv.nvmlInit()
                self._handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(nv.nvmlDeviceGetCount())]
                self._nv = nv
            except nv.NVMLError as exc:
                log.debug("no GPU sensor readings: %s", exc)
                return None, None
        if not self._handles:
            return None, None
        nv = self._nv
        watts: float | None
        try:
            watts = sum(int(nv.nvmlDeviceGetPowerUsage(h)) for h in self._handles) / 1000.0
        except nv.NVMLError as exc:
            log.debug("GPU power reading failed: %s", exc)
            watts = None
        try:
            hottest = float(
                max(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU) for h in self._handles)
            )
        except nv.NVMLError as exc:
            log.debug("GPU temperature reading failed: %s", exc)
            hottest = None
        return watts, hottest


_gpu_sensors = _NvmlSensors()


def read_sensors() -> Sensors:
    """A fast reading for heartbeats (under 5 ms): load, memory, CPU heat, battery, GPU power, GPU heat."""
    temps, _ = _read_temperatures()
    sensors = [
        TempSensor(chip=chip, label=t.label, current_c=t.current, high_c=None, critical_c=None)
        for chip, readings in (temps or {}).items()
        for t in readings
    ]
    battery, _ = _read_battery()
    gpu_watts, gpu_hottest = _gpu_sensors.read()
    return Sensors(
        cpu_util=psutil.cpu_percent(interval=None) / 100.0,
        mem_util=psutil.virtual_memory().percent / 100.0,
        temperature_c=hottest_cpu(sensors),
        on_battery=None if battery is None or battery.power_plugged is None else not battery.power_plugged,
        battery_pct=None if battery is None else battery.percent,
        power_w=gpu_watts,
        gpu_temperature_c=gpu_hottest,
    )
