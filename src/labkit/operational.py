"""Checks that a manifest bundle would work on a cluster, beyond schema and Pod
Security.

Schema validation and Pod Security checks look at one object at a time. The defects an
operator meets when applying a bundle are between objects or about the running pod: a
ReadWriteOnce volume under an autoscaler, a scaling metric that nothing scrapes, a mesh
sidecar that Pod Security "restricted" rejects, a password in a container's arguments.
`operational_problems` checks a chapter's whole bundle for those; the harness runs it
over every chapter's manifests folder, and each rule has a test on a manifest it must
reject.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"}
_CREDENTIAL_URI = re.compile(r"[a-zA-Z][\w+.-]*://[^/\s:@]+:[^@\s/]+@")
_SCRIPT = re.compile(r"(?:^|[\s/])([A-Za-z_]\w*)\.py\b")
_PVC_SINGLE_NODE = {"ReadWriteOnce", "ReadWriteOncePod"}


def load_bundle(folder: str | Path) -> list[dict[str, Any]]:
    """Every Kubernetes object in the YAML files of `folder` (other files ignored)."""
    import yaml

    docs: list[dict[str, Any]] = []
    for path in sorted(Path(folder).glob("*.y*ml")):
        try:
            loaded = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError:
            continue
        docs += [
            d
            for d in loaded
            if isinstance(d, dict) and "kind" in d and "apiVersion" in d
        ]
    return docs


def _name(obj: Mapping[str, Any]) -> str:
    return f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name', '?')}"


def _pod_templates(obj: Mapping[str, Any]) -> Iterable[tuple[str, dict[str, Any]]]:
    """(where, pod template) pairs: workloads, Jobs, CronJobs, Rollouts, RayClusters."""
    spec = obj.get("spec") or {}
    kind = obj.get("kind")
    if kind in WORKLOAD_KINDS or kind in ("Job", "Rollout"):
        if "template" in spec:
            yield "spec.template", spec["template"]
    elif kind == "CronJob":
        job = (spec.get("jobTemplate") or {}).get("spec") or {}
        if "template" in job:
            yield "spec.jobTemplate.spec.template", job["template"]
    elif kind == "Pod":
        yield "", {"metadata": obj.get("metadata") or {}, "spec": spec}
    for where, group in _ray_groups(obj):
        if "template" in group:
            yield where, group["template"]


def _ray_groups(obj: Mapping[str, Any]) -> Iterable[tuple[str, dict[str, Any]]]:
    spec = obj.get("spec") or {}
    if obj.get("kind") == "RayJob":
        spec = spec.get("rayClusterSpec") or {}
    elif obj.get("kind") == "RayService":
        spec = spec.get("rayClusterConfig") or {}
    elif obj.get("kind") != "RayCluster":
        return
    if "headGroupSpec" in spec:
        yield "headGroupSpec", spec["headGroupSpec"]
    for i, group in enumerate(spec.get("workerGroupSpecs") or []):
        yield f"workerGroupSpecs[{i}]", group


def _containers(pod_spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        *(pod_spec.get("initContainers") or []),
        *(pod_spec.get("containers") or []),
    ]


def _selects(selector: Mapping[str, Any] | None, labels: Mapping[str, Any]) -> bool:
    """Whether a label selector (matchLabels form or plain map) selects `labels`."""
    if not selector:
        return False
    match = selector.get("matchLabels", selector)
    if "matchExpressions" in selector and "matchLabels" not in selector:
        match = {}
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def _quantity_bytes(value: Any) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
             "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}  # fmt: skip
    text = str(value).strip()
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def operational_problems(docs: Iterable[Mapping[str, Any]]) -> list[str]:
    """What would stop this bundle from working on a cluster; empty when nothing does.

    Rules: (1) a ReadWriteOnce claim mounted by more than one replica; (2) an autoscaler
    on a custom metric that no ServiceMonitor/PodMonitor scrapes; (3) Istio injection in
    a Pod Security "restricted" namespace without the Istio CNI plugin; (4) credentials
    in a URI in a container's command, args or env; (5) a container script named like a
    standard-library module; (6) a KServe RawDeployment scaled on a metric other than
    cpu or memory; (7) a Ray /dev/shm smaller than the object store it must hold; (8) a
    canary analysed on traffic it shares with stable; (9) a serving container without a
    readiness probe.
    """
    docs = [dict(d) for d in docs]
    problems: list[str] = []
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        by_kind.setdefault(str(d.get("kind")), []).append(d)

    # Autoscalers: {(kind, name): (max replicas, custom metric?)}
    scalers: dict[tuple[str, str], list[tuple[str, int, bool]]] = {}
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        spec = hpa.get("spec") or {}
        ref = spec.get("scaleTargetRef") or {}
        custom = any(
            m.get("type") in ("Pods", "Object", "External")
            for m in spec.get("metrics") or []
        )
        scalers.setdefault((ref.get("kind"), ref.get("name")), []).append(
            (_name(hpa), int(spec.get("maxReplicas", 1)), custom)
        )
    for so in by_kind.get("ScaledObject", []):
        spec = so.get("spec") or {}
        ref = spec.get("scaleTargetRef") or {}
        custom = any(t.get("type") == "prometheus" for t in spec.get("triggers") or [])
        scalers.setdefault((ref.get("kind", "Deployment"), ref.get("name")), []).append(
            (_name(so), int(spec.get("maxReplicaCount", 100)), custom)
        )

    claims = {
        (c.get("metadata") or {}).get("name"): set(
            (c.get("spec") or {}).get("accessModes") or []
        )
        for c in by_kind.get("PersistentVolumeClaim", [])
    }
    monitors = by_kind.get("ServiceMonitor", []) + by_kind.get("PodMonitor", [])
    services = by_kind.get("Service", [])

    for obj in docs:
        kind = obj.get("kind")
        name = (obj.get("metadata") or {}).get("name")
        for where, template in _pod_templates(obj):
            pod = template.get("spec") or {}
            labels = (template.get("metadata") or {}).get("labels") or {}
            here = f"{_name(obj)} {where}".strip()
            replicas = int((obj.get("spec") or {}).get("replicas", 1) or 1)
            its_scalers = scalers.get((kind, name), [])
            most = max([replicas] + [m for _, m, _ in its_scalers])
            # (1) ReadWriteOnce under several replicas
            if kind in ("Deployment", "ReplicaSet", "Rollout") and most > 1:
                for volume in pod.get("volumes") or []:
                    claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
                    modes = claims.get(claim)
                    if modes and modes <= _PVC_SINGLE_NODE:
                        problems.append(
                            f"{here}: up to {most} replicas mount PVC {claim!r} "
                            f"({', '.join(sorted(modes))}); replicas on another node "
                            "cannot attach it. Use a StatefulSet with "
                            "volumeClaimTemplates, or ReadWriteMany."
                        )
            # (2) custom-metric scaling that nothing scrapes
            for scaler, _, custom in its_scalers:
                if custom and not _scraped(labels, monitors, services):
                    problems.append(
                        f"{scaler} scales {_name(obj)} on a custom metric, but no "
                        "ServiceMonitor or PodMonitor in the bundle scrapes its pods."
                    )
            for c in _containers(pod):
                cw = f"{here} container {c.get('name')!r}"
                words = [*(c.get("command") or []), *(c.get("args") or [])]
                values = words + [
                    str(e.get("value")) for e in c.get("env") or [] if "value" in e
                ]
                # (4) credentials in a URI
                if any(_CREDENTIAL_URI.search(str(v)) for v in values):
                    problems.append(
                        f"{cw}: a URI with a password in its command, args or env; "
                        "read it from a Secret (secretKeyRef or envFrom)."
                    )
                # (5) a script that shadows the standard library
                for word in words:
                    for module in _SCRIPT.findall(str(word)):
                        if module in sys.stdlib_module_names:
                            problems.append(
                                f"{cw}: runs {module}.py, which shadows the standard "
                                f"library's {module!r} module for every import in "
                                "that process; rename it."
                            )
                # (9) serving without readiness
                if (
                    kind in ("Deployment", "StatefulSet", "DaemonSet", "Rollout")
                    and c in (pod.get("containers") or [])
                    and c.get("ports")
                    and not c.get("readinessProbe")
                ):
                    problems.append(
                        f"{cw}: serves on a port but has no readinessProbe; traffic "
                        "reaches it before it is ready."
                    )
        # (7) Ray shared memory below the object store
        for where, group in _ray_groups(obj):
            pod = (group.get("template") or {}).get("spec") or {}
            shm = _shm_limit(pod)
            if shm is None:
                continue
            store = (group.get("rayStartParams") or {}).get("object-store-memory")
            if store is None or _quantity_bytes(store) > shm:
                problems.append(
                    f"{_name(obj)} {where}: /dev/shm is limited to {shm / 2**30:.2g} "
                    "GiB, but rayStartParams do not set object-store-memory at or "
                    "below it (Ray's default is 30% of the pod's memory)."
                )

    # (3) Istio sidecars under Pod Security "restricted"
    cni = any(
        ((o.get("spec") or {}).get("components") or {}).get("cni", {}).get("enabled")
        for o in by_kind.get("IstioOperator", [])
    )
    for ns in by_kind.get("Namespace", []):
        labels = (ns.get("metadata") or {}).get("labels") or {}
        injected = (
            labels.get("istio-injection") == "enabled" or "istio.io/rev" in labels
        )
        restricted = labels.get("pod-security.kubernetes.io/enforce") == "restricted"
        if injected and restricted and not cni:
            problems.append(
                f"{_name(ns)}: Istio injection under Pod Security 'restricted' needs "
                "the Istio CNI plugin (istio-init needs NET_ADMIN and NET_RAW); the "
                "bundle has no IstioOperator with spec.components.cni.enabled."
            )

    # (6) KServe RawDeployment scaled on request metrics
    for isvc in by_kind.get("InferenceService", []):
        mode = ((isvc.get("metadata") or {}).get("annotations") or {}).get(
            "serving.kserve.io/deploymentMode"
        )
        if mode != "RawDeployment":
            continue
        for part, comp in (isvc.get("spec") or {}).items():
            metric = (comp or {}).get("scaleMetric") if isinstance(comp, dict) else None
            if metric and metric not in ("cpu", "memory"):
                problems.append(
                    f"{_name(isvc)} {part}: RawDeployment mode scales with an HPA on "
                    f"cpu or memory only, not scaleMetric {metric!r}."
                )

    # (8) canary analysis on the canary's own traffic
    canary_services: set[str] = set()
    for ro in by_kind.get("Rollout", []):
        canary = ((ro.get("spec") or {}).get("strategy") or {}).get("canary") or {}
        if canary.get("trafficRouting"):
            if not (canary.get("canaryService") and canary.get("stableService")):
                problems.append(
                    f"{_name(ro)}: canary with trafficRouting needs canaryService and "
                    "stableService, so that analysis can tell their traffic apart."
                )
            else:
                canary_services.add(canary["canaryService"])
    for template in by_kind.get("AnalysisTemplate", []) + by_kind.get(
        "ClusterAnalysisTemplate", []
    ):
        for metric in (template.get("spec") or {}).get("metrics") or []:
            query = str(
                ((metric.get("provider") or {}).get("prometheus") or {}).get(
                    "query", ""
                )
            )
            if query and not (
                "canary" in query.lower() or any(s in query for s in canary_services)
            ):
                problems.append(
                    f"{_name(template)} metric {metric.get('name')!r}: the query does "
                    "not select the canary's own traffic (name the canary Service or "
                    "pass it as an arg); a mixed rate dilutes the canary's errors."
                )
    return list(dict.fromkeys(problems))  # alternative files may repeat an object


def _scraped(
    labels: Mapping[str, Any],
    monitors: list[dict[str, Any]],
    services: list[dict[str, Any]],
) -> bool:
    for m in monitors:
        selector = (m.get("spec") or {}).get("selector")
        if m.get("kind") == "PodMonitor" and _selects(selector, labels):
            return True
        if m.get("kind") == "ServiceMonitor":
            for svc in services:
                svc_labels = (svc.get("metadata") or {}).get("labels") or {}
                svc_selector = (svc.get("spec") or {}).get("selector") or {}
                if _selects(selector, svc_labels) and _selects(svc_selector, labels):
                    return True
    return False


def _shm_limit(pod: Mapping[str, Any]) -> float | None:
    mounted = {
        m.get("name")
        for c in _containers(pod)
        for m in c.get("volumeMounts") or []
        if m.get("mountPath") == "/dev/shm"
    }
    for volume in pod.get("volumes") or []:
        empty = volume.get("emptyDir")
        if volume.get("name") in mounted and empty and empty.get("sizeLimit"):
            return _quantity_bytes(empty["sizeLimit"])
    return None
