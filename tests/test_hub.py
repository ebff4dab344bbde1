"""The online lab end to end: a real JupyterHub (`make hub`), driven in Chromium.

A learner opens the book's nbgitpuller link, is asked to log in, is refused with a
wrong password, logs in with the shared one; the hub starts the learner's server,
nbgitpuller clones the book (a snapshot of the checkout's committed HEAD that the hub
keeps as a local repository, a file:// URL: offline) into the learner's home, and
JupyterLab opens a chapter. The test runs the chapter's first code cells with
Shift+Enter and reads their output, then opens the exam the hub gave the learner
(nbgrader's student version: stubs, no solution, no hidden test). Then the hub is
stopped, and no process it started may be left: not the hub, not
configurable-http-proxy, not a single-user server, not a kernel.

A faster test without a browser checks the login form's answers (a wrong password, a
user not on the list), that a learner's server gets the released exams in ~/exams/,
and that stopping the hub with a learner's server running leaves nothing.
"""

from __future__ import annotations

import http.cookiejar
import json
import re
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import browsing
import psutil
import pytest

from labkit.book import ROOT
from labkit.exams import release
from labkit.hub import (
    Hub,
    hub_processes,
    nbgitpuller_link,
    snapshot_book,
    start_hub,
    start_user_server,
    stop_hub,
    user_server_process,
)

CHAPTER = "notebooks/00-start/environment-check.ipynb"
EXAM = "notebooks/exams/foundations.ipynb"
RUN_CODE_CELLS = 3  # parameters, setup, and the first cell that prints
EXPECTED_OUTPUT = re.compile(r"profile=laptop: \d+ CPUs")
PAGE_READY_MS = 120_000
CELLS_RUN_MS = 90_000


