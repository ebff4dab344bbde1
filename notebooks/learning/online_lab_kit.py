"""Plumbing for the online-lab chapter: the parameters, the chapters' stamps, the
learners' servers on the book's JupyterHub and their memory, the node's reserve, Helm's
merge of values, tables and plots. The sizing itself (profiles, culling, bin packing)
stays in the notebook."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import matplotlib.pyplot as plt
import psutil
import yaml

import labkit
from labkit import book
from labkit import hub as labhub

HERE = Path(__file__).resolve().parent
CHAPTER = Path("notebooks/learning/online-lab.ipynb")
SCHEMA = HERE / "z2jh/values.schema.json"
CHART_VALUES = HERE / "z2jh/values.yaml"
SIZES = {
    "smoke": {"hub_servers": 1},
    "laptop": {"hub_servers": 3},
    "cluster": {"hub_servers": 3},
}
STAMP_FIELDS = ("wall_s", "cpu_s", "peak_rss_mib")


def resolve_parameters(profile: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The chapter's parameters, checked: a value other than None overrides the
    profile's size."""
    profile = labkit.check_profile(profile)
    sizes = labkit.pick(profile, SIZES)
    servers = given["hub_servers"] or sizes["hub_servers"]
    pos = labkit.check_positive
    learners = list(given["learners"])
    for n in learners:
        pos("learners", n, maximum=1_000_000)
    if learners != sorted(set(learners)):
        raise ValueError(f"learners={learners!r} must be increasing")
    if not 0 < given["concurrency"] <= 1:
        raise ValueError(f"concurrency={given['concurrency']!r} must be in (0, 1]")
    if not 0.5 <= given["limit_quantile"] < 1:
        raise ValueError(
            f"limit_quantile={given['limit_quantile']!r} must be in [0.5, 1)"
        )
    return {
        "profile": profile,
        "hub_servers": pos("hub_servers", servers, maximum=len(labhub.USERS)),
        "learners": learners,
        "concurrency": given["concurrency"],
        "session_min": pos("session_min", given["session_min"], maximum=600),
        "cull_timeout_s": pos("cull_timeout_s", given["cull_timeout_s"]),
        "cull_every_s": pos("cull_every_s", given["cull_every_s"]),
        "limit_quantile": given["limit_quantile"],
        "headroom": pos("headroom", given["headroom"], integer=False, maximum=3),
        "node_cpu": pos("node_cpu", given["node_cpu"], maximum=512),
        "node_memory_gib": pos("node_memory_gib", given["node_memory_gib"]),
        "max_pods_per_node": pos("max_pods_per_node", given["max_pods_per_node"]),
    }


# --- the chapters' stamps --------------------------------------------------------


def chapter_stamps(root: Path | None = None) -> list[dict[str, Any]]:
    """One row per chapter of `_toc.yml` but this one: its stamp's wall time, CPU
    seconds and peak RSS. A stamp without them is an error naming the chapter."""
    root = book.ROOT if root is None else Path(root)
    rows, missing = [], []
    for path in book.toc_notebooks(root):
        if path == CHAPTER:
            continue
        nb = json.loads((root / path).read_text())
        stamp = nb.get("metadata", {}).get("labkit", {}).get("stamp", {})
        lacks = [f for f in STAMP_FIELDS if stamp.get(f) is None]
        if lacks:
            missing.append(f"{path} (no {', '.join(lacks)})")
            continue
        rows.append(
            {"chapter": str(path.with_suffix("")).removeprefix("notebooks/")}
            | {f: float(stamp[f]) for f in STAMP_FIELDS}
        )
    if missing:
        raise ValueError(
            "these chapters' stamps lack the resource fields: "
            + "; ".join(missing)
            + ". Run `make execute NB=<notebook>` for each (or `make execute`), then "
            "this chapter."
        )
    return rows


# --- learners' servers on the book's hub ------------------------------------------


def start_servers(
    hub: labhub.Hub, users: Sequence[str], timeout_s: float = 120
) -> dict[str, float]:
    """Start each user's server through the REST API and wait until all are ready;
    return the seconds each took, by user."""
    started = time.perf_counter()
    for user in users:
        labhub.api(hub, "POST", f"/users/{user}/server")
    ready: dict[str, float] = {}
    while len(ready) < len(users):
        if time.perf_counter() - started > timeout_s:
            waiting = sorted(set(users) - set(ready))
            raise TimeoutError(f"servers of {waiting} not ready in {timeout_s} s")
        for user in set(users) - set(ready):
            server = labhub.api(hub, "GET", f"/users/{user}")["servers"].get("")
            if server and server["ready"]:
                ready[user] = time.perf_counter() - started
        time.sleep(0.2)
    return ready


