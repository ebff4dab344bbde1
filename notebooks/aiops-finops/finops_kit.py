"""Plumbing for the FinOps chapter: the synthetic month of cluster usage, packing
helpers and the promtool runner. The techniques (allocation, rightsizing, the solver
models, the commitment LP) stay visible in the notebook."""

from __future__ import annotations

import copy
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

HOURS = 24 * 30  # a 30-day month, hourly samples

# Service workloads: (team, name, replicas, cpu request vCPU, memory request GiB,
# cpu use share of request, memory use share of request, requests/s per replica at
# the daily mean; 0 for workloads that serve no user requests). Shapes mix CPU-heavy
# (search, web) and memory-heavy (analytics, caches) pods, as real clusters do.
SERVICES = [
    ("checkout", "api", 6, 1.0, 2.0, 0.35, 0.55, 45),
    ("checkout", "worker", 3, 0.5, 1.0, 0.30, 0.60, 0),
    ("checkout", "redis", 2, 0.5, 6.0, 0.15, 0.70, 0),
    ("search", "query", 6, 2.0, 4.0, 0.40, 0.50, 60),
    ("search", "indexer", 2, 3.0, 8.0, 0.30, 0.65, 0),
    ("search", "opensearch", 3, 1.5, 14.0, 0.30, 0.75, 0),
    ("payments", "gateway", 4, 1.0, 2.0, 0.25, 0.50, 20),
    ("payments", "ledger", 3, 0.75, 4.0, 0.20, 0.60, 0),
    ("payments", "postgres", 2, 2.0, 12.0, 0.20, 0.80, 0),
    ("web", "frontend", 8, 1.0, 1.5, 0.30, 0.45, 70),
    ("web", "ssr", 4, 2.0, 3.0, 0.35, 0.50, 25),
    ("analytics", "trino", 3, 2.0, 20.0, 0.25, 0.55, 0),
    ("analytics", "notebooks", 2, 1.0, 10.0, 0.10, 0.40, 0),
    ("ml-platform", "inference", 4, 2.5, 6.0, 0.45, 0.60, 15),
    ("ml-platform", "feature-store", 2, 1.0, 16.0, 0.20, 0.70, 0),
    ("kube-system", "coredns", 2, 0.1, 0.17, 0.40, 0.50, 0),
    ("monitoring", "prometheus", 2, 1.5, 12.0, 0.45, 0.70, 0),
    ("ingress-nginx", "controller", 3, 0.5, 0.5, 0.40, 0.50, 0),
]
# Batch: identical job pods (a pod shape per team) started by schedules.
BATCH = {
    # team: (cpu request, memory request GiB, cpu use share, memory use share)
    "analytics": (2.0, 8.0, 0.55, 0.60),
    "ml-platform": (4.0, 16.0, 0.50, 0.55),
}


