"""Provisioning bundles install into a scratch root, and systemd accepts and scores the unit they carry."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from prsm_edge.cli import main
from prsm_edge.node import profiles

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
SYSTEM_UNITS = Path("/usr/lib/systemd/system")
MAX_EXPOSURE = 3.0  # systemd-analyze security: below 3.0 reads "OK"; an unhardened service scores 9.6


def _bundle(tmp_path: Path, profile: str, *extra: str) -> Path:
    out = tmp_path / f"bundle-{profile}"
    assert main(["provision", "--profile", profile, "--out", str(out), "--site", "lab", *extra]) == 0
    return out


def _scratch_root(tmp_path: Path) -> Path:
    """A folder standing for a device's root file system, with systemd's own units as on the device."""
    root = tmp_path / "root"
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    return root


def _install(bundle: Path, root: Path) -> str:
    done = subprocess.run(
        ["sh", str(bundle / "firstboot.sh"), "--root", str(root), "--skip-pip"],
        capture_output=True,
        text=True,
        check=True,
    )
    # --skip-pip stands for an image that had the package baked in: put this installation's command there.
    bin_dir = root / "opt/prsm-edge/bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(Path(sys.executable).with_name("prsm-edge"), bin_dir / "prsm-edge")
    return done.stdout


@needs_systemd
@pytest.mark.parametrize("profile", sorted(profiles.load_profiles()))
def test_bundle_installs_into_a_scratch_root_and_its_unit_verifies(tmp_path: Path, profile: str) -> None:
    bundle = _bundle(tmp_path, profile, "--set", "cpu_allocation_percentage=0.3")
    root = _scratch_root(tmp_path)
    assert "starts on the next boot" in _install(bundle, root)
    unit = root / "etc/systemd/system/prsm-edge.service"
    assert (root / "etc/systemd/system/multi-user.target.wants/prsm-edge.service").is_symlink()
    settings = tomllib.loads((root / "etc/prsm-edge/settings.toml").read_text())
    assert settings == {"cpu_allocation_percentage": 0.3, "site": "lab", "device_class": profile}

    verify = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", f"--root={root}", "prsm-edge.service"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr
    assert "prsm-edge" not in verify.stderr  # no warning about our unit at all

    security = subprocess.run(
        [str(SYSTEMD_ANALYZE), "security", f"--root={root}", "--offline=true", "prsm-edge.service"],
        capture_output=True,
        text=True,
        check=False,
    )
    m = re.search(r"Overall exposure level for prsm-edge\.service: ([0-9.]+)", security.stdout)
    assert m is not None, security.stdout + security.stderr
    assert float(m[1]) <= MAX_EXPOSURE

    text = unit.read_text()
    p = profiles.profile_named(profile)
    assert f"CPUQuota={p.service.cpu_quota_percent}%" in text
    assert f"MemoryMax={p.service.memory_max_mb}M" in text
    for line in (
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "StateDirectory=prsm-edge",
    ):
        assert line in text.splitlines()


@needs_systemd
def test_a_unit_that_breaks_systemd_rules_is_caught(tmp_path: Path) -> None:
    # The check above can fail: the same verification rejects a unit whose command does not exist.
    bundle = _bundle(tmp_path, "generic")
    root = _scratch_root(tmp_path)
    _install(bundle, root)
    (root / "opt/prsm-edge/bin/prsm-edge").unlink()
    verify = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", f"--root={root}", "prsm-edge.service"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode != 0 and "not executable" in verify.stderr


def test_bundle_holds_no_secret_and_reinstall_keeps_the_owners_settings(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, "raspberry_pi")
    names = {p.name for p in bundle.iterdir()}
    assert names == {
        "settings.toml",
        "prsm-edge.service",
        "firstboot.sh",
        "user-data",
        "README.txt",
        "manifest.json",
    }
    for path in bundle.iterdir():
        body = path.read_text()
        assert "PRIVATE" not in body and "node.key" not in body
    assert (bundle / "firstboot.sh").stat().st_mode & 0o111
    subprocess.run(["sh", "-n", str(bundle / "firstboot.sh")], check=True)

    root = tmp_path / "root"
    _install(bundle, root)
    settings = root / "etc/prsm-edge/settings.toml"
    settings.write_text("cpu_allocation_percentage = 0.1\n")
    out = _install(bundle, root)
    assert "keeping the settings" in out
    assert settings.read_text() == "cpu_allocation_percentage = 0.1\n"


def test_cloud_init_user_data_carries_the_bundle(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, "jetson")
    text = (bundle / "user-data").read_text()
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    files = {Path(f["path"]).name: f for f in doc["write_files"]}
    assert set(files) == {"settings.toml", "prsm-edge.service", "firstboot.sh"}
    for name, f in files.items():
        assert f["content"] == (bundle / name).read_text()
    assert files["firstboot.sh"]["permissions"] == "0755"
    assert doc["runcmd"] == [
        ["sh", f["path"]] for f in doc["write_files"] if f["path"].endswith("firstboot.sh")
    ]
    # The Jetson profile installs the GPU and TFLite extras.
    assert "prsm-edge[gpu,tflite]" in files["firstboot.sh"]["content"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--set", "cpu_allocation_percentage=2"], "cpu_allocation_percentage"),
        (["--set", "nonsense=1"], "'nonsense' is not a setting"),
        (["--set", "novalue"], "write KEY=VALUE"),
    ],
)
def test_bad_bundle_settings_say_what_is_wrong(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    out = tmp_path / "b"
    assert main(["provision", "--profile", "generic", "--out", str(out), *args]) == 2
    assert says in capsys.readouterr().err
    assert not out.exists()  # nothing half-written


def test_provision_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _bundle(tmp_path, "generic")
    assert main(["provision", "--profile", "generic", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["provision", "--profile", "generic", "--out", str(out), "--force"]) == 0


def test_service_install_status_uninstall_in_a_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "r"
    assert main(["service", "status", "--root", str(root)]) == 3
    assert main(["service", "install", "--root", str(root), "--profile", "raspberry_pi"]) == 0
    unit = (root / "etc/systemd/system/prsm-edge.service").read_text()
    assert "CPUQuota=200%" in unit and " join" in unit
    assert main(["service", "status", "--root", str(root)]) == 0
    assert main(["service", "uninstall", "--root", str(root)]) == 0
    assert not (root / "etc/systemd/system/prsm-edge.service").exists()
    assert (root / "etc/prsm-edge/settings.toml").exists()  # the owner's settings are kept
    capsys.readouterr()
