"""``prsm-edge service install|uninstall|status``: run the agent as a systemd service on this machine."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from prsm_edge import settings as settings_mod
from prsm_edge.errors import ConfigError
from prsm_edge.node import profiles, provision
from prsm_edge.node.detect import detect


def register(sub: Any) -> None:
    """Add the ``service`` command and its subcommands."""
    parser = sub.add_parser(
        "service",
        help="install, remove or inspect the agent's systemd service on this machine",
        description=(
            "Run the agent as a hardened systemd service (dynamic user, read-only system, the profile's "
            "CPU and memory limits). Needs root; --root DIR writes into an image or scratch folder instead."
        ),
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, text in (
        ("install", "write the unit and settings, then enable and start the service"),
        ("uninstall", "stop and disable the service and remove its unit (keeps the node's key and settings)"),
        ("status", "is the service installed, enabled and running"),
    ):
        p = verbs.add_parser(verb, help=text, description=text)
        p.add_argument("--root", type=Path, default=None, help="act on this folder as / (no systemctl)")
        if verb == "install":
            p.add_argument("--profile", default=None, help="firmware profile (default: this device's)")
            p.add_argument("--no-start", action="store_true", help="install and enable, but do not start")
        p.set_defaults(handler={"install": _install, "uninstall": _uninstall, "status": _status}[verb])


def _paths(root: Path | None) -> tuple[Path, Path]:
    base = root or Path("/")
    return base / "etc/systemd/system" / provision.UNIT_NAME, base / provision.CONFIG_DIR.lstrip("/")


def _systemd_running(root: Path | None) -> bool:
    return root is None and Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def _systemctl(*args: str) -> None:
    done = subprocess.run(["systemctl", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ConfigError(f"systemctl {' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")


def _executable() -> str:
    """The prsm-edge command of this installation, as the service will run it."""
    found = shutil.which("prsm-edge") or str(Path(sys.executable).with_name("prsm-edge"))
    path = Path(found).resolve()
    if not path.is_file():
        raise ConfigError("cannot find the prsm-edge command of this installation; reinstall prsm-edge")
    return str(path)


def _install(args: argparse.Namespace) -> int:
    profile = profiles.profile_named(args.profile) if args.profile else profiles.match_profile(detect())
    exe = _executable()
    # A dynamic user cannot read a virtual environment inside a home folder.
    in_home = exe.startswith(("/root/", "/home/"))
    if in_home and args.root is None:
        raise ConfigError(
            f"{exe} lies in a home folder, which the service's unprivileged user cannot read; install "
            f"prsm-edge system-wide first: python3 -m venv {provision.INSTALL_DIR} && "
            f"{provision.INSTALL_DIR}/bin/pip install prsm-edge && {provision.INSTALL_DIR}/bin/prsm-edge "
            "service install"
        )
    unit_path, config_dir = _paths(args.root)
    try:
        unit_path.parent.mkdir(parents=True, exist_ok=True)
        unit_path.write_text(provision.render_unit(profile, f"{exe} join"), encoding="utf-8")
        config_dir.mkdir(parents=True, exist_ok=True)
        settings_file = config_dir / "settings.toml"
        if not settings_file.exists():
            here = settings_mod.settings_path()
            if here.is_file():
                shutil.copyfile(here, settings_file)
                print(f"copied your settings from {here} to {settings_file}")
            else:
                settings_file.write_text(
                    settings_mod.render(settings_mod.Settings(device_class=profile.name)), encoding="utf-8"
                )
            settings_file.chmod(0o644)
    except OSError as exc:
        raise ConfigError(f"cannot install the service: {exc} (run as root, or pass --root DIR)") from exc
    print(f"wrote {unit_path} ({profile.name} profile) and {config_dir}/settings.toml")
    if not _systemd_running(args.root):
        print("systemd is not running here: enable it later with `systemctl enable --now prsm-edge`")
        return 0
    _systemctl("daemon-reload")
    _systemctl("enable", *(() if args.no_start else ("--now",)), provision.UNIT_NAME)
    print(f"{'enabled' if args.no_start else 'started'}: systemctl status {provision.UNIT_NAME}")
    return 0


def _uninstall(args: argparse.Namespace) -> int:
    unit_path, _ = _paths(args.root)
    if not unit_path.exists():
        print(f"not installed ({unit_path} does not exist)")
        return 0
    if _systemd_running(args.root):
        _systemctl("disable", "--now", provision.UNIT_NAME)
    try:
        unit_path.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot remove {unit_path}: {exc} (run as root)") from exc
    if _systemd_running(args.root):
        _systemctl("daemon-reload")
    print(f"removed {unit_path}; the node's key and settings are kept (/var/lib/prsm-edge, /etc/prsm-edge)")
    return 0


def _status(args: argparse.Namespace) -> int:
    unit_path, config_dir = _paths(args.root)
    if not unit_path.exists():
        print("not installed: `prsm-edge service install` sets it up")
        return 3
    print(f"installed: {unit_path}; settings {config_dir}/settings.toml")
    if not _systemd_running(args.root):
        print("systemd is not running here, so the service's state is unknown")
        return 0
    done = subprocess.run(
        ["systemctl", "show", provision.UNIT_NAME, "--property=ActiveState,SubState,UnitFileState"],
        capture_output=True,
        text=True,
        check=False,
    )
    print(done.stdout.strip())
    return 0
