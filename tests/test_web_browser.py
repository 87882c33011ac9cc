"""The web view in a real headless Chromium: the served lineage page and the static report.

Needs Debian's `chromium` and `chromium-driver` and the `selenium` package. CI installs them and
sets REGISTRY_REQUIRE_CHROMIUM=1, which turns their absence from a skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from web_fixture import fill

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _require_browser() -> None:
    missing = [name for name, found in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if not found]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium")
    if missing:
        message = f"needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("REGISTRY_REQUIRE_CHROMIUM") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One headless Chromium for the module's tests (each test loads its own pages)."""
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
                 "--window-size=1300,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def filled_sqlite(sqlite_url, tiny_family, tmp_path, monkeypatch):
    from registry.store import open_registry

    with open_registry(sqlite_url, upgrade=True) as reg:
        return fill(reg, tiny_family, tmp_path / "disk", monkeypatch)


@pytest.fixture
def served(sqlite_url, filled_sqlite, tmp_path):
    """`registry serve` in its own process, as a user starts it."""
    for attempt in range(3):
        port = _free_port()
        log = tmp_path / f"serve-{attempt}.log"  # a file: an unread pipe could fill and block the server
        with open(log, "wb") as out:
            process = subprocess.Popen([sys.executable, "-m", "registry.command.cli", "--db", sqlite_url, "serve",
                                        "--port", str(port)], stdout=out, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 120  # a fresh interpreter's imports take long on a loaded machine
        while process.poll() is None:
            try:
                urllib.request.urlopen(base + "index.html", timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    process.kill()
                    process.wait()
                    raise AssertionError(f"registry serve did not answer: {log.read_text(errors='replace')}")
                time.sleep(0.1)
        if process.poll() is None:
            break
        # The free port found above was taken before serve bound it (exit 2, one line): another port.
        assert process.returncode == 2 and attempt < 2, f"registry serve did not start: {log.read_text(errors='replace')}"
    yield base
    process.terminate()
    process.wait(timeout=30)


def _follow_chain_to_a_checkpoint(browser, start_url, filled, screenshot):
    from selenium.webdriver.common.by import By

    browser.get(start_url)
    browser.find_element(By.LINK_TEXT, "Lineage").click()
    browser.find_element(By.CSS_SELECTOR, f'tr[data-root="{filled.root}"] a').click()
    nodes = {element.get_attribute("data-node") for element in browser.find_elements(By.CSS_SELECTOR, "g.node")}
    assert {f"run-{filled.root}", f"run-{filled.runs[-1]}", f"run-{filled.converted_run}",
            f"checkpoint-{filled.converted_checkpoint}", f"collapsed-{filled.runs[2]}"} <= nodes
    assert f"run-{filled.runs[3]}" not in nodes  # collapsed
    graph = browser.find_element(By.CSS_SELECTOR, "svg.lineage")
    assert graph.size["height"] > 200 and graph.size["width"] > 200  # drawn, not an empty box
    browser.save_screenshot(str(screenshot))
    node = browser.find_element(By.CSS_SELECTOR, f'g[data-node="checkpoint-{filled.converted_checkpoint}"]')
    browser.execute_script("arguments[0].parentNode.dispatchEvent(new MouseEvent('click', {bubbles: true}))", node)
    assert browser.find_element(By.TAG_NAME, "h1").text == "Checkpoint wide.safetensors"
    assert "tiny_widen" in browser.find_element(By.TAG_NAME, "main").text


def test_served_lineage_in_chromium(browser, served, filled_sqlite, tmp_path):
    from selenium.webdriver.common.by import By

    shot = tmp_path / "lineage.png"
    _follow_chain_to_a_checkpoint(browser, served, filled_sqlite, shot)
    assert shot.stat().st_size > 10_000
    browser.get(served + f"chain-{filled_sqlite.root}.html")
    browser.find_element(By.ID, "expand").click()
    expanded = {e.get_attribute("data-node") for e in browser.find_elements(By.CSS_SELECTOR, "g.node")}
    assert {f"run-{run_id}" for run_id in filled_sqlite.runs} <= expanded
    browser.get(served + "search.html")
    box = browser.find_element(By.ID, "q")
    box.send_keys("wide.safetensors")
    box.submit()
    assert "wide.safetensors" in browser.find_element(By.ID, "results").text


def test_static_report_in_chromium(browser, sqlite_url, filled_sqlite, tmp_path):
    from selenium.webdriver.common.by import By

    out = tmp_path / "report"
    done = subprocess.run([sys.executable, "-m", "registry.command.cli", "--db", sqlite_url, "report", "-o", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    moved = tmp_path / "copied-to-a-laptop"
    shutil.copytree(out, moved)  # relative links: the copy works anywhere
    _follow_chain_to_a_checkpoint(browser, (moved / "index.html").as_uri(), filled_sqlite, tmp_path / "static.png")
    browser.get((moved / "search.html").as_uri() + "?q=converted")
    assert "wide.safetensors" in browser.find_element(By.ID, "results").text
    assert browser.find_element(By.TAG_NAME, "header").value_of_css_property("display") == "flex"  # CSS loaded
