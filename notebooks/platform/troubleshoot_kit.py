"""Plumbing for the troubleshooting-automation chapter: fixture clusters built from
`kubernetes.client` models with the status fields a kubelet and the scheduler write,
the controllers' part of a rollout (new pods, EndpointSlices), strategic merge,
and table printing. The diagnostic rules, playbooks and guard rails stay in the
notebook.

Message formats follow Kubernetes v1.30 sources (cited in the chapter):
kubelet `pkg/kubelet/kuberuntime/kuberuntime_manager.go` (CrashLoopBackOff),
`pkg/kubelet/images/image_manager.go` (ImagePullBackOff), `pkg/kubelet/prober/prober.go`
and `pkg/probe/http/http.go` (Unhealthy), scheduler `pkg/scheduler/framework/types.go`
(FitError) and the filter plugins' reasons.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import pandas as pd
from kubernetes import client as k8s
from kubernetes.client import ApiClient
from kubernetes.utils import parse_quantity

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)  # the fixtures' "now"
KINDS = {
    "pods": "V1Pod",
    "events": "CoreV1Event",
    "nodes": "V1Node",
    "services": "V1Service",
    "endpointslices": "V1EndpointSlice",
    "networkpolicies": "V1NetworkPolicy",
    "pvcs": "V1PersistentVolumeClaim",
    "deployments": "V1Deployment",
    "configmaps": "V1ConfigMap",
}
_API = ApiClient()


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def to_dict(model: Any) -> dict[str, Any]:
    return _API.sanitize_for_serialization(model)


def from_dict(data: dict[str, Any], model_name: str) -> Any:
    """A dict (camelCase, as the API serves it) back into a client model."""
    return _API._ApiClient__deserialize(copy.deepcopy(data), model_name)


def strategic_merge(target: Any, patch: Any) -> Any:
    """Strategic merge patch for the fields the playbooks touch: maps merge, lists of
    named items (containers, env, ports, tolerations by key) merge by name, other
    lists are replaced, None deletes a key."""
    if isinstance(target, dict) and isinstance(patch, dict):
        merged = dict(target)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(target, list) and isinstance(patch, list):
        if all(isinstance(i, dict) and "name" in i for i in target + patch):
            by_name = {i["name"]: i for i in target}
            for item in patch:
                old = by_name.get(item["name"], {})
                by_name[item["name"]] = strategic_merge(old, item)
            return list(by_name.values())
    return copy.deepcopy(patch)


# ---------------------------------------------------------------- builders


def meta(name, namespace="shop", labels=None, age_s=86_400, **extra):
    return k8s.V1ObjectMeta(
        name=name,
        namespace=namespace,
        labels=labels,
        uid=hashlib.sha1(f"{namespace}/{name}".encode()).hexdigest()[:8],
        creation_timestamp=ago(age_s),
        **extra,
    )


def container(
    name="app",
    image="registry.example.com/shop/app:1.4.2",
    cpu="250m",
    memory="256Mi",
    env=None,
    port=8080,
):
    return k8s.V1Container(
        name=name,
        image=image,
        env=[k8s.V1EnvVar(name=k, value=v) for k, v in (env or {}).items()] or None,
        ports=[k8s.V1ContainerPort(container_port=port)],
        resources=k8s.V1ResourceRequirements(
            requests={"cpu": cpu, "memory": memory}, limits={"memory": memory}
        ),
        readiness_probe=k8s.V1Probe(
            http_get=k8s.V1HTTPGetAction(path="/ready", port=port), period_seconds=10
        ),
    )


def running(started_ago_s=86_000, restarts=0, ready=True, last=None):
    return {
        "state": k8s.V1ContainerState(
            running=k8s.V1ContainerStateRunning(started_at=ago(started_ago_s))
        ),
        "restart_count": restarts,
        "ready": ready,
        "last_state": k8s.V1ContainerState(terminated=last) if last else None,
    }


def waiting(reason, message, restarts=0, last=None):
    return {
        "state": k8s.V1ContainerState(
            waiting=k8s.V1ContainerStateWaiting(reason=reason, message=message)
        ),
        "restart_count": restarts,
        "ready": False,
        "last_state": k8s.V1ContainerState(terminated=last) if last else None,
    }


def terminated(reason, exit_code, finished_ago_s, ran_s=20):
    return k8s.V1ContainerStateTerminated(
        reason=reason,
        exit_code=exit_code,
        started_at=ago(finished_ago_s + ran_s),
        finished_at=ago(finished_ago_s),
        container_id="containerd://" + "0" * 12,
    )


def template_hash(deployment) -> str:
    text = json.dumps(to_dict(deployment.spec.template), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def pod_for(deployment, index, status, *, node="node-a", age_s=None, pod_ip=None):
    """One pod of a Deployment, as its ReplicaSet creates it; `status` is a dict from
    running()/waiting() or the string "pending" (with `status_conditions`)."""
    status = copy.deepcopy(status)
    name = deployment.metadata.name
    h = template_hash(deployment)
    spec = copy.deepcopy(deployment.spec.template.spec)
    labels = {**deployment.spec.template.metadata.labels, "pod-template-hash": h}
    started = (status or {}).get("state") if isinstance(status, dict) else None
    pod = k8s.V1Pod(
        api_version="v1",
        kind="Pod",
        metadata=meta(
            f"{name}-{h[:10]}-{'abcdefghij'[index]}x{index}q",
            deployment.metadata.namespace,
            labels,
            age_s=age_s or 86_400,
            owner_references=[
                k8s.V1OwnerReference(
                    api_version="apps/v1",
                    kind="ReplicaSet",
                    name=f"{name}-{h[:10]}",
                    uid="rs",
                    controller=True,
                )
            ],
        ),
        spec=spec,
    )
    if isinstance(status, tuple):  # ("pending", message or None)
        pod.spec.node_name = None
        scheduled = status[1] is None
        pod.status = k8s.V1PodStatus(
            phase="Pending",
            qos_class="Burstable",
            conditions=[
                k8s.V1PodCondition(
                    type="PodScheduled",
                    status="True" if scheduled else "False",
                    reason=None if scheduled else "Unschedulable",
                    message=status[1],
                    last_transition_time=ago(age_s or 60),
                )
            ],
        )
        return pod
    pod.spec.node_name = node
    ready = status["ready"]
    statuses = [
        k8s.V1ContainerStatus(
            name=c.name,
            image=c.image,
            image_id="" if status["state"].waiting else f"{c.image}@sha256:0f3a",
            container_id=None
            if status["state"].waiting
            else "containerd://" + "1" * 12,
            started=bool(started and started.running),
            **status,
        )
        for c in spec.containers
    ]
    pod.status = k8s.V1PodStatus(
        phase="Running"
        if status["state"].running or status["restart_count"]
        else "Pending",
        pod_ip=pod_ip or f"10.244.{index + 1}.{len(name) + 10}",
        host_ip="192.168.10.11",
        qos_class="Burstable",
        start_time=ago(age_s or 86_400),
        conditions=[
            k8s.V1PodCondition(type=t, status=v)
            for t, v in [
                ("PodScheduled", "True"),
                ("Initialized", "True"),
                ("ContainersReady", str(ready)),
                ("Ready", str(ready)),
            ]
        ],
        container_statuses=statuses,
    )
    return pod


def deployment(name, ns="shop", replicas=2, *, last_applied_replicas=None, **spec):
    labels = {"app": name}
    annotations = None
    if last_applied_replicas is not None:
        applied = {"apiVersion": "apps/v1", "kind": "Deployment"}
        applied["spec"] = {"replicas": last_applied_replicas}
        annotations = {
            "kubectl.kubernetes.io/last-applied-configuration": json.dumps(applied)
        }
    return k8s.V1Deployment(
        api_version="apps/v1",
        kind="Deployment",
        metadata=meta(name, ns, labels, annotations=annotations),
        spec=k8s.V1DeploymentSpec(
            replicas=replicas,
            selector=k8s.V1LabelSelector(match_labels=labels),
            template=k8s.V1PodTemplateSpec(
                metadata=k8s.V1ObjectMeta(labels=labels),
                spec=k8s.V1PodSpec(
                    containers=[spec.pop("container", None) or container()], **spec
                ),
            ),
        ),
    )


def service(name, ns="shop", selector=None, port=8080):
    return k8s.V1Service(
        api_version="v1",
        kind="Service",
        metadata=meta(name, ns, {"app": name}),
        spec=k8s.V1ServiceSpec(
            selector=selector if selector is not None else {"app": name},
            ports=[k8s.V1ServicePort(port=port, target_port=port, protocol="TCP")],
            cluster_ip=f"10.96.{len(name)}.{len(ns) + 10}",
        ),
    )


def event(obj, reason, message, count=1, first_ago_s=600, last_ago_s=30, **kw):
    """A kubelet or scheduler Event about `obj` (a model with metadata)."""
    component = kw.pop("component", "kubelet")
    return k8s.CoreV1Event(
        api_version="v1",
        kind="Event",
        metadata=meta(
            f"{obj.metadata.name}.{hashlib.sha1(reason.encode()).hexdigest()[:8]}",
            obj.metadata.namespace,
        ),
        involved_object=k8s.V1ObjectReference(
            kind=obj.kind, name=obj.metadata.name, namespace=obj.metadata.namespace
        ),
        reason=reason,
        message=message,
        type=kw.pop("type", "Warning"),
        count=count,
        first_timestamp=ago(first_ago_s),
        last_timestamp=ago(last_ago_s),
        source=k8s.V1EventSource(component=component),
    )


def node(name, *, taints=None, labels=None, ready="True", cpu="4", memory="15896Mi"):
    conditions = [
        k8s.V1NodeCondition(type=t, status="False", reason=f"Kubelet{r}")
        for t, r in [
            ("MemoryPressure", "HasSufficientMemory"),
            ("DiskPressure", "HasNoDiskPressure"),
            ("PIDPressure", "HasSufficientPID"),
        ]
    ]
    if ready == "True":
        conditions.append(
            k8s.V1NodeCondition(
                type="Ready",
                status="True",
                reason="KubeletReady",
                message="kubelet is posting ready status",
            )
        )
    else:  # what the node lifecycle controller writes when the kubelet goes silent
        conditions.append(
            k8s.V1NodeCondition(
                type="Ready",
                status="Unknown",
                reason="NodeStatusUnknown",
                message="Kubelet stopped posting node status.",
                last_transition_time=ago(900),
            )
        )
    return k8s.V1Node(
        api_version="v1",
        kind="Node",
        metadata=meta(
            name,
            None,
            {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                **(labels or {}),
            },
            age_s=90 * 86_400,
        ),
        spec=k8s.V1NodeSpec(
            taints=[k8s.V1Taint(key=k, value=v, effect=e) for k, v, e in taints or []]
            or None
        ),
        status=k8s.V1NodeStatus(
            allocatable={"cpu": cpu, "memory": memory, "pods": "110"},
            capacity={"cpu": cpu, "memory": memory, "pods": "110"},
            conditions=conditions,
        ),
    )


def reconcile_endpoints(snapshot: dict[str, Any]) -> None:
    """The EndpointSlice controller: one slice per selecting Service, an endpoint per
    matching running pod, `ready` from the pod's Ready condition."""
    slices = []
    for svc in snapshot["services"]:
        if not svc.spec.selector:
            continue  # no selector: endpoints are managed by hand, no slice here
        endpoints = []
        for p in snapshot["pods"]:
            labels = p.metadata.labels or {}
            if p.metadata.namespace != svc.metadata.namespace or not p.status.pod_ip:
                continue
            if all(labels.get(k) == v for k, v in svc.spec.selector.items()):
                ready = any(
                    c.type == "Ready" and c.status == "True"
                    for c in p.status.conditions
                )
                endpoints.append(
                    k8s.V1Endpoint(
                        addresses=[p.status.pod_ip],
                        conditions=k8s.V1EndpointConditions(ready=ready),
                        target_ref=k8s.V1ObjectReference(
                            kind="Pod",
                            name=p.metadata.name,
                            namespace=p.metadata.namespace,
                        ),
                    )
                )
        slices.append(
            k8s.V1EndpointSlice(
                api_version="discovery.k8s.io/v1",
                kind="EndpointSlice",
                address_type="IPv4",
                metadata=meta(
                    f"{svc.metadata.name}-7xk2p",
                    svc.metadata.namespace,
                    {"kubernetes.io/service-name": svc.metadata.name},
                ),
                endpoints=endpoints,  # empty: no pod matches the selector
                ports=[k8s.DiscoveryV1EndpointPort(port=svc.spec.ports[0].target_port)],
            )
        )
    snapshot["endpointslices"] = slices


