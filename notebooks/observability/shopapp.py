"""The shop under observation: three HTTP services and two SQLite databases,
instrumented with the OpenTelemetry SDK, with faults that can be switched on while it
runs.

    client -> gateway -> orders -> inventory
                           |          |
                       orders.db  inventory.db

Every service is a real process on 127.0.0.1 (Python's ThreadingHTTPServer) and emits
the three OpenTelemetry signals:

- traces: a TracerProvider with a BatchSpanProcessor whose exporter writes one JSON
  line per span to `<data-dir>/<service>-spans.jsonl`, or, when the standard variable
  OTEL_EXPORTER_OTLP_ENDPOINT is set, the real OTLP/HTTP exporter (protobuf) pointed
  at that endpoint; the W3C `traceparent` and `baggage` headers carry the context from
  one process to the next; OTEL_TRACES_SAMPLER(_ARG) choose the sampler;
- metrics: a MeterProvider whose PrometheusMetricReader serves the instruments at
  `GET /metrics`;
- logs: the standard `logging` module bridged to a LoggerProvider by the SDK's
  LoggingHandler (the logs SDK is experimental), exported over OTLP when the endpoint
  is set, else as one JSON object per line on stdout (what a container runtime
  writes to a file and a log shipper tails), each line carrying the trace and span id
  of the request that wrote it.

Faults (`POST /admin/fault` with a JSON body, on any service) act on one named
operation of that service: `delay_ms` with `delay_fraction` (a slow dependency),
`error_fraction` (an error burst: the operation raises), `leak_kib` (a memory leak:
every request keeps that much memory for ever). An empty body clears every fault.
Whether a fault hits a request is drawn from the request's `shop.request` baggage entry
(set by the load generator), so that a given seed hits the same requests on every run.

Run one service by hand:  python shopapp.py inventory --port 8003 --data-dir /some/dir
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

VERSION = "1.5.0"
SERVICES = ("inventory", "orders", "gateway")  # start order: dependencies first
DOWNSTREAM = {"gateway": "orders", "orders": "inventory"}
ROUTES = {
    "gateway": ("GET", "/checkout"),
    "orders": ("POST", "/orders"),
    "inventory": ("GET", "/reserve"),
}
STATUSES = {
    "gateway": (200, 400, 409, 500, 502),
    "orders": (201, 409, 500, 502, 503),
    "inventory": (200, 409, 500, 503),
}
ITEMS = [f"sku-{i}" for i in range(1, 21)]
SOLD_OUT = "sku-13"  # no stock: a client error (409), not a server error
# Simulated round trip of a database query (disk, network), log-normal around it.
DB_MEDIAN_S = 0.002
# The W3C baggage entry the load generator tags every request with; faults draw on it.
REQUEST_KEY = "shop.request"
SPAN_COLUMNS = (
    "trace_id",
    "span_id",
    "parent_span_id",
    "trace_flags",
    "service",
    "name",
    "kind",
    "start_ns",
    "end_ns",
    "status",
    "attributes",
    "events",
)

log = logging.getLogger("shop")
PYTHON_LEVELS = {"WARN": "WARNING", "FATAL": "CRITICAL"}


# --------------------------------------------------------------------------------------
# Telemetry: one provider per signal, each with its processor/reader and exporter.


def span_record(span: Any) -> dict[str, Any]:
    """One finished SDK span (ReadableSpan) as a flat JSON-ready dict."""
    from opentelemetry.trace import format_span_id, format_trace_id

    ctx = span.get_span_context()
    parent = span.parent
    return {
        "trace_id": format_trace_id(ctx.trace_id),
        "span_id": format_span_id(ctx.span_id),
        "parent_span_id": format_span_id(parent.span_id) if parent else None,
        "trace_flags": f"{int(ctx.trace_flags):02x}",
        "service": span.resource.attributes.get("service.name"),
        "name": span.name,
        "kind": span.kind.name,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "events": [e.name for e in span.events],
    }


def make_span_exporter(path: Path) -> Any:
    """A SpanExporter that appends one JSON line per span to `path`."""
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class JsonLinesSpanExporter(SpanExporter):
        def __init__(self) -> None:
            self._file = open(path, "a", buffering=1, encoding="utf-8")
            self._lock = threading.Lock()

        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            lines = "".join(json.dumps(span_record(s)) + "\n" for s in spans)
            with self._lock:
                self._file.write(lines)
                self._file.flush()
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            with self._lock:
                self._file.close()

    return JsonLinesSpanExporter()


def make_log_exporter(stream: Any) -> Any:
    """A LogRecordExporter writing one flat JSON object per log record to `stream`."""
    from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
    from opentelemetry.trace import format_span_id, format_trace_id

    def iso_time(timestamp_ns: int) -> str:
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp_ns / 1e9))
        return f"{seconds}.{timestamp_ns // 1000 % 1_000_000:06d}Z"

    class JsonLinesLogExporter(LogRecordExporter):
        def export(self, batch: Sequence[Any]) -> LogRecordExportResult:
            lines = []
            for readable in batch:
                record = readable.log_record
                trace_id, span_id = record.trace_id, record.span_id
                text = record.severity_text
                line = {
                    "time": iso_time(record.timestamp),
                    "service": readable.resource.attributes.get("service.name"),
                    # Python's level names (the SDK writes WARN and FATAL), which
                    # the log queries of logs-and-alerts use.
                    "level": PYTHON_LEVELS.get(text, text),
                    "message": record.body,
                    "trace_id": format_trace_id(trace_id) if trace_id else None,
                    "span_id": format_span_id(span_id) if span_id else None,
                }
                line.update(
                    (key, value)
                    for key, value in (record.attributes or {}).items()
                    if not key.startswith("code.")  # LoggingHandler's source location
                )
                lines.append(json.dumps(line) + "\n")
            stream.write("".join(lines))
            stream.flush()
            return LogRecordExportResult.SUCCESS

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            stream.flush()
            return True

        def shutdown(self) -> None:
            stream.flush()

    return JsonLinesLogExporter()


def sdk_logging_handler(logger_provider: Any) -> logging.Handler:
    """The SDK's own bridge from `logging` (opentelemetry.sdk._logs.LoggingHandler,
    experimental; 1.45 deprecates it in favour of opentelemetry-instrumentation-logging,
    which the book's lock does not install)."""
    import warnings

    from opentelemetry.sdk._logs import LoggingHandler

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return LoggingHandler(logger_provider=logger_provider)


