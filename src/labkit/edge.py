"""Shipping a model to an edge device: ONNX export, INT8 quantisation, latency on a
small CPU budget, and the Deployment that pins it to edge nodes (K3s or KubeEdge).

The edge chapters teach video analytics, inspection, perception and sensing; this is the
common last mile they all share. The quantisation itself is taught in the
inference-optimisation chapter.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from labkit.measure import summarize

EDGE_RUNTIMES = ("k3s", "kubeedge")


def export_onnx(
    model: Any,
    example_input: Any,
    path: str | Path,
    *,
    input_name: str = "input",
    output_name: str = "output",
    dynamic_batch: bool = True,
) -> Path:
    """Export a PyTorch module to one self-contained ONNX file (weights inside) with the
    torch.export-based exporter; the first dimension is dynamic when `dynamic_batch`.
    Returns the path."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dynamic_shapes = (
        ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    )
    model = model.eval()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        onnx_logger = logging.getLogger("torch.onnx")
        level = onnx_logger.level
        onnx_logger.setLevel(logging.ERROR)
        try:
            torch.onnx.export(
                model,
                (example_input,),
                str(path),
                input_names=[input_name],
                output_names=[output_name],
                dynamic_shapes=dynamic_shapes,
                external_data=False,
                verbose=False,
            )
        finally:
            onnx_logger.setLevel(level)
    return path