# ---------------------------------------------------------------- fixtures


@dataclass
class Fixture:
    name: str
    snapshot: dict[str, Any]
    expected: set = field(default_factory=set)  # {(rule, "namespace/name")}
    truth: dict = field(default_factory=dict)  # what a new pod of a Deployment does
    note: str = ""


def base_snapshot() -> dict[str, Any]:
    """Three workers and a healthy CoreDNS: the cluster every fixture starts from."""
    snap = {kind: [] for kind in KINDS}
    snap["now"] = NOW
    snap["nodes"] = [node(f"node-{c}") for c in "abc"]
    coredns = deployment(
        "coredns",
        "kube-system",
        2,
        container=container(
            "coredns",
            "registry.k8s.io/coredns/coredns:v1.11.1",
            "100m",
            "170Mi",
            port=53,
        ),
    )
    coredns.spec.template.metadata.labels = {"k8s-app": "kube-dns"}
    coredns.spec.selector.match_labels = {"k8s-app": "kube-dns"}
    snap["deployments"].append(coredns)
    snap["pods"] += [pod_for(coredns, i, running(), node="node-a") for i in range(2)]
    snap["services"].append(
        service("kube-dns", "kube-system", {"k8s-app": "kube-dns"}, 53)
    )
    return snap


def add_workload(snap, dep, statuses, service_selector="same", nodes=None, **kw):
    dep.spec.replicas = len(statuses)  # the ReplicaSet made them all
    snap["deployments"].append(dep)
    pods = [
        pod_for(dep, i, s, node=(nodes or ["node-a", "node-b", "node-c"])[i % 3], **kw)
        for i, s in enumerate(statuses)
    ]
    snap["pods"] += pods
    if service_selector is not None:
        sel = None if service_selector == "same" else service_selector
        snap["services"].append(service(dep.metadata.name, dep.metadata.namespace, sel))
    return pods


