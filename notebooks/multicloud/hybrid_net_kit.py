"""Plumbing for the hybrid-networking chapter: BIRD configs and control socket, the
WireGuard namespace path, the SD-WAN link emulator and traces, the HTTP servers and
load generator behind HAProxy, and the plots. The techniques stay in the notebook."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import heapq
import http.client
import json
import os
import re
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRACE_PATH = HERE / "templates" / "hybrid-networking" / "link-traces.csv"

# --------------------------------------------------------------------------- BIRD


def bird_config(
    *,
    router_id: str,
    local: str,
    neighbor: str,
    local_as: int,
    neighbor_as: int,
    prefixes: list[str],
    port: int = 1179,
    log_path: str | None = None,
    multihop: bool = True,
    passive: bool = False,
) -> str:
    """A BIRD 2 config: one static protocol originating `prefixes`, one eBGP session,
    no kernel protocol (nothing touches the host's routing table)."""
    routes = " ".join(f"route {p} blackhole;" for p in prefixes)
    log = f'log "{log_path}" all;\n' if log_path else ""
    hop = "multihop; " if multihop else ""
    # one side only accepts: no connection collision (RFC 4271 6.8) to resolve
    hop += "passive on; " if passive else ""
    return f"""router id {router_id};
{log}protocol device {{}}
protocol static site_routes {{ ipv4; {routes} }}
protocol bgp peer {{
  local {local} port {port} as {local_as};
  neighbor {neighbor} port {port} as {neighbor_as};
  strict bind yes; {hop}
  connect delay time 1; connect retry time 1;
  hold time 9; keepalive time 3;
  ipv4 {{ import all; export where proto = "site_routes"; }};
}}
"""


class BirdControl:
    """A client of BIRD's control socket (the protocol birdc speaks): one command, the
    reply's text. A reply ends with a line whose code starts with 0, 8 or 9."""

    def __init__(self, path: str | Path, timeout_s: float = 5.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout_s)
        deadline = time.monotonic() + timeout_s
        while True:  # the socket file appears a moment before BIRD listens on it
            try:
                self.sock.connect(str(path))
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        self.buffer = b""
        self._reply()  # the "0001 BIRD 2.0.12 ready." greeting

    def _reply(self) -> str:
        lines = []
        while True:
            while b"\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("BIRD closed its control socket")
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\n", 1)
            text = line.decode()
            lines.append(text)
            if re.match(r"^[089]\d{3} ", text):
                return "\n".join(lines)

    def command(self, text: str) -> str:
        self.sock.sendall(text.encode() + b"\n")
        return self._reply()

    def close(self) -> None:
        self.sock.close()


def show_route(ctl: BirdControl) -> str:
    """`birdc show route` with the times of day masked (they change run to run)."""
    text = birdc_text(ctl.command("show route"))
    return re.sub(r"\b\d\d:\d\d:\d\d\.\d{3}\b", "hh:mm:ss", text)


def birdc_text(reply: str) -> str:
    """A control-socket reply as birdc prints it (codes stripped)."""
    out = []
    for line in reply.splitlines():
        out.append(line[5:] if re.match(r"^\d{4}[ -]", line) else line[1:])
    return "\n".join(s for s in out if s.strip())


_STARTED: list = []  # stopped when the kernel exits, whatever failed before


@atexit.register
def _stop_all() -> None:
    for proc in _STARTED:
        stop(proc)


def start_bird(workdir: Path, name: str, config: str, netns: str | None = None):
    """Write `config` and run `bird -f` with its own control socket; return
    (process, control socket path)."""
    conf = workdir / f"{name}.conf"
    conf.write_text(config)
    ctl = workdir / f"{name}.ctl"
    cmd = [
        find("bird"),
        "-f",
        "-c",
        str(conf),
        "-s",
        str(ctl),
        "-P",
        str(workdir / f"{name}.pid"),
    ]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    log = open(workdir / f"{name}.out", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    _STARTED.append(proc)
    deadline = time.monotonic() + 10
    while not ctl.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"bird {name} did not start: " + (workdir / f"{name}.out").read_text()
            )
        time.sleep(0.01)
    return proc, ctl


def stop(proc) -> None:
    """Stop a process started here (its whole session)."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, 15)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait(5)


def wait_established(ctl: BirdControl, timeout_s: float = 20) -> float:
    """Seconds until the BGP protocol `peer` is Established."""
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        if "Established" in ctl.command("show protocols peer"):
            return time.monotonic() - began
        time.sleep(0.02)
    raise TimeoutError("the BGP session did not come up")


def routes(ctl: BirdControl) -> list[tuple[str, str, str]]:
    """(prefix, protocol, AS path) of every route in master4, sorted."""
    text = birdc_text(ctl.command("show route"))
    found = re.findall(
        r"^(\d+\.\d+\.\d+\.\d+/\d+)\s+\S+.*?\[(\w+) .*?\]"
        r"(?:.*?\[(AS[\w ]*?)\])?",
        text,
        re.M,
    )
    return sorted((p, proto, path or "-") for p, proto, path in found)


def has_route(ctl: BirdControl, prefix: str) -> bool:
    return "Network not found" not in ctl.command(f"show route for {prefix}")


def time_until(
    ctl: BirdControl,
    prefix: str,
    present: bool,
    began: float,
    timeout_s: float = 10,
    poll_s: float = 0.001,
) -> float:
    """Seconds from `began` until `prefix` is (not) in the RIB behind `ctl`."""
    while time.monotonic() - began < timeout_s:
        if has_route(ctl, prefix) == present:
            return time.monotonic() - began
        time.sleep(poll_s)
    raise TimeoutError(f"{prefix} still {'absent' if present else 'present'}")


# --------------------------------------------------------------------------- tools


def find(tool: str) -> str | None:
    for folder in os.environ.get("PATH", "").split(":") + ["/usr/sbin", "/sbin"]:
        path = Path(folder) / tool
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def run(cmd: list[str], netns: str | None = None, **kw) -> str:
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


# --------------------------------------------------------------------------- WireGuard

SNIFFER = r"""
import os, socket, sys, time, struct
iface, marker, stop_file = sys.argv[1], sys.argv[2].encode(), sys.argv[3]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(3))
s.bind((iface, 0)); s.settimeout(0.05)
print("ready", flush=True)
frames = plain = wg_data = 0
end = time.monotonic() + 20
while time.monotonic() < end and not os.path.exists(stop_file):
    try:
        data = s.recv(65535)
    except socket.timeout:
        continue
    frames += 1
    plain += marker in data
    # IPv4 over Ethernet (veth) carrying UDP to port 51820, WireGuard type 4 (data)
    if len(data) > 42 and data[12:14] == b"\x08\x00" and data[23] == 17:
        ihl = (data[14] & 15) * 4
        udp = 14 + ihl
        ports = struct.unpack("!HH", data[udp:udp + 4])
        if 51820 in ports and data[udp + 8] == 4:
            wg_data += 1