def setup_telemetry(
    service: str, data_dir: Path, log_stream: Any = sys.stdout
) -> dict[str, Any]:
    """Create the tracer, meter and logger providers of one service; return its
    instruments."""
    from opentelemetry import metrics, trace
    from opentelemetry._logs import set_logger_provider
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # The SDK's standard variable: with it, every signal goes out over OTLP/HTTP.
    otlp = bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    resource = Resource.create(
        {
            "service.name": service,
            "service.namespace": "shop",
            "service.version": VERSION,
        }
    )

    # Traces. The default sampler is ParentBased(ALWAYS_ON): the caller's decision is
    # honoured (OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG override it).
    tracer_provider = TracerProvider(resource=resource)
    if otlp:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter,
        )

        exporter = OTLPSpanExporter()  # endpoint + /v1/traces
    else:
        exporter = make_span_exporter(Path(data_dir) / f"{service}-spans.jsonl")
    tracer_provider.add_span_processor(
        BatchSpanProcessor(exporter, schedule_delay_millis=200)
    )
    trace.set_tracer_provider(tracer_provider)

    # Metrics, pulled rather than pushed: Prometheus scrapes GET /metrics, which reads
    # the instruments.
    readers: list[Any] = [PrometheusMetricReader()]
    if otlp:  # and pushed over OTLP as well, once a second
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter,
        )
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        readers.append(
            PeriodicExportingMetricReader(
                OTLPMetricExporter(), export_interval_millis=1000
            )
        )
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    metrics.set_meter_provider(meter_provider)
    meter = metrics.get_meter("shop", VERSION)
    buckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]

    # Logs: logging -> LoggingHandler -> LoggerProvider -> batch -> OTLP or JSON lines.
    logger_provider = LoggerProvider(resource=resource)
    if otlp:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import (
            OTLPLogExporter,
        )

        log_exporter = OTLPLogExporter()
    else:
        log_exporter = make_log_exporter(log_stream)
    logger_provider.add_log_record_processor(
        BatchLogRecordProcessor(log_exporter, schedule_delay_millis=200)
    )
    set_logger_provider(logger_provider)
    root = logging.getLogger()
    root.handlers[:] = [sdk_logging_handler(logger_provider)]
    root.setLevel(logging.INFO)

    return {
        "tracer": trace.get_tracer("shop", VERSION),
        "providers": (tracer_provider, meter_provider, logger_provider),
        "requests": meter.create_counter(
            "http.server.requests", unit="{request}", description="HTTP requests served"
        ),
        "duration": meter.create_histogram(
            "http.server.request.duration",
            unit="s",
            description="Time to serve an HTTP request",
            explicit_bucket_boundaries_advisory=buckets,
        ),
        "client_duration": meter.create_histogram(
            "http.client.request.duration",
            unit="s",
            description="Time waiting for a downstream service",
            explicit_bucket_boundaries_advisory=buckets,
        ),
        "active": meter.create_up_down_counter(
            "http.server.active_requests",
            unit="{request}",
            description="Requests being served",
        ),
        "orders": meter.create_counter(
            "shop.orders.placed", unit="{order}", description="Orders written"
        ),
    }