def finish(snap) -> dict[str, Any]:
    reconcile_endpoints(snap)
    return snap


def crashloop(restarts=7, reason="Error", exit_code=1, finished_ago_s=95):
    return waiting(
        "CrashLoopBackOff",
        "back-off 5m0s restarting failed container=app pod={pod}",
        restarts,
        terminated(reason, exit_code, finished_ago_s),
    )


def unschedulable(reasons: str, nodes: int = 3, preemption: str = "") -> str:
    preemption = preemption or f"{nodes} Preemption is not helpful for scheduling."
    return (
        f"0/{nodes} nodes are available: {reasons}. preemption: 0/{nodes} nodes are "
        f"available: {preemption}"
    )


def fill_pod_names(snap):
    """The kubelet's messages name the pod as name_namespace(uid)."""
    for p in snap["pods"]:
        for s in p.status.container_statuses or []:
            if s.state.waiting and "{pod}" in (s.state.waiting.message or ""):
                s.state.waiting.message = s.state.waiting.message.replace(
                    "{pod}",
                    f"{p.metadata.name}_{p.metadata.namespace}({p.metadata.uid})",
                )
    return snap


def fixtures() -> list[Fixture]:
    out = []

    def new(name, expected=(), truth=None, note=""):
        snap = base_snapshot()
        out.append(Fixture(name, snap, set(expected), truth or {}, note))
        return snap

    # --- faults
    s = new("crashloop-app-bug", {("crashloop", "shop/cart")}, {"shop/cart": "crash"})
    add_workload(s, deployment("cart"), [crashloop(), crashloop(6)])
    pods = [p for p in s["pods"] if p.metadata.name.startswith("cart")]
    s["events"] += [
        event(
            p,
            "BackOff",
            f"Back-off restarting failed container app in pod "
            f"{p.metadata.name}_shop({p.metadata.uid})",
            count=30,
        )
        for p in pods
    ]

    s = new("crashloop-config-fixed", {("crashloop-config", "shop/orders")})
    dep = deployment("orders")
    dep.spec.template.spec.containers[0].env_from = [
        k8s.V1EnvFromSource(
            config_map_ref=k8s.V1ConfigMapEnvSource(name="orders-config")
        )
    ]
    add_workload(s, dep, [crashloop(9, finished_ago_s=200)] * 2)
    s["configmaps"].append(
        k8s.V1ConfigMap(
            api_version="v1",
            kind="ConfigMap",
            metadata=meta(
                "orders-config",
                managed_fields=[
                    k8s.V1ManagedFieldsEntry(
                        manager="kubectl-edit", operation="Update", time=ago(60)
                    )
                ],
            ),
            data={"DATABASE_HOST": "orders-db.shop.svc.cluster.local"},
        )
    )

    s = new("oom-killed", {("oom-killed", "shop/search")}, {"shop/search": "600Mi"})
    add_workload(
        s,
        deployment("search", container=container(memory="512Mi")),
        [crashloop(4, "OOMKilled", 137), crashloop(5, "OOMKilled", 137)],
    )

    s = new("oom-at-ceiling", {("oom-killed", "shop/indexer")}, {"shop/indexer": "3Gi"})
    add_workload(
        s,
        deployment("indexer", container=container(memory="2Gi")),
        [crashloop(3, "OOMKilled", 137)],
        service_selector=None,
    )

    s = new("image-tag-not-found", {("image-pull", "shop/ledger")})
    image = "registry.example.com/shop/ledger:v2.3.1"
    add_workload(
        s,
        deployment("ledger", container=container(image=image)),
        [waiting("ImagePullBackOff", f'Back-off pulling image "{image}"')],
    )
    s["events"].append(
        event(
            s["pods"][-1],
            "Failed",
            f'Failed to pull image "{image}": rpc error: code = NotFound desc = '
            "failed to "
            f'pull and unpack image "{image}": failed to resolve reference "{image}": '
            f"{image}: not found",
            count=6,
        )
    )

    s = new("image-pull-unauthorized", {("image-pull", "shop/billing")})
    image = "registry.example.com/private/billing:1.0.0"
    add_workload(
        s,
        deployment("billing", container=container(image=image)),
        [
            waiting(
                "ErrImagePull",
                "failed to authorize: failed to fetch oauth token: "
                "unexpected status from GET request to https://registry.example.com"
                "/token: 401 Unauthorized",
            )
        ],
    )

    for name, reasons, expected, extra in [
        (
            "pending-insufficient-cpu",
            "3 Insufficient cpu",
            ["insufficient-resources"],
            {"container": container(cpu="6")},
        ),
        (
            "pending-untolerated-taint",
            "3 node(s) had untolerated taint {dedicated: gpu}",
            ["untolerated-taint"],
            {},
        ),
        (
            "pending-node-selector",
            "3 node(s) didn't match Pod's node affinity/selector",
            ["node-affinity"],
            {"node_selector": {"disktype": "nvme"}},
        ),
        (
            "pending-unbound-pvc",
            "pod has unbound immediate PersistentVolumeClaims",
            ["unbound-pvc"],
            {},
        ),
        # two faults in one message: two diagnoses
        (
            "pending-taint-and-memory",
            "1 node(s) had untolerated taint {dedicated: gpu}, 2 Insufficient memory",
            ["untolerated-taint", "insufficient-resources"],
            {"container": container(memory="20Gi")},
        ),
    ]:
        app = "report"
        s = new(name, {(r, f"shop/{app}") for r in expected})
        if "taint-and" in name:  # one tainted node, two too small
            s["nodes"][0] = node("node-a", taints=[("dedicated", "gpu", "NoSchedule")])
        elif "taint" in name:
            s["nodes"] = [
                node(f"node-{c}", taints=[("dedicated", "gpu", "NoSchedule")])
                for c in "abc"
            ]
        if "pvc" in name:
            extra["volumes"] = [
                k8s.V1Volume(
                    name="data",
                    persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                        claim_name="report-data"
                    ),
                )
            ]
            s["pvcs"].append(
                k8s.V1PersistentVolumeClaim(
                    api_version="v1",
                    kind="PersistentVolumeClaim",
                    metadata=meta("report-data", age_s=900),
                    spec=k8s.V1PersistentVolumeClaimSpec(
                        access_modes=["ReadWriteOnce"],
                        storage_class_name="fast-ssd",
                        resources=k8s.V1VolumeResourceRequirements(
                            requests={"storage": "10Gi"}
                        ),
                    ),
                    status=k8s.V1PersistentVolumeClaimStatus(phase="Pending"),
                )
            )
            s["events"].append(
                event(
                    s["pvcs"][-1],
                    "ProvisioningFailed",
                    'storageclass.storage.k8s.io "fast-ssd" not found',
                    count=12,
                    component="persistentvolume-controller",
                )
            )
        add_workload(
            s,
            deployment(app, replicas=1, **extra),
            [("pending", unschedulable(reasons))],
            age_s=900,
        )
        s["events"].append(
            event(
                s["pods"][-1],
                "FailedScheduling",
                unschedulable(reasons),
                count=15,
                component="default-scheduler",
            )
        )

    s = new("readiness-failing", {("readiness-probe", "shop/catalog")})
    pods = add_workload(s, deployment("catalog", replicas=1), [running(ready=False)])
    s["events"].append(
        event(
            pods[0],
            "Unhealthy",
            "Readiness probe failed: HTTP probe failed with statuscode: 503",
            count=42,
            first_ago_s=900,
            last_ago_s=5,
        )
    )

    s = new("liveness-failing", {("liveness-probe", "shop/payments")})
    last = terminated("Error", 137, 40)
    pods = add_workload(
        s,
        deployment("payments", replicas=1),
        [running(started_ago_s=35, restarts=5, ready=False, last=last)],
    )
    ip = pods[0].status.pod_ip
    s["events"] += [
        event(
            pods[0],
            "Unhealthy",
            f'Liveness probe failed: Get "http://{ip}:8080/healthz"'
            f": dial tcp {ip}:8080: connect: connection refused",
            count=15,
        ),
        event(
            pods[0],
            "Killing",
            "Container app failed liveness probe, will be restarted",
            count=5,
            type="Normal",
        ),
    ]

    s = new("service-selector-mismatch", {("no-endpoints", "shop/inventory")})
    add_workload(
        s,
        deployment("inventory"),
        [running(), running()],
        service_selector={"app": "inventory-api"},
    )

    s = new("scaled-to-zero", {("replicas-drift", "shop/frontend")})
    add_workload(s, deployment("frontend", replicas=0, last_applied_replicas=3), [])

    s = new(
        "coredns-not-ready",
        {
            ("dns-down", "kube-system/kube-dns"),
            ("readiness-probe", "kube-system/coredns"),
        },
    )
    for p in s["pods"]:
        p.status.conditions[-1].status = "False"
        p.status.container_statuses[0].ready = False
        s["events"].append(
            event(
                p,
                "Unhealthy",
                "Readiness probe failed: HTTP probe failed with statuscode: 503",
                count=60,
            )
        )
    add_workload(s, deployment("cart"), [running()])

    s = new("service-name-typo", {("unknown-service", "shop/checkout")})
    add_workload(s, deployment("cart"), [running()])
    add_workload(
        s,
        deployment(
            "checkout",
            container=container(
                env={"CART_URL": "http://cart-svc.shop.svc.cluster.local:8080"}
            ),
        ),
        [running()],
    )

    s = new("networkpolicy-blocks", {("network-policy-block", "shop/checkout")})
    add_workload(s, deployment("payments"), [running()])
    add_workload(
        s,
        deployment(
            "checkout",
            container=container(env={"PAYMENTS_URL": "http://payments:8080"}),
        ),
        [running()],
    )
    s["networkpolicies"] += [
        default_deny("shop"),
        allow_from("payments", {"app": "frontend"}),
    ]

    s = new("node-not-ready", {("node-not-ready", "/node-c")})
    s["nodes"][2] = node(
        "node-c",
        ready="Unknown",
        taints=[("node.kubernetes.io/unreachable", None, "NoExecute")],
    )

    s = new(
        "oom-plus-selector",
        {("oom-killed", "shop/search"), ("no-endpoints", "shop/inventory")},
        {"shop/search": "600Mi"},
    )
    add_workload(
        s,
        deployment("search", container=container(memory="512Mi")),
        [crashloop(4, "OOMKilled", 137)],
    )
    add_workload(
        s,
        deployment("inventory"),
        [running()],
        service_selector={"app": "inventory-api"},
    )

    # --- healthy near misses
    new("healthy", note="the base cluster alone")
    s = new("restarted-once-long-ago", note="exit 1 three days ago, running since")
    add_workload(
        s,
        deployment("cart"),
        [
            running(
                started_ago_s=259_000, restarts=1, last=terminated("Error", 1, 259_200)
            )
        ],
    )
    s = new("oom-once-long-ago", note="OOMKilled two days ago, stable since")
    add_workload(
        s,
        deployment("search"),
        [
            running(
                started_ago_s=172_000,
                restarts=1,
                last=terminated("OOMKilled", 137, 172_800),
            )
        ],
    )
    s = new("pending-2s-old", note="Unschedulable for 2 s: the autoscaler's job")
    add_workload(
        s,
        deployment("report", replicas=1),
        [("pending", unschedulable("3 Insufficient cpu"))],
        age_s=2,
    )
    s = new("pending-just-created", note="scheduled, image being pulled")
    add_workload(
        s,
        deployment("report", replicas=1),
        [waiting("ContainerCreating", None)],
        age_s=3,
    )
    s = new("one-probe-blip", note="one readiness failure an hour ago, ready now")
    pods = add_workload(s, deployment("catalog"), [running()])
    s["events"].append(
        event(
            pods[0],
            "Unhealthy",
            "Readiness probe failed: Get "
            '"http://10.244.1.17:8080/ready": context deadline exceeded',
            count=1,
            first_ago_s=3600,
            last_ago_s=3600,
        )
    )
    s = new("headless-no-selector", note="a Service with hand-made endpoints")
    add_workload(s, deployment("cart"), [running()])
    s["services"].append(service("legacy-db", selector={}))
    s = new("taint-tolerated", note="tainted nodes, the pod tolerates them")
    s["nodes"] = [
        node(f"node-{c}", taints=[("dedicated", "gpu", "NoSchedule")]) for c in "abc"
    ]
    add_workload(
        s,
        deployment(
            "trainer",
            tolerations=[
                k8s.V1Toleration(
                    key="dedicated", operator="Equal", value="gpu", effect="NoSchedule"
                )
            ],
        ),
        [running()],
    )
    s = new("networkpolicy-allows", note="default deny plus an allow for the client")
    add_workload(s, deployment("payments"), [running()])
    add_workload(
        s,
        deployment(
            "checkout",
            container=container(env={"PAYMENTS_URL": "http://payments:8080"}),
        ),
        [running()],
    )
    s["networkpolicies"] += [
        default_deny("shop"),
        allow_from("payments", {"app": "checkout"}),
    ]
    s = new(
        "scaled-to-zero-on-purpose", note="replicas 0 as applied: a paused batch app"
    )
    add_workload(s, deployment("batch", replicas=0, last_applied_replicas=0), [])
    s = new("external-url", note="an env URL to a host outside the cluster")
    add_workload(
        s,
        deployment(
            "checkout",
            container=container(env={"PSP_URL": "https://api.stripe.com/v1"}),
        ),
        [running()],
    )
    for f in out:
        finish(fill_pod_names(f.snapshot))
    return out


