"""The demo page in a real browser: Debian's chromium, headless, driven by selenium through
chromium-driver, against a real ``python -m app`` server on loopback.

A real scikit-learn digit is drawn on the canvas with pointer input; the label the page
shows must be /predict's label for the grid the page sent (``#sent[data-grid]``). The
browser's console must stay free of errors. Screenshots go to tmp_path; with
``NNSERVE_SCREENSHOTS=<folder>`` they are copied there too (how docs/ got its pictures).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.helpers.servers import run_server, server_env

pytestmark = pytest.mark.system

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 30  # seconds, for anything the page does (a 2-core machine shared by many tests)


@pytest.fixture
def browser():
    """A headless Chromium; its console log is read by :func:`console_errors`."""
    for path in (CHROMIUM, CHROMEDRIVER):
        assert os.access(path, os.X_OK), f"{path} is missing: apt-get install chromium " \
            "chromium-driver (.ci/run does)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1500",
                     "--disable-extensions", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync",
                     # Nothing but the server on loopback: no update, report or hint fetch.
                     "--disable-domain-reliability", "--disable-breakpad",
                     "--disable-client-side-phishing-detection", "--no-default-browser-check",
                     "--disable-features=Translate,OptimizationHints,MediaRouter,"
                     "AutofillServerCommunication", "--no-pings"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver, allowed=()) -> list[dict]:
    """The browser log's errors (SEVERE), minus those holding one of ``allowed``."""
    return [entry for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE" and not any(text in entry["message"]
                                                      for text in allowed)]


def screenshot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 10_000
    copy_to = os.environ.get("NNSERVE_SCREENSHOTS")
    if copy_to:
        Path(copy_to).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(copy_to) / path.name)
    return path


def open_page(driver, url):
    driver.get(url + "/")
    WebDriverWait(driver, WAIT).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")


def choose(driver, model):
    driver.find_element(By.CSS_SELECTOR, f"#card-{model} button").click()
    WebDriverWait(driver, WAIT).until(
        lambda d: d.find_element(By.ID, "try-title").text == f"Try {model}")


def wait_answer(driver, count_before: int | None = None) -> str:
    """Wait for the page's calls to end; return the status it recorded ('done'/'error')."""
    def finished(d):
        status = d.find_element(By.ID, "sent").get_attribute("data-status")
        return status if status in ("done", "error") else None
    return WebDriverWait(driver, WAIT).until(finished)


def draw_digit(driver, image: np.ndarray) -> None:
    """Trace the digit on the pad with pointer input: a stroke from every inked cell to
    each inked neighbour to its right and below, as a pen would join them."""
    pad = driver.find_element(By.ID, "pad")
    size = pad.size["width"]
    cell = size / image.shape[1]
    inked = image >= 6
    actions = ActionChains(driver, duration=10)

    def centre(r, c):  # offsets are from the element's centre (W3C actions, selenium 4)
        return int((c + 0.5) * cell - size / 2), int((r + 0.5) * cell - size / 2)

    for r, c in zip(*np.nonzero(inked), strict=True):
        x, y = centre(r, c)
        actions.move_to_element_with_offset(pad, x, y).click_and_hold()
        for dr, dc in ((0, 1), (1, -1), (1, 0), (1, 1)):
            if 0 <= r + dr < 8 and 0 <= c + dc < 8 and inked[r + dr, c + dc]:
                actions.move_by_offset(int(dc * cell), int(dr * cell))
                actions.move_by_offset(-int(dc * cell), -int(dr * cell))
        actions.release()
    actions.perform()


