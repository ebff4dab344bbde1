"""Plumbing of the Karmada chapter: parameter checks, the member clusters' replica
servers on 127.0.0.x, the client-side load balancer, the load generator, the examples
from Karmada's tests and docs, and the plots. Karmada's division algorithm, the
failover controllers and the cost model stay in the notebook: they are what the chapter
teaches.

Run as a script (`python karmada_kit.py serve HOST PORT CLUSTER NAME`) it is one
replica: an HTTP server that answers `GET /` with its cluster and name, and
`GET /readyz`.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# Where the algorithm was read: karmada-io/karmada, tag v1.19.0-rc.0 (13 Aug 2026);
# the files below are the same at master f8fdd02 (21 Aug 2026).
KARMADA_RELEASE = "v1.19.0-rc.0"
KARMADA_SOURCES = {
    "webster": "pkg/util/helper/webstermethod.go",
    "dispenser": "pkg/util/helper/binding.go",
    "assign": "pkg/scheduler/core/assignment.go",
    "divide": "pkg/scheduler/core/division_algorithm.go",
    "spread": "pkg/scheduler/core/spreadconstraint/select_clusters_by_cluster.go",
    "taints": "pkg/controllers/cluster/taint_manager.go",
}

SIZES = {
    "smoke": {"replicas": 6, "load_s": 3.5, "kill_at_s": 0.5, "n_hours": 2000},
    "laptop": {"replicas": 9, "load_s": 5.0, "kill_at_s": 1.0, "n_hours": 20000},
    "cluster": {"replicas": 12, "load_s": 8.0, "kill_at_s": 2.0, "n_hours": 100000},
}


def resolve_parameters(profile: str, given: dict) -> dict:
    """The chapter's parameters, checked; a size left at None takes the profile's."""
    import labkit

    profile = labkit.check_profile(profile)
    sizes = labkit.pick(profile, SIZES)
    out = {"profile": profile}
    out["replicas"] = labkit.check_positive(
        "replicas", given.get("replicas") or sizes["replicas"], maximum=30
    )
    for name, maximum in (("load_s", 60.0), ("kill_at_s", 30.0)):
        value = given.get(name) or sizes[name]
        out[name] = labkit.check_positive(name, value, integer=False, maximum=maximum)
    if out["kill_at_s"] >= out["load_s"] / 2:
        raise ValueError(
            f"kill_at_s={out['kill_at_s']!r} is not valid; it must be under half of "
            f"load_s={out['load_s']!r}, so that the failover fits in the run"
        )
    out["n_hours"] = labkit.check_positive(
        "n_hours", given.get("n_hours") or sizes["n_hours"], maximum=10_000_000
    )
    out["request_rate"] = labkit.check_positive(
        "request_rate", given["request_rate"], maximum=1000
    )
    for name, maximum in (("time_scale", 1.0), ("max_failed_pct", 100.0)):
        out[name] = labkit.check_positive(
            name, given[name], integer=False, maximum=maximum
        )
    out["seed"] = labkit.check_positive("seed", given["seed"])
    return out


# --------------------------------------------------------------------------- examples
# Expected results written in Karmada's own tests and docs, to check the notebook's
# division against: (source, call, arguments, expected {cluster: replicas}).
def karmada_examples() -> list[dict]:
    """Cases from Karmada's tests (v1.19.0-rc.0) and documentation."""
    m1, m2, m3, m4 = "member1", "member2", "member3", "member4"
    # {name: (score, available replicas)} of select_clusters_test.go
    spread_clusters = {m4: (60, 50), m2: (40, 60), m3: (30, 80), m1: (20, 40)}
    return [
        {
            "source": "website docs resource-propagating.md (dynamicWeight)",
            "kind": "dynamic",
            "replicas": 12,
            "available": {"A": 6, "B": 12, "C": 18},
            "previous": {},
            "expected": {"A": 2, "B": 4, "C": 6},
        },
        {
            "source": "assignment.go comment: 9 replicas, weight 1:2",
            "kind": "static",
            "replicas": 9,
            "weights": {"A": 1, "B": 2},
            "expected": {"A": 3, "B": 6},
        },
        {
            "source": "assignment.go comment: 9 replicas, weight 1:3",
            "kind": "static",
            "replicas": 9,
            "weights": {"A": 1, "B": 3},
            "expected": {"A": 2, "B": 7},
        },
        *[
            {
                "source": f"assignment_test.go: replica {n}, weight 3:2:1",
                "kind": "static",
                "replicas": n,
                "weights": {m1: 3, m2: 2, m3: 1},
                "expected": want,
            }
            for n, want in (
                (12, {m1: 6, m2: 4, m3: 2}),
                (13, {m1: 7, m2: 4, m3: 2}),
                (14, {m1: 7, m2: 5, m3: 2}),
            )
        ],
        {
            "source": "assignment_test.go: replica 12, default weight",
            "kind": "static",
            "replicas": 12,
            "weights": {},
            "clusters": [m1, m2, m3],
            "expected": {m1: 4, m2: 4, m3: 4},
        },
        {
            "source": "assignment_test.go: replica 12 -> 6, dynamic 1:1:1",
            "kind": "dynamic",
            "replicas": 6,
            "available": {m1: 1, m2: 1, m3: 1},
            "previous": {m1: 2, m2: 4, m3: 6},
            "expected": {m1: 1, m2: 2, m3: 3},
        },
        {
            "source": "assignment_test.go: replica 12 -> 24, dynamic 10:10:10",
            "kind": "dynamic",
            "replicas": 24,
            "available": {m1: 10, m2: 10, m3: 10},
            "previous": {m1: 2, m2: 4, m3: 6},
            "expected": {m1: 6, m2: 8, m3: 10},
        },
        {
            "source": "assignment_test.go: replica 12 -> 6, aggregated 1:1:1",
            "kind": "aggregated",
            "replicas": 6,
            "available": {m1: 1, m2: 1, m3: 1},
            "previous": {m1: 4, m2: 8},
            "expected": {m2: 6},
        },
        {
            "source": "assignment_test.go: replica 12 -> 24, aggregated 4:6:8",
            "kind": "aggregated",
            "replicas": 24,
            "available": {m1: 4, m2: 6, m3: 8},
            "previous": {m1: 4, m2: 8},
            "expected": {m1: 7, m2: 12, m3: 5},
        },
        {
            "source": "assignment_test.go: replica 12 -> 24, aggregated 6:6:20",
            "kind": "aggregated",
            "replicas": 24,
            "available": {m1: 6, m2: 6, m3: 20},
            "previous": {m1: 4, m2: 8},
            "expected": {m1: 10, m2: 14},
        },
        {
            "source": "assignment_test.go: 12 -> 24, aggregated, member2 gone",
            "kind": "aggregated",
            "replicas": 24,
            "available": {m1: 4, m3: 8, m4: 12},
            "previous": {m1: 4, m2: 8},
            "expected": {m1: 7, m3: 7, m4: 10},
        },
        {
            "source": "division_algorithm_test.go: aggregated 6:6:6",
            "kind": "aggregated",
            "replicas": 12,
            "available": {m1: 6, m2: 6, m3: 6},
            "previous": {},
            "expected": {m1: 6, m2: 6},
        },
        *[
            {
                "source": f"select_clusters_test.go: {what}",
                "kind": "spread",
                "clusters": spread_clusters,
                "replicas": n,
                "groups": groups,
                "capacity": capacity,
                "expected": want,
            }
            for what, n, groups, capacity, want in (
                ("by score, 2 groups, Divided 120", 120, (1, 2), True, [m4, m3]),
                ("by score, Duplicated", 120, (1, 2), False, [m4, m2]),
                (
                    "insufficient resources",
                    200,
                    (1, 2),
                    True,
                    "error: no enough resource when selecting 2 clusters",
                ),
                (
                    "minGroups 7",
                    30,
                    (7, 7),
                    False,
                    "error: the number of feasible clusters is less than "
                    "spreadConstraint.MinGroups",
                ),
            )
        ],
        {
            "source": "webstermethod_test.go: ExampleAllocateWebsterSeats",
            "kind": "webster",
            "replicas": 4,
            "weights": {"Alpha": 1200, "Beta": 900, "Gamma": 400},
            "expected": {"Alpha": 2, "Beta": 1, "Gamma": 1},
        },
    ]


