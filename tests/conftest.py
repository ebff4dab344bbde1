"""Shared options and fixtures: `--notebook PATH` narrows the notebook checks to one notebook."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--notebook", action="append", default=[], help="only check this notebook (repeatable)")


def selected_notebooks(config: pytest.Config) -> list[Path]:
    """The notebooks of _toc.yml, or the ones named with --notebook."""
    from labkit.book import toc_notebooks

    chosen = config.getoption("--notebook")
    if chosen:
        return [Path(p).resolve().relative_to(ROOT) if Path(p).is_absolute() else Path(p) for p in chosen]
    return toc_notebooks(ROOT)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "notebook" in metafunc.fixturenames:
        paths = selected_notebooks(metafunc.config)
        metafunc.parametrize("notebook", paths, ids=[str(p) for p in paths])
