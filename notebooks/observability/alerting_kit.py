"""Plumbing of the logs-and-alerts chapter.

The log shipper (tail files into SQLite, count lines for Prometheus), the healthy
history written as OpenMetrics for `promtool tsdb create-blocks-from openmetrics`, the
webhook receiver that stands in for a pager, and small query helpers. The alerting
technique itself (rules, routes, grouping, inhibition, the arithmetic) stays in the
notebook.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import requests
from prometheus_client import CollectorRegistry, Counter, start_http_server

LOG_COLUMNS = ("time", "service", "level", "message", "trace_id", "span_id")


class LogShipper:
    """Tail each service's JSON log file into SQLite from the offset stored there (like
    Fluent Bit's `db`), and count the shipped lines per service and level on a
    Prometheus endpoint (like Fluent Bit's `log_to_metrics` filter)."""

    def __init__(self, folder: Path, services: tuple[str, ...], port: int) -> None:
        self.folder, self.services = Path(folder), services
        self.db = sqlite3.connect(self.folder / "logs.db", check_same_thread=False)
        self.lock = threading.Lock()
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS logs (time TEXT, ts REAL, service TEXT, "
            "level TEXT, message TEXT, trace_id TEXT, span_id TEXT, attributes TEXT)"
        )
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS offsets (file TEXT PRIMARY KEY, offset INTEGER)"
        )
        registry = CollectorRegistry()
        self.lines = Counter(
            "log_lines",
            "Log lines shipped, by service and level",
            ["service", "level"],
            registry=registry,
        )
        for service in services:  # every series exists from the first scrape
            for level in ("INFO", "WARNING", "ERROR"):
                self.lines.labels(service, level)
        self.server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
        self.url = f"http://127.0.0.1:{port}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def ship(self) -> int:
        """Ship the complete lines written since the last call; return how many."""
        shipped = 0
        with self.lock:
            for service in self.services:
                path = self.folder / f"{service}.log"
                row = self.db.execute(
                    "SELECT offset FROM offsets WHERE file = ?", (path.name,)
                ).fetchone()
                start = row[0] if row else 0
                with path.open("rb") as f:
                    f.seek(start)
                    chunk = f.read()
                # A line still being written waits for the next round.
                complete = chunk[: chunk.rfind(b"\n") + 1]
                rows = []
                for line in complete.splitlines():
                    record = json.loads(line)
                    core = [record.pop(k, None) for k in LOG_COLUMNS]
                    ts = dt.datetime.fromisoformat(core[0]).timestamp()
                    attributes = json.dumps(record, sort_keys=True)
                    rows.append((core[0], ts, *core[1:], attributes))
                    self.lines.labels(core[1], core[2]).inc()
                self.db.executemany(
                    "INSERT INTO logs VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows
                )
                self.db.execute(
                    "INSERT OR REPLACE INTO offsets VALUES (?, ?)",
                    (path.name, start + len(complete)),
                )
                shipped += len(rows)
            self.db.commit()
        return shipped

    def start(self, interval_s: float) -> None:
        """Ship every `interval_s` seconds in a background thread."""

        def loop() -> None:
            while not self._stop.wait(interval_s):
                self.ship()

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> int:
        """Stop the thread and the metrics endpoint; ship what is left."""
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.server.shutdown()
        return self.ship()


def write_history(
    path: Path,
    labels: dict[str, str],
    start_s: float,
    end_s: float,
    step_s: float,
    rate_per_s: float,
) -> int:
    """A healthy request counter from `start_s` to `end_s` (Unix seconds), one sample
    every `step_s`, as OpenMetrics text for `promtool tsdb create-blocks-from
    openmetrics`. Returns the number of samples."""
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
    lines = ["# TYPE http_server_requests counter"]
    count = int((end_s - start_s) / step_s) + 1
    for i in range(count):
        t = start_s + i * step_s
        value = round(rate_per_s * i * step_s)
        lines.append(f"http_server_requests_total{{{selector}}} {value} {t:.3f}")
    lines.append("# EOF")
    path.write_text("\n".join(lines) + "\n")
    return count


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that keeps every notification Alertmanager POSTs to
    it, with its arrival time and path (one path per receiver)."""

    def __init__(self, port: int) -> None:
        received: list[dict[str, Any]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the http.server interface)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(
                    {"time": time.time(), "path": self.path, **json.loads(body)}
                )
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def notifications(self, t0: float) -> pd.DataFrame:
        """One row per alert in each notification: receiver path, seconds after t0,
        group key, alert name, the alert's labels that vary, status."""
        rows = []
        for n, note in enumerate(self.received):
            for alert in note["alerts"]:
                rows.append(
                    {
                        "notification": n + 1,
                        "receiver": note["receiver"],
                        "time": note["time"] - t0,
                        "alertname": alert["labels"]["alertname"],
                        "service": alert["labels"].get("service", ""),
                        "status": alert["status"],
                    }
                )
        return pd.DataFrame(
            rows,
            columns=[
                "notification",
                "receiver",
                "time",
                "alertname",
                "service",
                "status",
            ],
        )

    def stop(self) -> None:
        self.server.shutdown()


