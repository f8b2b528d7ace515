"""The page of ``npsam3 serve`` in a real browser: Debian's chromium, headless, driven by selenium
through /usr/bin/chromedriver, against a real server on a free loopback port. It opens a shipped
photo, types a concept, moves the threshold slider, clicks, right-clicks and drags, downloads the
JSON, and keeps a screenshot in out/test-artifacts/."""

import json
import os
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from npsam3.rle import rle_decode
from npsam3.serve.app import create_app
from npsam3.serve.server import running

from .test_serve import small_photo, without

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "out" / "test-artifacts"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=900,1000"]  # the whole image in view
SERVER_ONLY = ("detector_ran", "prediction")  # differ between two equal requests


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not installed: run `make browser` (Debian's chromium "
                    "and chromium-driver; `make test` does it)", pytrace=False)
    from selenium import webdriver

    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"]:
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER),
                              options=options)
    driver.downloads = downloads
    yield driver
    driver.quit()


def wait_for(driver, script, timeout=120):
    """The value of the JS expression ``script`` once it is truthy (fails after ``timeout`` s,
    or at once when the page shows an error)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(f"return {script};")
        if value:
            return value
        status = driver.execute_script("return [$('status').className, $('status').textContent];")
        assert status[0] != "error", f"the page says: {status[1]}"
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {script}")


def painted(driver, canvas):
    """bool [H, W]: the pixels of a canvas that are not transparent."""
    width, height, alpha = driver.execute_script(
        "const c = $(arguments[0]), d = c.getContext('2d').getImageData(0, 0, c.width, c.height);"
        "return [c.width, c.height, Array.from(d.data.filter((v, i) => i % 4 === 3))];", canvas)
    return np.array(alpha, np.uint8).reshape(height, width) > 0


def outline(mask):
    """The pixels of a bool mask with a 4-neighbour outside it (or on the image border)."""
    inner = np.zeros_like(mask)
    inner[1:-1, 1:-1] = (mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2]
                         & mask[1:-1, 2:])
    return mask & ~inner


def click_at(driver, xy, action="click"):
    """Click (or "context_click") the image at pixel ``xy``."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    marks = driver.find_element(By.ID, "marks")
    chain = ActionChains(driver).move_to_element_with_offset(marks, *screen_offset(driver, xy))
    getattr(chain, action)().perform()


def screen_offset(driver, xy):
    """Selenium's offset from the canvas centre of image pixel ``xy``."""
    width, height, shown_w, shown_h = driver.execute_script(
        "const c = $('marks'), r = c.getBoundingClientRect();"
        "return [c.width, c.height, r.width, r.height];")
    return (round((xy[0] + 0.5) / width * shown_w - shown_w / 2),
            round((xy[1] + 0.5) / height * shown_h - shown_h / 2))


def test_page_in_chromium(browser, np_model, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    photo, _ = small_photo(tmp_path, "coins.jpg", (160, 120))
    driver = browser
    with running(create_app(np_model)) as url, httpx.Client(base_url=url, timeout=300) as api:
        driver.get(url + "/")
        file_input = driver.find_element(By.ID, "file")
        driver.execute_script("arguments[0].style.display = 'block';", file_input)
        file_input.send_keys(str(photo))
        image = wait_for(driver, "window.npsam3.image")
        assert (image["width"], image["height"]) == (160, 120)

        # a concept: every instance outlined, listed with its score
        driver.find_element(By.ID, "prompt").send_keys("a coin")
        driver.find_element(By.ID, "segment").click()
        concept = wait_for(driver, "window.npsam3.concept")
        assert concept["detector_ran"] and concept["threshold"] == 0.5 and concept["instances"]
        served = api.post(f"/v1/images/{image['id']}/concept",
                          json={"prompt": "a coin", "threshold": 0.5}).json()
        assert without(concept, SERVER_ONLY) == without(served, SERVER_ONLY)
        items = driver.find_elements(By.CSS_SELECTOR, "#instances li")
        assert [li.text.split(",")[0] for li in items] == \
            [f"score {i['score']:.2f}" for i in concept["instances"]]
        masks = [rle_decode(i["segmentation"]) for i in concept["instances"]]
        drawn = painted(driver, "concept")
        expected = np.logical_or.reduce([outline(m) for m in masks])
        assert drawn[expected].all(), "an instance's outline is not drawn"

        # the slider re-selects without the detector
        driver.execute_script("const s = $('threshold'); s.value = 0.45;"
                              "s.dispatchEvent(new Event('input'));")
        lower = wait_for(driver, "window.npsam3.concept.threshold === 0.45 && window.npsam3.concept")
        assert not lower["detector_ran"] and len(lower["instances"]) > len(concept["instances"])
        assert len(driver.find_elements(By.CSS_SELECTOR, "#instances li")) == len(lower["instances"])

        # a left click: the object's mask, exactly as the API gives it for that click
        click_at(driver, (80, 60))
        obj = wait_for(driver, "window.npsam3.object")
        (xy, label), = [(p["xy"], p["label"]) for p in obj["points"]]
        assert label == 1 and abs(xy[0] - 80.5) < 1.5 and abs(xy[1] - 60.5) < 1.5
        again = api.post(f"/v1/images/{image['id']}/object",
                         json={"points": obj["points"], "multimask": False}).json()
        assert without(obj, SERVER_ONLY) == without(again, SERVER_ONLY)
        mask = rle_decode(obj["instances"][0]["segmentation"])
        assert mask.any() and np.array_equal(painted(driver, "object"), mask)

        # a right click adds a negative point; a drag gives a box
        click_at(driver, (20, 100), "context_click")
        obj = wait_for(driver, "window.npsam3.object.points.length === 2 && window.npsam3.object")
        assert [p["label"] for p in obj["points"]] == [1, 0]
        start, end = screen_offset(driver, (30, 20)), screen_offset(driver, (130, 100))
        marks = driver.find_element(By.ID, "marks")
        ActionChains(driver).move_to_element_with_offset(marks, *start).click_and_hold() \
            .move_by_offset(end[0] - start[0], end[1] - start[1]).release().perform()
        obj = wait_for(driver, "window.npsam3.object.boxes.length === 1 && window.npsam3.object")
        box = obj["boxes"][0]
        assert all(abs(a - b) < 2 for a, b in zip(box, (30.5, 20.5, 130.5, 100.5))), box
        mask = rle_decode(obj["instances"][0]["segmentation"])
        assert np.array_equal(painted(driver, "object"), mask)

        # the JSON download is the last result
        driver.find_element(By.ID, "download").click()
        saved = driver.downloads / "coins.object.json"
        deadline = time.monotonic() + 20
        while not saved.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert json.loads(saved.read_text()) == obj

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "serve-page.png"))
        resources = driver.execute_script(
            "return performance.getEntriesByType('resource').map((e) => e.name);")
        assert resources and all(r.startswith(url + "/") for r in resources), resources
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
