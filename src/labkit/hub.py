"""A real JupyterHub on 127.0.0.1 for a class on one machine (`make hub`).

DEMO ONLY, NOT FOR THE INTERNET: one shared password, every learner's server runs as
the hub's Unix user (see hub/jupyterhub_config.py). `start_hub` starts the hub (which
starts configurable-http-proxy), `stop_hub` stops the hub, the proxy, every
single-user server and kernel, and checks that none is left.
"""

from __future__ import annotations

import argparse
import json
import secrets
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from labkit.servers import free_port, start_server, stop_server

BOOK = Path(__file__).resolve().parents[2]
CONFIG = BOOK / "hub" / "jupyterhub_config.py"
USERS = [f"learner{i}" for i in range(1, 4)]
ADMIN = "teacher"
MIN_PASSWORD = 8  # SharedPasswordAuthenticator's minimum for user_password


@dataclass
class Hub:
    """A running hub: its public URL, REST API, admin token and shared password."""

    url: str  # the proxy's public URL, http://127.0.0.1:PORT
    api_url: str  # url + "/hub/api"
    api_token: str  # the `labkit` service's admin token
    password: str  # the learners' shared password
    workdir: Path  # sqlite db, cookie secret, logs; homes under workdir/"home"/<user>
    server: Any  # the hub's process (labkit.start_server handle)
    repo: str = ""  # file:// URL of the snapshot of the book that learners pull
    users: list[str] = field(default_factory=lambda: list(USERS))
    admin: str = ADMIN
    admin_password: str = ""

    def home(self, user: str) -> Path:
        """The learner's home folder (the single-user server's root)."""
        return self.workdir / "home" / user


