"""Plumbing for the green data-centre chapter: RAPL reading, the measured kernels, the
synthetic grid day, the batch-job generator and the plots. The techniques (energy
models, scheduling, matching, consolidation) stay in the notebook."""

from __future__ import annotations

import json
import logging
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

POWERCAP = Path("/sys/class/powercap")
HOURS = np.arange(24)

# Germany, 2023, TWh per source: the Our World in Data / Ember table that CodeCarbon
# 3.3.2 ships (codecarbon/data/private_infra/global_energy_mix.json, "DEU").
CODECARBON_DATA = "data/private_infra"


def check_parameters(params: dict[str, Any]) -> None:
    """Raise ValueError for a parameter out of range (the notebook's check cell)."""
    import labkit

    labkit.check_choice("country_iso_code", params["country_iso_code"], ("DEU",))
    labkit.check_positive("node_vcpus", params["node_vcpus"], maximum=512)
    labkit.check_positive("cluster_nodes", params["cluster_nodes"], maximum=200)
    labkit.check_positive("pue", params["pue"], integer=False, maximum=3.0)
    if params["pue"] < 1.0:
        raise ValueError(f"pue={params['pue']!r} is not valid; a PUE is at least 1.0")
    labkit.check_positive(
        "target_utilisation", params["target_utilisation"], integer=False, maximum=1.0
    )


def rapl_domains() -> dict[str, Path]:
    """The package-level RAPL counters (energy_uj) readable here, by domain name."""
    domains = {}
    for zone in sorted(POWERCAP.glob("intel-rapl:*")):
        if zone.name.count(":") != 1:  # sub-zones (core, dram) are inside packages
            continue
        counter = zone / "energy_uj"
        try:
            counter.read_text()
        except OSError:  # absent, or root-only since CVE-2020-8694
            continue
        name = (zone / "name").read_text().strip()
        domains[f"{name}-{zone.name}"] = counter
    return domains


def rapl_joules(domains: dict[str, Path], before: dict[str, int]) -> float:
    """Joules since `before` (counter values in µJ) over all domains, with wrap."""
    total = 0
    for name, counter in domains.items():
        now = int(counter.read_text())
        delta = now - before[name]
        if delta < 0:
            top = int((counter.parent / "max_energy_range_uj").read_text())
            delta += top
        total += delta
    return total / 1e6


def _matmul(size: int) -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size))
    for _ in range(4):
        a = np.tanh(a @ a / size)


def _compress(size: int) -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(0, 16, size * 4000, dtype=np.uint8).tobytes()
    zlib.compress(data, 6)


def _sort(size: int) -> None:
    rng = np.random.default_rng(2)
    np.sort(rng.standard_normal(size * 2000), kind="stable")


def _serialise(size: int) -> None:
    records = [{"id": i, "name": f"item-{i}", "tags": ["a", "b"]} for i in range(size)]
    json.loads(json.dumps(records))


KERNELS = {
    "matmul": _matmul,
    "compress": _compress,
    "sort": _sort,
    "serialise": _serialise,
}


def run_kernels(work: dict[str, int], repeats: int) -> dict[str, float]:
    """CPU seconds per call of each kernel (median of `repeats`, after one warm-up)."""
    cpu_s = {}
    for name, size in work.items():
        fn = KERNELS[name]
        fn(size)
        samples = []
        for _ in range(repeats):
            start = time.process_time()
            fn(size)
            samples.append(time.process_time() - start)
        cpu_s[name] = float(np.median(samples))
    return cpu_s


def quiet_codecarbon() -> None:
    """CodeCarbon logs at INFO from its own handler; keep it to errors."""
    import codecarbon  # noqa: F401  (importing it sets its logger's level)

    logging.getLogger("codecarbon").setLevel(logging.ERROR)


def codecarbon_country(iso_code: str) -> dict[str, Any]:
    """CodeCarbon's packaged energy-mix row for a country (offline; no network)."""
    import codecarbon

    path = Path(codecarbon.__file__).parent / CODECARBON_DATA
    mix = json.loads((path / "global_energy_mix.json").read_text())[iso_code]
    factors = json.loads((path / "carbon_intensity_per_source.json").read_text())
    return {"mix": mix, "factors": factors}