def rss_mib(processes: Sequence[psutil.Process]) -> float:
    """The summed resident memory of `processes`, in MiB (gone ones count 0)."""
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def hub_memory(hub: labhub.Hub) -> tuple[dict[str, float], float]:
    """RSS in MiB of each learner's server with its children, and of hub + proxy."""
    by_user: dict[str, list[psutil.Process]] = {}
    core = []
    for process in labhub.hub_processes(hub):
        try:
            user = process.environ().get("JUPYTERHUB_USER")
        except psutil.Error:
            continue
        if user:
            by_user.setdefault(user, []).append(process)
        else:  # the hub and configurable-http-proxy
            core.append(process)
    return {u: rss_mib(p) for u, p in sorted(by_user.items())}, rss_mib(core)


# --- the node ----------------------------------------------------------------------


def gke_reserved(node_cpu: int, node_memory_gib: float) -> tuple[float, float]:
    """CPU (cores) and memory (GiB) GKE reserves for the kubelet, the runtime and
    eviction on a node of that shape (GKE docs, "Plan node sizes")."""
    memory_steps = [(4, 0.25), (4, 0.20), (8, 0.10), (112, 0.06), (math.inf, 0.02)]
    cpu_steps = [(1, 0.06), (1, 0.01), (2, 0.005), (math.inf, 0.0025)]

    def tiered(amount: float, steps: Sequence[tuple[float, float]]) -> float:
        reserved = 0.0
        for size, share in steps:
            part = min(amount, size)
            reserved += part * share
            amount -= part
            if amount <= 0:
                break
        return reserved

    eviction_gib = 100 / 1024  # the kubelet's hard eviction threshold, 100 MiB
    return tiered(node_cpu, cpu_steps), tiered(node_memory_gib, memory_steps) + (
        eviction_gib
    )


# --- Helm values -------------------------------------------------------------------


def helm_merge(defaults: Any, values: Any) -> Any:
    """Helm's coalescing of user values over a chart's defaults: maps merge key by
    key, anything else replaces, and a null removes the default's key."""
    if not (isinstance(defaults, dict) and isinstance(values, dict)):
        return values
    merged = dict(defaults)
    for key, value in values.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = helm_merge(defaults.get(key), value)
    return merged


def schema_errors(values: Mapping[str, Any]) -> list[str]:
    """What the chart's values schema rejects in `values` merged over the chart's
    defaults (what `helm install` checks), as 'path: message' lines."""
    schema = json.loads(SCHEMA.read_text())
    merged = helm_merge(yaml.safe_load(CHART_VALUES.read_text()), values)
    validator = jsonschema.Draft7Validator(schema)
    return sorted(
        f"{'.'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}"
        for e in validator.iter_errors(merged)
    )


# --- tables and plots --------------------------------------------------------------


def print_table(rows: Sequence[Mapping[str, Any]]) -> None:
    """Rows as an aligned text table."""
    import pandas as pd

    print(pd.DataFrame(list(rows)).to_string(index=False) if rows else "(no rows)")


def plot_chapters(rows: Sequence[Mapping[str, Any]], server_mib: float, limits):
    """Each chapter's memory need (server + kernel peak) against the profiles'
    guarantee and limits."""
    rows = sorted(rows, key=lambda r: r["need_mib"])
    fig, ax = plt.subplots(figsize=(8, 0.18 * len(rows) + 1.5))
    names = [r["chapter"] for r in rows]
    ax.barh(names, [server_mib] * len(rows), color="0.7", label="idle server")
    ax.barh(
        names,
        [r["peak_rss_mib"] for r in rows],
        left=[server_mib] * len(rows),
        label="chapter's peak (kernel and children)",
    )
    for label, mib, style in limits:
        ax.axvline(mib, linestyle=style, color="k", linewidth=1)
        ax.annotate(label, (mib, len(rows) - 0.5), rotation=90, ha="right", va="top")
    ax.set_xlabel("memory, MiB (RSS)")
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(loc="lower right", fontsize=8)
    plt.show()


def plot_nodes(rows: Sequence[Mapping[str, Any]]) -> None:
    """Nodes against class size, with the memory and CPU lower bounds."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = [r["enrolled"] for r in rows]
    ax.plot(x, [r["nodes"] for r in rows], "o-", label="nodes (bin packing)")
    ax.plot(x, [r["memory bound"] for r in rows], "s--", label="memory bound")
    ax.plot(x, [r["CPU bound"] for r in rows], "^:", label="CPU bound")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("enrolled learners")
    ax.set_ylabel("user nodes")
    ax.legend()
    plt.show()
