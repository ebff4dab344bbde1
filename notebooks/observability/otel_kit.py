"""Plumbing of the opentelemetry chapter: an OTLP/HTTP receiver on 127.0.0.1, a
Prometheus for the shop, PromQL helpers, the waterfall plot and the Collector
configuration check. The technique (providers, propagation, RED queries, the Collector
configuration) stays on the page.
"""

from __future__ import annotations

import gzip
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import shopapp

SERVICE_COLOURS = {
    "notebook": "0.6",
    "gateway": "C0",
    "orders": "C1",
    "inventory": "C2",
}


# --------------------------------------------------------------------------------------
# An OTLP/HTTP receiver: what a Collector's `otlp` receiver does with protobuf bodies.


def _any_value(value: Any) -> Any:
    """An OTLP AnyValue as a Python value."""
    kind = value.WhichOneof("value")
    if kind in ("string_value", "bool_value", "int_value", "double_value"):
        return getattr(value, kind)
    if kind == "array_value":
        return [_any_value(v) for v in value.array_value.values]
    return None if kind is None else str(value)


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _any_value(kv.value) for kv in pairs}


class OtlpReceiver:
    """OTLP/HTTP on 127.0.0.1: POST /v1/traces, /v1/metrics, /v1/logs with protobuf
    bodies (ExportTraceServiceRequest, ...), decoded and kept in memory. `fail_next`
    makes the next requests on a path answer 503, as an overloaded Collector does."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        self._types = {
            "/v1/traces": (
                trace_service_pb2.ExportTraceServiceRequest,
                trace_service_pb2.ExportTraceServiceResponse,
                self._add_spans,
            ),
            "/v1/metrics": (
                metrics_service_pb2.ExportMetricsServiceRequest,
                metrics_service_pb2.ExportMetricsServiceResponse,
                self._add_metrics,
            ),
            "/v1/logs": (
                logs_service_pb2.ExportLogsServiceRequest,
                logs_service_pb2.ExportLogsServiceResponse,
                self._add_logs,
            ),
        }
        self.span_rows: list[dict[str, Any]] = []
        self.log_rows: list[dict[str, Any]] = []
        self.metric_rows: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []  # every POST: time, path, status
        self._failures: dict[str, int] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                status, answer = receiver._receive(self.path, body)
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def clear(self) -> None:
        """Forget everything received so far."""
        with self._lock:
            for rows in (
                self.span_rows,
                self.log_rows,
                self.metric_rows,
                self.requests,
            ):
                rows.clear()

    def fail_next(self, path: str, n: int = 1) -> None:
        """Answer the next `n` POSTs to `path` with 503 Service Unavailable."""
        with self._lock:
            self._failures[path] = n

    def _receive(self, path: str, body: bytes) -> tuple[int, bytes]:
        if path not in self._types:
            return 404, b""
        request_type, response_type, add = self._types[path]
        with self._lock:
            failing = self._failures.get(path, 0) > 0
            if failing:
                self._failures[path] -= 1
        status = 503 if failing else 200
        self.requests.append(
            {"time": time.perf_counter(), "path": path, "status": status}
        )
        if failing:
            return status, b""
        request = request_type.FromString(body)
        with self._lock:
            add(request)
        return status, response_type().SerializeToString()

    def _add_spans(self, request: Any) -> None:
        from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

        for resource_spans in request.resource_spans:
            service = _attributes(resource_spans.resource.attributes)["service.name"]
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.span_rows.append(
                        {
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex() or None,
                            "trace_flags": f"{span.flags & 0xFF:02x}",
                            "service": service,
                            "name": span.name,
                            "kind": Span.SpanKind.Name(span.kind).removeprefix(
                                "SPAN_KIND_"
                            ),
                            "start_ns": span.start_time_unix_nano,
                            "end_ns": span.end_time_unix_nano,
                            "status": Status.StatusCode.Name(
                                span.status.code
                            ).removeprefix("STATUS_CODE_"),
                            "attributes": _attributes(span.attributes),
                            "events": [event.name for event in span.events],
                        }
                    )

    def _add_logs(self, request: Any) -> None:
        for resource_logs in request.resource_logs:
            service = _attributes(resource_logs.resource.attributes)["service.name"]
            for scope_logs in resource_logs.scope_logs:
                for record in scope_logs.log_records:
                    self.log_rows.append(
                        {
                            "time_ns": record.time_unix_nano,
                            "service": service,
                            "level": record.severity_text,
                            "message": _any_value(record.body),
                            "trace_id": record.trace_id.hex() or None,
                            "span_id": record.span_id.hex() or None,
                            "attributes": _attributes(record.attributes),
                        }
                    )

    def _add_metrics(self, request: Any) -> None:
        for resource_metrics in request.resource_metrics:
            service = _attributes(resource_metrics.resource.attributes)["service.name"]
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    kind = metric.WhichOneof("data")
                    self.metric_rows.append(
                        {
                            "service": service,
                            "metric": metric.name,
                            "type": kind,
                            "points": len(getattr(metric, kind).data_points),
                        }
                    )

    def spans(self) -> Any:
        """The spans received so far, one row per span (read_spans's columns)."""
        import pandas as pd

        with self._lock:
            spans = pd.DataFrame(self.span_rows, columns=list(shopapp.SPAN_COLUMNS))
        spans["duration_ms"] = (spans["end_ns"] - spans["start_ns"]) / 1e6
        return spans

    def logs(self) -> Any:
        """The log records received so far, one row per record."""
        import pandas as pd

        with self._lock:
            return pd.DataFrame(list(self.log_rows))

    def metrics(self) -> Any:
        """One row per metric in each export request received so far."""
        import pandas as pd

        with self._lock:
            return pd.DataFrame(list(self.metric_rows))

    def wait_for_spans(self, checkouts: int, timeout_s: float = 15) -> Any:
        """Wait until the gateway's SERVER spans of `checkouts` requests arrived and
        half a second adds nothing (three export periods); return `spans()`."""
        deadline, previous = time.monotonic() + timeout_s, -1
        while True:
            spans = self.spans()
            served = int(
                (spans["service"].eq("gateway") & spans["kind"].eq("SERVER")).sum()
            )
            if served >= checkouts and len(spans) == previous:
                return spans
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{served} of {checkouts} checkouts after {timeout_s} s"
                )
            previous = len(spans)
            time.sleep(0.5)

    def wait_for_logs(self, gateway_lines: int, timeout_s: float = 15) -> Any:
        """Wait until the gateway's records of `gateway_lines` requests arrived and
        half a second adds nothing; return `logs()`."""
        deadline, previous = time.monotonic() + timeout_s, -1
        while True:
            logs = self.logs()
            lines = int(
                (logs["service"].eq("gateway") & logs["trace_id"].notna()).sum()
            )
            if lines >= gateway_lines and len(logs) == previous:
                return logs
            if time.monotonic() > deadline:
                raise TimeoutError(f"{lines} of {gateway_lines} gateway log records")
            previous = len(logs)
            time.sleep(0.5)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# --------------------------------------------------------------------------------------
