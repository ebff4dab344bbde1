"""Plumbing for the quantum-computing chapter: the noise model, the batch worker that
Ray tasks and the Kubernetes Job both run, and plots.

The techniques (circuits, chi-square tests, readout correction, QAOA, VQE) stay in the
notebook. This module is also the container's entry point:

    python quantum_kit.py --qubits 12 --shots 300 --errors 0.0,0.01 --index 1

runs point 1 of a noise sweep (the index defaults to $JOB_COMPLETION_INDEX, which an
Indexed Job sets) and prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from typing import Any

ONE_QUBIT_GATES = ["h", "x", "sx", "rz", "ry", "rx"]


def noise_model(p1: float, p2: float, p_readout: float) -> Any:
    """An Aer noise model: depolarizing error p1 on one-qubit gates, p2 on CX, and a
    symmetric readout error p_readout on every qubit."""
    from qiskit_aer.noise import NoiseModel, ReadoutError, depolarizing_error

    model = NoiseModel()
    if p1 > 0:
        model.add_all_qubit_quantum_error(depolarizing_error(p1, 1), ONE_QUBIT_GATES)
    if p2 > 0:
        model.add_all_qubit_quantum_error(depolarizing_error(p2, 2), ["cx"])
    if p_readout > 0:
        flip = [[1 - p_readout, p_readout], [p_readout, 1 - p_readout]]
        model.add_all_qubit_readout_error(ReadoutError(flip))
    return model


def ghz_circuit(n_qubits: int) -> Any:
    """The n-qubit GHZ state (H, then a CX chain), measured."""
    from qiskit import QuantumCircuit

    circuit = QuantumCircuit(n_qubits)
    circuit.h(0)
    for qubit in range(n_qubits - 1):
        circuit.cx(qubit, qubit + 1)
    circuit.measure_all()
    return circuit


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_point(
    n_qubits: int, p2: float, shots: int, seed: int, threads: int = 1
) -> dict[str, Any]:
    """One task of the batch: the GHZ circuit under CX error p2 (one-qubit error p2/10,
    no readout error), sampled on Aer with `threads` threads. Returns the GHZ
    population, the counts' size, the wall and CPU seconds and the peak RSS."""
    from qiskit_aer import AerSimulator

    simulator = AerSimulator(
        method="statevector",
        noise_model=noise_model(p2 / 10, p2, 0.0),
        max_parallel_threads=threads,
        seed_simulator=seed,
    )
    circuit = ghz_circuit(n_qubits)
    started, cpu_started = time.perf_counter(), time.process_time()
    counts = simulator.run(circuit, shots=shots).result().get_counts()
    good = counts.get("0" * n_qubits, 0) + counts.get("1" * n_qubits, 0)
    return {
        "p2": p2,
        "ghz_population": good / shots,
        "outcomes": len(counts),
        "wall_s": time.perf_counter() - started,
        "cpu_s": time.process_time() - cpu_started,
        "peak_rss_mib": peak_rss_mib(),
        "pid": os.getpid(),
    }


def spin(seconds: float) -> float:
    """Keep one core busy for `seconds` of wall time; return the CPU seconds this
    process actually got (less than `seconds` on a busy machine)."""
    started, cpu_started = time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        sum(range(1000))
    return time.process_time() - cpu_started


def plot_counts(
    ax: Any, distributions: dict[str, dict[str, float]], title: str
) -> None:
    """Grouped bars of several distributions over the same bitstrings."""
    import numpy as np

    keys = sorted({k for d in distributions.values() for k in d})
    width = 0.8 / len(distributions)
    for i, (label, dist) in enumerate(distributions.items()):
        x = np.arange(len(keys)) + i * width
        ax.bar(x, [dist.get(k, 0.0) for k in keys], width, label=label)
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, keys, rotation=90)
    ax.set_ylabel("probability")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)


def draw_rack_graph(ax: Any, edges: list[tuple[int, int, int]], side: str) -> None:
    """The workload graph, nodes coloured by rack (`side` is a bitstring, node 0
    rightmost, as Qiskit prints it); cut edges drawn solid."""
    import networkx as nx

    graph = nx.Graph()
    graph.add_weighted_edges_from(edges)
    rack = {node: side[-1 - node] for node in graph.nodes}
    pos = nx.circular_layout(sorted(graph.nodes))
    colours = ["tab:blue" if rack[n] == "0" else "tab:orange" for n in graph.nodes]
    nx.draw_networkx_nodes(graph, pos, ax=ax, node_color=colours, node_size=500)
    nx.draw_networkx_labels(graph, pos, ax=ax, font_color="white")
    for a, b, weight in edges:
        style = "solid" if rack[a] != rack[b] else "dotted"
        nx.draw_networkx_edges(graph, pos, [(a, b)], ax=ax, style=style, width=weight)
    nx.draw_networkx_edge_labels(
        graph, pos, {(a, b): w for a, b, w in edges}, ax=ax, font_size=8
    )
    ax.set_title("rack A (blue) / rack B (orange); solid = cut", fontsize=10)
    ax.axis("off")


def main(argv: list[str] | None = None) -> int:
    """The Job's entry point: run one point of the noise sweep, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qubits", type=int, required=True)
    parser.add_argument("--shots", type=int, required=True)
    parser.add_argument("--errors", required=True, help="CX error rates, comma list")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--index", type=int, default=int(os.environ.get("JOB_COMPLETION_INDEX", "0"))
    )
    args = parser.parse_args(argv)
    errors = [float(e) for e in args.errors.split(",")]
    if not 0 <= args.index < len(errors):
        parser.error(f"--index must be in 0..{len(errors) - 1}, got {args.index}")
    result = run_point(
        args.qubits, errors[args.index], args.shots, args.seed + args.index
    )
    print(json.dumps({"index": args.index, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
