"""Provisioning: the files that turn a flashed (or freshly installed) device into a running agent.

A bundle (``prsm-edge provision --profile NAME --out DIR``) holds, for one device class:

``settings.toml``
    the owner's settings: the profile's defaults plus what the owner set with ``--set``. No secrets.
``prsm-edge.service``
    a hardened systemd unit: a dynamic user, the state directory ``/var/lib/prsm-edge`` (the node's key
    is created there, 0600, on first start), a read-only system, no new privileges, no access to homes,
    only the device nodes the profile names (GPU, TPU, TPM), and the profile's CPU and memory limits.
``firstboot.sh``
    run once on the device (by cloud-init, an image's first-boot hook or by hand): installs the package
    into ``/opt/prsm-edge``, puts the settings and the unit in place and starts the agent. It never
    ships a private key: the key is made on the device, by the agent, on its first start.
``user-data``
    the same as a cloud-init ``#cloud-config`` for images that use cloud-init (Raspberry Pi OS Bookworm
    images from Raspberry Pi Imager, Ubuntu for Jetson and Pi, cloud VMs).
``README.txt``
    what to do with the bundle.

Nothing here touches the running system; :mod:`prsm_edge.commands.service` installs the same unit on the
machine it runs on.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Final

from prsm_edge import settings as settings_mod
from prsm_edge.node.profiles import Profile

__all__ = ["INSTALL_DIR", "UNIT_NAME", "Bundle", "render_bundle", "render_unit"]

UNIT_NAME: Final = "prsm-edge.service"
INSTALL_DIR: Final = "/opt/prsm-edge"
CONFIG_DIR: Final = "/etc/prsm-edge"
LIB_DIR: Final = "/usr/local/lib/prsm-edge"
STATE_DIR: Final = "prsm-edge"  # under /var/lib, made by systemd (StateDirectory=)


@dataclass(frozen=True, slots=True)
class Bundle:
    """The files of a provisioning bundle, by name, with their modes."""

    files: dict[str, tuple[str, int]]


def render_unit(profile: Profile, exec_start: str, *, home_read_only: bool = False) -> str:
    """The agent's systemd unit for ``profile``, running ``exec_start`` (an absolute command)."""
    svc = profile.service
    devices = "\n".join(f"DeviceAllow={d}" for d in svc.devices)
    device_policy = "DevicePolicy=closed\n" + (devices + "\n" if devices else "")
    # A TPM, GPU or TPU is opened through its device node; everything else stays out of reach.
    private_devices = "no" if svc.devices else "yes"
    home = "read-only" if home_read_only else "yes"
    return f"""# prsm-edge agent for {profile.name} devices (from `prsm-edge provision` or `service install`).
[Unit]
Description=prsm-edge agent: contributes this device's resources under its owner's limits
Documentation=https://example.invalid/prsm-edge
Wants=network-online.target
After=network-online.target time-sync.target

[Service]
Type=exec
ExecStart={exec_start}
Restart=on-failure
RestartSec=10s
TimeoutStopSec=30s
# The node's key, roster and outbox live in /var/lib/{STATE_DIR}; the owner's settings in {CONFIG_DIR}.
DynamicUser=yes
StateDirectory={STATE_DIR}
StateDirectoryMode=0700
Environment=XDG_DATA_HOME=/var/lib XDG_CONFIG_HOME=/etc PYTHONUNBUFFERED=1
UMask=0077
# Limits from the {profile.name} profile: the agent never takes the whole device.
CPUQuota={svc.cpu_quota_percent}%
MemoryMax={svc.memory_max_mb}M
Nice=10
IOSchedulingClass=idle
# Hardening.
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome={home}
PrivateTmp=yes
PrivateDevices={private_devices}
{device_policy}ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=all
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RemoveIPC=yes
CapabilityBoundingSet=
AmbientCapabilities=
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target
"""


def _pip_spec(profile: Profile, version: str | None) -> str:
    extras = f"[{','.join(profile.service.extras)}]" if profile.service.extras else ""
    return f"prsm-edge{extras}" + (f"=={version}" if version else "")


