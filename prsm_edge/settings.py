"""The owner's settings: what this device contributes and under which limits.

Values come in layers, later ones winning: the built-in defaults, the firmware profile's defaults (passed
in by the caller as ``defaults``), the settings file (``settings.toml`` in the config dir, flat
``key = value`` lines) and the environment (``PRSM_EDGE_<FIELD>``, e.g.
``PRSM_EDGE_CPU_ALLOCATION_PERCENTAGE=0.7``). Every error names the key, what was wrong, what is allowed
and, where it can, the file and line.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import annotated_types
import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator

from prsm_edge import paths
from prsm_edge.errors import ConfigError
from prsm_edge.protocol.advice import OPTIMIZABLE, parse_bounds
from prsm_edge.protocol.guardrails import parse_schedule
from prsm_edge.protocol.messages import MICRO
from prsm_edge.protocol.offer import Allocations, Guardrails
from prsm_edge.protocol.topics import valid_segment

__all__ = [
    "ENV_PREFIX",
    "Settings",
    "Source",
    "Sourced",
    "allowed",
    "load",
    "load_sourced",
    "save",
    "set_value",
    "settings_path",
    "unset_value",
]

ENV_PREFIX: Final = "PRSM_EDGE_"
_BROKER_SCHEMES: Final = ("mqtt", "mqtts", "tcp", "ssl", "tls", "ws", "wss")
_PROFILE_NAME = re.compile(r"[a-z0-9_]{1,64}")

SecurityLevel = Literal["standard", "high", "maximum"]
JoinPolicyName = Literal["open", "token", "approval"]
LeaderMode = Literal["pinned", "verified", "never"]
Source = Literal["default", "profile", "file", "env"]


def _pct(default: float, what: str) -> Any:
    return Field(default=default, ge=0.0, le=1.0, description=f"share of {what} offered (0–1)")


class Settings(BaseModel):
    """The owner's contribution settings (the seed's ResourceContributionSettings plus the agent's own)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # The seed's fields.
    cpu_allocation_percentage: float = _pct(0.5, "CPU cores")
    gpu_allocation_percentage: float = _pct(0.5, "GPUs and accelerators")
    storage_allocation_percentage: float = _pct(0.3, "free disk space")
    memory_allocation_percentage: float = _pct(0.4, "RAM")
    bandwidth_allocation_percentage: float = _pct(0.6, "network bandwidth")
    max_cpu_temperature: float = Field(
        default=80.0, ge=30.0, le=110.0, description="°C; stop offering above it"
    )
    max_power_consumption: float = Field(
        default=100.0, gt=0.0, le=100_000.0, description="W; stop offering above it"
    )
    priority_level: int = Field(default=5, ge=1, le=10, description="1 = lowest, 10 = highest")
    minimum_hourly_rate: Decimal = Field(
        # 0 by default: the seed's 0.1 FTNS/h is one core-hour at the starting CPU rate, so as a floor on
        # every lease it refused all tasks under one core (and nearly all once the rate falls).
        default=Decimal("0"),
        ge=0,
        le=1_000_000,
        decimal_places=6,
        description="FTNS per hour, at least",
    )
    automatic_scaling: bool = Field(default=True, description="let the agent scale the offer with load")
    market_participation: bool = Field(default=True, description="take part in the market at all")
    uptime_commitment: float = Field(
        default=0.95, ge=0.0, le=1.0, description="share of time promised online"
    )
    security_level: SecurityLevel = Field(default="standard", description="standard, high or maximum")
    # The agent's own fields.
    site: str = Field(default="home", description="site segment of the topic tree")
    group: str | None = Field(default=None, description="local group to join (None: the one discovered)")
    allow_coordinate: bool = Field(default=True, description="may this device act as a group coordinator")
    min_battery_percent: float = Field(
        default=20.0, ge=0.0, le=100.0, description="stop offering on battery below it"
    )
    offer_on_battery: bool = Field(default=True, description="contribute while on battery at all")
    schedule: str = Field(
        default="",
        max_length=400,
        description="weekly windows to contribute in, e.g. 'Mon-Fri 18:00-08:00; Sat,Sun'",
    )
    optimize_bounds: str = Field(
        default="",
        max_length=600,
        description="limits one-click auto-optimize keeps to, e.g. "
        "'cpu_allocation_percentage=0.2..0.6; max_cpu_temperature=..75' (empty: none)",
    )
    guardrail_hold_s: float = Field(
        default=120.0,
        ge=0.0,
        le=86_400.0,
        description="seconds readings must stay clear before offering again",
    )
    max_gpu_temperature: float = Field(
        default=87.0, ge=30.0, le=110.0, description="°C; stop offering while a GPU is hotter"
    )
    broker_url: str | None = Field(default=None, description="MQTT broker (None: discover with zeroconf)")
    heartbeat_interval_s: float = Field(
        default=10.0, ge=1.0, le=3600.0, description="seconds between heartbeats"
    )
    device_class: str | None = Field(default=None, description="firmware profile name (None: detect)")
    homeassistant_discovery: bool = Field(
        default=False, description="when coordinating, announce members to Home Assistant (MQTT discovery)"
    )
    homeassistant_controls: bool = Field(
        default=False,
        description="let Home Assistant change this node's allocations and pause it (set here, by the owner)",
    )
    electricity_price_per_kwh: Decimal = Field(
        default=Decimal("0"),
        ge=0,
        le=1_000_000,
        decimal_places=6,
        description="what a kWh costs you, in FTNS (earnings reports subtract it: watts × hours × price)",
    )
    # Who may be in and who may lead a group (docs/discovery.md, docs/threat-model.md).
    join_policy: JoinPolicyName = Field(
        default="open", description="who may join a group this device hosts: open, token or approval"
    )
    join_rate_per_min: float = Field(
        default=60.0, gt=0.0, le=10_000.0, description="new members a hosted open group admits a minute"
    )
    evict_after_days: float = Field(
        default=7.0, gt=0.0, le=3650.0, description="members absent this long are evicted (and their login)"
    )
    join_token: str | None = Field(default=None, description="enrolment token from the group's host")
    coordinator_keys: str | None = Field(
        default=None, description="the site's coordinator public keys (hex, comma-separated): pins them"
    )
    leader_policy: LeaderMode = Field(
        default="pinned", description="whom a hosted group yields to: pinned, verified or never"
    )
    listen: bool = Field(
        default=False, description="let the embedded fallback broker (no ACLs) listen beyond this machine"
    )

    @field_validator("site", "group")
    @classmethod
    def _segment(cls, value: str | None) -> str | None:
        if value is not None and not valid_segment(value):
            raise ValueError("must be 1–64 characters of a-z, 0-9, '_' or '-'")
        return value

    @field_validator("coordinator_keys")
    @classmethod
    def _keys(cls, value: str | None) -> str | None:
        if value is None:
            return None
        for part in value.split(","):
            try:
                ok = len(bytes.fromhex(part.strip())) == 32
            except ValueError:
                ok = False
            if not ok:
                raise ValueError("must be Ed25519 public keys, 64 hex digits each, separated by commas")
        return value

    @property
    def trusted_coordinators(self) -> frozenset[bytes]:
        """The coordinator keys the site pinned (empty: pin the first coordinator joined)."""
        if not self.coordinator_keys:
            return frozenset()
        return frozenset(bytes.fromhex(p.strip()) for p in self.coordinator_keys.split(","))

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        try:
            parse_schedule(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("optimize_bounds")
    @classmethod
    def _optimize_bounds(cls, value: str) -> str:
        bounds = parse_bounds(value, OPTIMIZABLE)
        for name, (low, high) in bounds.items():
            floor, ceiling = _field_range(name)
            for side in (low, high):
                if math.isfinite(side) and not floor <= side <= ceiling:
                    raise ValueError(
                        f"{name} bounds must lie within {allowed(name).removeprefix('a whole number ')}"
                    )
        return value

    @field_validator("device_class")
    @classmethod
    def _profile_name(cls, value: str | None) -> str | None:
        if value is not None and _PROFILE_NAME.fullmatch(value) is None:
            raise ValueError("must be a firmware profile name (a-z, 0-9, '_'), e.g. raspberry_pi")
        return value

    @field_validator("broker_url")
    @classmethod
    def _broker(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"is not a valid URL ({exc})") from None
        if parts.scheme not in _BROKER_SCHEMES or not parts.hostname:
            raise ValueError(f"must look like mqtt://host:1883 (schemes: {', '.join(_BROKER_SCHEMES)})")
        if port == 0:
            raise ValueError("port must be 1–65535")
        return value

    @field_validator(
        "max_cpu_temperature", "max_gpu_temperature", "max_power_consumption", "heartbeat_interval_s"
    )
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @property
    def electricity_price_micro_per_kwh(self) -> int:
        """``electricity_price_per_kwh`` in µFTNS."""
        return int(self.electricity_price_per_kwh * MICRO)

    @property
    def min_hourly_rate_micro(self) -> int:
        """``minimum_hourly_rate`` in µFTNS, as the wire carries it."""
        return int(self.minimum_hourly_rate * MICRO)

    def allocations(self) -> Allocations:
        """The allocation percentages, as :mod:`prsm_edge.protocol.offer` takes them."""
        return Allocations(
            cpu=self.cpu_allocation_percentage,
            gpu=self.gpu_allocation_percentage,
            storage=self.storage_allocation_percentage,
            memory=self.memory_allocation_percentage,
            bandwidth=self.bandwidth_allocation_percentage,
        )

    def guardrails(self) -> Guardrails:
        """The operating limits, as :mod:`prsm_edge.protocol.offer` takes them."""
        return Guardrails(
            max_cpu_temperature=self.max_cpu_temperature,
            max_gpu_temperature=self.max_gpu_temperature,
            max_power_consumption=self.max_power_consumption,
            min_battery_percent=self.min_battery_percent,
            offer_on_battery=self.offer_on_battery,
            schedule=self.schedule,
            hold_s=self.guardrail_hold_s,
        )


FIELDS: Final[tuple[str, ...]] = tuple(Settings.model_fields)
_OPTIONAL: Final = frozenset(
    name for name, info in Settings.model_fields.items() if info.default is None and name in FIELDS
)

_TEXT_FIELDS: Final = frozenset(
    {"site", "group", "broker_url", "device_class", "security_level", "join_policy", "join_token",
     "coordinator_keys", "leader_policy"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Sourced:
    """Effective settings and where each value came from."""

    settings: Settings
    sources: dict[str, Source]
    origins: dict[str, str]  # field -> file:line, env var name or profile name; "" for defaults


def settings_path() -> Path:
    """The settings file: ``settings.toml`` in the config dir."""
    return paths.config_dir() / "settings.toml"


def allowed(name: str) -> str:
    """What ``name`` accepts, in words (for error messages and help)."""
    info = Settings.model_fields[name]
    bounds: dict[str, Any] = {}
    for item in info.metadata:
        for attr in ("ge", "gt", "le", "lt"):
            if isinstance(item, getattr(annotated_types, attr.capitalize())):
                bounds[attr] = getattr(item, attr)
    if name == "security_level":
        return "one of standard, high, maximum"
    if name == "join_policy":
        return "one of open, token, approval"
    if name == "leader_policy":
        return "one of pinned, verified, never"
    if name == "coordinator_keys":
        return "64-hex-digit public keys separated by commas, or empty for none"
    if name == "join_token":
        return "a token printed by `prsm-edge group token create`, or empty for none"
    if name in ("site", "group"):
        text = "1–64 characters of a-z, 0-9, '_' or '-'"
    elif name == "broker_url":
        text = "a URL such as mqtt://host:1883"
    elif name == "device_class":
        text = "a firmware profile name such as raspberry_pi"
    elif info.annotation is bool:
        return "true or false"
    elif "ge" in bounds and "le" in bounds:
        text = f"between {_num(bounds['ge'])} and {_num(bounds['le'])}"
    elif "gt" in bounds and "le" in bounds:
        text = f"above {_num(bounds['gt'])} and at most {_num(bounds['le'])}"
    else:
        text = "any value"
    if info.annotation is int:
        text = f"a whole number {text}"
    if name in _OPTIONAL:
        text += ", or empty for none"
    return text


def _field_range(name: str) -> tuple[float, float]:
    """The range a numeric setting accepts (from its field's ge/gt/le/lt)."""
    low, high = -math.inf, math.inf
    for item in Settings.model_fields[name].metadata:
        for attr in ("ge", "gt"):
            if isinstance(item, getattr(annotated_types, attr.capitalize())):
                low = float(getattr(item, attr))
        for attr in ("le", "lt"):
            if isinstance(item, getattr(annotated_types, attr.capitalize())):
                high = float(getattr(item, attr))
    return low, high


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _unknown(key: str, where: str) -> ConfigError:
    near = difflib.get_close_matches(key, FIELDS, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(near)}?" if near else f"known settings: {', '.join(FIELDS)}"
    return ConfigError(f"unknown setting {key!r}{where}; {hint}")


def _key_lines(text: str) -> dict[str, int]:
    """Line number of each top-level ``key =`` in a flat TOML file."""
    lines: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        m = re.match(r"\s*([A-Za-z0-9_\-]+|\"[^\"]*\"|'[^']*')\s*=", line)
        if m:
            lines.setdefault(m.group(1).strip("\"'"), number)
    return lines


def _read_file(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The raw key/value pairs of a settings file and the line of each; ``{}`` if there is no file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the settings file {path}: {exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    lines = _key_lines(text)
    for key, value in data.items():
        if isinstance(value, dict | list):
            raise ConfigError(
                f"{key!r} in {path} line {lines.get(key, '?')}: settings are flat `key = value` lines; "
                "tables and arrays are not settings"
            )
        if key not in Settings.model_fields:
            raise _unknown(key, f" in {path} line {lines.get(key, '?')}")
    return data, lines


def _env_values(env: Mapping[str, str]) -> dict[str, tuple[str, str | None]]:
    """Settings given in the environment: field -> (variable, value; ``None`` for an empty optional)."""
    found: dict[str, tuple[str, str | None]] = {}
    for name in FIELDS:
        var = ENV_PREFIX + name.upper()
        if var in env:
            raw = env[var]
            found[name] = (var, None if raw.strip() == "" and name in _OPTIONAL else raw)
    return found


def _validate(values: dict[str, Any], describe: Mapping[str, str]) -> Settings:
    """Settings from ``values``; a failure names each bad key, where it came from and what is allowed."""
    try:
        return Settings(**values)
    except pydantic.ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = str(err["loc"][0]) if err["loc"] else "?"
            if err["type"] == "extra_forbidden":
                problems.append(str(_unknown(key, describe.get(key, ""))))
                continue
            where = describe.get(key, " (default)")
            value = values.get(key)
            if isinstance(value, str) and key not in _TEXT_FIELDS:
                shown = value  # a number or flag given as text (command line, environment): show it as typed
            else:
                shown = json.dumps(str(value) if isinstance(value, Decimal) else value, default=str)
            problems.append(f"{key} = {shown}{where}: {_reason(key, err)}")
        raise ConfigError("; ".join(problems)) from None


def _reason(key: str, err: Any) -> str:
    """One pydantic error in words, with what ``key`` allows."""
    ctx = err.get("ctx") or {}
    kind = err["type"]
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        return f"must be {allowed(key)}"
    if kind == "decimal_max_places":
        return f"must have at most {ctx.get('decimal_places')} decimal places (1 µFTNS)"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    msg: str = err["msg"]
    return f"{msg[:1].lower()}{msg[1:]} (allowed: {allowed(key)})"


def load_sourced(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    profile: str = "",
) -> Sourced:
    """Effective settings (defaults < profile ``defaults`` < file < env) and the source of each value."""
    path = settings_path() if path is None else path
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    sources: dict[str, Source] = dict.fromkeys(FIELDS, "default")
    origins: dict[str, str] = dict.fromkeys(FIELDS, "")
    describe: dict[str, str] = {}
    for key, value in (defaults or {}).items():
        if key not in Settings.model_fields:
            raise _unknown(key, f" in the firmware profile {profile!r}")
        values[key], sources[key], origins[key] = value, "profile", profile
        describe[key] = f" in the firmware profile {profile!r}"
    data, lines = _read_file(path)
    for key, value in data.items():
        line = lines.get(key)
        values[key], sources[key] = value, "file"
        origins[key] = f"{path}:{line}" if line else str(path)
        describe[key] = f" in {path}" + (f" line {line}" if line else "")
    for key, (var, raw) in _env_values(env).items():
        values[key], sources[key], origins[key] = raw, "env", var
        describe[key] = f" from the environment ({var})"
    return Sourced(_validate(values, describe), sources, origins)


def load(
    path: Path | None = None, env: Mapping[str, str] | None = None, defaults: Mapping[str, Any] | None = None
) -> Settings:
    """The effective settings: the file (missing = defaults), then ``PRSM_EDGE_<FIELD>`` overrides."""
    return load_sourced(path, env, defaults).settings


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Decimal):
        return json.dumps(str(value))  # a string keeps the amount exact
    if isinstance(value, str):
        return json.dumps(value)  # JSON's string escapes are all valid TOML basic-string escapes
    raise ConfigError(f"cannot write {value!r} to a settings file")


def render(settings: Settings) -> str:
    """The explicitly set values as the flat TOML of a settings file."""
    lines = [
        "# prsm-edge settings; see `prsm-edge settings show` and docs/settings.md.",
        "# Unlisted settings take their defaults. Environment variables PRSM_EDGE_<KEY> override this file.",
    ]
    for name in FIELDS:
        value = getattr(settings, name)
        if name in settings.model_fields_set and value is not None:
            lines.append(f"{name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def save(settings: Settings, path: Path | None = None) -> Path:
    """Write the explicitly set values as flat TOML, atomically, readable by the owner only."""
    path = settings_path() if path is None else path
    text = render(settings)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot write the settings file {path}: {exc}") from exc
    return path


def _file_settings(path: Path, data: dict[str, Any], lines: dict[str, int]) -> dict[str, str]:
    return {k: f" in {path}" + (f" line {lines[k]}" if k in lines else "") for k in data}


def set_value(key: str, value: str, path: Path | None = None) -> Settings:
    """Set one key in the settings file; the whole file is validated first and nothing is written on error."""
    path = settings_path() if path is None else path
    if key not in Settings.model_fields:
        raise _unknown(key, "")
    data, lines = _read_file(path)
    describe = _file_settings(path, data, lines)
    if value.strip() == "" and key in _OPTIONAL:
        data.pop(key, None)
    else:
        data[key] = value
        describe[key] = ""
    settings = _validate(data, describe)
    save(settings, path)
    return settings


def unset_value(key: str, path: Path | None = None) -> Settings:
    """Remove one key from the settings file, so it takes its default again."""
    path = settings_path() if path is None else path
    if key not in Settings.model_fields:
        raise _unknown(key, "")
    data, lines = _read_file(path)
    data.pop(key, None)
    settings = _validate(data, _file_settings(path, data, lines))
    save(settings, path)
    return settings
