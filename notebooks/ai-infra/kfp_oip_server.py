"""Serve one scikit-learn model over KServe's Open Inference Protocol (v2 REST).

Run: python kfp_oip_server.py --model-path model.joblib --model-name NAME
         [--model-version V] [--host HOST] [--port PORT]

Routes (https://kserve.github.io/website/docs/concepts/architecture/data-plane/v2-protocol):
  GET  /v2/health/live, /v2/health/ready   server liveness and readiness
  GET  /v2                                 server metadata
  GET  /v2/models/NAME[/versions/V]        model metadata (inputs, outputs, platform)
  GET  /v2/models/NAME[/versions/V]/ready  model readiness
  POST /v2/models/NAME[/versions/V]/infer  inference: one FP32/FP64 input tensor,
                                           shape [N, features]

The model file is a joblib pickle written by the pipeline's register step. Unpickling
runs code: load only files your own pipeline wrote (KServe's sklearn server has the same
caveat). Replies are written with `labkit.send_json`, so the serving image needs the
book's `labkit` package beside numpy, scikit-learn and joblib.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import joblib
import numpy as np

from labkit.servers import send_json

DATATYPES = {
    "FP32": np.float32,
    "FP64": np.float64,
    "INT32": np.int32,
    "INT64": np.int64,
}
MODEL_ROUTE = re.compile(
    r"^/v2/models/(?P<name>[^/]+)"
    r"(?:/versions/(?P<version>[^/]+))?"
    r"(?P<rest>/ready|/infer)?$"
)


def model_metadata(name: str, version: str, model) -> dict:
    """The v2 model metadata: what the model accepts and returns."""
    features = int(model.n_features_in_)
    return {
        "name": name,
        "versions": [version],
        "platform": "sklearn",
        "inputs": [{"name": "features", "datatype": "FP64", "shape": [-1, features]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probability", "datatype": "FP64", "shape": [-1]},
        ],
    }


def infer(model, request: dict, name: str, version: str) -> dict:
    """Run one v2 inference request; raise ValueError with a message a client can
    act on."""
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise ValueError("'inputs' must be a list holding one tensor")
    tensor = inputs[0]
    datatype = tensor.get("datatype")
    if datatype not in DATATYPES:
        raise ValueError(
            f"datatype {datatype!r} is not supported; use one of {sorted(DATATYPES)}"
        )
    shape = tensor.get("shape")
    features = int(model.n_features_in_)
    if not (isinstance(shape, list) and len(shape) == 2 and shape[1] == features):
        raise ValueError(f"shape {shape!r} is not valid; it must be [N, {features}]")
    x = np.asarray(tensor.get("data"), dtype=DATATYPES[datatype]).reshape(shape)
    proba = model.predict_proba(x)[:, 1]
    labels = model.predict(x)
    response = {
        "model_name": name,
        "model_version": version,
        "outputs": [
            {
                "name": "label",
                "datatype": "INT64",
                "shape": [len(labels)],
                "data": [int(v) for v in labels],
            },
            {
                "name": "probability",
                "datatype": "FP64",
                "shape": [len(proba)],
                "data": [float(v) for v in proba],
            },
        ],
    }
    if "id" in request:
        response["id"] = request["id"]
    return response


def make_handler(model, name: str, version: str):
    """The request handler class bound to one loaded model."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Small JSON replies: do not wait for the client's delayed ACK.
        disable_nagle_algorithm = True
        # Headers and body leave in one write (flushed after each request).
        wbufsize = -1

        def log_message(self, fmt, *args):
            # One line per request on stderr, no reverse DNS.
            sys.stderr.write(
                f"{self.command} {self.path} {args[1] if len(args) > 1 else ''}\n"
            )

        def route(self):
            match = MODEL_ROUTE.match(self.path)
            if match is None:
                return None, None
            if match["name"] != name or match["version"] not in (None, version):
                return "unknown", None
            return "model", match["rest"]

        def do_GET(self):
            if self.path in ("/v2/health/live", "/v2/health/ready"):
                return send_json(
                    self,
                    200,
                    {"live": True} if self.path.endswith("live") else {"ready": True},
                )
            if self.path == "/v2":
                return send_json(
                    self,
                    200,
                    {"name": "kfp-oip-server", "version": "1", "extensions": []},
                )
            kind, rest = self.route()
            if kind == "model" and rest is None:
                return send_json(self, 200, model_metadata(name, version, model))
            if kind == "model" and rest == "/ready":
                return send_json(self, 200, {"name": name, "ready": True})
            if kind == "unknown":
                asked = self.path.split("/")[3]
                return send_json(
                    self,
                    404,
                    {"error": f"model {asked!r} is not served here; try {name!r}"},
                )
            return send_json(self, 404, {"error": f"no route {self.path}"})

        def do_POST(self):
            kind, rest = self.route()
            if kind != "model" or rest != "/infer":
                return send_json(self, 404, {"error": f"no route POST {self.path}"})
            length = int(self.headers.get("Content-Length", 0))
            try:
                request = json.loads(self.rfile.read(length) or b"{}")
                return send_json(self, 200, infer(model, request, name, version))
            except (ValueError, TypeError) as err:
                return send_json(self, 400, {"error": str(err)})

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--model-name", required=True)
    parser.add_argument("--model-version", default="1")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    model = joblib.load(args.model_path)
    server = ThreadingHTTPServer(
        (args.host, args.port), make_handler(model, args.model_name, args.model_version)
    )
    # SIGTERM (kubelet, or stop_server) ends the serve loop cleanly: exit code 0.
    signal.signal(
        signal.SIGTERM,
        lambda *_: threading.Thread(target=server.shutdown, daemon=True).start(),
    )
    sys.stderr.write(
        f"serving {args.model_name} v{args.model_version} on {args.host}:{args.port}\n"
    )
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