# --------------------------------------------------------------------------------------
# Faults


class Faults:
    """The faults switched on in this process, by operation name; thread-safe."""

    KINDS = ("delay_ms", "delay_fraction", "error_fraction", "leak_kib")

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._specs: dict[str, dict[str, float]] = {}
        self._leaked: list[bytes] = []

    def set(self, spec: dict[str, Any]) -> None:
        """Replace the faults: {} clears them; else `operation` plus any of KINDS."""
        with self._lock:
            if not spec:
                self._specs.clear()
                self._leaked.clear()
                return
            kinds = {k: float(spec.get(k, 0)) for k in self.KINDS}
            self._specs[spec["operation"]] = kinds

    def random(self) -> float:
        with self._lock:
            return self._rng.random()

    def latency_s(self, median_s: float) -> float:
        with self._lock:
            return self._rng.lognormvariate(0.0, 0.35) * median_s

    def draws(self, operation: str) -> Callable[[], float]:
        """Uniform draws for `operation` in the current request.

        Keyed on the request's `shop.request` baggage entry when it has one, so that a
        seed hits the same requests on every run, whatever order the threads run in;
        else taken from this service's own sequence.
        """
        from opentelemetry import baggage

        key = baggage.get_baggage(REQUEST_KEY)
        if key is None:
            return self.random
        return random.Random(f"{self._seed}/{operation}/{key}").random

    def apply(self, operation: str) -> None:
        """Run the faults switched on for `operation`: sleep, leak, or raise
        sqlite3.OperationalError."""
        spec = self._specs.get(operation)
        if not spec:
            return
        if spec["leak_kib"]:
            with self._lock:
                self._leaked.append(b"\x01" * int(spec["leak_kib"] * 1024))
        draw = self.draws(operation)
        if spec["delay_fraction"] and draw() < spec["delay_fraction"]:
            time.sleep(spec["delay_ms"] / 1000)
        if spec["error_fraction"] and draw() < spec["error_fraction"]:
            raise sqlite3.OperationalError(f"{operation}: database is locked")


# --------------------------------------------------------------------------------------
# The service


