"""Plumbing of the network-slicing-6g chapter: the slice catalogue, the user-plane
latency model of the MEC chapter, request and traffic generators, the time-stepped
simulator, and the plots. The admission ILP, its brute-force check and the policies stay
in the notebook: they are what the chapter teaches.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pandas as pd

# One 100 MHz NR carrier at 30 kHz subcarrier spacing: 273 PRBs (3GPP TS 38.101-1,
# Table 5.3.2-1); a PRB is 12 subcarriers wide.
PRB_CAPACITY = 273
SCS_KHZ = 30
PRB_MHZ = 12 * SCS_KHZ / 1000

# The slice types. SST: TS 23.501 Table 5.15.2.2-1; 5QI: TS 23.501 Table 5.7.4-1.
# Spectral efficiency (bit/s/Hz), rates, vCPUs, prices, activity and arrival rates are
# assumptions of this chapter (see the prose).
SLICE_TYPES = {
    "URLLC": {
        "sst": 2,
        "five_qi": 82,
        "radio": "URLLC",
        "spectral_efficiency": 1.0,
        "rate_mbps": (2.0, 10.0),
        "budget_ms": (1.0,),
        "vcpu": (2, 4),
        "price": 3.0,
        "activity": (1.5, 3.5),
        "arrivals": 0.4,
        "priority": 0,
    },
    "mMTC": {
        "sst": 3,
        "five_qi": 9,
        "radio": "eMBB",
        "spectral_efficiency": 0.5,
        "rate_mbps": (1.0, 5.0),
        "budget_ms": (300.0,),
        "vcpu": (1, 2),
        "price": 1.5,
        "activity": (4.0, 6.0),
        "arrivals": 0.4,
        "priority": 1,
    },
    "eMBB": {
        "sst": 1,
        "five_qi": 80,
        "radio": "eMBB",
        "spectral_efficiency": 5.0,
        "rate_mbps": (20.0, 80.0),
        "budget_ms": (6.0, 300.0),
        "vcpu": (2, 8),
        "price": 1.0,
        "activity": (5.5, 4.5),
        "arrivals": 0.5,
        "priority": 2,
    },
}
TYPES = tuple(SLICE_TYPES)

# The user-plane latency model of the mec-5g chapter: 3GPP TR 38.913 radio targets,
# 5 us/km of fibre (ITU-T G.114), and its assumptions for UPF and routers.
AIR_MS = {"URLLC": 0.5, "eMBB": 4.0}
FIBRE_MS_PER_KM = 0.005
UPF_MS = 0.05
HOP_MS = 0.02
HOPS_PER_KM = 1 / 100

# Where a slice's user plane can terminate (assumptions): two MEC hosts behind local
# UPFs and a central cloud behind the central UPF.
SITES = {
    "mec-a": {"distance_km": 10.0, "vcpu": 24},
    "mec-b": {"distance_km": 60.0, "vcpu": 24},
    "cloud": {"distance_km": 400.0, "vcpu": 512},
}


def one_way_ms(distance_km: float, radio: str) -> float:
    """UE -> application, one way, with the UPF and the application at distance_km."""
    transport = (
        distance_km * FIBRE_MS_PER_KM
        + HOP_MS * (2 + distance_km * HOPS_PER_KM)
        + UPF_MS
    )
    return AIR_MS[radio] + transport


def prbs_for_rate(rate_mbps: float, spectral_efficiency: float) -> int:
    """PRBs a guaranteed rate needs: rate / (PRB width x efficiency), rounded up."""
    return math.ceil(rate_mbps / (PRB_MHZ * spectral_efficiency) - 1e-9)


def feasible_sites(slice_type: str, budget_ms: float) -> list[str]:
    """The sites whose one-way latency meets a slice's budget."""
    radio = SLICE_TYPES[slice_type]["radio"]
    return [
        name
        for name, site in SITES.items()
        if one_way_ms(site["distance_km"], radio) <= budget_ms + 1e-9
    ]


