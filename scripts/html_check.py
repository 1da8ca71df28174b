#!/usr/bin/env python3
"""Open a grdr HTML report in headless Chromium and print what a reader's browser sees.

    html_check.py REPORT.html [--screenshot OUT.png] [--width 1280 --height 900]

`grdr report` writes one self-contained HTML file: a sortable results table and SVG
plots. Reading the file as text cannot show that it works in a browser, so this loads
it in Debian's Chromium (through selenium and Debian's chromedriver; nothing is
downloaded, no network) and prints ONE JSON object on stdout for a caller to assert on:

    title              document.title
    console            {"level", "message", "source"}: browser-log entries of level SEVERE
                       or WARNING (console.error/warn, failed loads, uncaught errors;
                       source "browser"), plus uncaught exceptions and unhandled
                       rejections caught by a hook installed before any page script
                       (source "exception": the same error may appear under both)
    requests           every URL the page requested (Network.requestWillBeSent)
    external_requests  those not file:, data:, about: or blob: (a self-contained
                       report has none)
    rows, points       the rows of `table#results tbody tr` and their data-point values
    figures            per `figure.plot`: its data-x-label/data-y-label, whether it holds
                       an inline <svg>, the svg's rendered width/height, its element count,
                       the textContent of its <text> elements, and whether the axis labels
                       are among them (substring match)
    sortable           the first `th[data-sort="number"]` of table#results clicked twice:
                       the column's cells (data-value, else text) after each click, with
                       each order judged numerically; null when there is no such header

With --screenshot it also writes a full-page PNG. Exits 0 whenever the page loaded,
whatever the checks found (the caller asserts); 2 when Chromium or chromedriver cannot
start or the page cannot be opened.
"""

import argparse
import base64
import json
import os
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

os.environ.setdefault("SE_OFFLINE", "true")  # never let selenium-manager fetch anything

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
LOCAL_SCHEMES = {"file", "data", "about", "blob"}

# Installed before any page script runs, so that exceptions thrown while loading count.
ERROR_HOOK = """
window.__htmlCheckErrors = [];
window.addEventListener('error', e => window.__htmlCheckErrors.push(
  {level: 'SEVERE', source: 'exception',
   message: (e.error && e.error.stack) || e.message || String(e)}));
window.addEventListener('unhandledrejection', e => window.__htmlCheckErrors.push(
  {level: 'SEVERE', source: 'exception',
   message: 'Unhandled rejection: ' + ((e.reason && e.reason.stack) || String(e.reason))}));
"""

FIGURES = """
return [...document.querySelectorAll('figure.plot')].map(fig => {
  const svg = fig.querySelector('svg');
  const box = svg ? svg.getBoundingClientRect() : null;
  return {
    x_label: fig.getAttribute('data-x-label'),
    y_label: fig.getAttribute('data-y-label'),
    svg: svg !== null,
    width: box ? box.width : 0,
    height: box ? box.height : 0,
    elements: svg ? svg.querySelectorAll('*').length : 0,
    texts: svg ? [...svg.querySelectorAll('text')].map(t => t.textContent) : [],
  };
});
"""

COLUMN = """
const col = arguments[0];
return [...document.querySelectorAll('table#results tbody tr')].map(tr => {
  const td = tr.cells[col];
  if (!td) return null;
  return td.hasAttribute('data-value') ? td.getAttribute('data-value') : td.textContent.trim();
});
"""


def fail(message):
    print(f"html_check: {message}", file=sys.stderr)
    sys.exit(2)


def start_browser(width, height):
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            fail(f"{path} not found (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    try:
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    except WebDriverException as err:
        fail(f"cannot start Chromium through chromedriver: {err.msg or err}")
    # The window size counts the (invisible) browser frame: pin the page's viewport itself.
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    return driver


def console_entries(driver):
    entries = [{"level": e["level"], "message": e["message"], "source": "browser"}
               for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    return entries + driver.execute_script("return window.__htmlCheckErrors || [];")


def requested_urls(driver):
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def order_of(values):
    """'ascending', 'descending', 'constant' or 'unsorted', comparing as numbers."""
    try:
        nums = [float(v) for v in values]
    except (TypeError, ValueError):
        return "not numeric"
    pairs = list(zip(nums, nums[1:]))
    if all(a == b for a, b in pairs):
        return "constant"
    if all(a <= b for a, b in pairs):
        return "ascending"
    if all(a >= b for a, b in pairs):
        return "descending"
    return "unsorted"


def sort_check(driver):
    headers = driver.find_elements(By.CSS_SELECTOR, 'table#results thead th[data-sort="number"]')
    if not headers:
        return None
    th = headers[0]
    col = driver.execute_script("return arguments[0].cellIndex;", th)
    result = {"column": th.text.strip()}
    for click in ("first", "second"):
        th.click()
        values = driver.execute_script(COLUMN, col)
        result[f"after_{click}"] = values
        result[f"{click}_order"] = order_of(values)
    return result


def figure(raw):
    """A figure's report, in a fixed key order, with the axis-label checks added."""
    fig = {k: raw[k] for k in ("x_label", "y_label", "svg", "width", "height", "elements", "texts")}
    for axis in ("x", "y"):
        label = fig[f"{axis}_label"]
        fig[f"has_{axis}_label"] = bool(label) and any(label in t for t in fig["texts"])
    return fig


def full_page_screenshot(driver, out):
    """The whole document (at least the window), not just the viewport."""
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    content, view = metrics["cssContentSize"], metrics["cssLayoutViewport"]
    width = max(content["width"], view["clientWidth"])
    height = max(content["height"], view["clientHeight"])
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
    })
    Path(out).write_bytes(base64.b64decode(shot["data"]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", help="local HTML file")
    parser.add_argument("--screenshot", metavar="OUT.png", help="write a full-page PNG screenshot")
    parser.add_argument("--width", type=int, default=1280, help="viewport width in CSS pixels (default 1280)")
    parser.add_argument("--height", type=int, default=900, help="viewport height in CSS pixels (default 900)")
    parser.add_argument("--settle", type=float, default=0.5,
                        help="seconds to wait after load for late requests and logs (default 0.5)")
    args = parser.parse_args()

    report = Path(args.report).resolve()
    if not report.is_file():
        fail(f"no such file: {args.report}")

    driver = start_browser(args.width, args.height)
    try:
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": ERROR_HOOK})
        try:
            driver.get(report.as_uri())
        except WebDriverException as err:
            fail(f"cannot open {report}: {err.msg or err}")
        time.sleep(args.settle)

        requests = requested_urls(driver)
        rows = driver.find_elements(By.CSS_SELECTOR, "table#results tbody tr")
        points = [r.get_attribute("data-point") for r in rows]
        figures = [figure(f) for f in driver.execute_script(FIGURES)]
        title = driver.title
        if args.screenshot:  # before sorting, so it shows the page as it opens
            full_page_screenshot(driver, args.screenshot)
        sortable = sort_check(driver)
        time.sleep(0.1)
        console = console_entries(driver)  # last: also catches errors of the sort clicks
    finally:
        driver.quit()
    json.dump({
        "title": title,
        "console": console,
        "requests": requests,
        "external_requests": [u for u in requests if urlparse(u).scheme not in LOCAL_SCHEMES],
        "rows": len(points),
        "points": points,
        "figures": figures,
        "sortable": sortable,
    }, sys.stdout)
    print()


if __name__ == "__main__":
    main()