# Prometheus and PromQL


def start_prometheus(
    binary: str, run_dir: Path, targets: dict[str, int], interval_s: float
) -> tuple[Any, str]:
    """Start a Prometheus on 127.0.0.1 scraping one job per service, without rules or
    Alertmanager; return (process, url). The logs-and-alerts chapter's starter, with
    nothing to evaluate."""
    import alerting_kit

    interval = f"{int(interval_s * 1000)}ms"
    return alerting_kit.start_prometheus(
        binary, run_dir, targets, [], interval, None, shopapp.spawn
    )


def prometheus_targets(prom_url: str) -> dict[str, str]:
    """Scrape health of every target, as Prometheus sees it."""
    import requests

    answer = requests.get(prom_url + "/api/v1/targets", timeout=5).json()
    return {t["labels"]["job"]: t["health"] for t in answer["data"]["activeTargets"]}


def wait_until(predicate: Any, timeout_s: float = 15, every_s: float = 0.2) -> bool:
    """Poll `predicate()` until it is true or `timeout_s` passed; return its value."""
    deadline = time.monotonic() + timeout_s
    while not (ok := predicate()) and time.monotonic() < deadline:
        time.sleep(every_s)
    return bool(ok)


def promql(prom_url: str, query: str, at: float) -> dict[str, float]:
    """An instant query; returns {job: value}."""
    import requests

    answer = requests.get(
        prom_url + "/api/v1/query", params={"query": query, "time": at}, timeout=10
    ).json()
    assert answer["status"] == "success", answer
    return {
        r["metric"].get("job", ""): float(r["value"][1])
        for r in answer["data"]["result"]
    }


