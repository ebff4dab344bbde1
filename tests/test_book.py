"""Build the book with every warning an error, then visit every page in a real browser.

The browser is Debian's Chromium driven by Playwright for Python (`executable_path`, nothing downloaded).
A page fails on a console error (other than the known theme noise below), on any request to a host other
than 127.0.0.1, on a Mermaid block not rendered to SVG, or on a broken image; search must find a chapter.
"""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from labkit.book import ROOT, toc_files

HTML = ROOT / "_build" / "html"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
# Console messages every page of sphinx-book-theme 1.3 (pydata-sphinx-theme 0.17) emits, whatever the
# content: its template declares THEBE_JS_URL twice, and with no stored colour preference the theme logs
# an empty mode before falling back to "auto". Listed here, in one place, so nothing else is ignored.
KNOWN_NOISE = [
    re.compile(r"Identifier 'THEBE_JS_URL' has already been declared"),
    re.compile(r"^console: Got invalid theme mode: \. Resetting to auto\.$"),
]


@pytest.fixture(scope="module")
def built_book() -> Path:
    """Build _build/html from the stored outputs; fail with the build log's tail on any warning."""
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("jupyter-book")),
            "build",
            ".",
            "--all",
            "-W",
            "-n",
            "--keep-going",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, (
        f"jupyter-book build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    return HTML


def test_book_builds_with_every_page(built_book: Path) -> None:
    for entry in toc_files(ROOT):
        page = built_book / Path(entry).with_suffix(".html")
        assert page.exists(), (
            f"{entry} was not built ({page.relative_to(ROOT)} missing)"
        )
    assert (built_book / "_static" / "mermaid" / "mermaid.esm.min.mjs").exists(), (
        "Mermaid is not served locally"
    )
    assert (built_book / "mathjax" / "tex-mml-chtml.js").exists(), (
        "MathJax is not served locally"
    )


@pytest.fixture(scope="module")
def server(built_book: Path) -> Iterator[str]:
    """Serve the built book on 127.0.0.1 (a free port) for the browser."""
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(built_book)
    )
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser(server: str) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), (
        "Debian's chromium is not installed (apt-get install chromium)"
    )
    with sync_playwright() as pw:
        instance = pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield instance
        instance.close()


def page_paths() -> list[str]:
    return [str(Path(entry).with_suffix(".html")) for entry in toc_files(ROOT)]


@pytest.mark.parametrize("path", page_paths())
def test_page_in_browser(browser: object, server: str, path: str) -> None:
    page = browser.new_page()  # type: ignore[attr-defined]
    errors: list[str] = []
    foreign: list[str] = []
    page.on(
        "console",
        lambda msg: msg.type == "error" and errors.append(f"console: {msg.text}"),
    )
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.on(
        "requestfailed",
        lambda req: errors.append(f"request failed: {req.url} ({req.failure})"),
    )

    def check_host(req: object) -> None:
        url = urlparse(req.url)  # type: ignore[attr-defined]
        if url.scheme in ("http", "https", "ws", "wss") and url.hostname != "127.0.0.1":
            foreign.append(req.url)  # type: ignore[attr-defined]

    page.on("request", check_host)
    page.goto(f"{server}/{path}", wait_until="networkidle")

    mermaid_blocks = page.locator("pre.mermaid, div.mermaid")
    for i in range(mermaid_blocks.count()):
        mermaid_blocks.nth(i).locator("svg").first.wait_for(
            state="attached", timeout=20_000
        )
    math_blocks = page.locator("span.math, div.math")
    for i in range(
        math_blocks.count()
    ):  # MathJax typesets each formula into an mjx-container
        math_blocks.nth(i).locator("mjx-container").first.wait_for(
            state="attached", timeout=20_000
        )
    broken = page.evaluate(
        "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)"
    )
    page.close()

    real_errors = [e for e in errors if not any(p.search(e) for p in KNOWN_NOISE)]
    assert real_errors == [], f"{path}: " + "\n".join(real_errors)
    assert foreign == [], f"{path}: requests to other hosts: {foreign}"
    assert broken == [], f"{path}: broken images: {broken}"


def test_search_finds_a_chapter(browser: object, server: str) -> None:
    page = browser.new_page()  # type: ignore[attr-defined]
    page.goto(f"{server}/search.html?q=PagedAttention", wait_until="networkidle")
    page.locator("#search-results ul.search li a").first.wait_for(timeout=20_000)
    hrefs = page.eval_on_selector_all(
        "#search-results ul.search li a", "els => els.map(e => e.href)"
    )
    page.close()
    assert any("llm-serving" in h for h in hrefs), (
        f"search for PagedAttention found {hrefs}"
    )
