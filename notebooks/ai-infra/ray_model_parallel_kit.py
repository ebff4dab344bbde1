"""Plumbing for ray-model-parallel.ipynb: sizes per profile, the deeper MLP of the
pipeline, byte counting, reading the stages' events, the plots, and the KubeRay
manifests filled from templates/ray-model-parallel/. The spiral data and the small MLP
come from ray_training_kit.py, shared with ray-distributed-training.ipynb.

The techniques (FSDP2 and DDP in Ray Train, the pipeline stages and their schedule,
the column split) stay in the notebook.
"""

from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Any

import numpy as np

TEMPLATES = Path(__file__).parent / "templates" / "ray-model-parallel"

SIZES = {
    "smoke": {
        "n_train": 2_000,
        "epochs": 2,
        "batch_size_per_worker": 32,
        "hidden_units": 128,
        "pipeline_width": 1024,
        "layers_per_stage": 4,
        "pipeline_batch": 512,
        "max_micro_batches": 8,
        "pipeline_repeats": 2,
    },
    "laptop": {
        "n_train": 4_000,
        "epochs": 3,
        "batch_size_per_worker": 64,
        "hidden_units": 128,
        "pipeline_width": 1024,
        "layers_per_stage": 4,
        "pipeline_batch": 512,
        "max_micro_batches": 8,
        "pipeline_repeats": 3,
    },
    "cluster": {
        "n_train": 60_000,
        "epochs": 6,
        "batch_size_per_worker": 256,
        "hidden_units": 256,
        "pipeline_width": 1024,
        "layers_per_stage": 4,
        "pipeline_batch": 512,
        "max_micro_batches": 16,
        "pipeline_repeats": 5,
    },
}


def resolve_sizes(profile: str, given: dict[str, Any]) -> dict[str, Any]:
    """The profile's sizes with the parameters the reader set (not None), checked:
    positive integers, and a batch that splits evenly into every micro-batch count."""
    import labkit

    labkit.check_profile(profile)
    sizes = {**labkit.pick(profile, SIZES)}
    sizes.update({name: value for name, value in given.items() if value is not None})
    for name, value in sizes.items():
        labkit.check_positive(name, value)
    counts = micro_batch_counts(sizes["max_micro_batches"])
    if sizes["pipeline_batch"] % counts[-1]:
        raise ValueError(
            f"pipeline_batch={sizes['pipeline_batch']} is not valid; it must be a "
            f"multiple of max_micro_batches={sizes['max_micro_batches']} (rounded "
            f"down to a power of two: {counts[-1]})"
        )
    return sizes


def micro_batch_counts(maximum: int) -> list[int]:
    """1, 2, 4, ... up to `maximum`: the micro-batch counts the pipeline sweep runs."""
    counts = [1]
    while counts[-1] * 2 <= maximum:
        counts.append(counts[-1] * 2)
    return counts


def build_deep_model(width: int, layers_per_stage: int, stages: int, seed: int):
    """The same kind of MLP, deeper and wider so that each pipeline stage has real
    work: 2 -> width, then stages * layers_per_stage width -> width layers (each
    with a ReLU), then width -> 3; one flat Sequential."""
    import torch

    torch.manual_seed(seed)
    blocks: list[torch.nn.Module] = [torch.nn.Linear(2, width), torch.nn.ReLU()]
    for _ in range(stages * layers_per_stage):
        blocks += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    blocks.append(torch.nn.Linear(width, 3))
    return torch.nn.Sequential(*blocks)


def split_stages(model, stages: int) -> list:
    """Cut a build_deep_model Sequential into `stages` consecutive Sequentials with
    the same number of width x width layers each."""
    import torch

    modules = list(model)
    # The input layer (2 modules) goes with stage 0, the head with the last stage.
    per_stage = (len(modules) - 3) // stages
    cuts = [0] + [2 + s * per_stage for s in range(1, stages)] + [len(modules)]
    return [torch.nn.Sequential(*modules[a:b]) for a, b in zip(cuts, cuts[1:])]


def local_bytes(tensors) -> int:
    """Bytes held by this process: a DTensor (FSDP2's sharded parameter) counts its
    local shard only."""
    total = 0
    for tensor in tensors:
        if tensor is None:
            continue
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        total += local.numel() * local.element_size()
    return total


def state_bytes(model, optimizer) -> dict[str, int]:
    """Parameter, gradient and optimizer-state bytes held by this worker."""
    params = list(model.parameters())
    states = [
        value
        for state in optimizer.state.values()
        for value in state.values()
        if hasattr(value, "dim") and value.dim() > 0
    ]
    return {
        "param_bytes": local_bytes(params),
        "grad_bytes": local_bytes(p.grad for p in params),
        "optimizer_bytes": local_bytes(states),
    }


