"""What a node offers, under its owner's limits (sans-IO).

Offered capacity = detected capacity × the owner's allocation percentage for that resource. A node stops
offering anything while an owner guardrail holds (CPU hotter than ``max_cpu_temperature``, a GPU hotter
than ``max_gpu_temperature``, running on
battery below ``min_battery_percent``, drawing more than ``max_power_consumption``) and says why.
"""

from __future__ import annotations

from dataclasses import dataclass

from prsm_edge.protocol.messages import ResourceSpec, ResourceType

__all__ = ["Allocations", "Guardrails", "Readings", "guardrail", "offered"]


@dataclass(frozen=True, slots=True)
class Allocations:
    """The owner's allocation percentages (0–1) per resource family."""

    cpu: float = 0.5
    gpu: float = 0.5
    storage: float = 0.3
    memory: float = 0.4
    bandwidth: float = 0.6

    def for_type(self, rtype: ResourceType) -> float:
        """The percentage that applies to ``rtype``."""
        match rtype:
            case ResourceType.COMPUTE_CPU:
                return self.cpu
            case ResourceType.COMPUTE_GPU | ResourceType.COMPUTE_TPU | ResourceType.SPECIALIZED_EDGE:
                return self.gpu
            case ResourceType.STORAGE_PERSISTENT | ResourceType.STORAGE_CACHE:
                return self.storage
            case ResourceType.STORAGE_MEMORY:
                return self.memory
            case ResourceType.BANDWIDTH_INGRESS | ResourceType.BANDWIDTH_EGRESS:
                return self.bandwidth
            case ResourceType.SPECIALIZED_QUANTUM:
                return self.gpu


def offered(detected: list[ResourceSpec], allocations: Allocations) -> list[ResourceSpec]:
    """Detected capacity scaled by the owner's percentages; resources scaled to zero are left out."""
    out = []
    for spec in detected:
        capacity = round(spec.capacity * allocations.for_type(spec.type), 3)
        if capacity > 0:
            out.append(ResourceSpec(type=spec.type, capacity=capacity, unit=spec.unit, details=spec.details))
    return out


@dataclass(frozen=True, slots=True)
class Guardrails:
    """The owner's operating limits."""

    max_cpu_temperature: float = 80.0
    max_gpu_temperature: float = 87.0  # NVIDIA data-centre and desktop GPUs slow down from ~90 °C
    max_power_consumption: float = 100.0
    min_battery_percent: float = 20.0
    offer_on_battery: bool = True  # False: contribute only on mains power (phones)
    schedule: str = ""  # weekly windows the owner allows, e.g. "Mon-Fri 18:00-08:00; Sat,Sun"; "" = always
    hold_s: float = 120.0  # a withdrawn offer returns only after readings stay clear this long


@dataclass(frozen=True, slots=True)
class Readings:
    """Sensor readings at one moment; ``None`` where the device has no such sensor."""

    temperature_c: float | None = None
    gpu_temperature_c: float | None = None  # the hottest GPU
    power_w: float | None = None
    on_battery: bool | None = None
    battery_pct: float | None = None


def guardrail(readings: Readings, limits: Guardrails) -> str:
    """Empty if the node may offer capacity now, else the reason it must hold back."""
    if readings.temperature_c is not None and readings.temperature_c > limits.max_cpu_temperature:
        return (
            f"temperature {readings.temperature_c:.1f} °C above the limit {limits.max_cpu_temperature:.0f} °C"
        )
    if readings.gpu_temperature_c is not None and readings.gpu_temperature_c > limits.max_gpu_temperature:
        return (
            f"GPU temperature {readings.gpu_temperature_c:.1f} °C above the limit "
            f"{limits.max_gpu_temperature:.0f} °C"
        )
    if (
        readings.on_battery
        and readings.battery_pct is not None
        and readings.battery_pct < limits.min_battery_percent
    ):
        return f"on battery at {readings.battery_pct:.0f} % (below {limits.min_battery_percent:.0f} %)"
    if readings.power_w is not None and readings.power_w > limits.max_power_consumption:
        return f"power {readings.power_w:.0f} W above the limit {limits.max_power_consumption:.0f} W"
    return ""