class Service:
    """One shop service: its telemetry, its database, its downstream, its faults."""

    def __init__(
        self, name: str, data_dir: Path, downstream_url: str | None, seed: int
    ) -> None:
        self.name = name
        self.data_dir = Path(data_dir)
        self.downstream_url = downstream_url
        self.faults = Faults(seed)
        self.telemetry = setup_telemetry(name, self.data_dir)
        self.tracer = self.telemetry["tracer"]
        # Start the request counter at 0 for every answer the route can give: a series
        # that appears at 1 hides its first increase from PromQL's rate(), so the first
        # errors would go unseen.
        method, route = ROUTES[name]
        for status in STATUSES[name]:
            labels = {
                "http.request.method": method,
                "http.route": route,
                "http.response.status_code": status,
            }
            self.telemetry["requests"].add(0, labels)
        self.db_path = self.data_dir / f"{name}.db"
        self._idle_connections: queue.SimpleQueue[sqlite3.Connection] = (
            queue.SimpleQueue()
        )
        if name in ("inventory", "orders"):
            with sqlite3.connect(self.db_path) as conn:
                conn.execute("PRAGMA journal_mode = WAL")
        if name == "inventory":
            stock = [(item, 0 if item == SOLD_OUT else 1_000_000) for item in ITEMS]
            with sqlite3.connect(self.db_path) as conn:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS stock "
                    "(item TEXT PRIMARY KEY, quantity INT, reserved INT)"
                )
                conn.executemany("INSERT OR REPLACE INTO stock VALUES (?, ?, 0)", stock)
        elif name == "orders":
            with sqlite3.connect(self.db_path) as conn:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS orders "
                    "(id INTEGER PRIMARY KEY, item TEXT, quantity INT)"
                )

    # -- instrumentation helpers -------------------------------------------------------

    @contextlib.contextmanager
    def db_span(self, operation: str, table: str) -> Iterator[sqlite3.Connection]:
        """A CLIENT span around one database statement (semantic conventions' db.*
        attributes)."""
        from opentelemetry.trace import SpanKind

        name = f"{operation} {table}"
        attributes = {
            "db.system.name": "sqlite",
            "db.operation.name": operation,
            "db.collection.name": table,
            "db.namespace": self.db_path.name,
        }
        with self.tracer.start_as_current_span(
            name, kind=SpanKind.CLIENT, attributes=attributes
        ):
            time.sleep(self.faults.latency_s(DB_MEDIAN_S))
            self.faults.apply(name)
            try:
                conn = self._idle_connections.get_nowait()
            except queue.Empty:
                conn = sqlite3.connect(self.db_path, timeout=5, check_same_thread=False)
                conn.execute("PRAGMA synchronous = NORMAL")  # WAL: no fsync per commit
            try:
                with conn:
                    yield conn
            finally:
                # A small pool: reconnecting costs more than the query.
                self._idle_connections.put(conn)

    def call_downstream(
        self,
        method: str,
        route: str,
        query: dict[str, Any] | None = None,
        payload: dict[str, Any] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Call the downstream service in a CLIENT span, injecting the W3C
        `traceparent` (and `baggage`) headers."""
        from opentelemetry import propagate
        from opentelemetry.trace import SpanKind, Status, StatusCode

        url = urllib.parse.urlsplit(self.downstream_url)
        target = route + ("?" + urllib.parse.urlencode(query) if query else "")
        peer = DOWNSTREAM[self.name]
        attributes = {
            "http.request.method": method,
            "url.template": route,
            "server.address": url.hostname,
            "server.port": url.port,
            "peer.service": peer,
        }
        with self.tracer.start_as_current_span(
            f"{method} {route}", kind=SpanKind.CLIENT, attributes=attributes
        ) as span:
            headers = {"Content-Type": "application/json"}
            # traceparent: 00-<trace id>-<this span's id>-<flags>
            propagate.inject(headers)
            body = json.dumps(payload).encode() if payload is not None else None
            started = time.perf_counter()
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
            try:
                conn.request(method, target, body=body, headers=headers)
                response = conn.getresponse()
                status, data = response.status, response.read()
            except OSError as err:
                span.record_exception(err)
                status, data = 599, b"{}"
            finally:
                conn.close()
            span.set_attribute("http.response.status_code", status)
            # Semantic conventions: any 4xx/5xx is an error on a CLIENT span.
            if status >= 400:
                span.set_status(Status(StatusCode.ERROR))
            self.telemetry["client_duration"].record(
                time.perf_counter() - started,
                {
                    "peer.service": peer,
                    "http.request.method": method,
                    "http.response.status_code": status,
                },
            )
        return status, json.loads(data or b"{}")

    # -- business logic ----------------------------------------------------------------

    def checkout(
        self, query: dict[str, str], _body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        """gateway: validate the cart, then ask orders to place the order."""
        item, quantity = query.get("item", ""), int(query.get("qty", "1"))
        with self.tracer.start_as_current_span(
            "validate cart", attributes={"shop.item": item}
        ):
            time.sleep(self.faults.latency_s(0.0005))
            self.faults.apply("validate cart")
            if item not in ITEMS or not 1 <= quantity <= 10:
                log.warning("invalid cart", extra={"item": item, "quantity": quantity})
                return 400, {"error": "invalid cart"}
        status, payload = self.call_downstream(
            "POST", "/orders", payload={"item": item, "qty": quantity}
        )
        if status >= 500:
            log.error(
                "checkout failed: orders unavailable",
                extra={"item": item, "upstream_status": status},
            )
            return 502, {"error": "orders unavailable"}
        if status == 409:
            log.warning("checkout rejected: sold out", extra={"item": item})
            return 409, payload
        log.info(
            "checkout complete",
            extra={"item": item, "order_id": payload.get("order_id")},
        )
        return 200, payload

    def place_order(
        self, _query: dict[str, str], body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        """orders: reserve the stock in inventory, then write the order."""
        item, quantity = body["item"], int(body["qty"])
        status, payload = self.call_downstream(
            "GET", "/reserve", query={"item": item, "qty": quantity}
        )
        if status >= 500:
            log.warning(
                "inventory unavailable", extra={"item": item, "upstream_status": status}
            )
            return 502, {"error": "inventory unavailable"}
        if status == 409:
            return 409, payload
        try:
            with self.db_span("INSERT", "orders") as conn:
                order_id = conn.execute(
                    "INSERT INTO orders (item, quantity) VALUES (?, ?)",
                    (item, quantity),
                ).lastrowid
        except sqlite3.Error as err:
            log.error(
                "order write failed",
                extra={"item": item, "db.operation.name": "INSERT", "error": str(err)},
            )
            return 503, {"error": "order store unavailable"}
        self.telemetry["orders"].add(1, {"shop.item": item})
        log.info("order placed", extra={"item": item, "order_id": order_id})
        return 201, {"order_id": order_id}

    def reserve(
        self, query: dict[str, str], _body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        """inventory: check the stock, then reserve it."""
        item, quantity = query.get("item", ""), int(query.get("qty", "1"))
        try:
            with self.db_span("SELECT", "stock") as conn:
                row = conn.execute(
                    "SELECT quantity - reserved FROM stock WHERE item = ?", (item,)
                ).fetchone()
            available = row[0] if row else 0
            if available < quantity:
                log.warning("out of stock", extra={"item": item, "requested": quantity})
                return 409, {"error": "sold out"}
            with self.db_span("UPDATE", "stock") as conn:
                conn.execute(
                    "UPDATE stock SET reserved = reserved + ? WHERE item = ?",
                    (quantity, item),
                )
        except sqlite3.Error as err:
            log.error("stock query failed", extra={"item": item, "error": str(err)})
            return 503, {"error": "stock store unavailable"}
        return 200, {"item": item, "reserved": quantity}

    def handle(
        self,
        method: str,
        route: str,
        headers: Any,
        query: dict[str, str],
        body: dict[str, Any],
    ) -> tuple[int, dict[str, Any]]:
        """Serve one business request in a SERVER span continuing the caller's trace;
        record RED metrics."""
        from opentelemetry import context, propagate
        from opentelemetry.trace import SpanKind, Status, StatusCode

        handler = {
            "gateway": self.checkout,
            "orders": self.place_order,
            "inventory": self.reserve,
        }[self.name]
        # The caller's context (traceparent, baggage) becomes the current one, so that
        # the SERVER span continues its trace and the baggage reaches the calls below.
        # An empty context starts a new trace.
        token = context.attach(propagate.extract(headers))
        attributes = {"http.request.method": method, "http.route": route}
        started = time.perf_counter()
        self.telemetry["active"].add(1)
        try:
            with self.tracer.start_as_current_span(
                f"{method} {route}", kind=SpanKind.SERVER, attributes=attributes
            ) as span:
                self.faults.apply(f"{method} {route}")
                try:
                    status, payload = handler(query, body)
                except Exception as err:  # a bug, not a fault: answer, trace it
                    span.record_exception(err)
                    log.exception("unhandled error")
                    status, payload = 500, {"error": "internal"}
                span.set_attribute("http.response.status_code", status)
                # On a SERVER span only 5xx is an error; 4xx is the client's fault.
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
        finally:
            context.detach(token)
        labels = {**attributes, "http.response.status_code": status}
        self.telemetry["requests"].add(1, labels)
        self.telemetry["duration"].record(time.perf_counter() - started, labels)
        self.telemetry["active"].add(-1)
        return status, payload


def make_handler(service: Service) -> type[BaseHTTPRequestHandler]:
    """The HTTP request handler class of `service`: business route, /metrics,
    /healthz, /admin/fault."""
    import prometheus_client

    method_route = ROUTES[service.name]

    class Handler(BaseHTTPRequestHandler):
        # No access log: the spans are the access log.
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def reply(
            self, status: int, body: bytes, content_type: str = "application/json"
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def dispatch(self, method: str) -> None:
            path, _, raw_query = self.path.partition("?")
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}") if length else {}
            if path == "/metrics":
                self.reply(
                    200,
                    prometheus_client.generate_latest(),
                    prometheus_client.CONTENT_TYPE_LATEST,
                )
            elif path == "/healthz":
                self.reply(200, b'{"status": "ok"}')
            elif path == "/admin/fault" and method == "POST":
                service.faults.set(body)
                log.warning(
                    "fault switched", extra={"fault": json.dumps(body, sort_keys=True)}
                )
                self.reply(200, json.dumps(body).encode())
            elif (method, path) == method_route:
                query = dict(urllib.parse.parse_qsl(raw_query))
                status, payload = service.handle(
                    method, path, self.headers, query, body
                )
                self.reply(status, json.dumps(payload).encode())
            else:
                self.reply(404, b'{"error": "not found"}')

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.dispatch("GET")

        def do_POST(self) -> None:  # noqa: N802
            self.dispatch("POST")

    return Handler


def serve(
    name: str, port: int, data_dir: Path, downstream_url: str | None, seed: int
) -> None:
    """Run one service until SIGTERM (or until the process that started it goes
    away)."""
    service = Service(name, data_dir, downstream_url, seed)
    # The default listen backlog (5) drops bursts of connections.
    ThreadingHTTPServer.request_queue_size = 128
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(service))
    server.daemon_threads = True

    def stop(*_: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    parent = os.getppid()

    def watch_parent() -> None:  # never outlive the notebook kernel that started us
        while os.getppid() == parent:
            time.sleep(0.5)
        stop()

    threading.Thread(target=watch_parent, daemon=True).start()
    log.info("listening", extra={"port": port, "version": VERSION})
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
        for provider in service.telemetry["providers"]:
            provider.shutdown()  # flushes the last batches of spans and logs


# --------------------------------------------------------------------------------------
# Running the shop from a notebook: processes, faults, load, spans


def spawn(
    command: list[str], log_dir: Path, name: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a process with stdout in `log_dir/name.log` and stderr in
    `log_dir/name.err`, with `env` added to this process's environment."""
    log_dir = Path(log_dir)
    return subprocess.Popen(
        command,
        stdout=(log_dir / f"{name}.log").open("wb"),
        stderr=(log_dir / f"{name}.err").open("wb"),
        stdin=subprocess.DEVNULL,
        env={**os.environ, **env} if env else None,
    )


def stop(process: subprocess.Popen[bytes], timeout_s: float = 10) -> int:
    """Stop one process we started: SIGTERM, then SIGKILL after `timeout_s`; return
    its exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def wait_ready(
    url: str, process: subprocess.Popen[bytes] | None = None, timeout_s: float = 20
) -> float:
    """Poll `url` until it answers 200; return the seconds waited. Raises if the
    process died."""
    import labkit  # imported here: the service processes themselves never need it

    return labkit.wait_ready(url, process, timeout_s=timeout_s)


def start_shop(
    data_dir: Path,
    seed: int = 0,
    ports: dict[str, int] | None = None,
    env: dict[str, dict[str, str]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Start inventory, orders and gateway (on `ports`, else free ones), each with
    the environment variables `env[service]` (and `env["*"]`) added; return
    {service: {process, port, url}}."""
    import labkit  # imported here: the service processes themselves never need it

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    shop: dict[str, dict[str, Any]] = {}
    for offset, name in enumerate(SERVICES):
        port = (ports or {}).get(name) or labkit.free_port()
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            name,
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--seed",
            str(seed + offset),
        ]
        if name in DOWNSTREAM:
            command += ["--downstream", shop[DOWNSTREAM[name]]["url"]]
        shop[name] = {
            "process": spawn(
                command,
                data_dir,
                name,
                {**(env or {}).get("*", {}), **(env or {}).get(name, {})},
            ),
            "port": port,
            "url": f"http://127.0.0.1:{port}",
        }
    try:
        for name, entry in shop.items():
            wait_ready(entry["url"] + "/healthz", entry["process"])
    except Exception:
        stop_shop(shop)
        raise
    return shop