def make_request(rng: np.random.Generator, slice_type: str, mean_steps: float) -> dict:
    """One slice request: its SLA (guaranteed PRBs, latency budget), vCPUs, lifetime,
    value, and the activity (share of its guarantee it uses) over its lifetime."""
    spec = SLICE_TYPES[slice_type]
    rate = float(np.round(rng.uniform(*spec["rate_mbps"]), 1))
    prbs = prbs_for_rate(rate, spec["spectral_efficiency"])
    steps = int(rng.geometric(1 / mean_steps))
    budget = float(rng.choice(spec["budget_ms"]))
    return {
        "type": slice_type,
        "rate_mbps": rate,
        "prb_min": prbs,
        "prb_max": prbs,
        "budget_ms": budget,
        "vcpu": int(rng.integers(spec["vcpu"][0], spec["vcpu"][1] + 1)),
        "steps": steps,
        "value": spec["price"] * prbs * steps,
        "extra_value": 0.0,
        "activity": rng.beta(*spec["activity"], size=steps),
    }


def one_shot_requests(count: int, seed: int) -> pd.DataFrame:
    """A batch of requests arriving together, with elastic eMBB PRBs: an eMBB slice
    takes up to twice its guarantee, each extra PRB worth a fraction of its price."""
    rng = np.random.default_rng(seed)
    weights = np.array([SLICE_TYPES[t]["arrivals"] for t in TYPES])
    kinds = rng.choice(TYPES, size=count, p=weights / weights.sum())
    rows = [make_request(rng, str(kind), 20.0) for kind in kinds]
    frame = pd.DataFrame(rows).drop(columns=["activity"])
    elastic = frame["type"] == "eMBB"
    frame.loc[elastic, "prb_max"] = 2 * frame.loc[elastic, "prb_min"]
    frame.loc[elastic, "extra_value"] = 0.3 * frame.loc[elastic, "steps"]
    return frame


def arrivals(seed: int, steps: int, load: float, mean_steps: float) -> list[list]:
    """The requests arriving at each step (Poisson per type, scaled by `load`): the same
    list for every policy, so that they are compared on common random numbers."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        now = []
        for slice_type in TYPES:
            for _ in range(rng.poisson(load * SLICE_TYPES[slice_type]["arrivals"])):
                now.append(make_request(rng, slice_type, mean_steps))
        out.append(now)
    return out


def offered_by_type(load: float, mean_steps: float, samples: int = 20000) -> dict:
    """Offered guaranteed PRBs per type (Little's law: arrivals x mean PRBs x mean
    lifetime)."""
    rng = np.random.default_rng(12345)
    out = {}
    for slice_type, spec in SLICE_TYPES.items():
        rates = rng.uniform(*spec["rate_mbps"], size=samples)
        prbs = np.ceil(rates / (PRB_MHZ * spec["spectral_efficiency"]))
        out[slice_type] = load * spec["arrivals"] * prbs.mean() * mean_steps
    return out


def offered_load(load: float, mean_steps: float) -> float:
    """Offered guaranteed PRBs over the carrier's PRBs."""
    return sum(offered_by_type(load, mean_steps).values()) / PRB_CAPACITY


def serve(demand: np.ndarray, types: np.ndarray, capacity: float) -> np.ndarray:
    """A priority scheduler: URLLC first, then mMTC, then eMBB; a type that does not
    fit gets the same share of its demand on every slice."""
    served = np.zeros_like(demand)
    left = capacity
    for slice_type in sorted(TYPES, key=lambda t: SLICE_TYPES[t]["priority"]):
        mask = types == slice_type
        wanted = demand[mask].sum()
        if wanted <= 0:
            continue
        share = min(1.0, left / wanted)
        served[mask] = demand[mask] * share
        left -= wanted * share
    return served


Policy = Callable[[pd.DataFrame, pd.DataFrame, dict], dict]


