"""Plumbing for ray-distributed-training.ipynb: the PyTorch runtime environment of a
cluster's workers, the worker scaling rule, the script written into the ConfigMap, the
KubeRay manifests filled from templates/ray-distributed-training/, and the plots.

The technique (the training loop, the Ray Train calls, the checks) stays in the
notebook.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

TEMPLATES = Path(__file__).parent / "templates" / "ray-distributed-training"
CPU_WHEELS = "https://download.pytorch.org/whl/cpu"


# The chapter's data and model, which ray-model-parallel.ipynb trains again.
def make_spirals(
    n_points: int, seed: int, noise: float = 0.5, turns: float = 1.5
) -> tuple[np.ndarray, np.ndarray]:
    """Three noisy spiral arms, an equal share of points each, shuffled."""
    rng = np.random.default_rng(seed)
    per_class = n_points // 3
    features, labels = [], []
    for arm in range(3):
        radius = np.sqrt(rng.uniform(0.05, 1.0, per_class))
        noise_angle = rng.normal(0.0, noise, per_class)
        angle = 2 * np.pi * (turns * radius + arm / 3) + noise_angle
        features.append(
            np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
        )
        labels.append(np.full(per_class, arm))
    order = rng.permutation(3 * per_class)
    features = np.concatenate(features)[order].astype(np.float32)
    return features, np.concatenate(labels)[order].astype(np.int64)


def build_model(hidden_units: int, seed: int):
    """The data-parallel chapter's MLP: 2 -> hidden -> hidden -> 3, seeded."""
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(2, hidden_units),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden_units, hidden_units),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden_units, 3),
    )


def start_local_cluster(head: dict[str, Any], worker: dict[str, Any]):
    """A `ray.cluster_utils.Cluster` on this machine: a head node and one worker node
    with the given `add_node` arguments, both alive.

    On a busy machine a raylet can miss its start-up deadline (it waits about 15 s
    for its agents' port files); like `labkit.init_ray`, this tries again after a
    clean shutdown and a pause, five times in all.
    """
    import time

    from ray.cluster_utils import Cluster

    attempts = 5
    for attempt in range(1, attempts + 1):
        started = time.time()
        cluster = Cluster(initialize_head=False)
        try:
            cluster.add_node(**head)
            cluster.add_node(**worker)
            cluster.wait_for_nodes()
            return cluster
        except Exception:
            cluster.shutdown()
            _end_processes_of_failed_start(started)
            if attempt == attempts:
                raise
            time.sleep(10 * attempt)
    raise AssertionError("unreachable")


def _end_processes_of_failed_start(started: float) -> None:
    """End what a failed node start left running: the processes started since
    `started` whose command line names one of this process's Ray sessions (session
    folders end in the creating process's id). A node that failed to start is not in
    the Cluster, so `Cluster.shutdown` does not stop its GCS or agents."""
    import psutil

    mark = f"_{os.getpid()}/"
    # psutil's create_time rests on the boot time in whole seconds: allow for it.
    since = started - 2
    for proc in psutil.process_iter(["cmdline", "create_time"]):
        command = " ".join(proc.info["cmdline"] or [])
        if proc.pid != os.getpid() and proc.info["create_time"] >= since:
            if mark in command:
                with contextlib.suppress(psutil.Error):
                    proc.kill()


def torch_runtime_env(torch_version: str, gpu: bool) -> dict[str, Any]:
    """A Ray `runtime_env` that installs this PyTorch version on the workers.

    The `rayproject/ray` images hold Ray without PyTorch. A CPU cluster gets the CPU
    wheel from PyTorch's own index (a tenth of the size); a GPU cluster gets PyPI's
    wheel, which carries CUDA.
    """
    pip: dict[str, Any] = {"packages": [f"torch=={torch_version.split('+')[0]}"]}
    if not gpu:
        pip["pip_install_options"] = ["--index-url", CPU_WHEELS]
    return {"pip": pip}


