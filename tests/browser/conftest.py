"""Headless Chromium (Debian's package) driven by Playwright for Python, and a place for screenshots."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    # A name for a "remote" page that still resolves to loopback (nothing leaves the machine).
    "--host-resolver-rules=MAP owner.test 127.0.0.1",
]


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what}; .ci/run installs it")
    pytest.skip(what)


def chromium_path() -> str:
    """The system Chromium; Playwright downloads no browser here."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        _missing("chromium is not installed (apt-get install chromium)")
    assert found is not None
    return found


@pytest.fixture
def artifacts() -> Path:
    """Where the browser tests leave screenshots (PRSM_TEST_ARTIFACTS, else build/test-artifacts)."""
    folder = Path(os.environ.get("PRSM_TEST_ARTIFACTS") or REPO / "build" / "test-artifacts") / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def browser() -> Iterator[Any]:
    """One headless Chromium for a test."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[dev]')")
    executable = chromium_path()
    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS, headless=True)
        try:
            yield instance
        finally:
            instance.close()
