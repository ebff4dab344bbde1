"""Split inference between a device, a MEC edge host and a cloud: the CNN, its
synthetic data, and the edge servers of the mec-5g chapter.

Two servers. The production server (the default) runs the edge part of the CNN from one
configured cut, `python mec_split.py --weights W --port P --cut C --input KIND`; nothing
in a request changes what it does. The emulator (`--emulate-links`, local to the
notebook) also plays the network: around each hop it sleeps the hop's latency plus
bytes / bandwidth, as the request tells it; its compute and (de)serialisation are real
and reported in a reply header.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import torch
from torch import nn

SHAPES = ("circle", "square", "triangle", "cross")


def build_cnn(num_classes: int = len(SHAPES)) -> nn.Sequential:
    """A small VGG-style CNN as a flat Sequential of units, so that it can be cut after
    any unit. The first unit halves the frame's resolution (2x2 average), as a camera
    pipeline's resize would."""

    def conv(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()
        )

    return nn.Sequential(
        OrderedDict(
            [
                ("resize", nn.AvgPool2d(2)),
                ("conv1", conv(3, 16)),
                ("pool1", nn.MaxPool2d(2)),
                ("conv2", conv(16, 32)),
                ("pool2", nn.MaxPool2d(2)),
                ("conv3", conv(32, 64)),
                ("pool3", nn.MaxPool2d(2)),
                ("conv4", conv(64, 128)),
                ("gap", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())),
                ("fc", nn.Linear(128, num_classes)),
            ]
        )
    )


def draw_shapes(
    count: int, size: int = 64, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """`count` noisy RGB images (float32, N x 3 x size x size, values k/255 in 0..1, as
    from an 8-bit camera) of one shape each, and their labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((count, 3, size, size), np.float32)
    labels = rng.integers(0, len(SHAPES), count)
    for k, label in enumerate(labels):
        r = rng.uniform(0.15, 0.3) * size
        cx, cy = rng.uniform(r, size - r, 2)
        dx, dy = xx - cx, yy - cy
        if label == 0:
            mask = dx**2 + dy**2 <= r**2
        elif label == 1:
            mask = (abs(dx) <= 0.8 * r) & (abs(dy) <= 0.8 * r)
        elif label == 2:
            mask = (dy <= 0.8 * r) & (dy >= -r + 2 * abs(dx))
        else:
            mask = (
                ((abs(dx) <= 0.25 * r) | (abs(dy) <= 0.25 * r))
                & (abs(dx) <= r)
                & (abs(dy) <= r)
            )
        colour = rng.uniform(0.4, 1.0, 3).astype(np.float32)
        background = rng.uniform(0.0, 0.3, 3).astype(np.float32)
        image = np.where(mask, colour[:, None, None], background[:, None, None])
        images[k] = image + rng.normal(0, 0.08, (3, size, size)).astype(np.float32)
    # A camera delivers 8-bit frames: quantise, so that uint8 input is lossless.
    images = np.clip(images, 0, 1)
    images = (images * 255).round().astype(np.float32) / np.float32(255)
    return images, labels.astype(np.int64)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """A camera's 8-bit frames (N x H x W x 3, uint8) from float images in 0..1."""
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8).transpose(0, 2, 3, 1)


def from_uint8(frame: np.ndarray) -> np.ndarray:
    """The network's float input (1 x 3 x H x W) from one 8-bit H x W x 3 frame."""
    return (frame.astype(np.float32) / np.float32(255)).transpose(2, 0, 1)[None]


def encode_frame(frame: np.ndarray, kind: str, jpeg_quality: int = 90) -> bytes:
    """One H x W x 3 uint8 frame as the bytes a device sends: raw `uint8` or `jpeg`."""
    if kind == "uint8":
        return frame.tobytes()
    import cv2

    ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()


def decode_input(payload: bytes, kind: str, shape: list[int]) -> torch.Tensor:
    """The tensor the first unit on this host takes: a float32 activation of `shape`,
    or a frame (`uint8` or `jpeg`, `shape` = [1, 3, H, W]) turned into floats."""
    if kind == "float32":
        return torch.frombuffer(bytearray(payload), dtype=torch.float32).reshape(shape)
    if kind == "uint8":
        height, width = shape[2], shape[3]
        frame = np.frombuffer(payload, np.uint8).reshape(height, width, 3)
    elif kind == "jpeg":
        import cv2

        frame = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_UNCHANGED)
        if frame is None or list(frame.shape) != [shape[2], shape[3], 3]:
            raise ValueError("not a JPEG frame of the expected size")
    else:
        raise ValueError(f"input kind must be float32, uint8 or jpeg; got {kind!r}")
    return torch.from_numpy(from_uint8(frame))


