"""The Dagster UI in a real browser: Debian's headless Chromium, driven by Playwright, against a
real ``dagster dev`` on 127.0.0.1. It filters the asset graph to the curation assets, launches
their materialization from the launchpad, waits for the run to succeed on the run page, and finds
the length profile's histogram image on the asset's page.

Screenshots are kept in $POSTFORGE_UI_ARTIFACTS (default: the test's tmp folder). With
POSTFORGE_UPDATE_SCREENSHOTS=1 the graph and histogram shots are also copied to docs/screenshots/
for the README.

The browser is Debian's ``chromium`` package (``.ci/run`` installs it; Playwright never downloads
one here): the test skips, saying so, only when that executable is missing.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, expect, sync_playwright
from ui_support import (
    PROJECT_ROOT,
    artifacts_dir,
    asset_graph,
    curation_selection,
    curation_selection_query,
    dagster_dev,
    run_assets,
    run_errors,
)

CHROMIUM = os.environ.get("POSTFORGE_CHROMIUM") or shutil.which("chromium")
DOCS_SCREENSHOTS = PROJECT_ROOT / "docs" / "screenshots"
README_SHOTS = {"asset-graph.png", "length-profile-histogram.png"}
RUN_TIMEOUT_MS = 120_000

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed (apt-get install -y chromium; .ci/run does this)",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with dagster_dev(tmp_path_factory.mktemp("ui_browser")) as running:
        yield running


@pytest.fixture
def shots(tmp_path):
    return artifacts_dir(tmp_path / "screenshots")


@pytest.fixture
def page(shots):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        # Twice the pixels: the README shows crops of these pages, which must stay legible.
        context = browser.new_context(
            viewport={"width": 1600, "height": 1000}, device_scale_factor=2
        )
        page = context.new_page()
        page.set_default_timeout(30_000)
        try:
            yield page
        finally:
            browser.close()


def shoot(page: Page, folder: Path, name: str, around: Locator | None = None) -> Path:
    """Screenshot the page, or only the box around ``around``'s elements (with a margin)."""
    path = folder / name
    clip = None
    if around is not None:
        boxes = [box for box in (e.bounding_box() for e in around.all()) if box]
        if boxes:
            left = max(min(b["x"] for b in boxes) - 40, 0)
            top = max(min(b["y"] for b in boxes) - 60, 0)
            right = max(b["x"] + b["width"] for b in boxes) + 40
            bottom = max(b["y"] + b["height"] for b in boxes) + 40
            clip = {"x": left, "y": top, "width": right - left, "height": bottom - top}
    page.screenshot(path=str(path), clip=clip)
    return path


def filter_graph(page: Page, query: str) -> None:
    """Type a selection into the graph's filter box (a CodeMirror editor) as a person would."""
    page.locator(".CodeMirror", has_text="Search and filter assets").click()
    page.keyboard.insert_text(query)
    page.keyboard.press("Escape")  # close the autocomplete list, keep the text
    page.keyboard.press("Enter")


def graph_settings(page: Page, *items: str) -> None:
    """Pick items of the graph's settings menu (it stays open between picks), then close it."""
    settings = page.get_by_role("button", name="settings", exact=True)
    settings.click()
    for item in items:
        page.get_by_role("menuitem", name=item).click()
    settings.click()
    expect(page.get_by_role("menuitem")).to_have_count(0)


def test_curation_assets_materialize_from_the_ui(server, page, shots):
    try:
        graph = asset_graph(server.graphql)
        expected = curation_selection(graph)

        # A fresh instance greets its first visitor with a newsletter dialog that swallows typing;
        # this is what its Skip button records.
        server.graphql("mutation { setNuxSeen }")
        page.goto(f"{server.base_url}/asset-groups")
        filter_graph(page, curation_selection_query(graph))
        materialize_all = page.get_by_role("button", name="Materialize all")
        expect(materialize_all).to_be_visible()
        graph_settings(page, "Expand all groups", "Change graph to vertical orientation")
        page.reload()  # the settings stick (local storage); a fresh load zooms the graph to fit
        expect(page.get_by_text("length_profile", exact=True).first).to_be_visible()
        graph_url = page.url
        shoot(page, shots, "01-asset-graph-before.png")

        # Materialize all ▾ → Open launchpad: the scaffolded config, launched as it is.
        materialize_all.locator("xpath=following::button[1]").click()
        page.get_by_role("menuitem", name="Open launchpad").click()
        launchpad = page.get_by_role("dialog")
        editor = launchpad.locator(".CodeMirror-code").first
        confirm = page.get_by_role("button", name="Confirm", exact=True)
        expect(confirm.or_(editor)).to_be_visible()
        if confirm.is_visible():
            # "Upstream not materialized": only partitions (raw drops) the run leaves out may
            # be missing; the datasets combine whatever drops exist, none included.
            warning = page.get_by_role("dialog").filter(has_text="Are you sure?")
            missing = set(warning.locator("li").all_inner_texts())
            assert missing and all(graph[key].partitioned for key in missing), missing
            confirm.click()
        expect(editor).to_be_visible()
        expect(launchpad.get_by_text("No errors")).to_be_visible()
        shoot(page, shots, "02-launchpad.png")
        launchpad.get_by_role("button", name="Materialize").last.click()

        page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}"))
        run_id = page.url.rstrip("/").split("/")[-1]
        outcome = page.get_by_text(re.compile(r"^(Success|Failure|Canceled)$"))
        expect(outcome.first).to_be_visible(timeout=RUN_TIMEOUT_MS)
        shoot(page, shots, "03-run.png")
        assert outcome.first.inner_text() == "Success", run_errors(server.graphql, run_id)
        # What the UI launched is exactly what the GraphQL test computes: no training, no drops.
        assert run_assets(server.graphql, run_id) == expected

        # The README's shot: the same graph, now materialized, cropped to its nodes.
        page.goto(graph_url)
        expect(page.get_by_text("length_profile", exact=True).first).to_be_visible()
        page.wait_for_load_state("networkidle")
        shoot(page, shots, "asset-graph.png", around=page.locator("[class*=AssetNode_assetName]"))

        page.goto(f"{server.base_url}/assets/length_profile")
        row = page.locator("tr", has_text="hist_assistant_tokens")
        row.get_by_text("[Show Markdown]").click()
        histogram = page.get_by_role("dialog").locator('img[alt="hist_assistant_tokens"]')
        expect(histogram).to_be_visible()
        page.wait_for_timeout(1000)  # let the dialog finish fading in before the screenshot
        width, height = histogram.evaluate("img => [img.naturalWidth, img.naturalHeight]")
        assert width >= 200 and height >= 150, "histogram image did not decode"
        shoot(page, shots, "length-profile-histogram.png", around=page.get_by_role("dialog"))

        for name in README_SHOTS:
            assert (shots / name).stat().st_size < 300_000, f"{name} too large for the README"
        if os.environ.get("POSTFORGE_UPDATE_SCREENSHOTS") == "1":
            DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            for name in README_SHOTS:
                shutil.copyfile(shots / name, DOCS_SCREENSHOTS / name)
    except Exception:
        shoot(page, shots, "failure.png")  # what the browser showed when it went wrong
        raise
