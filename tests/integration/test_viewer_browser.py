"""The live viewer in headless Chromium: emulator -> service -> viewer, images update, screenshot saved.

The screenshot is committed as docs/viewer.png (rewritten when SBD_UPDATE_SCREENSHOT=1). Until a
trained engine is shipped under engines/, the
service here denoises with a classical Gaussian low-pass stage (named as such in the page header):
the random-weight test engines produce noise, in which the likelihood stage finds no columns, and this
test is about what the viewer shows, not about denoising quality (tests/e2e/test_pipeline.py covers that).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import zmq
from conftest import ci_provided, require_module

from sbd_stream.config import load_settings
from sbd_stream.engines.card import DEFAULT_ENGINE, default_engine_root
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.service.build import build_pipeline
from sbd_stream.sources.emulator import Emulator, EmulatorSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
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


SAMPLES = Path(__file__).resolve().parents[2] / "sbd_stream" / "samples" / "pt_ceo2_test.h5"


def _denoiser() -> Denoiser:
    """The shipped default engine (the viewer must show what a user's first run shows)."""
    return Denoiser.load(engine="onnxruntime", engine_dir=default_engine_root() / DEFAULT_ENGINE)


@pytest.mark.timeout(240)
@pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None, reason=ci_provided("chromium / chromium-driver not installed")
)
def test_viewer_page_shows_live_images_and_metrics(tmp_path: Path) -> None:
    from selenium.webdriver.chrome.service import Service

    ctx = zmq.Context.instance()
    emu = Emulator(
        EmulatorSettings(
            endpoint="tcp://127.0.0.1:*",
            shape=(256, 256),
            n_frames=100000,
            rate_hz=20,
            pool=8,
            source=SAMPLES if SAMPLES.is_file() else None,  # held-out abTEM images shipped with the package
        ),
        ctx,
    )
    settings = load_settings(
        overrides={
            "ingest": {"endpoint": emu.endpoint, "mode": "connect"},
            "publish": {"endpoint": "tcp://127.0.0.1:*"},
            "record": {"enabled": False},
            "metrics": {"port": 0},
            "viewer": {"enabled": True, "port": 0},
            "denoise": {
                "policy": "latest",
                "batch_frames": 2,
                "likelihood": {"enabled": True},  # at the engine's working pixel
            },
        }
    )
    pipe = build_pipeline(settings, _denoiser(), context=ctx)
    pipe.start()
    viewer = pipe.viewer
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in (*CHROME_FLAGS, f"--user-data-dir={tmp_path / 'chrome-profile'}"):
        opts.add_argument(flag)
    driver = None
    try:
        emu.start()
        driver = webdriver.Chrome(options=opts, service=Service(str(CHROMEDRIVER)))
        driver.set_page_load_timeout(60)
        driver.get(viewer.url)

        def state() -> dict:
            return driver.execute_script("return window.sbdStatus")

        seen: dict[str, set[int]] = {"raw": set(), "denoised": set(), "llr": set()}
        paired = 0  # updates where the raw panel shows the same frame as the denoised one
        end = time.monotonic() + 120
        while time.monotonic() < end:
            st = state()
            for k in seen:
                if k in st["seq"]:
                    seen[k].add(st["seq"][k])
            paired += int("raw" in st["seq"] and st["seq"]["raw"] == st["seq"].get("denoised"))
            metrics_text = driver.find_element("id", "m-in").text
            updated = all(len(v) >= 3 for v in seen.values())
            if updated and paired > 0 and metrics_text not in ("", "–"):
                break
            time.sleep(0.25)
        st = state()
        assert all(len(v) >= 3 for v in seen.values()), f"images did not update: {seen}"
        assert st["errors"] == 0
        assert paired > 0, "the raw panel never showed the frame of the denoised panel"
        assert float(driver.find_element("id", "m-in").text) > 0  # input rate from Prometheus
        assert driver.find_element("id", "acq").text == emu.cfg.acq
        for k in seen:  # every panel shows a decoded image, not the placeholder
            w = driver.execute_script(f"return document.getElementById('img-{k}').naturalWidth")
            assert w == 256, (k, w)
        time.sleep(1.5)  # one more metrics interval so the rate and latency tiles are filled in
        # the committed docs/viewer.png is refreshed only on request, so a test run leaves the tree clean
        update = os.environ.get("SBD_UPDATE_SCREENSHOT") == "1"
        out = ROOT / "docs" / "viewer.png" if update else tmp_path / "viewer.png"
        out.parent.mkdir(exist_ok=True)
        assert driver.save_screenshot(str(out))
        assert out.stat().st_size > 20_000
    finally:
        if driver is not None:
            driver.quit()
        emu.close()
        viewer.close()
        pipe.stop()
