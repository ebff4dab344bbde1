"""Each operational rule rejects the manifest it was written for and accepts the fix.

The rejected manifests in tests/fixtures/manifests-before/ are the ones the chapters
wrote before these rules existed; each would have failed on a real cluster.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

import labkit

BEFORE = Path(__file__).parent / "fixtures" / "manifests-before"

# chapter folder: fragments every one of which a problem must contain
REJECTED = {
    "multi-model-inference": [
        "PVC 'llama-nim-cache' (ReadWriteOnce)",
        "HorizontalPodAutoscaler/llama-nim scales Deployment/llama-nim on a custom",
        "ScaledObject/llama-nim scales Deployment/llama-nim on a custom metric",
    ],
    "llm-serving": ["no ServiceMonitor or PodMonitor"],
    "kubeflow-pipelines": ["not scaleMetric 'concurrency'"],
    "ray-distributed-training": ["/dev/shm is limited to 1 GiB"],
    "industrial-inspection": ["runs inspect.py", "has no readinessProbe"],
    "mec-5g": ["has no readinessProbe"],
    "ml-cicd-ab-canary": [
        "needs the Istio CNI plugin",
        "needs canaryService and stableService",
        "metric 'success-rate': the query does not select the canary",
    ],
    "mlflow-lifecycle": ["a URI with a password"],
}


@pytest.mark.parametrize("chapter", sorted(REJECTED))
def test_rules_reject_the_manifests_written_before_them(chapter: str) -> None:
    problems = labkit.operational_problems(labkit.load_bundle(BEFORE / chapter))
    for fragment in REJECTED[chapter]:
        assert any(fragment in p for p in problems), (chapter, fragment, problems)


def _deployment(**container: object) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "x", **container}]},
            },
        },
    }


def test_a_clean_deployment_passes() -> None:
    ready = {"httpGet": {"path": "/ready", "port": 8080}}
    ok = _deployment(ports=[{"containerPort": 8080}], readinessProbe=ready)
    assert labkit.operational_problems([ok]) == []


def test_shared_volume_rule_follows_access_mode_and_replicas() -> None:
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "cache"},
        "spec": {"accessModes": ["ReadWriteOnce"]},
    }
    dep = _deployment()
    dep["spec"]["template"]["spec"]["volumes"] = [
        {"name": "c", "persistentVolumeClaim": {"claimName": "cache"}}
    ]
    assert any("PVC 'cache'" in p for p in labkit.operational_problems([claim, dep]))
    rwx = copy.deepcopy(claim)
    rwx["spec"]["accessModes"] = ["ReadWriteMany"]
    assert labkit.operational_problems([rwx, dep]) == []
    single = copy.deepcopy(dep)
    single["spec"]["replicas"] = 1
    assert labkit.operational_problems([claim, single]) == []


def test_a_scraped_custom_metric_passes() -> None:
    dep = _deployment()
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web"},
        "spec": {
            "scaleTargetRef": {"kind": "Deployment", "name": "web"},
            "maxReplicas": 4,
            "metrics": [{"type": "Pods", "pods": {}}],
        },
    }
    assert labkit.operational_problems([dep, hpa])
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}},
    }
    assert labkit.operational_problems([dep, hpa, monitor]) == []
    monitor["spec"]["selector"]["matchLabels"] = {"app": "other"}
    assert labkit.operational_problems([dep, hpa, monitor])


def test_ray_shared_memory_rule_accepts_a_sized_object_store() -> None:
    docs = labkit.load_bundle(BEFORE / "ray-distributed-training")
    docs = [d for d in docs if d["kind"] == "RayCluster"]
    for doc in docs:
        spec = doc["spec"]
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            group["rayStartParams"]["object-store-memory"] = str(768 * 2**20)
    assert not any("/dev/shm" in p for p in labkit.operational_problems(docs))
    for doc in docs:
        doc["spec"]["headGroupSpec"]["rayStartParams"]["object-store-memory"] = "2Gi"
    assert any("/dev/shm" in p for p in labkit.operational_problems(docs))


def test_istio_rule_accepts_the_cni_plugin() -> None:
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": "serving",
            "labels": {
                "istio-injection": "enabled",
                "pod-security.kubernetes.io/enforce": "restricted",
            },
        },
    }
    assert labkit.operational_problems([namespace])
    operator = {
        "apiVersion": "install.istio.io/v1alpha1",
        "kind": "IstioOperator",
        "metadata": {"name": "istio"},
        "spec": {"components": {"cni": {"enabled": True}}},
    }
    assert labkit.operational_problems([namespace, operator]) == []


def test_secret_and_script_rules() -> None:
    leaky = _deployment(args=["--backend-store-uri", "postgresql://u:pw@db/mlflow"])
    assert any("password" in p for p in labkit.operational_problems([leaky]))
    from_secret = _deployment(
        env=[
            {
                "name": "BACKEND",
                "valueFrom": {"secretKeyRef": {"name": "db", "key": "uri"}},
            }
        ]
    )
    assert labkit.operational_problems([from_secret]) == []
    shadow = _deployment(command=["python", "/app/types.py"])
    assert any("types.py" in p for p in labkit.operational_problems([shadow]))
    fine = _deployment(command=["python", "/app/inspection_server.py"])
    assert labkit.operational_problems([fine]) == []