print(frames, plain, wg_data)
"""


@dataclass
class WireGuardSites:
    """Two network namespaces joined by a veth pair (the 'internet') and a WireGuard
    tunnel run by wireguard-go (the kernel here has no WireGuard module)."""

    tag: str
    workdir: Path
    procs: list = field(default_factory=list)
    namespaces: list = field(default_factory=list)

    UNDERLAY = {"a": "192.168.100.1", "b": "192.168.100.2"}
    OVERLAY = {"a": "172.31.0.1", "b": "172.31.0.2"}

    def ns(self, site: str) -> str:
        return f"{self.tag}-{site}"

    def up(self) -> None:
        keys = {}
        for site in "ab":
            run(["ip", "netns", "add", self.ns(site)])
            self.namespaces.append(self.ns(site))
            run(["ip", "link", "set", "lo", "up"], self.ns(site))
            private = run(["wg", "genkey"]).strip()
            public = run(["wg", "pubkey"], input=private).strip()
            key_file = self.workdir / f"wg-{site}.key"
            key_file.write_text(private + "\n")
            key_file.chmod(0o600)
            keys[site] = (key_file, public)
        atexit.register(self.down)
        run(
            [
                "ip",
                "link",
                "add",
                f"{self.tag}-va",
                "type",
                "veth",
                "peer",
                "name",
                f"{self.tag}-vb",
            ]
        )
        for site in "ab":
            veth = f"{self.tag}-v{site}"
            run(["ip", "link", "set", veth, "netns", self.ns(site)])
            run(
                ["ip", "addr", "add", f"{self.UNDERLAY[site]}/30", "dev", veth],
                self.ns(site),
            )
            run(["ip", "link", "set", veth, "up"], self.ns(site))
        for site, other in (("a", "b"), ("b", "a")):
            wg = f"{self.tag}-wg{site}"
            log = open(self.workdir / f"wireguard-go-{site}.log", "wb")  # noqa: SIM115
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(site), find("wireguard-go"), "-f", wg],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "LOG_LEVEL": "error"},
            )
            self.procs.append(proc)
            _STARTED.append(proc)
            deadline = time.monotonic() + 10
            while True:
                out = subprocess.run(
                    ["ip", "netns", "exec", self.ns(site), "ip", "link", "show", wg],
                    capture_output=True,
                )
                if out.returncode == 0:
                    break
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"wireguard-go {wg} did not start")
                time.sleep(0.02)
            run(
                [
                    "wg",
                    "set",
                    wg,
                    "listen-port",
                    "51820",
                    "private-key",
                    str(keys[site][0]),
                    "peer",
                    keys[other][1],
                    "endpoint",
                    f"{self.UNDERLAY[other]}:51820",
                    "allowed-ips",
                    f"{self.OVERLAY[other]}/32,10.0.0.0/8",
                ],
                self.ns(site),
            )
            run(
                ["ip", "addr", "add", f"{self.OVERLAY[site]}/30", "dev", wg],
                self.ns(site),
            )
            run(["ip", "link", "set", wg, "mtu", "1420", "up"], self.ns(site))

    def counters(self, site: str, dev: str) -> dict:
        out = json.loads(run(["ip", "-j", "-s", "link", "show", dev], self.ns(site)))
        stats = out[0]["stats64"]
        return {
            "rx_bytes": stats["rx"]["bytes"],
            "tx_bytes": stats["tx"]["bytes"],
            "rx_packets": stats["rx"]["packets"],
            "tx_packets": stats["tx"]["packets"],
        }

    def down(self) -> None:
        for proc in self.procs:
            stop(proc)
        for name in self.namespaces:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        self.namespaces.clear()


def tunnel_transfer(sites: WireGuardSites, n_bytes: int, marker: str) -> dict:
    """Send `n_bytes` of a repeated plaintext `marker` over TCP from site b to site a
    through the tunnel, while sniffing both the veth (underlay) and the WireGuard
    interface (overlay) of site a."""
    sniff = sites.workdir / "sniff.py"
    sniff.write_text(SNIFFER)
    server = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            sites.ns("a"),
            sys.executable,
            "-c",
            "import socket;s=socket.create_server(('%s',5001));c,_=s.accept()\n"
            "n=0\nwhile (d:=c.recv(65536)): n+=len(d)\nprint(n)" % sites.OVERLAY["a"],
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    stop_file = sites.workdir / "sniff.stop"
    sniffers = {
        dev: subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                sites.ns("a"),
                sys.executable,
                str(sniff),
                f"{sites.tag}-{dev}",
                marker,
                str(stop_file),
            ],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for dev in ("va", "wga")
    }
    for proc in sniffers.values():  # both capture before the first byte is sent
        assert proc.stdout.readline().strip() == "ready"
    before = {dev: sites.counters("a", f"{sites.tag}-{dev}") for dev in ("va", "wga")}
    payload = (marker * (n_bytes // len(marker) + 1))[:n_bytes]
    client = (
        "import socket,sys,time\nfor _ in range(50):\n try:\n"
        f"  c=socket.create_connection(('{sites.OVERLAY['a']}',5001));break\n"
        " except OSError: time.sleep(0.02)\n"
        "c.sendall(sys.stdin.buffer.read());c.close()"
    )
    run([sys.executable, "-c", client], sites.ns("b"), input=payload)
    received = int(server.communicate(timeout=10)[0])
    time.sleep(0.1)
    stop_file.write_text("stop")
    after = {dev: sites.counters("a", f"{sites.tag}-{dev}") for dev in ("va", "wga")}
    sniffed = {}
    for dev, proc in sniffers.items():
        frames, plain, wg_data = map(int, proc.communicate(timeout=10)[0].split())
        sniffed[dev] = {"frames": frames, "with_marker": plain, "wg_data": wg_data}
    rx = {dev: after[dev]["rx_bytes"] - before[dev]["rx_bytes"] for dev in after}
    packets = {
        dev: after[dev]["rx_packets"] - before[dev]["rx_packets"] for dev in after
    }
    return {
        "received": received,
        "rx_bytes": rx,
        "rx_packets": packets,
        "sniffed": sniffed,
    }


def wg_show(sites: WireGuardSites, site: str) -> str:
    """`wg show` with the keys shortened (a public key is not a secret, but noise)."""
    out = run(["wg", "show", f"{sites.tag}-wg{site}"], sites.ns(site))
    out = re.sub(r"(public key|peer): (\S{6})\S+", r"\1: \2…", out)
    return out.replace(sites.tag, "hn")


# --------------------------------------------------------------------------- SD-WAN

LINKS = ("mpls", "broadband", "lte")
SLOT_S = 0.1  # one trace row per 100 ms


EPISODES_S = {  # (start, end) of each link's bad spells, seconds into the trace
    "mpls": [(6.0, 9.0), (14.5, 17.5), (22.5, 24.0)],  # provider brown-out: loss
    "broadband": [(0.5, 3.5), (9.0, 12.0), (17.5, 20.5)],  # congestion: queueing
    "lte": [(3.0, 6.0), (11.5, 14.5), (20.0, 23.0)],  # cell load: jitter
}


def make_traces(seconds: float = 24, seed: int = 7) -> list[dict]:
    """Seeded link traces, one row per SLOT_S per link: a steady base (MPLS 38 ms,
    broadband 18 ms, LTE 55 ms) with small noise, and the EPISODES_S bad spells."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = round(seconds / SLOT_S)
    t = np.arange(n) * SLOT_S
    rows = []
    for link in LINKS:
        base = {"mpls": 38.0, "broadband": 18.0, "lte": 55.0}[link]
        latency = base + rng.normal(0, 1.0, n)
        jitter = np.full(n, {"mpls": 1.0, "broadband": 3.0, "lte": 8.0}[link])
        loss = np.full(n, {"mpls": 0.0005, "broadband": 0.002, "lte": 0.003}[link])
        for start, end in EPISODES_S[link]:
            bad = (t >= start) & (t < end)
            if link == "mpls":
                loss[bad] = rng.uniform(0.06, 0.10, bad.sum())
                latency[bad] += 15
            elif link == "broadband":
                latency[bad] += rng.uniform(100, 150, bad.sum())
                jitter[bad] = 20
                loss[bad] = 0.02
            else:
                latency[bad] += 40
                jitter[bad] = 35
        for k in range(n):
            rows.append(
                {
                    "t_s": round(float(t[k]), 2),
                    "link": link,
                    "latency_ms": round(float(latency[k]), 2),
                    "jitter_ms": round(float(jitter[k]), 2),
                    "loss": round(float(loss[k]), 4),
                }
            )
    return rows


