"""What a notebook can run against: CPUs, memory, GPU, a Ray cluster, a Kubernetes config."""

from __future__ import annotations

import importlib.util
import os
import platform
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

    Importing torch costs seconds, so it is only asked when it is already imported or an NVIDIA driver
    is present; without torch installed there is no GPU to use.
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
    """The kubeconfig a client would load ($KUBECONFIG or ~/.kube/config), or 'in-cluster', or None."""
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
    """Detect CPUs, memory, GPU, Ray address and Kubernetes config without starting anything."""
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
    """One line saying what a notebook at `profile` runs against, and what the cluster profile lacks.

    Chapters that do not use Ray pass `uses_ray=False`, so the line does not speak of a Ray cluster.
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
