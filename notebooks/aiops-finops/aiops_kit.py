"""Plumbing for the AIOps chapter: the simulated estate and disk fleet (data
generators), event matching, Wilson intervals, the live shop's Prometheus queries and
process restarts, and the Kubernetes calls of the remediation controller.

The techniques (the detectors, the failure model, the PageRank ranking, the controller
and its guard rails) stay in the notebook.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

STEP_MIN = 10  # one sample every 10 minutes
STEPS_PER_DAY = 24 * 60 // STEP_MIN
STEPS_PER_WEEK = 7 * STEPS_PER_DAY

# caller -> callees: a 15-service shop estate.
ESTATE_CALLS = {
    "frontend": ["gateway"],
    "gateway": ["auth", "catalog", "cart", "checkout", "search"],
    "auth": ["users-db"],
    "catalog": ["catalog-db", "cache"],
    "search": ["catalog", "cache"],
    "cart": ["cache", "inventory"],
    "checkout": ["payment", "orders", "shipping", "cart"],
    "orders": ["orders-db", "inventory"],
    "inventory": ["catalog-db"],
    "shipping": ["orders-db"],
    "payment": [],
    "users-db": [],
    "catalog-db": [],
    "orders-db": [],
    "cache": [],
}
SERVICES = list(ESTATE_CALLS)
# Services with benign latency spikes (garbage collection, batch jobs, cold caches):
# the ones a "blame the noisiest" rule picks most often.
NOISY = {"frontend": 0.02, "gateway": 0.015, "search": 0.02, "cache": 0.01}


def callers_of(service: str) -> dict[str, int]:
    """Every service that depends on `service`, directly or not, with its hop count."""
    hops, frontier = {}, [service]
    for hop in range(1, len(SERVICES)):
        frontier = [
            caller
            for caller, callees in ESTATE_CALLS.items()
            for callee in frontier
            if callee in callees and caller not in hops
        ]
        if not frontier:
            break
        for caller in frontier:
            hops.setdefault(caller, hop)
    return hops


@dataclass
class Estate:
    """Simulated metrics, shape (services, steps), with the events that shaped them."""

    latency_ms: np.ndarray
    error_ratio: np.ndarray
    traffic: np.ndarray
    incidents: pd.DataFrame  # root, start, steps, kind, affected, deploy
    deploys: pd.DataFrame  # service, step, bad
    days: int


def simulate_estate(days: int, incidents_per_day: float, seed: int) -> Estate:
    """Metrics every 10 minutes for `days` days: daily and weekly seasonality, deploys
    (level shifts), benign spikes, and incidents with a known root cause that spread to
    the root's callers, damped or amplified at each hop."""
    rng = np.random.default_rng(seed)
    n, steps = len(SERVICES), days * STEPS_PER_DAY
    t = np.arange(steps)
    hour = (t % STEPS_PER_DAY) * STEP_MIN / 60
    weekday = (t // STEPS_PER_DAY) % 7
    daily = (
        0.55
        + 0.45 * np.exp(-((hour - 11) ** 2) / 18)
        + 0.35 * np.exp(-((hour - 20) ** 2) / 8)
    )
    weekly = np.where(weekday >= 5, 0.65, 1.0)
    traffic = daily * weekly * rng.lognormal(0, 0.05, (n, steps))
    base_ms = rng.uniform(5, 60, n)
    load_gain = rng.uniform(0.1, 0.5, n)  # how much latency grows with traffic
    noise = rng.uniform(0.05, 0.15, n)
    latency = base_ms[:, None] * (1 + load_gain[:, None] * traffic)
    latency *= rng.lognormal(0, noise[:, None], (n, steps))
    for i, service in enumerate(SERVICES):
        spikes = rng.random(steps) < NOISY.get(service, 0.002)
        latency[i, spikes] *= rng.uniform(1.5, 4, spikes.sum())
    base_err = rng.uniform(0.001, 0.01, n)
    requests = 600 * traffic  # per 10 minutes and service, at least a few hundred
    error_ratio = rng.binomial(requests.astype(int), base_err[:, None]) / requests

    # Deploys: about one per service every three days, each a small lasting shift.
    deploy_rows = []
    for i, service in enumerate(SERVICES):
        for step in np.flatnonzero(rng.random(steps) < 1 / (3 * STEPS_PER_DAY)):
            latency[i, step:] *= rng.uniform(0.93, 1.08)
            deploy_rows.append({"service": service, "step": int(step), "bad": False})

    incident_rows = []
    count = rng.poisson(incidents_per_day * days)
    starts = np.sort(rng.choice(np.arange(STEPS_PER_DAY, steps - 20), count, False))
    for start in starts:
        root = SERVICES[rng.integers(n)]
        length = int(rng.integers(3, 10))
        kind = "latency" if rng.random() < 0.6 else "errors"
        deploy = rng.random() < 0.3  # a bad deploy: the fix is a rollback
        if deploy:
            deploy_rows.append({"service": root, "step": int(start), "bad": True})
        severity = (
            rng.uniform(0.2, 1.2) if kind == "latency" else rng.uniform(0.01, 0.08)
        )
        span = slice(start, start + length)
        ramp = np.minimum(1, (np.arange(length) + 1) / rng.integers(1, 4))
        affected = {root: 1.0}
        for caller, hop in sorted(callers_of(root).items(), key=lambda kv: kv[1]):
            # the strongest path from the root, each hop damping or amplifying it
            gains = [
                affected[c] * rng.uniform(0.3, 1.1)
                for c in ESTATE_CALLS[caller]
                if c in affected
            ]
            if gains:
                affected[caller] = max(gains)
        for service, gain in affected.items():
            i = SERVICES.index(service)
            if kind == "latency":
                latency[i, span] *= 1 + severity * gain * ramp
            else:
                error_ratio[i, span] += severity * gain * ramp
        incident_rows.append(
            {
                "root": root,
                "start": int(start),
                "steps": length,
                "kind": kind,
                "deploy": deploy,
                "affected": sorted(affected),
            }
        )
    return Estate(
        latency,
        np.clip(error_ratio, 0, 1),
        traffic,
        pd.DataFrame(incident_rows),
        pd.DataFrame(deploy_rows),
        days,
    )


def alert_events(alerting: np.ndarray, merge_gap: int = 1) -> pd.DataFrame:
    """Contiguous runs of alerting steps per service (gaps up to `merge_gap` merged):
    one row per alert event (service, start, end)."""
    rows = []
    for i, service in enumerate(SERVICES):
        on = np.flatnonzero(alerting[i])
        if not len(on):
            continue
        breaks = np.flatnonzero(np.diff(on) > merge_gap + 1)
        for first, last in zip(
            np.r_[0, breaks + 1], np.r_[breaks, len(on) - 1], strict=True
        ):
            rows.append({"service": service, "start": on[first], "end": on[last]})
    return pd.DataFrame(rows, columns=["service", "start", "end"])


def match_events(
    events: pd.DataFrame,
    incidents: pd.DataFrame,
    first_step: int,
    last_step: int,
    grace: int = 3,
) -> dict[str, float]:
    """Event-level scores between `first_step` and `last_step`: an alert event is true
    when it overlaps an incident (start .. end + grace) on a service the incident
    affected; an incident is detected when one of its true events exists."""
    events = events[events["start"] >= first_step]
    incidents = incidents[incidents["start"] >= first_step]
    true = np.zeros(len(events), bool)
    delays, detected, per_incident, caught = [], 0, [], []
    for _, inc in incidents.iterrows():
        end = inc["start"] + inc["steps"] + grace
        if "services" in events:  # grouped pages: any of their services
            on_affected = events["services"].map(
                lambda s: bool(s & set(inc["affected"]))
            )
        else:
            on_affected = events["service"].isin(inc["affected"])
        hit = (
            on_affected.to_numpy()
            & (events["start"] <= end).to_numpy()
            & (events["end"] >= inc["start"]).to_numpy()
        )
        true |= hit
        caught.append(bool(hit.any()))
        if hit.any():
            detected += 1
            first = events.loc[hit, "start"].min()
            delays.append(max(0, first - inc["start"]) * STEP_MIN)
            per_incident.append(int(hit.sum()))
    days = (last_step - first_step) / STEPS_PER_DAY
    return {
        "incidents": len(incidents),
        "detected": detected,
        "recall": detected / max(1, len(incidents)),
        "precision": true.sum() / max(1, len(events)),
        "false_alarms_per_day": (~true).sum() / days,
        "alerts_per_incident": float(np.mean(per_incident)) if per_incident else 0.0,
        "delay_p50_min": float(np.median(delays)) if delays else float("nan"),
        "delay_p95_min": float(np.percentile(delays, 95)) if delays else float("nan"),
        "caught": np.array(caught, bool),  # per incident, in order
    }


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95 % by default)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