def quantize_onnx_int8(
    source: str | Path,
    target: str | Path,
    calibration: Iterable[Mapping[str, Any]] | None = None,
) -> Path:
    """INT8-quantise an ONNX model with ONNX Runtime: dynamic (weights INT8, activations
    quantised at run time) without `calibration`; static QDQ with activation ranges from
    `calibration` (an iterable of {input name: array} batches) otherwise. Returns the
    target path.

    Dynamic quantisation suits MatMul-heavy models (MLPs, transformers); for
    convolutions ONNX Runtime's dynamic ConvInteger kernels are slow on CPU, so give a
    CNN calibration data (static QDQ). Weights use 7 bits (`reduce_range`): on CPUs
    without AVX-512 VNNI the u8 x s8 kernels can saturate with 8, and the error grows
    about tenfold (ONNX Runtime's quantisation docs, "When and why do I need to try
    U8U8?")."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, target = Path(source), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prepared = target.with_suffix(".pre.onnx")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.getLogger().setLevel(logging.ERROR)
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        if calibration is None:
            quantize_dynamic(
                str(prepared),
                str(target),
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=True,
            )
        else:
            batches = iter(list(calibration))

            class Reader(CalibrationDataReader):
                def get_next(self) -> Mapping[str, Any] | None:
                    return next(batches, None)

            quantize_static(
                str(prepared),
                str(target),
                Reader(),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=True,
            )
    prepared.unlink(missing_ok=True)
    return target


def onnx_session(path: str | Path, *, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session limited to `threads` threads (an edge device's
    budget, and stable timings)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_latency_ms(
    session: Any, feeds: Mapping[str, Any], *, repeats: int = 30, warmup: int = 3
) -> dict[str, Any]:
    """Latency of `session.run(None, feeds)` in milliseconds: summarize() of `repeats`
    timed calls after `warmup`."""
    import time

    for _ in range(warmup):
        session.run(None, dict(feeds))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, dict(feeds))
        samples.append((time.perf_counter() - start) * 1000)
    return summarize(samples)


def edge_deployment(
    name: str,
    image: str,
    *,
    cpu_millicores: int,
    memory_mib: int,
    runtime: str = "k3s",
    command: Sequence[str] | None = None,
    args: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    labels: Mapping[str, str] | None = None,
    model_config_map: str | None = None,
) -> Any:
    """A Deployment (kubernetes.client model) that runs on edge nodes only and meets Pod
    Security "restricted".

    `runtime="k3s"` selects nodes labelled `node-role.kubernetes.io/edge=true` and
    tolerates the taint `node-role.kubernetes.io/edge:NoSchedule`; `runtime="kubeedge"`
    selects KubeEdge's edge nodes (`node-role.kubernetes.io/edge` exists) and tolerates
    the same taint. Requests equal limits (Guaranteed QoS), sized by the caller from a
    measurement. `model_config_map` mounts a ConfigMap at /models read-only.
    """
    from kubernetes import client

    if runtime not in EDGE_RUNTIMES:
        raise ValueError(
            f"runtime must be one of {', '.join(EDGE_RUNTIMES)}; got {runtime!r}"
        )
    if cpu_millicores < 1 or memory_mib < 1:
        raise ValueError(
            f"cpu_millicores and memory_mib must be >= 1, got {cpu_millicores}, "
            f"{memory_mib}"
        )
    pod_labels = {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/part-of": "edge-ai",
        **(labels or {}),
    }
    resources = {"cpu": f"{cpu_millicores}m", "memory": f"{memory_mib}Mi"}
    volume_mounts, volumes = None, None
    if model_config_map:
        volume_mounts = [
            client.V1VolumeMount(name="model", mount_path="/models", read_only=True)
        ]
        volumes = [
            client.V1Volume(
                name="model",
                config_map=client.V1ConfigMapVolumeSource(name=model_config_map),
            )
        ]
    container = client.V1Container(
        name=name,
        image=image,
        command=list(command) if command else None,
        args=list(args) if args else None,
        env=[client.V1EnvVar(name=k, value=v) for k, v in (env or {}).items()] or None,
        ports=[client.V1ContainerPort(container_port=port, name="http")]
        if port
        else None,
        resources=client.V1ResourceRequirements(requests=resources, limits=resources),
        volume_mounts=volume_mounts,
        security_context=client.V1SecurityContext(
            allow_privilege_escalation=False,
            run_as_non_root=True,
            run_as_user=10001,
            read_only_root_filesystem=True,
            capabilities=client.V1Capabilities(drop=["ALL"]),
            seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
        ),
    )
    if runtime == "k3s":
        affinity = None
        node_selector = {"node-role.kubernetes.io/edge": "true"}
    else:
        node_selector = None
        affinity = client.V1Affinity(
            node_affinity=client.V1NodeAffinity(
                required_during_scheduling_ignored_during_execution=client.V1NodeSelector(
                    node_selector_terms=[
                        client.V1NodeSelectorTerm(
                            match_expressions=[
                                client.V1NodeSelectorRequirement(
                                    key="node-role.kubernetes.io/edge",
                                    operator="Exists",
                                )
                            ]
                        )
                    ]
                )
            )
        )
    return client.V1Deployment(
        api_version="apps/v1",
        kind="Deployment",
        metadata=client.V1ObjectMeta(name=name, labels=pod_labels),
        spec=client.V1DeploymentSpec(
            replicas=1,
            selector=client.V1LabelSelector(
                match_labels={"app.kubernetes.io/name": name}
            ),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=pod_labels),
                spec=client.V1PodSpec(
                    containers=[container],
                    volumes=volumes,
                    node_selector=node_selector,
                    affinity=affinity,
                    tolerations=[
                        client.V1Toleration(
                            key="node-role.kubernetes.io/edge",
                            operator="Exists",
                            effect="NoSchedule",
                        )
                    ],
                    automount_service_account_token=False,
                    security_context=client.V1PodSecurityContext(
                        run_as_non_root=True,
                        seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
                    ),
                ),
            ),
        ),
    )


def size_resources(
    latency_ms_p95: float,
    frames_per_second: float,
    *,
    peak_rss_mib: float,
    headroom: float = 1.5,
) -> dict[str, int]:
    """CPU (millicores) and memory (MiB) for a model that takes `latency_ms_p95` of one
    core per call at `frames_per_second` calls a second, with `headroom` on both: the
    arithmetic behind an edge pod's limits."""
    if (
        latency_ms_p95 <= 0
        or frames_per_second <= 0
        or peak_rss_mib <= 0
        or headroom < 1
    ):
        raise ValueError("latency, rate and memory must be > 0 and headroom >= 1")
    cpu_millicores = int(
        -(-latency_ms_p95 * frames_per_second * headroom // 1)
    )  # ms of CPU per s = millicores
    memory_mib = int(-(-peak_rss_mib * headroom // 1))
    return {
        "cpu_millicores": max(cpu_millicores, 50),
        "memory_mib": max(memory_mib, 32),
    }
