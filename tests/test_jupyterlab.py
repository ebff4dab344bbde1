"""Open a chapter in a real JupyterLab, run it, and check what a reader sees.

`jupyter lab` serves a copy of the checkout (tracked and new files, not ignored ones)
from a temporary folder on 127.0.0.1, so the run never writes into the working tree;
Debian's Chromium, driven by Playwright, opens the chapter with the server's token,
clears the stored outputs and runs every cell (the Run menu's "Run All Cells" command).
The test fails when:

- a Markdown cell is not rendered by jupyterlab-myst, or its rendered text shows raw
  MyST: a fence, a role or directive name in braces (`{glue:text}`, `{doc}`,
  `{exercise}`), or a directive option (`:label:`);
- a Mermaid fence did not become a diagram;
- a code cell did not run, or shows an error (an error output, or a traceback on
  stderr);
- the page asks a host other than 127.0.0.1 for anything.

JupyterLab does not know myst-nb's glue: a `{glue:text}` role shows its key there,
which is why each chapter ends with a table of its glued numbers. Here only the role's
syntax must not show.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlparse

import browsing
import pytest

from labkit.book import ROOT

pytestmark = pytest.mark.browser

CHAPTER = Path("notebooks/00-start/environment-check.ipynb")
SERVER_START_S = 90
PAGE_READY_MS = 120_000
RUN_ALL_MS = 150_000

# Raw MyST in rendered prose (code, diagrams and styles left out): a fence, a role or
# directive name in braces, a directive option at a line start.
RAW_MYST = re.compile(
    r"```|~~~|\{[a-z][a-z0-9]*(?:[-:][a-z0-9]+)*\}|^\s*:[a-z][a-z-]*:", re.MULTILINE
)
# Raw MyST anywhere, code blocks included (a directive shown as a code block): the
# examples the issue names, and the other syntax the chapters use.
RAW_EXAMPLES = [
    "```{",
    "{glue:text}`",
    "{glue:text}",
    "{glue}",
    "{doc}`",
    "{ref}`",
    "{download}`",
    "{exercise}",
    "{solution",
    ":label:",
    ":class: dropdown",
]

# Each Markdown cell's rendered widget, in notebook order: its classes, its text without
# code, diagrams and style sheets, and its text with code (no diagrams or styles).
RENDERED_MARKDOWN = """
() => Array.from(document.querySelectorAll('.jp-MarkdownCell')).map(cell => {
  const area = cell.querySelector('.jp-Cell-inputArea');
  const shown = Array.from(area.children).filter(el =>
    !el.matches('.jp-InputPrompt, .jp-InputArea-editor, .jp-Toolbar'));
  const without = selector => shown.map(el => {
    const copy = el.cloneNode(true);
    copy.querySelectorAll(selector).forEach(c => c.remove());
    return copy.textContent;
  }).join('\\n');
  return {
    classes: shown.map(el => el.className),
    text: without('code, pre, svg, style'),
    withCode: without('svg, style'),
    diagrams: cell.querySelectorAll('svg[id^="mermaid"]').length,
  };
})
"""

# Every code cell after the run: its execution count, the text of its error and stderr
# outputs, and whether the DOM shows a traceback.
CODE_CELLS = """
() => {
  const panel = window.jupyterapp.shell.currentWidget;
  return panel.content.widgets.filter(c => c.model.type === 'code').map(cell => {
    const outputs = cell.model.outputs.toJSON();
    const node = cell.node;
    const stderr = Array.from(node.querySelectorAll(
      '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'));
    const rendered = Array.from(
      node.querySelectorAll('.jp-OutputArea .jp-RenderedText'));
    return {
      count: cell.model.executionCount,
      source: cell.model.sharedModel.getSource().split('\\n')[0],
      errors: outputs.filter(o => o.output_type === 'error')
        .map(o => o.ename + ': ' + o.evalue.slice(0, 500)),
      tracebacks: stderr.concat(rendered).map(e => e.textContent)
        .filter(t => t.includes('Traceback')).map(t => t.slice(-800)),
    };
  });
}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def copy_checkout(target: Path) -> None:
    """Copy the checkout as git sees it (tracked, or new and not ignored) to target."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the work tree is skipped
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """JupyterLab on 127.0.0.1 over a copy of the checkout: base URL, token, root."""
    base = tmp_path_factory.mktemp("jupyterlab")
    root = base / "root"
    copy_checkout(root)
    json.loads((root / CHAPTER).read_text())  # a notebook caught mid-edit fails here
    settings = base / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    # Keep every cell in the DOM, so that all of them can be read after the run.
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    env = {
        **os.environ,
        # Settings, workspaces, runtime files and IPython's history stay in base.
        "JUPYTER_CONFIG_DIR": str(base / "config"),
        "JUPYTERLAB_SETTINGS_DIR": str(base / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(base / "workspaces"),
        "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
        "IPYTHONDIR": str(base / "ipython"),
        # Files the chapter writes, and its exercise log, go to base (not _build).
        "LABKIT_OUTPUT_ROOT": str(base / "outputs"),
        "LABKIT_EXERCISE_LOG": str(base / "exercise-log.jsonl"),
    }
    port, token = free_port(), secrets.token_hex(24)
    command = [
        str(Path(sys.executable).with_name("jupyter")),
        "lab",
        "--no-browser",
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--port-retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        # Nothing from the network: no news feed, no update check, no PyPI search.
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
        # window.jupyterapp: the command registry and the notebook's model.
        "--LabApp.expose_app_in_browser=True",
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")
    log = (base / "jupyter-lab.log").open("w")
    server = subprocess.Popen(
        command,
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            assert server.poll() is None, (
                "jupyter lab exited:\n" + (base / "jupyter-lab.log").read_text()[-3000:]
            )
            try:
                with urllib.request.urlopen(
                    f"{url}/api/status?token={token}", timeout=5
                ):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                assert time.monotonic() < deadline, (
                    f"jupyter lab did not answer in {SERVER_START_S} s"
                )
                time.sleep(0.5)
        yield url, token, root
    finally:
        # Shut the server down with its kernels; then its process group, if still there.
        try:
            request = urllib.request.Request(
                f"{url}/api/shutdown?token={token}", method="POST"
            )
            urllib.request.urlopen(request, timeout=10).close()
            server.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with browsing.chromium() as instance:
        yield instance


def test_chapter_runs_in_jupyterlab_with_myst(
    lab: tuple[str, str, Path], browser: object
) -> None:
    url, token, root = lab
    started = time.monotonic()

    def phase(name: str) -> None:  # shown with a failure: where the time went
        print(f"{time.monotonic() - started:6.1f} s  {name}")

    page = browser.new_page(viewport={"width": 1366, "height": 900})  # type: ignore[attr-defined]
    foreign: list[str] = []

    def only_loopback(route: object) -> None:
        request_url = route.request.url  # type: ignore[attr-defined]
        parts = urlparse(request_url)
        if parts.scheme in ("http", "https", "ws", "wss") and parts.hostname != (
            "127.0.0.1"
        ):
            foreign.append(request_url)
            route.abort()  # type: ignore[attr-defined]
        else:
            route.continue_()  # type: ignore[attr-defined]

    page.route("**/*", only_loopback)
    page.on(
        "websocket",
        lambda ws: urlparse(ws.url).hostname != "127.0.0.1" and foreign.append(ws.url),
    )
    page.goto(f"{url}/lab/tree/{quote(CHAPTER.as_posix())}?token={token}")

    # The notebook is open with its kernel, and jupyterlab-myst has rendered every
    # Markdown cell (its widget carries the class `myst`).
    page.wait_for_function(
        """() => {
          const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
          return panel && panel.content && panel.content.widgets
            && panel.content.widgets.length > 0 && panel.sessionContext
            && panel.sessionContext.session && panel.sessionContext.session.kernel
            && panel.sessionContext.session.kernel.connectionStatus === 'connected';
        }""",
        timeout=PAGE_READY_MS,
    )
    phase("notebook open, kernel connected")
    markdown_cells = page.evaluate(
        """() => window.jupyterapp.shell.currentWidget.content.widgets
                   .filter(c => c.model.type === 'markdown').length"""
    )
    try:
        page.wait_for_function(
            """n => document.querySelectorAll(
                     '.jp-MarkdownCell .jp-Cell-inputArea > .myst').length === n""",
            arg=markdown_cells,
            timeout=PAGE_READY_MS,
            polling=500,
        )
    except Exception as exc:  # TimeoutError: say what rendered the cells instead
        shown = [c["classes"] for c in page.evaluate(RENDERED_MARKDOWN)]
        raise AssertionError(
            f"jupyterlab-myst did not render all {markdown_cells} Markdown cells: "
            f"{shown}"
        ) from exc
    markdown = page.evaluate(RENDERED_MARKDOWN)
    phase(f"jupyterlab-myst rendered {markdown_cells} Markdown cells")

    # Clear the stored outputs, then run everything as the Run menu does.
    page.evaluate(
        """async () => {
          const app = window.jupyterapp;
          await app.commands.execute('notebook:clear-all-cell-outputs');
          window.__runAll = null;
          app.commands.execute('notebook:run-all-cells').then(
            ok => { window.__runAll = String(ok); },
            err => { window.__runAll = 'failed: ' + err; });
        }"""
    )
    page.wait_for_function(
        """() => window.__runAll !== null
             && window.jupyterapp.shell.currentWidget.sessionContext
                  .session.kernel.status === 'idle'""",
        timeout=RUN_ALL_MS,
        polling=500,
    )
    run_all = page.evaluate("() => window.__runAll")
    phase(f"Run All Cells finished: {run_all}")
    cells = page.evaluate(CODE_CELLS)
    page.close()

    assert foreign == [], f"JupyterLab asked hosts other than 127.0.0.1: {foreign}"

    with (root / CHAPTER).open() as f:
        sources = [
            "".join(c["source"])
            for c in json.load(f)["cells"]
            if c["cell_type"] == "markdown"
        ]
    raw = [
        f"Markdown cell {i + 1}: {m.group(0)!r} in "
        f"{c['text'][max(0, m.start() - 60) : m.end() + 60]!r}"
        for i, c in enumerate(markdown)
        for m in RAW_MYST.finditer(c["text"])
    ]
    raw += [
        f"Markdown cell {i + 1} shows {example!r}"
        for i, c in enumerate(markdown)
        for example in RAW_EXAMPLES
        if example in c["withCode"]
    ]
    assert raw == [], "raw MyST in JupyterLab:\n" + "\n".join(dict.fromkeys(raw))
    fences = sum(src.count("```mermaid") for src in sources)
    diagrams = sum(c["diagrams"] for c in markdown)
    assert diagrams >= fences, f"{fences} Mermaid fences, {diagrams} diagrams drawn"

    failed = [
        f"code cell {i + 1} ({c['source'][:60]!r}): "
        + "; ".join(c["errors"] or c["tracebacks"])
        for i, c in enumerate(cells)
        if c["errors"] or c["tracebacks"]
    ]
    assert failed == [], "cells failed in JupyterLab:\n" + "\n".join(failed)
    not_run = [
        f"code cell {i + 1} ({c['source'][:60]!r})"
        for i, c in enumerate(cells)
        if c["count"] is None
    ]
    assert not_run == [] and run_all == "true", (
        f"Run All Cells gave {run_all}; cells that did not run: {not_run}"
    )