def _firstboot(profile: Profile, pip_spec: str) -> str:
    return f"""#!/bin/sh
# First boot of a {profile.name} device: install prsm-edge, put its settings and service in place,
# start it. Idempotent. The node's private key is NOT in this bundle: the agent creates it on this
# device, on its first start, in /var/lib/{STATE_DIR} (mode 0600).
#
#   firstboot.sh                 install and start (as root, on the device)
#   firstboot.sh --root DIR      install the files into an image mounted at DIR (no start)
#   --skip-pip                   the image already has {INSTALL_DIR} (baked in at image build)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=""
skip_pip=0
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root="$2"; shift 2 ;;
    --skip-pip) skip_pip=1; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "firstboot.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
say() {{ echo "prsm-edge first boot: $*"; }}
if [ "$skip_pip" = 0 ]; then
  if [ ! -x "$root{INSTALL_DIR}/bin/prsm-edge" ]; then
    say "installing {pip_spec} into {INSTALL_DIR}"
    python3 -m venv "$root{INSTALL_DIR}"
    "$root{INSTALL_DIR}/bin/pip" install --disable-pip-version-check --quiet {shlex.quote(pip_spec)}
  fi
fi
install -d -m 0755 "$root{CONFIG_DIR}" "$root/etc/systemd/system"
if [ ! -e "$root{CONFIG_DIR}/settings.toml" ]; then
  install -m 0644 "$here/settings.toml" "$root{CONFIG_DIR}/settings.toml"
else
  say "keeping the settings already in {CONFIG_DIR}/settings.toml"
fi
install -m 0644 "$here/{UNIT_NAME}" "$root/etc/systemd/system/{UNIT_NAME}"
if [ -z "$root" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable --now {UNIT_NAME}
  say "started; see: systemctl status {UNIT_NAME}; journalctl -u {UNIT_NAME}"
else
  mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
  ln -sf "/etc/systemd/system/{UNIT_NAME}" "$root/etc/systemd/system/multi-user.target.wants/{UNIT_NAME}"
  say "installed; it starts on the next boot"
fi
"""


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "".join(pad + line if line.strip() else line for line in text.splitlines(keepends=True))


def _user_data(files: dict[str, tuple[str, int]]) -> str:
    parts = ["#cloud-config\n", "# prsm-edge: install the agent on first boot (see README.txt).\n"]
    parts.append("packages:\n  - python3-venv\n")
    parts.append("write_files:\n")
    for name in ("settings.toml", UNIT_NAME, "firstboot.sh"):
        text, mode = files[name]
        parts.append(f"  - path: {LIB_DIR}/{name}\n    permissions: '0{mode:o}'\n    content: |\n")
        parts.append(_indent(text, 6))
    parts.append(f"runcmd:\n  - [sh, {LIB_DIR}/firstboot.sh]\n")
    return "".join(parts)


def render_bundle(profile: Profile, owner: settings_mod.Settings, *, version: str | None = None) -> Bundle:
    """Every file of the bundle for ``profile`` with the owner's ``settings``."""
    files: dict[str, tuple[str, int]] = {
        "settings.toml": (settings_mod.render(owner), 0o644),
        UNIT_NAME: (render_unit(profile, f"{INSTALL_DIR}/bin/prsm-edge join"), 0o644),
        "firstboot.sh": (_firstboot(profile, _pip_spec(profile, version)), 0o755),
    }
    files["user-data"] = (_user_data(files), 0o644)
    files["README.txt"] = (
        f"""prsm-edge provisioning bundle for {profile.name}: {profile.description}

On the device, as root:      sh firstboot.sh
Into a mounted image:        sh firstboot.sh --root /mnt/image
                             (add --skip-pip if the image already has {INSTALL_DIR})
With cloud-init:             use user-data as the image's user-data file

The agent runs as the systemd service {UNIT_NAME} under a dynamic user, limited to
CPUQuota={profile.service.cpu_quota_percent}% and MemoryMax={profile.service.memory_max_mb}M. It creates
the node's key on its first start (nothing secret is in this bundle). Settings: {CONFIG_DIR}/settings.toml
(`prsm-edge settings show` explains each). Device notes:

{profile.provision.strip()}
""",
        0o644,
    )
    return Bundle(files)
