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


# ---------------------------------------------------------------------------
# Plumbing of the ml-cicd-ab-canary chapter (parameters, process start, load
# generator, plots, workflow and mesh checks): the technique stays on its page.

SIZES = {
    "smoke": {"n_train": 8000, "n_simulations": 4000, "requests_per_analysis": 25},
    "laptop": {"n_train": 20000, "n_simulations": 20000, "requests_per_analysis": 50},
    "cluster": {"n_train": 50000, "n_simulations": 50000, "requests_per_analysis": 100},
}
_FRACTIONS = (
    "min_auc",
    "min_slice_auc",
    "ab_baseline_rate",
    "ab_true_lift",
    "ab_alpha",
    "ab_power",
    "max_error_rate",
    "fault_error_fraction",
)


def resolve_parameters(profile: str, given: dict) -> dict:
    """The chapter's parameters, checked; a size left at None takes the profile's."""
    import labkit

    profile = labkit.check_profile(profile)
    sizes = labkit.pick(profile, SIZES)
    out = {"profile": profile}
    for name, maximum in (
        ("n_train", 500_000),
        ("n_simulations", 1_000_000),
        ("requests_per_analysis", 5000),
    ):
        value = given[name] if given.get(name) is not None else sizes[name]
        out[name] = labkit.check_positive(name, value, maximum=maximum)
    for name, maximum in (
        ("n_batch", 100_000),
        ("ab_looks", 20),
        ("seed", None),
        ("min_canary_requests", 10_000),
        ("max_analyses_per_step", 1000),
    ):
        out[name] = labkit.check_positive(name, given[name], maximum=maximum)
    for name in _FRACTIONS:
        out[name] = labkit.check_positive(name, given[name], integer=False, maximum=1)
    out["psi_threshold"] = labkit.check_positive(
        "psi_threshold", given["psi_threshold"], integer=False, maximum=10
    )
    out["max_p95_latency_ms"] = labkit.check_positive(
        "max_p95_latency_ms", given["max_p95_latency_ms"], integer=False, maximum=10_000
    )
    steps = tuple(given["canary_steps"])
    if not (steps and steps[0] > 0 and steps[-1] == 100) or any(
        a >= b for a, b in zip(steps, steps[1:])
    ):
        raise ValueError(
            f"canary_steps={steps!r} is not valid; use increasing percentages "
            "ending at 100, e.g. (5, 10, 50, 100)"
        )
    out["canary_steps"] = steps
    if out["ab_baseline_rate"] + out["ab_true_lift"] >= 1:
        raise ValueError(
            "ab_baseline_rate + ab_true_lift = "
            f"{out['ab_baseline_rate'] + out['ab_true_lift']} is not valid; "
            "it must be below 1"
        )
    return out


def start_lab(models: dict, run_dir, script: str) -> tuple[dict, dict]:
    """Start a model server per role ({role: (model file, version)}) and the router
    in front of the stable and canary ones, in parallel; wait until all answer.
    Returns (processes, urls)."""
    import sys

    import labkit

    names = [*models, "router"]
    urls = {name: f"http://127.0.0.1:{labkit.free_port()}" for name in names}
    servers = {}
    for role, (model_file, version) in models.items():
        port = urls[role].rsplit(":", 1)[1]
        servers[role] = labkit.start_server(
            [sys.executable, script, "serve", "--model", str(model_file)]
            + ["--version", version, "--port", port],
            ready_url=None,
            log_path=run_dir / f"{role}.log",
            cwd=run_dir,
        )
    servers["router"] = labkit.start_server(
        [sys.executable, script, "route", "--stable", urls["stable"]]
        + ["--canary", urls["canary"], "--port", urls["router"].rsplit(":", 1)[1]],
        ready_url=None,
        log_path=run_dir / "router.log",
        cwd=run_dir,
    )
    for name, proc in servers.items():
        labkit.wait_ready(f"{urls[name]}/healthz", proc, timeout_s=60)
    return servers, urls