def default_deny(ns):
    return k8s.V1NetworkPolicy(
        api_version="networking.k8s.io/v1",
        kind="NetworkPolicy",
        metadata=meta("default-deny-ingress", ns),
        spec=k8s.V1NetworkPolicySpec(
            pod_selector=k8s.V1LabelSelector(), policy_types=["Ingress"]
        ),
    )


def allow_from(app, client_labels, ns="shop", port=8080):
    return k8s.V1NetworkPolicy(
        api_version="networking.k8s.io/v1",
        kind="NetworkPolicy",
        metadata=meta(f"{app}-allow-ingress", ns),
        spec=k8s.V1NetworkPolicySpec(
            pod_selector=k8s.V1LabelSelector(match_labels={"app": app}),
            policy_types=["Ingress"],
            ingress=[
                k8s.V1NetworkPolicyIngressRule(
                    _from=[
                        k8s.V1NetworkPolicyPeer(
                            pod_selector=k8s.V1LabelSelector(match_labels=client_labels)
                        )
                    ],
                    ports=[k8s.V1NetworkPolicyPort(port=port, protocol="TCP")],
                )
            ],
        ),
    )


# ---------------------------------------------------------------- controllers


def apply_patch(snap, kind, namespace, name, patch) -> None:
    """Strategic-merge `patch` into the object of `kind` (a KINDS key), in place."""
    objs = snap[kind]
    for i, obj in enumerate(objs):
        if obj.metadata.name == name and (obj.metadata.namespace or "") == namespace:
            objs[i] = from_dict(strategic_merge(to_dict(obj), patch), KINDS[kind])
            return
    raise KeyError(f"{kind} {namespace}/{name} not in the snapshot")


