"""Open a self-contained HTML report in headless Chromium (Debian's chromium + chromium-driver) and read back what a
reader would see: the images and whether they loaded, console errors, the first heading."""

import shutil
from pathlib import Path

import pytest


def chrome(tmp_path: Path):
    """A headless Chromium driver that records the console (skips the test where Chromium is missing)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("Debian's chromium and chromium-driver are not installed (scripts/setup.sh --dev installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)


def open_report(report: Path, tmp_path: Path, screenshot: Path | None = None) -> dict:
    driver = chrome(tmp_path)
    try:
        driver.get(report.as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight]);")
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        shot = screenshot or tmp_path / "report.png"
        saved = driver.save_screenshot(str(shot))
        heading = driver.find_element("tag name", "h2").text
        text = driver.find_element("tag name", "body").text
    finally:
        driver.quit()
    return {"images": images, "errors": errors, "screenshot": shot if saved else None, "heading": heading,
            "text": text}
