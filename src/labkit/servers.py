"""Local servers a chapter starts on 127.0.0.1: start, wait until ready, stop (with
everything they spawned)."""

from __future__ import annotations

import atexit
import http.client
import json
import os
import signal
import socket
import subprocess
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Mapping, Sequence

_STARTED: list[subprocess.Popen[bytes]] = []


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_ready(
    url: str, process: subprocess.Popen[bytes] | None = None, *, timeout_s: float = 30
) -> float:
    """Poll `url` with GET until it answers 200; return the seconds waited. Raises if
    the process exits first."""
    started = time.perf_counter()
    parts = urllib.parse.urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"{url}: the process exited with code {process.returncode} before it "
                "was ready"
            )
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=2)
        try:
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return time.perf_counter() - started
        except OSError:
            pass
        finally:
            conn.close()
        if time.perf_counter() - started > timeout_s:
            raise TimeoutError(f"{url} not ready after {timeout_s} s")
        time.sleep(0.1)


def start_server(
    command: Sequence[str],
    *,
    ready_url: str | None,
    log_path: str | Path,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout_s: float = 60,
) -> subprocess.Popen[bytes]:
    """Start `command` in its own process group, stdout+stderr to `log_path`, and wait
    for `ready_url` (GET 200).

    The process (and every child it spawns) is stopped by `stop_server`, or at
    interpreter exit. If it exits or is not ready within `timeout_s`, it is stopped and
    the error carries the last lines of its log.
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **(env or {})}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(command),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
        )
    _STARTED.append(process)
    if ready_url is not None:
        try:
            wait_ready(ready_url, process, timeout_s=timeout_s)
        except (RuntimeError, TimeoutError) as err:
            stop_server(process)
            raise RuntimeError(
                f"{err}\n--- last lines of {log_path.name} ---\n{_log_tail(log_path)}"
            ) from None
    return process


def stop_server(process: subprocess.Popen[bytes], *, timeout_s: float = 10) -> int:
    """Stop a server from `start_server` and its whole process group: SIGTERM, then
    SIGKILL. Return its exit code."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    try:  # children that outlived their parent (gunicorn workers, for example)
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if process in _STARTED:
        _STARTED.remove(process)
    return process.returncode


@atexit.register
def stop_all_servers() -> None:
    """Stop every server `start_server` started and nobody stopped (runs at interpreter
    exit)."""
    for process in list(reversed(_STARTED)):
        stop_server(process)


def send_json(
    handler: BaseHTTPRequestHandler,
    status: int,
    body: Any,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Answer an `http.server` request with `body` as JSON (Content-Type and
    Content-Length set)."""
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(data)
