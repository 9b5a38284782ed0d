"""Browser fixtures: Debian's Chromium driven by Playwright's sync API (never a browser that
Playwright downloads), a fresh profile per test, and the screenshots a reader looks at in
``test-artifacts/browser/``.

``make browser-deps`` (a prerequisite of ``make test``) installs Chromium when it is missing.
Without it the browser tests are skipped with the reason, except in CI (``CI=true``), where
they fail.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, ViewportSize, sync_playwright

from roadmap_pipeline_tests.browser.dagster_ui import ARTIFACTS
from roadmap_pipeline_tests.conftest import IN_CI

CHROMIUM = os.environ.get("ROADMAP_TEST_CHROMIUM", "/usr/bin/chromium")
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
VIEWPORT: ViewportSize = {"width": 1600, "height": 1000}
DEFAULT_TIMEOUT_MS = 30_000

# On localhost the UI opens a "join the community" dialog over every page of a new profile;
# dismissing it is what its own "Skip" button stores.
DISMISS_COMMUNITY_DIALOG = "window.localStorage.setItem('communityNux', JSON.stringify('1'))"

_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium executable (Debian's package)."""
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    message = f"{CHROMIUM} is missing: `make browser-deps` installs Debian's chromium"
    if IN_CI:
        pytest.fail(message + " (CI=true: browser tests must run)")
    pytest.skip(message)


@pytest.fixture
def artifacts() -> Path:
    """test-artifacts/browser/, emptied of a previous run's screenshots."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    return ARTIFACTS


@pytest.fixture
def page(
    chromium: str,
    artifacts: Path,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Page]:
    """A page of headless Chromium with a fresh profile; a screenshot when the test fails."""
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=VIEWPORT,
        )
        context.set_default_timeout(DEFAULT_TIMEOUT_MS)
        context.add_init_script(DISMISS_COMMUNITY_DIALOG)
        page = context.pages[0] if context.pages else context.new_page()
        try:
            yield page
        finally:
            if request.node.stash.get(_FAILED, False):
                page.screenshot(path=str(artifacts / "99-failure.png"), full_page=True)
            context.close()