def roll_out(snap, truth: dict[str, str]) -> None:
    """The Deployment controller and kubelet after a change: each Deployment whose
    template or replica count no longer matches its pods gets new pods. A new pod
    runs and turns ready unless `truth` says otherwise: "crash" (an application bug)
    or a memory need above the new limit (OOMKilled again)."""
    for dep in snap["deployments"]:
        key = f"{dep.metadata.namespace}/{dep.metadata.name}"
        h = template_hash(dep)
        mine = [
            p
            for p in snap["pods"]
            if p.metadata.namespace == dep.metadata.namespace
            and all(
                (p.metadata.labels or {}).get(k) == v
                for k, v in dep.spec.selector.match_labels.items()
            )
        ]
        current = [p for p in mine if p.metadata.labels.get("pod-template-hash") == h]
        if len(current) == dep.spec.replicas and len(mine) == len(current):
            continue
        need = truth.get(key)
        limit = dep.spec.template.spec.containers[0].resources.limits["memory"]
        if need == "crash":
            status = crashloop(2, finished_ago_s=10)
        elif need and parse_quantity(need) > parse_quantity(limit):
            status = crashloop(2, "OOMKilled", 137, 10)
        else:
            status = running(started_ago_s=50)
        snap["pods"] = [p for p in snap["pods"] if p not in mine]
        snap["pods"] += [
            pod_for(dep, i, copy.deepcopy(status), age_s=60)
            for i in range(dep.spec.replicas)
        ]
    finish(fill_pod_names(snap))