def check_examples(static_weighted, by_available, spread_by_cluster, unschedulable):
    """Run every case of `karmada_examples` through the notebook's functions; a
    DataFrame of source, result and whether it is the expected one."""
    import pandas as pd

    rows = []
    for case in karmada_examples():
        kind = case["kind"]
        try:
            if kind in ("static", "webster"):
                clusters = case.get("clusters", list(case["weights"]))
                got = static_weighted(case["replicas"], clusters, case["weights"])
            elif kind == "spread":
                got = spread_by_cluster(
                    case["clusters"],
                    case["replicas"],
                    *case["groups"],
                    case["capacity"],
                )
            else:
                got = by_available(
                    case["replicas"],
                    case["available"],
                    case["previous"],
                    aggregated=kind == "aggregated",
                )
        except unschedulable as err:
            got = f"error: {err}"
        rows.append(
            {"source": case["source"], "got": got, "ok": got == case["expected"]}
        )
    return pd.DataFrame(rows)


def hamilton(seats: int, votes: dict) -> dict:
    """The largest-remainder (Hamilton) method, for comparison only."""
    quotas = {c: seats * v / sum(votes.values()) for c, v in votes.items()}
    result = {c: int(q) for c, q in quotas.items()}
    by_remainder = sorted(quotas, key=lambda c: (-(quotas[c] % 1), c))
    for c in by_remainder[: seats - sum(result.values())]:
        result[c] += 1
    return result