def start_hub(
    workdir: Path,
    port: int | None = None,
    password: str | None = None,
    *,
    users: list[str] | None = None,
    exams: Path | None = None,
    timeout_s: float = 90,
) -> Hub:
    """Start JupyterHub (and its proxy) on 127.0.0.1, state in `workdir`; return when
    the hub answers through the proxy. Learners get a copy of `exams` (default: the
    book's `_build/exams/release`, when it exists) in ~/exams/."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    password = password or secrets.token_urlsafe(9)
    if len(password) < MIN_PASSWORD:
        raise ValueError(
            f"the shared password must have at least {MIN_PASSWORD} characters "
            f"(JupyterHub's SharedPasswordAuthenticator), not {len(password)}"
        )
    users = list(users or USERS)
    repo = snapshot_book(workdir / "repo" / f"{BOOK.name}.git")
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    hub = Hub(
        url=url,
        api_url=f"{url}/hub/api",
        api_token=secrets.token_hex(32),
        password=password,
        workdir=workdir,
        server=None,
        repo=repo.as_uri(),
        users=users,
        admin_password=secrets.token_urlsafe(33),  # >= 32 characters
    )
    env = {
        "LABKIT_HUB_WORKDIR": str(workdir),
        "LABKIT_HUB_PORT": str(port),
        "LABKIT_HUB_HUB_PORT": str(free_port()),
        "LABKIT_HUB_PROXY_API_PORT": str(free_port()),
        "LABKIT_HUB_PASSWORD": password,
        "LABKIT_HUB_ADMIN_PASSWORD": hub.admin_password,
        "LABKIT_HUB_API_TOKEN": hub.api_token,
        "LABKIT_HUB_USERS": ",".join(users),
        "LABKIT_HUB_ADMIN": hub.admin,
        "LABKIT_HUB_EXAMS": str(exams or BOOK / "_build" / "exams" / "release"),
    }
    command = [
        str(Path(sys.executable).with_name("jupyterhub")),
        "-f",
        str(CONFIG),
    ]
    hub.server = start_server(
        command,
        ready_url=f"{url}/hub/api/",
        log_path=workdir / "jupyterhub.log",
        env=env,
        cwd=workdir,
        timeout_s=timeout_s,
    )
    return hub


def snapshot_book(target: Path, source: Path = BOOK) -> Path:
    """A bare repository at `target` whose branch `book` (its HEAD) is `source`'s
    committed HEAD (depth 1), for nbgitpuller: it clones a branch, and a CI checkout
    has a detached HEAD. Updated in place when it exists."""
    if not target.exists():
        _git("init", "--quiet", "--bare", "--initial-branch=book", str(target))
    fetch = ["fetch", "--quiet", "--depth=1", "--no-tags", "--update-head-ok"]
    _git("-C", str(target), *fetch, source.as_uri(), "+HEAD:refs/heads/book")
    return target


def _git(*args: str) -> None:
    done = subprocess.run(["git", *args], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr.strip()}")


def api(hub: Hub, method: str, path: str, body: Any = None) -> Any:
    """Call the hub's REST API with the admin token; return the decoded JSON."""
    request = urllib.request.Request(
        hub.api_url + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"token {hub.api_token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        data = response.read()
    return json.loads(data) if data else None


def start_user_server(hub: Hub, user: str, *, timeout_s: float = 120) -> float:
    """Start `user`'s single-user server through the REST API; return the seconds
    until the hub reports it ready."""
    started = time.monotonic()
    api(hub, "POST", f"/users/{user}/server")
    log = hub.workdir / "jupyterhub.log"
    while True:
        server = api(hub, "GET", f"/users/{user}")["servers"].get("")
        if server is None:  # the hub drops a server whose spawn failed
            raise RuntimeError(f"{user}'s server failed to start: see {log}")
        if server["ready"]:
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{user}'s server not ready after {timeout_s} s: {log}")
        time.sleep(0.2)


def user_server_process(hub: Hub, user: str) -> psutil.Process:
    """The process of `user`'s single-user server (its kernels are its children)."""
    for process in hub_processes(hub):
        try:
            if process.environ().get("JUPYTERHUB_USER") == user and any(
                "jupyterhub-singleuser" in part for part in process.cmdline()
            ):
                return process
        except psutil.NoSuchProcess:
            continue
    raise LookupError(f"{user} has no running server on the hub at {hub.url}")


def hub_processes(hub: Hub) -> list[psutil.Process]:
    """Every live process this hub started: the hub, the proxy, single-user servers
    and their kernels (all carry LABKIT_HUB_WORKDIR=workdir in their environment)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("LABKIT_HUB_WORKDIR") == str(hub.workdir):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def stop_hub(hub: Hub, *, timeout_s: float = 30) -> list[str]:
    """Stop every learner's server (REST API), then the hub, which stops its proxy.
    Return the command lines of processes still there afterwards, which were killed
    (empty when the shutdown was clean)."""
    if hub.server is not None and hub.server.poll() is None:
        try:
            for user in api(hub, "GET", "/users"):
                if user["servers"]:
                    api(hub, "DELETE", f"/users/{user['name']}/server")
        except OSError:  # the hub is not answering: stop_server stops it below
            pass
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _learner_processes(hub):
            time.sleep(0.2)
        stop_server(hub.server, timeout_s=timeout_s)
    leftovers = _alive(hub)
    killed = []
    for process in leftovers:
        try:
            killed.append(" ".join(process.cmdline()))
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(leftovers, timeout=5)
    return killed


def _alive(hub: Hub) -> list[psutil.Process]:
    """hub_processes without zombies."""
    alive = []
    for process in hub_processes(hub):
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


def _learner_processes(hub: Hub) -> list[psutil.Process]:
    """Single-user servers and kernels: every live process of the hub but the hub
    and its proxy."""
    learners = []
    for process in _alive(hub):
        try:
            command = " ".join(process.cmdline())
        except psutil.NoSuchProcess:
            continue
        if process.pid != hub.server.pid and "configurable-http-proxy" not in command:
            learners.append(process)
    return learners


def nbgitpuller_link(
    hub: Hub, user: str | None, path: str, *, repo: str | None = None, branch: str = ""
) -> str:
    """A link that clones (or updates) the book into the learner's home with
    nbgitpuller and opens `path` (relative to the book) in JupyterLab, starting the
    learner's server first if needed.

    With `user=None` it is the link a teacher hands out: it works for whoever logs in.
    `repo` defaults to the hub's snapshot of the book's committed HEAD (a file:// URL:
    offline); work not committed when the hub started is not in it."""
    repo = repo or hub.repo
    target = repo.rstrip("/").split("/")[-1].removesuffix(".git")
    query = {
        "repo": repo,
        "urlpath": f"lab/tree/{target}/{path}",
        "targetpath": target,
    }
    if branch:
        query["branch"] = branch
    pull = f"git-pull?{urllib.parse.urlencode(query)}"
    if user is None:  # the hub sends each learner to their own server
        return f"{hub.url}/hub/user-redirect/{pull}"
    # /hub/spawn/<user> starts the server (if it is not running) and then follows next.
    next_url = urllib.parse.urlencode({"next": f"/user/{user}/{pull}"})
    return f"{hub.url}/hub/spawn/{user}?{next_url}"


def main(argv: list[str] | None = None) -> int:
    """`python -m labkit.hub`: run the demo hub in the foreground until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m labkit.hub",
        description="A JupyterHub on 127.0.0.1 for a class on one machine. "
        "Demo only, not for the internet.",
    )
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workdir", type=Path, default=BOOK / "_build" / "hub")
    parser.add_argument("--password", default=None, help="shared learner password")
    parser.add_argument("--learners", type=int, default=len(USERS))
    args = parser.parse_args(argv)
    users = [f"learner{i}" for i in range(1, args.learners + 1)]
    # Ctrl-C (even where the shell started us ignoring it) and SIGTERM stop the hub.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    from labkit.exams import EXAMS, write_release

    missing = [exam for exam in EXAMS if not (BOOK / exam).exists()]
    if missing:
        print(f"exams not released (missing: {', '.join(missing)}): no ~/exams/")
    else:
        print("releasing the exams' student versions with nbgrader ...", flush=True)
        write_release(BOOK)  # copied into each learner's ~/exams/ at spawn
    hub = start_hub(args.workdir, args.port, args.password, users=users)
    chapter = "notebooks/00-start/environment-check.ipynb"
    print(
        f"JupyterHub is at {hub.url}  (DEMO ONLY, NOT FOR THE INTERNET: listens on "
        "127.0.0.1, one shared password, no isolation between learners)\n"
        f"learners: {', '.join(users)}  password: {hub.password}\n"
        f"admin: {hub.admin}  password: {hub.admin_password}\n"
        f"the book for every learner: {nbgitpuller_link(hub, None, chapter)}\n"
        f"state and log: {hub.workdir}\nCtrl-C stops the hub and every server."
    )
    try:
        while hub.server.poll() is None:
            time.sleep(1)
        print(f"the hub exited with code {hub.server.returncode}: see the log")
    except KeyboardInterrupt:
        pass
    finally:
        stop_hub(hub)
        print("stopped: hub, proxy and every learner's server")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
