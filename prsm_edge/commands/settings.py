"""``prsm-edge settings``: show, set, unset and validate the owner's contribution settings."""

from __future__ import annotations

import argparse
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from prsm_edge import settings
from prsm_edge.errors import ConfigError
from prsm_edge.node import detect, profiles

_EPILOG = (
    "Settings live in settings.toml in the config dir (PRSM_EDGE_HOME, else $XDG_CONFIG_HOME/prsm-edge). "
    "Each value comes from, in rising precedence: the built-in default, the device's firmware profile, "
    "the file, the environment (PRSM_EDGE_<KEY>, e.g. PRSM_EDGE_CPU_ALLOCATION_PERCENTAGE=0.7)."
)


def register(sub: Any) -> None:
    """Add the ``settings`` command."""
    parser = sub.add_parser(
        "settings", help="what this device contributes and under which limits", description=_EPILOG
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    show = actions.add_parser(
        "show",
        help="print the effective settings and where each value came from",
        description="Print every setting, its effective value and its source (default/profile/file/env).",
    )
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.add_argument("--file", type=Path, default=None, help="settings file (default: the config dir's)")
    show.add_argument(
        "--no-profile", action="store_true", help="skip detection and the firmware profile's defaults"
    )
    show.set_defaults(handler=_show)

    keys = ", ".join(settings.FIELDS)
    set_ = actions.add_parser(
        "set",
        help="set one value in the settings file (validated first; nothing is written on error)",
        description=f"Set KEY to VALUE in the settings file. Keys: {keys}. "
        "An empty VALUE clears an optional setting (group, broker_url, device_class).",
    )
    set_.add_argument("key", metavar="KEY", help="setting name, e.g. cpu_allocation_percentage")
    set_.add_argument("value", metavar="VALUE", help="new value, e.g. 0.7, true, high")
    set_.add_argument("--file", type=Path, default=None, help="settings file (default: the config dir's)")
    set_.set_defaults(handler=_set)

    unset = actions.add_parser(
        "unset",
        help="remove one value from the settings file (back to its default)",
        description="Remove KEY from the settings file so the profile's or built-in default applies.",
    )
    unset.add_argument("key", metavar="KEY", help="setting name")
    unset.add_argument("--file", type=Path, default=None, help="settings file (default: the config dir's)")
    unset.set_defaults(handler=_unset)

    validate = actions.add_parser(
        "validate",
        help="check a settings file (with the environment's overrides); exit 0 if valid, 2 if not",
        description="Check FILE (default: the config dir's settings.toml) and PRSM_EDGE_* overrides; "
        "prints what is wrong, key by key, with the allowed range.",
    )
    validate.add_argument("file", metavar="FILE", nargs="?", type=Path, default=None, help="file to check")
    validate.set_defaults(handler=_validate)


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Decimal) else value


def _show(args: argparse.Namespace) -> int:
    path = args.file or settings.settings_path()
    profile_name = None
    if args.no_profile:
        sourced = settings.load_sourced(path)
    else:
        resolved = profiles.resolve(detect.detect(), path)
        sourced, profile_name = resolved.sourced, resolved.profile.name
    current = sourced.settings
    if args.json:
        out = {
            "file": str(path),
            "profile": profile_name,
            "settings": {
                name: {
                    "value": _plain(getattr(current, name)),
                    "source": sourced.sources[name],
                    "origin": sourced.origins[name],
                }
                for name in settings.FIELDS
            },
        }
        print(json.dumps(out, indent=2))
        return 0
    print(f"file     {path}{'' if path.exists() else ' (absent: defaults apply)'}")
    print(f"profile  {profile_name or '(not applied)'}")
    print()
    for name in settings.FIELDS:
        value = getattr(current, name)
        shown = "(none)" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        source = sourced.sources[name]
        origin = sourced.origins[name]
        print(f"{name:<32} {shown:<24} {source}{f' ({origin})' if origin else ''}")
    return 0


def _set(args: argparse.Namespace) -> int:
    path = args.file or settings.settings_path()
    new = settings.set_value(args.key, args.value, path)
    value = getattr(new, args.key)
    print(f"{args.key} = {'(none)' if value is None else value}  (written to {path})")
    return 0


def _unset(args: argparse.Namespace) -> int:
    path = args.file or settings.settings_path()
    settings.unset_value(args.key, path)
    print(f"{args.key} removed from {path}; its default applies")
    return 0


def _validate(args: argparse.Namespace) -> int:
    path: Path = args.file or settings.settings_path()
    if args.file is not None and not path.exists():
        raise ConfigError(f"{path}: no such settings file")
    current = settings.load(path)
    if current.device_class is not None:
        profiles.profile_named(current.device_class)
    print(f"ok: {path}{'' if path.exists() else ' (absent: defaults apply)'}")
    return 0