SMART_COUNTERS = ["reallocated", "pending", "uncorrectable", "timeouts"]
SMART_COLUMNS = [*SMART_COUNTERS, *(f"{c}_week" for c in SMART_COUNTERS), "temp_c"]


def simulate_disks(
    disks: int, weeks: int, annual_failure_rate: float, seed: int
) -> pd.DataFrame:
    """Weekly SMART-like snapshots of a disk fleet: one row per disk and week, with
    `fails_in_days` (days until the disk fails, NaN if it does not in the data).

    About three quarters of the failing disks degrade first (counters that grow over
    their last weeks); the rest die without warning. A few percent of the healthy disks
    carry small, stable non-zero counters all their life."""
    rng = np.random.default_rng(seed)
    weekly_hazard = annual_failure_rate / 52
    fail_week = np.full(disks, np.inf)
    failing = rng.random(disks) < weekly_hazard * weeks
    fail_week[failing] = rng.uniform(1, weeks, failing.sum())
    warns = failing & (rng.random(disks) < 0.75)
    onset = rng.uniform(1, 8, disks)  # weeks of degradation before the failure
    week = np.arange(weeks)[None, :]
    to_failure = fail_week[:, None] - week  # weeks
    degrading = warns[:, None] & (to_failure > 0) & (to_failure < onset[:, None])
    progress = np.where(degrading, 1 - to_failure / onset[:, None], 0)
    benign = rng.random(disks) < 0.045
    rows = {}
    scale = {"reallocated": 40, "pending": 8, "uncorrectable": 4, "timeouts": 6}
    for i, (name, size) in enumerate(scale.items()):
        stable = np.where(benign & (rng.random(disks) < 0.7 / (i + 1)), 1, 0)
        stable = stable * rng.geometric(0.04, disks)
        growth = rng.poisson(size * progress**2 * rng.uniform(0.2, 2, (disks, 1)))
        noise = rng.random((disks, weeks)) < 0.0005  # an isolated read hiccup
        rows[name] = stable[:, None] + np.cumsum(growth + noise, axis=1)
        rows[f"{name}_week"] = np.diff(rows[name], axis=1, prepend=0)
        rows[f"{name}_week"][:, 0] = 0  # no previous snapshot
    temp = rng.normal(34, 4, (disks, 1)) + rng.normal(0, 1.5, (disks, weeks))
    rows["temp_c"] = temp + 3 * progress
    frame = pd.DataFrame(
        {name: values.ravel() for name, values in rows.items()}
        | {
            "disk": np.repeat(np.arange(disks), weeks),
            "week": np.tile(np.arange(weeks), disks),
            "fails_in_days": np.where(
                np.isfinite(to_failure) & (to_failure > 0), to_failure * 7, np.nan
            ).ravel(),
        }
    )
    # a failed disk leaves the fleet: no snapshot after its failure
    return frame[~(frame["fails_in_days"].isna() & failing[frame["disk"]])].reset_index(
        drop=True
    )