def bubble_of(events: list[list[tuple]]) -> dict[str, float]:
    """From each stage's (kind, micro, start, end) events of one step: the makespan,
    the mean busy time per stage, the bubble = idle share of stages x makespan, the
    mean forward and backward time of one micro-batch on one stage, and the mean call
    overhead (see `call_overheads`)."""
    start = min(e[2] for stage in events for e in stage)
    end = max(e[3] for stage in events for e in stage)
    busy = [sum(e[3] - e[2] for e in stage) for stage in events]
    makespan = end - start
    return {
        "makespan_s": makespan,
        "busy_s": float(np.mean(busy)),
        "bubble": 1 - sum(busy) / (len(events) * makespan),
        "forward_s": float(
            np.mean([e[3] - e[2] for s in events for e in s if e[0] == "F"])
        ),
        "backward_s": float(
            np.mean([e[3] - e[2] for s in events for e in s if e[0] == "B"])
        ),
        "overhead_s": float(np.mean(call_overheads(events))),
    }


def call_overheads(events: list[list[tuple]]) -> list[float]:
    """For every call but a stage's very first: the time from the moment it could
    have started to the moment it did. It could start once its stage was free (the
    previous call had ended) and its input existed: the previous stage's forward of the
    same micro-batch, the next stage's backward of it, or, for the last stage's
    backward, its own forward. What remains is Ray's dispatch and the hand-off of the
    tensor between processes."""
    last = len(events) - 1
    ended = {(s, k, i): t1 for s, stage in enumerate(events) for k, i, _, t1 in stage}
    overheads = []
    for s, stage in enumerate(events):
        previous_end = None
        for kind, micro, t0, t1 in stage:
            if kind == "F":
                ready = ended[(s - 1, "F", micro)] if s > 0 else None
            elif s == last:
                ready = ended[(s, "F", micro)]
            else:
                ready = ended[(s + 1, "B", micro)]
            known = [t for t in (previous_end, ready) if t is not None]
            if known:
                overheads.append(t0 - max(known))
            previous_end = t1
    return overheads


def plot_gantt(plt, runs: dict[int, list[list[tuple]]], formula) -> None:
    """One row per stage per micro-batch count: forward (light) and backward (dark)
    bars at their measured times, each panel on its own time axis."""
    counts = list(runs)
    fig, axes = plt.subplots(len(counts), 1, figsize=(7.5, 1.2 + 1.1 * len(counts)))
    axes = np.atleast_1d(axes)
    colors = {"F": "tab:blue", "B": "tab:orange"}
    for ax, m in zip(axes, counts):
        events = runs[m]
        start = min(e[2] for stage in events for e in stage)
        for row, stage in enumerate(events):
            for kind, micro, t0, t1 in stage:
                left, width = 1000 * (t0 - start), 1000 * (t1 - t0)
                ax.barh(row, width, left=left, color=colors[kind], edgecolor="white")
                if width > 12:
                    ax.text(
                        left + width / 2,
                        row,
                        str(micro),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white",
                    )
        measured = bubble_of(events)["bubble"]
        ax.set_yticks(range(len(events)), [f"stage {s}" for s in range(len(events))])
        ax.invert_yaxis()
        ax.set_title(
            f"m = {m} micro-batches: bubble {measured:.2f} measured, "
            f"{formula(len(events), m):.2f} GPipe formula",
            fontsize=9,
        )
    axes[-1].set_xlabel("ms since the step started (blue: forward, orange: backward)")
    plt.tight_layout()
    plt.show()


def plot_bubbles(plt, table, tolerance: float) -> None:
    """Measured bubble per micro-batch count against GPipe's formula and the
    formula with the measured call overhead, and the asserted band around the latter."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    m = table["micro-batches"]
    ax.plot(m, table["bubble measured"], marker="o", label="measured (mean of steps)")
    ax.plot(
        m,
        table["bubble GPipe"],
        marker="x",
        linestyle="--",
        color="black",
        label="(p-1)/(m+p-1)",
    )
    extended = table["bubble GPipe + overhead"]
    ax.plot(
        m,
        extended,
        marker="+",
        linestyle=":",
        color="tab:red",
        label="with the measured call overhead",
    )
    ax.fill_between(
        m,
        extended - tolerance,
        extended + tolerance,
        color="tab:red",
        alpha=0.12,
        label=f"asserted band (±{tolerance})",
    )
    ax.set(
        xscale="log",
        xlabel="micro-batches m",
        ylabel="idle share of the stages",
        title="Pipeline bubble",
        ylim=(0, 0.65),
    )
    ax.set_xticks(list(m), [str(v) for v in m])
    ax.legend(fontsize=8)
    plt.tight_layout()
    plt.show()


SCRIPT_HEADER = """\
# Written by the chapter 'Data parallel vs model parallel on a Ray cluster'.
# Run: python shard_spirals.py  (DDP and FSDP2 on the same data, one report)
import os
import tempfile
import time

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist"""

SCRIPT_MAIN = """\
if __name__ == "__main__":
    ray.init()  # the cluster KubeRay started
    X_train, y_train = make_spirals(int(os.environ.get("N_TRAIN", "60000")), seed=0)
    trainer = ray.train.torch.TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "X_train": X_train,
            "y_train": y_train,
            "epochs": int(os.environ.get("EPOCHS", "6")),
            "hidden_units": 256,
            "batch_size_per_worker": 256,
            "learning_rate": 0.01,
            "seed": 0,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=int(os.environ.get("NUM_WORKERS", "2")),
            placement_strategy="SPREAD",
        ),
        run_config=ray.train.RunConfig(storage_path="/tmp/ray-results"),
    )
    result = trainer.fit()
    print({name: result.metrics[name]["losses"] for name in ("ddp", "fsdp")})