class AlertmanagerWatcher:
    """Poll Alertmanager's /api/v2/alerts in a background thread and keep each alert's
    state over time: active, or suppressed with the alerts that inhibit it."""

    def __init__(self, url: str, interval_s: float) -> None:
        self.url, self.records = url, []
        self._stop = threading.Event()

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    alerts = requests.get(url + "/api/v2/alerts", timeout=2).json()
                except requests.RequestException:
                    continue
                now = time.time()
                for a in alerts:
                    self.records.append(
                        {
                            "time": now,
                            "alertname": a["labels"]["alertname"],
                            "service": a["labels"].get("service", ""),
                            "state": a["status"]["state"],
                            "inhibited_by": len(a["status"]["inhibitedBy"]),
                        }
                    )

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> pd.DataFrame:
        self._stop.set()
        self._thread.join()
        return pd.DataFrame(
            self.records,
            columns=["time", "alertname", "service", "state", "inhibited_by"],
        )


def promql_range(
    prom_url: str, query: str, start: float, end: float, step: float = 0.25
) -> pd.DataFrame:
    """A Prometheus range query as a long DataFrame (labels..., time, value)."""
    answer = requests.get(
        prom_url + "/api/v1/query_range",
        timeout=10,
        params={"query": query, "start": start, "end": end, "step": step},
    ).json()
    assert answer["status"] == "success", answer
    return pd.DataFrame(
        [
            {**r["metric"], "time": float(t), "value": float(v)}
            for r in answer["data"]["result"]
            for t, v in r["values"]
        ]
    )


def scrape_counters(
    url: str, interval_s: float, stop: threading.Event, samples: list
) -> None:
    """The fallback without Prometheus: append (time, requests, 5xx) of the gateway's
    request counters to `samples` every `interval_s`, until `stop` is set. Run it in a
    thread."""
    from prometheus_client.parser import text_string_to_metric_families

    while not stop.is_set():
        text = requests.get(url + "/metrics", timeout=5).text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        family = families.get("http_server_requests")  # absent before a request
        counts = [
            (s.value, s.labels["http_response_status_code"])
            for s in (family.samples if family else [])
            if s.name.endswith("_total")
        ]
        total = sum(v for v, _ in counts)
        errors = sum(v for v, code in counts if code.startswith("5"))
        samples.append((time.time(), total, errors))
        stop.wait(interval_s)


