"""Screenshot of the /ui page of a running server, after generating one prompt.

    python lab/ui/screenshot.py --url http://127.0.0.1:8000 --prompt "a pink ring" --out ui.png

Needs playwright (the dev extra) and Debian's chromium (``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import shutil

from playwright.sync_api import sync_playwright


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--prompt", default="a pink ring")
    ap.add_argument("--seed", default="0")
    ap.add_argument("--k", default="2")
    ap.add_argument("--out", default="ui.png")
    a = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no chromium on PATH (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1000, "height": 760})
        page.goto(f"{a.url}/ui")
        page.fill("#prompt", a.prompt)
        page.fill("#seed", a.seed)
        page.select_option("#k", a.k)
        page.click("#go")
        page.wait_for_selector("body[data-done], body[data-failed]", timeout=60_000)
        page.screenshot(path=a.out, full_page=True)
        browser.close()
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
