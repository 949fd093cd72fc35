"""The augmentation explorer in a real browser: JupyterLab on a local port, notebook 01 in headless Chromium.

papermill runs the notebooks without a front end, so it cannot tell whether the
widgets render, whether their readouts fit, or whether moving a slider redraws
the views. This test does what a learner does: opens 01 in JupyterLab, runs all
cells, drags a slider, and checks that the image changed.

It needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them). Where
they are missing it is skipped with that reason, except under
MOCOLAB_REQUIRE_BROWSER=1 (set by CI), where it fails instead.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import papermill
import pytest

from test_notebooks import NOTEBOOKS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
TOKEN = "mocolab-browser-test"


def need_browser():
    if CHROMIUM and CHROMEDRIVER:
        return
    message = (
        "headless Chromium and ChromeDriver are needed (Debian: apt-get install chromium chromium-driver; "
        ".ci/run installs them)"
    )
    if os.environ.get("MOCOLAB_REQUIRE_BROWSER"):
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on a free local port serving tmp_path/work; yields its base URL."""
    need_browser()
    work, config = tmp_path / "work", tmp_path / "jupyter"
    work.mkdir()
    # The announcements plugin would ask, in a toast over the page, whether to fetch news: off, and offline.
    (config / "labconfig").mkdir(parents=True)
    (config / "labconfig" / "page_config.json").write_text(
        '{"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": true}}'
    )
    port = free_port()
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(config),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            f"--port={port}",
            "--ip=127.0.0.1",
            f"--ServerApp.token={TOKEN}",
            f"--ServerApp.root_dir={work}",
            "--allow-root",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ],
        env=env,
        stdout=open(tmp_path / "jupyterlab.log", "w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start: {(tmp_path / 'jupyterlab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield url, work
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def browser(tmp_path):
    need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # Flags for a root, offline, display-less machine: no sandbox, no GPU, no background connections.
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(predicate, timeout: float, what: str, driver=None, screenshot=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    if driver is not None and screenshot is not None:
        driver.save_screenshot(str(screenshot))
    pytest.fail(
        f"timed out after {timeout:.0f} s waiting for {what}" + (f" (screenshot: {screenshot})" if screenshot else "")
    )


def kernel_idle(url: str, notebook: str) -> bool:
    """Whether the server has a kernel session for `notebook` and that kernel is idle (the REST API)."""
    try:
        sessions = json.load(urllib.request.urlopen(f"{url}/api/sessions?token={TOKEN}", timeout=5))
    except OSError:
        return False
    return any(
        s.get("path", "").endswith(notebook) and s.get("kernel", {}).get("execution_state") == "idle" for s in sessions
    )


def started(driver, timeout: float) -> bool:
    """Whether, within `timeout` s, some code cell shows an execution prompt: [*] (queued or running) or [n]."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        prompts = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".jp-CodeCell .jp-InputPrompt")]
        if any("[*]" in t or any(ch.isdigit() for ch in t) for t in prompts):
            return True
        time.sleep(0.5)
    return False


@pytest.mark.slow
def test_the_explorer_renders_in_jupyterlab_and_a_slider_redraws_the_views(jupyterlab, browser, cifar10_root, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    url, work = jupyterlab
    papermill.execute_notebook(  # the notebook as a learner gets it, with small, local parameters injected
        str(NOTEBOOKS / "01_augmentations.ipynb"),
        str(work / "01.ipynb"),
        prepare_only=True,
        progress_bar=False,
        parameters=dict(
            dataset="imagefolder",
            data_root=str(cifar10_root),
            image_size=64,
            n_images=3,
            output_dir=str(tmp_path / "figures"),
        ),
    )
    shot = tmp_path / "jupyterlab.png"
    browser.get(f"{url}/lab/tree/01.ipynb?token={TOKEN}")
    find = browser.find_elements
    wait_for(
        lambda: (
            find(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")
            and find(By.XPATH, "//li[contains(@class, 'lm-MenuBar-item')][normalize-space()='Run']")
        ),
        90,
        "the notebook to open",
        browser,
        shot,
    )
    # The page's status bar can read "Idle" before the kernel has connected, and a Run All clicked then is
    # lost (seen on a loaded machine: the sliders never came). So: ask the server that the notebook's kernel
    # exists and is idle, then check that the cells started (an execution prompt [*] or [n]), else click again.
    wait_for(lambda: kernel_idle(url, "01.ipynb"), 180, "the notebook's kernel to start", browser, shot)
    for _ in range(3):
        find(By.XPATH, "//li[contains(@class, 'lm-MenuBar-item')][normalize-space()='Run']")[0].click()
        wait_for(
            lambda: find(By.XPATH, "//li[contains(@class, 'lm-Menu-item')][normalize-space()='Run All Cells']"),
            10,
            "the Run menu",
            browser,
            shot,
        )[0].click()
        if started(browser, 60):
            break
    else:
        browser.save_screenshot(str(shot))
        pytest.fail(f"Run All Cells started no cell in three tries (screenshot: {shot})")

    sliders = wait_for(
        lambda: (
            find(By.CSS_SELECTOR, ".widget-hslider") if len(find(By.CSS_SELECTOR, ".widget-hslider")) >= 9 else None
        ),
        300,
        "the explorer's sliders",
        browser,
        shot,
    )
    image = wait_for(lambda: find(By.CSS_SELECTOR, ".widget-image"), 60, "the explorer's image", browser, shot)[0]
    wait_for(lambda: image.get_attribute("src"), 60, "the explorer's first drawing", browser, shot)
    labels = [s.find_element(By.CSS_SELECTOR, ".widget-label").text for s in sliders]
    assert {
        "crop scale",
        "brightness",
        "contrast",
        "saturation",
        "hue",
        "jitter probability",
        "grayscale probability",
        "blur probability",
        "blur sigma",
    } <= set(labels), labels

    # Every label and readout shows its whole text, and the output area has no horizontal scrollbar.
    for text in find(By.CSS_SELECTOR, ".widget-hslider .widget-readout, .widget-hslider .widget-label"):
        width, needed = browser.execute_script("return [arguments[0].clientWidth, arguments[0].scrollWidth]", text)
        assert needed <= width + 1, f"{text.text!r} is cut off ({needed} px in {width} px)"
    area = image.find_element(By.XPATH, "ancestor::div[contains(@class, 'jp-OutputArea-output')]")
    width, needed = browser.execute_script("return [arguments[0].clientWidth, arguments[0].scrollWidth]", area)
    assert needed <= width + 1, f"the explorer scrolls sideways ({needed} px in {width} px)"

    # Drag the grayscale-probability handle to the right end: every view turns grey, so the image must change.
    gray = sliders[labels.index("grayscale probability")]
    before_src, before_value = image.get_attribute("src"), gray.find_element(By.CSS_SELECTOR, ".widget-readout").text
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", gray)
    handle = gray.find_element(By.CSS_SELECTOR, ".noUi-handle")
    track = gray.find_element(By.CSS_SELECTOR, ".noUi-target")
    ActionChains(browser).drag_and_drop_by_offset(handle, track.size["width"], 0).perform()
    wait_for(
        lambda: gray.find_element(By.CSS_SELECTOR, ".widget-readout").text != before_value,
        20,
        "the slider's readout to move",
        browser,
        shot,
    )
    assert gray.find_element(By.CSS_SELECTOR, ".widget-readout").text == "1.00"
    wait_for(lambda: image.get_attribute("src") != before_src, 60, "the views to be redrawn", browser, shot)
    browser.save_screenshot(str(shot))
