"""A real headless browser for page tests: Debian's chromium driven by Playwright, the page served over
HTTP on loopback by a Python server the test starts."""

from __future__ import annotations

import contextlib
import functools
import http.server
import shutil
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# as the machine's notes say: without the background-networking flags chromium keeps dialing out
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """``http://127.0.0.1:<port>/`` serving ``folder`` until the block ends."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def render(url: str, screenshot: Path | None = None) -> dict[str, Any]:
    """Open ``url`` in headless chromium: console errors, failed requests, and for every figure and table
    row its rendered size."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: make test installs Debian's chromium package")
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
            response = page.goto(url, wait_until="load")
            status = response.status if response else None
            figures = page.eval_on_selector_all(
                "figure", "els => els.map(e => { const s = e.querySelector('svg'); const r = s ? "
                "s.getBoundingClientRect() : {width: 0, height: 0}; return {id: e.id, width: r.width, "
                "height: r.height, marks: s ? s.querySelectorAll('path, use, text').length : 0}; })")
            rows = page.eval_on_selector_all("table#variants tbody tr",
                                             "els => els.map(e => [e.innerText, e.getBoundingClientRect().height])")
            title = page.title()
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"status": status, "errors": errors, "figures": figures, "rows": rows, "title": title}
