"""Notebook hygiene: toc, structure, stamps, budgets, leaks and size. Each failure names how to fix it."""

from __future__ import annotations

from pathlib import Path

import nbchecks
from labkit.book import ROOT, budget_s, is_stale, toc_files, toc_notebooks


def test_every_notebook_is_in_the_toc_and_every_entry_exists() -> None:
    on_disk = {p.relative_to(ROOT) for p in (ROOT / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts}
    listed = set(toc_notebooks(ROOT))
    assert on_disk - listed == set(), f"notebooks missing from _toc.yml: {sorted(map(str, on_disk - listed))}"
    missing = [e for e in toc_files(ROOT) if not any((ROOT / e).with_suffix(s).exists() for s in (".md", ".ipynb"))
               and not (ROOT / e).exists()]
    assert missing == [], f"_toc.yml entries with no file: {missing}"


def test_structure(notebook: Path) -> None:
    problems = nbchecks.structure_problems(nbchecks.load(ROOT / notebook))
    assert problems == [], f"{notebook}: " + "; ".join(problems) + f"\n  fix, then run: make execute NB={notebook}"


def test_stamp_is_current(notebook: Path) -> None:
    assert not is_stale(notebook, ROOT), (
        f"{notebook}: stored outputs are stale (code, lock or labkit changed since its run)\n"
        f"  run: make execute NB={notebook}"
    )


def test_stamped_time_within_budget(notebook: Path) -> None:
    nb = nbchecks.load(ROOT / notebook)
    stamp = nb.get("metadata", {}).get("labkit", {}).get("stamp", {})
    budget = budget_s(nb, "laptop")
    assert "wall_s" in stamp, f"{notebook}: no stamp; run: make execute NB={notebook}"
    assert stamp["wall_s"] <= budget, f"{notebook}: laptop run took {stamp['wall_s']} s, budget {budget:.0f} s"


def test_no_leaks_in_outputs(notebook: Path) -> None:
    problems = nbchecks.leak_problems(nbchecks.load(ROOT / notebook))
    assert problems == [], f"{notebook}: " + "; ".join(problems)


def test_size(notebook: Path) -> None:
    assert nbchecks.size_problems(ROOT / notebook) == [], f"{notebook} is larger than 2 MB; shrink its figures or outputs"


def test_execution_report_is_current() -> None:
    from labkit.book import REPORT_MD, render_report, report_rows

    assert (ROOT / REPORT_MD).read_text() == render_report(report_rows(ROOT)), (
        "book/execution-report.md does not match the notebooks' stamps; run: make report"
    )