def make_usage(seed: int = 0, hours: int = HOURS) -> dict[str, pd.DataFrame]:
    """A month of hourly usage for a shared cluster, documented in the chapter.

    `services`: one row per workload and hour with replicas, requests and usage per
    replica (CPU in vCPU, memory in GiB) and requests served; `*_total` columns are
    the same times the replicas (or pods). `batch`: one row per
    team and hour with running job pods and their per-pod usage. Usage follows a
    daily cycle (peak mid-afternoon), quieter weekends, log-normal noise and rare
    spikes; memory moves less than CPU, as caches and heaps do."""
    rng = np.random.default_rng(seed)
    t = np.arange(hours)
    hour_of_day, day = t % 24, t // 24
    weekend = (day % 7) >= 5
    daily = 1 + 0.45 * np.sin(2 * np.pi * (hour_of_day - 9) / 24)
    load = daily * np.where(weekend, 0.7, 1.0)
    rows = []
    for team, name, replicas, cpu_req, mem_req, cpu_share, mem_share, rps in SERVICES:
        noise = rng.lognormal(0.0, 0.18, hours)
        spikes = 1 + (rng.random(hours) < 0.01) * rng.uniform(0.5, 1.5, hours)
        cpu_use = np.minimum(cpu_req * cpu_share * load * noise * spikes, 2 * cpu_req)
        mem_use = (
            mem_req * mem_share * (0.85 + 0.15 * load) * rng.lognormal(0.0, 0.04, hours)
        )
        rows.append(
            pd.DataFrame(
                {
                    "hour": t,
                    "namespace": team,
                    "workload": name,
                    "replicas": replicas,
                    "cpu_request": cpu_req,
                    "mem_request": mem_req,
                    "cpu_usage": cpu_use.round(4),
                    "mem_usage": np.minimum(mem_use, mem_req * 1.2).round(4),
                    "requests_served": np.rint(
                        rps * replicas * 3600 * load * rng.lognormal(0, 0.05, hours)
                    ),
                }
            )
        )
    services = pd.concat(rows, ignore_index=True)
    batch_rows = []
    for team, (cpu_req, mem_req, cpu_share, mem_share) in BATCH.items():
        if team == "analytics":  # nightly ETL 01:00-06:00, lighter on weekends
            pods = np.where((hour_of_day >= 1) & (hour_of_day < 6), 12, 0)
            pods = np.where(weekend, pods // 2, pods)
            pods = pods + (rng.random(hours) < 0.15) * rng.integers(1, 4, hours)
        else:  # training on weekdays in office hours, queued jobs overnight
            busy = (~weekend) & (hour_of_day >= 8) & (hour_of_day < 20)
            pods = np.where(busy, rng.integers(4, 9, hours), rng.integers(0, 3, hours))
        batch_rows.append(
            pd.DataFrame(
                {
                    "hour": t,
                    "namespace": team,
                    "pods": pods.astype(int),
                    "cpu_request": cpu_req,
                    "mem_request": mem_req,
                    "cpu_usage": (
                        cpu_req * cpu_share * rng.lognormal(0, 0.15, hours)
                    ).round(4),
                    "mem_usage": (
                        mem_req * mem_share * rng.lognormal(0, 0.05, hours)
                    ).round(4),
                }
            )
        )
    batch = pd.concat(batch_rows, ignore_index=True)
    for frame, count in ((services, "replicas"), (batch, "pods")):
        for resource, column in (
            ("cpu", "request"),
            ("cpu", "usage"),
            ("mem", "request"),
            ("mem", "usage"),
        ):
            short = "req" if column == "request" else "use"
            frame[f"{resource}_{short}_total"] = (
                frame[count] * frame[f"{resource}_{column}"]
            )
    return {"services": services, "batch": batch}


def pods_of(
    workloads: pd.DataFrame, cpu: str, mem: str
) -> list[tuple[str, float, float]]:
    """One (pod name, cpu, memory) per replica of each workload row."""
    return [
        (
            f"{row.namespace}/{row.workload}-{i}",
            float(getattr(row, cpu)),
            float(getattr(row, mem)),
        )
        for row in workloads.itertuples()
        for i in range(int(row.replicas))
    ]


def first_fit_decreasing(pods, cpu_cap: float, mem_cap: float) -> list[list[int]]:
    """First-fit decreasing for two resources: pods sorted by their larger share of a
    node, each into the first node it fits. Returns the pod indices per node."""
    order = sorted(
        range(len(pods)),
        key=lambda i: (-max(pods[i][1] / cpu_cap, pods[i][2] / mem_cap), i),
    )
    nodes: list[list[int]] = []
    free: list[list[float]] = []
    for i in order:
        _, cpu, mem = pods[i]
        for n, (cpu_free, mem_free) in enumerate(free):
            if cpu <= cpu_free + 1e-9 and mem <= mem_free + 1e-9:
                nodes[n].append(i)
                free[n][0] -= cpu
                free[n][1] -= mem
                break
        else:
            nodes.append([i])
            free.append([cpu_cap - cpu, mem_cap - mem])
    return nodes


def check_packing(nodes, pods, cpu_cap: float, mem_cap: float) -> None:
    """Assert every pod is placed once and no node is over its allocatable."""
    placed = sorted(i for node in nodes for i in node)
    assert placed == list(range(len(pods))), "a pod is missing or placed twice"
    for node in nodes:
        assert sum(pods[i][1] for i in node) <= cpu_cap + 1e-6, "cpu over capacity"
        assert sum(pods[i][2] for i in node) <= mem_cap + 1e-6, "memory over capacity"


def quantity_cpu(vcpu: float) -> str:
    """A CPU quantity in millicores, rounded up."""
    return f"{int(np.ceil(vcpu * 1000 - 1e-9))}m"


def quantity_mem(gib: float) -> str:
    """A memory quantity in MiB, rounded up."""
    return f"{int(np.ceil(gib * 1024 - 1e-9))}Mi"


def promtool_test(
    promtool: str, rules: dict, tests: dict
) -> subprocess.CompletedProcess:
    """Run `promtool check rules` and `promtool test rules` on a rule group and its
    unit tests, in a temporary folder; return the test run (check failures raise)."""
    with tempfile.TemporaryDirectory(prefix="finops-rules-") as tmp:
        folder = Path(tmp)
        (folder / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
        (folder / "rules.test.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
        check = subprocess.run(
            [promtool, "check", "rules", "rules.yaml"],
            cwd=folder,
            capture_output=True,
            text=True,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        return subprocess.run(
            [promtool, "test", "rules", "rules.test.yaml"],
            cwd=folder,
            capture_output=True,
            text=True,
        )


def money(frame: pd.DataFrame, columns=None) -> pd.DataFrame:
    """A copy of `frame` with money columns rounded to cents for printing."""
    out = frame.copy()
    for column in columns or out.select_dtypes("number").columns:
        out[column] = out[column].round(2)
    return out


def batch_nodes_per_hour(batch: pd.DataFrame, cpu: str, mem: str, cpu_cap, mem_cap):
    """Nodes of the autoscaled batch pool per hour: FFD over that hour's job pods."""
    nodes = np.zeros(int(batch.hour.max()) + 1, dtype=int)
    for hour, jobs in batch.groupby("hour"):
        pods = [
            (row.namespace, float(getattr(row, cpu)), float(getattr(row, mem)))
            for row in jobs.itertuples()
            for _ in range(int(row.pods))
        ]
        nodes[hour] = len(first_fit_decreasing(pods, cpu_cap, mem_cap))
    return nodes


def focus_rows(daily_quantity: pd.DataFrame, resources: dict, period) -> pd.DataFrame:
    """The month's bill in FOCUS 1.2 columns: one Usage row per day and resource.

    `resources` maps a ResourceId to (ServiceName, ResourceType, SkuId, unit price,
    hours per day or None to read them from `daily_quantity[ResourceId]`). No
    discounts, so ListCost = ContractedCost = EffectiveCost = BilledCost."""
    rows = []
    for day in daily_quantity.index:
        start = period + pd.Timedelta(days=int(day))
        for resource, (service, rtype, sku, price, hours) in resources.items():
            quantity = daily_quantity.loc[day, resource] if hours is None else hours
            cost = round(float(quantity) * price, 6)
            rows.append(
                {
                    "BillingAccountId": "123456789012",
                    "BillingCurrency": "USD",
                    "BillingPeriodStart": period,
                    "BillingPeriodEnd": period + pd.Timedelta(days=len(daily_quantity)),
                    "ChargePeriodStart": start,
                    "ChargePeriodEnd": start + pd.Timedelta(days=1),
                    "ChargeCategory": "Usage",
                    "ChargeFrequency": "Usage-Based",
                    "ServiceCategory": "Compute",
                    "ServiceName": service,
                    "ResourceId": resource,
                    "ResourceType": rtype,
                    "RegionId": "us-east-1",
                    "SkuId": sku,
                    "PricingCategory": "Standard",
                    "PricingUnit": "Hours",
                    "PricingQuantity": int(quantity),
                    "ConsumedQuantity": int(quantity),
                    "ConsumedUnit": "Hours",
                    "ListUnitPrice": price,
                    "ListCost": cost,
                    "ContractedCost": cost,
                    "EffectiveCost": cost,
                    "BilledCost": cost,
                    "ProviderName": "AWS",
                    "Tags": {"cluster": "shared-prod"},
                }
            )
    return pd.DataFrame(rows)


def budget_rule(template: dict, budgets: pd.Series) -> dict:
    """The PrometheusRule template with its TEAM alert copied for every team, with the
    team's monthly budget in USD."""
    rule = copy.deepcopy(template)
    group = rule["spec"]["groups"][1]
    alert = yaml.safe_dump(group["rules"][0])
    group["rules"] = [
        yaml.safe_load(alert.replace("TEAM", team).replace("BUDGET", f"{budget:.2f}"))
        for team, budget in budgets.items()
    ]
    return rule


def budget_alert_tests(rule: dict, team: str, cpu: float, mem_gib: float, prices):
    """promtool unit tests for the budget alert of `team`: one container allocated
    `cpu` vCPU and `mem_gib` GiB for two days, then four times as much. The alert must
    be silent at 47 h and firing at 72 h. `prices` = (USD per vCPU-hour, per GiB-hour).
    """
    labels = f'namespace="{team}",node="node-1",pod="api-0",container="api"'
    mem_bytes = mem_gib * 2**30
    alert = next(
        r for r in rule["spec"]["groups"][1]["rules"] if r["labels"]["team"] == team
    )
    name = alert["alert"]
    return {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "5m",
        "tests": [
            {
                "interval": "1h",
                "input_series": [
                    {
                        "series": f"container_cpu_allocation{{{labels}}}",
                        "values": f"{cpu:.4f}x48 {4 * cpu:.4f}x48",
                    },
                    {
                        "series": f"container_memory_allocation_bytes{{{labels}}}",
                        "values": f"{mem_bytes:.0f}x48 {4 * mem_bytes:.0f}x48",
                    },
                    {
                        "series": 'node_cpu_hourly_cost{node="node-1"}',
                        "values": f"{prices[0]}x96",
                    },
                    {
                        "series": 'node_ram_hourly_cost{node="node-1"}',
                        "values": f"{prices[1]}x96",
                    },
                ],
                "alert_rule_test": [
                    {"eval_time": "47h", "alertname": name, "exp_alerts": []},
                    {
                        "eval_time": "72h",
                        "alertname": name,
                        "exp_alerts": [
                            {
                                "exp_labels": {"namespace": team, **alert["labels"]},
                                "exp_annotations": alert["annotations"],
                            }
                        ],
                    },
                ],
            }
        ],
    }


def vpa_for(template: dict, rec) -> dict:
    """The VPA template named for one workload, bounded by its lower and upper
    recommendation (`rec` has namespace, workload, cpu_/mem_lower and _upper)."""
    vpa = copy.deepcopy(template)
    vpa["metadata"].update(name=rec.workload, namespace=rec.namespace)
    vpa["spec"]["targetRef"]["name"] = rec.workload
    policy = vpa["spec"]["resourcePolicy"]["containerPolicies"][0]
    policy["minAllowed"] = {
        "cpu": quantity_cpu(rec.cpu_lower),
        "memory": quantity_mem(rec.mem_lower),
    }
    policy["maxAllowed"] = {
        "cpu": quantity_cpu(rec.cpu_upper),
        "memory": quantity_mem(rec.mem_upper),
    }
    return vpa


def quota_for(templates: list[dict], team: str, recs: pd.DataFrame, headroom: float):
    """Namespace, ResourceQuota and LimitRange of one team from its recommendations:
    quota = rightsized requests x (1 + headroom), memory limits twice that; defaults =
    the team's median recommendation; maximum = its largest upper bound (memory x2)."""
    namespace, quota, limits = copy.deepcopy(templates)
    namespace["metadata"]["name"] = team
    namespace["metadata"]["labels"]["team"] = team
    quota["metadata"]["namespace"] = limits["metadata"]["namespace"] = team
    cpu = (recs.replicas * recs.cpu_target).sum() * (1 + headroom)
    mem = (recs.replicas * recs.mem_target).sum() * (1 + headroom)
    quota["spec"]["hard"] = {
        "requests.cpu": quantity_cpu(cpu),
        "requests.memory": quantity_mem(mem),
        "limits.memory": quantity_mem(2 * mem),
    }
    item = limits["spec"]["limits"][0]
    item["defaultRequest"] = {
        "cpu": quantity_cpu(recs.cpu_target.median()),
        "memory": quantity_mem(recs.mem_target.median()),
    }
    item["default"] = {"memory": quantity_mem(2 * recs.mem_target.median())}
    item["max"] = {
        "cpu": quantity_cpu(recs.cpu_upper.max()),
        "memory": quantity_mem(2 * recs.mem_upper.max()),
    }
    return [namespace, quota, limits]
