"""Kubernetes manifests: serialise client models, validate strictly, check Pod Security,
write files.

Built-in kinds are validated against the Kubernetes OpenAPI schema with
kubernetes-validate in strict mode (unknown fields fail). Custom resources (KubeRay,
KServe, KEDA...) have no schema shipped with it: `validate_custom_resource` checks them
strictly against their projects' published CRD schemas, vendored under labkit/crds, and
validates every pod template they embed strictly, as a Pod.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

# The schema version matching the pinned kubernetes client (30.x <-> Kubernetes 1.30).
K8S_VERSION = "1.30.0"

_DNS_1123 = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def to_dict(obj: Any) -> dict[str, Any]:
    """A plain dict of a kubernetes client model (camelCase keys, no None values); dicts
    pass through."""
    if isinstance(obj, Mapping):
        return _drop_none(dict(obj))
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(obj)


def _drop_none(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def validate_manifest(obj: Any, *, version: str = K8S_VERSION) -> dict[str, Any]:
    """Validate a built-in kind strictly against the Kubernetes schema; return it as a
    dict.

    Raises ValueError naming the object and the first schema violation.
    """
    import kubernetes_validate

    manifest = to_dict(obj)
    name = _describe(manifest)
    try:
        kubernetes_validate.validate(manifest, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError as err:
        raise ValueError(
            f"{name}: no built-in schema for this kind in Kubernetes {version}; "
            "use validate_custom_resource() for a CRD"
        ) from err
    except kubernetes_validate.ValidationError as err:
        path = "/".join(str(p) for p in err.path) or "(top level)"
        raise ValueError(f"{name}: invalid at {path}: {err.message}") from err
    return manifest


def pod_specs(obj: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (path, pod spec) for every pod spec inside a manifest: any mapping with a
    `containers` list."""

    def walk(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
        if isinstance(node, Mapping):
            if isinstance(node.get("containers"), list):
                yield path or ".", node  # type: ignore[misc]
            for key, value in node.items():
                yield from walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from walk(value, f"{path}[{i}]")

    yield from walk(to_dict(obj), "")


def validate_custom_resource(
    obj: Any,
    *,
    required: Sequence[str] = (),
    pod_spec_extra_keys: Sequence[str] = (),
    version: str = K8S_VERSION,
) -> dict[str, Any]:
    """Check a custom resource: apiVersion with a group, kind, a DNS-1123 name, the
    whole object against its project's published CRD schema, strictly (unknown fields
    are rejected, as kubeconform -strict and the API server's strict field validation
    reject them; see `crd_schema`), the `required` dotted paths present, and every
    embedded pod spec valid as a Pod (strict). Returns the dict.

    Some CRDs put their own fields beside the pod spec's (KServe's predictor has
    `minReplicas`, `scaleMetric`, ... next to `containers`): name them in
    `pod_spec_extra_keys` and they are left out of the strict Pod check; any other
    unknown key still fails it."""
    manifest = to_dict(obj)
    name = _describe(manifest)
    api_version = manifest.get("apiVersion", "")
    if "/" not in api_version:
        raise ValueError(
            f"{name}: apiVersion {api_version!r} needs a group, e.g. 'ray.io/v1'"
        )
    if not manifest.get("kind"):
        raise ValueError(f"{name}: kind is missing")
    meta_name = manifest.get("metadata", {}).get("name", "")
    if not _DNS_1123.match(meta_name) or len(meta_name) > 253:
        raise ValueError(
            f"{name}: metadata.name {meta_name!r} is not a DNS-1123 subdomain"
        )
    for dotted in required:
        node: Any = manifest
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                raise ValueError(f"{name}: required field {dotted!r} is missing")
            node = node[part]
    extra = set(pod_spec_extra_keys)
    for path, spec in pod_specs(manifest):
        pod_spec = {key: value for key, value in spec.items() if key not in extra}
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "template"},
            "spec": pod_spec,
        }
        try:
            validate_manifest(pod, version=version)
        except ValueError as err:
            raise ValueError(
                f"{name}: pod template at {path} is invalid: {err}"
            ) from err
    check_crd_schema(manifest)
    return manifest


CRD_ROOT = Path(__file__).parent / "crds"


def crd_schema(api_version: str, kind: str) -> tuple[dict[str, Any], str]:
    """The published JSON schema of a custom resource and where it comes from.

    The schemas are vendored under labkit/crds/<group>/<kind>_<version>.json by
    tools/vendor_crds.py, from the datreeio/CRDs-catalog repository or converted from
    the project's own CRD YAML; crds/SOURCES.json names the repository, commit and date
    of each. Raises ValueError when none is vendored: every custom resource in the book
    is checked against its project's schema, so a new kind needs its schema vendored.
    """
    group, _, version = api_version.rpartition("/")
    key = f"{group}/{kind.lower()}_{version}.json"
    return _load_crd_schema(key), _crd_source(key)


@functools.lru_cache(maxsize=None)
def _load_crd_schema(key: str) -> dict[str, Any]:
    path = CRD_ROOT / key
    if not path.exists():
        raise ValueError(
            f"no published CRD schema vendored for {key.removesuffix('.json')}: "
            "add it to tools/vendor_crds.py and run it"
        )
    schema = json.loads(path.read_text())
    # The envelope: the catalog's schemas list only spec and status at the root.
    schema.setdefault("properties", {})
    for field in ("apiVersion", "kind"):
        schema["properties"].setdefault(field, {"type": "string"})
    schema["properties"].setdefault("metadata", {"type": "object"})
    # An open CRD (IstioOperator) stays open: its project publishes no field schema.
    if not schema.get("x-kubernetes-preserve-unknown-fields"):
        schema["additionalProperties"] = False
    return schema


