"""The smoke profile where CI re-runs it, and the bad-profile check for every notebook.

`make execute` runs every notebook at profile="smoke" after its laptop run and stamps
that wall time, which `tests/test_hygiene.py` holds against the smoke budget. CI re-runs
the smoke profile only where it proves what nbval does not: notebooks marked `"labkit":
{"ray": true}` run here, into _build/smoke/, against a real two-node Ray cluster that
this module starts (`ray start --head` plus one worker node, on loopback) and stops by
process group at the end, so the cluster path of the same code is exercised. A bad
profile must raise a ValueError naming the valid values, in every notebook.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import papermill
import pytest

from labkit.book import ROOT, budget_s
from labkit.ray_local import loopback_node_ip
from labkit.servers import free_port

SMOKE_DIR = ROOT / "_build" / "smoke"
RAY = str(Path(sys.executable).with_name("ray"))


def uses_ray(path: Path) -> bool:
    return bool(
        json.loads(path.read_text()).get("metadata", {}).get("labkit", {}).get("ray")
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "ray_notebook" in metafunc.fixturenames:
        from conftest import selected_notebooks

        paths = [p for p in selected_notebooks(metafunc.config) if uses_ray(ROOT / p)]
        metafunc.parametrize("ray_notebook", paths, ids=[str(p) for p in paths])


def start_node(
    args: list[str], log: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """Start a Ray node in the foreground (`--block`) in its own process group, logging
    to `log`."""
    return subprocess.Popen(
        [RAY, "start", "--block", "--disable-usage-stats", *args],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_node(proc: subprocess.Popen[bytes]) -> None:
    """Stop a node by its process group: SIGTERM, then SIGKILL after 20 s."""
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def alive_nodes(address: str, env: dict[str, str]) -> int:
    """The number of alive nodes, asked of the cluster by a fresh driver (0 when it
    cannot connect)."""
    code = (
        "import ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False);"
        "print(sum(n['Alive'] for n in ray.nodes()))" % address
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return 0
    return (
        int(out.stdout.strip().splitlines()[-1])
        if out.returncode == 0 and out.stdout.strip()
        else 0
    )


def start_until_joined(
    args: list[str],
    log: Path,
    env: dict[str, str],
    address: str,
    nodes: int,
    attempts: int = 3,
) -> subprocess.Popen[bytes]:
    """Start a node and wait until the cluster has `nodes` alive; retry when the node
    gives up.

    Ray allows a raylet 30 s to register; on a loaded 2-core machine that can pass, and
    the node exits.
    """
    for _ in range(attempts):
        proc = start_node(args, log, env)
        deadline = time.monotonic() + 180
        while proc.poll() is None and time.monotonic() < deadline:
            if alive_nodes(address, env) >= nodes:
                return proc
            time.sleep(1)
        stop_node(proc)
    raise AssertionError(
        f"Ray node did not join after {attempts} attempts:\n{log.read_text()[-3000:]}"
    )


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real two-node Ray cluster on loopback: head on 127.0.0.2, worker node on
    127.0.0.3.

    Yields the environment a driver needs: RAY_ADDRESS and the cluster's own auth token.
    (Ray rewrites 127.0.0.1 to the machine's routable address; other loopback addresses
    are kept as given.)
    """
    logs = tmp_path_factory.mktemp("ray-logs")
    address = f"{loopback_node_ip(0)}:{free_port()}"
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    started: list[subprocess.Popen[bytes]] = []
    try:
        started.append(
            start_until_joined(
                [
                    "--head",
                    f"--node-ip-address={loopback_node_ip(0)}",
                    f"--port={address.split(':')[1]}",
                    "--num-cpus=2",
                    f"--dashboard-port={free_port()}",
                    "--dashboard-host=127.0.0.1",
                    f"--ray-client-server-port={free_port()}",
                ],
                logs / "head.log",
                env,
                address,
                1,
            )
        )
        started.append(
            start_until_joined(
                [
                    f"--address={address}",
                    f"--node-ip-address={loopback_node_ip(1)}",
                    "--num-cpus=2",
                    '--resources={"worker_node": 1}',
                ],
                logs / "worker.log",
                env,
                address,
                2,
            )
        )
        yield {
            "RAY_ADDRESS": address,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": env["RAY_AUTH_TOKEN"],
        }
    finally:
        for proc in reversed(started):
            stop_node(proc)


def run_smoke(notebook: Path, env_extra: dict[str, str]) -> float:
    """Run the notebook at profile=smoke into _build/smoke; return the wall time in
    seconds."""
    SMOKE_DIR.mkdir(parents=True, exist_ok=True)
    out = SMOKE_DIR / notebook.name
    saved = dict(os.environ)
    os.environ.update({"HF_HUB_OFFLINE": "1", **env_extra})
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(ROOT / notebook),
            str(out),
            parameters={"profile": "smoke"},
            cwd=str((ROOT / notebook).parent),
            kernel_name="python3",
            progress_bar=False,
            execution_timeout=300,
        )
    except papermill.PapermillExecutionError as err:
        pytest.fail(
            f"{notebook} failed at profile=smoke in cell {err.cell_index}: "
            f"{err.ename}: {err.evalue}\n"
            f"  reproduce: papermill {notebook} {out.relative_to(ROOT)} -p profile "
            "smoke "
            f"--cwd {notebook.parent}"
        )
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return time.perf_counter() - start


def test_smoke_profile_within_budget(
    ray_notebook: Path, ray_cluster: dict[str, str]
) -> None:
    wall_s = run_smoke(ray_notebook, ray_cluster)
    budget = budget_s(json.loads((ROOT / ray_notebook).read_text()), "smoke")
    assert wall_s <= budget, (
        f"{ray_notebook}: smoke run took {wall_s:.1f} s, budget {budget:.0f} s"
    )


def test_bad_profile_names_the_valid_values(notebook: Path, tmp_path: Path) -> None:
    with pytest.raises(papermill.PapermillExecutionError) as info:
        papermill.execute_notebook(
            str(ROOT / notebook),
            str(tmp_path / "bad.ipynb"),
            parameters={"profile": "bogus"},
            cwd=str((ROOT / notebook).parent),
            kernel_name="python3",
            progress_bar=False,
            execution_timeout=120,
        )
    assert info.value.ename == "ValueError"
    assert all(
        name in info.value.evalue for name in ("'smoke'", "'laptop'", "'cluster'")
    ), info.value.evalue