def stop_shop(shop: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Stop every service of the shop (callers first); return their exit codes."""
    return {name: stop(shop[name]["process"]) for name in reversed(list(shop))}


def post_json(url: str, payload: dict[str, Any]) -> dict[str, Any]:
    """POST `payload` as JSON to `url`; return the decoded answer (raises on a non-2xx
    status)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request(
            "POST",
            parts.path,
            body=json.dumps(payload),
            headers={"Content-Type": "application/json"},
        )
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    if response.status >= 300:
        raise RuntimeError(f"POST {url} answered {response.status}: {data[:200]!r}")
    return json.loads(data or b"{}")


def set_fault(
    service_url: str, operation: str | None = None, **spec: float
) -> dict[str, Any]:
    """Switch a fault on for `operation` of the service at `service_url`; with no
    operation, clear all."""
    payload = {"operation": operation, **spec} if operation else {}
    return post_json(service_url + "/admin/fault", payload)


def get(
    url: str, headers: dict[str, str] | None = None, timeout_s: float = 10
) -> tuple[int, bytes]:
    """GET `url`; return (status, body)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
    try:
        target = parts.path + ("?" + parts.query if parts.query else "")
        conn.request("GET", target, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def send_load(
    gateway_url: str,
    n_requests: int,
    rate_per_s: float,
    *,
    concurrency: int = 16,
    seed: int = 0,
    sold_out_share: float = 0.02,
) -> list[dict[str, Any]]:
    """Open-loop load: request i is due at i / rate_per_s; `concurrency` workers send
    them.

    Every request is a checkout of a random item (seeded); `sold_out_share` of them ask
    for the item that is out of stock. Each carries the baggage entry
    `shop.request=<seed>.<i>`, which the services' fault draws are keyed on. Returns
    one dict per request: due and actual start (s), status, and two latencies (ms):
    `latency_ms` from the moment it was sent, `latency_from_due_ms` from the moment it
    was due. Once every worker is busy, requests leave late and only the second
    counts the wait (the first is coordinated omission).
    """
    rng = random.Random(seed)
    available = [i for i in ITEMS if i != SOLD_OUT]
    plan = [
        (
            i / rate_per_s,
            SOLD_OUT if rng.random() < sold_out_share else rng.choice(available),
            rng.randint(1, 3),
        )
        for i in range(n_requests)
    ]
    results: list[dict[str, Any]] = [{} for _ in plan]
    next_index = iter(range(n_requests))
    lock = threading.Lock()
    started = time.perf_counter()

    def worker() -> None:
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            due_s, item, quantity = plan[i]
            delay = started + due_s - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            url = f"{gateway_url}/checkout?item={item}&qty={quantity}"
            sent = time.perf_counter()
            try:
                status, _ = get(url, headers={"baggage": f"{REQUEST_KEY}={seed}.{i}"})
            except OSError:
                status = 599
            done = time.perf_counter()
            results[i] = {
                "request": i,
                "item": item,
                "due_s": due_s,
                "start_s": sent - started,
                "latency_ms": (done - sent) * 1000,
                "latency_from_due_ms": (done - started - due_s) * 1000,
                "status": status,
            }

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for _ in range(concurrency):
            pool.submit(worker)
    return results


def read_spans(folder: Path) -> Any:
    """Every span the services exported so far to `folder`, one row per span (a
    pandas DataFrame with a `duration_ms` column)."""
    import pandas as pd  # imported here: the service processes never need it

    rows = [
        json.loads(line)
        for path in sorted(Path(folder).glob("*-spans.jsonl"))
        for line in path.read_text().splitlines()
        if line
    ]
    # The columns exist even before the first export.
    spans = pd.DataFrame(rows, columns=list(SPAN_COLUMNS))
    spans["duration_ms"] = (spans["end_ns"] - spans["start_ns"]) / 1e6
    return spans


def wait_for_spans(folder: Path, checkouts: int, timeout_s: float = 15) -> Any:
    """Poll the span files in `folder` until the gateway has exported a SERVER span for
    each of `checkouts` requests and one more export period adds nothing; return the
    spans (`read_spans`)."""
    deadline = time.monotonic() + timeout_s
    previous = -1
    while True:
        spans = read_spans(folder)
        served = int(
            (spans["service"].eq("gateway") & spans["kind"].eq("SERVER")).sum()
        )
        if served >= checkouts and len(spans) == previous:
            return spans
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{served} of {checkouts} checkouts exported after {timeout_s} s"
            )
        previous = len(spans)
        time.sleep(0.5)  # longer than two export periods (200 ms) of every service


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run one service of the shop.")
    parser.add_argument("service", choices=SERVICES)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument(
        "--downstream", default=None, help="base URL of the downstream service"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.service in DOWNSTREAM and not args.downstream:
        parser.error(
            f"{args.service} needs --downstream (the URL of {DOWNSTREAM[args.service]})"
        )
    serve(args.service, args.port, args.data_dir, args.downstream, args.seed)


if __name__ == "__main__":
    main()
