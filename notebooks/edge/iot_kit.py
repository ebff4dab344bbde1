"""Plumbing of the iot-anomaly-detection chapter: a local Mosquitto broker, paho-mqtt
clients that publish a sensor stream and record what arrives, and small tables.

The detector, the topic layout and the measurements stay in the notebook; this module
only starts and stops things and keeps the clocks.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import labkit


def broker_config(port: int, *, as_root: bool | None = None) -> str:
    """A minimal mosquitto 2.x configuration: one listener on 127.0.0.1, anonymous
    clients, nothing persisted. Run as root, mosquitto 2.x drops to the user
    `mosquitto` unless told otherwise: `user root` keeps it where it started."""
    as_root = (os.geteuid() == 0) if as_root is None else as_root
    lines = [
        f"listener {port} 127.0.0.1",
        "allow_anonymous true",
        "persistence false",
        # a subscriber that falls behind keeps its QoS 1 messages (default: 1000)
        "max_queued_messages 100000",
        "log_dest stdout",
    ]
    if as_root:
        lines.append("user root")
    return "\n".join(lines) + "\n"


def wait_port(port: int, process, timeout_s: float = 10) -> float:
    """Wait until 127.0.0.1:`port` accepts connections; return the seconds waited."""
    began = time.perf_counter()
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the broker exited with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return time.perf_counter() - began
        except OSError:
            if time.perf_counter() - began > timeout_s:
                raise TimeoutError(f"nothing listens on port {port}") from None
            time.sleep(0.05)


def start_broker(workdir: Path):
    """Start mosquitto on 127.0.0.1 and a free port with a config in `workdir`;
    return (process, port), or (None, None) when mosquitto is not installed."""
    binary = labkit.find_tool("mosquitto")
    if binary is None:
        return None, None
    port = labkit.free_port()
    config = Path(workdir) / "mosquitto.conf"
    config.write_text(broker_config(port))
    process = labkit.start_server(
        [binary, "-c", str(config)],
        ready_url=None,
        log_path=Path(workdir) / "mosquitto.log",
    )
    wait_port(port, process)
    return process, port


def connect(port: int, client_id: str):
    """A paho-mqtt 2.x client (callback API version 2), connected, its network loop
    running in a thread."""
    from paho.mqtt.client import CallbackAPIVersion, Client

    client = Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id
    )
    connected = threading.Event()
    client.on_connect = lambda *args: connected.set()
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not connected.wait(10):
        raise TimeoutError(f"{client_id}: no CONNACK from 127.0.0.1:{port}")
    return client


class Recorder:
    """A subscriber that records (topic, payload, arrival time) and can call a handler
    per message (the gateway's detector)."""

    def __init__(self, port: int, client_id: str, topic_filter: str, handler=None):
        self.messages: list[tuple[str, bytes, float]] = []
        self.handler = handler
        self.client = connect(port, client_id)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.on_message = self._on_message
        self.client.subscribe(topic_filter, qos=1)
        if not subscribed.wait(10):
            raise TimeoutError(f"{client_id}: no SUBACK for {topic_filter}")

    def _on_message(self, client, userdata, message) -> None:
        arrived = time.perf_counter()
        self.messages.append((message.topic, message.payload, arrived))
        if self.handler is not None:
            self.handler(message.topic, message.payload)

    def wait_for(self, count: int, timeout_s: float = 30) -> bool:
        """Wait until `count` messages arrived; True if they did."""
        deadline = time.perf_counter() + timeout_s
        while len(self.messages) < count and time.perf_counter() < deadline:
            time.sleep(0.01)
        return len(self.messages) >= count

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def publish_paced(
    client,
    messages: Iterable[tuple[str, Callable[[float], bytes]]],
    rate_per_s: float | None,
    qos: int = 1,
) -> float:
    """Publish (topic, payload_of(send_time)) pairs, `rate_per_s` a second on a fixed
    schedule (None: as fast as the client goes); wait for every acknowledgement and
    return the seconds it took."""
    began = time.perf_counter()
    infos = []
    for k, (topic, payload_of) in enumerate(messages):
        if rate_per_s is not None:
            due = began + k / rate_per_s
            while (now := time.perf_counter()) < due:
                time.sleep(min(due - now, 0.002))
        infos.append(client.publish(topic, payload_of(time.perf_counter()), qos=qos))
    for info in infos:
        info.wait_for_publish(30)
    return time.perf_counter() - began


def plot_sensors(ax_list, series, truth, rows, hours, kinds, fleet, types, alpha=0.4):
    """Readings of the sensors `rows` against `hours`, anomalies shaded by type."""
    for ax, i in zip(ax_list, rows):
        ax.plot(hours, series[i], lw=0.6, color="0.3")
        for e in truth[truth.sensor == i].itertuples():
            ax.axvspan(
                hours[e.start],
                hours[min(e.end, len(hours) - 1)] + 0.1,
                color=f"C{types.index(e.type)}",
                alpha=alpha,
                label=e.type,
            )
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=8, loc="upper left")
        ax.set(
            ylabel=f"{fleet.kind[i]} ({kinds[fleet.kind[i]]['unit']})",
            title=f"{fleet.site[i]}/{fleet.line[i]}/{fleet.sensor[i]}",
        )


def mark_alarms(ax, hours, values, alarms: dict) -> None:
    """Tick marks under a series for each named boolean alarm row."""
    low = values.min()
    for k, (label, row) in enumerate(alarms.items()):
        ax.plot(
            hours[row],
            [low - 0.5 * (k + 1)] * int(row.sum()),
            "|",
            color=f"C{3 + k}",
            label=label,
        )
    ax.legend(fontsize=8, loc="upper right")


PROBE = """
import sys, numpy as np, onnxruntime as ort
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
batch = np.zeros((int(sys.argv[2]), int(sys.argv[3])), np.float32)
session.run(None, {"input": batch})
peak = next(s for s in open("/proc/self/status") if s.startswith("VmHWM"))
print(int(peak.split()[1]) / 1024)
"""


def peak_rss_mib(model_path, batch: int, width: int) -> float:
    """Peak resident memory (VmHWM, MiB) of a fresh process that loads ONNX Runtime
    and the model and scores one batch of `batch` x `width` float32 inputs."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(model_path), str(batch), str(width)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout.strip())


def latency_and_throughput(paced: dict, burst: list) -> tuple[dict, float]:
    """Per subscriber, the summary of (arrival - sent) in ms of the paced run; and
    the burst's end-to-end throughput in messages a second."""
    import json

    latency_ms = {
        who: labkit.summarize(
            [
                (arrival - json.loads(payload)["sent"]) * 1e3
                for _, payload, arrival in got
            ]
        )
        for who, got in paced.items()
    }
    last_arrival = max(arrival for _, _, arrival in burst)
    first_sent = min(json.loads(payload)["sent"] for _, payload, _ in burst)
    return latency_ms, len(burst) / (last_arrival - first_sent)


def fill_template(doc: dict, values: dict) -> dict:
    """A copy of a manifest template with every placeholder key of `values` replaced
    in its strings."""
    import json

    text = json.dumps(doc)
    for key, value in values.items():
        text = text.replace(key, str(value))
    return json.loads(text)
