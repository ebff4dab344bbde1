"""Plumbing of the mlflow-lifecycle chapter: parameter resolution, tables, the plot
and the manifest checks. The technique (tracking, registry, aliases, the gate) stays
in the notebook."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import labkit
from labkit.k8s import pod_specs

SIZES = {
    "smoke": {
        "n_samples": 2000,
        "hidden_units": [4, 16],
        "learning_rates": [0.01],
        "epochs": 6,
        "restart_tracking_server": True,
    },
    "laptop": {
        "n_samples": 4000,
        "hidden_units": [4, 16, 64],
        "learning_rates": [0.003, 0.03],
        "epochs": 12,
        "restart_tracking_server": True,
    },
    "cluster": {
        "n_samples": 4000,
        "hidden_units": [4, 16, 64],
        "learning_rates": [0.003, 0.03],
        "epochs": 12,
        "restart_tracking_server": True,
    },
}


def resolve_parameters(profile: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The chapter's parameters, checked: a value other than None overrides the
    profile's size."""
    profile = labkit.check_profile(profile)
    sizes = labkit.pick(profile, SIZES)
    p = {k: sizes[k] if given.get(k) is None else given[k] for k in sizes}
    out = {
        "profile": profile,
        "n_samples": labkit.check_positive(
            "n_samples", p["n_samples"], maximum=200_000
        ),
        "hidden_units": [
            labkit.check_positive("hidden_units", h, maximum=1024)
            for h in p["hidden_units"]
        ],
        "learning_rates": [
            labkit.check_positive("learning_rates", lr, integer=False, maximum=1.0)
            for lr in p["learning_rates"]
        ],
        "epochs": labkit.check_positive("epochs", p["epochs"], maximum=500),
        "restart_tracking_server": labkit.check_choice(
            "restart_tracking_server", p["restart_tracking_server"], (True, False)
        ),
        "promotion_margin": labkit.check_positive(
            "promotion_margin", given["promotion_margin"], integer=False, maximum=0.5
        ),
        "probe_rows": labkit.check_positive(
            "probe_rows", given["probe_rows"], maximum=10_000
        ),
        "server_timeout_s": labkit.check_positive(
            "server_timeout_s", given["server_timeout_s"], integer=False, maximum=900
        ),
        "seed": labkit.check_positive("seed", given["seed"]),
    }
    if len(out["hidden_units"]) * len(out["learning_rates"]) < 2:
        raise ValueError(
            "the sweep needs at least 2 runs (a champion and a challenger): "
            "give more hidden_units or learning_rates"
        )
    return out


def registry_table(client: Any, model_name: str) -> Any:
    """The versions of a registered model with aliases and tags (no ids or
    timestamps: they vary per run)."""
    import pandas as pd

    # search_model_versions leaves the aliases out; get_model_version returns them
    versions = [
        client.get_model_version(model_name, v.version)
        for v in client.search_model_versions(f"name = '{model_name}'")
    ]
    rows = [
        {
            "version": int(v.version),
            "aliases": ", ".join(sorted(v.aliases)) or "-",
            "run": v.tags.get("run_name"),
            "val accuracy": v.tags.get("val_accuracy"),
            "test accuracy": v.tags.get("test_accuracy"),
            "train digest": v.tags.get("train_dataset_digest"),
        }
        for v in versions
    ]
    return pd.DataFrame(rows).sort_values("version").reset_index(drop=True)


def plot_learning_curves(client: Any, logged: Mapping[str, Any]) -> None:
    """Validation accuracy and log loss per epoch of every run, read back from the
    tracking server."""
    import matplotlib.pyplot as plt
    import numpy as np

    def history(run_id: str, key: str) -> tuple[np.ndarray, np.ndarray]:
        points = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        return np.array([m.step + 1 for m in points]), np.array(
            [m.value for m in points]
        )

    top_lr = max(r["params"]["learning_rate"] for r in logged.values())
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    order = sorted(
        logged.items(),
        key=lambda i: (i[1]["params"]["learning_rate"], i[1]["params"]["hidden_units"]),
    )
    for run_name, record in order:
        style = "-" if record["params"]["learning_rate"] == top_lr else "--"
        for ax, key in ((ax_acc, "val_accuracy"), (ax_loss, "val_log_loss")):
            steps, values = history(record["run_id"], key)
            ax.plot(steps, values, style, marker="o", markersize=3, label=run_name)
    ax_acc.set(
        xlabel="epoch",
        ylabel="validation accuracy",
        title="Learning curves, read back from the server",
    )
    ax_loss.set(
        xlabel="epoch", ylabel="validation log loss", title="Validation log loss"
    )
    ax_acc.legend(fontsize=8)
    fig.tight_layout()
    plt.show()