def start_alertmanager(
    binary: str, run_dir: Path, config: dict[str, Any], spawn: Any
) -> tuple[Any, str]:
    """Alertmanager on a free loopback port with `config`, one instance (no gossip
    port); returns (process, URL). `spawn` starts a logged process (shopapp.spawn)."""
    import yaml

    from labkit import free_port

    port = free_port()
    (run_dir / "alertmanager.yml").write_text(yaml.safe_dump(config))
    process = spawn(
        [
            binary,
            f"--config.file={run_dir / 'alertmanager.yml'}",
            f"--storage.path={run_dir / 'alertmanager'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ],
        run_dir,
        "alertmanager",
    )
    return process, f"http://127.0.0.1:{port}"


def start_prometheus(
    binary: str,
    run_dir: Path,
    targets: dict[str, int],
    rule_files: list[str],
    interval: str,
    alertmanager_url: str | None,
    spawn: Any,
) -> tuple[Any, str]:
    """Prometheus on a free loopback port, scraping each {job: port} on 127.0.0.1 and
    evaluating `rule_files` (in run_dir) every `interval`, its TSDB in run_dir/tsdb
    (where a backfill may already lie); returns (process, URL)."""
    import yaml

    from labkit import free_port

    port = free_port()
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "evaluation_interval": interval,
        },
        "rule_files": rule_files,
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{p}"]}]}
            for job, p in targets.items()
        ],
    }
    if alertmanager_url:
        host = alertmanager_url.removeprefix("http://")
        config["alerting"] = {
            "alertmanagers": [{"static_configs": [{"targets": [host]}]}]
        }
    (run_dir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    process = spawn(
        [
            binary,
            f"--config.file={run_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={run_dir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        run_dir,
        "prometheus",
    )
    return process, f"http://127.0.0.1:{port}"


def wait_for_targets(prom_url: str, jobs: list[str], timeout_s: float = 15) -> list:
    """Wait until Prometheus reports every job's target up (it applies targets at most
    every 5 s after a start); return the names of its alerting rules."""
    deadline = time.monotonic() + timeout_s
    want = dict.fromkeys(jobs, "up")
    while True:
        targets = requests.get(prom_url + "/api/v1/targets", timeout=5).json()
        health = {
            t["labels"]["job"]: t["health"] for t in targets["data"]["activeTargets"]
        }
        if health == want:
            break
        assert time.monotonic() < deadline, f"targets not up: {health}"
        time.sleep(0.1)
    groups = requests.get(prom_url + "/api/v1/rules", timeout=5).json()["data"]
    return [
        r["name"]
        for g in groups["groups"]
        for r in g["rules"]
        if r["type"] == "alerting"
    ]


def burn_from_scrapes(
    history: list[tuple[float, float, float]],
    samples: list[tuple[float, float, float]],
    windows_s: dict[str, float],
    budget: float,
    start: float,
) -> pd.DataFrame:
    """Without Prometheus: the recording rules' arithmetic (errors / requests over each
    trailing window, divided by the budget) at every scrape after `start`, over the
    healthy history followed by the notebook's own scrapes of (time, requests, 5xx)."""
    last = history[-1][1] if history else 0.0
    scraped = pd.DataFrame(
        history + [(t, last + n, e) for t, n, e in samples],
        columns=["time", "requests", "errors"],
    ).set_index("time")
    columns = {}
    for label, window_s in windows_s.items():
        rows = {}
        for t in scraped.index[scraped.index >= start]:
            past = scraped[scraped.index <= t - window_s]
            base = past.iloc[-1] if len(past) else scraped.iloc[0]
            delta = scraped.loc[t] - base
            rows[t] = delta["errors"] / delta["requests"] if delta["requests"] else 0
        columns[label] = pd.Series(rows)
    return pd.DataFrame(columns) / budget


def loki_problems(config: dict[str, Any]) -> list[str]:
    """What Loki 3 needs: tsdb and schema v13 (structured metadata), a store for
    retention's delete requests, every path on the /loki volume."""
    problems = []
    for entry in config["schema_config"]["configs"]:
        if (entry["store"], entry["schema"]) != ("tsdb", "v13"):
            problems.append(
                f"schema {entry['schema']} on {entry['store']}: "
                "Loki 3 wants tsdb and v13"
            )
    compactor = config["compactor"]
    if compactor.get("retention_enabled") and not compactor.get("delete_request_store"):
        problems.append("retention needs compactor.delete_request_store")
    paths = [
        config["common"]["path_prefix"],
        compactor["working_directory"],
        *config["common"]["storage"]["filesystem"].values(),
    ]
    problems += [
        f"{p} is outside the /loki volume" for p in paths if not p.startswith("/loki")
    ]
    return problems


def fluent_bit_problems(config: dict[str, Any]) -> list[str]:
    """Every Fluent Bit filter and output must match the tag some input produces."""
    from fnmatch import fnmatch

    tags = [i["tag"].replace("*", "x") for i in config["pipeline"]["inputs"]]
    stages = config["pipeline"].get("filters", []) + config["pipeline"]["outputs"]
    return [
        f"{s['name']}: match {s['match']!r} catches no input"
        for s in stages
        if not any(fnmatch(tag, s["match"]) for tag in tags)
    ]
