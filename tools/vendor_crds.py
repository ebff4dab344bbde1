"""Vendor the published CRD schemas that labkit.validate_custom_resource checks against.

Two kinds of source, both read from local git checkouts of the projects' repositories:

- the datreeio/CRDs-catalog repository (MIT), whose JSON schemas are already converted
  from each project's CRDs with kubeconform's openapi2jsonschema.py: copied as they are;
- the CRD YAML of KubeRay, Karmada, KubeEdge and Istio's operator, and Katib's OpenAPI
  document (all Apache-2.0): converted here the same way (every object schema that
  lists `properties` rejects other keys unless it says
  `x-kubernetes-preserve-unknown-fields`, and `x-kubernetes-int-or-string` becomes
  integer-or-string).

Usage: python tools/vendor_crds.py MIRRORS_DIR, where MIRRORS_DIR holds one bare or
normal git checkout per repository, named `owner+name/repo`. Writes
src/labkit/crds/<group>/<kind>_<version>.json, src/labkit/crds/SOURCES.json (repository,
commit, date and path of every file) and each source's licence under
src/labkit/crds/licenses/.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "labkit" / "crds"

CATALOG = "datreeio/CRDs-catalog"
CATALOG_FILES = [
    "argoproj.io/analysistemplate_v1alpha1.json",
    "argoproj.io/rollout_v1alpha1.json",
    "autoscaling.k8s.io/verticalpodautoscaler_v1.json",
    "cilium.io/ciliumclusterwidenetworkpolicy_v2.json",
    "cilium.io/ciliumnetworkpolicy_v2.json",
    "cilium.io/ciliumexternalworkload_v2.json",
    "cilium.io/ciliumloadbalancerippool_v2.json",
    "cilium.io/ciliumbgpclusterconfig_v2.json",
    "cilium.io/ciliumbgppeerconfig_v2.json",
    "cilium.io/ciliumbgpadvertisement_v2.json",
    "keda.sh/scaledobject_v1alpha1.json",
    "keda.sh/triggerauthentication_v1alpha1.json",
    "monitoring.coreos.com/podmonitor_v1.json",
    "monitoring.coreos.com/prometheusrule_v1.json",
    "monitoring.coreos.com/servicemonitor_v1.json",
    "networking.istio.io/destinationrule_v1.json",
    "networking.istio.io/gateway_v1.json",
    "networking.istio.io/serviceentry_v1.json",
    "networking.istio.io/sidecar_v1.json",
    "networking.istio.io/virtualservice_v1.json",
    "networking.istio.io/workloadentry_v1.json",
    "security.istio.io/authorizationpolicy_v1.json",
    "security.istio.io/peerauthentication_v1.json",
    "serving.kserve.io/inferenceservice_v1beta1.json",
    "postgresql.cnpg.io/cluster_v1.json",
    "postgresql.cnpg.io/scheduledbackup_v1.json",
    "postgresql.cnpg.io/backup_v1.json",
    "velero.io/backup_v1.json",
    "velero.io/restore_v1.json",
    "velero.io/schedule_v1.json",
    "velero.io/backupstoragelocation_v1.json",
]

# (repository, path of the CRD YAML in it)
CRD_FILES = [
    ("ray-project/kuberay", "ray-operator/config/crd/bases/ray.io_rayclusters.yaml"),
    ("ray-project/kuberay", "ray-operator/config/crd/bases/ray.io_rayjobs.yaml"),
    ("ray-project/kuberay", "ray-operator/config/crd/bases/ray.io_rayservices.yaml"),
    (
        "karmada-io/karmada",
        "charts/karmada/_crds/bases/policy/policy.karmada.io_propagationpolicies.yaml",
    ),
    (
        "karmada-io/karmada",
        "charts/karmada/_crds/bases/policy/"
        "policy.karmada.io_clusterpropagationpolicies.yaml",
    ),
    (
        "karmada-io/karmada",
        "charts/karmada/_crds/bases/policy/policy.karmada.io_overridepolicies.yaml",
    ),
    (
        "karmada-io/karmada",
        "charts/karmada/_crds/bases/policy/policy.karmada.io_clustertaintpolicies.yaml",
    ),
    (
        "karmada-io/karmada",
        "charts/karmada/_crds/bases/policy/"
        "policy.karmada.io_clusteroverridepolicies.yaml",
    ),
    (
        "karmada-io/karmada",
        "charts/karmada/_crds/bases/work/work.karmada.io_resourcebindings.yaml",
    ),
    (
        "karmada-io/karmada",
        "charts/karmada/_crds/bases/work/work.karmada.io_clusterresourcebindings.yaml",
    ),
    (
        "karmada-io/karmada",
        "charts/karmada/_crds/bases/work/work.karmada.io_works.yaml",
    ),
    ("kubeedge/kubeedge", "build/crds/devices/devices_v1beta1_device.yaml"),
    ("kubeedge/kubeedge", "build/crds/devices/devices_v1beta1_devicemodel.yaml"),
]

# Istio removed its in-cluster operator, and with it the IstioOperator CRD, in 1.24
# (commit c2b027c, "Remove in-cluster operator", 2024-07-29): the last version that
# shipped it is that commit's parent. IstioOperator lives on as istioctl's input.
ISTIO_OPERATOR = (
    "istio/istio",
    "manifests/charts/istio-operator/crds/crd-operator.yaml",
    "c2b027c4e064b0f5ace83f0fa3c68b9cab5ee974^",
)

# Katib's CRDs leave the whole object open (x-kubernetes-preserve-unknown-fields at the
# root; its admission webhook validates instead). Its published OpenAPI document has the
# types in full: (repository, path, type name, group, version).
OPENAPI_TYPES = [
    (
        "kubeflow/katib",
        "api/openapi-spec/swagger.json",
        "v1beta1.Experiment",
        "kubeflow.org",
        "v1beta1",
    ),
]


def from_openapi(document: dict[str, Any], type_name: str) -> dict[str, Any]:
    """One type of an OpenAPI 3 document as a JSON schema with its definitions."""
    text = json.dumps(document["components"]["schemas"])
    definitions = json.loads(text.replace("#/components/schemas/", "#/definitions/"))
    root = dict(strict(definitions[type_name]))
    root["definitions"] = strict(definitions)
    return root


def git(repo_dir: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo_dir), *args], check=True, capture_output=True, text=True
    ).stdout


def strict(schema: Any) -> Any:
    """openapi2jsonschema's conversion: closed objects, int-or-string as a union."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out.pop("anyOf", None)
        out["oneOf"] = [{"type": "string"}, {"type": "integer"}]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def convert_crd(crd: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{'<kind>_<version>.json': schema} for every served version of a CRD."""
    kind = crd["spec"]["names"]["kind"].lower()
    schemas = {}
    for version in crd["spec"]["versions"]:
        if not version.get("served", True):
            continue
        schema = strict(version["schema"]["openAPIV3Schema"])
        schemas[f"{kind}_{version['name']}.json"] = schema
    return schemas


def main(mirrors: Path) -> None:
    sources: dict[str, dict[str, str]] = {}
    licences: dict[str, str] = {}

    def checkout(repo: str) -> Path:
        path = mirrors / repo.replace("/", "+") / "repo"
        if not path.exists():
            sys.exit(f"no checkout of {repo} at {path}")
        return path

    def record(target: str, repo: str, path: str, rev: str = "HEAD") -> None:
        repo_dir = checkout(repo)
        commit, date = git(repo_dir, "log", "-1", "--format=%H %cs", rev).split()
        sources[target] = {
            "repository": repo,
            "commit": commit,
            "date": date,
            "path": path,
        }
        licences[repo] = git(repo_dir, "show", "HEAD:LICENSE")

    for path in CATALOG_FILES:
        text = git(checkout(CATALOG), "show", f"HEAD:{path}")
        (OUT / path).parent.mkdir(parents=True, exist_ok=True)
        (OUT / path).write_text(
            json.dumps(json.loads(text), separators=(",", ":"), sort_keys=True)
        )
        record(path, CATALOG, path)
    for repo, path, rev in [(*entry, "HEAD") for entry in CRD_FILES] + [ISTIO_OPERATOR]:
        text = git(checkout(repo), "show", f"{rev}:{path}")
        for crd in yaml.safe_load_all(text):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group = crd["spec"]["group"]
            for name, schema in convert_crd(crd).items():
                target = f"{group}/{name}"
                (OUT / target).parent.mkdir(parents=True, exist_ok=True)
                (OUT / target).write_text(
                    json.dumps(schema, separators=(",", ":"), sort_keys=True)
                )
                record(target, repo, path, rev)
    for repo, path, type_name, group, version in OPENAPI_TYPES:
        document = json.loads(git(checkout(repo), "show", f"HEAD:{path}"))
        target = f"{group}/{type_name.split('.')[-1].lower()}_{version}.json"
        schema = from_openapi(document, type_name)
        (OUT / target).parent.mkdir(parents=True, exist_ok=True)
        (OUT / target).write_text(
            json.dumps(schema, separators=(",", ":"), sort_keys=True)
        )
        record(target, repo, path)
    (OUT / "licenses").mkdir(parents=True, exist_ok=True)
    for repo, text in licences.items():
        (OUT / "licenses" / (repo.replace("/", "+") + ".LICENSE")).write_text(text)
    (OUT / "SOURCES.json").write_text(
        json.dumps(sources, indent=1, sort_keys=True) + "\n"
    )
    print(f"{len(sources)} schemas from {len(licences)} repositories in {OUT}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
