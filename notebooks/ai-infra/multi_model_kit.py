"""Plumbing for the multi-model-inference chapter: synthetic tickets, an HTTP client,
the open-loop load generator, the autoscaling ramp, tables and plots.

The technique (the Serve deployments, the balancing policies, the manifests) stays in
the notebook. Nothing here runs inside a Ray actor or a Serve replica: on a real Ray
cluster the worker nodes need not have this file.
"""

from __future__ import annotations

import asyncio
import http.client
import importlib.util
import json
import random
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

LABELS = ["billing", "shipping", "technical", "account"]
PHRASES = {
    "billing": [
        "I was charged twice for {p}",
        "the invoice for {p} is wrong",
        "please refund my {p} order",
        "my card was declined buying {p}",
        "why did the price of {p} change",
    ],
    "shipping": [
        "my {p} has not arrived",
        "the tracking number for {p} does not work",
        "{p} arrived damaged",
        "can you ship {p} to another address",
        "delivery of {p} is a week late",
    ],
    "technical": [
        "{p} crashes when I open it",
        "{p} will not connect to wifi",
        "the screen of {p} flickers",
        "{p} gets an error after the update",
        "how do I reset {p}",
    ],
    "account": [
        "I cannot log in to manage {p}",
        "change the email on my {p} account",
        "delete my account and my {p} data",
        "my password reset for {p} never came",
        "add a second user to my {p} subscription",
    ],
}
FILLERS = [
    "",
    "Hi,",
    "Hello team,",
    "Urgent:",
    "Thanks in advance.",
    "This is the second time I ask.",
    "Please help.",
]
PRODUCTS = [
    ["the kettle", "the toaster", "KettlePro"],
    ["the router", "MeshMax", "the modem"],
    ["the e-reader", "PageOne", "the tablet"],
    ["the bike lock", "LockIt", "the helmet"],
    ["the camera", "SnapCam", "the tripod"],
    ["the blender", "MixIt", "the juicer"],
]


def make_tickets(
    tenant_index: int, n: int, rng: np.random.Generator
) -> tuple[list[str], list[str]]:
    """n tickets (texts, labels) in one tenant's vocabulary; 4% of labels flipped."""
    texts, labels = [], []
    for _ in range(n):
        label = LABELS[rng.integers(len(LABELS))]
        phrase = PHRASES[label][rng.integers(len(PHRASES[label]))]
        product = PRODUCTS[tenant_index % len(PRODUCTS)][rng.integers(3)]
        parts = [
            FILLERS[rng.integers(len(FILLERS))],
            phrase.format(p=product),
            FILLERS[rng.integers(len(FILLERS))],
        ]
        texts.append(" ".join(p for p in parts if p))
        flipped = rng.random() < 0.04
        labels.append(LABELS[rng.integers(len(LABELS))] if flipped else label)
    return texts, labels


