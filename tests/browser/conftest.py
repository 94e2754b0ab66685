"""Headless Chromium against the in-process mesh, for the dashboard's tests.

Selenium calls block, so the mesh runs in its own event loop on a background
thread and the tests are plain functions. Chromium gets a fresh profile and
the flags that stop it from reaching the network by itself.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.conftest import FIXTURES
from tests.inprocess import InProcessMesh

REPOSITORY = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPOSITORY / "test-artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Every explicit wait of these tests, in seconds.
WAIT_SECONDS = 15.0
CALL_SECONDS = 30.0

TOKEN_NAME = "operator"
TOKEN = "operator-token-4f9a2c"
API_TOKENS = f"{TOKEN_NAME}:{TOKEN},ci:ci-token-77aa11"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Part of a target's URL path, which no page may show.
SECRET_PATH = "/hooks/PATHSECRET-91c3"
DEAD_PATH = "/dead"
TARGETS = [
    {"name": "team-webhook", "format": "webhook", "path": SECRET_PATH},
    {"name": "broken-webhook", "format": "webhook", "path": DEAD_PATH},
]
WEBHOOKS = (
    "01_firing_single_node_filesystem.json",
    "02_resolved_single_node_filesystem.json",
    "03_grouped_firing_kubepodnotready.json",
    "05_unicode_ceph_temperature.json",
    "06_long_description_kafka.json",
)

T = TypeVar("T")


def webhook(name: str) -> dict[str, Any]:
    return dict(json.loads((FIXTURES / "webhooks" / name).read_text()))


def chromium_missing() -> str | None:
    """Return why the browser tests cannot run here, or None when they can."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(path) is None:
            return f"{path} is not installed (scripts/install.sh --test installs it)"
    return None


class MeshThread:
    """An InProcessMesh served by an event loop on a background thread."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="mesh", daemon=True
        )
        self.mesh = InProcessMesh(folder, env, targets=TARGETS, with_model=True)

    def start(self) -> None:
        self.thread.start()
        self.run(self.mesh.start())

    def stop(self) -> None:
        try:
            self.run(self.mesh.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(CALL_SECONDS)
            self.loop.close()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the mesh's loop and return its result."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(CALL_SECONDS)

    @property
    def url(self) -> str:
        return self.mesh.url

    def get(self, path: str, **params: str) -> Any:
        status, body = self.run(self.mesh.get(path, params=params, headers=AUTH))
        assert status == 200, (path, body)
        return body

    def post(self, path: str, body: Any, **kwargs: Any) -> tuple[int, Any]:
        return self.run(self.mesh.post(path, body, **kwargs))


def poll_until(condition: Callable[[], Any], message: str) -> Any:
    """Call `condition` from the test's thread until it is true, at most
    WAIT_SECONDS; raise TimeoutError with `message` after that."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{message} within {WAIT_SECONDS} s")
        time.sleep(0.1)


def start_mesh(folder: Path, env: dict[str, str]) -> MeshThread:
    running = MeshThread(folder, env)
    running.start()
    return running


def post_fixtures(running: MeshThread) -> None:
    """Post the fixture webhooks and wait until every alert is classified."""
    for name in WEBHOOKS:
        status, body = running.post("/webhook/proxy", webhook(name))
        assert status == 200, body

    async def all_classified() -> bool:
        items = await running.mesh.history()
        return bool(items) and all(
            change["classification"] is not None
            for item in items
            for change in item["state_changes"]
        )

    running.run(running.mesh.wait_until(all_classified, WAIT_SECONDS))


@pytest.fixture(scope="module")
def chromium_path() -> str:
    reason = chromium_missing()
    if reason is not None:
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture(scope="module")
def driver(chromium_path: str) -> Iterator[Any]:
    """A headless Chromium at 1280x800 with a new profile, quit afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="ah-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium_path
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1280,800",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    # --window-size includes the window's frame; the viewport is set here.
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
    )
    browser.set_page_load_timeout(WAIT_SECONDS)
    browser.set_script_timeout(WAIT_SECONDS)
    try:
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def screenshot(driver: Any) -> Callable[[str], Path]:
    """Save the browser's viewport as test-artifacts/screenshots/NAME.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def save(name: str) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        assert driver.save_screenshot(str(path)), path
        return path

    return save