def scaling_for(cluster_resources: dict, num_workers: int):
    """Ray Train's ScalingConfig: one GPU per worker when the cluster has one for
    each, else CPU workers; SPREAD over the nodes either way."""
    import ray.train

    use_gpu = cluster_resources.get("GPU", 0) >= num_workers
    return ray.train.ScalingConfig(
        num_workers=num_workers, use_gpu=use_gpu, placement_strategy="SPREAD"
    )


SCRIPT_HEADER = """\
# Written by the chapter 'Data-parallel training on a Ray cluster'.
# Run: python train_spirals.py
import os
import tempfile
import time

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch"""

SCRIPT_MAIN = """\
if __name__ == "__main__":
    ray.init()  # the cluster KubeRay started (RAY_ADDRESS)
    X_train, y_train = make_spirals(int(os.environ.get("N_TRAIN", "60000")), seed=0)
    X_val, y_val = make_spirals(6000, seed=1)
    workers = int(os.environ.get("NUM_WORKERS", "2"))
    run_name = os.environ.get("RUN_NAME", time.strftime("spirals-%Y%m%d-%H%M%S"))
    trainer = ray.train.torch.TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "X_train": X_train,
            "y_train": y_train,
            "X_val": X_val,
            "y_val": y_val,
            "epochs": int(os.environ.get("EPOCHS", "12")),
            "hidden_units": 256,
            "batch_size_per_worker": 256,
            "learning_rate": 0.01,
            "seed": 0,
            "precision": os.environ.get("PRECISION", "fp32"),
            "fail_at_epoch": None,
            "crash_marker": "",
        },
        # GPU workers (NCCL) when the cluster has a GPU for each, else CPU (gloo).
        scaling_config=scaling_for(ray.cluster_resources(), workers),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path="/mnt/checkpoints",
            failure_config=ray.train.FailureConfig(max_failures=3),
        ),
    )
    result = trainer.fit()
    print("validation accuracy", result.metrics["val_accuracy"])
"""


def training_script(functions: list[Callable]) -> str:
    """train_spirals.py: the imports, the given functions' source (the ones the
    notebook ran), `scaling_for`, and the main block; compiled here so that a syntax
    error fails before the cluster."""
    parts = [SCRIPT_HEADER, *(inspect.getsource(f).strip() for f in functions)]
    parts += [inspect.getsource(scaling_for).strip(), SCRIPT_MAIN]
    script = "\n\n\n".join(parts)
    compile(script, "train_spirals.py", "exec")
    return script


def kuberay_manifests(
    *, image: str, ray_version: str, script: str, job_runtime_env: dict[str, Any]
) -> tuple[list[dict], list[dict]]:
    """(raycluster bundle, rayjob bundle) from the YAML templates, with the image, the
    Ray version, the script and the job's runtime environment filled in."""
    from labkit import load_manifests

    code, claim, cluster = load_manifests(TEMPLATES / "raycluster.yaml")
    (job,) = load_manifests(TEMPLATES / "rayjob.yaml")
    code["data"]["train_spirals.py"] = script
    cluster["spec"]["rayVersion"] = ray_version
    spec = cluster["spec"]
    for pod in [spec["headGroupSpec"]["template"]] + [
        g["template"] for g in spec["workerGroupSpecs"]
    ]:
        pod["spec"]["containers"][0]["image"] = image
    job["spec"]["rayClusterSpec"] = copy.deepcopy(spec)
    job["spec"]["runtimeEnvYAML"] = yaml.safe_dump(job_runtime_env, sort_keys=False)
    job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["image"] = image
    return [code, claim, cluster], [code, claim, job]


def plot_spirals(plt, X, y) -> None:
    """The training points, one colour per arm."""
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    for arm, color in zip(range(3), ["tab:blue", "tab:orange", "tab:green"]):
        chosen = y == arm
        ax.scatter(*X[chosen].T, s=4, alpha=0.5, color=color, label=f"class {arm}")
    ax.set(title="Training points", xlabel="x1", ylabel="x2", aspect="equal")
    ax.legend(loc="upper right", markerscale=3)
    plt.show()


