"""Firmware profiles: one TOML file per device class (``firmware_profiles/<name>.toml``).

A profile says how to recognise the device class (``[detect]`` hints), what it contributes by default
(``[defaults]``, ``[limits]``, ``can_coordinate``, ``min_battery_percent``), which benchmarks suit it and
how to install the agent on it (``provision``). Hints of one kind are alternatives (any substring, any
architecture, any variable); different kinds must all hold. The matching profile with the highest
``priority`` wins (an accelerator says more about a device than the board it sits on); ``generic``
has no hints and is the last resort.
"""

from __future__ import annotations

import difflib
import functools
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, model_validator

from prsm_edge import settings as settings_mod
from prsm_edge.errors import ConfigError
from prsm_edge.node.detect import Detected
from prsm_edge.resources import data_path

__all__ = [
    "BENCHMARK_NAMES",
    "GENERIC",
    "Hints",
    "Limits",
    "Profile",
    "Resolved",
    "Service",
    "load_profiles",
    "match_profile",
    "profile_named",
    "resolve",
    "select_profile",
]

GENERIC: Final = "generic"
BENCHMARK_NAMES: Final = ("cpu", "memory", "storage", "network", "gpu", "tflite")
Benchmark = Literal["cpu", "memory", "storage", "network", "gpu", "tflite"]
# Set by their own profile fields, so [defaults] may not repeat them.
_OWN_FIELDS: Final = frozenset(
    {"max_cpu_temperature", "max_power_consumption", "min_battery_percent", "allow_coordinate"}
)
# Per device, never per class.
_NOT_DEFAULTS: Final = frozenset({"site", "group", "broker_url", "device_class"})


class Hints(BaseModel):
    """How to recognise the device class; an empty set of hints matches everything."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device_tree_model: list[str] = Field(
        default_factory=list, description="substrings of /proc/device-tree/model"
    )
    device_tree_compatible: list[str] = Field(
        default_factory=list, description="substrings of its compatible"
    )
    arch: list[str] = Field(default_factory=list, description="machine architectures, e.g. aarch64")
    env: list[str] = Field(default_factory=list, description="environment variables, any present")
    nvidia_gpu: bool | None = Field(default=None, description="a discrete NVIDIA GPU reported by NVML")
    tegra: bool | None = Field(default=None, description="an NVIDIA Tegra SoC (Jetson)")
    edge_tpu: bool | None = Field(
        default=None, description="a Coral Edge TPU (/dev/apex_*, USB 1a6e:089a/18d1:9302)"
    )
    cloud_tpu: bool | None = Field(default=None, description="Cloud TPU chips (/dev/accel0..N)")

    def checks(self, detected: Detected, env: Mapping[str, str]) -> list[tuple[str, bool]]:
        """Each hint of this profile, described, and whether it holds on this device."""
        model = (detected.device_model or "").lower()
        compatible = (detected.device_tree_compatible or "").lower()
        out: list[tuple[str, bool]] = []
        if self.device_tree_model:
            held = any(s.lower() in model for s in self.device_tree_model)
            out.append((f"device-tree model contains one of {self.device_tree_model}", held))
        if self.device_tree_compatible:
            held = any(s.lower() in compatible for s in self.device_tree_compatible)
            out.append((f"device-tree compatible contains one of {self.device_tree_compatible}", held))
        if self.arch:
            held = detected.cpu.architecture.lower() in {a.lower() for a in self.arch}
            out.append((f"architecture is one of {self.arch}", held))
        if self.env:
            out.append((f"one of the variables {self.env} is set", any(var in env for var in self.env)))
        flags = {
            "nvidia_gpu": bool(detected.nvidia_gpus),
            "tegra": any(g.integrated and g.vendor == "nvidia" for g in detected.gpus),
            "edge_tpu": bool(detected.accelerators.edge_tpus),
            "cloud_tpu": bool(detected.accelerators.cloud_tpu_devices),
        }
        for name, present in flags.items():
            wanted = getattr(self, name)
            if wanted is not None:
                out.append((f"{name} is {'present' if wanted else 'absent'}", wanted == present))
        return out

    def score(self, detected: Detected, env: Mapping[str, str]) -> int | None:
        """How many hints hold, or ``None`` if one fails."""
        checks = self.checks(detected, env)
        return len(checks) if all(held for _, held in checks) else None


class Limits(BaseModel):
    """Thermal and power limits of the device class."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_cpu_temperature: float
    max_power_consumption: float


