"""Where prsm-edge keeps its files; every path can be moved with an environment variable.

``PRSM_EDGE_HOME`` moves everything (data and configuration) under one folder, which is what tests and
the demo use. Otherwise the XDG base directories apply.
"""

from __future__ import annotations

import os
from pathlib import Path


def _home_override() -> Path | None:
    value = os.environ.get("PRSM_EDGE_HOME")
    return Path(value).expanduser() if value else None


def data_dir() -> Path:
    """Keys, databases and the outbox."""
    home = _home_override()
    if home is not None:
        return home
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "prsm-edge"


def config_dir() -> Path:
    """The owner's settings file."""
    home = _home_override()
    if home is not None:
        return home
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "prsm-edge"