# ---------------------------------------------------------------- printing


def table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    frame = pd.DataFrame(rows, columns=columns)
    return frame.to_string(index=False, max_colwidth=60)


def config_error_fixture() -> Fixture:
    """A pod whose ConfigMap does not exist: the kubelet cannot build its env."""
    snap = base_snapshot()
    dep = deployment("orders")
    dep.spec.template.spec.containers[0].env_from = [
        k8s.V1EnvFromSource(
            config_map_ref=k8s.V1ConfigMapEnvSource(name="orders-config")
        )
    ]
    add_workload(
        snap,
        dep,
        [waiting("CreateContainerConfigError", 'configmap "orders-config" not found')],
    )
    return Fixture(
        "missing-configmap", finish(snap), {("missing-config", "shop/orders")}
    )


# ---------------------------------------------------------------- accessors
# Small readers of the snapshot that the chapter's rules share; the rules themselves,
# the playbooks and the guard are in the notebook.


def age_s(snapshot, timestamp):
    return (snapshot["now"] - timestamp).total_seconds()


def workload(pod):
    # The Deployment behind a pod: its ReplicaSet's name without the template hash.
    owners = pod.metadata.owner_references or []
    name = owners[0].name if owners else pod.metadata.name
    if owners and owners[0].kind == "ReplicaSet":
        name = name.rsplit("-", 1)[0]
    return f"{pod.metadata.namespace}/{name}"


