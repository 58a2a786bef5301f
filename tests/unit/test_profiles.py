"""Firmware profiles: every shipped profile loads and validates; matching picks the right device class."""

from __future__ import annotations

import json
import os
from pathlib import Path

import msgspec
import pytest

from prsm_edge import settings
from prsm_edge.errors import ConfigError
from prsm_edge.node import detect, profiles
from prsm_edge.resources import data_path

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "detect"
SHIPPED = {
    "raspberry_pi",
    "jetson",
    "coral_edge_tpu",
    "android_termux",
    "x86_gpu_host",
    "tpu_host",
    "generic",
}


def fixture(name: str) -> detect.Raw:
    return msgspec.json.decode((FIXTURES / f"{name}.json").read_bytes(), type=detect.Raw)


def test_every_shipped_profile_loads_and_validates() -> None:
    found = profiles.load_profiles()
    assert set(found) == SHIPPED
    assert {p.stem for p in data_path("firmware_profiles").glob("*.toml")} == SHIPPED
    for name, profile in found.items():
        assert profile.name == name
        assert profile.description and "pip install" in profile.provision
        assert set(profile.benchmarks) <= set(profiles.BENCHMARK_NAMES)
        assert {"cpu", "memory"} <= set(profile.benchmarks)
        s = settings.Settings(**profile.settings_defaults())
        assert s.max_cpu_temperature == profile.limits.max_cpu_temperature
        assert s.allow_coordinate == profile.can_coordinate
        assert s.min_battery_percent == profile.min_battery_percent
    assert found["generic"].detect == profiles.Hints()
    assert found["android_termux"].can_coordinate is False
    assert "gpu" in found["x86_gpu_host"].benchmarks and "tflite" in found["coral_edge_tpu"].benchmarks


def test_benchmark_names_match_the_bench_suite() -> None:
    from prsm_edge.node import bench

    assert set(profiles.BENCHMARK_NAMES) == set(bench.BENCHMARKS)


@pytest.mark.parametrize(
    ("name", "env", "expected"),
    [
        ("h100_server", {}, "x86_gpu_host"),
        ("a100_workstation", {}, "x86_gpu_host"),
        ("jetson_orin_nano", {}, "jetson"),
        ("rpi4_coral_usb", {}, "coral_edge_tpu"),
        ("x86_coral_pcie", {}, "coral_edge_tpu"),
        ("tpu_v4_vm", {}, "tpu_host"),
        ("android_termux", {"TERMUX_VERSION": "0.118.0"}, "android_termux"),
        ("android_termux", {}, "generic"),
    ],
)
def test_match_fixtures(name: str, env: dict[str, str], expected: str) -> None:
    assert profiles.match_profile(detect.parse(fixture(name)), env).name == expected


def test_raspberry_pi_without_its_coral() -> None:
    raw = fixture("rpi4_coral_usb")
    raw.accel = msgspec.structs.replace(raw.accel, usb_devices=[])
    assert profiles.match_profile(detect.parse(raw), {}).name == "raspberry_pi"


def test_gpu_on_arm_is_not_an_x86_gpu_host() -> None:
    raw = fixture("h100_server")
    raw.machine = "aarch64"
    assert profiles.match_profile(detect.parse(raw), {}).name == "generic"


def test_this_machine_matches_something() -> None:
    d = detect.detect()
    assert profiles.match_profile(d, {}).name in SHIPPED


def test_select_profile_by_name() -> None:
    d = detect.parse(fixture("h100_server"))
    assert profiles.select_profile("raspberry_pi", d, {}).name == "raspberry_pi"
    assert profiles.select_profile(None, d, {}).name == "x86_gpu_host"
    with pytest.raises(ConfigError, match="did you mean raspberry_pi"):
        profiles.select_profile("rasberry_pi", d, {})