# --------------------------------------------------------------------------------------
# The live shop: load in the background, Prometheus queries, process restarts.


class BackgroundLoad:
    """Checkouts at `rate_per_s` in one-second rounds of shopapp.send_load, in a
    thread, until stop(); keeps (time, status, latency_ms) of every request."""

    def __init__(self, shopapp: Any, gateway_url: str, rate_per_s: float, seed: int):
        import threading

        self.rows: list[tuple[float, int, float]] = []
        self._stop = threading.Event()

        def loop() -> None:
            round_no = 0
            while not self._stop.is_set():
                started = time.time()
                results = shopapp.send_load(
                    gateway_url,
                    max(1, round(rate_per_s)),
                    rate_per_s,
                    concurrency=8,
                    seed=seed * 10_000 + round_no,
                )
                self.rows += [
                    (started + r["start_s"], r["status"], r["latency_ms"])
                    for r in results
                ]
                round_no += 1

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> pd.DataFrame:
        self._stop.set()
        self._thread.join()
        return pd.DataFrame(self.rows, columns=["time", "status", "latency_ms"])


def instant(prom_url: str, query: str) -> dict[str, float]:
    """A Prometheus instant query, as {job: value}."""
    import requests

    answer = requests.get(
        prom_url + "/api/v1/query", params={"query": query}, timeout=5
    ).json()
    assert answer["status"] == "success", answer
    return {
        r["metric"].get("job", ""): float(r["value"][1])
        for r in answer["data"]["result"]
    }


def restart_process(shop: dict[str, dict[str, Any]], name: str, shopapp: Any) -> float:
    """Restart one shop service with the command line it was started with (same port,
    same data folder): SIGTERM, start, wait until /healthz answers. Returns the
    seconds it took."""
    started = time.monotonic()
    entry = shop[name]
    command = list(entry["process"].args)
    shopapp.stop(entry["process"])
    data_dir = Path(command[command.index("--data-dir") + 1])
    entry["process"] = shopapp.spawn(command, data_dir, f"{name}-restarted")
    shopapp.wait_ready(entry["url"] + "/healthz", entry["process"])
    return time.monotonic() - started


