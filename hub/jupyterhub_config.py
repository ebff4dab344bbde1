"""JupyterHub for a class on one machine: the book's online lab (`make hub`).

DEMO ONLY, NOT FOR THE INTERNET. Every learner logs in with one shared password, and
every single-user server runs as the hub's own Unix user with no isolation between
learners (SimpleLocalProcessSpawner). The hub listens on 127.0.0.1 only. For a real
class, see the online-lab chapter's Zero-to-JupyterHub values.

`python -m labkit.hub` (or `labkit.hub.start_hub`) starts `jupyterhub -f` with this
file and passes the run's settings in LABKIT_HUB_* variables: the state folder, the
ports, the passwords, the users and the service token.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

c = get_config()  # type: ignore[name-defined]  # noqa: F821

BOOK = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the book's virtual environment


def setting(name: str) -> str:
    """A LABKIT_HUB_* variable; a clear error when the hub was not started by labkit."""
    value = os.environ.get(f"LABKIT_HUB_{name}")
    if not value:
        sys.exit(
            f"LABKIT_HUB_{name} is not set: start the hub with `make hub` "
            "(python -m labkit.hub), which sets it"
        )
    return value


WORKDIR = Path(setting("WORKDIR"))
USERS = setting("USERS").split(",")
ADMIN = setting("ADMIN")
print("JupyterHub demo: one shared password, no isolation: NOT FOR THE INTERNET")

# The proxy's public address, the hub's own, and the proxy's REST API: loopback only.
c.JupyterHub.bind_url = f"http://127.0.0.1:{setting('PORT')}"
c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{setting('HUB_PORT')}"
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{setting('PROXY_API_PORT')}"

PROXY = BOOK / "node_modules" / ".bin" / "configurable-http-proxy"
if not PROXY.exists():
    sys.exit(f"{PROXY} is missing: run `make assets` (npm ci) first")
c.ConfigurableHTTPProxy.command = [str(PROXY)]
c.ConfigurableHTTPProxy.pid_file = str(WORKDIR / "proxy.pid")

# State lives in the workdir: nothing is written into the checkout.
c.JupyterHub.db_url = f"sqlite:///{WORKDIR / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(WORKDIR / "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = str(WORKDIR / "jupyterhub.pid")
c.JupyterHub.cleanup_servers = True  # stopping the hub stops every learner's server
c.JupyterHub.cleanup_proxy = True
# A link to a learner's server that is not running starts it after this many seconds
# (nbgitpuller links work on the first click).
c.JupyterHub.implicit_spawn_seconds = 1

# One shared password for the learners (at least 8 characters); the admin has its own
# (at least 32). Demo only.
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = setting("PASSWORD")
c.SharedPasswordAuthenticator.admin_password = setting("ADMIN_PASSWORD")
c.Authenticator.allowed_users = set(USERS)
c.Authenticator.admin_users = {ADMIN}

# A service holding an admin token, for the REST API (start, stop and list servers).
c.JupyterHub.services = [{"name": "labkit", "api_token": setting("API_TOKEN")}]
c.JupyterHub.load_roles = [
    {
        "name": "labkit-admin",
        "scopes": [
            "admin:users",
            "admin:servers",
            "access:servers",
            "read:hub",
            "tokens",
        ],
        "services": ["labkit"],
    }
]

# Each learner's server: the book's environment, run as the hub's Unix user, with its
# home under the workdir. No root is needed; as root (CI) the server needs --allow-root.
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = str(WORKDIR / "home" / "{username}")
c.Spawner.cmd = [str(BIN / "jupyterhub-singleuser")]
c.Spawner.default_url = "/lab"
c.Spawner.args = [
    # Nothing from the network: no news feed, no update check, no extension search.
    "--LabApp.news_url=None",
    "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    "--LabApp.extension_manager=readonly",
    # window.jupyterapp, which the browser test reads.
    "--LabApp.expose_app_in_browser=True",
]
if os.geteuid() == 0:
    c.Spawner.args.append("--allow-root")
c.Spawner.environment = {
    "LABKIT_HUB_WORKDIR": str(WORKDIR),  # marks every process this hub starts
    "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    "PYDEVD_DISABLE_FILE_VALIDATION": "1",
}
# A loaded 2-core machine starts a JupyterLab server in 5-20 s.
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 90

# Exams: the student versions (`_build/exams/release/`, written by nbgrader's
# generate_assignment through labkit.exams.write_release) go to ~/exams/ in each
# learner's home before the server starts.
EXAMS = Path(setting("EXAMS"))


def copy_exams(spawner: object) -> None:
    """Copy the released exams into ~/exams/; a file the learner already has is kept."""
    if not EXAMS.is_dir():
        return
    target = Path(spawner.home_dir) / "exams"  # type: ignore[attr-defined]
    for source in EXAMS.rglob("*"):
        copy = target / source.relative_to(EXAMS)
        if source.is_file() and not copy.exists():
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy)


c.Spawner.pre_spawn_hook = copy_exams