def send_requests(session, url: str, rng, n: int, users, rows, weight) -> list[dict]:
    """The load generator: `n` sequential requests (so that the fault pattern,
    a hash of user and request number, is reproducible) from users drawn at random;
    one row per request."""
    out = []
    for _ in range(n):
        answer = session.post(
            url + "/predict",
            timeout=60,
            json={
                "user": users[rng.integers(len(users))],
                "features": rows[rng.integers(len(rows))],
            },
        )
        out.append(
            {
                "weight": weight,
                "upstream": answer.headers.get("X-Upstream"),
                "status": answer.status_code,
            }
        )
    return out


def plot_rollouts(frames: dict, max_error_rate: float, n_steps_max: int) -> None:
    """Canary weight, rolling canary error rate and failed requests of each
    rollout ({title: per-request frame}), one panel each."""
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    fig, axes = plt.subplots(len(frames), 1, figsize=(7.5, 5.2), sharex=True)
    for ax, (title, frame) in zip(axes, frames.items()):
        index = np.arange(len(frame))
        canary_hit = frame["upstream"].eq("canary").to_numpy()
        failed = (frame["status"] >= 500).to_numpy()
        ax.step(
            index, frame["weight"], where="post", color="C0", label="canary weight %"
        )
        rolling = pd.Series(failed[canary_hit]).rolling(20, min_periods=1).mean()
        ax.plot(
            index[canary_hit],
            rolling * 100,
            color="C3",
            lw=1.2,
            label="canary error rate %, last 20 canary requests",
        )
        ax.plot(
            index[failed],
            np.full(failed.sum(), -4),
            "|",
            color="C3",
            ms=8,
            label="a failed request",
        )
        ax.axhline(100 * max_error_rate, color="C3", ls=":", lw=1)
        if "rolled back" in title:
            ax.axvline(len(frame), color="k", ls="--", lw=1)
            ax.annotate(
                "rollback: weight 0",
                (len(frame), 60),
                xytext=(8, 0),
                textcoords="offset points",
                fontsize=8,
            )
        ax.set_ylim(-8, 105)
        ax.set_ylabel("%")
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=7, loc="upper right")
    axes[-1].set_xlabel("request number")
    axes[-1].set_xlim(0, n_steps_max)
    fig.tight_layout()
    plt.show()


def plot_sequential(experiment: dict, design, bounds, z_fixed: float) -> None:
    """One group-sequential experiment: its z path, the looks and the boundaries."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    until_stop = experiment["n"] <= experiment["users_per_arm"]
    ax.plot(
        experiment["n"][until_stop],
        experiment["z"][until_stop],
        color="0.5",
        lw=1,
        label="z after every 200 users per arm",
    )
    stop = experiment["stop_look"]
    ax.plot(
        experiment["look_n"][:stop],
        experiment["z_looks"][:stop],
        "o",
        color="C0",
        label="z at the planned looks",
    )
    edges, levels = np.r_[0, design["users per arm"]], np.r_[bounds[0], bounds]
    ax.step(edges, levels, where="pre", color="C3", label="O'Brien-Fleming boundary")
    ax.step(edges, -levels, where="pre", color="C3")
    ax.axhline(
        z_fixed, color="C1", ls="--", lw=1, label="fixed-test 1.96 (not for peeking)"
    )
    ax.axvline(experiment["users_per_arm"], color="C0", ls=":", lw=1)
    ax.set_xlabel("users per arm")
    ax.set_ylabel("z (challenger - champion)")
    ax.set_title(f"Sequential A/B test: stopped at look {stop}")
    ax.set_ylim(-5, 6.5)
    ax.legend(loc="upper left", fontsize=8)
    plt.show()


def plot_error_rates(rates, targets: dict, n_sims: int) -> None:
    """Simulated false-positive rate and power of each procedure, ±3 standard
    errors, against the design's ({column: (target, se)})."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(8.5, 3.2))
    for ax, (column, (target, se)) in zip(axes, targets.items()):
        values = rates[column]
        ax.bar(
            values.index,
            values,
            yerr=[np.sqrt(v * (1 - v) / n_sims) * 3 for v in values],
            color=["C0", "C3", "C2"],
            capsize=4,
        )
        ax.axhline(target, color="k", ls="--", lw=1)
        ax.axhspan(target - 3 * se, target + 3 * se, color="0.8", alpha=0.6)
        ax.set_title(
            f"{column}\n(dashed: design {target:.2f}, band ±3 SE; bars ±3 SE)",
            fontsize=9,
        )
        ax.tick_params(axis="x", labelsize=8)
    plt.show()


