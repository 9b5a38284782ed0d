"""The pages of Dagster's UI (dagster-webserver 1.13.27) the browser test reads and drives.

Selectors are roles and visible text wherever the UI has them. The production build of the UI
strips its ``data-testid`` attributes, so where a control has no text its icon's accessible name
(the icon's name) is used, scoped to the control's toolbar.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Locator, Page, expect

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"


class DagsterUI:
    """One page of the UI served at ``base_url``; screenshots go to ``artifacts``."""

    def __init__(self, page: Page, base_url: str, artifacts: Path = ARTIFACTS) -> None:
        self.page = page
        self.base_url = base_url.rstrip("/")
        self.artifacts = artifacts

    def open(self, path: str) -> None:
        self.page.goto(self.base_url + path)

    def screenshot(self, name: str) -> Path:
        path = self.artifacts / f"{name}.png"
        # Dialogs fade in: finish running transitions rather than catch one half-drawn.
        self.page.screenshot(path=str(path), animations="disabled")
        return path

    def eventually(
        self, assertion: Callable[[], None], timeout_s: float, what: str, every_s: float = 5.0
    ) -> None:
        """Assert until it holds, reloading the page between tries (the UI polls slowly)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                assertion()
                return
            except (AssertionError, PlaywrightError) as exc:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"not seen in the UI within {timeout_s:.0f}s: {what}"
                    ) from exc
            time.sleep(every_s)
            self.page.reload()

    # --- the global asset graph ("Lineage") -------------------------------------------------

    def open_asset_graph(self) -> None:
        """Global asset lineage with every group expanded, top-down, fitted to the window."""
        self.open("/asset-groups")
        expect(self.page.get_by_text("Global asset lineage")).to_be_visible()
        viewport = self.page.locator("[data-svg-viewport]")
        expect(viewport).to_be_visible()
        # Room for the graph: hide the navigation and the asset sidebar ("Hide sidebar").
        hide_navigation = self.page.get_by_role("button", name="Hide navigation")
        if hide_navigation.is_visible():
            hide_navigation.click()
        hide_sidebar = self.page.get_by_role("button", name="panel_show_right", exact=True)
        if hide_sidebar.is_visible():
            hide_sidebar.click()
        self._graph_setting(re.compile(r"(Expand|Collapse) all groups"), "Expand all groups")
        self._graph_setting(re.compile(r"graph to (vertical|horizontal)"), "vertical orientation")
        # A double click on the background zooms the graph to fit the window's width. The top
        # edge is under the toolbar: click near the bottom-left corner.
        box = viewport.bounding_box()
        assert box is not None
        viewport.dblclick(position={"x": 12, "y": box["height"] - 12})

    def _graph_setting(self, any_state: re.Pattern[str], wanted: str) -> None:
        toolbar = self.page.locator("#zoom-slider-container")
        toolbar.get_by_role("button", name="settings", exact=True).click()
        menu = self.page.get_by_role("menu")
        expect(menu.get_by_role("menuitem", name=any_state)).to_be_visible()
        item = menu.get_by_role("menuitem", name=wanted)
        if item.count():
            item.click()
        self.page.keyboard.press("Escape")
        expect(menu).to_be_hidden()

    def graph_checks_summary(self, asset: str) -> Locator:
        """The "Asset checks" row of an asset's node: a link to its checks, "n / m Passed"."""
        return self.page.locator(f'a[href="/assets/{asset}?view=checks"]')

    def graph_partitions_summary(self, asset: str) -> Locator:
        """The "Partitions" row of an asset's node: "90% filled (3 failed)"."""
        link = self.page.locator(f'a[href="/assets/{asset}?view=partitions"]')
        return link.filter(has_text="filled")

    def graph_node_title(self, asset: str) -> Locator:
        return self.page.locator("[data-svg-viewport]").get_by_text(asset, exact=True)

    # --- an asset's partitions ----------------------------------------------------------------

    def open_partitions(self, asset: str) -> None:
        self.open(f"/assets/{asset}?view=partitions")

    def partition_status_filter(self, status: str, count: int | None = None) -> Locator:
        """The label of a status filter above the partition list, "Failed (3)"."""
        number = str(count) if count is not None else r"\d+"
        return self.page.get_by_text(re.compile(rf"^{status} \({number}\)$"))

    def hide_partitions(self, status: str) -> None:
        """Untick a status filter (its input is drawn over, so the label takes the click)."""
        self.partition_status_filter(status).click()
        checkbox = self.page.get_by_role("checkbox", name=re.compile(rf"^{status} \("))
        expect(checkbox).not_to_be_checked()

    def partition_row(self, key: str) -> Locator:
        # Long names are drawn by a truncating component that also keeps an invisible copy.
        return self.page.get_by_text(key, exact=True).filter(visible=True)

    # --- an asset's checks --------------------------------------------------------------------

    def open_check_history(self, asset: str, check: str) -> None:
        self.open(f"/assets/{asset}?view=checks&checkDetail={check}")
        self.page.get_by_role("tab", name="Execution history").click()

    def open_check_overview(self, asset: str, check: str) -> None:
        self.open(f"/assets/{asset}?view=checks&checkDetail={check}")

    def history_rows(self, partition: str) -> Locator:
        """Rows of a check's execution history for one partition, newest first."""
        return self.page.get_by_role("row").filter(
            has=self.page.get_by_role("cell", name=partition, exact=True)
        )
