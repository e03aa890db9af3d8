#!/usr/bin/python3
"""The dashboard in a real headless browser (Debian's chromium, driven by
Selenium through chromium-driver). Run by tests/dashboard_browser.rs
against a live farm: dashboard.py URL TOKEN SCREENSHOT_DIR.

Checks: the page loads and shows every job's row with its state; a failed
job is shown in red; killing a worker makes its restart count rise on the
page without a reload; an action without the token is refused and with it
done. Then takes the screenshots (1280x800 and a 390x844 phone).
"""
import json
import os
import signal
import sys
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

URL, TOKEN, SHOTS = sys.argv[1], sys.argv[2], sys.argv[3]
WAIT = 30  # seconds: conditions, not sleeps; generous for a busy 2-CPU machine


def status():
    with urllib.request.urlopen(URL + "api/status", timeout=10) as response:
        return json.load(response)


def fail(message):
    print("FAIL: " + message, file=sys.stderr)
    sys.exit(1)


# The page redraws its table at every update: an element found a moment ago
# may be gone; look again.
REDRAWN = (NoSuchElementException, StaleElementReferenceException, ValueError)


def wait_for(driver, what, condition):
    try:
        return WebDriverWait(driver, WAIT, poll_frequency=0.1, ignored_exceptions=REDRAWN).until(
            lambda d: condition(d))
    except Exception as e:  # TimeoutException, with the page's state for the log
        fail(f"{what} (after {WAIT}s): {e!r}\n{driver.find_element(By.TAG_NAME, 'body').text[:3000]}")


def cell(driver, job, css):
    return driver.find_element(By.CSS_SELECTOR, f'tr[data-job="{job}"]:not(.slot) td.{css}')


options = Options()
options.binary_location = "/usr/bin/chromium"
for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1280,800", "--hide-scrollbars", "--force-device-scale-factor=1"]:
    options.add_argument(arg)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
try:
    driver.set_window_size(1280, 800)
    driver.get(URL)
    # Rows for every job, with their states.
    wait_for(driver, "the steady job running", lambda d: cell(d, "steady", "state").text == "running")
    wait_for(driver, "the crasher failed", lambda d: cell(d, "crasher", "state").text == "failed")
    crasher = lambda d: d.find_element(By.CSS_SELECTOR, 'tr[data-job="crasher"]:not(.slot)')
    classes = wait_for(driver, "the failed row's classes", lambda d: crasher(d).get_attribute("class") + " ")
    if "failed" not in classes.split():
        fail("the failed job's row is not marked failed: " + classes)
    colour = wait_for(driver, "the failed badge's colour", lambda d: crasher(d).find_element(
        By.CSS_SELECTOR, "td.state .badge").value_of_css_property("background-color"))
    if colour not in ("rgba(198, 40, 40, 1)", "rgb(198, 40, 40)"):
        fail(f"the failed job's badge is {colour}, not red")
    slots = wait_for(driver, "the slot rows", lambda d: str(len(d.find_elements(By.CSS_SELECTOR, 'tr.slot[data-job="steady"]'))))
    if slots != "2":
        fail(f"{slots} slot rows for steady (replicas 2)")

    # A worker killed: its restart count rises on the page, no reload.
    driver.execute_script("window.__loaded_once = 42;")
    restarts = lambda d: int(cell(d, "steady", "restarts").text)
    before = wait_for(driver, "the restart count", lambda d: str(restarts(d)))
    before = int(before)
    pid = status()["steady"]["state"]["slots"][0]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(driver, "the restart count to rise", lambda d: restarts(d) > before)
    if driver.execute_script("return window.__loaded_once;") != 42:
        fail("the page was reloaded")
    wait_for(driver, "steady running again", lambda d: cell(d, "steady", "state").text == "running")

    # Actions: refused without the token, done with it.
    restart = lambda d: d.find_element(By.CSS_SELECTOR, 'tr[data-job="steady"]:not(.slot) button[data-verb="restart"]')
    wait_for(driver, "the actions' buttons", lambda d: restart(d).is_displayed())
    wait_for(driver, "a click on restart", lambda d: restart(d).click() or True)
    wait_for(driver, "a refusal without the token",
             lambda d: d.find_element(By.ID, "message").text.startswith("refused (401)"))
    before = int(wait_for(driver, "the restart count", lambda d: str(restarts(d))))
    driver.find_element(By.ID, "token").send_keys(TOKEN)
    wait_for(driver, "a click on restart", lambda d: restart(d).click() or True)
    wait_for(driver, "the restart done with the token",
             lambda d: d.find_element(By.ID, "message").text == "Scheduled immediate restart of job steady")
    wait_for(driver, "its restarts counted", lambda d: restarts(d) >= before + 2)
    wait_for(driver, "steady running again", lambda d: cell(d, "steady", "state").text == "running")
    driver.find_element(By.ID, "token").clear()
    driver.execute_script("document.getElementById('message').textContent = '';")

    # Screenshots, once the farm card and sparklines have data.
    wait_for(driver, "the cycles card", lambda d: d.find_element(By.ID, "c-cycles").text not in ("–", ""))
    wait_for(driver, "the sparklines", lambda d: d.execute_script(
        "return document.querySelectorAll('.card svg polyline').length === 3"))
    os.makedirs(SHOTS, exist_ok=True)
    driver.save_screenshot(os.path.join(SHOTS, "dashboard-1280x800.png"))
    driver.set_window_size(390, 844)
    wait_for(driver, "the phone layout", lambda d: d.execute_script("return window.innerWidth") <= 390)
    # Two animation frames: the new layout is painted.
    driver.execute_async_script("requestAnimationFrame(() => requestAnimationFrame(arguments[0]))")
    driver.save_screenshot(os.path.join(SHOTS, "dashboard-390x844.png"))
    print("ok")
finally:
    driver.quit()