def glue_all(**numbers) -> None:
    """Glue each number under its keyword."""
    import labkit

    for name, value in numbers.items():
        labkit.glue_number(name, value)


# ---------------------------------------------------------------------- replica server
class _Replica(BaseHTTPRequestHandler):
    cluster = "?"
    name = "?"

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        body = json.dumps({"cluster": self.cluster, "replica": self.name}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # quiet
        pass


def serve(host: str, port: int, cluster: str, name: str) -> None:
    """Run one replica until killed."""
    _Replica.cluster, _Replica.name = cluster, name
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer((host, port), _Replica).serve_forever()


def free_port_on(host: str) -> int:
    """A TCP port free on `host` (a 127.x.y.z address) right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def replica_command(host: str, port: int, cluster: str, name: str) -> list[str]:
    """The command line of one replica process."""
    script = str(Path(__file__).resolve())
    return [sys.executable, script, "serve", host, str(port), cluster, name]


def loopback_ok(host: str) -> bool:
    """Whether this machine lets a process bind `host` (Linux: all of 127/8)."""
    try:
        with socket.socket() as s:
            s.bind((host, 0))
        return True
    except OSError:
        return False


class Pools:
    """The member clusters' pools of real processes: per cluster one process that stands
    for its API server and one per replica, all bound to the cluster's address."""

    def __init__(self, hosts: dict[str, str], log_dir: Path) -> None:
        import labkit

        self.labkit, self.hosts, self.log_dir = labkit, dict(hosts), Path(log_dir)
        self.apiservers: dict[str, tuple] = {}
        self.replicas: dict[str, dict[str, tuple]] = {c: {} for c in hosts}

    def _start(self, cluster: str, name: str) -> tuple:
        host = self.hosts[cluster]
        port = free_port_on(host)
        process = self.labkit.start_server(
            replica_command(host, port, cluster, name),
            ready_url=None,
            log_path=self.log_dir / f"{name}.log",
        )
        return process, port

    def _wait(self, cluster: str, started: dict[str, tuple]) -> None:
        for process, port in started.values():
            url = f"http://{self.hosts[cluster]}:{port}/readyz"
            self.labkit.wait_ready(url, process, timeout_s=30)

    def start_cluster(self, cluster: str, replicas: int) -> None:
        """Start the cluster's API server and `replicas` replicas; wait until ready."""
        self.apiservers[cluster] = self._start(cluster, f"{cluster}-apiserver")
        self._wait(cluster, {"api": self.apiservers[cluster]})
        self.scale_up(cluster, replicas)

    def scale_up(self, cluster: str, replicas: int) -> int:
        """Start replicas until the cluster runs `replicas`; return how many started."""
        pool = self.replicas[cluster]
        started = {
            f"{cluster}-{i}": self._start(cluster, f"{cluster}-{i}")
            for i in range(len(pool), replicas)
        }
        self._wait(cluster, started)
        pool.update(started)
        return len(started)

    def size(self, cluster: str) -> int:
        return len(self.replicas[cluster])

    def api_ready(self, cluster: str, timeout_s: float = 1.0) -> bool:
        """GET /readyz on the cluster's API server: what the cluster status controller
        probes."""
        _, port = self.apiservers[cluster]
        conn = http.client.HTTPConnection(self.hosts[cluster], port, timeout=timeout_s)
        try:
            conn.request("GET", "/readyz")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def kill(self, cluster: str) -> None:
        """Kill every process of the cluster (its Work objects still exist)."""
        for process, _ in [self.apiservers[cluster], *self.replicas[cluster].values()]:
            self.labkit.stop_server(process, timeout_s=2)

    def forget(self, cluster: str) -> None:
        """The cluster's Work was deleted: its replicas leave the endpoint list."""
        self.replicas[cluster].clear()

    def endpoints(self) -> dict[str, tuple[str, int, str]]:
        """What a multi-cluster Service publishes: {replica: (host, port, cluster)}."""
        return {
            name: (self.hosts[cluster], port, cluster)
            for cluster, pool in self.replicas.items()
            for name, (_, port) in pool.items()
        }

    def stop_all(self) -> list[int]:
        """Stop every process; return the exit codes."""
        processes = [p for p, _ in self.apiservers.values()]
        processes += [p for pool in self.replicas.values() for p, _ in pool.values()]
        return [self.labkit.stop_server(p, timeout_s=2) for p in processes]


# ------------------------------------------------------------- client-side balancer
class Balancer:
    """A client-side load balancer: round robin over the ready endpoints of every
    cluster, one retry on another endpoint when a connection fails, and passive outlier
    ejection (an endpoint that failed is skipped for `eject_s`)."""

    def __init__(self, *, timeout_s: float = 0.5, eject_s: float = 1.0) -> None:
        self.endpoints: dict[str, tuple[str, int, str]] = {}
        self.ejected: dict[str, float] = {}
        self.lock = threading.Lock()
        self.turn = 0
        self.timeout_s, self.eject_s = timeout_s, eject_s

    def set_endpoints(self, endpoints: dict[str, tuple[str, int, str]]) -> None:
        """Replace the endpoint list ({name: (host, port, cluster)})."""
        with self.lock:
            self.endpoints = dict(endpoints)

    def _pick(self, avoid: set[str]) -> tuple[str, tuple[str, int, str]] | None:
        now = time.monotonic()
        with self.lock:
            names = sorted(
                n
                for n in self.endpoints
                if n not in avoid and self.ejected.get(n, 0) <= now
            )
            if not names:
                return None
            self.turn += 1
            name = names[self.turn % len(names)]
            return name, self.endpoints[name]

    def request(self) -> tuple[bool, int, str | None]:
        """One GET with at most one retry, in another cluster: (ok, attempts, cluster
        that answered)."""
        avoid: set[str] = set()
        for attempt in (1, 2):
            picked = self._pick(avoid)
            if picked is None:
                return False, attempt - 1, None
            name, (host, port, cluster) = picked
            with self.lock:  # the retry goes to another cluster
                avoid |= {n for n, e in self.endpoints.items() if e[2] == cluster}
            conn = http.client.HTTPConnection(host, port, timeout=self.timeout_s)
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                body = json.loads(response.read())
                if response.status == 200:
                    return True, attempt, body["cluster"]
            except (OSError, ValueError, http.client.HTTPException):
                with self.lock:
                    self.ejected[name] = time.monotonic() + self.eject_s
            finally:
                conn.close()
        return False, 2, None


def run_load(balancer: Balancer, rate: int, duration_s: float, workers: int = 4):
    """Send `rate` requests a second for `duration_s` (paced, `workers` threads) and
    return a list of (t_s, ok, attempts, cluster)."""
    records: list[tuple[float, bool, int, str | None]] = []
    lock = threading.Lock()
    start = time.monotonic()
    interval = workers / rate

    def worker(offset: float) -> None:
        due = start + offset
        while due < start + duration_s:
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            ok, attempts, cluster = balancer.request()
            with lock:
                records.append((due - start, ok, attempts, cluster))
            due += interval

    threads = [
        threading.Thread(target=worker, args=(i / rate,), daemon=True)
        for i in range(workers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration_s + 10)
    return sorted(records)


# --------------------------------------------------------------------------- display
def placement_table(rows: dict[str, dict[str, int]], clusters: list[str]):
    """A DataFrame: one row per strategy, one column per cluster, and the total."""
    import pandas as pd

    frame = pd.DataFrame(
        [[row.get(c, 0) for c in clusters] for row in rows.values()],
        index=list(rows),
        columns=clusters,
    )
    frame["total"] = frame.sum(axis=1)
    return frame


def plot_failover(requests, timeline, kill_at_s: float, bin_s: float = 0.2):
    """Requests served per cluster in time bins, with the control plane's events."""
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame(requests, columns=["t", "ok", "attempts", "cluster"])
    frame["bin"] = (frame["t"] // bin_s) * bin_s
    served = (
        frame[frame["ok"]].groupby(["bin", "cluster"]).size().unstack(fill_value=0)
        / bin_s
    )
    failed = frame[~frame["ok"]].groupby("bin").size() / bin_s
    fig, ax = plt.subplots(figsize=(8, 4))
    bottom = np.zeros(len(served))
    for cluster in served.columns:
        ax.bar(
            served.index,
            served[cluster],
            width=bin_s * 0.9,
            bottom=bottom,
            label=f"served by {cluster}",
            align="edge",
        )
        bottom += served[cluster].to_numpy()
    if len(failed):
        ax.bar(
            failed.index,
            failed,
            width=bin_s * 0.9,
            color="black",
            label="failed",
            align="edge",
        )
    top = max(float(bottom.max()) if len(bottom) else 1.0, 1.0) * 1.9
    ax.set_ylim(0, top)
    for k, (name, t) in enumerate(timeline):  # staggered, so that labels never overlap
        ax.axvline(t, color="grey", lw=0.8, ls="--")
        ax.text(t + 0.02, top * (0.95 - 0.08 * k), name, fontsize=7, va="top")
    ax.axvline(kill_at_s, color="red", lw=1.2)
    ax.text(
        kill_at_s - 0.02,
        top * 0.95,
        "pool killed",
        fontsize=7,
        va="top",
        ha="right",
        color="red",
    )
    ax.set_xlabel("time since the load started (s)")
    ax.set_ylabel("requests / s")
    ax.legend(loc="lower left", fontsize=7, ncol=4)
    ax.set_title("Traffic while a member cluster fails and Karmada moves its replicas")
    fig.tight_layout()
    return fig


def plot_cost_sensitivity(lost_hours, curves: dict, crossover: float | None):
    """Expected cost per hour of each placement against the overhead
    per interruption."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    for name, costs in curves.items():
        ax.plot(lost_hours, costs, label=name)
    if crossover is not None:
        ax.axvline(crossover, color="grey", ls="--", lw=0.8)
        ax.text(crossover, ax.get_ylim()[1], " placements part", fontsize=8, va="top")
    ax.set_xlabel("overhead per interruption (replica-hours)")
    ax.set_ylabel("expected $ per hour, all replicas")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "serve":
    serve(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