def test_resolve_layers_the_profile_under_the_owner(tmp_path: Path) -> None:
    d = detect.parse(fixture("android_termux"))
    path = tmp_path / "settings.toml"
    path.write_text("cpu_allocation_percentage = 0.4\n")
    r = profiles.resolve(d, path, {"TERMUX_VERSION": "0.118.0"})
    assert r.profile.name == "android_termux"
    assert r.settings.cpu_allocation_percentage == 0.4  # the owner's file wins
    assert r.settings.min_battery_percent == 50.0 and r.sourced.sources["min_battery_percent"] == "profile"
    assert r.settings.allow_coordinate is False
    path.write_text('device_class = "generic"\n')
    r = profiles.resolve(d, path, {"TERMUX_VERSION": "0.118.0"})
    assert r.profile.name == "generic" and r.settings.allow_coordinate is True


GOOD = """
description = "test"
priority = 10
can_coordinate = true
min_battery_percent = 20.0
benchmarks = ["cpu", "memory"]
provision = "pip install prsm-edge"
[limits]
max_cpu_temperature = 80.0
max_power_consumption = 10.0
[service]
install = "pip"
cpu_quota_percent = 100
memory_max_mb = 512
"""


def _folder(tmp_path: Path, extra: str, name: str = "thing") -> Path:
    folder = tmp_path / "profiles"
    folder.mkdir(exist_ok=True)
    (folder / "generic.toml").write_text(GOOD.replace("priority = 10", "priority = 0"))
    (folder / f"{name}.toml").write_text(GOOD + extra)
    return folder


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[defaults]\ncpu_allocation_percentage = 3.0\n", "default settings are invalid"),
        ("[defaults]\nmax_cpu_temperature = 70.0\n", "profile's own field"),
        ("[defaults]\nsite = 'x'\n", "per device"),
        ("[detect]\nmodel = ['x']\n", "detect.model"),
        ("colour = 'red'\n", "colour"),
    ],
)
def test_invalid_profiles_are_refused(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        profiles.load_profiles(_folder(tmp_path, extra))
    assert "thing.toml" in str(err.value)


def test_bad_benchmark_and_missing_generic(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "")
    (folder / "thing.toml").write_text(GOOD.replace('["cpu", "memory"]', '["cpu", "quantum"]'))
    with pytest.raises(ConfigError, match="benchmarks"):
        profiles.load_profiles(folder)
    (folder / "thing.toml").write_text(GOOD)
    (folder / "generic.toml").unlink()
    with pytest.raises(ConfigError, match=r"no generic\.toml"):
        profiles.load_profiles(folder)


def test_custom_profile_matches_by_env(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "[detect]\nenv = ['MY_BOARD']\narch = ['x86_64', 'aarch64']\n")
    found = profiles.load_profiles(folder)
    d = detect.parse(fixture("x86_coral_pcie"))
    assert found["thing"].score(d, {"MY_BOARD": "1"}) == 2
    assert profiles.match_profile(d, {"MY_BOARD": "1"}, found).name == "thing"
    assert profiles.match_profile(d, {}, found).name == "generic"


def test_profile_commands(capsys: pytest.CaptureFixture[str]) -> None:
    from prsm_edge.cli import main

    here = detect.detect()
    assert main(["profile", "detect", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["matched"] == profiles.match_profile(here).name
    bare = not (
        here.gpus or here.device_model or here.accelerators.edge_tpus or here.accelerators.cloud_tpu_devices
    )
    if bare and "TERMUX_VERSION" not in os.environ:  # a plain machine such as CI's
        assert out["matched"] == "generic"
    by_name = {c["name"]: c for c in out["candidates"]}
    assert set(by_name) == SHIPPED and by_name["generic"]["matches"] and by_name["generic"]["hints"] == []
    assert main(["profile", "list"]) == 0
    assert f"* {out['matched']}" in capsys.readouterr().out
    assert main(["profile", "show", "android_termux"]) == 0
    shown = capsys.readouterr().out
    assert "offer_on_battery" in shown and "termux" in shown
    assert main(["profile", "show", "rasberry_pi"]) == 2
    assert "did you mean raspberry_pi" in capsys.readouterr().err
