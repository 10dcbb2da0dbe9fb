"""The /ui page in a real browser: Debian's chromium driven by playwright, against the real
server (tiny model, 6 ingested pairs). Skipped where either is missing (playwright cannot
download browsers here; ``apt-get install chromium`` and the dev extra provide them)."""

from __future__ import annotations

import shutil

import pytest
from service_servers import Server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)")


def test_the_page_shows_both_images_and_the_neighbours(real_server: Server) -> None:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            urls: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: urls.append(r.url))
            page.goto(f"{real_server.url}/ui")
            page.fill("#prompt", "a red circle")
            page.fill("#seed", "5")
            page.click("#go")
            page.wait_for_selector("body[data-done]", timeout=60_000)
            with_panel, without = page.locator("#with"), page.locator("#without")
            assert with_panel.locator('[data-field="status"]').inner_text() in ("ok", "weak")
            assert without.locator('[data-field="status"]').inner_text() == "off"
            for panel in (with_panel, without):
                assert panel.locator("img").evaluate("i => i.naturalWidth") == 64
                assert "seed 5" in panel.locator('[data-field="meta"]').inner_text()
            rows = with_panel.locator("tbody tr")
            assert rows.count() == 1
            cells = rows.first.locator("td").all_inner_texts()
            assert cells[0] == "a red circle" and float(cells[1]) > 0.99 and cells[3] == "used"
            assert "declares no vocabulary" in with_panel.locator('[data-field="words"]').inner_text()
            assert errors == []  # no script error, no CSP violation
            assert urls and all(u.startswith((real_server.url, "data:")) for u in urls), urls
        finally:
            browser.close()