"""


def training_script(functions: list) -> str:
    """shard_spirals.py: imports, the given functions' source (the ones the notebook
    ran) and a main block; compiled here so that a syntax error fails before the
    cluster does."""
    parts = [SCRIPT_HEADER, *(inspect.getsource(f).strip() for f in functions)]
    script = "\n\n\n".join([*parts, SCRIPT_MAIN])
    compile(script, "shard_spirals.py", "exec")
    return script


def kuberay_manifests(
    *,
    image: str,
    ray_version: str,
    script: str,
    runtime_env_yaml: str,
    worker_memory_gib: int,
    workers: int,
) -> list[dict]:
    """[ConfigMap, RayJob] from the YAML templates: image, Ray version, script, the
    runtime environment, the worker count and the worker pods' memory filled in."""
    from labkit import load_manifests

    code, job = load_manifests(TEMPLATES / "rayjob.yaml")
    code["data"]["shard_spirals.py"] = script
    spec = job["spec"]["rayClusterSpec"]
    spec["rayVersion"] = ray_version
    job["spec"]["runtimeEnvYAML"] = runtime_env_yaml
    group = spec["workerGroupSpecs"][0]
    group.update(replicas=workers, minReplicas=workers, maxReplicas=workers)
    memory = f"{worker_memory_gib}Gi"
    container = group["template"]["spec"]["containers"][0]
    container["resources"]["requests"]["memory"] = memory
    container["resources"]["limits"]["memory"] = memory
    pods = [
        spec["headGroupSpec"]["template"],
        group["template"],
        job["spec"]["submitterPodTemplate"],
    ]
    for pod in pods:
        pod["spec"]["containers"][0]["image"] = image
    return [code, copy.deepcopy(job)]


class Zero1Adam:
    """ZeRO stage 1 by hand, the fallback where FSDP2 cannot run: every worker keeps
    the full parameters and averages gradients like DDP, but holds Adam's state only
    for the parameters it owns (every world_size-th tensor), updates those, and
    broadcasts them to the others."""

    def __init__(self, params, lr: float):
        import torch
        import torch.distributed as dist

        self.params = list(params)
        rank, world = dist.get_rank(), dist.get_world_size()
        self.owner = [index % world for index in range(len(self.params))]
        mine = [p for p, owner in zip(self.params, self.owner) if owner == rank]
        self.optimizer = torch.optim.Adam(mine, lr=lr)
        self.state = self.optimizer.state

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None

    def step(self) -> None:
        import torch.distributed as dist

        world = dist.get_world_size()
        for param in self.params:
            dist.all_reduce(param.grad)
            param.grad /= world
        self.optimizer.step()
        for param, owner in zip(self.params, self.owner):
            dist.broadcast(param.data, src=owner)


def when_each_wins(
    *,
    sharding: str,
    ddp_bytes: int,
    sharded_bytes: int,
    n_params: int,
    step_ms: dict,
    workers: int,
    stages: int,
    micro_batches: int,
    stage_param_bytes: int,
    batch: int,
    width: int,
    pipeline_step_ms: float,
    tp_rows: int,
    tp_weight_bytes: int,
    tp_ms: float,
):
    """The chapter's comparison table: bytes per worker (parameters, gradients, Adam
    state), bytes each worker sends per step for ring collectives (all-reduce
    2(N-1)/N of the buffer, all-gather and reduce-scatter (N-1)/N each), step time."""
    import pandas as pd

    f32, ring = 4, (workers - 1) / workers
    rows = [
        [
            "DDP",
            ddp_bytes,
            2 * ring * n_params * f32,
            step_ms["DDP"],
            "the replica fits: least communication",
        ],
        [
            sharding,
            sharded_bytes,
            3 * ring * n_params * f32,
            step_ms[sharding],
            "state does not fit: memory / N for 1.5x traffic",
        ],
        [
            f"pipeline, {stages} stages, m={micro_batches}",
            2 * stage_param_bytes,
            2 * batch * width * f32,
            pipeline_step_ms,
            "deep models, slow links: only boundary activations travel",
        ],
        [
            "tensor, 2 column shards (1 layer)",
            tp_weight_bytes // 2,
            ring * tp_rows * width * f32,
            tp_ms,
            "huge layers on a fast link (NVLink), inside one server",
        ],
    ]
    columns = [
        "run",
        "bytes per worker",
        "bytes sent per step",
        "step ms (median)",
        "wins when",
    ]
    return pd.DataFrame(rows, columns=columns)
