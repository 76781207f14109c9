"""Open a page in a real headless Chromium (Debian's, driven by Playwright) and report what loaded."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

# Chromium's own background connections are refused on a closed network, and as root it
# needs --no-sandbox: the flags the machine's notes give for a quiet headless start.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@dataclass
class PageView:
    requests: list[str]            # every URL the page asked for, the page itself included
    images: list[tuple[bool, int]]  # (complete, naturalWidth) of every <img>
    text: str                      # the rendered text (document.body.innerText)
    errors: list[str]              # uncaught JavaScript errors


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise RuntimeError("expected Debian's chromium (apt-get install chromium; .ci/run installs it), found none")
    return path


def open_page(url: str, *, screenshot: str | None = None) -> PageView:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            requests, errors = [], []
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url, wait_until="load")
            images = [tuple(i) for i in page.evaluate(
                "Array.from(document.images).map(i => [i.complete, i.naturalWidth])")]
            text = page.evaluate("document.body.innerText")
            if screenshot:
                page.screenshot(path=screenshot, full_page=True)
        finally:
            browser.close()
    return PageView(requests=requests, images=images, text=text, errors=errors)
