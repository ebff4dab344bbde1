"""Plumbing for the inference-optimization chapter: parameter checks, ONNX graph
surgery, sessions, warm timing, load generation, a KServe v2 HTTP server, tables and
plots. The techniques (quantisation, pruning, distillation, the batching policy) stay
on the page.

Run as a script, it is the chapter's HTTP model server:
`python inference_opt_kit.py serve MODEL.onnx PORT`.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

MODEL_NAME = "mlp-int8"

# Sizes per profile; the `cluster` profile measures CPU inference, so it runs `laptop`.
_LAPTOP = dict(
    n_train=20000,
    teacher_steps=300,
    student_steps=400,
    finetune_steps=100,
    timing_repeats=300,
    arrival_seconds=1.0,
    sweep_seconds=0.3,
    http_requests=300,
)
SIZES = {
    "smoke": dict(
        n_train=6000,
        teacher_steps=60,
        student_steps=150,
        finetune_steps=20,
        timing_repeats=60,
        arrival_seconds=0.25,
        sweep_seconds=0.2,
        http_requests=100,
    ),
    "laptop": _LAPTOP,
    "cluster": _LAPTOP,
}


# --- parameters ---------------------------------------------------------------------


def resolve_sizes(params: dict[str, Any]) -> dict[str, Any]:
    """The profile's sizes, overridden by every size parameter not None, after checking
    all parameters (a ValueError a reader can act on for any out of range)."""
    import labkit

    sizes = labkit.pick(params["profile"], SIZES)
    overrides = {name: params[name] for name in sizes}
    check_parameters(params, overrides)
    sizes.update({k: v for k, v in overrides.items() if v is not None})
    return sizes


def check_parameters(params: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Raise a ValueError a reader can act on for any parameter out of range."""
    import labkit

    for name, value in overrides.items():
        if value is not None:
            labkit.check_positive(name, value, integer=not name.endswith("_seconds"))
    for name in ("hidden_width", "student_width", "int4_group_size", "max_batch"):
        labkit.check_positive(name, params[name])
    for name in ("max_wait_ms", "p95_slo_ms"):
        labkit.check_positive(name, params[name], integer=False)
    for name in ("unstructured_sparsity", "structured_keep"):
        labkit.check_positive(name, params[name], integer=False, maximum=0.99)
    g, width = params["int4_group_size"], params["hidden_width"]
    if width % g or 128 % g or g % 2:
        raise ValueError(
            f"int4_group_size={g!r} is not valid; "
            "it must be even and divide 128 and hidden_width"
        )
    seed = params["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(
            f"seed={seed!r} is not valid; it must be a non-negative integer"
        )


def quiet_libraries() -> None:
    """Silence ORT's pre-processing hint, the exporter's log and torch.ao's notice
    (the chapter says each once in prose)."""
    import onnxruntime as ort

    logging.getLogger("root").setLevel(logging.ERROR)
    logging.getLogger("torch").setLevel(logging.ERROR)
    logging.getLogger("onnxruntime").setLevel(logging.CRITICAL)
    ort.set_default_logger_severity(3)
    warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")


# --- ONNX -----------------------------------------------------------------------------


def export_onnx(model: Any, path: Path, n_features: int) -> Path:
    """Export with the default (dynamo) exporter: one self-contained file, dynamic
    batch dimension, input `x`, output `logits`."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(2, n_features),),
            path,
            input_names=["x"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            external_data=False,
            verbose=False,
        )
    return path


def onnx_with_weights(model: Any, template: Path, path: Path) -> Path:
    """The `template` graph (same layer names, any widths) with `model`'s parameters."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(template)
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    for init in proto.graph.initializer:
        init.CopyFrom(
            numpy_helper.from_array(state[init.name].astype(np.float32), init.name)
        )
    del proto.graph.value_info[:]  # intermediate shapes were the template's
    onnx.checker.check_model(proto)
    onnx.save(proto, path)
    return path


def gemm_to_matmul(path: Path, out: Path) -> Path:
    """Rewrite every Gemm(x, W, b, transB=1) as MatMul(x, W^T) + Add(b): the form ORT's
    weight-only quantiser accepts (it skips Gemm)."""
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load(path)
    inits = {init.name: init for init in proto.graph.initializer}
    nodes = []
    for node in proto.graph.node:
        if node.op_type != "Gemm":
            nodes.append(node)
            continue
        weight = inits[node.input[1]]
        weight.CopyFrom(
            numpy_helper.from_array(numpy_helper.to_array(weight).T.copy(), weight.name)
        )
        product = node.output[0] + "_matmul"
        nodes += [
            helper.make_node("MatMul", node.input[:2], [product]),
            helper.make_node("Add", [product, node.input[2]], node.output[:1]),
        ]
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    del proto.graph.value_info[:]
    onnx.save(proto, out)
    return out