def workflow_problems(workflow: dict) -> list[str]:
    """Structural checks of a GitHub Actions workflow (empty: it passes), plus two
    for a job that deploys with kubectl: it must get cluster credentials from a
    secret or a set-context action, and it must deploy an image tagged per commit."""
    import re

    problems = []
    # YAML 1.1 (PyYAML) reads the key `on` as the boolean True
    if not workflow.get("on", workflow.get(True)):
        problems.append("no `on:` triggers")
    jobs = workflow.get("jobs") or {}
    if not jobs:
        problems.append("no jobs")
    if "permissions" not in workflow:
        problems.append(
            "no top-level `permissions:` (the token would get the repository default)"
        )
    for name, job in jobs.items():
        if "runs-on" not in job:
            problems.append(f"job {name!r} has no runs-on")
        needs = job.get("needs", [])
        for needed in [needs] if isinstance(needs, str) else needs:
            if needed not in jobs:
                problems.append(f"job {name!r} needs unknown job {needed!r}")
        steps = job.get("steps") or []
        if not steps:
            problems.append(f"job {name!r} has no steps")
        for i, step in enumerate(steps):
            if ("uses" in step) == ("run" in step):
                problems.append(f"job {name!r} step {i}: needs exactly one of uses/run")
            uses = step.get("uses", "")
            if (
                uses
                and not uses.startswith("./")
                and not re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", uses)
            ):
                problems.append(
                    f"job {name!r} step {i}: {uses!r} is not pinned to a commit SHA"
                )
        runs = " ".join(str(s.get("run", "")) for s in steps)
        if "kubectl" not in runs:
            continue
        text = str(job)
        has_credentials = any(
            "k8s-set-context" in s.get("uses", "")
            or ("KUBECONFIG" in str(s) and "secrets." in str(s))
            for s in steps
        )
        if not has_credentials:
            problems.append(
                f"job {name!r} runs kubectl without cluster credentials "
                "(a KUBECONFIG from a secret, or an OIDC set-context action)"
            )
        if "github.sha" not in text:
            problems.append(
                f"job {name!r} deploys without setting a per-commit image "
                "(the manifest's fixed tag ships no new model)"
            )
    return problems


def canary_analysis_problems(docs: list[dict]) -> list[str]:
    """A Rollout with traffic routing must give the canary its own Service, and each
    analysis query must select that Service (by name, or by an argument that carries
    it): otherwise it measures the mix of stable and canary traffic."""
    problems = []
    templates = {
        d["metadata"]["name"]: d for d in docs if d["kind"] == "AnalysisTemplate"
    }
    for doc in (d for d in docs if d["kind"] == "Rollout"):
        where = f"Rollout/{doc['metadata']['name']}"
        canary = doc["spec"]["strategy"].get("canary") or {}
        service = canary.get("canaryService")
        if "trafficRouting" in canary and not (service and canary.get("stableService")):
            problems.append(
                f"{where}: traffic routing without canaryService/stableService"
            )
        for step in canary.get("steps") or []:
            analysis = step.get("analysis")
            if not analysis:
                continue
            args = {
                a["name"]: str(a.get("value", "")) for a in analysis.get("args", [])
            }
            carriers = [
                f"{{{{args.{k}}}}}" for k, v in args.items() if service and service in v
            ]
            for ref in analysis["templates"]:
                for metric in templates[ref["templateName"]]["spec"]["metrics"]:
                    query = metric["provider"].get("prometheus", {}).get("query", "")
                    if not (service and service in query) and not any(
                        c in query for c in carriers
                    ):
                        problem = (
                            f"{where}: metric {metric['name']!r} of "
                            f"{ref['templateName']!r} does not select the canary's "
                            "own traffic"
                        )
                        if problem not in problems:
                            problems.append(problem)
    return problems


