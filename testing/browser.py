"""Headless Chromium through Selenium, for the tests and benchmarks that look at a page."""

from __future__ import annotations

import pytest


def browser():
    """Debian's chromium and chromedriver, headless; skips the test when they are missing."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver, chromium = shutil.which("chromedriver"), shutil.which("chromium")
    if not driver or not chromium:
        pytest.skip("Debian's chromium and chromium-driver are not installed (make browser)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,900"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)
