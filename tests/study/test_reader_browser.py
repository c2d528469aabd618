"""The study page in a real browser: headless Debian chromium driven through selenium.

One reader answers every pair with clicks and keys on a copy of the page folder alone, the page
is reloaded in the middle (nothing may be lost), the CSV is downloaded through the page's button
and scored.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                                reason="needs Debian's chromium and chromium-driver (tools/install_system_packages.sh)")


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install 'medvol[dev]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.downloads = downloads
    yield driver
    driver.quit()


def _wait(condition, timeout: float = 20.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _images_loaded(driver) -> bool:
    return driver.execute_script(
        "return ['img-left','img-right'].every(function(i){var m=document.getElementById(i);"
        "return m.complete && m.naturalWidth > 0;});")


def _reload(driver, progress: str):
    from selenium.webdriver.common.by import By

    driver.refresh()
    _wait(lambda: driver.execute_script("return document.readyState") == "complete", what="the reloaded page")
    try:
        _wait(lambda: _images_loaded(driver), what="images after reload")
    except AssertionError:
        # Seen once in ~10 full-suite runs (a clean clone's CI run): the reloaded page's images
        # never completed. A second reload is what a reader does; the state must survive it too.
        driver.refresh()
        _wait(lambda: _images_loaded(driver), what="images after a second reload")
    assert driver.find_element(By.ID, "progress-text").text == progress
    return driver.find_element(By.TAG_NAME, "body")


def test_full_study_in_chromium_with_a_reload(browser, rvf_study, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from medvol.study.reader.score import score_study

    key = json.loads((rvf_study / "key.json").read_text(encoding="utf-8"))
    n = len(key["pairs"])
    # The readers get a copy of the page folder only (as on a USB stick): no key beside it.
    stick = tmp_path / "stick"
    shutil.copytree(rvf_study / "page", stick)
    assert not list(stick.rglob("key.json"))
    by_image = {p["left_image"]: p["pair"] for p in key["pairs"]}
    browser.get((stick / "index.html").as_uri())
    browser.find_element(By.ID, "reader-id").send_keys("R01")
    browser.find_element(By.ID, "reader-role").send_keys("resident")
    browser.find_element(By.ID, "reader-years").send_keys("3")
    browser.find_element(By.ID, "start").click()

    body = browser.find_element(By.TAG_NAME, "body")
    shown, planned = [], {}
    for i in range(n):
        _wait(lambda: _images_loaded(browser), what="both images")
        assert browser.find_element(By.ID, "progress-text").text == f"Pair {i + 1} of {n}"
        src = browser.find_element(By.ID, "img-left").get_attribute("src")
        pair = by_image[Path(src).name]
        assert pair == key["pairs"][i]["pair"]  # the page keeps the key's order
        shown.append(pair)
        # Alternate the ways of answering: keys on even pairs, clicks on odd ones.
        choice, difficulty = ("left", "right")[i % 2], 1 + i % 5
        planned[pair] = (choice, difficulty)
        keys = i % 2 == 0
        if keys:
            body.send_keys(Keys.ARROW_LEFT if choice == "left" else Keys.ARROW_RIGHT)
        else:
            browser.find_element(By.ID, f"choose-{choice}").click()
        if i == 2:
            # A reload after the choice keeps it (and the answers before it) ...
            body = _reload(browser, f"Pair {i + 1} of {n}")
            assert "chosen" in browser.find_element(By.ID, f"choose-{choice}").get_attribute("class")
            assert not browser.find_element(By.ID, "next").is_enabled()
        if keys:
            body.send_keys(str(difficulty))
        else:
            browser.find_element(By.CSS_SELECTOR, f"input[name=difficulty][value='{difficulty}']").click()
        if i == 2:
            # ... and one after the difficulty keeps both.
            body = _reload(browser, f"Pair {i + 1} of {n}")
            assert "chosen" in browser.find_element(By.ID, f"choose-{choice}").get_attribute("class")
            checked = browser.find_element(By.CSS_SELECTOR, "input[name=difficulty]:checked")
            assert checked.get_attribute("value") == str(difficulty)
        assert browser.find_element(By.ID, "next").is_enabled()
        if i % 2 == 0:
            body.send_keys(Keys.ENTER)
        else:
            browser.find_element(By.ID, "next").click()
        time.sleep(0.02)

    _wait(lambda: browser.find_element(By.ID, "done-screen").is_displayed(), what="the done screen")
    browser.find_element(By.ID, "export-csv").click()
    browser.find_element(By.ID, "export-json").click()
    csv_file = _wait(lambda: next(iter(browser.downloads.glob("answers_R01.csv")), None), what="the CSV download")
    json_file = _wait(lambda: next(iter(browser.downloads.glob("answers_R01.json")), None), what="the JSON download")
    time.sleep(0.2)
    rows = csv_file.read_text(encoding="utf-8").splitlines()
    assert rows[0] == "reader,pair,choice,difficulty,seconds"
    assert len(rows) == n + 1
    for row in rows[1:]:
        reader, pair, choice, difficulty, seconds = row.split(",")
        assert reader == "R01" and (choice, int(difficulty)) == planned[pair]
        assert float(seconds) >= 0
    exported = json.loads(json_file.read_text(encoding="utf-8"))
    assert exported["experience"] == {"role": "resident", "years": 3}
    assert [a["pair"] for a in exported["answers"]] == shown

    result = score_study(rvf_study, [csv_file], tmp_path / "score")
    truth = {p["pair"]: p for p in key["pairs"]}
    correct = sum(truth[pair][choice] == "real" for pair, (choice, _) in planned.items())
    assert result["accuracy"]["pooled"]["correct"] == correct
    assert result["likert"]["pooled"]["counts"] == {str(k): sum(d == k for _, d in planned.values()) for k in range(1, 6)}
    # The JSON export scores the same.
    again = score_study(rvf_study, [json_file], tmp_path / "score_json", plot=False)
    assert again["accuracy"]["pooled"] == result["accuracy"]["pooled"]


def _image_loaded(driver) -> bool:
    return driver.execute_script("var m=document.getElementById('img-left');"
                                 "return m.complete && m.naturalWidth > 0;")


def test_single_image_study_in_chromium(browser, phantom_sources, tmp_path):
    """The visual Turing test page: one image, "Real" / "Synthetic" by key and by click, a reload."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from medvol.study.reader.make import make_study
    from medvol.study.reader.score import score_study

    study = make_study(tmp_path / "single", [f"g={phantom_sources['fakeA']}"], str(phantom_sources["real"]),
                       mode="single", images=6)
    key = json.loads((study / "key.json").read_text(encoding="utf-8"))
    n = len(key["pairs"])
    stick = tmp_path / "stick"
    shutil.copytree(study / "page", stick)
    by_image = {p["image"]: p["pair"] for p in key["pairs"]}
    browser.get((stick / "index.html").as_uri())
    browser.find_element(By.ID, "reader-id").send_keys("V1")
    browser.find_element(By.ID, "reader-role").send_keys("resident")
    browser.find_element(By.ID, "start").click()
    assert browser.find_element(By.ID, "choose-left").text.startswith("Real")
    assert browser.find_element(By.ID, "choose-right").text.startswith("Synthetic")
    assert not browser.find_elements(By.ID, "img-right")  # one image on screen, never two
    body = browser.find_element(By.TAG_NAME, "body")
    planned = {}
    for i in range(n):
        _wait(lambda: _image_loaded(browser), what="the image")
        assert browser.find_element(By.ID, "progress-text").text == f"Image {i + 1} of {n}"
        item = by_image[Path(browser.find_element(By.ID, "img-left").get_attribute("src")).name]
        choice = ("real", "synthetic")[(i // 2) % 2]
        planned[item] = choice
        if i % 2 == 0:
            body.send_keys(Keys.ARROW_LEFT if choice == "real" else Keys.ARROW_RIGHT)
            body.send_keys(str(1 + i % 5))
        else:
            browser.find_element(By.ID, "choose-left" if choice == "real" else "choose-right").click()
            browser.find_element(By.CSS_SELECTOR, f"input[name=difficulty][value='{1 + i % 5}']").click()
        if i == 1:
            browser.refresh()
            _wait(lambda: _image_loaded(browser), what="the image after reload")
            body = browser.find_element(By.TAG_NAME, "body")
            assert browser.find_element(By.ID, "progress-text").text == f"Image {i + 1} of {n}"
            button = "choose-left" if choice == "real" else "choose-right"
            assert "chosen" in browser.find_element(By.ID, button).get_attribute("class")
        body.send_keys(Keys.ENTER)
        time.sleep(0.02)
    _wait(lambda: browser.find_element(By.ID, "done-screen").is_displayed(), what="the done screen")
    browser.find_element(By.ID, "export-csv").click()
    csv_file = _wait(lambda: next(iter(browser.downloads.glob("answers_V1.csv")), None), what="the CSV download")
    time.sleep(0.2)
    rows = csv_file.read_text(encoding="utf-8").splitlines()
    assert len(rows) == n + 1 and {row.split(",")[2] for row in rows[1:]} == {"real", "synthetic"}
    assert {row.split(",")[1]: row.split(",")[2] for row in rows[1:]} == planned
    result = score_study(study, [csv_file], tmp_path / "score", plot=False)
    truth = {p["pair"]: p["truth"] for p in key["pairs"]}
    assert result["pooled"]["accuracy"]["k"] == sum(truth[item] == c for item, c in planned.items())


def test_a_2d_single_image_page_asks_without_a_plane(browser, tmp_path):
    """A study of 2D images: the question names no plane (its images have none); the answer is kept."""
    import numpy as np
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from medvol.study.reader.make import make_study

    rng = np.random.default_rng(0)
    for folder in ("real", "fake"):
        (tmp_path / folder).mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(tmp_path / folder / f"{i}.png")
    study = make_study(tmp_path / "s", [f"g={tmp_path / 'fake'}"], str(tmp_path / "real"), mode="single", images=4,
                       window="auto")
    browser.get((study / "page" / "index.html").as_uri())
    browser.find_element(By.ID, "reader-id").send_keys("V2")
    browser.find_element(By.ID, "reader-role").send_keys("resident")
    browser.find_element(By.ID, "start").click()
    _wait(lambda: _image_loaded(browser), what="the image")
    assert browser.find_element(By.ID, "question").text == "Is this image real or synthetic?"
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.ARROW_LEFT)
    body.send_keys("2")
    body.send_keys(Keys.ENTER)
    _wait(lambda: browser.find_element(By.ID, "progress-text").text == "Image 2 of 4", what="the second image")