def istio_injected(template_spec: dict, *, cni: bool) -> dict:
    """The pod spec as Istio's sidecar injector returns it (the parts Pod Security
    judges): with `cni`, the istio-validation init container; without, istio-init
    with NET_ADMIN and NET_RAW as root. Both add the istio-proxy sidecar (uid
    1337)."""
    import copy

    spec = copy.deepcopy(template_spec)
    proxy_image = "docker.io/istio/proxyv2:1.27.0"
    unprivileged = {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": 1337,
        "runAsGroup": 1337,
        "capabilities": {"drop": ["ALL"]},
    }
    if cni:  # the node's CNI plugin set up iptables; this only checks it did
        init = {
            "name": "istio-validation",
            "image": proxy_image,
            "args": ["istio-iptables", "--run-validation", "--skip-rule-apply"],
            "securityContext": unprivileged,
        }
    else:  # the pod writes its own iptables rules
        init = {
            "name": "istio-init",
            "image": proxy_image,
            "args": ["istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337"],
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "privileged": False,
                "readOnlyRootFilesystem": False,
                "runAsNonRoot": False,
                "runAsUser": 0,
                "runAsGroup": 0,
                "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            },
        }
    spec["initContainers"] = [init, *(spec.get("initContainers") or [])]
    spec["containers"] = [
        *spec["containers"],
        {
            "name": "istio-proxy",
            "image": proxy_image,
            "args": ["proxy", "sidecar"],
            "ports": [{"name": "http-envoy-prom", "containerPort": 15090}],
            "securityContext": unprivileged,
        },
    ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "injected"},
        "spec": spec,
    }


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


def server_dry_run(manifests: list[dict], profile: str, kubeconfig: str | None) -> str:
    """With profile=cluster and a kubeconfig, send the manifests to the API server as a
    server-side dry run (nothing is created); custom resources whose CRD is missing
    are reported, not raised. Says what was checked."""
    if profile != "cluster":
        return (
            f"profile={profile}: the manifests were validated offline; "
            "apply them with kubectl"
        )
    if not kubeconfig:
        return (
            "no Kubernetes config: the manifests were validated offline "
            "against the 1.30 schema"
        )
    from kubernetes import client as k8s
    from kubernetes import config as kube_config
    from kubernetes import utils as kube_utils

    if kubeconfig == "in-cluster":
        kube_config.load_incluster_config()
    else:
        kube_config.load_kube_config(config_file=kubeconfig)
    api = k8s.ApiClient()
    custom = k8s.CustomObjectsApi(api)
    refused = []
    for manifest in manifests:
        if "." not in manifest["apiVersion"].split("/")[0]:  # v1, apps/v1, ...
            kube_utils.create_from_dict(api, manifest, dry_run="All")
            continue
        group, version = manifest["apiVersion"].split("/")
        try:
            custom.create_namespaced_custom_object(
                group,
                version,
                manifest["metadata"]["namespace"],
                manifest["kind"].lower() + "s",
                manifest,
                dry_run="All",
            )
        except k8s.ApiException as err:  # Argo Rollouts or Istio missing: no CRDs
            refused.append(f"{manifest['kind']} ({err.status} {err.reason})")
    return "server-side dry run done (nothing created)" + (
        f"; refused: {', '.join(refused)}" if refused else ""
    )