def simulate(
    policy: Policy,
    requests: list[list],
    *,
    partition: dict | None = None,
    warmup: int = 0,
) -> dict:
    """Run `policy` over the arrivals. Each step: slices end, requests arrive, the
    policy admits some (index -> site), every active slice uses its activity times its
    guarantee, and the scheduler serves the shared carrier, or with `partition` each
    type's PRB share alone. Returns per-step figures and the totals after `warmup`."""
    active: list[dict] = []
    ctx: dict = {"aggregate_ratio": [], "step": 0}
    steps, blocked, offered = [], dict.fromkeys(TYPES, 0), dict.fromkeys(TYPES, 0)
    slice_steps, violated = dict.fromkeys(TYPES, 0), dict.fromkeys(TYPES, 0)
    solves = 0
    revenue = 0.0
    for step, new in enumerate(requests):
        ctx["step"] = step
        active = [s for s in active if s["end"] > step]
        admitted = {}
        if new:
            new_frame = pd.DataFrame(new)
            active_frame = pd.DataFrame(
                active, columns=["type", "prb_min", "vcpu", "site"]
            )
            admitted = policy(new_frame, active_frame, ctx)
            solves += 1
            for index, request in enumerate(new):
                if step >= warmup:
                    offered[request["type"]] += 1
                if index in admitted:
                    active.append(
                        {
                            **request,
                            "site": admitted[index],
                            "start": step,
                            "end": step + request["steps"],
                        }
                    )
                elif step >= warmup:
                    blocked[request["type"]] += 1
        types = np.array([s["type"] for s in active])
        guaranteed = np.array([s["prb_min"] for s in active], dtype=float)
        demand = np.array(
            [s["prb_min"] * s["activity"][step - s["start"]] for s in active]
        )
        if partition is None:
            served = serve(demand, types, PRB_CAPACITY)
        else:
            served = np.zeros_like(demand)
            for slice_type, share in partition.items():
                mask = types == slice_type
                served[mask] = serve(demand[mask], types[mask], share)
        short = served < demand - 1e-9
        if guaranteed.sum() > 0:
            ctx["aggregate_ratio"].append(demand.sum() / guaranteed.sum())
        row = {
            "step": step,
            "utilisation": served.sum() / PRB_CAPACITY,
            "reserved": guaranteed.sum() / PRB_CAPACITY,
            "demand": demand.sum() / PRB_CAPACITY,
            "violations": int(short.sum()),
            "active": len(active),
            "mec_vcpu": sum(s["vcpu"] for s in active if s["site"] != "cloud"),
        }
        for site in SITES:
            for slice_type in TYPES:
                row[f"vcpu_{site}_{slice_type}"] = sum(
                    s["vcpu"]
                    for s in active
                    if (s["site"], s["type"]) == (site, slice_type)
                )
        for slice_type in TYPES:
            row[f"active_{slice_type}"] = int((types == slice_type).sum())
            row[f"reserved_{slice_type}"] = float(guaranteed[types == slice_type].sum())
        steps.append(row)
        if step >= warmup:
            revenue += sum(
                SLICE_TYPES[s["type"]]["price"] * s["prb_min"] for s in active
            )
            for slice_type in TYPES:
                mask = types == slice_type
                slice_steps[slice_type] += int(mask.sum())
                violated[slice_type] += int((short & mask).sum())
    frame = pd.DataFrame(steps)
    after = frame[frame["step"] >= warmup]
    return {
        "steps": frame,
        "utilisation": float(after["utilisation"].mean()),
        "reserved": float(after["reserved"].mean()),
        "violation_rate": sum(violated.values()) / max(1, sum(slice_steps.values())),
        "violated": violated,
        "slice_steps": slice_steps,
        "overload_steps": float((after["violations"] > 0).mean()),
        "revenue_per_step": revenue / max(1, len(after)),
        "blocking": {t: blocked[t] / max(1, offered[t]) for t in TYPES},
        "solves": solves,
    }


def check_parameters(values: dict) -> None:
    """Check the numeric parameters; raise a ValueError naming the valid values."""
    import labkit

    for name, maximum in {
        "sim_steps": 5000,
        "seeds": 20,
        "oneshot_requests": 200,
    }.items():
        labkit.check_positive(name, values[name], maximum=maximum)
    labkit.check_positive("load", values["load"], integer=False, maximum=10)
    labkit.check_positive("mean_lifetime", values["mean_lifetime"], maximum=1000)
    labkit.check_positive(
        "solver_time_limit_s", values["solver_time_limit_s"], integer=False, maximum=60
    )
    quantile = values["overbooking_quantile"]
    if not isinstance(quantile, float) or not 0.5 <= quantile < 1.0:
        raise ValueError(
            f"overbooking_quantile={quantile!r} is not valid; a float in [0.5, 1.0)"
        )
    if values["sim_steps"] < 5 * values["mean_lifetime"]:
        raise ValueError(
            f"sim_steps={values['sim_steps']} is not valid; it must be at least 5 x "
            f"mean_lifetime ({values['mean_lifetime']}): 2 to fill, 3 to measure"
        )


