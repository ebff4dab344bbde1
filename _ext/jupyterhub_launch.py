"""A JupyterHub launch button only when the build names a hub: `JUPYTERHUB_URL`.

The book has no hub of its own, so `_config.yml` names none (a placeholder would put
a dead button on every page). A site that serves the book next to its JupyterHub
builds it with

    JUPYTERHUB_URL=https://hub.example.org jupyter-book build .

and every chapter page gets a JupyterHub button. sphinx-book-theme 1.3 makes it an
nbgitpuller link built from `repository:` in `_config.yml`, the one place the
repository is named:

    <hub>/hub/user-redirect/git-pull?repo=<repository url>
        &urlpath=lab/tree/<repo name>/<notebook>&branch=<branch>

nbgitpuller (in the book's lock, so in the hub's environment) clones or updates the
repository into `~/<repo name>` and opens the notebook in JupyterLab. A hub under a
path prefix works too (`https://example.org/jupyter`). Without the variable, or with
it empty, nothing changes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.errors import ConfigError

ENV_VAR = "JUPYTERHUB_URL"


def hub_url_from_environment(environ: Mapping[str, str]) -> str:
    """The hub's base URL from `JUPYTERHUB_URL`, no trailing slash; "" if unset."""
    raw = environ.get(ENV_VAR, "").strip()
    if not raw:
        return ""
    parts = urlsplit(raw)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.query
        or parts.fragment
    ):
        raise ConfigError(
            f"{ENV_VAR}={raw!r} is not a hub's base URL: give http(s)://host[/prefix]"
            " without a query or fragment (the build adds /hub/user-redirect/...)"
        )
    return raw.rstrip("/")


def set_jupyterhub_url(app: Sphinx, config: Config) -> None:
    url = hub_url_from_environment(os.environ)
    if not url:
        return
    options: dict[str, Any] = dict(config.html_theme_options or {})
    launch = dict(options.get("launch_buttons") or {})
    launch["jupyterhub_url"] = url
    options["launch_buttons"] = launch
    config.html_theme_options = options


def setup(app: Sphinx) -> dict[str, Any]:
    # Before sphinx-book-theme's config-inited handler (priority 500) reads the options.
    app.connect("config-inited", set_jupyterhub_url, priority=400)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