def plot_training(
    plt, run_table, reference_table, num_workers, fail_at_epoch, accuracy_floor
) -> None:
    """Each worker's loss and the validation accuracy against the one-process
    reference, with the crash marked."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2)
    epochs = run_table["epoch"]
    for rank in range(num_workers):
        label = f"Ray Train rank {rank}"
        ax_loss.plot(epochs, run_table[f"loss rank {rank}"], marker="o", label=label)
    reference = dict(color="black", linestyle=":", label="one-process reference")
    ax_loss.plot(reference_table["epoch"], reference_table["loss"], **reference)
    ax_loss.axvline(
        fail_at_epoch - 0.5, color="red", linestyle="--", label="rank 1 crashes"
    )
    ax_loss.set(
        title="Training loss on each worker's shard",
        xlabel="epoch",
        ylabel="cross-entropy",
    )
    ax_loss.legend(fontsize=8)
    ax_acc.plot(
        epochs, run_table["val_accuracy"], marker="o", color="tab:green", label="Ray"
    )
    ax_acc.plot(reference_table["epoch"], reference_table["val_accuracy"], **reference)
    ax_acc.axhline(accuracy_floor, color="grey", linestyle="-.", label="floor asserted")
    ax_acc.set(
        title="Validation accuracy", xlabel="epoch", ylabel="accuracy", ylim=(0, 1)
    )
    ax_acc.legend(loc="lower right", fontsize=8)
    plt.tight_layout()
    plt.show()


def plot_precision(plt, precision_runs: dict) -> None:
    """Seconds per epoch (median, bars from min to p95) and accuracy per precision."""
    fig, (ax_time, ax_acc) = plt.subplots(1, 2)
    names = list(precision_runs)
    timing = [precision_runs[name]["epoch_s"] for name in names]
    medians = [t["median"] for t in timing]
    spread = [
        [m - t["min"] for m, t in zip(medians, timing)],
        [t["p95"] - m for m, t in zip(medians, timing)],
    ]
    colors = ["tab:blue", "tab:purple"]
    ax_time.bar(names, medians, yerr=spread, capsize=6, color=colors)
    ax_time.set(title="Seconds per epoch (median; bars: min to p95)", ylabel="s")
    accuracies = [precision_runs[name]["val_accuracy"] for name in names]
    ax_acc.bar(names, accuracies, color=colors)
    ax_acc.set(title="Validation accuracy after the same epochs", ylim=(0, 1))
    plt.tight_layout()
    plt.show()


SIZES = {
    "smoke": {
        "n_train": 3_000,
        "n_val": 600,
        "epochs": 3,
        "fail_at_epoch": 2,
        "num_workers": 2,
        "batch_size_per_worker": 32,
        "hidden_units": 128,
        "precision_epochs": 2,
    },
    "laptop": {
        "n_train": 6_000,
        "n_val": 2_000,
        "epochs": 6,
        "fail_at_epoch": 3,
        "num_workers": 2,
        "batch_size_per_worker": 64,
        "hidden_units": 128,
        "precision_epochs": 4,
    },
    "cluster": {
        "n_train": 60_000,
        "n_val": 6_000,
        "epochs": 12,
        "fail_at_epoch": 6,
        "num_workers": 2,
        "batch_size_per_worker": 256,
        "hidden_units": 256,
        "precision_epochs": 4,
    },
}


def resolve_sizes(profile: str, given: dict[str, Any]) -> dict[str, Any]:
    """The profile's sizes (SIZES) with the parameters the reader set (not None),
    checked: positive, at least 2 workers, a crash epoch in 2..epochs-1."""
    import labkit

    labkit.check_profile(profile)
    sizes = {**labkit.pick(profile, SIZES)}
    sizes.update({name: value for name, value in given.items() if value is not None})
    for name, value in sizes.items():
        labkit.check_positive(name, value)
    if sizes["num_workers"] < 2:
        raise ValueError(
            f"num_workers={sizes['num_workers']} is not valid; "
            "data parallelism here needs at least 2"
        )
    if not 2 <= sizes["fail_at_epoch"] < sizes["epochs"]:
        # From epoch 2 on, a checkpoint is always registered before the crash, so
        # there is one to resume from.
        raise ValueError(
            f"fail_at_epoch={sizes['fail_at_epoch']} is not valid; "
            f"it must be at least 2 and below epochs={sizes['epochs']}"
        )
    return sizes