def predict_label(url, model, grid, key=None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = httpx.post(f"{url}/models/{model}/predict", json={"inputs": [grid]},
                          headers=headers, timeout=10)
    response.raise_for_status()
    return response.json()["predictions"][0]["label"]


@pytest.fixture(scope="module")
def page_server(tmp_path_factory):
    with run_server(tmp_path_factory.mktemp("page")) as server:
        yield server


@pytest.mark.parametrize(("model", "index"), [("digits-mlp", 3), ("digits-cnn", 7)])
def test_a_drawn_digit_gets_predict_s_label_and_a_heat_map(browser, page_server, tmp_path,
                                                            digits, model, index):
    open_page(browser, page_server.url)
    assert not browser.find_element(By.ID, "auth").is_displayed()  # no key needed here
    choose(browser, model)
    image = digits[0][index]
    draw_digit(browser, image)
    browser.find_element(By.ID, "predict-drawing").click()
    assert wait_answer(browser) == "done"
    sent = browser.find_element(By.ID, "sent")
    assert sent.get_attribute("data-model") == model
    grid = json.loads(sent.get_attribute("data-grid"))
    assert len(grid) == 64 and all(isinstance(v, int) and 0 <= v <= 16 for v in grid)
    # The drawing really reached the grid: its ink lies where the digit's does.
    drawn = np.asarray(grid).reshape(8, 8) > 0
    assert drawn.sum() >= 8 and (drawn & (image > 0)).sum() >= 0.6 * drawn.sum()
    shown = browser.find_element(By.ID, "top-label").text
    assert shown == predict_label(page_server.url, model, grid)
    heatmap = browser.find_element(By.ID, "heatmap")
    assert heatmap.is_displayed() and float(heatmap.get_attribute("data-max")) > 0
    assert len(browser.find_elements(By.CSS_SELECTOR, "#bars .bar")) == 10
    curl = browser.find_element(By.ID, "curl").text
    assert f"/models/{model}/predict" in curl and json.dumps({"inputs": [grid]},
                                                              separators=(",", ":")) in curl
    assert f"/models/{model}/explain" in curl
    screenshot(browser, tmp_path, f"demo-drawn-{model}")
    assert console_errors(browser) == []


def test_an_example_digit_is_sent_as_scikit_learn_has_it(browser, page_server, digits):
    open_page(browser, page_server.url)
    choose(browser, "digits-cnn")
    browser.find_element(By.CSS_SELECTOR, '#examples button[data-index="8"]').click()
    assert wait_answer(browser) == "done"
    grid = json.loads(browser.find_element(By.ID, "sent").get_attribute("data-grid"))
    np.testing.assert_array_equal(grid, digits[0][8].ravel())
    shown = browser.find_element(By.ID, "top-label").text
    assert shown == predict_label(page_server.url, "digits-cnn", grid) == str(digits[1][8])
    # Clear empties the pad and the grid: nothing is sent until something is drawn.
    browser.find_element(By.ID, "clear").click()
    browser.find_element(By.ID, "predict-drawing").click()
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed() and "draw a digit first" in error.text
    assert browser.find_element(By.ID, "sent").get_attribute("data-grid") == json.dumps(
        grid, separators=(",", ":"))  # the last request's, unchanged
    assert console_errors(browser) == []


def test_the_tabular_form_is_prefilled_and_answers(browser, page_server, tmp_path):
    open_page(browser, page_server.url)
    cards = browser.find_elements(By.CSS_SELECTOR, ".card")
    assert {card.get_attribute("data-model") for card in cards} == {
        "digits-cnn", "digits-mlp", "wine-mlp"}
    wine_card = browser.find_element(By.ID, "card-wine-mlp").text
    assert "held-out accuracy" in wine_card and "sklearn.datasets.load_wine" in wine_card
    choose(browser, "wine-mlp")
    metadata = httpx.get(page_server.url + "/models/wine-mlp", timeout=10).json()
    fields = browser.find_elements(By.CSS_SELECTOR, "#fields input")
    labels = [label.text for label in browser.find_elements(By.CSS_SELECTOR, "#fields label")]
    assert labels == metadata["features"]
    assert [float(field.get_attribute("value")) for field in fields] == metadata["example"]
    fields[-1].clear()
    fields[-1].send_keys("500")  # proline: a different wine than the example
    browser.find_element(By.ID, "predict-form").click()
    assert wait_answer(browser) == "done"
    values = json.loads(browser.find_element(By.ID, "sent").get_attribute("data-grid"))
    assert values == [*metadata["example"][:-1], 500]
    shown = browser.find_element(By.ID, "top-label").text
    assert shown == predict_label(page_server.url, "wine-mlp", values)
    bars = browser.find_element(By.ID, "attribution-bars")
    assert bars.is_displayed()
    assert len(bars.find_elements(By.CSS_SELECTOR, ".bar")) == 13
    screenshot(browser, tmp_path, "demo-tabular-wine-mlp")
    assert console_errors(browser) == []


def test_with_an_api_key_the_page_shows_the_401_then_works(browser, tmp_path, digits):
    env = server_env(api_key="page-key")
    with run_server(tmp_path, env=env) as server:
        open_page(browser, server.url)
        assert browser.find_element(By.ID, "auth").is_displayed()
        choose(browser, "digits-mlp")
        example = '#examples button[data-index="4"]'
        browser.find_element(By.CSS_SELECTOR, example).click()
        assert wait_answer(browser) == "error"
        error = browser.find_element(By.ID, "error")
        assert error.is_displayed() and error.text.startswith("401 Unauthorized")
        assert "API key" in error.text
        assert not browser.find_element(By.ID, "result").is_displayed()
        screenshot(browser, tmp_path, "demo-401")
        # Chromium logs every 4xx resource as an error: that one is expected, no other.
        assert console_errors(browser, allowed=["status of 401"]) == []

        browser.find_element(By.ID, "api-key").send_keys("page-key")
        browser.find_element(By.CSS_SELECTOR, example).click()
        assert wait_answer(browser) == "done"
        assert not error.is_displayed()
        grid = json.loads(browser.find_element(By.ID, "sent").get_attribute("data-grid"))
        shown = browser.find_element(By.ID, "top-label").text
        assert shown == predict_label(server.url, "digits-mlp", grid, key="page-key")
        assert browser.find_element(By.ID, "heatmap").is_displayed()
        assert "Authorization: Bearer $NNSERVE_API_KEY" in browser.find_element(By.ID,
                                                                                "curl").text
        # Kept for the tab's session only: sessionStorage, never localStorage or a cookie.
        assert browser.execute_script(
            "return [sessionStorage.getItem('nnserve-api-key'), localStorage.length, "
            "document.cookie]") == ["page-key", 0, ""]
        assert console_errors(browser) == []
