"""The web console in a real Chromium (Debian's chromium and chromium-driver, driven by Selenium): the page
lists a running Linux guest, its console shows the guest's output, a command typed into the browser runs
in the guest, the counters are charted live, a snapshot and a modes comparison run from the page, the stop
button stops it. Screenshots are saved beside the test's files."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("selenium", reason="needs selenium (pip install -e '.[test]')")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not shutil.which("chromium") or not shutil.which("chromedriver"),
                                 reason="needs Debian's chromium and chromium-driver")]

from tests.helpers.daemon import Daemon, ok  # noqa: E402

STATIC = Path(__file__).resolve().parents[2] / "src/virtkit/daemon/static/vendor/xterm/xterm.js"


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1280,900", f"--user-data-dir={tmp_path / 'chrome'}"):
        opts.add_argument(a)
    opts.binary_location = shutil.which("chromium")
    drv = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    yield drv
    drv.quit()


def wait(pred, timeout=60, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            v = pred()
        except Exception:  # noqa: BLE001 (an element not there yet)
            v = None
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_page_lists_a_vm_its_console_runs_a_command_and_stop_stops_it(tmp_path, browser, guest_images):
    if not STATIC.exists():
        pytest.skip("the web console's assets are not fetched (scripts/vendor-web.sh: needs npm)")
    from selenium.webdriver.common.by import By

    d = Daemon(tmp_path)
    d.start()
    try:
        cfg = {"board": "riscv64-virt", "kernel": str(guest_images.kernel), "initrd": str(guest_images.initrd),
               "firmware": str(guest_images.firmware), "memory": "128M"}
        ok(d.unix.post("/vms", json={"name": "web1", "config": cfg}), 201)
        ok(d.unix.post("/vms/web1/start"))
        token = d.token("browser", "operate")
        browser.get(f"http://127.0.0.1:{d.port}/?token={token}")
        state = wait(lambda: browser.find_element(By.CSS_SELECTOR, 'tr[data-vm="web1"] td.state').text == "running",
                     what="web1 running in the table")
        assert state and "token=" not in browser.current_url  # the token left the address bar
        assert browser.find_element(By.ID, "who").text == "browser (operate)"
        browser.save_screenshot(str(tmp_path / "inventory.png"))
        browser.find_element(By.CSS_SELECTOR, 'button[data-action="console"][data-vm="web1"]').click()
        rows = lambda: browser.find_element(By.CSS_SELECTOR, "#terminal .xterm-rows").text  # noqa: E731
        box = wait(lambda: browser.find_element(By.CSS_SELECTOR, "#terminal .xterm-helper-textarea"),
                   what="the terminal")
        deadline = time.monotonic() + 120
        while "vk-42" not in rows() and time.monotonic() < deadline:  # typed again until the shell is up
            box.send_keys("echo vk-$((6*7))\n")
            for _ in range(15):
                if "vk-42" in rows():
                    break
                time.sleep(0.2)
        assert "vk-42" in rows(), rows()[-2000:]
        browser.save_screenshot(str(tmp_path / "console.png"))
        # live charts of the VM's counters: MIPS, exits by reason, I/O
        browser.find_element(By.CSS_SELECTOR, 'button[data-action="stats"][data-vm="web1"]').click()
        wait(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#legend-exits li")) >= 1, what="exits by reason")
        wait(lambda: browser.find_element(By.ID, "chart-mips").get_attribute("aria-label").startswith("MIPS: MIPS"),
             what="the MIPS chart")
        assert browser.find_elements(By.CSS_SELECTOR, "#chart-exits polyline")
        browser.save_screenshot(str(tmp_path / "counters.png"))
        # a snapshot from the page: a task, then the snapshot's row
        browser.find_element(By.CSS_SELECTOR, 'button[data-action="snapshot"][data-vm="web1"]').click()
        alert = wait(lambda: browser.switch_to.alert, what="the snapshot name prompt")
        alert.send_keys("from-the-page")
        alert.accept()
        wait(lambda: "from-the-page" in browser.find_element(By.ID, "snapshots").text, timeout=120,
             what="the snapshot in the list")
        wait(lambda: "succeeded" in browser.find_element(By.ID, "tasks").text, what="the task succeeded")
        # the modes comparison, one mode, as a table and a chart
        for box in browser.find_elements(By.CSS_SELECTOR, 'input[name="mode"]'):
            if box.is_selected() != (box.get_attribute("value") == "paravirt"):
                box.click()
        browser.find_element(By.ID, "modes-run").click()
        wait(lambda: "paravirt" in browser.find_element(By.ID, "modes").text, timeout=300, what="the modes table")
        assert browser.find_elements(By.CSS_SELECTOR, "#chart-modes rect")
        browser.save_screenshot(str(tmp_path / "modes.png"))
        browser.find_element(By.CSS_SELECTOR, 'button[data-action="stop"][data-vm="web1"]').click()
        wait(lambda: ok(d.unix.get("/vms/web1"))["state"] == "stopped", timeout=90, what="web1 stopped")
        wait(lambda: browser.find_element(By.CSS_SELECTOR, 'tr[data-vm="web1"] td.state').text == "stopped",
             what="the table to say stopped")
        browser.save_screenshot(str(tmp_path / "stopped.png"))
        calls = [(a["who"], a["path"]) for a in ok(d.unix.get("/audit"))["items"]]
        assert ("token:browser", "/vms/web1/stop") in calls
        print(f"screenshots: {tmp_path}/*.png")
    finally:
        d.close()
