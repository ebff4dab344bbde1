"""Plumbing for the chapter "Distributed reinforcement learning with RLlib": profile
sizes, plots and the KubeRay manifest loader. The technique (the PPO configuration,
the training loop, the sampling measurement) stays in the notebook."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import yaml

TEMPLATES = Path(__file__).parent / "templates" / "ray-distributed-rl"

# Sizes per profile. smoke runs against CI's two-node cluster with 2 CPUs per node and
# trains only a few iterations; laptop trains until the return reaches 150.
SIZES: dict[str, dict[str, Any]] = {
    "smoke": {
        "train_batch_size": 1000,
        "max_iterations": 4,
        "eval_episodes": 10,
        "sample_steps": 500,
        "sample_repeats": 3,
    },
    "laptop": {
        "train_batch_size": 1000,
        "max_iterations": 25,
        "eval_episodes": 10,
        "sample_steps": 1000,
        "sample_repeats": 3,
    },
    "cluster": {
        "train_batch_size": 4000,
        "max_iterations": 30,
        "eval_episodes": 20,
        "sample_steps": 4000,
        "sample_repeats": 5,
    },
}


def resolve_sizes(profile: str, given: dict[str, Any]) -> dict[str, Any]:
    """The profile's sizes, overridden by the parameters that are not None; each must
    be a positive integer."""
    from labkit import check_positive, check_profile

    check_profile(profile)
    sizes = dict(SIZES[profile])
    for name, value in given.items():
        if name not in sizes:
            raise ValueError(f"unknown size {name!r}; valid: {sorted(sizes)}")
        if value is not None:
            sizes[name] = check_positive(name, value)
    return sizes


def plot_learning_curve(plt, curve, random_return: float, target: float) -> None:
    """Mean episode return per iteration against env steps, with the random policy's
    return and the target marked."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(curve["env_steps"], curve["episode_return_mean"], marker="o", label="PPO")
    ax.axhline(random_return, color="grey", linestyle=":", label="random policy")
    ax.axhline(target, color="tab:red", linestyle="--", label=f"target {target:.0f}")
    ax.set(
        title="PPO on CartPole-v1, num_env_runners=0",
        xlabel="env steps sampled",
        ylabel="mean episode return (last 100)",
        ylim=(0, 510),
    )
    ax.legend(loc="upper left")
    plt.show()


def plot_throughput(plt, table, cpus: float) -> None:
    """Env steps per second for each number of EnvRunners sampling at once: every
    repeat as a dot, the median as a bar."""
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    labels = [str(n) for n in table["env_runners"]]
    ax.bar(labels, table["steps/s"], color="tab:blue", alpha=0.6, label="median")
    for label, samples in zip(labels, table["samples"]):
        ax.scatter([label] * len(samples), samples, color="black", s=12, zorder=3)
    ax.set(
        title=f"Sampling throughput on {cpus:.0f} CPUs",
        xlabel="EnvRunners sampling at once (0: the driver's own)",
        ylabel="env steps / s",
    )
    ax.legend(loc="upper left")
    plt.show()


def worker_pods_for(actor_cpus: float, cpus_per_pod: int) -> int:
    """Worker pods of `cpus_per_pod` CPUs that hold `actor_cpus` CPUs of actors."""
    return max(1, math.ceil(actor_cpus / cpus_per_pod))


def rayjob_manifests(
    *,
    image: str,
    ray_version: str,
    runtime_env: dict[str, Any],
    worker_pods: int,
    cpus_per_pod: int,
) -> list[dict[str, Any]]:
    """[ConfigMap, RayJob] from the YAML template, with the image, Ray version, runtime
    environment, worker-pod count and CPUs per worker pod filled in."""
    from labkit import load_manifests

    code, job = load_manifests(TEMPLATES / "rayjob.yaml")
    spec = job["spec"]
    spec["runtimeEnvYAML"] = yaml.safe_dump(runtime_env, sort_keys=False)
    cluster = spec["rayClusterSpec"]
    cluster["rayVersion"] = ray_version
    workers = cluster["workerGroupSpecs"][0]
    workers.update(
        {
            "replicas": worker_pods,
            "minReplicas": worker_pods,
            "maxReplicas": worker_pods,
        }
    )
    workers["rayStartParams"]["num-cpus"] = str(cpus_per_pod)
    container = workers["template"]["spec"]["containers"][0]
    for kind in ("requests", "limits"):
        container["resources"][kind]["cpu"] = str(cpus_per_pod)
    pods = [cluster["headGroupSpec"]["template"], workers["template"]]
    pods.append(spec["submitterPodTemplate"])
    for pod in pods:
        pod["spec"]["containers"][0]["image"] = image
    return [code, copy.deepcopy(job)]
