"""Self-tests: the harness must fail on a changed output, on an error cell, and on
hygiene problems."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbchecks
import nbformat
import pytest

from labkit.book import ROOT

SANITIZE = ROOT / "tests" / "nbval-sanitize.cfg"


def make_notebook(path: Path, cells: list[tuple[str, str | None]]) -> Path:
    """Write a notebook whose code cells are (source, stored stdout or None), the first
    tagged parameters."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    for count, (src, stdout) in enumerate(cells, start=1):
        cell = nbformat.v4.new_code_cell(src, execution_count=count)
        if stdout is not None:
            cell.outputs = [
                nbformat.v4.new_output("stream", name="stdout", text=stdout)
            ]
        nb.cells.append(cell)
    nb.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(nb, path)
    return path


def run_nbval(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--nbval",
            "--nbval-current-env",
            "--nbval-sanitize-with",
            str(SANITIZE),
            path.name,
        ],
        cwd=path.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_nbval_passes_on_a_faithful_notebook(tmp_path: Path) -> None:
    nb = make_notebook(
        tmp_path / "good.ipynb",
        [
            ('profile = "laptop"', None),
            ("print(1 + 1)", "2\n"),
            ("print('served on 127.0.0.1:8123')", "served on 127.0.0.1:9999\n"),
        ],
    )
    result = run_nbval(nb)
    assert result.returncode == 0, result.stdout[-2000:]


def test_nbval_fails_on_a_changed_output(tmp_path: Path) -> None:
    nb = make_notebook(
        tmp_path / "changed.ipynb",
        [('profile = "laptop"', None), ("print(1 + 1)", "3\n")],
    )
    result = run_nbval(nb)
    assert result.returncode == 1, result.stdout[-2000:]
    assert "1 failed" in result.stdout


def test_nbval_fails_on_an_error_cell(tmp_path: Path) -> None:
    nb = make_notebook(
        tmp_path / "error.ipynb", [('profile = "laptop"', None), ("1 / 0", None)]
    )
    result = run_nbval(nb)
    assert result.returncode == 1, result.stdout[-2000:]
    assert "ZeroDivisionError" in result.stdout


def test_papermill_fails_on_an_error_cell(tmp_path: Path) -> None:
    import papermill

    nb = make_notebook(
        tmp_path / "error.ipynb", [('profile = "laptop"', None), ("1 / 0", None)]
    )
    with pytest.raises(papermill.PapermillExecutionError):
        papermill.execute_notebook(
            str(nb),
            str(tmp_path / "out.ipynb"),
            kernel_name="python3",
            progress_bar=False,
        )


def test_hygiene_flags_an_error_output_a_missing_tag_and_a_leak(tmp_path: Path) -> None:
    path = make_notebook(
        tmp_path / "bad.ipynb",
        [("size = 3", None), ("print('/root/secret')", "/root/secret\n")],
    )
    nb = nbchecks.load(path)
    nb["cells"][0]["metadata"]["tags"] = []
    nb["cells"][1]["outputs"].append(
        {"output_type": "error", "ename": "ValueError", "evalue": "x", "traceback": []}
    )
    structure = nbchecks.structure_problems(nb)
    assert any("not tagged 'parameters'" in p for p in structure)
    assert any("error output" in p for p in structure)
    assert any("home or work path" in p for p in nbchecks.leak_problems(nb))


def test_hygiene_flags_cells_run_out_of_order(tmp_path: Path) -> None:
    path = make_notebook(
        tmp_path / "order.ipynb",
        [('profile = "laptop"', None), ("x = 1", None), ("y = 2", None)],
    )
    nb = nbchecks.load(path)
    nb["cells"][1]["execution_count"], nb["cells"][2]["execution_count"] = 3, 2
    assert any("out of order" in p for p in nbchecks.structure_problems(nb))


def exercise_notebook(path: Path, reader_src: str, wrong: str = "[3]") -> Path:
    """A notebook with one exercise in the frame's pattern; `reader_src` is the reader's
    cell."""
    check = (
        "import labkit\n\ndef check(a):\n    assert a == 2, 'not two'\n\n"
        f"labkit.check_exercise('t-ex', check, answer, wrong={wrong}, hint='h')"
    )
    ref = (
        f"labkit.check_exercise('t-ex', check, answer, wrong={wrong}, hint='h', "
        "reference=True)"
    )
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [
        nbformat.v4.new_code_cell(
            'profile = "laptop"', metadata={"tags": ["parameters"]}
        ),
        nbformat.v4.new_markdown_cell("```{exercise}\n:label: t-ex\n\nTwo.\n```"),
        nbformat.v4.new_code_cell(reader_src),
        nbformat.v4.new_code_cell(check),
        nbformat.v4.new_markdown_cell(
            "```{solution-start} t-ex\n:class: dropdown\n```\nTwo."
        ),
        nbformat.v4.new_code_cell("answer = 2"),
        nbformat.v4.new_code_cell(ref),
        nbformat.v4.new_markdown_cell("```{solution-end}\n```"),
    ]
    nbformat.write(nb, path)
    import papermill

    papermill.execute_notebook(
        str(path), str(path), kernel_name="python3", progress_bar=False
    )
    return path


def test_the_exercise_pattern_passes_hygiene_and_nbval(tmp_path: Path) -> None:
    path = exercise_notebook(tmp_path / "ex.ipynb", "answer = ...  # your answer")
    assert nbchecks.exercise_problems(nbchecks.load(path)) == []
    assert run_nbval(path).returncode == 0


def test_hygiene_flags_a_reader_cell_that_holds_the_answer(tmp_path: Path) -> None:
    path = exercise_notebook(tmp_path / "ex.ipynb", "answer = 2  # your answer")
    problems = nbchecks.exercise_problems(nbchecks.load(path))
    assert any("is not a placeholder" in p for p in problems), problems


def test_an_exercise_check_that_accepts_a_wrong_answer_fails_the_run(
    tmp_path: Path,
) -> None:
    import papermill

    with pytest.raises(
        papermill.PapermillExecutionError, match="accepts the wrong answer"
    ):
        exercise_notebook(tmp_path / "ex.ipynb", "answer = ...", wrong="[2]")


@pytest.mark.parametrize(
    "test",
    [
        "assert min(samples) < budget_ms",
        'assert pipeline["median"] < PERCEPTION_BUDGET_MS',
        'assert best_ms <= frame_budget_ms, "fits"',
        'assert stats["p50"] < budget and True',
        'best = min(rounds, key=lambda r: r["p95"])\nassert best["p95"] <= budget_ms',
    ],
)
def test_budget_check_flags_the_best_or_typical_sample(test: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"x = 1\n{test}\n")]
    assert nbchecks.budget_problems(nb)


@pytest.mark.parametrize(
    "test",
    [
        'assert stats["p95"] <= budget_ms',
        "assert summary['p99'] < BUDGET_MS, f'p99 {summary}'",
        "assert min(a, b) > 0  # not a budget",
    ],
)
def test_budget_check_accepts_the_tail(test: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"x = 1\n{test}\n")]
    assert nbchecks.budget_problems(nb) == []
