"""Plumbing for ray-tune-hpo.ipynb: profile sizes, the synthetic data set, a Tune
callback that logs every event to a file, the compute accounting of a search, the plots,
and the KubeRay RayJob filled from templates/ray-tune-hpo/.

The technique (the trainable, the search space, ASHA and TPE, the restore, the checks)
stays in the notebook.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from ray import tune

TEMPLATES = Path(__file__).parent / "templates" / "ray-tune-hpo"

SIZES = {
    "smoke": {
        "n_points": 1200,
        "max_epochs": 27,
        "tpe_trials": 24,
        "random_trials": 12,
        "n_seeds": 2,
        "restore_trials": 6,
    },
    "laptop": {
        "n_points": 1200,
        "max_epochs": 27,
        "tpe_trials": 24,
        "random_trials": 12,
        "n_seeds": 3,
        "restore_trials": 8,
    },
    "cluster": {
        "n_points": 6000,
        "max_epochs": 81,
        "tpe_trials": 64,
        "random_trials": 24,
        "n_seeds": 5,
        "restore_trials": 16,
    },
}


def resolve_sizes(profile: str, given: dict[str, Any]) -> dict[str, Any]:
    """The profile's sizes (SIZES) with the parameters the reader set (not None),
    each checked to be a positive integer."""
    import labkit

    labkit.check_profile(profile)
    sizes = {**labkit.pick(profile, SIZES)}
    sizes.update({name: value for name, value in given.items() if value is not None})
    for name, value in sizes.items():
        labkit.check_positive(name, value)
    if sizes["n_seeds"] < 2:
        raise ValueError(
            f"n_seeds={sizes['n_seeds']} is not valid; a spread needs at least 2 seeds"
        )
    return sizes


def make_spirals(
    n_points: int, seed: int, noise: float = 0.4, turns: float = 1.25
) -> tuple[np.ndarray, np.ndarray]:
    """Three noisy spiral arms wound around each other: float64 features (n, 2) and
    int64 labels, an equal share per arm, shuffled."""
    rng = np.random.default_rng(seed)
    per_class = n_points // 3
    features, labels = [], []
    for arm in range(3):
        radius = np.sqrt(rng.uniform(0.05, 1.0, per_class))
        angle = 2 * np.pi * (turns * radius + arm / 3)
        angle += rng.normal(0.0, noise, per_class)
        features.append(np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1))
        labels.append(np.full(per_class, arm))
    order = rng.permutation(3 * per_class)
    return np.concatenate(features)[order], np.concatenate(labels)[order]


class EventLog(tune.Callback):
    """Every trial start, result and completion, appended as JSON lines to `path`.

    Tune calls callbacks in the driver, in the order it handles events, so the file
    is the order in which the search spent its compute. The callback travels with the
    experiment's state, so a restored run appends to the same file.
    """

    def __init__(self, path: str | Path, phase: str = "run") -> None:
        self.path, self.phase = str(path), phase

    def _write(self, **event: Any) -> None:
        with open(self.path, "a") as out:
            out.write(json.dumps({"phase": self.phase, **event}) + "\n")

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._write(event="start", trial=trial.trial_id, config=_plain(trial.config))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._write(
            event="result",
            trial=trial.trial_id,
            iteration=result["training_iteration"],
            val_accuracy=result["val_accuracy"],
            node=result["node"],
            attempt=result["attempt"],
        )

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._write(event="complete", trial=trial.trial_id)


class InterruptAfter(tune.Callback):
    """Interrupt the run like Ctrl+C once `trials` trials have completed: Tune's own
    handler for SIGUSR1 (the same as for SIGINT) saves the experiment state and ends
    `fit()`.

    The callback is saved with the run and comes back with `Tuner.restore`; the
    `marker` file makes it fire once only.
    """

    def __init__(self, trials: int, marker: str | Path) -> None:
        self.trials, self.marker, self.completed = trials, str(marker), 0

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.completed += 1
        if self.completed >= self.trials and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGUSR1)


def _plain(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if isinstance(v, (int, float, str))}


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """The events an EventLog wrote, in order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def compute_curve(events: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """(iterations spent so far, best validation accuracy seen so far) after every
    result: the search's quality as a function of the compute it has used."""
    accuracies = [e["val_accuracy"] for e in events if e["event"] == "result"]
    spent = np.arange(1, len(accuracies) + 1)
    return spent, np.maximum.accumulate(accuracies)


def iterations_to_reach(events: list[dict[str, Any]], target: float) -> int | None:
    """Training iterations the search had spent when it first reported an accuracy of
    at least `target` (None if it never did)."""
    spent, best = compute_curve(events)
    reached = np.flatnonzero(best >= target)
    return int(spent[reached[0]]) if reached.size else None


def trial_curves(events: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Each trial's validation accuracy per epoch, in the order the trials started."""
    curves: dict[str, list[float]] = {}
    for e in events:
        if e["event"] == "result":
            curves.setdefault(e["trial"], []).append(e["val_accuracy"])
    return curves


def plot_trial_curves(plt, runs: dict[str, list[dict]], max_epochs: int, rungs) -> None:
    """Every trial's learning curve, one panel per search; ASHA's rungs dashed."""
    fig, axes = plt.subplots(1, len(runs), sharey=True, figsize=(9.5, 3.6))
    for ax, (title, events) in zip(axes, runs.items()):
        curves = trial_curves(events)
        for curve in curves.values():
            epochs = np.arange(1, len(curve) + 1)
            stopped = len(curve) < max_epochs
            ax.plot(epochs, curve, lw=1, alpha=0.8, color="grey" if stopped else None)
            ax.plot(epochs[-1], curve[-1], "x" if stopped else "o", ms=4, color="k")
        if "ASHA" in title:
            for rung in rungs:
                ax.axvline(rung, color="tab:red", ls="--", lw=0.8)
        ax.set(title=f"{title}: {len(curves)} trials", xlabel="epoch", xscale="log")
    axes[0].set_ylabel("validation accuracy")
    plt.tight_layout()
    plt.show()


def plot_compute(plt, comparison: list[dict], target_margin: float) -> None:
    """Best accuracy so far against iterations spent, per seed and search."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    colors = {"ASHA + TPE": "tab:blue", "random, no stopping": "tab:orange"}
    for row in comparison:
        for name, events in row["events"].items():
            spent, best = compute_curve(events)
            label = name if row["seed"] == comparison[0]["seed"] else None
            ax.step(spent, best, where="post", color=colors[name], label=label, lw=1.2)
        if row["asha_to_target"] is not None:
            target = row["random_best"] - target_margin
            ax.plot(row["asha_to_target"], target, "o", color=colors["ASHA + TPE"])
    ax.set(
        title="Best validation accuracy against compute (one line per seed)",
        xlabel="training iterations (epochs) spent, all trials together",
        ylabel="best so far",
    )
    ax.legend(loc="lower right")
    plt.tight_layout()
    plt.show()


SCRIPT_HEADER = """\
# Written by the chapter 'Hyperparameter tuning on a Ray cluster'.
# Run: python tune_spirals.py (RAY_ADDRESS names the cluster; KubeRay sets it)
import os
import uuid

import numpy as np
import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch"""

SCRIPT_MAIN = """\
if __name__ == "__main__":
    ray.init()
    data = (*make_spirals(6000, seed=0), *make_spirals(6000, seed=1))
    max_epochs = int(os.environ.get("MAX_EPOCHS", "81"))
    storage = os.environ.get("STORAGE_PATH", "/mnt/tune")
    name = os.environ.get("RUN_NAME", "spirals-asha-tpe")
    trainable = tune.with_parameters(train_mlp, data=data)
    if tune.Tuner.can_restore(os.path.join(storage, name)):
        # A resubmitted job carries on where the last one stopped.
        tuner = tune.Tuner.restore(os.path.join(storage, name), trainable)
    else:
        sampler = optuna.samplers.TPESampler(
            seed=0, n_startup_trials=TPE_STARTUP_TRIALS
        )
        tuner = tune.Tuner(
            trainable,
            param_space={**search_space(), "max_epochs": max_epochs, "seed": 0},
            tune_config=tune.TuneConfig(
                metric="val_accuracy",
                mode="max",
                scheduler=ASHAScheduler(
                    max_t=max_epochs,
                    grace_period=GRACE_PERIOD,
                    reduction_factor=REDUCTION_FACTOR,
                ),
                search_alg=OptunaSearch(sampler=sampler),
                num_samples=int(os.environ.get("NUM_SAMPLES", "64")),
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(name=name, storage_path=storage),
        )
    best = tuner.fit().get_best_result(scope="all")
    print("best validation accuracy", best.metrics["val_accuracy"], best.config)
"""


def tuning_script(functions: list[Callable], constants: dict[str, Any]) -> str:
    """tune_spirals.py: the imports, the constants, the given functions' source (the
    ones the notebook ran) and the main block; compiled here so that a syntax error
    fails before the cluster."""
    values = "\n".join(f"{name} = {value!r}" for name, value in constants.items())
    parts = [SCRIPT_HEADER, values]
    parts += [inspect.getsource(f).strip() for f in functions] + [SCRIPT_MAIN]
    script = "\n\n\n".join(parts)
    compile(script, "tune_spirals.py", "exec")
    return script


def rayjob_bundle(
    *, image: str, ray_version: str, script: str, runtime_env: dict[str, Any]
) -> list[dict]:
    """ConfigMap, PersistentVolumeClaim and RayJob from templates/ray-tune-hpo/, with
    the image, the Ray version, the script and the runtime environment filled in."""
    from labkit import load_manifests

    code, claim, job = load_manifests(TEMPLATES / "rayjob.yaml")
    code["data"]["tune_spirals.py"] = script
    spec = job["spec"]["rayClusterSpec"]
    spec["rayVersion"] = ray_version
    for pod in [spec["headGroupSpec"]["template"]] + [
        g["template"] for g in spec["workerGroupSpecs"]
    ]:
        pod["spec"]["containers"][0]["image"] = image
    job["spec"]["runtimeEnvYAML"] = yaml.safe_dump(runtime_env, sort_keys=False)
    job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["image"] = image
    return [code, claim, copy.deepcopy(job)]
