"""Split inference between a device, a MEC edge host and a cloud: the CNN, its
synthetic data, and the edge server of the mec-5g chapter.

The server runs the edge part (and the cloud part) of a CNN whose first layers ran on
the device. It also plays the network: before and after each hop it sleeps for the
hop's modelled latency plus bytes / bandwidth, as the request tells it, and can stretch
each tier's compute by a given time (a slower machine). Run it as
`python mec_split.py --weights W --port P`.
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
    """`count` noisy RGB images (float32, N x 3 x size x size, values about 0..1) of
    one shape each, and their labels."""
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
    return images, labels.astype(np.int64)


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
    model: nn.Sequential, start: int, end: int, x: torch.Tensor, extra_ms: float = 0.0
) -> tuple[torch.Tensor, float]:
    """Run units [start, end), then sleep `extra_ms` (what a slower machine would
    add); return (output, ms)."""
    began = time.perf_counter()
    with torch.inference_mode():
        y = model[start:end](x) if end > start else x
    time.sleep(extra_ms / 1e3)
    return y, (time.perf_counter() - began) * 1e3


def make_handler(model: nn.Sequential) -> type:
    """The HTTP handler: GET /healthz, POST /infer (activation in, logits out, links
    emulated)."""
    units = len(model)

    class Handler(BaseHTTPRequestHandler):
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

        def do_POST(self):
            # cut points, shape, links and the slower tiers' extra time
            spec = json.loads(self.headers["X-Split"])
            payload = self.rfile.read(int(self.headers["Content-Length"]))
            # the emulated time line: each step ends at a deadline on it
            clock = time.perf_counter()
            x = torch.frombuffer(bytearray(payload), dtype=torch.float32).reshape(
                spec["shape"]
            )
            up_ms = link_ms(spec["up_latency_ms"], len(payload), spec["uplink_mbps"])
            clock += up_ms / 1e3
            sleep_until(clock)
            y, edge_ms = run_tier(model, spec["start"], spec["cloud_cut"], x)
            # its real compute, then what a slower host adds
            clock += (edge_ms + spec["edge_extra_ms"]) / 1e3
            if spec["cloud_cut"] < units:
                # the rest runs in the cloud, across the backhaul and back
                latency_ms, mbps = spec["backhaul_latency_ms"], spec["backhaul_mbps"]
                clock += link_ms(latency_ms, y.numel() * 4, mbps) / 1e3
                sleep_until(clock)
                y, cloud_ms = run_tier(model, spec["cloud_cut"], units, y)
                clock += (cloud_ms + spec["cloud_extra_ms"]) / 1e3
                clock += link_ms(latency_ms, y.numel() * 4, mbps) / 1e3
            body = y.numpy().astype(np.float32).tobytes()
            down_ms = link_ms(spec["up_latency_ms"], len(body), spec["downlink_mbps"])
            clock += down_ms / 1e3
            sleep_until(clock)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core per request, as measured in the notebook
    model = build_cnn()
    model.load_state_dict(torch.load(args.weights, weights_only=True))
    model.eval()
    server = HTTPServer(("127.0.0.1", args.port), make_handler(model))
    server.serve_forever()


if __name__ == "__main__":
    main()