def promql_range(
    prom_url: str, query: str, start: float, end: float, step: float
) -> Any:
    """A range query; returns a long DataFrame (job, time, value)."""
    import pandas as pd
    import requests

    answer = requests.get(
        prom_url + "/api/v1/query_range",
        timeout=10,
        params={"query": query, "start": start, "end": end, "step": step},
    ).json()
    assert answer["status"] == "success", answer
    return pd.DataFrame(
        [
            (r["metric"].get("job", ""), float(t), float(v))
            for r in answer["data"]["result"]
            for t, v in r["values"]
        ],
        columns=["job", "time", "value"],
    )


def red_from_prometheus(
    prom_url: str, queries: dict[str, str], phases: dict[str, Any], jobs: Any
) -> Any:
    """Each RED query over each phase's whole window, at its end; one row per
    (phase, job)."""
    import numpy as np
    import pandas as pd

    rows = []
    for phase, (a, b) in phases.items():
        window = f"{int(round(b - a))}s"
        values = {
            name: promql(prom_url, query.format(w=window), b)
            for name, query in queries.items()
        }
        rows += [
            {
                "phase": phase,
                "job": job,
                **{name: values[name].get(job, np.nan) for name in queries},
            }
            for job in jobs
        ]
    return pd.DataFrame(rows).set_index(["phase", "job"])


def latency_quantiles(runs: dict[str, Any]) -> Any:
    """p50/p95/p99 of each run, timed from the send and from the due time."""
    import pandas as pd

    return pd.DataFrame(
        {
            (run, clock): frame[column].quantile([0.5, 0.95, 0.99]).to_numpy()
            for run, frame in runs.items()
            for clock, column in (
                ("from send", "latency_ms"),
                ("from due", "latency_from_due_ms"),
            )
        },
        index=["p50_ms", "p95_ms", "p99_ms"],
    ).T


def capture_log(name: str) -> list[Any]:
    """Keep the records of logger `name` in the returned list instead of stderr."""
    import logging

    records: list[Any] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.propagate = False
    return records


def red_from_spans(spans: Any, phase_edges: dict[str, tuple[int, int]]) -> Any:
    """The RED numbers computed from the SERVER spans of each service, per phase."""
    import pandas as pd

    server = spans[spans["kind"].eq("SERVER") & spans["service"].isin(shopapp.SERVICES)]
    rows = []
    for phase, (a, b) in phase_edges.items():
        in_phase = server[(server["start_ns"] >= a) & (server["start_ns"] <= b)]
        for job, group in in_phase.groupby("service"):
            rows.append(
                {
                    "phase": phase,
                    "job": job,
                    "rate_per_s": len(group) / ((b - a) / 1e9),
                    "error_ratio": group["status"].eq("ERROR").mean(),
                    "p95_ms": group["duration_ms"].quantile(0.95),
                }
            )
    return pd.DataFrame(rows).set_index(["phase", "job"])


def plot_red_series(
    series: dict[str, Any],
    phases: dict[str, tuple[float, float]],
    start: float,
    window: str,
) -> None:
    """Rate, errors and p95 over time, one line per service; the fault shaded."""
    import matplotlib.pyplot as plt

    titles = {
        "rate_per_s": "Rate (requests/s)",
        "error_ratio": "Errors (share of requests)",
        "p95_ms": "Duration p95 (ms)",
    }
    fig, axes = plt.subplots(1, 3, figsize=(9.5, 3.0), sharex=True)
    for ax, (name, frame) in zip(axes, series.items()):
        for job, group in frame.groupby("job"):
            ax.plot(
                group["time"] - start,
                group["value"],
                label=job,
                color=SERVICE_COLOURS[job],
            )
        ax.axvspan(
            phases["degraded"][0] - start,
            phases["degraded"][1] - start,
            color="red",
            alpha=0.08,
        )
        ax.set_title(titles[name])
        ax.set_xlabel(f"seconds (window {window}; red: fault on)")
    axes[0].legend()
    fig.tight_layout()
    plt.show()


# --------------------------------------------------------------------------------------
# The waterfall


def span_tree_order(trace_spans: Any) -> list[tuple[Any, int]]:
    """(span row, depth) in depth-first order from the root, children by start time."""
    children: dict[Any, list[Any]] = {}
    for _, span in trace_spans.sort_values("start_ns").iterrows():
        children.setdefault(span["parent_span_id"], []).append(span)
    ids = set(trace_spans["span_id"])
    roots = [s for parent, kids in children.items() if parent not in ids for s in kids]
    ordered: list[tuple[Any, int]] = []

    def visit(span: Any, depth: int) -> None:
        ordered.append((span, depth))
        for child in children.get(span["span_id"], []):
            visit(child, depth + 1)

    for root in roots:
        visit(root, 0)
    return ordered