@functools.lru_cache(maxsize=None)
def _crd_source(key: str) -> str:
    sources = json.loads((CRD_ROOT / "SOURCES.json").read_text())
    source = sources[key]
    return f"{source['repository']}@{source['commit'][:7]} ({source['date']})"


def check_crd_schema(manifest: Mapping[str, Any]) -> None:
    """Raise ValueError listing where `manifest` breaks its published CRD schema."""
    import jsonschema

    schema, source = crd_schema(manifest["apiVersion"], manifest["kind"])
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(dict(manifest)), key=lambda e: list(e.path))
    if errors:
        lines = [
            f"{'.'.join(str(p) for p in err.path) or '(root)'}: {err.message}"
            for err in errors[:5]
        ]
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise ValueError(
            f"{_describe(manifest)} breaks its CRD schema from {source}: "
            + "; ".join(lines)
            + more
        )


def check_pod_security_restricted(obj: Any) -> list[str]:
    """Violations of the Pod Security Standard 'restricted' profile in every pod spec of
    `obj`.

    An empty list means compliant. Covers the profile's controls: privileged, host
    namespaces and ports, hostPath and other non-restricted volume types,
    allowPrivilegeEscalation, runAsNonRoot, runAsUser 0, seccomp, capabilities (drop
    ALL, add at most NET_BIND_SERVICE) and procMount.
    """
    problems: list[str] = []
    specs = list(pod_specs(obj))
    if not specs:
        return [f"{_describe(to_dict(obj))}: no pod spec found"]
    for path, spec in specs:
        where = f"{_describe(to_dict(obj))} {path}"
        pod_sc = spec.get("securityContext") or {}
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(flag):
                problems.append(f"{where}: {flag} must not be true")
        for volume in spec.get("volumes") or []:
            kinds = set(volume) - {"name"}
            if not kinds <= _RESTRICTED_VOLUMES:
                problems.append(
                    f"{where}: volume {volume.get('name')!r} uses {sorted(kinds)}, not "
                    "allowed"
                )
        if pod_sc.get("runAsUser") == 0:
            problems.append(f"{where}: securityContext.runAsUser must not be 0")
        containers = [*(spec.get("initContainers") or []), *spec["containers"]]
        for c in containers:
            cw = f"{where} container {c.get('name')!r}"
            sc = c.get("securityContext") or {}
            if sc.get("privileged"):
                problems.append(f"{cw}: privileged must not be true")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(
                    f"{cw}: securityContext.allowPrivilegeEscalation must be false"
                )
            if not (
                sc.get("runAsNonRoot") is True
                or (
                    pod_sc.get("runAsNonRoot") is True
                    and sc.get("runAsNonRoot") is not False
                )
            ):
                problems.append(f"{cw}: runAsNonRoot must be true (pod or container)")
            if sc.get("runAsUser") == 0:
                problems.append(f"{cw}: runAsUser must not be 0")
            seccomp = (
                sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}
            ).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                problems.append(
                    f"{cw}: seccompProfile.type must be RuntimeDefault or Localhost"
                )
            caps = sc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []):
                problems.append(f"{cw}: capabilities.drop must include ALL")
            extra = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
            if extra:
                problems.append(
                    f"{cw}: capabilities.add may only hold NET_BIND_SERVICE, not "
                    f"{sorted(extra)}"
                )
            if sc.get("procMount") not in (None, "Default"):
                problems.append(f"{cw}: procMount must be Default")
            for port in c.get("ports") or []:
                if port.get("hostPort"):
                    problems.append(f"{cw}: hostPort {port['hostPort']} is not allowed")
    return problems


def load_manifests(path: str | Path) -> list[dict[str, Any]]:
    """The documents of a (multi-document) YAML file, empty documents dropped: a
    chapter's manifest source, which it then sizes, validates and writes."""
    import yaml

    docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d is not None]
    if not docs:
        raise ValueError(f"{Path(path).name} holds no YAML document")
    return docs


def write_manifests(objs: Iterable[Any], path: str | Path) -> Path:
    """Write manifests as one multi-document YAML file a reader can `kubectl apply -f`;
    return the path."""
    import yaml

    docs = [to_dict(o) for o in objs]
    if not docs:
        raise ValueError("write_manifests() needs at least one manifest")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False))
    return path


def _describe(manifest: Mapping[str, Any]) -> str:
    name = (manifest.get("metadata") or {}).get("name", "?")
    return f"{manifest.get('kind', '?')}/{name}"


OUTPUT_ROOT_ENV = "LABKIT_OUTPUT_ROOT"


def output_dir(chapter: str) -> Path:
    """Where a chapter writes its manifests and other files: `manifests/<chapter>`
    beside the notebook.

    The tests set $LABKIT_OUTPUT_ROOT to a folder under `_build/`, so that running a
    notebook there leaves the working tree as it was; `make execute` writes the files
    the book links to.
    """
    if not _DNS_1123.match(chapter):
        raise ValueError(
            f"chapter={chapter!r} is not valid; use the notebook's file name, e.g. "
            "'mec-5g'"
        )
    root = os.environ.get(OUTPUT_ROOT_ENV)
    path = (Path(root) if root else Path("manifests")) / chapter
    path.mkdir(parents=True, exist_ok=True)
    return path
