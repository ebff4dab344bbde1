"""Build the book with every warning an error, then visit every page in a real browser.

The browser is Debian's Chromium driven by Playwright for Python (`executable_path`,
nothing downloaded). A page fails on a console error (other than the known theme noise
below), on any request to a host other than 127.0.0.1, on a Mermaid block not rendered
to SVG, or on a broken image; search must find a chapter.

Every chapter page carries exactly the launch links that can work: Binder, and
JupyterHub (the build here names a test hub in JUPYTERHUB_URL), each pointing at the
repository and branch that `_config.yml` names and at this page's notebook; no Colab or
Thebe button. In a 1366-pixel-wide window no code cell scrolls sideways.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import browsing
import pytest
import yaml

from labkit.book import ROOT, toc_files, toc_notebooks

HTML = ROOT / "_build" / "html"
# Console messages every page of sphinx-book-theme 1.3 (pydata-sphinx-theme 0.17)
# emits, whatever the content: its template declares THEBE_JS_URL twice, and with no
# stored colour preference the theme logs an empty mode before falling back to "auto".
# Listed here, in one place, so nothing else is ignored.
KNOWN_NOISE = [
    re.compile(r"Identifier 'THEBE_JS_URL' has already been declared"),
    re.compile(r"^console: Got invalid theme mode: \. Resetting to auto\.$"),
]


# The one place the repository is named: `repository:` in _config.yml (the theme builds
# the Binder, JupyterHub, repository, edit and issue links from it).
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
REPO_URL = CONFIG["repository"]["url"].rstrip("/")
BRANCH = CONFIG["repository"]["branch"]
BOOK_PREFIX = CONFIG["repository"].get("path_to_book", "").strip("/")
LAUNCH = CONFIG["launch_buttons"]
UI_PREFIX = {"classic": "tree", "jupyterlab": "lab/tree"}[LAUNCH["notebook_interface"]]
# The build under test names a hub (read by _ext/jupyterhub_launch.py), so that the
# JupyterHub links exist.
TEST_HUB = "https://hub.handbook.test"
# A window size readers have: no code cell may scroll sideways in it.
VIEWPORT = {"width": 1366, "height": 900}


@pytest.fixture(scope="module")
def built_book() -> Path:
    """Build _build/html from the stored outputs; fail on any warning."""
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
        env={**os.environ, "JUPYTERHUB_URL": TEST_HUB},
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

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    handler = functools.partial(QuietHandler, directory=str(built_book))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser(server: str) -> Iterator[object]:
    with browsing.chromium() as instance:
        yield instance


def page_paths() -> list[str]:
    return [str(Path(entry).with_suffix(".html")) for entry in toc_files(ROOT)]


def chapter_paths() -> list[str]:
    """The pages built from notebooks (the .ipynb entries of _toc.yml)."""
    return [str(nb.with_suffix(".html")) for nb in toc_notebooks(ROOT)]


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
        "Array.from(document.images)"
        ".filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)"
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


def test_launch_configuration() -> None:
    """Only launchers that can run a chapter; the hub comes from the environment."""
    import importlib.util

    from sphinx.errors import ConfigError

    assert "colab_url" not in LAUNCH and "jupyterhub_url" not in LAUNCH, LAUNCH
    assert LAUNCH.get("thebe") is False, "Thebe loads its JavaScript from a CDN"
    assert CONFIG["sphinx"]["local_extensions"] == {"jupyterhub_launch": "_ext"}
    spec = importlib.util.spec_from_file_location(
        "jupyterhub_launch", ROOT / "_ext" / "jupyterhub_launch.py"
    )
    assert spec and spec.loader
    ext = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ext)
    hub = ext.hub_url_from_environment
    assert hub({}) == "" and hub({"JUPYTERHUB_URL": " "}) == ""
    assert hub({"JUPYTERHUB_URL": "https://hub.example.org/"}) == (
        "https://hub.example.org"
    )
    assert hub({"JUPYTERHUB_URL": "https://example.org/jupyter/"}) == (
        "https://example.org/jupyter"
    )
    for bad in ("hub.example.org", "ftp://hub.example.org", "https://h.org/?a=1"):
        with pytest.raises(ConfigError, match="JUPYTERHUB_URL"):
            hub({"JUPYTERHUB_URL": bad})


def github_org_repo(url: str) -> tuple[str, str]:
    parts = urlparse(url)
    assert parts.scheme == "https" and parts.hostname == "github.com", (
        f"_config.yml repository.url {url!r}: Binder's /v2/gh/ links need GitHub"
    )
    org, repo = parts.path.strip("/").split("/")[:2]
    return org, repo


def check_binder_link(href: str, notebook: str) -> list[str]:
    """What is wrong with a Binder link to `notebook` (a path in the repository)."""
    org, repo = github_org_repo(REPO_URL)
    hub = urlparse(LAUNCH["binderhub_url"])
    url = urlparse(href)
    query = parse_qs(url.query, strict_parsing=True)
    wanted = {
        "scheme": (url.scheme, hub.scheme),
        "host": (url.netloc, hub.netloc),
        "path (repository and branch)": (url.path, f"/v2/gh/{org}/{repo}/{BRANCH}"),
        "query": (query, {"urlpath": [f"{UI_PREFIX}/{notebook}"]}),
    }
    return [
        f"Binder {name}: {got!r}, expected {expected!r}"
        for name, (got, expected) in wanted.items()
        if got != expected
    ]


def check_jupyterhub_link(href: str, notebook: str) -> list[str]:
    """What is wrong with an nbgitpuller link to `notebook`.

    nbgitpuller clones REPO_URL at BRANCH into ~/<repo>, then opens the notebook there.
    """
    _, repo = github_org_repo(REPO_URL)
    hub = urlparse(TEST_HUB)
    url = urlparse(href)
    query = parse_qs(url.query, strict_parsing=True)
    wanted = {
        "scheme": (url.scheme, hub.scheme),
        "host": (url.netloc, hub.netloc),
        "path": (url.path, "/hub/user-redirect/git-pull"),
        "query": (
            query,
            {
                "repo": [REPO_URL],
                "branch": [BRANCH],
                "urlpath": [f"{UI_PREFIX}/{repo}/{notebook}"],
            },
        ),
    }
    return [
        f"JupyterHub {name}: {got!r}, expected {expected!r}"
        for name, (got, expected) in wanted.items()
        if got != expected
    ]


@pytest.mark.parametrize("path", page_paths())
def test_launch_links(browser: object, server: str, path: str) -> None:
    """Binder and JupyterHub links on chapter pages, to the configured repository,
    branch and this page's notebook; no launch link elsewhere; never Colab or Thebe."""
    page = browser.new_page(viewport=VIEWPORT)  # type: ignore[attr-defined]
    page.goto(f"{server}/{path}", wait_until="load")
    launch = page.eval_on_selector_all(
        ".dropdown-launch-buttons a",
        "els => els.map(e => [e.textContent.trim(), e.getAttribute('href')])",
    )
    header = page.eval_on_selector_all(
        ".article-header-buttons a, .article-header-buttons button",
        """els => els.map(e => [e.textContent, e.title, e.getAttribute('aria-label'),
                     e.getAttribute('data-bs-original-title'), e.getAttribute('href'),
                     e.getAttribute('onclick')].join(' '))""",
    )
    repo_links = dict(
        page.eval_on_selector_all(
            ".article-header-buttons a",
            # Bootstrap's tooltips move `title` to data-bs-original-title once loaded.
            """els => els.map(e => [e.getAttribute('data-bs-original-title') || e.title,
                                  e.getAttribute('href')])""",
        )
    )
    colab_anywhere = page.eval_on_selector_all(
        'a[href*="colab.research.google.com"]', "els => els.map(e => e.href)"
    )
    page.close()

    dead = [h for h in header if re.search(r"colab|thebe|live code", h, re.IGNORECASE)]
    assert dead == [] and colab_anywhere == [], (
        f"{path}: Colab or Thebe button: {dead + colab_anywhere}"
    )
    source = Path(path).with_suffix(".ipynb")
    if not (ROOT / source).exists():
        assert launch == [], f"{path} is not a notebook but has launch links {launch}"
        return
    notebook = f"{BOOK_PREFIX}/{source}".lstrip("/")
    assert (ROOT / notebook).exists()
    assert sorted(name for name, _ in launch) == ["Binder", "JupyterHub"], (
        f"{path}: launch links {launch}"
    )
    problems: list[str] = []
    for name, href in launch:
        check = check_binder_link if name == "Binder" else check_jupyterhub_link
        try:
            problems += check(href, notebook)
        except ValueError as exc:  # parse_qs(strict_parsing=True) on a malformed query
            problems.append(f"{name}: {href!r} does not parse: {exc}")
    # The same repository and branch behind the repository, edit and issue buttons.
    if repo_links.get("Source repository") != REPO_URL:
        problems.append(f"repository button: {repo_links.get('Source repository')!r}")
    if repo_links.get("Suggest edit") != f"{REPO_URL}/edit/{BRANCH}/{notebook}":
        problems.append(f"edit button: {repo_links.get('Suggest edit')!r}")
    if not str(repo_links.get("Open an issue")).startswith(f"{REPO_URL}/issues/new?"):
        problems.append(f"issue button: {repo_links.get('Open an issue')!r}")
    assert problems == [], f"{path}:\n" + "\n".join(problems)