def write_traces(path: Path = TRACE_PATH) -> None:
    import csv

    rows = make_traces()
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def load_traces(path: Path = TRACE_PATH) -> dict:
    """{link: {column: array}} from the trace CSV, rows in time order."""
    import csv

    import numpy as np

    columns: dict = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            link = columns.setdefault(
                row["link"], {"latency_ms": [], "jitter_ms": [], "loss": []}
            )
            for key in link:
                link[key].append(float(row[key]))
    return {
        link: {key: np.array(values) for key, values in data.items()}
        for link, data in columns.items()
    }


def emulator_main(config_path: str) -> None:
    """The link emulator: per link, a UDP socket on 127.0.0.1 that forwards every
    datagram to the sink after the trace's latency plus Gaussian jitter, or drops it
    with the trace's loss probability. Time 0 is the config's `start` (monotonic)."""
    import numpy as np

    config = json.loads(Path(config_path).read_text())
    traces = load_traces(Path(config["traces"]))
    rng = np.random.default_rng(config["seed"])
    sel = selectors.DefaultSelector()
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink = ("127.0.0.1", config["sink_port"])
    for link, port in config["ports"].items():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", port))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, link)
    start = time.monotonic() + 0.2  # trace time 0, told to the sender
    Path(config["ready"]).write_text(repr(start))
    queue: list = []
    stop_at = start + config["seconds"] + 2
    seq = 0
    while time.monotonic() < stop_at:
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, data = heapq.heappop(queue)
            out.sendto(data, sink)
        timeout = max(0.0, min(0.05, (queue[0][0] - now) if queue else 0.05))
        for key, _ in sel.select(timeout):
            data = key.fileobj.recv(2048)
            trace = traces[key.data]
            slot = min(len(trace["loss"]) - 1, max(0, int((now - start) / SLOT_S)))
            if rng.random() < trace["loss"][slot]:
                continue
            delay = trace["latency_ms"][slot] + rng.normal(0, trace["jitter_ms"][slot])
            seq += 1
            heapq.heappush(queue, (now + max(0.0, delay) / 1e3, seq, data))


