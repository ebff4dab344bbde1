"""A model server and a canary traffic router, each a process on 127.0.0.1.

    python canary_lab.py serve --model model.pkl --version v2 --port 8001
    python canary_lab.py route --stable http://127.0.0.1:8001 \
        --canary http://127.0.0.1:8002 --port 8000

Both are the standard library's `http.server` (JSON replies through labkit's
`send_json`), no web framework.

Model server: `POST /predict` {"user": str, "features": {name: value}} ->
{"version", "churn_probability"}; `GET /healthz`; `POST /admin/fault`
{"error_fraction": f, "delay_ms": d} switches a fault on (zeros: off). Whether a
request fails is a hash of its user id and request number, so a run is reproducible
whatever the thread timing.

Router: `POST /predict` goes to the canary when hash(user) falls in the canary's
share (sticky: a user stays on the same version while the weight grows), to the
stable version otherwise. `POST /admin/weight` {"canary_percent": w} sets the split
and starts a new measurement window; `GET /stats` returns the window's per-version
request counts, 5xx errors and latencies. Both processes exit when their parent goes
away.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import pickle
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from labkit import send_json

FEATURES = ("tenure_months", "monthly_charges", "support_calls", "plan", "region")


def unit_hash(*parts: object) -> float:
    """A number in [0, 1) fixed by `parts`: a user always lands in the same bucket."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class JSONHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: one TCP connection per client thread
    # headers and body are two writes: without this, delayed ACKs add ~40 ms
    disable_nagle_algorithm = True

    def log_message(self, *args):  # quiet: the notebook reads /stats, not access logs
        pass

    def read_json(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")


def serve_model(
    model_path: str, version: str, port: int, host: str = "127.0.0.1"
) -> None:
    """Serve one pickled scikit-learn classifier."""
    with open(model_path, "rb") as f:
        model = pickle.load(f)
    fault = {"error_fraction": 0.0, "delay_ms": 0.0}
    counter = {"n": 0}
    lock = threading.Lock()

    class Handler(JSONHandler):
        def do_GET(self):
            if self.path == "/healthz":
                send_json(self, 200, {"status": "ok", "version": version})
            else:
                send_json(self, 404, {"error": "not found"})

        def do_POST(self):
            payload = self.read_json()
            if self.path == "/admin/fault":
                fault.update({k: float(payload.get(k, 0.0)) for k in fault})
                send_json(self, 200, dict(fault))
                return
            if self.path != "/predict":
                send_json(self, 404, {"error": "not found"})
                return
            with lock:
                counter["n"] += 1
                request_number = counter["n"]
            if fault["delay_ms"]:
                time.sleep(fault["delay_ms"] / 1000)
            if (
                unit_hash("fault", payload.get("user"), request_number)
                < fault["error_fraction"]
            ):
                send_json(self, 500, {"error": "injected fault", "version": version})
                return
            try:
                row = [[float(payload["features"][name]) for name in FEATURES]]
            except (KeyError, TypeError, ValueError) as err:
                send_json(self, 400, {"error": f"bad features: {err}"})
                return
            probability = float(model.predict_proba(row)[0, 1])
            send_json(self, 200, {"version": version, "churn_probability": probability})

    run(Handler, port, host)


def serve_router(stable: str, canary: str, port: int) -> None:
    """Split /predict between two upstreams by a sticky hash of the user id.

    Counts what each upstream answered, per measurement window.
    """
    upstreams = {
        "stable": urllib.parse.urlsplit(stable),
        "canary": urllib.parse.urlsplit(canary),
    }
    state = {"canary_percent": 0.0, "window": 0}
    stats: dict[str, dict] = {}
    lock = threading.Lock()
    local = threading.local()

    def new_window() -> None:
        stats.clear()
        stats.update(
            {name: {"requests": 0, "errors": 0, "latency_ms": []} for name in upstreams}
        )

    new_window()

    def forward(name: str, body: bytes) -> tuple[int, bytes]:
        conns = local.__dict__.setdefault("conns", {})
        # a kept-alive connection that the upstream closed is retried once
        for attempt in (1, 2):
            conn = conns.get(name)
            if conn is None:
                parts = upstreams[name]
                conn = conns[name] = http.client.HTTPConnection(
                    parts.hostname, parts.port, timeout=60
                )
            try:
                conn.request(
                    "POST", "/predict", body, {"Content-Type": "application/json"}
                )
                response = conn.getresponse()
                return response.status, response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conns.pop(name, None)
                if attempt == 2:
                    error = {"error": f"{name} upstream unreachable"}
                    return 502, json.dumps(error).encode()
        raise AssertionError("unreachable")

    class Handler(JSONHandler):
        def do_GET(self):
            if self.path == "/healthz":
                send_json(self, 200, {"status": "ok"})
            elif self.path == "/stats":
                with lock:
                    send_json(
                        self,
                        200,
                        {
                            "canary_percent": state["canary_percent"],
                            "window": state["window"],
                            "upstreams": json.loads(json.dumps(stats)),
                        },
                    )
            else:
                send_json(self, 404, {"error": "not found"})

        def do_POST(self):
            if self.path == "/admin/weight":
                percent = float(self.read_json()["canary_percent"])
                if not 0 <= percent <= 100:
                    send_json(
                        self, 400, {"error": "canary_percent must be in [0, 100]"}
                    )
                    return
                with lock:
                    state["canary_percent"] = percent
                    state["window"] += 1
                    new_window()
                send_json(self, 200, dict(state))
                return
            if self.path != "/predict":
                send_json(self, 404, {"error": "not found"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            user = json.loads(body).get("user", "")
            name = (
                "canary"
                if unit_hash("split", user) * 100 < state["canary_percent"]
                else "stable"
            )
            started = time.perf_counter()
            status, answer = forward(name, body)
            latency_ms = (time.perf_counter() - started) * 1000
            with lock:
                stats[name]["requests"] += 1
                stats[name]["errors"] += int(status >= 500)
                stats[name]["latency_ms"].append(round(latency_ms, 3))
            # forward the upstream's bytes as they came (no send_json: nothing to
            # encode), naming the version that answered
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.send_header("X-Upstream", name)
            self.end_headers()
            self.wfile.write(answer)

    run(Handler, port)


def run(
    handler: type[BaseHTTPRequestHandler], port: int, host: str = "127.0.0.1"
) -> None:
    """Serve on `host` until the parent process goes away.

    `host` is 127.0.0.1 unless a container needs 0.0.0.0.
    """
    parent = os.getppid()

    def watch_parent() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch_parent, daemon=True).start()
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("--model", required=True)
    serve.add_argument("--version", required=True)
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument(
        "--host", default="127.0.0.1", help="0.0.0.0 in a container, behind a Service"
    )
    route = sub.add_parser("route")
    route.add_argument("--stable", required=True)
    route.add_argument("--canary", required=True)
    route.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if args.command == "serve":
        serve_model(args.model, args.version, args.port, args.host)
    else:
        serve_router(args.stable, args.canary, args.port)


if __name__ == "__main__":
    main()