def plot_waterfall(trace_spans: Any, ax: Any, title: str) -> None:
    """One horizontal bar per span, indented by depth; error spans outlined in red."""
    ordered = span_tree_order(trace_spans)
    t0 = trace_spans["start_ns"].min()
    for y, (span, depth) in enumerate(ordered):
        left_ms = (span["start_ns"] - t0) / 1e6
        ax.barh(
            y,
            max(span["duration_ms"], 0.05),
            left=left_ms,
            color=SERVICE_COLOURS[span["service"]],
            edgecolor="red" if span["status"] == "ERROR" else "none",
            linewidth=1.5,
        )
        ax.text(
            left_ms + span["duration_ms"],
            y,
            f" {span['duration_ms']:.1f} ms",
            va="center",
            fontsize=8,
        )
    ax.set_yticks(
        range(len(ordered)),
        ["  " * d + f"{s['service']}: {s['name']}" for s, d in ordered],
        fontsize=8,
    )
    ax.invert_yaxis()
    ax.set_xlabel("ms since the trace started")
    ax.set_title(title)


# --------------------------------------------------------------------------------------
# The Collector configuration


def collector_config_problems(config: dict[str, Any]) -> list[str]:
    """Structural checks of a Collector configuration; an empty list means it passes."""
    problems = []
    for section in ("receivers", "exporters", "service"):
        if not config.get(section):
            problems.append(f"missing section {section!r}")
    pipelines = config.get("service", {}).get("pipelines", {})
    if not pipelines:
        problems.append("service.pipelines is empty: nothing would flow")
    used: dict[str, set[str]] = {
        "receivers": set(),
        "processors": set(),
        "exporters": set(),
    }
    for name, pipeline in pipelines.items():
        if name.split("/")[0] not in ("traces", "metrics", "logs"):
            problems.append(f"pipeline {name!r}: type must be traces, metrics or logs")
        for kind in ("receivers", "exporters"):
            if not pipeline.get(kind):
                problems.append(f"pipeline {name!r} has no {kind}")
        for kind in used:
            for component in pipeline.get(kind, []):
                used[kind].add(component)
                if component not in (config.get(kind) or {}):
                    problems.append(
                        f"pipeline {name!r} uses {kind[:-1]} {component!r}, "
                        "which is not defined"
                    )
        processors = pipeline.get("processors", [])
        if "memory_limiter" in processors and processors[0] != "memory_limiter":
            problems.append(f"pipeline {name!r}: memory_limiter must come first")
        if "batch" in processors and processors[-1] != "batch":
            problems.append(f"pipeline {name!r}: batch should come last")
    for kind, names in used.items():
        for component in set(config.get(kind) or {}) - names:
            problems.append(
                f"{kind[:-1]} {component!r} is defined but no pipeline uses it"
            )
    for extension in config.get("service", {}).get("extensions", []):
        if extension not in (config.get("extensions") or {}):
            problems.append(f"extension {extension!r} is enabled but not defined")
    return problems


def per_pod_scrape_problems(docs: list[dict[str, Any]], port: str) -> list[str]:
    """Problems with scraping the container port named `port` of a Deployment with
    more than one replica: a Service that load-balances it (each scrape reaches one
    pod at random) and no PodMonitor selecting the pods."""
    problems = []
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        if deployment["spec"].get("replicas", 1) <= 1:
            continue
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        name = deployment["metadata"]["name"]

        def selects(selector: dict[str, Any]) -> bool:
            return bool(selector) and selector.items() <= labels.items()

        for service in (d for d in docs if d["kind"] == "Service"):
            spec = service["spec"]
            headless = spec.get("clusterIP") == "None"
            ports = {p.get("targetPort", p.get("name")) for p in spec.get("ports", [])}
            if selects(spec.get("selector", {})) and port in ports and not headless:
                problems.append(
                    f"Service {service['metadata']['name']} load-balances {port!r} "
                    f"over the {deployment['spec']['replicas']} replicas of {name}"
                )
        monitors = [
            d
            for d in docs
            if d["kind"] == "PodMonitor"
            and selects(d["spec"]["selector"].get("matchLabels", {}))
            and port in [e.get("port") for e in d["spec"]["podMetricsEndpoints"]]
        ]
        if not monitors:
            problems.append(f"no PodMonitor scrapes port {port!r} of every {name} pod")
    return problems


