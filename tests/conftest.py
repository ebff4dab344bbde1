"""Shared options and fixtures.

- `--notebook PATH` narrows the notebook checks to one notebook.
- Notebooks run by the tests write their files under `_build/outputs`
  (LABKIT_OUTPUT_ROOT), so that a test run leaves the working tree as it found it.
- nbval's kernels log every exercise check to `_build/exercise-log.jsonl`
  (tests/test_exercises_ran.py).
- At the end, a table of seconds per notebook (nbval, smoke run, bad-profile check) and
  the slowest other tests is printed, and every test's duration is written to
  `_build/test-durations.json`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
OUTPUT_ROOT = ROOT / "_build" / "outputs"
DURATIONS = ROOT / "_build" / "test-durations.json"
EXERCISE_LOG = ROOT / "_build" / "exercise-log.jsonl"
os.environ["LABKIT_OUTPUT_ROOT"] = str(OUTPUT_ROOT)
os.environ["LABKIT_EXERCISE_LOG"] = str(
    EXERCISE_LOG
)  # nbval's kernels record every exercise check here
NBVAL_RUN: set[str] = set()  # notebooks whose cells nbval runs in this session
_seconds: dict[str, float] = defaultdict(float)
_started = time.perf_counter()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--notebook",
        action="append",
        default=[],
        help="only check this notebook (repeatable)",
    )


def selected_notebooks(config: pytest.Config) -> list[Path]:
    """The notebooks of _toc.yml, or the ones named with --notebook."""
    from labkit.book import toc_notebooks

    chosen = config.getoption("--notebook")
    if chosen:
        return [
            Path(p).resolve().relative_to(ROOT) if Path(p).is_absolute() else Path(p)
            for p in chosen
        ]
    return toc_notebooks(ROOT)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "notebook" in metafunc.fixturenames:
        paths = selected_notebooks(metafunc.config)
        metafunc.parametrize("notebook", paths, ids=[str(p) for p in paths])


def git_status() -> str:
    """`git status --porcelain` of the checkout (untracked files included, ignored ones
    not)."""
    done = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


GIT_STATUS_AT_START: list[str] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    EXERCISE_LOG.parent.mkdir(parents=True, exist_ok=True)
    EXERCISE_LOG.write_text("")
    GIT_STATUS_AT_START.append(git_status())


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    for item in items:
        path = Path(str(item.fspath))
        if path.suffix == ".ipynb":
            NBVAL_RUN.add(str(path.resolve().relative_to(ROOT)))


def pytest_terminal_summary(
    terminalreporter: object, exitstatus: int, config: pytest.Config
) -> None:
    from labkit.book import ci_timings

    # Every report, notebook cells included: a conftest's runtest hooks see only
    # the items below its own folder, so they would miss nbval's.
    for reports in terminalreporter.stats.values():  # type: ignore[attr-defined]
        for report in reports:
            if isinstance(report, pytest.TestReport):
                _seconds[report.nodeid] += report.duration

    run = {
        "date": dt.date.today().isoformat(),
        "total_s": time.perf_counter() - _started,
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "durations": {k: round(v, 2) for k, v in _seconds.items()},
    }
    DURATIONS.parent.mkdir(parents=True, exist_ok=True)
    DURATIONS.write_text(json.dumps(run, indent=1) + "\n")
    per_notebook = ci_timings(run)["notebooks"]
    write = terminalreporter.write_line  # type: ignore[attr-defined]
    write("")
    write(
        f"seconds per notebook (total {run['total_s'] / 60:.1f} min; every test: "
        f"{DURATIONS.relative_to(ROOT)})"
    )
    write(f"{'notebook':<52} {'nbval':>7} {'smoke':>7} {'bad':>6}")
    for name, t in per_notebook.items():
        write(
            f"{name:<52} {t.get('nbval', 0):>7.1f} {t.get('smoke', 0):>7.1f} "
            f"{t.get('bad_profile', 0):>6.1f}"
        )
    others = sorted(
        (
            (v, k)
            for k, v in _seconds.items()
            if "::" in k
            and ".ipynb" not in k.split("::")[0]
            and "test_smoke.py" not in k
        ),
        reverse=True,
    )[:10]
    write("slowest other tests:")
    for seconds, nodeid in others:
        write(f"{seconds:>8.1f}  {nodeid}")