# scheme://user:password@ in a literal: a credential that belongs in a Secret
_URI_CREDENTIALS = re.compile(r"[A-Za-z][\w+.-]*://[^\s/:@]+:[^\s/@]+@")


def literal_credential_problems(docs: Iterable[Mapping[str, Any]]) -> list[str]:
    """Containers whose command, args or env literal values hold a credential in a
    URI (`scheme://user:pass@`), including `$(VAR)` placeholders: the expanded
    password would then sit in the process's command line."""
    problems = []
    for doc in docs:
        for path, spec in pod_specs(doc):
            for c in [*(spec.get("initContainers") or []), *spec["containers"]]:
                literals = [*(c.get("command") or []), *(c.get("args") or [])]
                literals += [e["value"] for e in c.get("env") or [] if "value" in e]
                problems += [
                    f"{doc['kind']}/{doc['metadata']['name']} {path} container "
                    f"{c['name']!r}: credentials in {value!r}"
                    for value in literals
                    if _URI_CREDENTIALS.search(str(value))
                ]
    return problems


def migration_runners(docs: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Which workloads run `mlflow db upgrade`, and how many pods of each do it at
    once (a Deployment: every replica; a Job: its parallelism)."""
    runners = {}
    for doc in docs:
        for _, spec in pod_specs(doc):
            containers = [*(spec.get("initContainers") or []), *spec["containers"]]
            if any(
                re.search(
                    r"\bupgrade\b",
                    " ".join([*(c.get("command") or []), *(c.get("args") or [])]),
                )
                for c in containers
            ):
                copies = doc["spec"].get(
                    "replicas" if doc["kind"] != "Job" else "parallelism", 1
                )
                runners[f"{doc['kind']}/{doc['metadata']['name']}"] = copies
    return runners


def server_dry_run(manifests: list[dict], profile: str, kubeconfig: str | None) -> str:
    """With profile=cluster and a kubeconfig, send the manifests to the API server as a
    server-side dry run (nothing is created); say what was checked."""
    if profile != "cluster":
        return (
            f"profile={profile}: the manifests were validated offline; "
            "apply them with kubectl"
        )
    if not kubeconfig:
        return (
            "no Kubernetes config: the manifests were validated offline "
            "against the 1.30 schema"
        )
    from kubernetes import client as k8s
    from kubernetes import config as kube_config
    from kubernetes import utils as kube_utils

    if kubeconfig == "in-cluster":
        kube_config.load_incluster_config()
    else:
        kube_config.load_kube_config(config_file=kubeconfig)
    api = k8s.ApiClient()
    for manifest in manifests:
        kube_utils.create_from_dict(api, manifest, dry_run="All")
    return (
        f"the API server accepted all {len(manifests)} objects "
        "(server-side dry run, nothing created)"
    )


def timeline_table(timeline: list[dict]) -> Any:
    """The release story as a table: per event, the alias, the version that answered,
    and whether the served predictions changed."""
    import numpy as np
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "event": s["event"],
                "alias moved": s["alias moved"],
                "champion": s["champion"],
                "served version": s["served version"],
                "positives in probe": int(s["predictions"].sum()),
                "changed": i > 0
                and not np.array_equal(
                    timeline[i - 1]["predictions"], s["predictions"]
                ),
            }
            for i, s in enumerate(timeline)
        ]
    )


def previous_edition_deployment(deployment: dict, image: str) -> dict:
    """The previous edition's server Deployment, for the checks to reject: the
    backend URI built in the arguments, and `mlflow db upgrade` as an init container
    of every replica."""
    import json

    old = json.loads(json.dumps(deployment))
    pod = old["spec"]["template"]["spec"]
    uri = "postgresql://$(DB_USER):$(DB_PASSWORD)@postgres.mlops.svc:5432/mlflow"
    pod["containers"][0]["args"] += ["--backend-store-uri", uri]
    pod["initContainers"] = [
        {"name": "db-upgrade", "image": image, "args": ["db", "upgrade", uri]}
    ]
    return old