def package_folder(module: str) -> Path:
    """The folder of an installed package, found without running its __init__."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"{module} is not installed: pip install {module.replace('_', '-')}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def http_caller(port: int, timeout: float = 120) -> Callable[..., tuple[int, Any]]:
    """call(method, path, body=None, headers=None) -> (status, JSON), one keep-alive
    connection per thread to 127.0.0.1:port."""
    local = threading.local()

    def call(method, path, body=None, headers=None):
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(
                "127.0.0.1", port, timeout=timeout
            )
        payload = None if body is None else json.dumps(body)
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        try:
            conn.request(method, path, body=payload, headers=all_headers)
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"null")
        except (ConnectionError, http.client.HTTPException):
            local.conn = None
            conn.close()
            raise

    return call


# --- open-loop load for the balancing policies ----------------------------------------


def bursty_arrivals(
    rate: float,
    seconds: float,
    rng: np.random.Generator,
    burst_every_s: float = 1.5,
    burst_s: float = 0.3,
    burst_factor: float = 3.0,
) -> np.ndarray:
    """Poisson arrival times (by thinning) whose rate is burst_factor times higher for
    burst_s every burst_every_s, scaled so that the mean rate is `rate`."""
    quiet = rate / (1 + (burst_factor - 1) * burst_s / burst_every_s)
    peak = quiet * burst_factor
    times, t = [], 0.0
    while True:
        t += rng.exponential(1 / peak)
        if t >= seconds:
            return np.array(times)
        in_burst = (t % burst_every_s) < burst_s
        if rng.random() < (1.0 if in_burst else 1 / burst_factor):
            times.append(t)


def peak_to_mean(
    burst_every_s: float = 1.5, burst_s: float = 0.3, burst_factor: float = 3.0
) -> float:
    """How much faster than the mean rate requests arrive during a burst."""
    return burst_factor / (1 + (burst_factor - 1) * burst_s / burst_every_s)


def make_schedule(
    rate: float, seconds: float, seed: int, corpus_size: int, mean_size: int
) -> dict[str, np.ndarray]:
    """A seeded schedule: arrival times, log-normal request sizes and corpus offsets."""
    rng = np.random.default_rng(seed)
    arrivals = bursty_arrivals(rate, seconds, rng)
    sizes = rng.lognormal(np.log(mean_size) - 0.18, 0.6, len(arrivals))
    return {
        "arrivals": arrivals,
        "sizes": np.clip(np.round(sizes), 4, 300).astype(int),
        "starts": rng.integers(0, corpus_size - 300, len(arrivals)),
    }


async def replay(
    policy: str,
    choose: Callable,
    replicas: Sequence[Any],
    schedule: dict[str, np.ndarray],
    seed: int,
) -> pd.DataFrame:
    """Send every request at its arrival time to the replica `choose` picks; one row
    per request: latency from arrival, replica, requests already queued there."""
    n = len(schedule["arrivals"])
    outstanding, state, rng = [0] * len(replicas), {"next": -1}, random.Random(seed)
    latency, picked, ahead = np.zeros(n), np.zeros(n, int), np.zeros(n, int)
    t0 = time.perf_counter() + 0.05

    async def one(k):
        due = t0 + schedule["arrivals"][k]
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        r = picked[k] = choose(policy, outstanding, state, rng)
        ahead[k] = outstanding[r]
        outstanding[r] += 1
        start, size = int(schedule["starts"][k]), int(schedule["sizes"][k])
        await replicas[r].classify.remote(start, size)
        outstanding[r] -= 1
        latency[k] = time.perf_counter() - due

    await asyncio.gather(*(one(k) for k in range(n)))
    return pd.DataFrame(
        {"latency_ms": latency * 1e3, "replica": picked, "ahead": ahead}
    )


def policy_row(run: pd.DataFrame, throttled: int) -> dict[str, float]:
    """Percentiles of one run, and where its requests went and waited."""
    lat, slow = run["latency_ms"], run["replica"] == throttled
    return {
        "p50 ms": lat.quantile(0.50),
        "p95 ms": lat.quantile(0.95),
        "p99 ms": lat.quantile(0.99),
        "to throttled": slow.mean(),
        "queued": (run["ahead"] > 0).mean(),
        "p50 fast ms": lat[~slow].median(),
        "p50 throttled ms": lat[slow].median() if slow.any() else float("nan"),
    }


def capacity_table(sweep: dict[tuple[str, float], float], slo_ms: float) -> pd.Series:
    """Each policy's capacity: the highest swept load up to which every p99 met the
    SLO (0 when the lowest load missed it)."""
    capacity: dict[str, float] = {}
    for policy in dict.fromkeys(p for p, _ in sweep):
        capacity[policy] = 0.0
        for load in sorted(x for p, x in sweep if p == policy):
            if sweep[policy, load] > slo_ms:
                break
            capacity[policy] = load
    return pd.Series(capacity, name="capacity (share of total)")


def plot_sweep(sweep: dict, slo_ms: float, policies: Sequence[str]) -> None:
    """p99 against offered load, one line per policy, and the SLO."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    for policy in policies:
        points = sorted((x, p99) for (p, x), p99 in sweep.items() if p == policy)
        ax.plot(*zip(*points), marker="o", label=policy)
    ax.axhline(slo_ms, color="#888888", linestyle="--", label=f"SLO {slo_ms:.0f} ms")
    ax.set_yscale("log")
    ax.set_xlabel("offered load (share of the replicas' total capacity)")
    ax.set_ylabel("p99 latency (ms, log)")
    ax.set_title("Saturation sweep: where each policy stops meeting the SLO")
    ax.legend()
    plt.show()