def containers(snapshot):
    for pod in snapshot["pods"]:
        for status in pod.status.container_statuses or []:
            yield pod, status


def events_for(snapshot, obj, reason):
    return [
        e
        for e in snapshot["events"]
        if e.involved_object.name == obj.metadata.name
        and e.involved_object.namespace == obj.metadata.namespace
        and e.reason == reason
    ]


def config_changed_at(snapshot, pod):
    # When each ConfigMap the pod reads was last written (managedFields' time).
    names = {
        e.config_map_ref.name
        for c in pod.spec.containers
        for e in c.env_from or []
        if e.config_map_ref
    }
    names |= {v.config_map.name for v in pod.spec.volumes or [] if v.config_map}
    return {
        cm.metadata.name: max(m.time for m in cm.metadata.managed_fields or [])
        for cm in snapshot["configmaps"]
        if cm.metadata.namespace == pod.metadata.namespace and cm.metadata.name in names
    }


def requests_vs_nodes(snapshot, pod, resource):
    asked = sum(
        parse_quantity((c.resources.requests or {}).get(resource, "0"))
        for c in pod.spec.containers
    )
    largest = max(
        parse_quantity(n.status.allocatable[resource]) for n in snapshot["nodes"]
    )
    return asked, largest


def matches(selector, labels):
    return all((labels or {}).get(k) == v for k, v in (selector or {}).items())


def slices_of(snapshot, svc):
    return [
        s
        for s in snapshot["endpointslices"]
        if s.metadata.namespace == svc.metadata.namespace
        and s.metadata.labels.get("kubernetes.io/service-name") == svc.metadata.name
    ]


SERVICE_HOST = re.compile(
    r"^([a-z0-9-]+)(?:\.([a-z0-9-]+)(?:\.svc(?:\.cluster\.local)?)?)?$"
)


def service_references(pod):
    # (env var, service name, namespace) for each URL in the env naming a Service.
    for c in pod.spec.containers:
        for env in c.env or []:
            host = re.match(r"^\w+://([^/:]+)", env.value or "")
            parsed = host and SERVICE_HOST.match(host[1])
            if parsed:
                yield env, parsed[1], parsed[2] or pod.metadata.namespace


def ingress_admits(policy, client, port):
    for rule_ in policy.spec.ingress or []:
        peers = rule_._from or []
        ports = [p.port for p in rule_.ports or []]
        same_ns = policy.metadata.namespace == client.metadata.namespace
        peer_ok = not peers or any(
            p.pod_selector is not None
            and p.namespace_selector is None
            and same_ns
            and matches(p.pod_selector.match_labels, client.metadata.labels)
            for p in peers
        )
        if peer_ok and (not ports or port in ports):
            return True
    return False


def policies_on(snapshot, server):
    # The Ingress policies that select the server pod (an empty selector: all).
    return [
        p
        for p in snapshot["networkpolicies"]
        if p.metadata.namespace == server.metadata.namespace
        and "Ingress" in (p.spec.policy_types or [])
        and matches(p.spec.pod_selector.match_labels, server.metadata.labels)
    ]


