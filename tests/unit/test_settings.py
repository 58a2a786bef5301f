"""The owner's settings: defaults, bounds, file and environment layers, messages people understand, CLI."""

from __future__ import annotations

import json
import stat
from decimal import Decimal
from pathlib import Path

import pydantic
import pytest

from prsm_edge import cli, settings
from prsm_edge.errors import ConfigError
from prsm_edge.protocol.offer import Allocations, Guardrails
from prsm_edge.settings import Settings

SEED_DEFAULTS = {
    "cpu_allocation_percentage": 0.5,
    "gpu_allocation_percentage": 0.5,
    "storage_allocation_percentage": 0.3,
    "memory_allocation_percentage": 0.4,
    "bandwidth_allocation_percentage": 0.6,
    "max_cpu_temperature": 80.0,
    "max_power_consumption": 100.0,
    "priority_level": 5,
    "minimum_hourly_rate": Decimal("0"),
    "automatic_scaling": True,
    "market_participation": True,
    "uptime_commitment": 0.95,
    "security_level": "standard",
}
AGENT_DEFAULTS = {
    "site": "home",
    "group": None,
    "allow_coordinate": True,
    "min_battery_percent": 20.0,
    "offer_on_battery": True,
    "schedule": "",
    "optimize_bounds": "",
    "guardrail_hold_s": 120.0,
    "max_gpu_temperature": 87.0,
    "broker_url": None,
    "heartbeat_interval_s": 10.0,
    "device_class": None,
    "homeassistant_discovery": False,
    "homeassistant_controls": False,
    "electricity_price_per_kwh": Decimal("0"),
}
MEMBERSHIP_DEFAULTS = {
    "join_policy": "open",
    "join_rate_per_min": 60.0,
    "evict_after_days": 7.0,
    "join_token": None,
    "coordinator_keys": None,
    "leader_policy": "pinned",
    "listen": False,
}


def test_defaults_are_the_seeds_plus_ours() -> None:
    s = Settings()
    assert s.model_dump() == {**SEED_DEFAULTS, **AGENT_DEFAULTS, **MEMBERSHIP_DEFAULTS}
    assert tuple(SEED_DEFAULTS) + tuple(AGENT_DEFAULTS) + tuple(MEMBERSHIP_DEFAULTS) == settings.FIELDS


def test_coordinator_keys_pin_the_sites_coordinators() -> None:
    key = "ab" * 32
    assert Settings(coordinator_keys=f"{key}, {'cd' * 32}").trusted_coordinators == {
        bytes.fromhex(key),
        bytes.fromhex("cd" * 32),
    }
    assert Settings().trusted_coordinators == frozenset()
    with pytest.raises(pydantic.ValidationError, match="64 hex digits"):
        Settings(coordinator_keys="abc")
    with pytest.raises(pydantic.ValidationError):
        Settings(join_policy="anyone")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "good", "bad", "expect"),
    [
        ("cpu_allocation_percentage", 1.0, 1.5, "between 0 and 1"),
        ("gpu_allocation_percentage", 0.0, -0.1, "between 0 and 1"),
        ("storage_allocation_percentage", 0.9, 2, "between 0 and 1"),
        ("memory_allocation_percentage", 1, 1.01, "between 0 and 1"),
        ("bandwidth_allocation_percentage", 0.1, -1, "between 0 and 1"),
        ("max_cpu_temperature", 30, 29.9, "between 30 and 110"),
        ("max_cpu_temperature", 110, 111, "between 30 and 110"),
        ("max_power_consumption", 0.5, 0, "above 0"),
        ("priority_level", 10, 11, "whole number between 1 and 10"),
        ("priority_level", 1, 0, "whole number between 1 and 10"),
        ("priority_level", 3, 2.5, "priority_level"),
        ("minimum_hourly_rate", "0.000001", "-0.1", "between 0 and"),
        ("minimum_hourly_rate", "1.5", "0.0000001", "6 decimal places"),
        ("uptime_commitment", 0.999, 1.1, "between 0 and 1"),
        ("security_level", "maximum", "paranoid", "standard, high, maximum"),
        ("site", "lab-3_a", "Lab 3", "a-z, 0-9"),
        ("site", "x" * 64, "x" * 65, "1–64"),
        ("group", "g1", "a/b", "a-z, 0-9"),
        ("group", "g1", "+", "a-z, 0-9"),
        ("min_battery_percent", 100, 101, "between 0 and 100"),
        ("broker_url", "mqtts://broker.lan:8883", "http://x", "mqtt://host:1883"),
        ("broker_url", "mqtt://10.0.0.2", "mqtt://", "mqtt://host:1883"),
        ("heartbeat_interval_s", 1, 0.5, "between 1 and 3600"),
        ("heartbeat_interval_s", 3600, 3601, "between 1 and 3600"),
        ("device_class", "raspberry_pi", "Raspberry Pi", "firmware profile name"),
        ("automatic_scaling", "false", "maybe", "true or false"),
    ],
)
def test_bounds(key: str, good: object, bad: object, expect: str, tmp_path: Path) -> None:
    Settings.model_validate({key: good})
    path = tmp_path / "settings.toml"
    with pytest.raises(ConfigError) as err:
        settings.set_value(key, str(bad), path)
    assert key in str(err.value) and expect in str(err.value)
    assert not path.exists()


