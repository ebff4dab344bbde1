"""Plumbing for kubeflow-pipelines.ipynb: running a pipeline quietly with kfp.local and
reading what each task did, checks on the compiled pipeline, the Katib trial script,
and the search plot.

The technique (components, pipeline, search, manifests) stays in the notebook.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class _TaskEvents(logging.Handler):
    """Collects kfp.local's log records about cache hits and skipped branches."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def run_quietly(fn: Callable, task_tmp: Path, **arguments: Any):
    """Run a component or pipeline with kfp.local, its log kept off the page; return
    (result, {task: ran|cached|skipped}, seconds, captured log).

    Each task's shell script writes the component's source to `mktemp -d` and leaves
    it there: TMPDIR points into `task_tmp`, so it goes when that folder goes.
    """
    events, root = _TaskEvents(), logging.getLogger()
    level, stdout, tmpdir = root.level, io.StringIO(), os.environ.get("TMPDIR")
    root.addHandler(events)
    root.setLevel(logging.INFO)
    os.environ["TMPDIR"] = str(task_tmp)
    started = time.perf_counter()
    try:
        with contextlib.redirect_stdout(stdout):
            result = fn(**arguments)
    finally:
        root.removeHandler(events)
        root.setLevel(level)
        if tmpdir is None:
            os.environ.pop("TMPDIR")
        else:
            os.environ["TMPDIR"] = tmpdir
    seconds = time.perf_counter() - started
    log = re.sub(r"\x1b\[[0-9;]*m", "", stdout.getvalue() + "\n".join(events.lines))
    states = {name: "ran" for name in re.findall(r"Executing task '([\w-]+)'", log)}
    for name in re.findall(r"Task ([\w-]+) cache hit", log):
        states[name] = "cached"
    for name in re.findall(r"Skipping conditional task ([\w-]+)", log):
        states[name] = "skipped"
    return result, states, seconds, log


def task_states(states: dict, branch_tasks: dict) -> dict:
    """Replace a skipped branch group (kfp.local reports it by the group's name) by
    the tasks inside it."""
    expanded = {}
    for name, state in states.items():
        for task in branch_tasks.get(name, [name]):
            expanded[task] = state
    return expanded


def run_dir_of(run_log: str) -> Path:
    """The folder of a run under the pipeline root, read from an output path that
    kfp.local logged."""
    found = re.search(r'"outputFile": "([^"]+)/[^/"]+/executor_output\.json"', run_log)
    return Path(found.group(1))


def executor_output(run_log: str, task_name: str) -> dict:
    """What a task of a local run recorded: its output parameters and its artifacts'
    metadata."""
    path = run_dir_of(run_log) / task_name / "executor_output.json"
    return json.loads(path.read_text())


def unmounted_paths(ir: dict) -> list[str]:
    """Pipeline parameters whose default is a filesystem path while no task mounts a
    volume (kfp-kubernetes writes mounts under platforms.kubernetes): on a cluster
    each task runs in a fresh pod, so what one writes there nobody else reads."""
    mounts = json.dumps(ir.get("platforms", {}))
    parameters = ir["root"].get("inputDefinitions", {}).get("parameters", {})
    return [
        f"{name}={spec['defaultValue']}"
        for name, spec in parameters.items()
        if str(spec.get("defaultValue", "")).startswith("/")
        and "pvcMount" not in mounts
    ]


def _tasks(ir: dict) -> dict[str, dict]:
    tasks = {}
    for component in [ir["root"], *ir["components"].values()]:
        tasks.update((component.get("dag") or {}).get("tasks", {}))
    return tasks


def serving_source(ir: dict, task: str = "deploy", parameter: str = "storage_uri"):
    """(producer task, the artifacts it reads) of `task`'s `parameter`: where the
    served model's location comes from."""
    tasks = _tasks(ir)
    wired = tasks[task]["inputs"]["parameters"][parameter]["taskOutputParameter"]
    producer = wired["producerTask"]
    artifacts = tasks[producer]["inputs"].get("artifacts", {})
    read = {
        name: spec.get("componentInputArtifact") or spec.get("taskOutputArtifact")
        for name, spec in artifacts.items()
    }
    return producer, read


def trial_script(
    functions: list[Callable], metric: str, defaults: dict, epochs: int, seed: int
) -> str:
    """train_mlp.py, the Katib trial: the given functions' source and a main block
    that prints `metric=<value>` after every epoch (Katib's StdOut collector)."""
    docstring = (
        f'"""Katib trial: train the MLP once and print\n{metric}=<value> after every '
        "epoch.\n\nWritten by kubeflow-pipelines.ipynb from the functions the "
        'pipeline\'s train step runs.\n"""\n'
    )
    lr, units, alpha = (defaults[k] for k in ("learning_rate", "hidden_units", "alpha"))
    main = f"""if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--epochs", type=int, default={epochs})
    parser.add_argument("--seed", type=int, default={seed})
    parser.add_argument("--learning-rate", type=float, default={lr})
    parser.add_argument("--hidden-units", type=int, default={units})
    parser.add_argument("--alpha", type=float, default={alpha})
    args = parser.parse_args()
    x, y = load_split(args.data, "train")
    x_valid, y_valid = load_split(args.data, "valid")

    def report(epoch, model):
        accuracy = (model.predict(x_valid) == y_valid).mean()
        print(f"epoch={{epoch}}", flush=True)
        print(f"{metric}={{accuracy:.4f}}", flush=True)

    fit_mlp(
        x,
        y,
        args.learning_rate,
        args.hidden_units,
        args.alpha,
        args.epochs,
        args.seed,
        on_epoch=report,
    )
"""
    parts = [docstring + "\nimport argparse\n"]
    parts += [inspect.getsource(f) for f in functions] + [main]
    return "\n\n".join(parts)


def plot_search(plt, np, study, optuna, baselines: dict) -> None:
    """Every trial's learning curve (pruned ones grey), and the final values against
    the trial number with the best so far and the baselines as lines."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    pruned_state = optuna.trial.TrialState.PRUNED
    for t in study.trials:
        steps = sorted(t.intermediate_values)
        values = [t.intermediate_values[s] for s in steps]
        pruned = t.state == pruned_state
        style = (
            dict(color="0.7", lw=1, zorder=1) if pruned else dict(color="C0", lw=1.5)
        )
        left.plot(steps, values, alpha=0.8, **style)
        if pruned:
            left.plot(steps[-1], values[-1], "x", color="C3", ms=5)
    left.set(
        xlabel="epoch",
        ylabel="validation accuracy",
        title="learning curves (grey: stopped early)",
    )
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    numbers, values = [t.number for t in finished], [t.value for t in finished]
    right.scatter(numbers, values, color="C0", label="completed trial")
    best = np.maximum.accumulate(values)
    right.plot(numbers, best, color="C0", drawstyle="steps-post", label="best so far")
    for (label, value), style in zip(baselines.items(), ["--", ":"]):
        right.axhline(value, color="C1", ls=style, label=label)
    right.set(xlabel="trial", ylabel="validation accuracy", title="search progress")
    right.legend(loc="lower right")
    plt.show()