def naive_rules(snapshot):
    for pod, s in containers(snapshot):
        last = s.last_state and s.last_state.terminated
        if s.restart_count > 0:
            oom = last and last.reason == "OOMKilled"
            yield ("oom-killed" if oom else "crashloop"), workload(pod)
    for pod in snapshot["pods"]:
        if pod.status.phase == "Pending":
            yield "insufficient-resources", workload(pod)
        for e in events_for(snapshot, pod, "Unhealthy"):
            yield e.message.split()[0].lower() + "-probe", workload(pod)
    for svc in snapshot["services"]:
        if not any(s.endpoints for s in slices_of(snapshot, svc)):
            yield "no-endpoints", f"{svc.metadata.namespace}/{svc.metadata.name}"
    for dep in snapshot["deployments"]:
        if dep.spec.replicas == 0:
            yield "replicas-drift", f"{dep.metadata.namespace}/{dep.metadata.name}"


def scores(found_by_fixture):
    tp = sum(len(found & f.expected) for f, found in found_by_fixture)
    fp = sum(len(found - f.expected) for f, found in found_by_fixture)
    fn = sum(len(f.expected - found) for f, found in found_by_fixture)
    return {"precision": tp / (tp + fp), "recall": tp / (tp + fn), "false alarms": fp}


def live_snapshot(api):
    core, apps = k8s.CoreV1Api(api), k8s.AppsV1Api(api)
    return {
        "now": datetime.now(timezone.utc),
        "pods": core.list_pod_for_all_namespaces().items,
        "events": core.list_event_for_all_namespaces().items,
        "nodes": core.list_node().items,
        "services": core.list_service_for_all_namespaces().items,
        "endpointslices": k8s.DiscoveryV1Api(api)
        .list_endpoint_slice_for_all_namespaces()
        .items,
        "networkpolicies": k8s.NetworkingV1Api(api)
        .list_network_policy_for_all_namespaces()
        .items,
        "pvcs": core.list_persistent_volume_claim_for_all_namespaces().items,
        "deployments": apps.list_deployment_for_all_namespaces().items,
        "configmaps": core.list_config_map_for_all_namespaces().items,
    }


def render(action, dry_run=True):
    flag = " --dry-run=server" if dry_run else ""
    if action.verb == "rollout-restart" or action.verb == "scale":
        return action.kubectl + flag
    return (
        f"kubectl patch deployment {action.name} -n {action.namespace} "
        "--type strategic "
        f"-p '{json.dumps(action.patch, separators=(',', ':'))}'{flag}"
    )


def send_action(action, api) -> str:
    """The live path: the playbook's patch through kubernetes.client (no dry run)."""
    apps = k8s.AppsV1Api(api)
    if action.verb == "scale":
        apps.patch_namespaced_deployment_scale(
            action.name, action.namespace, action.patch
        )
    else:
        apps.patch_namespaced_deployment(action.name, action.namespace, action.patch)
    return "executed"


INCIDENT_PROCESS = [
    (
        "Detect",
        "the scanner CronJob (or an alert) reports a diagnosis; open an incident "
        "when a user-facing Service is affected, and name an incident commander.",
    ),
    (
        "Triage",
        "find the fault below by its rule name; read the evidence fields; set "
        "the severity by the Services behind the target and the users they serve.",
    ),
    (
        "Mitigate",
        "run the automated repair (dry run first) or the manual fix; prefer a "
        "rollback over a forward fix; stop the bleeding before looking for the cause.",
    ),
    (
        "Communicate",
        "post status every 30 min to the incident channel and the status "
        "page: impact, cause as known, next step, time of the next update.",
    ),
    (
        "Resolve",
        "the scanner no longer reports the fault and the Service's SLO burn "
        "rate is back to normal; close the incident and record its timeline.",
    ),
    (
        "Postmortem",
        "within five working days, blameless: timeline, cause, what "
        "detected it, what would have stopped it, actions with owners and dates.",
    ),
]


def runbook_markdown(guard_rails: str, faults: list[dict[str, str]]) -> list[str]:
    """The runbook page: the six-step process, the guard rails, one section a fault."""
    lines = [
        "# Incident runbook: Kubernetes workloads",
        "",
        "Generated by the troubleshooting-automation chapter from its rules and "
        "playbooks; regenerate it when either changes.",
        "",
        "## The process",
        "",
    ]
    lines += [
        f"{i}. **{step}**: {text}" for i, (step, text) in enumerate(INCIDENT_PROCESS, 1)
    ]
    lines += [
        "",
        f"Guard rails of the automated repairs: {guard_rails}.",
        "",
        "## Faults",
    ]
    for f in faults:
        lines += [
            "",
            f"### {f['rule']}",
            "",
            f"- **Detect**: {f['evidence']}",
            f"- **Cause**: {f['cause']}",
            f"- **Mitigate** ({f['repair']}): `{f['fix']}`",
            "- **Communicate**: impact on the Services behind "
            f"`{f['target']}`; the next update time.",
            "- **Resolve**: re-run the scanner; the rule no longer fires for it.",
        ]
    return lines


def plot_burst(timeline) -> None:
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(7, 3))
    axis.plot(
        timeline["t_s"], 10 * (timeline.index + 1), label="diagnoses (cumulative)"
    )
    axis.plot(timeline["t_s"], timeline["acted"].cumsum(), label="actions (cumulative)")
    axis.set_xlabel("seconds into the burst")
    axis.set_ylabel("count")
    axis.legend()
    plt.show()
