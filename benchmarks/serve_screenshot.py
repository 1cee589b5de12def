"""A screenshot of `dynamic-detr serve`'s page with an image's detections drawn (for the README and docs/serve.md).

Starts the server (a subprocess on 127.0.0.1, any free port) on `--checkpoint` (default: an untrained cpu_tiny
model it saves, which draws meaningless boxes: give a trained run for a real picture), opens the page in headless
Chromium (Debian's `chromium` and `chromium-driver`, driven by selenium), picks `--image` in the page's file input
(default: image 0 of the synthetic val split, the demo's data), sets the slider to `--threshold`, and saves the
window as a PNG.

    .venv/bin/python benchmarks/serve_screenshot.py --checkpoint runs/demo/run --out docs/images/serve_page.png
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from serve_load import save_untrained, start_server, stop_server

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]
"""Flags that work without a display and without an outside network (docs/serve.md)."""


def screenshot(url: str, image: Path, threshold: float, out: Path, size: tuple[int, int]) -> int:
    """Open the page, pick `image`, set the slider; save the window to `out`. Returns the detections shown."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--window-size={size[0]},{size[1]}", f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(f"{url}/")
        listing = driver.find_element(By.ID, "detections")
        driver.find_element(By.ID, "file").send_keys(str(image.resolve()))
        deadline = time.monotonic() + 120
        while listing.get_attribute("data-state") not in ("done", "error"):
            if time.monotonic() > deadline:
                sys.exit("the page showed no result within 120 s")
            time.sleep(0.1)
        if listing.get_attribute("data-state") == "error":
            sys.exit(f"the page shows an error: {driver.find_element(By.ID, 'error').text}")
        driver.execute_script("const s = document.getElementById('threshold'); s.value = arguments[0];"
                              "s.dispatchEvent(new Event('input'));", str(threshold))
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
        return int(listing.get_attribute("data-count"))
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, help="model to serve (default: an untrained cpu_tiny model)")
    p.add_argument("--image", type=Path, help="image to upload (default: synthetic val image 0, 320 px)")
    p.add_argument("--threshold", type=float, default=0.4, help="the slider's value (default: 0.4)")
    p.add_argument("--size", type=int, nargs=2, default=[1100, 820], metavar=("W", "H"), help="window size")
    p.add_argument("--out", type=Path, default=common.RESULTS / "serve" / "page.png")
    args = p.parse_args()
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            sys.exit(f"{path} is missing: apt-get install chromium chromium-driver")

    with tempfile.TemporaryDirectory() as tmp:
        image = args.image
        if image is None:
            from dynamic_detr.data.synthetic import render

            image = Path(tmp) / "val_0000.png"
            render(seed=0, split="val", index=0)[0].save(image)
        checkpoint = args.checkpoint or save_untrained("cpu_tiny", Path(tmp) / "untrained_cpu_tiny")
        proc, url = start_server(checkpoint, max_batch=1, queue_size=4, log=Path(tmp) / "server.log")
        try:
            shown = screenshot(url, image, args.threshold, args.out, tuple(args.size))
        finally:
            stop_server(proc, 60)
    print(f"{shown} detection(s) at score >= {args.threshold} drawn; written: {args.out}")


if __name__ == "__main__":
    main()