def plot_runs(runs: dict, seed: int, warmup: int) -> None:
    """PRBs used over time for one seed; per policy, the mean utilisation and the SLA
    violation rate of every seed (dots) and their mean (bar)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, 3, figsize=(10, 3.4), gridspec_kw={"width_ratios": [2.2, 1, 1]}
    )
    names = list(runs)
    colours = {name: f"C{k}" for k, name in enumerate(names)}
    for name, by_seed in runs.items():
        steps = by_seed[seed]["steps"]
        axes[0].plot(
            steps["step"],
            100 * steps["utilisation"],
            lw=1,
            color=colours[name],
            label=name,
        )
    axes[0].axvspan(0, warmup, color="grey", alpha=0.15, label="warm-up (not counted)")
    axes[0].axhline(100, color="grey", lw=0.8, ls=":")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("PRBs used (% of carrier)")
    axes[0].set_title(f"seed {seed}", fontsize=9)
    axes[0].legend(fontsize=7, loc="lower right")
    panels = [
        (axes[1], "utilisation", "mean PRBs used (%)"),
        (axes[2], "violation_rate", "slice-steps with an SLA violation (%)"),
    ]
    for ax, key, label in panels:
        for k, name in enumerate(names):
            values = [100 * r[key] for r in runs[name].values()]
            ax.bar(k, np.mean(values), color=colours[name], alpha=0.35)
            ax.scatter([k] * len(values), values, s=16, color=colours[name])
        ax.set_xticks(
            range(len(names)), [n.replace(" ", "\n", 1) for n in names], fontsize=7
        )
        ax.set_ylabel(label, fontsize=8)
    fig.tight_layout()
    plt.show()


def first_come_first_served(requests: pd.DataFrame, prb_capacity: int, cpu_free: dict):
    """The baseline admission: in arrival order, each request to the farthest feasible
    site with room (keeping MEC vCPUs for the slices that need them), at its
    guaranteed PRBs; leftover PRBs to the elastic slices in arrival order."""
    free_cpu, left, sites = dict(cpu_free), prb_capacity, {}
    for i, r in enumerate(requests.to_dict("records")):
        for site in reversed(feasible_sites(r["type"], r["budget_ms"])):
            if r["prb_min"] <= left and r["vcpu"] <= free_cpu[site]:
                sites[i], left = site, left - r["prb_min"]
                free_cpu[site] -= r["vcpu"]
                break
    prbs = {i: int(requests.iloc[i]["prb_min"]) for i in sites}
    for i in sites:
        more = min(left, int(requests.iloc[i]["prb_max"]) - prbs[i])
        prbs[i], left = prbs[i] + more, left - more
    return sites, prbs


def plan_value(requests: pd.DataFrame, sites: dict, prbs: dict, mec_penalty: float):
    """The ILP's objective for a plan ({row: site}, {row: PRBs})."""
    r = requests.iloc[list(sites)]
    extras = np.array([prbs[i] for i in sites]) - r["prb_min"].to_numpy()
    mec = np.array([s != "cloud" for s in sites.values()])
    return float(
        r["value"].sum()
        + (r["extra_value"] * extras).sum()
        - mec_penalty * (r["vcpu"] * mec).sum()
    )


def plan_table(requests: pd.DataFrame, sites: dict, prbs: dict) -> pd.DataFrame:
    """Slices, PRBs and vCPUs of a plan per slice type and site."""
    r = requests.iloc[list(sites)].assign(site=list(sites.values()))
    r["prbs"] = [prbs[i] for i in sites]
    return r.groupby(["type", "site"]).agg(
        slices=("prbs", "size"), prbs=("prbs", "sum"), vcpu=("vcpu", "sum")
    )


def summary(runs: dict) -> pd.DataFrame:
    """One row per policy and seed: the figures `simulate` returns."""
    rows = []
    for name, by_seed in runs.items():
        for seed, r in by_seed.items():
            rows.append(
                {
                    "policy": name,
                    "seed": seed,
                    "utilisation": r["utilisation"],
                    "reserved": r["reserved"],
                    "violation_rate": r["violation_rate"],
                    "overload_steps": r["overload_steps"],
                    "URLLC_violations": r["violated"]["URLLC"],
                    "URLLC_blocked": r["blocking"]["URLLC"],
                    "revenue": r["revenue_per_step"],
                }
            )
    return pd.DataFrame(rows)


def render_template(path, values: dict, folder) -> list:
    """A YAML template with its placeholders replaced, written into `folder` and loaded
    with labkit.load_manifests."""
    from pathlib import Path

    import labkit

    text = Path(path).read_text()
    for key, value in values.items():
        text = text.replace(key, str(value))
    filled = Path(folder) / f"{values.get('SLICE', 'endpoint')}-{Path(path).name}"
    filled.write_text(text)
    return labkit.load_manifests(filled)