def recovered_at(
    load: pd.DataFrame, after: float, limit_ms: float, hold_s: float = 2.0
) -> float:
    """The first time after `after` from which every one-second bucket of checkouts
    stays healthy (no 5xx, p95 latency under `limit_ms`) for `hold_s` seconds."""
    rows = load[load["time"] >= after].copy()
    rows["second"] = ((rows["time"] - after) // 1).astype(int)
    per_second = rows.groupby("second").agg(
        p95=("latency_ms", lambda s: s.quantile(0.95)),
        errors=("status", lambda s: int((s >= 500).sum())),
    )
    healthy = (per_second["p95"] < limit_ms) & (per_second["errors"] == 0)
    need = int(hold_s)
    for second in per_second.index:
        window = healthy.loc[second : second + need - 1]
        if len(window) == need and window.all():
            return after + second
    return float("nan")


def self_times(spans: pd.DataFrame) -> pd.DataFrame:
    """Each span's own time: its duration minus the time of its children."""
    children = spans.groupby("parent_span_id")["duration_ms"].sum()
    out = spans.copy()
    out["self_ms"] = out["duration_ms"] - out["span_id"].map(children).fillna(0)
    out["time"] = out["start_ns"] / 1e9
    return out


# --------------------------------------------------------------------------------------
# The controller's actions as Kubernetes API calls.


def kubernetes_action(apps: Any, action: str, name: str, namespace: str) -> str:
    """Send one remediation as the API call `kubectl` would make, with
    dry_run="All" (the server validates and admits it, nothing changes).
    `apps` is a kubernetes.client.AppsV1Api. Returns what was sent."""
    import datetime as dt

    if action == "restart":  # what `kubectl rollout restart` patches
        stamp = dt.datetime.now(dt.timezone.utc).isoformat()
        body = {
            "spec": {
                "template": {
                    "metadata": {
                        "annotations": {"kubectl.kubernetes.io/restartedAt": stamp}
                    }
                }
            }
        }
        apps.patch_namespaced_deployment(name, namespace, body, dry_run="All")
        return f"PATCH deployment/{name} restartedAt (dry run)"
    if action == "scale_out":
        scale = apps.read_namespaced_deployment_scale(name, namespace)
        replicas = (scale.spec.replicas or 1) + 1
        apps.patch_namespaced_deployment_scale(
            name, namespace, {"spec": {"replicas": replicas}}, dry_run="All"
        )
        return f"PATCH deployment/{name}/scale replicas={replicas} (dry run)"
    if action == "rollback":  # what `kubectl rollout undo` does: the previous template
        deployment = apps.read_namespaced_deployment(name, namespace)
        selector = ",".join(
            f"{k}={v}" for k, v in deployment.spec.selector.match_labels.items()
        )
        sets = apps.list_namespaced_replica_set(namespace, label_selector=selector)
        revisions = sorted(
            sets.items,
            key=lambda rs: int(
                rs.metadata.annotations.get("deployment.kubernetes.io/revision", 0)
            ),
        )
        if len(revisions) < 2:
            return f"deployment/{name} has no previous revision to roll back to"
        template = apps.api_client.sanitize_for_serialization(
            revisions[-2].spec.template
        )
        template["metadata"]["labels"].pop("pod-template-hash", None)
        apps.patch_namespaced_deployment(
            name, namespace, {"spec": {"template": template}}, dry_run="All"
        )
        return f"PATCH deployment/{name} template=previous revision (dry run)"
    raise ValueError(f"unknown action {action!r}; valid: restart, scale_out, rollback")


def group_events(events: pd.DataFrame, gap_steps: int) -> pd.DataFrame:
    """Alert events of any service that start within `gap_steps` of an open group's
    last event become one page (what Alertmanager's grouping does)."""
    rows, current = [], None
    for _, event in events.sort_values("start").iterrows():
        if current and event["start"] <= current["end"] + gap_steps:
            current["end"] = max(current["end"], event["end"])
            current["services"].add(event["service"])
            continue
        current = {
            "start": event["start"],
            "end": event["end"],
            "services": {event["service"]},
        }
        rows.append(current)
    return pd.DataFrame(rows, columns=["start", "end", "services"]).assign(
        service=lambda f: f["services"].map(lambda s: sorted(s)[0])
    )