def int4_graph(
    packed: list[tuple[np.ndarray, np.ndarray, np.ndarray, int, int]],
    group_size: int,
    path: Path,
    *,
    n_features: int,
    n_classes: int,
    accuracy_level: int = 0,
) -> Path:
    """A Gemm-free graph: one MatMulNBits per layer from (packed codes, scales, bias,
    K, N), ReLU between."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, prev = [], [], "x"
    for i, (codes, scales, bias, k, n) in enumerate(packed):
        inits += [
            numpy_helper.from_array(codes, f"w{i}"),
            numpy_helper.from_array(scales.reshape(-1), f"s{i}"),
            numpy_helper.from_array(bias, f"b{i}"),
        ]
        out = "logits" if i == len(packed) - 1 else f"h{i}"
        nodes.append(
            helper.make_node(
                "MatMulNBits",
                [prev, f"w{i}", f"s{i}", "", "", f"b{i}"],
                [out],
                domain="com.microsoft",
                K=k,
                N=n,
                bits=4,
                block_size=group_size,
                accuracy_level=accuracy_level,
            )
        )
        prev = out
        if i < len(packed) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
            prev = f"r{i}"
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes,
        "mlp-int4",
        [value("x", TensorProto.FLOAT, ["batch", n_features])],
        [value("logits", TensorProto.FLOAT, ["batch", n_classes])],
        inits,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), path)
    return path


def operators(path: Path) -> list[str]:
    """The sorted operator types of an ONNX file."""
    import onnx

    return sorted({node.op_type for node in onnx.load(path).graph.node})


def session(path: Path) -> Any:
    """An ONNX Runtime CPU session on one thread (intra- and inter-op)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_runner(sess: Any) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: sess.run(None, {"x": x})[0]