# For each code-cell `pre` that scrolls sideways: its place, and the lines longer than
# the box holds (character width measured with a probe in the block's own font).
OVERFLOWING_CODE = r"""
() => Array.from(document.querySelectorAll('.cell_input pre')).flatMap((pre, index) => {
  if (pre.scrollWidth <= pre.clientWidth) return [];
  const probe = document.createElement('span');
  probe.textContent = 'x'.repeat(100);
  pre.appendChild(probe);
  const charWidth = probe.getBoundingClientRect().width / 100;
  probe.remove();
  const style = getComputedStyle(pre);
  const room = pre.clientWidth - parseFloat(style.paddingLeft)
    - parseFloat(style.paddingRight);
  const fits = Math.floor(room / charWidth);
  const lines = pre.textContent.replace(/\n$/, '').split('\n');
  return [{
    index, fits, scrollWidth: pre.scrollWidth, clientWidth: pre.clientWidth,
    first: lines[0],
    long: lines.map((text, i) => ({line: i + 1, text}))
      .filter(l => l.text.length > fits),
  }];
})
"""


@pytest.mark.parametrize("path", chapter_paths())
def test_code_fits_the_page(browser: object, server: str, path: str) -> None:
    """No code cell's block scrolls horizontally in a 1366x900 window."""
    page = browser.new_page(viewport=VIEWPORT)  # type: ignore[attr-defined]
    page.goto(f"{server}/{path}", wait_until="load")
    page.evaluate("document.fonts.ready.then(() => true)")
    assert page.locator(".cell_input pre").count() > 0, f"{path}: no code cells found"
    wide = page.evaluate(OVERFLOWING_CODE)
    page.close()
    report = [
        f"code block {w['index'] + 1} (starts {w['first'][:60]!r}): "
        f"{w['scrollWidth']} px of content in {w['clientWidth']} px, "
        f"{w['fits']} characters fit"
        + "".join(
            f"\n    line {ln['line']} ({len(ln['text'])} chars): {ln['text']}"
            for ln in w["long"]
        )
        for w in wide
    ]
    assert report == [], (
        f"{path}: {len(report)} code block(s) scroll sideways "
        f"at {VIEWPORT['width']} px:\n" + "\n".join(report)
    )
