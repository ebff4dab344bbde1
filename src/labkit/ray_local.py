"""Ray on one machine, kept on loopback: connect to RAY_ADDRESS, or start a local
instance.

Ray rewrites 127.0.0.1 to the machine's routable address (so that other hosts could
join), which would send a local notebook's traffic over that address. Any other address
of the loopback range 127.0.0.0/8 is kept as given, so local nodes use 127.0.0.2,
127.0.0.3, ...: every byte stays on this machine.
"""

from __future__ import annotations

import os
import socket
from typing import Any

LOOPBACK_HEAD_IP = "127.0.0.2"


def loopback_node_ip(index: int) -> str:
    """The loopback address of local node `index` (0 is the head): 127.0.0.2, 127.0.0.3,
    ..."""
    if not 0 <= index < 250:
        raise ValueError(f"node index must be in 0..249, got {index}")
    return f"127.0.0.{index + 2}"


def loopback_usable(ip: str) -> bool:
    """True when this machine can bind `ip` (Linux routes all of 127.0.0.0/8; macOS only
    127.0.0.1)."""
    try:
        with socket.socket() as s:
            s.bind((ip, 0))
        return True
    except OSError:
        return False


def local_head_ip(usable: Any = loopback_usable) -> tuple[str, str]:
    """The address a local Ray head binds, and a one-line note when it had to fall back
    to 127.0.0.1."""
    if usable(LOOPBACK_HEAD_IP):
        return LOOPBACK_HEAD_IP, ""
    return "127.0.0.1", (
        f"{LOOPBACK_HEAD_IP} is not configured here (macOS has only 127.0.0.1 unless "
        "you run "
        f"`sudo ifconfig lo0 alias {LOOPBACK_HEAD_IP}`): Ray binds 127.0.0.1 and may "
        "advertise "
        "the machine's routable address"
    )


def init_ray(num_cpus: int | None = None, **kwargs: Any) -> str:
    """`ray.init` against $RAY_ADDRESS when set, else a new local instance on a loopback
    address.

    Returns one line saying which. Extra keyword arguments go to `ray.init` (local start
    only for `num_cpus` and `include_dashboard`).
    """
    import ray

    quiet = {
        "logging_level": "ERROR",
        "log_to_driver": False,
        "configure_logging": True,
    }
    quiet.update(kwargs.pop("driver_options", {}))
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(
            address=address,
            **quiet,
            **{k: v for k, v in kwargs.items() if k not in ("include_dashboard",)},
        )
        nodes = sum(1 for n in ray.nodes() if n["Alive"])
        return f"connected to the Ray cluster at RAY_ADDRESS: {nodes} node(s)"
    head_ip, note = local_head_ip()
    # On a busy machine the raylet can miss its start-up deadline; one more try after a
    # clean shutdown is enough in practice.
    for attempt in (1, 2):
        try:
            ray.init(
                address="local",
                _node_ip_address=head_ip,
                num_cpus=num_cpus,
                **quiet,
                **kwargs,
            )
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    cpus = int(ray.cluster_resources().get("CPU", 0))
    line = f"started a local Ray instance on {head_ip} with {cpus} CPUs"
    line += " (no RAY_ADDRESS set)"
    return f"{line}; {note}" if note else line