def plot_policies(table: pd.DataFrame, policies: Sequence[str], title: str) -> None:
    """p50, p95 and p99 of each policy as grouped bars on a log scale."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    x = np.arange(len(policies))
    bars = (("p50 ms", "#4c78a8"), ("p95 ms", "#f58518"), ("p99 ms", "#e45756"))
    for offset, (column, colour) in zip((-0.25, 0, 0.25), bars):
        ax.bar(x + offset, table.loc[list(policies), column], width=0.25,
               label=column.split()[0], color=colour)  # fmt: skip
    ax.set_xticks(x, policies)
    ax.set_yscale("log")
    ax.set_ylabel("latency from arrival (ms, log)")
    ax.set_title(title)
    ax.legend()
    plt.show()


# --- the autoscaling ramp ------------------------------------------------------------


def run_ramp(
    call: Callable,
    running_replicas: Callable[[], int],
    tenant_ids: Sequence[str],
    corpus: Sequence[str],
    peak_clients: int,
    ramp_seconds: float,
    seed: int,
    texts_per_request: int = 400,
    wait_after_s: float = 20,
) -> tuple[pd.DataFrame, pd.DataFrame, int, float | None]:
    """Closed-loop clients join one by one up to `peak_clients` over `ramp_seconds`,
    hold as long again, then stop; a sampler records the running replicas until the
    first scale-down. Returns the scale log, the request log, the peak replicas and the
    seconds from the end of the load to the first scale-down (None if none)."""
    records: list[tuple[float, float, int]] = []
    t0 = time.perf_counter()
    stop_at = t0 + 2 * ramp_seconds
    joins = [ramp_seconds * i / peak_clients for i in range(peak_clients)]

    def client(index):
        time.sleep(max(0, t0 + joins[index] - time.perf_counter()))
        rng = random.Random(seed * 1000 + index)
        while time.perf_counter() < stop_at:
            start = rng.randrange(0, len(corpus) - texts_per_request)
            body = {
                "model": rng.choice(list(tenant_ids)),
                "input": list(corpus[start : start + texts_per_request]),
            }
            began = time.perf_counter()
            status, _ = call("POST", "/v1/classify", body)
            records.append((began - t0, time.perf_counter() - began, status))

    threads = [
        threading.Thread(target=client, args=(i,), daemon=True)
        for i in range(peak_clients)
    ]
    for thread in threads:
        thread.start()
    samples, peak, scaled_down_at = [], 1, None
    while True:
        now = time.perf_counter() - t0
        replicas = running_replicas()
        clients = sum(1 for j in joins if j <= now < 2 * ramp_seconds)
        samples.append((now, replicas, clients))
        peak = max(peak, replicas)
        if now > 2 * ramp_seconds and replicas < peak:
            scaled_down_at = now - 2 * ramp_seconds
            break
        if now > 2 * ramp_seconds + wait_after_s:
            break
        time.sleep(0.4)
    for thread in threads:
        thread.join()
    scale_log = pd.DataFrame(samples, columns=["t", "replicas", "clients"])
    request_log = pd.DataFrame(records, columns=["t", "latency", "status"])
    return scale_log, request_log, peak, scaled_down_at


def plot_ramp(scale_log: pd.DataFrame, request_log: pd.DataFrame) -> None:
    """Clients and running replicas over time, and the latency they saw."""
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 4.4), sharex=True)
    ax1.step(scale_log["t"], scale_log["clients"], where="post", label="clients",
             color="#888888")  # fmt: skip
    ax1.step(scale_log["t"], scale_log["replicas"], where="post",
             label="running replicas", color="#4c78a8", linewidth=2)  # fmt: skip
    ax1.set_ylabel("count")
    ax1.legend(loc="upper left")
    ax1.set_title("TicketClassifier under a load ramp")
    second = (request_log["t"] // 0.5) * 0.5
    window = request_log.assign(second=second).groupby("second")["latency"]
    ax2.plot(window.median() * 1e3, label="median", color="#4c78a8")
    ax2.plot(window.quantile(0.95) * 1e3, label="p95", color="#e45756")
    ax2.set_ylabel("latency (ms)")
    ax2.set_xlabel("seconds since the first client")
    ax2.legend(loc="upper left")
    plt.show()


# --- parameter checks ----------------------------------------------------------------


def check_parameters(values: dict[str, Any]) -> None:
    """Raise ValueError, naming the valid values, for a bad chapter parameter (sizes
    left at None take the profile's value)."""
    import labkit

    serve_llm = values["serve_llm"]
    if serve_llm is not None and not isinstance(serve_llm, bool):
        raise ValueError(
            f"serve_llm={serve_llm!r} is not valid; use True, False or None"
        )
    optional_ints = ("llm_max_tokens", "llm_requests", "embed_texts", "tenants")
    for name in (*optional_ints, "ramp_peak_clients"):
        if values[name] is not None:
            labkit.check_positive(name, values[name])
    for name in ("lb_sweep_seconds", "lb_seconds", "ramp_seconds"):
        if values[name] is not None:
            labkit.check_positive(name, values[name], integer=False)
    loads = values["lb_loads"]
    if loads is not None:
        if not loads or list(loads) != sorted(set(loads)):
            raise ValueError(
                f"lb_loads={loads!r}: give ascending shares, e.g. (0.1, 0.3)"
            )
        for load in loads:
            labkit.check_positive("lb_loads", load, integer=False, maximum=0.95)
    for name in (
        "embed_batch_size",
        "models_per_replica",
        "lb_replicas",
        "max_replicas",
    ):
        labkit.check_positive(name, values[name])
    if values["lb_replicas"] < 2 or values["max_replicas"] < 2:
        raise ValueError(
            f"lb_replicas={values['lb_replicas']}, max_replicas="
            f"{values['max_replicas']}: both must be at least 2"
        )
    for name in ("lb_slowdown", "lb_slo_services"):
        labkit.check_positive(name, values[name], integer=False)
    seed = values["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(
            f"seed={seed!r} is not valid; it must be a non-negative integer"
        )