def test_validate_assignment_and_extra_forbidden() -> None:
    s = Settings()
    with pytest.raises(pydantic.ValidationError):
        s.cpu_allocation_percentage = 2.0
    with pytest.raises(pydantic.ValidationError):
        Settings(cpu_percentage=0.2)  # type: ignore[call-arg]


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    assert settings.load(tmp_path / "nope.toml", env={}) == Settings()


def test_settings_path_follows_prsm_edge_home(_isolated_home: Path) -> None:
    assert settings.settings_path() == _isolated_home / "settings.toml"


def test_file_then_env(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text('cpu_allocation_percentage = 0.2\nsecurity_level = "high"\nminimum_hourly_rate = 0.25\n')
    env = {
        "PRSM_EDGE_CPU_ALLOCATION_PERCENTAGE": "0.7",
        "PRSM_EDGE_MARKET_PARTICIPATION": "no",
        "PRSM_EDGE_MINIMUM_HOURLY_RATE": "1.000001",
        "PRSM_EDGE_GROUP": "",
        "PRSM_EDGE_HOME": "/ignored",  # not a setting
    }
    sourced = settings.load_sourced(path, env)
    s = sourced.settings
    assert s.cpu_allocation_percentage == 0.7
    assert s.security_level == "high"
    assert s.market_participation is False
    assert s.minimum_hourly_rate == Decimal("1.000001") and s.min_hourly_rate_micro == 1_000_001
    assert s.group is None
    assert sourced.sources["cpu_allocation_percentage"] == "env"
    assert sourced.origins["cpu_allocation_percentage"] == "PRSM_EDGE_CPU_ALLOCATION_PERCENTAGE"
    assert sourced.sources["security_level"] == "file"
    assert sourced.origins["security_level"] == f"{path}:2"
    assert sourced.sources["priority_level"] == "default"


def test_profile_layer_sits_under_file_and_env(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text("max_cpu_temperature = 70\n")
    defaults = {"max_cpu_temperature": 75.0, "heartbeat_interval_s": 15.0, "allow_coordinate": False}
    sourced = settings.load_sourced(path, {"PRSM_EDGE_ALLOW_COORDINATE": "1"}, defaults, profile="rpi")
    s = sourced.settings
    assert (s.max_cpu_temperature, s.heartbeat_interval_s, s.allow_coordinate) == (70.0, 15.0, True)
    assert (
        sourced.sources["heartbeat_interval_s"] == "profile"
        and sourced.origins["heartbeat_interval_s"] == "rpi"
    )
    with pytest.raises(ConfigError, match="firmware profile 'bad'"):
        settings.load_sourced(path, {}, {"heartbeat_interval_s": 0.1}, profile="bad")


def test_error_names_file_line_and_range(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text('# mine\nsite = "lab"\ncpu_allocation_percentage = 1.5\n')
    with pytest.raises(ConfigError) as err:
        settings.load(path, env={})
    assert str(err.value) == f"cpu_allocation_percentage = 1.5 in {path} line 3: must be between 0 and 1"


def test_env_error_names_the_variable() -> None:
    with pytest.raises(ConfigError) as err:
        settings.load(Path("/nonexistent/settings.toml"), env={"PRSM_EDGE_PRIORITY_LEVEL": "eleven"})
    msg = str(err.value)
    assert "PRSM_EDGE_PRIORITY_LEVEL" in msg and "priority_level = eleven" in msg
    assert "whole number between 1 and 10" in msg


def test_every_bad_key_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text('priority_level = 0\nsecurity_level = "low"\n')
    with pytest.raises(ConfigError) as err:
        settings.load(path, {})
    msg = str(err.value)
    assert "priority_level = 0" in msg and "line 1" in msg
    assert 'security_level = "low"' in msg and "line 2" in msg


def test_unknown_key_lists_near_matches(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text("cpu_alocation_percentage = 0.3\n")
    with pytest.raises(ConfigError) as err:
        settings.load(path, {})
    msg = str(err.value)
    assert "unknown setting 'cpu_alocation_percentage'" in msg and "line 1" in msg
    assert "did you mean cpu_allocation_percentage" in msg
    with pytest.raises(ConfigError) as err:
        settings.set_value("zzz", "1", path)
    msg = str(err.value)
    assert "unknown setting 'zzz'" in msg and "known settings: cpu_allocation_percentage" in msg


def test_toml_syntax_error_and_tables(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text("site = 'home'\ncpu_allocation_percentage = \n")
    with pytest.raises(ConfigError) as err:
        settings.load(path, {})
    msg = str(err.value)
    assert str(path) in msg and "line 2" in msg
    path.write_text("[limits]\nmax_cpu_temperature = 70\n")
    with pytest.raises(ConfigError) as err:
        settings.load(path, {})
    msg = str(err.value)
    assert "'limits'" in msg and "flat" in msg


def test_save_is_private_atomic_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "settings.toml"
    s = Settings(site="lab", minimum_hourly_rate=Decimal("0.123456"), broker_url="mqtt://10.0.0.2:1883")
    s.automatic_scaling = False
    settings.save(s, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["settings.toml"]  # no temporary file left behind
    text = path.read_text()
    assert 'minimum_hourly_rate = "0.123456"' in text and "automatic_scaling = false" in text
    assert "cpu_allocation_percentage" not in text  # untouched values keep following the defaults
    assert settings.load(path, env={}) == s


def test_set_value_validates_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    settings.set_value("cpu_allocation_percentage", "0.7", path)
    settings.set_value("group", "kitchen", path)
    before = path.read_bytes()
    with pytest.raises(ConfigError):
        settings.set_value("cpu_allocation_percentage", "abc", path)
    assert path.read_bytes() == before
    s = settings.set_value("group", "", path)  # empty clears an optional value
    assert s.group is None and "group" not in path.read_text()
    s = settings.unset_value("cpu_allocation_percentage", path)
    assert s.cpu_allocation_percentage == 0.5 and "cpu_allocation_percentage" not in path.read_text()


def test_set_value_refuses_when_the_file_is_already_broken(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text("priority_level = 42\n")
    with pytest.raises(ConfigError, match="line 1"):
        settings.set_value("site", "lab", path)
    assert path.read_text() == "priority_level = 42\n"


def test_offer_views() -> None:
    s = Settings(cpu_allocation_percentage=0.9, max_cpu_temperature=70, min_battery_percent=55)
    assert s.allocations() == Allocations(cpu=0.9, gpu=0.5, storage=0.3, memory=0.4, bandwidth=0.6)
    assert s.guardrails() == Guardrails(
        max_cpu_temperature=70, max_power_consumption=100, min_battery_percent=55
    )


# --- CLI ---------------------------------------------------------------------------------------------


def test_cli_set_show_validate(_isolated_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["settings", "set", "cpu_allocation_percentage", "0.7"]) == 0
    assert "written to" in capsys.readouterr().out
    assert cli.main(["settings", "show", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    cpu = out["settings"]["cpu_allocation_percentage"]
    assert cpu == {"value": 0.7, "source": "file", "origin": f"{_isolated_home / 'settings.toml'}:3"}
    assert out["settings"]["minimum_hourly_rate"]["value"] == "0"
    assert out["profile"]
    assert cli.main(["settings", "validate"]) == 0
    assert "ok:" in capsys.readouterr().out


def test_cli_show_reports_env(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PRSM_EDGE_PRIORITY_LEVEL", "9")
    assert cli.main(["settings", "show", "--no-profile"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("priority_level"))
    assert line.split() == ["priority_level", "9", "env", "(PRSM_EDGE_PRIORITY_LEVEL)"]


def test_cli_errors_exit_2_with_the_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("uptime_commitment = 2\n")
    assert cli.main(["settings", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"uptime_commitment = 2 in {bad} line 1: must be between 0 and 1" in err
    assert cli.main(["settings", "validate", str(tmp_path / "missing.toml")]) == 2
    assert "no such settings file" in capsys.readouterr().err
    assert cli.main(["settings", "set", "priority_level", "0"]) == 2
    assert "whole number between 1 and 10" in capsys.readouterr().err
    assert cli.main(["settings", "set", "device_class", "raspbery_pi"]) == 0
    capsys.readouterr()
    assert cli.main(["settings", "validate"]) == 2
    assert "did you mean raspberry_pi" in capsys.readouterr().err


@pytest.mark.parametrize("action", ["show", "set", "unset", "validate"])
def test_cli_help(action: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["settings", action, "--help"])
    assert exited.value.code == 0
    assert len(capsys.readouterr().out.splitlines()) > 3


def test_schedule_setting_is_checked_when_set() -> None:
    assert Settings(schedule="Mon-Fri 18:00-08:00; Sat,Sun").guardrails().schedule.startswith("Mon-Fri")
    with pytest.raises(pydantic.ValidationError, match="'fun' is not a day"):
        Settings(schedule="Mon,Fun")


def test_auto_optimize_bounds_are_checked_against_each_settings_own_range() -> None:
    s = Settings(optimize_bounds="cpu_allocation_percentage=0.2..0.6; max_cpu_temperature=..75")
    assert s.optimize_bounds.startswith("cpu_allocation_percentage")
    for text, why in [
        ("cpu_allocation_percentage=..60", "between 0 and 1"),  # percent where a share is meant
        ("max_cpu_temperature=..500", "between 30 and 110"),
        ("site=..1", "not a setting auto-optimize may change"),
        ("cpu_allocation_percentage=0.6", "setting=low..high"),
    ]:
        with pytest.raises(pydantic.ValidationError, match=why):
            Settings(optimize_bounds=text)