def torch_runner(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return run


def torch_size_mb(model: Any) -> float:
    """Megabytes of a `torch.save` of the state dict."""
    import torch

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes / 1e6


def relative_error(approx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.linalg.norm(approx - exact) / np.linalg.norm(exact))


# --- timing ---------------------------------------------------------------------------


def warm_latency(
    runners: dict[str, Callable[[np.ndarray], Any]],
    x: np.ndarray,
    repeats: int,
    *,
    warmup: int = 3,
    passes: int = 10,
) -> dict[str, dict[str, Any]]:
    """Warm latency (seconds) of every runner: `passes` rounds over the runners, each a
    block of `warmup` untimed then `repeats // passes` timed back-to-back calls, so a
    call finds its own weights in cache and background load hits every runner alike."""
    import labkit

    samples: dict[str, list[float]] = {name: [] for name in runners}
    per_pass = max(1, repeats // passes)
    for _ in range(passes):
        for name, run in runners.items():
            for _ in range(warmup):
                run(x)
            for _ in range(per_pass):
                start = time.perf_counter()
                run(x)
                samples[name].append(time.perf_counter() - start)
    return {name: labkit.summarize(s) for name, s in samples.items()}


def interleaved_latency(
    runners: dict[str, Callable[[np.ndarray], Any]],
    x: np.ndarray,
    repeats: int,
    *,
    warmup: int = 5,
) -> dict[str, dict[str, Any]]:
    """The previous edition's method: each round calls every runner once, so every call
    follows another model's call (its weights evicted from cache)."""
    import labkit

    samples: dict[str, list[float]] = {name: [] for name in runners}
    for round_index in range(warmup + repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run(x)
            if round_index >= warmup:
                samples[name].append(time.perf_counter() - start)
    return {name: labkit.summarize(s) for name, s in samples.items()}


def int4_error_table(
    weights: list[np.ndarray],
    group_sizes: list[int | None],
    quantize: Callable[..., Any],
    dequantize: Callable[..., Any],
) -> Any:
    """Mean relative weight error and bits per weight (middle layer) of INT4 at each
    group size (None: one scale per row), with per-row INT8 as the reference."""
    import pandas as pd

    rows = []
    for group_size in group_sizes:
        errors, bits = [], []
        for w in weights:
            g = w.shape[1] if group_size is None else min(group_size, w.shape[1])
            errors.append(relative_error(dequantize(*quantize(w, g), g), w))
            bits.append(4 + 32 / g)
        label = "one scale per row" if group_size is None else f"groups of {group_size}"
        rows.append((f"INT4, {label}", bits[1], np.mean(errors)))
    w8 = weights[1]
    s8 = np.abs(w8).max(1, keepdims=True) / 127
    int8_error = relative_error(np.round(w8 / s8) * s8, w8)
    rows.append(
        ("INT8, one scale per row (reference)", 8 + 32 / w8.shape[1], int8_error)
    )
    columns = ["format", "bits per weight (middle layer)", "weight error (rel.)"]
    return pd.DataFrame(rows, columns=columns).set_index("format").round(3)


def build_variants(
    torch_models: dict[str, Any], ort_files: dict[str, Path]
) -> dict[str, tuple[str, Callable[[np.ndarray], np.ndarray], float]]:
    """{"name (runtime)": (runtime, run function, MB on disk)} for PyTorch models and
    ONNX files (each in its own one-thread session)."""
    variants = {}
    for name, model in torch_models.items():
        variants[f"{name} (PyTorch)"] = (
            "PyTorch",
            torch_runner(model),
            torch_size_mb(model),
        )
    for name, path in ort_files.items():
        variants[f"{name} (ORT)"] = (
            "ORT",
            ort_runner(session(path)),
            path.stat().st_size / 1e6,
        )
    return variants


def bench_table(
    variants: dict[str, Any],
    lat1: dict[str, Any],
    lat32: dict[str, Any],
    accuracy: dict[str, float],
) -> Any:
    """One row per variant: size, p50/p95 (ms) at batch 1 and 32, throughput at 32,
    accuracy (%)."""
    import pandas as pd

    rows = {
        name: {
            "runtime": runtime,
            "size MB": size,
            "b1 p50 ms": 1e3 * lat1[name]["median"],
            "b1 p95 ms": 1e3 * lat1[name]["p95"],
            "b32 p50 ms": 1e3 * lat32[name]["median"],
            "b32 p95 ms": 1e3 * lat32[name]["p95"],
            "samples/s (b32)": 32 / lat32[name]["median"],
            "accuracy %": 100 * accuracy[name],
        }
        for name, (runtime, _, size) in variants.items()
    }
    return pd.DataFrame(rows).T.infer_objects()


def speedups(results: Any, a: str, b: str) -> tuple[float, float, float, float]:
    """Row b against row a: (speed-up at batch 1, speed-up at batch 32, size ratio,
    accuracy change in points)."""
    ra, rb = results.loc[a], results.loc[b]
    return (
        ra["b1 p50 ms"] / rb["b1 p50 ms"],
        ra["b32 p50 ms"] / rb["b32 p50 ms"],
        ra["size MB"] / rb["size MB"],
        rb["accuracy %"] - ra["accuracy %"],
    )


def batch_curve(
    run: Callable[[np.ndarray], Any],
    x: np.ndarray,
    batch_sizes: list[int],
    repeats: int,
) -> Any:
    """Warm p50/p95 and fastest call (ms) and samples/s of `run` at each batch size
    (rows of `x`)."""
    import pandas as pd

    rows = {}
    for b in batch_sizes:
        lat = warm_latency({b: run}, x[:b].copy(), repeats)[b]
        rows[b] = {
            "p50 ms": 1e3 * lat["median"],
            "p95 ms": 1e3 * lat["p95"],
            "fastest ms": 1e3 * lat["min"],
            "samples/s": b / lat["median"],
        }
    return pd.DataFrame(rows).T.rename_axis("batch")


# --- load generation ------------------------------------------------------------------


def poisson_arrivals(
    rate: float, seconds: float, rng: np.random.Generator
) -> np.ndarray:
    """Arrival times (s) of a Poisson process of `rate` per second over `seconds`."""
    gaps = rng.exponential(1 / rate, int(rate * seconds * 1.2) + 10)
    times = np.cumsum(gaps)
    return times[times < seconds]


def summarize_run(latency: np.ndarray, finished: float) -> dict[str, float]:
    """Served/offered counts, throughput up to the last completion, p50/p95 (ms)."""
    done = latency[~np.isnan(latency)]
    return {
        "served": len(done),
        "offered": len(latency),
        "throughput/s": len(done) / finished,
        "p50 ms": 1e3 * np.median(done),
        "p95 ms": 1e3 * np.percentile(done, 95),
    }


def saturation_sweep(
    serve: Callable[..., tuple[np.ndarray, float]],
    policy: str,
    rates: list[float],
    seconds: float,
    rng: np.random.Generator,
    *,
    p95_bound_ms: float,
) -> Any:
    """Offer `policy` Poisson load at increasing `rates` until it stops keeping up
    (p95 over `p95_bound_ms`, or under 80% of requests done by the end of the
    arrivals) twice; one row per rate."""
    import pandas as pd

    rows, misses = [], 0
    for rate in rates:
        arrivals = poisson_arrivals(rate, seconds, rng)
        latency, finished = serve(arrivals, policy)
        row = summarize_run(latency, finished)
        row["offered/s"] = rate
        # Served by the end of the arrivals: near all when the server keeps up (only
        # the last few ms are in flight), about capacity/offered when it does not.
        done_at = arrivals + np.nan_to_num(latency, nan=np.inf)
        row["share done in window"] = float(np.mean(done_at <= arrivals[-1]))
        row["keeps up"] = bool(
            row["p95 ms"] <= p95_bound_ms and row["share done in window"] >= 0.8
        )
        rows.append(row)
        misses += not row["keeps up"]
        if misses >= 2:
            break
    table = pd.DataFrame(rows)
    table.insert(0, "policy", policy)
    return table


def capacity(sweep: Any) -> float:
    """Capacity from a sweep: the most requests/s served at any offered load (the
    plateau once saturated)."""
    return float(sweep["throughput/s"].max())


# --- KServe v2 over HTTP -------------------------------------------------------------


def v2_body(rows: np.ndarray) -> bytes:
    """A KServe v2 (Open Inference Protocol) JSON infer request for input `x`."""
    return json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": list(rows.shape),
                    "datatype": "FP32",
                    "data": rows.ravel().tolist(),
                }
            ]
        }
    ).encode()


