"""The lock says where every pin comes from, and environment.yml carries exactly its
lines."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

from labkit.book import ROOT


def load_tool(name: str):  # noqa: ANN201 (a module)
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


make_environment = load_tool("make_environment")
make_lock = load_tool("make_lock")
LOCK = ROOT / "requirements.txt"


def test_environment_yml_matches_the_lock() -> None:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip_section == make_environment.index_lines() + make_environment.pins(), (
        "environment.yml differs from requirements.txt: run make environment.yml"
    )
    assert "python=3.11" in env["dependencies"]


def test_every_local_version_pin_names_the_index_that_serves_it() -> None:
    assert make_lock.index_problems(LOCK.read_text()) == []
    assert any("+cpu" in pin for pin in make_environment.pins()), (
        "the lock no longer pins torch's CPU build"
    )


def test_the_index_check_fails_on_a_lock_without_its_index_line() -> None:
    text = LOCK.read_text()
    stripped = "\n".join(
        line for line in text.splitlines() if not line.startswith("--extra-index-url")
    )
    problems = make_lock.index_problems(stripped)
    assert problems and "download.pytorch.org/whl/cpu" in problems[0]
    assert make_lock.index_problems("torch==2.13.0+cu999\n") == [
        "torch: no known index serves the local version +cu999"
    ]


def test_lock_lines_mark_torch_per_platform_and_name_the_index() -> None:
    lines = make_lock.lock_lines("numpy==2.0.0\ntorch==2.13.0+cpu\nlabkit==0.1.0\n")
    assert lines[0] == "--extra-index-url https://download.pytorch.org/whl/cpu"
    assert (
        'torch==2.13.0+cpu ; sys_platform == "linux" and platform_machine == "x86_64"'
        in lines
    )
    assert (
        'torch==2.13.0 ; sys_platform == "darwin" and platform_machine == "arm64"'
        in lines
    )
    assert "labkit==0.1.0" not in lines


# nvidia-ml-py is the pure-Python NVML binding (no CUDA libraries) that CodeCarbon
# imports to read GPU power where a GPU exists.
NOT_CUDA = ("nvidia-ml-py==",)


def test_the_lock_pulls_no_cuda_packages() -> None:
    assert not [
        p
        for p in make_environment.pins()
        if p.lower().startswith(("nvidia-", "triton=="))
        and not p.lower().startswith(NOT_CUDA)
    ], "the lock pulls CUDA packages"


def test_binder_files_name_only_what_the_lock_and_apt_txt_provide() -> None:
    post_build = (ROOT / "postBuild").read_text()
    assert "requirements-nodeps.txt" in post_build
    apt = set((ROOT / "apt.txt").read_text().split())
    readme = (ROOT / "README.md").read_text()
    assert all(package in readme for package in apt), (
        f"the README must list the Debian packages {sorted(apt)}"
    )
    assert Path(ROOT / "requirements-nodeps.txt").read_text().strip()
