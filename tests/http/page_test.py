#!/usr/bin/env python3
"""The gateway's web page in a real browser: Debian's chromium, headless, driven by selenium
(PyPI, in the private venv clients_test.py makes) through Debian's chromium-driver. It makes an
image with the daemon's cut random models, watches the progress bar move, cancels a run, and
saves a screenshot as $DS_BUILD_ROOT/http-page.png. Exit 77 (skipped) without chromium,
chromium-driver or PyPI.

Run by tests/http/test_http_gateway.c --page: usage: page_test.py page OPEN_URL KEYED_URL KEY
"""
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clients_test import ensure_venv  # noqa: E402
from gateway_test import check, finish  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def wait(what, cond, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = cond()
            if value:
                return value
        except Exception:  # noqa: BLE001 - the page may be mid-update
            pass
        time.sleep(0.05)
    check(False, f"timed out waiting for {what}")
    return None


def run(base):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        browser.get(base + "/")
        check("https://" not in browser.page_source and "http://" not in browser.page_source,
              "the page loads something from elsewhere")
        el = lambda id_: browser.find_element(By.ID, id_)  # noqa: E731
        wait("the pipeline list", lambda: "qwen_image" in [o.text for o in el("pipeline").find_elements(By.TAG_NAME, "option")])

        def fill(steps):
            for id_, value in (("width", "64"), ("height", "64"), ("steps", str(steps)), ("cfg", "1")):
                el(id_).clear()
                el(id_).send_keys(value)

        # The DiT by id, from the role's list of loaded models.
        dit = el("role-dit")
        ids = [o.get_attribute("value") for o in dit.find_elements(By.TAG_NAME, "option")]
        check(len(ids) == 2 and ids[0] == "" and ids[1].startswith("m"), f"models for the dit: {ids}")
        dit.find_elements(By.TAG_NAME, "option")[-1].click()
        el("prompt").send_keys("a red bicycle")
        el("negative").send_keys("blurry")
        fill(12)
        el("random").click()
        el("seed").clear()
        el("seed").send_keys("7")
        el("generate").click()
        values = []
        deadline = time.time() + 300
        while time.time() < deadline:
            v = float(el("bar").get_attribute("value"))
            if not values or v != values[-1]:
                values.append(v)
            if browser.find_elements(By.ID, "output"):
                break
            time.sleep(0.03)
        inner = [v for v in values if 0 < v < 100]
        check(len(inner) >= 3 and inner == sorted(inner), f"the progress bar did not move: {values}")
        width = wait("the image", lambda: browser.execute_script(
            "const i = document.getElementById('output'); return i && i.complete && i.naturalWidth"))
        check(width == 64, f"image width {width}")
        link = el("download")
        check(link.get_attribute("href").startswith("blob:") and link.get_attribute("download") == "diffsynth-7.png",
              f"download link {link.get_attribute('href')} {link.get_attribute('download')}")
        check(el("status").text.startswith("done"), f"status {el('status').text!r}")
        shot = os.path.join(os.environ.get("DS_BUILD_ROOT", "."), "http-page.png")
        browser.save_screenshot(shot)
        print("screenshot:", shot, flush=True)
        check(len(browser.find_elements(By.CSS_SELECTOR, "#history figure")) == 1, "history")

        # A long run, cancelled from the page.
        fill(1000)
        el("generate").click()
        wait("progress of the long run", lambda: float(el("bar").get_attribute("value")) > 0)
        el("cancel").click()
        wait("the cancelled status", lambda: "cancelled" in el("status").text)
        check(el("generate").is_enabled() and not el("cancel").is_enabled(), "buttons after cancel")
        check(len(browser.find_elements(By.CSS_SELECTOR, "#history figure")) == 1, "history after cancel")
    finally:
        browser.quit()


def main():
    phase, base = sys.argv[1], sys.argv[2]
    if phase == "page":
        for path in (CHROMIUM, DRIVER):
            if not os.access(path, os.X_OK):
                print(f"SKIP: {path} is missing (Debian: apt-get install chromium chromium-driver)", flush=True)
                sys.exit(77)
        python = ensure_venv()
        os.execv(python, [python, os.path.abspath(__file__), "inner", *sys.argv[2:]])
    run(base)
    finish()


if __name__ == "__main__":
    main()
