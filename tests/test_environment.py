"""environment.yml carries exactly the pins of requirements.txt (one source of truth)."""

from __future__ import annotations

import importlib.util

import yaml

from labkit.book import ROOT

spec = importlib.util.spec_from_file_location("make_environment", ROOT / "tools" / "make_environment.py")
make_environment = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_environment)  # type: ignore[union-attr]


def test_environment_yml_matches_the_lock() -> None:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pinned = [p for p in pip_section if not p.startswith("--")]
    assert pinned == make_environment.pins(), "environment.yml differs from requirements.txt: run make environment.yml"
    assert "python=3.11" in env["dependencies"]


def test_binder_gets_the_cpu_build_of_torch() -> None:
    env_text = (ROOT / "environment.yml").read_text()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in env_text
    assert "torch==2.13.0+cpu" in make_environment.pins()
    assert not [p for p in make_environment.pins() if p.lower().startswith(("nvidia-", "triton=="))], \
        "the lock pulls CUDA packages"
