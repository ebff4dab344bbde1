"""labkit: the plumbing every notebook of the handbook shares.

Profiles, environment and system-tool detection, manifest validation, local servers,
timing, plot style and glue. The technique a chapter teaches never lives here: it stays
visible in the notebook.
"""

from labkit.book import use_chapter_modules
from labkit.determinism import pin_kernels, pin_threads
from labkit.edge import (
    EDGE_RUNTIMES,
    edge_deployment,
    export_onnx,
    onnx_latency_ms,
    onnx_session,
    quantize_onnx_int8,
    size_resources,
)
from labkit.environment import (
    describe_environment,
    detect_environment,
    find_tool,
    system_tools,
)
from labkit.exercises import ExerciseDefect, check_exercise, not_implemented
from labkit.glue import glue_number, glue_table
from labkit.k8s import (
    check_pod_security_restricted,
    load_manifests,
    output_dir,
    to_dict,
    validate_custom_resource,
    validate_manifest,
    write_manifests,
)
from labkit.measure import summarize, time_calls
from labkit.operational import load_bundle, operational_problems
from labkit.plotting import use_book_style
from labkit.profiles import PROFILES, check_choice, check_positive, check_profile, pick
from labkit.ray_local import LOOPBACK_HEAD_IP, init_ray, loopback_node_ip
from labkit.servers import (
    free_port,
    send_json,
    start_server,
    stop_all_servers,
    stop_server,
    wait_ready,
)

__all__ = [
    "use_chapter_modules",
    "EDGE_RUNTIMES",
    "ExerciseDefect",
    "check_exercise",
    "glue_table",
    "not_implemented",
    "output_dir",
    "operational_problems",
    "load_bundle",
    "send_json",
    "edge_deployment",
    "export_onnx",
    "onnx_latency_ms",
    "onnx_session",
    "quantize_onnx_int8",
    "size_resources",
    "LOOPBACK_HEAD_IP",
    "PROFILES",
    "check_choice",
    "check_positive",
    "check_pod_security_restricted",
    "check_profile",
    "describe_environment",
    "find_tool",
    "free_port",
    "detect_environment",
    "glue_number",
    "init_ray",
    "load_manifests",
    "loopback_node_ip",
    "pick",
    "pin_kernels",
    "pin_threads",
    "start_server",
    "stop_all_servers",
    "stop_server",
    "summarize",
    "system_tools",
    "time_calls",
    "to_dict",
    "use_book_style",
    "validate_custom_resource",
    "validate_manifest",
    "wait_ready",
    "write_manifests",
]
