"""The MLflow UI, seen in headless Chromium: a sweep's parent, its children and their figures."""

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_sweep import run, runs_of, sweep_overrides

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                       reason="needs Debian's chromium and chromium-driver (.ci/run has them)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ui(tiny_cifar, tmp_path):
    """A store holding a 2-job sweep, served by a real `mlflow server` on 127.0.0.1."""
    done = run("cifar10-mlp", ["-m", *sweep_overrides(tiny_cifar, tmp_path),
                               "model.hidden=[16],[8]"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                assert server.poll() is None, "mlflow server exited"
                assert time.monotonic() < deadline, "mlflow server did not answer in 60 s"
                time.sleep(0.5)
        yield url, f"sqlite:///{tmp_path / 'mlflow.db'}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1600,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, xpath, timeout=30):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as shown
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(
        shown.visibility_of_element_located((By.XPATH, xpath)))


def test_runs_page_shows_the_sweep_parent_its_children_and_the_confusion_matrix(ui, browser):
    from selenium.webdriver.common.by import By

    url, uri = ui
    client, (parent,), children = runs_of(uri, "tests")
    experiment = client.get_experiment_by_name("tests")
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert len(children) == 2

    browser.get(f"{url}/#/experiments/{experiment.experiment_id}/runs")
    parent_link = wait_for(browser, f"//a[contains(@href, '{parent.info.run_id}')]")
    assert parent_link.text == "sweep"
    # children are folded under their parent until its row is expanded
    assert not browser.find_elements(By.XPATH, "//a[normalize-space()='job 0']")
    row = parent_link.find_element(By.XPATH, "./ancestor::div[@role='gridcell'][1]")
    row.find_element(By.TAG_NAME, "button").click()
    for child in children:
        link = wait_for(browser, f"//a[contains(@href, '{child.info.run_id}')]")
        assert link.text == child.info.run_name

    best = client.get_run(parent.info.run_id).data.tags["best_run_id"]
    browser.get(f"{url}/#/experiments/{experiment.experiment_id}/runs/{best}/artifacts")
    wait_for(browser, "//*[normalize-space(text())='plots']").click()
    wait_for(browser, "//*[normalize-space(text())='confusion_matrix.png']").click()
    wait_for(browser, "//*[normalize-space(text())='plots/confusion_matrix.png']")
    image = wait_for(browser, "//img[starts-with(@src, 'blob:')]")  # the figure, fetched
    assert browser.execute_script("return arguments[0].naturalWidth", image) > 100