class Service(BaseModel):
    """How the agent runs as a service on this device class (``prsm-edge provision`` / ``service``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    install: Literal["pip", "flash", "termux"] = Field(
        description="pip: pip-installed on a running OS; flash: provisioned into an image; termux: Android"
    )
    cpu_quota_percent: int = Field(ge=1, le=102_400, description="systemd CPUQuota (100 = one core)")
    memory_max_mb: int = Field(ge=64, le=4_194_304, description="systemd MemoryMax in MiB")
    devices: list[str] = Field(
        default_factory=list, description="device nodes the agent may open (GPU, TPU, TPM), as DeviceAllow"
    )
    extras: list[str] = Field(default_factory=list, description="pip extras to install, e.g. gpu, tflite")


class Profile(BaseModel):
    """One device class."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = Field(min_length=1)
    priority: int = Field(ge=0, le=100)
    detect: Hints = Hints()
    defaults: dict[str, bool | int | float | str] = Field(default_factory=dict)
    benchmarks: list[Benchmark] = Field(min_length=1)
    limits: Limits
    can_coordinate: bool
    min_battery_percent: float
    provision: str = Field(min_length=1)
    service: Service

    @model_validator(mode="after")
    def _check(self) -> Profile:
        for key in self.defaults:
            if key in _OWN_FIELDS:
                raise ValueError(f"[defaults] {key} is set by the profile's own field, not in [defaults]")
            if key in _NOT_DEFAULTS:
                raise ValueError(f"[defaults] {key} is per device and cannot be a profile default")
        if len(set(self.benchmarks)) != len(self.benchmarks):
            raise ValueError("benchmarks lists a name twice")
        try:
            settings_mod.Settings(**self.settings_defaults())
        except pydantic.ValidationError as exc:
            raise ValueError(f"its default settings are invalid: {exc}") from None
        return self

    def settings_defaults(self) -> dict[str, Any]:
        """The settings this profile supplies (the layer under the owner's file and environment)."""
        return {
            **self.defaults,
            "max_cpu_temperature": self.limits.max_cpu_temperature,
            "max_power_consumption": self.limits.max_power_consumption,
            "min_battery_percent": self.min_battery_percent,
            "allow_coordinate": self.can_coordinate,
        }

    def score(self, detected: Detected, env: Mapping[str, str]) -> int | None:
        """How many of this profile's hints hold, or ``None`` if it does not match."""
        return self.detect.score(detected, env)


def _load_one(path: Path) -> Profile:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"firmware profile {path}: {exc}") from exc
    if "name" in data and data["name"] != path.stem:
        raise ConfigError(f"firmware profile {path}: name {data['name']!r} differs from the file name")
    data["name"] = path.stem
    try:
        return Profile.model_validate(data)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'profile'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"firmware profile {path}: {problems}") from None


@functools.cache
def _load_folder(folder: Path) -> dict[str, Profile]:
    profiles = {p.stem: _load_one(p) for p in sorted(folder.glob("*.toml"))}
    if GENERIC not in profiles:
        raise ConfigError(f"{folder} has no {GENERIC}.toml; every device needs a fallback profile")
    return profiles


def load_profiles(folder: Path | None = None) -> dict[str, Profile]:
    """Every firmware profile, by name (read once per folder)."""
    return dict(_load_folder(data_path("firmware_profiles") if folder is None else folder))


def match_profile(
    detected: Detected, env: Mapping[str, str] = os.environ, profiles: Mapping[str, Profile] | None = None
) -> Profile:
    """The most specific profile matching this device (highest priority, then most hints); generic last."""
    profiles = load_profiles() if profiles is None else profiles
    best: tuple[int, int, str] | None = None
    for name, profile in profiles.items():
        score = profile.score(detected, env)
        if score is None:
            continue
        key = (profile.priority, score, name)
        if best is None or key > best:
            best = key
    if best is None:
        return profiles[GENERIC]
    return profiles[best[2]]


def select_profile(
    device_class: str | None,
    detected: Detected,
    env: Mapping[str, str] = os.environ,
    profiles: Mapping[str, Profile] | None = None,
) -> Profile:
    """The profile the owner named in ``device_class``, else the one matching this device."""
    profiles = load_profiles() if profiles is None else profiles
    if device_class is None:
        return match_profile(detected, env, profiles)
    return profile_named(device_class, profiles)


def profile_named(name: str, profiles: Mapping[str, Profile] | None = None) -> Profile:
    """The profile called ``name``; a :class:`ConfigError` naming near matches if there is none."""
    profiles = load_profiles() if profiles is None else profiles
    if name not in profiles:
        near = difflib.get_close_matches(name, list(profiles), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(near)}?" if near else f"profiles: {', '.join(sorted(profiles))}"
        raise ConfigError(f"device_class = {name!r} names no firmware profile; {hint}")
    return profiles[name]


@dataclass(frozen=True, slots=True)
class Resolved:
    """The effective settings on this device, the profile under them and what was detected."""

    sourced: settings_mod.Sourced
    profile: Profile
    detected: Detected

    @property
    def settings(self) -> settings_mod.Settings:
        """The effective settings."""
        return self.sourced.settings


def resolve(
    detected: Detected,
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    profiles: Mapping[str, Profile] | None = None,
) -> Resolved:
    """Settings in layers: defaults < the device's profile < the settings file < the environment."""
    env = os.environ if env is None else env
    first = settings_mod.load(path, env)
    profile = select_profile(first.device_class, detected, env, profiles)
    sourced = settings_mod.load_sourced(path, env, profile.settings_defaults(), profile=profile.name)
    return Resolved(sourced, profile, detected)