def grid_day(mix: dict[str, float], solar_boost: float = 2.2) -> pd.DataFrame:
    """Hourly generation (GW) for a sunny spring day, built from a year's mix (TWh).

    Every source starts at its annual average power (TWh / 8760 h). Solar follows a
    clear-sky shape from 06:00 to 20:00 holding `solar_boost` times its average daily
    energy (a sunny day); wind eases from 1.2x to 0.8x its average over the day;
    hydro, bioenergy and nuclear run flat. Demand has the usual morning and evening
    shoulders, and fossil plants fill what is left (never below a must-run floor of
    20 % of their average)."""
    avg = {key: mix[f"{key}_TWh"] * 1e3 / 8760 for key in (
        "coal", "gas", "oil", "solar", "wind", "hydroelectricity", "biofuel",
        "nuclear")}  # fmt: skip
    hours = HOURS + 0.5
    shape = np.clip(np.sin(np.pi * (hours - 6) / 14), 0, None) ** 1.3
    solar = avg["solar"] * 24 * solar_boost * shape / shape.sum()
    wind = avg["wind"] * np.interp(hours, [0, 24], [1.2, 0.8])
    firm = avg["hydroelectricity"] + avg["biofuel"] + avg["nuclear"]
    total_avg = mix["total_TWh"] * 1e3 / 8760
    demand = total_avg * (
        1
        + 0.10 * np.exp(-(((hours - 9) / 2.5) ** 2))
        + 0.12 * np.exp(-(((hours - 19) / 2.0) ** 2))
        - 0.12 * np.exp(-(((hours - 3) / 3.0) ** 2))
    )
    fossil_avg = avg["coal"] + avg["gas"] + avg["oil"]
    fossil = np.maximum(demand - solar - wind - firm, 0.2 * fossil_avg)
    day = pd.DataFrame({"hour": HOURS, "demand_gw": demand})
    day["solar_gw"], day["wind_gw"] = solar, wind
    day["hydro_gw"] = avg["hydroelectricity"]
    day["bio_gw"], day["nuclear_gw"] = avg["biofuel"], avg["nuclear"]
    for key in ("coal", "gas", "oil"):
        day[f"{key}_gw"] = fossil * avg[key] / fossil_avg
    return day


def make_jobs(n: int, seed: int, horizon_h: int = 24) -> pd.DataFrame:
    """Deferrable batch jobs: release hour, duration (h), nodes, deadline hour."""
    rng = np.random.default_rng(seed)
    release = rng.integers(0, 17, n)
    duration = rng.integers(1, 4, n)
    nodes = rng.integers(1, 5, n)
    slack = rng.integers(2, 13, n)
    deadline = np.minimum(release + duration + slack, horizon_h)
    return pd.DataFrame(
        {
            "release_h": release,
            "duration_h": duration,
            "nodes": nodes,
            "deadline_h": deadline,
        }
    )


def plot_day(ax: Any, day: pd.DataFrame, intensity: np.ndarray) -> None:
    """Stacked generation by source with the carbon intensity on a second axis."""
    parts = ["nuclear_gw", "hydro_gw", "bio_gw", "wind_gw", "solar_gw", "gas_gw",
             "oil_gw", "coal_gw"]  # fmt: skip
    colours = ["#9467bd", "#1f77b4", "#8c564b", "#17becf", "#ffbf00", "#ff7f0e",
               "#7f7f7f", "#2b2b2b"]  # fmt: skip
    ax.stackplot(
        day["hour"],
        *[day[p] for p in parts],
        labels=[p.removesuffix("_gw") for p in parts],
        colors=colours,
        step="post",
        alpha=0.8,
    )
    ax.step(day["hour"], day["demand_gw"], where="post", color="black", ls="--",
            lw=1, label="demand")  # fmt: skip
    ax.set_xlabel("hour of the day")
    ax.set_ylabel("generation (GW)")
    ax.set_ylim(0, 1.3 * day["demand_gw"].max())
    ax.legend(fontsize=7, loc="upper left", ncol=5)
    twin = ax.twinx()
    twin.step(day["hour"], intensity, where="post", color="red", lw=2)
    twin.set_ylabel("carbon intensity (gCO₂e/kWh)", color="red")
    twin.set_ylim(0, None)


def plot_schedules(axes: Any, schedules: dict[str, np.ndarray], jobs: pd.DataFrame,
                   intensity: np.ndarray) -> None:  # fmt: skip
    """Nodes busy per hour under each schedule, over the intensity curve."""
    for ax, (name, starts) in zip(axes, schedules.items(), strict=True):
        busy = np.zeros(24)
        for start, row in zip(starts, jobs.itertuples(), strict=True):
            busy[start : start + row.duration_h] += row.nodes
        ax.bar(HOURS, busy, width=1.0, align="edge", color="#4c72b0")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("hour")
        twin = ax.twinx()
        twin.step(HOURS, intensity, where="post", color="red", lw=1.5)
        twin.set_ylim(0, None)
        twin.set_yticks([])
    axes[0].set_ylabel("nodes busy (bars)")
    twin.text(23.5, intensity.max(), "intensity", color="red", ha="right",
              va="bottom", fontsize=8)  # fmt: skip


def print_kernels(kernel_cpu_s: dict[str, float], watts_per_vcpu: float) -> None:
    """One line per kernel: CPU milliseconds per call and the model's millijoules."""
    for name, seconds in kernel_cpu_s.items():
        print(
            f"  {name:10s} {1000 * seconds:7.2f} ms CPU per call, "
            f"{1000 * seconds * watts_per_vcpu:7.2f} mJ by the model"
        )


def promtool_check_rules(promtool: str, rule: dict[str, Any], folder: Path) -> int:
    """Run `promtool check rules` on a PrometheusRule's groups; return the rule
    count (AssertionError with promtool's output when it fails)."""
    import subprocess

    import yaml

    rules_file = Path(folder) / "rules-only.yaml"
    rules_file.write_text(yaml.safe_dump(rule["spec"]))
    check = subprocess.run(
        [promtool, "check", "rules", str(rules_file)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    return sum(len(group["rules"]) for group in rule["spec"]["groups"])
