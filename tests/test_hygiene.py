"""Notebook hygiene: toc, structure, stamps, budgets, leaks and size. Each failure names
how to fix it."""

from __future__ import annotations

from pathlib import Path

import nbchecks

from labkit.book import (
    CHAPTERS_PLANNED,
    CI_GOAL_MIN,
    ROOT,
    budget_s,
    ci_projection,
    compared_cells,
    is_stale,
    load_ci_timings,
    toc_files,
    toc_notebooks,
)

COMPARED_FLOOR_CHAPTER = 0.60
COMPARED_FLOOR_BOOK = 0.75


def test_every_notebook_is_in_the_toc_and_every_entry_exists() -> None:
    on_disk = {
        p.relative_to(ROOT)
        for p in (ROOT / "notebooks").rglob("*.ipynb")
        if ".ipynb_checkpoints" not in p.parts
    }
    listed = set(toc_notebooks(ROOT))
    assert on_disk - listed == set(), (
        f"notebooks missing from _toc.yml: {sorted(map(str, on_disk - listed))}"
    )
    missing = [
        e
        for e in toc_files(ROOT)
        if not any((ROOT / e).with_suffix(s).exists() for s in (".md", ".ipynb"))
        and not (ROOT / e).exists()
    ]
    assert missing == [], f"_toc.yml entries with no file: {missing}"


def test_structure(notebook: Path) -> None:
    problems = nbchecks.structure_problems(nbchecks.load(ROOT / notebook))
    assert problems == [], (
        f"{notebook}: "
        + "; ".join(problems)
        + f"\n  fix, then run: make execute NB={notebook}"
    )


def test_stamp_is_current(notebook: Path) -> None:
    assert not is_stale(notebook, ROOT), (
        f"{notebook}: stored outputs are stale (code, lock or labkit changed since its "
        "run)\n"
        f"  run: make execute NB={notebook}"
    )


def test_stamped_times_within_budget(notebook: Path) -> None:
    nb = nbchecks.load(ROOT / notebook)
    stamp = nb.get("metadata", {}).get("labkit", {}).get("stamp", {})
    for profile, key in (("laptop", "wall_s"), ("smoke", "smoke_wall_s")):
        budget = budget_s(nb, profile)
        assert key in stamp, (
            f"{notebook}: no {profile} time in its stamp; run: make execute "
            f"NB={notebook}"
        )
        assert stamp[key] <= budget, (
            f"{notebook}: {profile} run took {stamp[key]} s, budget {budget:.0f} s"
        )


def test_exercises_follow_the_pattern(notebook: Path) -> None:
    nb = nbchecks.load(ROOT / notebook)
    problems = nbchecks.exercise_problems(nb)
    assert problems == [], (
        f"{notebook}: "
        + "\n  ".join(problems)
        + "\n  see book/contributing.md, Exercises"
    )


def test_budgets_are_asserted_on_the_tail(notebook: Path) -> None:
    problems = nbchecks.budget_problems(nbchecks.load(ROOT / notebook))
    assert problems == [], (
        f"{notebook}: "
        + "\n  ".join(problems)
        + "\n  see book/contributing.md, Fair comparisons, honest budgets"
    )


def test_manifests_would_work_on_a_cluster(notebook: Path) -> None:
    """The chapter's written manifests (manifests/<chapter>/ beside it) pass the
    operational checks: labkit.operational_problems."""
    import labkit

    folder = (ROOT / notebook).parent / "manifests" / notebook.stem
    problems = labkit.operational_problems(labkit.load_bundle(folder))
    assert problems == [], (
        f"{notebook}: "
        + "\n  ".join(problems)
        + "\n  see book/contributing.md, Manifests"
    )


def test_compared_share_per_chapter(notebook: Path) -> None:
    compared, with_output = compared_cells(nbchecks.load(ROOT / notebook))
    assert with_output and compared / with_output >= COMPARED_FLOOR_CHAPTER, (
        f"{notebook}: nbval compares {compared} of {with_output} output cells; the "
        "floor is "
        f"{COMPARED_FLOOR_CHAPTER:.0%}. Print deterministic results in their own "
        "cells, measurements in ignored ones"
    )


def test_compared_share_book_wide() -> None:
    counts = [compared_cells(nbchecks.load(ROOT / p)) for p in toc_notebooks(ROOT)]
    compared, with_output = sum(c for c, _ in counts), sum(w for _, w in counts)
    assert compared / with_output >= COMPARED_FLOOR_BOOK, (
        f"nbval compares {compared} of {with_output} output cells book-wide; the floor "
        f"is {COMPARED_FLOOR_BOOK:.0%}"
    )


def test_ci_timings_cover_the_book_and_fit_the_goal() -> None:
    timings = load_ci_timings(ROOT)
    assert timings, (
        "book/ci-timings.json is missing; after a full make test run: python -m "
        "labkit.book ci-times _build/test-durations.json --setup-s SECONDS"
    )
    missing = {str(p) for p in toc_notebooks(ROOT)} - set(timings["notebooks"])
    assert not missing, (
        f"no CI timing for {sorted(missing)}: re-run make test, then ci-times"
    )
    today = ci_projection(timings, CHAPTERS_PLANNED)
    total_min = today["total_min"] + today["setup_s"] / 60
    assert total_min <= CI_GOAL_MIN, (
        f"CI took {total_min:.0f} min, over the {CI_GOAL_MIN}-minute goal"
    )


def test_no_leaks_in_outputs(notebook: Path) -> None:
    problems = nbchecks.leak_problems(nbchecks.load(ROOT / notebook))
    assert problems == [], f"{notebook}: " + "; ".join(problems)


def test_size(notebook: Path) -> None:
    assert nbchecks.size_problems(ROOT / notebook) == [], (
        f"{notebook} is larger than 2 MB; shrink its figures or outputs"
    )


def test_execution_report_is_current() -> None:
    from labkit.book import REPORT_MD, render_report, report_rows
    from labkit.book import load_ci_timings as timings

    assert (ROOT / REPORT_MD).read_text() == render_report(
        report_rows(ROOT), timings(ROOT) or None
    ), "book/execution-report.md does not match the notebooks' stamps; run: make report"


def test_ruff_check_and_format_are_clean() -> None:
    import subprocess
    import sys

    ruff = [sys.executable, "-m", "ruff"]
    paths = ["src", "tests", "tools", "notebooks"]
    lint = subprocess.run(
        [*ruff, "check", *paths], cwd=ROOT, capture_output=True, text=True
    )
    assert lint.returncode == 0, (
        "ruff check found problems (fix, or `ruff check "
        f"--fix`):\n{lint.stdout[-4000:]}"
    )
    fmt = subprocess.run(
        [*ruff, "format", "--check", *paths], cwd=ROOT, capture_output=True, text=True
    )
    assert fmt.returncode == 0, (
        f"ruff format would change files (run `ruff format`):\n{fmt.stdout[-4000:]}"
    )
