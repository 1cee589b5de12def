"""The web page in a real browser: headless Chromium from Debian's packages, driven by selenium through Debian's
chromedriver (nothing downloaded). An image picked in the file input, and one dropped on the drop zone, come back
drawn: the boxes on the canvas in their class colour, "label score" in the list, the slider filtering them without
a new request; a file that is no image shows the server's one-line error. The model is `FakeDetector` (known
boxes), served from a thread of the test process on 127.0.0.1."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

pytest.importorskip("selenium", reason="the browser test needs selenium (the dev extra)")

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from serve_helpers import FakeDetector, fake_service, live_server, png

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip(f"the browser test needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}): "
                "apt-get install chromium chromium-driver (.ci/run installs them)", allow_module_level=True)

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1200,900"]
"""Flags that work on a machine without a display or outside network (without the background-networking ones,
Chromium's own connections are refused and it stalls)."""
SQUARE_RGB = (0xE6, 0x19, 0x4B)  # the page's first palette colour: the first class, "square"


@pytest.fixture(scope="module")
def browser():
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def page(browser):
    fake = FakeDetector()
    with live_server(fake_service(fake)) as url:
        browser.get(f"{url}/")
        _wait(browser, lambda: "classes" in browser.find_element(By.ID, "model").text)
        yield browser, fake


def _wait(driver, predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, driver.find_element(By.TAG_NAME, "body").text
        time.sleep(0.05)


def _state(driver) -> str:
    return driver.find_element(By.ID, "detections").get_attribute("data-state")


def _set_threshold(driver, value: float) -> None:
    driver.execute_script("const s = document.getElementById('threshold'); s.value = arguments[0];"
                          "s.dispatchEvent(new Event('input'));", str(value))


def _pixel(driver, x: float, y: float) -> tuple[int, int, int]:
    """The canvas pixel at image coordinates (x, y) (the page enlarges small images by data-scale)."""
    return tuple(driver.execute_script(
        "const c = document.getElementById('canvas'), s = parseFloat(c.dataset.scale);"
        "return Array.from(c.getContext('2d').getImageData(Math.round(arguments[0] * s),"
        " Math.round(arguments[1] * s), 1, 1).data.slice(0, 3));", x, y))


def test_picked_image_is_drawn_with_its_boxes_and_the_slider_filters(page, tmp_path):
    driver, fake = page
    image = tmp_path / "street.png"
    image.write_bytes(png(160, 120))
    calls = len(fake.calls)
    driver.find_element(By.ID, "file").send_keys(str(image))
    _wait(driver, lambda: _state(driver) == "done")
    listing = driver.find_element(By.ID, "detections")
    assert listing.get_attribute("data-total") == "2"  # both boxes came back (asked at threshold 0)
    assert listing.get_attribute("data-count") == "1"  # the slider starts at 0.3: the disc (0.2) is hidden
    items = listing.find_elements(By.CSS_SELECTOR, "li.detection")
    assert [i.text for i in items] == ["square 0.90 [0, 0, 160, 120]"]
    canvas = driver.find_element(By.ID, "canvas")
    scale = float(canvas.get_attribute("data-scale"))
    assert int(canvas.get_attribute("width")) == round(160 * scale) and scale >= 1
    assert _pixel(driver, 80, 0) == SQUARE_RGB  # the square's box, drawn along the image's top edge
    assert _pixel(driver, 0, 80) == SQUARE_RGB  # and its left edge

    _set_threshold(driver, 0.1)
    assert listing.get_attribute("data-count") == "2"
    assert [i.get_attribute("data-category") for i in listing.find_elements(By.CSS_SELECTOR, "li")] == [
        "square", "disc"]
    assert driver.find_element(By.ID, "threshold-value").text == "0.10"
    _set_threshold(driver, 0.95)
    assert listing.get_attribute("data-count") == "0"
    assert listing.find_elements(By.CSS_SELECTOR, "li") == []
    assert len(fake.calls) == calls + 1  # the slider redraws without asking the server again
    _set_threshold(driver, 0.3)


def test_dropped_image_is_drawn(page):
    """A file dropped on the drop zone (a PNG made in the page, dispatched as a drop event)."""
    driver, _ = page
    driver.execute_script("""
        const c = document.createElement('canvas'); c.width = 200; c.height = 100;
        c.getContext('2d').fillRect(0, 0, 200, 100);
        c.toBlob((blob) => {
          const dt = new DataTransfer();
          dt.items.add(new File([blob], 'dropped.png', {type: 'image/png'}));
          document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
        }, 'image/png');""")
    _wait(driver, lambda: "dropped.png" in driver.find_element(By.ID, "status").text)
    assert _state(driver) == "done"
    assert driver.find_element(By.CSS_SELECTOR, "li.detection").get_attribute("data-box") == "0,0,200,100"


def test_a_file_that_is_no_image_shows_the_error_line(page, tmp_path):
    driver, _ = page
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    driver.find_element(By.ID, "file").send_keys(str(notes))
    _wait(driver, lambda: _state(driver) == "error")
    error = driver.find_element(By.ID, "error").text
    assert error.startswith("415: notes.txt: not an image"), error
    assert driver.find_element(By.ID, "detections").get_attribute("data-count") == "0"
