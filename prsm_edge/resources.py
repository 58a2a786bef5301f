"""Locate the data folders shipped with the package: ``broker``, ``gateway``, ``firmware_profiles``.

In a wheel they are package data under ``prsm_edge/_data/``; in a source checkout (editable install)
they are the top-level folders of the repository.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prsm_edge.errors import LocalError

_PACKAGE = Path(__file__).resolve().parent

DataFolder = Literal["broker", "gateway", "firmware_profiles"]


def data_path(name: DataFolder) -> Path:
    """The folder ``name`` as installed, or as checked out beside the package."""
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise LocalError(f"the package data folder {name!r} is missing; reinstall prsm-edge")