def leftovers(hub: Hub, ports: list[int]) -> list[str]:
    """Processes the hub started that still run, found two ways: the marker in their
    environment, or the workdir or one of the hub's ports on their command line."""
    found = {p.pid: p for p in hub_processes(hub)}
    needles = [str(hub.workdir)] + [f"--port {port}" for port in ports]
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if any(needle in command for needle in needles):
            found[process.pid] = process
    alive = []
    for process in found.values():
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                alive.append(" ".join(process.cmdline()))
        except psutil.NoSuchProcess:
            pass
    return alive


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def make_hub(tmp_path: Path) -> Iterator[Callable[[Path], Hub]]:
    """Start a hub in tmp_path whose learners get `exams`; stopped at teardown (the
    tests stop it themselves; this is for a failure)."""
    started: list[Hub] = []

    def make(exams: Path) -> Hub:
        begun = time.monotonic()
        started.append(start_hub(tmp_path / "hub", exams=exams))
        print(f"hub ready in {time.monotonic() - begun:.1f} s at {started[-1].url}")
        return started[-1]

    try:
        yield make
    finally:
        for running in started:
            stop_hub(running)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def log_in(hub: Hub, user: str, password: str) -> tuple[int, str]:
    """Post the hub's login form as a browser does (with its XSRF token): the status
    and the body (a 302 to the learner's server when the login is accepted)."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(jar), NoRedirect
    )
    with opener.open(f"{hub.url}/hub/login", timeout=30) as page:
        form = page.read().decode()
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', form).group(1)
    data = urllib.parse.urlencode(
        {"username": user, "password": password, "_xsrf": xsrf}
    ).encode()
    try:
        with opener.open(f"{hub.url}/hub/login", data=data, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as answer:
        return answer.code, answer.read().decode()


def test_login_exams_and_stop_leave_nothing(
    make_hub: Callable[[Path], Hub], tmp_path: Path
) -> None:
    exams = tmp_path / "release" / "foundations"  # stands for nbgrader's release
    exams.mkdir(parents=True)
    (exams / "foundations.ipynb").write_text('{"cells": []}')
    hub = make_hub(tmp_path / "release")
    port = urlparse(hub.url).port
    learner = hub.users[0]
    status, body = log_in(hub, learner, hub.password + "x")
    assert status == 403 and "Invalid username or password" in body, status
    status, _ = log_in(hub, "stranger", hub.password)  # not on the allowed list
    assert status == 403, status
    status, _ = log_in(hub, learner, hub.password)
    assert status == 302, f"the shared password was refused: {status}"
    users = {u["name"]: u for u in json.loads(_get(hub, hub.api_url + "/users"))}
    assert set(users) == {*hub.users, hub.admin}
    assert users[hub.admin]["admin"] and not users[learner]["admin"]

    # A learner's server (started as the hub's own Unix user) gets the exams.
    ready_s = start_user_server(hub, learner)
    print(f"{learner}'s server ready in {ready_s:.1f} s")
    server = user_server_process(hub, learner)
    assert Path(server.cwd()) == hub.home(learner)
    exam = hub.home(learner) / "exams" / "foundations" / "foundations.ipynb"
    assert exam.read_text() == '{"cells": []}'

    # The learner's link: spawn, then nbgitpuller; its query, sent to nbgitpuller's
    # API with the admin token, clones the book's committed HEAD into the home.
    link = urlparse(nbgitpuller_link(hub, learner, CHAPTER))
    assert link.path == f"/hub/spawn/{learner}"
    pull = urlparse(urllib.parse.parse_qs(link.query)["next"][0])
    assert pull.path == f"/user/{learner}/git-pull"
    pull_api = f"{hub.url}/user/{learner}/git-pull/api?{pull.query}"
    assert '"phase": "finished"' in _get(hub, pull_api)
    assert (hub.home(learner) / ROOT.name / CHAPTER).is_file()

    started = time.monotonic()
    killed = stop_hub(hub)
    print(f"hub stopped in {time.monotonic() - started:.1f} s")
    assert killed == [], f"stop_hub had to kill {killed}"
    assert leftovers(hub, [port]) == []
    assert not port_open(port), f"port {port} still answers"


def test_snapshot_of_a_detached_head_is_a_branch_nbgitpuller_clones(
    tmp_path: Path,
) -> None:
    """A CI checkout has a detached HEAD; nbgitpuller clones a branch. The hub serves
    a snapshot whose default branch is that HEAD, and refreshes it."""
    from nbgitpuller.pull import GitPuller

    source = tmp_path / "checkout"

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(source), *args], check=True)

    def commit(text: str) -> None:
        (source / "chapter.txt").write_text(text)
        git("add", "chapter.txt")
        git(
            "-c", "user.name=a", "-c", "user.email=a@example.org", "commit", "-qm", text
        )

    def pulled(name: str) -> str:
        clone = tmp_path / name
        for _ in GitPuller(snapshot.as_uri(), str(clone)).pull():
            pass
        return (clone / "chapter.txt").read_text()

    source.mkdir()
    git("init", "-q")
    commit("one")
    commit("two")
    git("checkout", "-q", "--detach", "HEAD~1")
    snapshot = snapshot_book(tmp_path / "served" / "book.git", source)
    assert pulled("first") == "one"
    git("checkout", "-q", "--detach", "HEAD@{1}")  # the checkout moves on
    snapshot_book(snapshot, source)
    assert pulled("second") == "two"


def _get(hub: Hub, url: str) -> str:
    """GET with the hub's admin token; the body."""
    request = urllib.request.Request(
        url, headers={"Authorization": f"token {hub.api_token}"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read().decode()


@pytest.mark.browser
def test_learner_opens_the_book_through_nbgitpuller(
    make_hub: Callable[[Path], Hub], tmp_path: Path
) -> None:
    started = time.monotonic()

    def phase(name: str) -> None:  # shown with a failure: where the time went
        print(f"{time.monotonic() - started:6.1f} s  {name}")

    # The student version of an exam (nbgrader generate_assignment), served by the hub.
    release(ROOT / EXAM, tmp_path / "release" / Path(EXAM).stem)
    phase("exam released")
    hub = make_hub(tmp_path / "release")
    learner = hub.users[0]
    port = urlparse(hub.url).port

    with browsing.chromium() as browser:
        page = browser.new_page(viewport={"width": 1366, "height": 900})  # type: ignore[attr-defined]
        foreign: list[str] = []

        def only_loopback(route: object) -> None:
            request_url = route.request.url  # type: ignore[attr-defined]
            parts = urlparse(request_url)
            if parts.scheme in ("http", "https", "ws", "wss") and (
                parts.hostname != "127.0.0.1"
            ):
                foreign.append(request_url)
                route.abort()  # type: ignore[attr-defined]
            else:
                route.continue_()  # type: ignore[attr-defined]

        page.route("**/*", only_loopback)
        page.set_default_timeout(PAGE_READY_MS)

        # The link a teacher hands out; the hub asks the learner to log in first.
        page.goto(nbgitpuller_link(hub, None, CHAPTER))
        page.fill("#username_input", learner)
        page.fill("#password_input", "not-the-password")
        page.click("#login_submit")
        page.wait_for_selector(".login_error")
        assert "Invalid username or password" in page.inner_text(".login_error")
        phase("wrong password refused")
        page.fill("#username_input", learner)
        page.fill("#password_input", hub.password)
        page.click("#login_submit")

        # Spawn, pull, JupyterLab: the chapter is open with a connected kernel.
        page.wait_for_function(
            """path => {
              const app = window.jupyterapp;
              const panel = app && app.shell.currentWidget;
              return panel && panel.context && panel.context.path.endsWith(path)
                && panel.context.isReady && panel.content.widgets.length > 0
                && panel.sessionContext.session
                && panel.sessionContext.session.kernel
                && panel.sessionContext.session.kernel.connectionStatus
                   === 'connected';
            }""",
            arg=CHAPTER,
            polling=500,
        )
        assert f"/user/{learner}/lab/tree/" in page.url, page.url
        phase("logged in, book pulled, chapter open in JupyterLab")
        clone = hub.home(learner) / ROOT.name
        assert (clone / ".git").is_dir() and (clone / CHAPTER).is_file()
        cells = json.loads((clone / CHAPTER).read_text())["cells"]
        code_at = [i for i, c in enumerate(cells) if c["cell_type"] == "code"]
        presses = code_at[RUN_CODE_CELLS - 1] + 1  # Shift+Enter up to the n-th

        # Clear the stored outputs, select the first cell, then Shift+Enter cell by
        # cell as a reader does.
        page.evaluate(
            """() => window.jupyterapp.commands.execute(
                 'notebook:clear-all-cell-outputs')"""
        )
        page.locator(".jp-Notebook .jp-Cell").first.locator(".jp-InputPrompt").click()
        for _ in range(presses):
            page.keyboard.press("Shift+Enter")
        page.wait_for_function(
            """n => {
              const panel = window.jupyterapp.shell.currentWidget;
              const code = panel.content.widgets.filter(c => c.model.type === 'code');
              return code.slice(0, n).every(c => c.model.executionCount !== null)
                && panel.sessionContext.session.kernel.status === 'idle';
            }""",
            arg=RUN_CODE_CELLS,
            timeout=CELLS_RUN_MS,
            polling=500,
        )
        phase(f"{RUN_CODE_CELLS} code cells run with Shift+Enter")
        outputs = page.evaluate(
            """n => window.jupyterapp.shell.currentWidget.content.widgets
                 .filter(c => c.model.type === 'code').slice(0, n)
                 .map(c => ({
                   outputs: c.model.outputs.toJSON(),
                   shown: c.node.querySelector('.jp-OutputArea').innerText,
                 }))""",
            RUN_CODE_CELLS,
        )

        # The learner's exam: the student version, in ~/exams/, opens in JupyterLab.
        exam_in_home = f"exams/{Path(EXAM).stem}/{Path(EXAM).name}"
        on_disk = json.loads((hub.home(learner) / exam_in_home).read_text())["cells"]
        page.goto(f"{hub.url}/user/{learner}/lab/tree/{exam_in_home}")
        # The panel shows one empty cell until the file's content has loaded: wait
        # for as many cells as the file holds.
        page.wait_for_function(
            """([path, n]) => {
              const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
              return panel && panel.context && panel.context.path === path
                && panel.context.isReady && panel.content.widgets.length === n;
            }""",
            arg=[exam_in_home, len(on_disk)],
            polling=500,
        )
        exam_sources = page.evaluate(
            """() => window.jupyterapp.shell.currentWidget.content.widgets
                 .map(c => c.model.sharedModel.getSource())"""
        )
        phase(f"exam open: {len(exam_sources)} cells")
        page.close()

    src = [c["source"] for c in on_disk]
    assert exam_sources == [s if isinstance(s, str) else "".join(s) for s in src]
    exam_text = "\n".join(exam_sources)
    assert "YOUR CODE HERE" in exam_text
    assert "BEGIN SOLUTION" not in exam_text and "BEGIN HIDDEN TESTS" not in exam_text

    errors = [o for c in outputs for o in c["outputs"] if o["output_type"] == "error"]
    assert errors == [], errors
    shown = outputs[-1]["shown"]
    assert EXPECTED_OUTPUT.search(shown), f"cell output shows {shown[:300]!r}"
    assert foreign == [], f"the pages asked hosts other than 127.0.0.1: {foreign}"

    killed = stop_hub(hub)
    phase("hub stopped")
    assert killed == [], f"stop_hub had to kill {killed}"
    assert leftovers(hub, [port]) == []
    assert not port_open(port)
