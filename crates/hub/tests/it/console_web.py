"""The web console in a real headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium with the driver path given explicitly). Background networking is off, so every
request Chromium makes is one the page asked for.

Usage: console_web.py BASE_URL TOKEN DEVICE_PATH ALERT_ID SCREENSHOT_DIR
Logs in with the token, loads each page at phone and desktop widths, acknowledges an alert
through the alerts page's form, submits the device page's configuration editor with an invalid
value (the error must show; the caller checks nothing was saved) and then a valid one
(snapshotFrequency PT7H; the caller checks it reaches the agent), and checks: no console errors, no failed requests (HTTP >= 400
or a network failure), no request to another origin, no sideways scrolling at phone width.
Prints one JSON object: {"pages": [...], "screenshots": [...]}; exits 1 with the problems.
"""

import json
import os
import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.support.ui import WebDriverWait

base, token, device_path, alert_id, shots = sys.argv[1:6]
os.makedirs(shots, exist_ok=True)

options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for arg in [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--window-size=1280,900",
]:
    options.add_argument(arg)
options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
problems = []
pages = []
screenshots = []


def check_logs(where):
    for entry in driver.get_log("browser"):
        if entry.get("level") in ("SEVERE", "ERROR", "WARNING"):
            problems.append(f"{where}: console {entry.get('level')}: {entry.get('message')}")
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        method, params = message.get("method"), message.get("params", {})
        if method == "Network.requestWillBeSent":
            url = params.get("request", {}).get("url", "")
            if not (url.startswith(base) or url.startswith("data:")):
                problems.append(f"{where}: request to another origin: {url}")
        elif method == "Network.responseReceived":
            response = params.get("response", {})
            if response.get("status", 0) >= 400:
                problems.append(f"{where}: {response.get('status')} for {response.get('url')}")
        elif method == "Network.loadingFailed":
            problems.append(f"{where}: request failed: {params.get('errorText')}")


def visit(name, path, must_contain):
    for width, height, label in ((1280, 900, "desktop"), (390, 844, "phone")):
        driver.set_window_size(width, height)
        driver.get(base + path)
        text = driver.find_element(By.TAG_NAME, "body").text
        for needle in must_contain:
            if needle not in text:
                problems.append(f"{name} ({label}): does not show {needle!r}")
        if label == "phone":
            overflow = driver.execute_script(
                "return document.documentElement.scrollWidth - window.innerWidth")
            if overflow > 0:
                culprit = driver.execute_script(
                    "const w = window.innerWidth;"
                    "for (const e of document.querySelectorAll('body *')) {"
                    "  if (e.closest('.scroll')) continue;"
                    "  if (e.getBoundingClientRect().right > w) return e.tagName + '.' + e.className + ': ' + (e.textContent || '').slice(0, 60);"
                    "}"
                    "return '';")
                problems.append(f"{name} (phone): the page scrolls sideways by {overflow}px ({culprit})")
        shot = os.path.join(shots, f"{name}-{label}.png")
        driver.save_screenshot(shot)
        screenshots.append(shot)
        check_logs(f"{name} ({label})")
    pages.append({"page": name, "title": driver.title})


try:
    # Not logged in: the login page.
    driver.get(base + "/")
    if "/login" not in driver.current_url:
        problems.append(f"without a session / went to {driver.current_url}, not /login")
    visit("login", "/login", ["API token"])
    driver.set_window_size(1280, 900)
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "form.login button").click()
    # Polled until the next page is in; a lookup that races the navigation is retried.
    settle = WebDriverWait(driver, 10, ignored_exceptions=(WebDriverException,))
    settle.until(lambda d: not d.current_url.endswith("/login"))
    cookies = {c["name"]: c for c in driver.get_cookies()}
    session = cookies.get("tg_session")
    if not session or not session.get("httpOnly") or session.get("sameSite") != "Strict":
        problems.append(f"session cookie is not HttpOnly + SameSite=Strict: {session}")
    check_logs("login form")

    device = device_path.rsplit("/modules/", 1)[0].split("/devices/", 1)[-1]
    visit("overview", "/", ["Fleet", device, "Events in the last 24 hours"])
    visit("device", device_path, ["Alerts", "Configuration: desired and reported", "Recommendations", "Events",
                                  "highPriorityMessageFrequency", "Edit the desired configuration",
                                  "Latest snapshots", "Listening ports", "Users", "Firewall rules",
                                  "Baseline results", "System information", "Hardware",
                                  "Processes started", "Connections"])
    visit("alerts", "/alerts", ["Alerts", "Possible reverse shell"])

    # Acknowledge the alert through its form.
    driver.set_window_size(1280, 900)
    driver.get(base + "/alerts")
    driver.find_element(By.CSS_SELECTOR, f"form[action='/alerts/{alert_id}/ack'] button").click()
    # The answer redirects back to the alerts page, where the alert has no ack form any more.
    settle.until(lambda d: d.execute_script("return document.readyState") == "complete"
                 and not d.find_elements(By.CSS_SELECTOR, f"form[action='/alerts/{alert_id}/ack']"))
    driver.get(base + "/alerts?state=acknowledged")
    acknowledged = driver.find_elements(By.CSS_SELECTOR, f"form[action='/alerts/{alert_id}/close']")
    if not acknowledged or driver.find_elements(By.CSS_SELECTOR, f"form[action='/alerts/{alert_id}/ack']"):
        problems.append(f"alert {alert_id} is not acknowledged after the form")
    visit("alerts-acknowledged", "/alerts?state=acknowledged", ["acknowledged"])
    check_logs("acknowledge")

    # The configuration editor: an invalid value shows the agent's validation error.
    def submit_config(change, label):
        driver.set_window_size(1280, 900)
        driver.get(base + device_path)
        area = driver.find_element(By.ID, "config")
        config = json.loads(area.get_attribute("value") or "{}")
        change(config)
        driver.execute_script("arguments[0].value = arguments[1];", area, json.dumps(config, indent=2))
        driver.find_element(By.CSS_SELECTOR, "form.editor button").click()
        settle.until(lambda d: d.execute_script("return document.readyState") == "complete"
                     and d.find_elements(By.CSS_SELECTOR, ".errors, .saved"))
        driver.find_element(By.ID, "editor").location_once_scrolled_into_view
        shot = os.path.join(shots, f"device-editor-{label}.png")
        driver.save_screenshot(shot)
        screenshots.append(shot)
        check_logs(f"editor ({label})")

    submit_config(lambda c: c.update({"snapshotFrequency": {"value": "every hour"}}), "invalid")
    errors = driver.find_elements(By.CSS_SELECTOR, ".errors")
    if not errors or "snapshotFrequency" not in errors[0].text:
        problems.append(f"the invalid configuration shows no error naming snapshotFrequency: "
                        f"{errors[0].text if errors else driver.find_element(By.TAG_NAME, 'body').text[:300]}")
    if driver.find_elements(By.CSS_SELECTOR, ".saved"):
        problems.append("the invalid configuration says it was saved")
    submit_config(lambda c: c.update({"snapshotFrequency": {"value": "PT7H"}}), "valid")
    saved = driver.find_elements(By.CSS_SELECTOR, ".saved")
    if not saved or driver.find_elements(By.CSS_SELECTOR, ".errors"):
        problems.append(f"the valid configuration was not saved: "
                        f"{driver.find_element(By.TAG_NAME, 'body').text[:300]}")
except Exception as e:  # Reported with the rest, so the test shows what was seen.
    problems.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
finally:
    driver.quit()

print(json.dumps({"pages": pages, "screenshots": screenshots, "problems": problems}))
sys.exit(1 if problems else 0)
