"""Running the notebooks leaves the working tree as it found it. Run after the notebooks
on the same command line: files a notebook writes go to labkit.output_dir, which the
tests point under _build/."""

from __future__ import annotations

from conftest import GIT_STATUS_AT_START, NBVAL_RUN, git_status


def test_a_test_run_leaves_the_working_tree_unchanged() -> None:
    assert NBVAL_RUN, "no notebook ran in this session, so there is nothing to check"
    before, after = GIT_STATUS_AT_START[0].splitlines(), git_status().splitlines()
    changed = sorted(set(after) - set(before))
    assert changed == [], (
        "the notebook runs changed or added tracked files:\n" + "\n".join(changed)
    )