def _get_json(port: int, path: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    body = json.loads(conn.getresponse().read())
    conn.close()
    return body


def http_round_trips(
    port: int, rows: np.ndarray, repeats: int, *, warmup: int = 20
) -> tuple[dict[str, Any], float, np.ndarray]:
    """Send one request per row of `rows` (cycled) over one keep-alive connection,
    serialising each and parsing each reply. Returns summarize() of the round trips
    (s), the server's CPU seconds per timed request, and the last reply's logits."""
    import labkit

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    path = f"/v2/models/{MODEL_NAME}/infer"
    headers = {"Content-Type": "application/json"}
    samples, logits, before = [], None, None
    for i in range(warmup + repeats):
        if i == warmup:
            before = _get_json(port, "/stats")
        start = time.perf_counter()
        conn.request("POST", path, v2_body(rows[i % len(rows)][None]), headers)
        reply = json.loads(conn.getresponse().read())
        if i >= warmup:
            samples.append(time.perf_counter() - start)
        logits = np.asarray(reply["outputs"][0]["data"], dtype=np.float32)
    conn.close()
    after = _get_json(port, "/stats")
    cpu_per_request = (after["cpu_s"] - before["cpu_s"]) / (
        after["requests"] - before["requests"]
    )
    return labkit.summarize(samples), cpu_per_request, logits


def measure_protocol(
    model: Path, rows: np.ndarray, repeats: int, log_path: Path
) -> tuple[dict[str, Any], float, np.ndarray, np.ndarray]:
    """Start this file's server on `model`, time `repeats` round trips, stop it. Returns
    (round trips, server CPU s per request, last reply's logits, last request's row)."""
    import labkit

    port = labkit.free_port()
    server = labkit.start_server(
        [sys.executable, __file__, "serve", str(model), str(port)],
        ready_url=f"http://127.0.0.1:{port}/v2/health/ready",
        log_path=log_path,
    )
    try:
        round_trip, cpu_s, logits = http_round_trips(port, rows, repeats, warmup=20)
    finally:
        labkit.stop_server(server)
    return round_trip, cpu_s, logits, rows[(20 + repeats - 1) % len(rows)][None]


def _serve_http(model: str, port: int) -> None:
    """A KServe v2 JSON endpoint around one ORT session (one thread), batch per
    request. It counts its own CPU time per infer request (parsing, JSON, the kernel,
    the reply) and reports it at GET /stats."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from labkit.servers import send_json

    sess = session(Path(model))
    stats = {"requests": 0, "cpu_s": 0.0}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real clients use
        disable_nagle_algorithm = True  # headers and body leave without waiting

        def log_message(self, *args: Any) -> None:
            pass

        def handle_one_request(self) -> None:
            start = time.thread_time()  # CPU of this thread, not time waiting
            self.command = None
            super().handle_one_request()
            if self.command == "POST":
                stats["requests"] += 1
                stats["cpu_s"] += time.thread_time() - start

        def do_GET(self) -> None:
            if self.path in ("/v2/health/ready", "/v2/health/live"):
                send_json(self, 200, {"ready": True})
            elif self.path == "/stats":
                send_json(self, 200, stats)
            else:
                send_json(self, 404, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            spec = body["inputs"][0]
            x = np.asarray(spec["data"], dtype=np.float32).reshape(spec["shape"])
            logits = sess.run(None, {"x": x})[0]
            send_json(
                self,
                200,
                {
                    "model_name": MODEL_NAME,
                    "outputs": [
                        {
                            "name": "logits",
                            "shape": list(logits.shape),
                            "datatype": "FP32",
                            "data": logits.ravel().tolist(),
                        }
                    ],
                },
            )

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


# --- tables and plots -----------------------------------------------------------------


def plot_variants(results: Any) -> None:
    """Size against batch-1 latency, and batch-32 throughput against accuracy."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"PyTorch": "#ff7f0e", "ORT": "#1f77b4"}
    for name, row in results.iterrows():
        color = colors[row["runtime"]]
        points = [
            (row["size MB"], row["b1 p50 ms"], f"{name} ({row['runtime']})"),
            (row["samples/s (b32)"], row["accuracy %"], name),
        ]
        for ax, (x, y, label) in zip(axes, points):
            ax.scatter(x, y, color=color, s=40)
            ax.annotate(
                label, (x, y), fontsize=7, xytext=(4, 2), textcoords="offset points"
            )
    axes[0].set(xscale="log", yscale="log", xlabel="size on disk (MB, log)")
    axes[0].set_ylabel("batch-1 latency p50, warm (ms, log)")
    axes[1].set(xscale="log", xlabel="throughput at batch 32 (samples/s, log)")
    axes[1].set_ylabel("test accuracy (%)")
    for runtime, color in colors.items():
        axes[0].scatter([], [], color=color, label=runtime)
    axes[0].legend(loc="lower right")
    plt.tight_layout()
    plt.show()


def plot_curve(curve: Any) -> None:
    """Throughput and latency against batch size."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot(curve.index, curve["samples/s"], "o-", label="throughput (samples/s)")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="batch size", ylabel="samples/s")
    ax2 = ax.twinx()
    ax2.plot(
        curve.index, curve["p50 ms"], "s--", color="#d62728", label="latency p50 (ms)"
    )
    ax2.set_yscale("log")
    ax2.set_ylabel("latency per call (ms, log)")
    ax2.grid(False)
    fig.legend(loc="upper left", bbox_to_anchor=(0.1, 0.95))
    plt.show()


def plot_sweep(sweeps: Any, p95_bound_ms: float) -> None:
    """Served throughput and p95 against offered load, one line per policy."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for policy, rows in sweeps.groupby("policy", sort=False):
        axes[0].plot(rows["offered/s"], rows["throughput/s"], "o-", label=policy)
        axes[1].plot(rows["offered/s"], rows["p95 ms"], "o-", label=policy)
    top = sweeps["offered/s"].max()
    axes[0].plot([0, top], [0, top], "k:", lw=1, label="served = offered")
    axes[0].set(xlabel="offered load (requests/s)", ylabel="served (requests/s)")
    axes[1].axhline(p95_bound_ms, color="k", lw=1, ls=":", label="p95 bound")
    axes[1].set(xlabel="offered load (requests/s)", ylabel="p95 latency (ms, log)")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.legend(fontsize=8)
    plt.tight_layout()
    plt.show()


def plot_latency_cdf(raw_latency: dict[Any, np.ndarray], slo_ms: float) -> None:
    """Share of offered requests served within each latency, per run."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    for (load, policy), latency in raw_latency.items():
        done = np.sort(latency[~np.isnan(latency)]) * 1e3
        share = np.arange(1, len(done) + 1) / len(latency)
        ax.plot(done, share, label=f"{policy}, {load} load")
    ax.axvline(slo_ms, color="k", lw=1, ls=":", label=f"p95 bound {slo_ms:g} ms")
    ax.set_xscale("log")
    ax.set(xlabel="latency (ms, log)", ylabel="share of offered requests served within")
    ax.legend(fontsize=8)
    plt.show()


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "serve":
        sys.exit("usage: python inference_opt_kit.py serve MODEL.onnx PORT")
    _serve_http(sys.argv[2], int(sys.argv[3]))