PACKET = struct.Struct("!BBIIQd")  # stream, link, seq, window, pad, sent (monotonic)


@dataclass
class Stream:
    name: str
    sent: dict = field(default_factory=dict)  # seq -> (window, link, sent time)
    got: dict = field(default_factory=dict)  # seq -> one-way delay ms


def run_sdwan(
    streams: list[str],
    choose,
    *,
    seconds: float,
    rate_pps: int,
    window_s: float,
    workdir: Path,
    seed: int,
    traces_path=TRACE_PATH,
):
    """Drive real UDP traffic through the emulator for `seconds`: every stream sends
    `rate_pps` datagrams per second; `choose(name, window, history)` returns the link
    of stream `name` for `window` from the measured per-link history so far. Returns
    the Stream records (what was sent where, and each datagram's delay)."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(0.05)
    ports = {}
    for link in LINKS:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        ports[link] = probe.getsockname()[1]
        probe.close()
    config = {
        "traces": str(traces_path),
        "seed": seed,
        "ports": ports,
        "sink_port": sink.getsockname()[1],
        "seconds": seconds,
        "ready": str(workdir / "emulator.ready"),
    }
    (workdir / "emulator.json").write_text(json.dumps(config))
    emulator = subprocess.Popen(
        [sys.executable, __file__, "emulate", str(workdir / "emulator.json")],
        start_new_session=True,
    )
    records = {name: Stream(name) for name in streams}
    receiver_done = threading.Event()

    def receive():
        while not receiver_done.is_set():
            try:
                data = sink.recv(2048)
            except TimeoutError:
                continue
            arrived = time.monotonic()
            stream, _link, seq, _w, _, sent = PACKET.unpack(data[: PACKET.size])
            records[streams[stream]].got[seq] = (arrived - sent) * 1e3

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        ready = workdir / "emulator.ready"
        while not (ready.exists() and ready.read_text()):
            if emulator.poll() is not None:
                raise RuntimeError("the link emulator exited")
            time.sleep(0.01)
        start = float(ready.read_text())
        n_windows = int(seconds / window_s)
        per_window = int(rate_pps * window_s)
        seq = 0
        for window in range(n_windows):
            links = {name: choose(name, window, records) for name in streams}
            for k in range(per_window):
                due = start + window * window_s + k / rate_pps
                while (now := time.monotonic()) < due:
                    time.sleep(min(0.002, due - now))
                for index, name in enumerate(streams):
                    seq += 1
                    link = links[name]
                    packet = (
                        PACKET.pack(
                            index, LINKS.index(link), seq, window, 0, time.monotonic()
                        )
                        + b"x" * 132
                    )
                    records[name].sent[seq] = (window, link, time.monotonic())
                    out.sendto(packet, ("127.0.0.1", ports[link]))
        time.sleep(0.4)  # the slowest datagrams (< 250 ms) still in flight
    finally:
        receiver_done.set()
        thread.join(2)
        stop(emulator)
        sink.close()
        out.close()
    return records


# --------------------------------------------------------------------------- HTTP


class _Handler(BaseHTTPRequestHandler):
    cluster = "?"

    def do_GET(self):  # noqa: N802
        body = json.dumps({"cluster": self.cluster, "pid": os.getpid()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def serve_main(host: str, port: int, cluster: str) -> None:
    _Handler.cluster = cluster
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer((host, port), _Handler).serve_forever()


def load(url: str, *, rate_rps: float, seconds: float, events=()) -> list[dict]:
    """Open-loop GETs at `rate_rps` for `seconds`, each on a pool thread so that a
    slow answer does not delay the next request (a new connection per request, 2 s
    timeout); `events` are (at_s, callable), each run on its own timer thread.
    One record per request: t_s (when it was sent), ok, cluster."""
    from concurrent.futures import ThreadPoolExecutor

    began = time.monotonic()

    def get(t: float) -> dict:
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                cluster = json.loads(reply.read())["cluster"]
            return {"t_s": t, "ok": True, "cluster": cluster}
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError):
            # HTTPException: a reply cut short (IncompleteRead) when a server dies
            return {"t_s": t, "ok": False, "cluster": None}

    timers = [threading.Timer(at_s, action) for at_s, action in events]
    for timer in timers:
        timer.start()
    futures = []
    try:
        with ThreadPoolExecutor(max_workers=32) as pool:
            for k in range(int(rate_rps * seconds)):
                due = began + k / rate_rps
                while (now := time.monotonic()) < due:
                    time.sleep(min(0.002, due - now))
                futures.append(pool.submit(get, time.monotonic() - began))
    finally:
        for timer in timers:
            timer.join()
    return [future.result() for future in futures]


# --------------------------------------------------------------------------- plots


def plot_sdwan(windows, sla_met, window_s):
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(7.5, 4.6), sharex=True, height_ratios=[2, 1]
    )
    for link in LINKS:
        top.plot(windows["t_s"], windows[f"{link}_latency_ms"], label=link)
    top.set_ylabel("one-way delay, ms\n(window mean)")
    top.legend(ncol=3, fontsize=8)
    names = list(sla_met)
    for k, name in enumerate(names):
        met = np.asarray(sla_met[name])
        bottom.scatter(
            windows["t_s"][~met],
            np.full((~met).sum(), k),
            marker="|",
            s=120,
            color="tab:red",
        )
    bottom.set_yticks(range(len(names)), names, fontsize=8)
    bottom.set_xlabel("time, s (each mark: a window that missed the SLA)")
    fig.tight_layout()
    plt.show()


def plot_failover(records, kill_s, revive_s):

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 2.6))
    for cluster, y, colour in (
        ("east", 1, "tab:blue"),
        ("west", 0, "tab:orange"),
        (None, -1, "tab:red"),
    ):
        t = [r["t_s"] for r in records if r["cluster"] == cluster]
        ax.scatter(t, [y] * len(t), marker="|", s=80, color=colour)
    ax.set_yticks([1, 0, -1], ["east (local)", "west (backup)", "failed"])
    for x, text in ((kill_s, "east killed"), (revive_s, "east back")):
        ax.axvline(x, color="grey", ls=":")
        ax.text(x, 1.35, text, fontsize=8, ha="center")
    ax.set_ylim(-1.5, 1.6)
    ax.set_xlabel("time, s")
    fig.tight_layout()
    plt.show()


# --------------------------------------------------------------------------- fallback


def fallback_balancer(
    workdir: Path,
    clusters: dict,
    server_port: int,
    listen_port: int,
    passive: bool,
    *checks: int,
) -> list[str]:
    """Write the fallback balancer's config; return the command that runs it.
    `checks`: inter_ms, fall, rise, retries."""
    path = workdir / f"balancer-{passive}.json"
    path.write_text(
        balancer_config(clusters, server_port, listen_port, passive, *checks)
    )
    return [sys.executable, __file__, "balance", str(path)]


def trace_summary(traces: dict, trace_ok: dict, n_slots: int):
    """Per link: median and worst delay, worst jitter and loss, share of time the
    trace meets the SLA."""
    import numpy as np
    import pandas as pd

    return pd.DataFrame(
        {
            link: {
                "median delay ms": np.median(trace["latency_ms"][:n_slots]),
                "max delay ms": trace["latency_ms"][:n_slots].max(),
                "max jitter ms": trace["jitter_ms"][:n_slots].max(),
                "max loss %": 100 * trace["loss"][:n_slots].max(),
                "SLA met, % of time": 100 * trace_ok[link].mean(),
            }
            for link, trace in traces.items()
        }
    ).T.round(1)


def balancer_config(
    clusters: dict,
    server_port: int,
    listen_port: int,
    passive: bool,
    inter_ms: int,
    fall: int,
    rise: int,
    retries: int,
) -> str:
    """The fallback balancer's JSON config: `east` primary, the others backup."""
    servers = [
        {"host": host, "port": server_port, "backup": name != "east"}
        for name, hosts in clusters.items()
        for host in hosts
    ]
    return json.dumps(
        {
            "servers": servers,
            "listen_port": listen_port,
            "passive": passive,
            "inter_ms": inter_ms,
            "fall": fall,
            "rise": rise,
            "retries": retries,
        }
    )


