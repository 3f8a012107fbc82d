"""Debian's headless Chromium under Playwright, as the browser tests use it (never a downloaded browser), and the
screenshots they keep under ``var/screenshots/``."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness import REPO

SHOTS = REPO / "var" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 860}


def missing() -> str | None:
    """Why there is no browser here, or None."""
    if Path(CHROMIUM).exists():
        return None
    return "Debian's chromium is not installed (make test installs it when run as root: apt-get install chromium)"


@contextmanager
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def shot(page: Any, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
