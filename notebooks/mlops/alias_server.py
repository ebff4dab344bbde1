"""A small model server that follows a registry alias.

    python alias_server.py --model NAME --alias champion --port PORT

On every `POST /predict` it asks the tracking server which version the alias points
to now (`MlflowClient.get_model_version_by_alias`, one REST call) and answers with
that version, loading it once (`models:/NAME/VERSION`) and keeping it in memory.
Moving the alias is therefore all a deployment or a rollback needs: the next request
is served by the new version, with no restart and no reload call. Resolving first
and loading by version (rather than loading `models:/NAME@ALIAS`) makes each answer
name exactly the version that produced it, even if the alias moves while a model
loads.

Routes: `GET /health` (200 once imports are done), `POST /predict` with
`{"inputs": [[...], ...]}`, answering `{"version": "2", "predictions": [...]}`.
Binds to 127.0.0.1. The tracking server comes from `MLFLOW_TRACKING_URI`. If it
cannot be reached, the version already loaded keeps serving (and the answer says
`"stale": true`).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import mlflow
import mlflow.sklearn  # noqa: F401  (imported now, not on the first request)
import numpy as np
import skops.io  # noqa: F401  (the flavour's loader, likewise)
from mlflow import MlflowClient

from labkit import send_json

_lock = threading.Lock()
_models: dict[str, object] = {}  # version -> loaded pyfunc model
_state = {"version": None}


def current_model(
    client: MlflowClient, name: str, alias: str
) -> tuple[str, object, bool]:
    """The alias's version now, its loaded model, and whether the answer is stale."""
    stale = False
    try:
        version = client.get_model_version_by_alias(name, alias).version
    except Exception:  # tracking server down: keep serving what we have
        if _state["version"] is None:
            raise
        version, stale = _state["version"], True
    with _lock:
        if version not in _models:
            _models[version] = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
        _state["version"] = version
        return version, _models[version], stale


def make_handler(
    client: MlflowClient, name: str, alias: str
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/health":
                send_json(self, 200, {"status": "ok", "model": name, "alias": alias})
            else:
                send_json(self, 404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/predict":
                send_json(self, 404, {"error": "not found"})
                return
            try:
                payload = json.loads(
                    self.rfile.read(int(self.headers.get("Content-Length", 0)))
                )
                version, model, stale = current_model(client, name, alias)
                predictions = model.predict(np.asarray(payload["inputs"], dtype=float))
                send_json(
                    self,
                    200,
                    {
                        "version": version,
                        "stale": stale,
                        "predictions": np.asarray(predictions).tolist(),
                    },
                )
            except Exception as err:  # answer it rather than drop the connection
                send_json(self, 500, {"error": f"{type(err).__name__}: {err}"})

        def log_message(self, format: str, *args: object) -> None:
            pass  # quiet: one line per request is noise

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="registered model name")
    parser.add_argument("--alias", default="champion", help="alias to follow")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        parser.error("set MLFLOW_TRACKING_URI to the tracking server")
    client = MlflowClient()
    server = ThreadingHTTPServer(
        ("127.0.0.1", args.port), make_handler(client, args.model, args.alias)
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