def balancer_main(config_path: str) -> None:
    """A small primary/backup HTTP balancer for machines without HAProxy, with the
    same semantics as the chapter's HAProxy config: active GET checks every
    `inter_ms` (down after `fall` failures, up after `rise` successes), optional
    passive mark-down on a refused connection, `retries` with redispatch."""
    import http.client
    import itertools

    config = json.loads(Path(config_path).read_text())
    servers = config["servers"]  # [{"host", "port", "backup"}]
    state = {i: {"up": True, "ok": 0, "bad": 0} for i in range(len(servers))}
    lock = threading.Lock()
    turn = itertools.count()

    def probe(i: int) -> bool:
        try:
            conn = http.client.HTTPConnection(
                servers[i]["host"], servers[i]["port"], timeout=0.2
            )
            conn.request("GET", "/")
            return conn.getresponse().status == 200
        except OSError:
            return False

    def checker() -> None:
        while True:
            for i in state:
                ok = probe(i)
                with lock:
                    s = state[i]
                    s["ok"], s["bad"] = (s["ok"] + 1, 0) if ok else (0, s["bad"] + 1)
                    if s["up"] and s["bad"] >= config["fall"]:
                        s["up"] = False
                    elif not s["up"] and s["ok"] >= config["rise"]:
                        s["up"] = True
            time.sleep(config["inter_ms"] / 1e3)

    def pick(exclude: set) -> int | None:
        # As HAProxy: backups serve only while no primary is up; a retry goes to
        # another up server of the same tier, never to a backup early.
        with lock:
            for backup in (False, True):
                up = [
                    i
                    for i in state
                    if state[i]["up"] and servers[i]["backup"] == backup
                ]
                if up:
                    left = [i for i in up if i not in exclude]
                    return left[next(turn) % len(left)] if left else None
        return None

    class Proxy(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            tried: set = set()
            for _ in range(1 + config["retries"]):
                i = pick(tried)
                if i is None:
                    break
                try:
                    conn = http.client.HTTPConnection(
                        servers[i]["host"], servers[i]["port"], timeout=2
                    )
                    conn.request("GET", self.path)
                    reply = conn.getresponse()
                    body = reply.read()
                except ConnectionRefusedError:
                    tried.add(i)
                    if config["passive"]:
                        with lock:
                            state[i].update(up=False, ok=0)
                    continue
                except OSError:
                    break
                self.send_response(reply.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.send_error(503)

        def log_message(self, *args):
            pass

    threading.Thread(target=checker, daemon=True).start()
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("127.0.0.1", config["listen_port"]), Proxy).serve_forever()


# --------------------------------------------------------------------------- judging


def judge_windows(
    records: dict, meets, *, seconds: float, judge_s: float, window_s: float
):
    """Judge every `judge_s` of every stream with `meets(stats)`; return ({stream:
    [bool]}, rows of the static streams' stats per judged window)."""
    import numpy as np

    per_judge = round(judge_s / window_s)
    sla_met, rows = {}, []
    for name, record in records.items():
        met = []
        for judged in range(round(seconds / judge_s)):
            first, last = judged * per_judge, (judged + 1) * per_judge
            window = [s for s, (w, _, _) in record.sent.items() if first <= w < last]
            delays = [record.got[s] for s in window if s in record.got]
            stats = {
                "latency_ms": np.mean(delays) if delays else np.inf,
                "jitter_ms": np.mean(np.abs(np.diff(delays)))
                if len(delays) > 1
                else np.inf,
                "loss": 1 - len(delays) / len(window),
            }
            met.append(bool(meets(stats)))
            if name.startswith("static-"):
                rows.append({"t_s": judged * judge_s, "link": name[7:], **stats})
        sla_met[name] = met
    return sla_met, rows


def failover_outcome(
    records: list[dict], kill_s: float, revive_s: float, seconds: float
) -> dict:
    """Failed requests, time to the first backup answer after the kill, time to the
    first local answer after the restart, share of the last 0.5 s served locally."""
    import numpy as np

    failed = [r for r in records if not r["ok"]]
    after_kill = [
        r["t_s"] for r in records if kill_s <= r["t_s"] and r["cluster"] == "west"
    ]
    back = [
        r["t_s"] for r in records if r["t_s"] >= revive_s and r["cluster"] == "east"
    ]
    tail = [r for r in records if r["t_s"] >= seconds - 0.5]
    return {
        "failed": len(failed),
        "failover_ms": 1e3 * (min(after_kill) - kill_s) if after_kill else np.inf,
        "failback_ms": 1e3 * (min(back) - revive_s) if back else np.inf,
        "tail on east %": 100 * np.mean([r["cluster"] == "east" for r in tail]),
    }


class ServerPools:
    """Named pools ("clusters") of `serve` processes on their own 127.0.0.x
    addresses, all on one port."""

    def __init__(self, clusters: dict[str, list[str]], port: int, log_dir: Path):
        self.clusters, self.port, self.log_dir = clusters, port, log_dir
        self.processes: dict = {}

    def start(self, cluster: str) -> None:
        """Start the cluster's servers together, then wait until each answers."""
        import labkit

        for host in self.clusters[cluster]:
            self.processes[host] = labkit.start_server(
                [
                    sys.executable,
                    __file__,
                    "serve",
                    "--host",
                    host,
                    "--port",
                    str(self.port),
                    "--cluster",
                    cluster,
                ],
                ready_url=None,
                log_path=self.log_dir / f"server-{host}.log",
            )
        for host in self.clusters[cluster]:
            labkit.wait_ready(
                f"http://{host}:{self.port}/", self.processes[host], timeout_s=30
            )

    def kill(self, cluster: str) -> None:
        """SIGKILL every server of the cluster: a crash, no graceful shutdown."""
        for host in self.clusters[cluster]:
            self.processes[host].kill()
            self.processes[host].wait()

    def stop_all(self) -> None:
        import labkit

        for process in self.processes.values():
            labkit.stop_server(process)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("emulate")
    p.add_argument("config")
    p = sub.add_parser("serve")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cluster", required=True)
    sub.add_parser("write-traces")
    p = sub.add_parser("balance")
    p.add_argument("config")
    args = parser.parse_args()
    if args.what == "emulate":
        emulator_main(args.config)
    elif args.what == "serve":
        serve_main(args.host, args.port, args.cluster)
    elif args.what == "balance":
        balancer_main(args.config)
    else:
        write_traces()