def strategy_problems(strategies: dict[str, Any]) -> list[str]:
    """Jaeger sampling strategies: known types and parameter ranges."""
    problems = []
    services = strategies.get("service_strategies", [])
    entries = [strategies["default_strategy"], *services]
    entries += [op for s in services for op in s.get("operation_strategies", [])]
    for entry in entries:
        if entry["type"] == "probabilistic" and not 0 <= entry["param"] <= 1:
            problems.append(f"{entry}: a probability must be in [0, 1]")
        elif entry["type"] == "ratelimiting" and not entry["param"] > 0:
            problems.append(f"{entry}: traces per second must be > 0")
        elif entry["type"] not in ("probabilistic", "ratelimiting"):
            problems.append(f"{entry}: unknown type")
    return problems


# --------------------------------------------------------------------------------------
# Plots and the cluster dry run of distributed-tracing.ipynb


def plot_trace_scatter(
    traces: Any, faulty: tuple[float, float], threshold_ms: float
) -> None:
    """One dot per trace (duration against start), errors as red crosses."""
    import matplotlib.pyplot as plt

    t0 = traces["start_s"].min()
    fig, ax = plt.subplots()
    for label, rows, style in (
        ("ok", traces[~traces["error"]], dict(s=8, color="C0", alpha=0.5)),
        ("error", traces[traces["error"]], dict(s=22, color="red", marker="x")),
    ):
        ax.scatter(rows["start_s"] - t0, rows["duration_ms"], label=label, **style)
    ax.axhline(
        threshold_ms,
        color="0.3",
        linestyle="--",
        linewidth=1,
        label=f"slow threshold ({threshold_ms} ms)",
    )
    ax.axvspan(faulty[0] - t0, faulty[1] - t0, color="red", alpha=0.06)
    ax.set_yscale("log")
    ax.set_xlabel("seconds since the first checkout (shaded: faults on)")
    ax.set_ylabel("checkout duration (ms)")
    ax.legend(loc="upper left")
    plt.show()


def plot_kept(kept: Any, n_interesting: int, expected: float) -> None:
    """Interesting traces kept by each strategy, against a blind sampler's mean."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 2.6))
    ax.barh(kept.index, kept, color=["C0", "C1", "C2"])
    for y, value in enumerate(kept):
        ax.text(value + 0.5, y, f"{value} of {n_interesting}", va="center")
    ax.axvline(
        expected,
        color="0.3",
        linestyle="--",
        linewidth=1,
        label="a blind sampler's expectation",
    )
    ax.set_xlim(0, 1.25 * n_interesting)
    ax.set_xlabel("error or slow traces kept, same kept spans")
    ax.invert_yaxis()
    ax.legend(loc="lower right")
    plt.show()


def plot_critical_path(per_operation: Any, groups: list[str]) -> None:
    """Mean critical-path time per operation, two groups of traces side by side."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    frame = per_operation[groups].iloc[::-1]
    y = np.arange(len(frame))
    for offset, group, colour in ((-0.2, groups[0], "C0"), (0.2, groups[1], "C3")):
        ax.barh(y + offset, frame[group], height=0.4, label=group, color=colour)
    ax.set_yticks(y, [f"{s}: {o}" for s, o in frame.index], fontsize=8)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("mean critical-path time per trace (ms)")
    ax.legend(loc="lower right")
    plt.show()


def dry_run(objects: list[dict[str, Any]], profile: str, info: dict[str, Any]) -> str:
    """At the cluster profile with a kubeconfig, a server-side dry run of the core
    objects (custom resources skipped); else say what was checked offline."""
    if profile == "cluster" and info["kubeconfig"]:
        from kubernetes import client, config, utils

        if info["kubeconfig"] == "in-cluster":
            config.load_incluster_config()
        else:
            config.load_kube_config(config_file=info["kubeconfig"])
        core = [o for o in objects if "monitoring.coreos.com" not in o["apiVersion"]]
        for manifest in core:
            utils.create_from_dict(client.ApiClient(), manifest, dry_run="All")
        return (
            f"the API server accepted {len(core)} objects "
            "(server-side dry run, nothing created)"
        )
    if profile == "cluster":
        return (
            "no Kubernetes config: the manifests were validated offline (1.30 schema)"
        )
    return (
        f"profile={profile}: the manifests were validated offline; "
        "apply them with kubectl"
    )
