"""The headless Chromium the viewer tests drive through selenium: found once, started one way.

Why one module: three viewer tests (the live page, its stale / blank captions, a sender's clock offset)
each built the same driver from the same flags; a flag a new Chromium needs, or the throw-away profile
that keeps runs apart, belongs in one place. Importing this module skips the importing test module
when selenium (the ``dev`` extra) is missing -- and fails it under ``CI=true`` (tests/ci_require.py).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from ci_require import ci_provided, require_module

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
webdriver = require_module("selenium.webdriver", "selenium is in the dev extra")

CHROME_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-features=Translate,OptimizationHints,MediaRouter",
    "--window-size=1440,860",
)

# on a test that drives the browser: skipped without Chromium and its driver (a failure under CI=true)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None, reason=ci_provided("chromium / chromium-driver not installed")
)


@contextmanager
def headless_chromium(tmp_path: Path) -> Iterator[Any]:
    """A selenium driver of headless Chromium (page loads time out after 60 s), with a fresh profile
    under ``tmp_path`` (no state shared between tests or runs); the browser is quit on leaving."""
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in (*CHROME_FLAGS, f"--user-data-dir={tmp_path / 'chrome-profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=Service(str(CHROMEDRIVER)))
    try:
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        driver.quit()
