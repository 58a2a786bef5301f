"""``prsm-edge provision``: a bundle that installs and starts the agent on a flashed device."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import pydantic

from prsm_edge import __version__
from prsm_edge import settings as settings_mod
from prsm_edge.errors import ConfigError
from prsm_edge.node import profiles, provision


def register(sub: Any) -> None:
    """Add the ``provision`` command."""
    parser = sub.add_parser(
        "provision",
        help="write a bundle (settings, systemd unit, first-boot script, cloud-init) for a flashed device",
        description=(
            "Write the files that install and start prsm-edge on a device that is flashed rather than "
            "pip-installed. The bundle holds no private key: the device makes its own on first start."
        ),
    )
    parser.add_argument(
        "--profile", required=True, help="firmware profile, e.g. raspberry_pi (see `profile list`)"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write the bundle into (created)")
    parser.add_argument("--site", default=None, help="site segment of the topic tree")
    parser.add_argument("--group", default=None, help="local group to join (default: the one discovered)")
    parser.add_argument("--broker", default=None, help="broker URL (default: discover with mDNS)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an owner setting for the device, e.g. --set cpu_allocation_percentage=0.3 (repeatable)",
    )
    parser.add_argument("--version", dest="pin", default=None, help="pin the package version to install")
    parser.add_argument("--force", action="store_true", help="overwrite files already in --out")
    parser.set_defaults(handler=_run)


def owner_settings(profile: profiles.Profile, args: argparse.Namespace) -> settings_mod.Settings:
    """The device's settings file: its profile, where it connects, and the owner's --set values."""
    data: dict[str, Any] = {"device_class": profile.name}
    for key, value in (("site", args.site), ("group", args.group), ("broker_url", args.broker)):
        if value is not None:
            data[key] = value
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: write KEY=VALUE, e.g. --set cpu_allocation_percentage=0.3")
        if key not in settings_mod.Settings.model_fields:
            raise ConfigError(f"--set {item!r}: {key!r} is not a setting (see `prsm-edge settings show`)")
        data[key] = value
    try:
        return settings_mod.Settings.model_validate(data)
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"the bundle's settings are invalid: {problems}") from None


def _run(args: argparse.Namespace) -> int:
    profile = profiles.profile_named(args.profile)
    owner = owner_settings(profile, args)
    bundle = provision.render_bundle(profile, owner, version=args.pin)
    out: Path = args.out
    clash = [name for name in bundle.files if (out / name).exists()]
    if clash and not args.force:
        raise ConfigError(f"{out} already has {', '.join(clash)}; choose another --out or add --force")
    try:
        out.mkdir(parents=True, exist_ok=True)
        manifest = {}
        for name, (text, mode) in bundle.files.items():
            path = out / name
            path.write_text(text, encoding="utf-8")
            path.chmod(mode)
            manifest[name] = hashlib.sha256(text.encode()).hexdigest()
        (out / "manifest.json").write_text(
            json.dumps({"profile": profile.name, "prsm_edge": __version__, "sha256": manifest}, indent=2)
            + "\n",
            encoding="utf-8",
        )
    except OSError as exc:
        raise ConfigError(f"cannot write the bundle into {out}: {exc}") from exc
    print(f"wrote a {profile.name} bundle to {out}: {', '.join(sorted(bundle.files))}, manifest.json")
    print(
        f"next: copy it to the device and run `sudo sh {out.name}/firstboot.sh` (see {out.name}/README.txt)"
    )
    return 0