def sleep_until(deadline: float) -> None:
    """Sleep until time.perf_counter() reaches `deadline` (absolute: an overshoot is
    not carried forward)."""
    remaining = deadline - time.perf_counter()
    if remaining > 0:
        time.sleep(remaining)


def link_ms(latency_ms: float, n_bytes: int, mbit_per_s: float) -> float:
    """One network hop: its latency plus the bytes' serialisation time, in ms."""
    return latency_ms + n_bytes * 8 / (mbit_per_s * 1e3)


def run_tier(
    model: nn.Sequential, start: int, end: int, x: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """Run units [start, end); return (output, ms of real compute)."""
    began = time.perf_counter()
    with torch.inference_mode():
        y = model[start:end](x) if end > start else x
    return y, (time.perf_counter() - began) * 1e3


class _Base(BaseHTTPRequestHandler):
    # keep-alive: one connection for all requests of a client
    protocol_version = "HTTP/1.1"
    # headers and body leave at once, not after a delayed ACK (40 ms)
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass  # keep the log quiet: one line per request would cost time

    def do_GET(self):
        body = b"ok" if self.path == "/healthz" else b"not found"
        self.send_response(200 if self.path == "/healthz" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def reply(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)


def make_emulator_handler(model: nn.Sequential) -> type:
    """The notebook's local emulator: GET /healthz, POST /infer. The request names the
    split and the links; the only sleeps are the links' latency and bytes / bandwidth.
    Decoding, compute and encoding are real, and measured: the reply's `X-Timing`
    header carries them in ms. Never deploy it: its request headers set sleeps."""
    units = len(model)

    class Emulator(_Base):
        def do_POST(self):
            spec = json.loads(self.headers["X-Split"])
            payload = self.rfile.read(int(self.headers["Content-Length"]))
            up_ms = link_ms(spec["up_latency_ms"], len(payload), spec["uplink_mbps"])
            sleep_until(time.perf_counter() + up_ms / 1e3)  # the uplink
            began = time.perf_counter()
            x = decode_input(payload, spec["input"], spec["shape"])
            decode_ms = (time.perf_counter() - began) * 1e3
            y, edge_ms = run_tier(model, spec["start"], spec["cloud_cut"], x)
            cloud_ms = 0.0
            if spec["cloud_cut"] < units:
                # the rest runs in the cloud, across the backhaul and back
                latency_ms, mbps = spec["backhaul_latency_ms"], spec["backhaul_mbps"]
                sent = len(payload) if spec["cloud_cut"] == spec["start"] else None
                n_bytes = sent if sent is not None else y.numel() * 4
                sleep_until(
                    time.perf_counter() + link_ms(latency_ms, n_bytes, mbps) / 1e3
                )
                y, cloud_ms = run_tier(model, spec["cloud_cut"], units, y)
                sleep_until(
                    time.perf_counter() + link_ms(latency_ms, y.numel() * 4, mbps) / 1e3
                )
            began = time.perf_counter()
            body = y.numpy().astype(np.float32).tobytes()
            encode_ms = (time.perf_counter() - began) * 1e3
            down_ms = link_ms(spec["up_latency_ms"], len(body), spec["downlink_mbps"])
            sleep_until(time.perf_counter() + down_ms / 1e3)  # the downlink
            timing = {
                "decode_ms": decode_ms,
                "edge_ms": edge_ms,
                "cloud_ms": cloud_ms,
                "encode_ms": encode_ms,
            }
            self.reply(200, body, {"X-Timing": json.dumps(timing)})

    return Emulator


def make_production_handler(
    model: nn.Sequential, start: int, input_kind: str, frame_size: int
) -> type:
    """The server to deploy: GET /healthz, POST /infer with the input of its one
    configured cut (`start`, `input_kind`), logits out. Nothing in a request sets a
    sleep, a cut or a shape; a body of the wrong size is refused."""
    with torch.inference_mode():
        probe = model[:start](torch.zeros(1, 3, frame_size, frame_size))
    shape = list(probe.shape)
    expected = {"float32": probe.numel() * 4, "uint8": frame_size**2 * 3}
    limit = expected.get(input_kind, frame_size**2 * 3)  # a JPEG is smaller than raw

    class Production(_Base):
        def do_POST(self):
            if self.path != "/infer":
                return self.reply(404, b"not found")
            length = int(self.headers.get("Content-Length", "0"))
            if not 0 < length <= limit or (
                input_kind in expected and length != expected[input_kind]
            ):
                return self.reply(413 if length > limit else 400, b"bad body size")
            payload = self.rfile.read(length)
            try:
                x = decode_input(payload, input_kind, shape)
            except ValueError as err:
                return self.reply(400, str(err).encode())
            y, _ = run_tier(model, start, len(model), x)
            self.reply(200, y.numpy().astype(np.float32).tobytes())

    return Production


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--cut", type=int, default=0, help="the first unit run here")
    parser.add_argument(
        "--input", default="uint8", choices=("float32", "uint8", "jpeg")
    )
    parser.add_argument("--frame-size", type=int, default=64)
    parser.add_argument(
        "--emulate-links",
        action="store_true",
        help="the notebook's local emulator (request headers set the link sleeps)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core per request, as measured in the notebook
    model = build_cnn()
    model.load_state_dict(torch.load(args.weights, weights_only=True))
    model.eval()
    if args.emulate_links:
        handler = make_emulator_handler(model)
    else:
        handler = make_production_handler(model, args.cut, args.input, args.frame_size)
    server = HTTPServer((args.host, args.port), handler)
    server.serve_forever()


if __name__ == "__main__":
    main()


# --- Plumbing of the chapter's notebook: parameter checks, plots, the AppD check ---

POSITIVE_LIMITS = {  # name: (integer, maximum)
    "test_images": (True, 5000),
    "edge_distance_km": (False, 5000),
    "cloud_distance_km": (False, 5000),
    "urllc_budget_ms": (False, 100),
    "frame_rate_fps": (False, 240),
    "downlink_mbps": (False, 10000),
    "backhaul_mbps": (False, 100000),
}


def check_parameters(values: dict) -> None:
    """Check the notebook's numeric parameters; raise a ValueError a reader can act
    on."""
    import labkit

    for name, (integer, maximum) in POSITIVE_LIMITS.items():
        labkit.check_positive(name, values[name], integer=integer, maximum=maximum)
    labkit.check_choice("image_size", values["image_size"], (32, 64, 96))
    for name in ("device_slowdown", "edge_slowdown", "cloud_slowdown"):
        labkit.check_positive(name, values[name], integer=False, maximum=100)
        if values[name] < 1:
            raise ValueError(f"{name}={values[name]!r} is not valid; it must be >= 1")
    seed = values["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise ValueError(f"seed={seed!r} is not valid; an integer in 0..2**31-1")


def plot_profile(device_ms, bytes_in, unit_names):
    """Bars: each unit's device latency; line: the size of what it outputs."""
    import matplotlib.pyplot as plt

    fig, ax1 = plt.subplots(figsize=(7.5, 3.4))
    x_pos = np.arange(len(unit_names))
    ax1.bar(x_pos, device_ms, color="tab:blue", alpha=0.7, label="device latency (ms)")
    ax1.set_ylabel("device latency per unit (ms)")
    ax1.set_xticks(x_pos, unit_names, rotation=45)
    ax2 = ax1.twinx()
    ax2.plot(x_pos, bytes_in[1:] / 1024, "o-", color="tab:orange", label="output (KiB)")
    ax2.axhline(bytes_in[0] / 1024, color="tab:orange", ls=":", label="input (KiB)")
    ax2.set_ylabel("activation size (KiB)")
    ax2.set_yscale("log")
    fig.legend(loc="upper right", fontsize=8)
    plt.show()


SWEEP_LINES = (
    ("all_device_ms", "all on device", ":"),
    ("all_edge_ms", "all on MEC edge", "--"),
    ("all_cloud_ms", "all in cloud", "-."),
    ("all_edge_uint8_ms", "all on edge, uint8 frame", (0, (1, 1))),
    ("all_edge_jpeg_ms", "all on edge, JPEG frame", (0, (5, 1))),
    ("best_ms", "best split", "-"),
)


def plot_sweep(sweep, frame_rate_fps: float, unit_names) -> None:
    """Top: the modelled latency of each strategy against the uplink bandwidth, with
    the frame interval; bottom: where the best split cuts."""
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(
        2, 1, figsize=(7.5, 6.2), sharex=True, gridspec_kw={"height_ratios": [3, 2]}
    )
    for column, label, style in SWEEP_LINES:
        width = 2.2 if column == "best_ms" else 1.4
        ax1.plot(sweep["uplink_mbps"], sweep[column], ls=style, label=label, lw=width)
    ax1.axhline(
        1000 / frame_rate_fps,
        color="red",
        lw=1,
        label=f"frame interval ({frame_rate_fps:g} fps)",
    )
    ax1.set(xscale="log", yscale="log", ylabel="end-to-end latency (ms)")
    ax1.legend(fontsize=8)
    bw = sweep["uplink_mbps"]
    ax2.step(bw, sweep["device_cut"], where="mid", label="device → edge cut (i)")
    ax2.step(bw, sweep["cloud_cut"], where="mid", ls="--", label="edge → cloud cut (j)")
    ticks = ["input"] + [f"after {u}" for u in unit_names]
    ax2.set_yticks(range(len(unit_names) + 1), ticks, fontsize=7)
    ax2.set(xscale="log", xlabel="uplink bandwidth (Mbit/s)")
    ax2.legend(fontsize=8)
    plt.show()


TRAFFIC_ACTIONS = (
    "DROP",
    "FORWARD_DECAPSULATED",
    "FORWARD_AS_IS",
    "PASSTHROUGH",
    "DUPLICATED_DECAPSULATED",
    "DUPLICATE_AS_IS",
)  # ETSI GS MEC 010-2 V2.2.1, TrafficRuleDescriptor.action
REQUIRED_APPD = (
    "appDId",
    "appName",
    "appProvider",
    "appSoftVersion",
    "appDVersion",
    "mecVersion",
    "appDescription",
    "virtualComputeDescriptor",
    "swImageDescriptor",
)


def _traffic_rule_problems(rule: dict, service_cidrs) -> list[str]:
    import ipaddress

    rid = rule.get("trafficRuleId", "?")
    keys = ("trafficRuleId", "filterType", "priority", "trafficFilter", "action")
    problems = [f"traffic rule {rid}: missing {k}" for k in keys if k not in rule]
    if rule.get("filterType") not in ("FLOW", "PACKET"):
        problems.append(f"traffic rule {rid}: filterType not FLOW or PACKET")
    if rule.get("action") not in TRAFFIC_ACTIONS:
        problems.append(
            f"traffic rule {rid}: action {rule.get('action')!r} "
            f"not one of {TRAFFIC_ACTIONS}"
        )
    if not 0 <= rule.get("priority", -1) <= 255:
        problems.append(f"traffic rule {rid}: priority must be 0..255")
    services = [ipaddress.ip_network(c) for c in service_cidrs]
    for flt in rule.get("trafficFilter", []):
        for net in flt.get("srcAddress", []) + flt.get("dstAddress", []):
            try:
                ipaddress.ip_network(net)
            except ValueError:
                problems.append(f"traffic rule {rid}: bad address {net!r}")
        for net in flt.get("dstAddress", []):
            network = ipaddress.ip_network(net)
            if any(
                network.version == s.version and network.subnet_of(s) for s in services
            ):
                problems.append(
                    f"traffic rule {rid}: {net} is a cluster Service address, "
                    "unreachable from the UPF"
                )
        problems += [
            f"traffic rule {rid}: bad port {p!r}"
            for p in flt.get("srcPort", []) + flt.get("dstPort", [])
            if not (str(p).isdigit() and 0 < int(p) < 65536)
        ]
    return problems


def _dns_rule_problems(rule: dict) -> list[str]:
    import ipaddress

    keys = ("dnsRuleId", "domainName", "ipAddressType", "ipAddress")
    problems = [f"DNS rule: missing {k}" for k in keys if k not in rule]
    kind = {"IP_V4": 4, "IP_V6": 6}.get(rule.get("ipAddressType"))
    dns_id, address = rule.get("dnsRuleId"), rule.get("ipAddress", "")
    try:
        if kind is None or ipaddress.ip_address(address).version != kind:
            problems.append(
                f"DNS rule {dns_id}: address does not match {rule.get('ipAddressType')}"
            )
    except ValueError:
        problems.append(f"DNS rule {dns_id}: bad address {address!r}")
    return problems


def check_appd(doc: dict, service_cidrs=("10.96.0.0/12", "10.43.0.0/16")) -> list[str]:
    """Structural problems of an AppD (ETSI GS MEC 010-2 V2.2.1 clause 6.2.1), as
    strings: required attributes, enumerations, addresses and ports, a traffic rule
    aimed at a cluster Service range, and appLatency attributes beyond maxLatency."""
    problems = [f"missing {key}" for key in REQUIRED_APPD if not doc.get(key)]
    if not isinstance(doc.get("mecVersion", []), list):
        problems.append("mecVersion must be a list")
    vcd = doc.get("virtualComputeDescriptor", {})
    if vcd and not (
        vcd.get("virtualCpu", {}).get("numVirtualCpu", 0) >= 1
        and vcd.get("virtualMemory", {}).get("virtualMemSize", 0) > 0
    ):
        problems.append("virtualComputeDescriptor needs numVirtualCpu >= 1, memory > 0")
    for rule in doc.get("appTrafficRule", []):
        problems += _traffic_rule_problems(rule, service_cidrs)
    for rule in doc.get("appDNSRule", []):
        problems += _dns_rule_problems(rule)
    latency = doc.get("appLatency")
    if latency is not None:
        if not int(latency.get("maxLatency", 0)) > 0:
            problems.append("appLatency.maxLatency must be a positive number of ns")
        problems += [
            f"appLatency.{key} is not an attribute of GS MEC 010-2's LatencyDescriptor"
            for key in latency
            if key != "maxLatency"
        ]
    return problems
