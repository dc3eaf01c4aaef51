#!/usr/bin/env python3
"""Drives `embq console` in headless Chromium (Debian's chromium + chromium-driver, Selenium).

Run by tests/console_browser.rs, which prepares the store, starts the console and checks the
database afterwards. Usage: console.py URL SCREENSHOT_DIR SCENARIO_JSON. Prints one JSON object
with what the pages showed; a page that is not as expected raises, so the exit code is non-zero.
"""
import json
import sys

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

WAIT_S = 15


def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,1000"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def no_alert(d):
    """True unless a JavaScript alert opens within a second (an injected script would open one)."""
    try:
        WebDriverWait(d, 1).until(EC.alert_is_present())
        return False
    except TimeoutException:
        return True


def page(d, url, title):
    d.get(url)
    WebDriverWait(d, WAIT_S).until(EC.presence_of_element_located((By.TAG_NAME, "h1")))
    h1 = d.find_element(By.TAG_NAME, "h1").text
    assert h1.startswith(title), f"{url}: heading {h1!r}, wanted {title!r}"


def wait_for(d, element_id):
    WebDriverWait(d, WAIT_S).until(EC.presence_of_element_located((By.ID, element_id)))
    return d.find_element(By.ID, element_id).text


def main():
    base, shots, scenario = sys.argv[1].rstrip("/"), sys.argv[2], json.loads(sys.argv[3])
    out = {}
    d = browser()
    try:
        # Overview: the counts as the page shows them.
        page(d, base + "/", "Overview")
        out["counts"] = {
            td.get_attribute("data-state"): int(td.text) for td in d.find_elements(By.CSS_SELECTOR, "td[data-state]")
        }
        out["charts"] = len(d.find_elements(By.CSS_SELECTOR, "figure.chart svg"))
        d.save_screenshot(f"{shots}/overview.png")

        # Jobs, filtered by state and error text.
        page(d, base + "/jobs?state=dead&error=http+400", "Jobs")
        out["filtered_rows"] = len(d.find_elements(By.CSS_SELECTOR, "table.jobs tr")) - 1
        page(d, base + "/jobs", "Jobs")
        d.save_screenshot(f"{shots}/jobs.png")

        # The hostile job renders as text, and no script runs.
        page(d, f"{base}/jobs/{scenario['xss_id']}", "Job")
        out["xss_text"] = d.find_element(By.ID, "text").text
        out["xss_images"] = len(d.find_elements(By.CSS_SELECTOR, "main img"))
        out["xss_no_alert"] = no_alert(d)
        out["vector"] = d.find_element(By.ID, "vector").text
        d.save_screenshot(f"{shots}/job.png")

        # Dead letters: retry one ticked job after the confirmation.
        page(d, base + "/dead", "Dead letters")
        d.save_screenshot(f"{shots}/dead.png")
        d.find_element(By.CSS_SELECTOR, f"input[name=id][value='{scenario['retry_id']}']").click()
        d.find_element(By.CSS_SELECTOR, "#selection button[value=retry]").click()
        out["retry_confirm_count"] = int(wait_for(d, "count"))
        d.find_element(By.ID, "confirm").click()
        out["retry_result"] = wait_for(d, "result")

        # Purge one whole group; the confirmation names its size.
        page(d, base + "/dead", "Dead letters")
        for row in d.find_elements(By.CSS_SELECTOR, "table.groups tr"):
            if scenario["purge_error"] in row.text:
                row.find_element(By.CSS_SELECTOR, "button[value=purge]").click()
                break
        else:
            raise AssertionError(f"no group {scenario['purge_error']!r} on the page")
        out["purge_confirm_count"] = int(wait_for(d, "count"))
        out["purge_question"] = d.find_element(By.ID, "question").text
        d.save_screenshot(f"{shots}/confirm.png")
        d.find_element(By.ID, "confirm").click()
        out["purge_result"] = wait_for(d, "result")

        # An action whose form lacks the CSRF token is refused: the form is edited to be what a
        # forged request without the token would send.
        page(d, base + "/dead", "Dead letters")
        d.execute_script("for (const e of document.querySelectorAll('input[name=csrf]')) e.remove();")
        d.find_element(By.CSS_SELECTOR, "#selection input[name=id]").click()
        d.find_element(By.CSS_SELECTOR, "#selection button[value=purge]").click()
        WebDriverWait(d, WAIT_S).until(EC.title_contains("Refused"))
        out["no_csrf_heading"] = d.find_element(By.TAG_NAME, "h1").text

        # Search shows the expected top hit.
        page(d, base + "/search?q=" + scenario["query"].replace(" ", "+"), "Search")
        hits = d.find_elements(By.CSS_SELECTOR, "ol.hits li")
        out["top_hit"] = hits[0].find_element(By.CSS_SELECTOR, ".key").text if hits else None
        d.save_screenshot(f"{shots}/search.png")

        # Live refresh swaps the overview's sections in without a reload.
        page(d, base + "/", "Overview")
        d.execute_script("window.__same_page = true;")
        WebDriverWait(d, WAIT_S).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-refreshed"))
        out["refreshed_in_place"] = d.execute_script("return window.__same_page === true;")
        out["csp_violations"] = [e["message"] for e in d.get_log("browser") if "Content Security Policy" in e["message"]]

        # On a phone-sized screen no page is wider than the screen (wide tables scroll inside).
        d.set_window_size(390, 844)
        out["phone_overflow"] = {}
        for path, title in (("/", "Overview"), ("/jobs", "Jobs"), (f"/jobs/{scenario['xss_id']}", "Job"),
                            ("/dead", "Dead letters"), ("/search?q=coffee", "Search")):
            page(d, base + path, title)
            out["phone_overflow"][path] = d.execute_script(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth;")
    finally:
        d.quit()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
