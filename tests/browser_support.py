"""Browser test support: Debian's Chromium driven by Playwright, and servers that restart.

The browser tests run in CI; when Chromium is missing they fail with the fix in the message
rather than being skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from jobcast.server.app import create_app
from tests.support import LiveServer, make_settings

CHROMIUM = os.environ.get("JOBCAST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Set JOBCAST_UPDATE_SCREENSHOTS=1 to refresh the README's screenshots.
SCREENSHOTS = Path(__file__).parent.parent / "docs" / "screenshots"
#: Playwright waits (expect, wait_for_*) give up after this many milliseconds.
TIMEOUT_MS = 20_000
expect.set_options(timeout=TIMEOUT_MS)


@contextmanager
def chromium() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}: run `apt-get install -y chromium` "
            "(or set JOBCAST_CHROMIUM to a Chromium binary)",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def open_page(browser: Browser, **context_options: Any) -> Iterator[Page]:
    """A page in a fresh context; JavaScript errors on the page fail the test."""
    context = browser.new_context(**context_options)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"errors on the page: {errors}"


def screenshot(page: Page, name: str, tmp_path: Path) -> Path:
    """Save a screenshot (into docs/screenshots/ when refreshing them, else a temp dir)."""
    folder = SCREENSHOTS if os.environ.get("JOBCAST_UPDATE_SCREENSHOTS") == "1" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def start_server(data_dir: Path, port: int = 0, **overrides: Any) -> LiveServer:
    """A server on ``port`` (0: any); start another on the same data dir and port to restart."""
    settings = make_settings(data_dir=data_dir, **overrides)
    return LiveServer(create_app(settings), port=port).start()


def sign_in(page: Page, server: LiveServer, sub: str = "alice") -> None:
    page.goto(server.url + "/")
    page.get_by_label("Access token").fill(server.token(sub, ttl=3600))
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Jobs").wait_for()
